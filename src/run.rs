//! Worker-side execution: what runs a shipped job once its function is found, with the
//! panic boundary and how a call ended ([`Outcome`]).
//!
//! In the manner of rayon-core's `unwind.rs`, this module owns the unwinding boundary: a
//! job's panic (or one in its argument's `Deserialize`, or its result's `Serialize`) is
//! caught here and becomes data, with the location the worker's panic hook recorded. The
//! calling side, which finds the function in the image, is [`crate::ship`].

use crate::error::JobError;
use crate::wire::items::{
    ALL_PACKED, TAG_ARG_DECODE, TAG_ARG_ENCODE, TAG_OK, TAG_PANICKED, encode_into, encode_value,
    is_byte_buffer, push_item, push_message_item, same_type, take_value,
};
use crate::wire::plain;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::backtrace::{Backtrace, BacktraceStatus};
use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// How one shipped call ended. `Ok` means the caller's output buffer holds the encoded
/// result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Outcome {
    Ok,
    Panicked {
        message: String,
        location: Option<String>,
        backtrace: Option<String>,
    },
    /// The worker could not decode the argument.
    Decode(String),
    /// The worker could not encode the result.
    Encode(String),
    /// The encoded result is larger than the pool's maximum frame size.
    TooLarge {
        size: u64,
        max: u64,
    },
    /// The pool took the job back before the worker started it (it runs elsewhere): the
    /// worker skipped it.
    Revoked,
}

impl Outcome {
    /// The job error for a call that did not succeed.
    pub(crate) fn into_error(self) -> Option<JobError> {
        match self {
            Outcome::Ok => None,
            Outcome::Panicked {
                message,
                location,
                backtrace,
            } => Some(JobError::Panicked {
                message,
                location,
                backtrace,
            }),
            Outcome::Decode(e) => Some(JobError::Decode(format!("argument (in the worker): {e}"))),
            Outcome::Encode(e) => Some(JobError::Encode(format!("result (in the worker): {e}"))),
            Outcome::TooLarge { size, max } => Some(JobError::TooLarge {
                size: usize::try_from(size).unwrap_or(usize::MAX),
                max: usize::try_from(max).unwrap_or(usize::MAX),
            }),
            // The pool expects this only for a job it took back, and never completes one
            // with it.
            Outcome::Revoked => Some(JobError::Protocol {
                reason: "the worker skipped a job the pool had not taken back".into(),
                cause: None,
            }),
        }
    }
}

thread_local! {
    /// Set by the worker's panic hook: the location of the panic being unwound, and its
    /// backtrace if one is captured.
    static PANIC_LOCATION: RefCell<(Option<String>, Option<String>)> =
        const { RefCell::new((None, None)) };
    /// Whether a job is running on this thread, so the hook stays quiet for job panics.
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

/// Installs the worker's panic hook: it records where a job panicked, and its backtrace
/// when `RUST_BACKTRACE` asks for one (the report travels to the parent), and prints
/// panics that happen outside jobs as the default hook would.
pub(crate) fn install_worker_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if IN_JOB.with(Cell::get) {
            let loc = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            // `capture` follows RUST_LIB_BACKTRACE / RUST_BACKTRACE, as a program's own
            // panics do.
            let backtrace = Backtrace::capture();
            let backtrace =
                (backtrace.status() == BacktraceStatus::Captured).then(|| backtrace.to_string());
            PANIC_LOCATION.with(|p| *p.borrow_mut() = (loc, backtrace));
        } else {
            default(info);
        }
    }));
}

/// A caught panic: its message, location and backtrace (when captured).
type Report = (String, Option<String>, Option<String>);

