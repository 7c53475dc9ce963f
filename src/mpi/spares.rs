//! [`Spares`]: large buffers a rank keeps to use again.
//!
//! Memory the kernel has just given a process costs a page fault per 4 KiB page when it
//! is first written, and on this project's VMs that is most of the cost of a large
//! message: filling a fresh 64 MiB buffer took 44 ms, filling the same buffer again 3 ms
//! (`Vec::with_capacity` then `extend_from_slice` from a 64 MiB source, 5 times each,
//! against `copy_from_slice` into one buffer). glibc returns buffers that large to the kernel when they are freed, so a 64 MiB
//! job crossing a node agent paid for fresh memory four times over: the message rank 0
//! builds, the agent's receive, the answer the agent reads, rank 0's receive. A rank
//! therefore keeps the buffers it is done with (a message sent, frames written to a
//! worker) and builds or receives the next large message into one of them.
//!
//! At most [`KEPT`] buffers of at least [`LARGE`] bytes are kept, and the hub lets them
//! all go when its rank has been idle for a while, so a rank that moved one large message
//! does not hold its memory for the rest of the run.

use std::sync::{Mutex, PoisonError};

/// The smallest buffer worth keeping: below it, fresh memory costs little.
pub(super) const LARGE: usize = 1 << 20;
/// The most buffers kept at once...
const KEPT: usize = 4;
/// ...and the most bytes.
const KEPT_BYTES: usize = 512 << 20;
/// Room a kept buffer gains past what it held, so that a message carrying a payload of
/// the same size, with frames before it (up to an agent's batch of 64 KiB) and a trailer,
/// fits in it: the job a caller sent comes back as an answer a little larger. Growing a
/// buffer this large moves its pages, not its bytes, with glibc (`mremap`).
const SLACK: usize = 80 << 10;

/// Buffers kept for the next large message (one set per process: see [`SPARES`]).
#[derive(Debug, Default)]
pub(super) struct Spares {
    kept: Mutex<Vec<Vec<u8>>>,
}

/// This process's spares, shared by its MPI thread and the node agent's tasks.
pub(super) static SPARES: Spares = Spares {
    kept: Mutex::new(Vec::new()),
};

impl Spares {
    /// An empty buffer with room for at least `capacity` bytes: a kept one if one is
    /// large enough (the smallest such), else a new one.
    pub(super) fn empty(&self, capacity: usize) -> Vec<u8> {
        match self.take(capacity) {
            Some(mut buffer) => {
                buffer.clear();
                buffer
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// A buffer of exactly `len` bytes, to receive into: what they hold is left from an
    /// earlier message (or zero), and is overwritten.
    pub(super) fn filled(&self, len: usize) -> Vec<u8> {
        match self.take(len) {
            Some(mut buffer) => {
                // Only bytes past the old length are written here.
                buffer.resize(len, 0);
                buffer
            }
            None => vec![0; len],
        }
    }

    /// Makes room for `additional` more bytes in `buffer`, moving what it holds into a
    /// kept buffer rather than a new one when it must grow to a large size.
    pub(super) fn reserve(&self, buffer: &mut Vec<u8>, additional: usize) {
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
    pub(super) fn keep(&self, mut buffer: Vec<u8>) {
        if !(LARGE..=KEPT_BYTES).contains(&buffer.capacity()) {
            return;
        }
        if buffer.capacity() - buffer.len() < SLACK {
            buffer.reserve_exact(SLACK);
        }
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
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
        drop(kept);
        drop(gone);
    }

    /// Lets every kept buffer go.
    pub(super) fn release(&self) {
        let gone = std::mem::take(&mut *self.kept.lock().unwrap_or_else(PoisonError::into_inner));
        drop(gone);
    }

    /// The smallest kept buffer whose capacity is at least `capacity`, if `capacity` is
    /// large.
    fn take(&self, capacity: usize) -> Option<Vec<u8>> {
        if capacity < LARGE {
            return None;
        }
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let at = kept
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= capacity)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(at, _)| at)?;
        Some(kept.swap_remove(at))
    }

    #[cfg(test)]
    fn kept(&self) -> Vec<usize> {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.iter().map(Vec::capacity).collect()
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
        assert!(
            again.capacity() >= 2 * LARGE + SLACK,
            "kept with room to spare"
        );
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
