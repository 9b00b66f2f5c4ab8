//! Device certificate renewal over the link: topics, payloads and the CSR's DER.
//!
//! The unit asks for a new certificate for the key it already has (pluton signs the
//! request; the key never leaves it) on `certificate/request`; the fleet answers on
//! `certificate/response` with the certificate or the reason it refused. The fleet may
//! ask a unit to renew now on `certificate/renew`. The rows of these topics are in the
//! table of [`crate::topics`]; the payloads are here so that the renewal's vocabulary
//! stays in one module.
//!
//! The request is a PKCS#10 `CertificationRequest` (RFC 2986) built by
//! [`certification_request_info`] and [`certification_request`]: the subject is
//! `CN=<device ID>`, the key P-256, no attributes, exactly what
//! `warden_pluton::identity::is_certificate_request_info_for` lets pluton sign.

use serde::{Deserialize, Serialize};

use crate::topics::{PROTOCOL_VERSION, PayloadError, TOPIC_ROOT};

/// Topic a device asks for a renewed certificate on.
pub fn certificate_request_topic(device_id: &str) -> String {
    format!("{TOPIC_ROOT}/{device_id}/certificate/request")
}

/// Topic the fleet answers a renewal request on.
pub fn certificate_response_topic(device_id: &str) -> String {
    format!("{TOPIC_ROOT}/{device_id}/certificate/response")
}

/// Topic the fleet asks a device to renew its certificate now on.
pub fn certificate_renew_topic(device_id: &str) -> String {
    format!("{TOPIC_ROOT}/{device_id}/certificate/renew")
}

/// Filter matching every device's renewal requests.
pub const ALL_CERTIFICATE_REQUESTS: &str = "warden/v1/devices/+/certificate/request";

/// Longest CSR PEM accepted (a P-256 CSR for a 64-character ID is about 450 bytes).
pub const MAX_CSR_PEM_LEN: usize = 4096;

/// Why a device asks for a new certificate.
pub mod renewal_reason {
    /// Less than a third of the certificate's validity is left.
    pub const RENEWAL_DUE: &str = "renewal-due";
    /// The fleet asked for it (`certificate/renew`).
    pub const FLEET_REQUEST: &str = "fleet-request";
}

/// A device's request for a new certificate for its own key (device → fleet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRequest {
    /// Payload version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The PKCS#10 request, PEM (`CERTIFICATE REQUEST`), signed with the device key.
    pub csr: String,
    /// Why ([`renewal_reason`]).
    pub reason: String,
}

/// The fleet's answer to a [`CertificateRequest`] (fleet → device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateResponse {
    /// Payload version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// A certificate was issued (`certificate` holds it), or the request was refused.
    pub issued: bool,
    /// The new certificate, PEM, when issued.
    #[serde(default)]
    pub certificate: Option<String>,
    /// What the fleet did and why, for people (a refusal names its reason).
    pub detail: String,
}

/// The fleet asks the device to renew its certificate now (fleet → device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRenewOrder {
    /// Payload version, [`PROTOCOL_VERSION`].
    pub v: u32,
}

macro_rules! json_payload {
    ($($name:ident),*) => {$(
        impl $name {
            /// Encodes as JSON.
            pub fn encode(&self) -> Vec<u8> {
                // Plain structs of strings and numbers: serialising cannot fail.
                serde_json::to_vec(self).unwrap_or_default()
            }

            /// Decodes and version-checks.
            pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
                let payload: Self = serde_json::from_slice(bytes)?;
                if payload.v != PROTOCOL_VERSION {
                    return Err(PayloadError::UnsupportedVersion(payload.v));
                }
                Ok(payload)
            }
        }
    )*};
}

json_payload!(
    CertificateRequest,
    CertificateResponse,
    CertificateRenewOrder
);

/// DER of a P-256 `SubjectPublicKeyInfo` up to the key's bit string contents.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// `id-at-commonName` (2.5.4.3).
const COMMON_NAME_OID: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
/// `AlgorithmIdentifier { ecdsa-with-SHA256 }` (1.2.840.10045.4.3.2, no parameters).
const ECDSA_SHA256: [u8; 12] = [
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];

fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    // Nothing here comes near 64 KiB: a subject is at most 64 characters.
    let len = u16::try_from(contents.len()).unwrap_or(u16::MAX);
    match u8::try_from(len) {
        Ok(short) if short < 0x80 => out.push(short),
        Ok(one) => out.extend([0x81, one]),
        Err(_) => {
            out.push(0x82);
            out.extend(len.to_be_bytes());
        }
    }
    out.extend_from_slice(contents);
    out
}

/// The DER `CertificationRequestInfo` for `CN=common_name` and the uncompressed P-256
/// key `public_key` (SEC1, 65 bytes): version 0, no attributes. What is signed.
pub fn certification_request_info(common_name: &str, public_key: &[u8; 65]) -> Vec<u8> {
    let attribute = [
        COMMON_NAME_OID.as_slice(),
        &der(0x0c, common_name.as_bytes()),
    ]
    .concat();
    let name = der(0x30, &der(0x31, &der(0x30, &attribute)));
    let spki = [P256_SPKI_PREFIX.as_slice(), public_key].concat();
    let body = [[0x02, 0x01, 0x00].as_slice(), &name, &spki, &[0xa0, 0x00]].concat();
    der(0x30, &body)
}

/// An ECDSA signature `r ‖ s` (32 bytes each) as DER `Ecdsa-Sig-Value`.
pub fn ecdsa_signature_der(raw: &[u8; 64]) -> Vec<u8> {
    let integer = |half: &[u8]| {
        let start = half.iter().position(|&b| b != 0).unwrap_or(half.len() - 1);
        let trimmed = &half[start..];
        let mut contents = Vec::with_capacity(33);
        if trimmed[0] & 0x80 != 0 {
            contents.push(0);
        }
        contents.extend_from_slice(trimmed);
        der(0x02, &contents)
    };
    der(0x30, &[integer(&raw[..32]), integer(&raw[32..])].concat())
}

/// The DER `CertificationRequest`: `info` with its ECDSA-SHA256 signature (DER).
pub fn certification_request(info: &[u8], signature_der: &[u8]) -> Vec<u8> {
    let bit_string = der(0x03, &[[0u8].as_slice(), signature_der].concat());
    der(0x30, &[info, ECDSA_SHA256.as_slice(), &bit_string].concat())
}

/// `der` as PEM with `label` (`CERTIFICATE REQUEST`, `CERTIFICATE`).
pub fn pem(label: &str, der: &[u8]) -> String {
    let body = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_with_padding() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn signature_integers_are_minimal_and_positive() {
        let mut raw = [0u8; 64];
        raw[31] = 1; // r = 1
        raw[32] = 0x80; // s has its top bit set: a leading zero keeps it positive
        let der = ecdsa_signature_der(&raw);
        assert_eq!(&der[..5], &[0x30, 3 + 35, 0x02, 0x01, 0x01]);
        assert_eq!(&der[5..8], &[0x02, 33, 0x00]);
        assert_eq!(der.len(), 2 + 3 + 35);
    }

    #[test]
    fn the_request_info_has_the_shape_pluton_signs() {
        let key = [4u8; 65];
        let info = certification_request_info("wd-0042", &key);
        assert_eq!(info[0], 0x30);
        assert_eq!(usize::from(info[1]), info.len() - 2);
        assert_eq!(&info[2..5], &[0x02, 0x01, 0x00]);
        assert!(info.ends_with(&[0xa0, 0x00]));
        let spki_at = info.len() - 2 - 65 - P256_SPKI_PREFIX.len();
        assert_eq!(&info[spki_at..spki_at + 26], &P256_SPKI_PREFIX);
        // A long ID takes the long length form and stays well-formed.
        let long = certification_request_info(&"x".repeat(64), &key);
        assert_eq!(long[1], 0x81);
        assert_eq!(usize::from(long[2]), long.len() - 3);
    }
}
