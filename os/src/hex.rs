//! Lowercase hexadecimal: the crate's one encoder and decoder of hex text.

use std::fmt::Write as _;

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// Exactly `N` bytes from `2 * N` hex digits (either case); `None` otherwise.
pub fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut bytes = [0_u8; N];
    for (index, byte) in bytes.iter_mut().enumerate() {
        let digits = text.get(2 * index..2 * index + 2)?;
        // from_str_radix takes a leading sign; hex digits never have one.
        if !digits.bytes().all(|digit| digit.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_lowercase_and_decodes_exact_lengths_only() {
        assert_eq!(encode(&[0x00, 0xab, 0x7f]), "00ab7f");
        assert_eq!(decode::<3>("00AB7f"), Some([0x00, 0xab, 0x7f]));
        assert_eq!(decode::<3>("00ab7"), None);
        assert_eq!(decode::<2>("+1ab"), None);
        assert_eq!(decode::<2>("zzab"), None);
        assert_eq!(decode::<1>("é"), None);
    }
}
