//! Opening the TPM from a TCTI string, and mapping TSS failures to pluton's error kinds.

use std::str::FromStr;

use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::{Context, TctiNameConf};

use crate::PlutonError;
use crate::tpm::error::TpmError;

/// Open an ESAPI context on `tcti` (`device:/dev/tpmrm0`, `swtpm:host=…,port=…`, …).
pub(crate) fn open_context(tcti: &str) -> Result<Context, TpmError> {
    let name = TctiNameConf::from_str(tcti).map_err(|source| TpmError::Tcti {
        tcti: tcti.to_owned(),
        source,
    })?;
    Context::new(name).map_err(|source| TpmError::Tcti {
        tcti: tcti.to_owned(),
        source,
    })
}

/// Run `command` with the empty password as authorization (owner hierarchy and pluton's
/// objects have no authValue: access to the TPM device is pluton's alone, see README).
pub(crate) fn with_password<T>(
    context: &mut Context,
    command: impl FnOnce(&mut Context) -> tss_esapi::Result<T>,
) -> tss_esapi::Result<T> {
    context.execute_with_session(Some(AuthSession::Password), command)
}

/// Log a failed TPM command and turn it into `TpmFailed`.
pub(crate) fn failed(what: &'static str) -> impl FnOnce(tss_esapi::Error) -> PlutonError {
    move |error| {
        tracing::error!(command = what, %error, "tpm command failed");
        PlutonError::TpmFailed
    }
}

/// Whether `error` is the TPM's answer of the given kind.
pub(crate) fn is_kind(error: &tss_esapi::Error, kind: Tss2ResponseCodeKind) -> bool {
    matches!(error, tss_esapi::Error::Tss2Error(code) if code.kind() == Some(kind))
}
