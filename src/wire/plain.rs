//! Plain values (integers, floats, `bool`): a chunk of `map` ships them packed, each in a
//! fixed number of little-endian bytes, without serde.
//!
//! A chunk carries one value per item in each direction. With items as small as an
//! integer, serde's varints and the per-item length around them cost more than the job
//! itself (profiles of `x -> x * 2` over `u64`s showed them as about half of the parent's
//! and the workers' instructions). A packed value is written with one store and read with
//! one load.
//!
//! A `Vec` of a plain type (other than `Vec<u8>`, which travels as raw bytes) is packed
//! the same way, element after element, as a single job's argument or result (the whole
//! payload) and as an item of a chunk (after its length in bytes): serde would write and
//! read it one element at a time.
//!
//! Both ends of a chunk are monomorphized for the same `A` and `R` (a worker is this same
//! executable), so they always agree on which layout an item has. Which types are plain is
//! decided by `TypeId`, known at compile time: the choice costs nothing at run time.

use std::any::{Any, TypeId};

/// A type that packs into a fixed number of little-endian bytes (also what a shared
/// array's elements are written as when they travel as values: [`crate::shared`]).
pub trait Plain: Sized + 'static {
    const WIDTH: usize;
    fn put(&self, out: &mut Vec<u8>);
    /// Appends every value of `values`, packed: the buffer grows once, and each value is
    /// stored into its slot with no capacity check, which lets the loop vectorize.
    fn put_all(values: &[Self], out: &mut Vec<u8>);
    /// `None` if `bytes` is shorter than [`WIDTH`](Plain::WIDTH) or is no value of the type.
    fn get(bytes: &[u8]) -> Option<Self>;
    /// Every value packed in `bytes`; `None` unless they are a whole number of values of
    /// the type.
    fn get_all(bytes: &[u8]) -> Option<Vec<Self>> {
        if !bytes.len().is_multiple_of(Self::WIDTH) {
            return None;
        }
        let mut values = Vec::with_capacity(bytes.len() / Self::WIDTH);
        let n = Self::get_into(bytes, &mut values);
        (n == bytes.len() / Self::WIDTH).then_some(values)
    }
    /// Appends the values packed in `bytes` (whole ones) to `out`, stopping before the
    /// first that is no value of the type; returns how many it appended.
    fn get_into(bytes: &[u8], out: &mut Vec<Self>) -> usize {
        let before = out.len();
        out.extend(bytes.chunks_exact(Self::WIDTH).map_while(Self::get));
        out.len() - before
    }
}

