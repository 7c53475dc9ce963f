//! Jobs: a typed function and its argument, erased into an [`ErasedJob`] that any executor
//! accepts, plus the code that runs a shipped job inside a worker process.
//!
//! A job is run one of two ways: in this process ([`Call::run_here`], the thread pool's
//! way: no serialization), or in a worker process ([`Call::encode_input`] ships the
//! argument, [`crate::raw::run_shipped`] runs the trampoline there, and the decoder from
//! [`Call::decoder`] turns the answer back into `R`).
//!
//! # Chunk wire format
//!
//! A chunk (many items of one `map`) travels as `count: u32 LE` followed, per item, by a
//! tag byte and either the postcard encoding of `A` (tag 0) or of the message of the
//! error that kept the argument from encoding (tag 1). The answer is, per item, a tag byte,
//! `len: u32 LE` and `len` bytes: so that one item that fails to encode or decode fails
//! only itself.
//!
//! Plain types (integers, floats, `bool`: see [`crate::plain`]) are packed instead, in a
//! fixed number of little-endian bytes: a chunk of plain `A` is `count` followed by
//! `count` packed values, with no tags (encoding one cannot fail); in the answer, an item
//! of plain `R` that succeeded is its tag followed by the packed value, with no length
//! (other items are as above).

use crate::error::JobError;
use crate::raw::Target;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

/// A job with its types erased, as the object-safe [`Executor`](crate::Executor) takes it.
///
/// Made by [`ExecutorExt`](crate::ExecutorExt)'s typed methods; you do not build one
/// yourself. It carries the function, its argument, and monomorphized helpers to run it in
/// this process, to encode the argument and to decode the result.
pub struct ErasedJob {
    pub(crate) call: Box<dyn Call>,
    pub(crate) options: crate::options::JobOptions,
}

impl ErasedJob {
    pub(crate) fn single<A, R>(f: fn(A) -> R, arg: A) -> ErasedJob
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        ErasedJob {
            call: Box::new(Single { f, arg }),
            options: Default::default(),
        }
    }

    pub(crate) fn chunk<A, R>(f: fn(A) -> R, args: Vec<A>) -> ErasedJob
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        ErasedJob {
            call: Box::new(Chunk { f, args }),
            options: Default::default(),
        }
    }
}

impl ErasedJob {
    pub(crate) fn with_options(mut self, options: crate::options::JobOptions) -> ErasedJob {
        self.options = options;
        self
    }
}

impl fmt::Debug for ErasedJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErasedJob")
            .field("items", &self.call.items())
            .finish_non_exhaustive()
    }
}

/// What a job produced: `R` for a single job; for a chunk, `Vec<Result<R, JobError>>` on a
/// thread pool and [`EncodedItems<R>`] on a process pool.
pub(crate) type Output = Box<dyn Any + Send>;

/// Decodes a worker's answer into the job's [`Output`].
///
/// It owns the answer, so that a `Vec<u8>` result gathered in a buffer of its own is
/// handed over rather than copied.
pub(crate) type Decoder = fn(bytes::Bytes) -> Result<Output, JobError>;

/// The monomorphized helpers of one job.
pub(crate) trait Call: Send + 'static {
    /// Runs the job in this process, catching a panic.
    fn run_here(self: Box<Self>) -> Result<Output, JobError>;
    /// Where the worker finds the function.
    fn target(&self) -> Target;
    /// Appends the encoded argument(s) to `out`. May move the argument out (a byte buffer
    /// is handed over without a copy): call it once, just before the job is shipped.
    fn encode_input(&mut self, out: &mut Vec<u8>) -> Result<(), JobError>;
    /// How to decode the worker's answer.
    fn decoder(&self) -> Decoder;
    /// The argument(s), given back when a submission is refused.
    fn into_arg(self: Box<Self>) -> Box<dyn Any + Send>;
    /// Number of items (1, or a chunk's length).
    fn items(&self) -> usize;
}

struct Single<A, R> {
    f: fn(A) -> R,
    arg: A,
}

