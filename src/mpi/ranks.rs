//! Rank 0's side: [`Ranks`], the [`Backend`] whose workers are the child processes of node
//! agents, and [`RankLink`], the [`WorkerLink`] to one of them.
//!
//! The supervision core runs on rank 0 as it does for a local pool, one slot per worker of
//! every agent. A link's frames travel to the agent in MPI messages and are written to the
//! worker as they are; what the worker writes comes back the same way and is decoded here.
//! So timeouts, cancellation, recycling, memory ceilings, retries and the worker's exit
//! are the core's business, as on one machine; the agent only starts, feeds, reads and
//! kills processes. The payload of a large answer comes apart from the frame that carries
//! it, received straight into a buffer of its own (see `hub`), and becomes the frame's
//! payload, then the caller's value, without a copy.

use super::envelope::{Failure, ToAgent, ToRoot, Worker};
use super::hub::{Outbox, PayloadEnd};
use crate::exit::{ExitInfo, WorkerId};
use crate::pool::backend::{Backend, Caps, Received, StartError, WorkerLink};
use crate::spares::LARGE;
use crate::wire::frame::Codec;
use crate::wire::message::FromWorker;
use bytes::BytesMut;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

/// How long rank 0 waits for the agents to leave when the pool stops (an agent gives its
/// workers 10 s).
const LEAVE_WITHIN: Duration = Duration::from_secs(15);

/// What an agent said of one worker.
#[derive(Debug)]
enum Said {
    Started(u32),
    StartFailed(Failure, String),
    Bytes(Vec<u8>),
    /// How the payload of the large frame the last bytes began ended.
    Payload(PayloadEnd),
    Closed,
    Exited(Option<i32>, Option<i32>),
}

/// Where rank 0's hub delivers what agents say of their workers: the channel of the
/// worker's current link, and the memory each worker reported last.
#[derive(Debug, Default)]
pub(super) struct Routes {
    links: Mutex<HashMap<u32, (u32, UnboundedSender<Said>)>>,
    /// By slot: the rank, pid and resident bytes its worker reported last.
    memory: Mutex<HashMap<u32, (u32, u32, u64)>>,
    /// How many agents have left.
    byes: (Mutex<usize>, Condvar),
}

impl Routes {
    /// Hands a message from `rank` to the link it concerns. A message of a worker that a
    /// newer one replaced is dropped.
    pub(super) fn deliver(&self, rank: i32, message: ToRoot) {
        let (worker, said) = match message {
            ToRoot::Started(w, pid) => (w, Said::Started(pid)),
            ToRoot::StartFailed(w, failure, text) => (w, Said::StartFailed(failure, text)),
            // What a `BytesThen` announces is the hub's to await (see the router).
            ToRoot::Bytes(w, bytes) | ToRoot::BytesThen(w, bytes, _) => (w, Said::Bytes(bytes)),
            ToRoot::Closed(w) => (w, Said::Closed),
            ToRoot::Exited(w, code, signal) => (w, Said::Exited(code, signal)),
            ToRoot::Memory(w, pid, bytes) => {
                let rank = u32::try_from(rank).unwrap_or(u32::MAX);
                let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
                memory.insert(w.slot, (rank, pid, bytes));
                return;
            }
            ToRoot::Bye => {
                let (left, changed) = &self.byes;
                *left.lock().unwrap_or_else(PoisonError::into_inner) += 1;
                changed.notify_all();
                return;
            }
            ToRoot::Hello(_) => {
                tracing::warn!(rank, "an agent said hello again; ignored");
                return;
            }
        };
        self.to_link(worker, said);
    }

    /// Hands how the payload that followed a [`ToRoot::BytesThen`] ended to the link of
    /// `worker`.
    pub(super) fn deliver_payload(&self, worker: Worker, end: PayloadEnd) {
        self.to_link(worker, Said::Payload(end));
    }

    fn to_link(&self, worker: Worker, said: Said) {
        let links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((generation, link)) = links.get(&worker.slot)
            && *generation == worker.generation
        {
            let _ = link.send(said);
        }
    }
}

/// The link of a worker is broken: `why`.
fn broken(why: String) -> Received {
    Received::Broken(crate::wire::frame::ProtocolError::Corrupt(why))
}

/// Rank 0's backend: the workers of the node agents, slot by slot.
#[derive(Debug)]
pub(super) struct Ranks {
    pub(super) routes: Arc<Routes>,
    pub(super) outbox: Outbox,
    /// The rank of each slot's agent.
    pub(super) placement: Vec<i32>,
    pub(super) max_frame: usize,
    pub(super) watch_memory: bool,
    pub(super) generations: AtomicU32,
    /// The rank's MPI thread, stopped (and MPI finalized) when the pool stops.
    pub(super) hub: Option<super::hub::Hub>,
    /// The ranks of the node agents.
    pub(super) agents: Vec<i32>,
}

