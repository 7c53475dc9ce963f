//! Arrays that jobs share instead of copying: [`SharedSlice`] (read by every job, never
//! copied per job) and [`SharedBuffer`] (written by many jobs, each its own part), for
//! plain element types ([`Element`]: the integers and floats).
//!
//! Both live in a shared memory segment (a Linux `memfd`). On a
//! [`ProcessPoolExecutor`](crate::ProcessPoolExecutor) a job's argument carries only a
//! handle to the segment (a few dozen bytes, whatever the array's length), and the worker
//! maps the part it was given; on a [`ThreadPoolExecutor`](crate::ThreadPoolExecutor) the
//! same values are plain shared memory. So the same code runs on both pools, and the
//! `Box<dyn Executor>` switch still holds.
//!
//! # Lifetimes
//!
//! A segment lives while any process holds it: the value that created it, a clone, a job
//! that was sent it (the pool holds what a job's argument names until the job has ended
//! and its result was read), a worker that mapped it. The kernel frees it when the last of
//! them lets go, also when a worker dies holding it or the whole program is killed;
//! nothing is ever left in `/dev/shm` or a temporary directory.
//!
//! # How a value travels
//!
//! Inside a job's argument (submitted or mapped) a shared array travels as a handle. A
//! handle that a worker received travels back as a handle too (a job may return the
//! buffer it wrote). An array a job created itself, or one serialized outside a pool's
//! job (to a file, say), travels as its elements instead, and arrives as a new array.
//! Handles do not cross machines: on an `MpiPoolExecutor` (feature `mpi`), jobs on rank
//! 0's machine open them, and a job on another node fails with
//! [`JobError::Decode`](crate::JobError::Decode) saying so.
//!
//! # Example: one input read by every job, one output written in parts
//!
//! ```
//! use futures::TryStreamExt;
//! use procpool::{ExecutorExt, ProcessPoolExecutor, SharedBuffer, SharedSlice};
//!
//! /// Writes the squares of `input[start..end]` into `output[start..end]`.
//! fn squares((input, output, start, end): (SharedSlice<f64>, SharedBuffer<f64>, usize, usize)) {
//!     let part: Vec<f64> = input[start..end].iter().map(|x| x * x).collect();
//!     output.write(start, &part);
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = ProcessPoolExecutor::new(2)?;
//! let input = SharedSlice::from_slice(&(0..1000).map(f64::from).collect::<Vec<_>>())?;
//! let output = SharedBuffer::<f64>::zeroed(1000)?;
//! let jobs = (0..10).map(|i| (input.clone(), output.clone(), i * 100, (i + 1) * 100));
//! pool.map(squares, jobs).try_collect::<Vec<()>>().await?;
//! assert_eq!(output.get(30), Some(900.0));
//! assert_eq!(output.to_vec()[999], 998_001.0);
//! # Ok(())
//! # }
//! ```

mod part;

use crate::error::ShareError;
use part::Part;
pub(crate) use part::{Kept, decoding, explain, keeping};
use serde::de::Deserializer;
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::ops::RangeBounds;
use std::sync::atomic::Ordering;

/// A plain element type a shared array can hold: `u8`, `i8`, `u16`, `i16`, `u32`, `i32`,
/// `u64`, `i64`, `f32` and `f64` (sealed: no other type can implement it).
pub trait Element: sealed::Sealed + Copy + Send + Sync + fmt::Debug + PartialEq + 'static {}

mod sealed {
    use crate::sys::segment::Pod;
    use crate::wire::plain::Plain;

    /// What a shared array needs of its element type: its memory layout ([`Pod`]) and
    /// its packed encoding ([`Plain`]), for when its elements travel as values.
    pub trait Sealed: Pod + Plain {
        /// Names the type on the wire, so that a handle is never read as another type.
        const TAG: u8;
        /// Stores `value` into `atom` (relaxed).
        fn store(atom: &Self::Atom, value: Self);
        /// Loads a value from `atom` (relaxed).
        fn load(atom: &Self::Atom) -> Self;
    }
}