impl<A, R> Call for Single<A, R>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    fn run_here(self: Box<Self>) -> Result<Output, JobError> {
        let Single { f, arg } = *self;
        match catch_unwind(AssertUnwindSafe(move || f(arg))) {
            Ok(r) => Ok(Box::new(r)),
            Err(payload) => Err(JobError::from_panic_payload(&*payload)),
        }
    }

    fn target(&self) -> Target {
        Target::single(self.f)
    }

    fn encode_input(&mut self, out: &mut Vec<u8>) -> Result<(), JobError> {
        if let Some(bytes) = (&mut self.arg as &mut dyn Any).downcast_mut::<Vec<u8>>() {
            // A byte buffer travels as raw bytes, handed over rather than copied.
            if out.is_empty() {
                std::mem::swap(out, bytes);
            } else {
                out.extend_from_slice(bytes);
            }
            return Ok(());
        }
        encode_into(&self.arg, out).map_err(JobError::Encode)
    }

    fn decoder(&self) -> Decoder {
        decode_single::<R>
    }

    fn into_arg(self: Box<Self>) -> Box<dyn Any + Send> {
        Box::new(self.arg)
    }

    fn items(&self) -> usize {
        1
    }
}

struct Chunk<A, R> {
    f: fn(A) -> R,
    args: Vec<A>,
}

impl<A, R> Call for Chunk<A, R>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    fn run_here(self: Box<Self>) -> Result<Output, JobError> {
        let f = self.f;
        let results: Vec<Result<R, JobError>> = self
            .args
            .into_iter()
            .map(|arg| {
                catch_unwind(AssertUnwindSafe(move || f(arg)))
                    .map_err(|payload| JobError::from_panic_payload(&*payload))
            })
            .collect();
        Ok(Box::new(results))
    }

    fn target(&self) -> Target {
        Target::chunk(self.f)
    }

    fn encode_input(&mut self, out: &mut Vec<u8>) -> Result<(), JobError> {
        let count = u32::try_from(self.args.len())
            .map_err(|_| JobError::Encode("a chunk holds at most 2^32 - 1 items".into()))?;
        if let Some(width) = crate::plain::width::<A>() {
            out.reserve(4 + self.args.len() * width);
            out.extend_from_slice(&count.to_le_bytes());
            for arg in &self.args {
                crate::plain::put(arg, out);
            }
            return Ok(());
        }
        // Room for a tag and a small item each, so that the buffer rarely grows by copying.
        let guess = 1 + std::mem::size_of::<A>().clamp(1, 16);
        out.reserve(4 + self.args.len().saturating_mul(guess));
        out.extend_from_slice(&count.to_le_bytes());
        for arg in &self.args {
            let start = out.len();
            out.push(TAG_OK);
            if let Err(message) = encode_value(arg, out) {
                out.truncate(start);
                out.push(TAG_ARG_ENCODE);
                encode_into(&message, out).map_err(JobError::Encode)?;
            }
        }
        Ok(())
    }

    fn decoder(&self) -> Decoder {
        decode_chunk::<R>
    }

    fn into_arg(self: Box<Self>) -> Box<dyn Any + Send> {
        Box::new(self.args)
    }

    fn items(&self) -> usize {
        self.args.len()
    }
}

const TAG_OK: u8 = 0;
const TAG_PANICKED: u8 = 1;
const TAG_RESULT_ENCODE: u8 = 2;
const TAG_ARG_ENCODE: u8 = 3;
const TAG_ARG_DECODE: u8 = 4;

/// Appends the postcard encoding of `value` to `out`; on error `out` is left as it was and
/// the message names the type (postcard drops the `Serialize` impl's own message).
fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
    let start = out.len();
    postcard::serialize_with_flavor(value, VecTail(&mut *out)).map_err(|e| {
        out.truncate(start);
        format!("{e} (in `{}`)", std::any::type_name::<T>())
    })
}

/// Postcard output that appends to a `Vec<u8>`. Postcard writes every integer as a varint
/// of 1 to 10 bytes through `try_extend`; `io::Write` would make each of them a `memcpy`
/// call, which profiles showed as a fifth of the cost of a chunk of small items.
struct VecTail<'a>(&'a mut Vec<u8>);

