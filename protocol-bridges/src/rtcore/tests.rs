//! The mailbox task against a scripted core: handshake, bundles, calls, counters.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use warden_rtcore_mailbox::framing::decode_message;
use warden_rtcore_mailbox::{
    BundleRefusal, CoreCounters, FrameDecoder, FromCore, LineSettings, MAX_FRAME_LEN, Outcome,
    PROTOCOL_VERSION, Parity as MailboxParity, ToCore, encode_frame,
};

use super::*;
use crate::health::BridgeHealth;
use crate::modbus::pdu::{ExceptionCode, Request};
use crate::modbus::{Answer, MAX_PDU_LEN};
use crate::request_policy::RequestSource;

/// The first byte of a bundle the scripted core takes for "signed by the vendor".
const SIGNED: u8 = 9;

/// A scripted core on the other end of a duplex pipe: answers like the firmware
/// does (its policy stands in as "unit 1 only"), so the link's handshake,
/// bundle upload, id matching and health counting are tested without QEMU. It
/// accepts every bundle with `accept_bundle`, else only those starting with
/// [`SIGNED`]; until it accepted one it denies everything.
async fn scripted_core(stream: tokio::io::DuplexStream, accept_bundle: bool) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut decoder = FrameDecoder::new();
    let mut buf = [0u8; 512];
    let mut bundle_len = 0usize;
    let mut bundle_first = 0u8;
    let mut verified = false;
    loop {
        let Ok(n) = reader.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        for &byte in &buf[..n] {
            let Ok(Some(payload)) = decoder.push(byte) else {
                continue;
            };
            let message: ToCore<'_> = decode_message(payload).expect("a request");
            let mut out = [0u8; MAX_FRAME_LEN];
            let answer = match message {
                ToCore::Hello => FromCore::Ready {
                    protocol: PROTOCOL_VERSION,
                    configured: false,
                    policy_version: None,
                },
                ToCore::Configure { bridge, .. } => {
                    assert_eq!(bridge, "line9");
                    FromCore::Configured
                }
                ToCore::BundleBegin { len } => {
                    bundle_len = len as usize;
                    continue;
                }
                ToCore::BundleChunk { offset, data } => {
                    assert!(offset as usize + data.len() <= bundle_len);
                    if offset == 0 {
                        bundle_first = data.first().copied().unwrap_or(0);
                    }
                    continue;
                }
                ToCore::BundleCommit if accept_bundle || bundle_first == SIGNED => {
                    verified = true;
                    FromCore::BundleAccepted {
                        version: 4 + u64::from(bundle_first == SIGNED),
                    }
                }
                ToCore::BundleCommit => FromCore::BundleRefused {
                    reason: BundleRefusal::SignatureInvalid,
                },
                ToCore::Transact {
                    id, unit: 1, pdu, ..
                } if verified => {
                    let request = Request::decode(pdu).expect("valid pdu");
                    let mut response = [0u8; MAX_PDU_LEN];
                    let len = crate::modbus::pdu::encode_read_response(
                        request.function(),
                        (0..request.count()).map(|i| 40 + i),
                        &mut response,
                    )
                    .expect("fits");
                    let len = encode_frame(
                        &FromCore::Outcome {
                            id,
                            outcome: Outcome::Response {
                                pdu: &response[..len],
                            },
                        },
                        &mut out,
                    )
                    .expect("frame");
                    writer.write_all(&out[..len]).await.expect("write");
                    continue;
                }
                ToCore::Transact { id, .. } if verified => FromCore::Outcome {
                    id,
                    outcome: Outcome::Denied {
                        reason: warden_policy::Reason::UnitNotAllowed.code(),
                        rule: None,
                    },
                },
                ToCore::Transact { id, .. } => FromCore::Outcome {
                    id,
                    outcome: Outcome::NoPolicy,
                },
                ToCore::ReadCounters => FromCore::Counters(CoreCounters {
                    crc_errors: 3,
                    timeouts: 2,
                    ..CoreCounters::default()
                }),
                _ => FromCore::Garbled,
            };
            let len = encode_frame(&answer, &mut out).expect("frame");
            writer.write_all(&out[..len]).await.expect("write");
        }
    }
}

