//! [`ThreadPoolExecutor`]: jobs run on a fixed set of OS threads of this process, with no
//! serialization. This module isolates the threads, their queue and their shutdown.

mod timer;

use crate::admission::{Admission, Refusal};
use crate::error::{Error, JobError};
use crate::executor::{Executor, ShutdownOptions, sealed};
use crate::handle::{ErasedHandle, JobHandle, JobState};
use crate::job::{Call, ErasedJob, Output};
use crate::queue::{JobQueue, Queued};
use crate::stats::{Counters, Health, PoolStats};
use async_trait::async_trait;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use timer::Timer;

/// A pool of OS threads that runs jobs in this process: for blocking I/O, for work too
/// light to pay for a process hop, and for closures that cannot be sent to another
/// process.
///
/// Jobs submitted through [`ExecutorExt`](crate::ExecutorExt) skip serialization on this
/// pool (the `serde` bounds exist so that the same code runs on a process pool). For any
/// `FnOnce() -> R`, capturing or not, use the inherent [`spawn`](ThreadPoolExecutor::spawn).
///
/// The pool is a cheap, cloneable handle: clones share the same threads.
///
/// # Guarantees
///
/// - A job that panics ends with [`JobError::Panicked`] (with the message; the location is
///   `None` because the application's panic hook is left alone), and the thread keeps
///   serving.
/// - A running job cannot be stopped: [`JobHandle::cancel`] only removes queued jobs.
/// - A job past its time limit ([`JobOptions::timeout`](crate::JobOptions::timeout) or
///   [`ThreadPoolBuilder::job_timeout`]) ends with [`JobError::TimedOut`] at once, but its
///   thread runs on until the function returns (the result is discarded), and it takes no
///   other job meanwhile (on a bounded pool, the job's room comes back only then).
/// - A job that aborts, segfaults or calls `exit` takes the whole process with it: use a
///   [`ProcessPoolExecutor`](crate::ProcessPoolExecutor) for such work.
/// - Dropping the last handle to the pool does not block: queued jobs end with
///   [`JobError::ShutDown`], running jobs finish, and then the threads exit.
/// - Nothing a job leaves behind ends its thread: a panic payload or a result whose
///   `Drop` panics is caught too.
/// - A shutdown called from one of the pool's own jobs waits for the other threads; the
///   one running that job stops once the job returns.
///
/// # A job that waits for another job of the same pool
///
/// It holds its thread while it waits: when every thread runs such a job, the jobs they
/// wait for stay queued behind them, and none ends (Python's pools behave the same).
/// Submit such inner jobs to another pool, or await them from the caller's side.
///
/// # Examples
///
/// ```
/// use procpool::{ExecutorExt, ThreadPoolExecutor};
///
/// fn word_count(text: String) -> usize {
///     text.split_whitespace().count()
/// }
///
/// # futures::executor::block_on(async {
/// let pool = ThreadPoolExecutor::new(4)?;
/// assert_eq!(pool.submit(word_count, "a b c".to_string()).await?, 3);
/// let total = pool.spawn(|| (1..=10).sum::<u32>()).await?;
/// assert_eq!(total, 55);
/// pool.shutdown().await;
/// # Ok::<(), procpool::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct ThreadPoolExecutor {
    inner: Arc<Inner>,
}

/// Builds a [`ThreadPoolExecutor`]; from [`ThreadPoolExecutor::builder`].
#[derive(Debug, Clone)]
pub struct ThreadPoolBuilder {
    max_workers: Option<usize>,
    thread_name: String,
    stack_size: Option<usize>,
    initializers: Vec<Initializer>,
    job_timeout: Option<Duration>,
    max_queued: Option<usize>,
}

/// An initializer of each thread: a plain `fn()` or a worker-state builder.
#[derive(Clone)]
struct Initializer(Arc<dyn Fn() + Send + Sync>);

impl fmt::Debug for Initializer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Initializer")
    }
}

struct Inner {
    shared: Arc<Shared>,
    max_workers: usize,
}

struct Shared {
    queue: JobQueue<Task>,
    alive: tokio::sync::watch::Sender<usize>,
    initializers: Vec<Initializer>,
    /// Set once if an initializer panicked: every job then fails with it.
    broken: OnceLock<JobError>,
    counters: Arc<Counters>,
    job_timeout: Option<Duration>,
    /// Started with the first job that has a time limit.
    timer: OnceLock<std::io::Result<Timer>>,
}

struct Task {
    state: Arc<JobState>,
    body: Body,
    options: crate::options::JobOptions,
    /// When it was submitted, if it is one of the jobs the pool times (see [`timed`]).
    submitted: Option<Instant>,
}

