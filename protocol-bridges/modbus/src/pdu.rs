//! Modbus protocol data units: requests, responses and exceptions.
//!
//! Addresses are 0-based protocol addresses, as they travel on the wire. Requests own
//! their values in fixed-capacity storage, so nothing here allocates.

use crate::{MAX_PDU_LEN, MAX_READ_BITS, MAX_READ_REGISTERS, MAX_WRITE_BITS, MAX_WRITE_REGISTERS};

/// A Modbus function code this bridge speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FunctionCode {
    /// 0x01: read coils.
    ReadCoils,
    /// 0x02: read discrete inputs.
    ReadDiscreteInputs,
    /// 0x03: read holding registers.
    ReadHoldingRegisters,
    /// 0x04: read input registers.
    ReadInputRegisters,
    /// 0x05: write a single coil.
    WriteSingleCoil,
    /// 0x06: write a single holding register.
    WriteSingleRegister,
    /// 0x0F: write multiple coils.
    WriteMultipleCoils,
    /// 0x10: write multiple holding registers.
    WriteMultipleRegisters,
    /// 0x17: write multiple holding registers, then read holding registers, in one
    /// transaction.
    ReadWriteMultipleRegisters,
}

impl FunctionCode {
    /// The code as it appears on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Self::ReadCoils => 0x01,
            Self::ReadDiscreteInputs => 0x02,
            Self::ReadHoldingRegisters => 0x03,
            Self::ReadInputRegisters => 0x04,
            Self::WriteSingleCoil => 0x05,
            Self::WriteSingleRegister => 0x06,
            Self::WriteMultipleCoils => 0x0F,
            Self::WriteMultipleRegisters => 0x10,
            Self::ReadWriteMultipleRegisters => 0x17,
        }
    }

    /// Parses a wire code; `None` for codes this bridge does not speak.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0x01 => Some(Self::ReadCoils),
            0x02 => Some(Self::ReadDiscreteInputs),
            0x03 => Some(Self::ReadHoldingRegisters),
            0x04 => Some(Self::ReadInputRegisters),
            0x05 => Some(Self::WriteSingleCoil),
            0x06 => Some(Self::WriteSingleRegister),
            0x0F => Some(Self::WriteMultipleCoils),
            0x10 => Some(Self::WriteMultipleRegisters),
            0x17 => Some(Self::ReadWriteMultipleRegisters),
            _ => None,
        }
    }

    /// True for the functions that change equipment state.
    pub const fn is_write(self) -> bool {
        matches!(
            self,
            Self::WriteSingleCoil
                | Self::WriteSingleRegister
                | Self::WriteMultipleCoils
                | Self::WriteMultipleRegisters
                | Self::ReadWriteMultipleRegisters
        )
    }
}

/// A Modbus exception code returned by a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ExceptionCode(pub u8);

impl ExceptionCode {
    /// 0x01: the function is not allowed (also what the gateway answers for a policy denial).
    pub const ILLEGAL_FUNCTION: Self = Self(0x01);
    /// 0x02: the address range is not allowed.
    pub const ILLEGAL_DATA_ADDRESS: Self = Self(0x02);
    /// 0x03: a value in the request is not allowed.
    pub const ILLEGAL_DATA_VALUE: Self = Self(0x03);
    /// 0x04: the device failed while performing the request.
    pub const SERVER_DEVICE_FAILURE: Self = Self(0x04);
    /// 0x0A: the gateway has no path to the addressed unit.
    pub const GATEWAY_PATH_UNAVAILABLE: Self = Self(0x0A);
    /// 0x0B: the unit behind the gateway did not answer.
    pub const GATEWAY_TARGET_FAILED: Self = Self(0x0B);
}

impl core::fmt::Display for ExceptionCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let name = match self.0 {
            0x01 => "illegal function",
            0x02 => "illegal data address",
            0x03 => "illegal data value",
            0x04 => "server device failure",
            0x05 => "acknowledge",
            0x06 => "server device busy",
            0x0A => "gateway path unavailable",
            0x0B => "gateway target failed to respond",
            _ => "unknown exception",
        };
        write!(f, "exception {:#04x} ({name})", self.0)
    }
}

/// Register values of a multi-register write (at most 123).
pub type RegisterValues = heapless::Vec<u16, { MAX_WRITE_REGISTERS as usize }>;

/// Register values written by function 23 (at most 121; sized so the variant is no
/// larger than a multi-register write).
pub type ReadWriteValues = heapless::Vec<u16, { MAX_READ_WRITE_REGISTERS as usize }>;

