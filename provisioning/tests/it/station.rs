//! End-to-end station scenarios.

use std::time::{Duration, Instant};

use crate::fixture::{Factory, PASSPHRASE, Probe, read_record, stderr, stdout};

fn decode_qr(png_path: &std::path::Path) -> String {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).expect("label.png"),
    ));
    let mut reader = decoder.read_info().expect("png header");
    let mut pixels = vec![0u8; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut pixels).expect("png frame");
    let (width, height) = (info.width as usize, info.height as usize);
    let mut image =
        rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| pixels[y * width + x]);
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code on the label");
    let (_, content) = grids[0].decode().expect("QR decodes");
    content
}

#[test]
fn unit_is_provisioned_end_to_end_registered_verified_and_then_refused() {
    let factory = Factory::new(Probe::Healthy, true);
    let output = factory.run(&["unit", "--serial", "WG000001"]);
    assert!(output.status.success(), "unit: {}", stderr(&output));
    assert!(!stderr(&output).contains(PASSPHRASE));

    let unit = factory.unit_dir("WG000001");
    assert!(unit.join("factory/PROVISIONED").is_file());
    assert!(!unit.join("factory/FAILED").exists());
    let record = read_record(&factory, "WG000001");
    assert_eq!(record["result"], "provisioned");
    let device_id = record["device_id"].as_str().expect("device id").to_owned();
    let fingerprint = record["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    assert_eq!(device_id.len(), 32);
    assert_eq!(fingerprint.len(), 64);
    assert_eq!(record["image_version"], "1.0.0");
    assert_eq!(record["selftest"].as_array().map(Vec::len), Some(4));

    // The certificate on the unit is the one fingerprinted, and no private key is
    // anywhere in the unit's files outside pluton's own state.
    let cert_pem = std::fs::read_to_string(unit.join("etc/warden/device.pem")).expect("cert");
    assert_eq!(
        warden_provision::verify::pem_fingerprint(&cert_pem).expect("pem"),
        fingerprint
    );
    for entry in walk(&unit) {
        if entry.starts_with(unit.join("var/lib/warden/pluton")) {
            continue;
        }
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
            "{} holds a private key",
            entry.display()
        );
    }

    // The config names the device; the slots hold the factory image (A) and the
    // self-test update (B); the bundle is in place.
    let config = std::fs::read_to_string(unit.join("etc/warden/warden.toml")).expect("config");
    assert!(
        config.contains(&format!("id = \"{device_id}\"")),
        "{config}"
    );
    // The appliance itself accepts the unit's config and policy.
    let check = std::process::Command::new(crate::fixture::appliance_exe())
        .arg("check-config")
        .arg(unit.join("etc/warden/warden.toml"))
        .output()
        .expect("warden check-config");
    assert!(
        check.status.success(),
        "warden check-config: {}{}",
        stdout(&check),
        stderr(&check)
    );
    assert!(unit.join("var/lib/warden/slots/a.wim").is_file());
    assert!(unit.join("var/lib/warden/slots/b.wim").is_file());
    assert!(
        unit.join("var/lib/warden/policy-bundles/current.bundle")
            .is_file()
    );
    let phc =
        std::fs::read_to_string(unit.join("var/lib/warden/appliance/status-page/password.phc"))
            .expect("password hash");
    assert!(phc.starts_with("$argon2id$"));

    // The label's QR code carries the device ID and the fingerprint.
    let content = decode_qr(&unit.join("factory/label.png"));
    assert_eq!(
        warden_provision::label::parse_qr_payload(&content),
        Some((device_id.clone(), fingerprint.clone()))
    );
    let svg = std::fs::read_to_string(unit.join("factory/label.svg")).expect("svg");
    assert!(svg.contains(&device_id) && svg.contains("WG000001"));

    // The fleet has it, with the certificate's fingerprint, product and group.
    let fleet = factory.fleet.as_ref().expect("fleet");
    let (status, body) = fleet.get_device(&device_id);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["fingerprint"], fingerprint.as_str());
    assert_eq!(body["product"], crate::fixture::PRODUCT);
    assert_eq!(body["group"], crate::fixture::GROUP);
    assert_eq!(body["serial"], "WG000001");

    // verify: every check passes.
    let verify = factory.run(&["verify", "--serial", "WG000001"]);
    let report = stdout(&verify);
    assert!(
        verify.status.success(),
        "verify:\n{report}\n{}",
        stderr(&verify)
    );
    for check in [
        "manufacturing locked",
        "certificate",
        "proof of possession",
        "image in slot A",
        "policy bundle",
        "fleet record",
    ] {
        assert!(
            report.contains(&format!("ok      {check}")),
            "{check} missing:\n{report}"
        );
    }

    // Interrupted after the lock, before the PROVISIONED marker: a rerun only checks
    // the locked unit and completes the (idempotent) registration.
    std::fs::remove_file(unit.join("factory/PROVISIONED")).expect("remove marker");
    let finish = factory.run(&["unit", "--serial", "WG000001"]);
    assert!(finish.status.success(), "finish: {}", stderr(&finish));
    assert!(
        stdout(&finish).contains(&fingerprint),
        "{}",
        stdout(&finish)
    );
    assert!(unit.join("factory/PROVISIONED").is_file());
    let (status, body) = fleet.get_device(&device_id);
    assert_eq!(
        (status, &body["fingerprint"]),
        (200, &serde_json::json!(fingerprint))
    );

    // Provisioning the locked unit again is refused and changes nothing.
    let before = std::fs::read(unit.join("var/lib/warden/pluton/pluton.state")).expect("state");
    let again = factory.run(&["unit", "--serial", "WG000001"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("locked"), "{}", stderr(&again));
    assert_eq!(
        std::fs::read(unit.join("var/lib/warden/pluton/pluton.state")).expect("state"),
        before
    );
    assert_eq!(read_record(&factory, "WG000001")["result"], "provisioned");

    // A tampered certificate is caught by verify.
    let mut tampered = cert_pem.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    std::fs::write(unit.join("etc/warden/device.pem"), tampered).expect("tamper");
    let verify = factory.run(&["verify", "--serial", "WG000001"]);
    assert!(!verify.status.success());
    assert!(
        stdout(&verify).contains("FAILED  certificate"),
        "{}",
        stdout(&verify)
    );
}

