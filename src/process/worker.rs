//! The worker loop: what a child process runs instead of the program's `main`. It is plain
//! blocking code (no runtime): connect, handshake, run the initializer, then answer jobs
//! one at a time until the pool says `Shutdown` or closes the connection.

use super::entry::Spec;
use super::protocol::{
    BlockingConn, FromWorker, HANDSHAKE_MAX_FRAME, PROTOCOL_VERSION, ProtocolError, ToWorker,
};
use crate::job::{ImageId, Outcome};
use crate::raw::{self, VerifiedParent};
use interprocess::local_socket::{GenericFilePath, Stream, ToFsName, traits::Stream as _};

type Conn = BlockingConn<Stream, ToWorker, FromWorker>;

/// Exit code of a worker that found its parent gone at start.
const EXIT_ORPHANED: i32 = 3;
/// Exit code of a worker that could not talk to its pool.
const EXIT_PROTOCOL: i32 = 70;

/// Runs the worker loop and exits the process; never returns to the caller.
pub(crate) fn run(spec: Spec) -> ! {
    raw::ignore_sigpipe();
    if !raw::die_with_parent(spec.parent_pid) {
        std::process::exit(EXIT_ORPHANED);
    }
    crate::job::install_worker_panic_hook();
    let code = match serve(&spec) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("procpool worker {}: {e}", std::process::id());
            EXIT_PROTOCOL
        }
    };
    std::process::exit(code)
}

fn connect(spec: &Spec) -> Result<Conn, String> {
    let name = spec
        .socket
        .as_path()
        .to_fs_name::<GenericFilePath>()
        .map_err(|e| format!("bad socket path {}: {e}", spec.socket.display()))?;
    let stream = Stream::connect(name).map_err(|e| {
        format!(
            "cannot connect to the pool at {}: {e}",
            spec.socket.display()
        )
    })?;
    Ok(BlockingConn::new(stream, HANDSHAKE_MAX_FRAME))
}

fn serve(spec: &Spec) -> Result<(), String> {
    let mut conn = connect(spec)?;
    let protocol = |e: ProtocolError| e.to_string();
    conn.send(&FromWorker::Hello {
        version: PROTOCOL_VERSION,
        worker_id: spec.worker_id,
        pid: std::process::id(),
        secret: spec.secret,
        image: ImageId::current()?,
        probe: raw::probe_offset(),
    })
    .map_err(protocol)?;
    let (proof, initializer) = match conn.recv().map_err(protocol)? {
        Some(ToWorker::Welcome {
            image,
            probe,
            initializer,
            max_frame,
        }) => {
            let proof = VerifiedParent::verify(&image, probe)?;
            conn.set_max_frame(usize::try_from(max_frame).unwrap_or(usize::MAX));
            (proof, initializer)
        }
        None => return Ok(()), // the pool went away during the handshake
        Some(other) => return Err(format!("expected Welcome, got {other:?}")),
    };
    let mut out = Vec::new();
    let init_outcome = initializer.map(|init| raw::run_shipped(&proof, init, &[], &mut out));
    if let Some(Outcome::Panicked { message, location }) = init_outcome {
        conn.send(&FromWorker::InitFailed { message, location })
            .map_err(protocol)?;
        return Ok(());
    }
    conn.send(&FromWorker::Ready).map_err(protocol)?;
    loop {
        match conn.recv().map_err(protocol)? {
            None | Some(ToWorker::Shutdown) => return Ok(()),
            Some(ToWorker::Run { id, target, input }) => {
                out.clear();
                let outcome = raw::run_shipped(&proof, target, &input, &mut out);
                drop(input);
                send_done(&mut conn, id, outcome, std::mem::take(&mut out))?;
            }
            Some(other @ ToWorker::Welcome { .. }) => {
                return Err(format!("unexpected message {other:?}"));
            }
        }
    }
}

/// Sends a job's answer; a result too large for a frame becomes an error for that job.
fn send_done(conn: &mut Conn, id: u64, outcome: Outcome, output: Vec<u8>) -> Result<(), String> {
    let size = output.len();
    match conn.send(&FromWorker::Done {
        id,
        outcome,
        output,
    }) {
        Err(ProtocolError::MessageTooLarge { max, .. }) => {
            let outcome = Outcome::Encode(format!(
                "the result is {size} bytes, over the maximum frame size of {max} bytes: \
                 raise ProcessPoolBuilder::max_frame_size or return less per job"
            ));
            conn.send(&FromWorker::Done {
                id,
                outcome,
                output: Vec::new(),
            })
            .map_err(|e| e.to_string())
        }
        other => other.map_err(|e| e.to_string()),
    }
}

/// Called when a worker process reached `main` and tried to build a pool: tells the parent
/// why this worker will never answer, so that its error names the fix.
pub(crate) fn report_hook_missing(spec: &Spec) {
    if let Ok(mut conn) = connect(spec) {
        let _ = conn.send(&FromWorker::HookMissing {
            worker_id: spec.worker_id,
            secret: spec.secret,
        });
    }
}
