//! Modbus protocol data units: requests, responses and exceptions.
//!
//! Addresses are 0-based protocol addresses, as they travel on the wire.

use super::{MAX_PDU_LEN, MAX_READ_REGISTERS};

/// A Modbus function code this bridge speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FunctionCode {
    /// 0x03: read holding registers.
    ReadHoldingRegisters,
    /// 0x04: read input registers.
    ReadInputRegisters,
    /// 0x06: write a single holding register.
    WriteSingleRegister,
}

impl FunctionCode {
    /// The code as it appears on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Self::ReadHoldingRegisters => 0x03,
            Self::ReadInputRegisters => 0x04,
            Self::WriteSingleRegister => 0x06,
        }
    }

    /// Parses a wire code; `None` for codes this bridge does not speak.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0x03 => Some(Self::ReadHoldingRegisters),
            0x04 => Some(Self::ReadInputRegisters),
            0x06 => Some(Self::WriteSingleRegister),
            _ => None,
        }
    }
}

/// A Modbus exception code returned by a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A request PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Write one holding register.
    WriteSingleRegister {
        /// Register, 0-based.
        address: u16,
        /// Value to write.
        value: u16,
    },
}

impl Request {
    /// The function code of this request.
    pub const fn function(&self) -> FunctionCode {
        match self {
            Self::ReadRegisters { function, .. } => *function,
            Self::WriteSingleRegister { .. } => FunctionCode::WriteSingleRegister,
        }
    }

    /// Encodes the PDU into `out`, returning the number of bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, PduError> {
        let (code, a, b) = match *self {
            Self::ReadRegisters {
                function,
                address,
                count,
            } => (function.code(), address, count),
            Self::WriteSingleRegister { address, value } => {
                (FunctionCode::WriteSingleRegister.code(), address, value)
            }
        };
        let bytes = [code, (a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8];
        let dst = out.get_mut(..bytes.len()).ok_or(PduError::BufferTooSmall)?;
        dst.copy_from_slice(&bytes);
        Ok(bytes.len())
    }

    /// Decodes a request PDU (the server side: simulators and the gateway facade).
    pub fn decode(pdu: &[u8]) -> Result<Self, PduError> {
        let (&code, rest) = pdu.split_first().ok_or(PduError::Truncated)?;
        let function = FunctionCode::from_code(code).ok_or(PduError::UnsupportedFunction(code))?;
        if rest.len() != 4 {
            return Err(PduError::BadLength);
        }
        let a = u16::from_be_bytes([rest[0], rest[1]]);
        let b = u16::from_be_bytes([rest[2], rest[3]]);
        match function {
            FunctionCode::ReadHoldingRegisters | FunctionCode::ReadInputRegisters => {
                if b == 0 || b > MAX_READ_REGISTERS {
                    return Err(PduError::BadQuantity(b));
                }
                if u32::from(a) + u32::from(b) > 0x1_0000 {
                    return Err(PduError::AddressOverflow);
                }
                Ok(Self::ReadRegisters {
                    function,
                    address: a,
                    count: b,
                })
            }
            FunctionCode::WriteSingleRegister => Ok(Self::WriteSingleRegister {
                address: a,
                value: b,
            }),
        }
    }
}

/// A response PDU, borrowing its register bytes from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response<'a> {
    /// Registers read, big-endian bytes as on the wire.
    Registers(RegisterBytes<'a>),
    /// Echo of a single-register write.
    WroteSingleRegister {
        /// Register written.
        address: u16,
        /// Value written.
        value: u16,
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
    /// matches and that a read returned exactly the registers asked for.
    pub fn decode_for(request: &Request, pdu: &'a [u8]) -> Result<Self, PduError> {
        let (&code, rest) = pdu.split_first().ok_or(PduError::Truncated)?;
        let expected = request.function().code();
        if code == expected | 0x80 {
            let &exception = rest.first().ok_or(PduError::Truncated)?;
            return Ok(Self::Exception {
                function: expected,
                code: ExceptionCode(exception),
            });
        }
        if code != expected {
            return Err(PduError::FunctionMismatch {
                expected,
                got: code,
            });
        }
        match *request {
            Request::ReadRegisters { count, .. } => {
                let (&byte_count, data) = rest.split_first().ok_or(PduError::Truncated)?;
                if usize::from(byte_count) != data.len() || data.len() != usize::from(count) * 2 {
                    return Err(PduError::BadLength);
                }
                Ok(Self::Registers(RegisterBytes(data)))
            }
            Request::WriteSingleRegister { .. } => {
                if rest.len() != 4 {
                    return Err(PduError::BadLength);
                }
                Ok(Self::WroteSingleRegister {
                    address: u16::from_be_bytes([rest[0], rest[1]]),
                    value: u16::from_be_bytes([rest[2], rest[3]]),
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

/// Encodes a read response (server side) carrying `registers`; returns its length.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PduError {
    /// The PDU ended early.
    #[error("pdu is truncated")]
    Truncated,
    /// A length field disagrees with the data.
    #[error("pdu length does not match its contents")]
    BadLength,
    /// The function code is not one this bridge speaks.
    #[error("function code {0:#04x} is not supported")]
    UnsupportedFunction(u8),
    /// The register count is 0 or above 125.
    #[error("register count {0} is outside 1..=125")]
    BadQuantity(u16),
    /// `address + count` runs past register 65535.
    #[error("address range runs past register 65535")]
    AddressOverflow,
    /// The response answers a different function.
    #[error("response function {got:#04x} does not answer request function {expected:#04x}")]
    FunctionMismatch {
        /// Function of the request.
        expected: u8,
        /// Function in the response.
        got: u8,
    },
    /// The output buffer is too small.
    #[error("output buffer is too small")]
    BufferTooSmall,
}

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
    fn read_request_with_too_many_registers_is_refused() {
        assert_eq!(
            Request::decode(&[0x03, 0, 0, 0, 126]),
            Err(PduError::BadQuantity(126))
        );
        assert_eq!(
            Request::decode(&[0x03, 0xFF, 0xFF, 0, 2]),
            Err(PduError::AddressOverflow)
        );
    }

    #[test]
    fn response_must_carry_exactly_the_registers_asked_for() {
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
    }

    #[test]
    fn server_response_decodes_on_the_client() {
        let request = Request::ReadRegisters {
            function: FunctionCode::ReadInputRegisters,
            address: 7,
            count: 3,
        };
        let mut buf = [0u8; MAX_PDU_LEN];
        let len = encode_read_response(
            FunctionCode::ReadInputRegisters,
            [9u16, 8, 7].into_iter(),
            &mut buf,
        )
        .expect("fits");
        let Ok(Response::Registers(regs)) = Response::decode_for(&request, &buf[..len]) else {
            panic!("expected registers");
        };
        assert_eq!(regs.iter().collect::<Vec<_>>(), vec![9, 8, 7]);
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Request::decode(&bytes);
            let request = Request::ReadRegisters { function: FunctionCode::ReadHoldingRegisters, address: 0, count: 4 };
            let _ = Response::decode_for(&request, &bytes);
        }
    }
}
