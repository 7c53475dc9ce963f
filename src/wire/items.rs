//! How the items of a `map` chunk travel inside a frame's payload, and how a single job's
//! argument and result are encoded.
//!
//! # Chunk layout
//!
//! A chunk (many items of one `map`) travels as `count: u32 LE` followed, per item, by a
//! tag byte and either the postcard encoding of `A` ([`TAG_OK`]) or the message of the
//! error that kept the argument from encoding ([`TAG_ARG_ENCODE`]). The answer starts with
//! the same count and is, per item, a tag byte, `len: u32 LE` and `len` bytes: so that one
//! item that fails to encode, decode or run fails only itself. A count is below 2^31.
//!
//! Plain types (integers, floats, `bool`: see [`super::plain`]) are packed instead, in a
//! fixed number of little-endian bytes: a chunk of plain `A` is `count` followed by
//! `count` packed values, with no tags (encoding one cannot fail). An answer of plain `R`
//! whose every item succeeded is `count | ALL_PACKED` followed by the packed values; in
//! any other answer, an item of plain `R` that succeeded is its tag followed by the packed
//! value, with no length (other items are as above).
//!
//! A `Vec<u8>` travels as raw bytes: the whole payload of a single job, or serde bytes (one
//! copy) inside a chunk, rather than serde's element-by-element sequence. A `Vec` of
//! another plain type travels packed (see [`super::plain`]) the same way.

use super::plain;
use crate::error::{JobError, panic_message};
use serde::{Serialize, de::DeserializeOwned};
use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Set in the count of a chunk's answer whose items all succeeded, of a plain `R`: the
/// values follow packed, with no tags. (A chunk's count is below it.)
pub(crate) const ALL_PACKED: u32 = 1 << 31;

/// The count a chunk of `len` items starts with.
pub(crate) fn chunk_count(len: usize) -> Result<u32, JobError> {
    u32::try_from(len)
        .ok()
        .filter(|count| count & ALL_PACKED == 0)
        .ok_or_else(|| {
            JobError::Encode(format!(
                "a chunk of {len} items: a chunk holds at most 2^31 - 1; pass a smaller chunk_size"
            ))
        })
}

/// The item's result (or, in a chunk's input, its argument) follows.
pub(crate) const TAG_OK: u8 = 0;
/// The job panicked: a postcard `(message, location, backtrace)` follows.
pub(crate) const TAG_PANICKED: u8 = 1;
/// The result did not encode in the worker: a message follows.
pub(crate) const TAG_RESULT_ENCODE: u8 = 2;
/// The argument did not encode in the parent: a message follows.
pub(crate) const TAG_ARG_ENCODE: u8 = 3;
/// The argument did not decode in the worker: a message follows.
pub(crate) const TAG_ARG_DECODE: u8 = 4;

/// Appends the postcard encoding of `value` to `out`; on error `out` is left as it was and
/// the message names the type, and gives the `Serialize` impl's own message when it failed
/// with one (postcard drops it: [`super::why`] finds it again).
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let start = out.len();
    postcard::serialize_with_flavor(value, VecTail(&mut *out)).map_err(|e| {
        out.truncate(start);
        let why = match e {
            postcard::Error::SerdeSerCustom => super::why::serialize_message(value),
            _ => None,
        };
        let why = why.unwrap_or_else(|| e.to_string());
        format!("{why} (in `{}`)", std::any::type_name::<T>())
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

/// Encodes one item of a chunk. A `Vec<u8>` is written as postcard bytes in one copy:
/// the same wire format as serde's element-by-element sequence, many times faster.
pub(crate) fn encode_value<T: Serialize + 'static>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    if let Some(bytes) = (value as &dyn Any).downcast_ref::<Vec<u8>>() {
        return encode_into(&RawBytes(bytes), out);
    }
    if let Some(bytes) = plain::packed_len(value) {
        // Its length in bytes (the varint postcard writes before bytes), then the numbers
        // packed, straight into `out`.
        encode_into(&bytes, out)?;
        plain::put_vec(value, out);
        return Ok(());
    }
    encode_into(value, out)
}

