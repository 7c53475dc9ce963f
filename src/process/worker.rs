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

/// Buffers from this size up are handed back to the connection for the next large
/// payload rather than kept for small ones.
const LARGE_BUFFER: usize = 1 << 20;

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
    #[cfg(test)]
    if std::env::var_os(fault::STALL_ENV).is_some() {
        std::thread::sleep(std::time::Duration::from_secs(120)); // never handshakes
    }
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
    let Stream::UdSocket(socket) = &stream;
    super::protocol::widen_buffers(socket);
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
    let (proof, initializers) = match conn.recv().map_err(protocol)?.map(|f| f.message) {
        Some(ToWorker::Welcome {
            image,
            probe,
            initializers,
            max_frame,
        }) => {
            let proof = VerifiedParent::verify(&image, probe)?;
            conn.set_max_frame(usize::try_from(max_frame).unwrap_or(usize::MAX));
            (proof, initializers)
        }
        None => return Ok(()), // the pool went away during the handshake
        Some(other) => return Err(format!("expected Welcome, got {other:?}")),
    };
    let mut out = Vec::new();
    for init in initializers {
        if let Outcome::Panicked { message, location } =
            raw::run_shipped(&proof, init, &mut Vec::new(), &mut out)
        {
            conn.send(&FromWorker::InitFailed { message, location })
                .map_err(protocol)?;
            return Ok(());
        }
    }
    conn.send(&FromWorker::Ready).map_err(protocol)?;
    // A small argument is copied here (the read buffer goes on holding the next frames);
    // a large one arrives in a buffer of its own, which the job takes without a copy.
    let mut small = Vec::new();
    loop {
        let Some(frame) = conn.recv().map_err(protocol)? else {
            return Ok(());
        };
        match frame.message {
            ToWorker::Shutdown => return Ok(()),
            ToWorker::Run { id, target } => {
                out.clear();
                let mut input = if frame.payload.is_unique() {
                    Vec::from(frame.payload)
                } else {
                    small.clear();
                    small.extend_from_slice(&frame.payload);
                    drop(frame.payload);
                    std::mem::take(&mut small)
                };
                let outcome = raw::run_shipped(&proof, target, &mut input, &mut out);
                if input.capacity() < LARGE_BUFFER {
                    small = input;
                } else {
                    conn.recycle(input);
                }
                #[cfg(test)]
                if fault::inject(conn.stream_mut()) {
                    continue;
                }
                send_done(&mut conn, id, outcome, &out)?;
                if out.capacity() >= LARGE_BUFFER {
                    // Mapped already: the next large payload is read into it.
                    conn.recycle(std::mem::take(&mut out));
                }
            }
            other @ ToWorker::Welcome { .. } => {
                return Err(format!("unexpected message {other:?}"));
            }
        }
    }
}

/// Sends a job's answer; a result too large for a frame becomes an error for that job.
fn send_done(conn: &mut Conn, id: u64, outcome: Outcome, output: &[u8]) -> Result<(), String> {
    match conn.send_with(&FromWorker::Done { id, outcome }, output) {
        Err(ProtocolError::MessageTooLarge { max, .. }) => {
            let outcome = Outcome::Encode(format!(
                "the result is {} bytes, over the maximum frame size of {max} bytes: \
                 raise ProcessPoolBuilder::max_frame_size or return less per job",
                output.len()
            ));
            conn.send(&FromWorker::Done { id, outcome })
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

/// Fault injection for the crate's own tests (compiled only into the unit-test binary,
/// whose workers are that same binary): a job sets [`fault::NEXT_REPLY`], and the worker
/// answers it with a broken frame instead of its result.
#[cfg(test)]
pub(crate) mod fault {
    use std::io::Write;
    use std::sync::atomic::{AtomicU8, Ordering};

    pub(crate) static NEXT_REPLY: AtomicU8 = AtomicU8::new(NONE);
    pub(crate) const NONE: u8 = 0;
    /// A frame of the right length whose body is not a message.
    pub(crate) const CORRUPT: u8 = 1;
    /// A header promising 1000 bytes, 10 bytes, then the worker exits.
    pub(crate) const TRUNCATED: u8 = 2;
    /// A header claiming a 4 GiB frame.
    pub(crate) const OVERSIZED: u8 = 3;
    /// Set on one worker's command (never on the test process), it makes that worker stall
    /// before connecting.
    pub(crate) const STALL_ENV: &str = "PROCPOOL_TEST_STALL_HANDSHAKE";

    /// Writes the requested broken frame; `true` if it did.
    pub(crate) fn inject(stream: &mut impl Write) -> bool {
        let frame: &[u8] = match NEXT_REPLY.swap(NONE, Ordering::SeqCst) {
            CORRUPT => &[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff],
            TRUNCATED => &[0, 0, 0x03, 0xe8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            OVERSIZED => &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0],
            _ => return false,
        };
        let _ = stream.write_all(frame).and_then(|()| stream.flush());
        if frame[3] == 0xe8 {
            std::process::exit(0); // the rest of the frame never comes
        }
        true
    }
}
