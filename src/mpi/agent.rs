//! A node agent: what every rank but 0 does. It introduces itself to rank 0, then starts,
//! feeds, reads and kills local worker processes (the local backend's, with its handshake,
//! initializers and process groups) as rank 0 asks, and reports what becomes of them. It
//! never decodes a job: the frames rank 0 sends are written to the worker as they are, and
//! what the worker writes goes back as it is. A job that crashes its worker costs that
//! worker only; the agent, and so the rank and the MPI job, live on.

use super::envelope::{
    AgentConfig, AgentHello, Failure, MPI_PROTOCOL_VERSION, ToAgent, ToRoot, Worker,
};
use super::hub::Outbox;
use crate::pool::backend::{Backend, StartError, WorkerLink};
use crate::process::child::{LocalWorker, RawReceived, resident_bytes};
use crate::process::{Launcher, Settings};
use crate::spares::{LARGE, SPARES};
use crate::wire::frame::{HEADER, header_lengths};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_util::sync::CancellationToken;

/// The most bytes read from a worker at a time, but for the rest of a large frame.
const READ: usize = 64 << 10;
/// The most answers held to go together.
const BATCH: u64 = 16;
/// The longest answers are held while more are due.
const HOLD_AT_MOST: Duration = Duration::from_millis(1);
/// Room left after a large answer for the envelope's trailer, so that sealing it does
/// not move it.
const TRAILER_ROOM: usize = 64;
/// How long the agent waits for its workers to go when the pool shuts down.
const LEAVE_WITHIN: Duration = Duration::from_secs(10);

/// What rank 0 asks of one worker's task.
enum Order {
    /// Frames to write, then the last one's large payload (empty if it has none).
    Write(Vec<u8>, Vec<u8>),
    Kill,
}

/// Runs the agent until rank 0 says the pool is gone; returns the process's exit code.
pub(super) fn serve(
    outbox: &Outbox,
    inbound: UnboundedReceiver<Vec<u8>>,
    hello: AgentHello,
) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("procpool: the node agent could not start its runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(agent(outbox, inbound, hello))
}

async fn agent(outbox: &Outbox, mut inbound: UnboundedReceiver<Vec<u8>>, hello: AgentHello) -> i32 {
    outbox.send(0, ToRoot::Hello(Box::new(hello)).encode());
    let config = loop {
        let Some(bytes) = inbound.recv().await else {
            return 1;
        };
        match ToAgent::decode(bytes) {
            Ok(ToAgent::Configure(config)) => break config,
            Ok(ToAgent::Refused(reason)) => {
                eprintln!("procpool: rank 0 refused this rank: {reason}");
                return 1;
            }
            Ok(ToAgent::Shutdown) => return 0,
            Ok(other) => tracing::warn!("a node agent not yet configured was sent {other:?}"),
            Err(e) => tracing::error!("a node agent received a message it cannot read: {e}"),
        }
    };
    let memory_every = config.memory_every;
    let launcher = launcher(config).map(Arc::new);
    let kill = CancellationToken::new();
    let mut workers: HashMap<u32, Feed> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    'serve: while let Some(bytes) = inbound.recv().await {
        match ToAgent::decode(bytes) {
            Ok(ToAgent::Start(worker)) => {
                let (orders, orders_rx) = unbounded_channel();
                let stop = kill.child_token();
                let feed = Feed {
                    generation: worker.generation,
                    orders,
                    stop: stop.clone(),
                };
                workers.insert(worker.slot, feed);
                let task = run_worker(
                    launcher.clone(),
                    worker,
                    stop,
                    orders_rx,
                    outbox.clone(),
                    memory_every,
                );
                tasks.spawn(task);
            }
            Ok(ToAgent::Frames(worker, bytes)) => {
                order(&workers, worker, Order::Write(bytes, Vec::new()));
            }
            Ok(ToAgent::FramesThen(worker, mut frames, announced)) => {
                // Rank 0's next messages, which nothing can come before: the payload, in
                // pieces, each written to the worker while the next one arrives.
                let mut got = 0_u64;
                while got < announced {
                    let Some(piece) = inbound.recv().await else {
                        break 'serve;
                    };
                    got += piece.len() as u64;
                    if piece.is_empty() || got > announced {
                        tracing::error!(
                            "a node agent was announced a payload of {announced} bytes and sent \
                             {got} or more; its worker is stopped"
                        );
                        order(&workers, worker, Order::Kill);
                        break;
                    }
                    // The frames go with the first piece.
                    let frames = std::mem::take(&mut frames);
                    order(&workers, worker, Order::Write(frames, piece));
                }
            }
            Ok(ToAgent::Kill(worker)) => order(&workers, worker, Order::Kill),
            Ok(ToAgent::Shutdown) => break,
            Ok(other) => tracing::warn!("a node agent was sent {other:?} again"),
            Err(e) => tracing::error!("a node agent received a message it cannot read: {e}"),
        }
        // Tasks that ended are reaped as they go.
        while tasks.try_join_next().is_some() {}
    }
    kill.cancel();
    drop(workers); // every task's orders end: each kills its worker
    let left = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(LEAVE_WITHIN, left).await.is_err() {
        eprintln!("procpool: a node agent's workers did not stop within {LEAVE_WITHIN:?}");
    }
    // Rank 0 finalizes MPI only once every agent has said nothing more comes.
    outbox.send(0, ToRoot::Bye.encode());
    0
}

