//! A node agent: what every rank but 0 does. It introduces itself to rank 0, then starts,
//! feeds, reads and kills local worker processes (the local backend's, with its handshake,
//! initializers and process groups) as rank 0 asks, and reports what becomes of them. It
//! never decodes a job: the frames rank 0 sends are written to the worker as they are, and
//! what the worker writes goes back as it is. A job that crashes its worker costs that
//! worker only; the agent, and so the rank and the MPI job, live on.

use super::envelope::{
    AgentConfig, AgentHello, Failure, MPI_PROTOCOL_VERSION, ToAgent, ToRoot, Worker,
};
use super::hub::{Outbox, PIECE, piece_tag};
use crate::pool::backend::{Backend, StartError, WorkerLink};
use crate::process::child::{LocalWorker, RawReceived, resident_bytes};
use crate::process::{Launcher, Settings};
use crate::spares::{LARGE, SPARES};
use crate::wire::frame::{DIRECT_PAYLOAD, HEADER, header_lengths};
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
        initializer_timeout: config.initializer_timeout,
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
    // What the worker wrote, handed on whenever it ends with a whole frame, or with the
    // message of a large one, whose payload is then handed on in pieces as it is read
    // (see `Streaming`). Answers that follow each other closely go together (as the local
    // pool completes the answers that arrive together in one pass): held while more are
    // due, up to `BATCH` frames or `HOLD_AT_MOST`.
    let mut pending = Vec::new();
    let tag = piece_tag(worker.slot);
    let mut streaming: Option<Streaming> = None;
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
            received = async {
                match &mut streaming {
                    Some(stream) => stream.read_from(&mut link).await,
                    None => next_from(&mut link, closed, &mut pending, read.next_read(tag.is_some())).await,
                }
            } => match received {
                RawReceived::Bytes(n) if streaming.is_some() => {
                    if let Some(stream) = &mut streaming
                        && stream.took(n, &mut read, &outbox)
                    {
                        answered = stream.answer.or(answered);
                        handed_on = read.frames;
                        streaming = None;
                    }
                }
                RawReceived::Bytes(n) => {
                    read.feed(&pending[pending.len() - n..]);
                    if let Some(tag) = tag
                        && let Some(stream) = Streaming::begin(&read, &mut pending, worker, tag, &outbox)
                    {
                        // What came before the payload went on, the large frame's head last.
                        answered = stream.before.or(answered);
                        handed_on = read.frames;
                        flush_at = None;
                        streaming = Some(stream);
                    } else if read.at_boundary() {
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
                    cut_short(&mut streaming, &outbox);
                    salvage(&link, &mut pending, answered);
                    hand_on(&mut pending, &mut handed_on, read.frames, &mut answered);
                    closed = true;
                    say(ToRoot::Closed(worker));
                }
                RawReceived::Exited(exit) => {
                    cut_short(&mut streaming, &outbox);
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
    cut_short(&mut streaming, &outbox);
    say(ToRoot::Exited(worker, exit.code(), exit.signal()));
}

/// The payload of a large answer, handed on to rank 0 in pieces of at most [`PIECE`]
/// bytes as it is read from the worker, each while the next is read, rather than read
/// whole first: rank 0 receives the pieces into one buffer of the payload's size (see
/// `hub`), which becomes the caller's value without a copy.
struct Streaming {
    /// The pieces' tag: the worker's.
    tag: i32,
    /// The payload's bytes still to be read from the worker.
    left: usize,
    /// The next piece, as it fills.
    piece: Vec<u8>,
    /// The job whose answer the payload is.
    answer: Option<u64>,
    /// The job of the last whole answer handed on before it.
    before: Option<u64>,
}

impl Streaming {
    /// If what the worker wrote ends inside the payload of a large frame whose message
    /// it holds whole: hands on what comes before the payload ([`ToRoot::BytesThen`]),
    /// and returns the payload's stream, whose first piece begins with the payload's
    /// bytes read so far.
    fn begin(
        read: &Cut,
        pending: &mut Vec<u8>,
        worker: Worker,
        tag: i32,
        outbox: &Outbox,
    ) -> Option<Streaming> {
        let (taken, left) = read.payload_begun()?;
        let head = pending.len().checked_sub(taken)?;
        let message = head.checked_sub(read.message_len)?;
        let answer = crate::wire::headers::answer_id(&pending[message..head]);
        let mut piece = SPARES.empty(PIECE.min(taken + left));
        piece.extend_from_slice(&pending[head..]);
        pending.truncate(head);
        let before = last_answer(pending);
        let head = ToRoot::BytesThen(worker, std::mem::take(pending), (taken + left) as u64);
        outbox.send(0, head.encode());
        Some(Streaming {
            tag,
            left,
            piece,
            answer,
            before,
        })
    }

    /// Reads the next bytes of the payload into the piece.
    async fn read_from(&mut self, link: &mut LocalWorker) -> RawReceived {
        let most = self.left.min(PIECE.saturating_sub(self.piece.len()));
        link.recv_bytes(&mut self.piece, most).await
    }

    /// Takes in the `n` bytes just read into the piece, and hands the piece on if it is
    /// full or the payload whole; `true` once it is.
    fn took(&mut self, n: usize, read: &mut Cut, outbox: &Outbox) -> bool {
        read.feed(&self.piece[self.piece.len() - n..]);
        self.left -= n;
        if self.piece.len() >= PIECE || self.left == 0 {
            let next = if self.left == 0 {
                Vec::new()
            } else {
                SPARES.empty(PIECE.min(self.left))
            };
            outbox.send_piece(0, self.tag, std::mem::replace(&mut self.piece, next));
        }
        self.left == 0
    }
}

/// Tells rank 0 that the payload being handed on, if one is, ends here (an empty piece):
/// its worker died writing it, and rank 0 drops the frame it began.
fn cut_short(streaming: &mut Option<Streaming>, outbox: &Outbox) {
    if let Some(stream) = streaming.take() {
        tracing::debug!(
            missing = stream.left,
            "a worker died writing a large answer; rank 0 drops it"
        );
        outbox.send_piece(0, stream.tag, Vec::new());
    }
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
    /// The current frame's lengths, from its header: the bytes after the header, and its
    /// message's.
    frame_len: usize,
    message_len: usize,
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
                (self.frame_len, self.message_len) = header_lengths(head);
                self.left = self.frame_len;
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

    /// How much to read next: the rest of the current frame if it is large, or only the
    /// rest of its message if its payload is to be handed on apart (`streams`).
    fn next_read(&self, streams: bool) -> usize {
        let taken = self.frame_len - self.left;
        if streams && self.left > 0 && self.frame_len >= DIRECT_PAYLOAD && taken < self.message_len
        {
            return self.message_len - taken;
        }
        self.left.max(READ)
    }

    /// If the current frame is large enough for rank 0 to gather its payload apart, and
    /// its message has been taken in whole: how many bytes of its payload were taken in,
    /// and how many are still to come.
    fn payload_begun(&self) -> Option<(usize, usize)> {
        let taken = self.frame_len - self.left;
        (self.left > 0 && self.frame_len >= DIRECT_PAYLOAD && taken >= self.message_len)
            .then(|| (taken - self.message_len, self.left))
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

    /// A frame of `message` message bytes and `payload` payload bytes.
    fn frame_of(message: usize, payload: usize) -> Vec<u8> {
        let mut bytes = ((message + payload) as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&(message as u32).to_be_bytes());
        bytes.resize(8 + message + payload, 7);
        bytes
    }

    #[test]
    fn a_large_frames_payload_is_begun_once_its_message_is_whole() {
        let large = frame_of(20, DIRECT_PAYLOAD);
        let mut cut = Cut::default();
        cut.feed(&frame_of(3, 2));
        cut.feed(&large[..8 + 5]);
        assert_eq!(cut.payload_begun(), None, "its message is not whole");
        assert_eq!(cut.next_read(true), 15, "only the rest of its message");
        assert_eq!(
            cut.next_read(false),
            20 + DIRECT_PAYLOAD - 5,
            "the rest of it"
        );
        cut.feed(&large[8 + 5..8 + 20]);
        assert_eq!(cut.payload_begun(), Some((0, DIRECT_PAYLOAD)));
        cut.feed(&large[8 + 20..8 + 20 + 100]);
        assert_eq!(cut.payload_begun(), Some((100, DIRECT_PAYLOAD - 100)));
        cut.feed(&large[8 + 20 + 100..]);
        assert_eq!(cut.payload_begun(), None, "the frame is whole");
        assert_eq!(cut.frames, 2);
        // A smaller frame is read whole, however its bytes come.
        let mut cut = Cut::default();
        let small = frame_of(20, DIRECT_PAYLOAD - 21);
        cut.feed(&small[..100]);
        assert_eq!(cut.payload_begun(), None);
        assert_eq!(cut.next_read(true), small.len() - 100);
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
            cut.next_read(false),
            200_008 - 100,
            "the rest of a large frame at once"
        );
    }
}