/// Pieces up to this length are appended as an iterator of bytes (one capacity check, a
/// short inlined copy) instead of with a `memcpy` call.
const SHORT_PIECE: usize = 16;

impl postcard::ser_flavors::Flavor for VecTail<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() <= SHORT_PIECE {
            self.0.extend(data.iter().copied());
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

fn decode_single<R: DeserializeOwned + Send + 'static>(
    bytes: bytes::Bytes,
) -> Result<Output, JobError> {
    if is_byte_buffer::<R>() {
        // Without a copy when the answer has a buffer of its own (a large one does).
        return Ok(Box::new(Vec::<u8>::from(bytes)));
    }
    postcard::from_bytes::<R>(&bytes)
        .map(|r| Box::new(r) as Output)
        .map_err(|e| JobError::Decode(format!("result: {e}")))
}

/// Encodes one item of a chunk. A `Vec<u8>` is written as postcard bytes in one copy:
/// the same wire format as serde's element-by-element sequence, many times faster.
fn encode_value<T: Serialize + 'static>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
    if let Some(bytes) = (value as &dyn Any).downcast_ref::<Vec<u8>>() {
        return encode_into(&RawBytes(bytes), out);
    }
    encode_into(value, out)
}

/// Decodes one item written by [`encode_value`], returning the bytes after it.
fn take_value<T: DeserializeOwned + 'static>(bytes: &[u8]) -> postcard::Result<(T, &[u8])> {
    if is_byte_buffer::<T>() {
        let (raw, rest) = postcard::take_from_bytes::<&[u8]>(bytes)?;
        return Ok((same_type::<Vec<u8>, T>(raw.to_vec()), rest));
    }
    postcard::take_from_bytes::<T>(bytes)
}

/// A byte slice that serializes as serde bytes (one copy), not as a sequence.
struct RawBytes<'a>(&'a [u8]);

impl Serialize for RawBytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// Whether `T` is `Vec<u8>`, which a single job's argument or result ships as raw bytes:
/// serde would encode it element by element. Both sides decide by the same concrete type,
/// so they always agree on the format.
fn is_byte_buffer<T: 'static>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<Vec<u8>>()
}

/// Converts between two names of the same type (checked by the caller with `TypeId`).
fn same_type<T: 'static, U: 'static>(value: T) -> U {
    let boxed: Box<dyn Any> = Box::new(value);
    *boxed
        .downcast::<U>()
        .unwrap_or_else(|_| unreachable!("callers compare TypeIds first"))
}

fn decode_chunk<R: DeserializeOwned + Send + 'static>(
    bytes: bytes::Bytes,
) -> Result<Output, JobError> {
    Ok(Box::new(EncodedItems::<R>::new(bytes)?))
}

/// A process-pool chunk's answer, decoded one item at a time as the caller reads it: the
/// results never exist as a `Vec<Result<R, JobError>>` (48 bytes or more per item, written
/// by one thread and read by another), only as their compact encoding.
///
/// It yields exactly as many items as the answer's count says. If the answer turns out to
/// be corrupt part-way, the item where that is found and every one after it is a
/// [`JobError::Decode`].
pub(crate) struct EncodedItems<R> {
    bytes: bytes::Bytes,
    /// Where the next item starts.
    at: usize,
    /// Items still to yield.
    left: usize,
    /// Set once the answer is found corrupt: the error every remaining item gets.
    broken: Option<JobError>,
    _results: std::marker::PhantomData<fn() -> R>,
}

impl<R> EncodedItems<R> {
    /// Items still to yield, without the decoding bounds of `len()`.
    pub(crate) fn remaining(&self) -> usize {
        self.left
    }
}

