//! The pipelining window: the jobs sent to one worker, in the order it runs them (the head,
//! running, and those waiting behind it in the link), and how many more may join them.
//!
//! Short jobs stream to a worker a little ahead, so that it never waits for the pool
//! between them; long ones go one at a time, so that none waits behind another while a
//! worker idles. "Short" is learned per function, from the worker's own job times
//! ([`Line::room`]); a function not timed yet goes only to an idle worker. The times the
//! policy learns from are given by the line's caller (`now`), so that it is testable
//! without a clock.

use super::core::QueuedJob;
use crate::error::JobError;
use crate::handle::{Finished, Stopper, Wakes};
use crate::job::Undecoded;
use crate::run::Outcome;
use crate::ship::Target;
use crate::stats::Counters;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The most jobs one worker holds at once: the one it runs and those waiting behind it.
/// [`PIPELINE_SPAN`] is what bounds the window of all but sub-microsecond jobs. 100,000
/// tiny jobs submitted then awaited (2 workers, 2026-12-04, medians of 15 runs, three
/// runs each): 0.51–0.59 M jobs/s with at most 32, 0.93–1.10 M with 128, 1.17–1.28 M
/// with 256, 1.28–1.51 M with 1,024 and 1.36–1.52 M with 4,096: a deeper window means
/// larger batches of held answers, so fewer wake-ups per job on both sides.
pub(crate) const MAX_WINDOW: usize = 1024;
/// About how much work (by the worker's recent job times) may be queued in one worker.
pub(crate) const PIPELINE_SPAN: Duration = Duration::from_millis(1);
/// How many functions a line keeps job times for.
const TIMED_FUNCTIONS: usize = 8;
/// The most argument bytes that may wait behind a running job, well under a socket's
/// buffer, so that writing them never blocks while the worker writes its answer.
pub(crate) const WINDOW_BYTES: usize = 64 * 1024;

/// How many jobs a worker may hold (running and waiting) when its jobs take `job_time`:
/// enough to cover about [`PIPELINE_SPAN`] of work, so that short jobs stream while long
/// ones are handed out one at a time (and never wait behind each other while another
/// worker idles).
pub(crate) fn window_for(job_time: Option<Duration>) -> usize {
    match job_time {
        None => 1,
        Some(t) => {
            let fits = PIPELINE_SPAN.as_nanos() / t.as_nanos().max(1);
            usize::try_from(fits)
                .unwrap_or(MAX_WINDOW)
                .clamp(1, MAX_WINDOW)
        }
    }
}

/// A job written to a worker and not yet answered.
struct Sent {
    id: u64,
    /// The function it runs.
    target: Target,
    /// Its number of items: 1, or a chunk's length.
    items: usize,
    /// How long it was expected to take when it was sent (`None`: its function was not
    /// timed yet), counted in the line's [`Line::work`] until it leaves.
    estimate: Option<Duration>,
    /// Its encoded argument stays in `job.input` while it waits behind the head, so that
    /// it can go back to the queue as it is.
    job: QueuedJob,
}

/// How long one function's jobs take on a worker.
#[derive(Clone, Copy)]
struct Timed {
    target: Target,
    /// Per item, in picoseconds (a moving average): chunks of a `map` change length
    /// (automatic chunks shrink towards the input's end), and a job's time follows its
    /// length. Picoseconds, because the items of a cheap chunk take a few nanoseconds
    /// each, which whole nanoseconds would round down by up to a third.
    per_item_ps: u64,
    /// The length of the job timed last: what the next one is expected to have.
    items: usize,
}

impl Timed {
    /// How long a job of `items` items is expected to take.
    fn of(&self, items: usize) -> Duration {
        let ps = u128::from(self.per_item_ps) * items as u128;
        Duration::from_nanos(u64::try_from(ps / 1000).unwrap_or(u64::MAX))
    }
}

