//! The wire protocol between a pool and its worker processes: the messages, and the codec
//! that frames them.
//!
//! A frame is a `u32` big-endian length, then the postcard encoding of one message, then
//! the message's payload as raw bytes (a job's argument or result; empty for the others).
//! Keeping payloads out of the postcard body lets a payload be written straight from its
//! buffer and sliced out of the read buffer without a copy. The payload of a large frame
//! (1 MiB and up) is gathered in a buffer of its own instead, allocated once its message
//! has been read (the worker reads it there directly, into a recycled buffer), so that a
//! `Vec<u8>` argument or result changes hands without a copy and the read buffer stays
//! small.
//!
//! Frames longer than the negotiated maximum are refused before anything is allocated for
//! them; short, corrupt or unexpected frames are errors, never panics. During the handshake
//! the maximum is [`HANDSHAKE_MAX_FRAME`], so an unauthenticated peer cannot make the
//! parent allocate more than that.

use crate::job::{ImageId, Outcome};
use crate::raw::Target;
use bytes::Buf;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use tokio_util::codec::Decoder;

/// Bumped whenever a message changes shape.
pub(crate) const PROTOCOL_VERSION: u32 = 3;
/// The frame limit before a peer has proven it knows the pool's secret.
pub(crate) const HANDSHAKE_MAX_FRAME: usize = 64 * 1024;
/// Bytes of the per-pool secret.
pub(crate) const SECRET_LEN: usize = 32;
/// Frame header bytes.
const HEADER: usize = 4;

/// A message from a worker to its pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// The first frame on a new connection.
    Hello {
        version: u32,
        worker_id: u64,
        pid: u32,
        secret: [u8; SECRET_LEN],
        image: ImageId,
        probe: i64,
    },
    /// Sent instead of `Hello` by a process that reached `main` without entering the
    /// worker loop (the entry hook is off and `init()` was not called).
    HookMissing {
        worker_id: u64,
        secret: [u8; SECRET_LEN],
    },
    /// The initializers (if any) ran; jobs may come.
    Ready,
    /// An initializer panicked; the worker exits.
    InitFailed {
        message: String,
        location: Option<String>,
    },
    /// The answer to `Run { id, .. }`; the frame's payload is the encoded result.
    Done { id: u64, outcome: Outcome },
}

impl FromWorker {
    /// The variant's name, for errors and logs (without a possibly huge payload).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            FromWorker::Hello { .. } => "Hello",
            FromWorker::HookMissing { .. } => "HookMissing",
            FromWorker::Ready => "Ready",
            FromWorker::InitFailed { .. } => "InitFailed",
            FromWorker::Done { .. } => "Done",
        }
    }
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
    },
    /// Run one job (or one chunk of a `map`); the frame's payload is the encoded argument.
    Run { id: u64, target: Target },
    /// Finish: exit after the current job.
    Shutdown,
}

/// What can go wrong on a connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtocolError {
    #[error("frame exceeds the maximum frame size of {max} bytes")]
    FrameTooLarge { max: usize },
    #[error("message of {size} bytes exceeds the maximum frame size of {max} bytes")]
    MessageTooLarge { size: usize, max: usize },
    #[error("corrupt frame: {0}")]
    Corrupt(String),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("i/o error on the worker connection: {0}")]
    Io(#[from] io::Error),
}

/// Frames `Out` messages and parses `In` messages.
pub(crate) struct Codec<In, Out> {
    max_frame: usize,
    /// Frames at least this long have their payload gathered in a `Vec` of its own,
    /// allocated once the message before it is read, rather than in the read buffer.
    direct_from: usize,
    /// How much of a large frame's body is read before its message is parsed.
    message_peek: usize,
    /// A large frame whose message is read and whose payload is arriving.
    pending: Option<Pending<In>>,
    /// A buffer to gather the next large payload in (the worker hands its last large one
    /// back, so that a stream of large jobs reuses memory that is already mapped).
    spare: Vec<u8>,
    _messages: PhantomData<fn(Out) -> In>,
}

/// A large frame in progress.
struct Pending<In> {
    message: In,
    payload: Vec<u8>,
    /// The payload's full length.
    want: usize,
}

impl<In> Pending<In> {
    fn missing(&self) -> usize {
        self.want - self.payload.len()
    }
}

