//! Memory that processes share: a `memfd` (an anonymous file that lives while a process
//! holds a descriptor or a mapping of it) mapped into this process, behind
//! [`crate::SharedSlice`] and [`crate::SharedBuffer`].
//!
//! A segment is created by one process and opened by others through
//! `/proc/<creator>/fd/<fd>`, which hands them the same file. Nothing is ever named in
//! `/dev/shm` or a temporary directory: the kernel frees the memory when the last process
//! that maps it, or holds a descriptor of it, lets go, also when that process is killed.
//!
//! Two kinds of mapping exist, and the unsafety of each rests on one fact:
//! - **sealed** (read-only): the file is sealed against writing (`F_SEAL_WRITE`, checked
//!   on every open), so no process can change its bytes, and they may be lent out as
//!   `&[E]`;
//! - **writable**: other processes may write while this one reads, so its bytes are only
//!   ever reached as atomics (`&[AtomicU64]` and the like), which may be shared and
//!   mutated by anyone without a data race.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64};

/// A plain element type: `Copy`, no padding, and every bit pattern of its size a value, so
/// that bytes another process wrote may be read as one.
///
/// # Safety
///
/// Implement it only for types with those properties whose size is 1, 2, 4 or 8 bytes and
/// whose alignment equals their size (the primitive integers and floats).
#[allow(unsafe_code)]
pub unsafe trait Pod: Copy + Send + Sync + 'static {
    /// The atomic of the same size and alignment.
    type Atom: Send + Sync + 'static;
}

macro_rules! pod {
    ($($t:ty => $atom:ty),*) => {$(
        // SAFETY: a primitive integer or float: no padding, any bit pattern is a value,
        // and its size and alignment equal those of `$atom`.
        #[allow(unsafe_code)]
        unsafe impl Pod for $t {
            type Atom = $atom;
        }
        const _: () = assert!(
            std::mem::size_of::<$t>() == std::mem::size_of::<$atom>()
                && std::mem::align_of::<$t>() == std::mem::align_of::<$atom>()
                && std::mem::size_of::<$t>() == std::mem::align_of::<$t>()
        );
    )*};
}

pod!(u8 => AtomicU8, i8 => AtomicU8, u16 => AtomicU16, i16 => AtomicU16,
     u32 => AtomicU32, i32 => AtomicU32, f32 => AtomicU32,
     u64 => AtomicU64, i64 => AtomicU64, f64 => AtomicU64);

/// Bytes `offset .. offset + len` of a memfd, mapped into this process.
///
/// Invariant: `ptr` is the start of a live mapping of `len` bytes (at least one) of a
/// memfd from byte `offset` (a multiple of the page size), made by this type and
/// unmapped only by its `Drop`; it is readable, and writable exactly when `writable`.
/// The file is sealed against shrinking, so the mapped bytes stay backed; when `writable`
/// is false, it is sealed against writing too, so no process can change the mapped bytes
/// for as long as the mapping lives.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    offset: usize,
    writable: bool,
    /// The file's descriptor, kept by the process that created it, also in a mapping it
    /// opened again (others name it by that process and this number), and closed by the
    /// other processes that opened it: their mapping holds the file, and a job that opens
    /// many arrays should not run out of descriptors.
    fd: Option<OwnedFd>,
}

// SAFETY: the mapping is plain memory that any thread may read; writable bytes are only
// reached through atomics (see `atoms`), read-only ones cannot change.
#[allow(unsafe_code)]
unsafe impl Send for Mapping {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for Mapping {}

/// The size of a page, which a mapping's offset in its file is a multiple of.
fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: `sysconf` reads a system setting and touches no memory.
        #[allow(unsafe_code)]
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size)
            .ok()
            .filter(|s| s.is_power_of_two())
            .unwrap_or(4096)
    })
}

