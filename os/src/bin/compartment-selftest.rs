//! A compartment binary for the monitor's tests: `compartment-selftest compartment <role>`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [command, role, rest @ ..] if command == "compartment" => {
            warden_os::monitor::selftest::run_role(role, rest).unwrap_or_else(|| {
                eprintln!("unknown role {role}");
                ExitCode::from(2)
            })
        }
        _ => {
            eprintln!("usage: compartment-selftest compartment <role> [args…]");
            ExitCode::from(2)
        }
    }
}
