//! The appliance's one clock: wall time in ms since the epoch, read at the crate's edge.
//!
//! Everything in the crate that needs "now" for a record, an age or a gate calls
//! [`now_ms`]; the logic it feeds takes the time as an argument (so tests pass it in).

/// Now, in ms since the epoch (0 before 1970, which a unit with a dead RTC can see).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}
