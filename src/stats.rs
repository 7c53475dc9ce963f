//! [`PoolStats`], a snapshot of a pool's workers and jobs, and the counters behind it.

use crate::JobError;
use crate::handle::{Finished, JobState, Wakes};
use crate::timing::{DurationSummary, Histogram};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A snapshot of a pool: its workers and its jobs, from [`Executor::stats`](crate::Executor::stats).
///
/// Counters are read one by one without a lock, so a snapshot taken while jobs move may be
/// off by the few jobs that moved meanwhile. It serializes (to JSON, say) for a status page.
///
/// # Examples
///
/// ```
/// use procpool::{Executor, ExecutorExt, ThreadPoolExecutor};
///
/// let pool = ThreadPoolExecutor::new(2)?;
/// pool.submit(|x: u32| x + 1, 1).wait()?;
/// let stats = pool.stats();
/// assert_eq!(stats.max_workers, 2);
/// assert_eq!(stats.jobs_completed, 1);
/// # Ok::<(), procpool::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct PoolStats {
    /// The configured number of workers.
    pub max_workers: usize,
    /// Workers (threads or processes) that are up and able to take jobs.
    pub workers_alive: usize,
    /// Workers running a job right now.
    pub workers_busy: usize,
    /// Jobs waiting for a worker. Jobs cancelled while queued are counted until a worker
    /// skips them or, on a pool with a bound (`max_queued`), until a later submission
    /// drops them, which it does once the queue holds twice `max_workers + max_queued`
    /// jobs: there, this is at most twice that bound.
    pub jobs_queued: usize,
    /// Jobs running right now.
    pub jobs_running: usize,
    /// Jobs that ran and returned a result (a `map` chunk counts as one job). A process
    /// pool's result is decoded by the caller when it reads it, so a result that then
    /// fails to decode counts here too.
    pub jobs_completed: u64,
    /// Jobs that started but ended with an error: a panic, a dead worker, a timeout, a
    /// cancellation while running, a shutdown. [`failures`](PoolStats::failures) says
    /// which.
    pub jobs_failed: u64,
    /// [`jobs_failed`](PoolStats::jobs_failed) by kind of error.
    #[serde(default)]
    pub failures: FailureCounts,
    /// Workers started to replace one that died, was killed or was retired.
    pub respawns: u64,
    /// The pool's bound on waiting jobs, if it has one
    /// ([`ProcessPoolBuilder::max_queued`](crate::ProcessPoolBuilder::max_queued)): at most
    /// `max_workers + max_queued` jobs are unfinished at once.
    #[serde(default)]
    pub max_queued: Option<usize>,
    /// How long jobs waited from submission until a worker started them. The thread pool
    /// times one job in 16 (two clock reads would cost its shortest jobs a tenth of their
    /// time); the process pool times every job.
    #[serde(default)]
    pub queue_wait: DurationSummary,
    /// How long jobs ran on their workers, for jobs whose worker answered (a result, a
    /// panic, an error of its own); sampled as `queue_wait` is.
    #[serde(default)]
    pub run_time: DurationSummary,
}

/// The jobs a pool counted as failed ([`PoolStats::jobs_failed`]), by the kind of their
/// [`JobError`]: what a service's error rates are made of. `jobs_failed` is their sum.
///
/// # Examples
///
/// ```
/// use procpool::{Executor, ExecutorExt, ThreadPoolExecutor};
///
/// let pool = ThreadPoolExecutor::new(1)?;
/// let _ = pool.submit(|_: ()| -> u32 { panic!("no luck") }, ()).wait();
/// let stats = pool.stats();
/// assert_eq!(stats.failures.panicked, 1);
/// assert_eq!(stats.failures.total(), stats.jobs_failed);
/// # Ok::<(), procpool::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
#[serde(default)]
pub struct FailureCounts {
    /// The function panicked ([`JobError::Panicked`]).
    pub panicked: u64,
    /// The worker process died under the job ([`JobError::WorkerDied`]).
    pub worker_died: u64,
    /// The job ran past its time limit ([`JobError::TimedOut`]).
    pub timed_out: u64,
    /// The worker grew past the pool's memory limit ([`JobError::MemoryLimit`]).
    pub memory_limit: u64,
    /// The job was cancelled while it ran ([`JobError::Cancelled`]).
    pub cancelled: u64,
    /// A shutdown ended the job ([`JobError::ShutDown`]).
    pub shut_down: u64,
    /// The job's data could not travel: it did not encode or decode, was too large, or
    /// its function cannot be shipped ([`JobError::Encode`], [`JobError::Decode`],
    /// [`JobError::TooLarge`], [`JobError::Unshippable`]).
    pub data: u64,
    /// Anything else: a broken connection to the worker, a broken pool, a full queue
    /// ([`JobError::Protocol`], [`JobError::PoolBroken`], [`JobError::QueueFull`]).
    pub other: u64,
}

impl FailureCounts {
    /// All of them: [`PoolStats::jobs_failed`] when read from one snapshot.
    pub fn total(&self) -> u64 {
        self.kinds().iter().map(|(_, count)| count).sum()
    }

