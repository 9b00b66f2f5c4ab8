//! Per-caller rights against the `warden-pluton` process: roles, the boot latch,
//! purpose-bound signing, namespaces, starvation, and the bundle floor under SIGKILL.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use warden_pluton::protocol::{Request, Response};
use warden_pluton::quote::AttestationQuote;
use warden_pluton::roles::ROLE_TOKEN_LEN;
use warden_pluton::{CounterName, PlutonError, Role, RoleToken, verify_quote};

use crate::support::{PlutonProcess, call};

const ROLES_WITH_TOKENS: [Role; 3] = [Role::Link, Role::Bridges, Role::StatusPage];

/// A pluton process whose link, bridges and status page authenticate with tokens (the
/// single-process case, where uids cannot tell them apart).
struct Unit {
    pluton: PlutonProcess,
    tokens: Vec<(Role, RoleToken)>,
}

fn token_file(directory: &Path, role: Role, seed: u8) -> (PathBuf, RoleToken) {
    let mut bytes = [0u8; ROLE_TOKEN_LEN];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = seed.wrapping_mul(31).wrapping_add(index as u8);
    }
    let path = directory.join(format!("{}.token", role.name()));
    std::fs::write(&path, bytes).expect("token file");
    (path, RoleToken::from_bytes(bytes))
}

impl Unit {
    fn start(directory: &Path) -> Self {
        Self::start_with(directory, &[])
    }

    fn start_with(directory: &Path, extra: &[&str]) -> Self {
        let mut arguments = Vec::new();
        let mut tokens = Vec::new();
        for (seed, role) in ROLES_WITH_TOKENS.into_iter().enumerate() {
            let (path, token) = token_file(directory, role, seed as u8 + 1);
            arguments.push("--role-token-file".to_owned());
            arguments.push(format!("{}={}", role.name(), path.display()));
            tokens.push((role, token));
        }
        arguments.extend(extra.iter().map(|argument| (*argument).to_owned()));
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        Self {
            pluton: PlutonProcess::start_with(directory, 9, &arguments),
            tokens,
        }
    }

    /// A connection that has authenticated as `role` (boot: with the capability).
    fn connect_as(&self, role: Role) -> UnixStream {
        let token = match role {
            Role::Boot => RoleToken::from_bytes(*self.pluton.capability().as_bytes()),
            _ => self
                .tokens
                .iter()
                .find(|(issued, _)| *issued == role)
                .map(|(_, token)| token.clone())
                .expect("a token for the role"),
        };
        let mut stream = self.pluton.connect();
        assert_eq!(
            call(&mut stream, &Request::Authenticate { token }),
            Response::Authenticated(role)
        );
        stream
    }
}

fn extend(index: u8) -> Request {
    Request::ExtendRegister {
        index,
        measurement: [0x5a; 32],
    }
}

fn quote(stream: &mut UnixStream, nonce: &[u8]) -> Vec<u8> {
    match call(
        stream,
        &Request::Quote {
            nonce: heapless::Vec::from_slice(nonce).expect("fits"),
        },
    ) {
        Response::Quote(quote) => quote.to_vec(),
        other => panic!("quote: {other:?}"),
    }
}

fn create_identity(unit: &Unit) -> [u8; 65] {
    let mut boot = unit.connect_as(Role::Boot);
    match call(
        &mut boot,
        &Request::CreateIdentity {
            factory_reset: None,
        },
    ) {
        Response::Identity(identity) => identity.public_key.0,
        other => panic!("identity: {other:?}"),
    }
}

