//! [`Launcher`]: the local backend's [`Backend`]. It starts workers as child processes of
//! this executable, each on one end of a socket pair made for it (an unnamed socket, which
//! nothing else can reach and which leaves nothing behind), and checks each worker's
//! introduction (the per-pool secret, the protocol version, the executable image) before
//! handing it its initializers.

use super::child::{self, Conn, LocalWorker};
use super::entry::{Spec, WORKER_ENV};
use crate::error::Error;
use crate::exit::{ExitInfo, WorkerId};
use crate::pool::backend::{Backend, Caps, Received, StartError, WorkerLink};
use crate::pool::{EXIT_GRACE, exit_within, stop_within};
use crate::ship::{self, ImageId, Target};
use crate::sys::SharedWord;
use crate::wire::frame::{Codec, Frame, put_frame};
use crate::wire::message::{
    FromWorker, HANDSHAKE_MAX_FRAME, Hello, Lending, PROTOCOL_VERSION, SECRET_LEN, ToWorker,
};
use futures::StreamExt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// The socket buffer size asked for on both ends of a worker connection (the kernel caps it
/// at `net.core.wmem_max` / `rmem_max`; the default is about 200 KiB). A large payload
/// then crosses in a few large writes instead of hundreds of small ones, each waking the
/// other side.
const SOCKET_BUFFER: usize = 4 << 20;

/// How long a worker's initializers may take unless the pool says otherwise (see
/// [`Settings::initializer_timeout`]).
pub(super) const DEFAULT_INITIALIZER_TIMEOUT: Duration = Duration::from_secs(60);

/// What the local backend needs to start a worker, fixed when the pool is built.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Run in order by each worker before its first job.
    pub(crate) initializers: Vec<Target>,
    pub(crate) handshake_timeout: Duration,
    /// How long a worker may take to run its initializers and say it is ready: one that
    /// takes longer is killed, and its start fails as one likely to repeat. Without
    /// initializers, the handshake timeout bounds that stage instead.
    pub(crate) initializer_timeout: Duration,
    pub(crate) max_frame: usize,
    /// Whether large arguments and results may be lent between the pool and its workers
    /// (read across with [`crate::sys::remote::read_lent`]) instead of written to their
    /// socket, where the handshake finds both can read the other's memory. Off for an MPI
    /// node agent, which hands its workers' bytes on undecoded.
    pub(crate) lend: bool,
    /// Tests only: start workers that never handshake.
    #[cfg(test)]
    pub(crate) stall_handshake: bool,
    /// Tests only: counts the arguments lent and the results read.
    #[cfg(test)]
    pub(crate) lent: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

/// The local backend: starts child processes, each on a socket pair of its own.
pub(crate) struct Launcher {
    settings: Settings,
    /// Boxed: a worker reads it at this address to learn that it can read the pool's
    /// memory (see [`Settings::lend`]).
    secret: Box<[u8; SECRET_LEN]>,
    image: ImageId,
    exe: PathBuf,
    next_worker: AtomicU64,
}

impl Launcher {
    /// Draws the pool's secret and identifies this executable.
    pub(crate) fn new(settings: Settings) -> Result<Launcher, Error> {
        let mut secret = [0_u8; SECRET_LEN];
        getrandom::fill(&mut secret)
            .map_err(|e| Error::io("drawing the pool's random secret", std::io::Error::from(e)))?;
        let image = ImageId::current().map_err(|e| Error::io("identifying this executable", e))?;
        Ok(Launcher {
            settings,
            secret: Box::new(secret),
            image,
            exe: ship::exe_path(),
            next_worker: AtomicU64::new(0),
        })
    }

    /// How long a welcomed worker may take to say it is ready.
    fn ready_within(&self) -> Duration {
        if self.settings.initializers.is_empty() {
            self.settings.handshake_timeout
        } else {
            self.settings.initializer_timeout
        }
    }

    /// Why worker `pid` did not start, when it was not ready within `within`.
    fn not_ready(&self, pid: u32, within: Duration) -> StartError {
        StartError::Repeating(if self.settings.initializers.is_empty() {
            format!(
                "worker {pid} was not ready within {within:?} of its handshake and was killed \
                 (ProcessPoolBuilder::handshake_timeout)"
            )
        } else {
            format!(
                "worker {pid} did not finish its initializers within {within:?} and was \
                 killed (raise ProcessPoolBuilder::initializer_timeout if they need longer)"
            )
        })
    }

