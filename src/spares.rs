//! [`Spares`]: large buffers a process keeps to use again.
//!
//! Memory the kernel has just given a process costs a page fault per 4 KiB page when it
//! is first written, and on this project's VMs that is most of the cost of a large
//! message: filling a fresh 64 MiB buffer took 44 ms, filling the same buffer again 3 ms
//! (`Vec::with_capacity` then `extend_from_slice` from a 64 MiB source, 5 times each,
//! against `copy_from_slice` into one buffer). glibc returns buffers that large to the kernel when they are freed, so a 64 MiB
//! job crossing a node agent paid for fresh memory four times over: the message rank 0
//! builds, the agent's receive, the answer the agent reads, rank 0's receive. A rank
//! therefore keeps the buffers it is done with (a message sent, frames written to a
//! worker) and builds or receives the next large message into one of them. A process
//! pool's parent does the same with a large argument its worker has received: the answer
//! that comes back (often as large: a transformed buffer) is read into it.
//!
//! At most [`KEPT`] buffers of at least [`LARGE`] bytes are kept, and every one of them
//! goes once none has been kept or taken for [`IDLE`] (a thread of this module's wakes to
//! see to it while any is kept; an MPI hub also lets them go when its rank is idle), so a
//! process that moved one large message does not hold its memory for the rest of the run.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The smallest buffer worth keeping: below it, fresh memory costs little.
pub(crate) const LARGE: usize = 1 << 20;
/// The most buffers kept at once...
const KEPT: usize = 4;
/// ...and the most bytes.
const KEPT_BYTES: usize = 512 << 20;
/// Room a kept buffer gains past what it held, so that a message carrying a payload of
/// the same size, with frames before it (up to an agent's batch of 64 KiB) and a trailer,
/// fits in it: the job a caller sent comes back as an answer a little larger. Growing a
/// buffer this large moves its pages, not its bytes, with glibc (`mremap`).
const SLACK: usize = 80 << 10;

/// The largest buffer glibc serves from its heap (`DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit
/// systems), once it has freed one that large; larger ones always come from `mmap`, and
/// grow with `mremap`, moving pages rather than bytes. Only those gain [`SLACK`] when
/// kept: growing a buffer on the heap may copy it into fresh memory, which is what keeping
/// it avoids (measured: 4,097 page faults for a 16 MiB answer that fit without it).
const HEAP_MAX: usize = 32 << 20;

/// How long kept buffers stay after the last one was kept or taken.
const IDLE: Duration = Duration::from_secs(1);

/// Buffers kept for the next large message (one set per process: see [`SPARES`]).
#[derive(Debug, Default)]
pub(crate) struct Spares {
    kept: Mutex<Kept>,
}

/// What a [`Spares`] holds.
#[derive(Debug, Default)]
struct Kept {
    buffers: Vec<Vec<u8>>,
    /// When a buffer was last kept or taken.
    used: Option<Instant>,
    /// Whether a thread is watching for [`IDLE`] (only [`SPARES`] has one).
    watched: bool,
}

/// This process's spares, shared by its MPI thread and the node agent's tasks, or by a
/// process pool's supervision threads.
pub(crate) static SPARES: Spares = Spares {
    kept: Mutex::new(Kept {
        buffers: Vec::new(),
        used: None,
        watched: false,
    }),
};

impl Spares {
    /// An empty buffer with room for at least `capacity` bytes: a kept one if one is
    /// large enough (the smallest such), else a new one.
    pub(crate) fn empty(&self, capacity: usize) -> Vec<u8> {
        match self.take(capacity) {
            Some(mut buffer) => {
                buffer.clear();
                buffer
            }
            None => fresh(capacity),
        }
    }

    /// A buffer of exactly `len` bytes, to receive into: what they hold is left from an
    /// earlier message (or zero), and is overwritten.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))] // an MPI rank's needs
    pub(crate) fn filled(&self, len: usize) -> Vec<u8> {
        match self.take(len) {
            Some(mut buffer) => {
                // Only bytes past the old length are written here.
                buffer.resize(len, 0);
                buffer
            }
            None => {
                let mut buffer = fresh(len);
                buffer.resize(len, 0);
                buffer
            }
        }
    }

    /// Makes room for `additional` more bytes in `buffer`, moving what it holds into a
    /// kept buffer rather than a new one when it must grow to a large size.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))] // an MPI rank's needs
    pub(crate) fn reserve(&self, buffer: &mut Vec<u8>, additional: usize) {
        let needed = buffer.len().saturating_add(additional);
        if buffer.capacity() >= needed {
            return;
        }
        if let Some(mut bigger) = self.take(needed) {
            bigger.clear();
            bigger.extend_from_slice(buffer);
            let old = std::mem::replace(buffer, bigger);
            self.keep(old);
        } else {
            buffer.reserve(additional);
        }
    }

