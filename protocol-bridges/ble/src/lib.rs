#![doc = include_str!("../README.md")]

pub mod ble_policy;
pub mod ble_uuid;
pub mod bridge;
mod central;
pub mod characteristic_value;
pub mod config;
pub mod device_address;
pub mod hci_transport;

pub use ble_policy::{BleDenial, BleGatedRequest, BlePolicyGate, BleRequestPolicy};
pub use ble_uuid::BleUuid;
pub use bridge::{BleBridgeHandle, BleHealth, LinkState, StartError, start};
pub use config::{
    BleAccess, BleBridgeConfig, BleBridgeSpec, BlePointConfig, ConfigError, SensorSelector,
};
pub use device_address::{AddressKind, DeviceAddress};