/// The socket buffer size asked for on both ends of a worker connection (the kernel caps it
/// at `net.core.wmem_max` / `rmem_max`; the default is about 200 KiB). A large payload
/// then crosses in a few large writes instead of hundreds of small ones, each waking the
/// other side.
const SOCKET_BUFFER: usize = 4 << 20;

/// Asks for [`SOCKET_BUFFER`]-sized send and receive buffers on `socket`. Best effort: a
/// refusal only costs speed, so it is logged and ignored.
pub(crate) fn widen_buffers(socket: &impl std::os::fd::AsFd) {
    let socket = socket2::SockRef::from(socket);
    let widened = socket
        .set_send_buffer_size(SOCKET_BUFFER)
        .and_then(|()| socket.set_recv_buffer_size(SOCKET_BUFFER));
    if let Err(error) = widened {
        tracing::debug!(%error, "could not widen a worker socket's buffers");
    }
}

/// Frames from this size up gather their payload directly ([`Codec::direct_from`]).
const DIRECT_PAYLOAD: usize = 1 << 20;
/// How much of a large frame's body is read before its message is parsed: a message
/// (as opposed to its payload) is far shorter.
const MESSAGE_PEEK: usize = 64 * 1024;
/// Room kept in the read buffer while a large payload streams through it.
const READ_ROOM: usize = 1 << 20;

impl<In, Out> Codec<In, Out> {
    pub(crate) fn new(max_frame: usize) -> Self {
        Codec {
            max_frame,
            direct_from: DIRECT_PAYLOAD,
            message_peek: MESSAGE_PEEK,
            pending: None,
            spare: Vec::new(),
            _messages: PhantomData,
        }
    }

    pub(crate) fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Offers a used buffer for the next large payload; the larger one is kept.
    pub(crate) fn recycle(&mut self, buffer: Vec<u8>) {
        if buffer.capacity() >= self.direct_from && buffer.capacity() > self.spare.capacity() {
            self.spare = buffer;
        }
    }

    /// Starts gathering a large frame's payload once its message has arrived. `Ok(false)`
    /// means the message is not all here yet.
    fn start_large(&mut self, src: &mut BytesMut, len: usize) -> Result<bool, ProtocolError>
    where
        In: DeserializeOwned,
    {
        let available = &src[HEADER..src.len().min(HEADER + len)];
        let peek = len.min(self.message_peek);
        if available.len() < peek {
            src.reserve(HEADER + peek - src.len());
            return Ok(false);
        }
        let (message, rest) = match postcard::take_from_bytes::<In>(available) {
            Ok(parsed) => parsed,
            Err(postcard::Error::DeserializeUnexpectedEnd) if available.len() < len => {
                src.reserve(READ_ROOM);
                return Ok(false);
            }
            Err(e) => return Err(ProtocolError::Corrupt(e.to_string())),
        };
        let message_len = available.len() - rest.len();
        src.advance(HEADER + message_len);
        let want = len - message_len;
        let mut payload = std::mem::take(&mut self.spare);
        payload.clear();
        payload.reserve_exact(want);
        self.pending = Some(Pending {
            message,
            payload,
            want,
        });
        Ok(true)
    }
}

/// One decoded frame: a message and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame<M> {
    pub(crate) message: M,
    pub(crate) payload: Bytes,
}

impl<M> Frame<M> {
    /// A frame without payload.
    #[cfg(test)]
    pub(crate) fn bare(message: M) -> Frame<M> {
        Frame {
            message,
            payload: Bytes::new(),
        }
    }
}

impl<In: DeserializeOwned, Out> Decoder for Codec<In, Out> {
    type Item = Frame<In>;
    type Error = ProtocolError;

