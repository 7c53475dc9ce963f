//! Why a value failed to encode: postcard keeps no message of a `Serialize` impl's own
//! (`S::Error::custom(msg)` becomes the bare "Serde Serialization Error"), so after such a
//! failure the value is walked once more by [`Probe`], a serializer that writes nothing
//! and keeps the message. Only the failure path pays for it.

use serde::Serialize;
use serde::ser::{self, Serializer};
use std::fmt;

/// The message `value`'s `Serialize` impl (or one inside it) failed with, if walking it
/// again fails the same way; `None` if it succeeds this time.
pub(crate) fn serialize_message<T: Serialize + ?Sized>(value: &T) -> Option<String> {
    value.serialize(Probe).err().map(|Message(message)| message)
}

/// A serializer that writes nothing and fails only where the value's own code does. It
/// says it is not human-readable, as postcard does, so that a value takes the same path.
struct Probe;

/// The message a `Serialize` impl failed with.
#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

impl ser::Error for Message {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Message(message.to_string())
    }
}

type Walked = Result<(), Message>;

/// `Serializer` methods that need nothing but their answer: a value with nothing inside
/// it (`()`), or the start of a compound value ([`Probe`] again, to walk what is in it).
macro_rules! answers {
    ($answer:expr => $ok:ty { $($method:ident($($ty:ty),*);)* }) => {
        $(fn $method(self, $(_: $ty),*) -> Result<$ok, Message> { Ok($answer) })*
    };
}

impl Serializer for Probe {
    type Ok = ();
    type Error = Message;
    type SerializeSeq = Probe;
    type SerializeTuple = Probe;
    type SerializeTupleStruct = Probe;
    type SerializeTupleVariant = Probe;
    type SerializeMap = Probe;
    type SerializeStruct = Probe;
    type SerializeStructVariant = Probe;

    answers! { () => () {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_i128(i128);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_u128(u128);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }}

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Walked {
        value.serialize(Probe)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Walked {
        value.serialize(Probe)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Walked {
        value.serialize(Probe)
    }

    answers! { Probe => Probe {
        serialize_seq(Option<usize>);
        serialize_tuple(usize);
        serialize_tuple_struct(&'static str, usize);
        serialize_tuple_variant(&'static str, u32, &'static str, usize);
        serialize_map(Option<usize>);
        serialize_struct(&'static str, usize);
        serialize_struct_variant(&'static str, u32, &'static str, usize);
    }}

    fn collect_str<T: fmt::Display + ?Sized>(self, _: &T) -> Walked {
        Ok(())
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The compound serializers: each element, key or field is walked in turn.
macro_rules! compound {
    ($($trait:ident { $($method:ident($($name:ty),*);)* })*) => {
        $(impl ser::$trait for Probe {
            type Ok = ();
            type Error = Message;
            $(fn $method<T: Serialize + ?Sized>(&mut self, $(_: $name,)* value: &T) -> Walked {
                value.serialize(Probe)
            })*
            fn end(self) -> Walked {
                Ok(())
            }
        })*
    };
}

compound! {
    SerializeSeq { serialize_element(); }
    SerializeTuple { serialize_element(); }
    SerializeTupleStruct { serialize_field(); }
    SerializeTupleVariant { serialize_field(); }
    SerializeMap { serialize_key(); serialize_value(); }
    SerializeStruct { serialize_field(&'static str); }
    SerializeStructVariant { serialize_field(&'static str); }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Fails with `message` when serialized.
    struct Refuses(&'static str);

    impl Serialize for Refuses {
        fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(ser::Error::custom(self.0))
        }
    }

    /// Serializes as a string where the format is human-readable, and refuses elsewhere.
    struct ReadableOnly;

    impl Serialize for ReadableOnly {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if s.is_human_readable() {
                s.serialize_str("fine")
            } else {
                Err(ser::Error::custom("compact formats are not supported"))
            }
        }
    }

    #[derive(Serialize)]
    enum Shape {
        Pair(u8, Refuses),
        Named { first: u128, then: Refuses },
    }

    #[test]
    fn the_message_is_found_wherever_the_failing_value_sits() {
        assert_eq!(serialize_message(&Refuses("top")).as_deref(), Some("top"));
        let nested = (1_u8, vec![Some(Refuses("in a seq"))]);
        assert_eq!(serialize_message(&nested).as_deref(), Some("in a seq"));
        let mut map = BTreeMap::new();
        map.insert("key", Refuses("a value"));
        assert_eq!(serialize_message(&map).as_deref(), Some("a value"));
        let pair = Shape::Pair(3, Refuses("a tuple variant"));
        assert_eq!(serialize_message(&pair).as_deref(), Some("a tuple variant"));
        let named = Shape::Named {
            first: u128::MAX,
            then: Refuses("a struct variant"),
        };
        assert_eq!(
            serialize_message(&named).as_deref(),
            Some("a struct variant")
        );
        assert_eq!(
            serialize_message(&ReadableOnly).as_deref(),
            Some("compact formats are not supported"),
            "walked as postcard walks it"
        );
    }

    #[test]
    fn a_value_that_serializes_has_no_message() {
        let value = (1_i128, "text", vec![1.5_f64], BTreeMap::from([(1_u8, 'c')]));
        assert_eq!(serialize_message(&value), None);
    }

    #[test]
    fn postcard_alone_loses_the_message() {
        // What this module is for: if postcard ever keeps messages, it can go.
        let error = postcard::to_allocvec(&Refuses("lost")).unwrap_err();
        assert_eq!(error, postcard::Error::SerdeSerCustom);
        assert!(!error.to_string().contains("lost"));
    }
}
