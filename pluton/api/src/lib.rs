#![doc = include_str!("../README.md")]

#[cfg(feature = "tokio")]
mod asynchronous;
mod blocking;
pub mod bundle_floor;
mod error;
mod frame_io;
pub mod launch_tokens;
mod tls_signer;

#[cfg(feature = "tokio")]
pub use asynchronous::AsyncPlutonClient;
pub use blocking::PlutonClient;
pub use tls_signer::{PlutonSigningKey, p256_spki_der};

pub use warden_pluton::protocol::{Request, Response};
pub use warden_pluton::{
    CounterName, DeviceId, IdentityInfo, InstalledRootKey, PlutonError, ProvisioningCapability,
    Role, RoleToken, StatusInfo,
};

pub use error::{ClientError, LaunchTokenError};
pub use frame_io::DEFAULT_TIMEOUT;
