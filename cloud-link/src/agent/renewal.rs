//! Certificate renewal on the unit: when to ask, the CSR, and the switch-over.
//!
//! The factory certificate (`link.device_cert`) may sit on a read-only file system, so
//! renewed certificates live in the link's own state: `<outbox dir>/certificate/`.
//! - `device-cert.pem`: the renewed certificate in use (absent: the factory one is);
//! - `device-cert.pem.next`: a certificate the fleet issued, not yet connected with;
//! - `device-cert.pem.previous`: the one it replaced (kept for the operator);
//! - `device-cert.pem.refused`: an issued one that did not connect (set aside).
//!
//! Each is written atomically (temp file, fsync, rename, fsync of the directory). The
//! next session after an issue uses `.next`; only its first successful CONNECT makes
//! it the certificate in use. If it fails to connect, the next attempt uses the old
//! one; once the old one connects while the new one did not, the new one is set
//! aside and reported (`certificate-renewal-failed`). If neither connects (the fleet
//! is down), the two are tried in turn.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use warden_wire::certificate_fields;
use warden_wire::renewal::{
    CertificateRequest, certification_request, certification_request_info, ecdsa_signature_der, pem,
};
use warden_wire::topics::PROTOCOL_VERSION;
use warden_wire::validity::{CertificateStanding, utc_text};

/// How often the unit looks at its certificate's standing (and at every connection).
pub const RENEWAL_CHECK: Duration = Duration::from_secs(3600);
/// How long a request waits for the fleet's answer before it may be sent again.
pub const ANSWER_WAIT: Duration = Duration::from_secs(60);

/// The directory renewed certificates live in, under the outbox directory.
pub fn renewal_directory(outbox_dir: &Path) -> PathBuf {
    outbox_dir.join("certificate")
}

/// The renewed certificate in use, if the unit has one (else `link.device_cert` is).
pub fn renewed_certificate(outbox_dir: &Path) -> PathBuf {
    renewal_directory(outbox_dir).join("device-cert.pem")
}

/// Where the unit's certificate renewal stands, for the status page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RenewalState {
    /// Nothing going on.
    #[default]
    Idle,
    /// A request went to the fleet; waiting for its answer.
    Requested,
    /// A new certificate was issued; the unit is connecting with it.
    Connecting,
    /// The unit connected with its renewed certificate and made it its own.
    Renewed,
    /// The fleet refused the last request (see `detail`).
    Refused,
    /// The new certificate did not connect, or could not be installed (see `detail`).
    Failed,
}

/// The unit's certificate and its renewal, for the status page and `warden status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRenewalStatus {
    /// The certificate file the link connects with.
    pub in_use: Option<String>,
    /// Its start of validity, ms since the epoch.
    pub not_before_ms: Option<i64>,
    /// Its end of validity, ms since the epoch.
    pub not_after_ms: Option<i64>,
    /// Its standing (`valid`, `renewal-due`, `expired`, `not-valid-yet`).
    pub standing: Option<String>,
    /// Where renewal stands.
    pub state: RenewalState,
    /// When a request last went out, ms since the epoch.
    pub requested_ms: Option<u64>,
    /// When the unit last switched to a renewed certificate, ms since the epoch.
    pub renewed_ms: Option<u64>,
    /// What happened last, for people (a refusal names the fleet's reason).
    pub detail: Option<String>,
}

/// What a connection outcome means for renewal.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Switch {
    /// Nothing to do.
    Stay,
    /// Set up the session again (with the other certificate).
    Reconnect,
}

