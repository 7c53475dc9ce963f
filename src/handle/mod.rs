//! [`JobHandle`], the awaitable end of a submitted job, and the shared completion cell
//! ([`JobState`]) through which a pool hands the job's result to it.
//!
//! The cell is runtime-agnostic: an atomic state, and the result and the awaiting task's
//! waker behind a mutex. A pool completes it from whatever thread it runs on; the caller polls
//! it from any executor or blocks on it.

use crate::error::JobError;
use crate::job::Output;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

mod block;
mod cell;
mod watch;

pub(crate) use cell::{Asked, Finished, JobState, SPIN_BEFORE_PARK, Stopper, Wakes};
pub(crate) use watch::{key_of, submitted, submitting};

/// The type-erased handle of a submitted job, as the object-safe
/// [`Executor`](crate::Executor) returns it. [`ExecutorExt`](crate::ExecutorExt) wraps it
/// in a typed [`JobHandle`].
#[must_use = "a handle does nothing unless awaited; dropping it detaches the job"]
pub struct ErasedHandle {
    pub(crate) state: Arc<JobState>,
}

impl ErasedHandle {
    pub(crate) fn new(state: Arc<JobState>) -> ErasedHandle {
        ErasedHandle { state }
    }

    /// The handle of a job that ended before it was queued (refused, or unrunnable).
    pub(crate) fn failed(error: JobError) -> ErasedHandle {
        ErasedHandle::new(JobState::completed(Err(error)))
    }

    /// How long a worker ran the job, once it has ended, if the pool said.
    pub(crate) fn ran_for(&self) -> Option<Duration> {
        self.state.ran_for()
    }

    /// The job's output, once it has ended. A process pool hands its answer over
    /// undecoded: it is decoded here, on the caller's thread.
    #[inline]
    pub(crate) fn poll_output(&mut self, cx: &mut Context<'_>) -> Poll<Result<Output, JobError>> {
        match self.state.poll_done(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                let output = self.state.take().expect(
                    "ErasedHandle polled after it returned its result (a Future contract violation)",
                );
                Poll::Ready(output.and_then(|finished| match finished {
                    Finished::Value(output) => Ok(output),
                    Finished::Encoded(undecoded) => undecoded.decode(),
                }))
            }
        }
    }
}

impl fmt::Debug for ErasedHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErasedHandle")
            .field("finished", &self.state.is_done())
            .finish()
    }
}

/// An owned handle to a submitted job: a [`Future`] of the job's result.
///
/// Returned at once by [`ExecutorExt::submit`](crate::ExecutorExt::submit) (the job is
/// already queued; it runs whether or not the handle is polled), in the manner of
/// `tokio::spawn`. Await it for `Ok(R)` or the [`JobError`] that ended the job. Synchronous
/// code uses [`wait`](JobHandle::wait) or [`wait_timeout`](JobHandle::wait_timeout).
///
/// The handle works under any executor: it holds no tokio type and needs no runtime.
///
/// # Awaiting a short job
///
/// On a tokio multi-thread runtime that runs this task alone, a task that awaits the job
/// it has just submitted to a pool with room has its first poll watch the job for up to
/// 100 µs (yielding its CPU now and then) before it returns `Pending`, when that
/// function's jobs have been coming back within that time. The answer of a short job is
/// then taken at once, instead of after the wake-up of a parked runtime thread, which on a
/// VM is most of a short job's round trip (the README's W1 figures). The watch is left
/// out:
///
/// - when the job found other jobs waiting in the pool's queue (or, on a process pool, no
///   worker idle; a thread pool asks the queue only);
/// - when the thread submitted another job before it polled this one: of a batch
///   submitted, then awaited, only the last job can be watched, once;
/// - unless the runtime is a tokio multi-thread one with at most one live task (looked at
///   once every 64 first polls of a thread): not on a current-thread runtime, whose one
///   thread also runs its I/O, timers and any `LocalSet`, not beside other tasks, whose
///   thread a watch would hold, and not outside tokio, where nothing says what else waits;
/// - for a while after a watch of a job of the same function missed: for the next 32 of
///   its jobs that would have had one, twice as many after each miss in a row, up to
///   1,024 (a function whose jobs are long soon costs one watch in 1,024).
///
/// A watch holds the polling thread, and any future polled in the same task (in a
/// `join!` or `select!`), for at most those 100 µs. A blocking
/// [`wait`](JobHandle::wait) watches in the same way, always.
///
/// # Cancel safety
///
/// Dropping a `JobHandle` **detaches** the job: it keeps running and its result is
/// discarded. To stop it, call [`cancel`](JobHandle::cancel). Dropping a `select!` branch
/// that awaits a handle therefore never loses the job.
///
/// # Examples
///
/// ```
/// use procpool::{ExecutorExt, ThreadPoolExecutor};
///
/// fn double(x: u64) -> u64 {
///     x * 2
/// }
///
/// # futures::executor::block_on(async {
/// let pool = ThreadPoolExecutor::new(2)?;
/// let handle = pool.submit(double, 21);
/// assert_eq!(handle.await?, 42);
/// # Ok::<(), procpool::Error>(())
/// # }).unwrap();
/// ```
#[must_use = "a handle does nothing unless awaited; dropping it detaches the job"]
pub struct JobHandle<R> {
    raw: ErasedHandle,
    _result: PhantomData<fn() -> R>,
}

