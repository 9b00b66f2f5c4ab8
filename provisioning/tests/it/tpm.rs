//! The station on a TPM 2.0 (swtpm): a unit's identity is created in, and stays in, the
//! unit's TPM.

use warden_test_support::swtpm::Swtpm;

use crate::fixture::{Factory, Probe, read_record, stderr, stdout};

#[test]
#[ignore = "needs swtpm"]
fn a_unit_provisioned_on_its_tpm_verifies_only_on_that_tpm() {
    let factory = Factory::new(Probe::Healthy, true);
    let mut tpm = Swtpm::start(&factory.path().join("unit-tpm"));
    factory.set_pluton_tpm(&tpm.tcti());

    let output = factory.run(&["unit", "--serial", "WG000101"]);
    assert!(output.status.success(), "unit: {}", stderr(&output));
    let record = read_record(&factory, "WG000101");
    assert_eq!(record["result"], "provisioned");
    assert_eq!(record["selftest"].as_array().map(Vec::len), Some(4));
    let device_id = record["device_id"].as_str().expect("device id").to_owned();
    let fleet = factory.fleet.as_ref().expect("fleet");
    assert_eq!(fleet.get_device(&device_id).0, 200);

    // A power cycle of the TPM (same chip, PCRs reset): the unit still verifies.
    tpm.restart();
    factory.set_pluton_tpm(&tpm.tcti());
    let verify = factory.run(&["verify", "--serial", "WG000101"]);
    assert!(
        verify.status.success(),
        "verify after a TPM restart:\n{}\n{}",
        stdout(&verify),
        stderr(&verify)
    );
    assert!(
        stdout(&verify).contains("ok      proof of possession"),
        "{}",
        stdout(&verify)
    );

    // The unit's pluton state records its backend: a station (or a boot) that asks for
    // the software backend on it is refused instead of reading the TPM's template seed
    // as a private key.
    let station = std::fs::read_to_string(factory.path().join("station.toml")).expect("station");
    std::fs::write(
        factory.path().join("station.toml"),
        station.replace("backend = \"tpm\"", "backend = \"software\""),
    )
    .expect("station");
    let verify = factory.run(&["verify", "--serial", "WG000101"]);
    assert!(!verify.status.success());
    assert!(
        stdout(&verify).contains("belongs to the tpm backend, not software"),
        "{}\n{}",
        stdout(&verify),
        stderr(&verify)
    );

    // The same unit files against another TPM: the identity key cannot be re-created
    // there (the state holds only a template seed), so the key pluton derives is not the
    // certified one and the unit does not verify.
    let other = Swtpm::start(&factory.path().join("other-tpm"));
    factory.set_pluton_tpm(&other.tcti());
    let verify = factory.run(&["verify", "--serial", "WG000101"]);
    let report = stdout(&verify);
    assert!(
        !verify.status.success(),
        "a unit verified on a TPM that never held its identity:\n{report}"
    );
    assert!(
        report.contains("FAILED  certificate"),
        "the certificate check must catch the other identity:\n{report}"
    );
    assert!(
        !report.contains(&format!("ok      identity: {device_id}")),
        "{report}"
    );
}