impl<R: DeserializeOwned + 'static> EncodedItems<R> {
    fn new(bytes: bytes::Bytes) -> Result<Self, JobError> {
        let Some(count) = bytes.first_chunk::<4>() else {
            return Err(JobError::Decode(
                "chunk result shorter than its item count".into(),
            ));
        };
        Ok(EncodedItems {
            left: u32::from_le_bytes(*count) as usize,
            bytes,
            at: 4,
            broken: None,
            _results: std::marker::PhantomData,
        })
    }

    /// Any next item: a failed one, one that does not decode, or the first one found
    /// corrupt (which breaks the rest).
    #[inline(never)]
    fn next_in_general(&mut self) -> Result<R, JobError> {
        if let Some(error) = &self.broken {
            return Err(error.clone());
        }
        self.decode_next().unwrap_or_else(|error| {
            self.broken = Some(error.clone());
            Err(error)
        })
    }

    fn decode_next(&mut self) -> Result<Result<R, JobError>, JobError> {
        let (tag, body, rest) = split_item(&self.bytes[self.at..], crate::plain::width::<R>())?;
        self.at = self.bytes.len() - rest.len();
        Ok(match tag {
            TAG_OK => match crate::plain::width::<R>() {
                Some(_) => crate::plain::get::<R>(body).ok_or_else(|| {
                    JobError::Decode(format!("result: not a `{}`", std::any::type_name::<R>()))
                }),
                None => take_value::<R>(body)
                    .map(|(value, _)| value)
                    .map_err(|e| JobError::Decode(format!("result: {e}"))),
            },
            TAG_PANICKED => match postcard::from_bytes::<(String, Option<String>)>(body) {
                Ok((message, location)) => Err(JobError::Panicked { message, location }),
                Err(e) => Err(JobError::Decode(format!("panic report: {e}"))),
            },
            TAG_RESULT_ENCODE => Err(JobError::Encode(format!(
                "result (in the worker): {}",
                decode_message(body)?
            ))),
            TAG_ARG_ENCODE => Err(JobError::Encode(decode_message(body)?)),
            TAG_ARG_DECODE => Err(JobError::Decode(format!(
                "argument (in the worker): {}",
                decode_message(body)?
            ))),
            other => return Err(JobError::Decode(format!("unknown item tag {other}"))),
        })
    }
}

impl<R: DeserializeOwned + 'static> Iterator for EncodedItems<R> {
    type Item = Result<R, JobError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.left = self.left.checked_sub(1)?;
        // The common case, small enough to inline into the caller's loop: a result that
        // decodes. Anything else takes the general path below, which decodes it again.
        if self.broken.is_none() {
            if let Some(width) = crate::plain::width::<R>() {
                if let Some((&TAG_OK, rest)) = self.bytes[self.at..].split_first()
                    && let Some(value) = crate::plain::get::<R>(rest)
                {
                    self.at += 1 + width;
                    return Some(Ok(value));
                }
            } else if let Ok((TAG_OK, body, rest)) = split_item(&self.bytes[self.at..], None)
                && let Ok((value, _)) = take_value::<R>(body)
            {
                self.at = self.bytes.len() - rest.len();
                return Some(Ok(value));
            }
        }
        Some(self.next_in_general())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<R: DeserializeOwned + 'static> ExactSizeIterator for EncodedItems<R> {}

/// Decodes arbitrary bytes as a chunk's answer and as a chunk's input, as a fuzzer does.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_decode(data: &[u8]) {
    let bytes = bytes::Bytes::copy_from_slice(data);
    if let Ok(items) = EncodedItems::<String>::new(bytes.clone()) {
        // A corrupt count could claim 4 billion items: stop after the bytes could hold.
        items.take(data.len() / 5 + 1).for_each(drop);
    }
    if let Ok(items) = EncodedItems::<(u64, Vec<u8>)>::new(bytes.clone()) {
        items.take(data.len() / 5 + 1).for_each(drop);
    }
    // Packed plain values: a tag and a fixed width per item, no length.
    if let Ok(items) = EncodedItems::<u64>::new(bytes.clone()) {
        items.take(data.len() + 1).for_each(drop);
    }
    if let Ok(items) = EncodedItems::<bool>::new(bytes) {
        items.take(data.len() + 1).for_each(drop);
    }
    let mut out = Vec::new();
    let _ = run_chunk(|s: String| s.len(), data, &mut out);
    out.clear();
    let _ = run_chunk(|b: bool| u32::from(b), data, &mut out);
}

