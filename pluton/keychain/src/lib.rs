#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![doc = include_str!("../README.md")]

mod certificate;
mod error;
mod keys;
mod revocation;
#[cfg(feature = "std")]
pub mod tooling;

pub use certificate::{
    CERT_LEN, CERT_MAGIC, CERT_SIGNING_PREFIX, CERT_VERSION, ReleaseKeyCert, verify_release_key,
};
pub use error::ChainError;
pub use keys::{
    KeyId, MAX_DOMAIN_LEN, PUBLIC_KEY_LEN, PublicKeyBytes, Purpose, RELEASE_SIGNING_PREFIX,
    RootKey, SIGNATURE_LEN, VerifiedReleaseKey, domain,
};
pub use revocation::{
    LIST_MAGIC, LIST_SIGNING_PREFIX, LIST_VERSION, MAX_REVOKED, RevocationError, RevocationList,
    list_len,
};
