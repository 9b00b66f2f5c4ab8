//! Delta images (`WDL1`): build a signed delta, verify it, apply it streamed.
//!
//! A delta turns one whole signed image file (its *base*, named by SHA-256) into
//! another (its *result*, also named by SHA-256). It is signed by a release key like an
//! image, but what it produces is trusted only as an image: the device verifies the
//! result in full ([`crate::boot::BootMonitor::install_delta`]) before it may boot.
//! Why this engine (bsdiff-style records, raw deflate): BENCHMARKS.md, *Delta images*.

#[cfg(feature = "delta-build")]
pub mod diff;
mod error;
pub mod format;
pub mod patch;

use std::io::{self, Read, SeekFrom, Write};

use flate2::read::DeflateDecoder;
use sha2::{Digest, Sha256};
use warden_image::{ImageTrust, TRAILER_LEN};
#[cfg(feature = "delta-build")]
use {
    flate2::Compression,
    flate2::write::DeflateEncoder,
    std::path::Path,
    warden_image::ImageHeader,
    warden_image::build::check_release_cert,
    warden_keychain::tooling::{SecretSigningKey, load_secret_key, sign},
};

pub use error::DeltaError;
pub use format::{DELTA_HEADER_LEN, DELTA_MAGIC, DeltaHeader, verify_delta_header};
pub use patch::PatchError;

use crate::file_system::ReadSeek;
use crate::image_io::READ_CHUNK;

fn io_on(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> DeltaError {
    let what = what.to_string();
    move |source| DeltaError::Io { what, source }
}

/// Compress a patch for `base` → `target` (the delta's body).
#[cfg(feature = "delta-build")]
pub fn compressed_patch(base: &[u8], target: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::best());
    diff::write_patch(base, target, &mut encoder)?;
    encoder.finish()
}

#[cfg(feature = "delta-build")]
fn signed_image_header(path: &Path, bytes: &[u8]) -> Result<ImageHeader, DeltaError> {
    let input = |reason: String| DeltaError::Input {
        path: path.to_owned(),
        reason,
    };
    let header = ImageHeader::decode(bytes).map_err(|error| input(error.to_string()))?;
    if header.image_len() != bytes.len() as u64 {
        return Err(input(
            "not a signed image (sign it first: `warden image sign`)".to_owned(),
        ));
    }
    Ok(header)
}

/// Build the delta turning the signed image `base` into the signed image `target`, signed
/// with `release_key` and its certificate `cert` (147 bytes, WKC1). Returns the header
/// and the whole delta file.
#[cfg(feature = "delta-build")]
pub fn build_delta(
    base: &[u8],
    target: &[u8],
    release_key: &SecretSigningKey,
    cert: &[u8],
) -> Result<(DeltaHeader, Vec<u8>), DeltaError> {
    check_release_cert(release_key, cert).map_err(|source| DeltaError::Sign {
        path: "<certificate>".into(),
        source,
    })?;
    let base_header = signed_image_header(Path::new("<base image>"), base)?;
    let target_header = signed_image_header(Path::new("<new image>"), target)?;
    if base_header.product != target_header.product {
        return Err(DeltaError::Input {
            path: "<new image>".into(),
            reason: format!(
                "product {} differs from the base's {}",
                target_header.product, base_header.product
            ),
        });
    }
    let patch = compressed_patch(base, target).map_err(io_on("compressing the patch"))?;
    let header = DeltaHeader {
        product: target_header.product,
        base_sha256: Sha256::digest(base).into(),
        base_len: base.len() as u64,
        result_sha256: Sha256::digest(target).into(),
        result_len: target.len() as u64,
        result_version: target_header.version,
        result_security_counter: target_header.security_counter,
        patch_len: patch.len() as u64,
        patch_sha256: Sha256::digest(&patch).into(),
    };
    let signature = sign(release_key, format::DELTA_DOMAIN, &header.digest())?;
    Ok((
        header,
        [&header.encode()[..], &patch, cert, &signature].concat(),
    ))
}

/// [`build_delta`] on files: the signed images `from` and `to`, the release key in
/// `key_file` (PKCS#8 PEM) and its certificate `cert_file`, as `warden image sign`
/// takes them; the delta is written atomically to `output`.
#[cfg(feature = "delta-build")]
pub fn build_delta_file(
    from: &Path,
    to: &Path,
    key_file: &Path,
    cert_file: &Path,
    output: &Path,
) -> Result<DeltaHeader, DeltaError> {
    let key = load_secret_key(key_file)?;
    let cert = std::fs::read(cert_file).map_err(io_on(cert_file.display()))?;
    let base = std::fs::read(from).map_err(io_on(from.display()))?;
    let target = std::fs::read(to).map_err(io_on(to.display()))?;
    let (header, bytes) = build_delta(&base, &target, &key, &cert).map_err(|error| {
        // Name the files the placeholders stood for.
        match error {
            DeltaError::Input { path, reason } => DeltaError::Input {
                path: if path == Path::new("<base image>") {
                    from.to_owned()
                } else {
                    to.to_owned()
                },
                reason,
            },
            DeltaError::Sign { source, .. } => DeltaError::Sign {
                path: cert_file.to_owned(),
                source,
            },
            other => other,
        }
    })?;
    warden_files::write_file_atomically_with_mode(output, &bytes, 0o644).map_err(|error| {
        DeltaError::Io {
            what: output.display().to_string(),
            source: io::Error::other(error),
        }
    })?;
    Ok(header)
}

