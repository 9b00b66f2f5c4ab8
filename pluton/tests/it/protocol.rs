//! The IPC codec and request handler: property tests and hostile frames.

use proptest::prelude::*;
use warden_pluton::PlutonError;
use warden_pluton::byte_array::ByteArray;
use warden_pluton::protocol::{
    Caller, FRAME_HEADER_LEN, MAX_FRAME_LEN, Request, Response, decode_request, decode_response,
    encode_frame, frame_body_len, handle_request_frame,
};
use warden_pluton::quote::MAX_QUOTE_LEN;
use warden_pluton::roles::{NoRoleTokens, ROLES};
use warden_pluton::sealing::MAX_SEALED_LEN;
use warden_pluton::{CounterName, InstalledRootKey, ProvisioningCapability, Role, RoleToken};

use crate::support::memory_pluton;

fn encode_body<T: serde::Serialize>(message: &T) -> Vec<u8> {
    let mut frame = vec![0u8; FRAME_HEADER_LEN + MAX_FRAME_LEN];
    let length = encode_frame(message, &mut frame).expect("encode");
    assert_eq!(
        frame_body_len(frame[..4].try_into().expect("4")),
        Ok(length - FRAME_HEADER_LEN)
    );
    frame[FRAME_HEADER_LEN..length].to_vec()
}

fn bytes<const N: usize>(max: usize) -> impl Strategy<Value = heapless::Vec<u8, N>> {
    proptest::collection::vec(any::<u8>(), 0..=max.min(N))
        .prop_map(|v| heapless::Vec::from_slice(&v).expect("fits"))
}

fn capability() -> impl Strategy<Value = ProvisioningCapability> {
    any::<[u8; 32]>().prop_map(ProvisioningCapability::from_bytes)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Status),
        Just(Request::ExportIdentity),
        proptest::option::of(capability())
            .prop_map(|factory_reset| Request::CreateIdentity { factory_reset }),
        (
            capability(),
            any::<[u8; 32]>(),
            any::<[u8; 33]>(),
            any::<u8>()
        )
            .prop_map(|(capability, a, b, purposes)| {
                let mut key = [0u8; 65];
                key[..32].copy_from_slice(&a);
                key[32..].copy_from_slice(&b);
                Request::InstallRootKey {
                    capability,
                    root: InstalledRootKey {
                        public_key: ByteArray(key),
                        purposes,
                    },
                }
            }),
        Just(Request::ListRootKeys),
        capability().prop_map(|capability| Request::LockManufacturing { capability }),
        (any::<u8>(), any::<[u8; 32]>())
            .prop_map(|(index, measurement)| Request::ExtendRegister { index, measurement }),
        Just(Request::ReadRegisters),
        Just(Request::ReadCounters),
        (capability(), any::<u8>(), any::<u64>()).prop_map(|(capability, index, value)| {
            Request::AdvanceCounter {
                capability,
                index,
                value,
            }
        }),
        bytes::<64>(64).prop_map(|nonce| Request::Quote { nonce }),
        bytes::<146>(146).prop_map(|message| Request::SignTls13ClientCertificateVerify { message }),
        (bytes::<32>(32), any::<u8>(), bytes::<1024>(1024)).prop_map(
            |(label, register_mask, plaintext)| Request::Seal {
                label,
                register_mask,
                plaintext
            }
        ),
        (bytes::<32>(32), bytes::<MAX_SEALED_LEN>(MAX_SEALED_LEN))
            .prop_map(|(label, sealed)| Request::Unseal { label, sealed }),
        any::<[u8; 32]>().prop_map(|token| Request::Authenticate {
            token: RoleToken::from_bytes(token)
        }),
        Just(Request::EndBoot),
        prop_oneof![
            Just(CounterName::ImageFloor),
            Just(CounterName::PolicyBundleFloor),
            Just(CounterName::RevocationListFloor)
        ]
        .prop_map(|counter| Request::ReadNamedCounter { counter }),
        (
            prop_oneof![
                Just(CounterName::ImageFloor),
                Just(CounterName::PolicyBundleFloor),
                Just(CounterName::RevocationListFloor)
            ],
            any::<u64>()
        )
            .prop_map(|(counter, value)| Request::AdvanceNamedCounter { counter, value }),
        bytes::<512>(512).prop_map(|info| Request::SignCertificateRequest { info }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn request_encode_decode_round_trip(request in request()) {
        let body = encode_body(&request);
        let decoded = decode_request(&body).expect("decodes");
        // Requests hold capabilities (no PartialEq by design): compare the re-encoding.
        prop_assert_eq!(encode_body(&decoded), body.clone());
        // Any truncation is an error, never a panic or a different request.
        for cut in 0..body.len() {
            prop_assert!(decode_request(&body[..cut]).is_err());
        }
        let mut trailing = body.clone();
        trailing.push(0);
        prop_assert_eq!(decode_request(&trailing).err(), Some(PlutonError::MalformedRequest));
    }

    #[test]
    fn arbitrary_frames_always_get_a_decodable_answer(body in proptest::collection::vec(any::<u8>(), 0..3000), role in proptest::option::of(proptest::sample::select(ROLES.to_vec()))) {
        let (mut pluton, _) = memory_pluton(1);
        let mut out = vec![0u8; FRAME_HEADER_LEN + MAX_FRAME_LEN];
        let mut caller = Caller { uid: 1, role };
        let length = handle_request_frame(&mut pluton, &mut caller, &NoRoleTokens, &body, &mut out).expect("answer fits");
        let response = decode_response(&out[FRAME_HEADER_LEN..length]).expect("decodable");
        if decode_request(&body).is_err() {
            prop_assert!(matches!(response, Response::Error(_)));
        }
    }

    #[test]
    fn response_encode_decode_round_trip(counters: [u64; 8], value: u64, error_index in 0usize..4, quote in bytes::<MAX_QUOTE_LEN>(MAX_QUOTE_LEN)) {
        let errors = [PlutonError::NoIdentity, PlutonError::Busy, PlutonError::UnknownRequest, PlutonError::StoreCorrupt];
        for response in [
            Response::Counters(counters),
            Response::Counter(value),
            Response::Error(errors[error_index]),
            Response::Quote(quote.clone()),
            Response::Signature(ByteArray([value as u8; 64])),
        ] {
            let body = encode_body(&response);
            prop_assert_eq!(decode_response(&body), Ok(response));
        }
    }
}

