//! Fuzz harness for the image header and framing, as a plain function (no_std).
//!
//! `os/fuzz` (target `image_header`) calls it; a property test runs it under
//! `cargo test` too. It panics only if an invariant breaks.

use crate::{
    CERT_LEN, HEADER_LEN, ImageError, ImageHeader, ImageTrust, MAX_PAYLOAD_LEN, TRAILER_LEN,
    split_image, verify_header,
};

/// Decodes `data` as an image header and as a whole image, and verifies its header and
/// trailer against a trust with no roots. A decoded header encodes back to exactly the
/// bytes it came from; split parts have the lengths the header declares; nothing
/// verifies without a root.
pub fn image_header(data: &[u8]) {
    let decoded = ImageHeader::decode(data);
    if let Ok(header) = decoded {
        assert!(
            data.len() >= HEADER_LEN,
            "a header decodes only from a whole one"
        );
        assert_eq!(
            header.encode()[..],
            data[..HEADER_LEN],
            "encode(decode(b)) == b"
        );
        assert_eq!(
            ImageHeader::decode(&header.encode()),
            Ok(header),
            "round trip"
        );
        assert!(header.payload_len <= MAX_PAYLOAD_LEN);
        assert!(header.image_len() >= (HEADER_LEN + TRAILER_LEN) as u64);
    }
    match split_image(data) {
        Ok(parts) => {
            assert_eq!(Ok(parts.header), decoded);
            assert_eq!(parts.header_bytes.len(), HEADER_LEN);
            assert_eq!(parts.payload.len() as u64, parts.header.payload_len);
            assert_eq!(parts.cert.len(), CERT_LEN);
            assert_eq!(data.len() as u64, parts.header.image_len());
        }
        Err(error) => assert!(decoded.is_err() || error == ImageError::LengthMismatch),
    }
    let header_bytes = &data[..data.len().min(HEADER_LEN)];
    let trailer = &data[data.len().saturating_sub(TRAILER_LEN)..];
    let product = match decoded {
        Ok(header) => header.product,
        Err(_) => warden_policy::bundle::ProductId([0; 16]),
    };
    let trust = ImageTrust {
        roots: &[],
        revoked: &[],
        product,
        min_security_counter: 0,
    };
    let verified = verify_header(header_bytes, trailer, data.len() as u64, &trust);
    assert!(verified.is_err(), "nothing verifies without a root");
}