    /// `Ok(None)` means "need more bytes".
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame<In>>, ProtocolError> {
        if self.pending.is_none() {
            let Some(head) = src.first_chunk::<HEADER>() else {
                return Ok(None);
            };
            let len = u32::from_be_bytes(*head) as usize;
            if len > self.max_frame {
                return Err(ProtocolError::FrameTooLarge {
                    max: self.max_frame,
                });
            }
            if len < self.direct_from {
                if src.len() < HEADER + len {
                    src.reserve(HEADER + len - src.len());
                    return Ok(None);
                }
                let mut frame = src.split_to(HEADER + len);
                frame.advance(HEADER);
                let (message, rest) = postcard::take_from_bytes::<In>(&frame)
                    .map_err(|e| ProtocolError::Corrupt(e.to_string()))?;
                let consumed = frame.len() - rest.len();
                // The payload is the rest of the frame: split off, not copied.
                let payload = frame.split_off(consumed).freeze();
                return Ok(Some(Frame { message, payload }));
            }
            if !self.start_large(src, len)? {
                return Ok(None);
            }
        }
        let Some(pending) = self.pending.as_mut() else {
            return Ok(None);
        };
        let take = src.len().min(pending.missing());
        pending.payload.extend_from_slice(&src[..take]);
        src.advance(take);
        if pending.missing() > 0 {
            src.reserve(READ_ROOM.min(pending.missing()));
            return Ok(None);
        }
        let Some(Pending {
            message, payload, ..
        }) = self.pending.take()
        else {
            return Ok(None);
        };
        // A `Vec` becomes `Bytes` without a copy.
        Ok(Some(Frame {
            message,
            payload: Bytes::from(payload),
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame<In>>, ProtocolError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && self.pending.is_none() => Ok(None),
            None => Err(ProtocolError::Truncated),
        }
    }
}

/// Payloads up to this size are copied into the frame and sent with one write; larger
/// ones are written straight from their buffer after the head.
pub(crate) const INLINE_PAYLOAD: usize = 64 * 1024;

impl<In, Out: Serialize> Codec<In, Out> {
    /// Appends a frame's header and message for a payload of `payload_len` bytes, which
    /// the caller writes right after; on error `dst` is left as it was.
    pub(crate) fn encode_head(
        &mut self,
        message: &Out,
        payload_len: usize,
        dst: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
        let start = dst.len();
        dst.put_u32(0);
        let written = postcard::to_io(message, dst.writer()).map(drop);
        let size = dst.len() - start - HEADER + payload_len;
        if let Err(e) = written {
            dst.truncate(start);
            return Err(ProtocolError::Corrupt(format!(
                "cannot encode message: {e}"
            )));
        }
        if size > self.max_frame {
            dst.truncate(start);
            return Err(ProtocolError::MessageTooLarge {
                size,
                max: self.max_frame,
            });
        }
        dst[start..start + HEADER].copy_from_slice(&(size as u32).to_be_bytes());
        Ok(())
    }

    /// Appends a whole frame (head and payload) to `dst`; on error `dst` is left as it was.
    pub(crate) fn encode_frame(
        &mut self,
        message: &Out,
        payload: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
        self.encode_head(message, payload.len(), dst)?;
        dst.extend_from_slice(payload);
        Ok(())
    }
}

/// A blocking connection driven by the codec: the worker side, which needs no runtime.
pub(crate) struct BlockingConn<S, In, Out> {
    stream: S,
    codec: Codec<In, Out>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// Where reads land before they join `read_buf`: initialized once, so that no read
    /// has to zero memory first.
    scratch: Box<[u8]>,
}

/// Bytes read per `read` call at most.
const SCRATCH: usize = 256 * 1024;

impl<S: Read + Write, In: DeserializeOwned, Out: Serialize> BlockingConn<S, In, Out> {
    pub(crate) fn new(stream: S, max_frame: usize) -> Self {
        BlockingConn {
            stream,
            codec: Codec::new(max_frame),
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(64 * 1024),
            scratch: vec![0; SCRATCH].into_boxed_slice(),
        }
    }

    pub(crate) fn set_max_frame(&mut self, max_frame: usize) {
        self.codec.set_max_frame(max_frame);
    }

    /// The next frame, or `None` when the peer closed the connection between frames.
    pub(crate) fn recv(&mut self) -> Result<Option<Frame<In>>, ProtocolError> {
        loop {
            if let Some(message) = self.codec.decode(&mut self.read_buf)? {
                return Ok(Some(message));
            }
            if let Some(pending) = self.codec.pending.as_mut() {
                // A large payload: read it straight into its own buffer.
                let missing = pending.missing();
                let read = (&mut self.stream)
                    .take(missing as u64)
                    .read_to_end(&mut pending.payload)?;
                if read < missing {
                    return Err(ProtocolError::Truncated);
                }
                continue;
            }
            let n = loop {
                match self.stream.read(&mut self.scratch) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            if n == 0 {
                return self.codec.decode_eof(&mut self.read_buf);
            }
            // The codec has reserved room for a frame whose header it read, so a large
            // frame does not make this reallocate as it arrives.
            self.read_buf.extend_from_slice(&self.scratch[..n]);
        }
    }

    /// Offers a used buffer for the next large payload (see [`Codec::recycle`]).
    pub(crate) fn recycle(&mut self, buffer: Vec<u8>) {
        self.codec.recycle(buffer);
    }

    /// The raw stream, for tests that write broken frames.
    #[cfg(test)]
    pub(crate) fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    pub(crate) fn send(&mut self, message: &Out) -> Result<(), ProtocolError> {
        self.send_with(message, &[])
    }

    /// Sends `message` with `payload`: one write for a small payload; the head, then the
    /// payload straight from its buffer, for a large one.
    pub(crate) fn send_with(&mut self, message: &Out, payload: &[u8]) -> Result<(), ProtocolError> {
        let inline = payload.len() <= INLINE_PAYLOAD;
        if inline {
            self.codec
                .encode_frame(message, payload, &mut self.write_buf)?;
        } else {
            self.codec
                .encode_head(message, payload.len(), &mut self.write_buf)?;
        }
        let mut result = self.stream.write_all(&self.write_buf);
        if !inline {
            result = result.and_then(|()| self.stream.write_all(payload));
        }
        let result = result.and_then(|()| self.stream.flush());
        self.write_buf.clear();
        result.map_err(ProtocolError::Io)
    }
}

/// Feeds arbitrary bytes to both sides' decoders, as a fuzzer does: any mix of messages,
/// "need more" and errors is fine; a panic or a huge allocation is a bug.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_decode(data: &[u8]) {
    fn drain<In: DeserializeOwned, Out>(mut codec: Codec<In, Out>, data: &[u8]) {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(_)) = codec.decode_eof(&mut buf) {}
    }
    drain(
        Codec::<FromWorker, ToWorker>::new(HANDSHAKE_MAX_FRAME),
        data,
    );
    drain(
        Codec::<ToWorker, FromWorker>::new(HANDSHAKE_MAX_FRAME),
        data,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type ParentCodec = Codec<FromWorker, ToWorker>;
    type WorkerCodec = Codec<ToWorker, FromWorker>;

    fn done(id: u64) -> FromWorker {
        FromWorker::Done {
            id,
            outcome: Outcome::Ok,
        }
    }

    fn frame(message: FromWorker, payload: &[u8]) -> Frame<FromWorker> {
        Frame {
            message,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn frames_arrive_whole_from_partial_input() {
        let mut bytes = BytesMut::new();
        WorkerCodec::new(1 << 20)
            .encode_frame(&done(7), &[1, 2, 3], &mut bytes)
            .unwrap();
        let full = bytes.clone();
        let mut parent = ParentCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        for (i, byte) in full.iter().enumerate() {
            buf.put_u8(*byte);
            let decoded = parent.decode(&mut buf).unwrap();
            if i + 1 < full.len() {
                assert_eq!(decoded, None, "frame decoded early at byte {i}");
            } else {
                assert_eq!(decoded, Some(frame(done(7), &[1, 2, 3])));
            }
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut parent = ParentCodec::new(HANDSHAKE_MAX_FRAME);
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX); // claims a 4 GiB frame
        buf.put_slice(b"junk");
        match parent.decode(&mut buf) {
            Err(ProtocolError::FrameTooLarge { max }) => assert_eq!(max, HANDSHAKE_MAX_FRAME),
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert!(
            buf.capacity() < 1 << 20,
            "no large allocation for a hostile length"
        );
    }

    #[test]
    fn corrupt_body_is_an_error() {
        let mut parent = ParentCodec::new(1024);
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(&[0xff, 0xff, 0xff]); // no such variant
        assert!(matches!(
            parent.decode(&mut buf),
            Err(ProtocolError::Corrupt(_))
        ));
    }

    #[test]
    fn truncated_frame_at_eof_is_an_error() {
        let mut bytes = BytesMut::new();
        WorkerCodec::new(1024)
            .encode_frame(&FromWorker::Ready, &[], &mut bytes)
            .unwrap();
        bytes.put_u32(100);
        bytes.put_slice(b"short");
        let mut parent = ParentCodec::new(1024);
        assert_eq!(
            parent.decode_eof(&mut bytes).unwrap(),
            Some(Frame::bare(FromWorker::Ready))
        );
        assert!(matches!(
            parent.decode_eof(&mut bytes),
            Err(ProtocolError::Truncated)
        ));
    }

    #[test]
    fn a_payload_over_the_limit_fails_and_leaves_the_buffer_alone() {
        let mut worker = WorkerCodec::new(64);
        let mut buf = BytesMut::new();
        worker
            .encode_frame(&FromWorker::Ready, &[], &mut buf)
            .unwrap();
        let before = buf.clone();
        let err = worker
            .encode_frame(&done(1), &[0; 100], &mut buf)
            .unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::MessageTooLarge { max: 64, .. }
        ));
        let err = worker.encode_head(&done(1), 100, &mut buf).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::MessageTooLarge { max: 64, .. }
        ));
        assert_eq!(buf, before);
    }

    /// An in-memory pipe: what is written can be read back.
    struct Pipe(std::io::Cursor<Vec<u8>>, Vec<u8>);

    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn blocking_conn_sends_small_and_large_payloads_and_reads_them_back() {
        let large = vec![9_u8; INLINE_PAYLOAD + 1000]; // written after its head
        let mut sender: BlockingConn<_, ToWorker, FromWorker> =
            BlockingConn::new(Pipe(Default::default(), Vec::new()), 1 << 20);
        sender.send_with(&done(1), &large).unwrap();
        sender.send_with(&done(2), &[1, 2]).unwrap();
        sender.send(&FromWorker::Ready).unwrap();
        let wire = std::mem::take(&mut sender.stream_mut().1);
        let mut receiver: BlockingConn<_, FromWorker, ToWorker> =
            BlockingConn::new(Pipe(std::io::Cursor::new(wire), Vec::new()), 1 << 20);
        assert_eq!(receiver.recv().unwrap(), Some(frame(done(1), &large)));
        assert_eq!(receiver.recv().unwrap(), Some(frame(done(2), &[1, 2])));
        assert_eq!(
            receiver.recv().unwrap(),
            Some(Frame::bare(FromWorker::Ready))
        );
        assert_eq!(receiver.recv().unwrap(), None);
    }

    #[test]
    fn a_large_payload_is_read_into_its_own_buffer_which_can_be_recycled() {
        let large: Vec<u8> = (0..DIRECT_PAYLOAD + 4321).map(|i| i as u8).collect();
        let mut sender: BlockingConn<_, ToWorker, FromWorker> =
            BlockingConn::new(Pipe(Default::default(), Vec::new()), 4 << 20);
        sender.send_with(&done(1), &large).unwrap();
        sender.send_with(&done(2), &[7]).unwrap();
        sender.send_with(&done(3), &large).unwrap();
        let wire = std::mem::take(&mut sender.stream_mut().1);
        let mut receiver: BlockingConn<_, FromWorker, ToWorker> =
            BlockingConn::new(Pipe(std::io::Cursor::new(wire), Vec::new()), 4 << 20);
        let first = receiver.recv().unwrap().unwrap();
        assert_eq!(first, frame(done(1), &large));
        assert!(
            first.payload.is_unique(),
            "a large payload has a buffer of its own"
        );
        let buffer = Vec::from(first.payload);
        let address = buffer.as_ptr();
        receiver.recycle(buffer);
        assert_eq!(receiver.recv().unwrap(), Some(frame(done(2), &[7])));
        let third = receiver.recv().unwrap().unwrap();
        assert_eq!(third, frame(done(3), &large));
        let reused = Vec::from(third.payload);
        assert_eq!(reused.as_ptr(), address, "not recycled");
        assert_eq!(receiver.recv().unwrap(), None);
    }

    #[test]
    fn widening_a_sockets_buffers_never_shrinks_them() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let before = socket2::SockRef::from(&a).send_buffer_size().unwrap();
        widen_buffers(&a);
        let after = socket2::SockRef::from(&a).send_buffer_size().unwrap();
        assert!(after >= before, "{after} < {before}");
    }