    /// Starts a child process in worker mode, on one end of a new socket pair; returns it,
    /// the pool's end, and the word they share (where the platform has memfds).
    async fn spawn(&self, worker_id: u64) -> Result<(Child, Conn, Option<SharedWord>), StartError> {
        let transient = |what: &str, e: std::io::Error| {
            StartError::Transient(format!("could not start a worker ({what}): {e}"))
        };
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| transient("a socket pair", e))?;
        // Both ends away from the standard descriptors, which a daemon may have closed: a
        // job's output must never be written to the link, nor this process's to a worker.
        let theirs = OwnedFd::from(theirs)
            .try_clone()
            .map_err(|e| transient("the worker's descriptor", e))?;
        let ours = ours
            .try_clone()
            .map_err(|e| transient("the pool's descriptor", e))?;
        // Without it the worker runs every job it is sent, and jobs behind a slow one wait;
        // its journal lets the worker hold answers back for a moment while its next job is
        // already here (see `crate::wire::outbox`).
        let word = SharedWord::create(true);
        let spec = Spec {
            worker_id,
            parent_pid: std::process::id(),
            secret: *self.secret,
            word: word.is_some(),
        };
        let mut command = Command::new(&self.exe);
        command
            .env(WORKER_ENV, spec.encode())
            // The link goes down as standard input, which the worker replaces with
            // `/dev/null` at once: nothing runs in the child before `exec`, so that the
            // standard library can start it with `posix_spawn` rather than `fork` (whose
            // cost grows with this process's memory: 9 ms for two workers of a process with
            // 256 MiB resident, against 1.3 ms).
            .stdin(Stdio::from(theirs))
            // A process group of its own: a terminal's Ctrl-C (SIGINT to the foreground
            // group) leaves the worker to the application, and stopping the worker stops
            // the processes its jobs started with it.
            .process_group(0)
            .kill_on_drop(true);
        #[cfg(test)]
        if self.settings.stall_handshake {
            command.env(crate::worker::fault::STALL_ENV, "1");
        }
        let child = command.spawn().map_err(|e| {
            let text = format!(
                "could not start a worker process from {}: {e}",
                self.exe.display()
            );
            // Missing, not executable, not a program: it will not run next time either.
            let cannot_run = matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) || matches!(
                e.raw_os_error(),
                Some(
                    libc::ENOEXEC | libc::E2BIG | libc::ENAMETOOLONG | libc::ELOOP | libc::ENOTDIR
                )
            );
            if cannot_run {
                StartError::Fatal(text)
            } else {
                StartError::Transient(text)
            }
        })?;
        drop(command); // the child has its end of the link: close this process's copy
        let mut child = child;
        let word = word.filter(|word| {
            // Fails if the child is gone already: its exit, seen in the handshake, says why.
            let sent = crate::sys::send_descriptor(ours.as_fd(), word.fd());
            if let Err(e) = &sent {
                tracing::debug!("could not send a worker its shared word: {e}");
            }
            sent.is_ok()
        });
        let stream = ours
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(ours));
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // Not left to `kill_on_drop`: a half-started worker is stopped and reaped.
                let pid = child.id().unwrap_or(0);
                let reaped = child::reap(&mut child, WorkerId::process(pid));
                let _ = tokio::time::timeout(EXIT_GRACE, reaped).await;
                return Err(transient("the pool's socket", e));
            }
        };
        widen_buffers(&stream);
        Ok((
            child,
            Conn::new(stream, Codec::new(HANDSHAKE_MAX_FRAME)),
            word,
        ))
    }

    /// Checks a worker's introduction: it runs this image, speaks this protocol, knows
    /// this pool's secret, and is the process that was started for `worker_id`.
    fn check_hello(&self, hello: &Hello, worker_id: u64, pid: u32) -> Result<(), StartError> {
        let said = hello.pid;
        if !same_secret(&hello.secret, &self.secret) || hello.worker_id != worker_id {
            return Err(StartError::Repeating(format!(
                "worker {pid} did not present the pool's secret"
            )));
        }
        if hello.version != PROTOCOL_VERSION {
            return Err(StartError::Fatal(format!(
                "worker {pid} speaks protocol version {}, the pool {PROTOCOL_VERSION}",
                hello.version
            )));
        }
        if hello.image != self.image || hello.probe != ship::probe_offset() {
            return Err(StartError::Fatal(format!(
                "worker {pid} runs a different executable image than the pool"
            )));
        }
        if said != pid {
            return Err(StartError::Repeating(format!(
                "worker {pid} introduced itself as process {said}"
            )));
        }
        Ok(())
    }

    /// Whether lending is on and this process reads the pool's secret at `addr` in
    /// process `pid`: then it can read what that process lends it.
    fn reads_secret_at(&self, pid: u32, addr: u64) -> bool {
        let mut read = Vec::new();
        self.settings.lend
            && addr != 0
            && crate::sys::remote::read_lent(pid, addr, SECRET_LEN, &mut read).is_ok()
            && read.as_slice() == self.secret.as_slice()
    }

    /// Waits for the worker's introduction and checks it; says whether the worker claims
    /// its jobs in the shared word, and whether this process can read what it lends.
    async fn hello(
        &self,
        conn: &mut Conn,
        child: &mut Child,
        worker_id: u64,
        kill: &CancellationToken,
    ) -> Result<(bool, bool), StartError> {
        let pid = child.id().unwrap_or(0);
        let timeout = self.settings.handshake_timeout;
        let first = tokio::select! {
            // First: a worker that reached `main` reports so and exits; its report, which
            // names the fix, wins over the bare exit.
            biased;
            first = conn.next() => first,
            exit = child::exit_of(child, WorkerId::process(pid)) => {
                return Err(ended_while_starting(exit, "before its handshake"));
            }
            _ = tokio::time::sleep(timeout) => return Err(StartError::Repeating(format!(
                "worker {pid} did not complete its handshake within {timeout:?}"
            ))),
            _ = kill.cancelled() => return Err(StartError::Killed),
        };
        match Received::from_stream(first) {
            Received::Frame(Frame {
                message: FromWorker::Hello(hello),
                ..
            }) => self
                .check_hello(&hello, worker_id, pid)
                .map(|()| (hello.claims, self.reads_secret_at(pid, hello.secret_at))),
            Received::Frame(Frame {
                message: FromWorker::HookMissing { secret, .. },
                ..
            }) if same_secret(&secret, &self.secret) => {
                Err(StartError::Fatal(Error::EntryHookMissing.to_string()))
            }
            Received::Closed | Received::Broken(_) => {
                // Closed as it died, usually: its end says whose doing it was.
                let id = WorkerId::process(pid);
                match exit_within(child::exit_of(child, id), kill, EXIT_GRACE).await {
                    Some(exit) => Err(ended_while_starting(exit, "before its handshake")),
                    None => Err(StartError::Repeating(format!(
                        "worker {pid} closed its link before its handshake"
                    ))),
                }
            }
            other => Err(StartError::Repeating(format!(
                "worker {pid} did not open with a hello: {}",
                other.describe()
            ))),
        }
    }

    async fn spawn_and_handshake(
        &self,
        worker_id: u64,
        kill: &CancellationToken,
    ) -> Result<LocalWorker, StartError> {
        let (mut child, mut conn, mut word) = self.spawn(worker_id).await?;
        let pid = child.id().unwrap_or(0);
        let reads_lent = match self.hello(&mut conn, &mut child, worker_id, kill).await {
            // A worker that could not map the word runs every job it is sent: none may be
            // taken back from it.
            Ok((claims, reads_lent)) => {
                word = word.filter(|_| claims);
                reads_lent
            }
            Err(e) => {
                child::reap(&mut child, WorkerId::process(pid)).await;
                return Err(e);
            }
        };
        conn.codec_mut().set_max_frame(self.settings.max_frame);
        let mut worker = LocalWorker::new(child, conn, pid, word);
        let welcome = ToWorker::Welcome {
            image: self.image.clone(),
            probe: ship::probe_offset(),
            initializers: self.settings.initializers.clone(),
            max_frame: self.settings.max_frame as u64,
            lending: self.settings.lend.then(|| Lending {
                pid: std::process::id(),
                secret_at: self.secret.as_ptr() as u64,
                reads_lent,
            }),
        };
        let mut frame = bytes::BytesMut::new();
        let sent = match put_frame(&welcome, &[], self.settings.max_frame, &mut frame) {
            Ok(_) => worker
                .send(&frame, &bytes::Bytes::new())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(crate::error::report(&e)),
        };
        if let Err(e) = sent {
            let exit = stop_within(&mut worker, kill, EXIT_GRACE).await;
            return Err(ended_while_starting(
                exit,
                &format!("as it was welcomed: {e}"),
            ));
        }
        // Bounded: a worker whose initializer hangs, or that was stopped from outside
        // (SIGSTOP), would otherwise keep its slot starting, and the pool's jobs waiting,
        // for good.
        let within = self.ready_within();
        let ready = tokio::select! {
            received = worker.recv() => received,
            _ = tokio::time::sleep(within) => {
                worker.kill().await;
                return Err(self.not_ready(pid, within));
            }
            _ = kill.cancelled() => {
                worker.kill().await;
                return Err(StartError::Killed);
            }
        };
        match ready {
            Received::Frame(Frame {
                message: FromWorker::Ready { reads_lent },
                ..
            }) => {
                worker.lend_arguments(reads_lent && self.settings.lend);
                #[cfg(test)]
                worker.count_lent(self.settings.lent.clone());
                Ok(worker)
            }
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
            Received::Exited(exit) => Err(ended_while_starting(exit, "before it was ready")),
            Received::Closed | Received::Broken(_) => {
                match exit_within(worker.exited(), kill, EXIT_GRACE).await {
                    Some(exit) => Err(ended_while_starting(exit, "before it was ready")),
                    None => {
                        worker.kill().await;
                        Err(StartError::Repeating(format!(
                            "worker {pid} closed its link before it was ready"
                        )))
                    }
                }
            }
            other => {
                let exit = worker.kill().await;
                Err(StartError::Repeating(format!(
                    "worker {pid} failed before it was ready ({exit}): {}",
                    other.describe()
                )))
            }
        }
    }
}