    /// Keeps `buffer` for a later message, if it is large (and not beyond what is kept
    /// in all); smaller kept buffers make way for a larger one.
    pub(crate) fn keep(&self, mut buffer: Vec<u8>) {
        if !(LARGE..=KEPT_BYTES).contains(&buffer.capacity()) {
            return;
        }
        if buffer.capacity() - buffer.len() < SLACK && buffer.capacity() > HEAP_MAX {
            buffer.reserve_exact(SLACK);
        }
        let mut guard = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        guard.used = Some(Instant::now());
        if std::ptr::eq(self, &SPARES) && !guard.watched {
            guard.watched = std::thread::Builder::new()
                .name("procpool-spares".into())
                .spawn(watch)
                .is_ok();
        }
        let kept = &mut guard.buffers;
        kept.push(buffer);
        kept.sort_unstable_by_key(|b| std::cmp::Reverse(b.capacity()));
        let mut total = 0;
        let within = kept
            .iter()
            .take(KEPT)
            .take_while(|b| {
                total += b.capacity();
                total <= KEPT_BYTES
            })
            .count();
        let gone = kept.split_off(within);
        drop(guard);
        drop(gone);
    }

    /// What [`recycle`] does, for these spares.
    fn recycle(&self, bytes: bytes::Bytes) {
        // Moved out only when no other holder reads it (`Vec::from` would copy a shared
        // one); whether it is large enough to keep is `keep`'s to say.
        if bytes.is_unique() {
            self.keep(Vec::from(bytes));
        }
    }

    /// Lets every kept buffer go.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))] // an MPI rank's needs
    pub(crate) fn release(&self) {
        let gone = std::mem::take(
            &mut self
                .kept
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .buffers,
        );
        drop(gone);
    }

    /// Lets every kept buffer go if none was kept or taken for [`IDLE`]; returns whether
    /// none is kept any more, and then no thread watches (the caller is that thread).
    fn release_if_idle(&self) -> bool {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let gone = match kept.used {
            Some(used) if used.elapsed() >= IDLE => std::mem::take(&mut kept.buffers),
            _ => Vec::new(),
        };
        let done = kept.buffers.is_empty();
        if done {
            kept.watched = false;
        }
        drop(kept);
        drop(gone);
        done
    }

    /// The smallest kept buffer whose capacity is at least `capacity`, if `capacity` is
    /// large.
    fn take(&self, capacity: usize) -> Option<Vec<u8>> {
        if capacity < LARGE {
            return None;
        }
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let at = kept
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= capacity)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(at, _)| at)?;
        kept.used = Some(Instant::now());
        Some(kept.buffers.swap_remove(at))
    }

    #[cfg(test)]
    fn kept(&self) -> Vec<usize> {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.buffers.iter().map(Vec::capacity).collect()
    }
}

/// A new buffer with room for `capacity` bytes, backed by huge pages where it is large
/// enough and the kernel offers them (see [`crate::sys::prefer_huge_pages`]).
fn fresh(capacity: usize) -> Vec<u8> {
    let buffer = Vec::with_capacity(capacity);
    crate::sys::prefer_huge_pages(&buffer);
    buffer
}

/// `buffer` (a job's encoded argument) as `Bytes` that any number of holders may share
/// (the pool's queue, a link writing it); a large one goes to [`SPARES`] when the last of
/// them lets go, so that the answer that comes back is read into it.
pub(crate) fn returning(buffer: Vec<u8>) -> bytes::Bytes {
    if buffer.capacity() < LARGE {
        return buffer.into();
    }
    bytes::Bytes::from_owner(Returning(buffer))
}

/// Keeps the buffer behind `bytes` (an answer that has been decoded, a payload that has
/// been sent) in [`SPARES`], if it is large and `bytes` is its only holder: the next large
/// message is built or read into it instead of into fresh memory. The buffer moves, its
/// bytes are not copied (`Bytes` made from a `Vec`; any other kind is never unique).
pub(crate) fn recycle(bytes: bytes::Bytes) {
    SPARES.recycle(bytes);
}

/// A buffer that goes to [`SPARES`] when dropped.
struct Returning(Vec<u8>);

impl AsRef<[u8]> for Returning {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        SPARES.keep(std::mem::take(&mut self.0));
    }
}

