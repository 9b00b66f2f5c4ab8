#![doc = include_str!("../README.md")]

pub mod bridge;
pub mod clock;
pub mod config;
pub mod deadband;
pub mod facade;
pub mod health;
pub mod modbus;
pub mod point;
pub mod poller;
pub mod read_plan;
pub mod request_policy;
pub mod rtcore;
pub mod runtime;
pub mod sample;

pub use bridge::{BridgeHandle, WriteOutcome, WriteTarget};
pub use config::{BridgesConfig, ModbusRtuBridgeConfig, ModbusTcpBridgeConfig};
pub use facade::FacadeHealth;
pub use health::BridgeHealth;
pub use point::{DataType, PointConfig, PointValue, RegisterKind, WordOrder, WriteValue};
pub use poller::Poller;
pub use sample::{Sample, Value};
