//! The operating-system calls of the local backend: a worker's signal dispositions, its
//! parent-death signal, its standard descriptors, the socket it inherits, removing the
//! worker variable from its environment; in the pool, handing descriptors to a child,
//! seeing a worker exit before it is reaped and stopping its process group; and the word
//! a worker and its pool share ([`SharedWord`]); and, with the feature `mpi`, the MPI
//! thread's timer slack ([`timers`]). Each function that needs `unsafe` allows it for
//! itself alone.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

pub(crate) mod remote;
pub(crate) mod segment;
#[cfg(feature = "mpi")]
mod timers;
#[cfg(feature = "mpi")]
pub(crate) use timers::precise_timers;

/// Makes writes to a closed socket fail with `EPIPE` instead of killing the worker. Rust's
/// `main` does this for ordinary programs; a worker entered before `main` must do it itself.
#[allow(unsafe_code)]
pub(crate) fn ignore_sigpipe() {
    // SAFETY: `signal` with `SIG_IGN` installs no handler code; it only changes the
    // disposition of SIGPIPE, which this worker process owns.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Asks the kernel to SIGKILL this worker when the thread that spawned it (the pool's
/// supervisor) dies. Returns `false` if the parent is not `expected_parent` any more (it
/// died between this worker's start and this call, and the worker was re-parented).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn die_with_parent(expected_parent: u32) -> bool {
    // SAFETY: `prctl(PR_SET_PDEATHSIG, sig)` takes an integer argument and touches no
    // memory of this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    }
    std::os::unix::process::parent_id() == expected_parent
}

/// Without a parent-death signal, only checks that the parent is `expected_parent`.
#[cfg(not(target_os = "linux"))]
pub(crate) fn die_with_parent(expected_parent: u32) -> bool {
    std::os::unix::process::parent_id() == expected_parent
}

/// Asks the kernel to back the whole 2 MiB pages inside `buffer`'s allocation (its
/// capacity, written or not) with transparent huge pages, where it does so on request
/// (`madvise` mode, the default of many distributions): a fresh buffer then costs a page
/// fault per 2 MiB instead of per 4 KiB when it is first written (on this project's VMs,
/// faults were most of the cost of a fresh 64 MiB buffer, and a third of the time of a
/// `map` that collects 1 M `u64`s into a fresh `Vec`). Buffers smaller than a huge page
/// are left alone. Best effort: an error changes nothing.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn prefer_huge_pages<T>(buffer: &Vec<T>) {
    const HUGE: usize = 2 << 20;
    let start = buffer.as_ptr() as usize;
    let Some(end) = buffer
        .capacity()
        .checked_mul(size_of::<T>())
        .and_then(|bytes| start.checked_add(bytes))
    else {
        return;
    };
    let first = start.next_multiple_of(HUGE);
    let last = end - end % HUGE;
    if last <= first {
        return;
    }
    // SAFETY: `madvise(MADV_HUGEPAGE)` on whole pages of an allocation this process owns
    // (the buffer's, borrowed here) changes how the kernel backs them, never their
    // contents, and touches no memory itself.
    unsafe {
        libc::madvise(
            first as *mut libc::c_void,
            last - first,
            libc::MADV_HUGEPAGE,
        );
    }
}

/// Elsewhere buffers keep the pages they get.
#[cfg(not(target_os = "linux"))]
pub(crate) fn prefer_huge_pages<T>(_: &Vec<T>) {}

/// Asks the CPU to bring the cache line holding `address` into every level of its cache
/// (`prefetcht0`): a thread about to change many atomics that another thread wrote last
/// (the pool's thread claiming a batch of jobs) asks for the next ones while it changes
/// this one, rather than waiting for each line in turn (a locked instruction lets no
/// later load start before it ends). A hint only: it never faults, and changes nothing a
/// program can see but timing.
///
/// A read prefetch, although the line is then written: the compiler turns a write hint
/// (`_MM_HINT_ET0`) into this same instruction for the baseline x86-64 target, and a
/// `prefetchw` written out (for CPUs that have it, asked with CPUID) measured no better
/// in the pool (W2 on processes, two alternated sets: 1.52 and 1.68 M jobs/s against 1.58
/// and 1.68; `encode_jobs` at 1.1% of the samples against 1.3%).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) fn prefetch<T>(address: *const T) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: `prefetcht0` reads and writes no memory and cannot fault, whatever the
    // address; it needs SSE, which every x86-64 CPU has.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(address.cast()) }
}

