//! The update agent against a real HTTP server on loopback (Range support, cut-offs).

use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use warden_image::SemanticVersion;
use warden_os::boot::{BootConfig, BootMonitor};
use warden_os::file_system::StdFileSystem;
use warden_os::root_of_trust::MemoryRootOfTrust;
use warden_os::slots::SlotStatus;
use warden_os::update::{
    UpdateAgent, UpdateError, UpdateEvent, UpdateOffer, UpdateOutcome, UpdateWindowPolicy,
    WindowDecision,
};

use crate::support::{Keys, product};

/// A minimal HTTP/1.1 file server: honours `Range: bytes=N-`; the first response is
/// cut after `cut_first_at` body bytes if set. Records each request's range start.
async fn serve(body: Vec<u8>, cut_first_at: Option<usize>) -> (String, Arc<Mutex<Vec<u64>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/image.wim", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
            let start: u64 = text
                .lines()
                .find_map(|line| line.strip_prefix("range: bytes="))
                .and_then(|range| {
                    range
                        .trim_end_matches('-')
                        .trim_end_matches("-\r")
                        .split('-')
                        .next()?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(0);
            log.lock().expect("log").push(start);
            let start = start as usize;
            let head = if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{}\r\nConnection: close\r\n\r\n",
                    body.len() - start,
                    start,
                    body.len() - 1,
                    body.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
            };
            let _ = socket.write_all(head.as_bytes()).await;
            let end = match cut_first_at {
                Some(cut) if first => cut,
                _ => body.len(),
            };
            first = false;
            let _ = socket.write_all(&body[start..end.max(start)]).await;
            let _ = socket.shutdown().await;
        }
    });
    (url, seen)
}

fn offer(url: String, image: &[u8]) -> UpdateOffer {
    UpdateOffer {
        url,
        sha256: Sha256::digest(image).into(),
        size: image.len() as u64,
        version: SemanticVersion::new(1, 0, 2),
    }
}

fn monitor(dir: &std::path::Path, keys: &Keys) -> BootMonitor<StdFileSystem, MemoryRootOfTrust> {
    BootMonitor::new(
        StdFileSystem::new(dir.join("state")),
        MemoryRootOfTrust::new(keys.roots()),
        BootConfig::new(product()),
    )
}

#[tokio::test]
async fn interrupted_download_resumes_with_a_range_request_and_installs() {
    let keys = Keys::new();
    let image = keys.image(2, 1, "#!/bin/sh\n", 3 << 20);
    let cut = image.len() * 2 / 5;
    let (url, seen) = serve(image.clone(), Some(cut)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = UpdateAgent::new(dir.path().join("downloads")).expect("agent");
    let mut monitor = monitor(dir.path(), &keys);
    let mut events = Vec::new();
    let outcome = agent
        .apply(
            &offer(url, &image),
            &mut monitor,
            &UpdateWindowPolicy::default(),
            0,
            &mut |event| events.push(event),
        )
        .await
        .expect("update");
    assert!(matches!(outcome, UpdateOutcome::Installed { .. }));
    assert_eq!(
        *seen.lock().expect("log"),
        vec![0, cut as u64],
        "second request resumes at the cut"
    );
    assert!(events.contains(&UpdateEvent::DownloadStarted { from: cut as u64 }));
    assert!(
        events
            .iter()
            .any(|event| matches!(event, UpdateEvent::Installed { .. }))
    );
    let decision = monitor.select_boot().expect("boot");
    assert!(decision.trial);
}

#[tokio::test]
async fn wrong_digest_is_refused_before_any_slot_is_touched() {
    let keys = Keys::new();
    let image = keys.image(2, 1, "#!/bin/sh\n", 100_000);
    let (url, _) = serve(image.clone(), None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = UpdateAgent::new(dir.path().join("downloads")).expect("agent");
    let mut monitor = monitor(dir.path(), &keys);
    let mut bad = offer(url, &image);
    bad.sha256[0] ^= 1;
    let error = agent
        .apply(
            &bad,
            &mut monitor,
            &UpdateWindowPolicy::default(),
            0,
            &mut |_| {},
        )
        .await
        .expect_err("wrong digest");
    assert!(
        matches!(error, UpdateError::DigestMismatch { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("does not match"));
    assert!(!agent.part_path(&bad).exists() && !agent.staged_path(&bad).exists());
    let state = monitor.load_state().expect("state");
    assert!(state.slot(warden_os::Slot::A) == &SlotStatus::Empty);
    assert!(
        !dir.path().join("state/slots").exists(),
        "no slot file written"
    );
}

#[tokio::test]
async fn image_from_an_unknown_root_is_refused_and_the_slot_stays_unbootable() {
    let keys = Keys::new();
    let stranger = Keys::new();
    let image = stranger.image(2, 1, "#!/bin/sh\n", 1000);
    let (url, _) = serve(image.clone(), None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = UpdateAgent::new(dir.path().join("downloads")).expect("agent");
    let mut monitor = monitor(dir.path(), &keys);
    let error = agent
        .apply(
            &offer(url, &image),
            &mut monitor,
            &UpdateWindowPolicy::default(),
            0,
            &mut |_| {},
        )
        .await
        .expect_err("unknown root");
    assert!(
        error.to_string().contains("not an installed root key"),
        "{error}"
    );
    assert!(
        monitor.select_boot().is_err(),
        "nothing bootable was installed"
    );
}

#[tokio::test]
async fn a_veto_leaves_the_verified_download_staged() {
    let keys = Keys::new();
    let image = keys.image(2, 1, "#!/bin/sh\n", 1000);
    let (url, seen) = serve(image.clone(), None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = UpdateAgent::new(dir.path().join("downloads")).expect("agent");
    let mut monitor = monitor(dir.path(), &keys);
    let mut window = UpdateWindowPolicy::default();
    window.veto("press-1", "cycle running");
    let offer = offer(url, &image);
    let outcome = agent
        .apply(&offer, &mut monitor, &window, 0, &mut |_| {})
        .await
        .expect("staged");
    assert!(matches!(
        outcome,
        UpdateOutcome::Waiting {
            decision: WindowDecision::Vetoed { .. },
            ..
        }
    ));
    window.lift_veto("press-1");
    let outcome = agent
        .apply(&offer, &mut monitor, &window, 0, &mut |_| {})
        .await
        .expect("installed");
    assert!(matches!(outcome, UpdateOutcome::Installed { .. }));
    assert_eq!(
        seen.lock().expect("log").len(),
        1,
        "the staged download is reused"
    );
}
