//! [`LocalWorker`]: one child process and its socket, the local backend's
//! [`WorkerLink`]. It reads the child's frames, sees it exit, kills and reaps it, and reads
//! its resident memory.
//!
//! However a worker ends (killed, crashed, or exited when it was retired), the processes
//! its jobs left in its process group are stopped before it is reaped ([`ExitWatch`]):
//! until then its zombie keeps the group's id from being reused.

use crate::exit::{ExitInfo, WorkerId};
use crate::pool::backend::{Received, WorkerLink};
use crate::sys::SharedWord;
use crate::wire::claims::Revoke;
use crate::wire::frame::{Codec, Frame, ProtocolError, put_frame};
use crate::wire::message::{FromWorker, Lent, ToWorker};
use futures::{FutureExt, StreamExt};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::task::Poll;
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tokio_util::codec::Decoder;
use tokio_util::codec::Framed;

/// The pool's end of a worker's socket: frames from the worker are decoded; frames to it
/// are written as bytes.
pub(super) type Conn = Framed<tokio::net::UnixStream, Codec<FromWorker>>;

/// A started, handshaken child process.
pub(crate) struct LocalWorker {
    child: Child,
    /// Sees the child exit before it is reaped.
    watch: ExitWatch,
    conn: Conn,
    id: WorkerId,
    /// The word it claims jobs in, and the journal of the answers it holds back, mapped
    /// here too.
    claims: Option<SharedWord>,
    /// The last job it answered on the link.
    answered: Option<u64>,
    /// What it left in its journal, once its link has ended.
    left: Leftovers,
    /// Whether it reads large arguments from this process's memory (see
    /// [`super::Settings::lend`]).
    lends: bool,
    /// The arguments lent to it, by job, until it answers that job or is gone: it reads
    /// them out of this process's memory in between.
    lent: VecDeque<(u64, bytes::Bytes)>,
    /// `Taken` frames for the results it lent that were read here, not written yet: sent
    /// at once where the socket takes them, else before the next frames.
    owed: bytes::BytesMut,
    /// Tests only: counts the arguments lent and the results read.
    #[cfg(test)]
    counted: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

/// The answers a worker held back and never wrote (it died first), read from its journal
/// when its link ends and delivered before that end (see [`crate::wire::outbox`]).
#[derive(Debug, Default)]
struct Leftovers {
    read: bool,
    frames: VecDeque<Frame<FromWorker>>,
    /// How the link ended, delivered after the frames.
    ending: Option<Received>,
}

impl LocalWorker {
    pub(super) fn new(
        child: Child,
        conn: Conn,
        pid: u32,
        claims: Option<SharedWord>,
    ) -> LocalWorker {
        LocalWorker {
            child,
            watch: ExitWatch::default(),
            conn,
            id: WorkerId::process(pid),
            claims,
            answered: None,
            left: Leftovers::default(),
            lends: false,
            lent: VecDeque::new(),
            owed: bytes::BytesMut::new(),
            #[cfg(test)]
            counted: None,
        }
    }

    /// Says whether large arguments are lent to this worker rather than written to it.
    pub(super) fn lend_arguments(&mut self, lend: bool) {
        self.lends = lend;
    }

    /// Tests only: counts the arguments lent and the results read in `count`.
    #[cfg(test)]
    pub(super) fn count_lent(
        &mut self,
        count: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    ) {
        self.counted = count;
    }

