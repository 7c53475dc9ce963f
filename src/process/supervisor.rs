//! The supervisor: the pool's own thread, running a private current-thread tokio runtime,
//! so that supervision never runs on (or blocks) the caller's runtime.
//!
//! It owns the listening socket (in a private `0700` directory, mode `0600`), one task per
//! worker slot, and an accept loop that authenticates each connection (the per-pool
//! secret, the protocol version, the executable image) and hands it to the slot that
//! started that worker. A slot task starts its worker, streams it jobs from the shared
//! queue (short ones several per write, a small window ahead of the one it runs), and
//! replaces it when it dies, is cancelled or is retired.

use super::entry::{Spec, WORKER_ENV};
use super::protocol::{
    Codec, Frame, FromWorker, HANDSHAKE_MAX_FRAME, INLINE_PAYLOAD, PROTOCOL_VERSION, ProtocolError,
    SECRET_LEN, ToWorker,
};
use crate::error::{Error, ExitInfo, JobError};
use crate::handle::{JobState, Wakes};
use crate::job::{Call, ImageId, Outcome};
use crate::queue::{JobQueue, Queued};
use crate::raw::{self, Target};
use crate::stats::Counters;
use futures::{FutureExt, StreamExt};
use interprocess::local_socket::tokio::{Listener, Stream as AsyncStream};
use interprocess::local_socket::traits::tokio::Listener as _;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

type Conn = Framed<AsyncStream, Codec<FromWorker, ToWorker>>;
/// What the accept loop hands a waiting slot: the authenticated connection and the pid the
/// worker gave, or why it was refused.
type Handshake = Result<(Conn, u32), StartError>;

/// Consecutive start-up failures of one slot after which the pool reports itself broken.
const MAX_START_FAILURES: u32 = 5;
/// The first back-off after a failed start; it doubles with each further failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// How long a worker told to shut down (or that closed its socket) may take to exit
/// before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// How long a worker whose connection broke may take to be seen exiting before it is
/// treated as alive and misbehaving.
const BROKEN_GRACE: Duration = Duration::from_secs(1);
/// How often a running worker's resident memory is read when the pool has a limit.
const MEMORY_POLL: Duration = Duration::from_millis(20);
/// The most jobs one worker holds at once: the one it runs and those waiting behind it.
const MAX_WINDOW: usize = 32;
/// About how much work (by the worker's recent job times) may be queued in one worker.
const PIPELINE_SPAN: Duration = Duration::from_millis(1);
/// How many functions a worker's line keeps job times for.
const TIMED_FUNCTIONS: usize = 8;
/// The most argument bytes that may wait behind a running job, well under a socket's
/// buffer, so that writing them never blocks while the worker writes its answer.
const WINDOW_BYTES: usize = 64 * 1024;

/// The pool's settings, fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_workers: usize,
    pub(crate) initializers: Vec<Target>,
    pub(crate) max_tasks_per_child: Option<usize>,
    pub(crate) max_frame: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) job_timeout: Option<Duration>,
    pub(crate) max_worker_memory: Option<u64>,
    /// Tests only: start workers that never handshake.
    #[cfg(test)]
    pub(crate) stall_handshake: bool,
}

/// A job waiting for a worker.
pub(crate) struct QueuedJob {
    pub(crate) call: Box<dyn Call>,
    pub(crate) state: Arc<JobState>,
    /// The job's time limit, the pool's default already applied.
    pub(crate) timeout: Option<Duration>,
    /// The argument, already encoded: set when a job that was sent to a worker but never
    /// started comes back to the queue.
    pub(crate) encoded: Option<Vec<u8>>,
}

impl Queued for QueuedJob {
    fn state(&self) -> &JobState {
        &self.state
    }
}

/// What the pool's handles and the supervisor share.
pub(crate) struct Core {
    pub(crate) config: Config,
    pub(crate) queue: JobQueue<QueuedJob>,
    /// Cancelled to stop everything now: drop, or a shutdown whose timeout ran out.
    pub(crate) kill: CancellationToken,
    /// Becomes `true` when the supervisor has reaped every worker and removed its socket.
    pub(crate) terminated: watch::Sender<bool>,
    /// Set once if the pool cannot run jobs; new submissions end with it.
    pub(crate) broken: OnceLock<JobError>,
    pub(crate) counters: Counters,
}

impl Core {
    pub(crate) fn new(config: Config) -> Core {
        Core {
            config,
            queue: JobQueue::new(),
            kill: CancellationToken::new(),
            terminated: watch::channel(false).0,
            broken: OnceLock::new(),
            counters: Counters::default(),
        }
    }

    fn break_pool(&self, reason: String) {
        tracing::error!(%reason, "process pool broken");
        let _ = self.broken.set(JobError::PoolBroken { reason });
        if let Some(error) = self.broken.get() {
            self.queue.close(Some(error.clone()));
        }
    }
}