/// Elsewhere, no hint.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn prefetch<T>(_: *const T) {}

/// Sends SIGKILL to process group `group`: a worker (its leader, started in a group of its
/// own) and the processes its jobs started that stayed in it.
///
/// The caller must know that the group's leader has not been reaped yet, so that `group`
/// still names that group and no other: a process's id is not reused while it is
/// unreaped, nor while its group has members.
#[allow(unsafe_code)]
pub(crate) fn kill_group(group: u32) {
    let Ok(group) = libc::pid_t::try_from(group) else {
        return;
    };
    if group <= 1 {
        return; // never every process, nor init's group
    }
    // SAFETY: `kill` takes integers and touches no memory of this process.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
}

/// Whether child `pid` of this process has exited, seen without reaping it
/// (`waitid(WNOWAIT)`): until it is reaped, the zombie keeps its process id, and so its
/// process group's, reserved, so that [`kill_group`] may still stop the processes its
/// jobs left there. `true` as well when `pid` is no unreaped child of this process (then
/// there is nothing to wait for).
#[allow(unsafe_code)]
pub(crate) fn has_exited(pid: u32) -> bool {
    let id: libc::id_t = pid;
    // SAFETY: `siginfo_t` is a plain C struct of integers (and unions of them), for which
    // all zero bits are a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOWAIT | libc::WNOHANG;
    loop {
        // SAFETY: `waitid` writes only into `info`, a valid, exclusively borrowed
        // `siginfo_t` that lives across the call; `WNOWAIT` leaves the child unreaped.
        let status = unsafe { libc::waitid(libc::P_PID, id, &mut info, flags) };
        if status == 0 {
            // With `WNOHANG`, a child that has not exited leaves `si_signo` zero (POSIX).
            return info.si_signo != 0;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return true; // `ECHILD`: reaped already, or never a child of this process
        }
    }
}

/// Takes the worker's socket from its standard input, where its parent put it: a child's
/// standard descriptors are the only ones handed down without code of the parent's
/// running in the child between `fork` and `exec`, which would stop the standard library
/// from starting it with `posix_spawn` (a `fork` of a large parent costs milliseconds).
/// The socket moves above the standard descriptors, closed on `exec` so that programs a
/// job starts do not inherit it, and standard input becomes `/dev/null`. `None` if
/// standard input is not a socket, or cannot be given back to `/dev/null`.
#[allow(unsafe_code)]
pub(crate) fn socket_from_stdin() -> Option<UnixStream> {
    // SAFETY: `fstat` writes only into the zeroed `stat` it is given.
    let is_socket = unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        libc::fstat(0, &mut stat) == 0 && stat.st_mode & libc::S_IFMT == libc::S_IFSOCK
    };
    if !is_socket {
        return None;
    }
    // SAFETY: `fcntl(F_DUPFD_CLOEXEC)` makes a new descriptor (3 or above) and touches no
    // memory.
    let moved = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    if moved < 0 {
        return None;
    }
    // SAFETY: `moved` is a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(moved) };
    let null = std::fs::File::open("/dev/null").ok()?;
    // SAFETY: `dup2` onto descriptor 0 replaces this process's standard input, which
    // nothing in it owns as a Rust value (std only ever borrows it); it touches no memory.
    if unsafe { libc::dup2(null.as_raw_fd(), 0) } != 0 {
        return None;
    }
    Some(UnixStream::from(socket))
}

/// The byte that carries a descriptor on a worker's socket (see [`send_descriptor`]).
const DESCRIPTOR_BYTE: u8 = b'D';

