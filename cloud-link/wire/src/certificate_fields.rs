//! The few fields of a DER X.509 certificate a unit reads: validity, subject, key.
//!
//! A few lines of DER walking rather than an X.509 crate, which would cost the shipped
//! binary its size budget. Nothing here verifies a certificate (the TLS stack does);
//! it reads when one expires, whom it names and which key it certifies.

const SEQUENCE: u8 = 0x30;
const BIT_STRING: u8 = 0x03;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// One DER element at the start of `bytes`: its tag, its contents and what follows.
/// Single-byte tags and definite lengths only (all X.509 needs); `None` if truncated.
pub fn der_element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |len, &byte| (len << 8) | usize::from(byte));
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Field `index` of a DER X.509 certificate's TBSCertificate after its optional
/// version (0 serialNumber, 1 signature, 2 issuer, 3 validity, 4 subject, 5
/// subjectPublicKeyInfo): its tag and contents; `None` if the certificate is not two
/// SEQUENCEs deep or is truncated.
pub fn tbs_field(certificate: &[u8], index: usize) -> Option<(u8, &[u8])> {
    const VERSION: u8 = 0xa0;
    let (tag, certificate, _) = der_element(certificate)?;
    (tag == SEQUENCE).then_some(())?;
    let (tag, tbs, _) = der_element(certificate)?;
    (tag == SEQUENCE).then_some(())?;
    let mut rest = tbs;
    let (tag, _, after) = der_element(rest)?;
    if tag == VERSION {
        rest = after;
    }
    for _ in 0..index {
        rest = der_element(rest)?.2;
    }
    let (tag, field, _) = der_element(rest)?;
    Some((tag, field))
}

/// `(not_before, not_after)` of a DER X.509 certificate, seconds since the epoch.
pub fn validity(certificate: &[u8]) -> Option<(i64, i64)> {
    let (tag, validity) = tbs_field(certificate, 3)?;
    (tag == SEQUENCE).then_some(())?;
    let (tag, not_before, rest) = der_element(validity)?;
    let not_before = asn1_time(tag, not_before)?;
    let (tag, not_after, _) = der_element(rest)?;
    Some((not_before, asn1_time(tag, not_after)?))
}

/// The subject public key of a DER X.509 certificate (the bit string's contents after
/// its unused-bits byte: for a P-256 key, the uncompressed point).
pub fn subject_public_key(certificate: &[u8]) -> Option<&[u8]> {
    let (tag, spki) = tbs_field(certificate, 5)?;
    (tag == SEQUENCE).then_some(())?;
    let (_, _, rest) = der_element(spki)?;
    let (tag, key, _) = der_element(rest)?;
    (tag == BIT_STRING).then_some(())?;
    key.strip_prefix(&[0])
}

/// A UTCTime (`YYMMDDhhmmssZ`, years 1950–2049) or GeneralizedTime
/// (`YYYYMMDDhhmmssZ`) as seconds since the epoch.
fn asn1_time(tag: u8, text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    if !text.is_ascii() {
        return None;
    }
    let (year, rest) = match (tag, text.len()) {
        (UTC_TIME, 12) => {
            let short: i64 = text[..2].parse().ok()?;
            (
                if short < 50 {
                    2000 + short
                } else {
                    1900 + short
                },
                &text[2..],
            )
        }
        (GENERALIZED_TIME, 14) => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |at: usize| -> Option<i64> { rest.get(at..at + 2)?.parse().ok() };
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_only_make_a_time() {
        assert_eq!(asn1_time(UTC_TIME, b"240229120000Z"), Some(1_709_208_000));
        assert_eq!(
            asn1_time(GENERALIZED_TIME, b"20510301000005Z"),
            Some(2_561_241_605)
        );
        assert_eq!(asn1_time(UTC_TIME, "2é0101000000Z".as_bytes()), None);
        assert_eq!(asn1_time(UTC_TIME, b"241301000000Z"), None, "month 13");
    }

    #[test]
    fn truncated_der_reads_as_nothing() {
        assert_eq!(der_element(&[0x30, 0x05, 1, 2]), None);
        assert_eq!(der_element(&[0x30, 0x80]), None, "indefinite length");
        assert_eq!(validity(&[0x30, 0x03, 0x30, 0x01, 0x02]), None);
    }
}