/// Times one job in [`TIME_ONE_IN`] submitted from each thread: two clock reads and two
/// histogram updates would cost the shortest jobs (a quarter of a microsecond) a tenth of
/// their time.
fn timed() -> Option<Instant> {
    thread_local! {
        static SUBMITTED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    let n = SUBMITTED.with(|count| {
        let n = count.get();
        count.set(n.wrapping_add(1));
        n
    });
    n.is_multiple_of(TIME_ONE_IN).then(Instant::now)
}

/// See [`timed`].
const TIME_ONE_IN: u32 = 16;

enum Body {
    Job(Box<dyn Call>),
    Closure(Box<dyn FnOnce() -> Output + Send>),
}

impl Queued for Task {
    fn state(&self) -> &JobState {
        &self.state
    }
}

/// The default number of threads: Python's `min(32, cpus + 4)`, sized for I/O-bound work.
fn default_max_workers() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus + 4).min(32)
}

impl Default for ThreadPoolBuilder {
    fn default() -> Self {
        ThreadPoolBuilder {
            max_workers: None,
            thread_name: "procpool-thread".to_owned(),
            stack_size: None,
            initializers: Vec::new(),
            job_timeout: None,
            max_queued: None,
        }
    }
}

impl ThreadPoolBuilder {
    /// The number of threads. The default is `min(32, available_parallelism + 4)`, as in
    /// Python's `ThreadPoolExecutor`: enough to overlap blocking I/O. For CPU-bound work
    /// use the number of cores (or a process pool).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n);
        self
    }

    /// The name of the pool's threads. The default is `"procpool-thread"`.
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = name.into();
        self
    }

    /// The stack size of each thread, in bytes. The default is Rust's (2 MiB, or
    /// `RUST_MIN_STACK`).
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// A function each thread runs once, before its first job (Python's `initializer`).
    /// If it panics, the pool is broken: every job ends with [`JobError::PoolBroken`]
    /// naming the panic. The default is none.
    ///
    /// Initializers and [`worker_state`](Self::worker_state) builders run in the order
    /// they were added.
    pub fn initializer(mut self, f: fn()) -> Self {
        self.initializers.push(Initializer(Arc::new(f)));
        self
    }

    /// Builds a worker-local state once on each thread, before its first job, with
    /// `build()`; jobs (and [`spawn`](ThreadPoolExecutor::spawn)ed closures) read it with
    /// [`with_worker_state`](crate::with_worker_state). Each thread has its own value, so
    /// reading it takes no lock, and `S` needs neither `Send` nor `Sync`. The same
    /// `build` and job functions work on a [`ProcessPoolExecutor`](crate::ProcessPoolExecutor)
    /// (see [`ProcessPoolBuilder::worker_state`](crate::ProcessPoolBuilder::worker_state)).
    ///
    /// A panic in `build` breaks the pool as a panicking [`initializer`](Self::initializer)
    /// does.
    pub fn worker_state<S: 'static>(mut self, build: fn() -> S) -> Self {
        self.initializers.push(Initializer(Arc::new(move || {
            crate::state::build_and_install(build)
        })));
        self
    }

    /// A time limit for every job that does not set its own (see
    /// [`JobOptions::timeout`](crate::JobOptions::timeout)): the job's handle yields
    /// [`JobError::TimedOut`] when it passes, but its thread cannot be stopped and runs on
    /// until the function returns. The default is no limit.
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = Some(timeout);
        self
    }

    /// Bounds the queue: at most `n` jobs wait for a thread beyond one running on each,
    /// as [`ProcessPoolBuilder::max_queued`](crate::ProcessPoolBuilder::max_queued) does
    /// (closures from [`spawn`](ThreadPoolExecutor::spawn) count too). The default is no
    /// bound.
    ///
    /// A job's room comes back when it ends, except that a job past its time limit
    /// ([`job_timeout`](Self::job_timeout), [`JobOptions::timeout`](crate::JobOptions::timeout))
    /// keeps it until its thread returns from it: the thread takes no other job meanwhile.
    pub fn max_queued(mut self, n: usize) -> Self {
        self.max_queued = Some(n);
        self
    }

    /// Starts the threads.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `max_workers` is 0; [`Error::Io`] if the OS refuses a thread.
    pub fn build(self) -> Result<ThreadPoolExecutor, Error> {
        let max_workers = self.max_workers.unwrap_or_else(default_max_workers);
        if max_workers == 0 {
            return Err(Error::Config(
                "ThreadPoolBuilder::max_workers must be at least 1".into(),
            ));
        }
        let (alive, _) = tokio::sync::watch::channel(0_usize);
        let shared = Arc::new(Shared {
            queue: JobQueue::with_admission(Admission::new(max_workers, self.max_queued)),
            alive,
            initializers: self.initializers,
            broken: OnceLock::new(),
            counters: Arc::new(Counters::default()),
            job_timeout: self.job_timeout,
            timer: OnceLock::new(),
        });
        for i in 0..max_workers {
            let mut builder = std::thread::Builder::new().name(self.thread_name.clone());
            if let Some(size) = self.stack_size {
                builder = builder.stack_size(size);
            }
            let worker_shared = shared.clone();
            shared.alive.send_modify(|n| *n += 1);
            if let Err(e) = builder.spawn(move || worker_shared.run_worker()) {
                shared.alive.send_modify(|n| *n -= 1);
                shared.queue.close(Some(JobError::ShutDown));
                return Err(Error::io(format!("spawning thread {i} of the pool"), e));
            }
        }
        Ok(ThreadPoolExecutor {
            inner: Arc::new(Inner {
                shared,
                max_workers,
            }),
        })
    }
}

