//! How a shared array is made and travels: its segment ([`Segment`]), the part of it a
//! value names ([`Part`]), the handle or elements that carry it through serde, and what a
//! pool holds while a job's argument names it ([`Kept`]).

use super::Element;
use crate::error::ShareError;
use crate::sys::segment::{Mapping, Pod};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// One shared memory segment, mapped here, and how other processes find it.
pub(super) struct Segment {
    map: Mapping,
    /// The process that created it and a descriptor of it there (in that process, one
    /// that `map` owns): what a handle names.
    pid: u32,
    fd: i32,
    /// Its name (unique: process, count, random), checked by whoever opens it.
    pub(super) name: String,
}

impl Segment {
    /// A new segment of `bytes` zero bytes, or holding `values`; unless `writable`,
    /// sealed against writing.
    fn create<E: Pod>(bytes: usize, values: &[E], writable: bool) -> Result<Segment, ShareError> {
        use std::sync::atomic::AtomicU64;
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let mut random = [0_u8; 8];
        let _ = getrandom::fill(&mut random); // the count alone is unique in this process
        let name = format!(
            "procpool-shm-{}-{}-{:016x}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed),
            u64::from_ne_bytes(random)
        );
        let c_name = std::ffi::CString::new(name.clone()).expect("no NUL in the name");
        let map = if writable {
            Mapping::create(bytes, &c_name, values)
        } else {
            Mapping::create_sealed(bytes, &c_name, values)
        };
        let map = map.map_err(|source| {
            if source.kind() == std::io::ErrorKind::Unsupported {
                ShareError::Unsupported
            } else {
                ShareError::Create { bytes, source }
            }
        })?;
        Ok(Segment {
            pid: std::process::id(),
            fd: map.raw_fd(),
            map,
            name,
        })
    }

    /// Opens what `handle` names.
    fn open(handle: &Handle, bytes: usize) -> Result<Segment, String> {
        let start = usize::try_from(handle.start).map_err(|e| e.to_string())?;
        let map = Mapping::open(
            handle.pid,
            handle.fd,
            &handle.name,
            start,
            bytes,
            handle.writable,
        )
        .map_err(|e| {
            format!(
                "{e} (a shared array is opened from the process that created it, which \
                     must still hold it, on the same machine)"
            )
        })?;
        // Back in the process that created it, the segment is named by the descriptor
        // just opened, which it owns, and not by the one the handle named, which the
        // original array may close.
        let fd = match map.raw_fd() {
            -1 => handle.fd,
            own => own,
        };
        Ok(Segment {
            map,
            pid: handle.pid,
            fd,
            name: handle.name.clone(),
        })
    }
}

thread_local! {
    /// While a pool encodes a job's argument: the segments it names, which the pool
    /// then holds until the job has ended.
    static KEPT: RefCell<Option<Vec<Arc<Segment>>>> = const { RefCell::new(None) };
    /// Why the last shared array failed to decode: serde formats keep only their own
    /// message, so the decoder adds this one.
    static WHY: RefCell<Option<String>> = const { RefCell::new(None) };
    /// While a pool decodes a job's result: the segments its argument named, which a
    /// handle in the result to one of this process's own names again (see [`decoding`]).
    static LENT: RefCell<Kept> = const { RefCell::new(Kept(None)) };
}

/// The segments a job's argument names, held by the pool until the job has ended.
///
/// Boxed, so that the many jobs that name none carry a single null pointer: it is part of
/// every process job's completion cell, which is kept small (see
/// [`JobState`](crate::handle::JobState)).
#[derive(Default)]
#[expect(
    clippy::box_collection,
    reason = "one word, where `Option<Box<[_]>>` would be two (and a `Vec` three)"
)]
pub(crate) struct Kept(Option<Box<Vec<Arc<Segment>>>>);

impl Kept {
    /// Holds `other`'s segments too.
    pub(crate) fn extend(&mut self, other: Kept) {
        match (&mut self.0, other.0) {
            (_, None) => {}
            (None, other) => self.0 = other,
            (Some(mine), Some(other)) => mine.extend(*other),
        }
    }

    /// How many segments it holds.
    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |segments| segments.len())
    }
}

impl fmt::Debug for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kept({} segments)", self.len())
    }
}

