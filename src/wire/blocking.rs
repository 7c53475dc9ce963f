//! [`BlockingConn`]: a worker's end of a link, over any blocking byte stream, with no
//! runtime. The pool's end is async and belongs to the backend that owns the link.

use super::frame::{Codec, Frame, ProtocolError, put_frame};
use super::outbox::Outbox;
use bytes::BytesMut;
use serde::{Serialize, de::DeserializeOwned};
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use tokio_util::codec::Decoder;

/// Bytes read per `read` call at most.
const SCRATCH: usize = 256 * 1024;

/// A blocking connection that reads `In` frames and writes `Out` frames.
pub(crate) struct BlockingConn<S, In, Out> {
    stream: S,
    codec: Codec<In>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// Where reads land before they join `read_buf`: initialized once, so that no read
    /// has to zero memory first.
    scratch: Box<[u8]>,
    _sends: PhantomData<fn(Out)>,
}

impl<S: Read + Write, In: DeserializeOwned, Out: Serialize> BlockingConn<S, In, Out> {
    pub(crate) fn new(stream: S, max_frame: usize) -> Self {
        BlockingConn {
            stream,
            codec: Codec::new(max_frame),
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(64 * 1024),
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            _sends: PhantomData,
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
            if let Some((payload, missing)) = self.codec.payload_in_progress() {
                // A large payload: read it straight into its own buffer.
                let read = (&mut self.stream)
                    .take(missing as u64)
                    .read_to_end(payload)?;
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

    /// An empty buffer with room for a large payload of `len` bytes (see
    /// [`Codec::buffer_for`]).
    pub(crate) fn buffer_for(&mut self, len: usize) -> Vec<u8> {
        self.codec.buffer_for(len)
    }

    /// The largest frame the peer accepts.
    pub(crate) fn max_frame(&self) -> usize {
        self.codec.max_frame()
    }

    /// The stream.
    pub(crate) fn stream(&self) -> &S {
        &self.stream
    }

    /// The raw stream, for tests that write broken frames.
    #[cfg(test)]
    pub(crate) fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Whether the next frame is here already: [`recv`](Self::recv) returns it without
    /// reading.
    pub(crate) fn next_is_here(&self) -> bool {
        self.codec.has_frame(&self.read_buf)
    }

    /// Sends `message` with `payload` through `outbox`: held back there if `may_hold`, the
    /// next frame is here already (the worker has another job to run first) and it fits,
    /// written at once (after what is held) otherwise.
    pub(crate) fn send_through(
        &mut self,
        outbox: &Outbox,
        message: &Out,
        payload: &[u8],
        may_hold: bool,
    ) -> Result<(), ProtocolError> {
        let max_frame = self.codec.max_frame();
        let tail = put_frame(message, payload, max_frame, &mut self.write_buf)?;
        let held = if tail.is_empty() && may_hold && self.next_is_here() {
            outbox.hold(&self.write_buf)
        } else {
            Ok(false)
        };
        let result = match held {
            Ok(true) => Ok(()),
            Ok(false) => outbox.send(&self.write_buf, tail),
            Err(e) => Err(e),
        };
        self.write_buf.clear();
        result.map_err(ProtocolError::Io)
    }

    pub(crate) fn send(&mut self, message: &Out) -> Result<(), ProtocolError> {
        self.send_with(message, &[])
    }

    /// Sends `message` with `payload` (see [`put_frame`]): one write for a small payload;
    /// the header and message, then the payload straight from its buffer, for a large one.
    pub(crate) fn send_with(&mut self, message: &Out, payload: &[u8]) -> Result<(), ProtocolError> {
        let max_frame = self.codec.max_frame();
        let tail = put_frame(message, payload, max_frame, &mut self.write_buf)?;
        let result = self
            .stream
            .write_all(&self.write_buf)
            .and_then(|()| self.stream.write_all(tail))
            .and_then(|()| self.stream.flush());
        self.write_buf.clear();
        result.map_err(ProtocolError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::INLINE_PAYLOAD;
    use crate::wire::message::{FromWorker, ToWorker};

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

    type Sender = BlockingConn<Pipe, ToWorker, FromWorker>;
    type Receiver = BlockingConn<Pipe, FromWorker, ToWorker>;

    /// What `send` wrote, read back by a fresh receiver.
    fn receiver_of(sender: &mut Sender, max_frame: usize) -> Receiver {
        let wire = std::mem::take(&mut sender.stream_mut().1);
        BlockingConn::new(Pipe(std::io::Cursor::new(wire), Vec::new()), max_frame)
    }

    #[test]
    fn sends_small_and_large_payloads_and_reads_them_back() {
        let large = vec![9_u8; INLINE_PAYLOAD + 1000]; // written after its head
        let mut sender: Sender = BlockingConn::new(Pipe(Default::default(), Vec::new()), 1 << 20);
        sender.send_with(&FromWorker::done(1), &large).unwrap();
        sender.send_with(&FromWorker::done(2), &[1, 2]).unwrap();
        sender
            .send(&FromWorker::Ready { reads_lent: false })
            .unwrap();
        let mut receiver = receiver_of(&mut sender, 1 << 20);
        assert_eq!(
            receiver.recv().unwrap(),
            Some(Frame::with(FromWorker::done(1), &large))
        );
        assert_eq!(
            receiver.recv().unwrap(),
            Some(Frame::with(FromWorker::done(2), &[1, 2]))
        );
        assert_eq!(
            receiver.recv().unwrap(),
            Some(Frame::bare(FromWorker::Ready { reads_lent: false }))
        );
        assert_eq!(receiver.recv().unwrap(), None);
    }

    #[test]
    fn a_large_payload_is_read_into_its_own_buffer_which_can_be_recycled() {
        let large: Vec<u8> = (0..(1 << 20) + 4321).map(|i| i as u8).collect();
        let mut sender: Sender = BlockingConn::new(Pipe(Default::default(), Vec::new()), 4 << 20);
        sender.send_with(&FromWorker::done(1), &large).unwrap();
        sender.send_with(&FromWorker::done(2), &[7]).unwrap();
        sender.send_with(&FromWorker::done(3), &large).unwrap();
        let mut receiver = receiver_of(&mut sender, 4 << 20);
        let first = receiver.recv().unwrap().unwrap();
        assert_eq!(first, Frame::with(FromWorker::done(1), &large));
        assert!(
            first.payload.is_unique(),
            "a large payload has a buffer of its own"
        );
        let buffer = Vec::from(first.payload);
        let address = buffer.as_ptr();
        receiver.recycle(buffer);
        assert_eq!(
            receiver.recv().unwrap(),
            Some(Frame::with(FromWorker::done(2), &[7]))
        );
        let third = receiver.recv().unwrap().unwrap();
        assert_eq!(third, Frame::with(FromWorker::done(3), &large));
        let reused = Vec::from(third.payload);
        assert_eq!(reused.as_ptr(), address, "not recycled");
        assert_eq!(receiver.recv().unwrap(), None);
    }

    #[test]
    fn a_large_frame_cut_short_is_truncated() {
        let large = vec![5_u8; (1 << 20) + 10];
        let mut sender: Sender = BlockingConn::new(Pipe(Default::default(), Vec::new()), 4 << 20);
        sender.send_with(&FromWorker::done(1), &large).unwrap();
        let mut receiver = receiver_of(&mut sender, 4 << 20);
        receiver.stream.0.get_mut().pop();
        assert!(matches!(receiver.recv(), Err(ProtocolError::Truncated)));
        // The same through the async side's decoder, fed the bytes at once.
        let mut wire = BytesMut::from(&receiver.stream.0.get_ref()[..]);
        assert!(matches!(
            Codec::<FromWorker>::new(4 << 20).decode_eof(&mut wire),
            Err(ProtocolError::Truncated)
        ));
    }

    #[test]
    fn a_message_over_the_limit_is_refused_and_nothing_is_written() {
        let mut sender: Sender = BlockingConn::new(Pipe(Default::default(), Vec::new()), 64);
        assert!(matches!(
            sender.send_with(&FromWorker::done(1), &[0; 100]),
            Err(ProtocolError::MessageTooLarge { max: 64, .. })
        ));
        assert!(sender.stream_mut().1.is_empty());
        sender
            .send(&FromWorker::Ready { reads_lent: false })
            .unwrap();
        let mut receiver = receiver_of(&mut sender, 64);
        assert_eq!(
            receiver.recv().unwrap(),
            Some(Frame::bare(FromWorker::Ready { reads_lent: false }))
        );
    }
}