impl<R: 'static> JobHandle<R> {
    pub(crate) fn from_erased(raw: ErasedHandle) -> JobHandle<R> {
        JobHandle {
            raw,
            _result: PhantomData,
        }
    }

    /// This handle, whose first poll watches for the answer for a moment when jobs of
    /// `function` (a [`key_of`]) have been coming back that soon.
    pub(crate) fn watching(self, function: usize) -> JobHandle<R> {
        watch::of_function(self.cell(), function);
        self
    }

    /// The address of the job's completion cell: which job this is, for [`watch`].
    fn cell(&self) -> *const () {
        Arc::as_ptr(&self.raw.state).cast()
    }

    /// A handle whose job ended before it was queued, with `error`.
    pub(crate) fn failed(error: JobError) -> JobHandle<R> {
        JobHandle::from_erased(ErasedHandle::failed(error))
    }

    /// Cancels the job, if it has not finished.
    ///
    /// - A **queued** job is removed: it never runs, and the handle yields
    ///   [`JobError::Cancelled`].
    /// - A **running** job on a [`ProcessPoolExecutor`](crate::ProcessPoolExecutor) is
    ///   stopped: its worker process is killed and replaced, and the handle yields
    ///   [`JobError::Cancelled`].
    /// - A running job on a [`ThreadPoolExecutor`](crate::ThreadPoolExecutor) cannot be
    ///   stopped (Rust cannot kill a thread); it runs to the end and the handle yields its
    ///   result.
    /// - A short job already **handed to a worker process** but waiting behind the job it
    ///   runs (the pool streams short jobs ahead, so that workers never wait for the
    ///   parent) is taken back: it never runs, and the worker lives on. If the worker had
    ///   just started it, it is stopped as a running job is. An `MpiPoolExecutor`'s node
    ///   agents cannot take a job back: there it is stopped when it starts.
    ///
    /// Returns `true` if the cancellation took effect: the job ends with
    /// [`JobError::Cancelled`], unless a running job delivers its result in the same
    /// instant, in which case the result wins. Returns `false` if the job has already
    /// finished or cannot be stopped.
    pub fn cancel(&self) -> bool {
        self.raw.state.cancel()
    }

    /// This handle, made to cancel its job when dropped unfinished (see
    /// [`CancelOnDrop`](crate::CancelOnDrop)); a plain handle detaches instead.
    pub fn cancel_on_drop(self) -> crate::CancelOnDrop<R> {
        crate::CancelOnDrop::new(self)
    }

    /// `true` once the job has ended (with a result or an error), so that awaiting the
    /// handle returns at once.
    pub fn is_finished(&self) -> bool {
        self.raw.state.is_done()
    }

    /// Blocks the current thread until the job ends, for synchronous callers.
    ///
    /// Do not call this from an async task: it blocks the executor's thread. Await the
    /// handle there instead.
    ///
    /// The thread first watches the job for up to 100 µs, yielding its CPU now and then,
    /// and only then sleeps. A short job's result is then seen at once, without the wake-up
    /// of a sleeping thread (on a VM, often of a sleeping CPU). A longer wait costs at most
    /// those 100 µs of CPU.
    ///
    /// # Errors
    ///
    /// The [`JobError`] that ended the job.
    pub fn wait(self) -> Result<R, JobError> {
        watch::forget(self.cell()); // it watches here, and longer
        self.raw.state.spin_until_done(SPIN_BEFORE_PARK);
        block::block_on(self) // no allocation if it has ended
    }

    /// Blocks the current thread until the job ends or `timeout` passes. On timeout the
    /// handle comes back in `Err`, and the job goes on.
    ///
    /// Like [`wait`](JobHandle::wait), it watches the job for up to 100 µs (or `timeout`,
    /// if shorter) before it sleeps.
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<Result<R, JobError>, Self> {
        let start = std::time::Instant::now();
        watch::forget(self.cell());
        if self
            .raw
            .state
            .spin_until_done(SPIN_BEFORE_PARK.min(timeout))
        {
            return Ok(block::block_on(&mut self));
        }
        let left = timeout.saturating_sub(start.elapsed());
        let ready = futures::future::poll_fn(|cx| self.raw.state.poll_done(cx));
        if block::block_on(within(ready, Some(left))) {
            Ok(block::block_on(&mut self))
        } else {
            Err(self)
        }
    }

    /// The first poll's bounded watch: when this is the job its thread submitted last,
    /// it went straight to a worker, the runtime has few tasks, and jobs of its
    /// function have been coming back within [`watch::WATCH`], watch for its answer that
    /// long before the poll parks the task (see [`watch`]).
    #[inline(never)]
    fn watch_first(&self, function: usize) {
        if !watch::few_tasks_lately() {
            return;
        }
        let table = watch::table();
        if table.should_watch(function) {
            let saw_it = self.raw.state.spin_until_done(watch::WATCH);
            table.watched(function, saw_it);
        }
    }

    /// Polls for the end without taking the result ([`wait`](crate::wait)'s way), and
    /// without a watch: a handle polled so is not watched at a later poll either.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        watch::forget(self.cell());
        self.raw.state.poll_done(cx)
    }

    /// `true` once the job has ended with an error, or with an answer that does not
    /// decode, which this decodes (on the caller's thread, as reading it would).
    pub(crate) fn finished_with_error(&self) -> bool {
        self.raw.state.settle();
        self.raw.state.finished_with_error()
    }
}

