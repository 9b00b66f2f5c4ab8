//! Test support: a deterministic RNG, a raw protocol client, and the pluton process.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warden_pluton::protocol::{
    FRAME_HEADER_LEN, MAX_FRAME_LEN, Request, Response, decode_response, encode_frame,
};
use warden_pluton::{MemoryStore, ProvisioningCapability, SoftwarePluton};

/// A seeded, non-cryptographic RNG: reproducible tests (never for real keys).
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(2).wrapping_add(1))
    }
}

impl rand_core::TryRng for TestRng {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        Ok(self.0.wrapping_mul(0x2545_f491_4f6c_dd1d))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let value = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&value[..chunk.len()]);
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for TestRng {}

pub type TestPluton = SoftwarePluton<MemoryStore, TestRng>;

/// A fresh in-memory pluton and its capability.
pub fn memory_pluton(seed: u64) -> (TestPluton, ProvisioningCapability) {
    let mut minted = None;
    let pluton = SoftwarePluton::open(MemoryStore::new(), TestRng::new(seed), 42, |capability| {
        minted = Some(capability.clone());
        Ok(())
    })
    .expect("open");
    (pluton, minted.expect("capability minted on first open"))
}

/// Send a frame body (already encoded) and read one response frame.
pub fn exchange_raw(stream: &mut UnixStream, frame: &[u8]) -> std::io::Result<Response> {
    stream.write_all(frame)?;
    read_response(stream)
}

pub fn read_response(stream: &mut UnixStream) -> std::io::Result<Response> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    stream.read_exact(&mut header)?;
    let length = u32::from_le_bytes(header) as usize;
    assert!(
        length > 0 && length <= MAX_FRAME_LEN,
        "response frame length {length}"
    );
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    Ok(decode_response(&body).expect("server sends decodable responses"))
}

pub fn call(stream: &mut UnixStream, request: &Request) -> Response {
    let mut frame = vec![0u8; FRAME_HEADER_LEN + MAX_FRAME_LEN];
    let length = encode_frame(request, &mut frame).expect("encode");
    exchange_raw(stream, &frame[..length]).expect("exchange")
}

pub fn frame_of(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

/// The `warden-pluton` binary running as a child process.
pub struct PlutonProcess {
    child: Child,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
}

impl PlutonProcess {
    /// Started with `--unseparated`: every caller has every compartment right (the
    /// tests of the process itself: framing, restarts, crashes).
    pub fn start(directory: &Path, firmware_version: u32) -> Self {
        Self::start_with(directory, firmware_version, &["--unseparated"])
    }

    /// Started with the given role arguments.
    pub fn start_with(directory: &Path, firmware_version: u32, role_arguments: &[&str]) -> Self {
        let socket = directory.join("pluton.sock");
        let state_dir = directory.join("state");
        let child = Command::new(env!("CARGO_BIN_EXE_warden-pluton"))
            .args(role_arguments)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--firmware-version")
            .arg(firmware_version.to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn warden-pluton");
        let process = Self {
            child,
            socket,
            state_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&process.socket).is_err() {
            assert!(Instant::now() < deadline, "pluton did not start listening");
            std::thread::sleep(Duration::from_millis(10));
        }
        process
    }

    pub fn connect(&self) -> UnixStream {
        let stream = UnixStream::connect(&self.socket).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
    }

    pub fn capability(&self) -> ProvisioningCapability {
        warden_pluton::server::read_capability_file(
            &self
                .state_dir
                .join(warden_pluton::server::DEFAULT_CAPABILITY_FILE_NAME),
        )
        .expect("capability file")
    }

    /// SIGKILL the process and reap it.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for PlutonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
