//! [`Map`], the stream behind `map` and `map_unordered`: it pulls items lazily, groups them
//! into chunks, keeps a bounded number of chunks in flight, and yields one result per item.

use crate::admission::Refusal;
use crate::error::JobError;
use crate::executor::Executor;
use crate::handle::ErasedHandle;
use crate::job::{EncodedChunk, ErasedJob};
use crate::options::JobOptions;
use crate::wire::items::EncodedItems;
use futures::Stream;
use serde::{Serialize, de::DeserializeOwned};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;

mod chunking;
mod progress;
mod ready;

pub use self::progress::Progress;

use self::chunking::{AutoChunk, default_in_flight, known_cost, remember_cost};
use self::ready::Ready;

/// The most emptied argument vectors a map keeps for its next chunks: as many as a
/// thread pool of two workers has in flight for a map of cheap items (two per worker; a
/// larger pool reuses fewer of its vectors).
const SPENT_KEPT: usize = 4;
/// The most items a chunk's vector is given room for before they come: past it, it grows
/// as they do.
const RESERVE_AT_MOST: usize = 1 << 16;
/// The most bytes set aside ahead for a chunk's encoded arguments: a process pool's
/// default frame limit, past which a chunk cannot travel anyway.
const ROOM_AT_MOST: usize = 256 << 20;
/// The most bytes set aside ahead for the results [`Map::try_collect_vec`] gathers.
const COLLECT_ROOM_AT_MOST: usize = 64 << 20;

/// A stream of `Result<R, JobError>`, one per input item, from
/// [`ExecutorExt::map`](crate::ExecutorExt::map) and its siblings.
///
/// Items are pulled from the input only when a chunk can be submitted, and at most
/// [`max_in_flight`](Map::max_in_flight) chunks are queued or running at once, so memory
/// stays bounded whatever the input's length.
///
/// # Cancel safety
///
/// Dropping the stream cancels its chunks still queued in the pool (they never run), and
/// takes back those a process pool had handed to a worker behind the chunk it runs, if
/// the worker has not started them (an `MpiPoolExecutor` cannot: they run, and their
/// results are discarded). Chunks already running finish in the background and
/// their results are discarded: a dropped stream never kills a worker (cancel a chunk's
/// job yourself for that). Items not yet pulled from the input are never submitted.
#[must_use = "streams do nothing unless polled"]
pub struct Map<'a, E: ?Sized, S, A, R> {
    executor: &'a E,
    f: fn(A) -> R,
    source: Pin<Box<S>>,
    source_done: bool,
    chunk_size: Option<usize>,
    auto: AutoChunk,
    max_in_flight: Option<usize>,
    options: JobOptions,
    ordered: bool,
    pending: Vec<A>,
    /// Emptied vectors of chunks that ran on this process's threads, to gather the next
    /// chunks in (see [`ChunkValues`](crate::job::ChunkValues)); at most [`SPENT_KEPT`],
    /// each with room for one chunk, held until the map is dropped.
    spent: Vec<Vec<A>>,
    /// On a pool that ships its jobs, a chunk of arguments that are not plain is encoded
    /// as they are pulled, instead of gathered in `pending` (see [`EncodedChunk`]).
    encoded: Option<EncodedChunk<A, R>>,
    encode_as_pulled: bool,
    /// The encoded size of an argument in the last chunk encoded, rounded up: the next
    /// chunk's buffer is made that large.
    bytes_per_item: usize,
    in_flight: VecDeque<InFlight>,
    /// The results of the last chunk taken from `in_flight`, handed out one by one
    /// without being copied again.
    ready: Ready<R>,
    /// Items pulled from the source so far.
    pulled: u64,
    progress: Progress,
    on_progress: Option<Box<dyn FnMut(Progress) + Send + 'a>>,
    /// A chunk the pool refused as full (it bounds its queue), waiting for room.
    blocked: Option<Blocked>,
}

/// A chunk waiting for room in a full pool, and the wait.
struct Blocked {
    job: ErasedJob,
    len: usize,
    room: Pin<Box<dyn Future<Output = Result<Option<OwnedSemaphorePermit>, Refusal>> + Send>>,
}

