//! [`ThreadPoolExecutor`]: jobs run on a fixed set of OS threads of this process, with no
//! serialization. This module isolates the threads, their queue and their shutdown.

use crate::error::{Error, JobError};
use crate::executor::{Executor, ShutdownOptions, sealed};
use crate::handle::{ErasedHandle, JobHandle, JobState};
use crate::job::{Call, ErasedJob, Output};
use crate::queue::{JobQueue, Queued};
use async_trait::async_trait;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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
/// - Dropping the last handle to the pool does not block: queued jobs end with
///   [`JobError::ShutDown`], running jobs finish, and then the threads exit.
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
    initializer: Option<fn()>,
}

struct Inner {
    shared: Arc<Shared>,
    max_workers: usize,
}

struct Shared {
    queue: JobQueue<Task>,
    alive: tokio::sync::watch::Sender<usize>,
    initializer: Option<fn()>,
    /// Set once if the initializer panicked: every job then fails with it.
    broken: OnceLock<JobError>,
}

struct Task {
    state: Arc<JobState>,
    body: Body,
}

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
            initializer: None,
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
    pub fn initializer(mut self, f: fn()) -> Self {
        self.initializer = Some(f);
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
            queue: JobQueue::new(),
            alive,
            initializer: self.initializer,
            broken: OnceLock::new(),
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

impl Shared {
    fn run_worker(&self) {
        if let Some(Err(payload)) = self.initializer.map(catch_unwind) {
            let reason = format!(
                "the thread pool's initializer panicked: {}",
                crate::error::panic_message(&*payload)
            );
            let _ = self.broken.set(JobError::PoolBroken { reason });
        }
        while let Some(task) = self.queue.pop_blocking() {
            if !task.state.try_start(false) {
                continue; // cancelled while queued
            }
            let result = match self.broken.get() {
                Some(error) => Err(error.clone()),
                None => match task.body {
                    Body::Job(call) => call.run_here(),
                    Body::Closure(run) => catch_unwind(AssertUnwindSafe(run))
                        .map_err(|payload| JobError::from_panic_payload(&*payload)),
                },
            };
            task.state.complete(result);
        }
        self.alive.send_modify(|n| *n -= 1);
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
        let handle = match self.push(body) {
            Ok(handle) => handle,
            Err(_) => ErasedHandle::new(JobState::completed(Err(JobError::ShutDown))),
        };
        JobHandle::from_erased(handle)
    }

    fn push(&self, body: Body) -> Result<ErasedHandle, Body> {
        let state = JobState::new();
        let task = Task {
            state: state.clone(),
            body,
        };
        match self.inner.shared.queue.push(task) {
            Ok(()) => Ok(ErasedHandle::new(state)),
            Err(task) => Err(task.body),
        }
    }
}

impl sealed::Sealed for ThreadPoolExecutor {}

#[async_trait]
impl Executor for ThreadPoolExecutor {
    fn execute(&self, job: ErasedJob) -> Result<ErasedHandle, ErasedJob> {
        self.push(Body::Job(job.call)).map_err(|body| match body {
            Body::Job(call) => ErasedJob { call },
            Body::Closure(_) => unreachable!("execute pushes jobs, not closures"),
        })
    }

    fn max_workers(&self) -> usize {
        self.inner.max_workers
    }

    fn is_shutdown(&self) -> bool {
        self.inner.shared.queue.is_closed()
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
        let all_exited = async move {
            // The sender lives in `Shared`, which `self` keeps alive: `wait_for` cannot fail.
            let _ = alive.wait_for(|&n| n == 0).await;
        };
        match options.timeout {
            None => {
                all_exited.await;
                true
            }
            Some(timeout) => wait_or_timeout(all_exited, timeout).await,
        }
    }
}

/// `true` if `future` finished before `timeout`.
pub(crate) async fn wait_or_timeout(
    future: impl std::future::Future<Output = ()>,
    timeout: Duration,
) -> bool {
    futures::pin_mut!(future);
    let delay = futures_timer::Delay::new(timeout);
    matches!(
        futures::future::select(future, delay).await,
        futures::future::Either::Left(_)
    )
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
