//! The policy bundles' anti-rollback floor lives in pluton, not on the disk the bridges
//! write: a `current.bundle` rolled back on disk to an older, genuinely signed bundle is
//! refused at the next start.

use std::path::Path;
use std::time::Duration;

use warden::twin::{TwinError, enforce_bundle_floor, open_store, record_applied_bundle};
use warden_pluton::Role;
use warden_pluton::server::{CallerRoles, ServeOptions};
use warden_policy::bundle::ProductId;
use warden_policy::bundle::build::build_bundle_from_files;

const PRODUCT: &str = "warden-demo";

/// Pluton on `dir`, in this process; this test's uid is the bridges role. Returns once it
/// listens, with the vendor root of `pki` installed as the factory would.
async fn start_pluton(dir: &Path, pki: &warden_hil::demo_pki::DemoPki) -> std::path::PathBuf {
    let socket = dir.join("pluton.sock");
    let state = dir.join("pluton");
    let mut roles = CallerRoles::default();
    roles
        .by_uid
        .insert(nix::unistd::getuid().as_raw(), Role::Bridges);
    let options = ServeOptions {
        roles,
        ..ServeOptions::default()
    };
    tokio::spawn({
        let (socket, state) = (socket.clone(), state.clone());
        async move { warden_pluton::server::serve(&socket, &state, options).await }
    });
    let root = pki.vendor_root_public_key().expect("vendor root");
    let capability_file = state.join(warden_pluton::server::DEFAULT_CAPABILITY_FILE_NAME);
    let socket_for_factory = socket.clone();
    tokio::task::spawn_blocking(move || {
        for _ in 0..200 {
            if let Ok(capability) = warden_pluton::server::read_capability_file(&capability_file)
                && let Ok(mut factory) = warden_pluton_api::PlutonClient::connect_as_boot(
                    &socket_for_factory,
                    &capability,
                )
            {
                factory
                    .install_root_key(&capability, &root, warden_keychain::Purpose::ALL.bits())
                    .expect("vendor root installed");
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("pluton did not listen");
    })
    .await
    .expect("factory");
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_rolled_back_on_disk_is_refused_at_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = warden_hil::demo_pki::DemoPki::generate(&dir.path().join("pki")).expect("pki");
    let socket = start_pluton(dir.path(), &pki).await;
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, warden_hil::demo::DEMO_POLICY).expect("policy");
    let product = ProductId::new(PRODUCT).expect("product");
    let key = dir.path().join("pki/policy-release.key");
    let cert = dir.path().join("pki/policy-release.cert");
    let (older, _) = build_bundle_from_files(&policy, product, 7, &key, &cert).expect("v7");
    let (newer, _) = build_bundle_from_files(&policy, product, 9, &key, &cert).expect("v9");

    let bundles = dir.path().join("policy-bundles");
    let socket_for_unit = socket.clone();
    let bundles_for_unit = bundles.clone();
    tokio::task::spawn_blocking(move || {
        let (socket, bundles) = (socket_for_unit, bundles_for_unit);
        let roots = warden::twin::policy_roots(Some(&socket)).expect("roots from pluton");
        assert!(!roots.is_empty(), "the vendor root serves policy bundles");

        // The unit applies 9, as the twin does: written, then pluton's floor raised.
        let mut store = open_store(&bundles, &roots, PRODUCT).expect("store");
        enforce_bundle_floor(&mut store, &bundles, Some(&socket)).expect("nothing stored yet");
        store.apply(&newer).expect("v9 verifies");
        assert_eq!(record_applied_bundle(&socket, 9).expect("floor raised"), 9);

        // Restarted on 9: accepted.
        let mut store = open_store(&bundles, &roots, PRODUCT).expect("store");
        enforce_bundle_floor(&mut store, &bundles, Some(&socket)).expect("9 is at the floor");

        // Someone with the bridges' disk writes the genuine but older 7 back.
        let current = bundles.join(warden_policy::bundle::store::CURRENT_FILE);
        std::fs::write(&current, &older).expect("roll back on disk");
        let mut store = open_store(&bundles, &roots, PRODUCT).expect("7 still verifies by itself");
        assert_eq!(
            store.current().map(|applied| applied.header.version),
            Some(7),
            "the disk alone cannot tell"
        );
        let refused = enforce_bundle_floor(&mut store, &bundles, Some(&socket))
            .expect_err("a bundle below pluton's floor is refused");
        assert!(matches!(refused, TwinError::RolledBack { .. }), "{refused}");
        let message = refused.to_string();
        assert!(
            message.contains("version 7 is below pluton's bundle floor 9")
                && message.contains(&current.display().to_string()),
            "{message}"
        );
    })
    .await
    .expect("unit");
}
