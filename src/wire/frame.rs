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
/// The most room set aside after a frame for a next one as long (see `decode`).
const NEXT_ROOM: usize = INLINE_PAYLOAD;

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
    /// Whether every large payload is handed over whole ([`Codec::supply_payload`])
    /// rather than read: then none is given a buffer to be gathered in.
    #[cfg(feature = "mpi")]
    supplied: bool,
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
            #[cfg(feature = "mpi")]
            supplied: false,
        }
    }

    /// A codec whose large payloads are each handed over whole, in a buffer of their own
    /// ([`Codec::supply_payload`]), as a node agent's are to rank 0: it sets no buffer
    /// aside for them, which would take a buffer this process keeps from the receive that
    /// fills the payload's own (and leave that one to fault its pages in).
    #[cfg(feature = "mpi")]
    pub(crate) fn supplied(max_frame: usize) -> Self {
        Codec {
            supplied: true,
            ..Codec::new(max_frame)
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
        #[cfg(feature = "mpi")]
        if self.supplied {
            // Grows only if the payload comes as bytes after all.
            return Vec::new();
        }
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
    /// the buffer the codec had set aside for it (empty for a [`Codec::supplied`] one).
    /// `Err(payload)`, changing nothing, if the codec is not waiting for a payload of
    /// exactly that length with none of it gathered yet: it is not this frame's.
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
                // Room for a next frame as long as this one, so that one read takes it
                // whole: what is left after a frame split off is only the end of its
                // buffer, and a chunk's answer was read in two calls, its head into those
                // few bytes and the rest after a `reserve`.
                src.reserve((HEADER + frame_len).min(NEXT_ROOM));
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
pub(crate) mod tests;
