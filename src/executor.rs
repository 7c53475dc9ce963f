//! The [`Executor`] trait (object-safe, type-erased) and [`ExecutorExt`] (typed, generic,
//! implemented for every executor), in the manner of `Stream` / `StreamExt`.

use crate::admission::Permit;
use crate::error::SubmitError;
use crate::handle::{ErasedHandle, JobHandle};
use crate::job::ErasedJob;
use crate::map::Map;
use crate::options::JobOptions;
use crate::stats::{Health, PoolStats};
use async_trait::async_trait;
use futures::Stream;
use serde::{Serialize, de::DeserializeOwned};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub(crate) mod sealed {
    /// Keeps [`Executor`](super::Executor) implementable only by this crate's pools (and
    /// references and smart pointers to them): its job and handle types are opaque.
    pub trait Sealed {
        /// Whether handing a job to a worker and getting its answer back costs a round
        /// trip through another process: a map then keeps more small chunks in flight.
        fn hand_off_is_a_round_trip(&self) -> bool {
            false
        }

        /// The pool's admission slots, if it bounds its queue: what
        /// [`reserve`](super::ExecutorExt::reserve) and a `map` wait on when it is full.
        fn admission_slots(&self) -> Option<std::sync::Arc<tokio::sync::Semaphore>> {
            None
        }
    }
}

/// A pool that runs jobs: the object-safe core that
/// [`ProcessPoolExecutor`](crate::ProcessPoolExecutor) and
/// [`ThreadPoolExecutor`](crate::ThreadPoolExecutor) implement.
///
/// Hold one as `Box<dyn Executor>` or `Arc<dyn Executor>` to choose the strategy at run
/// time; the typed methods of [`ExecutorExt`] (`submit`, `map`, `shutdown`, ...) work on it
/// all the same.
///
/// # Contract
///
/// - [`execute`](Executor::execute) never blocks and never runs the job on the caller's
///   thread: it queues the job and returns its handle at once. It fails only after a
///   shutdown began, and then gives the job back.
/// - Every job it accepts ends **exactly once**: the handle yields the job's result or the
///   [`JobError`](crate::JobError) that ended it. No job is lost, none hangs once its pool
///   is shut down or dropped.
/// - Jobs start in submission order (FIFO); with more than one worker they may finish in
///   any order.
/// - Shutdown is shared: shutting down through one clone, reference or trait object shuts
///   the pool down for all of them.
///
/// The trait is sealed: its job and handle types are opaque, so that each pool can decide
/// how to run a job (in place, or shipped to a worker process).
///
/// # Examples
///
/// ```
/// use procpool::{Executor, ExecutorExt, ProcessPoolExecutor, ThreadPoolExecutor};
///
/// fn checksum(data: Vec<u8>) -> u32 {
///     data.iter().map(|&b| u32::from(b)).sum()
/// }
///
/// # futures::executor::block_on(async {
/// let cpu_heavy = true;
/// let pool: Box<dyn Executor> = if cpu_heavy {
///     Box::new(ProcessPoolExecutor::builder().max_workers(2).build()?)
/// } else {
///     Box::new(ThreadPoolExecutor::new(8)?)
/// };
/// assert_eq!(pool.submit(checksum, vec![1, 2, 3]).await?, 6);
/// pool.shutdown().await;
/// # Ok::<(), procpool::Error>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait Executor: Send + Sync + sealed::Sealed {
    /// Queues a type-erased job and returns its handle at once.
    ///
    /// Use [`ExecutorExt::submit`] instead: it builds the job and types the handle.
    ///
    /// # Errors
    ///
    /// Gives the job back if a shutdown has begun.
    fn execute(&self, job: ErasedJob) -> Result<ErasedHandle, ErasedJob>;

    /// The number of workers (threads or processes) that run jobs concurrently.
    fn max_workers(&self) -> usize;

    /// `true` once a shutdown has begun: new submissions are refused.
    fn is_shutdown(&self) -> bool;

    /// A snapshot of the pool's workers and jobs.
    fn stats(&self) -> PoolStats;

    /// Whether the pool can run jobs now: serving, restarting a worker (and why), broken
    /// (and why), or shut down. Cheap enough for a health check to call on every request.
    fn health(&self) -> Health;

    /// Begins a shutdown and returns without waiting: new submissions are refused from now
    /// on; queued jobs still run, unless `cancel_queued` is set, in which case they end with
    /// [`JobError::Cancelled`](crate::JobError::Cancelled) at once. Idempotent.
    fn begin_shutdown(&self, cancel_queued: bool);

    /// Shuts the pool down as `options` say and waits until it has stopped.
    ///
    /// With a timeout, whatever still runs when it passes is stopped: the process pool
    /// kills its workers and their jobs end with
    /// [`JobError::ShutDown`](crate::JobError::ShutDown); the thread pool cannot stop its
    /// threads, so it stops waiting and lets them finish in the background. Returns `true`
    /// if every job ended by itself, `false` if the timeout cut the wait short.
    ///
    /// Called from one of a thread pool's own jobs, it waits for every other thread of
    /// the pool: the one running that job cannot stop before the job returns.
    async fn shutdown_with(&self, options: ShutdownOptions) -> bool;
}