/// Decodes one item written by [`encode_value`], returning the bytes after it.
pub(crate) fn take_value<T: DeserializeOwned + 'static>(
    bytes: &[u8],
) -> postcard::Result<(T, &[u8])> {
    if is_byte_buffer::<T>() {
        let (raw, rest) = postcard::take_from_bytes::<&[u8]>(bytes)?;
        return Ok((same_type::<Vec<u8>, T>(raw.to_vec()), rest));
    }
    if plain::is_vec::<T>() {
        let (raw, rest) = postcard::take_from_bytes::<&[u8]>(bytes)?;
        return match plain::get_vec::<T>(raw) {
            Some(Some(numbers)) => Ok((numbers, rest)),
            _ => Err(postcard::Error::DeserializeBadEncoding),
        };
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
pub(crate) fn is_byte_buffer<T: 'static>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<Vec<u8>>()
}

/// Converts between two names of the same type, checked by the caller with `TypeId` (as
/// [`is_byte_buffer`] does), without allocating.
#[inline]
pub(crate) fn same_type<T: 'static, U: 'static>(value: T) -> U {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<U>>()
        .and_then(Option::take)
        .unwrap_or_else(|| unreachable!("callers compare TypeIds first"))
}

/// Appends a chunk's input: the count, then each argument packed (plain `A`) or tagged.
/// An argument that does not encode fails only itself, in the worker's answer.
#[allow(clippy::ptr_arg)] // a `Vec`, for `plain::put_all`
pub(crate) fn put_args<A: Serialize + 'static>(
    args: &Vec<A>,
    out: &mut Vec<u8>,
) -> Result<(), JobError> {
    let count = chunk_count(args.len())?;
    if let Some(width) = plain::width::<A>() {
        out.reserve(4 + args.len() * width);
        out.extend_from_slice(&count.to_le_bytes());
        let packed = plain::put_all(args, out);
        debug_assert!(packed, "width and put_all agree on which types are plain");
        return Ok(());
    }
    // Room for a tag and a small item each, so that the buffer rarely grows by copying.
    let guess = 1 + std::mem::size_of::<A>().clamp(1, 16);
    out.reserve(4 + args.len().saturating_mul(guess));
    out.extend_from_slice(&count.to_le_bytes());
    for arg in args {
        put_tagged(arg, out)?;
    }
    Ok(())
}

/// Appends one argument of a chunk of a type that is not plain, tagged: [`put_args`]
/// writes each this way after the count. An argument that does not encode (its
/// `Serialize` fails or panics) is written as that error, for its item alone.
pub(crate) fn put_tagged<A: Serialize + 'static>(
    arg: &A,
    out: &mut Vec<u8>,
) -> Result<(), JobError> {
    let start = out.len();
    out.push(TAG_OK);
    let encoded = catch_unwind(AssertUnwindSafe(|| encode_value(arg, out)))
        .unwrap_or_else(|panic| Err(format!("Serialize panicked: {}", panic_message(panic))));
    if let Err(message) = encoded {
        out.truncate(start);
        out.push(TAG_ARG_ENCODE);
        encode_into(&message, out).map_err(JobError::Encode)?;
    }
    Ok(())
}

/// Decodes one item's result with a user `Deserialize` impl, which may panic: then the
/// item fails with [`JobError::Decode`], and the caller goes on.
fn decode_result<R: DeserializeOwned + 'static>(
    body: &[u8],
    kept: &mut crate::shared::Kept,
) -> Result<R, JobError> {
    match catch_unwind(AssertUnwindSafe(|| {
        crate::shared::decoding(kept, || take_value::<R>(body))
    })) {
        Ok(Ok((value, _))) => Ok(value),
        Ok(Err(e)) => Err(JobError::Decode(crate::shared::explain(format!(
            "result: {e}"
        )))),
        Err(panic) => Err(JobError::Decode(format!(
            "result: Deserialize panicked: {}",
            panic_message(panic)
        ))),
    }
}

