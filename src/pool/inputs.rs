//! Where a submitting thread encodes its jobs' arguments: a scratch `Vec` it keeps, and,
//! for the small ones, one shared buffer of [`ARENA`] bytes that many arguments are
//! split from, instead of a buffer of each job's own.
//!
//! A buffer per argument cost two allocations per job (the `Vec`, and the `Bytes` header
//! over a `Vec` whose length is not its capacity) and two frees, which the pool's thread
//! made when the worker took the job: a free of memory another thread allocated, at
//! about a tenth of the supervision thread's time when 100,000 tiny jobs are submitted
//! at once (perf). A small argument here costs a copy into the shared buffer and a
//! reference count. A shared buffer goes once the last argument split from it has gone
//! and this thread has started a new one (it holds the unused end of its current one).

use bytes::{Bytes, BytesMut};
use std::cell::RefCell;

/// The largest argument copied into the shared buffer; larger ones keep their own.
const SMALL: usize = 512;
/// The size of a shared buffer, and the largest scratch buffer a thread keeps. A queued
/// job holds the buffer its argument is in until a worker takes it (a job that may be
/// retried, until it ends), so at most this much per such job (jobs are taken in order,
/// so the arguments of one buffer mostly go together).
const ARENA: usize = 16 << 10;

thread_local! {
    static INPUTS: RefCell<Inputs> = RefCell::new(Inputs {
        scratch: Vec::new(),
        arena: BytesMut::new(),
    });
}

struct Inputs {
    scratch: Vec<u8>,
    arena: BytesMut,
}

