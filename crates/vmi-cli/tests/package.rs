//! The Debian package as an operator installs it. `scripts/package-deb` packs the `vmi` under test; the package's
//! fields, conffiles, files and maintainer scripts are checked; its systemd units (and the Linux-phone drop-in it
//! ships) pass `systemd-analyze verify` and stay hardened by `systemd-analyze security`; and the packaged binary,
//! started exactly as each unit's `ExecStart` says (its settings from the packaged /etc/default/seed-vmi, the state
//! directory and ports swapped for a scratch directory and ports the system picks, the unit's umask,
//! `NoNewPrivileges=` and `MemoryDenyWriteExecute=` applied), serves: the control service and a site enrolled from a
//! join file answer `/healthz`, `vmi up` brings its demo up, and each stops cleanly on SIGTERM, as systemd stops it.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vmi_testkit::ChildGuard;

/// Where the units keep their state; the test swaps it for a scratch directory.
const STATE: &str = "/var/lib/vmi";
/// The packaged binary's path, which every `ExecStart` starts.
const BINARY: &str = "/usr/bin/vmi";
/// The package's units.
const UNITS: [&str; 3] = ["vmi-control.service", "vmi-site@.service", "vmi-up.service"];
/// The drop-in for sites with Linux phones, as shipped.
const LINUX_DROP_IN: &str = "usr/share/doc/seed-vmi/examples/vmi-site-linux-phones.conf";
/// The highest `systemd-analyze security` exposure (×10) a packaged unit may have: they rate 1.3 today (systemd 252),
/// an unconfined service 9.6; removing `CapabilityBoundingSet=` alone makes it 3.1. With the drop-in for Linux phones,
/// which gives capabilities back, the site's unit rates 3.0.
const MAX_EXPOSURE: u32 = 20;
/// As [`MAX_EXPOSURE`], for the site's unit with the Linux-phone drop-in.
const MAX_EXPOSURE_LINUX_PHONES: u32 = 35;

