//! One simulated Modbus device: its tables, driven by register models, answering PDUs.
//!
//! Sans-IO: the TCP and RTU simulators hand it a request PDU and the time, and send
//! back what it writes. Both use the bridges' codec (`warden-modbus`), so there is one
//! Modbus codec in the tree.

use std::collections::BTreeMap;

use serde::Deserialize;
use warden_bridges::modbus::pdu::{self, ExceptionCode, Request};

use crate::register_model::{RegisterModel, RegisterSource};

/// The tables of one simulated device, by 0-based address.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceModel {
    /// Modbus unit identifier the device answers to.
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Holding registers (function 0x03, writable with 0x06 and 0x10).
    #[serde(default)]
    pub holding: BTreeMap<u16, RegisterModel>,
    /// Input registers (function 0x04).
    #[serde(default)]
    pub input: BTreeMap<u16, RegisterModel>,
    /// Coils (function 0x01, writable with 0x05 and 0x0F); non-zero is on.
    #[serde(default)]
    pub coils: BTreeMap<u16, RegisterModel>,
    /// Discrete inputs (function 0x02); non-zero is on.
    #[serde(default)]
    pub discrete: BTreeMap<u16, RegisterModel>,
    /// Faults the RTU simulator injects for this unit.
    #[serde(default)]
    pub faults: Faults,
}

fn default_unit() -> u8 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Table {
    Holding,
    Input,
    Coils,
    Discrete,
}

/// A device's live state: model sources, values written by clients, counters.
pub struct SimulatedDevice {
    unit: u8,
    sources: BTreeMap<(Table, u16), RegisterSource>,
    written: BTreeMap<(Table, u16), u16>,
    requests: u64,
}

impl SimulatedDevice {
    /// A device from `model`.
    pub fn new(model: &DeviceModel) -> Self {
        let mut sources = BTreeMap::new();
        for (table, map) in [
            (Table::Holding, &model.holding),
            (Table::Input, &model.input),
            (Table::Coils, &model.coils),
            (Table::Discrete, &model.discrete),
        ] {
            for (&address, register) in map {
                sources.insert((table, address), RegisterSource::new(register.clone()));
            }
        }
        Self {
            unit: model.unit,
            sources,
            written: BTreeMap::new(),
            requests: 0,
        }
    }

