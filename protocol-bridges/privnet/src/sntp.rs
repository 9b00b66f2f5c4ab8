//! A sans-IO SNTP server (RFC 4330): answers client requests with the appliance clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Length of an NTP packet without extensions or authentication.
pub const NTP_PACKET_LEN: usize = 48;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
/// NTP mode of a client request.
const MODE_CLIENT: u8 = 3;
/// NTP mode of a server reply.
const MODE_SERVER: u8 = 4;

/// Why a datagram was not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SntpError {
    /// Shorter than an NTP header.
    #[error("{0} bytes is too short for an NTP packet ({NTP_PACKET_LEN})")]
    TooShort(usize),
    /// Not a client request (mode 3).
    #[error("NTP mode {0} is not a client request")]
    NotAClientRequest(u8),
    /// A version we do not speak (1 to 4 are answered).
    #[error("NTP version {0} is not supported")]
    UnsupportedVersion(u8),
}

/// What the server says about its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SntpServerConfig {
    /// Stratum announced (the appliance's upstream stratum + 1; 1..=15).
    pub stratum: u8,
    /// Reference identifier (`LOCL` for an undisciplined local clock).
    pub reference_id: [u8; 4],
}

impl Default for SntpServerConfig {
    fn default() -> Self {
        Self {
            stratum: 3,
            reference_id: *b"LOCL",
        }
    }
}

/// Builds the reply to `request`, received at `received`, sent at `now`.
pub fn answer(
    config: &SntpServerConfig,
    request: &[u8],
    received: SystemTime,
    now: SystemTime,
) -> Result<[u8; NTP_PACKET_LEN], SntpError> {
    if request.len() < NTP_PACKET_LEN {
        return Err(SntpError::TooShort(request.len()));
    }
    let version = (request[0] >> 3) & 0x07;
    let mode = request[0] & 0x07;
    if mode != MODE_CLIENT {
        return Err(SntpError::NotAClientRequest(mode));
    }
    if !(1..=4).contains(&version) {
        return Err(SntpError::UnsupportedVersion(version));
    }
    let mut reply = [0u8; NTP_PACKET_LEN];
    // Leap indicator 0, the client's version, server mode.
    reply[0] = (version << 3) | MODE_SERVER;
    reply[1] = config.stratum;
    reply[2] = request[2]; // poll interval, echoed
    reply[3] = 0xEC; // precision: 2^-20 s
    // Root delay and dispersion: zero (local clock).
    reply[12..16].copy_from_slice(&config.reference_id);
    reply[16..24].copy_from_slice(&ntp_timestamp(received));
    // Originate = the client's transmit timestamp.
    reply[24..32].copy_from_slice(&request[40..48]);
    reply[32..40].copy_from_slice(&ntp_timestamp(received));
    reply[40..48].copy_from_slice(&ntp_timestamp(now));
    Ok(reply)
}

/// A time as a 64-bit NTP timestamp (seconds since 1900, 32.32 fixed point).
pub fn ntp_timestamp(time: SystemTime) -> [u8; 8] {
    let since_unix = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let seconds = since_unix.as_secs() + NTP_UNIX_OFFSET;
    let fraction = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&(seconds as u32).to_be_bytes());
    out[4..].copy_from_slice(&(fraction as u32).to_be_bytes());
    out
}

/// The time in a 64-bit NTP timestamp (era 0: until 2036).
pub fn from_ntp_timestamp(bytes: [u8; 8]) -> SystemTime {
    let seconds = u64::from(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
    let fraction = u64::from(u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]));
    let nanos = (fraction * 1_000_000_000) >> 32;
    UNIX_EPOCH
        + Duration::from_secs(seconds.saturating_sub(NTP_UNIX_OFFSET))
        + Duration::from_nanos(nanos)
}

/// A client request (version 4) with `transmit` as its transmit timestamp.
pub fn client_request(transmit: SystemTime) -> [u8; NTP_PACKET_LEN] {
    let mut request = [0u8; NTP_PACKET_LEN];
    request[0] = (4 << 3) | MODE_CLIENT;
    request[40..48].copy_from_slice(&ntp_timestamp(transmit));
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_a_client_with_the_clock_and_its_own_timestamp() {
        let sent = UNIX_EPOCH + Duration::from_millis(1_790_000_000_123);
        let request = client_request(sent);
        let now = UNIX_EPOCH + Duration::from_millis(1_790_000_000_456);
        let reply = answer(&SntpServerConfig::default(), &request, now, now).expect("answers");
        assert_eq!(reply[0] & 0x07, MODE_SERVER);
        assert_eq!((reply[0] >> 3) & 0x07, 4);
        assert_eq!(reply[1], 3);
        assert_eq!(&reply[24..32], &request[40..48]);
        let transmit: [u8; 8] = reply[40..48].try_into().expect("8 bytes");
        let back = from_ntp_timestamp(transmit);
        let error = back.duration_since(now).unwrap_or_else(|e| e.duration());
        assert!(error < Duration::from_micros(1), "{error:?}");
    }

    #[test]
    fn refuses_what_is_not_a_client_request() {
        let config = SntpServerConfig::default();
        let now = SystemTime::now();
        assert_eq!(
            answer(&config, &[0u8; 10], now, now),
            Err(SntpError::TooShort(10))
        );
        let mut server_packet = client_request(now);
        server_packet[0] = (4 << 3) | MODE_SERVER;
        assert_eq!(
            answer(&config, &server_packet, now, now),
            Err(SntpError::NotAClientRequest(4))
        );
        let mut version_seven = client_request(now);
        version_seven[0] = (7 << 3) | MODE_CLIENT;
        assert_eq!(
            answer(&config, &version_seven, now, now),
            Err(SntpError::UnsupportedVersion(7))
        );
    }
}
