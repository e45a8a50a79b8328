//! The `vmi` command as a user runs it: headless runs with screenshots, snapshot and
//! restore through files, image inspection, and clear errors on bad input.

use std::path::Path;
use std::process::{Command, Output};

use vmi_testkit::scratch_dir as scratch;

fn vmi(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmi")).args(args).output().expect("run vmi")
}

fn ok(args: &[&str]) -> String {
    let out = vmi(args);
    assert!(out.status.success(), "vmi {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn fails(args: &[&str]) -> String {
    let out = vmi(args);
    assert!(!out.status.success(), "vmi {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path).display().to_string()
}

fn png_size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).expect("png exists")));
    let reader = decoder.read_info().expect("a valid PNG");
    (reader.info().width, reader.info().height)
}

fn screenshot_hashes(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "screenshot")
        .map(|v| v["pixels"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn headless_tour_screenshots_every_app() {
    let dir = scratch("tour");
    let tour = || {
        ok(&[
            "vm",
            "run",
            "--headless",
            "--events",
            &repo("examples/tour.events"),
            "--out-dir",
            &dir.display().to_string(),
            "--wall-start",
            "1763000000",
        ])
    };
    let out = tour();
    let shots = [
        "01-home.png",
        "02-home-with-mail.png",
        "03-mail-inbox.png",
        "04-mail-message.png",
        "05-notes.png",
        "06-paint.png",
        "07-stopwatch-zero.png",
        "08-stopwatch-running.png",
    ];
    for shot in shots {
        assert_eq!(png_size(&dir.join(shot)), (720, 1280), "{shot}");
    }
    let hashes = screenshot_hashes(&out);
    assert_eq!(hashes.len(), shots.len());
    let mut distinct = hashes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), hashes.len(), "every screen differs: {hashes:?}");
    assert!(out.contains(r#""kind":"notification","title":"ann@example.com","body":"Lunch on Friday?""#), "{out}");

    // The same script gives the same pixels: runs are reproducible.
    let again = tour();
    assert_eq!(screenshot_hashes(&again), hashes);
}

#[test]
fn snapshot_then_restore_equals_one_straight_run() {
    let dir = scratch("restore");
    let d = |f: &str| dir.join(f).display().to_string();
    std::fs::write(dir.join("first.events"), "tap 274 1090\ntype Before the snapshot.\n").expect("write");
    std::fs::write(dir.join("second.events"), "type  After it.\nscreenshot notes.png\n").expect("write");
    std::fs::write(
        dir.join("both.events"),
        "tap 274 1090\ntype Before the snapshot.\ntype  After it.\nscreenshot notes.png\n",
    )
    .expect("write");

    ok(&["vm", "snapshot", "--events", &d("first.events"), "--out", &d("mid.snap"), "--wall-start", "1763000000"]);
    let restored = ok(&["vm", "restore", &d("mid.snap"), "--events", &d("second.events"), "--out-dir", &d("")]);
    let straight = ok(&[
        "vm",
        "run",
        "--headless",
        "--events",
        &d("both.events"),
        "--out-dir",
        &d(""),
        "--wall-start",
        "1763000000",
    ]);
    assert_eq!(screenshot_hashes(&restored), screenshot_hashes(&straight));

    let inspect = ok(&["vm", "inspect", &d("mid.snap")]);
    let v: serde_json::Value = serde_json::from_str(inspect.trim()).expect("json");
    assert_eq!(v["engine"], "wasm");
    assert_eq!(v["kind"], "full");
    assert!(v["data_pages"].as_u64().unwrap_or(0) > 0);

    // Broken snapshot files are refused with the reason, and nothing runs.
    let bytes = std::fs::read(dir.join("mid.snap")).expect("read");
    std::fs::write(dir.join("cut.snap"), &bytes[..bytes.len() / 3]).expect("write");
    let err = fails(&["vm", "restore", &d("cut.snap")]);
    assert!(err.contains("truncated"), "{err}");
    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n / 2] ^= 1;
    std::fs::write(dir.join("flipped.snap"), &flipped).expect("write");
    let err = fails(&["vm", "restore", &d("flipped.snap")]);
    assert!(err.contains("checksum"), "{err}");
    let err = fails(&["vm", "restore", &d("missing.snap")]);
    assert!(err.contains("missing.snap"), "{err}");
}

#[test]
fn images_are_built_inspected_and_bad_ones_refused() {
    let dir = scratch("image");
    let image = dir.join("phone.wasm").display().to_string();
    ok(&["image", "build", "--out", &image]);
    let info = ok(&["image", "inspect", &image, "--json"]);
    let v: serde_json::Value = serde_json::from_str(info.trim()).expect("json");
    assert_eq!(v["abi_version"], 2);
    assert!(v["imports"].as_array().is_some_and(|i| i.iter().any(|n| n == "clipboard_set")), "{v}");
    assert!(v["captured_globals"].as_u64().unwrap_or(0) >= 1, "the stack pointer is captured: {v}");
    assert!(v["imports"].as_array().is_some_and(|i| i.iter().any(|n| n == "fb_damage")));

    std::fs::write(dir.join("junk.wasm"), b"\0asm\x01\0\0\0garbage").expect("write");
    let err = fails(&["image", "inspect", &dir.join("junk.wasm").display().to_string()]);
    assert!(err.contains("not a valid WebAssembly module"), "{err}");
}

#[test]
fn bad_scripts_name_the_line() {
    let dir = scratch("script");
    std::fs::write(dir.join("bad.events"), "tap 10 10\n\ntpa 1 2\n").expect("write");
    let err = fails(&["vm", "run", "--headless", "--events", &dir.join("bad.events").display().to_string()]);
    assert!(err.contains("line 3") && err.contains("unknown command `tpa`"), "{err}");
    let err = fails(&["vm", "run", "--events", &dir.join("bad.events").display().to_string()]);
    assert!(err.contains("--headless"), "{err}");
}

/// A guest that paints on every touch but never reports damage (`fb_damage`): guest
/// memory shows the paint, a terminal never gets it. `--as-terminal` shows what a terminal
/// would see, so an app author finds the bug before a user does.
const NO_DAMAGE_GUEST: &str = r#"(module
  (import "vmi" "fb_attach" (func $fb_attach (param i32 i32 i32)))
  (memory (export "memory") 1)
  (func (export "vmi_init") (param $w i32) (param $h i32)
    (call $fb_attach (i32.const 1024) (local.get $w) (local.get $h)))
  (func (export "vmi_event") (param $kind i32) (param $a i32) (param $b i32) (param $c i32)
    (if (i32.eq (local.get $kind) (i32.const 1))
      (then (memory.fill (i32.const 1024) (i32.const 255) (i32.const 4096))))))"#;

