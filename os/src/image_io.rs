//! Streaming verification of images read from files or any seekable reader.

use std::io::{self, SeekFrom};

use warden_image::{
    HEADER_LEN, ImageError, ImageTrust, TRAILER_LEN, VerifiedHeader, VerifiedImage, verify_header,
};

use crate::file_system::ReadSeek;

/// Read buffer for hashing payloads: large enough that syscalls do not matter.
pub const READ_CHUNK: usize = 1 << 20;

/// Reading or verifying an image failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageReadError {
    /// The reader failed.
    #[error("reading the image: {0}")]
    Io(#[from] io::Error),
    /// The image did not verify.
    #[error("{0}")]
    Image(#[from] ImageError),
}

/// Read the header and trailer of an image of `len` bytes and verify them.
pub fn verify_signed_header(
    reader: &mut dyn ReadSeek,
    len: u64,
    trust: &ImageTrust<'_>,
) -> Result<VerifiedHeader, ImageReadError> {
    if len < (HEADER_LEN + TRAILER_LEN) as u64 {
        return Err(ImageError::Truncated.into());
    }
    let mut header = [0u8; HEADER_LEN];
    reader.seek(SeekFrom::Start(0))?;
    reader.read_exact(&mut header)?;
    // Decode first so a wrong length is reported before the trailer is read.
    let decoded = warden_image::ImageHeader::decode(&header)?;
    if decoded.image_len() != len {
        return Err(ImageError::LengthMismatch.into());
    }
    let mut trailer = [0u8; TRAILER_LEN];
    reader.seek(SeekFrom::Start(len - TRAILER_LEN as u64))?;
    reader.read_exact(&mut trailer)?;
    Ok(verify_header(&header, &trailer, len, trust)?)
}

/// Fully verify an image from a reader: header and trailer, then the payload streamed in
/// [`READ_CHUNK`] pieces; `progress` gets the payload bytes hashed so far.
pub fn verify_reader(
    reader: &mut dyn ReadSeek,
    len: u64,
    trust: &ImageTrust<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifiedImage, ImageReadError> {
    let verified = verify_signed_header(reader, len, trust)?;
    let mut check = verified.payload_check();
    reader.seek(SeekFrom::Start(HEADER_LEN as u64))?;
    let mut remaining = verified.header.payload_len;
    let mut buffer = vec![0u8; READ_CHUNK];
    while remaining > 0 {
        let want = buffer
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let read = reader.read(&mut buffer[..want])?;
        if read == 0 {
            return Err(ImageError::PayloadTooShort.into());
        }
        check.update(&buffer[..read])?;
        remaining -= read as u64;
        progress(check.bytes_seen());
    }
    Ok(check.finish()?)
}
