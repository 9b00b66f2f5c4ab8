//! Fuzz harnesses for the decoders of untrusted bytes, as plain functions.
//!
//! `protocol-bridges/fuzz` calls them from cargo-fuzz targets; property tests call
//! them too, so `cargo test` covers the same code. Each panics only if an invariant
//! breaks.

use crate::pdu::{FunctionCode, Request, Response};
use crate::rtu::{CharTiming, Direction, MAX_ADU_LEN, MasterEvent, RtuFramer, RtuMaster, crc_ok};
use crate::tcp_frame::decode_frame;

/// Feeds `data` to the RTU framers (both directions) and to a master awaiting an
/// answer. Bytes are read as pairs `(gap, byte)`: the gap, in units of 100 µs,
/// precedes the byte, so silences of every length occur.
pub fn rtu_framer(data: &[u8]) {
    let timing = CharTiming::for_line(19_200, 11);
    let mut framers = [
        RtuFramer::new(Direction::Request, timing, false),
        RtuFramer::new(Direction::Response, timing, true),
        RtuFramer::new(Direction::Response, timing, false),
    ];
    let mut master = RtuMaster::new(timing, 200_000);
    let request = Request::ReadRegisters {
        function: FunctionCode::ReadHoldingRegisters,
        address: 0,
        count: 3,
    };
    let mut out = [0u8; MAX_ADU_LEN];
    let mut now = 0u64;
    for pair in data.chunks(2) {
        now += u64::from(pair[0]) * 100;
        if master.is_idle() {
            let at = now.max(master.ready_at());
            let started = master.start(1, &request, at, &mut out);
            assert!(started.is_ok(), "an idle master starts at ready_at");
        }
        let Some(&byte) = pair.get(1) else { break };
        for framer in &mut framers {
            if let Some(frame) = framer.push(byte, now) {
                assert!(crc_ok(frame.as_bytes()), "frames have good CRCs");
                assert!(frame.as_bytes().len() <= MAX_ADU_LEN);
            }
            let _ = framer.poll(now);
        }
        if let Some(MasterEvent::Response(frame)) = master.receive(&[byte], now) {
            assert_eq!(frame.unit(), 1, "only the addressed unit answers");
            let _ = Response::decode_for(&request, frame.pdu());
        }
        let _ = master.poll(now);
    }
}

/// Feeds `data` to the Modbus TCP frame decoder and decodes every PDU it yields, as
/// a server (request) and as a client (response to a read).
pub fn tcp_framer(data: &[u8]) {
    let mut rest = data;
    let read = Request::ReadRegisters {
        function: FunctionCode::ReadHoldingRegisters,
        address: 0,
        count: 2,
    };
    while let Ok(Some((_, pdu, used))) = decode_frame(rest) {
        assert!(used <= rest.len() && used > 0, "frames consume bytes");
        assert!(!pdu.is_empty());
        if let Ok(request) = Request::decode(pdu) {
            let mut again = [0u8; crate::MAX_PDU_LEN];
            let len = request.encode(&mut again);
            assert!(len.is_ok(), "a decoded request encodes again");
        }
        let _ = Response::decode_for(&read, pdu);
        rest = &rest[used..];
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn rtu_framer_harness(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
            super::rtu_framer(&data);
        }

        #[test]
        fn tcp_framer_harness(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
            super::tcp_framer(&data);
        }
    }

    #[test]
    fn rtu_harness_survives_long_junk() {
        // modbus-core 0.2 hits unreachable!() on more than 256 bytes of junk.
        super::rtu_framer(&[0x01; 4096]);
        let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
        super::rtu_framer(&junk);
    }
}
