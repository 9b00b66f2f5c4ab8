//! Test helpers: Bumble's virtual controllers and the emulated sensor (`hil/ble/sensor.py`).

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The Python that has bumble (`WARDEN_PYTHON`, default `python3`).
pub fn python() -> String {
    std::env::var("WARDEN_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A child process killed when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two free loopback ports.
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind");
    let ports = (
        a.local_addr().expect("addr").port(),
        b.local_addr().expect("addr").port(),
    );
    drop((a, b));
    ports
}

/// `python -m bumble.apps.controllers tcp-server:A tcp-server:B`: two virtual
/// controllers on one link; the bridge drives A, the sensor B.
pub struct Controllers {
    _process: Process,
    /// Port of the bridge's controller.
    pub bridge_port: u16,
    /// Port of the sensor's controller.
    pub sensor_port: u16,
}

impl Controllers {
    pub fn start() -> Self {
        let (bridge_port, sensor_port) = free_ports();
        let child = Command::new(python())
            .args(["-m", "bumble.apps.controllers"])
            .arg(format!("tcp-server:127.0.0.1:{bridge_port}"))
            .arg(format!("tcp-server:127.0.0.1:{sensor_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bumble.apps.controllers (pip install -r hil/ble/requirements.txt)");
        let process = Process(child);
        // Both servers listen once the app is up; a probe connection is harmless (the
        // controller simply drops packets until the next host connects).
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [bridge_port, sensor_port] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "bumble controllers did not listen on {port}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self {
            _process: process,
            bridge_port,
            sensor_port,
        }
    }
}

/// Events the sensor printed, shared with its reader thread.
#[derive(Default)]
pub struct Events {
    lines: Mutex<Vec<serde_json::Value>>,
    changed: Condvar,
}

impl Events {
    /// Waits until an event satisfies `matches`, returning it.
    pub fn wait_for(
        &self,
        timeout: Duration,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().expect("events");
        loop {
            if let Some(found) = lines.iter().find(|e| matches(e)) {
                return Some(found.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self
                .changed
                .wait_timeout(lines, deadline - now)
                .expect("events")
                .0;
        }
    }

    /// Every event named `name` so far.
    pub fn named(&self, name: &str) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .expect("events")
            .iter()
            .filter(|e| e["event"] == name)
            .cloned()
            .collect()
    }
}

/// The emulated sensor (`hil/ble/sensor.py`) on the sensor's controller.
pub struct Sensor {
    process: Process,
    pub events: Arc<Events>,
}

/// `hil/ble/sensor.py`, found above the crate that runs the test (this module is also
/// used by the appliance's tests, one directory level higher).
pub fn sensor_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("hil/ble/sensor.py"))
        .find(|script| script.exists())
        .expect("hil/ble/sensor.py above the crate")
}

impl Sensor {
    /// Starts the sensor with extra arguments and waits until it advertises.
    pub fn start(controllers: &Controllers, args: &[&str]) -> Self {
        let mut child = Command::new(python())
            .arg(sensor_script())
            .arg("--hci")
            .arg(format!("tcp-client:127.0.0.1:{}", controllers.sensor_port))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("SENSOR_DEBUG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("start hil/ble/sensor.py");
        let stdout = child.stdout.take().expect("piped stdout");
        let events = Arc::new(Events::default());
        let reader_events = Arc::clone(&events);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("SENSOR_DEBUG").is_some() {
                    eprintln!("SENSOR: {line}");
                }
                if let Ok(event) = serde_json::from_str(&line) {
                    reader_events.lines.lock().expect("events").push(event);
                    reader_events.changed.notify_all();
                }
            }
        });
        let sensor = Self {
            process: Process(child),
            events,
        };
        sensor
            .events
            .wait_for(Duration::from_secs(20), |e| e["event"] == "ready")
            .expect("the sensor did not start advertising");
        sensor
    }

    /// SIGTERM: the sensor disconnects, stops advertising and exits.
    pub fn stop(self) {
        let pid = self.process.0.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        self.events
            .wait_for(Duration::from_secs(10), |e| e["event"] == "stopped")
            .expect("the sensor did not stop cleanly");
    }
}
