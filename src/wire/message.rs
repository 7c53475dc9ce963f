//! The messages a pool and its workers exchange, each the message of one frame (see
//! [`super::frame`]).
//!
//! A connection opens with the worker's `Hello` (or `HookMissing`), the pool's `Welcome`,
//! and the worker's `Ready` (or `InitFailed`); then the pool sends `Run` and the worker
//! answers each with `Done`, in order, until the pool sends `Shutdown` or the link closes.

use super::frame::{ProtocolError, put_frame};
use crate::run::Outcome;
use crate::ship::{ImageId, Target};
use bytes::BytesMut;
use serde::{Deserialize, Serialize};

/// Bumped whenever a message or the frame layout changes shape. Version 4: the frame
/// header states the message's length beside the frame's; 5: a result over the frame
/// limit is answered as such (`Outcome::TooLarge`); 6: a panic carries its backtrace; 7: a
/// job the pool took back is answered as skipped (`Outcome::Revoked`); 9: large
/// arguments and results may be lent rather than written (`RunLent`, `DoneLent`).
pub(crate) const PROTOCOL_VERSION: u32 = 9;
/// The frame limit before a peer has proven it knows the pool's secret.
pub(crate) const HANDSHAKE_MAX_FRAME: usize = 64 * 1024;
/// Bytes of the per-pool secret.
pub(crate) const SECRET_LEN: usize = 32;

/// A message from a worker to its pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// The first frame on a new connection (boxed: it is sent once, and the messages that
    /// go by the thousand stay small to move).
    Hello(Box<Hello>),
    /// Sent instead of `Hello` by a process that reached `main` without entering the
    /// worker loop (the entry hook is off and `init()` was not called).
    HookMissing {
        worker_id: u64,
        secret: [u8; SECRET_LEN],
    },
    /// The initializers (if any) ran; jobs may come. `reads_lent`: the worker read the
    /// bytes the `Welcome` lent it, so the pool may lend it large arguments.
    Ready { reads_lent: bool },
    /// An initializer panicked; the worker exits.
    InitFailed {
        message: String,
        location: Option<String>,
    },
    /// The answer to `Run { id, .. }`; the frame's payload is the encoded result.
    Done { id: u64, outcome: Outcome },
    /// As `Done`, but the encoded result is not in the frame: the worker lends it, and
    /// keeps it until the pool sends `Taken` with its address.
    DoneLent {
        id: u64,
        outcome: Outcome,
        result: Lent,
    },
}

impl FromWorker {
    /// The variant's name, for errors and logs (without a possibly huge payload).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            FromWorker::Hello(_) => "Hello",
            FromWorker::HookMissing { .. } => "HookMissing",
            FromWorker::Ready { .. } => "Ready",
            FromWorker::InitFailed { .. } => "InitFailed",
            FromWorker::Done { .. } => "Done",
            FromWorker::DoneLent { .. } => "DoneLent",
        }
    }

    /// A successful answer to job `id`, for tests.
    #[cfg(test)]
    pub(crate) fn done(id: u64) -> FromWorker {
        FromWorker::Done {
            id,
            outcome: Outcome::Ok,
        }
    }
}

/// How a worker introduces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) version: u32,
    /// Which start of the pool this worker answers.
    pub(crate) worker_id: u64,
    pub(crate) pid: u32,
    pub(crate) secret: [u8; SECRET_LEN],
    pub(crate) image: ImageId,
    pub(crate) probe: i64,
    /// Whether the worker claims its jobs in the word it shares with the pool (it has it
    /// mapped): only then may the pool take jobs back from it.
    pub(crate) claims: bool,
    /// Where in the worker its copy of the secret is, for the pool to try reading it
    /// there: if it can, the worker may lend it large results.
    pub(crate) secret_at: u64,
}

/// Bytes one process lends another: `len` bytes at `addr` in the lender, which keeps them
/// alive and unchanged until the borrower has read them (with
/// [`crate::sys::remote::read_lent`]). The pool's lent argument lives as long as its job
/// is the worker's, and the worker reads it only once it has claimed the job; a worker's
/// lent result lives until the pool sends `Taken`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lent {
    pub(crate) addr: u64,
    pub(crate) len: u64,
}

/// Appends job `id`'s frame to `out` (see [`put_frame`]): with `lend`, a `RunLent` that
/// names `input` (which the caller keeps alive and unchanged while the job is the
/// worker's), else a `Run` with `input` as its payload. Returns what of the payload the
/// sender writes after `out` (nothing when lent). A job too large for a frame is refused
/// either way.
pub(crate) fn put_run<'i>(
    id: u64,
    target: Target,
    input: &'i [u8],
    lend: bool,
    max_frame: usize,
    out: &mut BytesMut,
) -> Result<&'i [u8], ProtocolError> {
    let start = out.len();
    let tail = put_frame(&ToWorker::Run { id, target }, input, max_frame, out)?;
    if !lend {
        return Ok(tail);
    }
    out.truncate(start);
    let argument = Lent::of(input);
    put_frame(
        &ToWorker::RunLent {
            id,
            target,
            argument,
        },
        &[],
        max_frame,
        out,
    )?;
    Ok(&[])
}

impl Lent {
    /// The bytes of `buffer`, which the caller keeps alive and unchanged until they are
    /// read.
    pub(crate) fn of(buffer: &[u8]) -> Lent {
        Lent {
            addr: buffer.as_ptr() as u64,
            len: buffer.len() as u64,
        }
    }
}

/// What a pool offers a worker in its `Welcome`: to lend it large arguments, if it can
/// read the pool's copy of the secret at `secret_at` in process `pid`; and whether the
/// pool read the worker's copy (so the worker may lend it large results).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lending {
    pub(crate) pid: u32,
    pub(crate) secret_at: u64,
    pub(crate) reads_lent: bool,
}

/// A message from a pool to one of its workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// The answer to `Hello`: the parent's identity (the worker checks it runs the same
    /// image), the initializers to run in order (plain ones and worker-state builders),
    /// and the frame limit from now on.
    Welcome {
        image: ImageId,
        probe: i64,
        initializers: Vec<Target>,
        max_frame: u64,
        /// `None` where the pool lends nothing (an MPI node agent's workers).
        lending: Option<Lending>,
    },
    /// Run one job (or one chunk of a `map`); the frame's payload is the encoded argument.
    Run { id: u64, target: Target },
    /// As `Run`, but the encoded argument is lent: the worker reads it once it has
    /// claimed the job.
    RunLent {
        id: u64,
        target: Target,
        argument: Lent,
    },
    /// The pool has read the result the worker lent at `addr`: the worker may reuse it.
    Taken { addr: u64 },
    /// Finish: exit after the current job.
    Shutdown,
}
