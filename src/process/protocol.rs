//! The wire protocol between a pool and its worker processes: the messages, and the codec
//! that frames them (a `u32` big-endian length, then a postcard body).
//!
//! Frames longer than the negotiated maximum are refused before anything is allocated for
//! them; short, corrupt or unexpected frames are errors, never panics. During the handshake
//! the maximum is [`HANDSHAKE_MAX_FRAME`], so an unauthenticated peer cannot make the
//! parent allocate more than that.

use crate::job::{ImageId, Outcome};
use crate::raw::Target;
use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Bumped whenever a message changes shape.
pub(crate) const PROTOCOL_VERSION: u32 = 1;
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
    /// The initializer (if any) ran; jobs may come.
    Ready,
    /// The initializer panicked; the worker exits.
    InitFailed {
        message: String,
        location: Option<String>,
    },
    /// The answer to `Run { id, .. }`.
    Done {
        id: u64,
        outcome: Outcome,
        #[serde(with = "serde_bytes")]
        output: Vec<u8>,
    },
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
    /// image), the initializer to run, and the frame limit from now on.
    Welcome {
        image: ImageId,
        probe: i64,
        initializer: Option<Target>,
        max_frame: u64,
    },
    /// Run one job (or one chunk of a `map`).
    Run {
        id: u64,
        target: Target,
        #[serde(with = "serde_bytes")]
        input: Vec<u8>,
    },
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
    frames: LengthDelimitedCodec,
    max_frame: usize,
    _messages: PhantomData<fn(Out) -> In>,
}

impl<In, Out> Codec<In, Out> {
    pub(crate) fn new(max_frame: usize) -> Self {
        Codec {
            frames: LengthDelimitedCodec::builder()
                .big_endian()
                .length_field_type::<u32>()
                .max_frame_length(max_frame)
                .new_codec(),
            max_frame,
            _messages: PhantomData,
        }
    }

    pub(crate) fn set_max_frame(&mut self, max_frame: usize) {
        self.frames.set_max_frame_length(max_frame);
        self.max_frame = max_frame;
    }
}

impl<In: DeserializeOwned, Out> Decoder for Codec<In, Out> {
    type Item = In;
    type Error = ProtocolError;

