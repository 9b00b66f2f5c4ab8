#![doc = include_str!("../README.md")]

pub mod browser;
pub mod demo;
pub mod demo_pki;
pub mod modbus_tcp_slave;
pub mod register_model;
pub mod scenario;
