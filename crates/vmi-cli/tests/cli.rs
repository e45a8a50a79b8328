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

/// Every command and subcommand of `vmi` under `path`, `path` first, as each one's `--help` lists them.
fn commands(path: &[String]) -> Vec<Vec<String>> {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("--help");
    let help = ok(&args);
    let mut found = vec![path.to_vec()];
    let listed = help.split("\nCommands:\n").nth(1).and_then(|rest| rest.split("\n\n").next()).unwrap_or("");
    // A command's line: its name two spaces in, then what it does.
    for line in listed.lines().filter(|l| l.starts_with("  ") && !l[2..].starts_with(' ')) {
        let name = line.split_whitespace().next().expect("a name");
        if name != "help" {
            found.extend(commands(&[path, &[name.to_owned()]].concat()));
        }
    }
    found
}

/// `--json` is global: every command takes it, before or after its name, and none defines another.
#[test]
fn every_command_takes_json() {
    let all = commands(&[]);
    assert!(all.len() > 60, "the walk found the command tree: {all:?}");
    for path in &all {
        let args: Vec<&str> = path.iter().map(String::as_str).chain(["--help"]).collect();
        let help = ok(&args);
        let flags = help.lines().filter(|l| l.trim_start().starts_with("--json")).count();
        assert_eq!(flags, 1, "vmi {} --help lists --json once:\n{help}", path.join(" "));
        // Before the command's name too.
        let args: Vec<&str> = ["--json"].into_iter().chain(args).collect();
        assert!(vmi(&args).status.success(), "vmi {args:?}");
    }
    for must in
        [&["site", "drain"][..], &["terminal", "checkout"], &["vm", "checkpoints", "restore"], &["bench", "snapshot"]]
    {
        assert!(all.iter().any(|p| p == must), "{must:?} is in the tree");
    }
}

