#![doc = include_str!("../README.md")]

mod admission;
mod backoff;
mod descriptors;
mod guarded_stream;
mod unix_socket;

pub use admission::{Admission, AdmissionGate, Limits, Refused};
pub use backoff::AcceptBackoff;
pub use descriptors::DescriptorBudget;
pub use guarded_stream::{Deadlines, GuardedStream};
pub use unix_socket::bind_unix_socket;