/// Sends `fd` over the Unix socket `socket`, with one byte ([`DESCRIPTOR_BYTE`]): the
/// pool hands a worker its shared word this way, before anything else on the link.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn send_descriptor(socket: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let byte = [DESCRIPTOR_BYTE];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    // Room for one control message of one descriptor, aligned as a `cmsghdr`.
    let mut control = [0_u64; 8];
    // SAFETY: `CMSG_SPACE` only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    debug_assert!(space <= std::mem::size_of_val(&control));
    // SAFETY: an all-zero `msghdr` is a valid empty one; the fields set below point to
    // `iov` and `control`, which outlive the `sendmsg` call.
    let sent = retry_interrupted(|| unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = space as _;
        // `control` is large enough for one header and its data (`space`), and 8-byte
        // aligned, so the first header and its data lie within it.
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<RawFd>(), fd.as_raw_fd());
        libc::sendmsg(socket.as_raw_fd(), &message, libc::MSG_NOSIGNAL)
    });
    match sent {
        1 => Ok(()),
        -1 => Err(std::io::Error::last_os_error()),
        _ => Err(std::io::Error::other("the descriptor's byte was not sent")),
    }
}

/// Calls `call` again for as long as it fails with `EINTR`.
#[cfg(target_os = "linux")]
fn retry_interrupted(mut call: impl FnMut() -> isize) -> isize {
    loop {
        let result = call();
        if result != -1 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
        {
            return result;
        }
    }
}

/// Elsewhere there is no shared word to send.
#[cfg(not(target_os = "linux"))]
pub(crate) fn send_descriptor(_: BorrowedFd<'_>, _: BorrowedFd<'_>) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Receives the descriptor [`send_descriptor`] sent, closed on `exec`: the first byte on
/// the link. `Ok(None)` if that byte came without one; an error if it is not the byte
/// expected, or the link closed first.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn receive_descriptor(socket: &UnixStream) -> std::io::Result<Option<OwnedFd>> {
    let mut byte = [0_u8];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0_u64; 8];
    // SAFETY: an all-zero `msghdr` is a valid empty one.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `message` points to `iov` and `control`, which outlive the `recvmsg` call,
    // with their true sizes.
    let received = retry_interrupted(|| unsafe {
        libc::recvmsg(socket.as_raw_fd(), &mut message, libc::MSG_CMSG_CLOEXEC)
    });
    match received {
        -1 => return Err(std::io::Error::last_os_error()),
        0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => {}
    }
    let mut passed = None;
    // SAFETY: the kernel filled `control` with `msg_controllen` bytes of well-formed
    // control messages; `CMSG_FIRSTHDR` / `CMSG_NXTHDR` walk only within them, and each
    // `SCM_RIGHTS` message's data holds descriptors the kernel just opened in this
    // process, owned by nothing else: each is taken once, so none leaks.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header).cast::<RawFd>();
                let count = ((*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    if passed.is_none() {
                        passed = Some(fd); // any other is closed here
                    }
                }
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    if byte[0] != DESCRIPTOR_BYTE || message.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(std::io::Error::other(
            "the link did not open with a descriptor",
        ));
    }
    Ok(passed)
}

/// Elsewhere there is no shared word to receive.
#[cfg(not(target_os = "linux"))]
pub(crate) fn receive_descriptor(_: &UnixStream) -> std::io::Result<Option<OwnedFd>> {
    Ok(None)
}

/// Opens `/dev/null` on any of the standard descriptors (0, 1, 2) that is closed, as a
/// daemon's child may find them, so that what a job prints or a file it opens never lands
/// on a descriptor that something else expects.
#[allow(unsafe_code)]
pub(crate) fn fill_standard_descriptors() {
    for fd in 0..3 {
        // SAFETY: `fcntl(F_GETFD)` only asks whether `fd` is open; it touches no memory.
        let closed = unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1;
        if closed {
            // The lowest free number, which is `fd`: the ones below it are open now.
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                Ok(null) => std::mem::forget(null), // stays open, as `fd`
                Err(_) => return,
            }
        }
    }
}

/// Whether this process runs one thread only: `Some` where that can be told (Linux).
fn is_single_threaded() -> Option<bool> {
    // Every thread of the process has an entry in /proc/self/task.
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(tasks.take(2).count() == 1)
}

