//! The FIFO of queued jobs both pools share between submitters and workers: pushed from
//! any thread without blocking, popped by blocking threads (thread pool) or async tasks
//! (the process pool's supervisor), closed once at shutdown.

use crate::admission::{Admission, Slot};
use crate::error::JobError;
use crate::handle::JobState;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// A queued job: anything that carries the completion cell it must end through.
pub(crate) trait Queued {
    fn state(&self) -> &JobState;
}

/// How many times an idle blocking popper looks again before it sleeps, and how long it
/// pauses in between (a few microseconds in all).
const SPINS: u32 = 8;
const SPIN_PAUSES: u32 = 64;

pub(crate) struct JobQueue<T> {
    /// Taken by the submitter and a worker for every job. On lines of its own: beside the
    /// fields a pool's workers read for every job (its own struct's), each read pulled
    /// the line away from the submitter, whose next lock then waited to get it back.
    inner: Padded<Mutex<Inner<T>>>,
    available: Condvar,
    /// Notified at every push once an async popper has come: on lines of its own for the
    /// same reason.
    notify: Padded<Notifier>,
    /// The pool's bound on unfinished jobs, if it has one: closed with the queue.
    admission: Admission,
}

/// The wake-ups of async poppers (the process pool's supervisors), and whether there has
/// ever been one: a thread pool's workers pop blocking, and its submitter then does not
/// pay for a notification nobody awaits.
///
/// Poppers whose worker has nothing to do wait on `idle`, those with room for one more
/// job behind a running one on `busy`, and a push wakes an idle one if one waits (of
/// which, [`JobQueue::wake_idle_last`] says). Only when none is idle does it wake one with
/// room behind a running job: with one list for both kinds, a worker that had just taken
/// a job and had room for the next was often the popper that began waiting last, and a
/// job submitted while another worker was idle waited behind the running one.
///
/// One wake-up can still stop short of a busy popper: an idle `pop` dropped after its
/// wake-up came (its supervisor's select took another branch, as when its worker exited)
/// hands it to another idle popper, or keeps it for the next one. The job then waits for
/// the next idle popper, the busy one's next turn (its running job, expected to end soon,
/// ends) or the next push. With one list, the wake-up went on to the busy popper.
struct Notifier {
    idle: tokio::sync::Notify,
    busy: tokio::sync::Notify,
    /// A job that finds the queue empty wakes the idle popper that began waiting last.
    idle_last: AtomicBool,
    /// Idle poppers, each counted from before its first look at the queue (under the
    /// lock) until it takes a job (under the lock) or is dropped. A push reads it after
    /// its unlock: an idle popper not counted then looks after the push, and finds the
    /// job itself.
    idle_waiting: AtomicUsize,
    /// Set by the first `pop` before it takes the lock. A push that takes the lock after
    /// that `pop` looked finds it set (the lock orders the two); one that took it before
    /// left a job the `pop` finds.
    used: AtomicBool,
}

/// An idle popper's place in [`Notifier::idle_waiting`], given back when its `pop`
/// returns or is dropped.
struct IdleWaiting<'a>(&'a AtomicUsize);

impl<'a> IdleWaiting<'a> {
    fn count(waiting: &'a AtomicUsize) -> IdleWaiting<'a> {
        waiting.fetch_add(1, Ordering::Relaxed);
        IdleWaiting(waiting)
    }
}

impl Drop for IdleWaiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Notifier {
    /// Wakes one popper for a new job: an idle one if one waits (the one that waited last
    /// if the job is `alone` and the queue says so), else one with room behind a running
    /// job.
    fn wake_one(&self, alone: bool) {
        if self.idle_waiting.load(Ordering::Relaxed) == 0 {
            self.busy.notify_one();
        } else if alone && self.idle_last.load(Ordering::Relaxed) {
            self.idle.notify_last();
        } else {
            self.idle.notify_one();
        }
    }
}

struct Inner<T> {
    items: VecDeque<T>,
    closed: bool,
    /// The error the queue was closed with, if any: jobs requeued later end with it.
    failed: Option<JobError>,
    /// Threads blocked in `pop_blocking`: a push wakes one only if there is one (a condvar
    /// notification is a system call even when nobody waits).
    sleepers: usize,
    /// The length at which a push first drops the jobs that ended while queued (see
    /// [`JobQueue::purge`]); `usize::MAX` on an unbounded pool.
    purge_at: usize,
}

impl<T: Queued> JobQueue<T> {
    #[cfg(test)]
    pub(crate) fn new() -> JobQueue<T> {
        JobQueue::with_admission(Admission::default())
    }