/// A submitted chunk.
struct InFlight {
    handle: ErasedHandle,
    /// Its number of items.
    len: usize,
    submitted: Instant,
    /// Its output, once finished (an ordered map holds it until the chunks before it are
    /// done).
    output: Option<Result<crate::job::Output, JobError>>,
}

impl<'a, E, S, A, R> Map<'a, E, S, A, R>
where
    E: Executor + ?Sized,
    S: Stream<Item = A>,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    /// A map over `source`, whose `size_hint` sizes the automatic chunks and, when exact,
    /// gives the progress total.
    pub(crate) fn new(executor: &'a E, f: fn(A) -> R, source: S, ordered: bool) -> Self {
        let (lower, upper) = source.size_hint();
        let total = match upper {
            Some(upper) if upper == lower => Some(upper as u64),
            _ => None,
        };
        Map {
            executor,
            f,
            source: Box::pin(source),
            source_done: false,
            chunk_size: None,
            auto: AutoChunk::new(
                known_cost(cost_key(f, executor.hand_off_is_a_round_trip())),
                executor.max_workers(),
                executor.hand_off_is_a_round_trip(),
            ),
            max_in_flight: None,
            options: JobOptions::new(),
            ordered,
            pending: Vec::new(),
            spent: Vec::new(),
            encoded: None,
            encode_as_pulled: executor.hand_off_is_a_round_trip()
                && crate::wire::plain::width::<A>().is_none(),
            bytes_per_item: 0,
            in_flight: VecDeque::new(),
            ready: Ready::Decoded(Vec::new().into_iter()),
            pulled: 0,
            progress: Progress {
                completed: 0,
                total,
            },
            on_progress: None,
            blocked: None,
        }
    }

    /// How far the map has come. See also [`on_progress`](Self::on_progress).
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Calls `callback` with the current [`Progress`] at once, then with the new one each
    /// time a chunk's results arrive and when the input's length becomes known: the hook
    /// for a progress bar, with no polling of the pool. The callback runs inside the
    /// stream's `poll_next`, so it must be quick (a progress bar update is).
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::TryStreamExt;
    /// use procpool::{ExecutorExt, Progress, ThreadPoolExecutor};
    /// use std::sync::{Arc, Mutex};
    ///
    /// fn square(n: u64) -> u64 {
    ///     n * n
    /// }
    ///
    /// # futures::executor::block_on(async {
    /// let pool = ThreadPoolExecutor::new(2)?;
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// let squares: Vec<u64> = pool
    ///     .map(square, 0..1000)
    ///     .chunk_size(100)
    ///     .on_progress(move |p: Progress| log.lock().unwrap().push(p))
    ///     .try_collect()
    ///     .await?;
    /// assert_eq!(squares.len(), 1000);
    /// let seen = seen.lock().unwrap();
    /// let last = seen.last().unwrap();
    /// assert_eq!((last.completed, last.total), (1000, Some(1000)));
    /// assert!(seen.windows(2).all(|w| w[0].completed <= w[1].completed));
    /// # Ok::<(), procpool::Error>(())
    /// # }).unwrap();
    /// ```
    ///
    /// With [`indicatif`](https://docs.rs/indicatif), the callback is
    /// `move |p| { bar.set_length(p.total.unwrap_or(0)); bar.set_position(p.completed) }`
    /// (`examples/sentiment.rs` does this).
    pub fn on_progress(mut self, mut callback: impl FnMut(Progress) + Send + 'a) -> Self {
        callback(self.progress);
        self.on_progress = Some(Box::new(callback));
        self
    }

    fn report(&mut self) {
        if let Some(callback) = &mut self.on_progress {
            callback(self.progress);
        }
    }

    /// Sends `size` items to a worker per job (Python's `chunksize`). Larger chunks
    /// amortize the per-job cost (a socket round trip on the process pool); smaller ones
    /// balance uneven items better. A size of 0 is taken as 1.
    ///
    /// The default is automatic. A function whose items this process has not timed yet
    /// starts with one item per chunk (so heavy items are spread one by one, as Python's
    /// `ProcessPoolExecutor.map` does by default); each chunk that comes back says how long
    /// its worker ran it, and the next chunk holds about 2 ms of work by that measure
    /// (10 ms on a process pool, where handing out a chunk is a round trip), at most
    /// 16,384 items. When the input tells its length (`Iterator::size_hint`), no
    /// chunk holds more than the items left over twice the workers (guided
    /// self-scheduling: chunks shrink near the end, so the workers finish together). What
    /// an item costs is remembered per function, so a later map of it starts there.
    pub fn chunk_size(mut self, size: usize) -> Self {
        self.chunk_size = Some(size.max(1));
        self
    }

    /// Keeps at most `chunks` chunks queued or running at once: the stream's memory bound.
    /// A value of 0 is taken as 1.
    ///
    /// The default on a thread pool is twice its `max_workers()`. On a process pool it
    /// follows the chunk size: about 32,768 items per worker, and between 2 and 16 chunks
    /// per worker. There, small chunks need many in flight: each costs a round trip to a
    /// worker process, and a worker that has finished its chunks would otherwise wait for
    /// this stream to hand out the next one ([the crate guide](crate#threads-or-processes)
    /// shows how much that costs). Set it lower when single items are large: chunks of one 1 MiB item
    /// keep up to 16 MiB per worker in flight by default.
    pub fn max_in_flight(mut self, chunks: usize) -> Self {
        self.max_in_flight = Some(chunks.max(1));
        self
    }

    /// Gives each chunk a time limit (see [`JobOptions::timeout`]): a chunk that runs
    /// longer fails all its items with [`JobError::TimedOut`], and on a process pool its
    /// worker is killed and replaced. The default is the pool's.
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.options = self.options.timeout(timeout);
        self
    }

    /// Runs a chunk again, up to `retries` more times, if the worker process running it
    /// dies (see [`JobOptions::retries`]). The default is 0.
    pub fn retries(mut self, retries: u32) -> Self {
        self.options = self.options.retries(retries);
        self
    }

    /// The size of the next chunk: the caller's, or the automatic one for what is left
    /// of the input.
    fn effective_chunk_size(&self) -> usize {
        self.chunk_size.unwrap_or_else(|| {
            let left = self
                .progress
                .total
                .map(|total| total.saturating_sub(self.pulled));
            self.auto.size(left)
        })
    }

    fn effective_max_in_flight(&self) -> usize {
        self.max_in_flight.unwrap_or_else(|| {
            default_in_flight(
                self.effective_chunk_size(),
                self.executor.max_workers(),
                self.executor.hand_off_is_a_round_trip(),
            )
        })
    }

    fn submit_pending(&mut self) {
        let (job, len) = match self.encoded.take() {
            Some(chunk) => {
                let len = chunk.len();
                self.bytes_per_item = chunk.encoded_len().div_ceil(len.max(1));
                (ErasedJob::encoded_chunk(chunk), len)
            }
            None => {
                let items = std::mem::take(&mut self.pending);
                let len = items.len();
                (ErasedJob::chunk(self.f, items), len)
            }
        };
        self.submit(job.with_options(self.options), len);
    }

    /// Encodes a pulled item into the chunk being gathered (a map whose items are encoded
    /// as they are pulled; the others gather theirs in [`pull_pending`](Self::pull_pending));
    /// returns how many it holds.
    fn encode_pulled(&mut self, item: A, chunk: usize) -> usize {
        let room = self.bytes_per_item.saturating_mul(chunk).min(ROOM_AT_MOST);
        let f = self.f;
        let encoded = self
            .encoded
            .get_or_insert_with(|| EncodedChunk::with_capacity(f, room));
        encoded.push(item);
        encoded.len()
    }

    /// Pulls items into `pending` until it holds `chunk` (then `None`) or the source
    /// gives something else (returned). A loop of its own, with the source and the vector
    /// in hand: for tiny items this loop is most of a map's cost on the caller's side.
    #[inline]
    fn pull_pending(&mut self, chunk: usize, cx: &mut Context<'_>) -> Option<Poll<Option<A>>> {
        if self.pending.capacity() == 0 {
            if let Some(spent) = self.spent.pop() {
                self.pending = spent;
            }
            // Room for the chunk, as far as the input can fill it, and never more than
            // `RESERVE_AT_MOST` items ahead: `chunk_size(usize::MAX)` means "one chunk".
            let (_, most) = self.source.size_hint();
            let room = chunk.min(most.unwrap_or(usize::MAX)).min(RESERVE_AT_MOST);
            self.pending.reserve_exact(room);
        }
        let (mut source, pending) = (self.source.as_mut(), &mut self.pending);
        let before = pending.len();
        let polled = loop {
            if pending.len() >= chunk {
                break None;
            }
            match source.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => pending.push(item),
                other => break Some(other),
            }
        };
        self.pulled += (pending.len() - before) as u64;
        polled
    }

    /// Items pulled and not yet submitted.
    fn gathered(&self) -> usize {
        self.pending.len() + self.encoded.as_ref().map_or(0, EncodedChunk::len)
    }

    /// Submits a chunk of `len` items; a full pool's refusal leaves it waiting for room.
    fn submit(&mut self, job: ErasedJob, len: usize) {
        let handle = match self.executor.execute(job) {
            Ok(handle) => handle,
            Err(job) if job.refusal() == Refusal::Full => {
                let room = crate::admission::reserve(self.executor.admission_slots());
                self.blocked = Some(Blocked {
                    job,
                    len,
                    room: Box::pin(room),
                });
                return;
            }
            Err(_) => ErasedHandle::failed(JobError::ShutDown),
        };
        self.in_flight.push_back(InFlight {
            handle,
            len,
            submitted: Instant::now(),
            output: None,
        });
    }

    /// Submits the chunk that waits for room, once there is some: `false` while it still
    /// waits (the wait wakes the stream).
    fn unblock(&mut self, cx: &mut Context<'_>) -> bool {
        // A loop: should the chunk be refused again, its new wait is polled too.
        while let Some(blocked) = &mut self.blocked {
            let Poll::Ready(room) = blocked.room.as_mut().poll(cx) else {
                return false;
            };
            let Blocked { mut job, len, .. } = self.blocked.take().expect("checked above");
            match room {
                Ok(permit) => {
                    job.permit = permit;
                    self.submit(job, len);
                }
                Err(_) => self.in_flight.push_back(InFlight {
                    handle: ErasedHandle::failed(JobError::ShutDown),
                    len,
                    submitted: Instant::now(),
                    output: None,
                }),
            }
        }
        true
    }

    /// Pulls items and submits chunks while fewer than `max_in_flight` are out.
    fn fill(&mut self, cx: &mut Context<'_>) {
        // A chunk a full pool refuses here waits for room, and that wait is polled at once
        // (the next turn): it is what wakes the stream when room comes back. Unpolled, it
        // was not waiting at all, and a map with nothing else in flight (its first chunk,
        // on a pool full of other jobs) slept for good.
        while self.unblock(cx) {
            self.fill_unblocked(cx);
            if self.blocked.is_none() {
                return;
            }
        }
    }

    /// [`fill`](Self::fill), with no chunk waiting for room.
    fn fill_unblocked(&mut self, cx: &mut Context<'_>) {
        let mut chunk = self.effective_chunk_size();
        let max = self.effective_max_in_flight();
        while !self.source_done && self.blocked.is_none() && self.in_flight.len() < max {
            let polled = if self.encode_as_pulled {
                self.source.as_mut().poll_next(cx)
            } else {
                match self.pull_pending(chunk, cx) {
                    Some(polled) => polled,
                    None => {
                        self.submit_pending();
                        chunk = self.effective_chunk_size();
                        continue;
                    }
                }
            };
            match polled {
                Poll::Ready(Some(item)) => {
                    self.pulled += 1;
                    if self.encode_pulled(item, chunk) >= chunk {
                        self.submit_pending();
                        chunk = self.effective_chunk_size();
                    }
                }
                Poll::Ready(None) => {
                    self.source_done = true;
                    if self.gathered() > 0 {
                        self.submit_pending();
                    }
                    if self.progress.total != Some(self.pulled) {
                        self.progress.total = Some(self.pulled);
                        self.report();
                    }
                }
                Poll::Pending => {
                    // A slow source: do not sit on a partial chunk while a worker may idle
                    // (fewer of this map's chunks out than the pool has workers).
                    if self.gathered() > 0 && self.in_flight.len() < self.executor.max_workers() {
                        self.submit_pending();
                    }
                    break;
                }
            }
        }
    }

    /// Hands out the next finished chunk's first result, submitting and polling chunks
    /// as needed: [`poll_next`](Stream::poll_next) once the current chunk's results are out.
    #[inline(never)]
    fn poll_chunks(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<R, JobError>>> {
        loop {
            if let Some(item) = self.ready.next() {
                return Poll::Ready(Some(item));
            }
            self.fill(cx);
            if self.in_flight.is_empty() {
                return if self.source_done && self.blocked.is_none() {
                    Poll::Ready(None)
                } else {
                    Poll::Pending // the source will wake us
                };
            }
            // Poll every unfinished chunk, so that progress is timely (and the stream is
            // woken) whichever chunk finishes first.
            let mut finished_items = 0;
            let mut learned = false;
            for chunk in self.in_flight.iter_mut().filter(|c| c.output.is_none()) {
                if let Poll::Ready(output) = chunk.handle.poll_output(cx) {
                    if output.is_ok() {
                        // How long its worker ran it; else (a pool that does not say)
                        // how long it took, waiting included.
                        let ran_for = chunk
                            .handle
                            .ran_for()
                            .unwrap_or_else(|| chunk.submitted.elapsed());
                        self.auto.observe(chunk.len, ran_for);
                        learned = true;
                    }
                    finished_items += chunk.len as u64;
                    chunk.output = Some(output);
                }
            }
            if finished_items > 0 {
                self.progress.completed += finished_items;
                self.report();
            }
            if learned && let Some(per_item) = self.auto.per_item() {
                let key = cost_key(self.f, self.executor.hand_off_is_a_round_trip());
                remember_cost(key, per_item);
            }
            let next = if self.ordered {
                self.in_flight
                    .front()
                    .filter(|c| c.output.is_some())
                    .map(|_| 0)
            } else {
                self.in_flight.iter().position(|c| c.output.is_some())
            };
            match next {
                Some(index) => {
                    let chunk = self
                        .in_flight
                        .remove(index)
                        .expect("index of a finished chunk is valid");
                    let output = chunk.output.expect("the chunk is finished");
                    self.unpack(output, chunk.len);
                }
                None => return Poll::Pending,
            }
        }
    }

    /// Every result, in the stream's order, or the first error: what
    /// `try_collect::<Vec<R>>()` gives, taken a whole chunk at a time instead of one item
    /// per `poll_next`.
    ///
    /// The item stream costs some nanoseconds per item on the caller's task (each item
    /// is a `Result<R, JobError>` handed through `poll_next`); here the results of a
    /// finished chunk are appended to the `Vec` in one loop, which is what keeps a map of
    /// tiny items from being limited by its consumer. As with `try_collect`, the first
    /// failed item ends it: the chunks not started are cancelled, the running ones finish
    /// in the background, and their results are dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use procpool::{ExecutorExt, ThreadPoolExecutor};
    ///
    /// fn double(x: u64) -> u64 {
    ///     x * 2
    /// }
    ///
    /// # futures::executor::block_on(async {
    /// let pool = ThreadPoolExecutor::new(2)?;
    /// let doubled = pool.map(double, 0..10_000).try_collect_vec().await?;
    /// assert_eq!(doubled.len(), 10_000);
    /// assert_eq!(doubled[4_321], 8_642);
    /// # Ok::<(), procpool::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn try_collect_vec(mut self) -> Result<Vec<R>, JobError> {
        // As many as the input says it holds, up to `COLLECT_ROOM_AT_MOST` bytes: it may
        // hold far more than come back (this stops at the first failed item).
        let most = COLLECT_ROOM_AT_MOST / std::mem::size_of::<R>().max(1);
        let mut out = Vec::with_capacity(self.size_hint().0.min(most));
        crate::sys::prefer_huge_pages(&out);
        std::future::poll_fn(|cx| {
            loop {
                if let Err(error) = self.ready.drain_ok_into(&mut out) {
                    return Poll::Ready(Err(error));
                }
                match self.poll_chunks(cx) {
                    Poll::Ready(Some(Ok(first))) => out.push(first),
                    Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error)),
                    Poll::Ready(None) => return Poll::Ready(Ok(std::mem::take(&mut out))),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    }

    fn unpack(&mut self, output: Result<crate::job::Output, JobError>, len: usize) {
        match output {
            Ok(boxed) => {
                let mut results = match boxed.downcast::<EncodedItems<R>>() {
                    Ok(mut items) if items.len() == len => {
                        // Numbers that all decode are decoded at once, so that handing
                        // each out is the short path of `poll_next`.
                        self.ready = match items.take_packed_values() {
                            Some(values) => Ready::Values(values.into_iter()),
                            None => Ready::Encoded(*items),
                        };
                        return;
                    }
                    Ok(items) => items.take(len).collect(),
                    Err(boxed) => match boxed.downcast::<crate::job::ChunkValues<A, R>>() {
                        Ok(chunk) if chunk.values.len() == len => {
                            let crate::job::ChunkValues { values, mut spent } = *chunk;
                            if self.spent.len() < SPENT_KEPT {
                                spent.clear(); // empty already: a run drains it
                                self.spent.push(spent);
                            }
                            self.ready = Ready::Values(values.into_iter());
                            return;
                        }
                        Ok(chunk) => chunk.values.into_iter().map(Ok).collect(),
                        Err(boxed) => *boxed
                            .downcast::<Vec<Result<R, JobError>>>()
                            .expect("procpool bug: chunk output has the wrong type"),
                    },
                };
                let got = results.len();
                if got != len {
                    let error = JobError::Decode(format!(
                        "the worker answered {got} results for a chunk of {len} items"
                    ));
                    results.resize_with(len, || Err(error.clone()));
                }
                self.ready = Ready::Decoded(results.into_iter());
            }
            Err(error) => {
                let failed: Vec<_> = (0..len).map(|_| Err(error.clone())).collect();
                self.ready = Ready::Decoded(failed.into_iter());
            }
        }
    }
}

impl<E, S, A, R> Stream for Map<'_, E, S, A, R>
where
    E: Executor + ?Sized,
    S: Stream<Item = A>,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    type Item = Result<R, JobError>;

    #[inline]
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // The path taken for all but one item per chunk of values (a thread pool's, or a
        // process pool's numbers): small enough to inline into the caller's loop, so that
        // the item is handed over in registers. Everything else is behind a call.
        if let Ready::Values(values) = &mut this.ready
            && let Some(value) = values.next()
        {
            return Poll::Ready(Some(Ok(value)));
        }
        this.poll_chunks(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let buffered = self.ready.len()
            + self.gathered()
            + self.blocked.as_ref().map_or(0, |b| b.len)
            + self.in_flight.iter().map(|c| c.len).sum::<usize>();
        let (lo, hi) = if self.source_done {
            (0, Some(0))
        } else {
            self.source.size_hint()
        };
        (
            buffered.saturating_add(lo),
            hi.and_then(|hi| hi.checked_add(buffered)),
        )
    }
}

// No field is ever pinned in place (the source is pinned in its own box), so moving a
// `Map` is fine whatever its type parameters.
impl<E: ?Sized, S, A, R> Unpin for Map<'_, E, S, A, R> {}

impl<E: ?Sized, S, A, R> Drop for Map<'_, E, S, A, R> {
    fn drop(&mut self) {
        for chunk in &self.in_flight {
            chunk.handle.state.withdraw(JobError::Cancelled);
        }
    }
}

impl<E: ?Sized, S, A, R> fmt::Debug for Map<'_, E, S, A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Map")
            .field("ordered", &self.ordered)
            .field("chunk_size", &self.chunk_size)
            .field("item_cost", &self.auto.per_item())
            .field("chunks_in_flight", &self.in_flight.len())
            .field("results_ready", &self.ready.len())
            .field("source_done", &self.source_done)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

/// What [`chunking`] remembers a function's item cost by.
fn cost_key<A, R>(f: fn(A) -> R, round_trip: bool) -> (usize, bool) {
    (f as usize, round_trip)
}

#[cfg(test)]
mod tests;
