//! [`CancelOnDrop`], a [`JobHandle`] that cancels its job when dropped (tokio-util's
//! `AbortOnDropHandle`): what a request handler holds, so that a client that goes away
//! stops the work it asked for.

use crate::error::JobError;
use crate::handle::JobHandle;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A job's handle that cancels the job when dropped before it finished, from
/// [`JobHandle::cancel_on_drop`].
///
/// A plain [`JobHandle`] dropped unawaited detaches its job, as a `tokio::task::JoinHandle`
/// does: the job runs on and its result is discarded. This one calls
/// [`cancel`](JobHandle::cancel) instead, so a queued job never runs and a running job on a
/// [`ProcessPoolExecutor`](crate::ProcessPoolExecutor) has its worker killed and replaced
/// (a running thread-pool job cannot be stopped and finishes). That is what a service
/// wants when a request's future is dropped: by a client that hung up, by a timeout layer,
/// by a `select!` that took another branch.
///
/// It is a [`Future`] of the job's result, like the handle it wraps.
///
/// # Examples
///
/// ```
/// use procpool::{ExecutorExt, ProcessPoolExecutor};
/// use std::time::Duration;
///
/// fn slow(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// # futures::executor::block_on(async {
/// let pool = ProcessPoolExecutor::builder().max_workers(1).build()?;
/// let first = pool.submit(slow, 30_000).cancel_on_drop();
/// let second = pool.submit(slow, 1);
/// drop(first); // the 30 s job's worker is killed and replaced
/// assert_eq!(second.await?, 1);
/// # Ok::<(), procpool::Error>(())
/// # }).unwrap();
/// ```
#[must_use = "dropping it cancels the job"]
pub struct CancelOnDrop<R: 'static> {
    handle: Option<JobHandle<R>>,
}

impl<R: 'static> CancelOnDrop<R> {
    pub(crate) fn new(handle: JobHandle<R>) -> CancelOnDrop<R> {
        CancelOnDrop {
            handle: Some(handle),
        }
    }

    fn handle(&self) -> &JobHandle<R> {
        self.handle
            .as_ref()
            .expect("a handle until detached or dropped")
    }

    /// Cancels the job now; see [`JobHandle::cancel`].
    pub fn cancel(&self) -> bool {
        self.handle().cancel()
    }

    /// `true` once the job has ended; see [`JobHandle::is_finished`].
    pub fn is_finished(&self) -> bool {
        self.handle().is_finished()
    }

    /// The plain handle back: dropping it then detaches the job instead of cancelling it.
    pub fn detach(mut self) -> JobHandle<R> {
        self.handle
            .take()
            .expect("a handle until detached or dropped")
    }
}

impl<R: 'static> Future for CancelOnDrop<R> {
    type Output = Result<R, JobError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let handle = self
            .get_mut()
            .handle
            .as_mut()
            .expect("a handle until detached or dropped");
        Pin::new(handle).poll(cx)
    }
}

impl<R: 'static> Drop for CancelOnDrop<R> {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle
            && !handle.is_finished()
        {
            handle.cancel();
        }
    }
}

impl<R: 'static> fmt::Debug for CancelOnDrop<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelOnDrop")
            .field("handle", &self.handle)
            .finish()
    }
}
