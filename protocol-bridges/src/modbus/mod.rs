//! Modbus protocol: PDUs, TCP framing and the async TCP client.
//!
//! The PDU and frame codecs are sans-IO and allocation-free: they parse borrowed
//! slices and write into caller buffers, so the same code can run on the
//! real-time core later. Only [`tcp_client`] touches sockets.

pub mod pdu;
pub mod tcp_client;
pub mod tcp_frame;

/// Largest number of registers one read request may ask for (Modbus spec: 125).
pub const MAX_READ_REGISTERS: u16 = 125;
/// Largest PDU the Modbus spec allows (253 bytes).
pub const MAX_PDU_LEN: usize = 253;
