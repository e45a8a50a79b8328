//! The follow-me demo as a user runs it: `vmi up` puts a delay proxy in front of each site,
//! a headless terminal walks from site-a to site-c (`--route`), reporting where it is, and
//! the phone follows: the terminal is redirected to site-c's proxy, `vmi vm list` shows the
//! phone there, and the walk felt like distance on the way (the round trip to site-a grew
//! as the terminal walked away from it). The browser page's map reads the same through the
//! site's `/v1/demo/*` routes. Ctrl-C stops everything cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn vmi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmi"))
}

/// A base port with the six after it free right now (control, three proxies, three sites).
fn free_ports() -> u16 {
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

/// `vmi up` with a short dwell, and the browser terminal URL it printed.
fn up(data: &std::path::Path, port: u16) -> (Child, String) {
    let mut child = vmi()
        .args(["up", "--data-dir"])
        .arg(data)
        .args(["--port", &port.to_string(), "--placer-dwell-ms", "2000"])
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
    std::thread::spawn(move || for _ in lines {});
    (child, url.expect("vmi up printed the browser terminal URL"))
}

fn interrupt(child: &mut Child) {
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

#[test]
fn the_phone_follows_a_terminal_that_walks_to_another_site() {
    let data = std::env::temp_dir().join(format!("vmi-follow-me-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).expect("data dir");
    let port = free_ports();
    let control = format!("http://127.0.0.1:{port}");
    let (proxy_a, proxy_c) = (format!("http://127.0.0.1:{}", port + 1), format!("http://127.0.0.1:{}", port + 3));
    let (mut up, url) = up(&data, port);
    assert!(url.starts_with(&format!("{proxy_a}/?token=")), "the terminal URL is site-a's proxy: {url}");
    let token = url.split("token=").nth(1).expect("token").to_string();

    // Control knows the sites by their proxies' URLs.
    let sites: serde_json::Value =
        serde_json::from_str(&fetch(&format!("{proxy_a}/v1/demo/sites"), None)).expect("json");
    let site_c = sites.as_array().expect("list").iter().find(|s| s["id"] == "site-c").expect("site-c");
    assert_eq!(site_c["url"], proxy_c.as_str());

    // Stand at site-a for 2 s, walk to site-c in 3 s, stay there.
    let route = data.join("a-to-c.route");
    std::fs::write(&route, "# site-a, then to site-c\n60.2055 24.6559 2\n60.2934 25.0378 3\n60.2934 25.0378 60\n")
        .expect("route");
    let out = vmi()
        .args(["terminal", "--headless", "--control", &control, "--token", &token, "--route"])
        .arg(&route)
        .args(["--duration", "14"])
        .output()
        .expect("terminal runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "terminal: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<serde_json::Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let redirect =
        events.iter().position(|e| e["event"] == "redirected").unwrap_or_else(|| panic!("no redirect in:\n{stdout}"));
    assert_eq!(events[redirect]["url"], format!("ws://127.0.0.1:{}/v1/terminal", port + 3));

    // Every second a position was reported, first near site-a, at last at site-c.
    let positions: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "position").collect();
    assert!(positions.len() >= 10, "{} positions in:\n{stdout}", positions.len());
    assert!(positions.iter().all(|p| p["reported"] == true), "{stdout}");
    assert_eq!((positions[0]["lat"].as_f64(), positions[0]["site"].as_str()), (Some(60.2055), Some("site-a")));
    let last = positions.last().expect("a position");
    assert_eq!((last["lat"].as_f64(), last["site"].as_str()), (Some(60.2934), Some("site-c")));

    // The distance was felt: standing at site-c (23 km away, 2 + 23 ms at the demo's slope)
    // while still connected to site-a, the round trip was well above the few ms near it.
    let far: Vec<f64> = events[..redirect]
        .iter()
        .filter(|e| e["event"] == "position" && e["lat"].as_f64() == Some(60.2934))
        .filter_map(|e| e["rtt_ms"].as_f64())
        .collect();
    assert!(far.iter().any(|&ms| ms >= 20.0), "round trips to site-a from site-c: {far:?}\n{stdout}");

    // The phone runs on site-c now, and the migration is in the log the map shows.
    let list = vmi().args(["vm", "list", "--json", "--control", &control]).output().expect("vm list");
    assert!(list.status.success());
    let phones: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    let demo = phones.as_array().expect("list").iter().find(|p| p["user"] == "demo").expect("demo's phone");
    assert_eq!(demo["site"], "site-c", "{phones}");
    let moves: serde_json::Value =
        serde_json::from_str(&fetch(&format!("{proxy_a}/v1/demo/migrations?user=demo"), None)).expect("json");
    let newest = &moves[0];
    assert_eq!(
        (&newest["from"], &newest["to"], &newest["outcome"]),
        (&"site-a".into(), &"site-c".into(), &"committed".into())
    );
    let me: serde_json::Value =
        serde_json::from_str(&fetch(&format!("{proxy_c}/v1/demo/me"), Some(&token))).expect("json");
    assert_eq!((&me["user"], &me["site"]), (&"demo".into(), &"site-c".into()));

    interrupt(&mut up);
    assert!(data.join("site-c/phones/demo/phone.snap").exists(), "the phone was saved on site-c");
    let _ = std::fs::remove_dir_all(&data);
}

/// A tiny HTTP GET on loopback (the body as text), with a bearer token if given.
fn fetch(url: &str, token: Option<&str>) -> String {
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
