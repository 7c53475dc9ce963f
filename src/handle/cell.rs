//! The completion cell of one job ([`JobState`]), shared by a pool and the job's handle,
//! and [`Wakes`], which defers the wake-ups of a run of completions.

use crate::error::JobError;
use crate::job::{Output, Undecoded};
use futures::task::AtomicWaker;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
/// How long a blocking wait watches the job's state before it parks its thread.
///
/// A short job's answer usually comes back within this time. Watching keeps the waiting
/// thread's CPU awake and lets the pool's threads and the worker share the other CPUs, so
/// that nobody waits for a sleeping CPU to wake up (the README's W1 figures show what
/// that gives). A longer job costs the waiting thread at most this much CPU before it
/// sleeps.
pub(crate) const SPIN_BEFORE_PARK: Duration = Duration::from_micros(100);

/// Checks of the state between two looks at the clock (and two `yield_now`s).
const SPINS_PER_YIELD: u32 = 64;

/// How a job ended well: with its output, or with a worker's answer, which the caller
/// decodes when it reads it (so that a `Deserialize` impl runs on the caller's thread).
pub(crate) enum Finished {
    Value(Output),
    Encoded(Undecoded),
}

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;

/// The completion cell of one job, shared by the pool and the job's handle.
///
/// Invariant: `state` only moves forward (`QUEUED -> RUNNING -> DONE` or
/// `QUEUED -> DONE`), and whoever moves it to `DONE` stores the result first, so the
/// result is written exactly once and is present whenever `state == DONE`.
pub(crate) struct JobState {
    state: AtomicU8,
    /// The result, once ended, and the admission slot held until then.
    result: Mutex<Ending>,
    waker: AtomicWaker,
    /// Set by the pool when it starts the job, if it can stop a running job (the process
    /// pool kills the worker).
    stoppable: AtomicBool,
    /// Set by `cancel()` on a running, stoppable job; the pool watches `stop`.
    stop_requested: AtomicBool,
    stop: tokio::sync::Notify,
    /// How long a worker ran the job, in nanoseconds (0: not said), set before it ends:
    /// what sizes `map`'s automatic chunks.
    ran_for: AtomicU64,
}

/// What ending a job writes and takes, under one lock: its result, and the admission slot
/// it held on a bounded pool (given back when it ends).
struct Ending {
    result: Option<Result<Finished, JobError>>,
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

impl JobState {
    pub(crate) fn new() -> Arc<JobState> {
        Arc::new(JobState {
            state: AtomicU8::new(QUEUED),
            result: Mutex::new(Ending {
                result: None,
                slots: None,
            }),
            waker: AtomicWaker::new(),
            stoppable: AtomicBool::new(false),
            stop_requested: AtomicBool::new(false),
            stop: tokio::sync::Notify::new(),
            ran_for: AtomicU64::new(0),
        })
    }

    /// Gives one permit back to `slots` when the job ends (exactly once: only the one who
    /// ends it does).
    pub(crate) fn give_back_at_end(&self, slots: Arc<tokio::sync::Semaphore>) {
        let mut ending = self.result.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = ending.slots.replace(slots) {
            held.add_permits(1); // a second slot for one job: never held
        }
    }

    /// Records how long a worker ran the job; called before the job ends, so that whoever
    /// sees it ended sees this too.
    pub(crate) fn set_ran_for(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.ran_for.store(nanos, Ordering::Relaxed);
    }

