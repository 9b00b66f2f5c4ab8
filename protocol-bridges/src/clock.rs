//! The bridges' one wall clock: when a reading was taken, when a rate window started.
//!
//! Everything below the crate's edge takes time as a value; only this module reads the
//! system clock, so a test can see every place that does.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
