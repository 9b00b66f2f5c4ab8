//! Pluton benchmark: ECDSA P-256 signs/s and verifies/s, quote time, IPC round trip,
//! quote verification of both formats, beside `openssl speed -seconds 3 ecdsap256` run
//! in the same go; with the TPM backend built in and `WARDEN_TPM_TCTI` set, the TPM's
//! signs/s and quotes/s too.
//!
//! `cargo bench -p warden-pluton`
//! `WARDEN_TPM_TCTI=swtpm:host=127.0.0.1,port=2321 cargo bench -p warden-pluton --features tpm`

use std::process::Command;
use std::time::{Duration, Instant};

use warden_pluton::protocol::{
    Caller, FRAME_HEADER_LEN, MAX_FRAME_LEN, Request, encode_frame, handle_request_frame,
};
use warden_pluton::quote::MAX_QUOTE_LEN;
use warden_pluton::{MemoryStore, RootOfTrust, SoftwarePluton, verify_quote, verify_signature};

const RUN: Duration = Duration::from_secs(2);

/// Run `operation` repeatedly for about `RUN`; operations per second.
fn rate(mut operation: impl FnMut()) -> f64 {
    for _ in 0..20 {
        operation();
    }
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < RUN {
        for _ in 0..50 {
            operation();
        }
        count += 50;
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// OpenSSL's (sign/s, verify/s) for ecdsap256, single process.
fn openssl_speed() -> Option<(f64, f64)> {
    let output = Command::new("openssl")
        .args(["speed", "-seconds", "3", "ecdsap256"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    // " 256 bits ecdsa (nistp256)   0.0000s   0.0001s  49000.0  16000.0"
    let line = text
        .lines()
        .find(|line| line.contains("ecdsa (nistp256)"))?;
    let numbers: Vec<f64> = line
        .split_whitespace()
        .filter_map(|field| field.parse().ok())
        .collect();
    match numbers.as_slice() {
        [.., sign, verify] => Some((*sign, *verify)),
        _ => None,
    }
}

/// Signs per second through a real pluton server over its Unix socket.
fn socket_rate(message: &[u8]) -> f64 {
    use std::io::{Read, Write};
    let directory = tempfile::tempdir().expect("tempdir");
    let socket = directory.path().join("pluton.sock");
    let state_dir = directory.path().join("state");
    let (thread_socket, thread_state) = (socket.clone(), state_dir.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        // Every caller unseparated: this one creates the identity and signs.
        let options = warden_pluton::server::ServeOptions {
            roles: warden_pluton::server::CallerRoles::unseparated(),
            ..Default::default()
        };
        let _ = runtime.block_on(warden_pluton::server::serve(
            &thread_socket,
            &thread_state,
            options,
        ));
    });
    let mut stream = loop {
        match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(stream) => break stream,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let mut frame = vec![0u8; FRAME_HEADER_LEN + MAX_FRAME_LEN];
    let mut exchange = |request: &Request| {
        let length = encode_frame(request, &mut frame).expect("encode");
        stream.write_all(&frame[..length]).expect("write");
        let mut header = [0u8; FRAME_HEADER_LEN];
        stream.read_exact(&mut header).expect("read");
        let mut body = vec![0u8; u32::from_le_bytes(header) as usize];
        stream.read_exact(&mut body).expect("read");
        warden_pluton::protocol::decode_response(&body).expect("response")
    };
    exchange(&Request::CreateIdentity {
        factory_reset: None,
    });
    let request = Request::SignTls13ClientCertificateVerify {
        message: heapless::Vec::from_slice(message).expect("fits"),
    };
    rate(|| {
        let response = exchange(&request);
        assert!(matches!(
            response,
            warden_pluton::protocol::Response::Signature(_)
        ));
    })
}

/// The recorded swtpm quote (`tests/fixtures/swtpm-quote.txt`): key, nonce, quote.
fn recorded_tpm_quote() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let text = include_str!("../tests/fixtures/swtpm-quote.txt");
    let field = |name: &str| -> Vec<u8> {
        let hex = text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .expect("fixture field");
        (0..hex.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).expect("hex"))
            .collect()
    };
    (field("public_key"), field("nonce"), field("quote"))
}

/// The TPM backend's (signs/s, quotes/s) on `WARDEN_TPM_TCTI`, if set.
#[cfg(feature = "tpm")]
fn tpm_rates(message: &[u8]) -> Option<(f64, f64)> {
    let tcti = std::env::var("WARDEN_TPM_TCTI").ok()?;
    let directory = tempfile::tempdir().expect("tempdir");
    let store = warden_pluton::file_store::FileStore::open(directory.path()).expect("store");
    let mut pluton =
        warden_pluton::tpm::TpmPluton::open(&tcti, store, 1, |_| Ok(())).expect("open the tpm");
    let identity = pluton.create_identity(None).expect("identity");
    let nonce = [7u8; 32];
    let mut quote = [0u8; MAX_QUOTE_LEN];
    let length = pluton.quote(&nonce, &mut quote).expect("quote");
    verify_quote(&quote[..length], &identity.public_key.0, &nonce).expect("tpm quote verifies");
    let signs = rate(|| {
        pluton
            .sign_tls13_client_certificate_verify(message)
            .expect("sign");
    });
    let quotes = rate(|| {
        pluton.quote(&nonce, &mut quote).expect("quote");
    });
    Some((signs, quotes))
}

#[cfg(not(feature = "tpm"))]
fn tpm_rates(_message: &[u8]) -> Option<(f64, f64)> {
    None
}

fn main() {
    let mut pluton =
        SoftwarePluton::open(MemoryStore::new(), getrandom::SysRng, 1, |_| Ok(())).expect("open");
    let identity = pluton.create_identity(None).expect("identity");
    let public_key = identity.public_key.0;
    let mut message = vec![0x20u8; 64];
    message.extend_from_slice(b"TLS 1.3, client CertificateVerify\0");
    message.extend_from_slice(&[0x5a; 32]);
    let signature = pluton
        .sign_tls13_client_certificate_verify(&message)
        .expect("sign");

    let signs = rate(|| {
        pluton
            .sign_tls13_client_certificate_verify(&message)
            .expect("sign");
    });
    let verifies = rate(|| {
        assert_eq!(
            verify_signature(&public_key, &message, &signature),
            Ok(true)
        );
    });
    let nonce = [7u8; 32];
    let mut quote = [0u8; MAX_QUOTE_LEN];
    let quotes = rate(|| {
        pluton.quote(&nonce, &mut quote).expect("quote");
    });
    let quote_len = pluton.quote(&nonce, &mut quote).expect("quote");
    let quote_verifies = rate(|| {
        verify_quote(&quote[..quote_len], &public_key, &nonce).expect("verify");
    });
    // The server's per-frame path without the socket: decode, sign, encode.
    let mut request_frame = vec![0u8; FRAME_HEADER_LEN + MAX_FRAME_LEN];
    let request = Request::SignTls13ClientCertificateVerify {
        message: heapless::Vec::from_slice(&message).expect("fits"),
    };
    let request_len = encode_frame(&request, &mut request_frame).expect("encode");
    let mut response = vec![0u8; FRAME_HEADER_LEN + MAX_FRAME_LEN];
    let framed_signs = rate(|| {
        handle_request_frame(
            &mut pluton,
            &mut Caller::with_role(0, warden_pluton::Role::Link),
            &warden_pluton::roles::NoRoleTokens,
            &request_frame[FRAME_HEADER_LEN..request_len],
            &mut response,
        )
        .expect("frame");
    });

    let (tpm_public_key, tpm_nonce, tpm_quote) = recorded_tpm_quote();
    let tpm_quote_verifies = rate(|| {
        verify_quote(&tpm_quote, &tpm_public_key, &tpm_nonce).expect("verify");
    });
    let socket_signs = socket_rate(&message);
    let tpm = tpm_rates(&message);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let openssl = openssl_speed();
    println!(
        "## pluton: ECDSA P-256 and quotes (one core, {} s per figure)",
        RUN.as_secs()
    );
    println!("| what | pluton (p256 0.14) | openssl speed ecdsap256 | ratio |");
    println!("|---|---:|---:|---:|");
    match openssl {
        Some((openssl_signs, openssl_verifies)) => {
            println!(
                "| signs/s (TLS CertificateVerify) | {signs:.0} | {openssl_signs:.0} | {:.2} |",
                signs / openssl_signs
            );
            println!(
                "| verifies/s | {verifies:.0} | {openssl_verifies:.0} | {:.2} |",
                verifies / openssl_verifies
            );
        }
        None => {
            println!("| signs/s (TLS CertificateVerify) | {signs:.0} | (openssl not found) | – |");
            println!("| verifies/s | {verifies:.0} | (openssl not found) | – |");
        }
    }
    println!(
        "| quote: make (sign) | {:.1} µs ({quotes:.0}/s) | | |",
        1e6 / quotes
    );
    println!(
        "| quote: verify | {:.1} µs ({quote_verifies:.0}/s) | | |",
        1e6 / quote_verifies
    );
    println!(
        "| sign via request frame (decode + sign + encode, no socket) | {framed_signs:.0}/s | | |"
    );
    println!("| sign over the pluton Unix socket (round trip) | {socket_signs:.0}/s | | |");
    println!(
        "| TPM quote (WPT1, recorded on swtpm): verify | {:.1} µs ({tpm_quote_verifies:.0}/s) | | |",
        1e6 / tpm_quote_verifies
    );
    match (tpm, openssl) {
        (Some((tpm_signs, tpm_quotes)), Some((openssl_signs, _))) => {
            println!(
                "| TPM backend: signs/s (TLS CertificateVerify) | {tpm_signs:.0} | {openssl_signs:.0} | {:.3} |",
                tpm_signs / openssl_signs
            );
            println!(
                "| TPM backend: quote: make | {:.1} µs ({tpm_quotes:.0}/s) | | |",
                1e6 / tpm_quotes
            );
        }
        (Some((tpm_signs, tpm_quotes)), None) => {
            println!("| TPM backend: signs/s (TLS CertificateVerify) | {tpm_signs:.0} | | |");
            println!(
                "| TPM backend: quote: make | {:.1} µs ({tpm_quotes:.0}/s) | | |",
                1e6 / tpm_quotes
            );
        }
        (None, _) => println!(
            "| TPM backend | (not measured: build with --features tpm and set WARDEN_TPM_TCTI) | | |"
        ),
    }
    println!("\nload average at the end: {}", load.trim());
}
