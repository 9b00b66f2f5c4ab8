//! Puts `memory.x` on the linker path and bakes the vendor root public key and the
//! product id into the firmware (see the README: the core never takes them from the
//! application side).

use std::io::Write;
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::copy("memory.x", out.join("memory.x")).expect("copy memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-env-changed=WARDEN_RTCORE_VENDOR_ROOT");
    println!("cargo:rerun-if-env-changed=WARDEN_RTCORE_PRODUCT");

    // The vendor root: a file holding the 65-byte uncompressed SEC1 P-256 public key.
    // Without one the firmware trusts no root, so it refuses every bundle (and so
    // denies every request): safe, and enough to measure size.
    let root: Option<Vec<u8>> = std::env::var_os("WARDEN_RTCORE_VENDOR_ROOT").map(|path| {
        let path = PathBuf::from(path);
        println!("cargo:rerun-if-changed={}", path.display());
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("WARDEN_RTCORE_VENDOR_ROOT={}: {e}", path.display())
        });
        assert!(
            bytes.len() == 65 && bytes[0] == 0x04,
            "WARDEN_RTCORE_VENDOR_ROOT={}: expected 65 bytes of uncompressed SEC1 P-256 public key, got {} bytes",
            path.display(),
            bytes.len()
        );
        bytes
    });
    let product = std::env::var("WARDEN_RTCORE_PRODUCT").unwrap_or_else(|_| "warden-gw".into());
    assert!(
        !product.is_empty() && product.len() <= 16 && product.bytes().all(|b| b.is_ascii_graphic()),
        "WARDEN_RTCORE_PRODUCT={product:?}: 1 to 16 printable ASCII bytes"
    );
    let mut file = std::fs::File::create(out.join("trust.rs")).expect("create trust.rs");
    match root {
        Some(bytes) => writeln!(
            file,
            "const VENDOR_ROOT: Option<[u8; 65]> = Some({bytes:?});"
        ),
        None => writeln!(file, "const VENDOR_ROOT: Option<[u8; 65]> = None;"),
    }
    .expect("write trust.rs");
    writeln!(file, "const PRODUCT: &str = {product:?};").expect("write trust.rs");
}
