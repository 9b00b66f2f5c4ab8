//! Update offers end to end on the device side: a real image built and signed with
//! `warden image build` / `warden image sign`, served by a real HTTP server that cuts
//! the first transfer (so the download resumes with a range request), the operator's
//! deferral and allowance, the install into the inactive slot, and the statuses
//! published through the durable control queue.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use warden::state::updates::UpdateDecision;
use warden::updates::{Updater, report_boot_outcome};
use warden_keychain::Purpose;
use warden_keychain::tooling::{SecretSigningKey, issue_release_cert, save_secret_key};
use warden_link::topics::{PROTOCOL_VERSION, UpdateOffer, UpdateState, UpdateStatus, to_hex};
use warden_link::{ControlMessage, ControlSender};
use warden_os::file_system::StdFileSystem;
use warden_os::image::{ProductId, RootKey};
use warden_os::update::UpdateAgent;
use warden_os::{BootConfig, BootMonitor, MemoryRootOfTrust};
use warden_test_support::range_server::serve;

pub(super) const PRODUCT: &str = "warden-gw";

pub(super) struct Vendor {
    root: SecretSigningKey,
}

impl Vendor {
    pub(super) fn new() -> Self {
        Self {
            root: SecretSigningKey::generate().expect("rng"),
        }
    }

    fn roots(&self) -> Vec<RootKey> {
        vec![RootKey::from_public_key(&self.root.public_key()).expect("root")]
    }

    /// A revocation list of this vendor's root: the release keys of the certificates
    /// at `certs`, under `sequence`.
    pub(super) fn revocation_list(&self, sequence: u64, certs: &[&Path]) -> Vec<u8> {
        let revoked: Vec<_> = certs
            .iter()
            .map(|cert| {
                warden_keychain::ReleaseKeyCert::decode(&std::fs::read(cert).expect("cert"))
                    .expect("certificate")
                    .release_key_id()
            })
            .collect();
        warden_keychain::tooling::sign_revocation_list(&self.root, sequence, &revoked)
            .expect("list")
    }

    /// A signed image made by the release tooling of the `warden` binary.
    fn image(&self, dir: &Path, version: &str) -> Vec<u8> {
        self.image_for(dir, version, PRODUCT, 1)
    }

    /// A signed image of `product` with `security_counter`, made by the release tooling.
    pub(super) fn image_for(
        &self,
        dir: &Path,
        version: &str,
        product: &str,
        security_counter: u64,
    ) -> Vec<u8> {
        let release = SecretSigningKey::generate().expect("rng");
        let cert =
            issue_release_cert(&self.root, &release.public_key(), Purpose::IMAGE, 1).expect("cert");
        std::fs::create_dir_all(dir).expect("dir");
        save_secret_key(&dir.join("release.pem"), &release).expect("key");
        std::fs::write(dir.join("release.cert"), cert).expect("cert");
        let binary = dir.join("warden-payload");
        let body: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&binary, body).expect("payload");
        let warden = env!("CARGO_BIN_EXE_warden");
        let run = |args: &[&str]| {
            let output = std::process::Command::new(warden)
                .args(args)
                .output()
                .expect("warden runs");
            assert!(
                output.status.success(),
                "warden {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let unsigned = dir.join("unsigned.wim");
        let signed = dir.join("signed.wim");
        let path = |p: &Path| p.display().to_string();
        run(&[
            "image",
            "build",
            "--binary",
            &path(&binary),
            "--product",
            product,
            "--version",
            version,
            "--security-counter",
            &security_counter.to_string(),
            "--created-at",
            "1790000000",
            "--output",
            &path(&unsigned),
        ]);
        run(&[
            "image",
            "sign",
            &path(&unsigned),
            "--key",
            &path(&dir.join("release.pem")),
            "--cert",
            &path(&dir.join("release.cert")),
            "--output",
            &path(&signed),
        ]);
        std::fs::read(signed).expect("signed image")
    }
}

pub(super) type Monitor = BootMonitor<StdFileSystem, MemoryRootOfTrust>;

pub(super) fn updater(
    dir: &Path,
    vendor: &Vendor,
    decision: Arc<Mutex<UpdateDecision>>,
) -> (
    Updater<StdFileSystem, MemoryRootOfTrust>,
    Arc<Mutex<Monitor>>,
) {
    let monitor = Arc::new(Mutex::new(BootMonitor::new(
        StdFileSystem::new(dir.join("state")),
        MemoryRootOfTrust::new(vendor.roots()),
        BootConfig::new(ProductId::new(PRODUCT).expect("product")),
    )));
    let updater = Updater {
        agent: UpdateAgent::new(dir.join("downloads"), None),
        download_dir: dir.join("downloads"),
        monitor: Arc::clone(&monitor),
        window: Arc::default(),
        decision,
        control: ControlSender::open(&dir.join("control")).expect("control queue"),
        retry_pause: Duration::from_millis(50),
        restart: None,
        revocation_sequence: None,
    };
    (updater, monitor)
}

fn offer(url: String, image: &[u8], version: &str) -> UpdateOffer {
    UpdateOffer {
        v: PROTOCOL_VERSION,
        id: "wave-7".into(),
        url,
        sha256: to_hex(&Sha256::digest(image)),
        size: image.len() as u64,
        version: version.into(),
        window_start_ms: 0,
        window_end_ms: 0,
        delta: None,
    }
}

/// `(state, detail)` of every update status queued so far, in order.
fn statuses(control: &ControlSender) -> Vec<(String, String)> {
    update_statuses(control)
        .into_iter()
        .map(|status| (status.state, status.detail))
        .collect()
}

/// Every update status queued so far, in order.
pub(super) fn update_statuses(control: &ControlSender) -> Vec<UpdateStatus> {
    let queue = control.lock();
    let mut found = Vec::new();
    let mut next = queue.outbox().next_pending(0);
    while let Some(seq) = next {
        if let Ok(ControlMessage::UpdateStatus(status)) = queue.message(seq) {
            found.push(status);
        }
        next = queue.outbox().next_pending(seq + 1);
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_resumes_its_download_waits_for_the_operator_and_installs_on_trial() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vendor = Vendor::new();
    let image = vendor.image(&dir.path().join("release"), "1.2.0");
    let cut = image.len() / 3;
    let (url, requests) = serve(image.clone(), Some(cut)).await;
    let decision = Arc::new(Mutex::new(UpdateDecision::default()));
    let now = warden_os::reports::now_ms();
    decision.lock().expect("decision").defer(now);
    let (updater, monitor) = updater(dir.path(), &vendor, Arc::clone(&decision));
    let control = updater.control.clone();
    let updater = Arc::new(updater);

    let offer = offer(url, &image, "1.2.0");
    let handling = tokio::spawn({
        let (updater, offer) = (Arc::clone(&updater), offer.clone());
        async move { updater.handle(&offer).await }
    });
    // Downloaded, then held by the operator's deferral until they allow it.
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if statuses(&control)
                .iter()
                .any(|(state, detail)| state == "waiting" && detail.contains("deferred"))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "no waiting status: {:?}",
        statuses(&control)
    );
    assert!(
        !handling.is_finished(),
        "installed while the operator deferred"
    );
    {
        let mut decision = decision.lock().expect("decision");
        assert_eq!(
            decision.offer.as_ref().map(|o| o.version.as_str()),
            Some("1.2.0"),
            "the status page shows the offer"
        );
        decision.allow(now);
    }
    let slot = tokio::time::timeout(Duration::from_secs(30), handling)
        .await
        .expect("installed after the operator allowed it")
        .expect("join")
        .expect("installed");

    assert_eq!(
        *requests.lock().expect("requests"),
        vec![0, cut as u64],
        "the second request resumed at the cut"
    );
    let states: Vec<String> = statuses(&control).into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        states,
        vec![
            "downloading",
            "downloading",
            "waiting",
            "verifying",
            "installed"
        ],
        "{:?}",
        statuses(&control)
    );
    assert!(
        statuses(&control)[1]
            .1
            .contains(&format!("resuming at byte {cut}"))
    );

