//! Delta sizes and apply time, beside xdelta3 and `zstd --patch-from`, in one run.
//!
//! `delta-bench NAME OLD.wim NEW.wim [NAME OLD NEW …]` prints, per pair: the new image,
//! the new image compressed (`zstd -19 --long=27`), Warden's delta (`WDL1`: bsdiff-style
//! records in raw deflate, signed), the same patch records compressed by `zstd -19`
//! instead of deflate (what a zstd build would give), `xdelta3 -9 -S djw`, and
//! `zstd -19 --long=27 --patch-from`; then the time to build and to apply Warden's
//! delta (streamed, as the device does), and the bytes over the link for a rollout to
//! 100 devices with and without deltas (computed from the sizes: today a device
//! downloads the `.wim` as it is). Needs `zstd` and
//! `xdelta3` on PATH (Debian packages of the same names).

use std::io::{Cursor, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use warden_image::{ImageTrust, RootKey};
use warden_keychain::Purpose;
use warden_keychain::tooling::{SecretSigningKey, issue_release_cert};
use warden_os::delta::{apply_delta, build_delta, check_base, diff, verify_delta_reader};

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

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.len() % 3 != 0 {
        bail!("usage: delta-bench NAME OLD.wim NEW.wim [NAME OLD.wim NEW.wim …]");
    }
    // The images' own signatures do not matter here: the delta is re-signed by a
    // throwaway release key, and the apply is timed without the image verification.
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
        let (name, old_path, new_path) = (&triple[0], Path::new(&triple[1]), Path::new(&triple[2]));
        let old = std::fs::read(old_path).with_context(|| triple[1].clone())?;
        let new = std::fs::read(new_path).with_context(|| triple[2].clone())?;
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
