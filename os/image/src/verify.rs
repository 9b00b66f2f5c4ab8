//! Verification: framing, product, anti-rollback, chain, signature, then payload hash.

use sha2::{Digest, Sha256};
use warden_keychain::{CERT_LEN, KeyId, Purpose, RootKey, SIGNATURE_LEN};

use warden_policy::bundle::ProductId;

use crate::{HEADER_LEN, IMAGE_DOMAIN, ImageError, ImageHeader, TRAILER_LEN};

/// What a device trusts when it verifies an image.
#[derive(Clone, Copy, Debug)]
pub struct ImageTrust<'k> {
    /// Vendor roots installed in pluton at provisioning.
    pub roots: &'k [RootKey],
    /// Revoked release keys and roots.
    pub revoked: &'k [KeyId],
    /// This device's product.
    pub product: ProductId,
    /// The anti-rollback counter: images with a lower security counter are refused.
    pub min_security_counter: u64,
}

/// An image split into its parts (framing checks only, nothing verified).
#[derive(Clone, Copy, Debug)]
pub struct ImageParts<'a> {
    /// The decoded header.
    pub header: ImageHeader,
    /// The header's bytes (what is signed).
    pub header_bytes: &'a [u8],
    /// The payload.
    pub payload: &'a [u8],
    /// The release-key certificate (`WKC1`, 147 bytes).
    pub cert: &'a [u8],
    /// The release key's signature, `r || s`.
    pub signature: &'a [u8; SIGNATURE_LEN],
}

/// Split an in-memory image into header, payload, certificate and signature.
pub fn split_image(bytes: &[u8]) -> Result<ImageParts<'_>, ImageError> {
    let header = ImageHeader::decode(bytes)?;
    if bytes.len() as u64 != header.image_len() {
        return Err(ImageError::LengthMismatch);
    }
    // The length matched a u64 sum of in-memory sizes, so the payload fits in usize.
    let payload_end = HEADER_LEN + (header.payload_len as usize);
    let cert_end = payload_end + CERT_LEN;
    let signature =
        <&[u8; SIGNATURE_LEN]>::try_from(&bytes[cert_end..]).map_err(|_| ImageError::Truncated)?;
    Ok(ImageParts {
        header,
        header_bytes: &bytes[..HEADER_LEN],
        payload: &bytes[HEADER_LEN..payload_end],
        cert: &bytes[payload_end..cert_end],
        signature,
    })
}

/// A header whose framing, product, anti-rollback counter, certificate chain and
/// signature verified. The payload is still to be checked ([`Self::payload_check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedHeader {
    /// The header.
    pub header: ImageHeader,
    /// SHA-256 of the header: the signed digest, and the boot measurement.
    pub measurement: [u8; 32],
    /// The release key that signed the image.
    pub signer: KeyId,
    /// The root that certified the release key.
    pub issuer: KeyId,
    /// The release-key certificate's serial.
    pub cert_serial: u32,
}

impl VerifiedHeader {
    /// Start checking the payload against the signed header's size and SHA-256.
    pub fn payload_check(&self) -> PayloadCheck {
        PayloadCheck {
            verified: *self,
            hasher: Sha256::new(),
            seen: 0,
        }
    }
}

/// Verify an image's header and trailer without its payload, for an image of
/// `image_len` bytes in total (read from flash or a file, the payload streams after).
///
/// Checks, cheap first: framing, total length, product, security counter, the release
/// key's certificate chain for [`Purpose::IMAGE`] (including revocation), then the
/// release key's signature over SHA-256 of the header in the image domain.
pub fn verify_header(
    header_bytes: &[u8],
    trailer: &[u8],
    image_len: u64,
    trust: &ImageTrust<'_>,
) -> Result<VerifiedHeader, ImageError> {
    let header = ImageHeader::decode(header_bytes)?;
    if image_len != header.image_len() {
        return Err(ImageError::LengthMismatch);
    }
    if trailer.len() != TRAILER_LEN {
        return Err(ImageError::Truncated);
    }
    if header.product != trust.product {
        return Err(ImageError::WrongProduct);
    }
    if header.security_counter < trust.min_security_counter {
        return Err(ImageError::SecurityCounterTooLow);
    }
    let (cert, signature) = trailer.split_at(CERT_LEN);
    let signature =
        <&[u8; SIGNATURE_LEN]>::try_from(signature).map_err(|_| ImageError::Truncated)?;
    let release_key =
        warden_keychain::verify_release_key(cert, trust.roots, trust.revoked, Purpose::IMAGE)
            .map_err(ImageError::Certificate)?;
    let measurement = header.digest();
    release_key
        .verify(IMAGE_DOMAIN, &measurement, signature)
        .map_err(|_| ImageError::SignatureInvalid)?;
    Ok(VerifiedHeader {
        header,
        measurement,
        signer: release_key.key_id(),
        issuer: release_key.issuer(),
        cert_serial: release_key.serial(),
    })
}

/// Streaming check of a payload against a verified header: feed it in any chunking.
#[derive(Clone, Debug)]
pub struct PayloadCheck {
    verified: VerifiedHeader,
    hasher: Sha256,
    seen: u64,
}

impl PayloadCheck {
    /// Hash the next chunk of the payload.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        let seen = self.seen.saturating_add(chunk.len() as u64);
        if seen > self.verified.header.payload_len {
            return Err(ImageError::PayloadTooLong);
        }
        self.seen = seen;
        self.hasher.update(chunk);
        Ok(())
    }

    /// Payload bytes hashed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.seen
    }

    /// Finish: the whole payload arrived and hashes to the header's SHA-256.
    pub fn finish(self) -> Result<VerifiedImage, ImageError> {
        if self.seen != self.verified.header.payload_len {
            return Err(ImageError::PayloadTooShort);
        }
        let digest: [u8; 32] = self.hasher.finalize().into();
        if digest != self.verified.header.payload_sha256 {
            return Err(ImageError::PayloadHashMismatch);
        }
        Ok(VerifiedImage {
            verified: self.verified,
        })
    }
}

/// An image whose header, chain, signature and payload all verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedImage {
    verified: VerifiedHeader,
}

impl VerifiedImage {
    /// The signed header.
    pub fn header(&self) -> &ImageHeader {
        &self.verified.header
    }

    /// SHA-256 of the header: what boot extends into the measurement register.
    pub fn measurement(&self) -> [u8; 32] {
        self.verified.measurement
    }

    /// The release key that signed it.
    pub fn signer(&self) -> KeyId {
        self.verified.signer
    }

    /// The root that certified the release key.
    pub fn issuer(&self) -> KeyId {
        self.verified.issuer
    }

    /// The release-key certificate's serial.
    pub fn cert_serial(&self) -> u32 {
        self.verified.cert_serial
    }
}

/// Verify a whole image held in memory.
pub fn verify_image(bytes: &[u8], trust: &ImageTrust<'_>) -> Result<VerifiedImage, ImageError> {
    let header_end = bytes.len().min(HEADER_LEN);
    let trailer_start = bytes.len().saturating_sub(TRAILER_LEN).max(header_end);
    let verified = verify_header(
        &bytes[..header_end],
        &bytes[trailer_start..],
        bytes.len() as u64,
        trust,
    )?;
    let mut check = verified.payload_check();
    check.update(&bytes[HEADER_LEN..trailer_start])?;
    check.finish()
}
