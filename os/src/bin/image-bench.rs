//! `image-bench`: full verification of a 64 MiB signed image beside OpenSSL.
//!
//! Creates a signed image with a 64 MiB payload in a temp dir, times our full
//! verification (read, SHA-256 of the payload, certificate chain, ECDSA over the header)
//! and `openssl dgst -sha256 -verify pub.pem -signature sig.der payload` on the same
//! payload, and prints both with the throughput ratio. Run with
//! `cargo run --release -p warden-os --bin image-bench`.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use warden_image::build::build_signed_image;
use warden_image::{
    BuildId, HEADER_LEN, ImageHeader, ImageTrust, ProductId, RootKey, SemanticVersion, TRAILER_LEN,
};
use warden_keychain::Purpose;
use warden_keychain::tooling::{
    SecretSigningKey, issue_release_cert, save_public_key, save_secret_key,
};
use warden_os::release::verify_file;

const PAYLOAD_LEN: usize = 64 << 20;
const RUNS: usize = 7;

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn mib_per_s(time: Duration) -> f64 {
    (PAYLOAD_LEN as f64 / (1 << 20) as f64) / time.as_secs_f64()
}

fn run() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("warden-image-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = bench(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(dir: &Path) -> anyhow::Result<()> {
    let root = SecretSigningKey::generate()?;
    let release = SecretSigningKey::generate()?;
    let cert = issue_release_cert(&root, &release.public_key(), Purpose::IMAGE, 1)?;
    let mut payload = vec![0u8; PAYLOAD_LEN];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for chunk in payload.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    let product = ProductId::new("warden-gw").context("product")?;
    let template = ImageHeader {
        product,
        version: SemanticVersion::new(1, 0, 0),
        security_counter: 1,
        build_id: BuildId([1; 16]),
        created_at: 0,
        payload_len: 0,
        payload_sha256: [0; 32],
    };
    let image = build_signed_image(template, &payload, &release, &cert)?;
    assert_eq!(image.len(), HEADER_LEN + PAYLOAD_LEN + TRAILER_LEN);
    let image_path = dir.join("bench.wim");
    let payload_path = dir.join("payload.bin");
    std::fs::write(&image_path, &image)?;
    std::fs::write(&payload_path, &payload)?;
    drop(image);
    drop(payload);

    let key_pem = dir.join("release.pem");
    let pub_pem = dir.join("release.pub.pem");
    let sig_der = dir.join("payload.sig.der");
    save_secret_key(&key_pem, &release)?;
    save_public_key(&pub_pem, &release.public_key())?;
    let signed = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&key_pem)
        .arg("-out")
        .arg(&sig_der)
        .arg(&payload_path)
        .status()
        .context("running openssl (is it installed?)")?;
    if !signed.success() {
        bail!("openssl dgst -sign failed: {signed}");
    }

    let roots = [RootKey::from_public_key(&root.public_key())?];
    let trust = ImageTrust {
        roots: &roots,
        revoked: &[],
        product,
        min_security_counter: 1,
    };
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    // Warm the page cache for both files, then alternate the two measurements.
    verify_file(&image_path, &trust, &mut |_| {})?;
    for _ in 0..RUNS {
        let start = Instant::now();
        verify_file(&image_path, &trust, &mut |_| {})?;
        ours.push(start.elapsed());

        let start = Instant::now();
        let output = Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&pub_pem)
            .arg("-signature")
            .arg(&sig_der)
            .arg(&payload_path)
            .output()?;
        theirs.push(start.elapsed());
        if !output.status.success()
            || !String::from_utf8_lossy(&output.stdout).contains("Verified OK")
        {
            bail!(
                "openssl verify failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    let ours = median(ours);
    let theirs = median(theirs);
    println!("image verification, 64 MiB payload, median of {RUNS} runs (page cache warm)");
    println!("| verifier | time | throughput |");
    println!("|---|---:|---:|");
    println!(
        "| warden-image (read + SHA-256 + chain + ECDSA P-256) | {:.1} ms | {:.0} MiB/s |",
        ours.as_secs_f64() * 1e3,
        mib_per_s(ours)
    );
    println!(
        "| openssl dgst -sha256 -verify (process incl. start-up) | {:.1} ms | {:.0} MiB/s |",
        theirs.as_secs_f64() * 1e3,
        mib_per_s(theirs)
    );
    println!(
        "ratio (ours / OpenSSL throughput): {:.2} (target >= 0.70)",
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("image-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
