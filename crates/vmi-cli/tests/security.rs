//! The attacks of issue 10, replayed against a real `vmi up` (a control service and three sites, each its own
//! process) by a caller on the same machine who holds no credential, or only a device's, or a stolen site
//! certificate. Each is refused with the status that says why, and nothing changes: no token is minted, the
//! phone runs where its placement says, its mailbox is intact, and the audit log names the refusals.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use vmi_control_api::http_client::{Method, RequestOptions};
use vmi_control_api::{Caller, ControlClient};

/// What the attacker and the operator can do against one cluster.
struct Cluster {
    up: Up,
    ca: String,
    operator: Caller,
    token: String,
}

impl Cluster {
    fn start(data: &std::path::Path) -> Cluster {
        let up = up(data, &["--no-proxy"]);
        let ca = std::fs::read_to_string(&up.ca_file).expect("CA file");
        let operator = Caller::trusting(&ca).expect("CA").with_bearer(&up.operator_token());
        let token = up.token();
        Cluster { up, ca, operator, token }
    }

    /// Nobody: trusts the CA, presents nothing.
    fn anonymous(&self) -> Caller {
        Caller::trusting(&self.ca).expect("CA")
    }

    /// The demo user's device.
    fn device(&self) -> Caller {
        self.anonymous().with_bearer(&self.token)
    }

    fn control(&self, caller: &Caller) -> ControlClient {
        ControlClient::new(&self.up.control, caller).expect("control client")
    }

    fn site(&self, id: &str) -> String {
        self.up.site(id).to_string()
    }
}

