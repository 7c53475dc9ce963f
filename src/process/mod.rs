//! [`ProcessPoolExecutor`]: jobs run in child processes (the same executable, re-started in
//! worker mode), for CPU-bound and crash-prone work. This module isolates everything that
//! crosses a process boundary: the builder, the supervisor, the wire protocol, the worker
//! loop and the entry hook.

pub(crate) mod entry;
mod protocol;
mod supervisor;
pub(crate) mod worker;

use crate::error::{Error, JobError};
use crate::executor::{Executor, ShutdownOptions, sealed};
use crate::handle::{ErasedHandle, JobState};
use crate::job::ErasedJob;
use crate::raw::Target;
use crate::stats::PoolStats;
use crate::wait::within;
use async_trait::async_trait;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use supervisor::{Config, Core, QueuedJob};

#[cfg(feature = "fuzzing")]
pub(crate) use protocol::fuzz_decode;

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
/// - **Start-up failures**: a worker that fails to start is retried with a doubling
///   back-off (50 ms, 100 ms, ...). If the initializer panics, the entry hook is missing,
///   or a slot fails to start a worker five times in a row, the pool reports itself broken:
///   queued and later jobs end with [`JobError::PoolBroken`] naming the cause. It never
///   respawns in a loop.
/// - **Hostile input**: the socket lives in a fresh `0700` directory with mode `0600` (never
///   an abstract-namespace name) and is removed with the pool; every connection must
///   present the pool's random 32-byte secret within the handshake deadline. Frames have a
///   maximum size checked before anything is allocated; a corrupt frame drops the
///   connection, fails the job it carried and replaces the worker. An argument that cannot
///   be encoded, or a result that cannot be decoded, fails only its own job.
/// - **Parent death**: a worker exits when its socket closes, and on Linux the kernel kills
///   it when the pool's supervisor thread dies (`PR_SET_PDEATHSIG`), so a SIGKILLed parent
///   leaves no orphans.
/// - **Drop**: dropping the last handle terminates and reaps every worker (it blocks for
///   the few milliseconds that takes) and removes the socket: queued and running jobs end
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
    inner: Arc<Inner>,
}