/// Runs `encode` (a job's argument being encoded by a pool), collecting the segments the
/// shared arrays in it name, so that they travel as handles.
///
/// A job submitted from a thread-local's destructor, once this thread's [`KEPT`] is gone,
/// is encoded without it: a shared array of this process in its argument then fails the
/// job (in a `map`, its item) with [`JobError::Encode`](crate::JobError::Encode) (see
/// [`Part::serialize`]) rather than travel as a private copy.
pub(crate) fn keeping<T>(encode: impl FnOnce() -> T) -> (T, Kept) {
    let Ok(outer) = KEPT.try_with(|k| k.borrow_mut().replace(Vec::new())) else {
        return (encode(), Kept::default());
    };
    let result = encode();
    let kept = KEPT.with(|k| std::mem::replace(&mut *k.borrow_mut(), outer));
    (result, Kept(kept.filter(|k| !k.is_empty()).map(Box::new)))
}

/// Runs `decode` (a decoder that may fail with a message for [`explain`]), forgetting
/// first why an earlier shared array did not decode: a `Deserialize` impl that swallowed
/// that failure must not have it explain this decoder's.
///
/// Meanwhile `kept` (the segments of the job whose result this is) is lent to the shared
/// arrays being decoded: one that names a segment of this process among them shares it,
/// as the same memory, rather than open it again (five system calls, and a mapping and
/// a descriptor of its own, whose pages are all mapped at once).
pub(crate) fn decoding<T>(kept: &mut Kept, decode: impl FnOnce() -> T) -> T {
    /// Gives the segments back to `kept`, also should `decode` panic.
    struct GiveBack<'a> {
        kept: &'a mut Kept,
        outer: Kept,
    }
    impl Drop for GiveBack<'_> {
        fn drop(&mut self) {
            let outer = std::mem::take(&mut self.outer);
            if let Ok(lent) = LENT.try_with(|lent| lent.replace(outer)) {
                *self.kept = lent;
            }
        }
    }
    let _ = WHY.try_with(|why| why.borrow_mut().take());
    if kept.0.is_none() {
        return decode();
    }
    let Ok(outer) = LENT.try_with(|lent| lent.replace(std::mem::take(kept))) else {
        return decode(); // this thread's state is gone: arrays are opened again
    };
    let _give_back = GiveBack { kept, outer };
    decode()
}

/// The segment lent to this decode (see [`decoding`]) that `handle` names, if any.
fn lent(handle: &Handle) -> Option<Arc<Segment>> {
    if handle.pid != std::process::id() {
        return None;
    }
    let named = |segment: &&Arc<Segment>| {
        segment.fd == handle.fd && segment.pid == handle.pid && segment.name == handle.name
    };
    let found = LENT.try_with(|lent| lent.borrow().0.as_ref()?.iter().find(named).cloned());
    found.ok().flatten()
}

/// `message` (a decoder's error), with why a shared array in it did not decode, if one
/// did not (in a decoder run with [`decoding`]).
pub(crate) fn explain(message: String) -> String {
    match WHY.try_with(|why| why.borrow_mut().take()).ok().flatten() {
        Some(why) => format!("{message}: {why}"),
        None => message,
    }
}

/// A handle, or the elements themselves.
#[derive(Serialize, Deserialize)]
enum Wire {
    Handle(Handle),
    Inline {
        tag: u8,
        writable: bool,
        #[serde(with = "le_bytes")]
        bytes: Vec<u8>,
    },
}

/// What names a part of a segment.
#[derive(Serialize, Deserialize)]
struct Handle {
    pid: u32,
    fd: i32,
    name: String,
    tag: u8,
    writable: bool,
    /// Where the part starts in the segment, in bytes.
    start: u64,
    /// How many elements it has.
    len: u64,
}

/// Serde bytes (one copy), not a sequence of numbers.
mod le_bytes {
    use serde::{Deserializer, Serializer, de};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> de::Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

/// What a shared array is made of: a segment and a part of it. Both public types wrap it.
pub(super) struct Part<E> {
    pub(super) segment: Arc<Segment>,
    /// Where the part starts in the segment, in bytes.
    start: usize,
    pub(super) len: usize,
    _element: PhantomData<E>,
}

impl<E: Element> Part<E> {
    pub(super) fn create(len: usize, values: &[E], writable: bool) -> Result<Part<E>, ShareError> {
        let bytes = len
            .checked_mul(std::mem::size_of::<E>())
            .ok_or(ShareError::TooLarge { len })?;
        let segment = Segment::create(bytes, values, writable)?;
        Ok(Part {
            segment: Arc::new(segment),
            start: 0,
            len,
            _element: PhantomData,
        })
    }