    // The next boot runs it on trial; the monitor confirms it after the health check.
    {
        let mut monitor = monitor.lock().expect("monitor");
        let boot = monitor.select_boot().expect("boot");
        assert_eq!((boot.slot, boot.trial), (slot, true));
        let downloads = dir.path().join("downloads");
        assert_eq!(
            report_boot_outcome(&mut monitor, &downloads, &control).expect("report"),
            Some(UpdateState::Trial)
        );
        monitor.confirm(slot).expect("confirm");
        assert_eq!(
            report_boot_outcome(&mut monitor, &downloads, &control).expect("report"),
            Some(UpdateState::Confirmed)
        );
        report_boot_outcome(&mut monitor, &downloads, &control).expect("report again");
    }
    let states: Vec<String> = statuses(&control).into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        &states[5..],
        ["trial", "confirmed"],
        "each state is published once"
    );

    // The same offer again (a redelivery) is answered, not downloaded or installed again.
    assert_eq!(updater.handle(&offer).await, Ok(slot));
    assert_eq!(requests.lock().expect("requests").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_from_another_vendor_is_refused_and_nothing_becomes_bootable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vendor = Vendor::new();
    let stranger = Vendor::new();
    // The digest matches the offer: only the signature check can catch it.
    let image = stranger.image(&dir.path().join("release"), "1.2.0");
    let (url, _) = serve(image.clone(), None).await;
    let (updater, monitor) = updater(dir.path(), &vendor, Arc::default());
    let error = updater
        .handle(&offer(url, &image, "1.2.0"))
        .await
        .expect_err("refused");
    assert!(
        error.to_string().contains("not an installed root key"),
        "{error}"
    );
    let last = statuses(&updater.control).pop().expect("a status");
    assert_eq!(last.0, "failed");
    assert!(last.1.contains("not an installed root key"), "{}", last.1);
    assert!(
        monitor.lock().expect("monitor").select_boot().is_err(),
        "nothing bootable was installed"
    );

    // A digest that does not match the offer is refused before any slot is touched.
    let (url, _) = serve(image.clone(), None).await;
    let mut tampered = offer(url, &image, "1.2.1");
    tampered.id = "wave-8".into();
    tampered.sha256 = to_hex(&[7; 32]);
    let error = updater.handle(&tampered).await.expect_err("refused");
    assert!(error.to_string().contains("does not match"), "{error}");
}