/// Runs `vmi ARGS`, asserts it succeeded with no progress line on stderr (not a terminal), and returns what it
/// printed on stdout: JSON values (one a line, or a pretty document), nothing else.
fn json_lines(args: &[&str]) -> Vec<serde_json::Value> {
    let out = vmi(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vmi {args:?} failed: {stderr}");
    assert!(!stderr.contains('\r'), "no progress line when stderr is not a terminal: {stderr:?}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    assert!(!stdout.trim().is_empty(), "vmi {args:?} printed something");
    serde_json::Deserializer::from_str(&stdout)
        .into_iter()
        .map(|value| value.unwrap_or_else(|e| panic!("vmi {args:?} printed more than JSON: {e}: {stdout}")))
        .collect()
}

/// With `--json` the local commands print JSON and nothing else on stdout; an error stays on stderr.
#[test]
fn json_output_of_local_commands_parses() {
    let dir = scratch("json");
    let d = |f: &str| dir.join(f).display().to_string();
    let built = json_lines(&["--json", "image", "build", "--out", &d("phone.wasm")]);
    assert_eq!((built.len(), built[0]["engine"].as_str()), (1, Some("wasm")), "{built:?}");
    let inspected = json_lines(&["--json", "image", "inspect", &d("phone.wasm")]);
    assert_eq!(inspected[0]["hash"], built[0]["image"], "{inspected:?}");

    std::fs::write(dir.join("short.events"), "tap 274 1090\ntype hi\nscreenshot notes.png\n").expect("write");
    let run = json_lines(&[
        "--json",
        "vm",
        "run",
        "--headless",
        "--events",
        &d("short.events"),
        "--out-dir",
        &d(""),
        "--wall-start",
        "1763000000",
    ]);
    let summary = run.last().expect("a summary");
    assert_eq!((run[0]["kind"].as_str(), summary["kind"].as_str()), (Some("screenshot"), Some("ran")), "{run:?}");
    assert_eq!(summary["reports"]["screenshot"], 1, "{summary}");
    assert_eq!(summary["image"], built[0]["image"]);

    let snapshot = json_lines(&["vm", "snapshot", "--out", &d("phone.snap"), "--json"]);
    assert_eq!(snapshot.last().expect("a line")["kind"], "snapshot");
    let restored = json_lines(&["vm", "restore", &d("phone.snap"), "--snapshot-out", &d("again.snap"), "--json"]);
    let summary = restored.last().expect("a summary");
    assert_eq!(summary["kind"], "restored", "{summary}");
    assert!(summary["snapshot_out"]["bytes"].as_u64().is_some_and(|b| b > 0), "{summary}");
    assert_eq!(json_lines(&["--json", "vm", "inspect", &d("again.snap")])[0]["kind"], "full");

    let completions = json_lines(&["--json", "completions", "fish"]);
    assert!(completions[0]["script"].as_str().is_some_and(|s| s.contains("checkpoints")), "{completions:?}");
    assert_eq!(json_lines(&["--json", "openapi", "site"])[0]["openapi"], "3.1.0");

    // A Linux image's build script (here a stand-in) says what it does on stdout and stderr: all of it goes to
    // stderr, and stdout holds the one JSON document.
    let script = dir.join("build-linux-image");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'build-linux-image: packing' >&2\necho chatter\nmkdir -p \"$1\" && cd \"$1\" && printf k >vmlinuz && \
         printf i >initrd && printf r >rootfs.sqfs\n",
    )
    .expect("write");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let out = Command::new(env!("CARGO_BIN_EXE_vmi"))
        .args(["--json", "image", "build", "--linux", "--out", &d("linux.img")])
        .env("VMI_LINUX_IMAGE_SCRIPT", &script)
        .output()
        .expect("run vmi");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("chatter") && stderr.contains("packing") && !stderr.contains('\r'), "{stderr:?}");
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(built["engine"], "qemu", "{built}");

    // An error: words on stderr, nothing on stdout, a failed exit.
    let out = vmi(&["--json", "image", "inspect", &d("missing.wasm")]);
    assert!(!out.status.success() && out.stdout.is_empty(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.wasm"));
}

/// `vmi bench placer` at a small scale: every figure is there, and on its reference world (phones to evacuate) the
/// incremental placer moved the same phones to the same sites as the full recomputation (the bench fails if not).
#[test]
fn the_placer_bench_reports_its_figures_and_agrees_with_the_full_recomputation() {
    let out = Command::new(env!("CARGO_BIN_EXE_vmi"))
        .args(["bench", "placer", "--json", "--sites", "300", "--users", "30000", "--reports", "3000"])
        .args([
            "--reference",
            "200",
            "8000",
            "--ingest-secs",
            "1",
            "--ingest-devices",
            "300",
            "--ingest-connections",
            "4",
        ])
        .output()
        .expect("run vmi");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let figures: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!((figures["sites"].as_u64(), figures["users"].as_u64()), (Some(300), Some(30_000)), "{figures}");
    for key in ["full_round_ms", "incremental_us_per_report_p50", "incremental_us_per_report_p99", "rss_mib"] {
        assert!(figures[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {figures}");
    }
    let reference = &figures["reference"];
    assert_eq!(reference["same_moves"], true, "{figures}");
    assert!(reference["moves"].as_u64().is_some_and(|m| m > 0), "the reference world moved phones: {figures}");
    // Reports sent to a real control service, every device's held once.
    let ingest = &figures["ingest"]["embedded"];
    assert!(figures["reports_per_s"].as_f64().is_some_and(|r| r > 0.0), "{figures}");
    assert!(ingest["reports"].as_u64().is_some_and(|r| r >= 300), "{figures}");
    assert_eq!(ingest["users_with_a_report"], 300, "{figures}");
}

#[test]
fn the_energy_bench_shows_position_reports_add_no_radio_wakeups() {
    let out = Command::new(env!("CARGO_BIN_EXE_vmi"))
        .args(["bench", "energy", "--json", "--active-min", "2", "--day-h", "3", "--mail-every-min", "20"])
        .output()
        .expect("run vmi");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let figures: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let reports = &figures["position_reports"];
    // Reports ride on traffic the terminal has anyway: some sent, none waking the radio, though one is due every
    // 30 s and sending each when due would wake it for most.
    assert!(reports["sent"].as_u64().is_some_and(|n| n > 0), "{reports}");
    assert_eq!(reports["wakeups_added"], 0, "{reports}");
    assert!(reports["held_for_a_radio_up"].as_u64().is_some_and(|n| n > 0), "{reports}");
    let regardless = &reports["if_sent_every_period_regardless"];
    assert!(regardless["wakeups_added"].as_u64().is_some_and(|n| n > 100), "{reports}");
}

#[test]
fn the_simulator_runs_a_small_sumo_city_within_the_placement_goals() {
    // SUMO generates the city here (its own cache, so the test runs SUMO for real).
    let cache = std::env::temp_dir().join(format!("vmi-test-sim-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_vmi"))
        .env("XDG_CACHE_HOME", &cache)
        .args(["sim", "--json", "--junctions", "600", "--trips", "200", "--minutes", "30", "--pedestrians", "100"])
        .output()
        .expect("run vmi");
    let _ = std::fs::remove_dir_all(&cache);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let figures: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let scenario = &figures["scenario"];
    assert!(scenario["drivers"].as_u64().is_some_and(|n| n >= 150), "SUMO drove the trips: {scenario}");
    assert!(scenario["sites"].as_u64().is_some_and(|n| n >= 8), "{scenario}");
    let policy = |name: &str, figure: &str| {
        figures["policies"][name][figure].as_f64().unwrap_or_else(|| panic!("{name}.{figure} in {figures}"))
    };
    // The goals, for the placer.
    assert!(policy("ours", "on_best_site_fraction") >= 0.95, "{figures}");
    assert!(policy("ours", "pingpong_fraction") < 0.01, "{figures}");
    assert_eq!(figures["goals_met"], true);
    // Beside the baselines: the nearest site always is on the best site but moves far more and ping-pongs;
    // placing once per session moves more; never moving leaves users on far sites.
    assert!(policy("nearest_always", "migrations_per_user_hour") > 3.0 * policy("ours", "migrations_per_user_hour"));
    assert!(policy("nearest_always", "pingpong_fraction") > policy("ours", "pingpong_fraction"));
    assert!(policy("placed_once", "migrations_per_user_hour") > policy("ours", "migrations_per_user_hour"));
    assert!(policy("never_moved", "on_best_site_fraction") < policy("ours", "on_best_site_fraction"));
    assert_eq!(policy("never_moved", "migrations"), 0.0);
}

#[test]
fn the_simulator_names_a_trace_it_cannot_read() {
    let out = Command::new(env!("CARGO_BIN_EXE_vmi"))
        .args(["sim", "--net", "/nonexistent/city.net.xml", "--fcd", "/nonexistent/fcd.xml"])
        .output()
        .expect("run vmi");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/city.net.xml"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_vmi")).args(["sim", "--net", "x.xml"]).output().expect("run vmi");
    assert!(!out.status.success(), "--net without --fcd is refused");
}
