//! The per-worker event loop: streams jobs from the shared queue to one worker, completes
//! its answers, and gives the worker up (through one path, [`Serving::lose`]) when it
//! dies, breaks the protocol, runs a job too long, is asked to stop a job, or grows past
//! the memory limit while running one. A worker is retired instead ([`Serving::retire`]),
//! once it holds no job, when the queue is drained, after `max_tasks_per_child` jobs, or
//! when a job left it over the memory limit.
//!
//! Jobs are pipelined: while the worker runs the head job, short, small jobs of the same
//! function wait behind it in its link, written together, so that the worker never idles
//! waiting for the pool ([`Line`] decides how many). The worker runs them strictly in
//! order, so only the head has started: a `cancel()` of one behind it takes it back from
//! the worker ([`take_back`]) where the backend can, and if the worker is lost they go
//! back to the front of the queue, untouched. Answers that arrive together are completed
//! in one pass and their callers woken once.

use super::backend::{Backend, Caps, Received, WorkerLink};
use super::core::{Core, Idle, QueuedJob};
use super::line::{Line, WINDOW_BYTES};
use super::{EXIT_GRACE, stop_within};
use crate::error::{Cause, JobError};
use crate::exit::{ExitInfo, WorkerId};
use crate::handle::{Asked, Wakes};
use crate::run::Outcome;
use crate::ship::Target;
use crate::wire::frame::{Frame, INLINE_PAYLOAD, LEND_FROM, ProtocolError, put_frame};
use crate::wire::message::{FromWorker, ToWorker, put_run};
use bytes::BytesMut;
use std::time::{Duration, Instant};

mod lose;
mod take_back;

/// How long a worker whose link broke may take to be seen exiting before it is treated as
/// alive and misbehaving.
const BROKEN_GRACE: Duration = Duration::from_secs(1);
/// How many jobs ahead of its claim a worker's task asks for their states' cache lines.
const CLAIM_AHEAD: usize = 8;
/// How long a job may run, with jobs waiting behind it in its worker, while another
/// worker is idle, before the pool takes the waiting jobs back. Short jobs are pipelined
/// only a millisecond deep ([`super::line::PIPELINE_SPAN`]): a job running twice that is
/// not one of them.
pub(crate) const GIVE_BACK_AFTER: Duration = Duration::from_millis(2);

/// What a slot does after its worker stopped serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Start a new worker.
    Respawn,
    /// Start a new worker after the back-off of a failed start: this one ended before it
    /// answered a job, for the reason given (its initializer may kill it, for instance,
    /// and a worker started at once would die as soon).
    Failed(String),
    /// The pool is stopping: start none.
    Stop,
}

/// What woke the loop.
enum Event {
    Killed,
    /// `cancel()` asked to stop the running head.
    Stop,
    /// Something was asked of the worker's jobs (this many requests so far): perhaps to
    /// take back a job waiting behind the head.
    Asked(u64),
    /// Time to try again to take back a cancelled job waiting behind the head.
    WithdrawRetry,
    Received(Received),
    HeadTimer,
    /// The head has run for [`GIVE_BACK_AFTER`] with jobs waiting behind it, and another
    /// worker is idle.
    GiveBack,
    /// The head is expected to end within the link's lead: the worker may take one more.
    Prefetch,
    OverMemory {
        limit: u64,
        resident: u64,
    },
    Job(Option<QueuedJob>),
}

/// Why a worker is being given up.
enum Loss {
    /// It exited by itself.
    Exited(ExitInfo),
    /// Its link closed or broke: it died, if it exits soon; otherwise it broke the
    /// protocol, and its running job ends with this [`JobError::Protocol`].
    Broken(JobError),
    /// The pool stops it: its running job ends with `error`.
    Stopped { error: JobError, why: &'static str },
    /// The pool is being killed: every job it holds ends with [`JobError::ShutDown`].
    Killed,
}

/// Why a write to the worker did not complete.
enum Written {
    /// It failed.
    Failed(std::io::Error),
    /// It was given up, for the reason the loss says.
    Cut(Loss),
}

/// One worker being served, and the jobs it holds.
struct Serving<'a, B: Backend> {
    core: &'a Core,
    backend: &'a B,
    caps: Caps,
    slot: usize,
    link: B::Link,
    id: WorkerId,
    /// Jobs it has answered.
    tasks: usize,
    /// The id of the next job written to it.
    next_id: u64,
    line: Line<'a>,
    /// The buffer each write's frames are built in, kept from one write to the next.
    frames: BytesMut,
    /// Found over the memory limit after a job: it takes no more jobs, and is retired
    /// once those it holds are answered.
    retiring: bool,
    /// Ticks while a job runs, to read the worker's memory against the limit.
    memory_poll: tokio::time::Interval,
    /// Whether the pool counts this worker as idle.
    idle: Idle<'a>,
    /// The jobs taken back from the worker that it has not answered as skipped yet.
    revoked: take_back::Revoked,
    /// The head for which jobs were last taken back, or found all started: once per head.
    gave_back_for: Option<u64>,
    /// When to ask again, for a head the worker had not started when asked.
    give_back_retry: Option<(u64, Instant)>,
    /// How many requests of its jobs' `cancel()`s the loop has looked at.
    asks_seen: u64,
    /// When to try again to take back a cancelled job waiting behind the head.
    withdraw_retry: Option<Instant>,
}

