//! Release-key revocation lists over the link: the topic, its payload and its limit.
//!
//! Not device certificates (the fleet revokes those in its registry and its broker
//! refuses them): a *release-key revocation list* is the vendor-signed `WRL1` file
//! (`warden_keychain::RevocationList`) that withdraws release keys (or roots), so that a
//! unit refuses every image signed by one of them. The fleet only carries the list: it
//! checks it against its own vendor roots before storing it, and the unit verifies it
//! again against the roots in its own root of trust (pluton) before it takes it. A unit
//! never trusts the fleet for it.
//!
//! The fleet sends the newest list it holds on `updates/revocation-list` when an
//! operator uploads it (to every connected unit), when a unit subscribes to the topic
//! (each connect) and when a unit's reported twin shows an older sequence
//! ([`crate::topics::TwinReported::revocation_list_sequence`]).

use serde::{Deserialize, Serialize};

use crate::topics::{PROTOCOL_VERSION, PayloadError, TOPIC_ROOT, from_hex, to_hex};

/// Topic the fleet sends a unit the newest release-key revocation list on.
pub fn revocation_list_topic(device_id: &str) -> String {
    format!("{TOPIC_ROOT}/{device_id}/updates/revocation-list")
}

/// Largest release-key revocation list carried (bytes of the `WRL1` file). A list of
/// the most keys a list may name (256) is 2135 bytes; anything larger is refused by the
/// fleet's upload and by the unit before it is decoded further.
pub const MAX_REVOCATION_LIST_LEN: usize = 4096;

/// The newest release-key revocation list the fleet holds (fleet → device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationListMessage {
    /// Payload version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The list's sequence, as the fleet read it (for logs: the unit reads the
    /// sequence from the verified list itself).
    pub sequence: u64,
    /// The `WRL1` file, hex; at most [`MAX_REVOCATION_LIST_LEN`] bytes.
    pub list: String,
}

/// Why a revocation list message was refused before its list was looked at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationListMessageError {
    /// Not a version-1 payload.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// `list` is not hex.
    #[error("revocation list message: `list` is not hex")]
    NotHex,
    /// The list is larger than [`MAX_REVOCATION_LIST_LEN`].
    #[error(
        "revocation list message: the list is {0} bytes, more than the {MAX_REVOCATION_LIST_LEN} a list may have"
    )]
    TooLarge(usize),
}

impl RevocationListMessage {
    /// The message carrying `list` (the `WRL1` bytes) of `sequence`.
    pub fn new(sequence: u64, list: &[u8]) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            sequence,
            list: to_hex(list),
        }
    }

    /// Encodes as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes, version-checks and bounds a message; returns it with the list's bytes
    /// (still to be verified against the vendor roots).
    pub fn decode(bytes: &[u8]) -> Result<(Self, Vec<u8>), RevocationListMessageError> {
        // Hex doubles the list: a payload larger than that (plus room for the JSON
        // around it) is refused before it is parsed.
        if bytes.len() > 2 * MAX_REVOCATION_LIST_LEN + 256 {
            return Err(RevocationListMessageError::TooLarge(bytes.len() / 2));
        }
        let message: Self = serde_json::from_slice(bytes).map_err(PayloadError::from)?;
        if message.v != PROTOCOL_VERSION {
            return Err(PayloadError::UnsupportedVersion(message.v).into());
        }
        let list = from_hex(&message.list).ok_or(RevocationListMessageError::NotHex)?;
        if list.len() > MAX_REVOCATION_LIST_LEN {
            return Err(RevocationListMessageError::TooLarge(list.len()));
        }
        Ok((message, list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_and_is_bounded() {
        let message = RevocationListMessage::new(3, b"WRL1\x01rest");
        let (back, list) = RevocationListMessage::decode(&message.encode()).expect("decodes");
        assert_eq!((back, list.as_slice()), (message, &b"WRL1\x01rest"[..]));
        let large = RevocationListMessage::new(4, &vec![0u8; MAX_REVOCATION_LIST_LEN + 1]);
        assert!(matches!(
            RevocationListMessage::decode(&large.encode()),
            Err(RevocationListMessageError::TooLarge(_))
        ));
        let at_limit = RevocationListMessage::new(4, &vec![0u8; MAX_REVOCATION_LIST_LEN]);
        assert!(RevocationListMessage::decode(&at_limit.encode()).is_ok());
        assert!(matches!(
            RevocationListMessage::decode(br#"{"v":1,"sequence":1,"list":"zz"}"#),
            Err(RevocationListMessageError::NotHex)
        ));
        assert!(matches!(
            RevocationListMessage::decode(br#"{"v":2,"sequence":1,"list":""}"#),
            Err(RevocationListMessageError::Payload(
                PayloadError::UnsupportedVersion(2)
            ))
        ));
        assert_eq!(
            revocation_list_topic("wd-1"),
            "warden/v1/devices/wd-1/updates/revocation-list"
        );
    }
}