#[test]
fn the_debian_package_installs_units_that_run_the_services() {
    for tool in ["dpkg-deb", "systemd-analyze"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("skipping the package test: {tool} is missing (Debian's dpkg and systemd; scripts/setup)");
            return;
        }
    }
    let started = Instant::now();
    let scratch = scratch_dir("package");

    let deb = build_package(&scratch.join("out"));
    check_metadata(&deb);
    let root = scratch.join("root");
    run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    check_files(&root);
    check_maintainer_scripts(&deb, &scratch.join("control"));
    verify_units(&root, &scratch.join("verify"));
    eprintln!("package built and checked in {:?}", started.elapsed());

    let state = scratch.join("state");
    run_control_and_site(&root, &state);
    run_up(&root, &state);
    eprintln!("package test took {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The workspace's root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `command`, asserts it succeeded, and returns its stdout.
fn run_ok(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `scripts/package-deb` on the binary under test; the path of the package it wrote.
fn build_package(out: &Path) -> PathBuf {
    let stdout = run_ok(
        Command::new(workspace().join("scripts/package-deb"))
            .args(["--binary", env!("CARGO_BIN_EXE_vmi"), "--out"])
            .arg(out)
            // The compressor is dpkg-deb's business, not what is tested here; xz takes 15-30 s for this binary.
            .args(["--compression", "zstd"]),
    );
    let deb = PathBuf::from(stdout.trim());
    assert_eq!(deb.parent(), Some(out), "the package goes to --out: {stdout}");
    assert!(deb.is_file(), "{} was not written", deb.display());
    deb
}

/// The control file's fields, the conffiles, and every file root's.
fn check_metadata(deb: &Path) {
    let fields = ["Package", "Version", "Architecture", "Maintainer", "Installed-Size", "Depends", "Recommends"];
    let text = run_ok(Command::new("dpkg-deb").arg("--field").arg(deb).args(fields));
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} field in {text}"))
            .to_owned()
    };
    assert_eq!(field("Package"), "seed-vmi");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")), "the workspace's version");
    let arch = run_ok(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(field("Architecture"), arch.trim());
    assert!(field("Maintainer").contains('@'), "{text}");
    // The binary alone is tens of MB: Installed-Size (KiB) counts it.
    let binary_kib = std::fs::metadata(env!("CARGO_BIN_EXE_vmi")).expect("the binary").len() / 1024;
    let installed: u64 = field("Installed-Size").parse().expect("Installed-Size is a number");
    assert!(
        installed >= binary_kib && installed < binary_kib + 1024,
        "Installed-Size {installed} for {binary_kib} KiB"
    );
    let depends = field("Depends");
    assert!(depends.contains("libc6 (>= "), "Depends names libc6 with the version its symbols need: {depends}");
    assert!(field("Recommends").contains("qemu-system-x86"), "sites run Linux phones on QEMU: {text}");

    let conffiles = run_ok(Command::new("dpkg-deb").arg("--info").arg(deb).arg("conffiles"));
    assert_eq!(conffiles.lines().collect::<Vec<_>>(), ["/etc/default/seed-vmi"]);

    let listing = run_ok(Command::new("dpkg-deb").arg("--contents").arg(deb));
    for line in listing.lines() {
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(columns.get(1), Some(&"root/root"), "every file is root's: {line}");
    }
    let binary = listing.lines().find(|l| l.ends_with(" ./usr/bin/vmi")).expect("usr/bin/vmi in the package");
    assert!(binary.starts_with("-rwxr-xr-x "), "{binary}");
}

/// What the package puts on disk.
fn check_files(root: &Path) {
    let packaged = std::fs::read(root.join("usr/bin/vmi")).expect("usr/bin/vmi");
    let built = std::fs::read(env!("CARGO_BIN_EXE_vmi")).expect("the binary under test");
    assert!(packaged == built, "usr/bin/vmi is the binary given with --binary");
    for unit in UNITS {
        assert!(root.join("usr/lib/systemd/system").join(unit).is_file(), "{unit} is packaged");
    }
    assert!(root.join(LINUX_DROP_IN).is_file(), "the Linux-phone drop-in is packaged");
    assert!(root.join("etc/default/seed-vmi").is_file(), "the settings file is packaged");
    let copyright = std::fs::read_to_string(root.join("usr/share/doc/seed-vmi/copyright")).expect("copyright");
    assert!(copyright.contains("License: Apache-2.0"), "{copyright}");
    assert!(copyright.contains("/usr/share/common-licenses/Apache-2.0"), "{copyright}");
    for doc in ["changelog.Debian.gz", "OPERATIONS.md.gz", "README.md.gz"] {
        assert!(root.join("usr/share/doc/seed-vmi").join(doc).is_file(), "{doc} is packaged");
    }
}

/// The maintainer scripts parse, and call systemctl only where systemd runs (not in a chroot or image build).
fn check_maintainer_scripts(deb: &Path, dir: &Path) {
    run_ok(Command::new("dpkg-deb").arg("--control").arg(deb).arg(dir));
    for script in ["postinst", "prerm", "postrm"] {
        let path = dir.join(script);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{script}: {e}")).permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{script}");
        run_ok(Command::new("sh").arg("-n").arg(&path));
        let text = std::fs::read_to_string(&path).expect("script");
        // Each `if` line opened and not yet closed: a systemctl call must sit inside the guard.
        let mut open: Vec<&str> = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with("if ") {
                open.push(line);
            } else if line == "fi" {
                open.pop();
            } else if line.starts_with("systemctl ") {
                assert!(
                    open.iter().any(|c| c.contains("[ -d /run/systemd/system ]")),
                    "{script} runs `{line}` without checking that systemd runs"
                );
            }
        }
    }
    let postinst = std::fs::read_to_string(dir.join("postinst")).expect("postinst");
    assert!(postinst.contains("adduser --system") && postinst.contains("useradd --system"), "{postinst}");
    assert!(postinst.contains("--home /var/lib/vmi"), "the user's home is the state directory");
}