#[test]
fn wrong_passphrase_is_refused_before_any_unit_is_touched() {
    let factory = Factory::new(Probe::Healthy, false);
    let output = factory
        .command(&["unit", "--serial", "WG000001"])
        .env("WARDEN_CA_PASSPHRASE", "not the passphrase at all")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("wrong passphrase"), "{message}");
    assert!(!message.contains("not the passphrase at all"));
    assert!(!factory.unit_dir("WG000001").exists());

    let missing = factory
        .command(&["unit", "--serial", "WG000001"])
        .env_remove("WARDEN_CA_PASSPHRASE")
        .output()
        .expect("run");
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("WARDEN_CA_PASSPHRASE"),
        "{}",
        stderr(&missing)
    );

    // The key file holds no PEM private key and `ca init` refuses to overwrite it.
    let key = std::fs::read_to_string(factory.path().join("ca/manufacturer-ca.key.enc"))
        .expect("key file");
    assert!(key.starts_with("-----BEGIN WARDEN ENCRYPTED KEY-----"));
    let again = factory.run(&["ca", "init", "--ca-dir", "ca", "--name", "Another"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn failed_selftest_marks_the_unit_and_skips_registration() {
    let factory = Factory::new(Probe::Broken, true);
    let output = factory.run(&["unit", "--serial", "WG000009"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("unit WG000009"), "{message}");
    assert!(message.contains("step `self-test`"), "{message}");

    let unit = factory.unit_dir("WG000009");
    let marker = std::fs::read_to_string(unit.join("factory/FAILED")).expect("FAILED marker");
    assert!(marker.contains("step: self-test"), "{marker}");
    assert!(!unit.join("factory/PROVISIONED").exists());
    assert!(
        !unit.join("factory/label.png").exists(),
        "no label for a failed unit"
    );
    let record = read_record(&factory, "WG000009");
    assert_eq!(record["result"], "failed");
    assert_eq!(record["failed_step"], "self-test");
    let device_id = record["device_id"].as_str().expect("device id");

    // Never registered, and not locked.
    let (status, _) = factory.fleet.as_ref().expect("fleet").get_device(device_id);
    assert_eq!(status, 404);
    let verify = factory.run(&["verify", "--serial", "WG000009"]);
    assert!(!verify.status.success());
    let report = stdout(&verify);
    assert!(report.contains("FAILED  manufacturing locked"), "{report}");
    assert!(report.contains("FAILED  fleet record"), "{report}");
}

#[test]
fn interrupted_batch_resumes_without_duplicates() {
    let factory = Factory::new(Probe::Healthy, true);
    let count = 5;
    let args = ["batch", "--batch", "B1", "--count", "5", "--quiet"];
    let journal = factory.path().join("units/batches/B1/journal.jsonl");
    let mut child = factory.command(&args).spawn().expect("batch");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let lines = std::fs::read_to_string(&journal)
            .map(|text| text.lines().count())
            .unwrap_or(0);
        if lines >= 2 {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "batch ended early"
        );
        assert!(Instant::now() < deadline, "batch made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Kill it mid-batch (SIGKILL: no cleanup at all).
    child.kill().expect("kill");
    child.wait().expect("reap");
    let done_before = std::fs::read_to_string(&journal)
        .expect("journal")
        .lines()
        .count();
    assert!(
        done_before < count,
        "the batch finished before it was killed"
    );

    // The unit's pluton died with the station.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        orphan_plutons(factory.path()),
        0,
        "a pluton outlived the station"
    );

    let rerun = factory.run(&args);
    assert!(rerun.status.success(), "rerun: {}", stderr(&rerun));
    let summary = stdout(&rerun);
    assert!(
        summary.contains(&format!("{done_before} already done")),
        "{summary}"
    );

    let manifest: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(factory.path().join("units/batches/B1/manifest.json"))
            .expect("manifest.json"),
    )
    .expect("manifest parses");
    assert_eq!(manifest.len(), count);
    let mut serials: Vec<&str> = manifest
        .iter()
        .filter_map(|row| row["serial"].as_str())
        .collect();
    serials.dedup();
    assert_eq!(
        serials,
        ["WG000001", "WG000002", "WG000003", "WG000004", "WG000005"]
    );
    let mut devices: Vec<&str> = manifest
        .iter()
        .filter_map(|row| row["device_id"].as_str())
        .collect();
    devices.sort_unstable();
    devices.dedup();
    assert_eq!(devices.len(), count, "every unit has its own identity");
    let csv = std::fs::read_to_string(factory.path().join("units/batches/B1/manifest.csv"))
        .expect("manifest.csv");
    assert_eq!(csv.lines().count(), count + 1);
    assert!(csv.starts_with("serial,device_id,fingerprint,image_version,result,error\n"));
    let fleet = factory.fleet.as_ref().expect("fleet");
    for row in &manifest {
        assert_eq!(row["result"], "provisioned", "{row}");
        let (status, body) = fleet.get_device(row["device_id"].as_str().expect("id"));
        assert_eq!(status, 200);
        assert_eq!(body["fingerprint"], row["fingerprint"]);
        assert_eq!(body["serial"], row["serial"]);
    }
    // A third run does nothing.
    let third = factory.run(&args);
    assert!(third.status.success());
    assert!(
        stdout(&third).contains("0 provisioned, 5 already done"),
        "{}",
        stdout(&third)
    );
}

fn orphan_plutons(marker: &std::path::Path) -> usize {
    let needle = marker.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| {
                    let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                    let text = String::from_utf8_lossy(&cmdline);
                    text.contains("pluton") && text.contains(&needle)
                })
                .count()
        })
        .unwrap_or(0)
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                files.push(path);
            }
        }
    }
    files
}