impl Drop for Ranks {
    /// Dropped when supervision has stopped every worker: tells the agents to leave, waits
    /// (for at most [`LEAVE_WITHIN`]) until each has said it sends nothing more, then
    /// finalizes MPI, which waits for them to finalize too.
    fn drop(&mut self) {
        for &rank in &self.agents {
            self.outbox.send(rank, ToAgent::Shutdown.encode());
        }
        let (left, changed) = &self.routes.byes;
        let left = left.lock().unwrap_or_else(PoisonError::into_inner);
        let (left, waited) = changed
            .wait_timeout_while(left, LEAVE_WITHIN, |left| *left < self.agents.len())
            .unwrap_or_else(PoisonError::into_inner);
        if waited.timed_out() {
            tracing::warn!(
                left = *left,
                agents = self.agents.len(),
                "not every node agent left in time"
            );
        }
        drop(left);
        if let Some(hub) = self.hub.take() {
            hub.stop();
        }
    }
}

impl Backend for Ranks {
    type Link = RankLink;

    fn caps(&self) -> Caps {
        Caps {
            respawn: true,
            stop_running: true,
            memory: self.watch_memory,
            lead: super::LEAD,
            // The other agents' MPI threads sleep on (see `JobQueue::wake_idle_last`).
            wake_idle_last: true,
        }
    }

    async fn start(&self, slot: usize, kill: &CancellationToken) -> Result<RankLink, StartError> {
        let rank = self.placement[slot];
        let worker = Worker {
            slot: u32::try_from(slot).unwrap_or(u32::MAX),
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
        };
        let (tx, mut rx) = unbounded_channel();
        self.routes
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(worker.slot, (worker.generation, tx));
        let gone = || {
            StartError::Fatal(format!(
                "the MPI thread is gone; rank {rank} cannot be reached"
            ))
        };
        if !self.outbox.send(rank, ToAgent::Start(worker).encode()) {
            return Err(gone());
        }
        // Until the agent says the worker started, leaving (killed, or this future
        // dropped) stops the worker it is starting.
        let mut abandon = Abandon {
            outbox: &self.outbox,
            rank,
            worker,
            armed: true,
        };
        let said = tokio::select! {
            said = rx.recv() => said,
            _ = kill.cancelled() => return Err(StartError::Killed),
        };
        // From here on the link stops it, or it did not start.
        abandon.armed = false;
        let rank_id = u32::try_from(rank).unwrap_or(u32::MAX);
        match said {
            Some(Said::Started(pid)) => Ok(RankLink {
                worker,
                rank,
                id: WorkerId::on_rank(pid, rank_id),
                rx,
                outbox: self.outbox.clone(),
                codec: Codec::supplied(self.max_frame),
                buffer: BytesMut::new(),
                ended: None,
                routes: self.routes.clone(),
            }),
            Some(Said::StartFailed(failure, text)) => Err(failure.into_error(text)),
            Some(other) => Err(StartError::Repeating(format!(
                "rank {rank} answered a start with {other:?}"
            ))),
            None => Err(gone()),
        }
    }

    fn resident_memory(&self, worker: WorkerId) -> Option<u64> {
        let key = (worker.rank()?, worker.pid()?);
        let memory = self
            .routes
            .memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        memory
            .values()
            .find(|(rank, pid, _)| (*rank, *pid) == key)
            .map(|(_, _, bytes)| *bytes)
    }
}

/// Sends a kill for a worker whose start was left before its agent answered.
struct Abandon<'a> {
    outbox: &'a Outbox,
    rank: i32,
    worker: Worker,
    armed: bool,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.outbox
                .send(self.rank, ToAgent::Kill(self.worker).encode());
        }
    }
}

/// Rank 0's link to one worker of a node agent.
pub(super) struct RankLink {
    worker: Worker,
    rank: i32,
    id: WorkerId,
    rx: UnboundedReceiver<Said>,
    outbox: Outbox,
    codec: Codec<FromWorker>,
    /// Bytes from the worker not decoded yet.
    buffer: BytesMut,
    ended: Option<ExitInfo>,
    routes: Arc<Routes>,
}

impl RankLink {
    fn exit_of(&self, code: Option<i32>, signal: Option<i32>) -> ExitInfo {
        ExitInfo::from_parts(code, signal).of(self.id)
    }

