//! Per-job settings ([`JobOptions`]) and how they combine with a pool's defaults.

use std::time::Duration;

/// Settings for one job, given to [`ExecutorExt::submit_with`](crate::ExecutorExt::submit_with)
/// (and, per chunk, to [`Map::timeout`](crate::Map::timeout)).
///
/// # Examples
///
/// ```
/// use procpool::{ExecutorExt, JobOptions, ProcessPoolExecutor};
/// use std::time::Duration;
///
/// fn spin(ms: u64) -> u64 {
///     let end = std::time::Instant::now() + Duration::from_millis(ms);
///     while std::time::Instant::now() < end {}
///     ms
/// }
///
/// # futures::executor::block_on(async {
/// let pool = ProcessPoolExecutor::builder().max_workers(1).build()?;
/// let quick = JobOptions::new().timeout(Duration::from_secs(10));
/// assert_eq!(pool.submit_with(spin, 1, quick).await?, 1);
/// let strict = JobOptions::new().timeout(Duration::from_millis(50));
/// let err = pool.submit_with(spin, 60_000, strict).await.unwrap_err();
/// assert!(err.is_timeout()); // the worker was killed and replaced
/// # Ok::<(), procpool::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobOptions {
    pub(crate) timeout: Timeout,
    pub(crate) retries: u32,
}

/// A job's time limit, before the pool's default is applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Timeout {
    /// Whatever the pool's builder set (none unless it set one).
    #[default]
    PoolDefault,
    Never,
    After(Duration),
}

impl JobOptions {
    /// The pool's defaults.
    pub fn new() -> JobOptions {
        JobOptions::default()
    }

    /// Fail the job with [`JobError::TimedOut`](crate::JobError::TimedOut) if it runs
    /// longer than `timeout`, counted from when a worker starts it (time spent queued does
    /// not count). On a process pool the worker is killed and replaced; a thread cannot be
    /// killed, so on a thread pool the job's thread runs on until the function returns,
    /// and its result is discarded. The default is the pool's (see
    /// [`ProcessPoolBuilder::job_timeout`](crate::ProcessPoolBuilder::job_timeout)).
    ///
    /// A process pool's worker that has its next job already holds a finished job's answer
    /// back for up to about a tenth of a millisecond, to send it with others: a job that
    /// ends that close to its limit may still be reported as timed out.
    pub fn timeout(mut self, timeout: Duration) -> JobOptions {
        self.timeout = Timeout::After(timeout);
        self
    }

    /// Run the job again, up to `retries` more times, if the worker process running it
    /// dies (an abort, a segfault, the OOM killer, a `kill -9`): in the manner of Ray's
    /// `max_retries` and Dask's `retries`, for pure functions that may safely run twice.
    /// A retried job goes to the front of the queue. If every attempt's worker dies, the
    /// job ends with [`JobError::WorkerDied`](crate::JobError::WorkerDied) saying how many
    /// attempts it had. A panic, a timeout, a cancellation or a memory ceiling is not
    /// retried, and a thread pool (whose threads do not die alone) ignores this. The
    /// default is 0: a job runs once.
    ///
    /// # Examples
    ///
    /// ```
    /// use procpool::{ExecutorExt, JobOptions, ProcessPoolExecutor};
    ///
    /// fn abort(_: ()) {
    ///     std::process::abort()
    /// }
    ///
    /// # futures::executor::block_on(async {
    /// let pool = ProcessPoolExecutor::builder().max_workers(1).build()?;
    /// let err = pool.submit_with(abort, (), JobOptions::new().retries(2)).await.unwrap_err();
    /// assert!(err.to_string().contains("3 attempts"), "{err}");
    /// # Ok::<(), procpool::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn retries(mut self, retries: u32) -> JobOptions {
        self.retries = retries;
        self
    }

    /// Let the job run as long as it takes, whatever the pool's default.
    pub fn no_timeout(mut self) -> JobOptions {
        self.timeout = Timeout::Never;
        self
    }

    /// The time limit this job gets on a pool whose default is `pool_default`.
    pub(crate) fn resolve_timeout(&self, pool_default: Option<Duration>) -> Option<Duration> {
        match self.timeout {
            Timeout::PoolDefault => pool_default,
            Timeout::Never => None,
            Timeout::After(d) => Some(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_settings_override_the_pool_default() {
        let pool = Some(Duration::from_secs(5));
        assert_eq!(JobOptions::new().resolve_timeout(pool), pool);
        assert_eq!(JobOptions::new().no_timeout().resolve_timeout(pool), None);
        let own = JobOptions::new().timeout(Duration::from_secs(1));
        assert_eq!(own.resolve_timeout(pool), Some(Duration::from_secs(1)));
        assert_eq!(own.resolve_timeout(None), Some(Duration::from_secs(1)));
    }
}