/// How [`Executor::shutdown_with`] stops a pool.
///
/// The default waits for every queued and running job, with no time limit (Python's
/// `shutdown(wait=True)`).
///
/// # Examples
///
/// ```
/// use procpool::ShutdownOptions;
/// use std::time::Duration;
///
/// // Python's shutdown(cancel_futures=True), but give up after five seconds.
/// let options = ShutdownOptions::new()
///     .cancel_queued(true)
///     .timeout(Duration::from_secs(5));
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownOptions {
    pub(crate) cancel_queued: bool,
    pub(crate) timeout: Option<Duration>,
}

impl ShutdownOptions {
    /// Wait for every queued and running job, however long it takes.
    pub fn new() -> ShutdownOptions {
        ShutdownOptions::default()
    }

    /// End the jobs that have not started yet with
    /// [`JobError::Cancelled`](crate::JobError::Cancelled) instead of running them.
    /// The default is `false`.
    pub fn cancel_queued(mut self, cancel_queued: bool) -> ShutdownOptions {
        self.cancel_queued = cancel_queued;
        self
    }

    /// Stop waiting after `timeout`; see [`Executor::shutdown_with`] for what happens to
    /// jobs still running then. The default is no timeout.
    pub fn timeout(mut self, timeout: Duration) -> ShutdownOptions {
        self.timeout = Some(timeout);
        self
    }
}

macro_rules! forward_executor {
    ($($ty:ty),*) => {$(
        impl<E: Executor + ?Sized> sealed::Sealed for $ty {
            fn hand_off_is_a_round_trip(&self) -> bool {
                (**self).hand_off_is_a_round_trip()
            }
            fn admission_slots(&self) -> Option<Arc<tokio::sync::Semaphore>> {
                (**self).admission_slots()
            }
        }

        #[async_trait]
        impl<E: Executor + ?Sized> Executor for $ty {
            fn execute(&self, job: ErasedJob) -> Result<ErasedHandle, ErasedJob> {
                (**self).execute(job)
            }
            fn max_workers(&self) -> usize {
                (**self).max_workers()
            }
            fn is_shutdown(&self) -> bool {
                (**self).is_shutdown()
            }
            fn stats(&self) -> PoolStats {
                (**self).stats()
            }
            fn health(&self) -> Health {
                (**self).health()
            }
            fn begin_shutdown(&self, cancel_queued: bool) {
                (**self).begin_shutdown(cancel_queued)
            }
            async fn shutdown_with(&self, options: ShutdownOptions) -> bool {
                (**self).shutdown_with(options).await
            }
        }
    )*};
}

forward_executor!(&E, Box<E>, Arc<E>);