/// The jobs sent to one worker, in the order it runs them: the head (running since
/// `head_started`) and the jobs waiting behind it. It keeps the pool's counters in step:
/// waiting jobs count as queued, a running head as a busy worker.
pub(crate) struct Line<'a> {
    counters: &'a Counters,
    /// What `cancel()` notifies to stop the running head, or to take back a job waiting
    /// behind it, if the backend can stop a running job.
    stopper: Option<Arc<Stopper>>,
    sent: VecDeque<Sent>,
    /// When the front job became the head; `None` until it does.
    head_started: Option<Instant>,
    /// Bytes of the arguments waiting behind the head.
    bytes: usize,
    /// How long this worker's jobs take, per function, for the few functions it ran
    /// last, most recent first. A function's jobs are windowed by their own times: short
    /// jobs of one function must not open a window for the first jobs of a long one,
    /// which would then wait behind each other in one worker while another idles.
    job_times: Vec<Timed>,
    /// The function of the job sent last: the one the serving loop makes room for.
    last_target: Option<Target>,
    /// The expected work of the jobs in the line: the sum of their known estimates, and
    /// how many have none.
    work: Duration,
    untimed: usize,
    /// See [`Caps::lead`](super::backend::Caps::lead).
    lead: Duration,
}

impl<'a> Line<'a> {
    pub(crate) fn new(counters: &'a Counters, stoppable: bool) -> Line<'a> {
        Line {
            counters,
            stopper: stoppable.then(Stopper::new),
            sent: VecDeque::new(),
            head_started: None,
            bytes: 0,
            job_times: Vec::new(),
            last_target: None,
            work: Duration::ZERO,
            untimed: 0,
            lead: Duration::ZERO,
        }
    }

    /// The same, sending the next job `lead` before a running one is expected to end.
    pub(crate) fn with_lead(mut self, lead: Duration) -> Line<'a> {
        self.lead = lead;
        self
    }

    /// When one more job of `target`'s function (by default the one sent last) may be sent
    /// behind the running head, which [`room`](Self::room) leaves alone: [`Caps::lead`]
    /// before the head is expected to end, if the link has a lead, the head is alone and
    /// both functions are timed here.
    ///
    /// [`Caps::lead`]: super::backend::Caps::lead
    pub(crate) fn prefetch_at(&self, target: Option<Target>) -> Option<Instant> {
        if self.lead.is_zero() || self.sent.len() != 1 {
            return None;
        }
        let head = self.head()?;
        let expected = head.estimate?;
        self.job_time(target.or(self.last_target)?)?;
        Some(self.head_started? + expected.saturating_sub(self.lead))
    }

