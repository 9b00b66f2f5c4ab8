//! Requests the evaluator decides on: Modbus, BLE, connections, listeners.

use core::fmt;

/// Numeric id of a bridge named in the policy (`policy.bridge_id("line1")`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BridgeId(pub u16);

/// Numeric id of a compartment named in the policy (`policy.compartment_id("link")`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CompartmentId(pub u16);

/// Index of a rule in the compiled tables; stable for one compiled policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId(pub u16);

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Who asks for a Modbus or BLE operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Source {
    /// The local poll schedule of the bridge.
    Poll,
    /// A command that came from the fleet over the cloud link.
    Cloud,
    /// A plant-side SCADA client through the gateway facade.
    Facade,
}

impl Source {
    /// Every source, in table order.
    pub const ALL: [Source; 3] = [Source::Poll, Source::Cloud, Source::Facade];

    /// Position in tables and bit masks (`Poll` = 0).
    pub const fn index(self) -> usize {
        match self {
            Source::Poll => 0,
            Source::Cloud => 1,
            Source::Facade => 2,
        }
    }

    /// Bit in a source mask.
    pub const fn bit(self) -> u8 {
        1 << self.index()
    }

    /// Name used in policy files and request text.
    pub const fn name(self) -> &'static str {
        match self {
            Source::Poll => "poll",
            Source::Cloud => "cloud",
            Source::Facade => "facade",
        }
    }

    /// Parses the policy-file name of a source.
    pub fn from_name(name: &str) -> Option<Self> {
        Source::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a Modbus function code does to the address space, as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FunctionKind {
    /// Reads `count` items starting at `address`; `values` must be empty.
    Read {
        /// Largest `count` the protocol allows for this function.
        max_count: u16,
    },
    /// Writes `values` (one per item) starting at `address`.
    Write {
        /// Largest `count` the protocol allows for this function.
        max_count: u16,
        /// True for coils: every value must be 0 or 1.
        coils: bool,
    },
    /// A function with no address (diagnostics, device identification): address,
    /// count and values are ignored.
    Addressless,
}

/// The Modbus function codes the policy knows, with their names in policy files.
pub const MODBUS_FUNCTIONS: [(u8, &str); 14] = [
    (1, "read_coils"),
    (2, "read_discrete_inputs"),
    (3, "read_holding_registers"),
    (4, "read_input_registers"),
    (5, "write_single_coil"),
    (6, "write_single_register"),
    (7, "read_exception_status"),
    (8, "diagnostics"),
    (11, "get_comm_event_counter"),
    (12, "get_comm_event_log"),
    (15, "write_multiple_coils"),
    (16, "write_multiple_registers"),
    (17, "report_server_id"),
    (43, "read_device_identification"),
];

/// Kind of a Modbus function code, or `None` if the policy does not support it
/// (22 mask write and 23 read/write multiple are not: bridges split 23 into 3 and 16).
pub const fn function_kind(function: u8) -> Option<FunctionKind> {
    Some(match function {
        1 | 2 => FunctionKind::Read { max_count: 2000 },
        3 | 4 => FunctionKind::Read { max_count: 125 },
        5 => FunctionKind::Write {
            max_count: 1,
            coils: true,
        },
        6 => FunctionKind::Write {
            max_count: 1,
            coils: false,
        },
        15 => FunctionKind::Write {
            max_count: 1968,
            coils: true,
        },
        16 => FunctionKind::Write {
            max_count: 123,
            coils: false,
        },
        7 | 8 | 11 | 12 | 17 | 43 => FunctionKind::Addressless,
        _ => return None,
    })
}

/// Policy-file name of a function code, if it has one.
pub fn function_name(function: u8) -> Option<&'static str> {
    MODBUS_FUNCTIONS
        .iter()
        .find(|(code, _)| *code == function)
        .map(|(_, name)| *name)
}

/// A Modbus request at a bridge, before it reaches the equipment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModbusRequest<'a> {
    /// The bridge carrying the request.
    pub bridge: BridgeId,
    /// Modbus unit (slave) id.
    pub unit: u8,
    /// Function code.
    pub function: u8,
    /// First 0-based protocol address (register 40001 is address 0 of function 3).
    pub address: u16,
    /// Number of items (registers or coils); 1 for the single-write functions.
    pub count: u16,
    /// Values to write, one per item (coils as 0 or 1); empty for reads.
    pub values: &'a [u16],
    /// Who asks.
    pub source: Source,
}

/// A GATT operation on a BLE characteristic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum BleOperation {
    /// Read the value.
    Read,
    /// Write with response.
    Write,
    /// Write without response.
    WriteWithoutResponse,
    /// Subscribe to notifications.
    Notify,
    /// Subscribe to indications.
    Indicate,
}

impl BleOperation {
    /// Every operation, in bit order.
    pub const ALL: [BleOperation; 5] = [
        BleOperation::Read,
        BleOperation::Write,
        BleOperation::WriteWithoutResponse,
        BleOperation::Notify,
        BleOperation::Indicate,
    ];

    /// Bit in an operation mask.
    pub const fn bit(self) -> u8 {
        match self {
            BleOperation::Read => 1,
            BleOperation::Write => 2,
            BleOperation::WriteWithoutResponse => 4,
            BleOperation::Notify => 8,
            BleOperation::Indicate => 16,
        }
    }

    /// Name used in policy files and request text.
    pub const fn name(self) -> &'static str {
        match self {
            BleOperation::Read => "read",
            BleOperation::Write => "write",
            BleOperation::WriteWithoutResponse => "write_without_response",
            BleOperation::Notify => "notify",
            BleOperation::Indicate => "indicate",
        }
    }

    /// Parses the policy-file name of an operation.
    pub fn from_name(name: &str) -> Option<Self> {
        BleOperation::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// A BLE GATT request at a BLE bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BleRequest {
    /// The BLE bridge.
    pub bridge: BridgeId,
    /// Peer device address, most significant byte first (`C0:FF:EE:00:00:01`).
    pub device: [u8; 6],
    /// Service UUID (16-bit UUIDs expanded with the Bluetooth base UUID).
    pub service: u128,
    /// Characteristic UUID.
    pub characteristic: u128,
    /// Operation.
    pub operation: BleOperation,
    /// Who asks.
    pub source: Source,
}

/// Anything the policy decides on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request<'a> {
    /// A Modbus request at a bridge.
    Modbus(ModbusRequest<'a>),
    /// A BLE GATT operation at a BLE bridge.
    Ble(BleRequest),
    /// An outbound connection from a compartment (checked by the monitor).
    Connect {
        /// The compartment that connects.
        compartment: CompartmentId,
        /// Host name or IP literal as the compartment names it (ASCII, case-insensitive).
        host: &'a str,
        /// TCP/UDP port.
        port: u16,
    },
    /// A listening port opened by a compartment (checked by the monitor).
    Listen {
        /// The compartment that listens.
        compartment: CompartmentId,
        /// TCP/UDP port.
        port: u16,
    },
}

/// Expands a 16-bit Bluetooth UUID with the Bluetooth base UUID.
pub const fn ble_uuid16(short: u16) -> u128 {
    0x0000_0000_0000_1000_8000_0080_5F9B_34FB | ((short as u128) << 96)
}