/// Runs `f` as a job: catches a panic and reports it.
fn catch<T>(f: impl FnOnce() -> T) -> Result<T, Report> {
    IN_JOB.with(|j| j.set(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    IN_JOB.with(|j| j.set(false));
    result.map_err(|payload| {
        let (location, backtrace) = PANIC_LOCATION.with(|p| std::mem::take(&mut *p.borrow_mut()));
        (crate::error::panic_message(payload), location, backtrace)
    })
}

/// Runs a single job: decode `A`, call `f`, encode `R` into `out`.
pub(crate) fn run_single<A: DeserializeOwned + 'static, R: Serialize + 'static>(
    f: fn(A) -> R,
    input: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Outcome {
    let arg = if is_byte_buffer::<A>() {
        // The argument's buffer is handed to the function, not copied.
        same_type::<Vec<u8>, A>(std::mem::take(input))
    } else if let Some(numbers) = plain::get_vec::<A>(input) {
        match numbers {
            Some(arg) => arg,
            None => {
                return Outcome::Decode(
                    "packed numbers of a length no whole number of values".into(),
                );
            }
        }
    } else {
        match catch(|| {
            crate::shared::decoding(&mut Default::default(), || postcard::from_bytes::<A>(input))
        }) {
            Ok(Ok(arg)) => arg,
            Ok(Err(e)) => return Outcome::Decode(crate::shared::explain(e.to_string())),
            Err((message, ..)) => {
                return Outcome::Decode(format!("Deserialize panicked: {message}"));
            }
        }
    };
    match catch(move || f(arg)) {
        Ok(r) if is_byte_buffer::<R>() => {
            let bytes = same_type::<R, Vec<u8>>(r);
            if out.is_empty() {
                *out = bytes; // handed over, not copied
            } else {
                out.extend_from_slice(&bytes);
            }
            Outcome::Ok
        }
        Ok(r) if plain::is_vec::<R>() => {
            plain::put_vec(&r, out);
            Outcome::Ok
        }
        Ok(r) => match catch(|| encode_into(&r, out)) {
            Ok(Ok(())) => Outcome::Ok,
            Ok(Err(e)) => Outcome::Encode(e),
            Err((message, ..)) => Outcome::Encode(format!("Serialize panicked: {message}")),
        },
        Err((message, location, backtrace)) => Outcome::Panicked {
            message,
            location,
            backtrace,
        },
    }
}

/// Runs a chunk (see [`crate::wire::items`]): each item is decoded, run and encoded on its
/// own, so that a panic or an encoding error fails only that item.
pub(crate) fn run_chunk<A: DeserializeOwned + 'static, R: Serialize + 'static>(
    f: fn(A) -> R,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Outcome {
    let Some((count, mut rest)) = input.split_first_chunk::<4>() else {
        return Outcome::Decode("chunk shorter than its item count".into());
    };
    let count = u32::from_le_bytes(*count);
    // The answer starts with the same count: the caller hands out exactly that many results.
    let mut answer = Answer::begin::<R>(out, count, rest.len());
    let out = &mut answer;
    if let Some(width) = plain::width::<A>() {
        let packed = (count as usize).checked_mul(width);
        if packed != Some(rest.len()) {
            return Outcome::Decode(format!(
                "a chunk of {count} packed `{}` holds {} bytes",
                std::any::type_name::<A>(),
                rest.len()
            ));
        }
        for arg in rest.chunks_exact(width) {
            match plain::get::<A>(arg) {
                Some(arg) => run_item(f, arg, out),
                None => {
                    let message = format!("not a `{}`: {arg:?}", std::any::type_name::<A>());
                    push_message_item(out.tagged(), TAG_ARG_DECODE, &message);
                }
            }
        }
        return Outcome::Ok;
    }
    for _ in 0..count {
        let Some((&tag, body)) = rest.split_first() else {
            return Outcome::Decode("chunk ends before its last item".into());
        };
        if tag == TAG_ARG_ENCODE {
            let Ok((message, tail)) = postcard::take_from_bytes::<String>(body) else {
                return Outcome::Decode("corrupt argument-error item".into());
            };
            rest = tail;
            push_message_item(out.tagged(), TAG_ARG_ENCODE, &message);
            continue;
        }
        let arg = match catch(|| {
            crate::shared::decoding(&mut Default::default(), || take_value::<A>(body))
        }) {
            Ok(Ok((arg, tail))) => {
                rest = tail;
                arg
            }
            Ok(Err(e)) => return Outcome::Decode(crate::shared::explain(e.to_string())),
            Err((message, ..)) => {
                return Outcome::Decode(format!("Deserialize panicked: {message}"));
            }
        };
        run_item(f, arg, out);
    }
    Outcome::Ok
}

/// Runs one item of a chunk and appends its answer: the result, or why it failed.
#[inline]
fn run_item<A, R: Serialize + 'static>(f: fn(A) -> R, arg: A, out: &mut Answer<'_>) {
    match catch(move || f(arg)) {
        Ok(r) => out.ok(&r),
        Err(report) => push_item(out.tagged(), TAG_PANICKED, |o| encode_into(&report, o)),
    }
}

/// A chunk's answer being written. While `R` is plain and every item so far succeeded,
/// it is packed: its count carries [`ALL_PACKED`] and the values follow with no tags. The
/// first item that fails turns it into the tagged layout, the values before it rewritten
/// with their tags.
struct Answer<'a> {
    out: &'a mut Vec<u8>,
    /// Where the count is.
    start: usize,
    /// The packed width of `R`, while the answer is packed.
    packed: Option<usize>,
}

impl<'a> Answer<'a> {
    /// Writes the count; `input` (the bytes of the items' arguments, one or more each)
    /// bounds the room reserved for a corrupt count.
    fn begin<R: 'static>(out: &'a mut Vec<u8>, count: u32, input: usize) -> Answer<'a> {
        let start = out.len();
        let packed = plain::width::<R>().filter(|_| count & ALL_PACKED == 0);
        let head = if packed.is_some() {
            count | ALL_PACKED
        } else {
            count
        };
        out.extend_from_slice(&head.to_le_bytes());
        if let Some(width) = packed {
            out.reserve((count as usize).min(input) * width);
        }
        Answer { out, start, packed }
    }

    /// Appends a successful item's answer.
    #[inline]
    fn ok<R: Serialize + 'static>(&mut self, r: &R) {
        if self.packed.is_some() && plain::put(r, self.out) {
            return;
        }
        push_result(self.tagged(), r);
    }

    /// The output, in the tagged layout: for an item that failed.
    fn tagged(&mut self) -> &mut Vec<u8> {
        if let Some(width) = self.packed.take() {
            let values = self.out.split_off(self.start + 4);
            let count = &mut self.out[self.start..];
            let head = u32::from_le_bytes(count.try_into().expect("four bytes")) & !ALL_PACKED;
            count.copy_from_slice(&head.to_le_bytes());
            for value in values.chunks_exact(width) {
                self.out.push(TAG_OK);
                self.out.extend_from_slice(value);
            }
        }
        self.out
    }
}

