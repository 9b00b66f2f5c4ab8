#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![doc = include_str!("../README.md")]

pub mod backend;
pub mod byte_array;
pub mod capability;
pub mod counters;
mod error;
pub mod identity;
pub mod protocol;
pub mod quote;
pub mod registers;
pub mod roles;
pub mod sealing;
pub mod store;

#[cfg(feature = "std")]
pub mod backend_record;
#[cfg(feature = "std")]
pub mod file_store;
#[cfg(feature = "std")]
pub mod server;
#[cfg(feature = "tpm")]
pub mod tpm;

pub use backend::{IdentityInfo, RootOfTrust, SoftwarePluton, StatusInfo};
pub use capability::ProvisioningCapability;
pub use error::{PlutonError, QuoteError};
pub use identity::{DeviceId, PublicKeyBytes, verify_signature};
pub use quote::{AttestationQuote, verify_quote};
pub use roles::{CounterName, Role, RoleToken};
pub use store::{InstalledRootKey, MemoryStore, StateStore};
