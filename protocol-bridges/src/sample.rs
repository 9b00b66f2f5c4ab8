//! A sample: one reading of one point, as a bridge hands it to the appliance.

use serde::{Deserialize, Serialize};
pub use warden_wire::value::Value;

/// One reading of one point.
///
/// It crosses the compartments' postcard channels as it is (serde derives), and
/// becomes a telemetry `Reading` (named `bridge/point`) with the same [`Value`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Bridge the point belongs to.
    pub bridge: String,
    /// Point name.
    pub point: String,
    /// What was read: a number in engineering units, the text of a `string` point, or
    /// the state of a coil, discrete input or `bool` point.
    pub value: Value,
    /// Engineering unit.
    pub unit: String,
    /// When the value was read, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_crosses_postcard_with_its_value_kind() {
        for value in [
            Value::Text("AB-17".into()),
            Value::Number(21.5),
            Value::Bool(true),
        ] {
            let sample = Sample {
                bridge: "line1".into(),
                point: "serial".into(),
                value,
                unit: String::new(),
                timestamp_ms: 1,
            };
            let bytes = postcard::to_allocvec(&sample).expect("postcard");
            assert_eq!(
                postcard::from_bytes::<Sample>(&bytes).expect("back"),
                sample
            );
        }
    }
}