/// How the agent reaches one worker's task.
struct Feed {
    generation: u32,
    orders: UnboundedSender<Order>,
    /// Cancelled by a kill: stops a start in progress.
    stop: CancellationToken,
}

/// Hands `order` to `worker`'s task, if it is still the slot's current worker; a kill
/// also stops its start, if it is starting.
fn order(workers: &HashMap<u32, Feed>, worker: Worker, order: Order) {
    if let Some(feed) = workers.get(&worker.slot)
        && feed.generation == worker.generation
    {
        if let Order::Kill = order {
            feed.stop.cancel();
        }
        let _ = feed.orders.send(order);
    }
}

/// The local backend, with the pool's settings.
fn launcher(config: AgentConfig) -> Result<Launcher, String> {
    Launcher::new(Settings {
        initializers: config.initializers,
        handshake_timeout: config.handshake_timeout,
        max_frame: usize::try_from(config.max_frame).unwrap_or(usize::MAX),
        // The workers' frames cross MPI as they are: nothing may refer to their memory.
        lend: false,
        #[cfg(test)]
        stall_handshake: false,
        #[cfg(test)]
        lent: None,
    })
    .map_err(|e| e.to_string())
}

/// Starts a worker for `worker`'s slot, then carries bytes both ways until it ends or is
/// killed, and says how it ended.
async fn run_worker(
    launcher: Result<Arc<Launcher>, String>,
    worker: Worker,
    kill: CancellationToken,
    mut orders: UnboundedReceiver<Order>,
    outbox: Outbox,
    memory_every: Option<Duration>,
) {
    let say = |message: ToRoot| {
        outbox.send(0, message.encode());
    };
    let started = match &launcher {
        Ok(launcher) => launcher.start(worker.slot as usize, &kill).await,
        Err(e) => Err(StartError::Fatal(format!(
            "a node agent cannot start workers: {e}"
        ))),
    };
    let mut link: LocalWorker = match started {
        Ok(link) => link,
        Err(error) => {
            let (failure, text) = Failure::of(error);
            say(ToRoot::StartFailed(worker, failure, text));
            return;
        }
    };
    let pid = link.pid().unwrap_or(0);
    say(ToRoot::Started(worker, pid));
    let mut memory = memory_every.map(tokio::time::interval);
    let mut closed = false;
    // What the worker wrote, handed on whenever it ends with a whole frame: a large
    // answer crosses MPI in one message, into one buffer, that the pool decodes in place.
    // Answers that follow each other closely go together (as the local pool completes
    // the answers that arrive together in one pass): held while more are due, up to
    // `BATCH` frames or `HOLD_AT_MOST`.
    let mut pending = Vec::new();
    let mut read = Cut::default();
    let mut written = Cut::default();
    let mut handed_on = 0_u64;
    // The last job whose answer was handed on: a worker that dies leaves the answers it
    // held back in its journal, and those after it are handed on before its end.
    let mut answered = None;
    let mut flush_at: Option<tokio::time::Instant> = None;
    let exit = loop {
        let memory_tick = async {
            match &mut memory {
                Some(interval) => interval.tick().await,
                None => std::future::pending().await,
            }
        };
        let held = async {
            match flush_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let hand_on = |pending: &mut Vec<u8>,
                       handed_on: &mut u64,
                       frames: u64,
                       answered: &mut Option<u64>| {
            if !pending.is_empty() {
                *answered = last_answer(pending).or(*answered);
                say(ToRoot::Bytes(worker, std::mem::take(pending)));
            }
            *handed_on = frames;
        };
        tokio::select! {
            order = orders.recv() => match order {
                // A write fails only once the worker is gone, which its exit says next.
                Some(Order::Write(frames, payload)) => {
                    written.feed(&frames);
                    written.feed(&payload);
                    let payload = bytes::Bytes::from(payload);
                    let _ = link.send(&frames, &payload).await;
                    SPARES.keep(frames);
                    crate::spares::recycle(payload);
                }
                Some(Order::Kill) | None => break link.kill().await,
            },
            received = next_from(&mut link, closed, &mut pending, read.next_read()) => match received {
                RawReceived::Bytes(n) => {
                    read.feed(&pending[pending.len() - n..]);
                    if read.at_boundary() {
                        let due = written.frames > read.frames;
                        if !due || read.frames - handed_on >= BATCH || pending.len() >= READ {
                            hand_on(&mut pending, &mut handed_on, read.frames, &mut answered);
                            flush_at = None;
                        } else if flush_at.is_none() {
                            flush_at = Some(tokio::time::Instant::now() + HOLD_AT_MOST);
                        }
                    }
                }
                RawReceived::Closed => {
                    salvage(&link, &mut pending, answered);
                    hand_on(&mut pending, &mut handed_on, read.frames, &mut answered);
                    closed = true;
                    say(ToRoot::Closed(worker));
                }
                RawReceived::Exited(exit) => {
                    if !closed {
                        salvage(&link, &mut pending, answered);
                    }
                    hand_on(&mut pending, &mut handed_on, read.frames, &mut answered);
                    break exit;
                }
            },
            // Only at a frame boundary: what is handed on must end with a whole frame.
            () = held, if read.at_boundary() => {
                hand_on(&mut pending, &mut handed_on, read.frames, &mut answered);
                flush_at = None;
            }
            _ = memory_tick => {
                if let Some(bytes) = resident_bytes(pid) {
                    say(ToRoot::Memory(worker, pid, bytes));
                }
            }
        }
    };
    say(ToRoot::Exited(worker, exit.code(), exit.signal()));
}

/// The job of the last answer in `bytes`, which begin with a frame.
fn last_answer(bytes: &[u8]) -> Option<u64> {
    let (_, message) = crate::wire::headers::whole_frames(bytes).last()?;
    crate::wire::headers::answer_id(message)
}

/// At the end of a worker's link, makes `pending` what rank 0 must still read: the whole
/// frames the worker wrote (a frame it died writing is dropped: if it held that answer
/// back, its journal has it), then the answers it held back and never wrote, after
/// job `answered`, the last one handed on. As the local pool reads a dead worker's link.
fn salvage(link: &LocalWorker, pending: &mut Vec<u8>, answered: Option<u64>) {
    let whole = crate::wire::headers::whole_frames(pending)
        .map(|(frame, _)| frame.len())
        .sum();
    if whole < pending.len() {
        tracing::debug!(
            bytes = pending.len() - whole,
            "dropped the frame a worker died writing"
        );
        pending.truncate(whole);
    }
    let answered = last_answer(pending).or(answered);
    let held = link.held_answers_after(answered, pending);
    if held > 0 {
        tracing::debug!(
            answers = held,
            "handing on the answers a worker held back when it ended"
        );
    }
}

/// What the worker wrote next, appended to `pending`; once its link closed, only its
/// exit.
async fn next_from(
    link: &mut LocalWorker,
    closed: bool,
    pending: &mut Vec<u8>,
    most: usize,
) -> RawReceived {
    if closed {
        RawReceived::Exited(link.exited().await)
    } else {
        // The rest of a large frame goes into a kept buffer, with room for the trailer.
        if most >= LARGE {
            SPARES.reserve(pending, most + TRAILER_ROOM);
        }
        link.recv_bytes(pending, most).await
    }
}

/// Where the frames end in the bytes a worker writes (each an 8-byte header whose first
/// four bytes, big-endian, count the bytes after it; see `crate::wire::frame`), so that
/// a large frame is read whole before it is handed on.
#[derive(Debug, Default)]
struct Cut {
    /// Bytes of the current frame still to come, after its header.
    left: usize,
    /// The part of the next header read so far.
    head: Vec<u8>,
    /// Whole frames taken in.
    frames: u64,
}

impl Cut {
    /// Takes in the next bytes of the stream.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.left > 0 {
                let taken = self.left.min(bytes.len());
                self.left -= taken;
                bytes = &bytes[taken..];
                if self.left == 0 {
                    self.frames += 1;
                }
                continue;
            }
            let taken = (HEADER - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..taken]);
            bytes = &bytes[taken..];
            if let Some(head) = self.head.first_chunk::<HEADER>() {
                self.left = header_lengths(head).0;
                self.head.clear();
                if self.left == 0 {
                    self.frames += 1;
                }
            }
        }
    }

    /// Whether the bytes taken in end with a whole frame.
    fn at_boundary(&self) -> bool {
        self.left == 0 && self.head.is_empty()
    }

    /// How much to read next: the rest of the current frame if it is large.
    fn next_read(&self) -> usize {
        self.left.max(READ)
    }
}