impl<R: 'static> Future for JobHandle<R> {
    type Output = Result<R, JobError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !this.raw.state.is_done()
            && let Some(function) = watch::first_poll(this.cell())
        {
            this.watch_first(function);
        }
        let output = std::task::ready!(this.raw.poll_output(cx));
        Poll::Ready(output.map(|boxed| {
            *boxed
                .downcast::<R>()
                .expect("procpool bug: job output has the wrong type")
        }))
    }
}

impl<R> fmt::Debug for JobHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("finished", &self.raw.state.is_done())
            .finish()
    }
}

/// Awaits `future` for at most `timeout` (forever when `None`), on a runtime-agnostic
/// timer. `true` if it finished in time.
pub(crate) async fn within(future: impl Future<Output = ()>, timeout: Option<Duration>) -> bool {
    let Some(timeout) = timeout else {
        future.await;
        return true;
    };
    futures::pin_mut!(future);
    let delay = futures_timer::Delay::new(timeout);
    matches!(
        futures::future::select(future, delay).await,
        futures::future::Either::Left(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::task::Waker;

    /// A waker that counts its wake-ups.
    struct Counting(AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A started job whose handle has been polled (and is pending) with a counting waker.
    fn awaited(counter: &Arc<Counting>) -> (Arc<JobState>, ErasedHandle) {
        let state = JobState::new();
        assert!(state.try_start());
        let handle = ErasedHandle::new(state.clone());
        let waker = Waker::from(counter.clone());
        assert!(
            handle
                .state
                .poll_done(&mut Context::from_waker(&waker))
                .is_pending()
        );
        (state, handle)
    }

    #[test]
    fn deferred_completions_wake_their_task_once_when_flushed() {
        let counter = Arc::new(Counting(AtomicUsize::new(0)));
        let jobs: Vec<_> = (0..3).map(|_| awaited(&counter)).collect();
        let mut wakes = Wakes::default();
        for (k, (state, _)) in jobs.iter().enumerate() {
            assert!(state.complete_deferred(Ok(Finished::Value(Box::new(k))), || {}, &mut wakes));
        }
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            0,
            "woken before the flush"
        );
        assert!(jobs.iter().all(|(state, _)| state.is_done()));
        wakes.flush();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "one task, one wake-up");
        wakes.flush();
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "a flush empties the list"
        );
    }

    #[test]
    fn deferred_wakes_reach_every_task_even_when_dropped() {
        let first = Arc::new(Counting(AtomicUsize::new(0)));
        let second = Arc::new(Counting(AtomicUsize::new(0)));
        let (a, _ha) = awaited(&first);
        let (b, _hb) = awaited(&second);
        {
            let mut wakes = Wakes::default();
            assert!(a.complete_deferred(Ok(Finished::Value(Box::new(1_u8))), || {}, &mut wakes));
            assert!(b.complete_deferred(Ok(Finished::Value(Box::new(2_u8))), || {}, &mut wakes));
            assert!(
                !a.complete_deferred(Ok(Finished::Value(Box::new(3_u8))), || {}, &mut wakes),
                "a job ends once"
            );
        }
        assert_eq!(first.0.load(Ordering::SeqCst), 1);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn result_is_written_once_and_cancel_loses_to_start() {
        let state = JobState::new();
        assert!(state.try_start());
        assert!(
            !state.cancel(),
            "a running job no pool can stop cannot be cancelled"
        );
        state.complete(Ok(Box::new(5_u8)));
        assert!(!state.fail_queued(JobError::Cancelled));
        let mut handle = JobHandle::<u8>::from_erased(ErasedHandle::new(state));
        assert_eq!(futures::executor::block_on(&mut handle), Ok(5));
    }

    #[test]
    fn cancelled_queued_job_cannot_start() {
        let state = JobState::new();
        assert!(state.cancel());
        assert!(!state.try_start());
        let handle = JobHandle::<u8>::from_erased(ErasedHandle::new(state));
        assert_eq!(handle.wait(), Err(JobError::Cancelled));
    }

    #[test]
    fn spinning_sees_a_result_stored_by_another_thread() {
        let state = JobState::new();
        assert!(state.try_start());
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let completer = {
            let (state, start) = (state.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                assert!(state.complete(Ok(Box::new(7_u8))));
            })
        };
        start.wait();
        // A budget far beyond any scheduling delay: `false` here means the spin missed it.
        assert!(state.spin_until_done(Duration::from_secs(30)));
        completer.join().unwrap();
        let handle = JobHandle::<u8>::from_erased(ErasedHandle::new(state));
        assert_eq!(handle.wait(), Ok(7));
    }

    #[test]
    fn spinning_gives_up_after_its_budget() {
        let state = JobState::new();
        let start = std::time::Instant::now();
        assert!(!state.spin_until_done(Duration::from_millis(2)));
        assert!(start.elapsed() >= Duration::from_millis(2));
        assert!(state.abandon(JobError::Cancelled));
        assert!(
            state.spin_until_done(Duration::ZERO),
            "a finished job needs no spin"
        );
    }

    #[test]
    fn wait_timeout_shorter_than_the_spin_times_out_then_waits_again() {
        let state = JobState::new();
        assert!(state.try_start());
        let handle = JobHandle::<u8>::from_erased(ErasedHandle::new(state.clone()));
        let handle = handle
            .wait_timeout(Duration::from_micros(10))
            .expect_err("nothing completes the job");
        let handle = handle
            .wait_timeout(Duration::from_millis(1))
            .expect_err("nothing completes the job");
        assert!(state.complete(Ok(Box::new(9_u8))));
        let result = handle.wait_timeout(Duration::from_secs(30));
        assert_eq!(result.ok(), Some(Ok(9)));
    }

    #[test]
    fn cancelling_a_stoppable_running_job_signals_the_pool() {
        let state = JobState::new();
        assert!(state.try_start());
        let stopper = crate::handle::Stopper::new();
        state.make_stoppable(&stopper);
        assert!(state.cancel());
        let asked = futures::executor::block_on(stopper.asked_since(Some(&state), 0));
        assert_eq!(asked, crate::handle::Asked::StopHead);
    }
}
