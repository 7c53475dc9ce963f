//! [`ProcessPoolExecutor`]: jobs run in child processes (the same executable, re-started in
//! worker mode), for CPU-bound and crash-prone work. This module is the local backend of
//! the supervision core ([`crate::pool`]): the builder, how a child is started on a private
//! socket and authenticated ([`launch`]), the pool's end of one child ([`child`]), and how
//! a started process becomes a worker ([`entry`]).

pub(crate) mod child;
pub(crate) mod entry;
pub(crate) mod launch;

use crate::error::Error;
#[cfg(doc)] // for the docs' links
use crate::error::JobError;
use crate::executor::{Executor, ShutdownOptions, sealed};
use crate::handle::ErasedHandle;
use crate::job::ErasedJob;
use crate::pool::Pool;
use crate::pool::core::Config;
use crate::ship::Target;
use crate::stats::{Health, PoolStats};
use async_trait::async_trait;
pub(crate) use launch::{Launcher, Settings};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The default maximum frame size: 256 MiB.
const DEFAULT_MAX_FRAME: usize = 256 << 20;
/// The smallest maximum frame size accepted.
const MIN_MAX_FRAME: usize = 64 << 10;
/// The largest frame length the wire format can express.
const MAX_MAX_FRAME: usize = u32::MAX as usize;

/// A pool of worker processes that runs jobs: the process analogue of
/// [`ThreadPoolExecutor`](crate::ThreadPoolExecutor), for CPU-bound work that should use
/// every core, and for work that may crash.
///
/// Workers are this same executable, started again in worker mode: a static constructor
/// enters the worker loop **before** `main`, so no user code runs in them (see
/// [`init`](crate::init) for builds without it). A job is a plain `fn(A) -> R`; the worker
/// finds it by its offset in the (verified identical) executable image, decodes the
/// argument with postcard, runs it, and sends the result back over a private local socket.
///
/// The pool is a cheap, cloneable handle: clones share the same workers. Its supervision
/// runs on its own thread and never on the caller's async runtime.
///
/// # Guarantees
///
/// Every submitted job ends exactly once, with its result or a [`JobError`]; nothing is
/// lost and nothing hangs.
///
/// - **Panics**: a job that panics ends with [`JobError::Panicked`], with the message and
///   location; the worker survives.
/// - **Worker death**: a worker that dies (abort, segfault, stack overflow, `exit`, SIGKILL,
///   the OOM killer) fails only the job it was running, with [`JobError::WorkerDied`] and
///   its exit code or signal. A new worker takes its place and the queued jobs wait for it.
/// - **Timeouts**: a job that runs past its limit ([`JobOptions::timeout`](crate::JobOptions::timeout)
///   or [`ProcessPoolBuilder::job_timeout`]) has its worker killed and replaced, and ends
///   with [`JobError::TimedOut`].
/// - **Cancellation**: [`JobHandle::cancel`](crate::JobHandle::cancel) removes a queued
///   job; it stops a running one by killing and replacing its worker.
/// - **Recycling**: [`ProcessPoolBuilder::max_tasks_per_child`] retires a worker after N
///   jobs; [`ProcessPoolBuilder::max_worker_memory`] replaces a worker that grows past a
///   ceiling, failing its job with [`JobError::MemoryLimit`].
/// - **Start-up failures**: a worker that fails to start is started again after a back-off
///   that doubles from 50 ms up to 500 ms. A failure from outside (the worker killed while
///   it starts, the system out of processes or descriptors) is retried for as long as the
///   pool lives, jobs waiting in the queue meanwhile (their own time limits still apply).
///   A failure that will repeat breaks the pool, and queued and later jobs end with
///   [`JobError::PoolBroken`] naming the cause: at once when the initializer (or a
///   `worker_state` builder) panics, the entry hook is missing, the worker runs another
///   image or the executable cannot run; after five, with no worker started in between,
///   when a worker exits with a code, crashes or does not answer while it starts
///   (within [`ProcessPoolBuilder::handshake_timeout`], and
///   [`ProcessPoolBuilder::initializer_timeout`] for its initializers). It
///   never respawns without its back-off, and
///   [`Executor::health`] says at any time whether it is serving, restarting (and why) or
///   broken.
/// - **Hostile input**: each worker's link is one end of a socket pair made for it and
///   inherited at start: it has no name, in the filesystem or the abstract namespace, so
///   nothing else can connect to the pool, and nothing is left behind (nor is there a path
///   length limit, or a `TMPDIR` to depend on). The worker must still present the pool's
///   random 32-byte secret within the handshake deadline. Frames have a maximum size
///   checked before anything is allocated; a corrupt frame drops the connection, fails
///   the job it carried and replaces the worker. An argument that cannot be encoded, or a
///   result that cannot be decoded, fails only its own job.
/// - **Parent death**: a worker exits when its socket closes, and on Linux the kernel kills
///   it when the pool's supervisor thread dies (`PR_SET_PDEATHSIG`), so a SIGKILLed parent
///   leaves no orphans.
/// - **Drop**: dropping the last handle terminates and reaps every worker (it blocks for
///   the few milliseconds that takes), with the processes their jobs started: queued and
///   running jobs end
///   with [`JobError::ShutDown`]. Call [`shutdown`](crate::ExecutorExt::shutdown) first to
///   let them finish.
///
/// [`stats`](Executor::stats) counts workers alive and busy, jobs queued, running,
/// completed and failed, and respawns; worker start, exit, death, respawn, timeout and kill
/// are reported as `tracing` events.
///
/// # Examples
///
/// ```
/// use futures::TryStreamExt;
/// use procpool::{ExecutorExt, ProcessPoolExecutor};
///
/// fn collatz_steps(mut n: u64) -> u32 {
///     let mut steps = 0;
///     while n > 1 {
///         n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
///         steps += 1;
///     }
///     steps
/// }
///
/// # futures::executor::block_on(async {
/// let pool = ProcessPoolExecutor::builder().max_workers(2).build()?;
/// assert_eq!(pool.submit(collatz_steps, 27).await?, 111);
/// let longest = pool
///     .map(collatz_steps, 1..10_000)
///     .try_fold(0, |best, steps| async move { Ok(best.max(steps)) })
///     .await?;
/// assert_eq!(longest, 261);
/// pool.shutdown().await;
/// # Ok::<(), procpool::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct ProcessPoolExecutor {
    inner: Arc<Pool>,
}