/// Coil values of a multi-coil write (at most 1968), packed as on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct CoilValues {
    count: u16,
    bits: [u8; (MAX_WRITE_BITS as usize).div_ceil(8)],
}

impl core::fmt::Debug for CoilValues {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl CoilValues {
    /// Packs `values`; `None` if there are none or more than 1968.
    pub fn from_bools(values: impl IntoIterator<Item = bool>) -> Option<Self> {
        let mut out = Self {
            count: 0,
            bits: [0; (MAX_WRITE_BITS as usize).div_ceil(8)],
        };
        for value in values {
            if out.count >= MAX_WRITE_BITS {
                return None;
            }
            if value {
                out.bits[usize::from(out.count / 8)] |= 1 << (out.count % 8);
            }
            out.count += 1;
        }
        (out.count > 0).then_some(out)
    }

    fn from_packed(count: u16, packed: &[u8]) -> Option<Self> {
        if count == 0 || count > MAX_WRITE_BITS || packed.len() != usize::from(count).div_ceil(8) {
            return None;
        }
        let mut out = Self {
            count,
            bits: [0; (MAX_WRITE_BITS as usize).div_ceil(8)],
        };
        out.bits[..packed.len()].copy_from_slice(packed);
        Some(out)
    }

    /// Number of coils.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// True when no coil is held (never for a decoded request).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The coil values in address order.
    pub fn iter(&self) -> impl Iterator<Item = bool> + '_ {
        (0..self.count).map(|i| self.bits[usize::from(i / 8)] & (1 << (i % 8)) != 0)
    }

    fn packed(&self) -> &[u8] {
        &self.bits[..usize::from(self.count).div_ceil(8)]
    }
}

/// A request PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Read `count` registers starting at `address`, from the holding or input table.
    ReadRegisters {
        /// Which function (holding or input).
        function: FunctionCode,
        /// First register, 0-based.
        address: u16,
        /// Number of registers, 1..=125.
        count: u16,
    },
    /// Read `count` coils or discrete inputs starting at `address`.
    ReadBits {
        /// Which function (coils or discrete inputs).
        function: FunctionCode,
        /// First bit, 0-based.
        address: u16,
        /// Number of bits, 1..=2000.
        count: u16,
    },
    /// Write one holding register.
    WriteSingleRegister {
        /// Register, 0-based.
        address: u16,
        /// Value to write.
        value: u16,
    },
    /// Write one coil.
    WriteSingleCoil {
        /// Coil, 0-based.
        address: u16,
        /// On or off.
        value: bool,
    },
    /// Write consecutive holding registers.
    WriteMultipleRegisters {
        /// First register, 0-based.
        address: u16,
        /// Values, 1..=123 of them.
        values: RegisterValues,
    },
    /// Write consecutive coils.
    WriteMultipleCoils {
        /// First coil, 0-based.
        address: u16,
        /// Values, 1..=1968 of them.
        values: CoilValues,
    },
    /// Function 23: write consecutive holding registers, then read consecutive
    /// holding registers, in one transaction (the write happens first).
    ReadWriteMultipleRegisters {
        /// First register read, 0-based.
        read_address: u16,
        /// Number of registers read, 1..=125.
        read_count: u16,
        /// First register written, 0-based.
        write_address: u16,
        /// Values written, 1..=121 of them.
        values: ReadWriteValues,
    },
}

/// Most registers function 23 may write (the spec's 0x79).
pub const MAX_READ_WRITE_REGISTERS: u16 = 121;

impl Request {
    /// The function code of this request.
    pub const fn function(&self) -> FunctionCode {
        match self {
            Self::ReadRegisters { function, .. } | Self::ReadBits { function, .. } => *function,
            Self::WriteSingleRegister { .. } => FunctionCode::WriteSingleRegister,
            Self::WriteSingleCoil { .. } => FunctionCode::WriteSingleCoil,
            Self::WriteMultipleRegisters { .. } => FunctionCode::WriteMultipleRegisters,
            Self::WriteMultipleCoils { .. } => FunctionCode::WriteMultipleCoils,
            Self::ReadWriteMultipleRegisters { .. } => FunctionCode::ReadWriteMultipleRegisters,
        }
    }