/// Removes `name` from this process's environment, so that the programs it starts do not
/// inherit it, if that can be done soundly: when this process runs one thread only.
/// `before_main` says the caller is a static constructor, which runs before `main`, where
/// a process has one thread unless another constructor started one (checked too where it
/// can be). Returns whether it removed the variable.
///
/// `std::env::remove_var` races with any other thread reading the environment (glibc's
/// `getenv` is not synchronized with it). With a single thread there is no other thread,
/// and none appears during the call: only this thread could start one.
#[allow(unsafe_code)]
pub(crate) fn remove_env_if_alone(name: &str, before_main: bool) -> bool {
    if !is_single_threaded().unwrap_or(before_main) {
        return false;
    }
    // SAFETY: this process has one thread, so nothing can read or write the environment
    // concurrently, and this thread starts no other before the call returns. Where threads
    // are counted (Linux) that was checked just above; elsewhere it rests on the caller
    // being a static constructor, before `main` and before any thread a program starts
    // (another crate's constructor could start one: the removal then races with it, as
    // `std::env::remove_var` in such a constructor always would).
    unsafe { std::env::remove_var(name) };
    true
}

/// A word shared by the pool and one worker process, and optionally the worker's journal
/// of answers it holds back: a sealed memfd, mapped in both. The pool's serving loop and
/// the worker coordinate through the word which of the jobs written to the worker it may
/// still start (see [`crate::wire::claims`]); through the journal, a worker that dies
/// leaves the answers it had not sent yet to its pool (see [`crate::wire::outbox`]).
///
/// Invariant: `ptr` points to the start of a `len`-byte, page-aligned, readable and
/// writable `MAP_SHARED` mapping of the memfd `fd`, `len` being `PAGE` or `PAGE +
/// JOURNAL`, made by this value and unmapped only by its `Drop`; the memfd is sealed
/// against shrinking (`F_SEAL_SHRINK`), so no process can make the pages go away while
/// they are mapped. Every process touches the mapping only through atomics: the
/// `AtomicU64`s at byte offsets 0 (the word) and 8 (the journal's length), and the
/// `AtomicU8`s from `PAGE` up (the journal).
#[derive(Debug)]
pub(crate) struct SharedWord {
    ptr: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
    len: usize,
    fd: OwnedFd,
}

/// The size of a shared word's first page.
const PAGE: usize = 4096;

/// The size of a journal, after the first page.
pub(crate) const JOURNAL: usize = 16 * 1024;

// SAFETY: the mapping is used only through atomics, which may be used from any thread (and
// process); it lives as long as the value (its invariant).
#[allow(unsafe_code)]
unsafe impl Send for SharedWord {}
// SAFETY: as above: shared access goes through the atomic only.
#[allow(unsafe_code)]
unsafe impl Sync for SharedWord {}

