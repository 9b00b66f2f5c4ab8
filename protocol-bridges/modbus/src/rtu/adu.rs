//! The RTU frame's primitives: CRC, character timing and ADU encoding, below the
//! framer and the master that use them.

/// Largest RTU frame: unit, PDU of up to 253 bytes, CRC.
pub const MAX_ADU_LEN: usize = 256;

/// Serial character format and the inter-frame timing derived from it.
///
/// Modbus over serial line (V1.02, 2.5.1.1): frames are separated by at least 3.5
/// character times of silence, and characters inside a frame by at most 1.5. Above
/// 19200 baud the spec fixes them at 750 µs and 1750 µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CharTiming {
    /// Time one character takes on the line, in microseconds (may be fractional in
    /// reality; rounded up here).
    pub char_us: u32,
    /// Largest silence allowed between two characters of one frame.
    pub t1_5_us: u32,
    /// Smallest silence between two frames.
    pub t3_5_us: u32,
}

impl CharTiming {
    /// Timing for `baud` with `bits_per_char` bits per character (start + 8 data +
    /// parity + stop: 11 for 8E1, 8O1 and 8N2; 10 for 8N1).
    pub const fn for_line(baud: u32, bits_per_char: u32) -> Self {
        let baud = if baud == 0 { 1 } else { baud };
        let bit_ns = 1_000_000_000u64 / baud as u64;
        let char_ns = bit_ns * bits_per_char as u64;
        let char_us = char_ns.div_ceil(1000) as u32;
        if baud > 19_200 {
            Self {
                char_us,
                t1_5_us: 750,
                t3_5_us: 1750,
            }
        } else {
            Self {
                char_us,
                t1_5_us: (char_ns * 3 / 2).div_ceil(1000) as u32,
                t3_5_us: (char_ns * 7 / 2).div_ceil(1000) as u32,
            }
        }
    }

    /// Bits per character for 8 data bits with or without parity and 1 or 2 stop bits.
    pub const fn bits_per_char(parity: bool, stop_bits: u8) -> u32 {
        1 + 8 + parity as u32 + if stop_bits >= 2 { 2 } else { 1 }
    }

    /// Microseconds `bytes` characters take on the line.
    pub const fn line_time_us(&self, bytes: usize) -> u64 {
        self.char_us as u64 * bytes as u64
    }
}

/// The Modbus CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF); sent low byte first.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &byte in data {
        crc = (crc >> 8) ^ CRC_TABLE[usize::from((crc as u8) ^ byte)];
    }
    crc
}

const CRC_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u16;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// True when the last two bytes of `adu` are the CRC of the rest.
pub fn crc_ok(adu: &[u8]) -> bool {
    match adu.len().checked_sub(2) {
        Some(body) if body > 0 => crc16(&adu[..body]).to_le_bytes() == [adu[body], adu[body + 1]],
        _ => false,
    }
}

/// Writes `unit`, `pdu` and the CRC into `out`; returns the frame length.
pub fn encode_adu(unit: u8, pdu: &[u8], out: &mut [u8]) -> Result<usize, AduError> {
    if pdu.is_empty() || pdu.len() > crate::MAX_PDU_LEN {
        return Err(AduError::BadPduLength(pdu.len()));
    }
    let total = pdu.len() + 3;
    let dst = out.get_mut(..total).ok_or(AduError::BufferTooSmall)?;
    dst[0] = unit;
    dst[1..=pdu.len()].copy_from_slice(pdu);
    let crc = crc16(&dst[..=pdu.len()]).to_le_bytes();
    dst[pdu.len() + 1..].copy_from_slice(&crc);
    Ok(total)
}

/// Why an RTU frame could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum AduError {
    /// The PDU is empty or longer than 253 bytes.
    BadPduLength(usize),
    /// The output buffer is too small.
    BufferTooSmall,
}

impl core::fmt::Display for AduError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadPduLength(len) => write!(f, "pdu length {len} is outside 1..=253"),
            Self::BufferTooSmall => f.write_str("output buffer is too small"),
        }
    }
}

impl core::error::Error for AduError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_spec_example() {
        // Read 10 holding registers from 0 of unit 1: the CRC bytes go C5 CD on the wire.
        let frame = [0x01, 0x03, 0x00, 0x00, 0x00, 0x0A];
        assert_eq!(crc16(&frame).to_le_bytes(), [0xC5, 0xCD]);
        let mut out = [0u8; 8];
        let len = encode_adu(1, &frame[1..], &mut out).expect("fits");
        assert_eq!(
            &out[..len],
            &[0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD]
        );
        assert!(crc_ok(&out));
        out[3] ^= 1;
        assert!(!crc_ok(&out));
    }

    #[test]
    fn timing_follows_the_spec() {
        let slow = CharTiming::for_line(9600, CharTiming::bits_per_char(true, 1));
        assert_eq!(slow.char_us, 1146);
        assert_eq!(slow.t3_5_us, 4011);
        assert_eq!(slow.t1_5_us, 1719);
        let fast = CharTiming::for_line(115_200, 11);
        assert_eq!((fast.char_us, fast.t1_5_us, fast.t3_5_us), (96, 750, 1750));
    }
}
