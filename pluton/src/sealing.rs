//! Sealed storage: XChaCha20-Poly1305 under a key derived inside pluton.
//!
//! Sealed blob, format version 1:
//!
//! | offset | length | field |
//! |---:|---:|---|
//! | 0 | 4 | magic `b"WSB1"` |
//! | 4 | 1 | format version `1` |
//! | 5 | 1 | register mask (bit *i* = bound to measurement register *i*) |
//! | 6 | 24 | XChaCha20 nonce (random) |
//! | 30 | n | ciphertext |
//! | 30 + n | 16 | Poly1305 tag |
//!
//! Key: HKDF-SHA256(salt `"warden-pluton-seal-v1"`, IKM = the device seed,
//! info `"sealing key"`). Associated data: `"warden-seal-v1\0"`, the 6-byte header, the
//! owner, the label length (u8) and label, then the current value of every register in
//! the mask. The owner is the caller's role: `ff ff ff ff` then the role's wire index
//! (u8); for a caller of the transitional `unseparated` role it is its uid (u32 LE, as
//! before roles existed; uid `0xffffffff` is not a valid uid and is refused). A blob therefore opens only on the same device (seed),
//! for the same owner and label, and with the same measured boot state for the bound
//! registers.

use chacha20poly1305::AeadInOut;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand_core::TryCryptoRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::PlutonError;
use crate::registers::{REGISTER_COUNT, Sha256Digest};
use crate::roles::Role;

/// Largest plaintext pluton seals.
pub const MAX_SEAL_PLAINTEXT: usize = 1024;
/// Longest sealing label.
pub const MAX_SEAL_LABEL: usize = 32;
/// Bytes a sealed blob adds to its plaintext.
pub const SEAL_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Largest sealed blob of this format.
const MAX_BLOB_LEN: usize = MAX_SEAL_PLAINTEXT + SEAL_OVERHEAD;
/// Room a backend may add around a blob of this format: the TPM 2.0 backend wraps it
/// with the TPM's sealed object holding its key (see the README's "TPM 2.0 backend").
pub const SEALED_ENVELOPE_ROOM: usize = 320;
/// Largest sealed blob any backend returns.
pub const MAX_SEALED_LEN: usize = MAX_BLOB_LEN + SEALED_ENVELOPE_ROOM;

const MAGIC: &[u8; 4] = b"WSB1";
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 6 + NONCE_LEN;
const TAG_LEN: usize = 16;

/// Whose namespace a blob is sealed in: the caller's role as the server established it
/// (never from the request), so one compartment cannot open another's blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealOwner {
    /// A role's namespace.
    Role(Role),
    /// An `unseparated` caller's uid (`SO_PEERCRED`); never `u32::MAX`.
    Uid(u32),
}

impl SealOwner {
    /// The owner's bytes in the associated data (see the module table).
    fn encoded(self) -> ([u8; 5], usize) {
        match self {
            Self::Role(role) => ([0xff, 0xff, 0xff, 0xff, role.index() as u8], 5),
            Self::Uid(uid) => {
                let bytes = uid.to_le_bytes();
                ([bytes[0], bytes[1], bytes[2], bytes[3], 0], 4)
            }
        }
    }
}

/// Who is sealing and under which name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SealContext<'a> {
    pub(crate) owner: SealOwner,
    pub(crate) label: &'a [u8],
}

fn sealing_cipher(device_seed: &[u8; 32]) -> XChaCha20Poly1305 {
    let mut key = Zeroizing::new([0u8; 32]);
    let hkdf = Hkdf::<Sha256>::new(Some(b"warden-pluton-seal-v1"), device_seed);
    // 32 bytes is always a valid HKDF-SHA256 output length.
    if hkdf.expand(b"sealing key", key.as_mut()).is_err() {
        key.fill(0);
    }
    XChaCha20Poly1305::new(&(*key).into())
}