    /// First address the request touches (for function 23, the first address read;
    /// see [`Self::read_write_parts`]).
    pub const fn address(&self) -> u16 {
        match self {
            Self::ReadRegisters { address, .. }
            | Self::ReadBits { address, .. }
            | Self::WriteSingleRegister { address, .. }
            | Self::WriteSingleCoil { address, .. }
            | Self::WriteMultipleRegisters { address, .. }
            | Self::WriteMultipleCoils { address, .. } => *address,
            Self::ReadWriteMultipleRegisters { read_address, .. } => *read_address,
        }
    }

    /// Number of registers or bits the request touches (for function 23, the number
    /// read; see [`Self::read_write_parts`]).
    pub fn count(&self) -> u16 {
        match self {
            Self::ReadRegisters { count, .. } | Self::ReadBits { count, .. } => *count,
            Self::WriteSingleRegister { .. } | Self::WriteSingleCoil { .. } => 1,
            Self::WriteMultipleRegisters { values, .. } => values.len() as u16,
            Self::WriteMultipleCoils { values, .. } => values.count,
            Self::ReadWriteMultipleRegisters { read_count, .. } => *read_count,
        }
    }

    /// Function 23 as the two requests it is made of, the read (function 3) and the
    /// write (function 16), so a policy can judge each; `None` for other functions.
    pub fn read_write_parts(&self) -> Option<(Self, Self)> {
        let Self::ReadWriteMultipleRegisters {
            read_address,
            read_count,
            write_address,
            values,
        } = self
        else {
            return None;
        };
        Some((
            Self::ReadRegisters {
                function: FunctionCode::ReadHoldingRegisters,
                address: *read_address,
                count: *read_count,
            },
            Self::WriteMultipleRegisters {
                address: *write_address,
                values: values.iter().copied().collect(),
            },
        ))
    }

