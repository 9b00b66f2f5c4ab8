//! The one value type, from the bridge that reads it to the store that keeps it.

/// A point's value: a number in engineering units, a text, or a flag.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Engineering value.
    Number(f64),
    /// Text of a `string` point.
    Text(String),
    /// On or off (coils, discrete inputs, `bool` points, BLE flags).
    Bool(bool),
}
