//! Who may use which topic: a device only its own subtree.

use warden_wire::topics::TOPIC_ROOT;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The topic rights of one authenticated device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAcl {
    device_id: String,
    prefix: String,
}

impl DeviceAcl {
    /// Rights for `device_id`.
    pub fn new(device_id: &str) -> Self {
        Self {
            device_id: device_id.to_owned(),
            prefix: format!("{TOPIC_ROOT}/{device_id}/"),
        }
    }

    /// The device these rights belong to.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// May the device publish to `topic`? Only inside its own subtree, no wildcards.
    pub fn may_publish(&self, topic: &str) -> bool {
        topic.starts_with(&self.prefix)
            && topic.len() > self.prefix.len()
            && !topic.contains(['+', '#', '\0'])
    }

    /// May the device subscribe to `filter`? Only inside its own subtree; wildcards
    /// may appear only after the device's prefix.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        filter.starts_with(&self.prefix)
            && filter.len() > self.prefix.len()
            && !filter.contains('\0')
    }
}

/// The device ID in a client certificate: its subject common name, which must be a
/// plain identifier (letters, digits, `-`, `_`) so it can stand in a topic.
pub fn device_id_from_certificate(der: &[u8]) -> Option<String> {
    let (_rest, cert) = X509Certificate::from_der(der).ok()?;
    let common_name = cert.subject().iter_common_name().next()?.as_str().ok()?;
    let valid = !common_name.is_empty()
        && common_name.len() <= 64
        && common_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    valid.then(|| common_name.to_owned())
}

/// The subject public key of a certificate (for EC keys, the uncompressed point).
pub fn public_key_from_certificate(der: &[u8]) -> Option<Vec<u8>> {
    let (_rest, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.public_key().subject_public_key.data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_stays_inside_its_own_subtree() {
        let acl = DeviceAcl::new("wd-1");
        assert!(acl.may_publish("warden/v1/devices/wd-1/telemetry"));
        assert!(!acl.may_publish("warden/v1/devices/wd-2/telemetry"));
        assert!(!acl.may_publish("warden/v1/devices/wd-1"));
        assert!(!acl.may_publish("warden/v1/devices/wd-10/telemetry"));
        assert!(!acl.may_publish("warden/v1/devices/wd-1/+"));
        assert!(acl.may_subscribe("warden/v1/devices/wd-1/commands/#"));
        assert!(!acl.may_subscribe("warden/v1/devices/+/telemetry"));
        assert!(!acl.may_subscribe("#"));
    }
}