    /// The values a write carries, as the policy sees them (coils as 0 or 1); empty
    /// for reads.
    pub fn write_values(&self) -> impl Iterator<Item = u16> + '_ {
        let (single, registers, coils): (Option<u16>, &[u16], Option<&CoilValues>) = match self {
            Self::WriteSingleRegister { value, .. } => (Some(*value), &[], None),
            Self::WriteSingleCoil { value, .. } => (Some(u16::from(*value)), &[], None),
            Self::WriteMultipleRegisters { values, .. } => (None, values.as_slice(), None),
            Self::ReadWriteMultipleRegisters { values, .. } => (None, values.as_slice(), None),
            Self::WriteMultipleCoils { values, .. } => (None, &[], Some(values)),
            Self::ReadRegisters { .. } | Self::ReadBits { .. } => (None, &[], None),
        };
        single
            .into_iter()
            .chain(registers.iter().copied())
            .chain(coils.into_iter().flat_map(|c| c.iter().map(u16::from)))
    }

    /// Encodes the PDU into `out`, returning the number of bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, PduError> {
        if let Self::ReadWriteMultipleRegisters {
            read_address,
            read_count,
            write_address,
            values,
        } = self
        {
            let total = 10 + values.len() * 2;
            let dst = out.get_mut(..total).ok_or(PduError::BufferTooSmall)?;
            dst[0] = FunctionCode::ReadWriteMultipleRegisters.code();
            dst[1..3].copy_from_slice(&read_address.to_be_bytes());
            dst[3..5].copy_from_slice(&read_count.to_be_bytes());
            dst[5..7].copy_from_slice(&write_address.to_be_bytes());
            dst[7..9].copy_from_slice(&(values.len() as u16).to_be_bytes());
            dst[9] = (values.len() * 2) as u8;
            for (slot, value) in dst[10..].chunks_exact_mut(2).zip(values) {
                slot.copy_from_slice(&value.to_be_bytes());
            }
            return Ok(total);
        }
        let code = self.function().code();
        let address = self.address().to_be_bytes();
        let (second, tail): (u16, Option<&[u8]>) = match self {
            Self::ReadRegisters { count, .. } | Self::ReadBits { count, .. } => (*count, None),
            Self::WriteSingleRegister { value, .. } => (*value, None),
            Self::WriteSingleCoil { value, .. } => (if *value { 0xFF00 } else { 0 }, None),
            Self::WriteMultipleRegisters { values, .. } => (values.len() as u16, Some(&[])),
            Self::WriteMultipleCoils { values, .. } => (values.count, Some(values.packed())),
            Self::ReadWriteMultipleRegisters { .. } => return Err(PduError::BadLength),
        };
        let head = [
            code,
            address[0],
            address[1],
            (second >> 8) as u8,
            second as u8,
        ];
        let Some(tail) = tail else {
            out.get_mut(..5)
                .ok_or(PduError::BufferTooSmall)?
                .copy_from_slice(&head);
            return Ok(5);
        };
        let data_len = match self {
            Self::WriteMultipleRegisters { values, .. } => values.len() * 2,
            _ => tail.len(),
        };
        let total = 6 + data_len;
        let dst = out.get_mut(..total).ok_or(PduError::BufferTooSmall)?;
        dst[..5].copy_from_slice(&head);
        dst[5] = data_len as u8;
        match self {
            Self::WriteMultipleRegisters { values, .. } => {
                for (slot, value) in dst[6..].chunks_exact_mut(2).zip(values) {
                    slot.copy_from_slice(&value.to_be_bytes());
                }
            }
            _ => dst[6..].copy_from_slice(tail),
        }
        Ok(total)
    }

    /// Decodes a request PDU (the server side: simulators and the gateway facade).
    pub fn decode(pdu: &[u8]) -> Result<Self, PduError> {
        let (&code, rest) = pdu.split_first().ok_or(PduError::Truncated)?;
        let function = FunctionCode::from_code(code).ok_or(PduError::UnsupportedFunction(code))?;
        let head = rest.get(..4).ok_or(PduError::Truncated)?;
        let a = u16::from_be_bytes([head[0], head[1]]);
        let b = u16::from_be_bytes([head[2], head[3]]);
        let fixed = |request: Self| {
            if rest.len() == 4 {
                Ok(request)
            } else {
                Err(PduError::BadLength)
            }
        };
        let range_ok = |count: u16, max: u16| {
            if count == 0 || count > max {
                Err(PduError::BadQuantity(count))
            } else if u32::from(a) + u32::from(count) > 0x1_0000 {
                Err(PduError::AddressOverflow)
            } else {
                Ok(())
            }
        };
        match function {
            FunctionCode::ReadHoldingRegisters | FunctionCode::ReadInputRegisters => {
                range_ok(b, MAX_READ_REGISTERS)?;
                fixed(Self::ReadRegisters {
                    function,
                    address: a,
                    count: b,
                })
            }
            FunctionCode::ReadCoils | FunctionCode::ReadDiscreteInputs => {
                range_ok(b, MAX_READ_BITS)?;
                fixed(Self::ReadBits {
                    function,
                    address: a,
                    count: b,
                })
            }
            FunctionCode::WriteSingleRegister => fixed(Self::WriteSingleRegister {
                address: a,
                value: b,
            }),
            FunctionCode::WriteSingleCoil => {
                let value = match b {
                    0xFF00 => true,
                    0x0000 => false,
                    other => return Err(PduError::BadCoilValue(other)),
                };
                fixed(Self::WriteSingleCoil { address: a, value })
            }
            FunctionCode::WriteMultipleRegisters | FunctionCode::WriteMultipleCoils => {
                let (&byte_count, data) = rest[4..].split_first().ok_or(PduError::Truncated)?;
                if usize::from(byte_count) != data.len() {
                    return Err(PduError::BadLength);
                }
                if function == FunctionCode::WriteMultipleRegisters {
                    range_ok(b, MAX_WRITE_REGISTERS)?;
                    if data.len() != usize::from(b) * 2 {
                        return Err(PduError::BadLength);
                    }
                    let mut values = RegisterValues::new();
                    for pair in data.chunks_exact(2) {
                        values
                            .push(u16::from_be_bytes([pair[0], pair[1]]))
                            .map_err(|_| PduError::BadQuantity(b))?;
                    }
                    Ok(Self::WriteMultipleRegisters { address: a, values })
                } else {
                    range_ok(b, MAX_WRITE_BITS)?;
                    let values = CoilValues::from_packed(b, data).ok_or(PduError::BadLength)?;
                    Ok(Self::WriteMultipleCoils { address: a, values })
                }
            }
            FunctionCode::ReadWriteMultipleRegisters => {
                range_ok(b, MAX_READ_REGISTERS)?;
                let head = rest.get(4..9).ok_or(PduError::Truncated)?;
                let write_address = u16::from_be_bytes([head[0], head[1]]);
                let write_count = u16::from_be_bytes([head[2], head[3]]);
                let data = &rest[9..];
                if write_count == 0 || write_count > MAX_READ_WRITE_REGISTERS {
                    return Err(PduError::BadQuantity(write_count));
                }
                if u32::from(write_address) + u32::from(write_count) > 0x1_0000 {
                    return Err(PduError::AddressOverflow);
                }
                if usize::from(head[4]) != data.len() || data.len() != usize::from(write_count) * 2
                {
                    return Err(PduError::BadLength);
                }
                let mut values = ReadWriteValues::new();
                for pair in data.chunks_exact(2) {
                    values
                        .push(u16::from_be_bytes([pair[0], pair[1]]))
                        .map_err(|_| PduError::BadQuantity(write_count))?;
                }
                Ok(Self::ReadWriteMultipleRegisters {
                    read_address: a,
                    read_count: b,
                    write_address,
                    values,
                })
            }
        }
    }
}

