//! What the real-time core is told about its line, from the bridge's config.

use std::path::PathBuf;
use std::sync::Arc;

use warden_rtcore_mailbox::{LineSettings, Parity as MailboxParity};

use crate::config::ModbusRtuBridgeConfig;
use crate::modbus::rtu_bus::Parity;
use crate::rtcore::error::{BundleError, RtCoreError};

/// Everything the mailbox task needs to bring the core up.
#[derive(Debug, Clone)]
pub struct CoreSetup {
    /// The policy's name of this bridge (the core evaluates requests as this bridge).
    pub bridge: String,
    /// The line the core drives.
    pub line: LineSettings,
    /// The signed policy bundle to upload after every (re)connection.
    pub bundle: Arc<Vec<u8>>,
}

impl CoreSetup {
    /// From an RTU bridge's config, with the bundle read from `policy_bundle`.
    pub fn from_config(bridge: &ModbusRtuBridgeConfig) -> Result<Self, RtCoreError> {
        let path = bridge
            .policy_bundle
            .clone()
            .ok_or(BundleError::NotConfigured)?;
        let bundle = std::fs::read(&path).map_err(|error| BundleError::Unreadable {
            path: path.clone(),
            error: Arc::new(error),
        })?;
        Ok(Self {
            bridge: bridge.name.clone(),
            line: line_settings(bridge),
            bundle: Arc::new(bundle),
        })
    }
}

/// The line settings of an RTU bridge as the core takes them.
pub fn line_settings(bridge: &ModbusRtuBridgeConfig) -> LineSettings {
    LineSettings {
        baud: bridge.baud,
        parity: match bridge.parity {
            Parity::None => MailboxParity::None,
            Parity::Even => MailboxParity::Even,
            Parity::Odd => MailboxParity::Odd,
        },
        stop_bits: bridge.stop_bits,
        response_timeout_ms: u32::try_from(bridge.timeout_ms).unwrap_or(u32::MAX),
        retries: u8::try_from(bridge.retries).unwrap_or(u8::MAX),
    }
}

/// Where the bundle for the core comes from, for people.
pub fn describe(bridge: &ModbusRtuBridgeConfig) -> String {
    let bundle = bridge
        .policy_bundle
        .as_ref()
        .map_or_else(PathBuf::new, Clone::clone);
    format!(
        "{} via real-time core on {} (bundle {})",
        bridge.line().describe(),
        bridge.mailbox.as_deref().unwrap_or("?"),
        bundle.display()
    )
}