/// Serves jobs to the worker behind `link` until it must be replaced or the pool stops.
pub(crate) async fn serve<B: Backend>(
    core: &Core,
    backend: &B,
    slot: usize,
    link: B::Link,
) -> Next {
    let caps = backend.caps();
    let mut serving = Serving {
        core,
        backend,
        caps,
        slot,
        id: link.id(),
        link,
        tasks: 0,
        next_id: 0,
        line: Line::new(&core.counters, caps.stop_running).with_lead(caps.lead),
        frames: BytesMut::new(),
        retiring: false,
        memory_poll: super::core::memory_poll(),
        idle: Idle::new(core),
        revoked: take_back::Revoked::default(),
        gave_back_for: None,
        give_back_retry: None,
        asks_seen: 0,
        withdraw_retry: None,
    };
    serving.run().await
}

impl<B: Backend> Serving<'_, B> {
    async fn run(&mut self) -> Next {
        let mut draining = false;
        // A job too large to wait behind the running one, or of a function with no room
        // in the line, went back to the queue: take nothing more until the line is empty,
        // so that it comes next (here or elsewhere).
        let mut hold = false;
        // Something read while completing answers, to handle next.
        let mut carried: Option<Received> = None;
        loop {
            hold &= !self.line.is_empty();
            let room = if draining || hold || self.retiring {
                0
            } else {
                self.room(None)
            };
            self.idle.set(room > 0 && self.line.is_empty());
            // Room for one more behind the head, soon: look again then.
            let prefetch = match room {
                0 if !(draining || hold || self.retiring) => self
                    .line
                    .prefetch_at(None)
                    .filter(|at| *at > Instant::now()),
                _ => None,
            };
            let event = match carried.take() {
                Some(received) => Event::Received(received),
                None => self.next_event(room, prefetch).await,
            };
            let loss = match event {
                Event::Killed => Some(Loss::Killed),
                Event::Job(None) => {
                    // The queue is closed and empty: finish what was sent, then retire.
                    draining = true;
                    None
                }
                Event::Job(Some(job)) => match self.take_jobs(job).await {
                    Ok(held) => {
                        hold = held;
                        None
                    }
                    Err(loss) => Some(loss),
                },
                Event::Received(Received::Frame(Frame {
                    message:
                        FromWorker::Done {
                            id,
                            outcome: Outcome::Revoked,
                        },
                    ..
                })) if self.revoked.skipped(id) => None, // a job taken back, skipped
                Event::Received(Received::Frame(Frame {
                    message: FromWorker::Done { id, outcome },
                    payload,
                })) if self.line.head_id() == Some(id) => {
                    carried = self.complete(outcome, payload);
                    if !self.retiring
                        && let Some((limit, resident)) = self.over_memory_limit()
                    {
                        // Memory a finished job left behind. The jobs already written to
                        // the worker run on it (the first may be running): it takes no
                        // more, and is retired once they are answered.
                        tracing::warn!(
                            slot = self.slot,
                            worker = %self.id,
                            limit,
                            resident,
                            jobs = self.line.len(),
                            "retiring a worker over the memory limit"
                        );
                        self.retiring = true;
                    }
                    None
                }
                Event::Received(Received::Exited(exit)) => Some(Loss::Exited(exit)),
                Event::Received(received @ Received::Closed) => {
                    Some(Loss::Broken(JobError::Protocol {
                        reason: received.describe(),
                        cause: None,
                    }))
                }
                Event::Received(Received::Broken(
                    error @ (ProtocolError::Io(_) | ProtocolError::Truncated),
                )) => Some(Loss::Broken(error.into_job_error())),
                Event::Received(Received::Broken(error)) => Some(Loss::Stopped {
                    error: error.into_job_error(),
                    why: "killed a worker after a protocol error",
                }),
                Event::Received(received @ Received::Frame(_)) => Some(Loss::Stopped {
                    error: JobError::Protocol {
                        reason: received.describe(),
                        cause: None,
                    },
                    why: "killed a worker after a protocol error",
                }),
                Event::GiveBack => {
                    hold |= self.give_back();
                    None
                }
                Event::Prefetch => None,
                // Jobs taken back go to the queue: it is no longer drained.
                Event::Asked(asked) => {
                    self.asks_seen = asked;
                    draining &= !self.withdraw();
                    None
                }
                Event::WithdrawRetry => {
                    draining &= !self.withdraw();
                    None
                }
                Event::Stop if self.take_back_head() => {
                    draining = false;
                    None
                }
                Event::Stop => Some(Loss::Stopped {
                    error: JobError::Cancelled,
                    why: "killed a worker to cancel its running job",
                }),
                Event::HeadTimer => Some(Loss::Stopped {
                    error: JobError::TimedOut(self.line.head_timeout().unwrap_or_default()),
                    why: "job timed out; killed its worker",
                }),
                Event::OverMemory { limit, resident } => Some(Loss::Stopped {
                    error: JobError::MemoryLimit { limit, resident },
                    why: "killed a worker over the memory limit",
                }),
            };
            if let Some(loss) = loss {
                return self.lose(loss).await;
            }
            if self.line.is_empty() {
                if draining {
                    self.retire().await;
                    return Next::Stop;
                }
                if self.retiring {
                    self.retire().await;
                    return Next::Respawn;
                }
                let recycle = self.core.config.max_tasks_per_child;
                if recycle.is_some_and(|max| self.tasks >= max) {
                    tracing::debug!(slot = self.slot, worker = %self.id, tasks = self.tasks, "retiring worker");
                    self.retire().await;
                    return Next::Respawn;
                }
            }
            self.line.promote(Instant::now());
        }
    }

    /// Waits for the next event: the pool being killed, a stop request for the running
    /// job, something from the link, the head's deadline, the memory ceiling, (with
    /// `room`) a job from the queue, or the time to `prefetch` one.
    async fn next_event(&mut self, room: usize, prefetch: Option<Instant>) -> Event {
        let deadline = self.line.head_deadline();
        let head_timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        // Nothing to do: a new job is for this worker before one with a job running.
        let idle = self.line.is_empty();
        let running = self.line.running();
        let seen = self.asks_seen;
        let stop = async {
            match &running {
                Some((state, stopper)) => stopper.asked_since(Some(state), seen).await,
                None => std::future::pending().await,
            }
        };
        let withdraw_at = self.withdraw_retry;
        let withdraw_retry = async move {
            match withdraw_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        // A worker being retired for its memory finishes the few short jobs it holds.
        let watch_memory = !self.line.is_empty() && !self.retiring && self.watches_memory();
        let give_back_at = self.give_back_at();
        let (core, backend, id) = (self.core, self.backend, self.id);
        let poll = &mut self.memory_poll;
        let memory_limit = async move {
            if !watch_memory {
                return std::future::pending().await;
            }
            loop {
                poll.tick().await;
                if let Some(over) = core.over_memory_limit(backend, id) {
                    return over;
                }
            }
        };
        let prefetch = async move {
            match prefetch {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let give_back = async move {
            let Some(at) = give_back_at else {
                return std::future::pending().await;
            };
            core.an_idle_worker().await;
            tokio::time::sleep_until(at.into()).await;
        };
        tokio::select! {
            biased;
            _ = self.core.kill.cancelled() => Event::Killed,
            asked = stop => match asked {
                Asked::StopHead => Event::Stop,
                Asked::Since(asked) => Event::Asked(asked),
            },
            () = withdraw_retry => Event::WithdrawRetry,
            received = self.link.recv() => Event::Received(received),
            () = head_timer => Event::HeadTimer,
            () = give_back => Event::GiveBack,
            () = prefetch => Event::Prefetch,
            (limit, resident) = memory_limit => Event::OverMemory { limit, resident },
            job = self.core.queue.pop(idle), if room > 0 => Event::Job(job),
        }
    }

    /// How many more jobs of `target`'s function (by default, of the one sent last) the
    /// worker may be sent now.
    fn room(&self, target: Option<Target>) -> usize {
        let sent = self.tasks + self.line.len();
        let left = match self.core.config.max_tasks_per_child {
            Some(max) => max.saturating_sub(sent),
            None => usize::MAX,
        };
        self.line.room_at(target, Instant::now()).min(left)
    }

    /// Sends `job`, and the jobs of its function behind it in the queue for which the line
    /// has room, in one write. The room was for more of the function sent last: a job of
    /// another function gets its own window, which may be none while the line holds
    /// anything (a function not timed yet goes alone); it then goes back to the queue, for
    /// an idle worker or for this one once idle. `Ok(true)` says a job went back, so that
    /// this worker should take no more until its line is empty.
    async fn take_jobs(&mut self, job: QueuedJob) -> Result<bool, Loss> {
        let target = job.target;
        let room = self.room(Some(target));
        if room == 0 {
            self.core.queue.requeue_front(vec![job]);
            return Ok(true);
        }
        let mut batch = vec![job];
        while batch.len() < room {
            match self.core.queue.try_pop() {
                Some(next) if next.target == target => batch.push(next),
                Some(other) => {
                    self.core.queue.requeue_front(vec![other]);
                    break;
                }
                None => break,
            }
        }
        self.send_jobs(target, batch).await
    }

    /// Encodes `batch` (jobs of `target`'s function) and writes it to the worker in one go
    /// (a large payload goes after its frame's head, straight from its buffer). Jobs that
    /// cannot go in this write go back to the front of the queue; `Ok(true)` says one was
    /// held back for being too large to wait behind the running job.
    async fn send_jobs(&mut self, target: Target, batch: Vec<QueuedJob>) -> Result<bool, Loss> {
        let mut out = std::mem::take(&mut self.frames);
        out.clear();
        let (large, held) = self.encode_jobs(target, batch, &mut out);
        let sent = if out.is_empty() {
            Ok(())
        } else {
            let payload = match (large, self.line.last_input()) {
                (true, Some(input)) => input.clone(),
                _ => bytes::Bytes::new(),
            };
            self.send_within_limits(&out, &payload).await
        };
        self.frames = out;
        match sent {
            Ok(()) => Ok(held),
            Err(Written::Cut(loss)) => Err(loss),
            Err(Written::Failed(error)) => {
                // The jobs of this write never started (they go back to the queue); an
                // older head may have been running.
                tracing::warn!(slot = self.slot, worker = %self.id, %error, "lost a worker while writing to it");
                Err(Loss::Broken(JobError::Protocol {
                    reason: "writing to the worker failed".into(),
                    cause: Some(Cause::new(error)),
                }))
            }
        }
    }

    /// Writes `out` and `payload` to the worker, unless the pool is killed first, or the
    /// job the write is for (see [`Line::write_limits`]) reaches its time limit or is
    /// cancelled: a worker that does not read (stopped, or stuck) must not hold its slot,
    /// its jobs' limits, or a drop of the pool, for as long. That job is then the
    /// worker's running head, which the loss ends.
    async fn send_within_limits(
        &mut self,
        out: &[u8],
        payload: &bytes::Bytes,
    ) -> Result<(), Written> {
        let (deadline, stoppable) = self.line.write_limits(Instant::now());
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let stop = async {
            match stoppable {
                Some((state, stopper)) => stopper.stop_asked_for(state).await,
                None => std::future::pending().await,
            }
        };
        let timed_out = tokio::select! {
            biased;
            _ = self.core.kill.cancelled() => return Err(Written::Cut(Loss::Killed)),
            () = stop => false,
            () = timer => true,
            sent = self.link.send(out, payload) => return sent.map_err(Written::Failed),
        };
        self.line.promote(Instant::now());
        let loss = if timed_out {
            Loss::Stopped {
                error: JobError::TimedOut(self.line.head_timeout().unwrap_or_default()),
                why: "a job's time ran out while it was written to its worker; killed the worker",
            }
        } else {
            Loss::Stopped {
                error: JobError::Cancelled,
                why: "killed a worker to cancel the job written to it",
            }
        };
        Err(Written::Cut(loss))
    }

    /// Claims the jobs of `batch` and frames them into `out`, adding them to the line,
    /// until one must wait for a later write; returns whether the last one framed has a
    /// large payload (written after `out`, from its own buffer), and whether a job was held
    /// back for being too large to wait behind the running one.
    fn encode_jobs(
        &mut self,
        target: Target,
        batch: Vec<QueuedJob>,
        out: &mut BytesMut,
    ) -> (bool, bool) {
        let counters = &self.core.counters;
        // Each claim waits for a cache line the submitter wrote last: ask a few ahead.
        batch
            .iter()
            .take(CLAIM_AHEAD)
            .for_each(|job| job.state.prefetch_claim());
        let mut jobs = batch.into_iter();
        while let Some(job) = jobs.next() {
            if let Some(ahead) = jobs.as_slice().get(CLAIM_AHEAD - 1) {
                ahead.state.prefetch_claim();
            }
            // Claimed now (or when it was first sent): from here on `cancel()` no longer
            // removes it from the queue but asks this loop, through the stopper it is
            // given first, to take it back from the worker (or stop it if it runs).
            if let Some(stopper) = self.line.stopper() {
                job.state.make_stoppable(stopper);
            }
            if !job.state.claim() {
                continue; // cancelled while queued
            }
            let size = job.input.len();
            let behind = !self.line.is_empty() || !out.is_empty();
            if behind && (size > INLINE_PAYLOAD || self.line.bytes() + size > WINDOW_BYTES) {
                // Too large to wait in the link: it will lead a later write. Writing it
                // behind a running job could fill both directions of a socket at once.
                self.core
                    .queue
                    .requeue_front(std::iter::once(job).chain(jobs).collect());
                return (false, true);
            }
            let id = self.next_id;
            // Lent where the worker reads it here (the line, then the link, keep it).
            let lend = size >= LEND_FROM && self.link.lends_arguments();
            let max_frame = self.core.config.max_frame;
            let large = match put_run(id, target, &job.input, lend, max_frame, out) {
                Ok(tail) => {
                    if lend {
                        self.link.lend_argument(id, &job.input);
                    }
                    !tail.is_empty()
                }
                Err(ProtocolError::MessageTooLarge { size, max }) => {
                    counters.finish(&job.state, Err(JobError::TooLarge { size, max }));
                    continue;
                }
                Err(e) => {
                    counters.finish(&job.state, Err(e.into_job_error()));
                    continue;
                }
            };
            self.next_id += 1;
            self.line.push(id, job);
            if large {
                // Nothing goes after a large payload in this write.
                self.core.queue.requeue_front(jobs.collect());
                return (true, false);
            }
        }
        (false, false)
    }

    /// Completes the head with its answer, and every further answer the link already
    /// holds, without a turn of the loop each; their callers are woken once, after the
    /// last, so that a caller awaiting in order is not woken once per job. Returns what
    /// else the link delivered meanwhile, to handle next.
    fn complete(
        &mut self,
        outcome: crate::run::Outcome,
        payload: bytes::Bytes,
    ) -> Option<Received> {
        let mut wakes = Wakes::default();
        self.line
            .answer(outcome, payload, Instant::now(), &mut wakes);
        self.tasks += 1;
        let mut carried = None;
        while !self.line.is_empty() {
            self.line.promote(Instant::now());
            match self.link.try_recv() {
                None => break,
                Some(Received::Frame(Frame {
                    message: FromWorker::Done { id, outcome },
                    payload,
                })) if self.line.head_id() == Some(id) => {
                    self.line
                        .answer(outcome, payload, Instant::now(), &mut wakes);
                    self.tasks += 1;
                }
                Some(other) => {
                    carried = Some(other);
                    break;
                }
            }
        }
        wakes.flush();
        carried
    }

    /// Asks the worker to exit and waits for it (killing it after a grace period).
    async fn retire(&mut self) {
        let frame = &mut self.frames;
        frame.clear();
        if put_frame(&ToWorker::Shutdown, &[], self.core.config.max_frame, frame).is_ok() {
            let _ = self.link.send(frame, &bytes::Bytes::new()).await;
        }
        let exit = stop_within(&mut self.link, &self.core.kill, EXIT_GRACE).await;
        tracing::debug!(worker = %self.id, %exit, "worker exited");
    }

    /// Whether the pool has a memory ceiling that this backend can enforce.
    fn watches_memory(&self) -> bool {
        self.caps.memory && self.core.config.max_worker_memory.is_some()
    }

    /// `Some((limit, resident))` if the pool has a memory limit and the worker is over it.
    fn over_memory_limit(&self) -> Option<(u64, u64)> {
        if !self.watches_memory() {
            return None;
        }
        self.core.over_memory_limit(self.backend, self.id)
    }
}
