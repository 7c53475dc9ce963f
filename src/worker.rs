//! The worker loop: what a worker runs instead of the program's `main`, over any blocking
//! link to its pool (the local backend gives it a Unix socket). It is plain blocking code
//! with no runtime: introduce itself, check the parent's image, run the initializers, then
//! answer jobs one at a time until the pool says `Shutdown` or closes the link.

use crate::run::Outcome;
use crate::ship::{self, ImageId, VerifiedParent};
use crate::wire::blocking::BlockingConn;
use crate::wire::claims::claim;
use crate::wire::frame::{LEND_FROM, ProtocolError};
use crate::wire::message::{
    FromWorker, Hello, Lending, Lent, PROTOCOL_VERSION, SECRET_LEN, ToWorker,
};
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
        secret_at: me.secret.as_ptr() as u64,
    })))
    .map_err(protocol)?;
    let (proof, initializers, lending) = match conn.recv().map_err(protocol)?.map(|f| f.message) {
        Some(ToWorker::Welcome {
            image,
            probe,
            initializers,
            max_frame,
            lending,
        }) => {
            let proof = VerifiedParent::verify(&image, probe)?;
            conn.set_max_frame(usize::try_from(max_frame).unwrap_or(usize::MAX));
            (proof, initializers, Lends::agreed(lending, me))
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
    conn.send(&FromWorker::Ready {
        reads_lent: lending.pool.is_some(),
    })
    .map_err(protocol)?;
    // The large results lent to the pool and not taken yet, and whether the pool has
    // said `Shutdown` (the worker then waits for them to be taken).
    let mut lent: Vec<Vec<u8>> = Vec::new();
    let mut leaving = false;
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
        let (id, target, argument) = match frame.message {
            ToWorker::Shutdown if lent.is_empty() => return flush(outbox),
            ToWorker::Shutdown => {
                flush(outbox)?;
                leaving = true;
                continue;
            }
            ToWorker::Taken { addr } => {
                let Some(at) = lent.iter().position(|b| b.as_ptr() as u64 == addr) else {
                    return Err(format!(
                        "the pool took back a result never lent ({addr:#x})"
                    ));
                };
                let buffer = lent.swap_remove(at);
                conn.recycle(buffer);
                if leaving && lent.is_empty() {
                    return Ok(());
                }
                continue;
            }
            ToWorker::Run { id, target } => (id, target, None),
            ToWorker::RunLent {
                id,
                target,
                argument,
            } => (id, target, Some(argument)),
            other @ ToWorker::Welcome { .. } => {
                return Err(format!("unexpected message {other:?}"));
            }
        };
        if let Some(word) = claims
            && !claim(word, id)
        {
            // Taken back while it waited here: it runs elsewhere.
            send_done(conn, outbox, id, Outcome::Revoked, &[])?;
            continue;
        }
        out.clear();
        let mut input = if let Some(argument) = argument {
            // Claimed: the pool holds the argument until this job is answered.
            lending.read_argument(conn, argument)?
        } else if frame.payload.is_unique() {
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
        if lending.results && out.len() >= LEND_FROM && out.len() <= conn.max_frame() {
            // Written at once, never held: a held answer outlives a dead worker in
            // its journal, but what it lent dies with it.
            let result = Lent::of(&out);
            let done = FromWorker::DoneLent {
                id,
                outcome,
                result,
            };
            match outbox {
                Some(outbox) => conn.send_through(outbox, &done, &[], false),
                None => conn.send(&done),
            }
            .map_err(protocol)?;
            lent.push(std::mem::take(&mut out));
            continue;
        }
        send_done(conn, outbox, id, outcome, &out)?;
        if out.capacity() >= LARGE_BUFFER {
            // Mapped already: the next large payload is read into it.
            conn.recycle(std::mem::take(&mut out));
        }
    }
}

/// What the handshake agreed on lending (see [`crate::wire::message::Lent`]).
struct Lends {
    /// The pool's process, if the worker reads what it lends (its arguments).
    pool: Option<u32>,
    /// Whether the pool reads the results the worker lends.
    results: bool,
}

impl Lends {
    /// What the pool offered, once the worker has read the pool's secret where the pool
    /// said it is.
    fn agreed(offer: Option<Lending>, me: &Identity) -> Lends {
        let Some(offer) = offer else {
            return Lends {
                pool: None,
                results: false,
            };
        };
        let mut read = Vec::new();
        let reads =
            crate::sys::remote::read_lent(offer.pid, offer.secret_at, SECRET_LEN, &mut read)
                .is_ok()
                && read == me.secret;
        Lends {
            pool: reads.then_some(offer.pid),
            results: offer.reads_lent,
        }
    }

    /// Reads a lent argument out of the pool's memory.
    fn read_argument<S: Read + Write>(
        &self,
        conn: &mut Conn<S>,
        argument: Lent,
    ) -> Result<Vec<u8>, String> {
        let (Some(pool), Ok(len)) = (self.pool, usize::try_from(argument.len)) else {
            return Err("the pool lent an argument this worker cannot read".into());
        };
        if len > conn.max_frame() {
            return Err(format!(
                "the pool lent an argument of {len} bytes, past the frame limit"
            ));
        }
        let mut input = conn.buffer_for(len);
        crate::sys::remote::read_lent(pool, argument.addr, len, &mut input).map_err(|e| {
            format!("cannot read a lent argument of {len} bytes from the pool: {e}")
        })?;
        Ok(input)
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
            Some(outbox) => conn.send_through(outbox, &done, output, true),
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
