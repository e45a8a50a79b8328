//! What the `vmi` process tests share: `vmi up` as a child process on ports the system picks
//! (killed with everything it started if the test panics), Ctrl-C, and a tiny HTTP GET.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmi_testkit::ChildGuard;

pub use vmi_testkit::scratch_dir;

/// The `vmi` binary under test.
pub fn vmi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmi"))
}

/// A running `vmi up` and where its services and files are (from its `up.json`).
pub struct Up {
    process: ChildGuard,
    /// The control service's URL (every replica's, comma-separated, with `--replicas`).
    pub control: String,
    /// Each control replica's URL.
    pub controls: Vec<String>,
    /// The demo user's browser page (without the token).
    pub terminal: String,
    /// Each site's id and the URL terminals use for it (its proxy's, unless `--no-proxy`).
    pub sites: Vec<(String, String)>,
    /// The 0600 file with the demo device's token.
    pub token_file: String,
    /// The 0600 file with the browser page's address and the token in its fragment.
    pub link_file: String,
    /// The provider CA's certificate.
    pub ca_file: String,
    /// The operator credential `vmi up` acts with.
    pub credentials: String,
    /// Its data directory.
    pub data: std::path::PathBuf,
}

impl Up {
    /// The URL terminals use for site `id`.
    pub fn site(&self, id: &str) -> &str {
        self.sites.iter().find(|(s, _)| s == id).map(|(_, url)| url.as_str()).unwrap_or_else(|| panic!("no {id}"))
    }

