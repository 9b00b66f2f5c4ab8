//! The TPM's `TPMS_ATTEST` of a `TPM2_Quote`: a bounds-checked parser for untrusted bytes.
//!
//! Layout (TPM 2.0 Library, Part 2, 10.12.12; all integers big-endian; `TPM2B` = u16
//! size then that many bytes):
//!
//! | field | type |
//! |---|---|
//! | magic | u32, `TPM_GENERATED_VALUE` `0xff544347` |
//! | type | u16, `TPM_ST_ATTEST_QUOTE` `0x8018` |
//! | qualifiedSigner | `TPM2B_NAME` (≤ 68 bytes) |
//! | extraData | `TPM2B_DATA` (≤ 64 bytes): the caller's qualifying data (the nonce) |
//! | clockInfo | clock u64, resetCount u32, restartCount u32, safe u8 |
//! | firmwareVersion | u64 |
//! | pcrSelect | `TPML_PCR_SELECTION`: count u32, then per bank: hash u16, sizeofSelect u8, bitmap |
//! | pcrDigest | `TPM2B_DIGEST`: hash of the selected PCRs' values, concatenated in order |
//!
//! Nothing may follow. Only the magic and type are checked here; what the selection and
//! digest must be is [`crate::quote::tpm`]'s business.

use crate::QuoteError;

