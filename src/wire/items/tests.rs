//! Chunk answers decoded as the caller does, from bytes written as a worker does.

use super::*;
use std::fmt;

/// Appends a successful answer item as a worker does (packed if plain).
fn push_ok<R: Serialize + 'static>(out: &mut Vec<u8>, r: &R) {
    out.push(TAG_OK);
    if !plain::put(r, out) {
        out.pop();
        push_item(out, TAG_OK, |o| encode_value(r, o));
    }
}

fn decode_all<R: DeserializeOwned + 'static>(
    bytes: &[u8],
) -> Result<Vec<Result<R, JobError>>, JobError> {
    EncodedItems::<R>::new(bytes::Bytes::copy_from_slice(bytes)).map(Iterator::collect)
}

#[test]
fn byte_buffers_keep_serdes_wire_format() {
    for n in [0_u32, 1, 127, 128, 300] {
        let bytes: Vec<u8> = (0..n).map(|i| i as u8).collect();
        let mut fast = Vec::new();
        encode_value(&bytes, &mut fast).unwrap();
        assert_eq!(fast, postcard::to_allocvec(&bytes).unwrap());
        let (back, rest) = take_value::<Vec<u8>>(&fast).unwrap();
        assert_eq!((&back, rest.len()), (&bytes, 0));
    }
}

#[test]
fn a_vector_of_numbers_is_its_byte_length_then_the_numbers_packed() {
    for n in [0_usize, 1, 16, 17, 5000] {
        let numbers: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        let mut out = Vec::new();
        encode_value(&numbers, &mut out).unwrap();
        out.push(0xEE); // what follows the item
        let mut expected = postcard::to_allocvec(&(4 * n)).unwrap();
        numbers
            .iter()
            .for_each(|x| expected.extend(x.to_le_bytes()));
        assert_eq!(&out[..out.len() - 1], &expected[..], "{n} numbers");
        let (back, rest) = take_value::<Vec<f32>>(&out).unwrap();
        assert_eq!((back, rest), (numbers, &[0xEE][..]));
    }
    assert!(
        take_value::<Vec<f32>>(&[3, 0, 0, 0]).is_err(),
        "not whole values"
    );
}

#[test]
fn same_type_hands_the_value_over() {
    let buffer = vec![1_u8, 2, 3];
    let address = buffer.as_ptr();
    let back: Vec<u8> = same_type::<Vec<u8>, Vec<u8>>(buffer);
    assert_eq!(back.as_ptr(), address, "moved, not copied");
}

/// Cuts a two-item answer at every byte: each cut gives one result per counted item,
/// the first intact while its bytes are, and an unknown tag breaks the rest.
fn truncations_are_errors<R>(first: R, second: R)
where
    R: Serialize + DeserializeOwned + PartialEq + fmt::Debug + Clone + 'static,
{
    let mut out = 2_u32.to_le_bytes().to_vec();
    push_ok(&mut out, &first);
    let first_item_ends = out.len();
    push_ok(&mut out, &second);
    let whole: Vec<Result<R, JobError>> = vec![Ok(first.clone()), Ok(second)];
    assert_eq!(decode_all::<R>(&out).unwrap(), whole);
    for cut in 0..out.len() {
        let Ok(results) = decode_all::<R>(&out[..cut]) else {
            assert!(cut < 4, "only a missing count fails the whole answer");
            continue;
        };
        assert_eq!(
            results.len(),
            2,
            "cut at {cut}: one result per counted item"
        );
        if cut >= first_item_ends {
            assert_eq!(results[0], Ok(first.clone()), "cut at {cut}");
        } else {
            assert!(
                matches!(results[0], Err(JobError::Decode(_))),
                "cut at {cut}"
            );
        }
        assert!(
            matches!(results[1], Err(JobError::Decode(_))),
            "cut at {cut}"
        );
    }
    // An unknown tag breaks the answer from that item on.
    let mut odd = out.clone();
    odd[first_item_ends] = 99;
    let results = decode_all::<R>(&odd).unwrap();
    assert_eq!(results[0], Ok(first));
    assert_eq!(
        results[1],
        Err(JobError::Decode("unknown item tag 99".into()))
    );
}