    #[cfg(test)]
    fn count(&self) {
        if let Some(count) = &self.counted {
            count.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Reads the result the worker lent, and owes it a `Taken`; the answer is then
    /// delivered as if its result had come in the frame.
    fn take_lent(&mut self, id: u64, outcome: crate::run::Outcome, result: Lent) -> Received {
        // First, so that the result can be read into the argument's buffer.
        self.release_arguments(id);
        let max = self.conn.codec().max_frame();
        let Some(len) = usize::try_from(result.len).ok().filter(|&len| len <= max) else {
            return Received::Broken(ProtocolError::FrameTooLarge { max });
        };
        let pid = self.id.pid().unwrap_or(0);
        let mut payload = crate::spares::SPARES.empty(len);
        if let Err(e) = crate::sys::remote::read_lent(pid, result.addr, len, &mut payload) {
            // Gone before its result was read, usually: the job is lost with the worker.
            return Received::Broken(ProtocolError::Io(e));
        }
        #[cfg(test)]
        self.count();
        let taken = ToWorker::Taken { addr: result.addr };
        if put_frame(&taken, &[], usize::MAX, &mut self.owed).is_ok() {
            self.write_owed();
        }
        let message = FromWorker::Done { id, outcome };
        Received::Frame(Frame {
            message,
            payload: bytes::Bytes::from(payload),
        })
    }

    /// Lets go of the arguments lent for jobs up to `answered`, which the worker read.
    fn release_arguments(&mut self, answered: u64) {
        while self.lent.front().is_some_and(|(id, _)| *id <= answered) {
            self.lent.pop_front();
        }
    }

    /// Writes what of the owed `Taken` frames the socket takes without waiting. Called
    /// only between sends (every send is awaited to its end), so no frame is cut.
    fn write_owed(&mut self) {
        use bytes::Buf;
        while !self.owed.is_empty() {
            match self.conn.get_ref().try_write(&self.owed) {
                Ok(n) if n > 0 => self.owed.advance(n),
                _ => break, // the rest goes before the next frames
            }
        }
    }

    /// A journaled answer, or the end of the link, still to deliver.
    fn leftover(&mut self) -> Option<Received> {
        match self.left.frames.pop_front() {
            Some(frame) => Some(Received::Frame(frame)),
            None => self.left.ending.take(),
        }
    }

    /// Notes the answers `received` brings; at the end of the link (the worker is gone),
    /// delivers first the answers it had not written yet.
    fn deliver(&mut self, received: Received) -> Received {
        match received {
            Received::Frame(Frame {
                message:
                    FromWorker::DoneLent {
                        id,
                        outcome,
                        result,
                    },
                ..
            }) => {
                let received = self.take_lent(id, outcome, result);
                self.deliver(received)
            }
            Received::Frame(frame) => {
                if let FromWorker::Done { id, .. } = &frame.message {
                    self.answered = Some(*id);
                    self.release_arguments(*id);
                }
                Received::Frame(frame)
            }
            Received::Closed
            | Received::Exited(_)
            | Received::Broken(ProtocolError::Io(_) | ProtocolError::Truncated) => {
                self.read_journal();
                match self.left.frames.pop_front() {
                    Some(frame) => {
                        self.left.ending = Some(received);
                        Received::Frame(frame)
                    }
                    None => received,
                }
            }
            other => other,
        }
    }

    /// A copy of what the worker's journal holds: the frames of the answers it held back
    /// and had not written when it was last cleared. `None` without a journal.
    fn journal(&self) -> Option<bytes::BytesMut> {
        let (length, bytes) = self.claims.as_ref().and_then(SharedWord::journal)?;
        let len = (length.load(Ordering::Acquire) as usize).min(bytes.len());
        Some(
            bytes[..len]
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        )
    }

    /// Reads the answers left in the journal, once, keeping those not delivered yet.
    fn read_journal(&mut self) {
        if std::mem::replace(&mut self.left.read, true) {
            return;
        }
        let Some(mut held) = self.journal() else {
            return;
        };
        let mut codec = Codec::<FromWorker>::new(crate::sys::JOURNAL);
        loop {
            match codec.decode(&mut held) {
                Ok(Some(frame)) => match &frame.message {
                    FromWorker::Done { id, .. } if self.answered.is_none_or(|last| *id > last) => {
                        self.left.frames.push_back(frame);
                    }
                    _ => {} // delivered on the link before it ended
                },
                Ok(None) => break,
                Err(error) => {
                    let error = crate::error::report(&error);
                    tracing::warn!(worker = %self.id, %error, "a worker's journal is corrupt");
                    break;
                }
            }
        }
        if !self.left.frames.is_empty() {
            tracing::debug!(
                worker = %self.id,
                answers = self.left.frames.len(),
                "delivering the answers a worker held back when it ended"
            );
        }
    }
}

/// What a worker's link delivered, undecoded (see [`LocalWorker::recv_bytes`]).
#[cfg(feature = "mpi")]
#[derive(Debug)]
pub(crate) enum RawReceived {
    /// This many bytes the worker wrote were appended to the buffer.
    Bytes(usize),
    /// The link closed.
    Closed,
    /// The worker is gone, and the link has nothing more to deliver.
    Exited(ExitInfo),
}

#[cfg(feature = "mpi")]
impl LocalWorker {
    /// The worker's process id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.id.pid()
    }

    /// Appends to `out`, undecoded, the frames of the answers the worker held back and
    /// never wrote, those after job `answered` (the last one its link delivered): for a
    /// worker whose link has ended, as [`WorkerLink::recv`] delivers them itself. The
    /// journal's frames are whole; one that does not decode is not handed on.
    pub(crate) fn held_answers_after(&self, answered: Option<u64>, out: &mut Vec<u8>) -> usize {
        let Some(held) = self.journal() else {
            return 0;
        };
        let mut count = 0;
        for (frame, message) in crate::wire::headers::whole_frames(&held) {
            if let Some(id) = crate::wire::headers::answer_id(message)
                && answered.is_none_or(|last| id > last)
            {
                out.extend_from_slice(frame);
                count += 1;
            }
        }
        count
    }

    /// Appends to `buffer` the next bytes the worker wrote, up to `most`, without decoding
    /// them into frames (an MPI node agent hands them on to the pool that decodes them); as
    /// [`WorkerLink::recv`], every byte comes before [`RawReceived::Exited`], and it is
    /// cancel-safe.
    pub(crate) async fn recv_bytes(&mut self, buffer: &mut Vec<u8>, most: usize) -> RawReceived {
        use bytes::BufMut;
        use tokio::io::AsyncReadExt;
        // What the handshake's decoder read ahead comes first, up to `most` of it.
        let ahead = self.conn.read_buffer_mut();
        let n = ahead.len().min(most);
        if n > 0 {
            buffer.extend_from_slice(&ahead.split_to(n));
            return RawReceived::Bytes(n);
        }
        buffer.reserve(most);
        let mut limited = (&mut *buffer).limit(most);
        let stream = self.conn.get_mut();
        tokio::select! {
            // First: what the worker wrote before it exited is still delivered.
            biased;
            read = stream.read_buf(&mut limited) => match read {
                Ok(n) if n > 0 => RawReceived::Bytes(n),
                _ => RawReceived::Closed,
            },
            // Its group stopped before it is reaped, as on a local pool.
            exit = std::future::poll_fn(|cx| poll_exit(&mut self.child, &mut self.watch, self.id, cx)) => {
                RawReceived::Exited(exit)
            }
        }
    }
}

impl WorkerLink for LocalWorker {
    fn id(&self) -> WorkerId {
        self.id
    }