    /// How long a worker ran the job, if the pool said.
    pub(crate) fn ran_for(&self) -> Option<Duration> {
        match self.ran_for.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// A cell that is already complete (a refused or failed submission).
    pub(crate) fn completed(result: Result<Output, JobError>) -> Arc<JobState> {
        let state = JobState::new();
        state.end(QUEUED, result.map(Finished::Value), || {});
        state
    }

    /// Claims a job for running, if it is queued or was claimed before (a job that was
    /// handed to a worker and put back unstarted). `false` means it has ended (cancelled
    /// while queued) and must not run.
    pub(crate) fn claim(&self) -> bool {
        self.try_start() || self.state.load(Ordering::Acquire) == RUNNING
    }

    /// Claims a queued job for running. `false` means it was cancelled meanwhile and must
    /// not run. A claimed job is not stoppable until the pool says so
    /// ([`make_stoppable`](Self::make_stoppable)).
    pub(crate) fn try_start(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Asks the CPU for the cache line that [`claim`](Self::claim) changes: see
    /// [`crate::sys::prefetch`].
    pub(crate) fn prefetch_claim(&self) {
        crate::sys::prefetch(self.state.as_ptr());
    }

    /// Lets a later `cancel()` stop this claimed job: it is running now.
    pub(crate) fn make_stoppable(&self) {
        self.stoppable.store(true, Ordering::Release);
    }

    /// Ends a job that is queued or claimed but never ran with `error`; `false` if it had
    /// already ended.
    pub(crate) fn abandon(&self, error: JobError) -> bool {
        self.end(QUEUED, Err(error.clone()), || {}) || self.end(RUNNING, Err(error), || {})
    }

    /// Ends a running job with `result`. Returns `false` if it had already ended (a
    /// timeout or a cancellation got there first), in which case nothing changes.
    #[cfg(test)]
    pub(crate) fn complete(&self, result: Result<Output, JobError>) -> bool {
        self.end(RUNNING, result.map(Finished::Value), || {})
    }

    /// Ends a running job with `result`, running `on_end` (bookkeeping such as the pool's
    /// counters) after the result is stored and before anyone is woken, so that whoever
    /// sees the result also sees the bookkeeping. Returns `false` if the job had already
    /// ended, in which case nothing changes and `on_end` does not run.
    pub(crate) fn complete_then(
        &self,
        result: Result<Output, JobError>,
        on_end: impl FnOnce(),
    ) -> bool {
        self.end(RUNNING, result.map(Finished::Value), on_end)
    }

    /// Like [`complete_then`](Self::complete_then), but the handle's waker goes into
    /// `wakes` instead of being woken now: a pool completing a run of jobs wakes their
    /// awaiting task once, after the last, instead of once per job.
    pub(crate) fn complete_deferred(
        &self,
        result: Result<Finished, JobError>,
        on_end: impl FnOnce(),
        wakes: &mut Wakes,
    ) -> bool {
        self.end_with(RUNNING, result, on_end, |waker| wakes.defer(waker))
    }

    /// Ends a job that is still queued with `error`. Returns `false` if it already started
    /// or ended, in which case nothing changes.
    pub(crate) fn fail_queued(&self, error: JobError) -> bool {
        self.end(QUEUED, Err(error), || {})
    }

    /// Moves `from -> DONE` and stores the result, under the result's lock so that whoever
    /// wins the exchange is the only writer and readers never see `DONE` without it.
    fn end(&self, from: u8, result: Result<Finished, JobError>, on_end: impl FnOnce()) -> bool {
        self.end_with(from, result, on_end, AtomicWaker::wake)
    }

    /// [`end`](Self::end), with `wake` deciding what becomes of the handle's waker.
    fn end_with(
        &self,
        from: u8,
        result: Result<Finished, JobError>,
        on_end: impl FnOnce(),
        wake: impl FnOnce(&AtomicWaker),
    ) -> bool {
        let mut slot = self.result.lock().unwrap_or_else(PoisonError::into_inner);
        if self
            .state
            .compare_exchange(from, DONE, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        slot.result = Some(result);
        let slots = slot.slots.take();
        drop(slot);
        on_end();
        // Room for the next job before the caller hears of this one's end.
        if let Some(slots) = slots {
            slots.add_permits(1);
        }
        wake(&self.waker);
        true
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state.load(Ordering::Acquire) == DONE
    }

    /// Watches the state for up to `budget`, for a thread about to block on the job;
    /// returns `is_done()`.
    ///
    /// It yields its CPU every [`SPINS_PER_YIELD`] checks, so that it never holds up a
    /// thread that shares its CPU (the pool's own threads among them).
    pub(crate) fn spin_until_done(&self, budget: Duration) -> bool {
        if self.is_done() {
            return true; // the common case for short jobs: no clock read
        }
        let start = std::time::Instant::now();
        let mut spins = 0_u32;
        while !self.is_done() {
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(SPINS_PER_YIELD) {
                std::hint::spin_loop();
                continue;
            }
            if start.elapsed() >= budget {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }

    /// Requests cancellation; see [`JobHandle::cancel`].
    pub(crate) fn cancel(&self) -> bool {
        if self.fail_queued(JobError::Cancelled) {
            return true;
        }
        if self.state.load(Ordering::Acquire) == RUNNING && self.stoppable.load(Ordering::Relaxed) {
            self.stop_requested.store(true, Ordering::Release);
            self.stop.notify_one();
            return true;
        }
        false
    }

    /// Resolves when `cancel()` asks the pool to stop this running job.
    pub(crate) async fn stop_requested(&self) {
        loop {
            let notified = self.stop.notified();
            if self.stop_requested.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    pub(super) fn poll_done(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_done() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.is_done() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    pub(super) fn take(&self) -> Option<Result<Finished, JobError>> {
        self.result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .result
            .take()
    }

    pub(super) fn finished_with_error(&self) -> bool {
        self.is_done()
            && matches!(
                self.result
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .result,
                Some(Err(_))
            )
    }
}

/// Wakers of completed jobs, held back so that a run of completions wakes each awaiting
/// task once, when the run ends ([`flush`](Self::flush), or drop).
///
/// A caller awaiting its handles in order is otherwise woken by the first completion of a
/// run, catches up while the rest complete, and is woken again for each: one thread
/// wake-up per job instead of one per run.
#[derive(Default)]
pub(crate) struct Wakes(Vec<Waker>);

impl Wakes {
    /// Holds the waker registered in `cell`, if any, unless the last one held wakes the
    /// same task.
    fn defer(&mut self, cell: &AtomicWaker) {
        if let Some(waker) = cell.take()
            && !self.0.last().is_some_and(|last| last.will_wake(&waker))
        {
            self.0.push(waker);
        }
    }

    /// Wakes every task held, once.
    pub(crate) fn flush(&mut self) {
        for waker in self.0.drain(..) {
            waker.wake();
        }
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        self.flush();
    }
}
