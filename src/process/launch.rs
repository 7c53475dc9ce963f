//! [`Launcher`]: the local backend's [`Backend`]. It owns the pool's private socket (mode
//! `0600` in a fresh `0700` directory, never an abstract-namespace name), starts workers as
//! child processes of this executable, and authenticates each connection (the per-pool
//! secret, the protocol version, the executable image) before handing it to the slot that
//! started that worker.

use super::child::{self, Conn, LocalWorker};
use super::entry::{Spec, WORKER_ENV};
use crate::error::Error;
use crate::exit::WorkerId;
use crate::pool::backend::{Backend, Caps, Received, StartError, WorkerLink};
use crate::pool::{EXIT_GRACE, stop_within};
use crate::ship::{self, ImageId, Target};
use crate::wire::frame::{Codec, Frame, put_frame};
use crate::wire::message::{
    FromWorker, HANDSHAKE_MAX_FRAME, Hello, PROTOCOL_VERSION, SECRET_LEN, ToWorker,
};
use futures::StreamExt;
use interprocess::local_socket::tokio::{Listener, Stream as AsyncStream};
use interprocess::local_socket::traits::tokio::Listener as _;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// The socket buffer size asked for on both ends of a worker connection (the kernel caps it
/// at `net.core.wmem_max` / `rmem_max`; the default is about 200 KiB). A large payload
/// then crosses in a few large writes instead of hundreds of small ones, each waking the
/// other side.
const SOCKET_BUFFER: usize = 4 << 20;

/// What the local backend needs to start a worker, fixed when the pool is built.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Run in order by each worker before its first job.
    pub(crate) initializers: Vec<Target>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_frame: usize,
    /// Tests only: start workers that never handshake.
    #[cfg(test)]
    pub(crate) stall_handshake: bool,
}

/// What the accept loop hands a waiting slot: the authenticated connection and the pid the
/// worker gave, or why it was refused.
type Handshake = Result<(Conn, u32), StartError>;

/// The local backend: starts child processes on a private Unix socket.
pub(crate) struct Launcher {
    settings: Settings,
    // Dropped before `_dir`: dropping the listener removes the socket file.
    listener: Listener,
    socket: PathBuf,
    secret: [u8; SECRET_LEN],
    image: ImageId,
    exe: PathBuf,
    /// Slots waiting for the handshake of the worker they started, by worker id.
    pending: Mutex<HashMap<u64, oneshot::Sender<Handshake>>>,
    next_worker: AtomicU64,
    _dir: tempfile::TempDir,
}

impl Launcher {
    /// Creates the socket (inside the supervision runtime's context) and everything a
    /// worker needs to reach it.
    pub(crate) fn new(settings: Settings) -> Result<Launcher, Error> {
        let dir = tempfile::Builder::new()
            .prefix("procpool-")
            // Applied by mkdir itself, so the directory is never visible with a wider mode.
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .map_err(|e| Error::io("creating the pool's private socket directory", e))?;
        let socket = dir.path().join("pool.sock");
        let mut secret = [0_u8; SECRET_LEN];
        getrandom::fill(&mut secret)
            .map_err(|e| Error::io("drawing the pool's random secret", std::io::Error::from(e)))?;
        let image = ImageId::current().map_err(|e| Error::io("identifying this executable", e))?;
        let name = socket
            .as_path()
            .to_fs_name::<GenericFilePath>()
            .map_err(|e| Error::io(format!("naming the socket {}", socket.display()), e))?;
        let listener = ListenerOptions::new()
            .name(name)
            .mode(0o600)
            .create_tokio()
            .map_err(|e| Error::io(format!("listening on {}", socket.display()), e))?;
        Ok(Launcher {
            settings,
            listener,
            socket,
            secret,
            image,
            exe: ship::exe_path(),
            pending: Mutex::new(HashMap::new()),
            next_worker: AtomicU64::new(0),
            _dir: dir,
        })
    }