/// `TPM_GENERATED_VALUE`: every structure the TPM signs starts with it, and the TPM
/// refuses to sign external data that does (so a restricted key's signature over it
/// means the TPM made it).
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_ALG_SHA256`.
pub const TPM_ALG_SHA256: u16 = 0x000b;
/// Longest `TPMS_ATTEST` a quote may carry (a quote over one bank with a 64-byte nonce
/// and a SHA-512 name is about 220 bytes).
pub const MAX_ATTEST_LEN: usize = 256;
/// Most PCR banks a selection may list (`HASH_COUNT` of real TPMs is at most 5).
pub const MAX_PCR_BANKS: usize = 5;

const MAX_NAME_LEN: usize = 68;
const MAX_DATA_LEN: usize = 64;
const MAX_DIGEST_LEN: usize = 64;
const MAX_SELECT_LEN: usize = 4;

/// One bank of a PCR selection: the hash algorithm and the PCR bitmap (bit *i* of byte
/// *j* is PCR 8*j* + *i*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcrBankSelection<'a> {
    /// `TPM_ALG_ID` of the bank.
    pub hash: u16,
    /// The bitmap, `sizeofSelect` bytes.
    pub bitmap: &'a [u8],
}

/// A parsed quote attestation, borrowing the bytes it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteAttest<'a> {
    /// The attestation key's name.
    pub qualified_signer: &'a [u8],
    /// The qualifying data given to `TPM2_Quote`.
    pub extra_data: &'a [u8],
    /// `clockInfo.clock` (milliseconds the TPM has been powered).
    pub clock: u64,
    /// `clockInfo.resetCount` (obfuscated for keys outside the endorsement hierarchy).
    pub reset_count: u32,
    /// `clockInfo.restartCount` (obfuscated likewise).
    pub restart_count: u32,
    /// `clockInfo.safe`.
    pub safe: bool,
    /// The TPM firmware version (obfuscated likewise).
    pub firmware_version: u64,
    /// The PCR banks and PCRs quoted.
    pub pcr_selection: heapless::Vec<PcrBankSelection<'a>, MAX_PCR_BANKS>,
    /// The digest of the selected PCR values.
    pub pcr_digest: &'a [u8],
}

/// A cursor over untrusted bytes; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], QuoteError> {
        if length > self.bytes.len() {
            return Err(QuoteError::AttestMalformed);
        }
        let (head, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], QuoteError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, QuoteError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, QuoteError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, QuoteError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, QuoteError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A `TPM2B`: u16 size, then at most `max` bytes.
    fn sized(&mut self, max: usize) -> Result<&'a [u8], QuoteError> {
        let length = usize::from(self.u16()?);
        if length > max {
            return Err(QuoteError::AttestMalformed);
        }
        self.take(length)
    }
}

impl<'a> QuoteAttest<'a> {
    /// Parse a `TPMS_ATTEST` that must be a quote: `AttestNotTpmQuote` if the magic or
    /// type is wrong, `AttestMalformed` for anything out of bounds or left over.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, QuoteError> {
        if bytes.len() > MAX_ATTEST_LEN {
            return Err(QuoteError::AttestMalformed);
        }
        let mut reader = Reader { bytes };
        if reader.u32()? != TPM_GENERATED_VALUE || reader.u16()? != TPM_ST_ATTEST_QUOTE {
            return Err(QuoteError::AttestNotTpmQuote);
        }
        let qualified_signer = reader.sized(MAX_NAME_LEN)?;
        let extra_data = reader.sized(MAX_DATA_LEN)?;
        let clock = reader.u64()?;
        let reset_count = reader.u32()?;
        let restart_count = reader.u32()?;
        let safe = match reader.u8()? {
            0 => false,
            1 => true,
            _ => return Err(QuoteError::AttestMalformed),
        };
        let firmware_version = reader.u64()?;
        let banks = reader.u32()?;
        let mut pcr_selection = heapless::Vec::new();
        for _ in 0..banks {
            let hash = reader.u16()?;
            let size = usize::from(reader.u8()?);
            if size > MAX_SELECT_LEN {
                return Err(QuoteError::AttestMalformed);
            }
            let bitmap = reader.take(size)?;
            pcr_selection
                .push(PcrBankSelection { hash, bitmap })
                .map_err(|_| QuoteError::AttestMalformed)?;
        }
        let pcr_digest = reader.sized(MAX_DIGEST_LEN)?;
        if !reader.bytes.is_empty() {
            return Err(QuoteError::AttestMalformed);
        }
        Ok(Self {
            qualified_signer,
            extra_data,
            clock,
            reset_count,
            restart_count,
            safe,
            firmware_version,
            pcr_selection,
            pcr_digest,
        })
    }
}

/// Encode a quote attestation (the TPM's layout), for tests and fixtures of verifiers:
/// a real one comes from the TPM. Returns the length written to `out`.
pub fn encode_quote_attest(
    attest: &QuoteAttest<'_>,
    out: &mut [u8; MAX_ATTEST_LEN],
) -> Result<usize, QuoteError> {
    let mut at = 0usize;
    let mut put = |bytes: &[u8]| -> Result<(), QuoteError> {
        let end = at + bytes.len();
        out.get_mut(at..end)
            .ok_or(QuoteError::AttestMalformed)?
            .copy_from_slice(bytes);
        at = end;
        Ok(())
    };
    let size = |bytes: &[u8]| u16::try_from(bytes.len()).map_err(|_| QuoteError::AttestMalformed);
    put(&TPM_GENERATED_VALUE.to_be_bytes())?;
    put(&TPM_ST_ATTEST_QUOTE.to_be_bytes())?;
    put(&size(attest.qualified_signer)?.to_be_bytes())?;
    put(attest.qualified_signer)?;
    put(&size(attest.extra_data)?.to_be_bytes())?;
    put(attest.extra_data)?;
    put(&attest.clock.to_be_bytes())?;
    put(&attest.reset_count.to_be_bytes())?;
    put(&attest.restart_count.to_be_bytes())?;
    put(&[u8::from(attest.safe)])?;
    put(&attest.firmware_version.to_be_bytes())?;
    put(&(attest.pcr_selection.len() as u32).to_be_bytes())?;
    for bank in &attest.pcr_selection {
        put(&bank.hash.to_be_bytes())?;
        put(&[u8::try_from(bank.bitmap.len()).map_err(|_| QuoteError::AttestMalformed)?])?;
        put(bank.bitmap)?;
    }
    put(&size(attest.pcr_digest)?.to_be_bytes())?;
    put(attest.pcr_digest)?;
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> QuoteAttest<'static> {
        let mut pcr_selection = heapless::Vec::new();
        pcr_selection
            .push(PcrBankSelection {
                hash: TPM_ALG_SHA256,
                bitmap: &[0x00, 0xff, 0x00],
            })
            .expect("room");
        QuoteAttest {
            qualified_signer: &[0x00, 0x0b, 7, 7, 7, 7],
            extra_data: &[9u8; 32],
            clock: 1234,
            reset_count: 1,
            restart_count: 2,
            safe: true,
            firmware_version: 0x2024,
            pcr_selection,
            pcr_digest: &[5u8; 32],
        }
    }

    #[test]
    fn round_trip() {
        let mut out = [0u8; MAX_ATTEST_LEN];
        let length = encode_quote_attest(&sample(), &mut out).expect("encode");
        assert_eq!(QuoteAttest::parse(&out[..length]), Ok(sample()));
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let mut out = [0u8; MAX_ATTEST_LEN];
        let length = encode_quote_attest(&sample(), &mut out).expect("encode");
        for cut in 0..length {
            assert!(QuoteAttest::parse(&out[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(
            QuoteAttest::parse(&out[..length + 1]),
            Err(QuoteError::AttestMalformed)
        );
        let mut wrong_type = out;
        wrong_type[5] = 0x17;
        assert_eq!(
            QuoteAttest::parse(&wrong_type[..length]),
            Err(QuoteError::AttestNotTpmQuote)
        );
        let mut wrong_magic = out;
        wrong_magic[0] = 0;
        assert_eq!(
            QuoteAttest::parse(&wrong_magic[..length]),
            Err(QuoteError::AttestNotTpmQuote)
        );
    }
}