/// The thread that lets [`SPARES`] go once they have been idle for [`IDLE`]; it ends
/// when none is kept.
fn watch() {
    loop {
        std::thread::sleep(IDLE / 4);
        if SPARES.release_if_idle() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_buffer_is_used_again_and_small_ones_are_not_kept() {
        let spares = Spares::default();
        spares.keep(vec![7_u8; 2 * LARGE]);
        spares.keep(vec![1; 100]);
        assert_eq!(spares.kept().len(), 1, "a small buffer is not kept");
        let again = spares.filled(LARGE + 5);
        // A new buffer would hold zeros.
        assert_eq!((again.len(), again[0], again[LARGE + 4]), (LARGE + 5, 7, 7));
        assert_eq!(
            again.capacity(),
            2 * LARGE,
            "kept as it was: it is on the heap"
        );
        spares.keep(vec![0; HEAP_MAX + 1]);
        assert!(
            spares.kept().contains(&(HEAP_MAX + 1 + SLACK)),
            "a buffer from mmap is kept with room to spare"
        );
        spares.release();
        assert!(spares.kept().is_empty());
        spares.keep(again);
        let empty = spares.empty(LARGE);
        assert_eq!(empty.len(), 0);
        assert!(empty.capacity() >= 2 * LARGE, "the kept one");
        assert_eq!(
            spares.filled(3 * LARGE).len(),
            3 * LARGE,
            "none large enough: new"
        );
    }

    #[test]
    fn a_decoded_answer_gives_its_buffer_back_only_if_it_is_its_only_holder() {
        let spares = Spares::default();
        let answer = vec![3_u8; 2 * LARGE];
        let at = answer.as_ptr();
        spares.recycle(bytes::Bytes::from(answer));
        let mut again = spares.empty(LARGE);
        assert_eq!(again.as_ptr(), at, "the same buffer, moved, not copied");
        again.resize(LARGE, 1); // the next answer read into it

        let shared = bytes::Bytes::from(again);
        let other = shared.clone();
        spares.recycle(shared);
        assert!(spares.kept().is_empty(), "another holder still reads it");
        spares.recycle(other);
        assert_eq!(spares.kept().len(), 1, "the last holder lets it go");

        spares.release();
        spares.recycle(bytes::Bytes::from(vec![0_u8; 100]));
        spares.recycle(returning(vec![0_u8; 2 * LARGE]).slice(..));
        assert!(
            spares.kept().is_empty(),
            "small ones are not kept, and a buffer that returns by itself is never unique"
        );
    }

    #[test]
    fn filled_grows_a_shorter_buffer_and_reserve_moves_into_a_kept_one() {
        let spares = Spares::default();
        let mut short = Vec::with_capacity(4 * LARGE);
        short.extend_from_slice(&[9; 10]);
        spares.keep(short);
        let filled = spares.filled(2 * LARGE);
        assert_eq!(filled.len(), 2 * LARGE);
        assert_eq!(&filled[..10], &[9; 10]);
        assert!(filled[10..].iter().all(|&b| b == 0));
        spares.keep(filled);
        let mut growing = vec![1_u8, 2, 3];
        spares.reserve(&mut growing, 3 * LARGE);
        assert_eq!(growing, [1, 2, 3]);
        assert!(
            growing.capacity() >= 4 * LARGE,
            "moved into the kept buffer"
        );
        assert!(spares.kept().is_empty(), "the small one is not kept");
    }

    #[test]
    fn buffers_go_once_idle() {
        let spares = Spares::default();
        spares.keep(vec![0; LARGE]);
        assert!(!spares.release_if_idle(), "just kept");
        assert_eq!(spares.kept().len(), 1);
        let long_ago = Instant::now().checked_sub(IDLE * 2).unwrap();
        spares.kept.lock().unwrap().used = Some(long_ago);
        assert!(spares.release_if_idle());
        assert!(spares.kept().is_empty());
        // This process's own spares are watched by a thread that lets them go; a large
        // argument's buffer goes to them when its last holder lets go. Tests running
        // beside this one keep buffers there too: this one is told apart by its capacity,
        // larger than theirs, so that none of theirs makes it go (only its pages up to
        // `LARGE` are ever touched).
        let capacity = KEPT_BYTES / 2 + 4321;
        let mut buffer = Vec::with_capacity(capacity);
        buffer.resize(LARGE, 5);
        let argument = returning(buffer);
        let writer = argument.clone();
        drop(argument);
        assert!(!SPARES.kept().contains(&capacity), "a holder is left");
        drop(writer);
        assert!(SPARES.kept().contains(&capacity), "the last one let go");
        let deadline = Instant::now() + 30 * IDLE;
        while SPARES.kept().contains(&capacity) {
            assert!(Instant::now() < deadline, "the watcher never let them go");
            std::thread::sleep(IDLE / 10);
        }
    }

    #[test]
    fn the_largest_are_kept_within_the_bounds_and_release_lets_them_go() {
        let spares = Spares::default();
        for size in [1, 2, 3, 4, 5, 1] {
            spares.keep(Vec::with_capacity(size * LARGE));
        }
        let kept = spares.kept();
        assert_eq!(kept.len(), KEPT);
        assert!(
            kept.iter().all(|&c| c >= 2 * LARGE),
            "the smallest went: {kept:?}"
        );
        spares.keep(Vec::with_capacity(KEPT_BYTES + 1));
        assert_eq!(
            spares.kept().len(),
            KEPT,
            "a buffer beyond the bound is not kept"
        );
        spares.keep(Vec::with_capacity(KEPT_BYTES - 2 * LARGE - SLACK));
        let kept = spares.kept();
        assert!(kept.iter().sum::<usize>() <= KEPT_BYTES, "{kept:?}");
        assert!(
            kept[0] >= KEPT_BYTES - 2 * LARGE - SLACK,
            "the largest stays"
        );
        spares.release();
        assert!(spares.kept().is_empty());
    }
}
