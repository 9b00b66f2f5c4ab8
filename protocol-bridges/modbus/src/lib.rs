#![doc = include_str!("../README.md")]
#![cfg_attr(not(any(test, feature = "std")), no_std)]

pub mod fuzz_harness;
pub mod pdu;
pub mod rtu;
pub mod tcp_frame;

/// Largest number of registers one read request may ask for (Modbus spec: 125).
pub const MAX_READ_REGISTERS: u16 = 125;
/// Largest number of registers one write request may carry (Modbus spec: 123).
pub const MAX_WRITE_REGISTERS: u16 = 123;
/// Largest number of coils or discrete inputs one read may ask for (2000).
pub const MAX_READ_BITS: u16 = 2000;
/// Largest number of coils one write may carry (1968).
pub const MAX_WRITE_BITS: u16 = 1968;
/// Largest PDU the Modbus spec allows (253 bytes).
pub const MAX_PDU_LEN: usize = 253;
