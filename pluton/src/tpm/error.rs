//! Why the TPM backend could not start.

use crate::PlutonError;

/// Why the TPM backend could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// The TCTI string is malformed or the TPM behind it cannot be reached.
    #[error("cannot open the tpm through tcti {tcti:?}: {source}")]
    Tcti {
        /// The TCTI string.
        tcti: String,
        /// The TSS's error.
        source: tss_esapi::Error,
    },
    /// The state store or a TPM command at start failed (the log names the command).
    #[error("tpm backend start: {0}")]
    Start(PlutonError),
}