fn decode_message(body: &[u8]) -> Result<String, JobError> {
    postcard::from_bytes::<String>(body).map_err(|e| JobError::Decode(format!("message: {e}")))
}

/// Splits one item (tag, `u32 LE` length, body) off the front of `bytes`; with
/// `plain_width`, a successful item is its tag and a packed value of that width.
#[inline]
fn split_item(bytes: &[u8], plain_width: Option<usize>) -> Result<(u8, &[u8], &[u8]), JobError> {
    let truncated = || JobError::Decode("truncated chunk result".into());
    let (&tag, rest) = bytes.split_first().ok_or_else(truncated)?;
    if tag > TAG_ARG_DECODE {
        // Checked first: what follows an unknown tag has no known layout.
        return Err(JobError::Decode(format!("unknown item tag {tag}")));
    }
    if let (TAG_OK, Some(width)) = (tag, plain_width) {
        return match rest.split_at_checked(width) {
            Some((body, rest)) => Ok((tag, body, rest)),
            None => Err(truncated()),
        };
    }
    let len_bytes: [u8; 4] = rest
        .get(..4)
        .ok_or_else(truncated)?
        .try_into()
        .unwrap_or([0; 4]);
    let len = u32::from_le_bytes(len_bytes) as usize;
    let rest = &rest[4..];
    if rest.len() < len {
        return Err(truncated());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// Appends one chunk-result item: tag, `u32 LE` length, body written by `write`. If
/// `write` fails, the item becomes a result-encoding error carrying its message.
fn push_item(out: &mut Vec<u8>, tag: u8, write: impl FnOnce(&mut Vec<u8>) -> Result<(), String>) {
    let start = out.len();
    out.push(tag);
    out.extend_from_slice(&[0; 4]);
    match write(out) {
        Ok(()) => patch_item_len(out, start),
        Err(message) => {
            out.truncate(start);
            push_message_item(out, TAG_RESULT_ENCODE, &message);
        }
    }
}

/// Appends an item whose body is a message (encoding a `str` cannot fail).
fn push_message_item(out: &mut Vec<u8>, tag: u8, message: &str) {
    let start = out.len();
    out.push(tag);
    out.extend_from_slice(&[0; 4]);
    if encode_into(message, out).is_err() {
        out.truncate(start + 5);
    }
    patch_item_len(out, start);
}

fn patch_item_len(out: &mut [u8], start: usize) {
    let len = (out.len() - start - 5) as u32;
    out[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
}

/// How one shipped call ended. `Ok` means the caller's output buffer holds the encoded
/// result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Outcome {
    Ok,
    Panicked {
        message: String,
        location: Option<String>,
    },
    /// The worker could not decode the argument.
    Decode(String),
    /// The worker could not encode the result.
    Encode(String),
}

impl Outcome {
    /// The job error for a call that did not succeed.
    pub(crate) fn into_error(self) -> Option<JobError> {
        match self {
            Outcome::Ok => None,
            Outcome::Panicked { message, location } => {
                Some(JobError::Panicked { message, location })
            }
            Outcome::Decode(e) => Some(JobError::Decode(format!("argument (in the worker): {e}"))),
            Outcome::Encode(e) => Some(JobError::Encode(format!("result (in the worker): {e}"))),
        }
    }
}

thread_local! {
    /// Set by the worker's panic hook: the location of the panic being unwound.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Whether a job is running on this thread, so the hook stays quiet for job panics.
    static IN_JOB: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs the worker's panic hook: it records where a job panicked (the report travels
/// to the parent) and prints panics that happen outside jobs as the default hook would.
pub(crate) fn install_worker_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if IN_JOB.with(|j| j.get()) {
            let loc = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            PANIC_LOCATION.with(|p| *p.borrow_mut() = loc);
        } else {
            default(info);
        }
    }));
}

