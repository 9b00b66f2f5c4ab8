//! The attack suite: hostile clients cannot take the unit or the fleet down, nor pass as
//! a device (issue #22).
//!
//! Each case replays one attack against real processes (`warden`, `warden-fleet`, its
//! broker) and asserts the outcome is a refusal or harmless: the unit keeps polling, the
//! link keeps delivering, an operator with the right password still logs in, memory stays
//! under a stated bound, no log storm. Every case records a row (attack, what happened,
//! bound, result); the table of all rows run so far is printed and written to
//! `$CARGO_TARGET_TMPDIR/hostile-table.md`, which `cargo xtask test-real` prints.
//!
//! Run: `cargo build -p warden -p warden-fleet --bins && cargo test -p warden-hil --test
//! hostile -- --ignored --nocapture`.

#[path = "hostile/tally.rs"]
#[allow(
    dead_code,
    reason = "each attack module records its rows; not every build runs them all"
)]
mod tally;

#[path = "hostile/fleet_http.rs"]
mod fleet_http;

#[path = "hostile/broker.rs"]
mod broker;

#[path = "hostile/unit_listeners.rs"]
mod unit_listeners;

#[path = "hostile/unit_sockets.rs"]
mod unit_sockets;
