#![doc = include_str!("../README.md")]

pub mod demo;
pub mod demo_pki;
pub mod fleet_operator;
pub mod modbus_rtu_slave;
pub mod modbus_tcp_slave;
pub mod register_model;
pub mod scenario;
pub mod scenario_file;
pub mod script_images;
pub mod simulated_device;
pub mod tour;
