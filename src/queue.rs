//! The FIFO of queued jobs both pools share between submitters and workers: pushed from
//! any thread without blocking, popped by blocking threads (thread pool) or async tasks
//! (the process pool's supervisor), closed once at shutdown.

use crate::admission::{Admission, Slot};
use crate::error::JobError;
use crate::handle::JobState;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The wake-up of async poppers (the process pool's supervisor), and whether there has
/// ever been one: a thread pool's workers pop blocking, and its submitter then does not
/// pay for a notification nobody awaits.
struct Notifier {
    notify: tokio::sync::Notify,
    /// Set by the first `pop` before it takes the lock. A push that takes the lock after
    /// that `pop` looked finds it set (the lock orders the two); one that took it before
    /// left a job the `pop` finds.
    used: AtomicBool,
}

struct Inner<T> {
    items: VecDeque<T>,
    closed: bool,
    /// The error the queue was closed with, if any: jobs requeued later end with it.
    failed: Option<JobError>,
    /// Threads blocked in `pop_blocking`: a push wakes one only if there is one (a condvar
    /// notification is a system call even when nobody waits).
    sleepers: usize,
}

impl<T: Queued> JobQueue<T> {
    #[cfg(test)]
    pub(crate) fn new() -> JobQueue<T> {
        JobQueue::with_admission(Admission::default())
    }

    /// A queue whose pool admits jobs as `admission` says.
    pub(crate) fn with_admission(admission: Admission) -> JobQueue<T> {
        JobQueue {
            admission,
            inner: Padded(Mutex::new(Inner {
                items: VecDeque::new(),
                closed: false,
                failed: None,
                sleepers: 0,
            })),
            available: Condvar::new(),
            notify: Padded(Notifier {
                notify: tokio::sync::Notify::new(),
                used: AtomicBool::new(false),
            }),
        }
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
        let alone = inner.items.is_empty();
        inner.items.push_back(item);
        self.wake(inner, false, alone);
        Ok(alone)
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
    /// blocked thread with `all`, when several jobs came at once).
    ///
    /// Of the async poppers, the one that began waiting last if the job is the only one
    /// queued (`alone`): a supervisor task waits afresh after each answer, so that is the
    /// worker that answered last, whose threads (and, on an MPI pool, whose node agent's
    /// MPI thread) are still awake, while the others sleep on. Waking the one that had
    /// waited longest sent a caller's one-at-a-time jobs to the workers in turn; on an MPI
    /// pool every agent then napped between two polls, as a long idle time has it do, and
    /// a job of 1–5 ms came back 0.8–2.2 ms late (see the CHANGELOG). Behind other jobs,
    /// the one that has waited longest, as before: a busy worker with room for more waits
    /// too, and is often the one that waited last, so waking the last there could pile
    /// jobs up behind a running one while an idle worker slept.
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
            if alone {
                self.notify.0.notify.notify_last();
            } else {
                self.notify.0.notify.notify_one();
            }
        }
    }

    /// Puts jobs that were taken but never ran back at the front, in their order, even if
    /// the queue has been closed meanwhile (a graceful close still drains them). If it was
    /// closed with an error, they end with that error instead.
    pub(crate) fn requeue_front(&self, jobs: Vec<T>) {
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
    /// closed and empty.
    pub(crate) async fn pop(&self) -> Option<T> {
        loop {
            if !self.notify.0.used.load(Ordering::Relaxed) {
                self.notify.0.used.store(true, Ordering::Relaxed);
            }
            let notified = self.notify.0.notify.notified();
            futures::pin_mut!(notified);
            // Register before looking, so a push or close between the look and the await
            // still wakes us.
            notified.as_mut().enable();
            {
                let mut inner = self.lock();
                if let Some(item) = inner.items.pop_front() {
                    if !inner.items.is_empty() {
                        // More work: pass the wake-up on to another waiting worker.
                        self.notify.0.notify.notify_one();
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
        self.notify.0.notify.notify_waiters();
        if let Some(error) = fail_with {
            for item in drained {
                item.state().abandon(error.clone());
            }
        }
    }

    /// Jobs waiting (including cancelled ones not yet skipped).
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
        assert!(futures::executor::block_on(queue.pop()).is_none());
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
                let popped = futures::executor::block_on(queue.pop()).is_some();
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

    #[test]
    fn a_job_alone_wakes_the_async_popper_that_waited_last_and_one_behind_it_the_first() {
        // Three supervisors waiting, as after three answers in turn: a job that finds the
        // queue empty goes to the one that answered last, and the others sleep on; one
        // that finds a job queued (the woken one has not taken it yet) wakes the one that
        // has waited longest.
        let queue = JobQueue::new();
        let flags = [Flag::new(), Flag::new(), Flag::new()];
        let wakers: Vec<_> = flags
            .iter()
            .map(|f| futures::task::waker(f.clone()))
            .collect();
        let mut pops: Vec<_> = (0..3).map(|_| Box::pin(queue.pop())).collect();
        for (pop, waker) in pops.iter_mut().zip(&wakers) {
            let mut cx = std::task::Context::from_waker(waker);
            assert!(pop.as_mut().poll(&mut cx).is_pending());
        }
        let woken = || flags.iter().map(|f| f.woken()).collect::<Vec<bool>>();
        assert_eq!(queue.push(Item(JobState::new())).ok(), Some(true));
        assert_eq!(woken(), [false, false, true], "woken by the job alone");
        assert_eq!(queue.push(Item(JobState::new())).ok(), Some(false));
        assert_eq!(woken(), [true, false, true], "woken by the job behind it");
        for i in [2, 0] {
            let mut cx = std::task::Context::from_waker(&wakers[i]);
            assert!(matches!(
                pops[i].as_mut().poll(&mut cx),
                std::task::Poll::Ready(Some(_))
            ));
        }
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
        let mut pop = Box::pin(queue.pop());
        assert!(
            pop.as_mut().poll(&mut cx).is_ready(),
            "the job pushed first"
        );
        let mut pop = Box::pin(queue.pop());
        assert!(pop.as_mut().poll(&mut cx).is_pending());
        assert!(queue.push(Item(JobState::new())).is_ok());
        assert!(flag.woken(), "the push did not wake the pop");
        assert!(matches!(
            pop.as_mut().poll(&mut cx),
            std::task::Poll::Ready(Some(_))
        ));
    }
}