thread_local! {
    /// On a pool's thread, the address of the [`Shared`] it serves: a shutdown called from
    /// one of its jobs does not wait for the thread it runs on.
    static SERVES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Shared {
    /// How many of the pool's threads a shutdown called on this thread waits for to stop
    /// being alive: all but this one, if it is one of them (running the job that called
    /// it, which returns only after the wait).
    fn alive_after_shutdown(self: &Arc<Self>) -> usize {
        let here = SERVES.try_with(|serves| serves.get()).unwrap_or(0);
        usize::from(here == Arc::as_ptr(self) as usize)
    }

    fn run_worker(self: &Arc<Self>) {
        let _ = SERVES.try_with(|serves| serves.set(Arc::as_ptr(self) as usize));
        for init in &self.initializers {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(&*init.0)) {
                let reason = format!(
                    "the thread pool's initializer panicked: {}",
                    crate::error::panic_message(payload)
                );
                let _ = self.broken.set(JobError::PoolBroken { reason });
                break;
            }
        }
        self.counters.workers_alive.fetch_add(1, Relaxed);
        while let Some(task) = self.queue.pop_blocking() {
            // Nothing a job leaves behind may end this thread, which serves the pool's
            // later jobs: a result no one awaits, or one a timeout made late, is dropped
            // here, and its `Drop` may panic.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| self.serve(task))) {
                let message = crate::error::panic_message(payload);
                tracing::warn!(%message, "dropping what a job left behind panicked");
            }
        }
        self.counters.workers_alive.fetch_sub(1, Relaxed);
        self.alive.send_modify(|n| *n -= 1);
    }

    /// Runs one job taken from the queue, unless it was cancelled there.
    fn serve(&self, task: Task) {
        if !task.state.try_start() {
            return; // cancelled while queued
        }
        self.counters.workers_busy.fetch_add(1, Relaxed);
        // A job that times out ends while this thread runs on: the thread, not the job,
        // holds its room in a bounded queue, until it returns.
        let mut room = None;
        if let Some(timeout) = task.options.resolve_timeout(self.job_timeout) {
            room = self.queue.admission().take_from(&task.state);
            self.schedule_timeout(&task.state, timeout);
        }
        // A chunk of a map says how long it ran, for the size of the next.
        let chunk = matches!(&task.body, Body::Job(call) if call.is_chunk());
        let started = (chunk || task.submitted.is_some()).then(Instant::now);
        if let (Some(submitted), Some(started)) = (task.submitted, started) {
            let waited = started.saturating_duration_since(submitted);
            self.counters.queue_wait.record(waited);
        }
        let result = match self.broken.get() {
            Some(error) => Err(error.clone()),
            None => match task.body {
                Body::Job(call) => call.run_here(),
                Body::Closure(run) => {
                    catch_unwind(AssertUnwindSafe(run)).map_err(JobError::from_panic_payload)
                }
            },
        };
        if let Some(started) = started {
            let took = started.elapsed();
            if chunk {
                task.state.set_ran_for(took);
            }
            if task.submitted.is_some() {
                self.counters.run_time.record(took);
            }
        }
        // Idle again before the caller is woken, so the stats it reads agree.
        self.counters.workers_busy.fetch_sub(1, Relaxed);
        drop(room); // room for the next job before the caller hears of this one's end
        self.counters.finish(&task.state, result);
    }

    fn schedule_timeout(&self, job: &Arc<JobState>, timeout: Duration) {
        match self
            .timer
            .get_or_init(|| Timer::start(self.counters.clone()))
        {
            Ok(timer) => timer.schedule(job, timeout),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the timeout thread; jobs run without time limits")
            }
        }
    }
}

impl ThreadPoolExecutor {
    /// A pool of `max_workers` threads.
    ///
    /// # Errors
    ///
    /// As [`ThreadPoolBuilder::build`].
    pub fn new(max_workers: usize) -> Result<ThreadPoolExecutor, Error> {
        ThreadPoolExecutor::builder()
            .max_workers(max_workers)
            .build()
    }

