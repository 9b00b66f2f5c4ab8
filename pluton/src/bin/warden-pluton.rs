//! The pluton process: `warden-pluton --socket PATH --state-dir DIR [options]`.
//!
//! Callers have no rights unless a role is given to their uid (`--role-uid link=61003`),
//! to a token they present (`--role-token-file bridges=/run/warden/bridges.token`, 32
//! raw bytes), or `--unseparated` gives every other caller the transitional role.
//!
//! `--backend software` (the default) keeps keys in the state directory; `--backend tpm`
//! uses a TPM 2.0 through `--tcti` (default `device:/dev/tpmrm0`; needs a build with the
//! cargo feature `tpm`).

use std::path::PathBuf;
use std::process::ExitCode;

use warden_pluton::Role;
use warden_pluton::server::{Backend, DEFAULT_TCTI, ServeOptions, read_role_token_file, serve};

const USAGE: &str = "usage: warden-pluton --socket PATH --state-dir DIR \
[--firmware-version N] [--capability-file PATH] [--role-uid ROLE=UID]... \
[--role-token-file ROLE=PATH]... [--unseparated] [--backend software|tpm] [--tcti TCTI]";

/// `ROLE=VALUE` of a role flag.
fn role_and_value(text: &str) -> Option<(Role, &str)> {
    let (role, value) = text.split_once('=')?;
    Some((Role::from_name(role)?, value))
}

fn main() -> ExitCode {
    let mut socket = None;
    let mut state_dir = None;
    let mut options = ServeOptions::default();
    let mut backend_name = String::from("software");
    let mut tcti = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--unseparated" {
            options.roles.unseparated = true;
            continue;
        }
        let value = args.next();
        match (flag.as_str(), value) {
            ("--role-uid", Some(value)) => {
                match role_and_value(&value).and_then(|(role, uid)| Some((role, uid.parse().ok()?)))
                {
                    Some((role, uid)) => {
                        options.roles.by_uid.insert(uid, role);
                    }
                    None => return usage_error("--role-uid takes ROLE=UID"),
                }
            }
            ("--role-token-file", Some(value)) => match role_and_value(&value) {
                Some((role, path)) => match read_role_token_file(path.as_ref()) {
                    Ok(token) => options.roles.by_capability.push((role, token)),
                    Err(error) => return usage_error(&error.to_string()),
                },
                None => return usage_error("--role-token-file takes ROLE=PATH"),
            },
            ("--backend", Some(value)) => backend_name = value,
            ("--tcti", Some(value)) => tcti = Some(value),
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
    options.backend = match (backend_name.as_str(), tcti) {
        ("software", None) => Backend::Software,
        ("software", Some(_)) => return usage_error("--tcti needs --backend tpm"),
        ("tpm", tcti) => Backend::Tpm {
            tcti: tcti.unwrap_or_else(|| DEFAULT_TCTI.to_owned()),
        },
        (other, _) => return usage_error(&format!("--backend takes software or tpm, not {other}")),
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