#[test]
fn as_terminal_screenshots_show_only_reported_damage() {
    let dir = scratch("as-terminal");
    let d = |f: &str| dir.join(f).display().to_string();
    std::fs::write(dir.join("guest.wasm"), wat::parse_str(NO_DAMAGE_GUEST).expect("guest parses")).expect("write");
    // A first frame (the black screen a terminal gets), then a touch that paints white.
    std::fs::write(dir.join("paint.events"), "wait 1ms\ntap 1 1\nscreenshot shot.png\n").expect("write");
    let run = |extra: &[&str]| {
        let (image, events, out_dir) = (d("guest.wasm"), d("paint.events"), d(""));
        let mut args = vec!["vm", "run", "--headless", "--image", &image, "--width", "32", "--height", "32"];
        args.extend(["--events", &events, "--out-dir", &out_dir]);
        args.extend_from_slice(extra);
        let refs = args;
        ok(&refs);
        let bytes = std::fs::read(dir.join("shot.png")).expect("screenshot written");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().expect("png");
        let mut pixels = vec![0; reader.output_buffer_size().expect("size")];
        reader.next_frame(&mut pixels).expect("pixels");
        pixels
    };
    let memory = run(&[]);
    let terminal = run(&["--as-terminal"]);
    // Colour bytes only: pictures of the screen are opaque whatever alpha the guest wrote.
    let rgb = |px: &[u8]| px.chunks(4).flat_map(|p| p[..3].to_vec()).collect::<Vec<u8>>();
    assert!(rgb(&memory[..4096]).iter().all(|&b| b == 255), "guest memory holds the paint");
    assert!(rgb(&terminal[..4096]).iter().all(|&b| b == 0), "a terminal never got it: no damage was reported");
    assert!(terminal.chunks(4).all(|p| p[3] == 255), "the picture is opaque");
}