/// Why a worker did not start.
enum StartError {
    /// Will fail the same way again (initializer panic, missing entry hook, other image).
    Fatal(String),
    /// May work next time (spawn failure, early exit, handshake timeout).
    Transient(String),
    /// The pool is being killed.
    Killed,
}

/// What a slot does after its worker stopped serving.
enum Next {
    Respawn,
    Stop,
}

/// A started, handshaken worker.
struct Worker {
    child: Child,
    conn: Conn,
    pid: u32,
    tasks: usize,
}

struct Supervisor {
    core: Arc<Core>,
    listener: Listener,
    socket: PathBuf,
    secret: [u8; SECRET_LEN],
    image: ImageId,
    exe: PathBuf,
    /// Slots waiting for the handshake of the worker they started, by worker id.
    pending: Mutex<HashMap<u64, oneshot::Sender<Handshake>>>,
    next_worker: AtomicU64,
    next_job: AtomicU64,
}

/// Creates the socket and starts the supervisor thread.
pub(crate) fn start(core: Arc<Core>) -> Result<std::thread::JoinHandle<()>, Error> {
    let dir = tempfile::Builder::new()
        .prefix("procpool-")
        // Applied by mkdir itself, so the directory is never visible with a wider mode.
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map_err(|e| Error::io("creating the pool's private socket directory", e))?;
    let socket = dir.path().join("pool.sock");
    let mut secret = [0_u8; SECRET_LEN];
    getrandom::fill(&mut secret).map_err(|e| {
        Error::io(
            "drawing the pool's random secret",
            std::io::Error::other(e.to_string()),
        )
    })?;
    let image = ImageId::current()
        .map_err(|e| Error::io("identifying this executable", std::io::Error::other(e)))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the supervisor's runtime", e))?;
    let listener = {
        let _entered = runtime.enter();
        let name = socket
            .as_path()
            .to_fs_name::<GenericFilePath>()
            .map_err(|e| Error::io(format!("naming the socket {}", socket.display()), e))?;
        ListenerOptions::new()
            .name(name)
            .mode(0o600)
            .create_tokio()
            .map_err(|e| Error::io(format!("listening on {}", socket.display()), e))?
    };
    let supervisor = Arc::new(Supervisor {
        core: core.clone(),
        listener,
        socket,
        secret,
        image,
        exe: crate::job::exe_path(),
        pending: Mutex::new(HashMap::new()),
        next_worker: AtomicU64::new(0),
        next_job: AtomicU64::new(0),
    });
    std::thread::Builder::new()
        .name("procpool-supervisor".into())
        .spawn(move || {
            runtime.block_on(supervisor.run());
            // Dropping the runtime drops the accept loop and any handshake in progress;
            // then the listener (which removes the socket file) and the directory.
            drop(runtime);
            drop(supervisor);
            drop(dir);
            // Slots stop only once the queue is closed; this is a safety net so that no
            // job can be left waiting.
            core.queue.close(Some(JobError::ShutDown));
            core.terminated.send_replace(true);
        })
        .map_err(|e| Error::io("spawning the supervisor thread", e))
}

impl Supervisor {
    async fn run(self: &Arc<Self>) {
        let accept = tokio::spawn(self.clone().accept_loop());
        let slots: Vec<_> = (0..self.core.config.max_workers)
            .map(|slot| tokio::spawn(self.clone().run_slot(slot)))
            .collect();
        for slot in slots {
            if let Err(e) = slot.await {
                self.core
                    .break_pool(format!("a supervisor task failed (a procpool bug): {e}"));
            }
        }
        accept.abort();
        let _ = accept.await;
    }

