//! What a pool's handles and its supervision share: the settings, the queue, the counters,
//! and whether the pool is stopping or broken. Every executor built on the supervision core
//! takes and refuses jobs here.

use crate::error::JobError;
use crate::handle::{ErasedHandle, JobState, within};
use crate::job::{Decoder, ErasedJob};
use crate::queue::{JobQueue, Queued};
use crate::ship::Target;
use crate::stats::{Counters, Health, PoolStats};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// The supervision settings of a pool, fixed when it is built.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_workers: usize,
    pub(crate) max_tasks_per_child: Option<usize>,
    /// The largest frame either side accepts.
    pub(crate) max_frame: usize,
    pub(crate) job_timeout: Option<Duration>,
    pub(crate) max_worker_memory: Option<u64>,
    /// How many jobs may wait beyond one running per worker (`None`: no bound).
    pub(crate) max_queued: Option<usize>,
}

/// A job waiting for a worker: no user value, only bytes and function pointers, so that
/// the pool's threads never run a user's `Serialize`, `Deserialize` or `Drop`.
pub(crate) struct QueuedJob {
    /// Where the worker finds the function.
    pub(crate) target: Target,
    /// How the caller decodes the answer.
    pub(crate) decoder: Decoder,
    pub(crate) state: Arc<JobState>,
    /// The job's time limit, the pool's default already applied.
    pub(crate) timeout: Option<Duration>,
    /// The encoded argument(s), encoded by the submitter; freed once the worker runs the
    /// job, unless it may be retried. Shared, so that a link may send a large one from
    /// another thread without a copy.
    pub(crate) input: bytes::Bytes,
    /// Its number of items: 1, or a chunk's length (its expected time follows it).
    pub(crate) items: usize,
    /// How many more times the job may run if its worker dies.
    pub(crate) retries_left: u32,
    /// How many times it has been run so far.
    pub(crate) attempts: u32,
    /// When it was submitted: its queue wait ends when a worker first starts it.
    pub(crate) submitted: std::time::Instant,
    /// The shared arrays its argument names, held until it has ended and its answer was
    /// read (see [`crate::shared`]).
    pub(crate) kept: crate::shared::Kept,
}

impl Queued for QueuedJob {
    fn state(&self) -> &JobState {
        &self.state
    }
}

/// The state a pool's handles and its supervision thread share.
pub(crate) struct Core {
    pub(crate) config: Config,
    pub(crate) queue: JobQueue<QueuedJob>,
    /// Cancelled to stop everything now: drop, or a shutdown whose timeout ran out.
    pub(crate) kill: CancellationToken,
    /// What stops the worker starts in progress (see [`Core::start_token`]): a child of
    /// `kill`, cancelled and replaced by a fresh one when a shutdown leaves nothing to run.
    starts: Mutex<CancellationToken>,
    /// Becomes `true` when supervision has stopped every worker and released the backend.
    pub(crate) terminated: watch::Sender<bool>,
    /// Set once if the pool cannot run jobs; new submissions end with it.
    pub(crate) broken: OnceLock<JobError>,
    pub(crate) counters: Counters,
    /// The slots whose last start failed, with why: while there is one, the pool is
    /// restarting.
    restarting: Mutex<BTreeMap<usize, String>>,
    /// How many workers hold no job and wait for one ([`Idle`]).
    idle_workers: AtomicUsize,
    /// Notified whenever a worker becomes idle: a worker whose jobs wait behind a slow one
    /// then gives them back to the queue.
    became_idle: Notify,
}

/// How often a busy worker's resident memory is read when the pool has a limit.
const MEMORY_POLL: Duration = Duration::from_millis(20);