    /// Authenticates a new connection and hands it to the slot that started its worker.
    async fn handshake(self: Arc<Self>, stream: AsyncStream) {
        let mut conn = Conn::new(stream, Codec::new(HANDSHAKE_MAX_FRAME));
        let timeout = self.settings.handshake_timeout;
        let first = match tokio::time::timeout(timeout, conn.next()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => {
                let error = crate::error::report(&e);
                tracing::warn!(%error, "rejected a connection: bad first frame");
                return;
            }
            Ok(None) => return,
            Err(_) => {
                tracing::warn!("rejected a connection that sent no hello in time");
                return;
            }
        };
        match first.message {
            FromWorker::Hello(hello) => {
                let Hello {
                    version,
                    worker_id,
                    pid,
                    secret,
                    image,
                    probe,
                } = *hello;
                if !same_secret(&secret, &self.secret) {
                    tracing::warn!(pid, "rejected a connection without the pool's secret");
                    return;
                }
                let verdict = if version != PROTOCOL_VERSION {
                    Err(StartError::Fatal(format!(
                        "worker {pid} speaks protocol version {version}, the pool {PROTOCOL_VERSION}"
                    )))
                } else if image != self.image || probe != ship::probe_offset() {
                    Err(StartError::Fatal(format!(
                        "worker {pid} runs a different executable image than the pool"
                    )))
                } else {
                    conn.codec_mut().set_max_frame(self.settings.max_frame);
                    let AsyncStream::UdSocket(socket) = conn.get_ref();
                    widen_buffers(socket);
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

    /// Starts a child process in worker mode; it will connect with `worker_id`.
    fn spawn(&self, worker_id: u64) -> Result<Child, StartError> {
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
            // A process group of its own: a terminal's Ctrl-C (SIGINT to the foreground
            // group) leaves the worker to the application, and stopping the worker stops
            // the processes its jobs started with it.
            .process_group(0)
            .kill_on_drop(true);
        #[cfg(test)]
        if self.settings.stall_handshake {
            command.env(crate::worker::fault::STALL_ENV, "1");
        }
        command.spawn().map_err(|e| {
            StartError::Transient(format!(
                "could not start a worker process from {}: {e}",
                self.exe.display()
            ))
        })
    }

    async fn spawn_and_handshake(
        &self,
        worker_id: u64,
        mut handshake: oneshot::Receiver<Handshake>,
        kill: &CancellationToken,
    ) -> Result<LocalWorker, StartError> {
        let mut child = self.spawn(worker_id)?;
        let pid = child.id().unwrap_or(0);
        let id = WorkerId::process(pid);
        let timeout = self.settings.handshake_timeout;
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
                        child::exit_info(status, id)
                    ))),
                }
            }
            _ = tokio::time::sleep(timeout) => Err(StartError::Transient(format!(
                "worker {pid} did not complete its handshake within {timeout:?}; if the \
                 `auto-init` feature is disabled, call procpool::init() first thing in main"
            ))),
            _ = kill.cancelled() => Err(StartError::Killed),
        };
        let conn = match verdict {
            Ok((conn, hello_pid)) if hello_pid == pid => conn,
            Ok((_, hello_pid)) => {
                child::reap(&mut child, id).await;
                return Err(StartError::Transient(format!(
                    "worker {pid} introduced itself as process {hello_pid}"
                )));
            }
            Err(e) => {
                child::reap(&mut child, id).await;
                return Err(e);
            }
        };
        let mut worker = LocalWorker::new(child, conn, pid);
        let welcome = ToWorker::Welcome {
            image: self.image.clone(),
            probe: ship::probe_offset(),
            initializers: self.settings.initializers.clone(),
            max_frame: self.settings.max_frame as u64,
        };
        let mut frame = bytes::BytesMut::new();
        let sent = match put_frame(&welcome, &[], self.settings.max_frame, &mut frame) {
            Ok(_) => worker.send(&frame, &[]).await.map_err(|e| e.to_string()),
            Err(e) => Err(crate::error::report(&e)),
        };
        if let Err(e) = sent {
            worker.kill().await;
            return Err(StartError::Transient(format!("worker {pid}: {e}")));
        }
        let ready = tokio::select! {
            received = worker.recv() => received,
            _ = kill.cancelled() => {
                worker.kill().await;
                return Err(StartError::Killed);
            }
        };
        match ready {
            Received::Frame(Frame {
                message: FromWorker::Ready,
                ..
            }) => Ok(worker),
            Received::Frame(Frame {
                message: FromWorker::InitFailed { message, location },
                ..
            }) => {
                worker.kill().await;
                let at = location.map(|l| format!(" (at {l})")).unwrap_or_default();
                Err(StartError::Fatal(format!(
                    "the pool's initializer panicked in worker {pid}: {message}{at}"
                )))
            }
            Received::Exited(exit) => Err(StartError::Transient(format!(
                "worker {pid} exited before it was ready ({exit})"
            ))),
            other => {
                let exit = stop_within(&mut worker, kill, EXIT_GRACE).await;
                Err(StartError::Transient(format!(
                    "worker {pid} failed before it was ready ({exit}): {}",
                    other.describe()
                )))
            }
        }
    }
}

impl Backend for Launcher {
    type Link = LocalWorker;

    fn caps(&self) -> Caps {
        Caps {
            respawn: true,
            stop_running: true,
            memory: cfg!(target_os = "linux"),
        }
    }

    async fn start(
        &self,
        _slot: usize,
        kill: &CancellationToken,
    ) -> Result<LocalWorker, StartError> {
        let worker_id = self.next_worker.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(worker_id, tx);
        let result = self.spawn_and_handshake(worker_id, rx, kill).await;
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&worker_id);
        result
    }

    fn resident_memory(&self, worker: WorkerId) -> Option<u64> {
        child::resident_bytes(worker.pid()?)
    }

    async fn background(self: Arc<Self>) {
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
}

/// Asks for [`SOCKET_BUFFER`]-sized send and receive buffers on `socket`. Best effort: a
/// refusal only costs speed, so it is logged and ignored.
pub(super) fn widen_buffers(socket: &impl std::os::fd::AsFd) {
    let socket = socket2::SockRef::from(socket);
    let widened = socket
        .set_send_buffer_size(SOCKET_BUFFER)
        .and_then(|()| socket.set_recv_buffer_size(SOCKET_BUFFER));
    if let Err(error) = widened {
        tracing::debug!(%error, "could not widen a worker socket's buffers");
    }
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &[u8; SECRET_LEN], b: &[u8; SECRET_LEN]) -> bool {
    a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_a_sockets_buffers_never_shrinks_them() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let before = socket2::SockRef::from(&a).send_buffer_size().unwrap();
        widen_buffers(&a);
        let after = socket2::SockRef::from(&a).send_buffer_size().unwrap();
        assert!(after >= before, "{after} < {before}");
    }

    #[test]
    fn secrets_compare_whole() {
        let a = [7; SECRET_LEN];
        let mut b = a;
        assert!(same_secret(&a, &b));
        b[SECRET_LEN - 1] = 8;
        assert!(!same_secret(&a, &b));
    }
}