/// A response PDU, borrowing its data bytes from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response<'a> {
    /// Registers read, big-endian bytes as on the wire.
    Registers(RegisterBytes<'a>),
    /// Coils or discrete inputs read.
    Bits(BitBytes<'a>),
    /// Echo of a single-register write.
    WroteSingleRegister {
        /// Register written.
        address: u16,
        /// Value written.
        value: u16,
    },
    /// Echo of a single-coil write.
    WroteSingleCoil {
        /// Coil written.
        address: u16,
        /// Value written.
        value: bool,
    },
    /// Confirmation of a multi-register or multi-coil write.
    WroteMultiple {
        /// First address written.
        address: u16,
        /// Number written.
        count: u16,
    },
    /// The device answered with an exception.
    Exception {
        /// The function the exception answers.
        function: u8,
        /// The exception code.
        code: ExceptionCode,
    },
}

impl<'a> Response<'a> {
    /// Decodes the response to `request` (the client side). Checks that the function
    /// matches, that a read returned exactly what was asked for and that a write echo
    /// names the same address and quantity.
    pub fn decode_for(request: &Request, pdu: &'a [u8]) -> Result<Self, PduError> {
        let (&code, rest) = pdu.split_first().ok_or(PduError::Truncated)?;
        let expected = request.function().code();
        if code == expected | 0x80 {
            if rest.len() != 1 {
                return Err(PduError::BadLength);
            }
            return Ok(Self::Exception {
                function: expected,
                code: ExceptionCode(rest[0]),
            });
        }
        if code != expected {
            return Err(PduError::FunctionMismatch {
                expected,
                got: code,
            });
        }
        let echo = || -> Result<(u16, u16), PduError> {
            if rest.len() != 4 {
                return Err(PduError::BadLength);
            }
            Ok((
                u16::from_be_bytes([rest[0], rest[1]]),
                u16::from_be_bytes([rest[2], rest[3]]),
            ))
        };
        match request {
            Request::ReadRegisters { count, .. }
            | Request::ReadBits { count, .. }
            | Request::ReadWriteMultipleRegisters {
                read_count: count, ..
            } => {
                let (&byte_count, data) = rest.split_first().ok_or(PduError::Truncated)?;
                let registers = !matches!(request, Request::ReadBits { .. });
                let wanted = if registers {
                    usize::from(*count) * 2
                } else {
                    usize::from(*count).div_ceil(8)
                };
                if usize::from(byte_count) != data.len() || data.len() != wanted {
                    return Err(PduError::BadLength);
                }
                Ok(if registers {
                    Self::Registers(RegisterBytes(data))
                } else {
                    Self::Bits(BitBytes {
                        bytes: data,
                        count: *count,
                    })
                })
            }
            Request::WriteSingleRegister { address, value } => {
                let got = echo()?;
                if got != (*address, *value) {
                    return Err(PduError::EchoMismatch);
                }
                Ok(Self::WroteSingleRegister {
                    address: got.0,
                    value: got.1,
                })
            }
            Request::WriteSingleCoil { address, value } => {
                let got = echo()?;
                let wire = if *value { 0xFF00 } else { 0 };
                if got != (*address, wire) {
                    return Err(PduError::EchoMismatch);
                }
                Ok(Self::WroteSingleCoil {
                    address: got.0,
                    value: *value,
                })
            }
            Request::WriteMultipleRegisters { .. } | Request::WriteMultipleCoils { .. } => {
                let got = echo()?;
                if got != (request.address(), request.count()) {
                    return Err(PduError::EchoMismatch);
                }
                Ok(Self::WroteMultiple {
                    address: got.0,
                    count: got.1,
                })
            }
        }
    }
}

/// Register values as big-endian byte pairs, borrowed from a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterBytes<'a>(&'a [u8]);

impl<'a> RegisterBytes<'a> {
    /// Number of registers.
    pub fn len(&self) -> usize {
        self.0.len() / 2
    }

    /// True when no register is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The registers as numbers.
    pub fn iter(&self) -> impl Iterator<Item = u16> + 'a {
        self.0
            .chunks_exact(2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
    }
}

/// Bit values packed eight to a byte, least significant bit first, borrowed from a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitBytes<'a> {
    bytes: &'a [u8],
    count: u16,
}

