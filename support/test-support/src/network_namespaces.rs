//! Network namespaces a test creates with iproute2 (needs root and `ip`).

use std::fs::File;
use std::process::Command;

use nix::sched::{CloneFlags, setns};

/// Runs `ip ARGS`, panicking with its error output if it fails.
pub fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (apt-get install iproute2)");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Network namespaces (and so their links) deleted on drop.
pub struct Namespaces(pub Vec<String>);

impl Namespaces {
    /// Creates each namespace with its loopback up.
    pub fn create(names: &[String]) -> Self {
        let guard = Self(names.to_vec());
        for name in names {
            ip(&["netns", "add", name]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
        }
        guard
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Moves the calling thread into `namespace` (its sockets are made there from now on).
pub fn enter(namespace: &str) {
    let file = File::open(format!("/run/netns/{namespace}")).expect("namespace file");
    setns(file, CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Runs `f` on a new thread inside `namespace` and returns its result.
pub fn in_namespace<T: Send + 'static>(
    namespace: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let namespace = namespace.to_owned();
    std::thread::spawn(move || {
        enter(&namespace);
        f()
    })
    .join()
    .expect("namespace thread")
}
