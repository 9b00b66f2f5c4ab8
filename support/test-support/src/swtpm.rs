//! A software TPM for the tests of pluton's TPM backend and of the station on it:
//! `swtpm socket --tpm2` on a state directory (Debian: swtpm, swtpm-tools).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running swtpm; SIGKILLed and reaped on drop. Its state directory outlives it, so
/// [`Swtpm::restart`] brings the same TPM (same seeds, same NV) back.
pub struct Swtpm {
    child: Option<Child>,
    port: u16,
    state_dir: PathBuf,
}

/// A port `p` such that `p` and `p + 1` are free now (the swtpm TCTI talks to the
/// control channel on the next port).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = first.local_addr().expect("addr").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two adjacent free ports");
}

impl Swtpm {
    /// Start a fresh TPM with its state in `state_dir`.
    pub fn start(state_dir: &Path) -> Self {
        std::fs::create_dir_all(state_dir).expect("swtpm state dir");
        let mut swtpm = Self {
            child: None,
            port: 0,
            state_dir: state_dir.to_owned(),
        };
        swtpm.launch();
        swtpm
    }

    fn launch(&mut self) {
        let port = free_port_pair();
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--server"])
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .arg("--tpmstate")
            .arg(format!("dir={}", self.state_dir.display()))
            .args(["--flags", "startup-clear,not-need-init"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn swtpm (Debian: apt install swtpm swtpm-tools)");
        self.child = Some(child);
        self.port = port;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port + 1)).is_err()
            || TcpStream::connect(("127.0.0.1", port)).is_err()
        {
            assert!(Instant::now() < deadline, "swtpm did not start listening");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The TCTI string for this TPM.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Stop (SIGKILL) and start again on the same state directory (a new port).
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}
