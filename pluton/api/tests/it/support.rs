//! A pluton server on its own thread and runtime, in a temporary directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use warden_pluton::server::{
    CallerRoles, DEFAULT_CAPABILITY_FILE_NAME, ServeOptions, read_capability_file,
};
use warden_pluton_api::ProvisioningCapability;

pub struct Server {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    _directory: tempfile::TempDir,
}

impl Server {
    /// Every caller unseparated (the client API's own tests).
    pub fn start(firmware_version: u32) -> Self {
        Self::start_with(firmware_version, CallerRoles::unseparated())
    }

    /// Callers get roles from `roles`.
    pub fn start_with(firmware_version: u32, roles: CallerRoles) -> Self {
        let directory = tempfile::tempdir().expect("tempdir");
        let socket = directory.path().join("pluton.sock");
        let state_dir = directory.path().join("state");
        let (thread_socket, thread_state) = (socket.clone(), state_dir.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let options = ServeOptions {
                firmware_version,
                roles,
                ..ServeOptions::default()
            };
            runtime
                .block_on(warden_pluton::server::serve(
                    &thread_socket,
                    &thread_state,
                    options,
                ))
                .expect("serve");
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        Self {
            socket,
            state_dir,
            _directory: directory,
        }
    }

    pub fn capability(&self) -> ProvisioningCapability {
        read_capability_file(&self.state_dir.join(DEFAULT_CAPABILITY_FILE_NAME))
            .expect("capability")
    }
}