/// The seals a read-only segment carries.
#[cfg(target_os = "linux")]
const READ_ONLY_SEALS: libc::c_int =
    libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// A new `memfd` of `len` bytes (at least one) named `name`, sealed against shrinking.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn new_file(len: usize, name: &std::ffi::CStr) -> io::Result<File> {
    // SAFETY: `memfd_create` reads the NUL-terminated name and returns a new descriptor
    // or -1.
    let raw =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let mut fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if raw < 3 {
        // A standard descriptor a daemon had closed: keep it free for a job's output.
        fd = fd.try_clone()?;
    }
    let file = File::from(fd);
    file.set_len(len.max(1) as u64)?;
    // SAFETY: `fcntl(F_ADD_SEALS)` on a descriptor this process owns touches no memory.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

impl Mapping {
    /// A new segment of `len` bytes, mapped writable, starting with the bytes of `values`
    /// (at most `len` of them) and zero after them, named `name` (which shows in
    /// `/proc/<pid>/fd` and lets an opener check it has the file it was told about).
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    pub(crate) fn create<E: Pod>(
        len: usize,
        name: &std::ffi::CStr,
        values: &[E],
    ) -> io::Result<Mapping> {
        let value_bytes = std::mem::size_of_val(values);
        if value_bytes > len {
            return Err(io::Error::other("more values than bytes"));
        }
        let file = new_file(len, name)?;
        let mapping = Mapping::map(file.into(), 0, len.max(1), true, !values.is_empty())?;
        // SAFETY: `values` is `value_bytes` bytes of `Pod` values (no padding, so every
        // byte is initialized), and the new mapping is at least that long; no other
        // borrow of the mapping exists yet, and the two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr().cast::<u8>(),
                mapping.ptr.as_ptr(),
                value_bytes,
            );
        }
        Ok(mapping)
    }

    /// A new segment as [`Mapping::create`] makes, sealed against any further write and
    /// mapped read-only.
    ///
    /// The bytes are written through the descriptor, never through a writable mapping: a
    /// child another thread forks meanwhile would inherit such a mapping, and sealing
    /// would fail (`EBUSY`) for as long as it held it.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    pub(crate) fn create_sealed<E: Pod>(
        len: usize,
        name: &std::ffi::CStr,
        values: &[E],
    ) -> io::Result<Mapping> {
        use std::os::unix::fs::FileExt;
        if std::mem::size_of_val(values) > len {
            return Err(io::Error::other("more values than bytes"));
        }
        let file = new_file(len, name)?;
        // SAFETY: `values` is `size_of_val(values)` bytes of `Pod` values, which have no
        // padding, so every byte is initialized; the borrow lives as long as `values`.
        let bytes = unsafe {
            std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
        };
        file.write_all_at(bytes, 0)?;
        // SAFETY: `fcntl(F_ADD_SEALS)` on a descriptor this process owns touches no
        // memory.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, READ_ONLY_SEALS) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Mapping::map(file.into(), 0, len.max(1), false, !values.is_empty())
    }

    /// Without `memfd` there is no segment to share.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn create<E: Pod>(
        _len: usize,
        _name: &std::ffi::CStr,
        _values: &[E],
    ) -> io::Result<Mapping> {
        Err(io::ErrorKind::Unsupported.into())
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn create_sealed<E: Pod>(
        _len: usize,
        _name: &std::ffi::CStr,
        _values: &[E],
    ) -> io::Result<Mapping> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Opens bytes `start .. start + len` of the segment that process `pid` holds as
    /// descriptor `fd`, checking that its name is `name` and, for a read-only mapping,
    /// that it is sealed against writing. Whole pages are mapped around the range.
    ///
    /// Opened in the process that created it (a shared array that came back in a job's
    /// result), the mapping keeps the new descriptor ([`Mapping::raw_fd`]), which names
    /// the segment for as long as the mapping lives: `fd` may be closed, and its number
    /// reused, once the array it came from is dropped. Opened elsewhere, the mapping
    /// holds no descriptor (`raw_fd` is -1): the memory stays mapped without one.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    pub(crate) fn open(
        pid: u32,
        fd: i32,
        name: &str,
        start: usize,
        len: usize,
        writable: bool,
    ) -> Result<Mapping, String> {
        let path = format!("/proc/{pid}/fd/{fd}");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&path)
            .map_err(|e| format!("cannot open {path}: {e}"))?;
        // The name of what was opened, not of what the number named a moment earlier.
        let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|e| format!("cannot read the name of {path}: {e}"))?;
        let expected = format!("/memfd:{name}");
        if !opened.to_string_lossy().starts_with(&expected) {
            return Err(format!(
                "{path} is {}, not the segment {name}",
                opened.display()
            ));
        }
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        let end = start.checked_add(len).filter(|&end| end as u64 <= size);
        let Some(end) = end else {
            return Err(format!(
                "bytes {start}..{start}+{len} are past the end of {name} ({size} bytes)"
            ));
        };
        // SAFETY: `fcntl(F_GET_SEALS)` reads the state of a descriptor this process owns
        // and touches no memory.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            // Shrunk under a mapping, the file would crash this process on access.
            return Err(format!("{name} is not sealed against shrinking"));
        }
        if !writable && seals & libc::F_SEAL_WRITE == 0 {
            return Err(format!("{name} is not sealed against writing"));
        }
        let offset = start - start % page_size();
        let mut mapping = Mapping::map(file.into(), offset, (end - offset).max(1), writable, true)
            .map_err(|e| format!("cannot map {name}: {e}"))?;
        if pid != std::process::id() {
            mapping.fd = None;
        }
        Ok(mapping)
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn open(
        _pid: u32,
        _fd: i32,
        _name: &str,
        _start: usize,
        _len: usize,
        _writable: bool,
    ) -> Result<Mapping, String> {
        Err("shared memory needs Linux (memfd)".into())
    }

    /// Maps `len` bytes of `fd` from `offset` (a multiple of the page size); with
    /// `populate`, every page at once: one call instead of a fault per page, each of
    /// which costs microseconds on a virtual machine.
    #[allow(unsafe_code)]
    fn map(
        fd: OwnedFd,
        offset: usize,
        len: usize,
        writable: bool,
        populate: bool,
    ) -> io::Result<Mapping> {
        let protection = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let file_offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        // SAFETY: a fresh shared mapping of the descriptor, at an address the kernel
        // chooses: it aliases no memory of this process.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                protection,
                if populate {
                    libc::MAP_SHARED | libc::MAP_POPULATE
                } else {
                    libc::MAP_SHARED
                },
                fd.as_raw_fd(),
                file_offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave 0"))?;
        Ok(Mapping {
            ptr,
            len,
            offset,
            writable,
            fd: Some(fd),
        })
    }

    /// The descriptor's number in this process (-1 for a segment it opened from another).
    pub(crate) fn raw_fd(&self) -> i32 {
        self.fd.as_ref().map_or(-1, |fd| fd.as_raw_fd())
    }

    /// Whether [`Mapping::elements`] (unless `writable`) or [`Mapping::atoms`] (if
    /// `writable`) would lend these elements.
    pub(crate) fn lends<E: Pod>(&self, writable: bool, start: usize, count: usize) -> bool {
        self.writable == writable && self.holds::<E>(start, count)
    }

    /// Whether the mapped bytes `start .. start + count * size_of::<E>()` of the file lie
    /// in this mapping, `start` aligned for `E`.
    fn holds<E>(&self, start: usize, count: usize) -> bool {
        let Some(bytes) = count.checked_mul(std::mem::size_of::<E>()) else {
            return false;
        };
        start >= self.offset
            && start.is_multiple_of(std::mem::align_of::<E>())
            && start
                .checked_add(bytes)
                .is_some_and(|end| end <= self.offset + self.len)
    }

    /// Elements `start ..` (a byte offset in the file) of a read-only segment, `count` of
    /// them. `None` if the mapping is writable or does not hold them.
    #[allow(unsafe_code)]
    pub(crate) fn elements<E: Pod>(&self, start: usize, count: usize) -> Option<&[E]> {
        if self.writable || !self.holds::<E>(start, count) {
            return None;
        }
        // SAFETY: the bytes lie in this live mapping, aligned for `E` (the mapping is
        // page-aligned and `start - offset` is a multiple of `E`'s alignment), and every
        // bit pattern is an `E` (`Pod`). The segment is sealed against writing (the
        // type's invariant), so nothing changes them while the borrow of `self` lasts.
        Some(unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().add(start - self.offset).cast(), count)
        })
    }

    /// Elements `start ..` (a byte offset in the file) of a writable segment, `count` of
    /// them, as the atomics of their size. `None` if the mapping is read-only or does not
    /// hold them.
    #[allow(unsafe_code)]
    pub(crate) fn atoms<E: Pod>(&self, start: usize, count: usize) -> Option<&[E::Atom]> {
        if !self.writable || !self.holds::<E>(start, count) {
            return None;
        }
        // SAFETY: the bytes lie in this live, writable mapping, aligned for `E::Atom`
        // (same size and alignment as `E`, checked by `pod!`), and any bits are a value
        // of an atomic integer. Atomics may be shared and written through `&`, by this
        // process and by others, without a data race.
        Some(unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().add(start - self.offset).cast(), count)
        })
    }
}

