//! Frames: how one message and its payload are laid out on a link, and the codec that finds
//! them in a byte stream.
//!
//! ```text
//! +-----------------+-------------------+--------------------+----------------------+
//! | frame_len (u32) | message_len (u32) | message (postcard) | payload (raw bytes)  |
//! +-----------------+-------------------+--------------------+----------------------+
//!   big-endian        big-endian          message_len bytes    frame_len - message_len
//! ```
//!
//! `frame_len` counts the message and the payload (not the 8 header bytes); `message_len`
//! says where the message ends, so that the payload (a job's argument or result, empty for
//! other messages) never goes through postcard: it is written straight from its buffer and
//! sliced out of the read buffer without a copy. The payload of a large frame (1 MiB and
//! up) is gathered in a buffer of its own instead, allocated once its message has been
//! read, so that a `Vec<u8>` argument or result changes hands without a copy and the read
//! buffer stays small.
//!
//! A frame longer than the negotiated maximum is refused from its header, before anything
//! is allocated for it; a message length beyond its frame, a message that does not decode
//! or does not fill its length, and a frame cut short are errors, never panics. Decoding
//! follows tokio-util's length-delimited codec: an explicit [`State`], and
//! `decode(&mut buf) -> Result<Option<Frame>>` with `Ok(None)` meaning "need more bytes".

pub(crate) use super::error::ProtocolError;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::codec::Decoder;

/// Header bytes: the frame's length, then its message's length.
pub(crate) const HEADER: usize = 8;
/// Payloads up to this size are copied into the frame and sent with one write; larger ones
/// are written straight from their buffer after the header and message.
pub(crate) const INLINE_PAYLOAD: usize = 64 * 1024;
/// Frames from this size up gather their payload in a buffer of its own.
pub(crate) const DIRECT_PAYLOAD: usize = 1 << 20;
/// Arguments and results from this size up are lent rather than written, where the link
/// allows it (see [`crate::wire::message::Lent`]).
pub(crate) const LEND_FROM: usize = DIRECT_PAYLOAD;
/// Room kept in the read buffer while a large payload streams through it.
const READ_ROOM: usize = 1 << 20;

/// One decoded frame: a message and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame<M> {
    pub(crate) message: M,
    pub(crate) payload: Bytes,
}

#[cfg(test)]
impl<M> Frame<M> {
    /// A frame without payload.
    pub(crate) fn bare(message: M) -> Frame<M> {
        Frame::with(message, &[])
    }

    /// A frame with a copy of `payload`.
    pub(crate) fn with(message: M, payload: &[u8]) -> Frame<M> {
        Frame {
            message,
            payload: Bytes::copy_from_slice(payload),
        }
    }
}

/// Appends the frame of `message` and `payload` to `dst`: the whole frame when the payload
/// is small ([`INLINE_PAYLOAD`] bytes or less); otherwise only its header and message, and
/// returns the payload, which the sender writes right after `dst`, straight from its
/// buffer. Every send path (the pool's batches, its control messages, the worker's answers)
/// builds its frames here.
///
/// On error `dst` is left as it was.
pub(crate) fn put_frame<'p, M: Serialize>(
    message: &M,
    payload: &'p [u8],
    max_frame: usize,
    dst: &mut BytesMut,
) -> Result<&'p [u8], ProtocolError> {
    let start = dst.len();
    dst.put_bytes(0, HEADER);
    if let Err(e) = postcard::to_io(message, dst.writer()) {
        dst.truncate(start);
        return Err(ProtocolError::Unencodable(e));
    }
    let message_len = dst.len() - start - HEADER;
    let size = message_len + payload.len();
    let lengths = u32::try_from(size)
        .ok()
        .zip(u32::try_from(message_len).ok());
    let (Some((frame_len, message_len)), true) = (lengths, size <= max_frame) else {
        dst.truncate(start);
        return Err(ProtocolError::MessageTooLarge {
            size,
            max: max_frame,
        });
    };
    let header = (u64::from(frame_len) << 32 | u64::from(message_len)).to_be_bytes();
    dst[start..start + HEADER].copy_from_slice(&header);
    if payload.len() <= INLINE_PAYLOAD {
        dst.extend_from_slice(payload);
        return Ok(&[]);
    }
    Ok(payload)
}