/// Runs `encode` on this thread's scratch buffer (empty, with the room earlier arguments
/// left), then hands over what it wrote: split from the shared buffer if it is small,
/// or as the buffer itself (see [`crate::spares::returning`]).
///
/// `encode` runs user code (a `Serialize` impl) that may submit jobs itself: the scratch
/// buffer is taken out of the thread's slot while it runs, so that a nested call finds
/// the slot free (and an empty buffer). `encode` may also replace the buffer with one of
/// its own (an argument already encoded, a `map` chunk's buffer): one with room for more
/// than [`ARENA`] bytes is handed over whatever it holds, never kept by the thread, so a
/// large buffer still goes with its job (or to the spares) as it did before.
///
/// A job submitted from a thread-local's destructor, once this thread's slot is gone,
/// gets a buffer of its own.
pub(crate) fn encode_input<T>(encode: impl FnOnce(&mut Vec<u8>) -> T) -> (T, Bytes) {
    let mut scratch = INPUTS
        .try_with(|inputs| std::mem::take(&mut inputs.borrow_mut().scratch))
        .unwrap_or_default();
    scratch.clear();
    let result = encode(&mut scratch);
    if scratch.len() > SMALL || scratch.capacity() > ARENA {
        return (result, crate::spares::returning(scratch));
    }
    let input = INPUTS.try_with(|inputs| {
        let mut inputs = inputs.borrow_mut();
        if inputs.arena.capacity() < scratch.len() {
            // Shared with earlier arguments or not yet made: a new buffer (the old one
            // goes with the last of them).
            inputs.arena = BytesMut::with_capacity(ARENA);
        }
        inputs.arena.extend_from_slice(&scratch);
        let input = inputs.arena.split().freeze();
        if inputs.scratch.capacity() < scratch.capacity() {
            inputs.scratch = std::mem::take(&mut scratch);
        }
        input
    });
    let input = input.unwrap_or_else(|_| crate::spares::returning(scratch));
    (result, input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_arguments_share_a_buffer_and_large_ones_keep_theirs() {
        let (_, a) = encode_input(|out| out.extend_from_slice(b"first"));
        let (_, b) = encode_input(|out| out.extend_from_slice(b"second"));
        assert_eq!((&a[..], &b[..]), (&b"first"[..], &b"second"[..]));
        // Split from one buffer, one after the other.
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
        let large = vec![7_u8; SMALL + 1];
        let at = large.as_ptr();
        let (_, c) = encode_input(|out| *out = large);
        assert_eq!(
            (c.len(), c.as_ptr()),
            (SMALL + 1, at),
            "handed over, not copied"
        );
        let (_, empty) = encode_input(|_| ());
        assert!(empty.is_empty());
    }

    #[test]
    fn a_full_buffer_is_replaced_and_what_was_split_from_it_stays() {
        let pieces: Vec<Bytes> = (0..3 * ARENA / SMALL)
            .map(|i| encode_input(|out| out.resize(SMALL, i as u8)).1)
            .collect();
        for (i, piece) in pieces.iter().enumerate() {
            assert!(piece.iter().all(|&b| b == i as u8), "piece {i}");
        }
        // A new buffer began wherever a piece does not follow the one before it.
        let breaks = pieces
            .windows(2)
            .filter(|w| w[0].as_ptr().wrapping_add(w[0].len()) != w[1].as_ptr())
            .count();
        assert!(breaks >= 2, "{breaks} new buffers for three buffers' worth");
    }

    #[test]
    fn an_encoding_that_submits_again_gets_a_scratch_buffer_of_its_own() {
        let (inner, outer) = encode_input(|out| {
            out.extend_from_slice(b"outer ");
            let (_, inner) = encode_input(|out| {
                assert!(out.is_empty());
                out.extend_from_slice(b"inner");
            });
            out.extend_from_slice(b"done");
            inner
        });
        assert_eq!(
            (&inner[..], &outer[..]),
            (&b"inner"[..], &b"outer done"[..])
        );
    }

    /// The capacity of this thread's scratch buffer, as the next argument finds it.
    fn scratch_capacity() -> usize {
        encode_input(|out| out.capacity()).0
    }

    #[test]
    fn a_large_buffer_put_in_place_of_the_scratch_goes_with_its_job() {
        // A few bytes in a buffer with room for 1 MiB: an argument encoded beforehand.
        let mut own = Vec::with_capacity(1 << 20);
        own.extend_from_slice(b"few");
        let at = own.as_ptr();
        let (_, input) = encode_input(|out| std::mem::swap(out, &mut own));
        assert_eq!(
            (&input[..], input.as_ptr()),
            (&b"few"[..], at),
            "handed over"
        );
        assert!(scratch_capacity() <= ARENA, "the thread did not keep it");
        // A small one is copied out of it, and the thread keeps it as its scratch.
        let mut small = Vec::with_capacity(ARENA);
        small.extend_from_slice(b"kept");
        let (_, input) = encode_input(|out| std::mem::swap(out, &mut small));
        assert_eq!(&input[..], b"kept");
        assert_eq!(scratch_capacity(), ARENA);
    }

    /// Submits a job from its destructor, after this thread's [`INPUTS`] is gone.
    struct SubmitsOnExit(std::sync::mpsc::Sender<(bool, Bytes)>);

    impl Drop for SubmitsOnExit {
        fn drop(&mut self) {
            let slot_gone = INPUTS.try_with(|_| ()).is_err();
            let (_, input) = encode_input(|out| out.extend_from_slice(b"late"));
            let _ = self.0.send((slot_gone, input));
        }
    }

    thread_local! {
        static ON_EXIT: std::cell::RefCell<Option<SubmitsOnExit>> =
            const { std::cell::RefCell::new(None) };
    }

    #[test]
    fn a_job_encoded_after_the_threads_slot_is_gone_gets_a_buffer_of_its_own() {
        let (send, receive) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Registered first, so destroyed last: after INPUTS (the destructors of a
            // thread's locals run in the reverse order of their first use).
            ON_EXIT.with(|slot| *slot.borrow_mut() = Some(SubmitsOnExit(send)));
            let _ = encode_input(|out| out.push(0));
        })
        .join()
        .expect("the thread ended without a panic");
        let (slot_gone, input) = receive
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the destructor ran");
        assert!(slot_gone, "INPUTS was destroyed first, as this test needs");
        assert_eq!(&input[..], b"late");
    }
}
