//! [`as_completed`] and [`wait`]: Python's `concurrent.futures` helpers over many
//! [`JobHandle`]s.

use crate::error::JobError;
use crate::handle::{JobHandle, within};
use futures::stream::{FuturesUnordered, Stream, StreamExt};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Yields the results of `handles` as the jobs finish, each with its index in `handles`.
///
/// Python's `as_completed`, as a [`Stream`]. The index tells which job a result belongs to.
///
/// # Examples
///
/// ```
/// use futures::StreamExt;
/// use procpool::{ExecutorExt, ThreadPoolExecutor, as_completed};
///
/// # futures::executor::block_on(async {
/// let pool = ThreadPoolExecutor::new(4)?;
/// let handles: Vec<_> = (0..10_u64).map(|i| pool.submit(|x: u64| x * x, i)).collect();
/// let mut done = as_completed(handles);
/// let mut seen = vec![false; 10];
/// while let Some((index, result)) = done.next().await {
///     assert_eq!(result?, (index * index) as u64);
///     seen[index] = true;
/// }
/// assert!(seen.iter().all(|&s| s));
/// # Ok::<(), procpool::Error>(())
/// # }).unwrap();
/// ```
pub fn as_completed<R, I>(handles: I) -> AsCompleted<R>
where
    R: 'static,
    I: IntoIterator<Item = JobHandle<R>>,
{
    AsCompleted {
        inner: handles
            .into_iter()
            .enumerate()
            .map(|(index, handle)| Indexed { index, handle })
            .collect(),
    }
}

/// The stream [`as_completed`] returns: `(index, result)` in completion order.
///
/// # Cancel safety
///
/// Dropping the stream detaches the jobs it still waits for (as dropping their handles
/// would): they run on, and their results are discarded.
#[must_use = "streams do nothing unless polled"]
pub struct AsCompleted<R> {
    inner: FuturesUnordered<Indexed<R>>,
}

struct Indexed<R> {
    index: usize,
    handle: JobHandle<R>,
}

impl<R: 'static> Future for Indexed<R> {
    type Output = (usize, Result<R, JobError>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let index = self.index;
        Pin::new(&mut self.handle)
            .poll(cx)
            .map(|result| (index, result))
    }
}

impl<R: 'static> Stream for AsCompleted<R> {
    type Item = (usize, Result<R, JobError>);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.inner.len(), Some(self.inner.len()))
    }
}

impl<R> fmt::Debug for AsCompleted<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsCompleted")
            .field("remaining", &self.inner.len())
            .finish()
    }
}

/// When [`wait`] returns (Python's `return_when`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnWhen {
    /// As soon as any job has finished.
    FirstCompleted,
    /// As soon as any job has finished with an error, or when all have finished.
    ///
    /// A process pool's answer that does not decode counts as the error awaiting it
    /// gives ([`JobError::Decode`](crate::JobError::Decode)): `wait` decodes the answers
    /// of the jobs that have ended, on the calling thread, to tell.
    FirstError,
    /// When every job has finished.
    AllCompleted,
}

/// What [`wait`] returns: the handles whose jobs have finished and those still pending,
/// each in the order they were given.
///
/// Awaiting a handle from `done` returns at once.
#[derive(Debug)]
pub struct Waited<R> {
    /// Handles of the jobs that have finished.
    pub done: Vec<JobHandle<R>>,
    /// Handles of the jobs that have not.
    pub pending: Vec<JobHandle<R>>,
}

/// Waits until `return_when` holds for `handles`, or until `timeout` passes, and splits
/// them into done and pending (Python's `concurrent.futures.wait`).
///
/// The timer is runtime-agnostic: this works under any executor.
///
/// # Examples
///
/// ```
/// use procpool::{ExecutorExt, ReturnWhen, ThreadPoolExecutor, wait};
///
/// # futures::executor::block_on(async {
/// let pool = ThreadPoolExecutor::new(2)?;
/// let handles: Vec<_> = (0..4_u64).map(|i| pool.submit(|x: u64| x + 1, i)).collect();
/// let waited = wait(handles, ReturnWhen::AllCompleted, None).await;
/// assert_eq!(waited.done.len(), 4);
/// assert!(waited.pending.is_empty());
/// # Ok::<(), procpool::Error>(())
/// # }).unwrap();
/// ```
pub async fn wait<R, I>(handles: I, return_when: ReturnWhen, timeout: Option<Duration>) -> Waited<R>
where
    R: 'static,
    I: IntoIterator<Item = JobHandle<R>>,
{
    let handles: Vec<JobHandle<R>> = handles.into_iter().collect();
    let condition = futures::future::poll_fn(|cx| {
        let mut finished = 0;
        let mut failed = false;
        for handle in &handles {
            if handle.poll_ready(cx).is_ready() {
                finished += 1;
                // Only when it matters: it decodes an answer, which `wait` need not.
                failed |= return_when == ReturnWhen::FirstError && handle.finished_with_error();
            }
        }
        let met = match return_when {
            ReturnWhen::FirstCompleted => finished > 0 || handles.is_empty(),
            ReturnWhen::FirstError => failed || finished == handles.len(),
            ReturnWhen::AllCompleted => finished == handles.len(),
        };
        if met { Poll::Ready(()) } else { Poll::Pending }
    });
    within(condition, timeout).await;
    let (done, pending) = handles.into_iter().partition(JobHandle::is_finished);
    Waited { done, pending }
}
