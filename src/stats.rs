//! [`PoolStats`], a snapshot of a pool's workers and jobs, and the counters behind it.

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
    /// skips them.
    pub jobs_queued: usize,
    /// Jobs running right now.
    pub jobs_running: usize,
    /// Jobs that ran and returned a result (a `map` chunk counts as one job). A process
    /// pool's result is decoded by the caller when it reads it, so a result that then
    /// fails to decode counts here too.
    pub jobs_completed: u64,
    /// Jobs that started but ended with an error: a panic, a dead worker, a timeout, a
    /// cancellation while running, a shutdown.
    pub jobs_failed: u64,
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
    pub(crate) failed: AtomicU64,
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
        PoolStats {
            max_workers,
            workers_alive: self.workers_alive.load(Ordering::Relaxed),
            workers_busy: busy,
            jobs_queued,
            jobs_running: busy,
            jobs_completed: self.completed.load(Ordering::Relaxed),
            jobs_failed: self.failed.load(Ordering::Relaxed),
            respawns: self.respawns.load(Ordering::Relaxed),
            max_queued: None,
            queue_wait: self.queue_wait.summary(),
            run_time: self.run_time.summary(),
        }
    }

    /// Ends a running job with `result` and counts it, unless something (a timeout, a
    /// cancellation) ended it first. Returns whether this call ended it.
    pub(crate) fn finish(
        &self,
        state: &JobState,
        result: Result<crate::job::Output, crate::JobError>,
    ) -> bool {
        let counter = self.outcome_counter(&result);
        state.complete_then(result, || {
            counter.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// [`finish`](Self::finish), holding the handle's waker in `wakes` (see [`Wakes`]).
    pub(crate) fn finish_deferred(
        &self,
        state: &JobState,
        result: Result<Finished, crate::JobError>,
        wakes: &mut Wakes,
    ) -> bool {
        let counter = self.outcome_counter(&result);
        state.complete_deferred(
            result,
            || {
                counter.fetch_add(1, Ordering::Relaxed);
            },
            wakes,
        )
    }

    fn outcome_counter<T, E>(&self, result: &Result<T, E>) -> &AtomicU64 {
        if result.is_ok() {
            &self.completed
        } else {
            &self.failed
        }
    }
}