/// `systemd-analyze verify` on the units as packaged (with `ExecStart` pointing at the extracted binary, since
/// /usr/bin/vmi is not installed here, and verify checks that the program exists), alone and with the Linux-phone
/// drop-in; and their `systemd-analyze security` exposure. First, a broken unit must be reported, so a verify that
/// says nothing here means something.
fn verify_units(root: &Path, dir: &Path) {
    let binary = root.join("usr/bin/vmi");
    let copy_units = |to: &Path| {
        std::fs::create_dir_all(to).expect("unit directory");
        for unit in UNITS {
            let text = std::fs::read_to_string(root.join("usr/lib/systemd/system").join(unit)).expect("unit");
            assert!(text.contains(&format!("ExecStart={BINARY} ")), "{unit} starts {BINARY}");
            std::fs::write(to.join(unit), text.replace(BINARY, &binary.display().to_string())).expect("copy");
        }
        UNITS.map(|u| to.join(u))
    };

    // A unit with an unknown key and a program that is not there.
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).expect("directory");
    std::fs::write(broken.join("vmi-broken.service"), "[Service]\nExecStart=/nonexistent/vmi up\nRestrat=always\n")
        .expect("broken unit");
    let problems = verify(&[broken.join("vmi-broken.service")]);
    assert!(
        problems.iter().any(|p| p.contains("Restrat")) && problems.iter().any(|p| p.contains("/nonexistent/vmi")),
        "systemd-analyze verify did not report a broken unit: {problems:?}"
    );

    for unit in UNITS {
        hardened(&Unit::read(root, unit));
    }
    let plain = copy_units(&dir.join("units"));
    let problems = verify(&plain);
    assert!(problems.is_empty(), "systemd-analyze verify: {problems:#?}");
    for unit in &plain {
        exposure(unit, MAX_EXPOSURE);
    }

    // The drop-in as an operator installs it: in the unit's .d directory, which verify reads beside the unit.
    let linux = copy_units(&dir.join("linux-phones"));
    let drop_ins = dir.join("linux-phones/vmi-site@.service.d");
    std::fs::create_dir_all(&drop_ins).expect("drop-in directory");
    std::fs::copy(root.join(LINUX_DROP_IN), drop_ins.join("linux-phones.conf")).expect("drop-in");
    let site = linux.iter().find(|u| u.ends_with("vmi-site@.service")).expect("the site's unit");
    let problems = verify(std::slice::from_ref(site));
    assert!(problems.is_empty(), "systemd-analyze verify with the Linux-phone drop-in: {problems:#?}");
    exposure(site, MAX_EXPOSURE_LINUX_PHONES);
}

/// The settings every unit must keep (docs/OPERATIONS.md says why each): the exposure score alone would let a few
/// of them go unnoticed.
fn hardened(unit: &Unit) {
    let required = [
        ("User", "vmi"),
        ("Group", "vmi"),
        ("StateDirectory", "vmi"),
        ("EnvironmentFile", "/etc/default/seed-vmi"),
        ("Restart", "on-failure"),
        ("CapabilityBoundingSet", ""),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0077"),
    ];
    for (key, value) in required {
        assert!(unit.all(key).contains(&value), "{}: {key}={value} is missing", unit.name);
    }
}

/// What `systemd-analyze verify` says about `units`: its complaints about them (lines naming them or the scratch
/// directory, so a warning about one of the host's own units does not count), and a failure as one.
fn verify(units: &[PathBuf]) -> Vec<String> {
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).args(units).output().expect("verify runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let mut problems: Vec<String> = text.lines().filter(|l| l.contains("vmi")).map(str::to_owned).collect();
    if !out.status.success() {
        problems.push(format!("exit status {}: {text}", out.status));
    }
    problems
}