impl Drop for Mapping {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `map` with this address and length (the type's
        // invariant), and no borrow of it outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_writable_segment_is_reached_only_as_atomics() {
        let mapping = Mapping::create::<u8>(64, c"procpool-test-a", &[]).unwrap();
        assert!(mapping.elements::<u64>(0, 8).is_none(), "writable");
        let atoms = mapping.atoms::<u64>(0, 8).unwrap();
        atoms[3].store(7, Ordering::Relaxed);
        assert!(mapping.atoms::<u64>(4, 1).is_none(), "misaligned");
        assert!(mapping.atoms::<u64>(0, 4096).is_none(), "past the mapping");
        let opened = Mapping::open(
            std::process::id(),
            mapping.raw_fd(),
            "procpool-test-a",
            24,
            8,
            true,
        )
        .unwrap();
        assert_eq!(
            opened.atoms::<u64>(24, 1).unwrap()[0].load(Ordering::Relaxed),
            7
        );
    }

    #[test]
    fn a_sealed_segment_lends_its_elements_and_refuses_writers() {
        let sealed = Mapping::create_sealed(16, c"procpool-test-b", &[0_u32, 5]).unwrap();
        assert_eq!(sealed.elements::<u32>(0, 4).unwrap(), &[0, 5, 0, 0]);
        assert!(sealed.atoms::<u32>(0, 4).is_none());
        let pid = std::process::id();
        let writer = Mapping::open(pid, sealed.raw_fd(), "procpool-test-b", 0, 16, true);
        assert!(
            writer.is_err(),
            "a sealed segment cannot be mapped writable"
        );
        let reader = Mapping::open(pid, sealed.raw_fd(), "procpool-test-b", 4, 4, false).unwrap();
        assert_eq!(reader.elements::<u32>(4, 1).unwrap(), &[5]);
    }

    #[test]
    fn open_checks_the_name_the_seal_and_the_size() {
        let pid = std::process::id();
        let unsealed = Mapping::create::<u8>(16, c"procpool-test-c", &[]).unwrap();
        let err =
            Mapping::open(pid, unsealed.raw_fd(), "procpool-test-c", 0, 16, false).unwrap_err();
        assert!(err.contains("not sealed"), "{err}");
        let err =
            Mapping::open(pid, unsealed.raw_fd(), "procpool-test-x", 0, 16, true).unwrap_err();
        assert!(err.contains("not the segment"), "{err}");
        let err =
            Mapping::open(pid, unsealed.raw_fd(), "procpool-test-c", 8, 16, true).unwrap_err();
        assert!(err.contains("past the end"), "{err}");
        let err = Mapping::open(pid, 1 << 20, "procpool-test-c", 0, 1, true).unwrap_err();
        assert!(err.contains("cannot open"), "{err}");
    }
}