    /// A queue whose pool admits jobs as `admission` says.
    pub(crate) fn with_admission(admission: Admission) -> JobQueue<T> {
        JobQueue {
            inner: Padded(Mutex::new(Inner {
                items: VecDeque::new(),
                closed: false,
                failed: None,
                sleepers: 0,
                purge_at: purge_at(&admission, 0),
            })),
            admission,
            available: Condvar::new(),
            notify: Padded(Notifier {
                idle: tokio::sync::Notify::new(),
                busy: tokio::sync::Notify::new(),
                idle_last: AtomicBool::new(false),
                idle_waiting: AtomicUsize::new(0),
                used: AtomicBool::new(false),
            }),
        }
    }

    /// With `last`, a job that finds the queue empty wakes the idle async popper that began
    /// waiting last, else the one that has waited longest (as a job behind others always
    /// does).
    ///
    /// A supervisor waits afresh after each answer, so the one that waited last is the
    /// worker that answered last, whose threads (and, on an MPI pool, whose node agent's
    /// MPI thread) are still awake, while the others sleep on. Waking the one that had
    /// waited longest sent a caller's one-at-a-time jobs to the workers in turn; on an MPI
    /// pool every agent then napped between two polls, as a long idle time has it do, and
    /// a job of 1–5 ms came back 0.8–2.2 ms late (see the CHANGELOG). The local process
    /// pool keeps the one idle longest (see its `Caps`).
    pub(crate) fn wake_idle_last(&self, last: bool) {
        self.notify.0.idle_last.store(last, Ordering::Relaxed);
    }

    /// The pool's admission: take a slot here before pushing a new job.
    pub(crate) fn admission(&self) -> &Admission {
        &self.admission
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a job; gives it back if the queue is closed. `Ok(true)` when no other job
    /// waited in it: the job is next.
    pub(crate) fn push(&self, item: T) -> Result<bool, T> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(item);
        }
        let purged = if inner.items.len() >= inner.purge_at {
            self.purge(&mut inner)
        } else {
            Vec::new()
        };
        let alone = inner.items.is_empty();
        inner.items.push_back(item);
        self.wake(inner, false, alone);
        drop(purged); // without the lock: the jobs' arguments and closures are the user's
        Ok(alone)
    }

    /// Takes the jobs that ended while queued (cancelled) out of the queue, keeping the
    /// others' order, and returns them for the caller to drop once it has let the lock go.
    ///
    /// `cancel()` ends a queued job and gives its room back at once, but the job, with
    /// its argument, stayed here until a worker popped it: a producer that cancelled what
    /// it queued behind busy workers piled up jobs past `max_queued` without bound. On a
    /// bounded pool at most [`Admission::limit`] queued jobs have not ended, so a push
    /// purges once the queue holds twice that (and then, twice what the purge left):
    /// at least half of what it scans goes, and a push costs O(1) amortized. An unbounded
    /// pool never purges (its queue has no bound to keep), and pays one comparison.
    fn purge(&self, inner: &mut Inner<T>) -> Vec<T> {
        let mut ended = Vec::new();
        for _ in 0..inner.items.len() {
            let Some(item) = inner.items.pop_front() else {
                break;
            };
            if item.state().is_done() {
                ended.push(item);
            } else {
                inner.items.push_back(item);
            }
        }
        inner.purge_at = purge_at(&self.admission, inner.items.len());
        ended
    }

    /// Appends a new job that took `slot` of the pool's admission (see
    /// [`Admission::admit`]); the job holds it until it ends. If the queue is closed the
    /// job comes back, its state ended (so that the slot is free again).
    pub(crate) fn push_admitted(&self, item: T, slot: Option<Slot>) -> Result<bool, T> {
        // Before the push: a worker may end the job before this thread runs again.
        Slot::held_by(slot, item.state());
        self.push(item).inspect_err(|item| {
            item.state().abandon(JobError::ShutDown);
        })
    }

