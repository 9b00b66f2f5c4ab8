#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![doc = include_str!("../README.md")]

pub mod audit;
pub mod bundle;
#[cfg(feature = "std")]
pub mod cli;
#[cfg(feature = "std")]
pub mod compiler;
pub mod decision;
pub mod evaluate;
#[cfg(feature = "std")]
#[doc(hidden)]
pub mod fuzz_targets;
pub mod rate;
pub mod request;
pub mod tables;

pub use audit::{DenialAudit, DenialCount, DenialSample, RequestSummary};
#[cfg(feature = "std")]
pub use compiler::{
    CompileErrors, Compiled, CompiledPolicy, Diagnostic, RuleInfo, Severity, compile,
};
pub use decision::{Decision, Reason, Verdict};
pub use evaluate::evaluate;
pub use rate::RateState;
pub use request::{
    BleOperation, BleRequest, BridgeId, CompartmentId, FunctionKind, ModbusRequest, Request,
    RuleId, Source, ble_uuid16, function_kind, function_name,
};
pub use tables::{DecodedTables, PolicyTables, TableError};
