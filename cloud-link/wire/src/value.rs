//! The one value type, from the bridge that reads it to the store that keeps it.
//!
//! A Modbus register, a BLE characteristic and a fleet row all hold the same thing: a
//! number in engineering units, a text (a `string` point), or a flag (a coil, a
//! discrete input, a `bool` point). Every stage passes a [`Value`]; none re-encodes it
//! as a NaN beside an optional text or as a placeholder `0.0`.
//!
//! On its own a value serialises in its natural shape: in JSON (and other
//! human-readable formats) as a JSON number, string or boolean (`21.5`, `"AB-17"`,
//! `true`; a number that is not finite as `null`, read back as NaN); in postcard (and
//! other compact formats) as an enum, variant index `0` number, `1` text, `2` flag.
//! The telemetry reading has its own version-1 shape (`warden_link::Reading`).

use std::fmt;

use serde::de::{self, Deserializer, EnumAccess, VariantAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// A point's value: a number in engineering units, a text, or a flag.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Engineering value (may be NaN or infinite: a float register can hold either).
    Number(f64),
    /// Text of a `string` point.
    Text(String),
    /// On or off (coils, discrete inputs, `bool` points, BLE flags).
    Bool(bool),
}

impl Value {
    /// The value as a number: a number itself, a flag as `0` or `1`, `None` for a text.
    /// (Telemetry version 1 and the status page show flags this way.)
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Self::Number(number) => Some(*number),
            Self::Bool(flag) => Some(f64::from(u8::from(*flag))),
            Self::Text(_) => None,
        }
    }

    /// The text of a text value.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(text) => Some(text),
            Self::Number(_) | Self::Bool(_) => None,
        }
    }

    /// The flag of a flag value.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(flag) => Some(*flag),
            Self::Number(_) | Self::Text(_) => None,
        }
    }

    /// True for a number that is NaN or infinite (JSON cannot carry it).
    pub fn is_non_finite_number(&self) -> bool {
        matches!(self, Self::Number(number) if !number.is_finite())
    }

    /// What kind of value it is, for messages: `"number"`, `"text"` or `"bool"`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Number(_) => "number",
            Self::Text(_) => "text",
            Self::Bool(_) => "bool",
        }
    }
}

impl From<f64> for Value {
    fn from(number: f64) -> Self {
        Self::Number(number)
    }
}

impl From<bool> for Value {
    fn from(flag: bool) -> Self {
        Self::Bool(flag)
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl fmt::Display for Value {
    /// A number as Rust prints an `f64`, a text as it is, a flag as `true`/`false`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(number) => write!(f, "{number}"),
            Self::Text(text) => f.write_str(text),
            Self::Bool(flag) => write!(f, "{flag}"),
        }
    }
}

/// Names of the variants in compact formats, in wire order (the order is the format).
const VARIANTS: &[&str] = &["Number", "Text", "Bool"];

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            return match self {
                Self::Number(number) if number.is_finite() => serializer.serialize_f64(*number),
                Self::Number(_) => serializer.serialize_none(),
                Self::Text(text) => serializer.serialize_str(text),
                Self::Bool(flag) => serializer.serialize_bool(*flag),
            };
        }
        match self {
            Self::Number(number) => {
                serializer.serialize_newtype_variant("Value", 0, "Number", number)
            }
            Self::Text(text) => serializer.serialize_newtype_variant("Value", 1, "Text", text),
            Self::Bool(flag) => serializer.serialize_newtype_variant("Value", 2, "Bool", flag),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(NaturalVisitor)
        } else {
            deserializer.deserialize_enum("Value", VARIANTS, TaggedVisitor)
        }
    }
}

/// Reads a JSON number, string, boolean or `null` (NaN).
struct NaturalVisitor;

impl<'de> Visitor<'de> for NaturalVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, a string, a boolean or null")
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<Value, E> {
        Ok(Value::Number(number))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<Value, E> {
        Ok(Value::Number(number as f64))
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<Value, E> {
        Ok(Value::Number(number as f64))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Value, E> {
        Ok(Value::Text(text.to_owned()))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Value, E> {
        Ok(Value::Text(text))
    }

    fn visit_bool<E: de::Error>(self, flag: bool) -> Result<Value, E> {
        Ok(Value::Bool(flag))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Number(f64::NAN))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Number(f64::NAN))
    }
}

/// Reads the compact enum shape.
struct TaggedVisitor;

impl<'de> Visitor<'de> for TaggedVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value: number, text or bool")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (index, variant) = data.variant::<u32>()?;
        match index {
            0 => variant.newtype_variant().map(Value::Number),
            1 => variant.newtype_variant().map(Value::Text),
            2 => variant.newtype_variant().map(Value::Bool),
            other => Err(de::Error::invalid_value(
                de::Unexpected::Unsigned(u64::from(other)),
                &"variant 0 (number), 1 (text) or 2 (bool)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_views_of_each_kind() {
        assert_eq!(Value::Number(21.5).as_number(), Some(21.5));
        assert_eq!(Value::Bool(true).as_number(), Some(1.0));
        assert_eq!(Value::Bool(false).as_number(), Some(0.0));
        assert_eq!(Value::from("AB-17").as_number(), None);
        assert_eq!(Value::from("AB-17").as_text(), Some("AB-17"));
        assert_eq!(Value::Bool(true).as_bool(), Some(true));
        assert_eq!(Value::Number(1.0).as_bool(), None);
        assert!(Value::Number(f64::NAN).is_non_finite_number());
        assert!(!Value::Bool(true).is_non_finite_number());
        assert_eq!(Value::Bool(false).to_string(), "false");
        assert_eq!(Value::Number(-3.5).to_string(), "-3.5");
    }

    #[test]
    fn json_shape_is_the_natural_one() {
        for (value, json) in [
            (Value::Number(21.5), "21.5"),
            (Value::Text("AB-17".into()), r#""AB-17""#),
            (Value::Bool(true), "true"),
        ] {
            assert_eq!(serde_json::to_string(&value).expect("json"), json);
            assert_eq!(serde_json::from_str::<Value>(json).expect("value"), value);
        }
        assert_eq!(
            serde_json::from_str::<Value>("7").expect("int"),
            Value::Number(7.0)
        );
        assert_eq!(
            serde_json::to_string(&Value::Number(f64::NAN)).expect("json"),
            "null"
        );
        let back: Value = serde_json::from_str("null").expect("null");
        assert!(back.is_non_finite_number());
    }

    #[test]
    fn postcard_shape_is_a_tagged_enum() {
        for value in [
            Value::Number(21.5),
            Value::Number(f64::INFINITY),
            Value::Text("AB-17".into()),
            Value::Bool(true),
        ] {
            let bytes = postcard::to_allocvec(&value).expect("postcard");
            assert_eq!(postcard::from_bytes::<Value>(&bytes).expect("back"), value);
        }
        assert_eq!(
            postcard::to_allocvec(&Value::Bool(true)).expect("postcard"),
            [2, 1]
        );
        assert!(postcard::from_bytes::<Value>(&[3, 1]).is_err());
    }
}