    /// [`room`](Self::room) at `now`, with the one job [`prefetch_at`](Self::prefetch_at)
    /// allows.
    pub(crate) fn room_at(&self, target: Option<Target>, now: Instant) -> usize {
        match self.room(target) {
            0 if self.prefetch_at(target).is_some_and(|at| at <= now) => 1,
            room => room,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.sent.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Bytes of the arguments waiting behind the head.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// How `target`'s jobs are timed here, if this worker has timed them.
    fn timed(&self, target: Target) -> Option<&Timed> {
        self.job_times.iter().find(|timed| timed.target == target)
    }

    /// How long the next of `target`'s jobs is expected to take here (as long as the
    /// last one), if this worker has timed them.
    fn job_time(&self, target: Target) -> Option<Duration> {
        self.timed(target).map(|timed| timed.of(timed.items))
    }

    /// How many more jobs of `target`'s function (by default the one sent last) may join
    /// the line now: as many as [`window_for`] their job time when the line is empty;
    /// behind other jobs, as many as fit with them in [`PIPELINE_SPAN`] of expected work.
    /// Nothing joins a line that holds a job of unknown length, and a job of unknown
    /// length joins only an empty line.
    pub(crate) fn room(&self, target: Option<Target>) -> usize {
        let time = target.or(self.last_target).and_then(|t| self.job_time(t));
        if self.sent.is_empty() {
            return window_for(time);
        }
        let (0, Some(time)) = (self.untimed, time) else {
            return 0;
        };
        let free = PIPELINE_SPAN.saturating_sub(self.work);
        let fits = usize::try_from(free.as_nanos() / time.as_nanos().max(1)).unwrap_or(usize::MAX);
        fits.min(MAX_WINDOW.saturating_sub(self.sent.len()))
    }

    /// Counts `estimate` in or out of the line's expected work.
    fn count_work(&mut self, estimate: Option<Duration>, joins: bool) {
        match (estimate, joins) {
            (Some(e), true) => self.work += e,
            (Some(e), false) => self.work = self.work.saturating_sub(e),
            (None, true) => self.untimed += 1,
            (None, false) => self.untimed -= 1,
        }
    }

    /// Records that one of `target`'s jobs, of `items` items, took `took`.
    fn observe(&mut self, target: Target, items: usize, took: Duration) {
        let items = items.max(1);
        let per_item = took.as_nanos().saturating_mul(1000) / items as u128;
        let per_item = u64::try_from(per_item).unwrap_or(u64::MAX);
        let per_item_ps = match self.job_times.iter().position(|t| t.target == target) {
            Some(i) => {
                let average = u128::from(self.job_times.remove(i).per_item_ps);
                // No larger than either: it fits.
                ((average * 7 + u128::from(per_item)) / 8) as u64
            }
            None => per_item,
        };
        self.job_times.truncate(TIMED_FUNCTIONS - 1);
        self.job_times.insert(
            0,
            Timed {
                target,
                per_item_ps,
                items,
            },
        );
    }

    /// The running head, if any.
    fn head(&self) -> Option<&Sent> {
        self.head_started.and(self.sent.front())
    }

    pub(crate) fn head_id(&self) -> Option<u64> {
        self.head().map(|s| s.id)
    }

    /// When the head's time limit runs out, if it has one.
    pub(crate) fn head_deadline(&self) -> Option<Instant> {
        Some(self.head_started? + self.head()?.job.timeout?)
    }

    /// The id of the oldest job written to the worker and not answered, running or not.
    pub(crate) fn first_id(&self) -> Option<u64> {
        self.sent.front().map(|s| s.id)
    }

    /// What bounds a write to the worker: the running head's deadline and stop request,
    /// or, with none running, those of the first job written, its time counted from
    /// `since`, when the write began (the worker runs it as soon as it has read it).
    pub(crate) fn write_limits(
        &self,
        since: Instant,
    ) -> (
        Option<Instant>,
        Option<(&crate::handle::JobState, &Stopper)>,
    ) {
        if self.head_started.is_some() {
            return (self.head_deadline(), self.running());
        }
        let Some(first) = self.sent.front() else {
            return (None, None);
        };
        let stopper = self.stopper.as_deref();
        (
            first.job.timeout.map(|limit| since + limit),
            stopper.map(|stopper| (&*first.job.state, stopper)),
        )
    }

    pub(crate) fn head_timeout(&self) -> Option<Duration> {
        self.head()?.job.timeout
    }

    /// The running head's completion cell (whose caller may ask to stop it), with the
    /// stopper its `cancel()` notifies, if the backend can stop it.
    pub(crate) fn running(&self) -> Option<(&crate::handle::JobState, &Stopper)> {
        let stopper = self.stopper.as_deref()?;
        self.head().map(|s| (&*s.job.state, stopper))
    }

    /// Whether a job waiting behind the head is to be taken back (it was cancelled, or
    /// its `Map` dropped).
    pub(crate) fn waiting_withdrawn(&self) -> bool {
        let behind = usize::from(self.head_started.is_some());
        self.sent
            .iter()
            .skip(behind)
            .any(|sent| sent.job.state.withdraw_asked())
    }

    /// Whether the running head may be taken back if its worker has not started it: it
    /// is to end (cancelled, or its `Map` dropped), or can be sent again (it may be
    /// retried, so [`promote`](Self::promote) kept its argument).
    pub(crate) fn head_can_go_back(&self) -> bool {
        self.head()
            .is_some_and(|sent| sent.job.retries_left > 0 || sent.job.state.withdraw_asked())
    }

    /// What `cancel()` notifies for the jobs of this line, if the backend can stop a
    /// running job: given to a job before it is claimed for the line
    /// ([`JobState::make_stoppable`](crate::handle::JobState::make_stoppable)), so that no
    /// `cancel()` finds it claimed with nobody to tell.
    pub(crate) fn stopper(&self) -> Option<&Arc<Stopper>> {
        self.stopper.as_ref()
    }

    /// Appends a claimed job framed into the worker's next write (given the line's
    /// [`stopper`](Self::stopper) first). The first job of an empty line runs as soon as
    /// its bytes arrive, and may answer before the line promotes it; one behind it is
    /// taken back or stopped if cancelled.
    pub(crate) fn push(&mut self, id: u64, job: QueuedJob) {
        let (target, items) = (job.target, job.items);
        self.bytes += job.input.len();
        self.counters.windowed.fetch_add(1, Ordering::Relaxed);
        self.last_target = Some(target);
        let estimate = self.timed(target).map(|timed| timed.of(items));
        self.count_work(estimate, true);
        self.sent.push_back(Sent {
            id,
            target,
            items,
            estimate,
            job,
        });
    }

    /// The argument of the job sent last, while it waits.
    pub(crate) fn last_input(&self) -> Option<&bytes::Bytes> {
        Some(&self.sent.back()?.job.input)
    }

    /// Makes the oldest job the head, if there is none: the worker runs it from `now`, and
    /// `cancel()` stops it (it was taken back instead while it waited).
    pub(crate) fn promote(&mut self, now: Instant) {
        if self.head_started.is_some() {
            return;
        }
        let Some(sent) = self.sent.front_mut() else {
            return;
        };
        self.counters.windowed.fetch_sub(1, Ordering::Relaxed);
        sent.job.attempts += 1;
        if sent.job.attempts == 1 {
            let waited = now.saturating_duration_since(sent.job.submitted);
            self.counters.queue_wait.record_from_one_thread(waited);
        }
        self.bytes -= sent.job.input.len();
        if sent.job.retries_left == 0 {
            // The worker has it: free it now (a large one goes to the spares once the
            // link has written it too). Kept until the answer, a small one seemed to make
            // W1 slower, by 0.3-0.8 us in the best repetitions of a probe (a noisy
            // machine). So the head cannot go back to the queue unless it is to end.
            sent.job.input = bytes::Bytes::new();
        }
        self.counters.workers_busy.fetch_add(1, Ordering::Relaxed);
        self.head_started = Some(now);
    }

    /// Takes the head off the line, idle again, with how long it ran until `now`.
    fn pop_head(&mut self, now: Instant) -> Option<(Sent, Duration)> {
        let started = self.head_started.take()?;
        let sent = self.sent.pop_front()?;
        self.count_work(sent.estimate, false);
        self.counters.workers_busy.fetch_sub(1, Ordering::Relaxed);
        Some((sent, now.saturating_duration_since(started)))
    }

    /// Completes the head with the worker's answer, which arrived at `now`, holding its
    /// caller's waker in `wakes`. The answer is handed over undecoded: the caller decodes
    /// it.
    pub(crate) fn answer(
        &mut self,
        outcome: Outcome,
        payload: bytes::Bytes,
        now: Instant,
        wakes: &mut Wakes,
    ) {
        let Some((mut sent, took)) = self.pop_head(now) else {
            return;
        };
        self.observe(sent.target, sent.items, took);
        self.counters.run_time.record_from_one_thread(took);
        sent.job.state.set_ran_for(took);
        let result = match outcome.into_error() {
            Some(error) => Err(error),
            None => {
                let kept = std::mem::take(&mut sent.job.kept);
                Ok(Finished::Encoded(Undecoded::new(
                    payload,
                    sent.job.decoder,
                    kept,
                )))
            }
        };
        self.counters
            .finish_deferred(&sent.job.state, result, wakes);
    }

    /// Takes the running head off the line to run it again elsewhere, if it may be retried
    /// (its worker died).
    pub(crate) fn retry_head(&mut self) -> Option<QueuedJob> {
        if self.head()?.job.retries_left == 0 {
            return None;
        }
        let (sent, _) = self.pop_head(Instant::now())?;
        let mut job = sent.job;
        job.retries_left -= 1;
        Some(job)
    }

    /// How many times the running head has been run, this time included.
    pub(crate) fn head_attempts(&self) -> u32 {
        self.head().map_or(1, |s| s.job.attempts)
    }

    /// Ends the running head with `error` (the worker is gone).
    pub(crate) fn fail_head(&mut self, error: JobError) {
        if let Some((sent, _)) = self.pop_head(Instant::now()) {
            self.counters.finish(&sent.job.state, Err(error));
        }
    }

    /// When the running head started, if there is one with jobs waiting behind it: the
    /// jobs that could be given back if it turns out slow.
    pub(crate) fn head_with_waiting(&self) -> Option<(u64, Instant)> {
        let head = self.head()?;
        (self.sent.len() > 1).then_some((head.id, self.head_started?))
    }

    /// Takes back the jobs from id `first` on, which the worker will skip (they wait
    /// behind the head, which is not among them), to requeue them.
    pub(crate) fn take_from(&mut self, first: u64) -> Vec<QueuedJob> {
        let start = self.sent.partition_point(|sent| sent.id < first);
        let start = start.max(usize::from(self.head_started.is_some()));
        let taken: Vec<Sent> = self.sent.drain(start..).collect();
        let jobs: Vec<_> = taken
            .into_iter()
            .map(|sent| {
                self.count_work(sent.estimate, false);
                self.bytes -= sent.job.input.len();
                sent.job
            })
            .collect();
        self.counters
            .windowed
            .fetch_sub(jobs.len(), Ordering::Relaxed);
        jobs
    }

    /// Takes every job off the line, the head included, which the worker skipped (it was
    /// taken back before the worker started it): to requeue them.
    pub(crate) fn take_back_all(&mut self) -> Vec<QueuedJob> {
        if self.head_started.take().is_some()
            && let Some(head) = self.sent.front_mut()
        {
            // Undoes its promotion (its argument, if freed then, is empty now).
            head.job.attempts -= 1;
            self.bytes += head.job.input.len();
            self.counters.windowed.fetch_add(1, Ordering::Relaxed);
            self.counters.workers_busy.fetch_sub(1, Ordering::Relaxed);
        }
        self.take_from(0)
    }

    /// Takes the jobs waiting behind the head (none of them ran), to requeue them.
    pub(crate) fn take_waiting(&mut self) -> Vec<QueuedJob> {
        let start = usize::from(self.head_started.is_some());
        let drained: Vec<Sent> = self.sent.drain(start..).collect();
        let waiting: Vec<_> = drained
            .into_iter()
            .map(|sent| {
                self.count_work(sent.estimate, false);
                sent.job
            })
            .collect();
        self.counters
            .windowed
            .fetch_sub(waiting.len(), Ordering::Relaxed);
        self.bytes = 0;
        waiting
    }

    /// Ends every job in the line with `error`: the pool is being killed.
    pub(crate) fn fail_all(&mut self, error: JobError) {
        self.fail_head(error.clone());
        for job in self.take_waiting() {
            self.counters.finish(&job.state, Err(error.clone()));
        }
    }
}

#[cfg(test)]
mod tests;