/// Parses `In` frames out of a byte stream; [`put_frame`] writes them.
pub(crate) struct Codec<In> {
    max_frame: usize,
    /// Frames at least this long have their payload gathered in a `Vec` of its own,
    /// allocated once the message before it is read, rather than in the read buffer.
    direct_from: usize,
    state: State<In>,
    /// A buffer to gather the next large payload in (the worker hands its last large one
    /// back, so that a stream of large jobs reuses memory that is already mapped).
    spare: Vec<u8>,
}

/// Where the decoder is within the current frame.
enum State<In> {
    /// Before a header.
    Head,
    /// The header is read (and consumed): waiting for the whole of a small frame, or for
    /// the message of a large one.
    Body {
        frame_len: usize,
        message_len: usize,
    },
    /// A large frame whose message is decoded and whose payload is arriving in a buffer of
    /// its own.
    Payload {
        message: In,
        payload: Vec<u8>,
        /// The payload's full length.
        want: usize,
    },
}

impl<In> Codec<In> {
    pub(crate) fn new(max_frame: usize) -> Self {
        Codec {
            max_frame,
            direct_from: DIRECT_PAYLOAD,
            state: State::Head,
            spare: Vec::new(),
        }
    }

    pub(crate) fn max_frame(&self) -> usize {
        self.max_frame
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

    /// An empty buffer with room for `len` bytes, for a large payload: a buffer this
    /// process is done with (a large argument a worker has received) if one is large
    /// enough, since it is already mapped; a new one faults page by page.
    pub(crate) fn buffer_for(&mut self, len: usize) -> Vec<u8> {
        let mut buffer = std::mem::take(&mut self.spare);
        if buffer.capacity() < len {
            self.spare = buffer;
            buffer = crate::spares::SPARES.empty(len);
        }
        buffer.clear();
        buffer.reserve_exact(len);
        buffer
    }

    /// Hands the codec the whole payload of the large frame whose message it has decoded,
    /// gathered elsewhere (rank 0 of an MPI pool receives it from a node agent into a
    /// buffer of its own), so that it becomes the frame's payload without a copy; returns
    /// the buffer the codec had set aside for it. `Err(payload)` if the codec is not
    /// waiting for a payload of exactly that length with none of it gathered yet: the
    /// caller then feeds its bytes as it would any others.
    #[cfg(feature = "mpi")]
    pub(crate) fn supply_payload(&mut self, payload: Vec<u8>) -> Result<Vec<u8>, Vec<u8>> {
        match &mut self.state {
            State::Payload {
                payload: gathered,
                want,
                ..
            } if gathered.is_empty() && *want == payload.len() => {
                Ok(std::mem::replace(gathered, payload))
            }
            _ => Err(payload),
        }
    }

    /// Drops the large frame whose payload is arriving (its writer died writing it), so
    /// that the next bytes are read as the start of a frame; returns the buffer that
    /// gathered it, or `None` (and changes nothing) if no payload is arriving.
    #[cfg(feature = "mpi")]
    pub(crate) fn abandon_payload(&mut self) -> Option<Vec<u8>> {
        match std::mem::replace(&mut self.state, State::Head) {
            State::Payload { payload, .. } => Some(payload),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// Whether `buffered`, the bytes read and not yet decoded, holds a whole frame: the
    /// next [`decode`](Decoder::decode) returns one (or fails) without more input.
    pub(crate) fn has_frame(&self, buffered: &[u8]) -> bool {
        match (&self.state, buffered.first_chunk::<HEADER>()) {
            (State::Head, Some(head)) => buffered.len() - HEADER >= header_lengths(head).0,
            _ => false,
        }
    }

    /// The buffer a large payload is being gathered in and how many bytes it still lacks,
    /// so that a blocking reader can read them into it directly.
    pub(crate) fn payload_in_progress(&mut self) -> Option<(&mut Vec<u8>, usize)> {
        match &mut self.state {
            State::Payload { payload, want, .. } => {
                let missing = *want - payload.len();
                Some((payload, missing))
            }
            _ => None,
        }
    }
}

/// The lengths a frame's header gives: the frame's (the bytes after the header), then its
/// message's.
pub(crate) fn header_lengths(head: &[u8; HEADER]) -> (usize, usize) {
    let [a, b, c, d, e, f, g, h] = *head;
    (
        u32::from_be_bytes([a, b, c, d]) as usize,
        u32::from_be_bytes([e, f, g, h]) as usize,
    )
}

/// Decodes a message that must fill `bytes` exactly.
fn parse_message<In: DeserializeOwned>(bytes: &[u8]) -> Result<In, ProtocolError> {
    match postcard::take_from_bytes::<In>(bytes) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(ProtocolError::Corrupt(format!(
            "its message ends {} bytes before the length its header gives",
            rest.len()
        ))),
        Err(e) => Err(ProtocolError::Malformed(e)),
    }
}

impl<In: DeserializeOwned> Decoder for Codec<In> {
    type Item = Frame<In>;
    type Error = ProtocolError;

    /// `Ok(None)` means "need more bytes".
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame<In>>, ProtocolError> {
        if let State::Head = self.state {
            let Some(head) = src.first_chunk::<HEADER>() else {
                return Ok(None);
            };
            let (frame_len, message_len) = header_lengths(head);
            if frame_len > self.max_frame {
                return Err(ProtocolError::FrameTooLarge {
                    max: self.max_frame,
                });
            }
            if message_len > frame_len {
                return Err(ProtocolError::Corrupt(format!(
                    "a message of {message_len} bytes in a frame of {frame_len}"
                )));
            }
            src.advance(HEADER);
            self.state = State::Body {
                frame_len,
                message_len,
            };
        }
        if let State::Body {
            frame_len,
            message_len,
        } = self.state
        {
            if frame_len < self.direct_from {
                if src.len() < frame_len {
                    src.reserve(frame_len - src.len());
                    return Ok(None);
                }
                let mut frame = src.split_to(frame_len);
                // At the next frame's start whatever this one holds.
                self.state = State::Head;
                let message = parse_message(&frame[..message_len])?;
                // The payload is the rest of the frame: split off, not copied.
                let payload = frame.split_off(message_len).freeze();
                return Ok(Some(Frame { message, payload }));
            }
            if src.len() < message_len {
                // A message so long is rare: room grows as its bytes come, not from the
                // header alone.
                src.reserve((message_len - src.len()).min(READ_ROOM));
                return Ok(None);
            }
            let message_bytes = src.split_to(message_len);
            self.state = State::Head;
            let message = parse_message(&message_bytes)?;
            let want = frame_len - message_len;
            let payload = self.buffer_for(want);
            self.state = State::Payload {
                message,
                payload,
                want,
            };
        }
        let State::Payload { payload, want, .. } = &mut self.state else {
            return Ok(None);
        };
        let take = src.len().min(*want - payload.len());
        payload.extend_from_slice(&src[..take]);
        src.advance(take);
        let missing = *want - payload.len();
        if missing > 0 {
            src.reserve(READ_ROOM.min(missing));
            return Ok(None);
        }
        match std::mem::replace(&mut self.state, State::Head) {
            // A `Vec` becomes `Bytes` without a copy.
            State::Payload {
                message, payload, ..
            } => Ok(Some(Frame {
                message,
                payload: Bytes::from(payload),
            })),
            _ => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame<In>>, ProtocolError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && matches!(self.state, State::Head) => Ok(None),
            None => Err(ProtocolError::Truncated),
        }
    }
}

/// Feeds arbitrary bytes to both sides' decoders, as a fuzzer does: any mix of messages,
/// "need more" and errors is fine; a panic or a huge allocation is a bug.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_decode(data: &[u8]) {
    use super::message::{FromWorker, HANDSHAKE_MAX_FRAME, ToWorker};
    fn drain<In: DeserializeOwned>(mut codec: Codec<In>, data: &[u8]) {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(_)) = codec.decode_eof(&mut buf) {}
    }
    drain(Codec::<FromWorker>::new(HANDSHAKE_MAX_FRAME), data);
    drain(Codec::<ToWorker>::new(HANDSHAKE_MAX_FRAME), data);
    // Past the handshake, with large frames gathered directly.
    let mut direct = Codec::<FromWorker>::new(1 << 20);
    direct.direct_from = 16;
    drain(direct, data);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::run::Outcome;
    use crate::wire::message::{FromWorker, HANDSHAKE_MAX_FRAME, SECRET_LEN, ToWorker};
    use proptest::prelude::*;