/// Read a delta's header from the start of `reader` (no verification).
pub fn read_delta_header(reader: &mut dyn ReadSeek) -> Result<DeltaHeader, DeltaError> {
    let mut bytes = [0u8; DELTA_HEADER_LEN];
    reader
        .seek(SeekFrom::Start(0))
        .and_then(|_| reader.read_exact(&mut bytes))
        .map_err(|error| match error.kind() {
            io::ErrorKind::UnexpectedEof => {
                DeltaError::Malformed("shorter than the 164-byte header")
            }
            _ => DeltaError::Io {
                what: "reading the delta".to_owned(),
                source: error,
            },
        })?;
    DeltaHeader::decode(&bytes).map_err(DeltaError::from)
}

/// Whether the file starts like a delta (its magic), not an image.
pub fn looks_like_delta(reader: &mut dyn ReadSeek) -> io::Result<bool> {
    let mut magic = [0u8; 4];
    reader.seek(SeekFrom::Start(0))?;
    let is_delta = match reader.read_exact(&mut magic) {
        Ok(()) => magic == DELTA_MAGIC,
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => false,
        Err(error) => return Err(error),
    };
    reader.seek(SeekFrom::Start(0))?;
    Ok(is_delta)
}

/// Fully verify a delta of `len` bytes: framing, product, the result's counter, the
/// release key's chain, the signature, then the patch's SHA-256 (streamed).
pub fn verify_delta_reader(
    reader: &mut dyn ReadSeek,
    len: u64,
    trust: &ImageTrust<'_>,
) -> Result<DeltaHeader, DeltaError> {
    let header = read_delta_header(reader)?;
    if header.delta_len() != len {
        return Err(DeltaError::Malformed(
            "file length does not match the header's patch length",
        ));
    }
    let mut trailer = [0u8; TRAILER_LEN];
    reader
        .seek(SeekFrom::Start(len - TRAILER_LEN as u64))
        .and_then(|_| reader.read_exact(&mut trailer))
        .map_err(io_on("reading the delta's trailer"))?;
    verify_delta_header(&header, &trailer, trust)?;
    reader
        .seek(SeekFrom::Start(DELTA_HEADER_LEN as u64))
        .map_err(io_on("reading the delta's patch"))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; READ_CHUNK];
    let mut patch = reader.take(header.patch_len);
    loop {
        let read = patch
            .read(&mut buffer)
            .map_err(io_on("reading the delta's patch"))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    if <[u8; 32]>::from(hasher.finalize()) != header.patch_sha256 {
        return Err(DeltaError::PatchHashMismatch);
    }
    Ok(header)
}

/// SHA-256 of everything `reader` yields.
pub fn sha256_of(reader: &mut dyn Read) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; READ_CHUNK];
    loop {
        let read = reader.read(&mut buffer)?;
        if read == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buffer[..read]);
    }
}

/// Check that `base` is the delta's base (whole-file SHA-256 and size).
pub fn check_base(header: &DeltaHeader, base: &mut dyn ReadSeek) -> Result<(), DeltaError> {
    base.seek(SeekFrom::Start(0))
        .map_err(io_on("reading the installed image"))?;
    let actual = sha256_of(base).map_err(io_on("reading the installed image"))?;
    if actual != header.base_sha256 {
        return Err(DeltaError::BaseMismatch {
            expected: hex::encode(header.base_sha256),
            actual: hex::encode(actual),
        });
    }
    Ok(())
}

/// A writer that hashes and counts what passes through.
struct HashingWriter<'w> {
    inner: &'w mut dyn Write,
    hasher: Sha256,
    written: u64,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        self.written += written as u64;
        Ok(written)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Apply a verified delta (`header`, from [`verify_delta_reader`]) read from `delta` to
/// `base` (already checked with [`check_base`]), streaming the result into `out`; the
/// result must be exactly the signed size and SHA-256. Memory stays bounded: the patch
/// is inflated and applied in fixed-size steps.
pub fn apply_delta(
    header: &DeltaHeader,
    delta: &mut dyn ReadSeek,
    base: &mut dyn ReadSeek,
    out: &mut dyn Write,
) -> Result<(), DeltaError> {
    delta
        .seek(SeekFrom::Start(DELTA_HEADER_LEN as u64))
        .map_err(io_on("reading the delta's patch"))?;
    let mut patch = DeflateDecoder::new(io::BufReader::new(delta.take(header.patch_len)));
    let mut hashing = HashingWriter {
        inner: out,
        hasher: Sha256::new(),
        written: 0,
    };
    let mut base = io::BufReader::with_capacity(64 << 10, base);
    patch::apply_patch(
        &mut patch,
        &mut base,
        header.base_len,
        header.result_len,
        &mut hashing,
    )?;
    hashing.flush().map_err(io_on("writing the result"))?;
    let actual: [u8; 32] = hashing.hasher.finalize().into();
    if actual != header.result_sha256 || hashing.written != header.result_len {
        return Err(DeltaError::ResultMismatch {
            expected: hex::encode(header.result_sha256),
            actual: hex::encode(actual),
            actual_len: hashing.written,
        });
    }
    Ok(())
}