    /// A frame already in the buffer, or a decoding error.
    fn decoded(&mut self) -> Option<Received> {
        match self.codec.decode(&mut self.buffer) {
            Ok(Some(frame)) => {
                if self.buffer.is_empty() {
                    // The frames split off the buffer keep its memory; the next bytes
                    // come in a buffer of their own.
                    self.buffer = BytesMut::new();
                }
                Some(Received::Frame(frame))
            }
            Ok(None) => None,
            Err(error) => Some(Received::Broken(error)),
        }
    }

    /// Takes what the agent said next into the link's state; `Some` if the pool is to
    /// hear of it now.
    fn take(&mut self, said: Option<Said>) -> Option<Received> {
        match said {
            Some(Said::Bytes(bytes)) => {
                if self.buffer.is_empty() {
                    // Decoded where they arrived, without a copy.
                    self.buffer = BytesMut::from(bytes::Bytes::from(bytes));
                } else {
                    self.buffer.extend_from_slice(&bytes);
                }
                self.decoded()
            }
            // Taken only once the bytes before it are decoded: the codec awaits exactly
            // this payload (the agent announces one only for a frame large enough to be
            // gathered apart, and from that frame's header).
            Some(Said::Payload(PayloadEnd::Whole(payload))) => {
                let len = payload.len();
                match self.codec.supply_payload(payload) {
                    Ok(set_aside) => {
                        tracing::trace!(
                            rank = self.rank,
                            slot = self.worker.slot,
                            len,
                            "a large answer arrived in pieces"
                        );
                        crate::spares::SPARES.keep(set_aside);
                    }
                    Err(payload) => {
                        crate::spares::SPARES.keep(payload);
                        return Some(broken(format!(
                            "rank {} sent a payload of {len} bytes that no frame awaited",
                            self.rank
                        )));
                    }
                }
                self.decoded()
            }
            Some(Said::Payload(PayloadEnd::CutShort)) => match self.codec.abandon_payload() {
                // As when a worker on this machine dies writing a frame: the frame is
                // dropped, and what the agent salvages comes next.
                Some(gathered) => {
                    tracing::debug!(
                        rank = self.rank,
                        slot = self.worker.slot,
                        "a large answer was cut short: its worker died writing it"
                    );
                    crate::spares::SPARES.keep(gathered);
                    self.decoded()
                }
                None => Some(broken(format!(
                    "rank {} cut short a payload that was not arriving",
                    self.rank
                ))),
            },
            // The worker's stream cannot be trusted past this: the pool stops the worker.
            Some(Said::Payload(PayloadEnd::Invalid(why))) => Some(broken(why)),
            Some(Said::Closed) => Some(match self.codec.decode_eof(&mut self.buffer) {
                Ok(Some(frame)) => Received::Frame(frame),
                Ok(None) => Received::Closed,
                Err(error) => Received::Broken(error),
            }),
            Some(Said::Exited(code, signal)) => {
                let exit = self.exit_of(code, signal);
                self.ended = Some(exit);
                Some(Received::Exited(exit))
            }
            Some(other) => Some(Received::Broken(
                crate::wire::frame::ProtocolError::Corrupt(format!(
                    "rank {} said {other:?} of a running worker",
                    self.rank
                )),
            )),
            // The hub is gone: so is the worker, as far as this pool can tell.
            None => {
                let exit = ExitInfo::unknown().of(self.id);
                self.ended = Some(exit);
                Some(Received::Exited(exit))
            }
        }
    }
}

impl WorkerLink for RankLink {
    fn id(&self) -> WorkerId {
        self.id
    }

    async fn send(&mut self, frames: &[u8], payload: &bytes::Bytes) -> std::io::Result<()> {
        if frames.len() + payload.len() > super::MAX_MESSAGE {
            // The pool's frame limit keeps a window below it; this is a safety net.
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a window of frames larger than an MPI message can be",
            ));
        }
        let sent = if payload.len() >= LARGE {
            // Not copied: the hub sends it from the job's own buffer, after the frames.
            let head = ToAgent::FramesThen(self.worker, frames.to_vec(), payload.len() as u64);
            self.outbox
                .send_pair(self.rank, head.encode(), payload.clone())
        } else {
            let bytes = ToAgent::frames(self.worker, frames, payload);
            self.outbox.send(self.rank, bytes)
        };
        if sent {
            Ok(())
        } else {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    async fn recv(&mut self) -> Received {
        if let Some(exit) = self.ended {
            return Received::Exited(exit);
        }
        if let Some(received) = self.decoded() {
            return received;
        }
        loop {
            // Cancel-safe: a message is taken off the channel only in a poll that returns it.
            let said = self.rx.recv().await;
            if let Some(received) = self.take(said) {
                return received;
            }
        }
    }

    fn try_recv(&mut self) -> Option<Received> {
        if let Some(exit) = self.ended {
            return Some(Received::Exited(exit));
        }
        if let Some(received) = self.decoded() {
            return Some(received);
        }
        loop {
            let said = match self.rx.try_recv() {
                Ok(said) => Some(said),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => return None,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => None,
            };
            if let Some(received) = self.take(said) {
                return Some(received);
            }
        }
    }

    async fn exited(&mut self) -> ExitInfo {
        loop {
            if let Some(exit) = self.ended {
                return exit;
            }
            // Frames are of no use now: only the exit is waited for.
            let said = self.rx.recv().await;
            if let Some(Said::Exited(..)) | None = said {
                self.take(said);
            }
        }
    }

    async fn kill(&mut self) -> ExitInfo {
        if self.ended.is_none() {
            let _ = self
                .outbox
                .send(self.rank, ToAgent::Kill(self.worker).encode());
        }
        self.exited().await
    }
}