    /// Releases the lock after jobs were added, waking one popper of each kind (every
    /// blocked thread with `all`, when several jobs came at once). Of the async poppers,
    /// as [`Notifier`] says, with `alone` when the job found the queue empty.
    fn wake(&self, inner: MutexGuard<'_, Inner<T>>, all: bool, alone: bool) {
        let sleepers = inner.sleepers;
        drop(inner);
        if sleepers > 0 {
            if all {
                self.available.notify_all();
            } else {
                self.available.notify_one();
            }
        }
        if self.notify.0.used.load(Ordering::Relaxed) {
            self.notify.0.wake_one(alone);
        }
    }

    /// Puts jobs that were taken but never ran back at the front, in their order, even if
    /// the queue has been closed meanwhile (a graceful close still drains them). If it was
    /// closed with an error, they end with that error instead.
    ///
    /// A claimed job goes back queued again ([`JobState::unclaim`]), so that `cancel()`
    /// removes it while it waits; one whose cancellation was asked for ends instead.
    pub(crate) fn requeue_front(&self, mut jobs: Vec<T>) {
        jobs.retain(|job| job.state().unclaim());
        if jobs.is_empty() {
            return;
        }
        let mut inner = self.lock();
        if let Some(error) = inner.failed.clone() {
            drop(inner);
            for job in jobs {
                job.state().abandon(error.clone());
            }
            return;
        }
        for job in jobs.into_iter().rev() {
            inner.items.push_front(job);
        }
        self.wake(inner, true, false);
    }

    /// Takes the oldest job if there is one, without waiting.
    pub(crate) fn try_pop(&self) -> Option<T> {
        self.lock().items.pop_front()
    }

    /// Takes the oldest job, blocking while the queue is empty and open. `None` once it is
    /// closed and empty.
    pub(crate) fn pop_blocking(&self) -> Option<T> {
        let mut inner = self.lock();
        let mut spins = 0;
        loop {
            if let Some(item) = inner.items.pop_front() {
                return Some(item);
            }
            if inner.closed {
                return None;
            }
            if spins < SPINS {
                // A job often follows within a few microseconds (a caller submitting a
                // batch): look again shortly rather than sleep and cost the submitter a
                // wake-up system call for every job.
                spins += 1;
                drop(inner);
                for _ in 0..SPIN_PAUSES {
                    std::hint::spin_loop();
                }
                std::thread::yield_now();
                inner = self.lock();
                continue;
            }
            inner.sleepers += 1;
            inner = self
                .available
                .wait(inner)
                .unwrap_or_else(PoisonError::into_inner);
            inner.sleepers -= 1;
        }
    }