#[test]
fn unknown_and_malformed_requests_are_told_apart() {
    // Discriminant 200 (varint 0xc8 0x01) is no known operation.
    assert_eq!(
        decode_request(&[0xc8, 0x01]).err(),
        Some(PlutonError::UnknownRequest)
    );
    // InstallRootKey (index 3) cut short is malformed.
    assert_eq!(
        decode_request(&[0x03, 0xff]).err(),
        Some(PlutonError::MalformedRequest)
    );
    assert_eq!(
        decode_request(&[]).err(),
        Some(PlutonError::MalformedRequest)
    );
    // A nonce longer than the bounded field (65 > 64) is refused by the decoder itself.
    let mut oversized_nonce = vec![10u8, 65];
    oversized_nonce.extend_from_slice(&[0u8; 65]);
    assert_eq!(
        decode_request(&oversized_nonce).err(),
        Some(PlutonError::MalformedRequest)
    );
    assert_eq!(
        frame_body_len([0, 0, 0, 0]),
        Err(PlutonError::MalformedRequest)
    );
    assert_eq!(
        frame_body_len(((MAX_FRAME_LEN + 1) as u32).to_le_bytes()),
        Err(PlutonError::FrameTooLarge)
    );
    assert_eq!(
        frame_body_len(u32::MAX.to_le_bytes()),
        Err(PlutonError::FrameTooLarge)
    );
}

#[test]
fn sealing_owner_comes_from_the_transport() {
    let (mut pluton, _) = memory_pluton(2);
    let mut out = vec![0u8; FRAME_HEADER_LEN + MAX_FRAME_LEN];
    let seal = Request::Seal {
        label: heapless::Vec::from_slice(b"token").expect("fits"),
        register_mask: 0,
        plaintext: heapless::Vec::from_slice(b"secret").expect("fits"),
    };
    let length = handle_request_frame(
        &mut pluton,
        &mut Caller::with_role(5, Role::Unseparated),
        &NoRoleTokens,
        &encode_body(&seal),
        &mut out,
    )
    .expect("seal");
    let Ok(Response::Sealed(blob)) = decode_response(&out[FRAME_HEADER_LEN..length]) else {
        panic!("sealed");
    };
    let unseal = Request::Unseal {
        label: heapless::Vec::from_slice(b"token").expect("fits"),
        sealed: heapless::Vec::from_slice(&blob).expect("fits"),
    };
    let body = encode_body(&unseal);
    let length = handle_request_frame(
        &mut pluton,
        &mut Caller::with_role(6, Role::Unseparated),
        &NoRoleTokens,
        &body,
        &mut out,
    )
    .expect("x");
    assert_eq!(
        decode_response(&out[FRAME_HEADER_LEN..length]),
        Ok(Response::Error(PlutonError::UnsealFailed))
    );
    let length = handle_request_frame(
        &mut pluton,
        &mut Caller::with_role(5, Role::Unseparated),
        &NoRoleTokens,
        &body,
        &mut out,
    )
    .expect("x");
    assert_eq!(
        decode_response(&out[FRAME_HEADER_LEN..length]),
        Ok(Response::Unsealed(
            heapless::Vec::from_slice(b"secret").expect("fits")
        ))
    );
}
