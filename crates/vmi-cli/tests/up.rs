//! `vmi up` as a user runs it: control service and three sites as separate processes,
//! a demo phone reachable from a terminal, mail delivered by `vmi mail send`, and Ctrl-C
//! stopping everything with the phone saved, so the next `vmi up` has the same notes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn vmi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmi"))
}

/// A base port with the three after it free right now.
fn free_ports() -> u16 {
    for _ in 0..200 {
        let base = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        if base > 60000 {
            continue;
        }
        let all_free = (0..4).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no four free ports in a row");
}

struct Up {
    child: Child,
    url: String,
    control: String,
}

fn up(data: &std::path::Path, port: u16) -> Up {
    let mut child = vmi()
        .args(["up", "--data-dir"])
        .arg(data)
        .args(["--port", &port.to_string()])
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
    let url = url.expect("vmi up printed the browser terminal URL");
    Up { child, url, control: format!("http://127.0.0.1:{port}") }
}

fn interrupt(up: &mut Up) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(up.child.id() as i32, libc::SIGINT) };
    let started = Instant::now();
    loop {
        if let Some(status) = up.child.try_wait().expect("wait") {
            assert!(status.success(), "vmi up exited with {status}");
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "vmi up did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn up_serves_a_phone_and_ctrl_c_saves_it() {
    let data = std::env::temp_dir().join(format!("vmi-up-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let port = free_ports();
    let mut first = up(&data, port);
    assert!(first.url.starts_with(&format!("http://127.0.0.1:{}/?token=", port + 1)), "{}", first.url);
    let token = first.url.split("token=").nth(1).expect("token").to_string();

    // A native terminal types a note.
    let script = data.join("type.script");
    std::fs::write(
        &script,
        format!("tap 274 1090\ntype Written before Ctrl-C\nscreenshot {}\n", data.join("t.png").display()),
    )
    .expect("script");
    let out = vmi()
        .args(["terminal", "--headless", "--control", &first.control, "--token", &token, "--script"])
        .arg(&script)
        .output()
        .expect("terminal runs");
    assert!(out.status.success(), "terminal: {}", String::from_utf8_lossy(&out.stderr));
    assert!(data.join("t.png").exists());

    // Mail reaches the phone.
    let out = vmi()
        .args(["mail", "send", "--control", &first.control, "--to", "demo", "--subject", "Hi", "--body", "there"])
        .output()
        .expect("mail");
    assert!(out.status.success(), "mail: {}", String::from_utf8_lossy(&out.stderr));

    interrupt(&mut first);
    assert!(data.join("site-a/phones/demo/phone.snap").exists(), "the phone was saved on Ctrl-C");

    // The next `vmi up` brings the same phone back.
    let mut second = up(&data, port);
    let site = second.url.split("/?token=").next().expect("site url").to_string();
    let notes = fetch(&format!("{site}/v1/phones/demo/kv/notes.text"));
    assert_eq!(notes, "Written before Ctrl-C");
    interrupt(&mut second);
    let _ = std::fs::remove_dir_all(&data);
}

/// A tiny HTTP GET on loopback (the body as text).
fn fetch(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_at(rest.find('/').expect("path"));
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}