    /// `Ok(None)` means "need more bytes".
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, ProtocolError> {
        match self.frames.decode(src) {
            Ok(Some(frame)) => postcard::from_bytes(&frame)
                .map(Some)
                .map_err(|e| ProtocolError::Corrupt(e.to_string())),
            Ok(None) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(ProtocolError::FrameTooLarge {
                max: self.max_frame,
            }),
            Err(e) => Err(ProtocolError::Io(e)),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, ProtocolError> {
        match self.decode(src)? {
            Some(message) => Ok(Some(message)),
            None if src.is_empty() => Ok(None),
            None => Err(ProtocolError::Truncated),
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for Codec<In, Out> {
    type Error = ProtocolError;

    fn encode(&mut self, message: Out, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        self.encode_ref(&message, dst)
    }
}

impl<In, Out: Serialize> Codec<In, Out> {
    /// Appends one frame to `dst`; on error `dst` is left as it was.
    pub(crate) fn encode_ref(
        &mut self,
        message: &Out,
        dst: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
        let start = dst.len();
        dst.put_u32(0);
        let written = postcard::to_io(message, dst.writer()).map(drop);
        let size = dst.len() - start - HEADER;
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

    /// The next message, or `None` when the peer closed the connection between frames.
    pub(crate) fn recv(&mut self) -> Result<Option<In>, ProtocolError> {
        loop {
            if let Some(message) = self.codec.decode(&mut self.read_buf)? {
                return Ok(Some(message));
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

    /// The raw stream, for tests that write broken frames.
    #[cfg(test)]
    pub(crate) fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    pub(crate) fn send(&mut self, message: &Out) -> Result<(), ProtocolError> {
        self.codec.encode_ref(message, &mut self.write_buf)?;
        let result = self
            .stream
            .write_all(&self.write_buf)
            .and_then(|()| self.stream.flush());
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

    fn done(id: u64, output: Vec<u8>) -> FromWorker {
        FromWorker::Done {
            id,
            outcome: Outcome::Ok,
            output,
        }
    }

    #[test]
    fn frames_arrive_whole_from_partial_input() {
        let mut bytes = BytesMut::new();
        WorkerCodec::new(1 << 20)
            .encode(done(7, vec![1, 2, 3]), &mut bytes)
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
                assert_eq!(decoded, Some(done(7, vec![1, 2, 3])));
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
            .encode(FromWorker::Ready, &mut bytes)
            .unwrap();
        bytes.put_u32(100);
        bytes.put_slice(b"short");
        let mut parent = ParentCodec::new(1024);
        assert_eq!(
            parent.decode_eof(&mut bytes).unwrap(),
            Some(FromWorker::Ready)
        );
        assert!(matches!(
            parent.decode_eof(&mut bytes),
            Err(ProtocolError::Truncated)
        ));
    }

    #[test]
    fn encoding_over_the_limit_fails_and_leaves_the_buffer_alone() {
        let mut worker = WorkerCodec::new(64);
        let mut buf = BytesMut::new();
        worker.encode(FromWorker::Ready, &mut buf).unwrap();
        let before = buf.clone();
        let err = worker.encode(done(1, vec![0; 100]), &mut buf).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::MessageTooLarge { max: 64, .. }
        ));
        assert_eq!(buf, before);
    }

    #[test]
    fn blocking_conn_reads_back_to_back_frames_and_eof() {
        let mut wire = BytesMut::new();
        let mut worker = WorkerCodec::new(1 << 20);
        worker.encode(done(1, vec![9; 100_000]), &mut wire).unwrap();
        worker.encode(FromWorker::Ready, &mut wire).unwrap();
        let stream = std::io::Cursor::new(wire.to_vec());
        let mut conn: BlockingConn<_, FromWorker, ToWorker> =
            BlockingConn::new(ReadOnly(stream), 1 << 20);
        assert_eq!(conn.recv().unwrap(), Some(done(1, vec![9; 100_000])));
        assert_eq!(conn.recv().unwrap(), Some(FromWorker::Ready));
        assert_eq!(conn.recv().unwrap(), None);
    }

    struct ReadOnly<R>(R);
    impl<R: Read> Read for ReadOnly<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl<R> Write for ReadOnly<R> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
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

    fn arb_from_worker() -> impl Strategy<Value = FromWorker> {
        prop_oneof![
            Just(FromWorker::Ready),
            (
                any::<u64>(),
                arb_outcome(),
                proptest::collection::vec(any::<u8>(), 0..2048)
            )
                .prop_map(|(id, outcome, output)| FromWorker::Done {
                    id,
                    outcome,
                    output
                }),
            (any::<u64>(), any::<[u8; SECRET_LEN]>())
                .prop_map(|(worker_id, secret)| FromWorker::HookMissing { worker_id, secret }),
            (".*", proptest::option::of(".*"))
                .prop_map(|(message, location)| FromWorker::InitFailed { message, location }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip_in_arbitrary_splits(
            messages in proptest::collection::vec(arb_from_worker(), 1..8),
            split in 1usize..64,
        ) {
            let mut wire = BytesMut::new();
            let mut worker = WorkerCodec::new(1 << 20);
            for m in &messages {
                worker.encode(m.clone(), &mut wire).unwrap();
            }
            let mut parent = ParentCodec::new(1 << 20);
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            for piece in wire.chunks(split) {
                buf.extend_from_slice(piece);
                while let Some(m) = parent.decode(&mut buf).unwrap() {
                    decoded.push(m);
                }
            }
            prop_assert_eq!(decoded, messages);
            prop_assert!(buf.is_empty());
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
