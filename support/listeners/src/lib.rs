#![doc = include_str!("../README.md")]

mod admission;
mod backoff;
mod descriptors;
mod guarded_stream;

pub use admission::{Admission, AdmissionGate, Limits, Refused};
pub use backoff::AcceptBackoff;
pub use descriptors::DescriptorBudget;
pub use guarded_stream::{Deadlines, GuardedStream};