    async fn send(&mut self, frames: &[u8], payload: &bytes::Bytes) -> std::io::Result<()> {
        let stream = self.conn.get_mut();
        if !self.owed.is_empty() {
            stream.write_all(&self.owed).await?;
            self.owed.clear();
        }
        stream.write_all(frames).await?;
        if !payload.is_empty() {
            stream.write_all(payload).await?;
        }
        Ok(())
    }

    async fn recv(&mut self) -> Received {
        if let Some(received) = self.leftover() {
            return received;
        }
        std::future::poll_fn(|cx| {
            // Frames first: what the worker wrote before it exited is still delivered.
            if let Poll::Ready(item) = self.conn.poll_next_unpin(cx) {
                return Poll::Ready(self.deliver(Received::from_stream(item)));
            }
            // Cancel-safe: the watch keeps its place, and a new wait each poll loses
            // nothing.
            let exit = std::task::ready!(poll_exit(&mut self.child, &mut self.watch, self.id, cx));
            Poll::Ready(self.deliver(Received::Exited(exit)))
        })
        .await
    }

    fn try_recv(&mut self) -> Option<Received> {
        if let Some(received) = self.leftover() {
            return Some(received);
        }
        let item = self.conn.next().now_or_never()?;
        Some(self.deliver(Received::from_stream(item)))
    }

    async fn exited(&mut self) -> ExitInfo {
        std::future::poll_fn(|cx| poll_exit(&mut self.child, &mut self.watch, self.id, cx)).await
    }

    async fn kill(&mut self) -> ExitInfo {
        reap(&mut self.child, self.id).await
    }

    fn can_revoke(&self) -> bool {
        self.claims.is_some()
    }

    fn lends_arguments(&self) -> bool {
        self.lends
    }

    fn lend_argument(&mut self, id: u64, argument: &bytes::Bytes) {
        #[cfg(test)]
        self.count();
        self.lent.push_back((id, argument.clone()));
    }

    fn started(&self, id: u64) -> Option<bool> {
        let claims = self.claims.as_ref()?;
        Some(crate::wire::claims::started(claims.word(), id))
    }

