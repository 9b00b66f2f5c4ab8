//! Keys, images and monitors shared by the tests.

use warden_image::build::build_signed_image;
use warden_image::{BuildId, ImageHeader, ProductId, RootKey, SemanticVersion};
use warden_keychain::Purpose;
use warden_keychain::tooling::{SecretSigningKey, issue_release_cert};
use warden_os::payload::{ENTRY_POINT, PayloadEntry, encode_archive};

pub struct Keys {
    pub root: SecretSigningKey,
    pub release: SecretSigningKey,
    pub cert: Vec<u8>,
}

impl Keys {
    pub fn new() -> Self {
        let root = SecretSigningKey::generate().expect("rng");
        let release = SecretSigningKey::generate().expect("rng");
        let cert =
            issue_release_cert(&root, &release.public_key(), Purpose::IMAGE, 1).expect("cert");
        Self {
            root,
            release,
            cert,
        }
    }

    pub fn roots(&self) -> Vec<RootKey> {
        vec![RootKey::from_public_key(&self.root.public_key()).expect("root")]
    }

    /// A signed image whose payload runs `script` and carries `filler` bytes of defaults.
    pub fn image(&self, patch: u32, counter: u64, script: &str, filler: usize) -> Vec<u8> {
        let payload = encode_archive(vec![
            PayloadEntry {
                path: ENTRY_POINT.to_owned(),
                mode: 0o755,
                data: script.as_bytes().to_vec(),
            },
            PayloadEntry {
                path: "defaults/filler".to_owned(),
                mode: 0o644,
                data: (0..filler).map(|i| (i as u32 ^ patch) as u8).collect(),
            },
        ])
        .expect("archive");
        self.signed(&payload, patch, counter, product())
    }

    /// `payload` signed as version 1.0.`patch` of `product` with `counter`.
    pub fn signed(&self, payload: &[u8], patch: u32, counter: u64, product: ProductId) -> Vec<u8> {
        let template = ImageHeader {
            product,
            version: SemanticVersion::new(1, 0, patch),
            security_counter: counter,
            build_id: BuildId([patch as u8; 16]),
            created_at: 1_790_000_000,
            payload_len: 0,
            payload_sha256: [0; 32],
        };
        build_signed_image(template, payload, &self.release, &self.cert).expect("image")
    }
}

pub fn product() -> ProductId {
    ProductId::new("warden-gw").expect("product")
}