macro_rules! element {
    ($($t:ty: $tag:literal, $bits:ty;)*) => {$(
        impl sealed::Sealed for $t {
            const TAG: u8 = $tag;
            #[inline(always)]
            fn store(atom: &Self::Atom, value: Self) {
                atom.store(<$bits>::from_ne_bytes(value.to_ne_bytes()), Ordering::Relaxed);
            }
            #[inline(always)]
            fn load(atom: &Self::Atom) -> Self {
                <$t>::from_ne_bytes(atom.load(Ordering::Relaxed).to_ne_bytes())
            }
        }
        impl Element for $t {}
    )*};
}

element! {
    u8: 1, u8; i8: 2, u8; u16: 3, u16; i16: 4, u16; u32: 5, u32; i32: 6, u32;
    u64: 7, u64; i64: 8, u64; f32: 9, u32; f64: 10, u64;
}

/// A read-only array in shared memory that every job may read without it being copied
/// into the job: an input many jobs need (a signal, a table, an image), as Python's
/// `multiprocessing.shared_memory` or joblib's memory-mapped arrays give it.
///
/// It dereferences to `&[E]`. Cloning it, or taking a part with [`slice`](Self::slice),
/// shares the same memory; a job's argument carries a handle of a few dozen bytes, and
/// the worker maps the part it was given (see the [module docs](crate::shared) for how
/// long memory lives and how a value travels).
///
/// # Examples
///
/// ```
/// use procpool::{ExecutorExt, ProcessPoolExecutor, SharedSlice};
///
/// fn sum(part: SharedSlice<u64>) -> u64 {
///     part.iter().sum()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = ProcessPoolExecutor::new(2)?;
/// let numbers = SharedSlice::from_slice(&(1..=1_000_000).collect::<Vec<u64>>())?;
/// let first_half = pool.submit(sum, numbers.slice(..500_000)).await?;
/// let second_half = pool.submit(sum, numbers.slice(500_000..)).await?;
/// assert_eq!(first_half + second_half, 500_000_500_000);
/// # Ok(())
/// # }
/// ```
pub struct SharedSlice<E: Element> {
    part: Part<E>,
}

impl<E: Element> SharedSlice<E> {
    /// A new shared array holding a copy of `values` (one copy, into a new segment that
    /// is then sealed: no process can change it afterwards).
    ///
    /// # Errors
    ///
    /// [`ShareError`]: off Linux, or if the system refuses a new segment (out of memory or
    /// of descriptors).
    pub fn from_slice(values: &[E]) -> Result<SharedSlice<E>, ShareError> {
        Ok(SharedSlice {
            part: Part::create(values.len(), values, false)?,
        })
    }

    /// The part `range` of this array, sharing its memory (as [`bytes::Bytes::slice`]
    /// does).
    ///
    /// # Panics
    ///
    /// If `range` is out of bounds.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> SharedSlice<E> {
        SharedSlice {
            part: self.part.part(range, "SharedSlice"),
        }
    }
}

impl<E: Element> std::ops::Deref for SharedSlice<E> {
    type Target = [E];

    fn deref(&self) -> &[E] {
        self.part.elements()
    }
}

impl<E: Element> AsRef<[E]> for SharedSlice<E> {
    fn as_ref(&self) -> &[E] {
        self
    }
}

impl<E: Element> PartialEq for SharedSlice<E> {
    /// Equal elements (wherever they live).
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// An array in shared memory that many jobs write, each its own part, and the caller
/// reads when they are done: an output too large to send back, or written in place.
///
/// Every process that holds it sees the same elements. Reads and writes go element by
/// element as relaxed atomics ([`get`](Self::get), [`set`](Self::set),
/// [`write`](Self::write), [`read`](Self::read), [`to_vec`](Self::to_vec)), so there is no
/// `&[E]` into it and no data race whoever writes, only the question of which write lands
/// last: give each job its own part ([`slice`](Self::slice)), and read once the jobs have
/// ended. A job's writes are visible to the caller once the caller has its result (the
/// answer travels after them).
///
/// # Examples
///
/// ```
/// use procpool::{ExecutorExt, ProcessPoolExecutor, SharedBuffer};
///
/// fn fill((out, value): (SharedBuffer<u32>, u32)) {
///     for i in 0..out.len() {
///         out.set(i, value);
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = ProcessPoolExecutor::new(2)?;
/// let out = SharedBuffer::<u32>::zeroed(6)?;
/// let a = pool.submit(fill, (out.slice(..3), 1));
/// let b = pool.submit(fill, (out.slice(3..), 2));
/// a.await?;
/// b.await?;
/// assert_eq!(out.to_vec(), [1, 1, 1, 2, 2, 2]);
/// # Ok(())
/// # }
/// ```
pub struct SharedBuffer<E: Element> {
    part: Part<E>,
}

impl<E: Element> SharedBuffer<E> {
    /// A new shared array of `len` zeros.
    ///
    /// # Errors
    ///
    /// [`ShareError`]: off Linux, or if the system refuses a new segment (out of memory or
    /// of descriptors).
    pub fn zeroed(len: usize) -> Result<SharedBuffer<E>, ShareError> {
        Ok(SharedBuffer {
            part: Part::create(len, &[], true)?,
        })
    }