fn setup() -> CoreSetup {
    CoreSetup {
        bridge: "line9".into(),
        line: LineSettings {
            baud: 19_200,
            parity: MailboxParity::Even,
            stop_bits: 1,
            response_timeout_ms: 100,
            retries: 1,
        },
        bundle: Arc::new(vec![7u8; 700]),
    }
}

fn read(count: u16) -> Request {
    Request::ReadRegisters {
        function: crate::modbus::pdu::FunctionCode::ReadHoldingRegisters,
        address: 0,
        count,
    }
}

#[tokio::test]
async fn calls_answers_denials_and_counters_go_through_the_mailbox() {
    let (ours, theirs) = tokio::io::duplex(4096);
    tokio::spawn(scripted_core(theirs, true));
    let health = Arc::new(Mutex::new(BridgeHealth::default()));
    let shutdown = CancellationToken::new();
    let (bus, task) = RtCoreBus::over_stream(ours, setup(), Arc::clone(&health), shutdown.clone());
    tokio::spawn(task);
    assert_eq!(
        bus.call(1, read(3), RequestSource::Poll).await,
        Ok(Answer::Registers(vec![40, 41, 42]))
    );
    let denied = bus.call(2, read(1), RequestSource::Cloud).await;
    assert_eq!(
        denied,
        Err(RtCoreError::Denied {
            reason: "unit-not-allowed".into(),
            exception: ExceptionCode::ILLEGAL_FUNCTION
        })
    );
    let counters = bus.counters().await.expect("counters");
    assert_eq!(counters.crc_errors, 3);
    let health = health.lock().expect("health").clone();
    assert!(health.connected);
    assert_eq!(health.denied, 1);
    assert_eq!(
        health.unit(2).map(|u| u.denied),
        Some(1),
        "the refusal is the denied unit's: {health:?}"
    );
    assert_eq!(health.unit(1).map(|u| u.denied), None);
    assert_eq!(health.crc_errors, 3);
    assert_eq!(health.timeouts, 2);
    shutdown.cancel();
}

#[tokio::test]
async fn a_refused_bundle_is_reported_and_requests_are_denied() {
    let (ours, theirs) = tokio::io::duplex(4096);
    tokio::spawn(scripted_core(theirs, false));
    let health = Arc::new(Mutex::new(BridgeHealth::default()));
    let shutdown = CancellationToken::new();
    let (bus, task) = RtCoreBus::over_stream(ours, setup(), Arc::clone(&health), shutdown.clone());
    tokio::spawn(task);
    assert_eq!(
        bus.call(1, read(1), RequestSource::Poll).await,
        Err(RtCoreError::NoPolicy)
    );
    let health = health.lock().expect("health").clone();
    assert_eq!(
        health.last_error.as_deref(),
        Some(
            "unit 1 request refused by the real-time core: the real-time core has no verified policy bundle; every request is denied"
        )
    );
    assert_eq!(
        health.errors, 1,
        "the refused bundle is an error: {health:?}"
    );
    shutdown.cancel();
}

/// A bundle pushed at run time (the appliance applied a new signed policy) is
/// verified by the core and takes effect there; one it refuses changes nothing.
#[tokio::test]
async fn a_bundle_loaded_at_run_time_replaces_the_cores_policy() {
    let (ours, theirs) = tokio::io::duplex(4096);
    tokio::spawn(scripted_core(theirs, false));
    let health = Arc::new(Mutex::new(BridgeHealth::default()));
    let shutdown = CancellationToken::new();
    let (bus, task) = RtCoreBus::over_stream(ours, setup(), Arc::clone(&health), shutdown.clone());
    tokio::spawn(task);
    assert_eq!(
        bus.call(1, read(1), RequestSource::Poll).await,
        Err(RtCoreError::NoPolicy),
        "the start-up bundle is not signed"
    );
    assert_eq!(
        bus.load_bundle(Arc::new(vec![7u8; 300])).await,
        Err(RtCoreError::BundleRefused(BundleRefusal::SignatureInvalid))
    );
    assert_eq!(
        bus.call(1, read(1), RequestSource::Poll).await,
        Err(RtCoreError::NoPolicy)
    );
    let mut signed = vec![SIGNED; 1000];
    signed[999] = 1;
    assert_eq!(bus.load_bundle(Arc::new(signed)).await, Ok(5));
    assert_eq!(
        bus.call(1, read(2), RequestSource::Poll).await,
        Ok(Answer::Registers(vec![40, 41]))
    );
    shutdown.cancel();
}
