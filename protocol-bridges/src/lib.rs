#![doc = include_str!("../README.md")]

pub mod modbus;
pub mod point;
pub mod poller;
pub mod request_policy;

pub use point::{DataType, PointConfig, PointValue, RegisterKind, WordOrder};
pub use poller::{BridgeHealth, ModbusTcpBridgeConfig, Poller, Sample};
