//! Which of the jobs written to a worker it may still start: one word, shared by the pool
//! and the worker (see `crate::sys::SharedWord`), so that the pool can take back jobs
//! waiting behind a slow one while the worker is busy with it, with no message and no
//! race.
//!
//! The word holds the id of the next job the worker may start. Before it runs job `id`,
//! the worker claims it ([`claim`]), moving the word to `id + 1`. To take back the jobs
//! not started yet, the pool stores `next | REVOKED` ([`revoke`]), `next` being the id it
//! will give its next job: the worker then skips every job below `next` it had not
//! started (answering each as revoked, so that both sides stay in step) and claims `next`
//! as usual. Both moves are compare-and-swaps, so a job is either started or revoked,
//! never both.

use std::sync::atomic::{AtomicU64, Ordering};

/// Set in the word while a range of jobs is revoked.
const REVOKED: u64 = 1 << 63;

/// Claims job `id` for running: `false` if the pool revoked it (the worker skips it).
pub(crate) fn claim(word: &AtomicU64, id: u64) -> bool {
    let mut current = word.load(Ordering::Acquire);
    loop {
        if current & REVOKED != 0 && id < current & !REVOKED {
            return false;
        }
        match word.compare_exchange_weak(current, id + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(now) => current = now,
        }
    }
}

/// Whether the worker has started job `id`, one still written to it (not revoked): every
/// job below the word's id has been started, revoked ones aside, which the pool took
/// back.
pub(crate) fn started(word: &AtomicU64, id: u64) -> bool {
    id < word.load(Ordering::Acquire) & !REVOKED
}

/// What [`revoke`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Revoke {
    /// The jobs from this one up to `next` were taken back.
    From(u64),
    /// Nothing was, and nothing can be: the worker has started every job below `next`.
    NothingLeft,
    /// Nothing was yet: the worker has not started every job below `from` (it may not have
    /// read them yet). Worth asking again later.
    NotYet,
}

/// Revokes the jobs below `next` that the worker has not started, provided it has started
/// every job below `from` (the pool takes back only jobs waiting behind one that runs).
///
/// While an earlier revocation is still to be passed (the worker has claimed nothing
/// since), the worker has started nothing from its end on: the jobs written after it are
/// revoked with it, from its end, if that is at least `from`.
pub(crate) fn revoke(word: &AtomicU64, from: u64, next: u64) -> Revoke {
    let mut current = word.load(Ordering::Acquire);
    loop {
        if current & REVOKED != 0 {
            let end = current & !REVOKED;
            if end < from {
                return Revoke::NotYet;
            }
            if end >= next {
                return Revoke::NothingLeft;
            }
            match word.compare_exchange(
                current,
                next | REVOKED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Revoke::From(end),
                Err(now) => {
                    current = now;
                    continue;
                }
            }
        }
        // Everything below `current` has been started.
        let first = current;
        if first >= next {
            return Revoke::NothingLeft;
        }
        if first < from {
            return Revoke::NotYet;
        }
        match word.compare_exchange(current, next | REVOKED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Revoke::From(first),
            Err(now) => current = now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn jobs_are_claimed_in_order_and_a_revoked_range_is_skipped() {
        let word = AtomicU64::new(0);
        assert!(claim(&word, 0));
        assert!(claim(&word, 1));
        // Jobs 2..5 were written, none started: nothing is taken back before 2 runs...
        assert_eq!(revoke(&word, 3, 5), Revoke::NotYet, "2 has not started");
        assert!(claim(&word, 2));
        // ...then the jobs behind it are.
        assert_eq!(revoke(&word, 3, 5), Revoke::From(3));
        assert!(!claim(&word, 3) && !claim(&word, 4));
        assert!(claim(&word, 5), "the next job after the range runs");
        assert!(claim(&word, 6));
        // Nothing left to revoke once the worker has started everything written.
        assert_eq!(revoke(&word, 7, 7), Revoke::NothingLeft);
    }

    #[test]
    fn a_second_revocation_before_the_first_is_passed_extends_it() {
        let word = AtomicU64::new(4);
        assert_eq!(revoke(&word, 4, 8), Revoke::From(4));
        assert_eq!(
            revoke(&word, 4, 8),
            Revoke::NothingLeft,
            "nothing new written"
        );
        assert_eq!(revoke(&word, 9, 10), Revoke::NotYet, "8 has not started");
        assert_eq!(
            revoke(&word, 4, 10),
            Revoke::From(8),
            "8 and 9 join the range"
        );
        for id in 4..10 {
            assert!(!claim(&word, id));
        }
        assert!(claim(&word, 10));
        assert_eq!(revoke(&word, 11, 12), Revoke::From(11));
    }

    /// A worker claiming jobs one after the other while the pool revokes at a random
    /// moment: every job is run or revoked, exactly once, and what the pool revoked is a
    /// suffix of what it had written.
    #[test]
    fn a_job_is_started_or_revoked_never_both() {
        for round in 0..200_u64 {
            let word = Arc::new(AtomicU64::new(0));
            let written = 64_u64;
            let worker = {
                let word = word.clone();
                std::thread::spawn(move || {
                    (0..written)
                        .filter(|&id| claim(&word, id))
                        .collect::<Vec<_>>()
                })
            };
            // Spin a little, differently each round, then take back whatever is left.
            for _ in 0..round * 7 {
                std::hint::spin_loop();
            }
            let revoked_from = revoke(&word, 0, written);
            let ran = worker.join().unwrap();
            let first_revoked = match revoked_from {
                Revoke::From(first) => first,
                Revoke::NothingLeft => written,
                Revoke::NotYet => unreachable!("nothing is required to have started"),
            };
            assert_eq!(ran, (0..first_revoked).collect::<Vec<_>>(), "round {round}");
        }
    }

    /// The same, with a second revocation of the jobs written after the first, at another
    /// random moment: it extends the first while that is not passed, or starts a range of
    /// its own; either way each job is run or revoked, exactly once.
    #[test]
    fn a_job_is_started_or_revoked_never_both_across_two_revocations() {
        for round in 0..200_u64 {
            let word = Arc::new(AtomicU64::new(0));
            let worker = {
                let word = word.clone();
                std::thread::spawn(move || (0..64).filter(|&id| claim(&word, id)).collect())
            };
            let first = |revoke: Revoke, next: u64| match revoke {
                Revoke::From(first) => first,
                Revoke::NothingLeft => next,
                Revoke::NotYet => unreachable!("nothing is required to have started"),
            };
            for _ in 0..round * 5 {
                std::hint::spin_loop();
            }
            let a = first(revoke(&word, 0, 32), 32);
            for _ in 0..(round % 13) * 11 {
                std::hint::spin_loop();
            }
            let b = first(revoke(&word, 0, 64), 64);
            let ran: Vec<u64> = worker.join().unwrap();
            let expected: Vec<u64> = (0..64)
                .filter(|&id| !(a..32).contains(&id) && !(b.max(32)..64).contains(&id))
                .collect();
            assert_eq!(ran, expected, "round {round}: revoked {a}..32 and {b}..64");
        }
    }
}