/// The associated data, hashed so its size stays fixed whatever the label and mask.
fn associated_data(
    header: &[u8],
    context: SealContext<'_>,
    registers: &[Sha256Digest; REGISTER_COUNT],
) -> Result<[u8; 32], PlutonError> {
    if context.label.is_empty() || context.label.len() > MAX_SEAL_LABEL {
        return Err(PlutonError::InvalidLabel);
    }
    let (owner, owner_len) = context.owner.encoded();
    if context.owner == SealOwner::Uid(u32::MAX) {
        return Err(PlutonError::NotPermitted);
    }
    let mask = header[5];
    let mut hasher = Sha256::new()
        .chain_update(b"warden-seal-v1\0")
        .chain_update(&header[..6])
        .chain_update(&owner[..owner_len])
        .chain_update([context.label.len() as u8])
        .chain_update(context.label);
    for (index, value) in registers.iter().enumerate() {
        if mask & (1 << index) != 0 {
            hasher.update(value);
        }
    }
    Ok(hasher.finalize().into())
}

/// Seal `plaintext` into `out`, returning the blob's length.
pub(crate) fn seal<R: TryCryptoRng + ?Sized>(
    device_seed: &[u8; 32],
    rng: &mut R,
    context: SealContext<'_>,
    register_mask: u8,
    registers: &[Sha256Digest; REGISTER_COUNT],
    plaintext: &[u8],
    out: &mut [u8],
) -> Result<usize, PlutonError> {
    if plaintext.len() > MAX_SEAL_PLAINTEXT {
        return Err(PlutonError::SealInputTooLarge);
    }
    let total = plaintext.len() + SEAL_OVERHEAD;
    let out = out.get_mut(..total).ok_or(PlutonError::BufferTooSmall)?;
    out[..4].copy_from_slice(MAGIC);
    out[4] = VERSION;
    out[5] = register_mask;
    rng.try_fill_bytes(&mut out[6..HEADER_LEN])
        .map_err(|_| PlutonError::RandomFailed)?;
    let aad = associated_data(&out[..HEADER_LEN], context, registers)?;
    let nonce =
        XNonce::try_from(&out[6..HEADER_LEN]).map_err(|_| PlutonError::SealedBlobMalformed)?;
    let (header_and_body, tag_slot) = out.split_at_mut(total - TAG_LEN);
    let body = &mut header_and_body[HEADER_LEN..];
    body.copy_from_slice(plaintext);
    let tag = sealing_cipher(device_seed)
        .encrypt_inout_detached(&nonce, &aad, body.into())
        .map_err(|_| PlutonError::SealInputTooLarge)?;
    tag_slot.copy_from_slice(&tag);
    Ok(total)
}