/// Builds a [`ProcessPoolExecutor`]; from [`ProcessPoolExecutor::builder`].
#[derive(Debug, Clone)]
pub struct ProcessPoolBuilder {
    max_workers: Option<usize>,
    initializers: Vec<Target>,
    max_tasks_per_child: Option<usize>,
    max_frame_size: usize,
    handshake_timeout: Duration,
    initializer_timeout: Duration,
    job_timeout: Option<Duration>,
    max_worker_memory: Option<u64>,
    max_queued: Option<usize>,
    #[cfg(test)]
    stall_handshake: bool,
    #[cfg(test)]
    lending: Option<(bool, std::sync::Arc<std::sync::atomic::AtomicU64>)>,
}

impl Default for ProcessPoolBuilder {
    fn default() -> Self {
        ProcessPoolBuilder {
            max_workers: None,
            initializers: Vec::new(),
            max_tasks_per_child: None,
            max_frame_size: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(10),
            initializer_timeout: launch::DEFAULT_INITIALIZER_TIMEOUT,
            job_timeout: None,
            max_worker_memory: None,
            max_queued: None,
            #[cfg(test)]
            stall_handshake: false,
            #[cfg(test)]
            lending: None,
        }
    }
}

impl ProcessPoolBuilder {
    /// The number of worker processes. The default is the machine's available parallelism
    /// (`std::thread::available_parallelism`), as in Python.
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n);
        self
    }

    /// A function each worker runs once, before its first job (Python's `initializer`).
    /// If it panics, the pool is broken: jobs end with [`JobError::PoolBroken`] naming the
    /// panic, and no worker is respawned. The default is none.
    ///
    /// Initializers and [`worker_state`](Self::worker_state) builders run in the order
    /// they were added.
    pub fn initializer(mut self, f: fn()) -> Self {
        self.initializers.push(crate::job::initializer_target(f));
        self
    }

    /// Builds a worker-local state once in each worker, before its first job, with
    /// `build()`; jobs read it with [`with_worker_state`](crate::with_worker_state). Use
    /// it for what is costly to make and must not travel with every job: a model, a
    /// lexicon, a compiled regex set, a connection. Each worker process has its own value,
    /// so `S` needs neither `Send` nor `Sync`, nor `serde`.
    ///
    /// Several states of different types may be added; a panic in `build` breaks the pool
    /// as a panicking [`initializer`](Self::initializer) does.
    ///
    /// # Examples
    ///
    /// ```
    /// use procpool::{ExecutorExt, ProcessPoolExecutor};
    ///
    /// struct Table(Vec<u64>);
    ///
    /// fn squares() -> Table {
    ///     Table((0..1000).map(|n| n * n).collect())
    /// }
    ///
    /// fn lookup(n: usize) -> u64 {
    ///     procpool::with_worker_state(|t: &Table| t.0[n])
    /// }
    ///
    /// # futures::executor::block_on(async {
    /// let pool = ProcessPoolExecutor::builder().worker_state(squares).build()?;
    /// assert_eq!(pool.submit(lookup, 12).await?, 144);
    /// # Ok::<(), procpool::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn worker_state<S: 'static>(mut self, build: fn() -> S) -> Self {
        self.initializers.push(crate::job::state_target(build));
        self
    }

    /// Replace each worker after it has run `n` jobs (a `map` chunk counts as one), to
    /// bound what leaky jobs can accumulate (Python's `max_tasks_per_child`). The default
    /// is to keep workers for the pool's lifetime.
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.max_tasks_per_child = Some(n);
        self
    }

    /// The largest message, in bytes, either side accepts: an argument or result over it
    /// fails its job with [`JobError::TooLarge`]; a frame header claiming more drops the
    /// connection before anything is allocated. The default is 256 MiB; the range is
    /// 64 KiB to 4 GiB - 1.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// How long a new worker may take to connect and prove itself. The default is 10
    /// seconds.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How long a new worker may take, once it has proved itself, to run the pool's
    /// [`initializer`](Self::initializer)s and [`worker_state`](Self::worker_state)
    /// builders and say it is ready. A worker that takes longer (an initializer that
    /// hangs, or a worker stopped from outside while it starts) is killed, and its start
    /// counts as a failure of its own: the slot backs off and starts another worker, and
    /// after five such failures in a row the pool is broken, with a reason naming this
    /// setting. Raise it for initializers that legitimately take long (loading a model,
    /// filling a cache). In a pool without initializers this stage is bounded by the
    /// [`handshake_timeout`](Self::handshake_timeout) instead. The default is 60 seconds.
    ///
    /// A graceful shutdown does not wait for a worker that is still starting once nothing
    /// is left to run: it is stopped. An `MpiPoolExecutor` (feature `mpi`) built from this
    /// builder gives its node agents' workers the same time.
    ///
    /// # Examples
    ///
    /// ```
    /// use procpool::ProcessPoolExecutor;
    /// use std::time::Duration;
    ///
    /// fn load_model() {
    ///     // Reads a few gigabytes, once per worker.
    /// }
    ///
    /// let pool = ProcessPoolExecutor::builder()
    ///     .initializer(load_model)
    ///     .initializer_timeout(Duration::from_secs(600))
    ///     .build()?;
    /// # drop(pool);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn initializer_timeout(mut self, timeout: Duration) -> Self {
        self.initializer_timeout = timeout;
        self
    }

    /// A time limit for every job that does not set its own (see
    /// [`JobOptions::timeout`](crate::JobOptions::timeout)), counted from when a worker
    /// starts the job: a job that runs longer has its worker killed and replaced, and ends
    /// with [`JobError::TimedOut`]. The default is no limit.
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = Some(timeout);
        self
    }

    /// A ceiling on each worker's resident memory, in bytes. A worker found over it while
    /// running a job is killed and replaced, and the job ends with
    /// [`JobError::MemoryLimit`]; a worker found over it after a job (memory a job leaked)
    /// is retired and replaced. The pool reads the worker's resident set (`VmRSS`, Linux)
    /// every 20 ms while a job runs, so a job that allocates very fast can overshoot
    /// before it is caught. The default is no limit.
    pub fn max_worker_memory(mut self, bytes: u64) -> Self {
        self.max_worker_memory = Some(bytes);
        self
    }

    /// Bounds the queue: at most `n` jobs wait for a worker beyond one running on each, so
    /// that at most `max_workers + n` jobs are unfinished at once (a `map` chunk counts as
    /// one job). The default is no bound, as in Python.
    ///
    /// When the pool is full, [`try_submit`](crate::ExecutorExt::try_submit) fails with
    /// [`SubmitError::Full`](crate::SubmitError::Full) and gives the argument back,
    /// [`reserve`](crate::ExecutorExt::reserve) and
    /// [`submit_when_ready`](crate::ExecutorExt::submit_when_ready) wait for room (in
    /// turn), a `map` waits for room before its next chunk, and
    /// [`submit`](crate::ExecutorExt::submit) returns a handle that fails with
    /// [`JobError::QueueFull`]. A job's room comes back the moment it ends, also when it
    /// is cancelled while queued. `n` may be 0: no job waits, each one is running. On an
    /// `MpiPoolExecutor` (feature `mpi`) built from this builder, the bound is rank 0's,
    /// over the workers of every node.
    ///
    /// # Examples
    ///
    /// ```
    /// use procpool::{ExecutorExt, ProcessPoolExecutor, SubmitError};
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// # futures::executor::block_on(async {
    /// let pool = ProcessPoolExecutor::builder().max_workers(1).max_queued(1).build()?;
    /// let running = pool.try_submit(nap, 200).unwrap();
    /// let waiting = pool.try_submit(nap, 0).unwrap();
    /// match pool.try_submit(nap, 1) {
    ///     Err(SubmitError::Full(ms)) => assert_eq!(ms, 1), // shed it, or wait:
    ///     other => panic!("not full: {other:?}"),
    /// }
    /// let third = pool.submit_when_ready(nap, 1).await.unwrap();
    /// assert_eq!((running.await?, waiting.await?, third.await?), (200, 0, 1));
    /// # Ok::<(), procpool::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn max_queued(mut self, n: usize) -> Self {
        self.max_queued = Some(n);
        self
    }

    /// Starts the pool's supervision and its workers in the background; returns without
    /// waiting for the workers (the first jobs wait in the queue).
    ///
    /// # Errors
    ///
    /// - [`Error::Config`] for a setting out of range.
    /// - [`Error::Io`] if the supervisor thread or its runtime cannot be created (out of
    ///   threads or file descriptors, say). It is returned on any thread, inside an async
    ///   runtime too.
    /// - [`Error::EntryHookMissing`] if this process is itself a worker that reached
    ///   `main` (the `auto-init` feature is off and [`init`](crate::init) was not called):
    ///   a worker never starts workers of its own.
    pub fn build(self) -> Result<ProcessPoolExecutor, Error> {
        let (config, settings) = self.settle()?;
        let pool = Pool::start(config, move || Launcher::new(settings))?;
        Ok(ProcessPoolExecutor {
            inner: Arc::new(pool),
        })
    }

    /// Checks the settings and splits them into the supervision core's and the local
    /// backend's (which an MPI node agent runs too).
    pub(crate) fn settle(self) -> Result<(Config, Settings), Error> {
        if entry::is_worker_process() {
            entry::report_hook_missing();
            return Err(Error::EntryHookMissing);
        }
        #[cfg(feature = "auto-init")]
        std::hint::black_box(entry::entry_hook_address());
        let max_workers = match self.max_workers {
            Some(0) => {
                return Err(Error::Config(
                    "ProcessPoolBuilder::max_workers must be at least 1".into(),
                ));
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if self.max_tasks_per_child == Some(0) {
            return Err(Error::Config(
                "ProcessPoolBuilder::max_tasks_per_child must be at least 1".into(),
            ));
        }
        if !(MIN_MAX_FRAME..=MAX_MAX_FRAME).contains(&self.max_frame_size) {
            return Err(Error::Config(format!(
                "ProcessPoolBuilder::max_frame_size must be between {MIN_MAX_FRAME} and \
                 {MAX_MAX_FRAME} bytes, not {}",
                self.max_frame_size
            )));
        }
        if self.handshake_timeout.is_zero() {
            return Err(Error::Config(
                "ProcessPoolBuilder::handshake_timeout must be longer than zero".into(),
            ));
        }
        if self.initializer_timeout.is_zero() {
            return Err(Error::Config(
                "ProcessPoolBuilder::initializer_timeout must be longer than zero".into(),
            ));
        }
        for target in &self.initializers {
            if let Err(error) = crate::job::check_shippable(target) {
                return Err(Error::Config(format!(
                    "a ProcessPoolBuilder initializer or worker_state builder cannot run in a \
                     worker: {error}"
                )));
            }
        }
        let config = Config {
            max_workers,
            max_tasks_per_child: self.max_tasks_per_child,
            max_frame: self.max_frame_size,
            job_timeout: self.job_timeout,
            max_worker_memory: self.max_worker_memory,
            max_queued: self.max_queued,
        };
        let settings = Settings {
            initializers: self.initializers,
            handshake_timeout: self.handshake_timeout,
            initializer_timeout: self.initializer_timeout,
            max_frame: self.max_frame_size,
            #[cfg(not(test))]
            lend: true,
            #[cfg(test)]
            lend: self.lending.as_ref().is_none_or(|(lend, _)| *lend),
            #[cfg(test)]
            stall_handshake: self.stall_handshake,
            #[cfg(test)]
            lent: self.lending.map(|(_, count)| count),
        };
        Ok((config, settings))
    }

    /// Whether [`max_workers`](Self::max_workers) was set.
    #[cfg(feature = "mpi")]
    pub(crate) fn has_max_workers(&self) -> bool {
        self.max_workers.is_some()
    }
}

impl ProcessPoolBuilder {
    /// Tests only: workers that never complete their handshake.
    #[cfg(test)]
    pub(crate) fn stall_handshake(mut self) -> Self {
        self.stall_handshake = true;
        self
    }

    /// Tests only: whether large arguments and results may be lent, and a count of those
    /// that were (arguments lent, results read).
    #[cfg(test)]
    pub(crate) fn lending(
        mut self,
        lend: bool,
        count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        self.lending = Some((lend, count));
        self
    }
}

impl ProcessPoolExecutor {
    /// The executor of a pool started over another backend (the MPI pool's).
    #[cfg(feature = "mpi")]
    pub(crate) fn from_pool(pool: Pool) -> ProcessPoolExecutor {
        ProcessPoolExecutor {
            inner: Arc::new(pool),
        }
    }

    /// The pool's shared state, for the supervision core's own tests.
    #[cfg(test)]
    pub(crate) fn core(&self) -> &crate::pool::core::Core {
        &self.inner.core
    }

    /// A builder, with every setting at its default.
    pub fn builder() -> ProcessPoolBuilder {
        ProcessPoolBuilder::default()
    }

    /// A pool of `max_workers` processes, every other setting at its default.
    ///
    /// # Errors
    ///
    /// As [`ProcessPoolBuilder::build`].
    pub fn new(max_workers: usize) -> Result<ProcessPoolExecutor, Error> {
        ProcessPoolExecutor::builder()
            .max_workers(max_workers)
            .build()
    }
}

impl sealed::Sealed for ProcessPoolExecutor {
    fn hand_off_is_a_round_trip(&self) -> bool {
        true
    }

    fn admission_slots(&self) -> Option<Arc<tokio::sync::Semaphore>> {
        self.inner.core.queue.admission().slots().cloned()
    }
}

#[async_trait]
impl Executor for ProcessPoolExecutor {
    fn execute(&self, job: ErasedJob) -> Result<ErasedHandle, ErasedJob> {
        self.inner.core.execute(job)
    }

    fn max_workers(&self) -> usize {
        self.inner.core.config.max_workers
    }

    fn is_shutdown(&self) -> bool {
        self.inner.core.queue.is_closed()
    }

    fn stats(&self) -> PoolStats {
        self.inner.core.stats()
    }

    fn health(&self) -> Health {
        self.inner.core.health()
    }

    fn begin_shutdown(&self, cancel_queued: bool) {
        self.inner.core.begin_shutdown(cancel_queued);
    }

    async fn shutdown_with(&self, options: ShutdownOptions) -> bool {
        self.inner
            .core
            .shutdown_with(options.cancel_queued, options.timeout)
            .await
    }
}

impl fmt::Debug for ProcessPoolExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let core = &self.inner.core;
        f.debug_struct("ProcessPoolExecutor")
            .field("max_workers", &core.config.max_workers)
            .field("shut_down", &core.queue.is_closed())
            .field("broken", &core.broken.get().is_some())
            .finish()
    }
}
