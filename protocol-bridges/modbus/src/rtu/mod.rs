//! Modbus RTU: CRC, character timing, ADU encoding, the framer and the master.
//!
//! Everything here is sans-IO: bytes and the time they arrived (microseconds on any
//! monotonic clock the caller owns) go in, frames and events come out. The same code
//! runs under tokio on Linux and on the real-time core.

mod adu;
mod framer;
mod master;

pub use adu::{AduError, CharTiming, MAX_ADU_LEN, crc_ok, crc16, encode_adu};
pub use framer::{Direction, FramerCounters, RtuFrame, RtuFramer};
pub use master::{MasterCounters, MasterError, MasterEvent, RtuMaster};
