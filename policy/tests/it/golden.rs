//! Golden tests: `check` and `explain` texts, compared with `tests/golden/*.txt`.
//!
//! Run with `WARDEN_BLESS=1` to rewrite the files after an intended change.

use std::path::PathBuf;

use warden_policy::{cli, compile};

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(if name.starts_with("tables-") {
            format!("{name}.hex")
        } else {
            format!("{name}.txt")
        });
    if std::env::var_os("WARDEN_BLESS").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {}; run with WARDEN_BLESS=1", path.display()));
    assert_eq!(actual, expected, "golden file {} differs", path.display());
}

const RULE: &str = "[[modbus]]\nbridge = \"line1\"\nunits = 1\n";

/// (case name, policy source)
const CHECK_CASES: &[(&str, &str)] = &[
    (
        "check-toml-syntax",
        "[[modbus]]\nbridge = \"line1\nunits = 1\n",
    ),
    (
        "check-unknown-key",
        "[[modbus]]\nbridge = \"line1\"\nunits = 1\nfunctions = [3]\naddresses = 5\nsourcse = [\"poll\"]\n",
    ),
    (
        "check-missing-key",
        "[[modbus]]\nbridge = \"line1\"\nunits = 1\nfunctions = [3]\naddresses = 5\n",
    ),
    (
        "check-address-out-of-range",
        "[[modbus]]\nname = \"big\"\nbridge = \"line1\"\nunits = 1\nfunctions = [\"read_holding_registers\"]\naddresses = \"0..=70000\"\nsources = [\"poll\"]\n",
    ),
    (
        "check-reference-table",
        "[[modbus]]\nbridge = \"line1\"\nunits = 1\nfunctions = [3]\nreferences = \"30001..=30010\"\nsources = [\"poll\"]\n",
    ),
    (
        "check-write-needs-values",
        "[[modbus]]\nbridge = \"line1\"\nunits = 1\nfunctions = [6]\naddresses = 5\nsources = [\"cloud\"]\n",
    ),
    (
        "check-rule-errors",
        "[[modbus]]\nname = \"a\"\nbridge = \"line1\"\nunits = \"1..=300\"\nfunctions = [23]\naddresses = 5\nsources = [\"scada\"]\n\n\
         [[modbus]]\nname = \"b\"\nbridge = \"line1\"\nunits = 1\nfunctions = [3]\naddresses = \"5..10\"\nsources = [\"poll\"]\nvalues = \"0..=5\"\n\n\
         [[modbus]]\nname = \"c\"\nbridge = \"line1\"\nunits = 1\nfunctions = [3]\naddresses = 1\nsources = [\"poll\"]\nrate = \"1/s\"\n\n\
         [[modbus]]\nname = \"a\"\nbridge = \"line1\"\nunits = 1\nfunctions = [16]\naddresses = 1\nsources = [\"cloud\"]\nvalues = \"0..=10\"\nrate = \"5 per minute\"\n\n\
         [[ble]]\nbridge = \"line1\"\ndevice = \"C0:FF:EE:00:00:01\"\nservice = \"180F\"\ncharacteristics = \"2A19\"\noperations = [\"read\"]\nsources = [\"poll\"]\n\n\
         [[connect]]\ncompartment = \"link\"\nhost = \"fleet example\"\nports = 0\n",
    ),
    (
        "check-warnings",
        "[[modbus]]\nname = \"reads\"\nbridge = \"line1\"\nunits = [1, 2]\nfunctions = [3, 4]\naddresses = \"0..=9\"\nsources = [\"poll\"]\n\n\
         [[modbus]]\nname = \"wider\"\nbridge = \"line1\"\nunits = 1\nfunctions = [3]\naddresses = \"5..=20\"\nsources = [\"poll\", \"facade\"]\n\n\
         [[modbus]]\nname = \"inside\"\nbridge = \"line1\"\nunits = 2\nfunctions = [4]\naddresses = \"1..=2\"\nsources = [\"poll\"]\n\n\
         [[modbus]]\nname = \"coil-two\"\nbridge = \"line1\"\nunits = 1\nfunctions = [\"write_single_coil\"]\naddresses = 3\nsources = [\"cloud\"]\nvalues = [2]\n\n\
         [[modbus_limit]]\nname = \"unit2\"\nbridge = \"line1\"\nunits = 2\nwrites = \"10/min\"\n\n\
         [[connect]]\nname = \"fleet-any\"\ncompartment = \"link\"\nhost = \"*.example\"\nports = \"8000..=9000\"\n\n\
         [[connect]]\nname = \"fleet\"\ncompartment = \"link\"\nhost = \"fleet.example\"\nports = 8883\n",
    ),
    ("check-empty", "# nothing is allowed\n"),
];

#[test]
fn check_texts_match_golden_files() {
    for (name, source) in CHECK_CASES {
        let report = cli::check_source(source, &format!("{name}.toml"));
        golden(name, &report.to_string());
    }
    let _ = RULE;
}

#[test]
fn check_of_the_example_file() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/plant.toml");
    let mut report = cli::check_file(&path).expect("read example");
    report.file = "plant.toml".into();
    assert!(report.is_ok(), "{report}");
    golden("check-plant", &report.to_string());
}