#[test]
fn truncated_chunk_results_are_errors_not_panics() {
    truncations_are_errors(7_i64, -8); // packed
    truncations_are_errors(String::from("seven"), String::from("eight")); // with lengths
}

#[test]
fn answers_decode_lazily_and_say_their_length() {
    let mut out = 3_u32.to_le_bytes().to_vec();
    for value in [1_i64, 2, 3] {
        push_ok(&mut out, &value);
    }
    let mut items = EncodedItems::<i64>::new(out.into()).unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items.next(), Some(Ok(1)));
    assert_eq!(items.size_hint(), (2, Some(2)));
    assert_eq!(items.by_ref().collect::<Vec<_>>(), vec![Ok(2), Ok(3)]);
    assert_eq!(items.next(), None);
    // A corrupt count is only a length: the items past the bytes are errors, produced
    // one at a time, never allocated up front.
    let mut lying = (ALL_PACKED - 1).to_le_bytes().to_vec();
    push_ok(&mut lying, &7_i64);
    let mut items = EncodedItems::<i64>::new(lying.into()).unwrap();
    assert_eq!(items.len(), (ALL_PACKED - 1) as usize);
    assert_eq!(items.next(), Some(Ok(7)));
    assert!(matches!(items.next(), Some(Err(JobError::Decode(_)))));
}

/// An answer of packed values, as a worker writes it when every item succeeded.
fn packed<R: Serialize + 'static>(values: &[R]) -> Vec<u8> {
    let mut out = (values.len() as u32 | ALL_PACKED).to_le_bytes().to_vec();
    for value in values {
        assert!(plain::put(value, &mut out));
    }
    out
}

#[test]
fn packed_answers_decode_item_by_item_and_in_bulk() {
    let values: Vec<u64> = (0..100).map(|x| x * 3).collect();
    let all = packed(&values);
    let one_by_one: Vec<_> = EncodedItems::<u64>::new(all.clone().into())
        .unwrap()
        .collect();
    assert_eq!(
        one_by_one,
        values.iter().map(|&v| Ok(v)).collect::<Vec<_>>()
    );
    let mut items = EncodedItems::<u64>::new(all.into()).unwrap();
    assert_eq!(items.next(), Some(Ok(0)));
    let mut bulk = vec![0];
    items.drain_ok_into(&mut bulk).unwrap();
    assert_eq!(bulk, values);
    assert_eq!((items.len(), items.next()), (0, None));
    // A byte that is no `bool` fails its item alone, in either way of reading.
    let mut odd = packed(&[true, false, true]);
    odd[5] = 7;
    let results = decode_all::<bool>(&odd).unwrap();
    assert_eq!(results[0], Ok(true));
    assert!(matches!(results[1], Err(JobError::Decode(_))));
    assert_eq!(results[2], Ok(true));
    let mut items = EncodedItems::<bool>::new(odd.into()).unwrap();
    let mut bulk = Vec::new();
    assert!(matches!(
        items.drain_ok_into(&mut bulk),
        Err(JobError::Decode(_))
    ));
    assert_eq!((bulk, items.next()), (vec![true], Some(Ok(true))));
}

#[test]
fn packed_answers_are_taken_whole_only_when_every_value_decodes() {
    let values: Vec<u64> = (0..100).map(|x| x * 3).collect();
    let mut items = EncodedItems::<u64>::new(packed(&values).into()).unwrap();
    assert_eq!(items.next(), Some(Ok(0)));
    assert_eq!(
        items.take_packed_values().unwrap(),
        values[1..],
        "the rest, at once"
    );
    assert_eq!((items.len(), items.next()), (0, None));
    // A byte that is no `bool`: nothing is taken, and that item alone fails.
    let mut odd = packed(&[true, false, true]);
    odd[5] = 7;
    let mut items = EncodedItems::<bool>::new(odd.into()).unwrap();
    assert_eq!(items.take_packed_values(), None);
    let results: Vec<_> = items.collect();
    assert_eq!(results[0], Ok(true));
    assert!(
        matches!(results[1], Err(JobError::Decode(_))),
        "{results:?}"
    );
    assert_eq!(results[2], Ok(true));
    // Tagged items (one failed) and values that are not plain are read one by one.
    let mut tagged = 2_u32.to_le_bytes().to_vec();
    push_ok(&mut tagged, &5_u64);
    push_message_item(&mut tagged, TAG_RESULT_ENCODE, "no luck");
    let mut items = EncodedItems::<u64>::new(tagged.into()).unwrap();
    assert_eq!(items.take_packed_values(), None);
    let results: Vec<_> = items.collect();
    assert_eq!(results[0], Ok(5));
    assert!(
        matches!(results[1], Err(JobError::Encode(_))),
        "{results:?}"
    );
    let mut strings = 1_u32.to_le_bytes().to_vec();
    push_ok(&mut strings, &"x".to_string());
    let mut items = EncodedItems::<String>::new(strings.into()).unwrap();
    assert_eq!(items.take_packed_values(), None);
    assert_eq!(items.collect::<Vec<_>>(), [Ok("x".to_string())]);
}

