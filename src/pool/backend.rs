//! The boundary between supervision and a set of workers: what the shared core needs of a
//! backend ([`Backend`]) and of each worker it starts ([`WorkerLink`]).
//!
//! The core (the queue, slots, back-off and break policy, per-function windows, batching,
//! draining answers, timeouts, cancellation, recycling, memory ceilings, stats, tracing)
//! is written once, against these two traits. A backend knows how workers come to exist
//! and how bytes reach them: the local backend ([`crate::process`]) starts child processes
//! of this executable, each on a socket pair of its own; another could reach ranks of an
//! MPI job.
//! Nothing on this side of the boundary names a child process, a pid, a socket path or
//! `/proc`.
//!
//! # A worker's life, as the core sees it
//!
//! ```text
//! slot:  backend.start(slot, kill) ─▶ link            (handshake done, initializers run)
//!        loop {
//!            link.send(Run frames [, large payload])   (a window of jobs, in one write)
//!            link.recv() ─▶ Frame(Done) ...            (answers, in the order sent)
//!                        ─▶ Closed | Broken | Exited   (the worker is lost)
//!        }
//!        link.kill() or Shutdown + link.exited()       (stopped, or retired)
//!        backend.start(slot, kill) ─▶ a new link       (if the backend can respawn)
//! ```
//!
//! Two implementations exist: the local backend ([`crate::process`]), whose links are
//! child processes on a Unix socket, and one made of threads in the core's own tests,
//! which cannot stop a running job and shows what the core then promises instead.

use crate::exit::{ExitInfo, WorkerId};
use crate::wire::claims::Revoke;
use crate::wire::frame::{Frame, ProtocolError};
use crate::wire::message::FromWorker;
use bytes::Bytes;
use futures::FutureExt;
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What a backend's workers can do, which decides what the core promises for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caps {
    /// A lost or retired worker can be replaced. Without it, a slot whose worker is lost
    /// stays empty, and the pool breaks once every slot is.
    pub(crate) respawn: bool,
    /// [`WorkerLink::kill`] stops a running job. Without it, `cancel()` of a running job
    /// returns `false`, and a job past its time limit fails while its worker is retired
    /// (it stops taking jobs and leaves when the job ends).
    pub(crate) stop_running: bool,
    /// [`Backend::resident_memory`] answers, so that a memory ceiling can be enforced.
    pub(crate) memory: bool,
    /// About how long a job takes to reach a worker and its answer to come back, beyond
    /// the job itself. When it is not zero, a worker running a job of known length is sent
    /// the next one that long before the running one is expected to end, so that it does
    /// not sit idle for the round trip (a link through an MPI node agent); that one job may
    /// then wait behind a running one that takes longer than expected.
    pub(crate) lead: std::time::Duration,
    /// A job that finds the queue empty goes to the idle worker that answered last, rather
    /// than to the one idle longest (see [`JobQueue::wake_idle_last`]).
    ///
    /// [`JobQueue::wake_idle_last`]: crate::queue::JobQueue::wake_idle_last
    pub(crate) wake_idle_last: bool,
}

/// Why a worker did not start.
#[derive(Debug)]
pub(crate) enum StartError {
    /// It will fail the same way again (an initializer panics, the entry hook is missing,
    /// another image answered, the executable cannot run): the pool breaks with this
    /// reason at once.
    Fatal(String),
    /// The worker's own doing, likely to repeat (it exited with a code or crashed while
    /// starting, or did not answer in time): the slot backs off and tries again, and the
    /// pool breaks after a few such failures in a row.
    Repeating(String),
    /// Something outside the worker got in the way (it was killed while starting, the
    /// system was out of processes or descriptors): the slot backs off and tries again,
    /// for as long as the pool lives.
    Transient(String),
    /// The pool is being killed.
    Killed,
}

/// What a worker's link delivered.
#[derive(Debug)]
pub(crate) enum Received {
    /// A whole frame.
    Frame(Frame<FromWorker>),
    /// The link closed between two frames.
    Closed,
    /// The link broke: a frame that does not decode, one cut short, an I/O error.
    Broken(ProtocolError),
    /// The worker is gone, and the link has nothing more to deliver.
    Exited(ExitInfo),
}

/// A set of workers: starts one for a slot and says what they can do.
///
/// # Contract
///
/// - [`start`](Backend::start) returns a worker that has completed its handshake: it
///   runs the pool's own image, has run the pool's initializers and is ready for `Run`
///   frames. It returns [`StartError::Killed`] soon after `kill` is cancelled, and leaves
///   nothing behind when it fails (a half-started worker is stopped and reaped).
/// - Several slots start workers at once; `start` takes `&self` and must allow that.
/// - [`caps`](Backend::caps) is the same for the backend's whole life.
/// - [`background`](Backend::background) is polled on the supervision thread for as long
///   as the pool runs, and dropped when it stops: work the backend does for all its
///   workers (the local backend has none).
pub(crate) trait Backend: Send + Sync + 'static {
    /// A started worker.
    type Link: WorkerLink;

    /// What this backend's workers can do.
    fn caps(&self) -> Caps;

    /// Starts a worker for slot `slot` and waits until it is ready for jobs.
    fn start(
        &self,
        slot: usize,
        kill: &CancellationToken,
    ) -> impl Future<Output = Result<Self::Link, StartError>> + Send;

    /// The resident memory of `worker`, in bytes, if known (see [`Caps::memory`]).
    fn resident_memory(&self, worker: WorkerId) -> Option<u64>;

    /// The backend's own work for as long as the pool runs; by default none.
    fn background(self: Arc<Self>) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// One started worker: frames in and out, how it ended, how to stop it.
