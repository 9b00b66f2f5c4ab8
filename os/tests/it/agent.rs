//! The update agent against a real HTTP(S) server on loopback (Range support, cut-offs).

use sha2::{Digest, Sha256};
use warden_image::SemanticVersion;
use warden_os::boot::{BootConfig, BootMonitor};
use warden_os::file_system::StdFileSystem;
use warden_os::root_of_trust::MemoryRootOfTrust;
use warden_os::slots::SlotStatus;
use warden_os::update::{
    DeltaOffer, UpdateAgent, UpdateError, UpdateEvent, UpdateOffer, UpdateOutcome,
    UpdateWindowPolicy, WindowDecision,
};

use crate::support::{Keys, product};
use warden_test_support::range_server::{serve, serve_https};

/// A TLS client config trusting only `ca_pem`, as the unit builds from its fleet CA.
fn trusting(ca_pem: &str) -> rustls::ClientConfig {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(certificate.expect("pem")).expect("root");
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth()
}

fn offer(url: String, image: &[u8]) -> UpdateOffer {
    UpdateOffer {
        url,
        sha256: Sha256::digest(image).into(),
        size: image.len() as u64,
        version: SemanticVersion::new(1, 0, 2),
        delta: None,
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
    let agent = UpdateAgent::new(dir.path().join("downloads"), None);
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
async fn over_https_an_interrupted_download_resumes_with_a_range_request() {
    let keys = Keys::new();
    let image = keys.image(2, 1, "#!/bin/sh\n", 1 << 20);
    let cut = image.len() / 3;
    let (url, seen, ca_pem) = serve_https(image.clone(), Some(cut)).await;
    assert!(url.starts_with("https://"), "{url}");
    let dir = tempfile::tempdir().expect("tempdir");

    // Without the server's CA, nothing is fetched: no other root is trusted.
    let untrusting = UpdateAgent::new(dir.path().join("refused"), None);
    let refused = untrusting
        .download(&offer(url.clone(), &image), &mut |_| {})
        .await
        .expect_err("an unknown CA");
    assert!(matches!(refused, UpdateError::Http { .. }), "{refused}");

    // Trusting another CA, the server's certificate is refused: the chain is verified.
    let (_, _, other_ca) = serve_https(image.clone(), None).await;
    let wrong = UpdateAgent::new(dir.path().join("wrong"), Some(trusting(&other_ca)));
    let refused = wrong
        .download(&offer(url.clone(), &image), &mut |_| {})
        .await
        .expect_err("a server certificate from another CA");
    assert!(
        refused.to_string().contains("TLS") && refused.to_string().contains("certificate"),
        "{refused}"
    );
    assert!(
        !dir.path()
            .join("wrong")
            .join(format!("{}.wim", hex::encode(Sha256::digest(&image))))
            .exists()
    );

    let agent = UpdateAgent::new(dir.path().join("downloads"), Some(trusting(&ca_pem)));
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
        "the second request resumes at the cut"
    );
    assert!(events.contains(&UpdateEvent::DownloadStarted { from: cut as u64 }));
}

#[tokio::test]
async fn wrong_digest_is_refused_before_any_slot_is_touched() {
    let keys = Keys::new();
    let image = keys.image(2, 1, "#!/bin/sh\n", 100_000);
    let (url, _) = serve(image.clone(), None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = UpdateAgent::new(dir.path().join("downloads"), None);
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
    let agent = UpdateAgent::new(dir.path().join("downloads"), None);
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
    let agent = UpdateAgent::new(dir.path().join("downloads"), None);
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

/// A device running `image`: installed, booted and confirmed in `dir`.
fn running(
    dir: &std::path::Path,
    keys: &Keys,
    image: &[u8],
) -> BootMonitor<StdFileSystem, MemoryRootOfTrust> {
    let mut monitor = monitor(dir, keys);
    monitor
        .install(&mut std::io::Cursor::new(image), image.len() as u64)
        .expect("install base");
    let decision = monitor.select_boot().expect("boot base");
    monitor.confirm(decision.slot).expect("confirm base");
    monitor
}

fn delta_offer(url: String, delta: &[u8], base: &[u8]) -> DeltaOffer {
    DeltaOffer {
        url,
        sha256: Sha256::digest(delta).into(),
        size: delta.len() as u64,
        base_sha256: Sha256::digest(base).into(),
    }
}

#[tokio::test]
async fn a_delta_for_the_installed_image_is_used_and_the_full_image_never_fetched() {
    let keys = Keys::new();
    let old = keys.image(1, 1, "#!/bin/sh\n", 1 << 20);
    let new = keys.image(2, 2, "#!/bin/sh\nexit 0\n", 1 << 20);
    let (_, delta) =
        warden_os::delta::build_delta(&old, &new, &keys.release, &keys.cert).expect("delta");
    assert!(delta.len() < new.len() / 10, "{} bytes", delta.len());
    let cut = delta.len() / 2;
    let (delta_url, delta_seen) = serve(delta.clone(), Some(cut)).await;
    let (image_url, image_seen) = serve(new.clone(), None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = UpdateAgent::new(dir.path().join("downloads"), None);
    let mut monitor = running(dir.path(), &keys, &old);
    let mut offer = offer(image_url, &new);
    offer.delta = Some(delta_offer(delta_url, &delta, &old));
    let mut events = Vec::new();
    let outcome = agent
        .apply(
            &offer,
            &mut monitor,
            &UpdateWindowPolicy::default(),
            0,
            &mut |event| events.push(event),
        )
        .await
        .expect("update");
    assert!(
        matches!(outcome, UpdateOutcome::Installed { .. }),
        "{events:?}"
    );
    assert_eq!(
        *delta_seen.lock().expect("log"),
        vec![0, cut as u64],
        "resumed"
    );
    assert!(
        image_seen.lock().expect("log").is_empty(),
        "full image fetched"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, UpdateEvent::DeltaFallback(_)))
    );
    let decision = monitor.select_boot().expect("boot");
    assert!(decision.trial);
    let booted = std::fs::read(dir.path().join("state").join(&decision.image_path)).expect("slot");
    assert_eq!(booted, new);
}

#[tokio::test]
async fn a_delta_for_another_base_or_a_corrupt_delta_falls_back_to_the_full_image() {
    let keys = Keys::new();
    let old = keys.image(1, 1, "#!/bin/sh\n", 1 << 19);
    let other = keys.image(3, 1, "#!/bin/sh\n", 1 << 19);
    let new = keys.image(2, 2, "#!/bin/sh\nexit 0\n", 1 << 19);
    let (_, wrong_base) =
        warden_os::delta::build_delta(&other, &new, &keys.release, &keys.cert).expect("delta");
    let (_, good) =
        warden_os::delta::build_delta(&old, &new, &keys.release, &keys.cert).expect("delta");
    // Corrupt, with the offer's digest matching the corrupt bytes: only the delta's own
    // signed patch digest catches it, after the download.
    let mut corrupt = good.clone();
    corrupt[300] ^= 0x10;
    for (name, delta, base) in [
        ("wrong base", &wrong_base, &other),
        ("corrupt", &corrupt, &old),
    ] {
        let (delta_url, _) = serve(delta.clone(), None).await;
        let (image_url, image_seen) = serve(new.clone(), None).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = UpdateAgent::new(dir.path().join("downloads"), None);
        let mut monitor = running(dir.path(), &keys, &old);
        let mut offer = offer(image_url, &new);
        offer.delta = Some(delta_offer(delta_url, delta, base));
        let mut events = Vec::new();
        let outcome = agent
            .apply(
                &offer,
                &mut monitor,
                &UpdateWindowPolicy::default(),
                0,
                &mut |event| events.push(event),
            )
            .await
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        assert!(matches!(outcome, UpdateOutcome::Installed { .. }), "{name}");
        let fallback = events
            .iter()
            .find_map(|e| match e {
                UpdateEvent::DeltaFallback(reason) => Some(reason.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name}: no fallback in {events:?}"));
        println!("{name}: {fallback}");
        assert_eq!(*image_seen.lock().expect("log"), vec![0], "{name}");
        let decision = monitor.select_boot().expect("boot");
        assert!(decision.trial, "{name}");
        let booted =
            std::fs::read(dir.path().join("state").join(&decision.image_path)).expect("slot");
        assert_eq!(booted, new, "{name}");
    }
}