    fn revoke(&self, from: u64, next: u64) -> Revoke {
        match &self.claims {
            Some(claims) => crate::wire::claims::revoke(claims.word(), from, next),
            None => Revoke::NothingLeft,
        }
    }
}

/// Sees a child exit without reaping it, so that its process group can be stopped while
/// its zombie still holds the group's id: each SIGCHLD this process receives wakes it to
/// look again ([`crate::sys::has_exited`]).
#[derive(Default)]
pub(super) struct ExitWatch {
    /// This process's SIGCHLDs from when the watch was first polled; `None` before that.
    signals: Option<tokio::signal::unix::Signal>,
    /// Whether the child was looked at since the last SIGCHLD.
    looked: bool,
    /// How the watch ended, once it has.
    ended: Option<Watched>,
}

/// How an [`ExitWatch`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    /// The child has exited, and is not reaped yet.
    Exited,
    /// Its exit cannot be watched without reaping it (no SIGCHLDs to be had): it is then
    /// reaped as it is seen to exit, its group left alone.
    Unwatched,
}

impl ExitWatch {
    /// Ready once child `pid` has exited (a zombie, not reaped yet), or once its exit
    /// cannot be watched this way; says which.
    fn poll_exited(&mut self, pid: u32, cx: &mut std::task::Context<'_>) -> Poll<Watched> {
        if let Some(ended) = self.ended {
            return Poll::Ready(ended);
        }
        let signals = match &mut self.signals {
            Some(signals) => signals,
            // Registered before the first look: a SIGCHLD after that look wakes this watch.
            None => match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
                Ok(signals) => self.signals.insert(signals),
                Err(error) => {
                    tracing::debug!(%error, "cannot watch for SIGCHLD");
                    return Poll::Ready(*self.ended.insert(Watched::Unwatched));
                }
            },
        };
        loop {
            // One look per SIGCHLD, not per poll: the link is polled for every frame.
            if !std::mem::replace(&mut self.looked, true) && crate::sys::has_exited(pid) {
                return Poll::Ready(*self.ended.insert(Watched::Exited));
            }
            match signals.poll_recv(cx) {
                Poll::Ready(Some(())) => self.looked = false,
                // The runtime is shutting down.
                Poll::Ready(None) => return Poll::Ready(*self.ended.insert(Watched::Unwatched)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Ready with how `child` ended once it has exited: the processes its jobs left in its
/// process group are stopped first, then it is reaped. Cancel-safe.
fn poll_exit(
    child: &mut Child,
    watch: &mut ExitWatch,
    id: WorkerId,
    cx: &mut std::task::Context<'_>,
) -> Poll<ExitInfo> {
    // `id()` is `None` once the child has been reaped: then its group is left alone, its
    // id free for reuse.
    if let Some(pid) = child.id()
        && std::task::ready!(watch.poll_exited(pid, cx)) == Watched::Exited
    {
        // Exited, not reaped: `pid` still names its group and no other.
        crate::sys::kill_group(pid);
    }
    // At once for a child that has exited.
    let status = std::task::ready!(std::pin::pin!(child.wait()).poll(cx));
    Poll::Ready(exit_info(status, id))
}

/// How `child` ended, once it exits by itself: the processes its jobs left in its process
/// group are stopped first, then it is reaped. Cancel-safe.
pub(super) async fn exit_of(child: &mut Child, id: WorkerId) -> ExitInfo {
    let mut watch = ExitWatch::default();
    std::future::poll_fn(|cx| poll_exit(child, &mut watch, id, cx)).await
}

/// Kills a child and the processes its jobs started in its process group, and waits for
/// it, so that it leaves no zombie.
pub(super) async fn reap(child: &mut Child, id: WorkerId) -> ExitInfo {
    // `id()` is `None` once the child has been reaped: then its group is left alone, its
    // id free for reuse.
    if let Some(pid) = child.id() {
        crate::sys::kill_group(pid);
    }
    let _ = child.start_kill();
    exit_info(child.wait().await, id)
}

/// How `id` ended, from its wait status.
pub(super) fn exit_info(
    status: std::io::Result<std::process::ExitStatus>,
    id: WorkerId,
) -> ExitInfo {
    status
        .map_or_else(|_| ExitInfo::unknown(), ExitInfo::from_status)
        .of(id)
}

/// The resident memory of a process, in bytes (`VmRSS` from `/proc/<pid>/status`). `None`
/// where there is no such file to read.
pub(crate) fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_size() {
        if cfg!(target_os = "linux") {
            let bytes = resident_bytes(std::process::id()).unwrap();
            assert!(bytes > 1 << 20, "{bytes}");
        }
        assert_eq!(resident_bytes(u32::MAX), None);
    }
}