impl SharedWord {
    /// A new word, zero, for a worker about to start, with an empty journal after it if
    /// `journal` (Linux: a memfd; elsewhere `None`).
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    pub(crate) fn create(journal: bool) -> Option<SharedWord> {
        // SAFETY: `memfd_create` reads the NUL-terminated name and returns a new
        // descriptor or -1.
        let raw = unsafe {
            libc::memfd_create(
                c"procpool-claims".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw < 0 {
            return None;
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let mut fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if raw < 3 {
            // A standard descriptor a daemon had closed: move it out of the way of a job's
            // output (`try_clone` takes the lowest number from 3 up).
            fd = fd.try_clone().ok()?;
        }
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        let size = if journal { PAGE + JOURNAL } else { PAGE };
        // SAFETY: `ftruncate` and `fcntl` on a descriptor this process owns touch no
        // memory.
        let sized = unsafe {
            libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) == 0
                && libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) == 0
        };
        if !sized {
            return None;
        }
        SharedWord::map(fd, size)
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn create(_journal: bool) -> Option<SharedWord> {
        None
    }

    /// The word a worker's parent sent it as `fd`: `None` unless it is a memfd of a page
    /// at least, sealed against shrinking. It has a journal if the memfd is large enough
    /// for one.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    pub(crate) fn from_fd(fd: OwnedFd) -> Option<SharedWord> {
        // SAFETY: `fcntl(F_GET_SEALS)` and `fstat` only read the descriptor's state into
        // the zeroed `stat`.
        let size = unsafe {
            let seals = libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS);
            let mut stat: libc::stat = std::mem::zeroed();
            let sealed = seals >= 0 && seals & libc::F_SEAL_SHRINK != 0;
            if sealed && libc::fstat(fd.as_raw_fd(), &mut stat) == 0 {
                usize::try_from(stat.st_size).unwrap_or(0)
            } else {
                0
            }
        };
        match size {
            size if size >= PAGE + JOURNAL => SharedWord::map(fd, PAGE + JOURNAL),
            size if size >= PAGE => SharedWord::map(fd, PAGE),
            _ => None,
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn from_fd(_fd: OwnedFd) -> Option<SharedWord> {
        None
    }

    /// Maps the first `len` bytes of `fd`, a memfd of at least that size sealed against
    /// shrinking (`len` is `PAGE` or `PAGE + JOURNAL`).
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn map(fd: OwnedFd, len: usize) -> Option<SharedWord> {
        // SAFETY: a fresh shared mapping of the descriptor's first `len` bytes, at an
        // address the kernel chooses: it aliases no memory of this process.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<std::sync::atomic::AtomicU64>())?;
        Some(SharedWord { ptr, len, fd })
    }

    /// The word.
    #[allow(unsafe_code)]
    pub(crate) fn word(&self) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: by the type's invariant `ptr` is the page-aligned start of a live,
        // writable mapping of at least 8 bytes, used by every process only as this
        // atomic, and the mapping outlives the borrow of `self`.
        unsafe { self.ptr.as_ref() }
    }

    /// The journal's length in bytes, and the journal, if the mapping has one.
    #[allow(unsafe_code)]
    pub(crate) fn journal(
        &self,
    ) -> Option<(
        &std::sync::atomic::AtomicU64,
        &[std::sync::atomic::AtomicU8],
    )> {
        if self.len < PAGE + JOURNAL {
            return None;
        }
        // SAFETY: by the type's invariant the mapping is live for the borrow of `self`,
        // at least `PAGE + JOURNAL` bytes long here, page-aligned (so byte 8 is aligned
        // for an `AtomicU64`), and touched by every process only through these atomics.
        unsafe {
            let length = &*self.ptr.as_ptr().add(1);
            let bytes = self
                .ptr
                .as_ptr()
                .cast::<std::sync::atomic::AtomicU8>()
                .add(PAGE);
            Some((length, std::slice::from_raw_parts(bytes, JOURNAL)))
        }
    }

    /// Its descriptor, to send to a worker.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SharedWord {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `map` with this address and length (the type's
        // invariant), and no borrow of the word or the journal outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_word_is_one_word_in_both_mappings() {
        let created = SharedWord::create(false);
        assert_eq!(
            created.is_some(),
            cfg!(target_os = "linux"),
            "Linux has memfds"
        );
        let Some(word) = created else {
            return;
        };
        use std::sync::atomic::Ordering;
        word.word().store(41, Ordering::SeqCst);
        // A second mapping of the same memfd, sent over a socket as the pool sends it to a
        // worker.
        let (pool, worker) = UnixStream::pair().unwrap();
        send_descriptor(pool.as_fd(), word.fd()).unwrap();
        let received = receive_descriptor(&worker).unwrap().expect("a descriptor");
        let other = SharedWord::from_fd(received).unwrap();
        assert_eq!(other.word().fetch_add(1, Ordering::SeqCst), 41);
        assert_eq!(word.word().load(Ordering::SeqCst), 42);
        // Not a sealed memfd: refused.
        assert!(word.journal().is_none() && other.journal().is_none());
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(SharedWord::from_fd(file.into()).is_none());
    }