/// Asserts `systemd-analyze security --offline` rates `unit` at most `max` (its exposure × 10), and says what it was.
fn exposure(unit: &Path, max: u32) {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager", &format!("--threshold={max}")])
        .arg(unit)
        .output()
        .expect("systemd-analyze security runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let overall = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or("no overall level");
    assert!(
        out.status.success(),
        "{} is exposed above {:.1}: {overall}\n{text}",
        unit.display(),
        f64::from(max) / 10.0
    );
    eprintln!("{}: {}", unit.display(), overall.trim_start_matches('→').trim());
}

/// One unit file: its settings in order, `(section, key, value)`, continuation lines joined.
struct Unit {
    name: String,
    settings: Vec<(String, String, String)>,
}

impl Unit {
    fn read(root: &Path, name: &str) -> Unit {
        let path = root.join("usr/lib/systemd/system").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (mut settings, mut section, mut pending) = (Vec::new(), String::new(), String::new());
        for line in text.lines() {
            let line = line.trim();
            if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';')) {
                continue;
            }
            if let Some(head) = line.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
            } else {
                let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("{name}: not a setting: {line}"));
                settings.push((section.clone(), key.trim().to_owned(), value.trim().to_owned()));
            }
        }
        Unit { name: name.to_owned(), settings }
    }

    /// Every value of `key` in [Service], in order.
    fn all(&self, key: &str) -> Vec<&str> {
        self.settings.iter().filter(|(s, k, _)| s == "Service" && k == key).map(|(_, _, v)| v.as_str()).collect()
    }

    /// The last value of `key` in [Service] (a later one overrides), if any.
    fn get(&self, key: &str) -> Option<&str> {
        self.all(key).last().copied()
    }

    fn yes(&self, key: &str) -> bool {
        matches!(self.get(key), Some("yes" | "true" | "on" | "1"))
    }

    /// How long systemd waits after SIGTERM before SIGKILL (`TimeoutStopSec=`; its default 90 s).
    fn stop_timeout(&self) -> Duration {
        let Some(value) = self.get("TimeoutStopSec") else { return Duration::from_secs(90) };
        let (number, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len()));
        let number: u64 = number.parse().unwrap_or_else(|_| panic!("{}: TimeoutStopSec={value}", self.name));
        match unit {
            "" | "s" => Duration::from_secs(number),
            "min" => Duration::from_secs(number * 60),
            other => panic!("{}: TimeoutStopSec unit {other} not understood here", self.name),
        }
    }

    /// The command line systemd would run for instance `instance`, with the environment it would give it: the unit's
    /// `Environment=`, then its `EnvironmentFile=`s (read from the package at `root`), then `overrides` (what this
    /// test changes: listening addresses), `${X}` and `$X` expanded as systemd expands them, `%i` the instance, and
    /// every path under /var/lib/vmi moved to `state`.
    fn command(
        &self,
        root: &Path,
        instance: &str,
        overrides: &[(&str, &str)],
        state: &Path,
    ) -> (Vec<String>, BTreeMap<String, String>) {
        let mut env = BTreeMap::new();
        for assignments in self.all("Environment") {
            for assignment in assignments.split_whitespace() {
                let (k, v) = assignment.split_once('=').expect("Environment= holds KEY=VALUE");
                env.insert(k.to_owned(), v.to_owned());
            }
        }
        for file in self.all("EnvironmentFile") {
            let file = file.replace("%i", instance);
            let (optional, file) = file.strip_prefix('-').map_or((false, file.as_str()), |f| (true, f));
            let path = root.join(file.trim_start_matches('/'));
            let Ok(text) = std::fs::read_to_string(&path) else {
                assert!(optional, "{}: EnvironmentFile {file} is not in the package", self.name);
                continue;
            };
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("{file}: not KEY=VALUE: {line}"));
                env.insert(k.to_owned(), v.to_owned());
            }
        }
        for (k, v) in overrides {
            assert!(env.contains_key(*k), "{}: {k} is not among its settings: {env:?}", self.name);
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let exec = self.get("ExecStart").unwrap_or_else(|| panic!("{} has no ExecStart", self.name));
        let exec = exec.replace("%i", instance);
        // Kept simple on purpose, so this reading of it is systemd's: no quoting, no other specifier.
        assert!(
            !exec.contains(['%', '"', '\'']),
            "{}: ExecStart uses what this test does not expand: {exec}",
            self.name
        );
        let state_dir = state.display().to_string();
        let mut args = Vec::new();
        for word in exec.split_whitespace() {
            if let Some(name) = word.strip_prefix('$').filter(|n| !n.starts_with('{')) {
                // `$X` alone: the value split at whitespace, zero or more arguments.
                if let Some(value) = env.get(name) {
                    args.extend(value.split_whitespace().map(str::to_owned));
                }
            } else {
                // `${X}`: replaced in place, one argument.
                let mut word = word.to_owned();
                while let Some(start) = word.find("${") {
                    let end = start + word[start..].find('}').expect("${ closed");
                    let value = env.get(&word[start + 2..end]).cloned().unwrap_or_default();
                    word.replace_range(start..=end, &value);
                }
                args.push(word);
            }
        }
        for arg in &mut args {
            if arg == BINARY {
                *arg = root.join("usr/bin/vmi").display().to_string();
            } else if arg.starts_with(STATE) {
                *arg = arg.replacen(STATE, &state_dir, 1);
            }
        }
        (args, env)
    }

    /// Starts the unit's `ExecStart` as [`Unit::command`] says, the way systemd does: a clean environment (the unit's
    /// and the user's HOME, which is the state directory), its working directory, and the unit's `UMask=`,
    /// `NoNewPrivileges=` and `MemoryDenyWriteExecute=` (the kernel's own form of it, where the kernel has it).
    fn start(&self, root: &Path, instance: &str, overrides: &[(&str, &str)], state: &Path) -> Service {
        let (args, mut env) = self.command(root, instance, overrides, state);
        // The packaged settings log at info, for the journal; warnings are enough to read a failure here.
        assert!(env.contains_key("VMI_LOG"), "{}: the settings file sets VMI_LOG", self.name);
        env.insert("VMI_LOG".to_owned(), "warn".to_owned());
        eprintln!("{}: {}", self.name, args.join(" "));
        let workdir = self
            .get("WorkingDirectory")
            .map_or_else(|| state.to_path_buf(), |w| PathBuf::from(w.replacen(STATE, &state.display().to_string(), 1)));
        std::fs::create_dir_all(&workdir).expect("working directory");
        let umask = self.get("UMask").map(|m| u32::from_str_radix(m, 8).expect("UMask is octal"));
        let no_new_privileges = self.yes("NoNewPrivileges");
        let apply_mdwe = self.yes("MemoryDenyWriteExecute") && {
            let supported = kernel_has_mdwe();
            if !supported {
                eprintln!(
                    "{}: no PR_SET_MDWE in this kernel (Linux 6.3+): MemoryDenyWriteExecute not applied",
                    self.name
                );
            }
            supported
        };
        let mut command = Command::new(&args[0]);
        command
            .args(&args[1..])
            .env_clear()
            .envs(&env)
            .env("HOME", state)
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir(&workdir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        use std::os::unix::process::CommandExt;
        // SAFETY: umask and prctl are async-signal-safe and take no pointers; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if let Some(mask) = umask {
                    libc::umask(mask);
                }
                if no_new_privileges && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if apply_mdwe && libc::prctl(libc::PR_SET_MDWE, libc::PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut process = ChildGuard::spawn(&mut command).unwrap_or_else(|e| panic!("{}: {e}", self.name));
        let stdout = process.child().stdout.take().expect("stdout");
        Service {
            name: self.name.clone(),
            process,
            lines: Some(BufReader::new(stdout).lines()),
            stop: self.stop_timeout(),
        }
    }
}

