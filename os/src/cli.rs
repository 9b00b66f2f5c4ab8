//! `warden image build|sign|inspect|verify|delta`: the clap subcommands and their output.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use warden_image::{BuildId, ImageTrust, KeyId, ProductId, RootKey, SemanticVersion};
use warden_keychain::tooling::load_public_key;

use crate::release::{self, BuildRequest, ReleaseError};
use hex::encode as hex;

/// Payloads at least this large get a progress line.
const PROGRESS_THRESHOLD: u64 = 16 << 20;

/// Release tooling for firmware images.
#[derive(Debug, clap::Subcommand)]
#[non_exhaustive]
pub enum ImageCommand {
    /// Build an unsigned image from the appliance binary and its default files.
    Build {
        /// The appliance binary (stored as `bin/warden`).
        #[arg(long)]
        binary: PathBuf,
        /// A directory of default files (stored under `defaults/`).
        #[arg(long)]
        defaults: Option<PathBuf>,
        /// Product identifier (up to 16 printable ASCII characters).
        #[arg(long)]
        product: String,
        /// Semantic version, `MAJOR.MINOR.PATCH`.
        #[arg(long)]
        version: SemanticVersion,
        /// Anti-rollback security counter.
        #[arg(long)]
        security_counter: u64,
        /// Build ID, 32 hex digits (default: from the payload's SHA-256).
        #[arg(long)]
        build_id: Option<String>,
        /// Creation time, Unix seconds (default: SOURCE_DATE_EPOCH, else now).
        #[arg(long)]
        created_at: Option<u64>,
        /// Where to write the unsigned image.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Sign an unsigned image with a release key and its certificate.
    Sign {
        /// The unsigned image.
        input: PathBuf,
        /// The release key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// The release key's certificate (147 bytes, WKC1).
        #[arg(long)]
        cert: PathBuf,
        /// Where to write the signed image.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Print an image's header, signer and payload listing (nothing is verified).
    Inspect {
        /// The image.
        image: PathBuf,
    },
    /// Verify an image as a device would: chain, product, counter, signature, payload.
    Verify {
        /// The image.
        image: PathBuf,
        /// A vendor root public key (SPKI PEM); repeat for several.
        #[arg(long = "root", required = true)]
        roots: Vec<PathBuf>,
        /// A revoked key ID (16 hex digits); repeat for several.
        #[arg(long)]
        revoked: Vec<String>,
        /// The device's product (default: accept the image's own, with a note).
        #[arg(long)]
        product: Option<String>,
        /// The device's anti-rollback counter.
        #[arg(long, default_value_t = 0)]
        min_counter: u64,
    },
    /// Build a signed delta that turns the signed image FROM into the signed image TO
    /// (a device applies it to its installed FROM and verifies the result as TO). Needs
    /// a build with the `delta-build` feature (the shipped binary only applies deltas).
    Delta {
        /// The base image (what devices run now).
        #[arg(long)]
        from: PathBuf,
        /// The new image.
        #[arg(long)]
        to: PathBuf,
        /// The release key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// The release key's certificate (147 bytes, WKC1).
        #[arg(long)]
        cert: PathBuf,
        /// Where to write the delta (`.wdelta`).
        #[arg(short, long)]
        output: PathBuf,
    },
}

fn parse_product(text: &str) -> anyhow::Result<ProductId> {
    ProductId::new(text)
        .with_context(|| format!("product {text:?} is not 1 to 16 printable ASCII characters"))
}

/// Exactly `N` bytes from `2 * N` hex digits (either case).
fn parse_hex<const N: usize>(text: &str, what: &str) -> anyhow::Result<[u8; N]> {
    let mut bytes = [0_u8; N];
    hex::decode_to_slice(text, &mut bytes)
        .with_context(|| format!("{what} {text:?} is not {} hex digits", 2 * N))?;
    Ok(bytes)
}

/// A one-line percentage on a terminal's stderr, redrawn when the percentage changes;
/// silent when stderr is not a terminal (logs and pipes get the result line only).
struct Progress {
    message: &'static str,
    total: u64,
    shown: Option<u64>,
    visible: bool,
}

impl Progress {
    fn new(total: u64, message: &'static str) -> Self {
        Self {
            message,
            total,
            shown: None,
            visible: total >= PROGRESS_THRESHOLD && std::io::stderr().is_terminal(),
        }
    }

    fn set_position(&mut self, done: u64) {
        if !self.visible {
            return;
        }
        let percent = done.min(self.total) * 100 / self.total.max(1);
        if self.shown == Some(percent) {
            return;
        }
        self.shown = Some(percent);
        let mut stderr = std::io::stderr().lock();
        let _ = write!(
            stderr,
            "\r{} {percent:>3}% ({} of {} MiB)",
            self.message,
            done >> 20,
            self.total >> 20
        );
        let _ = stderr.flush();
    }

    fn finish_and_clear(&self) {
        if self.visible && self.shown.is_some() {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
    }
}

fn payload_len_of(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |meta| meta.len())
}

impl ImageCommand {
    /// Run the command; refusals print what failed and return a failure exit code.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            ImageCommand::Build {
                binary,
                defaults,
                product,
                version,
                security_counter,
                build_id,
                created_at,
                output,
            } => {
                let request = BuildRequest {
                    binary,
                    defaults,
                    product: parse_product(&product)?,
                    version,
                    security_counter,
                    build_id: build_id
                        .map(|id| parse_hex::<16>(&id, "build ID").map(BuildId))
                        .transpose()?,
                    created_at,
                };
                let header = release::build_unsigned(&request, &output)?;
                println!(
                    "built unsigned image {}: {} {} counter {}, payload {} bytes, sha256 {}",
                    output.display(),
                    header.product,
                    header.version,
                    header.security_counter,
                    header.payload_len,
                    hex(header.payload_sha256)
                );
                Ok(ExitCode::SUCCESS)
            }
            ImageCommand::Sign {
                input,
                key,
                cert,
                output,
            } => {
                let mut bar = Progress::new(payload_len_of(&input), "hashing");
                let header = release::sign_file(&input, &key, &cert, &output, &mut |done| {
                    bar.set_position(done)
                });
                bar.finish_and_clear();
                let header = header?;
                println!(
                    "signed {}: {} {} counter {}, measurement {}",
                    output.display(),
                    header.product,
                    header.version,
                    header.security_counter,
                    hex(header.digest())
                );
                Ok(ExitCode::SUCCESS)
            }
            ImageCommand::Delta {
                from,
                to,
                key,
                cert,
                output,
            } => {
                #[cfg(not(feature = "delta-build"))]
                {
                    let _ = (from, to, key, cert, output);
                    anyhow::bail!(
                        "`warden image delta` needs the `delta-build` feature: this build applies \
                         deltas but does not build them (release tooling: \
                         `cargo build -p warden --features delta-build`)"
                    );
                }
                #[cfg(feature = "delta-build")]
                {
                    let header = crate::delta::build_delta_file(&from, &to, &key, &cert, &output)?;
                    println!(
                        "delta {}: {} bytes for {} {} ({} bytes), base sha256 {}, result sha256 {}",
                        output.display(),
                        header.delta_len(),
                        header.product,
                        header.result_version,
                        header.result_len,
                        hex(header.base_sha256),
                        hex(header.result_sha256)
                    );
                    Ok(ExitCode::SUCCESS)
                }
            }
            ImageCommand::Inspect { image } => {
                let inspection = release::inspect_file(&image)?;
                let header = inspection.header;
                println!("image:            {}", image.display());
                println!("product:          {}", header.product);
                println!("version:          {}", header.version);
                println!("security counter: {}", header.security_counter);
                println!("build id:         {}", header.build_id);
                println!("created at:       {} (unix seconds)", header.created_at);
                println!(
                    "payload:          {} bytes, sha256 {}",
                    header.payload_len,
                    hex(header.payload_sha256)
                );
                println!("measurement:      {}", hex(inspection.measurement));
                match inspection.cert {
                    Some(cert) => println!(
                        "signed by:        release key {} (certificate serial {}, purposes {:?}) issued by root {}",
                        cert.release_key_id(),
                        cert.serial,
                        cert.purposes,
                        cert.issuer
                    ),
                    None => println!("signed by:        (unsigned)"),
                }
                match inspection.entries {
                    Ok(entries) => {
                        for entry in entries {
                            println!("  {:o} {:>12} {}", entry.mode, entry.size, entry.path);
                        }
                    }
                    Err(error) => println!("payload listing:  {error}"),
                }
                Ok(ExitCode::SUCCESS)
            }
            ImageCommand::Verify {
                image,
                roots,
                revoked,
                product,
                min_counter,
            } => {
                let roots = roots
                    .iter()
                    .map(|path| {
                        let key = load_public_key(path)?;
                        RootKey::from_public_key(&key)
                            .with_context(|| format!("root key {}", path.display()))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let revoked = revoked
                    .iter()
                    .map(|id| parse_hex::<8>(id, "revoked key ID").map(KeyId))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let product = match product {
                    Some(product) => parse_product(&product)?,
                    None => {
                        let own = release::inspect_file(&image)?.header.product;
                        eprintln!("note: no --product given; accepting the image's own ({own})");
                        own
                    }
                };
                let trust = ImageTrust {
                    roots: &roots,
                    revoked: &revoked,
                    product,
                    min_security_counter: min_counter,
                };
                let mut bar = Progress::new(payload_len_of(&image), "verifying");
                let result =
                    release::verify_file(&image, &trust, &mut |done| bar.set_position(done));
                bar.finish_and_clear();
                match result {
                    Ok(verified) => {
                        println!(
                            "OK {}: {} {} counter {}, signed by release key {} of root {}, measurement {}",
                            image.display(),
                            verified.header().product,
                            verified.header().version,
                            verified.header().security_counter,
                            verified.signer(),
                            verified.issuer(),
                            hex(verified.measurement())
                        );
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(error @ ReleaseError::Image { .. }) => {
                        eprintln!("REFUSED {error}");
                        Ok(ExitCode::FAILURE)
                    }
                    Err(other) => Err(other.into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_out_and_exact_length_in() {
        assert_eq!(hex([0x00, 0xab, 0x7f]), "00ab7f");
        assert_eq!(
            parse_hex::<3>("00AB7f", "ID").ok(),
            Some([0x00, 0xab, 0x7f])
        );
        assert!(parse_hex::<3>("00ab7", "ID").is_err());
        assert!(parse_hex::<2>("+1ab", "ID").is_err());
        assert!(parse_hex::<2>("zzab", "ID").is_err());
        assert!(parse_hex::<1>("é", "ID").is_err());
        let error = parse_hex::<2>("zzab", "build ID").expect_err("not hex");
        assert_eq!(error.to_string(), "build ID \"zzab\" is not 4 hex digits");
    }
}