    #[test]
    fn a_journal_written_in_one_mapping_is_read_in_the_other() {
        use std::sync::atomic::Ordering;
        let Some(pool) = SharedWord::create(true) else {
            return;
        };
        let (ours, theirs) = UnixStream::pair().unwrap();
        send_descriptor(ours.as_fd(), pool.fd()).unwrap();
        let received = receive_descriptor(&theirs).unwrap().expect("a descriptor");
        let worker = SharedWord::from_fd(received).unwrap();
        let (length, bytes) = worker.journal().expect("a journal");
        assert_eq!(bytes.len(), JOURNAL);
        bytes[JOURNAL - 1].store(7, Ordering::Relaxed);
        length.store(JOURNAL as u64, Ordering::Release);
        let (length, bytes) = pool.journal().expect("a journal");
        assert_eq!(length.load(Ordering::Acquire), JOURNAL as u64);
        assert_eq!(bytes[JOURNAL - 1].load(Ordering::Relaxed), 7);
        // The word is still its own.
        assert_eq!(pool.word().load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_link_that_does_not_open_with_a_descriptor_is_refused() {
        use std::io::Write;
        let (mut pool, worker) = UnixStream::pair().unwrap();
        pool.write_all(&[DESCRIPTOR_BYTE]).unwrap();
        assert!(
            matches!(receive_descriptor(&worker), Ok(None)),
            "the byte alone"
        );
        pool.write_all(b"x").unwrap();
        assert!(receive_descriptor(&worker).is_err(), "another byte");
        drop(pool);
        let eof = receive_descriptor(&worker).unwrap_err();
        assert_eq!(eof.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    /// The `VmFlags` of the mapping of this process that holds `address`.
    #[cfg(target_os = "linux")]
    fn flags_of_mapping_at(address: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((start, end)) = range.split_once('-')
                && let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                )
            {
                inside = (start..end).contains(&address);
            } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.trim().to_owned();
            }
        }
        panic!("no mapping holds {address:#x}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_large_vector_of_any_type_asks_for_huge_pages() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
            eprintln!("skipped: this kernel has no transparent huge pages");
            return;
        }
        let huge = 2 << 20;
        // 64 MiB of u64s, reserved, not written: above the largest size glibc's malloc
        // serves from its heaps, so a mapping of its own that nobody advised before.
        let large: Vec<u64> = Vec::with_capacity(8 << 20);
        let inside = (large.as_ptr() as usize).next_multiple_of(huge);
        let flag = |flags: String| flags.split(' ').any(|flag| flag == "hg");
        assert!(!flag(flags_of_mapping_at(inside)), "not asked yet");
        prefer_huge_pages(&large);
        assert!(
            flag(flags_of_mapping_at(inside)),
            "asked for its whole huge pages"
        );
        // Smaller than a huge page, or holding nothing: left alone, without failing.
        prefer_huge_pages(&Vec::<u64>::with_capacity(1000));
        prefer_huge_pages(&Vec::<()>::with_capacity(1 << 30));
        prefer_huge_pages(&Vec::<u64>::new());
    }

    #[test]
    fn a_prefetch_is_harmless_at_any_address() {
        let word = std::sync::atomic::AtomicU8::new(7);
        prefetch(word.as_ptr());
        assert_eq!(word.load(std::sync::atomic::Ordering::Relaxed), 7);
        // Addresses nothing is mapped at: a load there would crash the test.
        prefetch(std::ptr::null::<u8>());
        prefetch(usize::MAX as *const u64);
        let gone: *const u64 = &*Box::new(1_u64); // freed at the end of the statement
        prefetch(gone);
    }

    #[test]
    fn a_test_binary_runs_several_threads() {
        // The test harness runs tests on threads of their own: the environment must be left
        // alone here.
        let helper =
            std::thread::spawn(|| std::thread::park_timeout(std::time::Duration::from_secs(1)));
        if cfg!(target_os = "linux") {
            assert_eq!(is_single_threaded(), Some(false));
        }
        assert!(!remove_env_if_alone("PATH", false));
        assert!(std::env::var_os("PATH").is_some());
        helper.thread().unpark();
        helper.join().unwrap();
    }
}