impl<'a> BitBytes<'a> {
    /// Number of bits asked for.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// True when no bit is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The bits in address order.
    pub fn iter(&self) -> impl Iterator<Item = bool> + 'a {
        let bytes = self.bytes;
        (0..self.count).map(move |i| bytes[usize::from(i / 8)] & (1 << (i % 8)) != 0)
    }
}

/// Encodes a register read response (server side) carrying `registers`; returns its length.
pub fn encode_read_response(
    function: FunctionCode,
    registers: impl ExactSizeIterator<Item = u16>,
    out: &mut [u8],
) -> Result<usize, PduError> {
    let count = registers.len();
    let len = 2 + count * 2;
    if count > usize::from(MAX_READ_REGISTERS) || len > MAX_PDU_LEN {
        return Err(PduError::BadQuantity(
            u16::try_from(count).unwrap_or(u16::MAX),
        ));
    }
    let dst = out.get_mut(..len).ok_or(PduError::BufferTooSmall)?;
    dst[0] = function.code();
    dst[1] = (count * 2) as u8;
    for (slot, value) in dst[2..].chunks_exact_mut(2).zip(registers) {
        slot.copy_from_slice(&value.to_be_bytes());
    }
    Ok(len)
}

/// Encodes a coil or discrete-input read response (server side); returns its length.
pub fn encode_bits_response(
    function: FunctionCode,
    bits: impl ExactSizeIterator<Item = bool>,
    out: &mut [u8],
) -> Result<usize, PduError> {
    let count = bits.len();
    if count == 0 || count > usize::from(MAX_READ_BITS) {
        return Err(PduError::BadQuantity(
            u16::try_from(count).unwrap_or(u16::MAX),
        ));
    }
    let byte_count = count.div_ceil(8);
    let dst = out
        .get_mut(..2 + byte_count)
        .ok_or(PduError::BufferTooSmall)?;
    dst[0] = function.code();
    dst[1] = byte_count as u8;
    dst[2..].fill(0);
    for (i, bit) in bits.enumerate() {
        if bit {
            dst[2 + i / 8] |= 1 << (i % 8);
        }
    }
    Ok(2 + byte_count)
}

/// Encodes the normal response to a write `request` (the echo for single writes,
/// address and quantity for multiple writes); returns its length. Errors for reads.
pub fn encode_write_response(request: &Request, out: &mut [u8]) -> Result<usize, PduError> {
    match request {
        Request::WriteSingleRegister { .. } | Request::WriteSingleCoil { .. } => {
            request.encode(out)
        }
        Request::WriteMultipleRegisters { .. } | Request::WriteMultipleCoils { .. } => {
            let dst = out.get_mut(..5).ok_or(PduError::BufferTooSmall)?;
            dst[0] = request.function().code();
            dst[1..3].copy_from_slice(&request.address().to_be_bytes());
            dst[3..5].copy_from_slice(&request.count().to_be_bytes());
            Ok(5)
        }
        Request::ReadRegisters { .. }
        | Request::ReadBits { .. }
        | Request::ReadWriteMultipleRegisters { .. } => Err(PduError::FunctionMismatch {
            expected: 0x10,
            got: request.function().code(),
        }),
    }
}

/// Encodes an exception response (server side); returns its length (2).
pub fn encode_exception(
    function: u8,
    code: ExceptionCode,
    out: &mut [u8],
) -> Result<usize, PduError> {
    let dst = out.get_mut(..2).ok_or(PduError::BufferTooSmall)?;
    dst[0] = function | 0x80;
    dst[1] = code.0;
    Ok(2)
}

/// What was wrong with a PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PduError {
    /// The PDU ended early.
    Truncated,
    /// A length field disagrees with the data.
    BadLength,
    /// The function code is not one this bridge speaks.
    UnsupportedFunction(u8),
    /// The quantity is 0 or above the function's limit.
    BadQuantity(u16),
    /// `address + count` runs past address 65535.
    AddressOverflow,
    /// A single-coil write carried a value other than 0xFF00 or 0x0000.
    BadCoilValue(u16),
    /// The response answers a different function.
    FunctionMismatch {
        /// Function of the request.
        expected: u8,
        /// Function in the response.
        got: u8,
    },
    /// A write confirmation names another address, value or quantity.
    EchoMismatch,
    /// The output buffer is too small.
    BufferTooSmall,
}

