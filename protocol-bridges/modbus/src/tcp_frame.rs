//! Modbus TCP framing: the 7-byte MBAP header in front of each PDU.

use crate::MAX_PDU_LEN;

/// Length of the MBAP header.
pub const MBAP_HEADER_LEN: usize = 7;
/// Largest Modbus TCP frame (header + largest PDU).
pub const MAX_FRAME_LEN: usize = MBAP_HEADER_LEN + MAX_PDU_LEN;

/// The MBAP header of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbapHeader {
    /// Transaction identifier; the response echoes the request's.
    pub transaction_id: u16,
    /// Unit identifier (the downstream device behind a gateway).
    pub unit_id: u8,
}

/// Writes a full frame (header + `pdu`) into `out`; returns its length.
pub fn encode_frame(header: MbapHeader, pdu: &[u8], out: &mut [u8]) -> Result<usize, FrameError> {
    if pdu.is_empty() || pdu.len() > MAX_PDU_LEN {
        return Err(FrameError::BadLength(pdu.len()));
    }
    let total = MBAP_HEADER_LEN + pdu.len();
    let dst = out.get_mut(..total).ok_or(FrameError::BufferTooSmall)?;
    let length = (pdu.len() + 1) as u16;
    dst[0..2].copy_from_slice(&header.transaction_id.to_be_bytes());
    dst[2..4].copy_from_slice(&0u16.to_be_bytes());
    dst[4..6].copy_from_slice(&length.to_be_bytes());
    dst[6] = header.unit_id;
    dst[7..].copy_from_slice(pdu);
    Ok(total)
}

/// One decoded frame: its header, its PDU and how many bytes of the buffer it used.
pub type DecodedFrame<'a> = (MbapHeader, &'a [u8], usize);

/// Looks for one complete frame at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, or the header, the PDU and the
/// number of bytes the frame used. A frame with a non-zero protocol identifier or an
/// impossible length is an error: the stream cannot be resynchronised and the
/// connection should be closed.
pub fn decode_frame(buf: &[u8]) -> Result<Option<DecodedFrame<'_>>, FrameError> {
    let Some(head) = buf.get(..MBAP_HEADER_LEN) else {
        return Ok(None);
    };
    let protocol = u16::from_be_bytes([head[2], head[3]]);
    if protocol != 0 {
        return Err(FrameError::NotModbus(protocol));
    }
    let length = usize::from(u16::from_be_bytes([head[4], head[5]]));
    if !(2..=MAX_PDU_LEN + 1).contains(&length) {
        return Err(FrameError::BadLength(length));
    }
    let total = MBAP_HEADER_LEN - 1 + length;
    let Some(frame) = buf.get(..total) else {
        return Ok(None);
    };
    let header = MbapHeader {
        transaction_id: u16::from_be_bytes([head[0], head[1]]),
        unit_id: head[6],
    };
    Ok(Some((header, &frame[MBAP_HEADER_LEN..], total)))
}

/// What was wrong with a TCP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FrameError {
    /// The protocol identifier is not 0 (not Modbus).
    NotModbus(u16),
    /// The length field is outside what a PDU can be.
    BadLength(usize),
    /// The output buffer is too small.
    BufferTooSmall,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotModbus(protocol) => {
                write!(f, "protocol identifier {protocol} is not modbus (0)")
            }
            Self::BadLength(length) => write!(f, "frame length {length} is outside 2..=254"),
            Self::BufferTooSmall => f.write_str("output buffer is too small"),
        }
    }
}

impl core::error::Error for FrameError {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frame_round_trips_and_waits_for_more_bytes() {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let header = MbapHeader {
            transaction_id: 0xBEEF,
            unit_id: 3,
        };
        let len = encode_frame(header, &[0x03, 0, 0, 0, 1], &mut buf).expect("fits");
        assert_eq!(&buf[..len], &[0xBE, 0xEF, 0, 0, 0, 6, 3, 0x03, 0, 0, 0, 1]);
        for cut in 0..len {
            assert_eq!(decode_frame(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            decode_frame(&buf[..len]),
            Ok(Some((header, &buf[7..len], len)))
        );
    }

    #[test]
    fn foreign_protocol_and_bad_lengths_are_errors() {
        assert_eq!(
            decode_frame(&[0, 1, 0, 7, 0, 6, 1]),
            Err(FrameError::NotModbus(7))
        );
        assert_eq!(
            decode_frame(&[0, 1, 0, 0, 0, 1, 1]),
            Err(FrameError::BadLength(1))
        );
        assert_eq!(
            decode_frame(&[0, 1, 0, 0, 1, 0, 1]),
            Err(FrameError::BadLength(256))
        );
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(Some((_, pdu, used))) = decode_frame(&bytes) {
                prop_assert!(used <= bytes.len());
                prop_assert!(!pdu.is_empty());
            }
        }
    }
}