    #[test]
    fn a_large_frame_cut_short_is_truncated() {
        let large = vec![5_u8; DIRECT_PAYLOAD + 10];
        let mut sender: BlockingConn<_, ToWorker, FromWorker> =
            BlockingConn::new(Pipe(Default::default(), Vec::new()), 4 << 20);
        sender.send_with(&done(1), &large).unwrap();
        let mut wire = std::mem::take(&mut sender.stream_mut().1);
        wire.truncate(wire.len() - 1);
        let mut receiver: BlockingConn<_, FromWorker, ToWorker> = BlockingConn::new(
            Pipe(std::io::Cursor::new(wire.clone()), Vec::new()),
            4 << 20,
        );
        assert!(matches!(receiver.recv(), Err(ProtocolError::Truncated)));
        // The same through the async side's decoder.
        let mut parent = ParentCodec::new(4 << 20);
        let mut buf = BytesMut::from(&wire[..]);
        assert!(matches!(
            parent.decode_eof(&mut buf),
            Err(ProtocolError::Truncated)
        ));
    }

    #[test]
    fn a_large_frame_over_the_limit_is_refused_before_its_message() {
        let mut parent = ParentCodec::new(DIRECT_PAYLOAD);
        let mut buf = BytesMut::new();
        buf.put_u32(DIRECT_PAYLOAD as u32 + 1);
        assert!(matches!(
            parent.decode(&mut buf),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        assert!(
            buf.capacity() < DIRECT_PAYLOAD,
            "allocated for a refused frame"
        );
    }

    fn arb_outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Ok),
            (".*", proptest::option::of(".*"))
                .prop_map(|(message, location)| Outcome::Panicked { message, location }),
            ".*".prop_map(Outcome::Decode),
            ".*".prop_map(Outcome::Encode),
        ]
    }

    fn arb_frame() -> impl Strategy<Value = Frame<FromWorker>> {
        let message = prop_oneof![
            Just(FromWorker::Ready),
            (any::<u64>(), arb_outcome())
                .prop_map(|(id, outcome)| FromWorker::Done { id, outcome }),
            (any::<u64>(), any::<[u8; SECRET_LEN]>())
                .prop_map(|(worker_id, secret)| FromWorker::HookMissing { worker_id, secret }),
            (".*", proptest::option::of(".*"))
                .prop_map(|(message, location)| FromWorker::InitFailed { message, location }),
        ];
        (message, proptest::collection::vec(any::<u8>(), 0..2048))
            .prop_map(|(message, payload)| frame(message, &payload))
    }

    /// Encodes `frames` as a worker does and feeds them to `parent` in pieces of `split`
    /// bytes: the frames it decoded, and what it left in its buffer.
    fn decode_in_pieces(
        frames: &[Frame<FromWorker>],
        split: usize,
        parent: &mut ParentCodec,
    ) -> (Vec<Frame<FromWorker>>, BytesMut) {
        let mut wire = BytesMut::new();
        let mut worker = WorkerCodec::new(1 << 20);
        for f in frames {
            worker
                .encode_frame(&f.message, &f.payload, &mut wire)
                .unwrap();
        }
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for piece in wire.chunks(split) {
            buf.extend_from_slice(piece);
            while let Some(f) = parent.decode(&mut buf).unwrap() {
                decoded.push(f);
            }
        }
        (decoded, buf)
    }

    proptest! {
        #[test]
        fn round_trip_in_arbitrary_splits(
            frames in proptest::collection::vec(arb_frame(), 1..8),
            split in 1usize..64,
        ) {
            let mut parent = ParentCodec::new(1 << 20);
            let (decoded, rest) = decode_in_pieces(&frames, split, &mut parent);
            prop_assert_eq!(decoded, frames);
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn round_trip_through_direct_payloads_in_arbitrary_splits(
            frames in proptest::collection::vec(arb_frame(), 1..8),
            split in 1usize..64,
            direct_from in 1usize..512,
            message_peek in 1usize..64,
        ) {
            let mut parent = ParentCodec::new(1 << 20);
            parent.direct_from = direct_from;
            parent.message_peek = message_peek;
            let (decoded, rest) = decode_in_pieces(&frames, split, &mut parent);
            prop_assert_eq!(decoded, frames);
            prop_assert!(rest.is_empty());
            prop_assert!(parent.pending.is_none());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut parent = ParentCodec::new(256);
            let mut buf = BytesMut::from(&bytes[..]);
            // Any mix of Ok(Some), Ok(None) and Err is fine; a panic is not.
            for _ in 0..bytes.len() + 1 {
                match parent.decode_eof(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