    /// The part `range` of this one (indices relative to it).
    pub(super) fn part(&self, range: impl RangeBounds<usize>, what: &str) -> Part<E> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.checked_add(1).expect("range start overflows"),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.checked_add(1).expect("range end overflows"),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => self.len,
        };
        assert!(
            start <= end && end <= self.len,
            "{what}::slice: range {start}..{end} out of bounds for length {}",
            self.len
        );
        Part {
            segment: self.segment.clone(),
            start: self.start + start * std::mem::size_of::<E>(),
            len: end - start,
            _element: PhantomData,
        }
    }

    pub(super) fn serialize<S: Serializer>(
        &self,
        writable: bool,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let here = self.segment.pid == std::process::id();
        // A pool encoding a job holds the segment until the job ends; a segment another
        // process created is held by it (the pool that sent it here).
        let as_handle = KEPT.try_with(|kept| match kept.borrow_mut().as_mut() {
            Some(kept) => {
                kept.push(self.segment.clone());
                true
            }
            None => !here,
        });
        let as_handle = match as_handle {
            Ok(as_handle) => as_handle,
            Err(_) if !here => true,
            // Not kept by a pool, and not copied: a writable array's copy would lose what
            // the job writes, and a read-only one is refused alike, so that both kinds
            // behave the same.
            Err(_) => {
                return Err(serde::ser::Error::custom(
                    "a shared array cannot travel in a job submitted from a thread-local's \
                     destructor (this thread's pool state is gone): submit it before the \
                     thread ends",
                ));
            }
        };
        let wire = if as_handle {
            Wire::Handle(Handle {
                pid: self.segment.pid,
                fd: self.segment.fd,
                name: self.segment.name.clone(),
                tag: E::TAG,
                writable,
                start: self.start as u64,
                len: self.len as u64,
            })
        } else {
            let mut bytes = Vec::new();
            if writable {
                let values: Vec<E> = self.atoms().iter().map(E::load).collect();
                E::put_all(&values, &mut bytes);
            } else {
                E::put_all(self.elements(), &mut bytes);
            }
            Wire::Inline {
                tag: E::TAG,
                writable,
                bytes,
            }
        };
        wire.serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
        writable: bool,
        what: &str,
    ) -> Result<Part<E>, D::Error> {
        let fail = |why: String| {
            let _ = WHY.try_with(|w| *w.borrow_mut() = Some(why.clone()));
            de::Error::custom(why)
        };
        let check = |tag: u8, was_writable: bool| {
            if tag == E::TAG && was_writable == writable {
                return Ok(());
            }
            Err(format!(
                "a shared array of another kind (element tag {tag}, writable: \
                 {was_writable}) cannot be read as a {what}<{}>",
                std::any::type_name::<E>()
            ))
        };
        let size = std::mem::size_of::<E>();
        match Wire::deserialize(deserializer)? {
            Wire::Handle(handle) => {
                check(handle.tag, handle.writable).map_err(fail)?;
                let len = usize::try_from(handle.len).map_err(|e| fail(e.to_string()))?;
                let start = usize::try_from(handle.start).map_err(|e| fail(e.to_string()))?;
                let bytes = len
                    .checked_mul(size)
                    .ok_or_else(|| fail("too long".into()))?;
                if !start.is_multiple_of(size) {
                    return Err(fail(format!(
                        "a part of {} starts off its elements",
                        handle.name
                    )));
                }
                if len == 0 {
                    return Part::create(0, &[], writable).map_err(|e| fail(e.to_string()));
                }
                let segment = match lent(&handle)
                    .filter(|segment| segment.map.lends::<E>(writable, start, len))
                {
                    Some(segment) => segment,
                    None => Arc::new(Segment::open(&handle, bytes).map_err(fail)?),
                };
                Ok(Part {
                    segment,
                    start,
                    len,
                    _element: PhantomData,
                })
            }
            Wire::Inline {
                tag,
                writable: was_writable,
                bytes,
            } => {
                check(tag, was_writable).map_err(fail)?;
                let values = E::get_all(&bytes).ok_or_else(|| {
                    fail(format!(
                        "{} bytes are no whole number of elements",
                        bytes.len()
                    ))
                })?;
                Part::create(values.len(), &values, writable).map_err(|e| fail(e.to_string()))
            }
        }
    }

    pub(super) fn elements(&self) -> &[E] {
        self.segment
            .map
            .elements(self.start, self.len)
            .expect("procpool bug: a read-only part outside its mapping")
    }

    pub(super) fn atoms(&self) -> &[E::Atom] {
        self.segment
            .map
            .atoms::<E>(self.start, self.len)
            .expect("procpool bug: a writable part outside its mapping")
    }
}