/// Appends a successful item's answer: its tag and its packed value if `R` is plain, else
/// its tag, length and encoding (or the error that kept it from encoding).
#[inline]
fn push_result<R: Serialize + 'static>(out: &mut Vec<u8>, r: &R) {
    let start = out.len();
    out.push(TAG_OK);
    if plain::put(r, out) {
        return;
    }
    out.truncate(start);
    push_item(out, TAG_OK, |o| match catch(|| encode_value(r, o)) {
        Ok(result) => result,
        Err((message, ..)) => Err(format!("Serialize panicked: {message}")),
    });
}

/// Runs a worker initializer (a plain one, or a worker-state builder).
pub(crate) fn run_initializer(f: impl FnOnce()) -> Outcome {
    match catch(f) {
        Ok(()) => Outcome::Ok,
        Err((message, location, backtrace)) => Outcome::Panicked {
            message,
            location,
            backtrace,
        },
    }
}

/// Runs arbitrary bytes as a chunk's input, as a fuzzer does.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_decode(data: &[u8]) {
    let mut out = Vec::new();
    let _ = run_chunk(|s: String| s.len(), data, &mut out);
    out.clear();
    let _ = run_chunk(|b: bool| u32::from(b), data, &mut out);
}

#[cfg(test)]
mod tests {
    //! Chunks through both ends: encoded as the parent does, run as a worker does, decoded
    //! as the parent does.

    use super::*;
    use crate::job::ErasedJob;
    use crate::wire::items::EncodedItems;

    fn square(x: i64) -> i64 {
        x * x
    }

    fn fussy(x: i64) -> i64 {
        assert!(x != 3, "three is not allowed");
        x
    }