/// The renewal's files and timing (no network: the agent sends and receives).
pub(super) struct Renewal {
    factory: PathBuf,
    renewed: PathBuf,
    next: PathBuf,
    previous: PathBuf,
    refused: PathBuf,
    /// The session being set up or running uses `.next`.
    using_next: bool,
    /// `.next` failed to connect with this error; the old one is being tried.
    next_failed: Option<String>,
    /// When the last request went out (one answer is waited for at a time).
    requested_at: Option<Instant>,
    /// When the standing was last looked at.
    checked_at: Option<Instant>,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl Renewal {
    /// Renewal of `device_cert` (the factory certificate), its files under
    /// `outbox_dir`.
    pub(super) fn new(device_cert: &Path, outbox_dir: &Path) -> Self {
        let renewed = renewed_certificate(outbox_dir);
        Self {
            factory: device_cert.to_owned(),
            next: with_suffix(&renewed, ".next"),
            previous: with_suffix(&renewed, ".previous"),
            refused: with_suffix(&renewed, ".refused"),
            renewed,
            using_next: false,
            next_failed: None,
            requested_at: None,
            checked_at: None,
        }
    }

    /// The certificate in use now (renewed, else the factory one).
    pub(super) fn current(&self) -> PathBuf {
        if self.renewed.exists() {
            self.renewed.clone()
        } else {
            self.factory.clone()
        }
    }

    /// The certificate the next session connects with: a new one not yet tried (or
    /// not known to fail), else the one in use.
    pub(super) fn for_session(&mut self) -> PathBuf {
        self.using_next = self.next.exists() && self.next_failed.is_none();
        if self.using_next {
            self.next.clone()
        } else {
            self.current()
        }
    }

    /// The session connected. With the new certificate: it becomes the one in use
    /// (the old one kept as `.previous`); returns its description. With the old one
    /// while the new one failed: the new one is set aside; returns why.
    pub(super) fn on_connected(&mut self) -> Result<Option<Outcome>, String> {
        if self.using_next {
            self.using_next = false;
            let old = std::fs::read(self.current())
                .map_err(|e| format!("{}: {e}", self.current().display()))?;
            warden_files::write_file_atomically_with_mode(&self.previous, &old, 0o644)
                .map_err(|e| e.to_string())?;
            std::fs::rename(&self.next, &self.renewed)
                .map_err(|e| format!("{}: {e}", self.renewed.display()))?;
            warden_files::sync_directory_of(&self.renewed).map_err(|e| e.to_string())?;
            self.requested_at = None;
            let not_after = validity_of(&self.renewed).map(|(_, after)| after);
            return Ok(Some(Outcome::Renewed(format!(
                "connected with the renewed certificate (valid until {}); the old one is kept as {}",
                not_after.map_or_else(|| "?".to_owned(), utc_text),
                self.previous.display()
            ))));
        }
        if let Some(error) = self.next_failed.take()
            && self.next.exists()
        {
            std::fs::rename(&self.next, &self.refused)
                .map_err(|e| format!("{}: {e}", self.refused.display()))?;
            warden_files::sync_directory_of(&self.refused).map_err(|e| e.to_string())?;
            self.requested_at = None;
            return Ok(Some(Outcome::Failed(format!(
                "the renewed certificate did not connect ({error}) while the old one does: \
                 the unit keeps the old one and set the new one aside as {}",
                self.refused.display()
            ))));
        }
        Ok(None)
    }

    /// The connection failed before (or without) a CONNACK: with the new certificate,
    /// try the old one next; with the old one while the new one failed, the fleet may
    /// be down: try the new one again next.
    pub(super) fn on_connect_failed(&mut self, error: &str, ever_connected: bool) -> Switch {
        if ever_connected {
            return Switch::Stay;
        }
        if self.using_next {
            self.next_failed = Some(error.to_owned());
            return Switch::Reconnect;
        }
        if self.next_failed.is_some() && self.next.exists() {
            self.next_failed = None;
            return Switch::Reconnect;
        }
        Switch::Stay
    }

    /// Whether to send a request now: renewal is due (or `ordered`), no new certificate
    /// waits, and no request waits for its answer. Looks at most every
    /// [`RENEWAL_CHECK`] unless `force`d.
    pub(super) fn due(&mut self, now: Instant, now_unix: i64, force: bool) -> Option<String> {
        if !self.may_request(now) {
            return None;
        }
        if !force
            && self
                .checked_at
                .is_some_and(|at| now.duration_since(at) < RENEWAL_CHECK)
        {
            return None;
        }
        self.checked_at = Some(now);
        let standing = validity_of(&self.current())
            .map(|(before, after)| CertificateStanding::at(before, after, now_unix));
        match standing {
            Some(CertificateStanding::RenewalDue | CertificateStanding::Expired) => {
                Some(warden_wire::renewal::renewal_reason::RENEWAL_DUE.to_owned())
            }
            _ => None,
        }
    }

    /// Whether a request may go out: no new certificate waits to be tried, and no
    /// request waits for its answer (for [`ANSWER_WAIT`]).
    pub(super) fn may_request(&self, now: Instant) -> bool {
        !self.next.exists()
            && self
                .requested_at
                .is_none_or(|at| now.duration_since(at) >= ANSWER_WAIT)
    }

    /// A request is going out now; without an answer, the standing is looked at again
    /// after [`ANSWER_WAIT`].
    pub(super) fn requested(&mut self, now: Instant) {
        self.requested_at = Some(now);
        self.checked_at = None;
    }

    /// Installs an issued certificate as `.next` (checked first: it certifies the key
    /// of the certificate in use and is valid now). A new issue replaces an untried one.
    pub(super) fn install(&mut self, certificate_pem: &str, now_unix: i64) -> Result<(), String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let issued = CertificateDer::pem_slice_iter(certificate_pem.as_bytes())
            .next()
            .ok_or("the answer holds no certificate")?
            .map_err(|e| format!("the certificate is not PEM: {e}"))?;
        let current = std::fs::read(self.current())
            .map_err(|e| format!("{}: {e}", self.current().display()))?;
        let current = CertificateDer::pem_slice_iter(&current)
            .next()
            .ok_or("the certificate in use holds no certificate")?
            .map_err(|e| format!("the certificate in use is not PEM: {e}"))?;
        let key = certificate_fields::subject_public_key(&issued)
            .ok_or("the issued certificate does not parse")?;
        if Some(key) != certificate_fields::subject_public_key(&current) {
            return Err("the issued certificate is for another key than this unit's".into());
        }
        let (not_before, not_after) = certificate_fields::validity(&issued)
            .ok_or("the issued certificate's validity does not parse")?;
        if !(not_before..=not_after).contains(&now_unix) {
            return Err(format!(
                "the issued certificate is not valid now (from {} to {})",
                utc_text(not_before),
                utc_text(not_after)
            ));
        }
        if let Some(directory) = self.next.parent() {
            std::fs::create_dir_all(directory)
                .map_err(|e| format!("{}: {e}", directory.display()))?;
        }
        warden_files::write_file_atomically_with_mode(
            &self.next,
            pem("CERTIFICATE", &issued).as_bytes(),
            0o644,
        )
        .map_err(|e| e.to_string())?;
        self.next_failed = None;
        Ok(())
    }