/// One request as `caller`: the status and the body as text.
async fn call(caller: &Caller, method: Method, url: &str, body: Option<(&'static str, &[u8])>) -> (u16, String) {
    let body = body.map(|(kind, bytes)| (kind, bytes.to_vec()));
    let (status, answer) = caller.send(method, url, body, RequestOptions::default()).await.expect("an answer");
    (status, String::from_utf8_lossy(&answer).into_owned())
}

const JSON: &str = "application/json";

/// Writes `head` (request line and headers, no body) to `url`'s address in plain HTTP on loopback and reads the
/// answer's status line and headers (within 5 s): what a server says before it reads a body.
fn raw_head(url: &str, head: &str) -> String {
    let addr = url.split("://").nth(1).expect("url").split('/').next().expect("authority");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    stream.write_all(head.as_bytes()).expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no answer before the body was sent: {e}"),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_is_refused_and_changes_nothing() {
    let data = scratch_dir("security");
    let c = Cluster::start(&data);
    let (site_a, site_b) = (c.site("site-a"), c.site("site-b"));
    let control = c.up.control.clone();
    let anonymous = c.anonymous();
    let device = c.device();

    // The state that must survive: a mail in demo's inbox, demo's devices, demo's placement.
    let mail = serde_json::json!({ "from": "bank@example.com", "subject": "Your code", "body": "472913" });
    let (status, body) = call(
        &c.operator,
        Method::POST,
        &format!("{site_a}/v1/phones/demo/mail"),
        Some((JSON, &serde_json::to_vec(&mail).unwrap())),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let inbox = |caller: Caller| {
        let url = format!("{site_a}/v1/phones/demo/kv/mail.inbox");
        async move { call(&caller, Method::GET, &url, None).await }
    };
    let (status, inbox_before) = inbox(c.operator.clone()).await;
    assert_eq!(status, 200);
    assert!(inbox_before.contains("472913"), "{inbox_before}");
    let operator_control = c.control(&c.operator);
    let devices_before = operator_control.list_devices("demo").await.expect("devices").len();
    let placement_before = operator_control.placement("demo").await.expect("placement");

    // Anyone minting a device token for any user, or a pairing code, or revoking, or publishing an image.
    let json = |v: serde_json::Value| serde_json::to_vec(&v).expect("json");
    for (caller, want) in [(&anonymous, 401), (&device, 403)] {
        let url = format!("{control}/v1/users/demo/devices");
        assert_eq!(
            call(caller, Method::POST, &url, Some((JSON, &json(serde_json::json!({"name": "x"}))))).await.0,
            want
        );
        let url = format!("{control}/v1/users/demo/pair-code");
        assert_eq!(call(caller, Method::POST, &url, None).await.0, want);
        let url = format!("{control}/v1/images/phone/versions");
        assert_eq!(call(caller, Method::POST, &url, Some(("application/wasm", b"\0asm"))).await.0, want);
    }
    assert_eq!(call(&anonymous, Method::POST, &format!("{control}/v1/devices/1/revoke"), None).await.0, 401);

    // A site's operator routes: screen, notes, mail as anyone, restore, cancelling an offline lease, the list.
    let reads = ["screen.png", "kv/notes.text", "kv/mail.inbox", "screen-hash", "logs", "checkpoints"];
    for (caller, want) in [(&anonymous, 401), (&device, 403)] {
        for read in reads {
            let (status, body) = call(caller, Method::GET, &format!("{site_a}/v1/phones/demo/{read}"), None).await;
            assert_eq!(status, want, "GET {read}: {body}");
            assert!(!body.contains("472913"), "{body}");
        }
        assert_eq!(call(caller, Method::GET, &format!("{site_a}/v1/phones"), None).await.0, want, "lease ids");
        for (path, body) in [
            ("mail", json(mail.clone())),
            ("checkpoints/restore", json(serde_json::json!({ "at_ms": 0 }))),
            ("checkout/cancel", Vec::new()),
            ("restart", Vec::new()),
        ] {
            let url = format!("{site_a}/v1/phones/demo/{path}");
            assert_eq!(call(caller, Method::POST, &url, Some((JSON, &body))).await.0, want, "POST {path}");
        }
    }

    // Migrating to an address of one's choosing: the order names a site, never a URL.
    let url = format!("{site_a}/v1/phones/demo/migrate");
    let to_url = json(serde_json::json!({ "to": "site-b", "to_url": "https://127.0.0.1:9" }));
    let (status, body) = call(&c.operator, Method::POST, &url, Some((JSON, &to_url))).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("to_url"), "{body}");
    // To a site nobody registered: refused before a byte of the phone leaves.
    let nowhere = json(serde_json::json!({ "to": "site-x" }));
    let (status, body) = call(&c.operator, Method::POST, &url, Some((JSON, &nowhere))).await;
    assert_ne!(status, 200, "{body}");
    assert!(body.contains("site-x is not a registered site"), "{body}");
    assert_eq!(
        call(&device, Method::POST, &url, Some((JSON, &json(serde_json::json!({ "to": "site-b" }))))).await.0,
        403
    );

    // Pushing a forged phone into another site: its migration endpoint takes only a site with a certificate.
    let head = "GET /v1/migrate HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nvmi-peer: site/site-a\r\n\r\n";
    let answer = raw_head(&site_b, head);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // Impersonating a site: registering its URL, spoofing its heartbeat, writing its checkpoint catalogue.
    let spec = json(serde_json::json!({ "url": "https://127.0.0.1:9", "lat": 60.0, "lon": 24.0, "capacity": 4 }));
    assert_eq!(call(&anonymous, Method::PUT, &format!("{control}/v1/sites/site-a"), Some((JSON, &spec))).await.0, 401);
    let beat = json(serde_json::json!({ "phones": 0 }));
    let url = format!("{control}/v1/sites/site-a/heartbeat");
    assert_eq!(call(&anonymous, Method::POST, &url, Some((JSON, &beat))).await.0, 401);
    // With site-b's own certificate (stolen from its disk): it cannot claim to be site-a, nor act for it.
    let site_b_tls = vmi_trust::Credentials::load(&data.join("site-b").join("tls")).expect("site-b's credentials");
    let as_b_claiming_a = Caller::machine(&site_b_tls, "site/site-a").expect("caller");
    assert_eq!(
        call(&as_b_claiming_a, Method::PUT, &format!("{control}/v1/sites/site-a"), Some((JSON, &spec))).await.0,
        401
    );
    let as_b = Caller::machine(&site_b_tls, "site/site-b").expect("caller");
    assert_eq!(call(&as_b, Method::PUT, &format!("{control}/v1/sites/site-a"), Some((JSON, &spec))).await.0, 403);
    assert_eq!(call(&as_b, Method::POST, &url, Some((JSON, &beat))).await.0, 403);
    let catalogue = format!("{control}/v1/users/demo/checkpoints/site-a");
    assert_eq!(call(&as_b, Method::PUT, &catalogue, Some((JSON, b"[]"))).await.0, 403);
    let record = json(serde_json::json!({
        "user": "demo", "from": "site-a", "to": "site-c", "epoch": 9, "downtime_us": 0, "total_ms": 0.0,
        "bytes": 0, "outcome": "committed", "reason": "forged"
    }));
    assert_eq!(call(&as_b, Method::POST, &format!("{control}/v1/migrations"), Some((JSON, &record))).await.0, 403);
    assert_eq!(call(&anonymous, Method::POST, &format!("{control}/v1/migrations"), Some((JSON, &record))).await.0, 401);
    // Nor slip a made-up checkpoint into demo's history on another site: only the phone's owner copies them.
    let keys = json(serde_json::json!({ "keys": [] }));
    let url = format!("{}/v1/replicas/demo/missing", c.site("site-c"));
    let (status, body) = call(&as_b, Method::POST, &url, Some((JSON, &keys))).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("only the owner copies"), "{body}");
    let sites = operator_control.list_sites().await.expect("sites");
    let a = sites.iter().find(|s| s.site.id == "site-a").expect("site-a");
    assert_eq!(a.site.url, site_a, "site-a's address is its own");

    // A user's position.
    assert_eq!(call(&anonymous, Method::GET, &format!("{control}/v1/users/demo/report"), None).await.0, 401);

    // Cross-origin and DNS rebinding: a page elsewhere posting a form, or reaching the site by another name.
    let head = format!(
        "POST /v1/phones/demo/mail HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n\
         Content-Type: application/json\r\nAuthorization: Bearer {}\r\nContent-Length: 2\r\n\r\n{{}}",
        c.up.operator_token()
    );
    assert!(raw_head(&site_a, &head).starts_with("HTTP/1.1 403"), "a cross-origin mutation, even with a token");
    let head = "POST /v1/phones/demo/mail HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}";
    assert!(raw_head(&site_a, head).starts_with("HTTP/1.1 415"), "a form-typed body");
    // A page elsewhere opening the terminal WebSocket (to feed the lockout with wrong Hellos) is refused; a page
    // served on this machine (the demo, by any site) may open it.
    let upgrade = |origin: &str| {
        format!(
            "GET /v1/terminal HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n\r\n"
        )
    };
    let answer = raw_head(&site_a, &upgrade("https://evil.example"));
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let answer = raw_head(&site_a, &upgrade("http://127.0.0.1:7802"));
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    let answer = raw_head(&site_a, "GET / HTTP/1.1\r\nHost: rebind.evil.example\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    let page = raw_head(&site_a, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").to_ascii_lowercase();
    assert!(page.starts_with("http/1.1 200"), "{page}");
    assert!(page.contains("content-security-policy:") && page.contains("frame-ancestors 'none'"), "{page}");

    // A body is not read before its sender is known, and a body over the cap is refused before it is read.
    let checkin = |auth: &str| {
        format!(
            "POST /v1/phones/demo/checkin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n\
             {auth}Content-Length: 272629760\r\n\r\n"
        )
    };
    assert!(raw_head(&site_a, &checkin("")).starts_with("HTTP/1.1 401"), "no token: 401 before 260 MB");
    let with_token = format!("Authorization: Bearer {}\r\n", c.token);
    assert!(raw_head(&site_a, &checkin(&with_token)).starts_with("HTTP/1.1 413"), "over the cap: 413 unread");

    // Nothing changed.
    assert_eq!(operator_control.list_devices("demo").await.expect("devices").len(), devices_before, "no device minted");
    let placement = operator_control.placement("demo").await.expect("placement");
    assert_eq!((placement.site.as_str(), placement.epoch), (placement_before.site.as_str(), placement_before.epoch));
    assert_eq!(inbox(c.operator.clone()).await, (200, inbox_before), "the mailbox is intact");
    let phones = call(&c.operator, Method::GET, &format!("{site_a}/v1/phones"), None).await.1;
    assert!(phones.contains("\"user\":\"demo\""), "the phone runs where its placement says: {phones}");
    for other in [site_b, c.site("site-c")] {
        let listed = call(&c.operator, Method::GET, &format!("{other}/v1/phones"), None).await.1;
        assert!(!listed.contains("\"user\":\"demo\""), "and nowhere else: {listed}");
    }

    // The audit log names the refusals, the control service's and (sent with their heartbeats) the sites'.
    let audit = |args: &'static [&'static str]| {
        let out =
            c.up.vmi().arg("audit").args(args).args(["--json", "--control", &control]).output().expect("vmi audit");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let refused = audit(&["--principal", "anonymous", "--user", "demo"]);
    assert!(refused.contains("POST /v1/users/demo/devices") && refused.contains("\"status\":401"), "{refused}");
    let mut from_site = String::new();
    for _ in 0..50 {
        from_site = audit(&["--site", "site-a", "--principal", "device:"]);
        if from_site.contains("/v1/phones/demo/screen.png") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(from_site.contains("/v1/phones/demo/screen.png") && from_site.contains("\"status\":403"), "{from_site}");

    c.up.interrupt();
    let _ = std::fs::remove_dir_all(&data);
}

/// Guessing pairing codes and device tokens locks the guesser's address out, with a doubling back-off; the right
/// code still works for its owner once the lockout ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_is_locked_out_and_the_right_code_still_works_after() {
    let data = scratch_dir("security-lockout");
    let c = Cluster::start(&data);
    let control = c.up.control.clone();
    let code = c.control(&c.operator).pair_code("demo").await.expect("a real code").code;
    let anonymous = c.anonymous();
    let pair = |code: String| {
        let (anonymous, control) = (anonymous.clone(), control.clone());
        async move {
            let body = serde_json::to_vec(&serde_json::json!({ "code": code, "name": "guess" })).expect("json");
            call(&anonymous, Method::POST, &format!("{control}/v1/pair"), Some((JSON, &body))).await
        }
    };
    let mut statuses = Vec::new();
    for guess in 0..8 {
        statuses.push(pair(format!("{:05}-{:05}", guess, guess)).await.0);
    }
    assert_eq!(&statuses[..5], [404; 5], "wrong codes are answered as such");
    assert!(statuses[5..].iter().all(|&s| s == 429), "then the address is locked out: {statuses:?}");
    // Locked out, even the right code waits (the lock is on the address, which guessing gave away).
    let (status, _) = pair(code.clone()).await;
    assert_eq!(status, 429);

    // The lockout ends (2 s, doubling per further failure; the guesses above past the threshold count too).
    let mut paired = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, body) = pair(code.clone()).await;
        if status != 429 {
            paired = Some((status, body));
            break;
        }
    }
    let (status, body) = paired.expect("the lockout ends within 20 s");
    assert_eq!(status, 201, "{body}");
    let device: serde_json::Value = serde_json::from_str(&body).expect("json");
    let token = device["token"].as_str().expect("a token");
    let phone = c.control(&c.anonymous()).phone_for_token(token).await.expect("the new device finds its phone");
    assert_eq!(phone.user, "demo");

    c.up.interrupt();
    let _ = std::fs::remove_dir_all(&data);
}