#[test]
fn boot_registers_need_the_boot_role_and_close_at_the_latch() {
    let directory = tempfile::tempdir().expect("tempdir");
    let unit = Unit::start(directory.path());
    // A caller with no role, and every compartment role: CapabilityRequired.
    let mut anonymous = unit.pluton.connect();
    for index in 0..4 {
        assert_eq!(
            call(&mut anonymous, &extend(index)),
            Response::Error(PlutonError::CapabilityRequired)
        );
    }
    for role in ROLES_WITH_TOKENS {
        let mut stream = unit.connect_as(role);
        assert_eq!(
            call(&mut stream, &extend(0)),
            Response::Error(PlutonError::CapabilityRequired),
            "{role}"
        );
    }
    // A wrong token gives no role.
    let mut forger = unit.pluton.connect();
    assert_eq!(
        call(
            &mut forger,
            &Request::Authenticate {
                token: RoleToken::from_bytes([0xee; ROLE_TOKEN_LEN])
            }
        ),
        Response::Error(PlutonError::CapabilityInvalid)
    );
    assert_eq!(
        call(&mut forger, &extend(0)),
        Response::Error(PlutonError::CapabilityRequired)
    );

    // The boot stage measures, then latches; after that not even it can extend 0-3.
    let mut boot = unit.connect_as(Role::Boot);
    assert_eq!(call(&mut boot, &extend(0)), Response::Done);
    let Response::Registers(measured) = call(&mut boot, &Request::ReadRegisters) else {
        panic!("registers");
    };
    assert_eq!(call(&mut boot, &Request::EndBoot), Response::Done);
    for index in 0..4 {
        assert_eq!(
            call(&mut boot, &extend(index)),
            Response::Error(PlutonError::CapabilityRequired)
        );
    }
    let mut boot_again = unit.connect_as(Role::Boot);
    assert_eq!(
        call(&mut boot_again, &extend(0)),
        Response::Error(PlutonError::CapabilityRequired)
    );
    let Response::Registers(after) = call(&mut boot, &Request::ReadRegisters) else {
        panic!("registers");
    };
    assert_eq!(after, measured, "a refused extend changed nothing");
    // Only the boot role may latch.
    let mut bridges = unit.connect_as(Role::Bridges);
    assert_eq!(
        call(&mut bridges, &Request::EndBoot),
        Response::Error(PlutonError::NotPermitted)
    );
}

#[test]
fn extending_a_runtime_register_shows_in_the_quote() {
    let directory = tempfile::tempdir().expect("tempdir");
    let unit = Unit::start(directory.path());
    let public_key = create_identity(&unit);
    let mut link = unit.connect_as(Role::Link);
    let nonce = [7u8; 32];
    let before = verify_quote(&quote(&mut link, &nonce), &public_key, &nonce).expect("verifies");
    let mut bridges = unit.connect_as(Role::Bridges);
    assert_eq!(call(&mut bridges, &extend(6)), Response::Done);
    let raw = quote(&mut link, &nonce);
    let after = verify_quote(&raw, &public_key, &nonce).expect("verifies");
    // Every register is in the signed quote: the fleet, which compares the whole
    // register set with its expectation, sees the change.
    assert_ne!(before.registers[6], after.registers[6]);
    assert_eq!(before.registers[..6], after.registers[..6]);
    assert_eq!(AttestationQuote::decode(&raw).expect("decodes"), after);
}