/// Why a worker that ended while it started (`when`) did not start: a signal from outside
/// (SIGKILL, SIGTERM, SIGINT, SIGHUP) is retried for as long as the pool lives; an exit
/// code or a crash of its own is likely to repeat.
fn ended_while_starting(exit: ExitInfo, when: &str) -> StartError {
    let worker = exit
        .worker()
        .map_or_else(|| "a worker".to_owned(), |w| w.to_string());
    let text = format!("{worker} ended {when} ({exit})");
    match exit.signal() {
        Some(libc::SIGKILL | libc::SIGTERM | libc::SIGINT | libc::SIGHUP) => {
            StartError::Transient(text)
        }
        _ => StartError::Repeating(text),
    }
}

impl Backend for Launcher {
    type Link = LocalWorker;

    fn caps(&self) -> Caps {
        Caps {
            respawn: true,
            stop_running: true,
            memory: cfg!(target_os = "linux"),
            lead: Duration::ZERO,
            // W6 (64 MiB echoes, one at a time) was slower on one worker than on the two
            // in turn: medians of 18.3, 15.6, 17.1 and 19.6 ms against 15.9, 17.2, 15.1
            // and 15.0 in four alternated pairs (2026-12-07).
            wake_idle_last: false,
        }
    }

    async fn start(
        &self,
        _slot: usize,
        kill: &CancellationToken,
    ) -> Result<LocalWorker, StartError> {
        let worker_id = self.next_worker.fetch_add(1, Ordering::Relaxed);
        self.spawn_and_handshake(worker_id, kill).await
    }