/// Types packed as their own `to_le_bytes`.
macro_rules! le_bytes {
    ($($t:ty),*) => {$(
        impl Plain for $t {
            const WIDTH: usize = std::mem::size_of::<$t>();
            #[inline(always)]
            fn put(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn put_all(values: &[Self], out: &mut Vec<u8>) {
                let start = out.len();
                out.resize(start + values.len() * Self::WIDTH, 0);
                for (slot, value) in out[start..].chunks_exact_mut(Self::WIDTH).zip(values) {
                    slot.copy_from_slice(&value.to_le_bytes());
                }
            }
            #[inline(always)]
            fn get(bytes: &[u8]) -> Option<Self> {
                Some(<$t>::from_le_bytes(*bytes.first_chunk()?))
            }
            fn get_into(bytes: &[u8], out: &mut Vec<Self>) -> usize {
                // Every bit pattern is a value: no check per value, so the loop vectorizes.
                let values = bytes.chunks_exact(Self::WIDTH);
                let n = values.len();
                out.extend(values.map(|b| <$t>::from_le_bytes(b.try_into().unwrap_or_default())));
                n
            }
        }
    )*};
}

le_bytes!(u64, i64, f64, u32, i32, f32, u16, i16, u8, i8);

/// `usize` and `isize` travel as 64 bits whatever this machine's width.
macro_rules! as_64_bits {
    ($($t:ty => $wide:ty),*) => {$(
        impl Plain for $t {
            const WIDTH: usize = 8;
            #[inline(always)]
            fn put(&self, out: &mut Vec<u8>) {
                (*self as $wide).put(out);
            }
            fn put_all(values: &[Self], out: &mut Vec<u8>) {
                let start = out.len();
                out.resize(start + values.len() * 8, 0);
                for (slot, value) in out[start..].chunks_exact_mut(8).zip(values) {
                    slot.copy_from_slice(&(*value as $wide).to_le_bytes());
                }
            }
            #[inline(always)]
            fn get(bytes: &[u8]) -> Option<Self> {
                <$t>::try_from(<$wide>::get(bytes)?).ok()
            }
        }
    )*};
}

as_64_bits!(usize => u64, isize => i64);

impl Plain for bool {
    const WIDTH: usize = 1;
    #[inline(always)]
    fn put(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    fn put_all(values: &[Self], out: &mut Vec<u8>) {
        out.extend(values.iter().map(|&v| u8::from(v)));
    }
    #[inline(always)]
    fn get(bytes: &[u8]) -> Option<Self> {
        match bytes.first()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
}

/// The entry points, for any `T`: each tries the plain types in turn by `TypeId`, from one
/// list, so that the three always agree on which types are plain.
macro_rules! dispatch {
    ($($t:ty),*) => {
        /// The width in bytes of a plain `T`'s packed encoding; `None` if `T` is not plain.
        #[inline(always)]
        pub(crate) fn width<T: 'static>() -> Option<usize> {
            $(if TypeId::of::<T>() == TypeId::of::<$t>() {
                return Some(<$t as Plain>::WIDTH);
            })*
            None
        }

        /// Appends `value` packed if `T` is plain; returns whether it did.
        #[inline(always)]
        pub(crate) fn put<T: 'static>(value: &T, out: &mut Vec<u8>) -> bool {
            let any = value as &dyn Any;
            $(if let Some(v) = any.downcast_ref::<$t>() {
                v.put(out);
                return true;
            })*
            false
        }

        /// Appends every value of `values` packed if `T` is plain; returns whether it did.
        /// (A `Vec`, not a slice: only a sized value can be downcast.)
        #[inline(always)]
        #[allow(clippy::ptr_arg)]
        pub(crate) fn put_all<T: 'static>(values: &Vec<T>, out: &mut Vec<u8>) -> bool {
            put_any_vec(values, out)
        }

        /// Appends the elements of `any` packed if it is a `Vec` of a plain type.
        #[inline(always)]
        fn put_any_vec(any: &dyn Any, out: &mut Vec<u8>) -> bool {
            $(if let Some(v) = any.downcast_ref::<Vec<$t>>() {
                <$t as Plain>::put_all(v, out);
                return true;
            })*
            false
        }

        /// Whether `T` is a `Vec` of a plain type, which a single job's argument or result
        /// ships packed (a `Vec<u8>` is not: it travels as raw bytes already).
        #[inline(always)]
        pub(crate) fn is_vec<T: 'static>() -> bool {
            $(if TypeId::of::<T>() == TypeId::of::<Vec<$t>>() && TypeId::of::<$t>() != TypeId::of::<u8>() {
                return true;
            })*
            false
        }

        /// Appends the elements of `value` packed if [`is_vec::<T>()`](is_vec); returns
        /// whether it did.
        #[inline(always)]
        pub(crate) fn put_vec<T: 'static>(value: &T, out: &mut Vec<u8>) -> bool {
            is_vec::<T>() && put_any_vec(value, out)
        }

        /// The length in bytes of `value` packed, if it [`is_vec`].
        #[inline(always)]
        pub(crate) fn packed_len<T: 'static>(value: &T) -> Option<usize> {
            if !is_vec::<T>() {
                return None;
            }
            let any = value as &dyn Any;
            $(if let Some(v) = any.downcast_ref::<Vec<$t>>() {
                return Some(v.len() * <$t as Plain>::WIDTH);
            })*
            None
        }

        /// Reads a `T` that [`is_vec`] from all of `bytes`: `None` if `T` is not such a
        /// `Vec`, `Some(None)` if the bytes are not a whole number of values of its
        /// element type.
        #[inline(always)]
        pub(crate) fn get_vec<T: 'static>(bytes: &[u8]) -> Option<Option<T>> {
            if !is_vec::<T>() {
                return None;
            }
            let mut slot: Option<Option<T>> = None;
            let any = &mut slot as &mut dyn Any;
            $(if let Some(slot) = any.downcast_mut::<Option<Option<Vec<$t>>>>() {
                *slot = Some(<$t as Plain>::get_all(bytes));
            } else)* {}
            slot
        }

        /// Appends the packed values of `bytes` to `out` if `T` is plain, as
        /// [`Plain::get_into`]: how many it appended (0 if `T` is not plain).
        #[inline(always)]
        #[allow(clippy::ptr_arg)] // a `Vec`, to be downcast
        pub(crate) fn get_into<T: 'static>(bytes: &[u8], out: &mut Vec<T>) -> usize {
            let any = out as &mut dyn Any;
            $(if let Some(out) = any.downcast_mut::<Vec<$t>>() {
                return <$t as Plain>::get_into(bytes, out);
            })*
            0
        }

        /// Reads a packed `T` from the first [`width`] bytes of `bytes`. `None` if `T` is
        /// not plain, if `bytes` is shorter than its width, or if they are not a value of
        /// `T` (a `bool` other than 0 or 1, a `usize` beyond this machine's range).
        #[inline(always)]
        pub(crate) fn get<T: 'static>(bytes: &[u8]) -> Option<T> {
            let mut slot: Option<T> = None;
            let any = &mut slot as &mut dyn Any;
            $(if let Some(slot) = any.downcast_mut::<Option<$t>>() {
                *slot = <$t as Plain>::get(bytes);
            } else)* {}
            slot
        }
    };
}