#[test]
fn only_the_link_signs_and_quotes_and_only_certificate_verify_contents() {
    let directory = tempfile::tempdir().expect("tempdir");
    let unit = Unit::start(directory.path());
    create_identity(&unit);
    let mut certificate_verify = vec![0x20u8; 64];
    certificate_verify.extend_from_slice(b"TLS 1.3, client CertificateVerify");
    certificate_verify.push(0);
    certificate_verify.extend_from_slice(&[0x11; 32]);
    let sign = |message: &[u8]| Request::SignTls13ClientCertificateVerify {
        message: heapless::Vec::from_slice(message).expect("fits"),
    };
    let quote_request = Request::Quote {
        nonce: heapless::Vec::from_slice(&[1u8; 32]).expect("fits"),
    };

    let mut link = unit.connect_as(Role::Link);
    assert!(matches!(
        call(&mut link, &sign(&certificate_verify)),
        Response::Signature(_)
    ));
    // Not a CertificateVerify content: the server one, a bare hash, a quote prefix.
    let mut server_context = certificate_verify.clone();
    server_context[64..97].copy_from_slice(b"TLS 1.3, server CertificateVerify");
    for message in [
        &server_context[..],
        &[0x11u8; 32][..],
        &b"warden-quote-v1\0WPQ1"[..],
        &certificate_verify[..certificate_verify.len() - 1],
    ] {
        assert_eq!(
            call(&mut link, &sign(message)),
            Response::Error(PlutonError::NotTls13ClientCertificateVerify)
        );
    }

    // Everyone else, with or without a role: refused, even a well-formed input.
    let mut others = vec![unit.pluton.connect(), unit.connect_as(Role::Boot)];
    others.push(unit.connect_as(Role::Bridges));
    others.push(unit.connect_as(Role::StatusPage));
    for stream in &mut others {
        assert_eq!(
            call(stream, &sign(&certificate_verify)),
            Response::Error(PlutonError::NotPermitted)
        );
        assert_eq!(
            call(stream, &quote_request),
            Response::Error(PlutonError::NotPermitted)
        );
    }
    // A caller without a role may do nothing but authenticate.
    assert_eq!(
        call(&mut others[0], &Request::Status),
        Response::Error(PlutonError::NotPermitted)
    );
}

/// A DER CertificationRequestInfo (version 0, CN = `wd-1`, `public_key`, no attributes).
fn certification_request_info(public_key: &[u8; 65]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(&[
        0x30, 0x0f, 0x31, 0x0d, 0x30, 0x0b, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x04, b'w', b'd',
        b'-', b'1',
    ]);
    body.extend_from_slice(&[
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ]);
    body.extend_from_slice(public_key);
    body.extend_from_slice(&[0xa0, 0x00]);
    let mut info = vec![0x30, 0x81, u8::try_from(body.len()).expect("short")];
    info.extend_from_slice(&body);
    info
}

#[test]
fn only_the_link_signs_a_certificate_request_and_only_for_the_identity_key() {
    let directory = tempfile::tempdir().expect("tempdir");
    let unit = Unit::start(directory.path());
    let public_key = create_identity(&unit);
    let request = |info: &[u8]| Request::SignCertificateRequest {
        info: heapless::Vec::from_slice(info).expect("fits"),
    };
    let info = certification_request_info(&public_key);

    let mut link = unit.connect_as(Role::Link);
    let Response::Signature(signature) = call(&mut link, &request(&info)) else {
        panic!("the link's request for its own key is signed");
    };
    assert_eq!(
        warden_pluton::verify_signature(&public_key, &info, &signature.0),
        Ok(true),
        "ECDSA P-256 over SHA-256 of the request info, by the identity key"
    );
    // A request for another key, and a TLS CertificateVerify content: refused.
    let mut other_key = public_key;
    other_key[64] ^= 1;
    let mut certificate_verify = vec![0x20u8; 64];
    certificate_verify.extend_from_slice(b"TLS 1.3, client CertificateVerify");
    certificate_verify.push(0);
    certificate_verify.extend_from_slice(&[0x11; 32]);
    for refused in [
        certification_request_info(&other_key),
        certificate_verify,
        info[..info.len() - 1].to_vec(),
    ] {
        assert_eq!(
            call(&mut link, &request(&refused)),
            Response::Error(PlutonError::NotCertificateRequest)
        );
    }
    // No other caller may have the key certified, with or without a role.
    let mut others = vec![unit.pluton.connect(), unit.connect_as(Role::Boot)];
    others.push(unit.connect_as(Role::Bridges));
    others.push(unit.connect_as(Role::StatusPage));
    for stream in &mut others {
        assert_eq!(
            call(stream, &request(&info)),
            Response::Error(PlutonError::NotPermitted)
        );
    }
}