/// Who this agent is, for its hello.
pub(super) fn hello() -> AgentHello {
    AgentHello {
        version: MPI_PROTOCOL_VERSION,
        build_id: crate::ship::build_id::current().ok().flatten(),
        probe: crate::ship::probe_offset(),
        host: host_name(),
        pid: std::process::id(),
        exe: std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
    }
}

/// This machine's name (`/proc/sys/kernel/hostname`, or `HOSTNAME`).
pub(super) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "an unknown host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: usize) -> Vec<u8> {
        let mut bytes = (body as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 1]);
        bytes.resize(8 + body, 7);
        bytes
    }

    #[test]
    fn frames_are_cut_where_they_end_however_the_bytes_arrive() {
        let stream: Vec<u8> = [frame(3), frame(0), frame(200_000), frame(5)].concat();
        for step in [1, 7, 8, 9, 4096, 1 << 20] {
            let mut cut = Cut::default();
            let mut boundaries = Vec::new();
            for (i, chunk) in stream.chunks(step).enumerate() {
                cut.feed(chunk);
                if cut.at_boundary() {
                    boundaries.push((i + 1) * step.min(stream.len()));
                }
            }
            let ends = [11, 19, 200_027, 200_040];
            for b in &boundaries {
                let b = (*b).min(stream.len());
                assert!(
                    ends.contains(&b),
                    "step {step}: a cut at {b} inside a frame"
                );
            }
            assert!(cut.at_boundary(), "step {step}");
            assert_eq!(cut.frames, 4, "step {step}");
        }
        let mut cut = Cut::default();
        cut.feed(&frame(200_000)[..100]);
        assert_eq!(
            cut.next_read(),
            200_008 - 100,
            "the rest of a large frame at once"
        );
    }
}