/// A snapshot restored on another image says which image it needs and how to pass it.
#[test]
fn restore_on_the_wrong_image_says_what_to_do() {
    let dir = scratch("wrong-image");
    let d = |f: &str| dir.join(f).display().to_string();
    std::fs::write(dir.join("guest.wasm"), wat::parse_str(NO_DAMAGE_GUEST).expect("guest parses")).expect("write");
    ok(&["vm", "snapshot", "--out", &d("phone.snap"), "--wall-start", "1763000000"]);
    let err = fails(&["vm", "restore", &d("phone.snap"), "--image", &d("guest.wasm")]);
    assert!(err.contains("--image") && err.contains("vmi image inspect"), "{err}");
}

/// A run that ends in a crash has still told everything up to it, in order: the guest's
/// boot log line, then the failing line's error.
#[test]
fn a_run_that_crashes_still_prints_what_happened_before() {
    let guest = r#"(module
      (import "vmi" "log" (func $log (param i32 i32 i32)))
      (memory (export "memory") 1)
      (data (i32.const 0) "booted")
      (func (export "vmi_init") (param i32 i32) (call $log (i32.const 2) (i32.const 0) (i32.const 6)))
      (func (export "vmi_event") (param $kind i32) (param i32 i32 i32) (if (i32.eq (local.get $kind) (i32.const 1)) (then unreachable))))"#;
    let dir = scratch("crash-run");
    let d = |f: &str| dir.join(f).display().to_string();
    std::fs::write(dir.join("guest.wasm"), wat::parse_str(guest).expect("guest parses")).expect("write");
    std::fs::write(dir.join("crash.events"), "tap 1 1\n").expect("write");
    let out = vmi(&["vm", "run", "--headless", "--image", &d("guest.wasm"), "--events", &d("crash.events")]);
    assert!(!out.status.success(), "the trap fails the run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first: serde_json::Value = serde_json::from_str(stdout.lines().next().expect("a line")).expect("json");
    assert_eq!((first["kind"].as_str(), first["text"].as_str()), (Some("log"), Some("booted")), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("script line 1") && stderr.contains("unreachable") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

/// The API reference in docs/api is what the services serve: `vmi openapi` builds it from the routers, and the
/// checked-in copy must be the same (regenerate with `vmi openapi control > docs/api/control.openapi.json`).
#[test]
fn the_checked_in_api_reference_is_what_the_routers_describe() {
    for service in ["control", "site"] {
        let printed: serde_json::Value = serde_json::from_str(&ok(&["openapi", service])).expect("json");
        let file = repo(&format!("docs/api/{service}.openapi.json"));
        let kept: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("checked in")).expect("json");
        assert!(
            printed == kept,
            "{file} is out of date: run `vmi openapi {service} > docs/api/{service}.openapi.json`"
        );
        assert_eq!(printed["openapi"], "3.1.0");
    }
    assert!(fails(&["openapi", "nothing"]).contains("invalid value 'nothing'"));
}

#[test]
fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&["completions", shell]);
        assert!(script.contains("checkpoints") && script.contains("completions"), "{shell}: {script}");
    }
    let script = scratch("completions").join("vmi.bash");
    std::fs::write(&script, ok(&["completions", "bash"])).expect("write");
    let parsed = Command::new("bash").arg("-n").arg(&script).status().expect("bash");
    assert!(parsed.success(), "bash reads the script");
}
