//! Release tooling on files: build, sign, inspect and verify images.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use warden_image::build::{SignError, sign_header};
use warden_image::{
    BuildId, HEADER_LEN, ImageError, ImageHeader, ImageTrust, ProductId, SemanticVersion,
    TRAILER_LEN, VerifiedImage,
};
use warden_keychain::ReleaseKeyCert;
use warden_keychain::tooling::{ToolError, load_secret_key};

use crate::image_io::{ImageReadError, READ_CHUNK, verify_reader};
use crate::payload::{ListedEntry, PayloadError, archive_from_files, walk_archive};

/// A release-tooling step failed; the message names the file and the check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The payload could not be assembled.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// A key file could not be used.
    #[error(transparent)]
    Key(#[from] ToolError),
    /// Signing failed (certificate does not match the key, or not for images).
    #[error("{path}: {source}")]
    Sign {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        source: SignError,
    },
    /// The image is malformed or does not verify.
    #[error("{path}: {source}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// The check that failed.
        source: ImageError,
    },
    /// The image to sign already carries a signature.
    #[error("{0}: already signed (sign the unsigned image from `warden image build`)")]
    AlreadySigned(PathBuf),
    /// A file could not be replaced (names the step and the file).
    #[error(transparent)]
    File(#[from] warden_files::FileError),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What `build` puts in the header besides the payload.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The appliance binary (becomes `bin/warden`).
    pub binary: PathBuf,
    /// Default files (become `defaults/...`).
    pub defaults: Option<PathBuf>,
    /// Product.
    pub product: ProductId,
    /// Version.
    pub version: SemanticVersion,
    /// Security counter.
    pub security_counter: u64,
    /// Build ID (default: the first 16 bytes of the payload's SHA-256).
    pub build_id: Option<BuildId>,
    /// Creation time (default: `SOURCE_DATE_EPOCH`, else now).
    pub created_at: Option<u64>,
}

/// Write the concatenation of `parts` to `path` atomically and durably
/// (`warden_files::write_file_atomically`), readable by everyone (mode 0644: images and
/// records are not secret).
pub fn write_atomically(path: &Path, parts: &[&[u8]]) -> Result<(), ReleaseError> {
    let bytes = parts.concat();
    warden_files::write_file_atomically_with_mode(path, &bytes, 0o644)?;
    Ok(())
}

fn now_or_source_date_epoch() -> u64 {
    if let Some(epoch) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|value| value.parse().ok())
    {
        return epoch;
    }
    crate::clock::now_secs()
}

/// Build an unsigned image (header and payload) at `output`.
pub fn build_unsigned(request: &BuildRequest, output: &Path) -> Result<ImageHeader, ReleaseError> {
    let payload = archive_from_files(&request.binary, request.defaults.as_deref())?;
    let digest: [u8; 32] = Sha256::digest(&payload).into();
    let build_id = request.build_id.unwrap_or_else(|| {
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        BuildId(id)
    });
    let header = ImageHeader {
        product: request.product,
        version: request.version,
        security_counter: request.security_counter,
        build_id,
        created_at: request.created_at.unwrap_or_else(now_or_source_date_epoch),
        payload_len: payload.len() as u64,
        payload_sha256: digest,
    };
    if header.payload_len > warden_image::MAX_PAYLOAD_LEN {
        return Err(ReleaseError::Image {
            path: output.to_owned(),
            source: ImageError::TooLarge,
        });
    }
    write_atomically(output, &[&header.encode(), &payload])?;
    Ok(header)
}

fn read_header(file: &mut File, path: &Path) -> Result<(ImageHeader, u64), ReleaseError> {
    let len = file.metadata().map_err(io_at(path))?.len();
    let mut bytes = vec![0u8; HEADER_LEN.min(usize::try_from(len).unwrap_or(HEADER_LEN))];
    file.read_exact(&mut bytes).map_err(io_at(path))?;
    let header = ImageHeader::decode(&bytes).map_err(|source| ReleaseError::Image {
        path: path.to_owned(),
        source,
    })?;
    Ok((header, len))
}