///
/// # Contract
///
/// - Frames are bytes built by [`crate::wire::frame::put_frame`]; [`send`](Self::send)
///   writes them in order, then the payload left over for the last one, and the worker
///   receives them as written. It fails only if the link is broken.
/// - The worker answers `Run` frames with `Done` frames in the order it received them,
///   and runs one job at a time: the jobs behind the first have not started. The `Run`
///   frames carry consecutive ids from 0, so that [`revoke`](Self::revoke) can name the
///   jobs it takes back; a job taken back is answered as such, in its turn.
/// - [`recv`](Self::recv) and [`exited`](Self::exited) are cancel-safe: dropping their
///   future loses nothing, so that the core can wait on them beside timers and the queue.
///   `recv` delivers every frame the worker wrote before it reports
///   [`Received::Exited`].
/// - [`kill`](Self::kill) stops the worker and returns once it is gone (the local backend:
///   SIGKILL and reap). A backend that cannot stop a running worker
///   ([`Caps::stop_running`] off) detaches it instead: it must take no further job.
/// - Dropping a link stops its worker.
pub(crate) trait WorkerLink: Send + 'static {
    /// Who the worker is, for errors, stats and tracing.
    fn id(&self) -> WorkerId;

    /// Writes `frames`, then `payload` (a large job's argument, shared so that a link may
    /// send it from another thread without copying it), to the worker.
    fn send(
        &mut self,
        frames: &[u8],
        payload: &Bytes,
    ) -> impl Future<Output = std::io::Result<()>> + Send;

    /// The next thing the link has for the pool.
    fn recv(&mut self) -> impl Future<Output = Received> + Send;

    /// What the link already holds, without waiting: the core reads the answers that
    /// arrived together this way, in one pass. `None` when nothing is at hand. The local
    /// link reads only its socket here, leaving an exit for [`recv`](Self::recv); the
    /// default, `recv` polled once, may report one.
    fn try_recv(&mut self) -> Option<Received> {
        self.recv().now_or_never()
    }

    /// Resolves when the worker has ended, with how.
    fn exited(&mut self) -> impl Future<Output = ExitInfo> + Send;

    /// Stops the worker now and waits until it is gone, with how it ended (unknown for a
    /// detached worker).
    fn kill(&mut self) -> impl Future<Output = ExitInfo> + Send;

    /// Whether [`revoke`](Self::revoke) can take jobs back from this worker; by default
    /// not.
    fn can_revoke(&self) -> bool {
        false
    }

    /// Whether a large argument is lent to the worker (`ToWorker::RunLent`: it reads the
    /// argument out of the pool's memory) rather than written after its frame; by default
    /// not.
    fn lends_arguments(&self) -> bool {
        false
    }

    /// Keeps `argument`, lent to the worker as job `id`'s, alive until the worker has
    /// answered that job or is gone (it reads the argument in between). Called, before
    /// the job's frame is sent, only where [`lends_arguments`](Self::lends_arguments).
    fn lend_argument(&mut self, id: u64, argument: &Bytes) {
        let _ = (id, argument);
    }

    /// Whether the worker has started job `id` (one written to it and not taken back),
    /// if the link can tell: the pool gives up a worker knowing which of its jobs ran.
    fn started(&self, _id: u64) -> Option<bool> {
        None
    }

    /// Takes back, at once, the jobs written to the worker (those numbered below `next`)
    /// that it has not started, provided it has started every job below `from`: the
    /// worker will answer each of them [`Outcome::Revoked`](crate::run::Outcome::Revoked)
    /// without running it. Says from which job on they were taken back, or why none was
    /// (see [`crate::wire::claims::revoke`]). By default none can be.
    fn revoke(&self, from: u64, next: u64) -> Revoke {
        let _ = (from, next);
        Revoke::NothingLeft
    }
}

impl Received {
    /// What the next item of a framed byte stream means for the pool: a frame, the link
    /// broken, or (at its end) closed.
    pub(crate) fn from_stream(item: Option<Result<Frame<FromWorker>, ProtocolError>>) -> Received {
        match item {
            Some(Ok(frame)) => Received::Frame(frame),
            Some(Err(error)) => Received::Broken(error),
            None => Received::Closed,
        }
    }

    /// A short description of something the pool did not expect, for errors and logs
    /// (without a possibly huge payload).
    pub(crate) fn describe(&self) -> String {
        match self {
            Received::Frame(Frame {
                message: FromWorker::Done { id, .. },
                ..
            }) => format!("an answer to job {id}, which it was not running"),
            Received::Frame(frame) => format!("unexpected message {}", frame.message.name()),
            Received::Closed => "connection closed".into(),
            Received::Broken(error) => crate::error::report(error),
            Received::Exited(exit) => format!("the worker exited ({exit})"),
        }
    }
}