    /// A new shared array holding a copy of `values`.
    ///
    /// # Errors
    ///
    /// As [`zeroed`](Self::zeroed).
    pub fn from_slice(values: &[E]) -> Result<SharedBuffer<E>, ShareError> {
        Ok(SharedBuffer {
            part: Part::create(values.len(), values, true)?,
        })
    }

    /// How many elements it has.
    pub fn len(&self) -> usize {
        self.part.len
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.part.len == 0
    }

    /// Element `index`, or `None` past the end.
    pub fn get(&self, index: usize) -> Option<E> {
        self.part.atoms().get(index).map(E::load)
    }

    /// Sets element `index` to `value`.
    ///
    /// # Panics
    ///
    /// If `index` is out of bounds.
    pub fn set(&self, index: usize, value: E) {
        let len = self.len();
        let atom = self.part.atoms().get(index);
        let atom = atom.unwrap_or_else(|| {
            panic!("SharedBuffer::set: index {index} out of bounds for length {len}")
        });
        E::store(atom, value);
    }

    /// Writes `values` from element `at` on.
    ///
    /// # Panics
    ///
    /// If they do not fit (`at + values.len() > self.len()`).
    pub fn write(&self, at: usize, values: &[E]) {
        let atoms = self.span(at, values.len(), "write");
        for (atom, &value) in atoms.iter().zip(values) {
            E::store(atom, value);
        }
    }

    /// Reads elements from `at` on into `out`, as many as it holds.
    ///
    /// # Panics
    ///
    /// If there are not that many (`at + out.len() > self.len()`).
    pub fn read(&self, at: usize, out: &mut [E]) {
        let atoms = self.span(at, out.len(), "read");
        for (slot, atom) in out.iter_mut().zip(atoms) {
            *slot = E::load(atom);
        }
    }

    /// A copy of every element.
    pub fn to_vec(&self) -> Vec<E> {
        self.part.atoms().iter().map(E::load).collect()
    }

    /// The part `range` of this array, sharing its memory: hand each job its own.
    ///
    /// # Panics
    ///
    /// If `range` is out of bounds.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> SharedBuffer<E> {
        SharedBuffer {
            part: self.part.part(range, "SharedBuffer"),
        }
    }

    fn span(&self, at: usize, count: usize, what: &str) -> &[E::Atom] {
        let len = self.len();
        at.checked_add(count)
            .and_then(|end| self.part.atoms().get(at..end))
            .unwrap_or_else(|| {
                panic!(
                    "SharedBuffer::{what}: {count} elements from {at} do not fit in length {len}"
                )
            })
    }
}

/// What both shared arrays implement alike: a clone shares the memory, `Debug` names the
/// segment, and serde carries a handle or the elements (see the module docs).
macro_rules! shared_array {
    ($($name:ident writable: $writable:literal;)*) => {$(
        impl<E: Element> Clone for $name<E> {
            fn clone(&self) -> Self {
                self.slice(..)
            }
        }

        impl<E: Element> fmt::Debug for $name<E> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("len", &self.part.len)
                    .field("segment", &self.part.segment.name)
                    .finish()
            }
        }

        impl<E: Element> Serialize for $name<E> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                self.part.serialize($writable, serializer)
            }
        }

        impl<'de, E: Element> Deserialize<'de> for $name<E> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                Part::deserialize(deserializer, $writable, stringify!($name))
                    .map(|part| $name { part })
            }
        }
    )*};
}

