//! The completion cell of one job ([`JobState`]), shared by a pool and the job's handle,
//! and [`Wakes`], which defers the wake-ups of a run of completions.

use crate::error::JobError;
use crate::job::{Output, Undecoded};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
/// Ending, for as long as [`JobState::end_locked`] holds the lock: it is `DONE` before
/// anyone who takes the lock looks.
const ENDING: u8 = 3;

/// What has been asked of a claimed job's pool ([`JobState::request`]): nothing yet,
const NO_REQUEST: u8 = 0;
/// to take it back if its worker has not started it (a dropped `Map`'s chunk), or
const WITHDRAW: u8 = 1;
/// to take it back, or stop it if it runs (`cancel()`).
const STOP: u8 = 2;

/// What a job's `cancel()` tells the pool holding it: one per worker of a pool that can
/// stop a running job, shared by the jobs written to that worker.
///
/// A request is the job's own ([`JobState::stop_asked`], [`JobState::withdraw_asked`]);
/// this counts them and wakes the worker's task, which stops the job if it runs, or takes
/// it back from the worker (so that it never runs) if it only waits there.
#[derive(Debug, Default)]
pub(crate) struct Stopper {
    notify: tokio::sync::Notify,
    /// Requests made so far, by any of the worker's jobs: the pool compares it with the
    /// count it last looked at, to learn that one of its waiting jobs was cancelled.
    asked: AtomicU64,
}

/// What [`Stopper::asked_since`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked {
    /// The running head is to be stopped.
    StopHead,
    /// Something was asked since the count given: of a job waiting behind the head,
    /// perhaps.
    Since(u64),
}

impl Stopper {
    pub(crate) fn new() -> Arc<Stopper> {
        Arc::new(Stopper::default())
    }

    /// How many requests were made so far.
    pub(crate) fn asked(&self) -> u64 {
        self.asked.load(Ordering::Acquire)
    }

    fn ask(&self) {
        self.asked.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_one();
    }

    /// Resolves when `head` (the job its worker runs, if any) is to be stopped, or when
    /// the count of requests is no longer `seen`.
    pub(crate) async fn asked_since(&self, head: Option<&JobState>, seen: u64) -> Asked {
        loop {
            let notified = self.notify.notified();
            if head.is_some_and(|head| head.stop_asked()) {
                return Asked::StopHead;
            }
            let asked = self.asked();
            if asked != seen {
                return Asked::Since(asked);
            }
            notified.await;
        }
    }

    /// Resolves when `job` (the first of a write to its worker) is to be stopped.
    pub(crate) async fn stop_asked_for(&self, job: &JobState) {
        let mut seen = self.asked();
        while let Asked::Since(asked) = self.asked_since(Some(job), seen).await {
            seen = asked;
        }
    }
}

/// The completion cell of one job, shared by the pool and the job's handle.
///
/// Invariant: `state` moves `QUEUED -> RUNNING -> DONE` or `QUEUED -> DONE` (through
/// `ENDING`, which only the lock's holder sees), and back
/// from `RUNNING` to `QUEUED` only for a claimed job that did not run and is put back in
/// the queue ([`unclaim`](Self::unclaim), under the lock); whoever moves it to `DONE`
/// stores the result first, so the result is written exactly once and is present
/// whenever `state == DONE`.
///
/// One is allocated for every job, so it is kept small: at most 104 bytes, which with
/// the `Arc`'s counts is an allocation glibc serves from its fast bins (a size test
/// holds it there). Many jobs outstanding at once (100,000 submitted, then awaited) made
/// the 160-byte cell it was before cost the submitting thread more in the allocator's
/// slower bins than anything else it did per job; 100,000 allocations held and then
/// freed take about 103 ns each at 176 bytes, and 57–71 ns at 120 (one run each).
pub(crate) struct JobState {
    state: AtomicU8,
    /// What was asked of the pool for this claimed job ([`STOP`], [`WITHDRAW`]), by
    /// `cancel()` or a dropped `Map`, once the pool gave it a stopper; only ever raised,
    /// until the job is put back in the queue.
    request: AtomicU8,
    /// How long a worker ran the job, in nanoseconds, at most `u32::MAX` (about 4.3 s;
    /// 0: not said), set before it ends: what sizes `map`'s automatic chunks, for which
    /// anything longer is simply long.
    ran_for: AtomicU32,
    /// Everything else, under one lock (see [`Ending`]).
    ending: Mutex<Ending>,
}

