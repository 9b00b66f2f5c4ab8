//! The pluton process: `warden-pluton --socket PATH --state-dir DIR [options]`.

use std::path::PathBuf;
use std::process::ExitCode;

use warden_pluton::server::{ServeOptions, serve};

const USAGE: &str = "usage: warden-pluton --socket PATH --state-dir DIR \
[--firmware-version N] [--capability-file PATH]";

fn main() -> ExitCode {
    let mut socket = None;
    let mut state_dir = None;
    let mut options = ServeOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next();
        match (flag.as_str(), value) {
            ("--socket", Some(value)) => socket = Some(PathBuf::from(value)),
            ("--state-dir", Some(value)) => state_dir = Some(PathBuf::from(value)),
            ("--capability-file", Some(value)) => options.capability_file = Some(value.into()),
            ("--firmware-version", Some(value)) => match value.parse() {
                Ok(version) => options.firmware_version = version,
                Err(_) => return usage_error("--firmware-version takes a u32"),
            },
            _ => return usage_error(&format!("unexpected argument {flag}")),
        }
    }
    let (Some(socket), Some(state_dir)) = (socket, state_dir) else {
        return usage_error("--socket and --state-dir are required");
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("warden-pluton: cannot start runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(&socket, &state_dir, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("warden-pluton: {error}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("warden-pluton: {message}\n{USAGE}");
    ExitCode::from(2)
}
