//! Plain values (integers, floats, `bool`): a chunk of `map` ships them packed, each in a
//! fixed number of little-endian bytes, without serde.
//!
//! A chunk carries one value per item in each direction. With items as small as an
//! integer, serde's varints and the per-item length around them cost more than the job
//! itself: on W3 (`x -> x*2` over a million `u64`s in chunks of 1,000) they were about half
//! of the parent's and the workers' instructions (issue 4). A packed value is written with
//! one store and read with one load.
//!
//! Both ends of a chunk are monomorphized for the same `A` and `R` (a worker is this same
//! executable), so they always agree on which layout an item has. Which types are plain is
//! decided by `TypeId`, known at compile time: the choice costs nothing at run time.

use std::any::{Any, TypeId};

/// The width in bytes of a plain `T`'s packed encoding; `None` if `T` is not plain.
#[inline(always)]
pub(crate) fn width<T: 'static>() -> Option<usize> {
    let t = TypeId::of::<T>();
    let is = |other: TypeId| t == other;
    if is(TypeId::of::<u64>())
        || is(TypeId::of::<i64>())
        || is(TypeId::of::<f64>())
        || is(TypeId::of::<usize>())
        || is(TypeId::of::<isize>())
    {
        Some(8)
    } else if is(TypeId::of::<u32>()) || is(TypeId::of::<i32>()) || is(TypeId::of::<f32>()) {
        Some(4)
    } else if is(TypeId::of::<u16>()) || is(TypeId::of::<i16>()) {
        Some(2)
    } else if is(TypeId::of::<u8>()) || is(TypeId::of::<i8>()) || is(TypeId::of::<bool>()) {
        Some(1)
    } else {
        None
    }
}

/// Appends `value` packed if `T` is plain; returns whether it did.
#[inline(always)]
pub(crate) fn put<T: 'static>(value: &T, out: &mut Vec<u8>) -> bool {
    let any = value as &dyn Any;
    if let Some(v) = any.downcast_ref::<u64>() {
        out.extend_from_slice(&v.to_le_bytes());
    } else if let Some(v) = any.downcast_ref::<i64>() {
        out.extend_from_slice(&v.to_le_bytes());
    } else if let Some(v) = any.downcast_ref::<f64>() {
        out.extend_from_slice(&v.to_le_bytes());
    } else if let Some(&v) = any.downcast_ref::<usize>() {
        out.extend_from_slice(&(v as u64).to_le_bytes());
    } else if let Some(&v) = any.downcast_ref::<isize>() {
        out.extend_from_slice(&(v as i64).to_le_bytes());
    } else if let Some(v) = any.downcast_ref::<u32>() {
        out.extend_from_slice(&v.to_le_bytes());
    } else if let Some(v) = any.downcast_ref::<i32>() {
        out.extend_from_slice(&v.to_le_bytes());
    } else if let Some(v) = any.downcast_ref::<f32>() {
        out.extend_from_slice(&v.to_le_bytes());
    } else if let Some(v) = any.downcast_ref::<u16>() {
        out.extend_from_slice(&v.to_le_bytes());
    } else if let Some(v) = any.downcast_ref::<i16>() {
        out.extend_from_slice(&v.to_le_bytes());
    } else if let Some(&v) = any.downcast_ref::<u8>() {
        out.push(v);
    } else if let Some(&v) = any.downcast_ref::<i8>() {
        out.push(v as u8);
    } else if let Some(&v) = any.downcast_ref::<bool>() {
        out.push(u8::from(v));
    } else {
        return false;
    }
    true
}

/// Reads a packed `T` from the first [`width`] bytes of `bytes`. `None` if `T` is not
/// plain, if `bytes` is shorter than its width, or if they are not a value of `T` (a
/// `bool` other than 0 or 1, a `usize` beyond this machine's range).
#[inline(always)]
pub(crate) fn get<T: 'static>(bytes: &[u8]) -> Option<T> {
    let mut slot: Option<T> = None;
    let any = &mut slot as &mut dyn Any;
    if let Some(slot) = any.downcast_mut::<Option<u64>>() {
        *slot = Some(u64::from_le_bytes(*bytes.first_chunk()?));
    } else if let Some(slot) = any.downcast_mut::<Option<i64>>() {
        *slot = Some(i64::from_le_bytes(*bytes.first_chunk()?));
    } else if let Some(slot) = any.downcast_mut::<Option<f64>>() {
        *slot = Some(f64::from_le_bytes(*bytes.first_chunk()?));
    } else if let Some(slot) = any.downcast_mut::<Option<usize>>() {
        *slot = usize::try_from(u64::from_le_bytes(*bytes.first_chunk()?)).ok();
    } else if let Some(slot) = any.downcast_mut::<Option<isize>>() {
        *slot = isize::try_from(i64::from_le_bytes(*bytes.first_chunk()?)).ok();
    } else if let Some(slot) = any.downcast_mut::<Option<u32>>() {
        *slot = Some(u32::from_le_bytes(*bytes.first_chunk()?));
    } else if let Some(slot) = any.downcast_mut::<Option<i32>>() {
        *slot = Some(i32::from_le_bytes(*bytes.first_chunk()?));
    } else if let Some(slot) = any.downcast_mut::<Option<f32>>() {
        *slot = Some(f32::from_le_bytes(*bytes.first_chunk()?));
    } else if let Some(slot) = any.downcast_mut::<Option<u16>>() {
        *slot = Some(u16::from_le_bytes(*bytes.first_chunk()?));
    } else if let Some(slot) = any.downcast_mut::<Option<i16>>() {
        *slot = Some(i16::from_le_bytes(*bytes.first_chunk()?));
    } else if let Some(slot) = any.downcast_mut::<Option<u8>>() {
        *slot = Some(*bytes.first()?);
    } else if let Some(slot) = any.downcast_mut::<Option<i8>>() {
        *slot = Some(*bytes.first()? as i8);
    } else if let Some(slot) = any.downcast_mut::<Option<bool>>() {
        *slot = match bytes.first()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        };
    }
    slot
}

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