/// Appends one answer item: tag, `u32 LE` length, body written by `write`. If `write`
/// fails, the item becomes a result-encoding error carrying its message.
pub(crate) fn push_item(
    out: &mut Vec<u8>,
    tag: u8,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) {
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
pub(crate) fn push_message_item(out: &mut Vec<u8>, tag: u8, message: &str) {
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

/// Splits one answer item (tag, `u32 LE` length, body) off the front of `bytes`; with
/// `plain_width`, a successful item is its tag and a packed value of that width.
#[inline]
pub(crate) fn split_item(
    bytes: &[u8],
    plain_width: Option<usize>,
) -> Result<(u8, &[u8], &[u8]), JobError> {
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
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(truncated)?;
    let len = u32::from_le_bytes(*len) as usize;
    let (body, rest) = rest.split_at_checked(len).ok_or_else(truncated)?;
    Ok((tag, body, rest))
}

/// A panic's report in a chunk's answer: message, location, backtrace.
type Report = (String, Option<String>, Option<String>);

fn decode_message(body: &[u8]) -> Result<String, JobError> {
    postcard::from_bytes::<String>(body).map_err(|e| JobError::Decode(format!("message: {e}")))
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
    /// Every item succeeded and is a packed value, with no tag ([`ALL_PACKED`]).
    packed: bool,
    /// The shared arrays the chunk's arguments named, which its results may name too:
    /// held until every item has decoded, since an item opens what it names only then.
    kept: crate::shared::Kept,
    _results: std::marker::PhantomData<fn() -> R>,
}

impl<R> EncodedItems<R> {
    /// Items still to yield, without the decoding bounds of `len()`.
    pub(crate) fn remaining(&self) -> usize {
        self.left
    }

    /// The same items, holding `kept` (see the field of that name) until they are all
    /// decoded or dropped.
    pub(crate) fn holding(mut self, kept: crate::shared::Kept) -> Self {
        self.kept = kept;
        self
    }
}

impl<R: DeserializeOwned + 'static> EncodedItems<R> {
    pub(crate) fn new(bytes: bytes::Bytes) -> Result<Self, JobError> {
        let Some(count) = bytes.first_chunk::<4>() else {
            return Err(JobError::Decode(
                "chunk result shorter than its item count".into(),
            ));
        };
        let count = u32::from_le_bytes(*count);
        let packed = count & ALL_PACKED != 0;
        let left = (count & !ALL_PACKED) as usize;
        if packed {
            let Some(width) = plain::width::<R>() else {
                return Err(JobError::Decode(format!(
                    "a chunk's answer of packed values, for `{}`, which is not plain",
                    std::any::type_name::<R>()
                )));
            };
            if left.checked_mul(width) != Some(bytes.len() - 4) {
                return Err(JobError::Decode(format!(
                    "a chunk's answer of {left} packed values holds {} bytes",
                    bytes.len() - 4
                )));
            }
        }
        Ok(EncodedItems {
            left,
            bytes,
            at: 4,
            broken: None,
            packed,
            kept: crate::shared::Kept::default(),
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
        if self.packed {
            let width = plain::width::<R>().expect("checked in `new`");
            let body = &self.bytes[self.at..self.at + width]; // length checked in `new`
            self.at += width;
            return Ok(plain::get::<R>(body).ok_or_else(|| {
                JobError::Decode(format!("result: not a `{}`", std::any::type_name::<R>()))
            }));
        }
        let (tag, body, rest) = split_item(&self.bytes[self.at..], plain::width::<R>())?;
        self.at = self.bytes.len() - rest.len();
        Ok(match tag {
            TAG_OK => match plain::width::<R>() {
                Some(_) => plain::get::<R>(body).ok_or_else(|| {
                    JobError::Decode(format!("result: not a `{}`", std::any::type_name::<R>()))
                }),
                None => decode_result::<R>(body, &mut self.kept),
            },
            TAG_PANICKED => match postcard::from_bytes::<Report>(body) {
                Ok((message, location, backtrace)) => Err(JobError::Panicked {
                    message,
                    location,
                    backtrace,
                }),
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

impl<R: DeserializeOwned + 'static> EncodedItems<R> {
    /// The bytes of the packed plain values left and each one's width, if the answer is
    /// packed values of a plain `R` (whose length was checked in `new`).
    fn packed_left(&self) -> Option<(&[u8], usize)> {
        let width = plain::width::<R>().filter(|_| self.packed)?;
        Some((&self.bytes[self.at..self.at + self.left * width], width))
    }

    /// Every value left at once, if every item succeeded and is a packed plain value (the
    /// answer of numbers that all decode, with no per-item tag); else `None`, and nothing
    /// is read.
    pub(crate) fn take_packed_values(&mut self) -> Option<Vec<R>> {
        let (values, width) = self.packed_left().filter(|_| self.broken.is_none())?;
        let mut out = Vec::with_capacity(self.left);
        if plain::get_into(values, &mut out) < self.left {
            return None; // a value that does not decode (a `bool` byte of 2): item by item
        }
        self.at += self.left * width;
        self.left = 0;
        Some(out)
    }

    /// Appends every remaining result to `out`, stopping at the first that failed (which
    /// is returned): [`Iterator::next`] in a loop the compiler can see through, with the
    /// packed values of a plain `R` read back to back.
    pub(crate) fn drain_ok_into(&mut self, out: &mut Vec<R>) -> Result<(), JobError> {
        out.reserve(self.left);
        if let Some((values, width)) = self.packed_left() {
            let n = plain::get_into(values, out);
            self.at += n * width;
            self.left -= n;
        } else if let Some(width) = plain::width::<R>().filter(|_| self.broken.is_none()) {
            while self.left > 0 {
                match self.bytes[self.at..].split_first() {
                    Some((&TAG_OK, rest)) => match plain::get::<R>(rest) {
                        Some(value) => {
                            out.push(value);
                            self.at += 1 + width;
                            self.left -= 1;
                        }
                        None => break,
                    },
                    _ => break,
                }
            }
        }
        for item in self {
            out.push(item?);
        }
        Ok(())
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
            if let Some(width) = plain::width::<R>() {
                // A packed value, or a tag and a value.
                let tag = usize::from(!self.packed);
                if (self.packed || self.bytes.get(self.at) == Some(&TAG_OK))
                    && let Some(value) = self.bytes.get(self.at + tag..).and_then(plain::get::<R>)
                {
                    self.at += tag + width;
                    return Some(Ok(value));
                }
            } else if let Ok((TAG_OK, body, rest)) = split_item(&self.bytes[self.at..], None) {
                // A user `Deserialize` runs here, on the caller's thread: its panic fails
                // only this item.
                self.at = self.bytes.len() - rest.len();
                return Some(decode_result::<R>(body, &mut self.kept));
            }
        }
        Some(self.next_in_general())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<R: DeserializeOwned + 'static> ExactSizeIterator for EncodedItems<R> {}

impl<R> Drop for EncodedItems<R> {
    /// A large answer's buffer is kept for the next large message (its items are decoded
    /// into values of their own).
    fn drop(&mut self) {
        crate::spares::recycle(std::mem::take(&mut self.bytes));
    }
}

/// Decodes arbitrary bytes as a chunk's answer, as a fuzzer does.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_decode(data: &[u8]) {
    let bytes = bytes::Bytes::copy_from_slice(data);
    if let Ok(items) = EncodedItems::<String>::new(bytes.clone()) {
        // A corrupt count could claim 2 billion items: stop after the bytes could hold.
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
}

#[cfg(test)]
mod tests;