#[test]
fn counters_and_sealed_data_are_per_role() {
    let directory = tempfile::tempdir().expect("tempdir");
    let unit = Unit::start(directory.path());
    let mut bridges = unit.connect_as(Role::Bridges);
    let mut link = unit.connect_as(Role::Link);
    let floor = CounterName::PolicyBundleFloor;

    assert_eq!(
        call(
            &mut bridges,
            &Request::AdvanceNamedCounter {
                counter: floor,
                value: 7
            }
        ),
        Response::Counter(7)
    );
    assert_eq!(
        call(
            &mut bridges,
            &Request::AdvanceNamedCounter {
                counter: floor,
                value: 6
            }
        ),
        Response::Error(PlutonError::CounterWouldDecrease)
    );
    assert_eq!(
        call(&mut bridges, &Request::ReadNamedCounter { counter: floor }),
        Response::Counter(7)
    );
    // The link neither reads nor moves the bridges' counter, nor the image floor.
    for request in [
        Request::ReadNamedCounter { counter: floor },
        Request::AdvanceNamedCounter {
            counter: floor,
            value: 100,
        },
        Request::AdvanceNamedCounter {
            counter: CounterName::ImageFloor,
            value: 100,
        },
    ] {
        assert_eq!(
            call(&mut link, &request),
            Response::Error(PlutonError::NotPermitted)
        );
    }
    // The bridges cannot read every counter at once (that would show the others').
    assert_eq!(
        call(&mut bridges, &Request::ReadCounters),
        Response::Error(PlutonError::NotPermitted)
    );

    let label = heapless::Vec::from_slice(b"session").expect("fits");
    let Response::Sealed(blob) = call(
        &mut bridges,
        &Request::Seal {
            label: label.clone(),
            register_mask: 0,
            plaintext: heapless::Vec::from_slice(b"bridges secret").expect("fits"),
        },
    ) else {
        panic!("sealed");
    };
    let unseal = Request::Unseal {
        label,
        sealed: heapless::Vec::from_slice(&blob).expect("fits"),
    };
    for mut other in [
        unit.connect_as(Role::Link),
        unit.connect_as(Role::StatusPage),
        unit.connect_as(Role::Boot),
    ] {
        assert_eq!(
            call(&mut other, &unseal),
            Response::Error(PlutonError::UnsealFailed)
        );
    }
    assert_eq!(
        call(&mut unit.pluton.connect(), &unseal),
        Response::Error(PlutonError::NotPermitted)
    );
    assert_eq!(
        call(&mut unit.connect_as(Role::Bridges), &unseal),
        Response::Unsealed(heapless::Vec::from_slice(b"bridges secret").expect("fits"))
    );
}

#[test]
fn idle_connections_of_other_roles_never_starve_the_links_quote() {
    let directory = tempfile::tempdir().expect("tempdir");
    let unit = Unit::start(directory.path());
    let public_key = create_identity(&unit);
    // 64 bridges connections that authenticate and then sit idle (the bridges' slots
    // fill up; the rest are refused), and 64 that never say anything.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..64 {
        let mut stream = unit.pluton.connect();
        let token = unit.tokens[1].1.clone();
        match call(&mut stream, &Request::Authenticate { token }) {
            Response::Authenticated(Role::Bridges) => held.push(stream),
            Response::Error(PlutonError::Busy) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused >= 56, "the bridges held {} slots", held.len());
    for _ in 0..64 {
        held.push(unit.pluton.connect());
    }
    let started = Instant::now();
    let mut link = unit.connect_as(Role::Link);
    let nonce = [9u8; 48];
    verify_quote(&quote(&mut link, &nonce), &public_key, &nonce).expect("verifies");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the link waited {:?}",
        started.elapsed()
    );
    drop(held);
}