struct Inner {
    core: Arc<Core>,
    supervisor: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Builds a [`ProcessPoolExecutor`]; from [`ProcessPoolExecutor::builder`].
#[derive(Debug, Clone)]
pub struct ProcessPoolBuilder {
    max_workers: Option<usize>,
    initializers: Vec<Target>,
    max_tasks_per_child: Option<usize>,
    max_frame_size: usize,
    handshake_timeout: Duration,
    job_timeout: Option<Duration>,
    max_worker_memory: Option<u64>,
    #[cfg(test)]
    stall_handshake: bool,
}

impl Default for ProcessPoolBuilder {
    fn default() -> Self {
        ProcessPoolBuilder {
            max_workers: None,
            initializers: Vec::new(),
            max_tasks_per_child: None,
            max_frame_size: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(10),
            job_timeout: None,
            max_worker_memory: None,
            #[cfg(test)]
            stall_handshake: false,
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
        self.initializers.push(Target::initializer(f));
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
        self.initializers.push(Target::state(build));
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

    /// Creates the pool's socket and starts its workers in the background; returns without
    /// waiting for them (the first jobs wait in the queue).
    ///
    /// # Errors
    ///
    /// - [`Error::Config`] for a setting out of range.
    /// - [`Error::Io`] if the socket directory, socket or supervisor thread cannot be
    ///   created.
    /// - [`Error::EntryHookMissing`] if this process is itself a worker that reached
    ///   `main` (the `auto-init` feature is off and [`init`](crate::init) was not called):
    ///   a worker never starts workers of its own.
    pub fn build(self) -> Result<ProcessPoolExecutor, Error> {
        if entry::is_worker_process() {
            if let Some(spec) = entry::take_spec() {
                worker::report_hook_missing(&spec);
            }
            return Err(Error::EntryHookMissing);
        }
        #[cfg(feature = "auto-init")]
        std::hint::black_box(crate::raw::entry_hook_address());
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
        let core = Arc::new(Core::new(Config {
            max_workers,
            initializers: self.initializers,
            max_tasks_per_child: self.max_tasks_per_child,
            max_frame: self.max_frame_size,
            handshake_timeout: self.handshake_timeout,
            job_timeout: self.job_timeout,
            max_worker_memory: self.max_worker_memory,
            #[cfg(test)]
            stall_handshake: self.stall_handshake,
        }));
        let supervisor = supervisor::start(core.clone())?;
        Ok(ProcessPoolExecutor {
            inner: Arc::new(Inner {
                core,
                supervisor: Mutex::new(Some(supervisor)),
            }),
        })
    }
}

impl ProcessPoolExecutor {
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
}

#[async_trait]
impl Executor for ProcessPoolExecutor {
    fn execute(&self, job: ErasedJob) -> Result<ErasedHandle, ErasedJob> {
        let core = &self.inner.core;
        if let Some(error) = core.broken.get() {
            return Ok(ErasedHandle::failed(error.clone()));
        }
        if let Err(error) = crate::job::check_shippable(&job.call.target()) {
            return Ok(ErasedHandle::failed(error));
        }
        let state = JobState::new();
        let queued = QueuedJob {
            call: job.call,
            state: state.clone(),
            timeout: job.options.resolve_timeout(core.config.job_timeout),
            encoded: None,
        };
        match core.queue.push(queued) {
            Ok(()) => Ok(ErasedHandle::new(state)),
            // A broken pool closes its queue: report why rather than "shut down".
            Err(queued) => match core.broken.get() {
                Some(error) => Ok(ErasedHandle::failed(error.clone())),
                None => Err(ErasedJob {
                    call: queued.call,
                    options: job.options,
                }),
            },
        }
    }

    fn max_workers(&self) -> usize {
        self.inner.core.config.max_workers
    }

    fn is_shutdown(&self) -> bool {
        self.inner.core.queue.is_closed()
    }

    fn stats(&self) -> PoolStats {
        let core = &self.inner.core;
        core.counters.snapshot(
            core.config.max_workers,
            core.queue.len() + core.counters.waiting(),
        )
    }

    fn begin_shutdown(&self, cancel_queued: bool) {
        self.inner
            .core
            .queue
            .close(cancel_queued.then_some(JobError::Cancelled));
    }

    async fn shutdown_with(&self, options: ShutdownOptions) -> bool {
        self.begin_shutdown(options.cancel_queued);
        let core = &self.inner.core;
        let terminated = || {
            let mut terminated = core.terminated.subscribe();
            async move {
                // The sender lives in `core`, which `self` keeps alive.
                let _ = terminated.wait_for(|&done| done).await;
            }
        };
        if within(terminated(), options.timeout).await {
            return true;
        }
        core.kill.cancel();
        terminated().await;
        false
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.core.queue.close(Some(JobError::ShutDown));
        self.core.kill.cancel();
        let supervisor = self
            .supervisor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(supervisor) = supervisor {
            // An executor that runs tasks inside `wake()` could drop the last handle on the
            // supervisor thread itself; it then finishes on its own, unjoined.
            if supervisor.thread().id() != std::thread::current().id() {
                // Killing and reaping the workers takes milliseconds: SIGKILL cannot be
                // ignored.
                let _ = supervisor.join();
            }
        }
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

#[cfg(test)]
mod tests {
    //! Broken frames from real workers (see `worker::fault`): the connection is dropped,
    //! the job fails with a protocol error, and the pool replaces the worker.

    use super::worker::fault;
    use crate::{ExecutorExt, JobError, ProcessPoolExecutor};
    use std::time::Duration;

    fn reply_with(mode: u8) -> u32 {
        fault::NEXT_REPLY.store(mode, std::sync::atomic::Ordering::SeqCst);
        std::process::id()
    }

    fn pid(_: ()) -> u32 {
        std::process::id()
    }

    /// Runs `f` on its own thread and fails if it takes longer than a minute.
    fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(Duration::from_secs(60))
            .expect("did not finish within a minute")
    }

    fn broken_reply_fails_the_job_and_the_worker_is_replaced(mode: u8, expect: &str) {
        let expect = expect.to_owned();
        bounded(move || {
            let pool = ProcessPoolExecutor::builder()
                .max_workers(1)
                .build()
                .unwrap();
            let first = pool.submit(pid, ()).wait().unwrap();
            let err = pool.submit(reply_with, mode).wait().unwrap_err();
            match &err {
                JobError::Protocol { reason } => assert!(reason.contains(&expect), "{reason}"),
                other => panic!("expected a protocol error, got {other:?}"),
            }
            let replacement = pool.submit(pid, ()).wait().unwrap();
            assert_ne!(
                first, replacement,
                "the worker that sent garbage was replaced"
            );
        });
    }

    #[test]
    fn a_worker_that_never_handshakes_hits_the_deadline() {
        bounded(|| {
            let mut builder = ProcessPoolExecutor::builder()
                .max_workers(1)
                .handshake_timeout(Duration::from_millis(100));
            builder.stall_handshake = true;
            let pool = builder.build().unwrap();
            let err = pool.submit(pid, ()).wait().unwrap_err();
            assert!(err.is_pool_broken(), "{err:?}");
            let text = err.to_string();
            assert!(
                text.contains("did not complete its handshake within 100ms"),
                "{text}"
            );
            assert!(text.contains("5 times in a row"), "{text}");
        });
    }

    #[test]
    fn a_corrupt_frame_fails_only_its_job() {
        broken_reply_fails_the_job_and_the_worker_is_replaced(fault::CORRUPT, "corrupt frame");
    }

    #[test]
    fn a_frame_cut_short_by_the_workers_exit_is_a_worker_death() {
        bounded(|| {
            let pool = ProcessPoolExecutor::builder()
                .max_workers(1)
                .build()
                .unwrap();
            let err = pool
                .submit(reply_with, fault::TRUNCATED)
                .wait()
                .unwrap_err();
            match err {
                JobError::WorkerDied { exit } => assert_eq!(exit.code(), Some(0)),
                other => panic!("expected WorkerDied, got {other:?}"),
            }
            assert_eq!(pool.submit(pid, ()).wait().map(|_| ()), Ok(()));
        });
    }

    #[test]
    fn an_oversized_frame_is_refused_without_allocating() {
        broken_reply_fails_the_job_and_the_worker_is_replaced(
            fault::OVERSIZED,
            "exceeds the maximum frame size",
        );
    }
}

#[cfg(test)]
mod pipeline_tests {
    //! Jobs that wait in a worker's socket behind the one it runs: they go back to the
    //! queue untouched when the worker is lost, a cancelled one is discarded, and a large
    //! one never waits there. These use the pool's internals to see jobs waiting.

    use crate::{ExecutorExt, JobError, JobHandle, ProcessPoolExecutor};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    const BOUND: Duration = Duration::from_secs(60);

    /// Runs `f` on its own thread and fails if it takes longer than [`BOUND`].
    fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(BOUND).expect("did not finish in time")
    }

    fn double(x: u64) -> u64 {
        x * 2
    }

    /// Waits until `path` exists (for at most [`BOUND`]), then returns 7, or aborts its
    /// worker if `abort`. One function for every gated job, so that the warm-up times it.
    fn gated((path, abort): (PathBuf, bool)) -> u64 {
        let deadline = Instant::now() + BOUND;
        while !path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if abort {
            std::process::abort();
        }
        7
    }

    // The pool times jobs per function pointer, and a small function may have a copy of
    // its own in each codegen unit that takes its address: every job of these tests is
    // submitted through the two helpers below, so that the warm-up times the same copies.

    /// Submits `double(x)`.
    #[inline(never)]
    fn submit_double(pool: &ProcessPoolExecutor, x: u64) -> JobHandle<u64> {
        pool.submit(double, x)
    }

    /// Submits a job that waits for `path`, then aborts its worker if `abort`.
    #[inline(never)]
    fn submit_gated(pool: &ProcessPoolExecutor, path: PathBuf, abort: bool) -> JobHandle<u64> {
        pool.submit(gated, (path, abort))
    }

    fn len(bytes: Vec<u8>) -> usize {
        bytes.len()
    }

    /// A pool of one worker that has run enough tiny jobs to pipeline them: of `double`,
    /// and of `gated` on a path that exists, so that a gated job is expected to be short
    /// and jobs are sent to wait behind it. Submitted all at once, they stream, and their
    /// times are the worker's, not those of a round trip to an idle worker.
    fn warm_pool() -> ProcessPoolExecutor {
        let pool = ProcessPoolExecutor::builder()
            .max_workers(1)
            .build()
            .unwrap();
        let handles: Vec<_> = (0..100)
            .map(|x| {
                let open = submit_gated(&pool, std::env::temp_dir(), false);
                (submit_double(&pool, x), open)
            })
            .collect();
        for (x, (doubled, open)) in (0..).zip(handles) {
            assert_eq!(doubled.wait(), Ok(2 * x));
            assert_eq!(open.wait(), Ok(7));
        }
        pool
    }

    /// Polls until `jobs` jobs wait behind the running one in the worker (and none in the
    /// queue).
    fn until_waiting_in_worker(pool: &ProcessPoolExecutor, jobs: usize) {
        let core = &pool.inner.core;
        let deadline = Instant::now() + BOUND;
        while core.counters.waiting() != jobs || core.queue.len() != 0 {
            assert!(
                Instant::now() < deadline,
                "never saw {jobs} jobs waiting in the worker: {} there, {} queued",
                core.counters.waiting(),
                core.queue.len()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn open(gate: &Path) {
        std::fs::write(gate, b"").unwrap();
    }

    #[test]
    fn jobs_waiting_behind_a_job_that_kills_its_worker_run_elsewhere() {
        bounded(|| {
            let dir = tempfile::tempdir().unwrap();
            let gate = dir.path().join("gate");
            let pool = warm_pool();
            let fatal = submit_gated(&pool, gate.clone(), true);
            let behind: Vec<_> = (0..10).map(|x| submit_double(&pool, x)).collect();
            until_waiting_in_worker(&pool, 10);
            open(&gate);
            match fatal.wait() {
                Err(JobError::WorkerDied { exit }) => assert_eq!(exit.signal(), Some(6)),
                other => panic!("expected the worker to die, got {other:?}"),
            }
            for (x, handle) in (0..).zip(behind) {
                assert_eq!(handle.wait(), Ok(2 * x), "job {x} behind the fatal one");
            }
            let stats = crate::Executor::stats(&pool);
            assert_eq!(stats.respawns, 1, "{stats:?}");
            assert_eq!(stats.jobs_failed, 1, "{stats:?}");
            assert_eq!(stats.jobs_queued, 0, "{stats:?}");
        });
    }

    #[test]
    fn a_job_waiting_in_a_worker_counts_as_started() {
        bounded(|| {
            let dir = tempfile::tempdir().unwrap();
            let gate = dir.path().join("gate");
            let pool = warm_pool();
            let running = submit_gated(&pool, gate.clone(), false);
            let waiting = submit_double(&pool, 1);
            until_waiting_in_worker(&pool, 1);
            // Handed to the worker, it can no longer be removed (as with Python's call
            // queue), and it is not running yet, so it cannot be stopped either.
            assert!(!waiting.cancel());
            open(&gate);
            assert_eq!(running.wait(), Ok(7));
            assert_eq!(waiting.wait(), Ok(2));
            let stats = crate::Executor::stats(&pool);
            assert_eq!(stats.respawns, 0, "{stats:?}");
            assert_eq!(stats.jobs_completed, 202, "{stats:?}");
        });
    }

    #[test]
    fn a_running_job_with_jobs_waiting_behind_it_can_still_be_stopped() {
        bounded(|| {
            let dir = tempfile::tempdir().unwrap();
            let never = dir.path().join("never");
            let pool = warm_pool();
            let running = submit_gated(&pool, never.clone(), false);
            let behind: Vec<_> = (0..5).map(|x| submit_double(&pool, x)).collect();
            until_waiting_in_worker(&pool, 5);
            assert!(running.cancel());
            assert_eq!(running.wait(), Err(JobError::Cancelled));
            for (x, handle) in (0..).zip(behind) {
                assert_eq!(handle.wait(), Ok(2 * x), "job {x} behind the cancelled one");
            }
            assert_eq!(crate::Executor::stats(&pool).respawns, 1);
        });
    }

    #[test]
    fn a_large_argument_never_waits_behind_a_running_job() {
        bounded(|| {
            let dir = tempfile::tempdir().unwrap();
            let gate = dir.path().join("gate");
            let pool = warm_pool();
            let running = submit_gated(&pool, gate.clone(), false);
            let small = submit_double(&pool, 1);
            until_waiting_in_worker(&pool, 1);
            let large = pool.submit(len, vec![1_u8; 1 << 20]);
            let last = submit_double(&pool, 2);
            // The large job is taken and handed back; the worker takes nothing more until
            // its line is empty.
            let core = &pool.inner.core;
            let deadline = Instant::now() + BOUND;
            while core.queue.len() != 2 {
                assert!(Instant::now() < deadline, "the queue never settled");
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(core.counters.waiting(), 1);
            open(&gate);
            assert_eq!(running.wait(), Ok(7));
            assert_eq!(small.wait(), Ok(2));
            assert_eq!(large.wait(), Ok(1 << 20));
            assert_eq!(last.wait(), Ok(4));
        });
    }

    #[test]
    fn the_window_follows_job_time() {
        use super::supervisor::window_for;
        assert_eq!(window_for(None), 1);
        assert_eq!(window_for(Some(Duration::from_secs(1))), 1);
        assert_eq!(window_for(Some(Duration::from_micros(250))), 4);
        assert_eq!(window_for(Some(Duration::from_micros(1))), 32);
        assert_eq!(window_for(Some(Duration::ZERO)), 32);
    }
}
