//! Small signed images for scenarios and the demo tour: a payload of one script,
//! `bin/warden`, that either runs the real `warden` binary or fails at once.

use std::path::Path;

use anyhow::Context as _;
use warden_keychain::tooling::SecretSigningKey;
use warden_os::image::build::build_signed_image;
use warden_os::image::{BuildId, ImageHeader, ProductId, SemanticVersion};
use warden_os::payload::{ENTRY_POINT, PayloadEntry, encode_archive};

/// The script of an image that runs `warden` (the real appliance) with its arguments.
pub fn runs_warden(warden: &Path) -> String {
    format!("#!/bin/sh\nexec '{}' \"$@\"\n", warden.display())
}

/// The script of an image that cannot start: it says so and exits with 3.
pub fn crashes(version: [u32; 3]) -> String {
    let [major, minor, patch] = version;
    format!("#!/bin/sh\necho 'image {major}.{minor}.{patch}: cannot start' >&2\nexit 3\n")
}

/// What signs an image: a release key and its certificate from the vendor root.
pub struct ImageSigner<'k> {
    /// The release key.
    pub release_key: &'k SecretSigningKey,
    /// Its certificate (issued by a vendor root for `Purpose::IMAGE`).
    pub release_cert: &'k [u8],
}

/// A signed image for `product` at `version` whose payload is `script` as `bin/warden`.
pub fn script_image(
    signer: &ImageSigner<'_>,
    product: &str,
    version: [u32; 3],
    security_counter: u64,
    script: &str,
) -> anyhow::Result<Vec<u8>> {
    let payload = encode_archive(vec![PayloadEntry {
        path: ENTRY_POINT.to_owned(),
        mode: 0o755,
        data: script.as_bytes().to_vec(),
    }])
    .context("the image's payload archive")?;
    let [major, minor, patch] = version;
    // A build ID per version, so two versions never look like one build.
    let mut build_id = [0u8; 16];
    for (slot, part) in build_id.chunks_mut(4).zip([major, minor, patch]) {
        slot.copy_from_slice(&part.to_be_bytes());
    }
    let template = ImageHeader {
        product: ProductId::new(product)
            .with_context(|| format!("{product:?} is not an image product ID"))?,
        version: SemanticVersion::new(major, minor, patch),
        security_counter,
        build_id: BuildId(build_id),
        created_at: 1_790_000_000,
        payload_len: 0,
        payload_sha256: [0; 32],
    };
    build_signed_image(template, &payload, signer.release_key, signer.release_cert)
        .with_context(|| format!("signing image {major}.{minor}.{patch}"))
}