/// Every [`MEMORY_POLL`]; after a pause (the worker idle), at once.
pub(crate) fn memory_poll() -> tokio::time::Interval {
    let mut poll = tokio::time::interval(MEMORY_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll
}

impl Core {
    /// `Some((limit, resident))` if the pool has a memory limit and `worker` is over it.
    pub(crate) fn over_memory_limit<B: super::backend::Backend>(
        &self,
        backend: &B,
        worker: crate::exit::WorkerId,
    ) -> Option<(u64, u64)> {
        let limit = self.config.max_worker_memory?;
        let resident = backend.resident_memory(worker)?;
        (resident > limit).then_some((limit, resident))
    }

    pub(crate) fn new(config: Config) -> Core {
        let kill = CancellationToken::new();
        Core {
            queue: JobQueue::with_admission(crate::admission::Admission::new(
                config.max_workers,
                config.max_queued,
            )),
            config,
            starts: Mutex::new(kill.child_token()),
            kill,
            terminated: watch::channel(false).0,
            broken: OnceLock::new(),
            counters: Counters::default(),
            restarting: Mutex::new(BTreeMap::new()),
            idle_workers: AtomicUsize::new(0),
            became_idle: Notify::new(),
        }
    }

    /// Resolves once some worker is idle (at once, if one is).
    pub(crate) async fn an_idle_worker(&self) {
        loop {
            let notified = self.became_idle.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.idle_workers.load(Ordering::Acquire) > 0 {
                return;
            }
            notified.await;
        }
    }

    /// Whether some worker is idle now.
    pub(crate) fn has_idle_worker(&self) -> bool {
        self.idle_workers.load(Ordering::Acquire) > 0
    }

    /// Records that `slot` failed to start a worker, and why.
    pub(crate) fn slot_failed(&self, slot: usize, reason: String) {
        self.restarting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(slot, reason);
    }

    /// Records that `slot` started a worker.
    pub(crate) fn slot_started(&self, slot: usize) {
        self.restarting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&slot);
    }

    pub(crate) fn health(&self) -> Health {
        if let Some(JobError::PoolBroken { reason }) = self.broken.get() {
            return Health::Broken {
                reason: reason.clone(),
            };
        }
        if self.queue.is_closed() {
            return Health::ShutDown;
        }
        let restarting = self
            .restarting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match restarting.values().next() {
            Some(reason) => Health::Restarting {
                reason: reason.clone(),
            },
            None => Health::Serving,
        }
    }

    /// Marks the pool as unable to run jobs: queued and later jobs end with
    /// [`JobError::PoolBroken`] and `reason`.
    pub(crate) fn break_pool(&self, reason: String) {
        tracing::error!(%reason, "pool broken");
        let _ = self.broken.set(JobError::PoolBroken { reason });
        if let Some(error) = self.broken.get() {
            self.queue.close(Some(error.clone()));
        }
    }

    /// Queues `job` (see [`Executor::execute`](crate::Executor::execute)): a broken pool,
    /// a function that cannot be shipped or an argument that does not encode ends it at
    /// once; a shut-down pool gives it back.
    ///
    /// The argument is encoded here, on the submitting thread, and what is left of it is
    /// dropped here too.
    pub(crate) fn execute(&self, mut job: ErasedJob) -> Result<ErasedHandle, ErasedJob> {
        crate::handle::submitting();
        if let Some(error) = self.broken.get() {
            return Ok(ErasedHandle::failed(error.clone()));
        }
        // Before the argument is encoded, so that refusing a full pool costs little.
        let slot = match self.queue.admission().admit(job.permit.take()) {
            Ok(slot) => slot,
            Err(refusal) => return Err(job.refused(refusal)),
        };
        let ErasedJob {
            mut call, options, ..
        } = job;
        let target = call.target();
        if let Err(error) = crate::job::check_shippable(&target) {
            return Ok(ErasedHandle::failed(error));
        }
        let ((encoded, mut kept), input) = super::inputs::encode_input(|input| {
            crate::shared::keeping(|| crate::job::encode(&mut *call, input))
        });
        kept.extend(call.take_kept());
        if let Err(error) = encoded {
            self.counters.count_failure(&error);
            return Ok(ErasedHandle::failed(error));
        }
        let state = JobState::new();
        let queued = QueuedJob {
            target,
            decoder: call.decoder(),
            state: state.clone(),
            timeout: options.resolve_timeout(self.config.job_timeout),
            input,
            items: call.items(),
            retries_left: options.retries,
            attempts: 0,
            submitted: std::time::Instant::now(),
            kept,
        };
        // Looked at before the push: after it, the worker may already have taken the job
        // and be busy with it (it did, every time, for some pools in the tests).
        let idle = self.has_idle_worker();
        match self.queue.push_admitted(queued, slot) {
            Ok(alone) => {
                let straight = alone && idle;
                crate::handle::submitted(&state, straight);
                Ok(ErasedHandle::new(state))
            }
            // A broken pool closes its queue: report why rather than "shut down".
            Err(queued) => match self.broken.get() {
                Some(error) => Ok(ErasedHandle::failed(error.clone())),
                None => {
                    // Never sent: back to a `Vec` (a copy; a large argument's own buffer
                    // goes to the spares).
                    call.restore_input(queued.input.into());
                    Err(ErasedJob::from_parts(call, options))
                }
            },
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let mut stats = self.counters.snapshot(
            self.config.max_workers,
            self.queue.len() + self.counters.waiting(),
        );
        stats.max_queued = self.config.max_queued;
        stats
    }

    pub(crate) fn begin_shutdown(&self, cancel_queued: bool) {
        self.queue
            .close(cancel_queued.then_some(JobError::Cancelled));
        self.stop_starts_if_drained();
    }

    /// The token that stops a worker start beginning now: cancelled when the pool is
    /// killed, and when it is shutting down with nothing left to run (then the start ends
    /// with [`StartError::Killed`](super::backend::StartError::Killed), and its slot
    /// stops). A start that hangs (a worker stopped while its initializers run) then
    /// holds up no graceful shutdown. A fresh token for every start: jobs requeued after
    /// a drain (their worker died) are started on by a worker whose start is not stopped.
    pub(crate) fn start_token(&self) -> CancellationToken {
        let token = self
            .starts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // Drained between the slot's look and the token: stopped at once.
        self.stop_starts_if_drained();
        token
    }

    /// Stops the worker starts in progress if the queue is closed and empty: no job will
    /// come out of it for their workers. Called when a shutdown begins and when a serving
    /// worker stops because the queue is drained.
    pub(crate) fn stop_starts_if_drained(&self) {
        if self.queue.is_drained() {
            let fresh = self.kill.child_token();
            let mut starts = self.starts.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *starts, fresh).cancel();
        }
    }

    /// Shuts the pool down and waits until supervision has stopped (see
    /// [`Executor::shutdown_with`](crate::Executor::shutdown_with)).
    pub(crate) async fn shutdown_with(
        &self,
        cancel_queued: bool,
        timeout: Option<Duration>,
    ) -> bool {
        self.begin_shutdown(cancel_queued);
        let terminated = || {
            let mut terminated = self.terminated.subscribe();
            async move {
                // The sender lives in `self`, which the caller keeps alive.
                let _ = terminated.wait_for(|&done| done).await;
            }
        };
        if within(terminated(), timeout).await {
            return true;
        }
        self.kill.cancel();
        terminated().await;
        false
    }
}

/// Whether one serving worker counts as idle in its pool's [`Core`]: it holds no job and
/// waits for one. Dropped with its serving loop, it stops counting.
pub(crate) struct Idle<'a> {
    core: &'a Core,
    idle: bool,
}

impl<'a> Idle<'a> {
    pub(crate) fn new(core: &'a Core) -> Idle<'a> {
        Idle { core, idle: false }
    }

    /// Records whether the worker is idle now.
    pub(crate) fn set(&mut self, idle: bool) {
        if idle == self.idle {
            return;
        }
        self.idle = idle;
        if idle {
            self.core.idle_workers.fetch_add(1, Ordering::AcqRel);
            self.core.became_idle.notify_waiters();
        } else {
            self.core.idle_workers.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}