#[test]
fn a_packed_answer_of_the_wrong_length_or_type_is_refused() {
    let mut short = packed(&[1_u64, 2]);
    short.pop();
    assert!(matches!(
        EncodedItems::<u64>::new(short.into()),
        Err(JobError::Decode(_))
    ));
    let mut long = packed(&[1_u64, 2]);
    long.push(0);
    assert!(matches!(
        EncodedItems::<u64>::new(long.into()),
        Err(JobError::Decode(_))
    ));
    // A count that claims 2^31 - 1 packed values, with the bytes of one.
    let mut lying = u32::MAX.to_le_bytes().to_vec();
    lying.extend_from_slice(&7_u64.to_le_bytes());
    assert!(matches!(
        EncodedItems::<u64>::new(lying.into()),
        Err(JobError::Decode(_))
    ));
    let strings = packed(&[1_u64]);
    assert!(matches!(
        EncodedItems::<String>::new(strings.into()),
        Err(JobError::Decode(_))
    ));
}

#[test]
fn a_chunk_count_stays_below_the_packed_flag() {
    assert_eq!(chunk_count(5), Ok(5));
    assert_eq!(chunk_count((ALL_PACKED - 1) as usize), Ok(ALL_PACKED - 1));
    assert!(matches!(
        chunk_count(ALL_PACKED as usize),
        Err(JobError::Encode(_))
    ));
}

#[test]
fn failed_items_carry_their_errors() {
    let mut out = 4_u32.to_le_bytes().to_vec();
    push_item(&mut out, TAG_PANICKED, |o| {
        encode_into(&("boom", Some("src/x.rs:1:2"), Some("0: here")), o)
    });
    push_message_item(&mut out, TAG_RESULT_ENCODE, "no luck");
    push_message_item(&mut out, TAG_ARG_ENCODE, "cannot encode");
    push_message_item(&mut out, TAG_ARG_DECODE, "cannot decode");
    let results = decode_all::<String>(&out).unwrap();
    assert_eq!(
        results[0],
        Err(JobError::Panicked {
            message: "boom".into(),
            location: Some("src/x.rs:1:2".into()),
            backtrace: Some("0: here".into()),
        })
    );
    assert_eq!(
        results[1],
        Err(JobError::Encode("result (in the worker): no luck".into()))
    );
    assert_eq!(results[2], Err(JobError::Encode("cannot encode".into())));
    assert_eq!(
        results[3],
        Err(JobError::Decode(
            "argument (in the worker): cannot decode".into()
        ))
    );
}

#[test]
fn plain_arguments_travel_packed() {
    let mut input = Vec::new();
    put_args(&vec![1_i64, -2, i64::MAX], &mut input).unwrap();
    let mut expected = 3_u32.to_le_bytes().to_vec();
    for x in [1_i64, -2, i64::MAX] {
        expected.extend_from_slice(&x.to_le_bytes());
    }
    assert_eq!(
        input, expected,
        "count, then the values: no tags, no lengths"
    );
}

#[test]
fn a_packed_result_that_is_no_bool_fails_only_its_item() {
    let answer = [2, 0, 0, 0, TAG_OK, 5, TAG_OK, 1];
    let results = decode_all::<bool>(&answer).unwrap();
    assert!(
        matches!(&results[0], Err(JobError::Decode(_))),
        "{results:?}"
    );
    assert_eq!(results[1], Ok(true));
}
