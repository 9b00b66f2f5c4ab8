//! `PlutonSigningKey`: a rustls signing key whose private half stays in pluton.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

use crate::blocking::PlutonClient;
use crate::error::ClientError;
use warden_pluton::{DeviceId, Role, RoleToken};

/// DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1, 65-byte point).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The SubjectPublicKeyInfo DER of an uncompressed P-256 public key.
pub fn p256_spki_der(public_key: &[u8; 65]) -> Vec<u8> {
    let mut der = Vec::with_capacity(P256_SPKI_PREFIX.len() + public_key.len());
    der.extend_from_slice(&P256_SPKI_PREFIX);
    der.extend_from_slice(public_key);
    der
}

/// A `rustls::sign::SigningKey` for the device identity, signing through pluton.
///
/// Offers only `ECDSA_NISTP256_SHA256`, and pluton signs only TLS 1.3 client
/// CertificateVerify contents, so the link's `ClientConfig` must be TLS 1.3 only. Each
/// signature is one blocking round trip on the pluton socket (a lost connection is
/// re-opened once); the key never enters this process.
#[derive(Debug, Clone)]
pub struct PlutonSigningKey {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    socket_path: PathBuf,
    /// The link's role token, presented on every (re)connection, where uids do not
    /// tell pluton the caller is the link.
    token: Option<RoleToken>,
    client: Mutex<Option<PlutonClient>>,
    public_key: [u8; 65],
    device_id: DeviceId,
}

impl PlutonSigningKey {
    /// Connect to pluton as the link and fetch the identity's public key: with the link's
    /// launch token when this process holds one ([`crate::launch_tokens`]), otherwise
    /// the caller's uid gives it the link role.
    pub fn connect(socket_path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let token = crate::launch_tokens::held()?.token(Role::Link).cloned();
        Self::connect_with_token(socket_path, token)
    }

    /// Connect, presenting the link's role token when given (on every reconnection too),
    /// and fetch the identity's public key.
    pub fn connect_with_token(
        socket_path: impl AsRef<Path>,
        token: Option<RoleToken>,
    ) -> Result<Self, ClientError> {
        let socket_path = socket_path.as_ref().to_owned();
        let mut client = connect(&socket_path, token.as_ref())?;
        let identity = client.export_identity()?;
        Ok(Self {
            shared: Arc::new(Shared {
                socket_path,
                token,
                client: Mutex::new(Some(client)),
                public_key: identity.public_key.0,
                device_id: identity.device_id,
            }),
        })
    }

    /// The identity's uncompressed SEC1 public key.
    pub fn public_key_sec1(&self) -> &[u8; 65] {
        &self.shared.public_key
    }

    /// The device ID.
    pub fn device_id(&self) -> DeviceId {
        self.shared.device_id
    }

    /// A client-certificate resolver presenting `chain` (the device certificate first)
    /// with this key, for `ClientConfig::builder()...with_client_cert_resolver(..)`.
    pub fn client_cert_resolver(
        &self,
        chain: Vec<CertificateDer<'static>>,
    ) -> Arc<dyn ResolvesClientCert> {
        Arc::new(PlutonClientCertResolver {
            certified: Arc::new(CertifiedKey::new(chain, Arc::new(self.clone()))),
        })
    }
}

/// Presents the device certificate whenever the server accepts ECDSA P-256 / SHA-256.
#[derive(Debug)]
struct PlutonClientCertResolver {
    certified: Arc<CertifiedKey>,
}

impl ResolvesClientCert for PlutonClientCertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        sigschemes
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Arc::clone(&self.certified))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl Shared {
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], ClientError> {
        let mut slot = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        // One retry with a fresh connection: pluton may have restarted.
        for attempt in 0..2 {
            let client = match slot.as_mut() {
                Some(client) => client,
                None => slot.insert(connect(&self.socket_path, self.token.as_ref())?),
            };
            match client.sign_tls13_client_certificate_verify(message) {
                Err(ClientError::Io { .. }) if attempt == 0 => *slot = None,
                other => return other,
            }
        }
        Err(ClientError::UnexpectedResponse {
            operation: "tls sign",
        })
    }
}

fn connect(socket_path: &Path, token: Option<&RoleToken>) -> Result<PlutonClient, ClientError> {
    match token {
        Some(token) => PlutonClient::connect_as(socket_path, token),
        None => PlutonClient::connect(socket_path),
    }
}

impl SigningKey for PlutonSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| {
                Box::new(PlutonSigner {
                    shared: Arc::clone(&self.shared),
                }) as Box<dyn Signer>
            })
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(p256_spki_der(
            &self.shared.public_key,
        )))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct PlutonSigner {
    shared: Arc<Shared>,
}

impl Signer for PlutonSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let signature = self
            .shared
            .sign(message)
            .map_err(|error| rustls::Error::General(format!("pluton signer: {error}")))?;
        let signature = p256::ecdsa::Signature::from_bytes(&signature.into())
            .map_err(|_| rustls::Error::General("pluton returned an invalid signature".into()))?;
        Ok(signature.to_der().as_bytes().to_vec())
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_prefix_matches_p256_der() {
        use p256::pkcs8::EncodePublicKey;
        // A real key, encoded by the p256 crate, must match our prefix.
        let secret = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).expect("key");
        let encoded = secret.verifying_key().to_sec1_point(false);
        let mut sec1 = [0u8; 65];
        sec1.copy_from_slice(encoded.as_bytes());
        let reference = secret.verifying_key().to_public_key_der().expect("der");
        assert_eq!(p256_spki_der(&sec1), reference.as_bytes());
    }
}
