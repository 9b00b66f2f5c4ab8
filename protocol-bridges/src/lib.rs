#![doc = include_str!("../README.md")]

pub mod bridge;
pub mod config;
pub mod facade;
pub mod modbus;
pub mod point;
pub mod poller;
pub mod read_plan;
pub mod request_policy;
pub mod rtcore;
pub mod runtime;

pub use bridge::{BridgeHandle, BridgeHealth, WriteOutcome, WriteTarget};
pub use config::{BridgesConfig, ModbusRtuBridgeConfig, ModbusTcpBridgeConfig};
pub use point::{DataType, PointConfig, PointValue, RegisterKind, WordOrder, WriteValue};
pub use poller::{Poller, Sample};