    /// The certificate in use and its standing at `now_unix`.
    pub(super) fn describe(&self, status: &mut CertificateRenewalStatus, now_unix: i64) {
        let current = self.current();
        status.in_use = Some(current.display().to_string());
        match validity_of(&current) {
            Some((before, after)) => {
                status.not_before_ms = Some(before.saturating_mul(1000));
                status.not_after_ms = Some(after.saturating_mul(1000));
                status.standing = Some(
                    CertificateStanding::at(before, after, now_unix)
                        .as_str()
                        .to_owned(),
                );
            }
            None => {
                status.not_before_ms = None;
                status.not_after_ms = None;
                status.standing = None;
            }
        }
    }
}

/// What a switch-over came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The new certificate is in use.
    Renewed(String),
    /// The new certificate was set aside.
    Failed(String),
}

/// `(not_before, not_after)` of the first certificate in the PEM file at `path`.
fn validity_of(path: &Path) -> Option<(i64, i64)> {
    let chain = warden_wire::tls::load_certificates(path).ok()?;
    certificate_fields::validity(chain.first()?)
}

/// The request for `device_id`'s own key, signed inside pluton (or, for units without
/// pluton — tests and benches — with the key file). Blocking.
pub(super) fn build_request(
    signer: (Option<&Path>, Option<&Path>),
    certificate: &Path,
    device_id: &str,
    reason: &str,
) -> Result<CertificateRequest, String> {
    let der = match signer {
        (Some(socket), None) => {
            let mut client = warden_pluton_api::launch_tokens::connect_for(
                socket,
                warden_pluton_api::Role::Link,
            )
            .map_err(|e| format!("pluton {}: {e}", socket.display()))?;
            let identity = client
                .export_identity()
                .map_err(|e| format!("pluton: {e}"))?;
            let info = certification_request_info(device_id, &identity.public_key.0);
            let signature = client
                .sign_certificate_request(&info)
                .map_err(|e| format!("pluton refused to sign the request: {e}"))?;
            certification_request(&info, &ecdsa_signature_der(&signature))
        }
        (None, Some(key_file)) => {
            let chain =
                warden_wire::tls::load_certificates(certificate).map_err(|e| e.to_string())?;
            let public_key: [u8; 65] = chain
                .first()
                .and_then(|der| certificate_fields::subject_public_key(der))
                .and_then(|key| key.try_into().ok())
                .ok_or("the certificate in use has no P-256 key")?;
            let key = warden_wire::tls::load_private_key(key_file).map_err(|e| e.to_string())?;
            let signing = rustls::crypto::ring::sign::any_ecdsa_type(&key)
                .map_err(|e| format!("{}: {e}", key_file.display()))?;
            let signer = signing
                .choose_scheme(&[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])
                .ok_or("the key file is not a P-256 key")?;
            let info = certification_request_info(device_id, &public_key);
            let signature = signer.sign(&info).map_err(|e| e.to_string())?;
            certification_request(&info, &signature)
        }
        _ => return Err("the link needs exactly one of `device_key` and `pluton_socket`".into()),
    };
    Ok(CertificateRequest {
        v: PROTOCOL_VERSION,
        csr: pem("CERTIFICATE REQUEST", &der),
        reason: reason.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit's factory certificate and key file in `dir`.
    struct Unit {
        cert: PathBuf,
        key: PathBuf,
        outbox: PathBuf,
    }

    fn certificate(key: &rcgen::KeyPair, days_left: i64) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wd-1");
        let now = std::time::SystemTime::now();
        params.not_before = (now - Duration::from_secs(300 * 86_400)).into();
        params.not_after = if days_left >= 0 {
            now + Duration::from_secs(days_left.unsigned_abs() * 86_400 + 600)
        } else {
            now - Duration::from_secs(86_400)
        }
        .into();
        params.self_signed(key).expect("cert").pem()
    }

    fn unit(dir: &Path, key: &rcgen::KeyPair, days_left: i64) -> Unit {
        let cert = dir.join("device.pem");
        std::fs::write(&cert, certificate(key, days_left)).expect("write");
        std::fs::write(dir.join("device.key"), key.serialize_pem()).expect("key");
        Unit {
            cert,
            key: dir.join("device.key"),
            outbox: dir.join("outbox"),
        }
    }

    fn renewal(unit: &Unit) -> Renewal {
        Renewal::new(&unit.cert, &unit.outbox)
    }

    fn now_unix() -> i64 {
        i64::try_from(crate::clock::unix_millis() / 1000).expect("seconds")
    }

    #[test]
    fn renewal_is_asked_for_once_due_and_once_per_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut not_due = renewal(&unit(dir.path(), &key, 400));
        let now = Instant::now();
        assert_eq!(
            not_due.due(now, now_unix(), false),
            None,
            "more than a third left"
        );
        let mut due = renewal(&unit(dir.path(), &key, 10));
        assert!(due.due(now, now_unix(), false).is_some());
        due.requested(now);
        assert_eq!(due.due(now, now_unix(), true), None, "an answer is awaited");
        assert!(due.due(now + ANSWER_WAIT, now_unix(), true).is_some());
    }

    #[test]
    fn the_request_is_a_csr_for_the_units_own_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("key");
        let unit = unit(dir.path(), &key, 10);
        let request = build_request((None, Some(&unit.key)), &unit.cert, "wd-1", "renewal-due")
            .expect("request");
        let der = {
            use rustls::pki_types::pem::PemObject as _;
            rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(request.csr.as_bytes())
                .expect("pem")
        };
        // rcgen checks the request's signature with its own key.
        let parsed = rcgen::CertificateSigningRequestParams::from_der(&der).expect("valid CSR");
        use rcgen::PublicKeyData as _;
        assert_eq!(parsed.public_key.der_bytes(), key.public_key_raw());
    }

    #[test]
    fn a_new_certificate_is_used_only_after_it_connects_and_set_aside_if_it_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("key");
        let config = unit(dir.path(), &key, 10);
        let mut renewal = renewal(&config);
        // Another key's certificate is refused.
        let other = rcgen::KeyPair::generate().expect("other");
        assert!(
            renewal
                .install(&certificate(&other, 300), now_unix())
                .is_err()
        );
        assert!(!renewal.next.exists());
        // An expired one too.
        assert!(renewal.install(&certificate(&key, -1), now_unix()).is_err());

        let fresh = certificate(&key, 300);
        renewal.install(&fresh, now_unix()).expect("install");
        assert_eq!(renewal.for_session(), renewal.next);
        assert_eq!(renewal.current(), config.cert, "not yet in use");
        // It does not connect: the old one is tried; the old one connects: set aside.
        assert_eq!(
            renewal.on_connect_failed("bad certificate", false),
            Switch::Reconnect
        );
        assert_eq!(renewal.for_session(), config.cert);
        let outcome = renewal.on_connected().expect("files");
        assert!(matches!(outcome, Some(Outcome::Failed(_))), "{outcome:?}");
        assert!(renewal.refused.exists() && !renewal.next.exists());

        // Issued again, and this time it connects: it is the one in use.
        renewal.install(&fresh, now_unix()).expect("install");
        assert_eq!(renewal.for_session(), renewal.next);
        let outcome = renewal.on_connected().expect("files");
        assert!(matches!(outcome, Some(Outcome::Renewed(_))), "{outcome:?}");
        assert_eq!(renewal.current(), renewal.renewed);
        assert_eq!(
            std::fs::read(&renewal.previous).expect("previous"),
            std::fs::read(&config.cert).expect("factory")
        );
        let mut status = CertificateRenewalStatus::default();
        renewal.describe(&mut status, now_unix());
        assert_eq!(status.standing.as_deref(), Some("valid"));
        // Both fail (the fleet is down): the two are tried in turn.
        renewal.install(&fresh, now_unix()).expect("install");
        assert_eq!(renewal.for_session(), renewal.next);
        assert_eq!(
            renewal.on_connect_failed("refused", false),
            Switch::Reconnect
        );
        assert_eq!(renewal.for_session(), renewal.renewed);
        assert_eq!(
            renewal.on_connect_failed("refused", false),
            Switch::Reconnect
        );
        assert_eq!(renewal.for_session(), renewal.next);
    }
}
