//! The `warden-pluton` binary as a real process: hostile clients, restarts, SIGKILL.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use warden_pluton::PlutonError;
use warden_pluton::protocol::{MAX_FRAME_LEN, Request, Response};
use warden_pluton::{Role, RoleToken, verify_quote};

use crate::support::{PlutonProcess, call, exchange_raw, frame_of, read_response};

#[test]
fn malformed_oversized_and_unknown_requests_get_errors_and_the_server_lives() {
    let directory = tempfile::tempdir().expect("tempdir");
    let mut pluton = PlutonProcess::start(directory.path(), 3);
    let mut stream = pluton.connect();

    // Unknown operation: an error, and the connection stays usable.
    let response = exchange_raw(&mut stream, &frame_of(&[0xc8, 0x01])).expect("answer");
    assert_eq!(response, Response::Error(PlutonError::UnknownRequest));
    // Malformed body: an error, and the connection stays usable.
    let response = exchange_raw(&mut stream, &frame_of(&[0x03, 0xff, 0xff])).expect("answer");
    assert_eq!(response, Response::Error(PlutonError::MalformedRequest));
    assert!(matches!(
        call(&mut stream, &Request::Status),
        Response::Status { .. }
    ));

    // Oversized frame: an error, then the server closes this connection.
    let mut big = pluton.connect();
    big.write_all(&((MAX_FRAME_LEN as u32) + 1).to_le_bytes())
        .expect("write");
    assert_eq!(
        read_response(&mut big).expect("answer"),
        Response::Error(PlutonError::FrameTooLarge)
    );
    let mut rest = Vec::new();
    assert_eq!(big.read_to_end(&mut rest).expect("closed"), 0);

    // Garbage of every length on fresh connections never takes the server down.
    for length in [1usize, 2, 7, 100, 1000, MAX_FRAME_LEN] {
        let mut garbage_stream = pluton.connect();
        let garbage: Vec<u8> = (0..length).map(|i| (i * 37 + 11) as u8).collect();
        let response = exchange_raw(&mut garbage_stream, &frame_of(&garbage)).expect("answer");
        assert!(matches!(response, Response::Error(_)), "{response:?}");
    }
    assert!(pluton.is_running());
    assert!(matches!(
        call(&mut pluton.connect(), &Request::Status),
        Response::Status { .. }
    ));
}

#[test]
fn a_stalled_client_does_not_stall_others_and_is_dropped() {
    let directory = tempfile::tempdir().expect("tempdir");
    let pluton = PlutonProcess::start(directory.path(), 3);
    let mut stalled = pluton.connect();
    // Announce 100 bytes, send 10, then go quiet.
    stalled.write_all(&100u32.to_le_bytes()).expect("write");
    stalled.write_all(&[0u8; 10]).expect("write");
    let started = Instant::now();
    let mut other = pluton.connect();
    for _ in 0..20 {
        assert!(matches!(
            call(&mut other, &Request::ReadCounters),
            Response::Counters(_)
        ));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "others were stalled"
    );
    // The stalled connection is closed once the frame timeout (2 s) passes.
    let mut rest = Vec::new();
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(stalled.read_to_end(&mut rest).expect("closed"), 0);
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[test]
fn provisioning_quote_and_files_over_the_socket() {
    let directory = tempfile::tempdir().expect("tempdir");
    let pluton = PlutonProcess::start(directory.path(), 77);
    let capability = pluton.capability();
    for file in ["pluton.state", "provisioning.capability"] {
        let mode = std::fs::metadata(pluton.state_dir.join(file))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let mut stream = pluton.connect();
    let Response::Identity(identity) = call(
        &mut stream,
        &Request::CreateIdentity {
            factory_reset: None,
        },
    ) else {
        panic!("identity");
    };
    assert_eq!(
        call(
            &mut stream,
            &Request::CreateIdentity {
                factory_reset: None
            }
        ),
        Response::Error(PlutonError::IdentityExists)
    );
    // Register 0 is the boot stage's: a second connection presents the capability.
    let mut boot = pluton.connect();
    assert_eq!(
        call(
            &mut boot,
            &Request::Authenticate {
                token: RoleToken::from_bytes(*capability.as_bytes()),
            }
        ),
        Response::Authenticated(Role::Boot)
    );
    assert_eq!(
        call(
            &mut boot,
            &Request::ExtendRegister {
                index: 0,
                measurement: [3u8; 32],
            },
        ),
        Response::Done
    );
    assert_eq!(
        call(
            &mut stream,
            &Request::AdvanceCounter {
                capability: capability.clone(),
                index: 4,
                value: 9
            }
        ),
        Response::Counter(9)
    );
    let nonce = [0xabu8; 48];
    let Response::Quote(quote) = call(
        &mut stream,
        &Request::Quote {
            nonce: heapless::Vec::from_slice(&nonce).expect("fits"),
        },
    ) else {
        panic!("quote");
    };
    let contents = verify_quote(&quote, &identity.public_key.0, &nonce).expect("verifies");
    assert_eq!(contents.firmware_version, 77);
    assert_eq!(contents.counters[4], 9);
    assert_ne!(contents.registers[0], [0u8; 32]);
}

#[test]
fn counters_never_decrease_and_registers_reset_across_sigkill_restarts() {
    let directory = tempfile::tempdir().expect("tempdir");
    let mut expected = 0u64;
    for round in 0..5u64 {
        let pluton = PlutonProcess::start(directory.path(), 1);
        let capability = pluton.capability();
        let mut stream = pluton.connect();
        let Response::Counters(counters) = call(&mut stream, &Request::ReadCounters) else {
            panic!("counters");
        };
        assert_eq!(
            counters[0], expected,
            "round {round}: acknowledged value lost"
        );
        let Response::Registers(registers) = call(&mut stream, &Request::ReadRegisters) else {
            panic!("registers");
        };
        assert_eq!(registers, [[0u8; 32]; 8], "registers reset only at boot");
        call(
            &mut stream,
            &Request::ExtendRegister {
                index: 5,
                measurement: [round as u8; 32],
            },
        );
        for step in 1..=10 {
            expected = round * 100 + step;
            let response = call(
                &mut stream,
                &Request::AdvanceCounter {
                    capability: capability.clone(),
                    index: 0,
                    value: expected,
                },
            );
            assert_eq!(response, Response::Counter(expected));
        }
        let lower = Request::AdvanceCounter {
            capability: capability.clone(),
            index: 0,
            value: expected - 1,
        };
        assert_eq!(
            call(&mut stream, &lower),
            Response::Error(PlutonError::CounterWouldDecrease)
        );
        pluton.kill();
    }
}