/// Sign the unsigned image `input` with the release key in `key_file` (PKCS#8 PEM) and
/// its certificate `cert_file` (147 bytes, WKC1), writing the signed image to `output`.
/// The payload is hashed again (`progress` gets bytes done) so a corrupted unsigned
/// image is never signed.
pub fn sign_file(
    input: &Path,
    key_file: &Path,
    cert_file: &Path,
    output: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<ImageHeader, ReleaseError> {
    let key = load_secret_key(key_file)?;
    let cert = std::fs::read(cert_file).map_err(io_at(cert_file))?;
    let mut file = File::open(input).map_err(io_at(input))?;
    let (header, len) = read_header(&mut file, input)?;
    let image_error = |source| ReleaseError::Image {
        path: input.to_owned(),
        source,
    };
    if len == header.image_len() {
        return Err(ReleaseError::AlreadySigned(input.to_owned()));
    }
    if len != HEADER_LEN as u64 + header.payload_len {
        return Err(image_error(ImageError::LengthMismatch));
    }
    let mut payload = Vec::with_capacity(usize::try_from(header.payload_len).unwrap_or(0));
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; READ_CHUNK];
    loop {
        let read = file.read(&mut buffer).map_err(io_at(input))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        payload.extend_from_slice(&buffer[..read]);
        progress(payload.len() as u64);
    }
    if <[u8; 32]>::from(hasher.finalize()) != header.payload_sha256 {
        return Err(image_error(ImageError::PayloadHashMismatch));
    }
    let trailer = sign_header(&header, &key, &cert).map_err(|source| ReleaseError::Sign {
        path: cert_file.to_owned(),
        source,
    })?;
    write_atomically(output, &[&header.encode(), &payload, &trailer])?;
    Ok(header)
}

/// What `inspect` shows.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The header.
    pub header: ImageHeader,
    /// The measurement (SHA-256 of the header).
    pub measurement: [u8; 32],
    /// The certificate, if the image is signed.
    pub cert: Option<ReleaseKeyCert>,
    /// The payload's entries (if the payload is a readable archive).
    pub entries: Result<Vec<ListedEntry>, String>,
}

/// Decode an image's header, certificate and payload listing without verifying it.
pub fn inspect_file(path: &Path) -> Result<Inspection, ReleaseError> {
    let mut file = File::open(path).map_err(io_at(path))?;
    let (header, len) = read_header(&mut file, path)?;
    let cert = if len == header.image_len() {
        let mut trailer = [0u8; TRAILER_LEN];
        file.seek(SeekFrom::Start(len - TRAILER_LEN as u64))
            .map_err(io_at(path))?;
        file.read_exact(&mut trailer).map_err(io_at(path))?;
        Some(
            ReleaseKeyCert::decode(&trailer[..warden_keychain::CERT_LEN]).map_err(|error| {
                ReleaseError::Image {
                    path: path.to_owned(),
                    source: ImageError::Certificate(error),
                }
            })?,
        )
    } else if len == HEADER_LEN as u64 + header.payload_len {
        None
    } else {
        return Err(ReleaseError::Image {
            path: path.to_owned(),
            source: ImageError::LengthMismatch,
        });
    };
    file.seek(SeekFrom::Start(HEADER_LEN as u64))
        .map_err(io_at(path))?;
    let mut entries = Vec::new();
    let listing = walk_archive(
        &mut (&mut file).take(header.payload_len),
        &mut |entry, _| {
            entries.push(entry.clone());
            Ok(())
        },
    )
    .map(|()| entries)
    .map_err(|error| error.to_string());
    Ok(Inspection {
        measurement: header.digest(),
        header,
        cert,
        entries: listing,
    })
}

/// Fully verify a signed image file against `trust`; `progress` gets payload bytes done.
pub fn verify_file(
    path: &Path,
    trust: &ImageTrust<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifiedImage, ReleaseError> {
    let mut file = File::open(path).map_err(io_at(path))?;
    let len = file.metadata().map_err(io_at(path))?.len();
    verify_reader(&mut file, len, trust, progress).map_err(|error| match error {
        ImageReadError::Io(source) => ReleaseError::Io {
            path: path.to_owned(),
            source,
        },
        ImageReadError::Image(source) => ReleaseError::Image {
            path: path.to_owned(),
            source,
        },
    })
}
