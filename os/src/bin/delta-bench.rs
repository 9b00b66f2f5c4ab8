//! Delta sizes and apply time, beside xdelta3 and `zstd --patch-from`, in one run.
//!
//! `delta-bench NAME OLD NEW [NAME OLD NEW …]` wraps each pair of appliance binaries
//! into signed images (payload `bin/warden`, as `warden image build` makes it, with
//! versions 1.0.0 and 1.0.1) and prints, per pair: the new image,
//! the new image compressed (`zstd -19 --long=27`), Warden's delta (`WDL1`: bsdiff-style
//! records in raw deflate, signed), the same patch records compressed by `zstd -19`
//! instead of deflate (what a zstd build would give), `xdelta3 -9 -S djw`, and
//! `zstd -19 --long=27 --patch-from`; then the time to build and to apply Warden's
//! delta (streamed, as the device does), and the bytes over the link for a rollout to
//! 100 devices with and without deltas (computed from the sizes: today a device
//! downloads the `.wim` as it is). Needs `zstd` and
//! `xdelta3` on PATH (Debian packages of the same names). Run with the builder:
//! `cargo run --release -p warden-os --features delta-build --bin delta-bench -- …`.

use std::io::{Cursor, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use warden_image::build::build_signed_image;
use warden_image::{BuildId, ImageHeader, ImageTrust, ProductId, RootKey, SemanticVersion};
use warden_keychain::Purpose;
use warden_keychain::tooling::{SecretSigningKey, issue_release_cert};
use warden_os::delta::{apply_delta, build_delta, check_base, diff, verify_delta_reader};
use warden_os::payload::{ENTRY_POINT, PayloadEntry, encode_archive};

const DEVICES: u64 = 100;

fn run(tool: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(tool)
        .args(args)
        .status()
        .with_context(|| format!("running {tool} (is it installed?)"))?;
    if !status.success() {
        bail!("{tool} {args:?} failed: {status}");
    }
    Ok(())
}

fn size(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| path.display().to_string())?
        .len())
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / f64::from(1 << 20))
}

/// A signed image of `binary` as `bin/warden`, version 1.0.`patch`.
fn image_of(
    binary: &Path,
    patch: u32,
    release: &SecretSigningKey,
    cert: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let payload = encode_archive(vec![PayloadEntry {
        path: ENTRY_POINT.to_owned(),
        mode: 0o755,
        data: std::fs::read(binary).with_context(|| binary.display().to_string())?,
    }])?;
    let template = ImageHeader {
        product: ProductId::new("warden-gw").context("product")?,
        version: SemanticVersion::new(1, 0, patch),
        security_counter: u64::from(patch),
        build_id: BuildId([patch as u8; 16]),
        created_at: 1_790_000_000,
        payload_len: 0,
        payload_sha256: [0; 32],
    };
    Ok(build_signed_image(template, &payload, release, cert)?)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || !args.len().is_multiple_of(3) {
        bail!("usage: delta-bench NAME OLD-BINARY NEW-BINARY [NAME OLD NEW …]");
    }
    // Throwaway keys: the images and deltas are signed as in a release.
    let root = SecretSigningKey::generate()?;
    let release = SecretSigningKey::generate()?;
    let cert = issue_release_cert(&root, &release.public_key(), Purpose::IMAGE, 1)?;
    let roots = [RootKey::from_public_key(&root.public_key())?];
    let scratch = std::env::temp_dir().join(format!("delta-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let at = |name: &str| scratch.join(name);

    println!(
        "| change | image | image, zstd -19 | Warden delta (deflate) | same records, zstd -19 | xdelta3 -9 | zstd --patch-from | build | apply | 100 devices, full image | 100 devices, Warden delta |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for triple in args.chunks(3) {
        let name = &triple[0];
        let old = image_of(Path::new(&triple[1]), 0, &release, &cert)?;
        let new = image_of(Path::new(&triple[2]), 1, &release, &cert)?;
        let (old_path, new_path) = (at("old.wim"), at("new.wim"));
        std::fs::write(&old_path, &old)?;
        std::fs::write(&new_path, &new)?;
        let old_s = old_path.to_str().context("path")?;
        let new_s = new_path.to_str().context("path")?;

        let started = Instant::now();
        let (header, delta) = build_delta(&old, &new, &release, &cert)?;
        let build_time = started.elapsed();

        // Apply as the device does: verify the delta, check the base, stream the result.
        let trust = ImageTrust {
            roots: &roots,
            revoked: &[],
            product: header.product,
            min_security_counter: 0,
        };
        let started = Instant::now();
        let mut delta_reader = Cursor::new(&delta);
        verify_delta_reader(&mut delta_reader, delta.len() as u64, &trust)?;
        let mut base = Cursor::new(&old);
        check_base(&header, &mut base)?;
        let mut out = std::io::BufWriter::new(std::fs::File::create(at("result.wim"))?);
        apply_delta(&header, &mut delta_reader, &mut base, &mut out)?;
        out.flush()?;
        let apply_time = started.elapsed();
        if std::fs::read(at("result.wim"))? != new {
            bail!("{name}: the applied delta is not the new image");
        }

        let records = at("records");
        {
            let mut file = std::io::BufWriter::new(std::fs::File::create(&records)?);
            diff::write_patch(&old, &new, &mut file)?;
            file.flush()?;
        }
        let records_s = records.to_str().context("path")?;
        let zst = at("records.zst");
        run(
            "zstd",
            &[
                "-q",
                "-f",
                "-19",
                records_s,
                "-o",
                zst.to_str().context("path")?,
            ],
        )?;
        let full_zst = at("new.zst");
        run(
            "zstd",
            &[
                "-q",
                "-f",
                "-19",
                "--long=27",
                new_s,
                "-o",
                full_zst.to_str().context("path")?,
            ],
        )?;
        let xdelta = at("x.vcdiff");
        run(
            "xdelta3",
            &[
                "-f",
                "-e",
                "-9",
                "-S",
                "djw",
                "-s",
                old_s,
                new_s,
                xdelta.to_str().context("path")?,
            ],
        )?;
        let patch_from = at("p.zst");
        run(
            "zstd",
            &[
                "-q",
                "-f",
                "-19",
                "--long=27",
                &format!("--patch-from={old_s}"),
                new_s,
                "-o",
                patch_from.to_str().context("path")?,
            ],
        )?;
        let full_compressed = size(&full_zst)?;
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {:.1} s | {:.0} ms | {} | {} |",
            mib(new.len() as u64),
            mib(full_compressed),
            mib(delta.len() as u64),
            mib(size(&zst)? + header.delta_len() - header.patch_len),
            mib(size(&xdelta)?),
            mib(size(&patch_from)?),
            build_time.as_secs_f64(),
            apply_time.as_secs_f64() * 1000.0,
            mib(DEVICES * new.len() as u64),
            mib(DEVICES * delta.len() as u64),
        );
    }
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}
