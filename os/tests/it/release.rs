//! Release tooling on files (what `warden image …` runs), and launching an image.

use std::process::ExitCode;

use clap::Parser;
use warden_keychain::Purpose;
use warden_keychain::tooling::{
    SecretSigningKey, issue_release_cert, save_public_key, save_secret_key,
};
use warden_os::boot::{BootConfig, BootMonitor};
use warden_os::cli::ImageCommand;
use warden_os::file_system::StdFileSystem;
use warden_os::root_of_trust::MemoryRootOfTrust;

use crate::support::product;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: ImageCommand,
}

fn run(args: &[&str]) -> anyhow::Result<ExitCode> {
    let mut argv = vec!["warden-image"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv)?.command.run()
}

#[test]
fn build_sign_inspect_verify_then_boot_and_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let root = SecretSigningKey::generate().expect("rng");
    let release = SecretSigningKey::generate().expect("rng");
    let cert = issue_release_cert(&root, &release.public_key(), Purpose::IMAGE, 3).expect("cert");
    save_secret_key(&dir.path().join("release.pem"), &release).expect("key");
    save_public_key(&dir.path().join("root.pub.pem"), &root.public_key()).expect("pub");
    std::fs::write(dir.path().join("release.cert"), &cert).expect("cert");
    std::fs::write(dir.path().join("warden"), "#!/bin/sh\necho \"slot $WARDEN_SLOT trial $WARDEN_TRIAL $(cat defaults/config.toml)\" > ran.txt\n").expect("bin");
    std::fs::create_dir_all(dir.path().join("defaults")).expect("defaults");
    std::fs::write(dir.path().join("defaults/config.toml"), "hello").expect("config");

    let built = run(&[
        "build",
        "--binary",
        &path("warden"),
        "--defaults",
        &path("defaults"),
        "--product",
        "warden-gw",
        "--version",
        "1.4.2",
        "--security-counter",
        "4",
        "--created-at",
        "1790000000",
        "-o",
        &path("unsigned.wim"),
    ]);
    assert_eq!(built.expect("build"), ExitCode::SUCCESS);
    let first = std::fs::read(path("unsigned.wim")).expect("read");
    run(&[
        "build",
        "--binary",
        &path("warden"),
        "--defaults",
        &path("defaults"),
        "--product",
        "warden-gw",
        "--version",
        "1.4.2",
        "--security-counter",
        "4",
        "--created-at",
        "1790000000",
        "-o",
        &path("again.wim"),
    ])
    .expect("build again");
    assert_eq!(
        first,
        std::fs::read(path("again.wim")).expect("read"),
        "builds are reproducible"
    );

    assert_eq!(
        run(&[
            "sign",
            &path("unsigned.wim"),
            "--key",
            &path("release.pem"),
            "--cert",
            &path("release.cert"),
            "-o",
            &path("signed.wim")
        ])
        .expect("sign"),
        ExitCode::SUCCESS
    );
    let error = run(&[
        "sign",
        &path("signed.wim"),
        "--key",
        &path("release.pem"),
        "--cert",
        &path("release.cert"),
        "-o",
        &path("x.wim"),
    ])
    .expect_err("double sign");
    assert!(error.to_string().contains("already signed"), "{error}");
    assert_eq!(
        run(&["inspect", &path("signed.wim")]).expect("inspect"),
        ExitCode::SUCCESS
    );
    assert_eq!(
        run(&[
            "verify",
            &path("signed.wim"),
            "--root",
            &path("root.pub.pem"),
            "--product",
            "warden-gw",
            "--min-counter",
            "4"
        ])
        .expect("verify"),
        ExitCode::SUCCESS
    );
    assert_eq!(
        run(&[
            "verify",
            &path("signed.wim"),
            "--root",
            &path("root.pub.pem"),
            "--product",
            "warden-gw",
            "--min-counter",
            "5"
        ])
        .expect("verify"),
        ExitCode::FAILURE
    );
    assert_eq!(
        run(&[
            "verify",
            &path("signed.wim"),
            "--root",
            &path("root.pub.pem"),
            "--revoked",
            &release.key_id().to_string()
        ])
        .expect("verify"),
        ExitCode::FAILURE
    );
    let missing =
        run(&["verify", &path("nope.wim"), "--root", &path("root.pub.pem")]).expect_err("missing");
    assert!(missing.to_string().contains("nope.wim"), "{missing}");

    // The monitor installs, boots, unpacks and runs it.
    let state = dir.path().join("state");
    let mut monitor = BootMonitor::new(
        StdFileSystem::new(&state),
        MemoryRootOfTrust::new(vec![
            warden_image::RootKey::from_public_key(&root.public_key()).expect("root"),
        ]),
        BootConfig::new(product()),
    );
    let mut image = std::fs::File::open(path("signed.wim")).expect("open");
    let len = image.metadata().expect("len").len();
    monitor.install(&mut image, len).expect("install");
    let decision = monitor.select_boot().expect("boot");
    let run_dir = dir.path().join("run");
    let mut child = warden_os::launch::spawn(&decision, &state, &run_dir, &[]).expect("spawn");
    assert!(child.wait().expect("wait").success());
    let ran = std::fs::read_to_string(run_dir.join("a/ran.txt")).expect("ran");
    assert_eq!(ran.trim(), "slot a trial 1 hello");
    monitor.confirm(decision.slot).expect("confirm");
}