impl Drop for RankLink {
    fn drop(&mut self) {
        if self.ended.is_none() {
            let _ = self
                .outbox
                .send(self.rank, ToAgent::Kill(self.worker).encode());
        }
        let mut links = self
            .routes
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if links
            .get(&self.worker.slot)
            .is_some_and(|(g, _)| *g == self.worker.generation)
        {
            links.remove(&self.worker.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::tests::wire;
    use crate::wire::frame::{Frame, HEADER};

    fn link() -> RankLink {
        let worker = Worker {
            slot: 0,
            generation: 1,
        };
        RankLink {
            worker,
            rank: 1,
            id: WorkerId::on_rank(42, 1),
            rx: unbounded_channel().1,
            outbox: Outbox::detached(),
            codec: Codec::new(64 << 20),
            buffer: BytesMut::new(),
            ended: None,
            routes: Arc::new(Routes::default()),
        }
    }

    /// A large answer's frame as an agent hands it on: what comes before its payload,
    /// and the payload.
    fn large_answer(id: u64, payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let whole = wire(&FromWorker::done(id), payload);
        let head = whole.len() - payload.len();
        assert!(head > HEADER);
        (whole[..head].to_vec(), whole[head..].to_vec())
    }

    fn answer_id(received: Option<Received>) -> Option<(u64, usize)> {
        match received {
            Some(Received::Frame(Frame {
                message: FromWorker::Done { id, .. },
                payload,
            })) => Some((id, payload.len())),
            _ => None,
        }
    }

    #[test]
    fn a_payload_handed_on_apart_completes_the_frame_its_head_began() {
        let mut link = link();
        let payload = vec![7; 3 << 20];
        let (head, body) = large_answer(5, &payload);
        assert!(link.take(Some(Said::Bytes(head))).is_none());
        let received = link.take(Some(Said::Payload(PayloadEnd::Whole(body))));
        assert_eq!(answer_id(received), Some((5, payload.len())));
    }

    #[test]
    fn a_payload_cut_short_drops_its_frame_and_the_next_bytes_start_a_frame() {
        let mut link = link();
        let (head, _) = large_answer(5, &vec![7; 3 << 20]);
        assert!(link.take(Some(Said::Bytes(head))).is_none());
        assert!(
            link.take(Some(Said::Payload(PayloadEnd::CutShort)))
                .is_none()
        );
        let small = wire(&FromWorker::done(6), &[1, 2, 3]).to_vec();
        let received = link.take(Some(Said::Bytes(small)));
        assert_eq!(answer_id(received), Some((6, 3)));
    }

    #[test]
    fn a_payload_no_frame_awaits_or_an_invalid_one_breaks_the_link() {
        let broken = |received: Option<Received>| match received {
            Some(Received::Broken(error)) => error.to_string(),
            other => panic!("not broken: {other:?}"),
        };
        // A payload of another length than its frame's.
        let mut other_length = link();
        let (head, body) = large_answer(5, &vec![7; 3 << 20]);
        assert!(other_length.take(Some(Said::Bytes(head))).is_none());
        let why =
            broken(other_length.take(Some(Said::Payload(PayloadEnd::Whole(body[1..].to_vec())))));
        assert!(why.contains("no frame awaited"), "{why}");
        // A payload, or its cut, with no large frame begun.
        let mut idle = link();
        let why = broken(idle.take(Some(Said::Payload(PayloadEnd::Whole(vec![1; 10])))));
        assert!(why.contains("no frame awaited"), "{why}");
        let why = broken(idle.take(Some(Said::Payload(PayloadEnd::CutShort))));
        assert!(why.contains("not arriving"), "{why}");
        // What the hub found wrong with the pieces.
        let why = broken(idle.take(Some(Said::Payload(PayloadEnd::Invalid("bad piece".into())))));
        assert!(why.contains("bad piece"), "{why}");
    }
}
