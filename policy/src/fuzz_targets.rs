//! Fuzz harnesses as plain functions: `policy/fuzz` and the proptests both call them.

use crate::bundle::{BundleTrust, ProductId, decode_unverified, verify_bundle};
use crate::compiler::compile;
use crate::evaluate::evaluate;
use crate::rate::RateState;
use crate::request::{
    BleOperation, BleRequest, BridgeId, CompartmentId, ModbusRequest, Request, Source,
};
use crate::tables::{CoreTables, DecodedTables, TableError};

/// Evaluates a spread of requests (must not panic on any tables).
fn exercise(tables: &crate::tables::PolicyTables<'_>, seed: &[u8]) {
    let mut storage = [0u64; 64];
    let mut rate = RateState::from_storage(&mut storage[..]);
    let byte = |i: usize| seed.get(i % seed.len().max(1)).copied().unwrap_or(0);
    let values = [0u16, 1, 500, u16::MAX];
    for i in 0..16usize {
        let b = byte(i);
        let request = match i % 4 {
            0 | 1 => Request::Modbus(ModbusRequest {
                bridge: BridgeId(u16::from(b % 4)),
                unit: byte(i + 1) % 4,
                function: [1, 3, 5, 6, 15, 16, 8, 23][usize::from(b % 8)],
                address: u16::from(byte(i + 2)),
                count: u16::from(byte(i + 3) % 5),
                values: &values[..usize::from(byte(i + 3) % 5)],
                source: Source::ALL[usize::from(b % 3)],
            }),
            2 => Request::Ble(BleRequest {
                bridge: BridgeId(u16::from(b % 4)),
                device: [b; 6],
                service: crate::request::ble_uuid16(0x1800 + u16::from(b % 4)),
                characteristic: crate::request::ble_uuid16(0x2A00 + u16::from(b % 4)),
                operation: BleOperation::ALL[usize::from(b % 5)],
                source: Source::ALL[usize::from(b % 3)],
            }),
            _ => Request::Connect {
                compartment: CompartmentId(u16::from(b % 3)),
                host: "fleet.example",
                port: u16::from(b),
            },
        };
        let _ = evaluate(tables, &mut rate, &request, u64::from(b) * 100);
    }
}

/// Compiler target: any UTF-8 text either compiles to tables that round-trip through
/// the device decoder, or fails with at least one error diagnostic. Never panics.
pub fn compile_text(data: &[u8]) {
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    match compile(text, "fuzz.toml") {
        Ok(compiled) => {
            let bytes = compiled.policy.encode();
            let mut decoded = DecodedTables::new();
            if let Err(error) = decoded.decode_from(&bytes) {
                panic!("compiled tables do not decode: {error}");
            }
            assert_eq!(
                decoded.tables(),
                compiled.policy.tables(),
                "tables round-trip"
            );
            exercise(&compiled.policy.tables(), data);
        }
        Err(errors) => assert!(
            !errors.diagnostics.is_empty(),
            "an error without diagnostics"
        ),
    }
}

/// Bundle decoder target: framing and tables decode of arbitrary bytes, then
/// evaluation over whatever decoded. Verification with no roots must always fail.
pub fn decode_bundle(data: &[u8]) {
    let mut tables = DecodedTables::new();
    if decode_unverified(data, &mut tables).is_ok() {
        exercise(&tables.tables(), data);
    }
    let mut raw = DecodedTables::new();
    if raw.decode_from(data).is_ok() {
        exercise(&raw.tables(), data);
    }
    let trust = BundleTrust {
        roots: &[],
        revoked: &[],
        product: ProductId([0; 16]),
        min_version: 0,
    };
    assert!(
        verify_bundle(data, &trust).is_err(),
        "a bundle verified without any root"
    );
}

/// Real-time core target: the one decoder at the core's capacities
/// ([`CoreTables`], names copied), as the firmware runs it, checked against the same
/// decoder at full capacities. Whatever the core accepts decodes to the same tables
/// at full capacities; whatever it refuses that decodes at full capacities is
/// refused only for size.
pub fn decode_core_tables(data: &[u8]) {
    let mut core = CoreTables::new();
    let mut full = DecodedTables::new();
    let core_result = core.decode_from(data);
    let full_result = full.decode_from(data);
    match (core_result, full_result) {
        (Ok(()), Ok(())) => {
            assert_eq!(core.tables(), full.tables(), "core and full tables differ");
            exercise(&core.tables(), data);
        }
        (Ok(()), Err(error)) => {
            panic!("the core accepted tables the full decoder refused: {error}")
        }
        (Err(TableError::TooLarge), Ok(())) | (Err(_), Err(_)) => {}
        (Err(error), Ok(())) => panic!("the core refused tables that fit elsewhere: {error}"),
    }
    let mut bundled = CoreTables::new();
    if decode_unverified(data, &mut bundled).is_ok() {
        exercise(&bundled.tables(), data);
    }
}