    type ParentCodec = Codec<FromWorker>;

    /// The whole frame of `message` and `payload` as it goes on the wire.
    pub(crate) fn wire(message: &FromWorker, payload: &[u8]) -> BytesMut {
        let mut bytes = BytesMut::new();
        let tail = put_frame(message, payload, 1 << 30, &mut bytes).unwrap();
        bytes.extend_from_slice(tail);
        bytes
    }

    #[test]
    fn the_header_states_both_lengths() {
        let message = postcard::to_allocvec(&FromWorker::done(7)).unwrap();
        let bytes = wire(&FromWorker::done(7), &[1, 2, 3]);
        let frame_len = (message.len() + 3) as u32;
        let mut expected = frame_len.to_be_bytes().to_vec();
        expected.extend_from_slice(&(message.len() as u32).to_be_bytes());
        expected.extend_from_slice(&message);
        expected.extend_from_slice(&[1, 2, 3]);
        assert_eq!(&bytes[..], &expected[..]);
    }

    #[test]
    fn a_large_payload_is_left_for_the_caller_to_write() {
        let large = vec![4_u8; INLINE_PAYLOAD + 1];
        let mut head = BytesMut::new();
        let tail = put_frame(&FromWorker::done(1), &large, 1 << 20, &mut head).unwrap();
        assert_eq!(tail.len(), large.len(), "the payload is not copied");
        let message_len = head.len() - HEADER;
        assert_eq!(
            u32::from_be_bytes(head[..4].try_into().unwrap()) as usize,
            message_len + large.len(),
            "the header counts the payload written after it"
        );
        let mut small = BytesMut::new();
        assert!(
            put_frame(&FromWorker::done(1), &[9; 10], 1 << 20, &mut small)
                .unwrap()
                .is_empty()
        );
        assert_eq!(small.len(), HEADER + message_len + 10);
    }

