#![doc = include_str!("../README.md")]

pub mod ble_policy;
pub mod ble_uuid;
pub mod bridge;
mod central;
pub mod characteristic_value;
pub mod config;
pub mod device_address;
pub mod hci_transport;
pub mod point_config;
mod shared;

pub use ble_policy::{BleDenial, BleGatedRequest, BlePolicyGate, BleRequestPolicy};
pub use ble_uuid::{BleUuid, NotAUuid};
pub use bridge::{BleBridgeHandle, StartError, start};
pub use config::{BleBridgeConfig, BleBridgeSpec, ConfigError, SensorSelector};
pub use device_address::{AddressKind, BadAddress, DeviceAddress};
pub use point_config::{BleAccess, BlePointConfig};
pub use shared::{BleHealth, LinkState};
