//! What the `vmi` process tests share: free ports, `vmi up` as a child process, Ctrl-C,
//! and a tiny HTTP GET.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `vmi` binary under test.
pub fn vmi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmi"))
}

/// A base port with the six after it free right now (control, three proxies, three sites).
pub fn free_ports() -> u16 {
    for _ in 0..200 {
        let base = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        if base > 60000 {
            continue;
        }
        let all_free = (0..7).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no seven free ports in a row");
}

/// Starts `vmi up` with `extra` arguments; returns it and the browser terminal URL it printed.
pub fn up(data: &std::path::Path, port: u16, extra: &[&str]) -> (Child, String) {
    let mut child = vmi()
        .args(["up", "--data-dir"])
        .arg(data)
        .args(["--port", &port.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("vmi up starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let started = Instant::now();
    let mut url = None;
    while url.is_none() && started.elapsed() < Duration::from_secs(90) {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.split("Browser terminal for demo:").nth(1) {
            url = Some(rest.trim().to_string());
        }
    }
    // Keep draining so the child never blocks on its pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, url.expect("vmi up printed the browser terminal URL"))
}

/// Ctrl-C to `vmi up`; asserts it stops cleanly within a minute.
pub fn interrupt(child: &mut Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "vmi up exited with {status}");
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "vmi up did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A tiny HTTP GET on loopback (the body as text, status 200 asserted), with a bearer
/// token if given.
pub fn fetch(url: &str, token: Option<&str>) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_at(rest.find('/').expect("path"));
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{url}: {response}");
    response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}
