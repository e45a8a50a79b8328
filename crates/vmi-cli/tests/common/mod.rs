//! What the `vmi` process tests share: `vmi up` as a child process on ports the system picks
//! (killed with everything it started if the test panics), Ctrl-C, and a tiny HTTP GET.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use vmi_testkit::ChildGuard;

pub use vmi_testkit::scratch_dir;

/// The `vmi` binary under test.
pub fn vmi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmi"))
}

/// A running `vmi up` and where its services and files are (from its `up.json`).
pub struct Up {
    process: ChildGuard,
    /// The control service's URL.
    pub control: String,
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
/// terminal's URL.
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
    // `vmi up` gives up on its own after a minute per service; its stdout ending is the bound.
    let started = lines.by_ref().map_while(Result::ok).any(|line| line.contains("Browser terminal for"));
    assert!(started, "vmi up ended before printing the browser terminal URL");
    // Keep draining so the child never blocks on its pipe.
    std::thread::spawn(move || for _ in lines {});
    let file = std::fs::read_to_string(data.join("up.json")).expect("vmi up wrote up.json");
    let v: serde_json::Value = serde_json::from_str(&file).expect("up.json is JSON");
    let text = |v: &serde_json::Value| v.as_str().expect("a string").to_string();
    let sites = v["sites"].as_array().expect("sites").iter().map(|s| (text(&s["id"]), text(&s["url"]))).collect();
    Up {
        process,
        control: text(&v["control"]),
        terminal: text(&v["terminal"]),
        sites,
        token_file: text(&v["token_file"]),
        link_file: text(&v["link_file"]),
        ca_file: text(&v["ca_file"]),
        credentials: text(&v["credentials"]),
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
