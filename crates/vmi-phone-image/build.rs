//! Builds, for wasm32-unknown-unknown, `guest/vmi-phone` (the default phone image) and
//! `crates/vmi-browser-phone` (what the page runs a checked-out phone with), with one
//! nested cargo in its own target directory (so it never waits on the outer build's
//! lock), and hands the modules' paths to the crate through `VMI_PHONE_WASM` and
//! `VMI_BROWSER_PHONE_WASM`.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..").canonicalize().expect("workspace root");
    let crates = ["vmi-browser-phone", "vmi-guest-abi", "vmi-engine", "vmi-snapshot", "vmi-protocol"];
    for dir in ["guest", "assets/fonts"].into_iter().map(String::from).chain(crates.map(|c| format!("crates/{c}"))) {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());

    ensure_target();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = root.join("target").join("guest");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "-p", "vmi-phone", "-p", "vmi-browser-phone", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags and wrappers (clippy, coverage, host RUSTFLAGS) are not for
    // the guest.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo for the guest image");
    if !status.success() {
        panic!(
            "building the phone image (guest/vmi-phone) and the browser's offline phone for {TARGET} failed; see the errors above"
        );
    }
    for (file, var) in [("vmi_phone.wasm", "VMI_PHONE_WASM"), ("vmi_browser_phone.wasm", "VMI_BROWSER_PHONE_WASM")] {
        let wasm = target_dir.join(TARGET).join("release").join(file);
        assert!(wasm.exists(), "the wasm32 build did not produce {}", wasm.display());
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join(file);
        std::fs::copy(&wasm, &out).expect("copy the module into OUT_DIR");
        println!("cargo:rustc-env={var}={}", out.display());
    }
}

/// Installs the wasm32 target through rustup when it is missing, or stops with a message
/// that says how to get it.
fn ensure_target() {
    let sysroot = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| PathBuf::from(s.trim()));
    let installed = |sysroot: &Path| sysroot.join("lib/rustlib").join(TARGET).exists();
    if sysroot.as_deref().is_some_and(installed) {
        return;
    }
    println!("cargo:warning=installing the Rust target {TARGET} with rustup (needed for phone images)");
    let ok = Command::new("rustup").args(["target", "add", TARGET]).status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        panic!(
            "the Rust target {TARGET} is missing and `rustup target add {TARGET}` failed; \
             install it by hand, then build again"
        );
    }
}
