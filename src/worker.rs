//! The worker loop: what a worker runs instead of the program's `main`, over any blocking
//! link to its pool (the local backend gives it a Unix socket). It is plain blocking code
//! with no runtime: introduce itself, check the parent's image, run the initializers, then
//! answer jobs one at a time until the pool says `Shutdown` or closes the link.

use crate::run::Outcome;
use crate::ship::{self, ImageId, VerifiedParent};
use crate::wire::blocking::BlockingConn;
use crate::wire::claims::claim;
use crate::wire::frame::ProtocolError;
use crate::wire::message::{FromWorker, Hello, PROTOCOL_VERSION, SECRET_LEN, ToWorker};
use crate::wire::outbox::Outbox;
use std::io::{Read, Write};
use std::sync::atomic::AtomicU64;

/// The worker's end of a link.
pub(crate) type Conn<S> = BlockingConn<S, ToWorker, FromWorker>;

/// Buffers from this size up are handed back to the connection for the next large
/// payload rather than kept for small ones.
const LARGE_BUFFER: usize = 1 << 20;

/// What a worker says of itself in its `Hello`: which start of the pool it answers, and
/// the secret that proves the pool started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) worker_id: u64,
    pub(crate) secret: [u8; SECRET_LEN],
}

/// Serves the pool at the other end of `conn` until it sends `Shutdown` or closes the link
/// (both `Ok`); `Err` says why the worker could not go on. With `claims`, the word it
/// shares with the pool, it claims each job before running it and skips those the pool
/// took back (see [`crate::wire::claims`]). With `outbox`, answers are held back while
/// the next job is here already (see [`crate::wire::outbox`]).
pub(crate) fn serve<S: Read + Write>(
    conn: &mut Conn<S>,
    me: &Identity,
    claims: Option<&AtomicU64>,
    outbox: Option<&Outbox>,
) -> Result<(), String> {
    let protocol = |e: ProtocolError| crate::error::report(&e);
    conn.send(&FromWorker::Hello(Box::new(Hello {
        version: PROTOCOL_VERSION,
        worker_id: me.worker_id,
        pid: std::process::id(),
        secret: me.secret,
        image: ImageId::current().map_err(|e| e.to_string())?,
        probe: ship::probe_offset(),
        claims: claims.is_some(),
    })))
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
        if let Outcome::Panicked {
            message, location, ..
        } = ship::run_shipped(&proof, init, &mut Vec::new(), &mut out)
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
    let flush = |outbox: Option<&Outbox>| match outbox {
        Some(outbox) => outbox.flush().map_err(|e| protocol(ProtocolError::Io(e))),
        None => Ok(()),
    };
    loop {
        if !conn.next_is_here() {
            flush(outbox)?; // about to wait for input: nothing is held meanwhile
        }
        let Some(frame) = conn.recv().map_err(protocol)? else {
            return Ok(());
        };
        match frame.message {
            ToWorker::Shutdown => return flush(outbox),
            ToWorker::Run { id, target } => {
                if let Some(word) = claims
                    && !claim(word, id)
                {
                    // Taken back while it waited here: it runs elsewhere.
                    send_done(conn, outbox, id, Outcome::Revoked, &[])?;
                    continue;
                }
                out.clear();
                let mut input = if frame.payload.is_unique() {
                    Vec::from(frame.payload)
                } else {
                    small.clear();
                    small.extend_from_slice(&frame.payload);
                    drop(frame.payload);
                    std::mem::take(&mut small)
                };
                let outcome = ship::run_shipped(&proof, target, &mut input, &mut out);
                if input.capacity() < LARGE_BUFFER {
                    small = input;
                } else {
                    conn.recycle(input);
                }
                #[cfg(test)]
                if flush(outbox).is_ok() && fault::inject(conn.stream_mut()) {
                    continue;
                }
                send_done(conn, outbox, id, outcome, &out)?;
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
fn send_done<S: Read + Write>(
    conn: &mut Conn<S>,
    outbox: Option<&Outbox>,
    id: u64,
    outcome: Outcome,
    output: &[u8],
) -> Result<(), String> {
    let mut send = |outcome, output: &[u8]| {
        let done = FromWorker::Done { id, outcome };
        match outbox {
            Some(outbox) => conn.send_through(outbox, &done, output),
            None => conn.send_with(&done, output),
        }
    };
    match send(outcome, output) {
        Err(ProtocolError::MessageTooLarge { size, max }) => {
            let outcome = Outcome::TooLarge {
                size: size as u64,
                max: max as u64,
            };
            send(outcome, &[]).map_err(|e| crate::error::report(&e))
        }
        other => other.map_err(|e| crate::error::report(&e)),
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
    /// A frame of the right length whose message is not a message.
    pub(crate) const CORRUPT: u8 = 1;
    /// A header promising 1000 bytes, 10 bytes, then the worker exits.
    pub(crate) const TRUNCATED: u8 = 2;
    /// A header claiming a 4 GiB frame.
    pub(crate) const OVERSIZED: u8 = 3;
    /// A header whose message is longer than its frame.
    pub(crate) const MESSAGE_OVERRUN: u8 = 4;
    /// Set on one worker's command (never on the test process), it makes that worker stall
    /// before connecting.
    pub(crate) const STALL_ENV: &str = "PROCPOOL_TEST_STALL_HANDSHAKE";

    /// Writes the requested broken frame; `true` if it did.
    pub(crate) fn inject(stream: &mut impl Write) -> bool {
        let frame: &[u8] = match NEXT_REPLY.swap(NONE, Ordering::SeqCst) {
            CORRUPT => &[0, 0, 0, 4, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff],
            TRUNCATED => &[0, 0, 0x03, 0xe8, 0, 0, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            OVERSIZED => &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0],
            MESSAGE_OVERRUN => &[0, 0, 0, 4, 0, 0, 0, 9, 1, 2, 3, 4],
            _ => return false,
        };
        let _ = stream.write_all(frame).and_then(|()| stream.flush());
        if frame[3] == 0xe8 {
            std::process::exit(0); // the rest of the frame never comes
        }
        true
    }
}
