//! Fuzz the IPC request decoder and the request handler behind it.
//!
//! `cd pluton/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ipc_request_decoder`
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_pluton::protocol::{
    Caller, FRAME_HEADER_LEN, MAX_FRAME_LEN, decode_request, decode_response, frame_body_len,
    handle_request_frame,
};
use warden_pluton::roles::{ROLES, Role, RoleToken};
use warden_pluton::{MemoryStore, SoftwarePluton};

/// Deterministic RNG so crashes reproduce.
struct FuzzRng(u64);

impl rand_core::TryRng for FuzzRng {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        Ok(self.0)
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for byte in dst {
            *byte = self.try_next_u64()? as u8;
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for FuzzRng {}

fuzz_target!(|data: &[u8]| {
    // The header check on the first four bytes, as the server reads it.
    if let Some(header) = data.get(..FRAME_HEADER_LEN) {
        let mut bytes = [0u8; FRAME_HEADER_LEN];
        bytes.copy_from_slice(header);
        let _ = frame_body_len(bytes);
    }
    let _ = decode_request(data);
    // The whole per-frame path: every input must get a decodable answer.
    let Ok(mut pluton) = SoftwarePluton::open(MemoryStore::new(), FuzzRng(1), 1, |_| Ok(())) else {
        return;
    };
    // The caller's role comes from the first byte (none, or one of the roles), so the
    // rights checks of every role are exercised; one token is issued, to the bridges.
    let role = data
        .first()
        .and_then(|byte| usize::from(*byte).checked_sub(1))
        .and_then(|index| ROLES.get(index).copied());
    let issued = [(Role::Bridges, RoleToken::from_bytes([0x42; 32]))];
    let mut caller = Caller { uid: 1, role };
    let mut out = [0u8; FRAME_HEADER_LEN + MAX_FRAME_LEN];
    let length = handle_request_frame(&mut pluton, &mut caller, &issued[..], data, &mut out)
        .expect("every request gets an answer that fits a frame");
    decode_response(&out[FRAME_HEADER_LEN..length]).expect("answers decode");
    // A second request on the same connection, with whatever role the first gave it.
    if let Some(rest) = data.get(1..) {
        let length = handle_request_frame(&mut pluton, &mut caller, &issued[..], rest, &mut out)
            .expect("every request gets an answer that fits a frame");
        decode_response(&out[FRAME_HEADER_LEN..length]).expect("answers decode");
    }
});
