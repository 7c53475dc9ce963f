//! Taking back jobs written to a worker that it has not started: those waiting behind a
//! slow head while another worker idles (they go to it), and those whose `cancel()` (or
//! whose `Map`'s drop) asked for it, so that they never run.

use super::{GIVE_BACK_AFTER, Serving};
use crate::pool::backend::{Backend, WorkerLink};
use crate::wire::claims::Revoke;
use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

/// How soon to try again to take back a cancelled job waiting behind the head, when the
/// worker was not known to have started the head, nor known not to have.
const WITHDRAW_RETRY: Duration = Duration::from_millis(1);

impl<B: Backend> Serving<'_, B> {
    /// When the jobs waiting behind the head are to be given back if another worker is idle
    /// then: [`GIVE_BACK_AFTER`] after the head started (and again as often, while the
    /// worker has not started it yet), once per head, if the worker can skip jobs it was
    /// sent. Not while the pool drains (other workers leave rather than wait for jobs).
    /// Jobs taken back before and still to be skipped do not stop it (a revocation not
    /// passed yet is extended): those taken back with a cancelled one, and written again
    /// behind the same slow head, must go to an idle worker too.
    pub(super) fn give_back_at(&self) -> Option<Instant> {
        if !self.link.can_revoke() || self.retiring || self.core.queue.is_closed() {
            return None;
        }
        let (head, started) = self.line.head_with_waiting()?;
        if self.gave_back_for == Some(head) {
            return None;
        }
        Some(match self.give_back_retry {
            Some((retry_head, at)) if retry_head == head => at,
            _ => started + GIVE_BACK_AFTER,
        })
    }

    /// Takes back the jobs waiting behind the running head that the worker has not started,
    /// and puts them at the front of the queue, for the idle worker; `true` if it did (this
    /// worker then takes no more until its line is empty, so that they go elsewhere).
    pub(super) fn give_back(&mut self) -> bool {
        let Some((head, _)) = self.line.head_with_waiting() else {
            return false;
        };
        if !self.core.has_idle_worker() {
            return false; // taken meanwhile: wait for the next idle worker
        }
        let first = match self.link.revoke(head + 1, self.next_id) {
            Revoke::From(first) => first,
            Revoke::NothingLeft => {
                self.gave_back_for = Some(head); // the worker is past them
                return false;
            }
            Revoke::NotYet => {
                // Counted as started when written, the head may not have been read yet
                // (the worker descheduled, or reading a large payload): ask again later.
                self.give_back_retry = Some((head, Instant::now() + GIVE_BACK_AFTER));
                return false;
            }
        };
        self.gave_back_for = Some(head);
        let jobs = self.line.take_from(first);
        tracing::debug!(
            slot = self.slot,
            worker = %self.id,
            jobs = jobs.len(),
            "gave back the jobs waiting behind a slow one"
        );
        self.revoked.add(first..self.next_id);
        self.core.queue.requeue_front(jobs);
        true
    }

    /// Takes back the jobs waiting behind the head if one of them was cancelled (or its
    /// `Map` dropped), so that it never runs: it ends with [`JobError::Cancelled`] and
    /// the others go back to the front of the queue, untouched (the head too, if it is
    /// to end and the worker has not read it yet). Whatever the worker has started
    /// stays: a cancelled job among those is stopped when it becomes the head, and one
    /// only withdrawn runs on. Returns whether jobs were taken back (and went to the
    /// queue).
    ///
    /// [`JobError::Cancelled`]: crate::JobError::Cancelled
    pub(super) fn withdraw(&mut self) -> bool {
        self.withdraw_retry = None;
        if !self.line.waiting_withdrawn() {
            return false;
        }
        match self.take_back(false) {
            TookBack::Head | TookBack::Behind => true,
            TookBack::NotYet => {
                self.withdraw_retry = Some(Instant::now() + WITHDRAW_RETRY);
                false
            }
            TookBack::Nothing => false,
        }
    }

    /// Takes back the head whose `cancel()` asked to stop it, with the jobs behind it, if
    /// the worker has not started it yet (it became the head when the job before it
    /// answered, and may still wait to be read): `true` if it did, and the worker need not
    /// be killed. The head ends with [`JobError::Cancelled`]; the others go back to the
    /// front of the queue, as in [`withdraw`](Self::withdraw).
    ///
    /// [`JobError::Cancelled`]: crate::JobError::Cancelled
    pub(super) fn take_back_head(&mut self) -> bool {
        self.take_back(true) == TookBack::Head
    }

    /// Takes back the jobs behind the head that the worker has not started, and the head
    /// too if the worker has not started it (and it is to end, or can be sent again);
    /// they go back to the queue, where those cancelled meanwhile end.
    ///
    /// `head_only` asks only for the head: nothing is taken back unless it can be.
    fn take_back(&mut self, head_only: bool) -> TookBack {
        let Some(head) = self.line.head_id() else {
            return TookBack::Nothing;
        };
        if !self.link.can_revoke() {
            return TookBack::Nothing;
        }
        // The worker may not have read the head yet: it goes back too then, if it can.
        let head_too = self.line.head_can_go_back() && self.link.started(head) == Some(false);
        if head_only && !head_too {
            return TookBack::Nothing;
        }
        let from = if head_too { head } else { head + 1 };
        let first = match self.link.revoke(from, self.next_id) {
            Revoke::From(first) => first,
            Revoke::NothingLeft => return TookBack::Nothing,
            Revoke::NotYet => return TookBack::NotYet,
        };
        let jobs = if first == head {
            self.line.take_back_all()
        } else {
            self.line.take_from(first)
        };
        tracing::debug!(
            slot = self.slot,
            worker = %self.id,
            jobs = jobs.len(),
            head = first == head,
            "took back the jobs behind the head to drop a cancelled one"
        );
        self.revoked.add(first..self.next_id);
        // The cancelled ones end here, the others are queued again.
        self.core.queue.requeue_front(jobs);
        if first == head {
            TookBack::Head
        } else {
            TookBack::Behind
        }
    }
}