shared_array! {
    SharedSlice writable: false;
    SharedBuffer writable: true;
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn outside_a_pool_an_array_travels_as_its_elements_and_arrives_as_a_new_one() {
        let slice = SharedSlice::from_slice(&[1.5_f64, -2.0, 3.25]).unwrap();
        let bytes = postcard::to_allocvec(&slice).unwrap();
        assert!(bytes.len() > 24, "the elements are in it");
        let back: SharedSlice<f64> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, slice);
        assert_ne!(back.part.segment.name, slice.part.segment.name);
        let buffer = SharedBuffer::from_slice(&[7_u16, 8]).unwrap();
        let back: SharedBuffer<u16> =
            postcard::from_bytes(&postcard::to_allocvec(&buffer).unwrap()).unwrap();
        assert_eq!(back.to_vec(), [7, 8]);
    }

    #[test]
    fn in_a_pools_job_an_array_travels_as_a_handle_to_the_same_memory() {
        let buffer = SharedBuffer::<u32>::zeroed(1 << 20).unwrap();
        let (bytes, kept) = keeping(|| postcard::to_allocvec(&buffer.slice(10..20)).unwrap());
        assert_eq!(kept.len(), 1);
        assert!(bytes.len() < 100, "{} bytes", bytes.len());
        let part: SharedBuffer<u32> = postcard::from_bytes(&bytes).unwrap();
        part.set(0, 99);
        assert_eq!(buffer.get(10), Some(99));
        assert_eq!(part.len(), 10);
    }

    #[test]
    fn an_array_read_as_another_kind_fails_and_says_why() {
        let slice = SharedSlice::from_slice(&[1_u64, 2]).unwrap();
        for (bytes, _kept) in [
            (postcard::to_allocvec(&slice).unwrap(), Kept::default()),
            keeping(|| postcard::to_allocvec(&slice).unwrap()),
        ] {
            let as_u32 = postcard::from_bytes::<SharedSlice<u32>>(&bytes);
            assert!(as_u32.is_err());
            let why = explain("decode".into());
            assert!(
                why.contains("cannot be read as a SharedSlice<u32>"),
                "{why}"
            );
            assert!(postcard::from_bytes::<SharedBuffer<u64>>(&bytes).is_err());
            let why = explain("decode".into());
            assert!(why.contains("writable: false"), "{why}");
        }
        assert_eq!(explain("plain".into()), "plain", "the reason is taken once");
    }

    #[test]
    fn a_handle_to_a_segment_that_is_gone_fails_and_says_why() {
        let (bytes, kept) = keeping(|| {
            postcard::to_allocvec(&SharedSlice::from_slice(&[1_u8; 10]).unwrap()).unwrap()
        });
        drop(kept); // the last holder
        assert!(postcard::from_bytes::<SharedSlice<u8>>(&bytes).is_err());
        let why = explain("argument".into());
        assert!(why.contains("must still hold it"), "{why}");
    }

    #[test]
    fn parts_and_bounds() {
        let slice = SharedSlice::from_slice(&[0_i32, 1, 2, 3, 4, 5]).unwrap();
        assert_eq!(&slice.slice(2..=3)[..], &[2, 3]);
        assert_eq!(&slice.slice(1..).slice(..2)[..], &[1, 2]);
        assert!(slice.slice(6..).is_empty());
        let buffer = SharedBuffer::<f32>::zeroed(4).unwrap();
        buffer.slice(2..).write(0, &[1.0, 2.0]);
        let mut out = [0.0; 3];
        buffer.read(1, &mut out);
        assert_eq!(out, [0.0, 1.0, 2.0]);
        assert_eq!(buffer.get(4), None);
        let empty = SharedBuffer::<u8>::zeroed(0).unwrap();
        assert!(empty.is_empty() && empty.to_vec().is_empty());
        let panics = |f: fn()| std::panic::catch_unwind(f).is_err();
        assert!(panics(|| drop(
            SharedSlice::from_slice(&[1_u8]).unwrap().slice(0..2)
        )));
        assert!(panics(|| SharedBuffer::<u8>::zeroed(2)
            .unwrap()
            .write(1, &[1, 2])));
        assert!(panics(|| SharedBuffer::<u8>::zeroed(2).unwrap().set(2, 0)));
    }
}