    async fn accept_loop(self: Arc<Self>) {
        loop {
            match self.listener.accept().await {
                Ok(stream) => {
                    tokio::spawn(self.clone().handshake(stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a worker connection failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// Authenticates a new connection and hands it to the slot that started its worker.
    async fn handshake(self: Arc<Self>, stream: AsyncStream) {
        let mut conn = Framed::new(stream, Codec::new(HANDSHAKE_MAX_FRAME));
        let timeout = self.core.config.handshake_timeout;
        let first = match tokio::time::timeout(timeout, conn.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "rejected a connection: bad first frame");
                return;
            }
            Ok(None) => return,
            Err(_) => {
                tracing::warn!("rejected a connection that sent no hello in time");
                return;
            }
        };
        match first.message {
            FromWorker::Hello {
                version,
                worker_id,
                pid,
                secret,
                image,
                probe,
            } => {
                if !same_secret(&secret, &self.secret) {
                    tracing::warn!(pid, "rejected a connection without the pool's secret");
                    return;
                }
                let verdict = if version != PROTOCOL_VERSION {
                    Err(StartError::Fatal(format!(
                        "worker {pid} speaks protocol version {version}, the pool {PROTOCOL_VERSION}"
                    )))
                } else if image != self.image || probe != raw::probe_offset() {
                    Err(StartError::Fatal(format!(
                        "worker {pid} runs a different executable image than the pool"
                    )))
                } else {
                    conn.codec_mut().set_max_frame(self.core.config.max_frame);
                    let AsyncStream::UdSocket(socket) = conn.get_ref();
                    super::protocol::widen_buffers(socket);
                    Ok((conn, pid))
                };
                self.deliver(worker_id, verdict);
            }
            FromWorker::HookMissing { worker_id, secret } => {
                if same_secret(&secret, &self.secret) {
                    self.deliver(
                        worker_id,
                        Err(StartError::Fatal(Error::EntryHookMissing.to_string())),
                    );
                }
            }
            _ => tracing::warn!("rejected a connection that did not open with a hello"),
        }
    }

    fn deliver(&self, worker_id: u64, verdict: Handshake) {
        let waiting = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&worker_id);
        match waiting {
            Some(slot) => {
                let _ = slot.send(verdict);
            }
            None => tracing::warn!(worker_id, "a worker nobody waits for connected"),
        }
    }

    async fn run_slot(self: Arc<Self>, slot: usize) {
        let counters = &self.core.counters;
        let mut failures = 0_u32;
        let mut first = true;
        loop {
            if self.core.kill.is_cancelled() || self.core.queue.is_drained() {
                return;
            }
            if !std::mem::take(&mut first) {
                counters.respawns.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(slot, "starting a replacement worker");
            }
            let worker = match self.start_worker().await {
                Ok(worker) => {
                    failures = 0;
                    tracing::debug!(slot, pid = worker.pid, "worker started");
                    worker
                }
                Err(StartError::Killed) => return,
                Err(StartError::Fatal(reason)) => {
                    self.core.break_pool(reason);
                    return;
                }
                Err(StartError::Transient(reason)) => {
                    failures += 1;
                    tracing::warn!(slot, failures, %reason, "worker failed to start");
                    if failures >= MAX_START_FAILURES {
                        self.core.break_pool(format!(
                            "workers failed to start {failures} times in a row; last: {reason}"
                        ));
                        return;
                    }
                    let backoff = FIRST_BACKOFF * 2_u32.pow(failures - 1);
                    tokio::select! {
                        _ = self.core.kill.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => continue,
                    }
                }
            };
            counters.workers_alive.fetch_add(1, Ordering::Relaxed);
            let next = self.serve(slot, worker).await;
            counters.workers_alive.fetch_sub(1, Ordering::Relaxed);
            if let Next::Stop = next {
                return;
            }
        }
    }

    async fn start_worker(&self) -> Result<Worker, StartError> {
        let worker_id = self.next_worker.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(worker_id, tx);
        let result = self.spawn_and_handshake(worker_id, rx).await;
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&worker_id);
        result
    }

    async fn spawn_and_handshake(
        &self,
        worker_id: u64,
        handshake: oneshot::Receiver<Handshake>,
    ) -> Result<Worker, StartError> {
        let spec = Spec {
            worker_id,
            parent_pid: std::process::id(),
            secret: self.secret,
            socket: self.socket.clone(),
        };
        let mut command = Command::new(&self.exe);
        command
            .env(WORKER_ENV, spec.encode())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        #[cfg(test)]
        if self.core.config.stall_handshake {
            command.env(super::worker::fault::STALL_ENV, "1");
        }
        let mut child = command.spawn().map_err(|e| {
            StartError::Transient(format!(
                "could not start a worker process from {}: {e}",
                self.exe.display()
            ))
        })?;
        let pid = child.id().unwrap_or(0);
        let timeout = self.core.config.handshake_timeout;
        let mut handshake = handshake;
        let dropped = || Err(StartError::Transient("the handshake was dropped".into()));
        let verdict = tokio::select! {
            verdict = &mut handshake => verdict.unwrap_or_else(|_| dropped()),
            status = child.wait() => {
                // A worker that reached `main` reports so and exits: let its report, which
                // names the fix, win over the bare exit.
                match tokio::time::timeout(Duration::from_millis(200), handshake).await {
                    Ok(Ok(Err(StartError::Fatal(reason)))) => Err(StartError::Fatal(reason)),
                    _ => Err(StartError::Transient(format!(
                        "worker {pid} exited during start-up ({}) before its handshake; if the \
                         `auto-init` feature is disabled, call procpool::init() first thing in main",
                        exit_info(status)
                    ))),
                }
            }
            _ = tokio::time::sleep(timeout) => Err(StartError::Transient(format!(
                "worker {pid} did not complete its handshake within {timeout:?}; if the \
                 `auto-init` feature is disabled, call procpool::init() first thing in main"
            ))),
            _ = self.core.kill.cancelled() => Err(StartError::Killed),
        };
        let mut conn = match verdict {
            Ok((conn, hello_pid)) if hello_pid == pid => conn,
            Ok((_, hello_pid)) => {
                reap(&mut child).await;
                return Err(StartError::Transient(format!(
                    "worker {pid} introduced itself as process {hello_pid}"
                )));
            }
            Err(e) => {
                reap(&mut child).await;
                return Err(e);
            }
        };
        let welcome = ToWorker::Welcome {
            image: self.image.clone(),
            probe: raw::probe_offset(),
            initializers: self.core.config.initializers.clone(),
            max_frame: self.core.config.max_frame as u64,
        };
        if let Err(e) = send(&mut conn, &welcome, &[]).await {
            reap(&mut child).await;
            return Err(StartError::Transient(format!("worker {pid}: {e}")));
        }
        let ready = tokio::select! {
            message = conn.next() => message,
            _ = self.core.kill.cancelled() => {
                reap(&mut child).await;
                return Err(StartError::Killed);
            }
        };
        match ready {
            Some(Ok(Frame {
                message: FromWorker::Ready,
                ..
            })) => Ok(Worker {
                child,
                conn,
                pid,
                tasks: 0,
            }),
            Some(Ok(Frame {
                message: FromWorker::InitFailed { message, location },
                ..
            })) => {
                reap(&mut child).await;
                let at = location.map(|l| format!(" (at {l})")).unwrap_or_default();
                Err(StartError::Fatal(format!(
                    "the pool's initializer panicked in worker {pid}: {message}{at}"
                )))
            }
            other => {
                let status = stop(&mut child, &self.core.kill).await;
                Err(StartError::Transient(format!(
                    "worker {pid} failed before it was ready ({}): {}",
                    status,
                    describe(other)
                )))
            }
        }
    }

    /// Serves jobs to one worker until it must be replaced or the pool stops.
    ///
    /// Jobs are pipelined: while the worker runs the head job, up to [`MAX_WINDOW`] short,
    /// small jobs may wait behind it in its socket, written together, so that the worker
    /// never idles waiting for the parent. How many is decided per function from its job
    /// times here ([`Line::room`]): a function not timed yet only goes to an idle worker.
    /// The worker runs them strictly in order, so only the head has started: the jobs
    /// behind it count as started for `cancel()` (as in Python's call queue), and if the
    /// worker is lost they go back to the front of the queue, untouched.
    async fn serve(&self, slot: usize, mut worker: Worker) -> Next {
        let mut line = Line::new(&self.core.counters);
        let mut draining = false;
        // A job too large to wait behind the running one, or of a function with no room
        // in the line, went back to the queue: take nothing more until the line is empty,
        // so that it comes next (here or elsewhere).
        let mut hold = false;
        // A message read while draining answers, to handle next.
        let mut carried: Option<Event> = None;
        loop {
            hold &= !line.is_empty();
            let room = if draining || hold {
                0
            } else {
                self.room(&line, &worker, None)
            };
            let event = if let Some(event) = carried.take() {
                event
            } else {
                let deadline = line.head_deadline();
                let head_timer = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                let running = line.running();
                let stop = async {
                    match &running {
                        Some(state) => state.stop_requested().await,
                        None => std::future::pending().await,
                    }
                };
                let pid = worker.pid;
                let busy = !line.is_empty();
                let memory_limit = async {
                    if !busy || self.core.config.max_worker_memory.is_none() {
                        return std::future::pending().await;
                    }
                    let mut poll = tokio::time::interval(MEMORY_POLL);
                    loop {
                        poll.tick().await;
                        if let Some(over) = self.over_memory_limit(pid) {
                            return over;
                        }
                    }
                };
                tokio::select! {
                    biased;
                    _ = self.core.kill.cancelled() => Event::Killed,
                    () = stop => Event::Stop,
                    message = worker.conn.next() => Event::Message(message),
                    () = head_timer => Event::HeadTimer,
                    (limit, resident) = memory_limit => Event::OverMemory { limit, resident },
                    job = self.core.queue.pop(), if room > 0 => Event::Job(job),
                    status = worker.child.wait() => Event::Exited(exit_info(status)),
                }
            };
            let lost = match event {
                Event::Killed => {
                    reap(&mut worker.child).await;
                    line.fail_all(JobError::ShutDown);
                    return Next::Stop;
                }
                Event::Job(None) => {
                    // The queue is closed and empty: finish what was sent, then retire.
                    draining = true;
                    None
                }
                Event::Job(Some(job)) => {
                    // The room was for more of the function sent last: a job of another
                    // function gets its own window, which may be none while the line
                    // holds anything (a function not timed yet goes alone). It then goes
                    // back to the queue, for an idle worker or for this one once idle.
                    let target = job.call.target();
                    let room = self.room(&line, &worker, Some(target));
                    if room == 0 {
                        self.core.queue.requeue_front(vec![job]);
                        hold = true;
                        None
                    } else {
                        let mut batch = vec![job];
                        while batch.len() < room {
                            match self.core.queue.try_pop() {
                                Some(next) if next.call.target() == target => batch.push(next),
                                Some(other) => {
                                    self.core.queue.requeue_front(vec![other]);
                                    break;
                                }
                                None => break,
                            }
                        }
                        let sent = self.send_batch(slot, &mut worker, &mut line, target, batch);
                        match sent.await {
                            Ok(held) => {
                                hold = held;
                                None
                            }
                            Err(error) => Some(error),
                        }
                    }
                }
                Event::Message(Some(Ok(Frame {
                    message: FromWorker::Done { id, outcome },
                    payload,
                }))) if line.head_id() == Some(id) => {
                    // Answers that arrived together are completed together, without a
                    // turn of the loop each, and their callers are woken once, after the
                    // last: a caller awaiting in order is not woken once per job.
                    let mut wakes = Wakes::default();
                    line.answer(outcome, payload, &mut wakes);
                    worker.tasks += 1;
                    while !line.is_empty() {
                        line.promote();
                        match worker.conn.next().now_or_never() {
                            None => break,
                            Some(Some(Ok(Frame {
                                message: FromWorker::Done { id, outcome },
                                payload,
                            }))) if line.head_id() == Some(id) => {
                                line.answer(outcome, payload, &mut wakes);
                                worker.tasks += 1;
                            }
                            Some(other) => {
                                carried = Some(Event::Message(other));
                                break;
                            }
                        }
                    }
                    wakes.flush();
                    if let Some((limit, resident)) = self.over_memory_limit(worker.pid) {
                        tracing::warn!(
                            slot,
                            pid = worker.pid,
                            limit,
                            resident,
                            "retiring a worker over the memory limit"
                        );
                        self.requeue(line.take_waiting());
                        retire(&mut worker, &self.core.kill).await;
                        return Next::Respawn;
                    }
                    None
                }
                Event::Message(
                    message @ (None | Some(Err(ProtocolError::Io(_) | ProtocolError::Truncated))),
                ) => {
                    let reason = describe(message);
                    if line.is_empty() {
                        tracing::warn!(slot, pid = worker.pid, %reason, "lost an idle worker");
                        reap(&mut worker.child).await;
                        return Next::Respawn;
                    }
                    Some(broken_connection(&mut worker.child, &self.core.kill, reason).await)
                }
                Event::Message(other) => {
                    let reason = describe(other);
                    reap(&mut worker.child).await;
                    tracing::warn!(slot, pid = worker.pid, %reason, "killed a worker after a protocol error");
                    Some(JobError::Protocol { reason })
                }
                Event::Exited(exit) => {
                    if line.is_empty() {
                        tracing::warn!(slot, pid = worker.pid, %exit, "idle worker exited");
                        return Next::Respawn;
                    }
                    Some(JobError::WorkerDied { exit })
                }
                Event::Stop => {
                    reap(&mut worker.child).await;
                    tracing::info!(
                        slot,
                        pid = worker.pid,
                        "killed a worker to cancel its running job"
                    );
                    Some(JobError::Cancelled)
                }
                Event::HeadTimer => {
                    reap(&mut worker.child).await;
                    let timeout = line.head_timeout().unwrap_or_default();
                    tracing::warn!(
                        slot,
                        pid = worker.pid,
                        ?timeout,
                        "job timed out; killed its worker"
                    );
                    Some(JobError::TimedOut(timeout))
                }
                Event::OverMemory { limit, resident } => {
                    reap(&mut worker.child).await;
                    tracing::warn!(
                        slot,
                        pid = worker.pid,
                        limit,
                        resident,
                        "killed a worker over the memory limit"
                    );
                    Some(JobError::MemoryLimit { limit, resident })
                }
            };
            if let Some(error) = lost {
                // The worker is gone: its running job ends with `error`; the jobs behind it
                // never started and go back to the queue.
                if let JobError::WorkerDied { exit } = &error {
                    let jobs = line.len();
                    tracing::warn!(slot, pid = worker.pid, %exit, jobs, "worker died while running a job");
                }
                line.fail_head(error);
                self.requeue(line.take_waiting());
                return Next::Respawn;
            }
            if line.is_empty() {
                if draining {
                    retire(&mut worker, &self.core.kill).await;
                    return Next::Stop;
                }
                if self
                    .core
                    .config
                    .max_tasks_per_child
                    .is_some_and(|max| worker.tasks >= max)
                {
                    tracing::debug!(
                        slot,
                        pid = worker.pid,
                        tasks = worker.tasks,
                        "retiring worker"
                    );
                    retire(&mut worker, &self.core.kill).await;
                    return Next::Respawn;
                }
            }
            line.promote();
        }
    }

    /// How many more jobs of `target`'s function (by default, of the one sent last)
    /// `worker` may be sent now.
    fn room(&self, line: &Line<'_>, worker: &Worker, target: Option<Target>) -> usize {
        let sent = worker.tasks + line.len();
        let left = match self.core.config.max_tasks_per_child {
            Some(max) => max.saturating_sub(sent),
            None => usize::MAX,
        };
        line.room(target).min(left)
    }

    /// Puts jobs that never started back at the front of the queue, in order.
    fn requeue(&self, jobs: Vec<QueuedJob>) {
        if !jobs.is_empty() {
            tracing::debug!(
                jobs = jobs.len(),
                "requeued jobs a lost worker never started"
            );
            self.core.queue.requeue_front(jobs);
        }
    }

    /// Encodes `batch` (jobs of `target`'s function) and writes it to the worker in one go
    /// (a large payload goes after its head, straight from its buffer). Jobs that cannot go in this write go back to
    /// the front of the queue; `Ok(true)` says one was held back for being too large to
    /// wait behind the running job, so this worker should take no more until its line is
    /// empty. `Err` is the error that lost the worker.
    async fn send_batch(
        &self,
        slot: usize,
        worker: &mut Worker,
        line: &mut Line<'_>,
        target: Target,
        batch: Vec<QueuedJob>,
    ) -> Result<bool, JobError> {
        let counters = &self.core.counters;
        let mut out = bytes::BytesMut::new();
        let mut large = false;
        let mut held = false;
        let mut jobs = batch.into_iter();
        while let Some(mut job) = jobs.next() {
            let input = match job.encoded.take() {
                Some(input) => input, // claimed when it was first sent
                None => {
                    // Claimed now: from here on, as for a job handed to Python's call
                    // queue, the job counts as started and `cancel()` no longer removes
                    // it; it becomes stoppable once the worker runs it.
                    if !job.state.try_start(false) {
                        continue; // cancelled while queued
                    }
                    let mut input = Vec::new();
                    if let Err(e) = job.call.encode_input(&mut input) {
                        counters.finish(&job.state, Err(e));
                        continue;
                    }
                    input
                }
            };
            let behind = !line.is_empty() || !out.is_empty();
            if behind && (input.len() > INLINE_PAYLOAD || line.bytes() + input.len() > WINDOW_BYTES)
            {
                // Too large to wait in the socket: it will lead a later write. Writing it
                // behind a running job could fill both directions of the socket at once.
                job.encoded = Some(input);
                self.core
                    .queue
                    .requeue_front(std::iter::once(job).chain(jobs).collect());
                held = true;
                break;
            }
            let id = self.next_job.fetch_add(1, Ordering::Relaxed);
            let message = ToWorker::Run { id, target };
            let codec = worker.conn.codec_mut();
            let encoded = if input.len() <= INLINE_PAYLOAD {
                codec.encode_frame(&message, &input, &mut out)
            } else {
                codec.encode_head(&message, input.len(), &mut out)
            };
            match encoded {
                Ok(()) => {}
                Err(ProtocolError::MessageTooLarge { size, max }) => {
                    counters.finish(&job.state, Err(JobError::TooLarge { size, max }));
                    continue;
                }
                Err(e) => {
                    let reason = e.to_string();
                    counters.finish(&job.state, Err(JobError::Protocol { reason }));
                    continue;
                }
            }
            large = input.len() > INLINE_PAYLOAD;
            if line.is_empty() {
                // It becomes the head: the worker runs it as soon as the bytes arrive, and
                // may report back before this loop promotes it. `cancel()` must stop it
                // from that moment (a stop request waits until it is promoted).
                job.state.make_stoppable();
            }
            line.push(id, target, job, input);
            if large {
                // Nothing goes after a large payload in this write.
                self.core.queue.requeue_front(jobs.collect());
                break;
            }
        }
        if out.is_empty() {
            return Ok(held);
        }
        let stream = worker.conn.get_mut();
        let mut written = stream.write_all(&out).await;
        if let (Ok(()), true, Some(payload)) = (&written, large, line.last_input()) {
            written = stream.write_all(payload).await;
        }
        let Err(error) = written else {
            return Ok(held);
        };
        // The jobs of this write never started (they go back to the queue); an older
        // head may have been running.
        tracing::warn!(slot, pid = worker.pid, %error, "lost a worker while writing to it");
        Err(broken_connection(&mut worker.child, &self.core.kill, error.to_string()).await)
    }

    /// `Some((limit, resident))` if the pool has a memory limit and the worker is over it.
    fn over_memory_limit(&self, pid: u32) -> Option<(u64, u64)> {
        let limit = self.core.config.max_worker_memory?;
        let resident = resident_bytes(pid)?;
        (resident > limit).then_some((limit, resident))
    }
}

/// What woke a worker's serving loop.
enum Event {
    Killed,
    Stop,
    Message(Option<Result<Frame<FromWorker>, ProtocolError>>),
    Exited(ExitInfo),
    HeadTimer,
    OverMemory { limit: u64, resident: u64 },
    Job(Option<QueuedJob>),
}

/// A job written to a worker and not yet answered.
struct Sent {
    id: u64,
    /// The function it runs.
    target: Target,
    /// How long it was expected to take when it was sent (`None`: its function was not
    /// timed yet), counted in the line's [`Line::work`] until it leaves.
    estimate: Option<Duration>,
    /// Its encoded argument is kept in `job.encoded` while it waits behind the head, so
    /// that it can go back to the queue as it is.
    job: QueuedJob,
}

/// The jobs sent to one worker, in the order it runs them: the head (running since
/// `head_started`) and the jobs waiting behind it in the socket. It keeps the pool's
/// counters in step: waiting jobs count as queued, a running head as a busy worker.
struct Line<'a> {
    counters: &'a Counters,
    sent: VecDeque<Sent>,
    /// When the front job became the head; `None` until it does.
    head_started: Option<Instant>,
    /// Bytes of the arguments waiting behind the head.
    bytes: usize,
    /// How long this worker's jobs take, per function (a moving average, as seen from
    /// here), for the few functions it ran last, most recent first. A function's jobs are
    /// windowed by their own times: short jobs of one function must not open a window
    /// for the first jobs of a long one, which would then wait behind each other in one
    /// worker while another idles.
    job_times: Vec<(Target, Duration)>,
    /// The function of the job sent last: the one the serving loop makes room for.
    last_target: Option<Target>,
    /// The expected work of the jobs in the line: the sum of their known estimates, and
    /// how many have none.
    work: Duration,
    untimed: usize,
}

impl<'a> Line<'a> {
    fn new(counters: &'a Counters) -> Line<'a> {
        Line {
            counters,
            sent: VecDeque::new(),
            head_started: None,
            bytes: 0,
            job_times: Vec::new(),
            last_target: None,
            work: Duration::ZERO,
            untimed: 0,
        }
    }

    fn len(&self) -> usize {
        self.sent.len()
    }

    fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    /// How long `target`'s jobs take here, if this worker has timed them.
    fn job_time(&self, target: Target) -> Option<Duration> {
        let (_, time) = self.job_times.iter().find(|(timed, _)| *timed == target)?;
        Some(*time)
    }

    /// How many more jobs of `target`'s function (by default the one sent last) may join
    /// the line now: as many as [`window_for`] their job time when the line is empty;
    /// behind other jobs, as many as fit with them in [`PIPELINE_SPAN`] of expected work.
    /// Nothing joins a line that holds a job of unknown length, and a job of unknown
    /// length joins only an empty line.
    fn room(&self, target: Option<Target>) -> usize {
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

    /// Records that one of `target`'s jobs took `took`.
    fn observe(&mut self, target: Target, took: Duration) {
        let average = match self.job_times.iter().position(|(t, _)| *t == target) {
            Some(i) => {
                let (_, average) = self.job_times.remove(i);
                (average * 7 + took) / 8
            }
            None => took,
        };
        self.job_times.truncate(TIMED_FUNCTIONS - 1);
        self.job_times.insert(0, (target, average));
    }

    /// The running head, if any.
    fn head(&self) -> Option<&Sent> {
        self.head_started.and(self.sent.front())
    }

    fn head_id(&self) -> Option<u64> {
        self.head().map(|s| s.id)
    }

    /// When the head's time limit runs out, if it has one.
    fn head_deadline(&self) -> Option<Instant> {
        Some(self.head_started? + self.head()?.job.timeout?)
    }

    fn head_timeout(&self) -> Option<Duration> {
        self.head()?.job.timeout
    }

    /// The running head's completion cell (whose caller may ask to stop it).
    fn running(&self) -> Option<Arc<JobState>> {
        self.head().map(|s| s.job.state.clone())
    }

    /// Appends a claimed job just encoded into the worker's next write.
    fn push(&mut self, id: u64, target: Target, mut job: QueuedJob, input: Vec<u8>) {
        self.bytes += input.len();
        job.encoded = Some(input);
        self.counters.windowed.fetch_add(1, Ordering::Relaxed);
        self.last_target = Some(target);
        let estimate = self.job_time(target);
        self.count_work(estimate, true);
        self.sent.push_back(Sent {
            id,
            target,
            estimate,
            job,
        });
    }

    /// The argument of the job sent last, while it waits.
    fn last_input(&self) -> Option<&[u8]> {
        self.sent.back()?.job.encoded.as_deref()
    }

    /// Makes the oldest job the head, if there is none: the worker is running it now, and
    /// `cancel()` may stop it.
    fn promote(&mut self) {
        if self.head_started.is_some() {
            return;
        }
        let Some(sent) = self.sent.front_mut() else {
            return;
        };
        self.counters.windowed.fetch_sub(1, Ordering::Relaxed);
        if let Some(input) = sent.job.encoded.take() {
            self.bytes -= input.len(); // the worker has it: free it now
        }
        sent.job.state.make_stoppable();
        self.counters.workers_busy.fetch_add(1, Ordering::Relaxed);
        self.head_started = Some(Instant::now());
    }

    /// Takes the head off the line, idle again.
    fn pop_head(&mut self) -> Option<(Sent, Duration)> {
        let started = self.head_started.take()?;
        let sent = self.sent.pop_front()?;
        self.count_work(sent.estimate, false);
        self.counters.workers_busy.fetch_sub(1, Ordering::Relaxed);
        Some((sent, started.elapsed()))
    }

    /// Completes the head with the worker's answer, holding its caller's waker in `wakes`.
    fn answer(&mut self, outcome: Outcome, payload: bytes::Bytes, wakes: &mut Wakes) {
        let Some((sent, took)) = self.pop_head() else {
            return;
        };
        self.observe(sent.target, took);
        let result = match outcome.into_error() {
            Some(error) => Err(error),
            None => (sent.job.call.decoder())(payload),
        };
        self.counters
            .finish_deferred(&sent.job.state, result, wakes);
    }

    /// Ends the running head with `error` (the worker is gone).
    fn fail_head(&mut self, error: JobError) {
        if let Some((sent, _)) = self.pop_head() {
            self.counters.finish(&sent.job.state, Err(error));
        }
    }

    /// Takes the jobs waiting behind the head (none of them ran), to requeue them.
    fn take_waiting(&mut self) -> Vec<QueuedJob> {
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
    fn fail_all(&mut self, error: JobError) {
        self.fail_head(error.clone());
        for job in self.take_waiting() {
            self.counters.finish(&job.state, Err(error.clone()));
        }
    }
}

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

/// The resident memory of a process, in bytes (`VmRSS` from `/proc/<pid>/status`). `None`
/// where there is no such file to read.
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &[u8; SECRET_LEN], b: &[u8; SECRET_LEN]) -> bool {
    a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn exit_info(status: std::io::Result<std::process::ExitStatus>) -> ExitInfo {
    status.map_or_else(|_| ExitInfo::unknown(), ExitInfo::from_status)
}

/// A short description of an unexpected read result, for errors and logs.
fn describe(message: Option<Result<Frame<FromWorker>, ProtocolError>>) -> String {
    match message {
        None => "connection closed".into(),
        Some(Err(e)) => e.to_string(),
        Some(Ok(Frame {
            message: FromWorker::Done { id, .. },
            ..
        })) => format!("an answer to job {id}, which it was not running"),
        Some(Ok(frame)) => format!("unexpected message {}", frame.message.name()),
    }
}

/// Sends `message` with `payload`: one write for a small payload; the head, then the
/// payload straight from the job's buffer, for a large one (no copy into a frame).
async fn send(conn: &mut Conn, message: &ToWorker, payload: &[u8]) -> Result<(), ProtocolError> {
    let mut head = bytes::BytesMut::new();
    let inline = payload.len() <= INLINE_PAYLOAD;
    if inline {
        conn.codec_mut().encode_frame(message, payload, &mut head)?;
    } else {
        conn.codec_mut()
            .encode_head(message, payload.len(), &mut head)?;
    }
    let stream = conn.get_mut();
    stream.write_all(&head).await?;
    if !inline {
        stream.write_all(payload).await?;
    }
    Ok(())
}

/// Kills a worker and waits for it, so that it leaves no zombie.
async fn reap(child: &mut Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Waits for a worker that is exiting (or should), killing it after a grace period, or at
/// once if the pool is being killed.
async fn stop(child: &mut Child, kill: &CancellationToken) -> ExitInfo {
    match exited_within(child, kill, EXIT_GRACE).await {
        Some(exit) => exit,
        None => {
            let _ = child.start_kill();
            exit_info(child.wait().await)
        }
    }
}

/// How a worker ended, if it exits by itself within `grace` (and the pool is not being
/// killed meanwhile); `None` if it is still running.
async fn exited_within(
    child: &mut Child,
    kill: &CancellationToken,
    grace: Duration,
) -> Option<ExitInfo> {
    tokio::select! {
        status = child.wait() => Some(exit_info(status)),
        _ = tokio::time::sleep(grace) => None,
        _ = kill.cancelled() => None,
    }
}

/// What a broken connection to a worker running a job means: if the worker exits (it
/// usually already has: a reset or a frame cut short is what a death looks like from
/// here), it died; if it lives on, it broke the protocol, and it is killed.
async fn broken_connection(
    child: &mut Child,
    kill: &CancellationToken,
    reason: String,
) -> JobError {
    match exited_within(child, kill, BROKEN_GRACE).await {
        Some(exit) => JobError::WorkerDied { exit },
        None => {
            reap(child).await;
            JobError::Protocol { reason }
        }
    }
}

/// Asks a worker to exit and waits for it.
async fn retire(worker: &mut Worker, kill: &CancellationToken) {
    let _ = send(&mut worker.conn, &ToWorker::Shutdown, &[]).await;
    let exit = stop(&mut worker.child, kill).await;
    tracing::debug!(pid = worker.pid, %exit, "worker exited");
}