impl core::fmt::Display for PduError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated => f.write_str("pdu is truncated"),
            Self::BadLength => f.write_str("pdu length does not match its contents"),
            Self::UnsupportedFunction(code) => {
                write!(f, "function code {code:#04x} is not supported")
            }
            Self::BadQuantity(count) => {
                write!(f, "quantity {count} is outside what the function allows")
            }
            Self::AddressOverflow => f.write_str("address range runs past address 65535"),
            Self::BadCoilValue(value) => {
                write!(f, "coil value {value:#06x} is neither 0xff00 nor 0x0000")
            }
            Self::FunctionMismatch { expected, got } => write!(
                f,
                "response function {got:#04x} does not answer request function {expected:#04x}"
            ),
            Self::EchoMismatch => f.write_str("write confirmation does not match the request"),
            Self::BufferTooSmall => f.write_str("output buffer is too small"),
        }
    }
}

impl core::error::Error for PduError {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn read_request_round_trips() {
        let request = Request::ReadRegisters {
            function: FunctionCode::ReadHoldingRegisters,
            address: 0x1234,
            count: 10,
        };
        let mut buf = [0u8; 8];
        let len = request.encode(&mut buf).expect("fits");
        assert_eq!(&buf[..len], &[0x03, 0x12, 0x34, 0x00, 0x0A]);
        assert_eq!(Request::decode(&buf[..len]), Ok(request));
    }