    /// Takes the oldest job, waiting while the queue is empty and open. `None` once it is
    /// closed and empty. `idle`: the popper's worker has nothing to do (else it has room
    /// for one more job behind a running one); a push wakes an idle popper first.
    pub(crate) async fn pop(&self, idle: bool) -> Option<T> {
        let notifier = &self.notify.0;
        if !notifier.used.load(Ordering::Relaxed) {
            notifier.used.store(true, Ordering::Relaxed);
        }
        // Counted before the first look (see `Notifier::idle_waiting`).
        let mut waiting = idle.then(|| IdleWaiting::count(&notifier.idle_waiting));
        let notify = if idle { &notifier.idle } else { &notifier.busy };
        loop {
            let notified = notify.notified();
            futures::pin_mut!(notified);
            // Register before looking, so a push or close between the look and the await
            // still wakes us.
            notified.as_mut().enable();
            {
                let mut inner = self.lock();
                if let Some(item) = inner.items.pop_front() {
                    let more = !inner.items.is_empty();
                    // Waiting no more, under the lock: a push after this wakes another,
                    // and the wake-up passed on below is for another (a busy popper, if
                    // no other idle one waits).
                    drop(waiting.take());
                    drop(inner);
                    if more {
                        // More work: pass the wake-up on to another waiting worker.
                        notifier.wake_one(false);
                    }
                    return Some(item);
                }
                if inner.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Closes the queue: later pushes are refused, poppers drain what is left and then see
    /// `None`. With `fail_with`, the jobs still queued are ended with that error instead.
    pub(crate) fn close(&self, fail_with: Option<JobError>) {
        self.admission.close();
        let drained: Vec<T> = {
            let mut inner = self.lock();
            inner.closed = true;
            match &fail_with {
                Some(error) => {
                    inner.failed.get_or_insert_with(|| error.clone());
                    inner.items.drain(..).collect()
                }
                None => Vec::new(),
            }
        };
        self.available.notify_all();
        self.notify.0.idle.notify_waiters();
        self.notify.0.busy.notify_waiters();
        if let Some(error) = fail_with {
            for item in drained {
                item.state().abandon(error.clone());
            }
        }
    }

    /// Jobs waiting (including cancelled ones not yet skipped or purged).
    pub(crate) fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// `true` once the queue is closed and empty: no job will ever come out of it.
    pub(crate) fn is_drained(&self) -> bool {
        let inner = self.lock();
        inner.closed && inner.items.is_empty()
    }
}

/// The length at which a push purges a queue that holds `left` jobs after its last purge
/// (see [`JobQueue::purge`]): twice the larger of `left` and the admission's limit, never
/// on an unbounded pool.
fn purge_at(admission: &Admission, left: usize) -> usize {
    admission
        .limit()
        .map_or(usize::MAX, |limit| limit.max(left).max(1).saturating_mul(2))
}

/// A value on cache lines of its own: 128 bytes, as `crossbeam_utils::CachePadded` has on
/// x86-64, whose prefetcher fetches lines in pairs.
#[repr(align(128))]
struct Padded<T>(T);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Item(Arc<JobState>);

    impl Queued for Item {
        fn state(&self) -> &JobState {
            &self.0
        }
    }

    #[test]
    fn close_with_error_fails_queued_jobs_and_refuses_new_ones() {
        let queue = JobQueue::new();
        let state = JobState::new();
        assert!(queue.push(Item(state.clone())).is_ok());
        queue.close(Some(JobError::Cancelled));
        assert!(state.is_done());
        assert!(queue.push(Item(JobState::new())).is_err());
        assert!(queue.pop_blocking().is_none());
    }

    #[test]
    fn requeued_jobs_go_first_in_order_even_after_a_graceful_close() {
        let queue = JobQueue::new();
        let (a, b, c) = (JobState::new(), JobState::new(), JobState::new());
        assert!(queue.push(Item(c.clone())).is_ok());
        queue.close(None);
        queue.requeue_front(vec![Item(a.clone()), Item(b.clone())]);
        for expected in [&a, &b, &c] {
            let popped = queue.try_pop().expect("a job");
            assert!(Arc::ptr_eq(&popped.0, expected));
        }
        assert!(queue.try_pop().is_none());
        assert!(queue.is_drained());
    }

    #[test]
    fn jobs_cancelled_while_queued_are_purged_and_the_others_keep_their_order() {
        // Bounded to 2 (1 worker, max_queued 1): 2 live jobs among 10,000 cancelled one
        // after the other, as a producer that gives up on what it queued does.
        let queue = JobQueue::with_admission(Admission::new(1, Some(1)));
        let live = [JobState::new(), JobState::new()];
        for (i, state) in live.iter().enumerate() {
            assert!(queue.push(Item(state.clone())).is_ok());
            for _ in 0..5_000 {
                let cancelled = JobState::new();
                assert!(queue.push(Item(cancelled.clone())).is_ok());
                assert!(cancelled.cancel());
                assert!(queue.len() <= 4, "{} queued, {} live", queue.len(), i + 1);
            }
        }
        let left: Vec<_> = std::iter::from_fn(|| queue.try_pop())
            .filter(|item| !item.0.is_done())
            .collect();
        assert!(left.len() == 2 && left.iter().zip(&live).all(|(a, b)| Arc::ptr_eq(&a.0, b)));
    }

    #[test]
    fn jobs_requeued_after_a_failing_close_end_with_its_error() {
        let queue: JobQueue<Item> = JobQueue::new();
        queue.close(Some(JobError::ShutDown));
        let (queued, claimed) = (JobState::new(), JobState::new());
        assert!(claimed.try_start()); // sent to a worker, never ran
        queue.requeue_front(vec![Item(queued.clone()), Item(claimed.clone())]);
        assert!(queued.is_done() && claimed.is_done());
        assert!(queue.try_pop().is_none());
    }

    #[test]
    fn graceful_close_lets_poppers_drain() {
        let queue = JobQueue::new();
        assert!(queue.push(Item(JobState::new())).is_ok());
        queue.close(None);
        assert!(queue.pop_blocking().is_some());
        assert!(futures::executor::block_on(queue.pop(true)).is_none());
    }

    #[test]
    fn a_sleeping_blocking_popper_is_woken_by_push() {
        let queue = Arc::new(JobQueue::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let popper = {
            let queue = queue.clone();
            std::thread::spawn(move || tx.send(queue.pop_blocking().is_some()).unwrap())
        };
        // Push only once the popper is asleep, so that the wake-up path is the one tested.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while queue.lock().sleepers == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the popper never slept"
            );
            std::thread::yield_now();
        }
        assert_eq!(
            queue.push(Item(JobState::new())).ok(),
            Some(true),
            "an empty queue"
        );
        let popped = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("pop_blocking() was not woken by push()");
        assert!(popped);
        popper.join().unwrap();
        assert_eq!(queue.lock().sleepers, 0);
        assert_eq!(queue.push(Item(JobState::new())).ok(), Some(true));
        assert_eq!(
            queue.push(Item(JobState::new())).ok(),
            Some(false),
            "one job waits ahead"
        );
    }

    #[test]
    fn async_pop_wakes_on_push_from_another_thread() {
        let queue = Arc::new(JobQueue::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let popper = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                let popped = futures::executor::block_on(queue.pop(true)).is_some();
                tx.send(popped).unwrap();
            })
        };
        assert!(queue.push(Item(JobState::new())).is_ok());
        let popped = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("pop() was not woken by push()");
        assert!(popped);
        popper.join().unwrap();
    }

    /// A waker that records that it was woken.
    struct Flag(std::sync::atomic::AtomicBool);

    impl futures::task::ArcWake for Flag {
        fn wake_by_ref(flag: &Arc<Flag>) {
            flag.0.store(true, Ordering::SeqCst);
        }
    }

    impl Flag {
        fn new() -> Arc<Flag> {
            Arc::new(Flag(AtomicBool::new(false)))
        }

        fn woken(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// Pops polled by hand until they wait, one per `idle` flag, in that order; with the
    /// flags that say which were woken.
    #[allow(clippy::type_complexity)]
    fn waiting_pops<'q>(
        queue: &'q JobQueue<Item>,
        idle: &[bool],
    ) -> (
        Vec<std::pin::Pin<Box<impl Future<Output = Option<Item>> + 'q>>>,
        Vec<Arc<Flag>>,
    ) {
        let flags: Vec<_> = idle.iter().map(|_| Flag::new()).collect();
        let mut pops: Vec<_> = idle.iter().map(|&idle| Box::pin(queue.pop(idle))).collect();
        for (pop, flag) in pops.iter_mut().zip(&flags) {
            let waker = futures::task::waker(flag.clone());
            let mut cx = std::task::Context::from_waker(&waker);
            assert!(pop.as_mut().poll(&mut cx).is_pending());
        }
        (pops, flags)
    }

    fn woken(flags: &[Arc<Flag>]) -> Vec<bool> {
        flags.iter().map(|f| f.woken()).collect()
    }

    fn takes_a_job(pop: &mut std::pin::Pin<Box<impl Future<Output = Option<Item>>>>) -> bool {
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        matches!(pop.as_mut().poll(&mut cx), std::task::Poll::Ready(Some(_)))
    }

    #[test]
    fn a_job_alone_wakes_the_idle_popper_that_waited_last_and_one_behind_it_the_first() {
        // Three idle supervisors waiting, as after three answers in turn: a job that finds
        // the queue empty goes to the one that answered last, and the others sleep on;
        // one that finds a job queued (the woken one has not taken it yet) wakes the one
        // that has waited longest.
        let queue = JobQueue::new();
        queue.wake_idle_last(true);
        let (mut pops, flags) = waiting_pops(&queue, &[true, true, true]);
        assert_eq!(queue.push(Item(JobState::new())).ok(), Some(true));
        assert_eq!(
            woken(&flags),
            [false, false, true],
            "woken by the job alone"
        );
        assert_eq!(queue.push(Item(JobState::new())).ok(), Some(false));
        assert_eq!(
            woken(&flags),
            [true, false, true],
            "woken by the job behind it"
        );
        assert!(takes_a_job(&mut pops[2]) && takes_a_job(&mut pops[0]));
    }

    #[test]
    fn without_wake_idle_last_a_job_alone_wakes_the_idle_popper_that_waited_first() {
        let queue = JobQueue::new();
        let (mut pops, flags) = waiting_pops(&queue, &[true, true]);
        assert_eq!(queue.push(Item(JobState::new())).ok(), Some(true));
        assert_eq!(woken(&flags), [true, false]);
        assert!(takes_a_job(&mut pops[0]));
    }

    #[test]
    fn a_job_wakes_an_idle_popper_before_one_with_a_job_running() {
        // The worker that just took a job and has room behind it waits last: the next
        // job still goes to the idle one, and to the busy one only when none is idle.
        let queue = JobQueue::new();
        queue.wake_idle_last(true);
        let (mut pops, flags) = waiting_pops(&queue, &[true, false]);
        assert_eq!(queue.push(Item(JobState::new())).ok(), Some(true));
        assert_eq!(woken(&flags), [true, false]);
        assert!(takes_a_job(&mut pops[0]));
        drop(pops.remove(0)); // the idle worker is busy now, and not waiting
        assert_eq!(queue.push(Item(JobState::new())).ok(), Some(true));
        assert_eq!(woken(&flags), [true, true], "no idle popper: the busy one");
        assert!(takes_a_job(&mut pops[0]));
    }

    #[test]
    fn without_wake_idle_last_an_idle_popper_is_still_woken_before_a_busy_one_waiting_longer() {
        let queue = JobQueue::new();
        let (mut pops, flags) = waiting_pops(&queue, &[false, true]);
        assert_eq!(queue.push(Item(JobState::new())).ok(), Some(true));
        assert_eq!(woken(&flags), [false, true]);
        assert!(takes_a_job(&mut pops[1]));
    }

    #[test]
    fn an_idle_popper_that_finds_two_jobs_passes_the_wake_up_on_to_a_busy_one() {
        // Both jobs come before the idle popper runs: the second push finds it counted
        // and notifies the idle list (a permit, since the popper was woken already); the
        // popper takes the first job and must hand the second to the busy one.
        let queue = JobQueue::new();
        let (mut pops, flags) = waiting_pops(&queue, &[true, false]);
        assert_eq!(queue.push(Item(JobState::new())).ok(), Some(true));
        assert_eq!(queue.push(Item(JobState::new())).ok(), Some(false));
        assert_eq!(woken(&flags), [true, false]);
        assert!(takes_a_job(&mut pops[0]));
        assert_eq!(woken(&flags), [true, true], "the second job's wake-up");
        assert!(takes_a_job(&mut pops[1]));
    }

    #[test]
    fn a_dropped_idle_pop_is_no_longer_counted_as_waiting() {
        let queue = JobQueue::new();
        let (pops, _) = waiting_pops(&queue, &[true, true]);
        assert_eq!(queue.notify.0.idle_waiting.load(Ordering::Relaxed), 2);
        drop(pops);
        assert_eq!(queue.notify.0.idle_waiting.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_pending_async_pop_is_woken_by_the_next_push() {
        // Polled by hand: the pop has registered and found nothing before the push, the
        // case where a push that skipped the notification would leave it asleep.
        let queue = JobQueue::new();
        assert!(queue.push(Item(JobState::new())).is_ok(), "before any pop");
        let flag = Flag::new();
        let waker = futures::task::waker(flag.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut pop = Box::pin(queue.pop(true));
        assert!(
            pop.as_mut().poll(&mut cx).is_ready(),
            "the job pushed first"
        );
        let mut pop = Box::pin(queue.pop(true));
        assert!(pop.as_mut().poll(&mut cx).is_pending());
        assert!(queue.push(Item(JobState::new())).is_ok());
        assert!(flag.woken(), "the push did not wake the pop");
        assert!(matches!(
            pop.as_mut().poll(&mut cx),
            std::task::Poll::Ready(Some(_))
        ));
    }
}