    fn resident_memory(&self, worker: WorkerId) -> Option<u64> {
        child::resident_bytes(worker.pid()?)
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

    fn launcher() -> Launcher {
        Launcher::new(Settings {
            initializers: Vec::new(),
            handshake_timeout: Duration::from_secs(1),
            initializer_timeout: DEFAULT_INITIALIZER_TIMEOUT,
            max_frame: 1 << 20,
            lend: true,
            stall_handshake: false,
            lent: None,
        })
        .unwrap()
    }

    fn hello_of(launcher: &Launcher, worker_id: u64, pid: u32) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            worker_id,
            pid,
            secret: *launcher.secret,
            image: launcher.image.clone(),
            probe: ship::probe_offset(),
            claims: true,
            secret_at: 0,
        }
    }

    #[test]
    fn a_worker_is_taken_only_with_the_pools_secret_protocol_and_image() {
        let launcher = launcher();
        assert!(
            launcher
                .check_hello(&hello_of(&launcher, 3, 40), 3, 40)
                .is_ok()
        );
        let retried = |hello: Hello| {
            matches!(
                launcher.check_hello(&hello, 3, 40),
                Err(StartError::Repeating(_))
            )
        };
        let fatal = |hello: Hello| {
            matches!(
                launcher.check_hello(&hello, 3, 40),
                Err(StartError::Fatal(_))
            )
        };
        let mut wrong = hello_of(&launcher, 3, 40);
        wrong.secret[0] ^= 1;
        assert!(retried(wrong), "another secret");
        assert!(
            retried(hello_of(&launcher, 4, 40)),
            "another start's worker"
        );
        assert!(retried(hello_of(&launcher, 3, 41)), "another process");
        let mut wrong = hello_of(&launcher, 3, 40);
        wrong.version += 1;
        assert!(fatal(wrong), "another protocol");
        let mut wrong = hello_of(&launcher, 3, 40);
        wrong.probe += 16;
        assert!(fatal(wrong), "another image");
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
