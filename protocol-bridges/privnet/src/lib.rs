#![doc = include_str!("../README.md")]

pub mod config;
pub mod dhcp_server;
pub mod frame_wire;
pub mod port;
pub mod sntp;

pub use config::{ConfigError, PrivnetConfig, PrivnetSpec};
pub use frame_wire::{FrameWire, frame_wire_pair, wire_driver};
pub use port::{PortDevice, PrivnetCounters, PrivnetHandle, StartError, start};