    /// The head of a large frame (its header and message) and its payload, apart.
    #[cfg(feature = "mpi")]
    fn large_frame_apart(id: u64, payload: &[u8]) -> (BytesMut, Vec<u8>) {
        let whole = wire(&FromWorker::done(id), payload);
        let head = whole.len() - payload.len();
        (BytesMut::from(&whole[..head]), payload.to_vec())
    }

    #[test]
    #[cfg(feature = "mpi")]
    fn a_payload_gathered_elsewhere_becomes_the_frames_without_a_copy() {
        let mut parent = ParentCodec::new(1 << 30);
        let (mut buf, payload) = large_frame_apart(3, &vec![5_u8; DIRECT_PAYLOAD + 7]);
        assert_eq!(
            parent.decode(&mut buf).unwrap(),
            None,
            "the payload is missing"
        );
        let at = payload.as_ptr();
        let shorter = payload[1..].to_vec();
        assert_eq!(
            parent
                .supply_payload(shorter)
                .map(|_| ())
                .map_err(|p| p.len()),
            Err(DIRECT_PAYLOAD + 6),
            "a payload of another length is given back"
        );
        let set_aside = parent.supply_payload(payload).map_err(|p| p.len());
        assert_eq!(
            set_aside.map(|b| b.len()),
            Ok(0),
            "the codec had gathered nothing"
        );
        let frame = parent.decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.message, FromWorker::done(3));
        assert_eq!(
            frame.payload.as_ptr(),
            at,
            "the supplied buffer, not a copy"
        );
        assert_eq!(frame.payload.len(), DIRECT_PAYLOAD + 7);
        buf.extend_from_slice(&wire(&FromWorker::done(4), &[1]));
        assert_eq!(
            parent.decode(&mut buf).unwrap(),
            Some(Frame::with(FromWorker::done(4), &[1])),
            "the frame after it"
        );
        // Not waiting for a payload: given back.
        assert!(parent.supply_payload(vec![0; 3]).is_err());
    }

    #[test]
    #[cfg(feature = "mpi")]
    fn a_payload_begun_is_not_replaced_and_an_abandoned_one_is_forgotten() {
        let mut parent = ParentCodec::new(1 << 30);
        let (mut buf, payload) = large_frame_apart(3, &vec![5_u8; DIRECT_PAYLOAD]);
        buf.extend_from_slice(&payload[..10]);
        assert_eq!(parent.decode(&mut buf).unwrap(), None);
        assert_eq!(
            parent
                .supply_payload(payload)
                .map(|_| ())
                .map_err(|p| p.len()),
            Err(DIRECT_PAYLOAD),
            "ten bytes of it were gathered already"
        );
        assert_eq!(parent.abandon_payload().map(|p| p.len()), Some(10));
        assert!(
            parent.abandon_payload().is_none(),
            "nothing is arriving now"
        );
        let mut next = wire(&FromWorker::done(4), &[2]);
        assert_eq!(
            parent.decode(&mut next).unwrap(),
            Some(Frame::with(FromWorker::done(4), &[2])),
            "the next bytes are the start of a frame"
        );
    }

    #[test]
    fn frames_arrive_whole_from_partial_input() {
        let full = wire(&FromWorker::done(7), &[1, 2, 3]);
        let mut parent = ParentCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        for (i, byte) in full.iter().enumerate() {
            buf.put_u8(*byte);
            let decoded = parent.decode(&mut buf).unwrap();
            if i + 1 < full.len() {
                assert_eq!(decoded, None, "frame decoded early at byte {i}");
            } else {
                assert_eq!(decoded, Some(Frame::with(FromWorker::done(7), &[1, 2, 3])));
            }
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut parent = ParentCodec::new(HANDSHAKE_MAX_FRAME);
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX); // claims a 4 GiB frame
        buf.put_u32(4);
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
    fn a_message_longer_than_its_frame_is_corrupt() {
        let mut parent = ParentCodec::new(1024);
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_u32(4);
        buf.put_slice(&[0, 0, 0]);
        assert!(matches!(
            parent.decode(&mut buf),
            Err(ProtocolError::Corrupt(m)) if m.contains("a message of 4 bytes in a frame of 3")
        ));
    }

    #[test]
    fn a_message_that_does_not_fill_its_length_is_corrupt() {
        let message = postcard::to_allocvec(&FromWorker::Ready { reads_lent: false }).unwrap();
        let mut buf = BytesMut::new();
        buf.put_u32(message.len() as u32 + 2);
        buf.put_u32(message.len() as u32 + 2); // claims the payload's bytes too
        buf.put_slice(&message);
        buf.put_slice(&[0, 0]);
        let mut parent = ParentCodec::new(1024);
        assert!(matches!(
            parent.decode(&mut buf),
            Err(ProtocolError::Corrupt(m)) if m.contains("ends 2 bytes before")
        ));
    }

    #[test]
    fn after_a_frame_that_does_not_decode_the_codec_is_at_the_next_one() {
        for direct_from in [DIRECT_PAYLOAD, 1] {
            let mut buf = BytesMut::new();
            buf.put_u32(3);
            buf.put_u32(3);
            buf.put_slice(&[0xff, 0xff, 0xff]); // no such variant
            buf.extend_from_slice(&wire(&FromWorker::Ready { reads_lent: false }, &[]));
            let mut parent = ParentCodec::new(1024);
            parent.direct_from = direct_from;
            assert!(matches!(
                parent.decode(&mut buf),
                Err(ProtocolError::Malformed(_))
            ));
            assert_eq!(
                parent.decode_eof(&mut buf).unwrap(),
                Some(Frame::bare(FromWorker::Ready { reads_lent: false })),
                "direct from {direct_from}"
            );
        }
    }

    #[test]
    fn corrupt_body_is_an_error() {
        let mut parent = ParentCodec::new(1024);
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_u32(3);
        buf.put_slice(&[0xff, 0xff, 0xff]); // no such variant
        assert!(matches!(
            parent.decode(&mut buf),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn truncated_frame_at_eof_is_an_error() {
        let mut bytes = wire(&FromWorker::Ready { reads_lent: false }, &[]);
        bytes.put_u32(100);
        bytes.put_u32(1);
        bytes.put_slice(b"short");
        let mut parent = ParentCodec::new(1024);
        assert_eq!(
            parent.decode_eof(&mut bytes).unwrap(),
            Some(Frame::bare(FromWorker::Ready { reads_lent: false }))
        );
        assert!(matches!(
            parent.decode_eof(&mut bytes),
            Err(ProtocolError::Truncated)
        ));
        // A header cut short is truncated too.
        let mut half = BytesMut::from(&[0_u8, 0, 0][..]);
        assert!(matches!(
            ParentCodec::new(1024).decode_eof(&mut half),
            Err(ProtocolError::Truncated)
        ));
    }

    #[test]
    fn a_payload_over_the_limit_fails_and_leaves_the_buffer_alone() {
        let mut buf = BytesMut::new();
        put_frame(&FromWorker::Ready { reads_lent: false }, &[], 64, &mut buf).unwrap();
        let before = buf.clone();
        for payload in [&[0_u8; 100][..], &[0; INLINE_PAYLOAD + 1]] {
            let err = put_frame(&FromWorker::done(1), payload, 64, &mut buf).unwrap_err();
            assert!(matches!(
                err,
                ProtocolError::MessageTooLarge { max: 64, .. }
            ));
            assert_eq!(buf, before);
        }
    }

    #[test]
    fn a_large_frame_over_the_limit_is_refused_before_its_message() {
        let mut parent = ParentCodec::new(DIRECT_PAYLOAD);
        let mut buf = BytesMut::new();
        buf.put_u32(DIRECT_PAYLOAD as u32 + 1);
        buf.put_u32(1);
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
            (".*", proptest::option::of(".*"), proptest::option::of(".*")).prop_map(
                |(message, location, backtrace)| Outcome::Panicked {
                    message,
                    location,
                    backtrace
                }
            ),
            ".*".prop_map(Outcome::Decode),
            ".*".prop_map(Outcome::Encode),
            (any::<u64>(), any::<u64>()).prop_map(|(size, max)| Outcome::TooLarge { size, max }),
            Just(Outcome::Revoked),
        ]
    }

    fn arb_frame() -> impl Strategy<Value = Frame<FromWorker>> {
        let message = prop_oneof![
            any::<bool>().prop_map(|reads_lent| FromWorker::Ready { reads_lent }),
            (any::<u64>(), arb_outcome())
                .prop_map(|(id, outcome)| FromWorker::Done { id, outcome }),
            (any::<u64>(), arb_outcome(), any::<u64>(), any::<u64>()).prop_map(
                |(id, outcome, addr, len)| FromWorker::DoneLent {
                    id,
                    outcome,
                    result: crate::wire::message::Lent { addr, len },
                }
            ),
            (any::<u64>(), any::<[u8; SECRET_LEN]>())
                .prop_map(|(worker_id, secret)| FromWorker::HookMissing { worker_id, secret }),
            (".*", proptest::option::of(".*"))
                .prop_map(|(message, location)| FromWorker::InitFailed { message, location }),
        ];
        (message, proptest::collection::vec(any::<u8>(), 0..2048))
            .prop_map(|(message, payload)| Frame::with(message, &payload))
    }

    /// Encodes `frames` as a worker does and feeds them to `parent` in pieces of `split`
    /// bytes: the frames it decoded, and what it left in its buffer.
    fn decode_in_pieces(
        frames: &[Frame<FromWorker>],
        split: usize,
        parent: &mut ParentCodec,
    ) -> (Vec<Frame<FromWorker>>, BytesMut) {
        let mut bytes = BytesMut::new();
        for f in frames {
            bytes.extend_from_slice(&wire(&f.message, &f.payload));
        }
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for piece in bytes.chunks(split) {
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
        ) {
            let mut parent = ParentCodec::new(1 << 20);
            parent.direct_from = direct_from;
            let (decoded, rest) = decode_in_pieces(&frames, split, &mut parent);
            prop_assert_eq!(decoded, frames);
            prop_assert!(rest.is_empty());
            prop_assert!(matches!(parent.state, State::Head));
        }

        #[test]
        fn any_header_is_a_frame_a_wait_or_an_error(
            frame_len in any::<u32>(),
            message_len in any::<u32>(),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut buf = BytesMut::new();
            buf.put_u32(frame_len);
            buf.put_u32(message_len);
            buf.put_slice(&body);
            let mut parent = ParentCodec::new(1024);
            match parent.decode(&mut buf) {
                Err(ProtocolError::FrameTooLarge { .. }) => prop_assert!(frame_len > 1024),
                Err(ProtocolError::Corrupt(_)) if message_len > frame_len => {}
                Ok(None) => {
                    prop_assert!(frame_len <= 1024 && message_len <= frame_len);
                    prop_assert!(body.len() < frame_len as usize);
                }
                Ok(Some(_)) | Err(ProtocolError::Malformed(_) | ProtocolError::Corrupt(_)) => {
                    prop_assert!(frame_len <= 1024 && message_len <= frame_len);
                    prop_assert!(body.len() >= frame_len as usize);
                }
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
            prop_assert!(buf.capacity() < 1 << 20, "allocated for a header");
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
            let mut worker = Codec::<ToWorker>::new(256);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = worker.decode_eof(&mut buf) {}
        }
    }
}