    /// Each kind with its count, named as its field is (`"panicked"`, `"worker_died"`...).
    pub fn kinds(&self) -> [(&'static str, u64); FAILURE_KINDS] {
        [
            ("panicked", self.panicked),
            ("worker_died", self.worker_died),
            ("timed_out", self.timed_out),
            ("memory_limit", self.memory_limit),
            ("cancelled", self.cancelled),
            ("shut_down", self.shut_down),
            ("data", self.data),
            ("other", self.other),
        ]
    }
}

/// How many kinds [`FailureCounts`] tells apart.
const FAILURE_KINDS: usize = 8;

/// Where `error` counts in [`FailureCounts::kinds`]'s order.
fn failure_kind(error: &JobError) -> usize {
    match error {
        JobError::Panicked { .. } => 0,
        JobError::WorkerDied { .. } => 1,
        JobError::TimedOut(_) => 2,
        JobError::MemoryLimit { .. } => 3,
        JobError::Cancelled => 4,
        JobError::ShutDown => 5,
        JobError::Encode(_)
        | JobError::Decode(_)
        | JobError::TooLarge { .. }
        | JobError::Unshippable { .. } => 6,
        JobError::Protocol { .. } | JobError::PoolBroken { .. } | JobError::QueueFull => 7,
    }
}

/// Whether a pool can run jobs now, from [`Executor::health`](crate::Executor::health): what
/// a service's health check reports.
///
/// # Examples
///
/// ```
/// use procpool::{Executor, Health, ThreadPoolExecutor};
///
/// let pool = ThreadPoolExecutor::new(2)?;
/// assert_eq!(pool.health(), Health::Serving);
/// pool.begin_shutdown(false);
/// assert_eq!(pool.health(), Health::ShutDown);
/// # Ok::<(), procpool::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Its workers are up, or starting as usual.
    Serving,
    /// A worker failed to start and is being started again, after a back-off: jobs wait in
    /// the queue meanwhile (their own time limits still apply). `reason` is the last
    /// failure, for a log or a status page.
    Restarting {
        /// Why the last start failed.
        reason: String,
    },
    /// The pool cannot run jobs: every job ends with
    /// [`JobError::PoolBroken`](crate::JobError::PoolBroken) and this reason.
    Broken {
        /// What broke the pool, and what to do.
        reason: String,
    },
    /// The pool was shut down: it takes no more jobs.
    ShutDown,
}

impl Health {
    /// `true` if the pool serves jobs, possibly while replacing a worker.
    pub fn is_serving(&self) -> bool {
        matches!(self, Health::Serving | Health::Restarting { .. })
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Serving => f.write_str("serving"),
            Health::Restarting { reason } => write!(f, "restarting a worker: {reason}"),
            Health::Broken { reason } => write!(f, "broken: {reason}"),
            Health::ShutDown => f.write_str("shut down"),
        }
    }
}

/// The live counters a pool updates; [`Counters::snapshot`] reads them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) workers_alive: AtomicUsize,
    pub(crate) workers_busy: AtomicUsize,
    pub(crate) completed: AtomicU64,
    /// Failed jobs by kind, in [`FailureCounts::kinds`]'s order (their sum is
    /// `jobs_failed`).
    failures: [AtomicU64; FAILURE_KINDS],
    pub(crate) respawns: AtomicU64,
    /// Jobs sent to a worker that wait behind the job it runs (process pool).
    pub(crate) windowed: AtomicUsize,
    /// From submission to start, for the jobs a pool times.
    pub(crate) queue_wait: Histogram,
    /// From start to the worker's answer, for the jobs a pool times.
    pub(crate) run_time: Histogram,
}

impl Counters {
    /// Jobs that left the queue for a worker but have not started.
    pub(crate) fn waiting(&self) -> usize {
        self.windowed.load(Ordering::Relaxed)
    }

    pub(crate) fn snapshot(&self, max_workers: usize, jobs_queued: usize) -> PoolStats {
        let busy = self.workers_busy.load(Ordering::Relaxed);
        let failures = self.failures();
        PoolStats {
            max_workers,
            workers_alive: self.workers_alive.load(Ordering::Relaxed),
            workers_busy: busy,
            jobs_queued,
            jobs_running: busy,
            jobs_completed: self.completed.load(Ordering::Relaxed),
            jobs_failed: failures.total(),
            failures,
            respawns: self.respawns.load(Ordering::Relaxed),
            max_queued: None,
            queue_wait: self.queue_wait.summary(),
            run_time: self.run_time.summary(),
        }
    }

    pub(crate) fn failures(&self) -> FailureCounts {
        let [
            panicked,
            worker_died,
            timed_out,
            memory_limit,
            cancelled,
            shut_down,
            data,
            other,
        ] = std::array::from_fn(|kind| self.failures[kind].load(Ordering::Relaxed));
        FailureCounts {
            panicked,
            worker_died,
            timed_out,
            memory_limit,
            cancelled,
            shut_down,
            data,
            other,
        }
    }

    /// Counts a job that ended with `error` without reaching a worker's answer.
    pub(crate) fn count_failure(&self, error: &JobError) {
        self.count(Some(failure_kind(error)));
    }

    /// Counts a job that ended well (`None`) or failed with an error of `kind`.
    fn count(&self, outcome: Option<usize>) {
        match outcome {
            None => self.completed.fetch_add(1, Ordering::Relaxed),
            Some(kind) => self.failures[kind].fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Ends a running job with `result` and counts it, unless something (a timeout, a
    /// cancellation) ended it first. Returns whether this call ended it.
    pub(crate) fn finish(
        &self,
        state: &JobState,
        result: Result<crate::job::Output, JobError>,
    ) -> bool {
        let outcome = outcome(&result);
        state.complete_then(result, || self.count(outcome))
    }

    /// [`finish`](Self::finish), holding the handle's waker in `wakes` (see [`Wakes`]).
    pub(crate) fn finish_deferred(
        &self,
        state: &JobState,
        result: Result<Finished, JobError>,
        wakes: &mut Wakes,
    ) -> bool {
        let outcome = outcome(&result);
        state.complete_deferred(result, || self.count(outcome), wakes)
    }
}

/// What [`Counters::count`] counts for `result`.
fn outcome<T>(result: &Result<T, JobError>) -> Option<usize> {
    result.as_ref().err().map(failure_kind)
}