/// The typed API of every [`Executor`]: `submit`, `map`, `shutdown` and friends.
///
/// Implemented for every `E: Executor + ?Sized`, including `dyn Executor`; import it with
/// the trait. Jobs are plain function pointers `fn(A) -> R`: a function item or a closure
/// that captures nothing. Arguments and results are `serde` types, because a process pool
/// sends them to another process (the thread pool skips that step).
///
/// A closure that captures its environment does not coerce to `fn(A) -> R`, so it is
/// refused **at compile time**: pass what it would capture as (part of) the argument.
///
/// ```compile_fail,E0308
/// use procpool::{ExecutorExt, ThreadPoolExecutor};
///
/// let pool = ThreadPoolExecutor::new(1).unwrap();
/// let factor = 3_u64;
/// let handle = pool.submit(move |x: u64| x * factor, 14); // captures `factor`: error
/// # drop(handle);
/// ```
///
/// The fix is to pass it along:
///
/// ```
/// use procpool::{ExecutorExt, ThreadPoolExecutor};
///
/// let pool = ThreadPoolExecutor::new(1)?;
/// let factor = 3_u64;
/// let handle = pool.submit(|(x, factor): (u64, u64)| x * factor, (14, factor));
/// assert_eq!(handle.wait()?, 42);
/// # Ok::<(), procpool::Error>(())
/// ```
pub trait ExecutorExt: Executor {
    /// Submits `f(arg)` and returns its handle at once (the job is queued; awaiting the
    /// handle is only needed for the result).
    ///
    /// After a shutdown began, the handle yields
    /// [`JobError::ShutDown`](crate::JobError::ShutDown); use
    /// [`try_submit`](ExecutorExt::try_submit) to get the argument back instead.
    ///
    /// # Examples
    ///
    /// ```
    /// use procpool::{ExecutorExt, ProcessPoolExecutor};
    ///
    /// fn is_prime(n: u64) -> bool {
    ///     n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
    /// }
    ///
    /// # futures::executor::block_on(async {
    /// let pool = ProcessPoolExecutor::builder().max_workers(2).build()?;
    /// assert!(pool.submit(is_prime, 97).await?);
    /// assert!(!pool.submit(|n: u64| n % 2 == 1, 10).await?);
    /// # Ok::<(), procpool::Error>(())
    /// # }).unwrap();
    /// ```
    fn submit<A, R>(&self, f: fn(A) -> R, arg: A) -> JobHandle<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.submit_with(f, arg, JobOptions::new())
    }

    /// Like [`submit`](ExecutorExt::submit), with settings for this job (a time limit);
    /// see [`JobOptions`].
    fn submit_with<A, R>(&self, f: fn(A) -> R, arg: A, options: JobOptions) -> JobHandle<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        handle_of(self, ErasedJob::single(f, arg).with_options(options))
            .watching(crate::handle::key_of(f))
    }

    /// Like [`submit`](ExecutorExt::submit), but a refused submission gives the argument
    /// back.
    ///
    /// # Errors
    ///
    /// [`SubmitError::ShutDown`] holding `arg` if a shutdown has begun;
    /// [`SubmitError::Full`] if the pool bounds its queue
    /// ([`ProcessPoolBuilder::max_queued`](crate::ProcessPoolBuilder::max_queued)) and it is
    /// full.
    fn try_submit<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<JobHandle<R>, SubmitError<A>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        submit_job(self, ErasedJob::single(f, arg))
            .map(|handle| handle.watching(crate::handle::key_of(f)))
            .map_err(give_back)
    }

    /// Waits for room in the pool, then holds it: a [`Permit`] whose
    /// [`submit`](Permit::submit) is never refused as full (tokio's `Sender::reserve`).
    /// Waiters get room in the order they asked. On a pool without a bound
    /// ([`ProcessPoolBuilder::max_queued`](crate::ProcessPoolBuilder::max_queued) not set)
    /// it is ready at once.
    ///
    /// # Errors
    ///
    /// [`JobError::ShutDown`](crate::JobError::ShutDown) once a shutdown has begun, also
    /// while waiting.
    fn reserve(
        &self,
    ) -> impl Future<Output = Result<Permit<'_, Self>, crate::JobError>> + Send + '_ {
        let slots = self.admission_slots();
        async move {
            match crate::admission::reserve(slots).await {
                Ok(permit) => Ok(Permit {
                    executor: self,
                    permit,
                }),
                Err(_) => Err(crate::JobError::ShutDown),
            }
        }
    }

    /// Like [`try_submit`](ExecutorExt::try_submit), but waits for room in a full pool
    /// instead of failing: what a producer that must not drop work, or a service that
    /// queues briefly before it sheds load, uses. Waiters get room in the order they
    /// asked.
    ///
    /// # Errors
    ///
    /// [`SubmitError::ShutDown`] holding `arg` if a shutdown begins before the job was
    /// queued. A broken pool gives a handle instead, which fails with
    /// [`JobError::PoolBroken`](crate::JobError::PoolBroken) and why it broke.
    ///
    /// # Examples
    ///
    /// ```
    /// use procpool::{ExecutorExt, ThreadPoolExecutor};
    ///
    /// # futures::executor::block_on(async {
    /// let pool = ThreadPoolExecutor::builder().max_workers(2).max_queued(4).build()?;
    /// let mut handles = Vec::new();
    /// for i in 0..100_u64 {
    ///     // never more than 6 unfinished jobs: the loop waits for room
    ///     handles.push(pool.submit_when_ready(|x: u64| x * x, i).await.unwrap());
    /// }
    /// let mut sum = 0;
    /// for handle in handles {
    ///     sum += handle.await?;
    /// }
    /// assert_eq!(sum, 328_350);
    /// # Ok::<(), procpool::Error>(())
    /// # }).unwrap();
    /// ```
    fn submit_when_ready<A, R>(
        &self,
        f: fn(A) -> R,
        arg: A,
    ) -> impl Future<Output = Result<JobHandle<R>, SubmitError<A>>> + Send + '_
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let slots = self.admission_slots();
        async move {
            // Refused room (a shutdown, or a broken pool, which closes its queue too):
            // submit anyway, so that a broken pool's handle says why it broke.
            let permit = crate::admission::reserve(slots).await.unwrap_or(None);
            let mut job = ErasedJob::single(f, arg);
            job.permit = permit;
            submit_job(self, job)
                .map(|handle| handle.watching(crate::handle::key_of(f)))
                .map_err(give_back)
        }
    }

    /// Applies `f` to every item, in order: a [`Stream`] of one `Result` per item.
    ///
    /// `items` is consumed lazily: items are grouped into chunks (see
    /// [`Map::chunk_size`]), and only a bounded number of chunks are in flight at once (see
    /// [`Map::max_in_flight`]), so mapping a huge or endless iterator holds a bounded
    /// number of items in memory. A failing item (a panic, say) fails only itself, even
    /// inside a chunk, and the stream goes on. Dropping the stream cancels the chunks that
    /// have not started.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::TryStreamExt;
    /// use procpool::{ExecutorExt, ProcessPoolExecutor};
    ///
    /// # futures::executor::block_on(async {
    /// let pool = ProcessPoolExecutor::builder().max_workers(2).build()?;
    /// let squares: Vec<u64> = pool
    ///     .map(|x: u64| x * x, 0..1000)
    ///     .chunk_size(100)
    ///     .try_collect()
    ///     .await?;
    /// assert_eq!(squares[999], 998_001);
    /// # Ok::<(), procpool::Error>(())
    /// # }).unwrap();
    /// ```
    fn map<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
    ) -> Map<'_, Self, futures::stream::Iter<I::IntoIter>, A, R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        Map::new(self, f, futures::stream::iter(items), true)
    }

    /// Like [`map`](ExecutorExt::map), but yields each result as soon as it is ready
    /// (completion order, chunk by chunk) instead of in input order.
    fn map_unordered<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
    ) -> Map<'_, Self, futures::stream::Iter<I::IntoIter>, A, R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        Map::new(self, f, futures::stream::iter(items), false)
    }

    /// Like [`map`](ExecutorExt::map), over the items of a [`Stream`] (pulled only as fast
    /// as the pool consumes them).
    fn map_stream<A, R, S>(&self, f: fn(A) -> R, items: S) -> Map<'_, Self, S, A, R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        S: Stream<Item = A>,
    {
        Map::new(self, f, items, true)
    }

    /// Like [`map_unordered`](ExecutorExt::map_unordered), over the items of a [`Stream`].
    fn map_stream_unordered<A, R, S>(&self, f: fn(A) -> R, items: S) -> Map<'_, Self, S, A, R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        S: Stream<Item = A>,
    {
        Map::new(self, f, items, false)
    }

    /// Waits for every queued and running job, then stops the workers (Python's
    /// `shutdown(wait=True)`). New submissions are refused from the moment it is called.
    fn shutdown(&self) -> impl Future<Output = ()> + Send + '_ {
        async move {
            self.shutdown_with(ShutdownOptions::new()).await;
        }
    }

    /// Cancels the jobs that have not started, waits for the running ones, then stops the
    /// workers (Python's `shutdown(cancel_futures=True)`).
    fn shutdown_cancel_queued(&self) -> impl Future<Output = ()> + Send + '_ {
        async move {
            self.shutdown_with(ShutdownOptions::new().cancel_queued(true))
                .await;
        }
    }

    /// Waits at most `timeout` for queued and running jobs, then stops whatever still
    /// runs (see [`Executor::shutdown_with`]). Returns `true` if everything ended in time.
    fn shutdown_timeout(&self, timeout: Duration) -> impl Future<Output = bool> + Send + '_ {
        self.shutdown_with(ShutdownOptions::new().timeout(timeout))
    }

    /// Begins a shutdown without waiting (Python's `shutdown(wait=False)`): submissions are
    /// refused, queued and running jobs go on, and the workers stop when they are done.
    fn shutdown_background(&self) {
        self.begin_shutdown(false);
    }
}

impl<E: Executor + ?Sized> ExecutorExt for E {}

/// The handle of `job`: a refused job's handle fails with why it was refused.
pub(crate) fn handle_of<E: Executor + ?Sized, R: 'static>(
    executor: &E,
    job: ErasedJob,
) -> JobHandle<R> {
    submit_job(executor, job).unwrap_or_else(|job| JobHandle::failed(job.refusal().job_error()))
}

/// The argument of a single job the pool gave back, with why.
fn give_back<A: 'static>(job: ErasedJob) -> SubmitError<A> {
    let refusal = job.refusal();
    match job.call.into_arg().downcast::<A>() {
        Ok(arg) => refusal.with(*arg),
        Err(_) => unreachable!("a single job gives back its own argument type"),
    }
}

fn submit_job<E: Executor + ?Sized, R: 'static>(
    executor: &E,
    job: ErasedJob,
) -> Result<JobHandle<R>, ErasedJob> {
    executor.execute(job).map(JobHandle::from_erased)
}
