//! The delta file `WDL1`: its format lives beside the image format
//! ([`warden_image::delta`]), which the fleet shares; here, its errors as the device's.

pub use warden_image::delta::{
    DELTA_DOMAIN, DELTA_FORMAT, DELTA_HEADER_LEN, DELTA_MAGIC, DeltaFormatError, DeltaHeader,
    ENGINE_BSDIFF_DEFLATE,
};

use crate::delta::error::DeltaError;

impl From<DeltaFormatError> for DeltaError {
    fn from(error: DeltaFormatError) -> Self {
        match error {
            DeltaFormatError::Malformed(what) => Self::Malformed(what),
            DeltaFormatError::WrongProduct { delta, device } => Self::WrongProduct {
                delta: delta.to_string(),
                device: device.to_string(),
            },
            DeltaFormatError::CounterTooLow { delta, device } => {
                Self::CounterTooLow { delta, device }
            }
            DeltaFormatError::Certificate(error) => Self::Certificate(error),
            DeltaFormatError::SignatureInvalid => Self::SignatureInvalid,
            DeltaFormatError::PatchHashMismatch => Self::PatchHashMismatch,
            // `DeltaFormatError` is non-exhaustive: a kind added there is framing here
            // until it has its own variant.
            _ => Self::Malformed("refused by the delta format"),
        }
    }
}

/// Verify a delta header's trailer against `trust` ([`warden_image::delta::verify_delta_header`]).
pub fn verify_delta_header(
    header: &DeltaHeader,
    trailer: &[u8],
    trust: &warden_image::ImageTrust<'_>,
) -> Result<(), DeltaError> {
    warden_image::delta::verify_delta_header(header, trailer, trust).map_err(DeltaError::from)
}
