//! [`PoolService`]: one function on a pool as a [`tower::Service`](tower_service::Service)
//! (feature `tower`), so that tower's and tower-http's layers (`load_shed`,
//! `concurrency_limit`, `timeout`, `buffer`, `retry`...) compose with it as with any
//! service.

use crate::admission::Refusal;
use crate::cancel_on_drop::CancelOnDrop;
use crate::error::JobError;
use crate::executor::Executor;
use crate::handle::JobHandle;
use crate::job::ErasedJob;
use crate::options::JobOptions;
use crate::stats::Health;
use serde::{Serialize, de::DeserializeOwned};
use std::fmt;
use std::task::{Context, Poll};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::PollSemaphore;

/// A function on a pool as a [`tower::Service`](tower_service::Service): `call(arg)`
/// submits `f(arg)` and its future is the job's result.
///
/// - **`poll_ready` is the pool's admission.** On a pool with a bound
///   ([`ProcessPoolBuilder::max_queued`](crate::ProcessPoolBuilder::max_queued)) it
///   reserves room for one job, and is pending while the pool is full (waiters are served
///   in turn), so `load_shed` sheds exactly when the pool is full, and `buffer` or a
///   bounded wait in front of it queue where it is cheap. On a pool without a bound it is
///   always ready. Once the pool is shut down it fails with [`JobError::ShutDown`]
///   ([`JobError::PoolBroken`] and why, if it broke).
///
///   A service whose `poll_ready` was pending keeps its place in line: the next room
///   that comes back is reserved for it until it is polled again or dropped, as with
///   tower's `ConcurrencyLimit`. Behind `load_shed`, which does not poll a service again
///   until its next request, a clone that shed a request and gets no other holds that
///   room meanwhile: drop such clones (a connection's service is dropped with it).
/// - **The future cancels its job when dropped**: it is a [`CancelOnDrop`], so a request
///   that a `timeout` layer gives up on, or whose client hung up, stops its job (on a
///   process pool the running job's worker is killed and replaced) instead of running it
///   to the end for nobody.
/// - **Cloning** gives a service on the same pool that reserves its own room; the room one
///   clone reserved is never used by another. Dropping a service that reserved room gives
///   it back.
///
/// `Error` is [`JobError`]: a job that panicked, timed out ([`JobOptions::timeout`], set
/// with [`with_options`](PoolService::with_options)) or lost its worker fails its request
/// alone.
///
/// # Examples
///
/// ```
/// use procpool::{PoolService, ProcessPoolExecutor};
/// use std::time::Duration;
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// fn count_primes(below: u64) -> usize {
///     (2..below).filter(|n| (2..).take_while(|d| d * d <= *n).all(|d| n % d != 0)).count()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let pool = ProcessPoolExecutor::builder().max_workers(2).max_queued(8).build()?;
/// let mut primes = ServiceBuilder::new()
///     .load_shed() // full pool: fail at once with `Overloaded`, a 503
///     .timeout(Duration::from_secs(5)) // gives up, and kills the job
///     .service(PoolService::new(pool, count_primes));
/// let count = primes.ready().await?.call(100).await?;
/// assert_eq!(count, 25);
/// # Ok(())
/// # }
/// ```
pub struct PoolService<E, A, R> {
    pool: E,
    f: fn(A) -> R,
    options: JobOptions,
    /// The pool's admission, when it is bounded.
    slots: Option<PollSemaphore>,
    /// Room `poll_ready` reserved for the next `call`.
    permit: Option<OwnedSemaphorePermit>,
}

impl<E: Executor, A, R> PoolService<E, A, R> {
    /// A service that runs `f` on `pool` (a pool, or an `Arc<dyn Executor>`: anything
    /// that implements [`Executor`] and clones cheaply).
    pub fn new(pool: E, f: fn(A) -> R) -> PoolService<E, A, R> {
        let slots = pool.admission_slots().map(PollSemaphore::new);
        PoolService {
            pool,
            f,
            options: JobOptions::new(),
            slots,
            permit: None,
        }
    }

    /// Runs every job with `options` (a time limit, retries for a pure function): a job's
    /// own time limit stops the job on its worker, where a `timeout` layer in front only
    /// drops the future (which cancels the job too).
    pub fn with_options(mut self, options: JobOptions) -> PoolService<E, A, R> {
        self.options = options;
        self
    }

    /// The pool the service runs on.
    pub fn pool(&self) -> &E {
        &self.pool
    }

    /// Why a pool refuses work for good: it broke, or it was shut down.
    fn closed(&self) -> JobError {
        match self.pool.health() {
            Health::Broken { reason } => JobError::PoolBroken { reason },
            _ => JobError::ShutDown,
        }
    }
}

impl<E: Executor + Clone, A, R> Clone for PoolService<E, A, R> {
    fn clone(&self) -> Self {
        PoolService {
            pool: self.pool.clone(),
            f: self.f,
            options: self.options,
            slots: self.slots.clone(),
            permit: None,
        }
    }
}

impl<E, A, R> tower_service::Service<A> for PoolService<E, A, R>
where
    E: Executor,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    type Response = R;
    type Error = JobError;
    type Future = CancelOnDrop<R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), JobError>> {
        if self.pool.is_shutdown() {
            self.permit = None; // room reserved before the shutdown: no call can use it
            return Poll::Ready(Err(self.closed()));
        }
        match &mut self.slots {
            None => Poll::Ready(Ok(())),
            Some(_) if self.permit.is_some() => Poll::Ready(Ok(())),
            Some(slots) => match slots.poll_acquire(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(permit)) => {
                    self.permit = Some(permit);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(None) => Poll::Ready(Err(self.closed())),
            },
        }
    }

    /// Submits `f(arg)` in the room `poll_ready` reserved. Called without it (against
    /// tower's contract), it takes room if there is some, and fails its future with
    /// [`JobError::QueueFull`] if not: it never panics.
    fn call(&mut self, arg: A) -> CancelOnDrop<R> {
        let mut job = ErasedJob::single(self.f, arg).with_options(self.options);
        job.permit = self.permit.take();
        let handle = match self.pool.execute(job) {
            Ok(handle) => JobHandle::from_erased(handle).watching(crate::handle::key_of(self.f)),
            Err(job) => JobHandle::failed(match job.refusal() {
                Refusal::ShutDown => self.closed(), // broken, with why, or shut down
                refusal => refusal.job_error(),
            }),
        };
        handle.cancel_on_drop()
    }
}

impl<E, A, R> fmt::Debug for PoolService<E, A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolService")
            .field("bounded", &self.slots.is_some())
            .field("reserved", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}