    /// The demo device's token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(&self.token_file).expect("token file").trim().to_owned()
    }

    /// The operator's token.
    pub fn operator_token(&self) -> String {
        let text = std::fs::read_to_string(&self.credentials).expect("operator credential");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v["token"].as_str().expect("token").to_owned()
    }

    /// `vmi` acting as this cluster's operator (its credential named in the environment, not in argv).
    pub fn vmi(&self) -> Command {
        let mut command = vmi();
        command.env("VMI_CREDENTIALS", &self.credentials);
        command
    }

    /// `GET path` as the operator from the first control replica that answers it.
    pub fn control_get(&self, path: &str) -> String {
        let mut errors = Vec::new();
        for url in &self.controls {
            match self.get(&format!("{url}{path}")) {
                Ok(body) => return body,
                Err(e) => errors.push(e),
            }
        }
        panic!("no control replica answered {path}: {errors:?}")
    }

    /// `GET url` as the operator: plain HTTP on loopback, else HTTPS trusting this cluster's CA (the services of
    /// `vmi up --cluster` are on addresses of their own). The body of a 200 answer, or what went wrong.
    pub fn get(&self, url: &str) -> Result<String, String> {
        if url.contains("://127.0.0.1:") || url.contains("://localhost:") {
            return try_fetch(url, Some(&self.operator_token()));
        }
        let ca = std::fs::read_to_string(&self.ca_file).map_err(|e| e.to_string())?;
        let caller =
            vmi_control_api::Caller::trusting(&ca).map_err(|e| e.to_string())?.with_bearer(&self.operator_token());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        match runtime.block_on(caller.get_bytes(url)) {
            Ok((200, body)) => String::from_utf8(body).map_err(|e| e.to_string()),
            Ok((status, body)) => Err(format!("{status}: {}", String::from_utf8_lossy(&body))),
            Err(e) => Err(e.to_string()),
        }
    }

    /// GET `url` (https, trusting the provider CA) as the operator: the body's bytes (status 200), or what went wrong.
    pub fn get_bytes(&self, url: &str) -> Result<Vec<u8>, String> {
        let ca = std::fs::read_to_string(&self.ca_file).map_err(|e| e.to_string())?;
        let caller =
            vmi_control_api::Caller::trusting(&ca).map_err(|e| e.to_string())?.with_bearer(&self.operator_token());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        match runtime.block_on(caller.get_bytes(url)) {
            Ok((200, body)) => Ok(body),
            Ok((status, body)) => Err(format!("{status}: {}", String::from_utf8_lossy(&body))),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Each simulated machine of `vmi up --cluster` as `(name, link)`: the host end of its link.
    pub fn machines(&self) -> Vec<(String, String)> {
        let file = std::fs::read_to_string(self.data.join("up.json")).expect("up.json");
        let v: serde_json::Value = serde_json::from_str(&file).expect("up.json is JSON");
        v["machines"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| {
                        (
                            m["name"].as_str().unwrap_or_default().to_owned(),
                            m["link"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Ctrl-C; asserts `vmi up` stops cleanly within a minute.
    pub fn interrupt(self) {
        let status = self.stop();
        assert!(status.success(), "vmi up exited with {status}");
    }

    /// Ctrl-C; how `vmi up` ended (within a minute).
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.process.interrupt(Duration::from_secs(60))
    }
}

/// Starts `vmi up --port 0` with `extra` arguments and waits until it printed the browser
/// terminal's URL (with `--json`: where everything is, as one JSON document, asserted to be its up.json).
pub fn up(data: &Path, extra: &[&str]) -> Up {
    let mut process = ChildGuard::spawn(
        vmi()
            .args(["up", "--port", "0", "--data-dir"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )
    .expect("vmi up starts");
    let stdout = process.child().stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let json = extra.contains(&"--json");
    let mut printed = Vec::new();
    // `vmi up` gives up on its own after a minute per service; its stdout ending is the bound.
    let started = lines.by_ref().map_while(Result::ok).any(|line| {
        let up = line.contains("Stop with Ctrl-C") || (json && line.starts_with('{'));
        printed.push(line);
        up
    });
    assert!(started, "vmi up ended before saying it is up: {printed:?}");
    // Keep draining so the child never blocks on its pipe.
    std::thread::spawn(move || for _ in lines {});
    let file = std::fs::read_to_string(data.join("up.json")).expect("vmi up wrote up.json");
    let v: serde_json::Value = serde_json::from_str(&file).expect("up.json is JSON");
    if json {
        assert_eq!(printed.len(), 1, "with --json, only JSON on stdout: {printed:?}");
        let document: serde_json::Value = serde_json::from_str(&printed[0]).expect("a JSON document");
        assert_eq!(document, v, "vmi up --json prints its up.json");
    }
    let text = |v: &serde_json::Value| v.as_str().expect("a string").to_string();
    let sites = v["sites"].as_array().expect("sites").iter().map(|s| (text(&s["id"]), text(&s["url"]))).collect();
    Up {
        process,
        control: text(&v["control"]),
        controls: v["controls"].as_array().expect("controls").iter().map(text).collect(),
        terminal: text(&v["terminal"]),
        sites,
        token_file: text(&v["token_file"]),
        link_file: text(&v["link_file"]),
        ca_file: text(&v["ca_file"]),
        credentials: text(&v["credentials"]),
        data: data.to_path_buf(),
    }
}

/// A tiny HTTP GET on loopback (the body as text, status 200 asserted), with a bearer
/// token if given. An `https://` loopback URL is asked in plain HTTP, as services answer it from loopback.
pub fn fetch(url: &str, token: Option<&str>) -> String {
    match try_fetch(url, token) {
        Ok(body) => body,
        Err(why) => panic!("{url}: {why}"),
    }
}

/// As [`fetch`], with what went wrong (no answer, or a status other than 200) as the error.
pub fn try_fetch(url: &str, token: Option<&str>) -> Result<String, String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).expect("http(s) url");
    let (host, path) = rest.split_at(rest.find('/').expect("path"));
    let mut stream = std::net::TcpStream::connect(host).map_err(|e| format!("connect: {e}"))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(response);
    }
    Ok(response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

/// The pid of site `id` of the `vmi up` in `data`.
pub fn site_pid(data: &Path, id: &str) -> Option<u32> {
    let dir = data.join(id).display().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if ["site", "--id", id, dir.as_str()].iter().all(|p| args.iter().any(|a| a == p)) {
            return Some(pid);
        }
    }
    None
}

pub fn signal(pid: u32, signal: &str) {
    let sent = std::process::Command::new("kill").args([signal, &pid.to_string()]).status().expect("kill");
    assert!(sent.success(), "kill {signal} {pid}");
}

/// Sends SIGCONT when dropped, so a failing test never leaves a stopped process behind.
pub struct Stopped(pub u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

pub fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A terminal that types one character every 100 ms for about 12 s into the demo phone's notes, and the text.
pub fn typing_terminal(up: &Up, data: &Path) -> (ChildGuard, String) {
    typing_terminal_of(up, data, 120)
}

/// A terminal that types `chars` characters, one every 100 ms, into the demo phone's notes, and the text.
pub fn typing_terminal_of(up: &Up, data: &Path, chars: usize) -> (ChildGuard, String) {
    let text: String = (0..chars).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let mut script = String::from("tap 274 1090\n");
    for c in text.chars() {
        script.push_str(&format!("type {c}\nwait 100ms\n"));
    }
    let script_file = data.join("type.script");
    std::fs::write(&script_file, script).expect("script");
    let terminal = ChildGuard::spawn(
        up.vmi()
            .args(["terminal", "--headless", "--control", &up.control, "--ca", &up.ca_file])
            .args(["--token-file", &up.token_file, "--script"])
            .arg(&script_file)
            .stdout(Stdio::null()),
    )
    .expect("terminal starts");
    (terminal, text)
}

/// The demo phone's placement: site and epoch.
pub fn placement(up: &Up) -> (String, u64) {
    let body = up.control_get("/v1/users/demo/placement");
    let v: serde_json::Value = serde_json::from_str(&body).expect("placement JSON");
    (v["site"].as_str().expect("site").to_owned(), v["epoch"].as_u64().expect("epoch"))
}

/// The URL of site `id` as the control service lists it.
pub fn site_url(up: &Up, id: &str) -> Option<String> {
    let body = up.control_get("/v1/sites");
    let sites: serde_json::Value = serde_json::from_str(&body).expect("sites JSON");
    let site = sites.as_array()?.iter().find(|s| s["id"] == id)?;
    site["healthy"].as_bool().filter(|h| *h).and(site["url"].as_str().map(str::to_owned))
}

/// The `vmi up` sites other than `owner`.
pub fn sites_but(up: &Up, owner: &str) -> Vec<String> {
    up.sites.iter().map(|(id, _)| id.clone()).filter(|id| id != owner).collect()
}

/// Waits until one of the sites `among` holds a standby copy of the demo phone, and returns it.
pub fn wait_for_standby(up: &Up, among: &[String]) -> String {
    let standby = || among.iter().find(|id| up.data.join(id).join("standby/demo/phone.state").exists()).cloned();
    wait_until(Duration::from_secs(30), "a standby copy of the demo phone", || standby().is_some());
    standby().expect("found above")
}

/// Waits (30 s at most) until the demo phone's placement leaves `owner`, asserts it moved to one of `others` at an
/// epoch above `epoch`, says how long it took since `fault` (`what` names the fault), and returns the new site and
/// epoch.
pub fn wait_for_failover(up: &Up, owner: &str, epoch: u64, others: &[String], fault: Instant, what: &str) -> String {
    wait_until(Duration::from_secs(30), "the placement moving to the standby site", || placement(up).0 != owner);
    let took = fault.elapsed();
    let (now_at, now_epoch) = placement(up);
    assert!(now_epoch > epoch && others.contains(&now_at), "placed on {now_at} at epoch {now_epoch}");
    eprintln!("{what}: failed over from {owner} to {now_at} in {took:?}");
    now_at
}