/// The bundle floor is advanced by a client while pluton is SIGKILLed; after each
/// restart it is at least the last acknowledged value and at most the last requested.
#[test]
fn the_bundle_floor_survives_sigkill_during_an_advance() {
    let directory = tempfile::tempdir().expect("tempdir");
    let mut acknowledged = 0u64;
    for round in 0..8u64 {
        let unit = Unit::start(directory.path());
        let mut bridges = unit.connect_as(Role::Bridges);
        let floor = CounterName::PolicyBundleFloor;
        let Response::Counter(after_restart) =
            call(&mut bridges, &Request::ReadNamedCounter { counter: floor })
        else {
            panic!("floor");
        };
        assert!(
            after_restart >= acknowledged,
            "round {round}: acknowledged floor {acknowledged} came back as {after_restart}"
        );
        acknowledged = after_restart;
        let writer = std::thread::spawn(move || {
            let mut last = after_restart;
            loop {
                let request = Request::AdvanceNamedCounter {
                    counter: floor,
                    value: last + 1,
                };
                let mut frame = vec![0u8; 4096];
                let length =
                    warden_pluton::protocol::encode_frame(&request, &mut frame).expect("encode");
                if bridges.write_all(&frame[..length]).is_err() {
                    return last;
                }
                match crate::support::read_response(&mut bridges) {
                    Ok(Response::Counter(value)) => last = value,
                    _ => return last,
                }
            }
        });
        std::thread::sleep(Duration::from_millis(20 + 15 * round));
        unit.pluton.kill();
        let last_acknowledged = writer.join().expect("writer");
        assert!(last_acknowledged >= acknowledged);
        acknowledged = last_acknowledged;
    }
    assert!(acknowledged > 0, "no advance was acknowledged");
}

/// Roles by uid, with a client in a second process under another uid (root only).
#[test]
fn roles_follow_the_peer_uid() {
    const CHILD: &str = "WARDEN_PLUTON_RIGHTS_CHILD_SOCKET";
    if let Some(socket) = std::env::var_os(CHILD) {
        // The child, as uid 65534 (mapped to the bridges): quotes are refused, roots not.
        let mut stream = UnixStream::connect(socket).expect("child connects");
        let quote_request = Request::Quote {
            nonce: heapless::Vec::from_slice(&[1u8; 32]).expect("fits"),
        };
        assert_eq!(
            call(&mut stream, &quote_request),
            Response::Error(PlutonError::NotPermitted)
        );
        assert!(matches!(
            call(&mut stream, &Request::ListRootKeys),
            Response::RootKeys(_)
        ));
        assert_eq!(
            call(&mut stream, &extend(0)),
            Response::Error(PlutonError::CapabilityRequired)
        );
        return;
    }
    let directory = tempfile::tempdir().expect("tempdir");
    let pluton = PlutonProcess::start_with(
        directory.path(),
        1,
        &["--role-uid", "bridges=65534", "--role-uid", "link=0"],
    );
    // This process: the link if it is root, nobody otherwise.
    let mut this = pluton.connect();
    let status = call(&mut this, &Request::ReadCounters);
    let root = matches!(
        std::fs::read_to_string("/proc/self/status"),
        Ok(text) if text.lines().any(|line| line.starts_with("Uid:\t0\t"))
    );
    if !root {
        assert_eq!(status, Response::Error(PlutonError::NotPermitted));
        eprintln!("not root: the second-uid half of this test is skipped");
        return;
    }
    assert!(matches!(status, Response::Counters(_)));
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    std::fs::set_permissions(directory.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::os::unix::fs::chown(&pluton.socket, None, Some(65534)).expect("chown socket");
    // The test binary may sit where uid 65534 cannot reach (under /root): a copy.
    let child_binary = directory.path().join("it-child");
    std::fs::copy(std::env::current_exe().expect("test binary"), &child_binary)
        .expect("copy the test binary");
    std::fs::set_permissions(&child_binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let output = std::process::Command::new(&child_binary)
        .args([
            "rights::roles_follow_the_peer_uid",
            "--exact",
            "--test-threads=1",
        ])
        .env(CHILD, &pluton.socket)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("spawn the child");
    assert!(
        output.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}
