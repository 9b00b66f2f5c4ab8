//! Rules after interpretation, before table layout: what the checkers hand to it.

use std::ops::Range;

use crate::tables::RateLimit;

/// A Modbus rule after interpretation.
pub(super) struct ModbusSpec {
    pub(super) rule: u16,
    pub(super) bridge: u16,
    pub(super) units: Vec<u8>,
    pub(super) functions: Vec<u8>,
    /// Merged, sorted; empty when every function is addressless.
    pub(super) ranges: Vec<(u16, u16)>,
    pub(super) sources: u8,
}

pub(super) struct LimitSpec {
    pub(super) rule: u16,
    pub(super) bridge: u16,
    pub(super) units: Vec<u8>,
    pub(super) units_span: Range<usize>,
    pub(super) writes: RateLimit,
    pub(super) per_source: [RateLimit; 3],
}

pub(super) struct ConnectSpec {
    pub(super) rule: u16,
    pub(super) compartment: u16,
    pub(super) host: String,
    pub(super) subdomains: bool,
    pub(super) ports: Vec<(u16, u16)>,
}

pub(super) struct ListenSpec {
    pub(super) rule: u16,
    pub(super) compartment: u16,
    pub(super) ports: Vec<(u16, u16)>,
}