/// What ending a job writes and takes, under one lock: its result, the admission slot it
/// held on a bounded pool (given back when it ends), the waker of the task awaiting it,
/// and the pool's stopper for it while a worker holds it.
struct Ending {
    /// The error is boxed: it is rare, and at 72 bytes would double the cell.
    result: Option<Result<Finished, Box<JobError>>>,
    slots: Option<Arc<tokio::sync::Semaphore>>,
    waker: Option<Waker>,
    /// What `cancel()` notifies to have the pool stop the job or take it back.
    stopper: Option<Arc<Stopper>>,
}

impl JobState {
    pub(crate) fn new() -> Arc<JobState> {
        Arc::new(JobState {
            state: AtomicU8::new(QUEUED),
            request: AtomicU8::new(NO_REQUEST),
            ran_for: AtomicU32::new(0),
            ending: Mutex::new(Ending {
                result: None,
                slots: None,
                waker: None,
                stopper: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Ending> {
        self.ending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives one permit back to `slots` when the job ends (exactly once: only the one who
    /// ends it does).
    pub(crate) fn give_back_at_end(&self, slots: Arc<tokio::sync::Semaphore>) {
        let mut ending = self.lock();
        if let Some(held) = ending.slots.replace(slots) {
            held.add_permits(1); // a second slot for one job: never held
        }
    }

    /// Takes back the admission slot the job holds, if any: its end then gives nothing
    /// back, and the caller gives the slot back when it is done with it.
    pub(crate) fn take_slot(&self) -> Option<Arc<tokio::sync::Semaphore>> {
        self.lock().slots.take()
    }

    /// Records how long a worker ran the job; called before the job ends, so that whoever
    /// sees it ended sees this too.
    pub(crate) fn set_ran_for(&self, took: Duration) {
        let nanos = u32::try_from(took.as_nanos()).unwrap_or(u32::MAX).max(1);
        self.ran_for.store(nanos, Ordering::Relaxed);
    }

    /// How long a worker ran the job, if the pool said.
    pub(crate) fn ran_for(&self) -> Option<Duration> {
        match self.ran_for.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(u64::from(nanos))),
        }
    }

    /// A cell that is already complete (a refused or failed submission).
    pub(crate) fn completed(result: Result<Output, JobError>) -> Arc<JobState> {
        let state = JobState::new();
        state.end(QUEUED, result.map(Finished::Value), || {});
        state
    }

    /// Claims a job for running, if it is queued (or claimed already: a job put back in
    /// the queue is [`unclaim`](Self::unclaim)ed first, so that `cancel()` removes it
    /// there). `false` means it has ended (cancelled while queued) and must not run.
    pub(crate) fn claim(&self) -> bool {
        self.try_start() || self.state.load(Ordering::Acquire) == RUNNING
    }

    /// Claims a queued job for running. `false` means it was cancelled meanwhile and must
    /// not run. A claimed job cannot be cancelled until the pool gives it a stopper
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

    /// Puts a claimed job that did not run here back to queued, as a job taken back from
    /// a worker (or to run again after its worker died) goes back in the queue: no longer
    /// stoppable, and removed by a `cancel()` while it waits there. `false` if it must not
    /// go back: it has ended, or a `cancel()` (or a dropped `Map`) asked to stop or
    /// withdraw it, and it ends now, with [`JobError::Cancelled`].
    pub(crate) fn unclaim(&self) -> bool {
        match self.state.load(Ordering::Acquire) {
            QUEUED => return true, // never claimed: nobody else moves it while it is here
            DONE => return false,
            _ => {}
        }
        let mut ending = self.lock();
        let stopper = ending.stopper.take();
        let put_back = if self.request.swap(NO_REQUEST, Ordering::AcqRel) != NO_REQUEST {
            !self.end_locked(ending, RUNNING, Err(JobError::Cancelled), || {}, wake_now)
        } else {
            // Under the lock, as every end of a running job and `cancel()` look at it.
            self.state
                .compare_exchange(RUNNING, QUEUED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        };
        drop(stopper);
        put_back
    }

    /// Lets a later `cancel()` of this job, once claimed for a worker, reach the pool
    /// that holds it, by notifying `stopper` (which the pool watches with
    /// [`Stopper::asked_since`]). Given before the claim: a queued job is still removed.
    pub(crate) fn make_stoppable(&self, stopper: &Arc<Stopper>) {
        self.lock().stopper = Some(stopper.clone());
    }

    /// Whether `cancel()` asked to stop this job.
    pub(crate) fn stop_asked(&self) -> bool {
        self.request.load(Ordering::Acquire) == STOP
    }

    /// Whether this job is to be taken back from its worker if it has not started there
    /// (`cancel()`, or a dropped `Map`, asked).
    pub(crate) fn withdraw_asked(&self) -> bool {
        self.request.load(Ordering::Acquire) != NO_REQUEST
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
    #[cfg(test)]
    pub(crate) fn fail_queued(&self, error: JobError) -> bool {
        self.end(QUEUED, Err(error), || {})
    }

    /// Moves `from -> DONE` and stores the result, under the result's lock so that whoever
    /// wins the exchange is the only writer and readers never see `DONE` without it.
    fn end(&self, from: u8, result: Result<Finished, JobError>, on_end: impl FnOnce()) -> bool {
        self.end_with(from, result, on_end, wake_now)
    }

    /// [`end`](Self::end), with `wake` deciding what becomes of the handle's waker.
    fn end_with(
        &self,
        from: u8,
        result: Result<Finished, JobError>,
        on_end: impl FnOnce(),
        wake: impl FnOnce(Option<Waker>),
    ) -> bool {
        self.end_locked(self.lock(), from, result, on_end, wake)
    }

    /// [`end_with`](Self::end_with), under the lock `ending` holds (which it lets go).
    fn end_locked(
        &self,
        mut ending: MutexGuard<'_, Ending>,
        from: u8,
        result: Result<Finished, JobError>,
        on_end: impl FnOnce(),
        wake: impl FnOnce(Option<Waker>),
    ) -> bool {
        if self
            .state
            .compare_exchange(from, ENDING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        ending.result = Some(result.map_err(Box::new));
        let slots = ending.slots.take();
        let waker = ending.waker.take();
        let stopper = ending.stopper.take();
        on_end();
        // Room for the next job, and the bookkeeping, before anyone can see this one
        // ended: a caller watching the state (a blocking wait spins on it) that submits
        // again at once must find the room this job held.
        if let Some(slots) = slots {
            slots.add_permits(1);
        }
        self.state.store(DONE, Ordering::Release);
        drop(ending);
        drop(stopper);
        wake(waker);
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
    ///
    /// Under the lock, so that a job being put back in the queue
    /// ([`unclaim`](Self::unclaim)) is either still claimed, and then stopped by the
    /// request it finds, or queued again, and removed.
    pub(crate) fn cancel(&self) -> bool {
        self.ask(STOP, Err(JobError::Cancelled))
    }

    /// What a dropped `Map` does to its chunks: one still queued ends with `error` and
    /// never runs; one its worker holds is taken back if the worker has not started it,
    /// and otherwise runs on (its result then goes nowhere).
    pub(crate) fn withdraw(&self, error: JobError) {
        self.ask(WITHDRAW, Err(error));
    }

    /// Ends a queued job with `queued`, or asks the pool to do `request` to the claimed
    /// job it holds: `false` if it has ended, or no pool holding it can be asked.
    fn ask(&self, request: u8, queued: Result<Finished, JobError>) -> bool {
        let ending = self.lock();
        match self.state.load(Ordering::Acquire) {
            QUEUED => self.end_locked(ending, QUEUED, queued, || {}, wake_now),
            RUNNING if ending.stopper.is_some() => {
                self.request.fetch_max(request, Ordering::AcqRel);
                // Cloned out, so that the pool's task is not woken while this holds the
                // lock.
                let stopper = ending.stopper.clone();
                drop(ending);
                if let Some(stopper) = stopper {
                    stopper.ask();
                }
                true
            }
            _ => false,
        }
    }

    pub(super) fn poll_done(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_done() {
            return Poll::Ready(()); // the common case for short jobs: no lock
        }
        let mut ending = self.lock();
        // Whoever ends the job takes the waker under this lock: either it finds this
        // waker there, or this finds the job ended.
        if self.is_done() {
            return Poll::Ready(());
        }
        match &mut ending.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            None => ending.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    pub(super) fn take(&self) -> Option<Result<Finished, JobError>> {
        let result = self.lock().result.take()?;
        Some(result.map_err(|error| *error))
    }

    /// Decodes an ended job's undecoded answer where it lies, on this (the caller's)
    /// thread, so that one that does not decode is the error it will be when read
    /// ([`finished_with_error`](Self::finished_with_error)).
    pub(super) fn settle(&self) {
        if !self.is_done() {
            return;
        }
        let undecoded = {
            let mut ending = self.lock();
            match ending.result.take() {
                Some(Ok(Finished::Encoded(undecoded))) => undecoded,
                other => {
                    ending.result = other;
                    return;
                }
            }
        };
        // Without the lock: a `Deserialize` impl runs here. Only the handle reads the
        // result of an ended job, and its owner is the one settling it.
        let settled = undecoded.decode().map(Finished::Value).map_err(Box::new);
        self.lock().result = Some(settled);
    }

    pub(super) fn finished_with_error(&self) -> bool {
        self.is_done() && matches!(self.lock().result, Some(Err(_)))
    }
}

/// Wakes the task awaiting a job that has just ended, if there is one.
fn wake_now(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
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
    /// Holds `waker` (a completed job's), if any, unless the last one held wakes the same
    /// task.
    fn defer(&mut self, waker: Option<Waker>) {
        if let Some(waker) = waker
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

#[cfg(test)]
mod tests {
    use super::*;

    /// See [`JobState`]: with the `Arc`'s two counts, glibc serves a cell of at most 104
    /// bytes from its fast bins (chunks of up to 128 bytes, header included).
    #[test]
    fn a_cell_stays_small_enough_for_the_allocators_fast_bins() {
        assert!(
            size_of::<JobState>() <= 104,
            "JobState is {} bytes",
            size_of::<JobState>()
        );
    }

    fn ended_with(state: &JobState) -> Option<JobError> {
        state.take()?.err()
    }

    #[test]
    fn a_job_put_back_is_queued_again_unless_its_stop_was_asked_for() {
        let stopper = Stopper::new();
        // Claimed, not yet handed to a worker, put back: cancellable.
        let waited = JobState::new();
        assert!(waited.claim());
        assert!(
            !waited.cancel(),
            "claimed and held by no worker: nothing to ask"
        );
        assert!(waited.unclaim());
        assert!(waited.cancel(), "queued again");
        assert_eq!(ended_with(&waited), Some(JobError::Cancelled));
        // Held by a worker, its stop asked for, then put back to run again: it ends.
        let ran = JobState::new();
        assert!(ran.claim());
        ran.make_stoppable(&stopper);
        assert!(ran.cancel());
        assert!(ran.stop_asked() && stopper.asked() == 1);
        assert!(
            !ran.unclaim(),
            "a job whose stop was asked for does not go back"
        );
        assert_eq!(ended_with(&ran), Some(JobError::Cancelled));
        // Held, put back without a request: queued, no request left over.
        let retried = JobState::new();
        assert!(retried.claim());
        retried.make_stoppable(&stopper);
        assert!(retried.unclaim());
        assert!(retried.claim());
        assert!(!retried.cancel(), "claimed again, no worker holds it yet");
        assert!(!retried.withdraw_asked());
        // An ended job does not go back.
        let done = JobState::completed(Ok(Box::new(())));
        assert!(!done.unclaim());
    }

    #[test]
    fn a_withdrawn_job_is_taken_back_but_never_asked_to_stop() {
        let stopper = Stopper::new();
        // Queued: it ends at once.
        let queued = JobState::new();
        queued.withdraw(JobError::Cancelled);
        assert_eq!(ended_with(&queued), Some(JobError::Cancelled));
        // Held by a worker: the pool is told, to take it back, not to stop it.
        let held = JobState::new();
        assert!(held.claim());
        held.make_stoppable(&stopper);
        held.withdraw(JobError::Cancelled);
        assert!(held.withdraw_asked() && !held.stop_asked());
        assert_eq!(stopper.asked(), 1);
        let asked = futures::executor::block_on(stopper.asked_since(Some(&held), 0));
        assert_eq!(asked, Asked::Since(1), "a request, not a stop of the head");
        // A `cancel()` after it raises it to a stop.
        assert!(held.cancel());
        assert!(held.stop_asked());
        let asked = futures::executor::block_on(stopper.asked_since(Some(&held), 2));
        assert_eq!(asked, Asked::StopHead);
        // Taken back, it ends instead of going back to the queue.
        assert!(!held.unclaim());
        assert_eq!(ended_with(&held), Some(JobError::Cancelled));
    }
}