/// Whether this kernel can deny a process memory that is writable and executable (PR_SET_MDWE, Linux 6.3+): asked
/// of a child, since the setting can never be undone in the process that makes it.
fn kernel_has_mdwe() -> bool {
    use std::os::unix::process::CommandExt;
    let mut probe = Command::new("true");
    // SAFETY: prctl is async-signal-safe and takes no pointers.
    unsafe {
        probe.pre_exec(|| {
            if libc::prctl(libc::PR_SET_MDWE, libc::PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    probe.status().is_ok_and(|s| s.success())
}

/// A service started from its unit.
struct Service {
    name: String,
    process: ChildGuard,
    /// Its stdout, until a line was awaited (then a thread drains it, so the service never blocks on the pipe).
    lines: Option<Lines<BufReader<ChildStdout>>>,
    stop: Duration,
}

impl Service {
    /// Reads its stdout until a line satisfies `check` (each service gives up by itself within a minute), and
    /// returns that line; the rest is drained.
    fn wait_for_line(&mut self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let mut lines = self.lines.take().expect("one wait per service");
        let found = lines.by_ref().map_while(Result::ok).find(|l| check(l));
        std::thread::spawn(move || for _ in lines {});
        found.unwrap_or_else(|| panic!("{} ended before {what}", self.name))
    }

    /// The address it announced it listens on (`{"event":"listening",...}`).
    fn listening(&mut self) -> String {
        let line = self.wait_for_line("announcing where it listens", |l| l.contains(r#""event":"listening""#));
        let event: serde_json::Value = serde_json::from_str(&line).expect("the listening event is JSON");
        event["listen"].as_str().expect("listen").to_owned()
    }

    /// Stops it as systemd does (SIGTERM to the main process), asserts it exits successfully within the unit's
    /// `TimeoutStopSec=`, and that it left no process of its own behind (what systemd would then SIGKILL).
    fn stop(mut self) {
        let pid = libc::pid_t::try_from(self.process.id()).expect("pid");
        // SAFETY: kill takes no pointers; the pid is our child's.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM to {}", self.name);
        let deadline = Instant::now() + self.stop;
        let status = loop {
            if let Some(status) = self.process.child().try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "{} did not stop within {:?} of SIGTERM", self.name, self.stop);
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{} exited with {status} on SIGTERM", self.name);
        // The process group is the service's: once its leader exited, nothing of it may remain.
        wait_until(Duration::from_secs(5), &format!("{}'s processes all gone", self.name), || {
            // SAFETY: kill with signal 0 only checks; a negative pid names the process group.
            unsafe { libc::kill(-pid, 0) != 0 }
        });
    }
}

/// The control service and a site as vmi-control.service and vmi-site@.service start them: the site enrolls with
/// a join file where its unit looks for one, registers, and both answer `/healthz`.
fn run_control_and_site(root: &Path, state: &Path) {
    let control_unit = Unit::read(root, "vmi-control.service");
    let mut control = control_unit.start(root, "", &[("VMI_CONTROL_LISTEN", "127.0.0.1:0")], state);
    let control_listen = control.listening();
    assert_eq!(fetch(&format!("http://{control_listen}/healthz"), None), "ok");
    // Its data where the docs say: the database, the CA and the operator credential under /var/lib/vmi/control.
    let control_dir = state.join("control");
    for file in ["control.db", "ca.pem", "operator.json", "pki"] {
        assert!(control_dir.join(file).exists(), "{file} under {STATE}/control");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(control_dir.join("operator.json")).expect("credential").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the operator credential is the service's alone");

    // The join file where the site's unit reads it (what the docs tell an operator to do).
    let site_id = "pkg-site";
    let credentials = control_dir.join("operator.json");
    let join = state.join("sites").join(format!("{site_id}.join"));
    run_ok(
        Command::new(root.join("usr/bin/vmi"))
            .env("VMI_CREDENTIALS", &credentials)
            .args(["site", "join-token", site_id, "--control", &format!("http://{control_listen}"), "--out"])
            .arg(&join),
    );
    let site_unit = Unit::read(root, "vmi-site@.service");
    let control_url = format!("https://{control_listen}");
    let overrides = [("VMI_CONTROL_URL", control_url.as_str()), ("VMI_SITE_LISTEN", "127.0.0.1:0")];
    let mut site = site_unit.start(root, site_id, &overrides, state);
    let site_listen = site.listening();
    assert_eq!(fetch(&format!("http://{site_listen}/healthz"), None), "ok");
    assert!(state.join("sites").join(site_id).join("tls/cert.pem").exists(), "enrolled: its certificate saved");
    // Registered and heartbeating: the control service counts it healthy.
    let credential: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&credentials).expect("credential")).expect("JSON");
    let token = credential["token"].as_str().expect("token").to_owned();
    wait_until(Duration::from_secs(30), "the site healthy at the control service", || {
        let Ok(body) = try_fetch(&format!("http://{control_listen}/v1/sites"), Some(&token)) else { return false };
        let sites: serde_json::Value = serde_json::from_str(&body).expect("sites JSON");
        sites.as_array().is_some_and(|s| s.iter().any(|s| s["id"] == site_id && s["healthy"] == true))
    });
    site.stop();
    control.stop();
}

/// `vmi up` as vmi-up.service starts it: the demo comes up, its control service answers `/healthz`, and SIGTERM
/// to `vmi up` alone (`KillMode=mixed`) stops every service it started, the demo phone saved.
fn run_up(root: &Path, state: &Path) {
    let unit = Unit::read(root, "vmi-up.service");
    assert_eq!(unit.get("KillMode"), Some("mixed"), "vmi up stops its services itself");
    let mut up = unit.start(root, "", &[("VMI_UP_PORT", "0")], state);
    up.wait_for_line("saying it is up", |l| l.contains("Stop with Ctrl-C"));
    let data = state.join("up");
    let file = std::fs::read_to_string(data.join("up.json")).expect("vmi up wrote up.json under its data directory");
    let v: serde_json::Value = serde_json::from_str(&file).expect("up.json is JSON");
    let control = v["control"].as_str().expect("control");
    assert_eq!(fetch(&format!("{control}/healthz"), None), "ok");
    for site in v["sites"].as_array().expect("sites") {
        let listen = site["listen"].as_str().expect("listen");
        assert_eq!(fetch(&format!("http://{listen}/healthz"), None), "ok");
    }
    up.stop();
    assert!(data.join("site-a/phones/demo/phone.state").exists(), "the demo phone was saved on SIGTERM");
}