    #[test]
    fn read_write_multiple_registers_round_trips_and_splits_for_the_policy() {
        let mut values = ReadWriteValues::new();
        values.extend([0x0102u16, 3]);
        let request = Request::ReadWriteMultipleRegisters {
            read_address: 4,
            read_count: 3,
            write_address: 0x20,
            values: values.clone(),
        };
        let mut buf = [0u8; MAX_PDU_LEN];
        let len = request.encode(&mut buf).expect("fits");
        // The spec's layout: read address, read count, write address, write count,
        // byte count, values.
        assert_eq!(
            &buf[..len],
            &[0x17, 0, 4, 0, 3, 0, 0x20, 0, 2, 4, 1, 2, 0, 3]
        );
        assert_eq!(Request::decode(&buf[..len]), Ok(request.clone()));
        assert!(request.function().is_write());
        assert_eq!(request.write_values().collect::<Vec<_>>(), vec![0x0102, 3]);
        let (read, write) = request.read_write_parts().expect("function 23");
        assert_eq!(
            read,
            Request::ReadRegisters {
                function: FunctionCode::ReadHoldingRegisters,
                address: 4,
                count: 3
            }
        );
        assert_eq!(
            write,
            Request::WriteMultipleRegisters {
                address: 0x20,
                values: values.iter().copied().collect()
            }
        );
        assert_eq!(read.read_write_parts(), None);
        // The answer is the registers read.
        let answer = [0x17, 6, 0, 1, 0, 2, 0, 3];
        let Ok(Response::Registers(registers)) = Response::decode_for(&request, &answer) else {
            panic!("expected registers");
        };
        assert_eq!(registers.iter().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(
            Response::decode_for(&request, &answer[..6]),
            Err(PduError::BadLength)
        );
        // Byte count that disagrees, no values, too many values.
        buf[9] = 3;
        assert_eq!(Request::decode(&buf[..len]), Err(PduError::BadLength));
        let empty = [0x17, 0, 4, 0, 3, 0, 0x20, 0, 0, 0];
        assert_eq!(Request::decode(&empty), Err(PduError::BadQuantity(0)));
        let too_many = [0x17, 0, 4, 0, 3, 0, 0x20, 0, 122, 244];
        assert_eq!(Request::decode(&too_many), Err(PduError::BadQuantity(122)));
        let no_read = [0x17, 0, 4, 0, 0, 0, 0x20, 0, 1, 2, 0, 1];
        assert_eq!(Request::decode(&no_read), Err(PduError::BadQuantity(0)));
    }

    #[test]
    fn multiple_writes_round_trip_with_their_byte_count() {
        let mut values = RegisterValues::new();
        values.extend([1u16, 0x0203]);
        let request = Request::WriteMultipleRegisters { address: 7, values };
        let mut buf = [0u8; MAX_PDU_LEN];
        let len = request.encode(&mut buf).expect("fits");
        assert_eq!(&buf[..len], &[0x10, 0, 7, 0, 2, 4, 0, 1, 2, 3]);
        assert_eq!(Request::decode(&buf[..len]), Ok(request.clone()));
        assert_eq!(request.write_values().collect::<Vec<_>>(), vec![1, 0x0203]);

        let coils =
            CoilValues::from_bools([true, false, true, true, false, false, false, false, true])
                .expect("9 coils");
        let request = Request::WriteMultipleCoils {
            address: 19,
            values: coils,
        };
        let len = request.encode(&mut buf).expect("fits");
        assert_eq!(
            &buf[..len],
            &[0x0F, 0, 19, 0, 9, 2, 0b0000_1101, 0b0000_0001]
        );
        assert_eq!(Request::decode(&buf[..len]), Ok(request.clone()));
        assert_eq!(
            request.write_values().collect::<Vec<_>>(),
            vec![1, 0, 1, 1, 0, 0, 0, 0, 1]
        );
        let mut echo = [0u8; 8];
        let len = encode_write_response(&request, &mut echo).expect("fits");
        assert_eq!(
            Response::decode_for(&request, &echo[..len]),
            Ok(Response::WroteMultiple {
                address: 19,
                count: 9
            })
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        assert_eq!(
            Request::decode(&[0x03, 0, 0, 0, 126]),
            Err(PduError::BadQuantity(126))
        );
        assert_eq!(
            Request::decode(&[0x03, 0xFF, 0xFF, 0, 2]),
            Err(PduError::AddressOverflow)
        );
        assert_eq!(
            Request::decode(&[0x05, 0, 1, 0x12, 0x34]),
            Err(PduError::BadCoilValue(0x1234))
        );
        assert_eq!(
            Request::decode(&[0x10, 0, 1, 0, 2, 4, 0, 1, 2]),
            Err(PduError::BadLength)
        );
        assert_eq!(
            Request::decode(&[0x10, 0, 1, 0, 2, 2, 0, 1]),
            Err(PduError::BadLength)
        );
    }

    #[test]
    fn response_must_carry_exactly_what_was_asked_for() {
        let request = Request::ReadRegisters {
            function: FunctionCode::ReadHoldingRegisters,
            address: 0,
            count: 2,
        };
        let ok = [0x03, 4, 0, 1, 0, 2];
        let Ok(Response::Registers(regs)) = Response::decode_for(&request, &ok) else {
            panic!("expected registers");
        };
        assert_eq!(regs.iter().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(
            Response::decode_for(&request, &[0x03, 2, 0, 1]),
            Err(PduError::BadLength)
        );
        assert_eq!(
            Response::decode_for(&request, &[0x04, 4, 0, 1, 0, 2]),
            Err(PduError::FunctionMismatch {
                expected: 3,
                got: 4
            })
        );
        assert_eq!(
            Response::decode_for(&request, &[0x83, 0x02]),
            Ok(Response::Exception {
                function: 3,
                code: ExceptionCode::ILLEGAL_DATA_ADDRESS
            })
        );
        let write = Request::WriteSingleRegister {
            address: 4,
            value: 9,
        };
        assert_eq!(
            Response::decode_for(&write, &[0x06, 0, 4, 0, 8]),
            Err(PduError::EchoMismatch)
        );
    }

    #[test]
    fn bits_round_trip_through_server_and_client() {
        let request = Request::ReadBits {
            function: FunctionCode::ReadCoils,
            address: 3,
            count: 10,
        };
        let bits = [
            true, false, false, true, true, false, true, false, false, true,
        ];
        let mut buf = [0u8; MAX_PDU_LEN];
        let len = encode_bits_response(FunctionCode::ReadCoils, bits.iter().copied(), &mut buf)
            .expect("fits");
        assert_eq!(len, 4);
        let Ok(Response::Bits(got)) = Response::decode_for(&request, &buf[..len]) else {
            panic!("expected bits");
        };
        assert_eq!(got.iter().collect::<Vec<_>>(), bits.to_vec());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(request) = Request::decode(&bytes) {
                let mut again = [0u8; MAX_PDU_LEN];
                let len = request.encode(&mut again).expect("a decoded request re-encodes");
                prop_assert_eq!(&again[..len], &bytes[..]);
            }
            let request = Request::ReadRegisters { function: FunctionCode::ReadHoldingRegisters, address: 0, count: 4 };
            let _ = Response::decode_for(&request, &bytes);
            let request = Request::ReadBits { function: FunctionCode::ReadCoils, address: 0, count: 12 };
            let _ = Response::decode_for(&request, &bytes);
        }
    }
}