    /// A builder, with every setting at its default.
    pub fn builder() -> ThreadPoolBuilder {
        ThreadPoolBuilder::default()
    }

    /// Runs any closure on the pool, capturing or not, and returns its handle. This is
    /// outside the [`Executor`] trait because a process pool cannot ship a closure.
    ///
    /// After a shutdown began, the handle yields [`JobError::ShutDown`].
    ///
    /// # Examples
    ///
    /// ```
    /// use procpool::ThreadPoolExecutor;
    ///
    /// let pool = ThreadPoolExecutor::new(2)?;
    /// let name = String::from("procpool");
    /// let len = pool.spawn(move || name.len()).wait()?;
    /// assert_eq!(len, 8);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn spawn<F, R>(&self, f: F) -> JobHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let body = Body::Closure(Box::new(move || Box::new(f()) as Output));
        let handle = match self.push(body, crate::options::JobOptions::new(), None) {
            Ok(handle) => handle,
            Err((.., refusal)) => ErasedHandle::failed(refusal.job_error()),
        };
        JobHandle::from_erased(handle)
    }

    /// Queues `body` in a slot of the pool's admission (`reserved`, or a free one now);
    /// gives it back, with why, if the pool is full or shut down.
    fn push(
        &self,
        body: Body,
        options: crate::options::JobOptions,
        reserved: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<ErasedHandle, (Body, crate::options::JobOptions, Refusal)> {
        crate::handle::submitting();
        let queue = &self.inner.shared.queue;
        let slot = match queue.admission().admit(reserved) {
            Ok(slot) => slot,
            Err(refusal) => return Err((body, options, refusal)),
        };
        let state = JobState::new();
        let task = Task {
            state: state.clone(),
            body,
            options,
            submitted: timed(),
        };
        queue
            .push_admitted(task, slot)
            .map(|alone| {
                // No job ahead of it: that is all the thread pool asks (whether a worker
                // is free would cost a cache miss per job, on the counters the workers
                // write); a watch that misses on a busy pool skips the next ones.
                crate::handle::submitted(&state, alone);
                ErasedHandle::new(state)
            })
            .map_err(|task| (task.body, task.options, Refusal::ShutDown))
    }
}

impl sealed::Sealed for ThreadPoolExecutor {
    fn admission_slots(&self) -> Option<Arc<tokio::sync::Semaphore>> {
        self.inner.shared.queue.admission().slots().cloned()
    }
}

#[async_trait]
impl Executor for ThreadPoolExecutor {
    fn execute(&self, job: ErasedJob) -> Result<ErasedHandle, ErasedJob> {
        self.push(Body::Job(job.call), job.options, job.permit)
            .map_err(|(body, options, refusal)| match body {
                Body::Job(call) => ErasedJob::from_parts(call, options).refused(refusal),
                Body::Closure(_) => unreachable!("execute pushes jobs, not closures"),
            })
    }

    fn max_workers(&self) -> usize {
        self.inner.max_workers
    }

    fn is_shutdown(&self) -> bool {
        self.inner.shared.queue.is_closed()
    }

    fn stats(&self) -> PoolStats {
        let shared = &self.inner.shared;
        let mut stats = shared
            .counters
            .snapshot(self.inner.max_workers, shared.queue.len());
        stats.max_queued = shared.queue.admission().max_queued();
        stats
    }

    fn health(&self) -> Health {
        let shared = &self.inner.shared;
        if let Some(JobError::PoolBroken { reason }) = shared.broken.get() {
            return Health::Broken {
                reason: reason.clone(),
            };
        }
        if shared.queue.is_closed() {
            return Health::ShutDown;
        }
        Health::Serving
    }

    fn begin_shutdown(&self, cancel_queued: bool) {
        self.inner
            .shared
            .queue
            .close(cancel_queued.then_some(JobError::Cancelled));
    }

    async fn shutdown_with(&self, options: ShutdownOptions) -> bool {
        self.begin_shutdown(options.cancel_queued);
        let mut alive = self.inner.shared.alive.subscribe();
        // Called from one of this pool's jobs, it cannot wait for its own thread.
        let left = self.inner.shared.alive_after_shutdown();
        let all_exited = async move {
            // The sender lives in `Shared`, which `self` keeps alive: `wait_for` cannot fail.
            let _ = alive.wait_for(|&n| n <= left).await;
        };
        crate::handle::within(all_exited, options.timeout).await
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.queue.close(Some(JobError::ShutDown));
    }
}

impl fmt::Debug for ThreadPoolExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPoolExecutor")
            .field("max_workers", &self.inner.max_workers)
            .field("shut_down", &self.inner.shared.queue.is_closed())
            .finish()
    }
}