/// What [`Serving::take_back`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TookBack {
    /// The head and the jobs behind it went back to the queue.
    Head,
    /// The jobs behind the head that the worker had not started went back.
    Behind,
    /// Nothing yet: the worker had not started the head, which could not go back (ask
    /// again later).
    NotYet,
    /// Nothing: the worker had started it all, or the link cannot take jobs back.
    Nothing,
}

/// The jobs taken back from a worker that it has not answered as skipped yet, in ranges
/// of ids, oldest first: the worker answers them in order, among its other answers.
#[derive(Debug, Default)]
pub(super) struct Revoked(VecDeque<Range<u64>>);

impl Revoked {
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds the jobs of `range`, written after every job already here.
    fn add(&mut self, range: Range<u64>) {
        match self.0.back_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ if range.is_empty() => {}
            _ => self.0.push_back(range),
        }
    }

    /// Takes the worker's answer that it skipped job `id`: `false` if that is not the next
    /// one it was to skip.
    pub(super) fn skipped(&mut self, id: u64) -> bool {
        let Some(first) = self.0.front_mut() else {
            return false;
        };
        if first.start != id {
            return false;
        }
        first.start += 1;
        if first.is_empty() {
            self.0.pop_front();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Revoked;

    #[test]
    fn skipped_jobs_are_taken_in_order_across_ranges() {
        let mut revoked = Revoked::default();
        revoked.add(3..5);
        revoked.add(5..6); // extends the first
        revoked.add(8..8); // nothing
        revoked.add(9..10);
        assert!(!revoked.skipped(4), "3 comes first");
        for id in [3, 4, 5, 9] {
            assert!(revoked.skipped(id), "{id}");
        }
        assert!(revoked.is_empty());
        assert!(!revoked.skipped(10));
    }
}