dispatch!(
    u64, i64, f64, usize, isize, u32, i32, f32, u16, i16, u8, i8, bool
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fmt::Debug;

    /// Packs to its width, reads back the same value, and leaves what followed alone.
    fn round_trips<T: PartialEq + Debug + 'static>(value: T) {
        let width = width::<T>().expect("a plain type");
        let mut out = vec![0xAA];
        assert!(put(&value, &mut out));
        assert_eq!(out.len(), 1 + width, "{value:?}");
        out.push(0x55);
        let back = get::<T>(&out[1..]).expect("reads its own encoding");
        // NaN is not equal to itself: compare such floats by their bits (Debug).
        assert!(back == value || format!("{back:?}") == format!("{value:?}"));
        assert_eq!(get::<T>(&out[1..width]), None, "one byte short");
    }

    #[test]
    fn only_plain_types_are_plain() {
        assert_eq!(width::<u64>(), Some(8));
        assert_eq!(width::<f32>(), Some(4));
        assert_eq!(width::<i16>(), Some(2));
        assert_eq!(width::<bool>(), Some(1));
        assert_eq!(width::<String>(), None);
        assert_eq!(width::<u128>(), None);
        assert_eq!(width::<(u8, u8)>(), None);
        assert_eq!(width::<Vec<u8>>(), None);
        assert!(!put(&String::from("x"), &mut Vec::new()));
        assert_eq!(get::<String>(&[1, b'x']), None);
    }

    #[test]
    fn vectors_of_plain_types_pack_and_others_do_not() {
        assert!(is_vec::<Vec<f64>>() && is_vec::<Vec<bool>>() && is_vec::<Vec<usize>>());
        assert!(!is_vec::<Vec<u8>>(), "bytes travel raw already");
        assert!(!is_vec::<Vec<String>>() && !is_vec::<f64>() && !is_vec::<Vec<(u8, u8)>>());
        let mut out = vec![0xAA];
        assert!(put_vec(&vec![1.5_f64, -0.25], &mut out));
        assert_eq!(out.len(), 17);
        assert_eq!(packed_len(&vec![1.5_f64, -0.25]), Some(16));
        assert_eq!(packed_len(&vec![1_u8]), None);
        assert_eq!(get_vec::<Vec<f64>>(&out[1..]), Some(Some(vec![1.5, -0.25])));
        assert_eq!(
            get_vec::<Vec<f64>>(&out[2..]),
            Some(None),
            "not whole values"
        );
        assert_eq!(get_vec::<Vec<f64>>(&[]), Some(Some(vec![])));
        assert_eq!(get_vec::<Vec<bool>>(&[1, 0, 2]), Some(None), "2 is no bool");
        assert_eq!(get_vec::<Vec<bool>>(&[1, 0]), Some(Some(vec![true, false])));
        assert_eq!(get_vec::<Vec<String>>(&[]), None);
        assert!(!put_vec(&vec![String::new()], &mut out));
    }

    proptest! {
        #[test]
        fn packed_vectors_round_trip(v in proptest::collection::vec(any::<i32>(), 0..300),
                                     w in proptest::collection::vec(any::<u64>(), 0..300)) {
            let mut out = Vec::new();
            prop_assert!(put_vec(&v, &mut out));
            prop_assert_eq!(get_vec::<Vec<i32>>(&out), Some(Some(v)));
            out.clear();
            prop_assert!(put_vec(&w, &mut out));
            prop_assert_eq!(get_vec::<Vec<u64>>(&out), Some(Some(w)));
        }
    }

    #[test]
    fn a_bool_is_zero_or_one() {
        assert_eq!(get::<bool>(&[0]), Some(false));
        assert_eq!(get::<bool>(&[1]), Some(true));
        assert_eq!(get::<bool>(&[2]), None);
        assert_eq!(get::<bool>(&[]), None);
    }

    #[test]
    fn edges_round_trip() {
        round_trips(u64::MAX);
        round_trips(i64::MIN);
        round_trips(usize::MAX);
        round_trips(isize::MIN);
        round_trips(f64::NAN);
        round_trips(-0.0f32);
        round_trips(u16::MAX);
        round_trips(i8::MIN);
        round_trips(true);
    }

    proptest! {
        #[test]
        fn values_round_trip(a: u64, b: i64, c: u32, d: i32, e: u16, f: i16, g: u8, h: i8,
                             i: f64, j: f32, k: bool, l: usize, m: isize) {
            round_trips(a);
            round_trips(b);
            round_trips(c);
            round_trips(d);
            round_trips(e);
            round_trips(f);
            round_trips(g);
            round_trips(h);
            round_trips(i);
            round_trips(j);
            round_trips(k);
            round_trips(l);
            round_trips(m);
        }

        #[test]
        fn a_run_of_values_packs_as_each_value_does(
            a in proptest::collection::vec(any::<u64>(), 0..40),
            b in proptest::collection::vec(any::<isize>(), 0..40),
            c in proptest::collection::vec(any::<i16>(), 0..40),
            d in proptest::collection::vec(any::<f32>(), 0..40),
            e in proptest::collection::vec(any::<bool>(), 0..40),
        ) {
            fn packs_alike<T: 'static>(values: &Vec<T>) -> Result<(), TestCaseError> {
                let (mut all, mut each) = (vec![7_u8], vec![7_u8]);
                prop_assert!(put_all(values, &mut all));
                for value in values {
                    prop_assert!(put(value, &mut each));
                }
                prop_assert_eq!(all, each);
                Ok(())
            }
            packs_alike(&a)?;
            packs_alike(&b)?;
            packs_alike(&c)?;
            packs_alike(&d)?;
            packs_alike(&e)?;
            prop_assert!(!put_all(&vec![String::new()], &mut Vec::new()));
        }

        #[test]
        fn any_bytes_read_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..10)) {
            // Enough bytes give a value (a bool only from 0 or 1), too few give None.
            prop_assert_eq!(get::<u64>(&bytes).is_some(), bytes.len() >= 8);
            prop_assert_eq!(get::<i32>(&bytes).is_some(), bytes.len() >= 4);
            prop_assert_eq!(get::<u16>(&bytes).is_some(), bytes.len() >= 2);
            prop_assert_eq!(get::<f64>(&bytes).is_some(), bytes.len() >= 8);
            prop_assert_eq!(get::<bool>(&bytes).is_some(), matches!(bytes.first(), Some(0 | 1)));
            prop_assert_eq!(get::<usize>(&bytes).is_some(), bytes.len() >= 8);
        }
    }
}