/// Runs `f` as a job: catches a panic and reports its message and location.
fn catch<T>(f: impl FnOnce() -> T) -> Result<T, (String, Option<String>)> {
    IN_JOB.with(|j| j.set(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    IN_JOB.with(|j| j.set(false));
    result.map_err(|payload| {
        let location = PANIC_LOCATION.with(|p| p.borrow_mut().take());
        (crate::error::panic_message(&*payload), location)
    })
}

/// The body of the `single` trampoline: decode `A`, call `f`, encode `R` into `out`.
pub(crate) fn run_single<A: DeserializeOwned + 'static, R: Serialize + 'static>(
    f: fn(A) -> R,
    input: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Outcome {
    let arg = if is_byte_buffer::<A>() {
        // The argument's buffer is handed to the function, not copied.
        same_type::<Vec<u8>, A>(std::mem::take(input))
    } else {
        match catch(|| postcard::from_bytes::<A>(input)) {
            Ok(Ok(arg)) => arg,
            Ok(Err(e)) => return Outcome::Decode(e.to_string()),
            Err((message, _)) => {
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
        Ok(r) => match catch(|| encode_into(&r, out)) {
            Ok(Ok(())) => Outcome::Ok,
            Ok(Err(e)) => Outcome::Encode(e),
            Err((message, _)) => Outcome::Encode(format!("Serialize panicked: {message}")),
        },
        Err((message, location)) => Outcome::Panicked { message, location },
    }
}

/// The body of the `chunk` trampoline: each item is decoded, run and encoded on its own,
/// so that a panic or an encoding error fails only that item.
pub(crate) fn run_chunk<A: DeserializeOwned + 'static, R: Serialize + 'static>(
    f: fn(A) -> R,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Outcome {
    let Some((count, mut rest)) = input.split_first_chunk::<4>() else {
        return Outcome::Decode("chunk shorter than its item count".into());
    };
    // The answer starts with the same count: the caller hands out exactly that many results.
    out.extend_from_slice(count);
    let count = u32::from_le_bytes(*count);
    if let Some(width) = crate::plain::width::<A>() {
        let packed = (count as usize).checked_mul(width);
        if packed != Some(rest.len()) {
            return Outcome::Decode(format!(
                "a chunk of {count} packed `{}` holds {} bytes",
                std::any::type_name::<A>(),
                rest.len()
            ));
        }
        for arg in rest.chunks_exact(width) {
            match crate::plain::get::<A>(arg) {
                Some(arg) => run_item(f, arg, out),
                None => {
                    let message = format!("not a `{}`: {arg:?}", std::any::type_name::<A>());
                    push_message_item(out, TAG_ARG_DECODE, &message);
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
            push_message_item(out, TAG_ARG_ENCODE, &message);
            continue;
        }
        let arg = match catch(|| take_value::<A>(body)) {
            Ok(Ok((arg, tail))) => {
                rest = tail;
                arg
            }
            Ok(Err(e)) => return Outcome::Decode(e.to_string()),
            Err((message, _)) => {
                return Outcome::Decode(format!("Deserialize panicked: {message}"));
            }
        };
        run_item(f, arg, out);
    }
    Outcome::Ok
}

/// Runs one item of a chunk and appends its answer: the result, or why it failed.
#[inline]
fn run_item<A, R: Serialize + 'static>(f: fn(A) -> R, arg: A, out: &mut Vec<u8>) {
    match catch(move || f(arg)) {
        Ok(r) => push_result(out, &r),
        Err(report) => push_item(out, TAG_PANICKED, |o| encode_into(&report, o)),
    }
}

/// Appends a successful item's answer: its tag and its packed value if `R` is plain, else
/// its tag, length and encoding (or the error that kept it from encoding).
#[inline]
fn push_result<R: Serialize + 'static>(out: &mut Vec<u8>, r: &R) {
    let start = out.len();
    out.push(TAG_OK);
    if crate::plain::put(r, out) {
        return;
    }
    out.truncate(start);
    push_item(out, TAG_OK, |o| match catch(|| encode_value(r, o)) {
        Ok(result) => result,
        Err((message, _)) => Err(format!("Serialize panicked: {message}")),
    });
}

/// The body of the `init` trampoline: runs a worker initializer.
pub(crate) fn run_initializer(f: impl FnOnce()) -> Outcome {
    match catch(f) {
        Ok(()) => Outcome::Ok,
        Err((message, location)) => Outcome::Panicked { message, location },
    }
}

/// The identity of an executable file: device, inode, size and modification time.
///
/// Workers are started from `/proc/self/exe` on Linux, which names the parent's own image
/// even if the file was replaced on disk; the handshake compares both identities anyway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ImageId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl ImageId {
    /// This process's executable identity (computed once).
    pub(crate) fn current() -> Result<ImageId, String> {
        static CURRENT: OnceLock<Result<ImageId, String>> = OnceLock::new();
        CURRENT
            .get_or_init(|| {
                use std::os::unix::fs::MetadataExt;
                let meta = std::fs::metadata(exe_path()).map_err(|e| e.to_string())?;
                Ok(ImageId {
                    dev: meta.dev(),
                    ino: meta.ino(),
                    len: meta.len(),
                    mtime: meta.mtime(),
                    mtime_nsec: meta.mtime_nsec(),
                })
            })
            .clone()
    }
}

/// The path a worker is started from: the parent's own image.
pub(crate) fn exe_path() -> std::path::PathBuf {
    if cfg!(target_os = "linux") {
        "/proc/self/exe".into()
    } else {
        std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into())
    }
}

/// Checks that both addresses of `target` lie in the main executable image, where a worker
/// finds them; a function from a dynamically loaded library is refused.
pub(crate) fn check_shippable(target: &Target) -> Result<(), JobError> {
    let Some(ranges) = main_image_ranges() else {
        return Ok(()); // no memory map to consult on this platform
    };
    for addr in target.addresses() {
        if !ranges.iter().any(|&(lo, hi)| (lo..hi).contains(&addr)) {
            return Err(JobError::Unshippable {
                reason: format!(
                    "address {addr:#x} is outside the main executable (a dynamically loaded \
                     library?); workers can only call functions compiled into the program"
                ),
            });
        }
    }
    Ok(())
}

/// The address ranges mapped from the file that holds this crate's code, read once from
/// `/proc/self/maps`. `None` where there is no such file to read.
fn main_image_ranges() -> Option<&'static [(usize, usize)]> {
    static RANGES: OnceLock<Option<Vec<(usize, usize)>>> = OnceLock::new();
    RANGES
        .get_or_init(|| {
            let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
            parse_image_ranges(&maps, crate::raw::anchor_address())
        })
        .as_deref()
}

fn parse_image_ranges(maps: &str, anchor: usize) -> Option<Vec<(usize, usize)>> {
    let lines: Vec<(usize, usize, &str)> = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (lo, hi) = fields.next()?.split_once('-')?;
            let path = fields.nth(4).unwrap_or("");
            Some((
                usize::from_str_radix(lo, 16).ok()?,
                usize::from_str_radix(hi, 16).ok()?,
                path,
            ))
        })
        .collect();
    let image = lines
        .iter()
        .find(|(lo, hi, _)| (*lo..*hi).contains(&anchor))
        .map(|(_, _, path)| *path)
        .filter(|path| !path.is_empty())?;
    Some(
        lines
            .iter()
            .filter(|(_, _, path)| *path == image)
            .map(|(lo, hi, _)| (*lo, *hi))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let decoded = (job.call.decoder())(out.into()).unwrap();
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
    fn byte_buffers_in_chunks_keep_serdes_wire_format_and_round_trip() {
        let buffers: Vec<Vec<u8>> = (0..300_u32).map(|n| (0..n as u8).collect()).collect();
        for bytes in &buffers {
            let mut fast = Vec::new();
            encode_value(bytes, &mut fast).unwrap();
            assert_eq!(fast, postcard::to_allocvec(bytes).unwrap());
            let (back, rest) = take_value::<Vec<u8>>(&fast).unwrap();
            assert_eq!((&back, rest.len()), (bytes, 0));
        }
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

    fn decode_all<R: DeserializeOwned + 'static>(
        bytes: &[u8],
    ) -> Result<Vec<Result<R, JobError>>, JobError> {
        EncodedItems::<R>::new(bytes::Bytes::copy_from_slice(bytes)).map(Iterator::collect)
    }

    /// Cuts a two-item answer at every byte: each cut gives one result per counted item,
    /// the first intact while its bytes are, and an unknown tag breaks the rest.
    fn truncations_are_errors<R>(first: R, second: R)
    where
        R: Serialize + DeserializeOwned + PartialEq + fmt::Debug + Clone + 'static,
    {
        let mut out = 2_u32.to_le_bytes().to_vec();
        push_result(&mut out, &first);
        let first_item_ends = out.len();
        push_result(&mut out, &second);
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
            push_result(&mut out, &value);
        }
        let mut items = EncodedItems::<i64>::new(out.into()).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items.next(), Some(Ok(1)));
        assert_eq!(items.size_hint(), (2, Some(2)));
        assert_eq!(items.by_ref().collect::<Vec<_>>(), vec![Ok(2), Ok(3)]);
        assert_eq!(items.next(), None);
        // A corrupt count is only a length: the items past the bytes are errors, produced
        // one at a time, never allocated up front.
        let mut lying = u32::MAX.to_le_bytes().to_vec();
        push_result(&mut lying, &7_i64);
        let mut items = EncodedItems::<i64>::new(lying.into()).unwrap();
        assert_eq!(items.len(), u32::MAX as usize);
        assert_eq!(items.next(), Some(Ok(7)));
        assert!(matches!(items.next(), Some(Err(JobError::Decode(_)))));
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
    fn plain_values_travel_packed_in_both_directions() {
        let mut job = ErasedJob::chunk(square, vec![1, -2, i64::MAX]);
        let mut input = Vec::new();
        job.call.encode_input(&mut input).unwrap();
        let mut expected = 3_u32.to_le_bytes().to_vec();
        for x in [1_i64, -2, i64::MAX] {
            expected.extend_from_slice(&x.to_le_bytes());
        }
        assert_eq!(
            input, expected,
            "count, then the values: no tags, no lengths"
        );

        let mut out = Vec::new();
        let two = [&2_u32.to_le_bytes()[..], &input[4..4 + 16]].concat();
        assert_eq!(run_chunk(square, &two, &mut out), Outcome::Ok);
        let mut answer = 2_u32.to_le_bytes().to_vec();
        for x in [1_i64, 4] {
            answer.push(TAG_OK);
            answer.extend_from_slice(&x.to_le_bytes());
        }
        assert_eq!(out, answer, "count, then a tag and a value per item");
        assert_eq!(decode_all::<i64>(&out).unwrap(), vec![Ok(1), Ok(4)]);
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
        let results = decode_all::<bool>(&out).unwrap();
        assert_eq!(results[0], Ok(false));
        assert!(
            matches!(&results[1], Err(JobError::Decode(m)) if m.contains("not a `bool`")),
            "{:?}",
            results[1]
        );
        assert_eq!(results[2], Ok(true));
        // A packed result that is no bool is a decoding error for that item only.
        let answer = [2, 0, 0, 0, TAG_OK, 5, TAG_OK, 1];
        let results = decode_all::<bool>(&answer).unwrap();
        assert!(
            matches!(&results[0], Err(JobError::Decode(_))),
            "{results:?}"
        );
        assert_eq!(results[1], Ok(true));
    }

    #[test]
    fn image_ranges_come_from_the_anchors_file() {
        let maps = "\
1000-2000 r-xp 00000000 08:01 1 /usr/bin/app
2000-3000 r--p 00000000 08:01 1 /usr/bin/app
4000-5000 r-xp 00000000 08:01 2 /usr/lib/libplugin.so
6000-7000 rw-p 00000000 00:00 0
";
        let ranges = parse_image_ranges(maps, 0x1800).unwrap();
        assert_eq!(ranges, vec![(0x1000, 0x2000), (0x2000, 0x3000)]);
        assert!(parse_image_ranges(maps, 0x6800).is_none());
    }

    #[test]
    fn functions_of_this_binary_are_shippable() {
        assert!(check_shippable(&Target::single(square)).is_ok());
    }
}
