//! The frame codec's unit and property tests.

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
fn a_codec_whose_payloads_are_supplied_sets_no_buffer_aside_for_them() {
    let mut parent = ParentCodec::supplied(1 << 30);
    let (mut buf, payload) = large_frame_apart(3, &vec![5_u8; DIRECT_PAYLOAD + 7]);
    assert_eq!(parent.decode(&mut buf).unwrap(), None);
    let set_aside = parent.supply_payload(payload).map_err(|p| p.len());
    assert_eq!(
        set_aside.map(|b| b.capacity()),
        Ok(0),
        "no buffer set aside"
    );
    let frame = parent.decode(&mut buf).unwrap().unwrap();
    assert_eq!(frame.payload.len(), DIRECT_PAYLOAD + 7);
    // A payload that comes as bytes after all is still gathered whole.
    let mut whole = wire(&FromWorker::done(4), &vec![6_u8; DIRECT_PAYLOAD + 1]);
    let frame = parent.decode(&mut whole).unwrap().unwrap();
    assert_eq!(frame.message, FromWorker::done(4));
    assert!(frame.payload.iter().all(|&b| b == 6));
    assert_eq!(frame.payload.len(), DIRECT_PAYLOAD + 1);
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
fn after_a_frame_the_buffer_has_room_for_one_as_long() {
    // A chunk's answer of 8 KiB, as a socket read would leave it: exactly one frame in a
    // buffer with no room to spare, which the frame then takes with it.
    let frame = wire(&FromWorker::done(7), &[9; 8 << 10]);
    let mut buf = BytesMut::with_capacity(frame.len());
    buf.extend_from_slice(&frame);
    let mut parent = ParentCodec::new(1 << 20);
    let decoded = parent.decode(&mut buf).unwrap().expect("a whole frame");
    assert_eq!(decoded.payload.len(), 8 << 10);
    let room = buf.capacity() - buf.len();
    assert!(
        room >= frame.len(),
        "room for {room} bytes after a frame of {}",
        frame.len()
    );

    // The room set aside is bounded, whatever the frame's length.
    let long = wire(&FromWorker::done(8), &vec![1; 4 * NEXT_ROOM]);
    let mut buf = BytesMut::with_capacity(long.len());
    buf.extend_from_slice(&long);
    let mut parent = ParentCodec::new(1 << 30);
    assert!(parent.decode(&mut buf).unwrap().is_some());
    assert!(
        buf.capacity() - buf.len() <= 2 * NEXT_ROOM,
        "{}",
        buf.capacity()
    );
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
        (any::<u64>(), arb_outcome()).prop_map(|(id, outcome)| FromWorker::Done { id, outcome }),
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