/// Open a sealed blob into `out`, returning the plaintext length.
pub(crate) fn unseal(
    device_seed: &[u8; 32],
    context: SealContext<'_>,
    registers: &[Sha256Digest; REGISTER_COUNT],
    sealed: &[u8],
    out: &mut [u8],
) -> Result<usize, PlutonError> {
    if sealed.len() < SEAL_OVERHEAD || sealed.len() > MAX_BLOB_LEN {
        return Err(PlutonError::SealedBlobMalformed);
    }
    if &sealed[..4] != MAGIC || sealed[4] != VERSION {
        return Err(PlutonError::SealedBlobMalformed);
    }
    let length = sealed.len() - SEAL_OVERHEAD;
    let out = out.get_mut(..length).ok_or(PlutonError::BufferTooSmall)?;
    let aad = associated_data(&sealed[..HEADER_LEN], context, registers)?;
    let nonce =
        XNonce::try_from(&sealed[6..HEADER_LEN]).map_err(|_| PlutonError::SealedBlobMalformed)?;
    let tag_bytes = &sealed[sealed.len() - TAG_LEN..];
    let tag =
        chacha20poly1305::Tag::try_from(tag_bytes).map_err(|_| PlutonError::SealedBlobMalformed)?;
    out.copy_from_slice(&sealed[HEADER_LEN..sealed.len() - TAG_LEN]);
    if sealing_cipher(device_seed)
        .decrypt_inout_detached(&nonce, &aad, (&mut *out).into(), &tag)
        .is_err()
    {
        out.fill(0);
        return Err(PlutonError::UnsealFailed);
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct CountingRng(u8);

    impl rand_core::TryRng for CountingRng {
        type Error = core::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            self.0 = self.0.wrapping_add(1);
            Ok(u32::from(self.0))
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            self.0 = self.0.wrapping_add(1);
            Ok(u64::from(self.0))
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            for byte in dst {
                self.0 = self.0.wrapping_add(1);
                *byte = self.0;
            }
            Ok(())
        }
    }
    impl rand_core::TryCryptoRng for CountingRng {}

    const SEED: [u8; 32] = [9u8; 32];
    const CONTEXT: SealContext<'static> = SealContext {
        owner: SealOwner::Uid(1000),
        label: b"link-session",
    };

    fn sealed(mask: u8, registers: &[Sha256Digest; REGISTER_COUNT]) -> ([u8; 64], usize) {
        let mut out = [0u8; 64];
        let len = seal(
            &SEED,
            &mut CountingRng(0),
            CONTEXT,
            mask,
            registers,
            b"secret",
            &mut out,
        )
        .expect("seal");
        (out, len)
    }

    #[test]
    fn round_trip_and_binding() {
        let registers = [[0u8; 32]; REGISTER_COUNT];
        let (blob, len) = sealed(0b10, &registers);
        assert_eq!(len, 6 + SEAL_OVERHEAD);
        let mut out = [0u8; 16];
        let n = unseal(&SEED, CONTEXT, &registers, &blob[..len], &mut out).expect("unseal");
        assert_eq!(&out[..n], b"secret");

        let other_owner = SealContext {
            owner: SealOwner::Uid(1001),
            ..CONTEXT
        };
        assert_eq!(
            unseal(&SEED, other_owner, &registers, &blob[..len], &mut out),
            Err(PlutonError::UnsealFailed)
        );
        let other_label = SealContext {
            label: b"other",
            ..CONTEXT
        };
        assert_eq!(
            unseal(&SEED, other_label, &registers, &blob[..len], &mut out),
            Err(PlutonError::UnsealFailed)
        );
        assert_eq!(
            unseal(&[8u8; 32], CONTEXT, &registers, &blob[..len], &mut out),
            Err(PlutonError::UnsealFailed)
        );

        // Bound register 1 changed: refused. Unbound register 0 changed: still opens.
        let mut changed = registers;
        changed[1][0] = 1;
        assert_eq!(
            unseal(&SEED, CONTEXT, &changed, &blob[..len], &mut out),
            Err(PlutonError::UnsealFailed)
        );
        let mut unbound = registers;
        unbound[0][0] = 1;
        assert!(unseal(&SEED, CONTEXT, &unbound, &blob[..len], &mut out).is_ok());
    }

    #[test]
    fn every_bit_flip_is_refused() {
        let registers = [[3u8; 32]; REGISTER_COUNT];
        let (blob, len) = sealed(0xff, &registers);
        let mut out = [0u8; 16];
        for bit in 0..len * 8 {
            let mut flipped = blob;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                unseal(&SEED, CONTEXT, &registers, &flipped[..len], &mut out).is_err(),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn limits() {
        let registers = [[0u8; 32]; REGISTER_COUNT];
        let mut out = [0u8; MAX_SEALED_LEN + 1];
        let big = [0u8; MAX_SEAL_PLAINTEXT + 1];
        assert_eq!(
            seal(
                &SEED,
                &mut CountingRng(0),
                CONTEXT,
                0,
                &registers,
                &big,
                &mut out
            ),
            Err(PlutonError::SealInputTooLarge)
        );
        let empty_label = SealContext {
            label: b"",
            ..CONTEXT
        };
        assert_eq!(
            seal(
                &SEED,
                &mut CountingRng(0),
                empty_label,
                0,
                &registers,
                b"x",
                &mut out
            ),
            Err(PlutonError::InvalidLabel)
        );
        let mut small = [0u8; 10];
        assert_eq!(
            seal(
                &SEED,
                &mut CountingRng(0),
                CONTEXT,
                0,
                &registers,
                b"x",
                &mut small
            ),
            Err(PlutonError::BufferTooSmall)
        );
        assert_eq!(
            unseal(&SEED, CONTEXT, &registers, &[0u8; 5], &mut out),
            Err(PlutonError::SealedBlobMalformed)
        );
    }
}
