#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![doc = include_str!("../README.md")]

#[cfg(feature = "std")]
pub mod build;
pub mod delta;
mod error;
pub mod fuzz_harness;
mod header;
mod verify;

pub use error::ImageError;
pub use header::{
    BuildId, HEADER_LEN, IMAGE_DOMAIN, IMAGE_FORMAT, IMAGE_MAGIC, ImageHeader, MAX_PAYLOAD_LEN,
    SemanticVersion, TRAILER_LEN, VersionParseError,
};
pub use verify::{
    ImageParts, ImageTrust, PayloadCheck, VerifiedHeader, VerifiedImage, split_image,
    verify_header, verify_image,
};

pub use warden_keychain::{CERT_LEN, ChainError, KeyId, RootKey, SIGNATURE_LEN};
/// The product identifier images and policy bundles share (16 ASCII bytes, NUL-padded).
pub use warden_policy::bundle::ProductId;