    fn run_chunk_locally<A, R>(f: fn(A) -> R, args: Vec<A>) -> Vec<Result<R, JobError>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let mut job = ErasedJob::chunk(f, args);
        let mut input = Vec::new();
        job.call.encode_input(&mut input).unwrap();
        let mut out = Vec::new();
        assert_eq!(run_chunk(f, &input, &mut out), Outcome::Ok);
        let decoded = (job.call.decoder())(out.into(), Default::default()).unwrap();
        let items = decoded.downcast::<EncodedItems<R>>().unwrap();
        assert_eq!(
            items.len(),
            job.call.items(),
            "the answer counts every item"
        );
        items.collect()
    }

    #[test]
    fn chunk_round_trip_keeps_order() {
        let results = run_chunk_locally(square, (0..100).collect());
        let values: Vec<i64> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(values, (0..100).map(|x| x * x).collect::<Vec<_>>());
    }

    fn reverse(mut bytes: Vec<u8>) -> Vec<u8> {
        bytes.reverse();
        bytes
    }

    #[test]
    fn byte_buffers_in_chunks_round_trip() {
        let buffers: Vec<Vec<u8>> = (0..300_u32).map(|n| (0..n as u8).collect()).collect();
        let results = run_chunk_locally(reverse, buffers.clone());
        for (result, mut bytes) in results.into_iter().zip(buffers) {
            bytes.reverse();
            assert_eq!(result, Ok(bytes));
        }
    }

    #[test]
    fn a_panicking_item_fails_only_itself() {
        let results = run_chunk_locally(fussy, vec![1, 2, 3, 4]);
        assert_eq!(results[0], Ok(1));
        assert_eq!(results[1], Ok(2));
        assert!(results[2].as_ref().unwrap_err().is_panic());
        assert_eq!(results[3], Ok(4));
    }

    fn describe(x: u16) -> String {
        format!("#{x}")
    }

    fn measure(s: String) -> usize {
        s.len()
    }

    fn negate(b: bool) -> bool {
        !b
    }

    #[test]
    fn plain_results_travel_packed() {
        let mut input = 2_u32.to_le_bytes().to_vec();
        for x in [1_i64, 2] {
            input.extend_from_slice(&x.to_le_bytes());
        }
        let mut out = Vec::new();
        assert_eq!(run_chunk(square, &input, &mut out), Outcome::Ok);
        let mut answer = (2_u32 | ALL_PACKED).to_le_bytes().to_vec();
        for x in [1_i64, 4] {
            answer.extend_from_slice(&x.to_le_bytes());
        }
        assert_eq!(
            out, answer,
            "every item succeeded: the count, flagged, then the values"
        );
    }

    #[test]
    fn a_failed_item_turns_a_packed_answer_tagged() {
        let mut input = 3_u32.to_le_bytes().to_vec();
        for x in [2_i64, 3, 4] {
            input.extend_from_slice(&x.to_le_bytes());
        }
        let mut out = vec![0xAA]; // what the buffer held before the answer
        assert_eq!(run_chunk(fussy, &input, &mut out), Outcome::Ok);
        let mut head = vec![0xAA];
        head.extend_from_slice(&3_u32.to_le_bytes());
        head.push(TAG_OK);
        head.extend_from_slice(&2_i64.to_le_bytes());
        head.push(TAG_PANICKED);
        assert_eq!(
            out[..head.len()],
            head[..],
            "the value before the panic, retagged"
        );
        let mut tail = vec![TAG_OK];
        tail.extend_from_slice(&4_i64.to_le_bytes());
        assert_eq!(
            out[out.len() - tail.len()..],
            tail[..],
            "tagged after it too"
        );
        let results: Vec<_> = EncodedItems::<i64>::new(out.split_off(1).into())
            .unwrap()
            .collect();
        assert_eq!(results[0], Ok(2));
        assert!(
            matches!(&results[1], Err(JobError::Panicked { message, .. }) if message.contains("three"))
        );
        assert_eq!(results[2], Ok(4));
    }

    #[test]
    fn plain_and_serde_items_mix_in_one_chunk() {
        let described = run_chunk_locally(describe, vec![0, 7, u16::MAX]);
        assert_eq!(
            described,
            vec![Ok("#0".into()), Ok("#7".into()), Ok("#65535".into())]
        );
        let measured = run_chunk_locally(measure, vec![String::new(), "abc".into()]);
        assert_eq!(measured, vec![Ok(0), Ok(3)]);
        assert_eq!(
            run_chunk_locally(negate, vec![true, false]),
            vec![Ok(false), Ok(true)]
        );
    }

    #[test]
    fn a_corrupt_packed_chunk_is_an_error_not_a_panic() {
        // Two items announced, one and a half sent: the whole chunk fails to decode.
        let mut input = 2_u32.to_le_bytes().to_vec();
        input.extend_from_slice(&[0; 12]);
        let outcome = run_chunk(square, &input, &mut Vec::new());
        assert!(
            matches!(&outcome, Outcome::Decode(m) if m.contains("holds 12 bytes")),
            "{outcome:?}"
        );
        // A count so large that count * width overflows is refused the same way.
        let huge = u32::MAX.to_le_bytes().to_vec();
        assert!(matches!(
            run_chunk(square, &huge, &mut Vec::new()),
            Outcome::Decode(_)
        ));
        // A byte that is no bool fails only its own item.
        let mut out = Vec::new();
        let input = [3, 0, 0, 0, 1, 2, 0];
        assert_eq!(run_chunk(negate, &input, &mut out), Outcome::Ok);
        let results: Vec<_> = EncodedItems::<bool>::new(out.into()).unwrap().collect();
        assert_eq!(results[0], Ok(false));
        assert!(
            matches!(&results[1], Err(JobError::Decode(m)) if m.contains("not a `bool`")),
            "{:?}",
            results[1]
        );
        assert_eq!(results[2], Ok(true));
    }

    #[test]
    fn a_single_job_runs_and_its_panic_is_data() {
        let mut input = postcard::to_allocvec(&4_i64).unwrap();
        let mut out = Vec::new();
        assert_eq!(run_single(square, &mut input, &mut out), Outcome::Ok);
        assert_eq!(postcard::from_bytes::<i64>(&out).unwrap(), 16);
        let mut input = postcard::to_allocvec(&3_i64).unwrap();
        let outcome = run_single(fussy, &mut input, &mut Vec::new());
        assert!(
            matches!(&outcome, Outcome::Panicked { message, .. } if message == "three is not allowed"),
            "{outcome:?}"
        );
    }
}
