//! Frames found by their headers alone, for a reader that hands them on undecoded (an
//! MPI node agent); the layout is [`super::frame`]'s.

use super::frame::{HEADER, header_lengths};
use super::message::FromWorker;

/// The whole frames at the start of `bytes`, found by their headers alone, each as the
/// frame's bytes and its message's: for a reader that hands frames on without decoding
/// them (an MPI node agent). It stops at the first frame cut short, or whose lengths do
/// not describe a frame.
pub(crate) fn whole_frames(mut bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    std::iter::from_fn(move || {
        let (frame_len, message_len) = header_lengths(bytes.first_chunk::<HEADER>()?);
        let end = HEADER.checked_add(frame_len)?;
        if message_len > frame_len || end > bytes.len() {
            return None;
        }
        let (frame, rest) = bytes.split_at(end);
        bytes = rest;
        Some((frame, &frame[HEADER..HEADER + message_len]))
    })
}

/// The job a worker's frame answers, from the frame's message; `None` for any other
/// message, or bytes that do not decode.
pub(crate) fn answer_id(message: &[u8]) -> Option<u64> {
    match postcard::from_bytes(message) {
        Ok(FromWorker::Done { id, .. }) => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::tests::wire;
    use crate::wire::frame::{INLINE_PAYLOAD, put_frame};
    use bytes::BytesMut;

    #[test]
    fn whole_frames_are_found_by_their_headers_and_a_frame_cut_short_is_not() {
        let large = vec![5_u8; INLINE_PAYLOAD + 10];
        let mut stream = wire(&FromWorker::done(1), &[1, 2]).to_vec();
        let mut head = BytesMut::new();
        let tail = put_frame(&FromWorker::done(2), &large, 1 << 20, &mut head).unwrap();
        stream.extend_from_slice(&head);
        stream.extend_from_slice(tail);
        let whole = stream.len();
        stream.extend_from_slice(&wire(&FromWorker::done(3), &[9; 100])[..50]);
        let frames: Vec<_> = whole_frames(&stream).collect();
        assert_eq!(frames.len(), 2, "the third is cut short");
        assert_eq!(frames.iter().map(|(f, _)| f.len()).sum::<usize>(), whole);
        for ((_, message), id) in frames.iter().zip(1..) {
            let decoded: FromWorker = postcard::from_bytes(message).unwrap();
            assert_eq!(decoded, FromWorker::done(id));
            assert_eq!(answer_id(message), Some(id));
        }
        assert_eq!(answer_id(&[0xff; 3]), None);
        // Lengths that do not describe a frame end the walk, without a panic.
        let mut corrupt = (10_u64 << 32 | 11).to_be_bytes().to_vec();
        corrupt.resize(18, 0);
        assert_eq!(whole_frames(&corrupt).count(), 0);
        assert_eq!(whole_frames(&[0xff; 7]).count(), 0);
    }
}