    /// The unit the device answers to.
    pub fn unit(&self) -> u8 {
        self.unit
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// The current value of a holding register, as a client would read it now.
    pub fn holding_register(&mut self, address: u16, elapsed_ms: u64) -> Option<u16> {
        self.value(Table::Holding, address, elapsed_ms)
    }

    /// The current state of a coil.
    pub fn coil(&mut self, address: u16, elapsed_ms: u64) -> Option<bool> {
        self.value(Table::Coils, address, elapsed_ms)
            .map(|v| v != 0)
    }

    fn value(&mut self, table: Table, address: u16, elapsed_ms: u64) -> Option<u16> {
        if let Some(&value) = self.written.get(&(table, address)) {
            return Some(value);
        }
        self.sources
            .get_mut(&(table, address))
            .map(|source| source.value_at(elapsed_ms))
    }

    /// Like [`Self::value`], but as a client's read: [`RegisterModel::ReadCount`]
    /// registers count it.
    fn read(&mut self, table: Table, address: u16, elapsed_ms: u64) -> Option<u16> {
        let source = self.sources.get_mut(&(table, address))?;
        let value = source.read_at(elapsed_ms);
        Some(
            self.written
                .get(&(table, address))
                .copied()
                .unwrap_or(value),
        )
    }

    /// How many times clients have read a holding register (for a
    /// [`RegisterModel::ReadCount`] register: the last value served).
    pub fn holding_reads(&self, address: u16) -> Option<u64> {
        self.sources
            .get(&(Table::Holding, address))
            .map(RegisterSource::reads)
    }

    fn exists(&self, table: Table, address: u16) -> bool {
        self.sources.contains_key(&(table, address))
    }

    /// Answers `request_pdu` at `elapsed_ms`; writes the response PDU into `out` and
    /// returns its length. Unknown addresses answer exception 02, unknown functions 01.
    pub fn answer(&mut self, request_pdu: &[u8], elapsed_ms: u64, out: &mut [u8]) -> usize {
        self.requests += 1;
        let function = request_pdu.first().copied().unwrap_or(0) & 0x7F;
        let exception =
            |code, out: &mut [u8]| pdu::encode_exception(function, code, out).unwrap_or(0);
        let request = match Request::decode(request_pdu) {
            Ok(request) => request,
            Err(pdu::PduError::UnsupportedFunction(_)) => {
                return exception(ExceptionCode::ILLEGAL_FUNCTION, out);
            }
            Err(_) => return exception(ExceptionCode::ILLEGAL_DATA_VALUE, out),
        };
        let table_of = |function: pdu::FunctionCode| match function {
            pdu::FunctionCode::ReadCoils => Table::Coils,
            pdu::FunctionCode::ReadDiscreteInputs => Table::Discrete,
            pdu::FunctionCode::ReadInputRegisters => Table::Input,
            _ => Table::Holding,
        };
        match &request {
            Request::ReadRegisters {
                function,
                address,
                count,
            } => {
                let table = table_of(*function);
                // Checked first, so a refused read counts no register as read.
                if (0..*count).any(|i| {
                    address
                        .checked_add(i)
                        .is_none_or(|a| !self.exists(table, a))
                }) {
                    return exception(ExceptionCode::ILLEGAL_DATA_ADDRESS, out);
                }
                let mut values = [0u16; 125];
                for (i, slot) in values.iter_mut().take(usize::from(*count)).enumerate() {
                    match self.read(table, address + i as u16, elapsed_ms) {
                        Some(value) => *slot = value,
                        None => return exception(ExceptionCode::ILLEGAL_DATA_ADDRESS, out),
                    }
                }
                pdu::encode_read_response(
                    *function,
                    values[..usize::from(*count)].iter().copied(),
                    out,
                )
                .unwrap_or_else(|_| exception(ExceptionCode::SERVER_DEVICE_FAILURE, out))
            }
            Request::ReadBits {
                function,
                address,
                count,
            } => {
                let table = table_of(*function);
                if (0..*count).any(|i| {
                    address
                        .checked_add(i)
                        .is_none_or(|a| !self.exists(table, a))
                }) {
                    return exception(ExceptionCode::ILLEGAL_DATA_ADDRESS, out);
                }
                let mut bits = Vec::with_capacity(usize::from(*count));
                for i in 0..*count {
                    match self.read(table, address + i, elapsed_ms) {
                        Some(value) => bits.push(value != 0),
                        None => return exception(ExceptionCode::ILLEGAL_DATA_ADDRESS, out),
                    }
                }
                pdu::encode_bits_response(*function, bits.into_iter(), out)
                    .unwrap_or_else(|_| exception(ExceptionCode::SERVER_DEVICE_FAILURE, out))
            }
            Request::WriteSingleRegister { .. }
            | Request::WriteSingleCoil { .. }
            | Request::WriteMultipleRegisters { .. }
            | Request::WriteMultipleCoils { .. } => {
                let table = if matches!(
                    request,
                    Request::WriteSingleCoil { .. } | Request::WriteMultipleCoils { .. }
                ) {
                    Table::Coils
                } else {
                    Table::Holding
                };
                let start = request.address();
                let values: Vec<u16> = request.write_values().collect();
                if (0..values.len()).any(|i| !self.exists(table, start + i as u16)) {
                    return exception(ExceptionCode::ILLEGAL_DATA_ADDRESS, out);
                }
                for (i, value) in values.into_iter().enumerate() {
                    self.written.insert((table, start + i as u16), value);
                }
                pdu::encode_write_response(&request, out)
                    .unwrap_or_else(|_| exception(ExceptionCode::SERVER_DEVICE_FAILURE, out))
            }
            Request::ReadWriteMultipleRegisters {
                read_address,
                read_count,
                write_address,
                values,
            } => {
                // Function 23: the write happens first, then the read (spec 6.17);
                // any address missing in either part refuses the whole request.
                let read = usize::from(*read_address)
                    ..usize::from(*read_address) + usize::from(*read_count);
                let write = usize::from(*write_address)..usize::from(*write_address) + values.len();
                if read
                    .clone()
                    .chain(write.clone())
                    .any(|a| !self.exists(Table::Holding, a as u16))
                {
                    return exception(ExceptionCode::ILLEGAL_DATA_ADDRESS, out);
                }
                for (a, &value) in write.zip(values.iter()) {
                    self.written.insert((Table::Holding, a as u16), value);
                }
                let registers: Vec<u16> = read
                    .filter_map(|a| self.read(Table::Holding, a as u16, elapsed_ms))
                    .collect();
                pdu::encode_read_response(request.function(), registers.into_iter(), out)
                    .unwrap_or_else(|_| exception(ExceptionCode::SERVER_DEVICE_FAILURE, out))
            }
        }
    }
}

/// Faults injected into one unit's answers; each rate is a probability per request.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Answers whose CRC is corrupted.
    #[serde(default)]
    pub crc_corruption: f64,
    /// Answers with one byte missing.
    #[serde(default)]
    pub dropped_byte: f64,
    /// Answers sent `late_reply_ms` late.
    #[serde(default)]
    pub late_reply: f64,
    /// Extra delay of a late answer, in milliseconds.
    #[serde(default)]
    pub late_reply_ms: u64,
    /// Requests not answered at all.
    #[serde(default)]
    pub silence: f64,
    /// Requests answered with exception 04 (server device failure).
    #[serde(default)]
    pub exception: f64,
    /// Answers written in two halves with `pause_us` of silence between them.
    #[serde(default)]
    pub paused_answer: f64,
    /// Silence inside a paused answer, in microseconds.
    #[serde(default)]
    pub pause_us: u64,
    /// Seed of the fault dice (0 picks a fixed default).
    #[serde(default)]
    pub seed: u64,
}