#[test]
fn check_of_a_missing_file_names_it() {
    let error = cli::check_file("/nonexistent/policy.toml".as_ref()).expect_err("must be refused");
    assert!(
        error
            .to_string()
            .starts_with("cannot read policy file /nonexistent/policy.toml: ")
    );
}

const EXPLAIN_REQUESTS: &[&str] = &[
    "modbus bridge=line1 unit=1 fn=read_holding_registers ref=40001 count=10 source=poll",
    "modbus bridge=line1 unit=1 fn=3 addr=5 count=6 source=poll",
    "modbus bridge=line1 unit=1 fn=6 addr=5 value=25 source=cloud",
    "modbus bridge=line1 unit=1 fn=6 addr=5 value=501 source=cloud",
    "modbus bridge=line1 unit=1 fn=6 addr=7 value=25 source=cloud",
    "modbus bridge=line1 unit=1 fn=6 addr=5 value=25 source=facade",
    "modbus bridge=line1 unit=1 fn=16 addr=5 values=1,2 source=cloud",
    "modbus bridge=line1 unit=2 fn=3 addr=0 count=10 source=poll",
    "modbus bridge=line1 unit=1 fn=3 addr=0 count=200 source=poll",
    "modbus bridge=line1 unit=1 fn=23 addr=0 source=poll",
    "modbus bridge=line9 unit=1 fn=3 addr=0 source=poll",
    "connect compartment=link host=fleet.example port=8883",
    "connect compartment=link host=FLEET.example. port=443",
    "connect compartment=link host=evil.example port=8883",
    "connect compartment=bridge1 host=fleet.example port=8883",
    "listen compartment=web port=8443",
    "listen compartment=web port=80",
];

#[test]
fn explain_texts_match_golden_file() {
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plant.toml"))
            .expect("read example");
    let policy = compile(&source, "plant.toml")
        .expect("example compiles")
        .policy;
    let mut out = String::new();
    for request in EXPLAIN_REQUESTS {
        out.push_str(
            &cli::explain(&policy, request)
                .expect("request parses")
                .to_string(),
        );
        out.push('\n');
    }
    for bad in [
        "",
        "modbus",
        "mqtt topic=x",
        "modbus bridge=line1 unit=1 fn=3 addr=0 source=poll colour=red",
        "modbus bridge=line1 unit=1 fn=3 addr=0 source=scada",
        "modbus bridge=line1 unit=1 fn=3 addr=0 addr=1 source=poll",
        "connect compartment=link host=fleet.example",
        "listen compartment=web 8443",
    ] {
        let error = cli::explain(&policy, bad).expect_err("request is bad");
        out.push_str(&format!("{bad:?}: {error}\n"));
    }
    golden("explain-plant", &out);
}

#[test]
fn explain_ble() {
    let source = "[[ble]]\nname = \"battery\"\nbridge = \"ble0\"\ndevice = \"C0:FF:EE:00:00:01\"\nservice = \"180F\"\ncharacteristics = \"2A19\"\noperations = [\"read\", \"notify\"]\nsources = [\"poll\"]\n";
    let policy = compile(source, "ble.toml").expect("compiles").policy;
    let mut out = String::new();
    for request in [
        "ble bridge=ble0 device=C0:FF:EE:00:00:01 service=180F char=2A19 op=read source=poll",
        "ble bridge=ble0 device=C0:FF:EE:00:00:01 service=180F char=2A19 op=write source=poll",
        "ble bridge=ble0 device=C0:FF:EE:00:00:01 service=180F char=2A19 op=read source=cloud",
        "ble bridge=ble0 device=C0:FF:EE:00:00:01 service=180A char=2A29 op=read source=poll",
        "ble bridge=ble0 device=C0:FF:EE:00:00:01 service=180F char=2A1A op=read source=poll",
        "ble bridge=ble0 device=C0:FF:EE:00:00:02 service=180F char=2A19 op=read source=poll",
        "modbus bridge=ble0 unit=1 fn=3 addr=0 source=poll",
    ] {
        out.push_str(
            &cli::explain(&policy, request)
                .expect("request parses")
                .to_string(),
        );
        out.push('\n');
    }
    golden("explain-ble", &out);
}

/// The compiled tables are signed and fingerprinted: a refactoring of the compiler
/// must not change one byte of them. The `.hex` files were produced by the compiler
/// before it was split into modules.
#[test]
fn compiled_tables_are_byte_identical() {
    let cases = [
        ("tables-plant", include_str!("../../examples/plant.toml")),
        ("tables-mixed", include_str!("../golden/tables-mixed.toml")),
    ];
    for (name, source) in cases {
        let compiled = compile(source, &format!("{name}.toml"))
            .unwrap_or_else(|errors| panic!("{name} does not compile: {errors}"));
        let bytes = compiled.policy.encode();
        let mut hex = String::new();
        for (i, byte) in bytes.iter().enumerate() {
            hex.push_str(&format!("{byte:02x}"));
            hex.push(if i % 32 == 31 { '\n' } else { ' ' });
        }
        hex.push('\n');
        golden(name, &hex.replace(" \n", "\n"));
    }
}
