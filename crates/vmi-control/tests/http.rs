//! The HTTP API exercised end to end: a real listener on 127.0.0.1, [`serve`] in a task, [`ControlClient`] (or
//! raw HTTP where the client cannot misbehave) as the caller, and the shutdown future to stop it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vmi_control::{ServeOptions, ServiceTrust, SqliteStore, Store, serve_with};
use vmi_control_api::auth::Principal;
use vmi_control_api::http_client::RequestOptions;
use vmi_control_api::model::HeartbeatRequest;
use vmi_control_api::{Caller, ClientError, ControlClient, MigrationRecord, SiteSpec};
use vmi_trust::Authority;

/// A running control service over HTTPS from a test CA, with an operator credential; [`Server::stop`] shuts it
/// down and checks that `serve` returned cleanly.
struct Server {
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
    authority: Arc<Authority>,
    operator: String,
}

impl Server {
    async fn start(store: Arc<dyn Store>) -> Server {
        Server::start_with_ca(store, Arc::new(Authority::create("test CA").expect("test CA"))).await
    }

    /// A server whose CA is `authority` (a restart keeps the CA, as `vmi control` keeps `pki/`).
    async fn start_with_ca(store: Arc<dyn Store>, authority: Arc<Authority>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let operator = store.create_credential(&Principal::Operator { name: "test".into() }).expect("operator").token;
        let trust = ServiceTrust::new(authority.clone(), &["127.0.0.1"]).expect("service certificate");
        let options = ServeOptions { trust: Some(trust), ..ServeOptions::default() };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_with(listener, store, options, async {
            let _ = stopped.await;
        }));
        Server { addr, stop, task, authority, operator }
    }

    async fn in_memory() -> Server {
        Server::start(Arc::new(SqliteStore::in_memory().expect("in-memory store"))).await
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A client acting as the provider's operator.
    fn client(&self) -> ControlClient {
        let caller = Caller::trusting(self.authority.cert_pem()).expect("CA").with_bearer(&self.operator);
        ControlClient::new(&self.url(), &caller).expect("client for server")
    }

    /// A client acting as site `id`, with a certificate from the CA naming it.
    fn site(&self, id: &str) -> ControlClient {
        let name = vmi_trust::site_name(id).expect("site id");
        let credentials = self.authority.credentials_for(&name, &[]).expect("site certificate");
        let caller = Caller::machine(&credentials, &format!("site/{id}")).expect("site caller");
        ControlClient::new(&self.url(), &caller).expect("client for server")
    }

    /// The operator's `Authorization` header, for raw requests.
    fn operator_header(&self) -> String {
        format!("Authorization: Bearer {}", self.operator)
    }

    async fn stop(self) {
        self.stop.send(()).expect("server task alive");
        let joined = tokio::time::timeout(Duration::from_secs(5), self.task).await.expect("serve stops within 5 s");
        joined.expect("serve task did not panic").expect("serve returned Ok");
    }
}

/// Sends one raw HTTP/1.1 request and returns (status, body).
async fn raw(addr: std::net::SocketAddr, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.expect("write request");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read response");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = response.split_once("\r\n\r\n").expect("end of headers").1.to_owned();
    (status, body)
}

const JSON: &str = "Content-Type: application/json";

fn site(port: u16) -> SiteSpec {
    SiteSpec { url: format!("https://127.0.0.1:{port}"), lat: 48.1, lon: 11.6, capacity: 4 }
}

fn status(result: Result<impl std::fmt::Debug, ClientError>) -> u16 {
    match result {
        Err(err) => err.status().unwrap_or_else(|| panic!("not a status error: {err:?}")),
        Ok(value) => panic!("expected an error status, got {value:?}"),
    }
}

fn temp_db(tag: &str) -> PathBuf {
    vmi_testkit::scratch_dir(&format!("control-{tag}")).join("control.db")
}

fn remove_db(path: &std::path::Path) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test]
async fn healthz_answers_ok_and_unknown_paths_are_json_404() {
    let server = Server::in_memory().await;
    server.client().healthz().await.unwrap();
    assert_eq!(raw(server.addr, "GET", "/healthz", &[], "").await, (200, "ok".to_owned()));
    let (code, body) = raw(server.addr, "GET", "/v2/nothing", &[], "").await;
    assert_eq!(code, 404);
    assert!(body.contains(r#""error":"endpoint \"/v2/nothing\" not found""#), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn users_are_created_once_and_listed() {
    let server = Server::in_memory().await;
    let control = server.client();
    assert_eq!(control.create_user("alice").await.unwrap().name, "alice");
    let (code, body) =
        raw(server.addr, "POST", "/v1/users", &[JSON, &server.operator_header()], r#"{"name":"bob"}"#).await;
    assert_eq!((code, body.as_str()), (201, r#"{"name":"bob"}"#));

    let err = control.create_user("alice").await.unwrap_err();
    assert!(matches!(&err, ClientError::Status { status: 409, body } if body == "user \"alice\" already exists"));
    assert_eq!(status(control.create_user("bad name").await), 400);

    let names: Vec<_> = control.list_users().await.unwrap().into_iter().map(|u| u.name).collect();
    assert_eq!(names, ["alice", "bob"]);
    server.stop().await;
}

#[tokio::test]
async fn devices_are_listed_without_tokens_and_revocable() {
    let server = Server::in_memory().await;
    let control = server.client();
    control.create_user("alice").await.unwrap();
    let device = control.create_device("alice", "pixel").await.unwrap();
    assert_eq!(device.token.len(), 64);
    assert!(device.token.bytes().all(|b| b.is_ascii_hexdigit()));

    let (code, body) = raw(server.addr, "GET", "/v1/users/alice/devices", &[&server.operator_header()], "").await;
    assert_eq!(code, 200);
    assert!(!body.contains("token") && !body.contains(&device.token), "{body}");

    let devices = control.list_devices("alice").await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(
        (devices[0].device_id, devices[0].name.as_str(), devices[0].revoked),
        (device.device_id, "pixel", false)
    );

    control.revoke_device(device.device_id).await.unwrap();
    let (code, body) =
        raw(server.addr, "POST", &format!("/v1/devices/{}/revoke", device.device_id), &[&server.operator_header()], "")
            .await;
    assert_eq!((code, body.as_str()), (204, ""), "revoking twice is fine");
    assert!(control.list_devices("alice").await.unwrap()[0].revoked);

    assert_eq!(status(control.revoke_device(9_999).await), 404);
    assert_eq!(
        raw(server.addr, "POST", "/v1/devices/not-a-number/revoke", &[&server.operator_header()], "").await.0,
        404
    );
    assert_eq!(status(control.create_device("ghost", "pixel").await), 404);
    assert_eq!(status(control.list_devices("ghost").await), 404);
    server.stop().await;
}

#[tokio::test]
async fn revoked_token_is_refused_by_auth_and_phone() {
    let server = Server::in_memory().await;
    let control = server.client();
    control.create_user("alice").await.unwrap();
    server.site("site-a").register_site("site-a", &site(9001)).await.unwrap();
    control.set_placement("alice", "site-a").await.unwrap();
    let device = control.create_device("alice", "pixel").await.unwrap();

    let identity = server.site("site-a").authenticate(&device.token).await.unwrap().unwrap();
    assert_eq!(identity, Principal::Device { user: "alice".into(), device_id: device.device_id });
    assert_eq!(control.phone_for_token(&device.token).await.unwrap().user, "alice");
    // A report: the token's owner is cached now (the reports' route only).
    let auth = format!("Authorization: Bearer {}", device.token);
    let report = r#"{"lat":1,"lon":2}"#;
    assert_eq!(raw(server.addr, "POST", "/v1/phone/report", &[JSON, &auth], report).await.0, 204);

    control.revoke_device(device.device_id).await.unwrap();
    assert_eq!(
        raw(server.addr, "POST", "/v1/phone/report", &[JSON, &auth], report).await.0,
        401,
        "cached, yet refused"
    );
    assert_eq!(server.site("site-a").authenticate(&device.token).await.unwrap(), None);
    let auth_body = format!(r#"{{"token":"{}"}}"#, device.token);
    let (code, body) = raw(server.addr, "POST", "/v1/auth", &[JSON], &auth_body).await;
    assert_eq!(code, 401);
    assert!(body.contains(r#""error""#), "{body}");
    assert_eq!(status(control.phone_for_token(&device.token).await), 401);
    server.stop().await;
}

#[tokio::test]
async fn phone_lookup_needs_a_valid_bearer_token() {
    let server = Server::in_memory().await;
    let control = server.client();
    assert_eq!(status(control.phone_for_token(&"ab".repeat(32)).await), 401);
    assert_eq!(status(control.phone_for_token("short").await), 401);
    assert!(matches!(control.phone_for_token("bad\ntoken").await, Err(ClientError::InvalidRequest(_))));
    assert_eq!(server.site("site-a").authenticate("nonsense").await.unwrap(), None);

    let (code, _) = raw(server.addr, "GET", "/v1/phone", &[], "").await;
    assert_eq!(code, 401, "no Authorization header");
    let (code, _) = raw(server.addr, "GET", "/v1/phone", &["Authorization: Basic YWxpY2U6eA=="], "").await;
    assert_eq!(code, 401, "wrong scheme");
    server.stop().await;
}

#[tokio::test]
async fn terminal_finds_its_phone_and_only_its_own() {
    let server = Server::in_memory().await;
    let control = server.client();
    for user in ["alice", "bob"] {
        control.create_user(user).await.unwrap();
    }
    server.site("site-a").register_site("site-a", &site(9001)).await.unwrap();
    server.site("site-b").register_site("site-b", &site(9002)).await.unwrap();
    let alice = control.create_device("alice", "pixel").await.unwrap();
    let bob = control.create_device("bob", "iphone").await.unwrap();

    control.set_placement("alice", "site-a").await.unwrap();
    // Bob is not placed yet: his token must not fall through to anyone else's phone.
    let err = control.phone_for_token(&bob.token).await.unwrap_err();
    assert!(matches!(&err, ClientError::Status { status: 404, body } if body.contains("bob")), "{err:?}");

    let phone = control.phone_for_token(&alice.token).await.unwrap();
    assert_eq!(phone.user, "alice");
    assert_eq!(phone.site, "site-a");
    assert_eq!(phone.site_url, "https://127.0.0.1:9001");
    assert_eq!(phone.ws_url, "wss://127.0.0.1:9001/v1/terminal");

    control.set_placement("bob", "site-b").await.unwrap();
    let phone = control.phone_for_token(&bob.token).await.unwrap();
    assert_eq!((phone.user.as_str(), phone.site.as_str()), ("bob", "site-b"));
    assert_eq!(phone.ws_url, "wss://127.0.0.1:9002/v1/terminal");
    assert_eq!(control.phone_for_token(&alice.token).await.unwrap().site, "site-a");
    server.stop().await;
}

#[tokio::test]
async fn placement_epoch_increments_on_every_move() {
    let server = Server::in_memory().await;
    let control = server.client();
    control.create_user("alice").await.unwrap();
    server.site("site-a").register_site("site-a", &site(9001)).await.unwrap();
    server.site("site-b").register_site("site-b", &site(9002)).await.unwrap();

    assert_eq!(status(control.placement("alice").await), 404);
    assert_eq!(control.set_placement("alice", "site-a").await.unwrap().epoch, 1);
    assert_eq!(control.set_placement("alice", "site-a").await.unwrap().epoch, 1);
    let moved = control.set_placement("alice", "site-b").await.unwrap();
    assert_eq!((moved.site.as_str(), moved.epoch), ("site-b", 2));

    let info = control.placement("alice").await.unwrap();
    assert_eq!((info.site.as_str(), info.site_url.as_str(), info.epoch), ("site-b", "https://127.0.0.1:9002", 2));

    assert_eq!(status(control.set_placement("alice", "site-z").await), 404);
    assert_eq!(status(control.set_placement("ghost", "site-a").await), 404);
    assert_eq!(status(control.placement("ghost").await), 404);
    server.stop().await;
}

#[tokio::test]
async fn placement_compare_and_set_refuses_a_stale_epoch() {
    let server = Server::in_memory().await;
    let control = server.client();
    control.create_user("alice").await.unwrap();
    server.site("site-a").register_site("site-a", &site(9001)).await.unwrap();
    server.site("site-b").register_site("site-b", &site(9002)).await.unwrap();

    assert_eq!(control.move_placement("alice", "site-a", Some(0)).await.unwrap().epoch, 1, "0 = never placed");
    let moved = control.move_placement("alice", "site-b", Some(1)).await.unwrap();
    assert_eq!((moved.site.as_str(), moved.epoch), ("site-b", 2));

    // A second destination that was handed the same epoch loses the race.
    let err = control.move_placement("alice", "site-a", Some(1)).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Status { status: 409, body }
            if body == "placement of \"alice\" is at epoch 2, not the expected epoch 1"),
        "{err:?}"
    );
    let info = control.placement("alice").await.unwrap();
    assert_eq!((info.site.as_str(), info.epoch), ("site-b", 2), "nothing changed");

    let (code, body) = raw(
        server.addr,
        "PUT",
        "/v1/users/alice/placement",
        &[JSON, &server.operator_header()],
        r#"{"site":"site-a","expected_epoch":7}"#,
    )
    .await;
    assert_eq!(code, 409);
    assert!(body.contains("epoch 2") && body.contains("expected epoch 7"), "{body}");
    let (code, body) = raw(
        server.addr,
        "PUT",
        "/v1/users/alice/placement",
        &[JSON, &server.operator_header()],
        r#"{"site":"site-a","expected_epoch":2}"#,
    )
    .await;
    assert_eq!((code, body.as_str()), (200, r#"{"site":"site-a","epoch":3}"#));
    let (code, _) = raw(
        server.addr,
        "PUT",
        "/v1/users/alice/placement",
        &[JSON, &server.operator_header()],
        r#"{"site":"site-a","expected_epoch":-1}"#,
    )
    .await;
    assert_eq!(code, 400);

    // Without an expected epoch the change is unconditional, as before.
    assert_eq!(control.set_placement("alice", "site-b").await.unwrap().epoch, 4);
    assert_eq!(status(control.move_placement("alice", "site-z", Some(4)).await), 404);
    assert_eq!(status(control.move_placement("ghost", "site-a", Some(0)).await), 404);
    server.stop().await;
}

#[tokio::test]
async fn terminal_reports_need_a_valid_token_and_keep_the_latest() {
    let server = Server::in_memory().await;
    let control = server.client();
    control.create_user("alice").await.unwrap();
    control.create_user("bob").await.unwrap();
    let alice = control.create_device("alice", "pixel").await.unwrap();

    let rtts = |pairs: &[(&str, f64)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
    assert_eq!(status(control.report(&"ab".repeat(32), Some(1.0), Some(2.0), rtts(&[])).await), 401);
    let (code, _) = raw(server.addr, "POST", "/v1/phone/report", &[JSON], r#"{"lat":1,"lon":2}"#).await;
    assert_eq!(code, 401, "no Authorization header");
    assert_eq!(status(control.latest_report("alice").await), 404, "rejected reports are not kept");

    let before = vmi_control::now_ms();
    control.report(&alice.token, Some(48.1), Some(11.6), rtts(&[("site-a", 3.5), ("site-b", 12.0)])).await.unwrap();
    let report = control.latest_report("alice").await.unwrap();
    assert_eq!((report.user.as_str(), report.lat, report.lon), ("alice", Some(48.1), Some(11.6)));
    assert_eq!(report.rtt_ms.get("site-a"), Some(&3.5));
    assert!(report.at_ms >= before && report.at_ms <= vmi_control::now_ms());

    let auth = format!("Authorization: Bearer {}", alice.token);
    let (code, body) = raw(server.addr, "POST", "/v1/phone/report", &[JSON, &auth], r#"{"rtt_ms":{"site-c":1}}"#).await;
    assert_eq!((code, body.as_str()), (204, ""));
    let report = control.latest_report("alice").await.unwrap();
    assert_eq!((report.lat, report.rtt_ms.len()), (None, 1), "the latest report replaces the previous one");

    for bad in [r#"{"lat":1}"#, r#"{"lat":91,"lon":0}"#, r#"{"rtt_ms":{"site-a":-1}}"#, r#"{"rtt_ms":{"a b":1}}"#] {
        let (code, body) = raw(server.addr, "POST", "/v1/phone/report", &[JSON, &auth], bad).await;
        assert_eq!(code, 400, "{bad}: {body}");
    }
    assert_eq!(status(control.latest_report("bob").await), 404);
    server.stop().await;
}

#[tokio::test]
async fn drain_flag_is_stored_listed_and_survives_a_restart() {
    let path = temp_db("drain");
    let server = Server::start(Arc::new(SqliteStore::open(&path).unwrap())).await;
    let control = server.client();
    assert!(!server.site("site-a").register_site("site-a", &site(9001)).await.unwrap().site.draining);
    server.site("site-b").register_site("site-b", &site(9002)).await.unwrap();
    assert!(control.drain_site("site-a").await.unwrap().site.draining);
    let (code, body) = raw(server.addr, "GET", "/v1/sites", &[&server.operator_header()], "").await;
    assert_eq!(code, 200);
    assert!(body.contains(r#""id":"site-a","url":"https://127.0.0.1:9001""#) && body.contains(r#""draining":true"#));
    assert_eq!(status(control.drain_site("site-z").await), 404);
    server.stop().await;

    let server = Server::start(Arc::new(SqliteStore::open(&path).unwrap())).await;
    let control = server.client();
    let drained: Vec<_> = control.list_sites().await.unwrap().into_iter().map(|s| s.site.draining).collect();
    assert_eq!(drained, [true, false]);
    assert!(!control.undrain_site("site-a").await.unwrap().site.draining);
    assert!(!control.list_sites().await.unwrap()[0].site.draining);
    assert_eq!(status(control.undrain_site("site-z").await), 404);
    server.stop().await;
    remove_db(&path);
}

#[tokio::test]
async fn migrations_are_logged_and_listed_newest_first() {
    let server = Server::in_memory().await;
    let control = server.client();
    control.create_user("alice").await.unwrap();
    control.create_user("bob").await.unwrap();
    let record = |user: &str, to: &str, outcome: &str| MigrationRecord {
        user: user.into(),
        from: "site-a".into(),
        to: to.into(),
        epoch: 2,
        downtime_us: 1_200,
        total_ms: 85.5,
        bytes: 3 << 20,
        outcome: outcome.into(),
        reason: "closer: 9.0 ms -> 3.0 ms".into(),
    };
    let first = server.site("site-a").record_migration(&record("alice", "site-b", "aborted")).await.unwrap();
    server.site("site-a").record_migration(&record("bob", "site-b", "committed")).await.unwrap();
    let third = server.site("site-a").record_migration(&record("alice", "site-c", "committed")).await.unwrap();
    assert_eq!(third.record, record("alice", "site-c", "committed"));
    assert!(third.id > first.id && third.at_ms >= first.at_ms);

    let alice = control.migrations(Some("alice")).await.unwrap();
    assert_eq!(alice, [third.clone(), first]);
    let everyone: Vec<_> = control.migrations(None).await.unwrap().into_iter().map(|m| m.record.user).collect();
    assert_eq!(everyone, ["alice", "bob", "alice"]);

    let (code, body) =
        raw(server.addr, "GET", "/v1/migrations?user=alice&limit=1", &[&server.operator_header()], "").await;
    assert_eq!(code, 200);
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["to"], "site-c");
    assert_eq!(listed[0]["outcome"], "committed");
    assert_eq!(listed[0]["downtime_us"], 1_200);
    for bad in ["limit=0", "limit=1001", "limit=many"] {
        let (code, body) =
            raw(server.addr, "GET", &format!("/v1/migrations?{bad}"), &[&server.operator_header()], "").await;
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(body.contains(r#""error""#), "{body}");
    }

    assert_eq!(status(control.migrations(Some("ghost")).await), 404);
    assert_eq!(status(server.site("site-a").record_migration(&record("ghost", "site-b", "committed")).await), 404);
    assert_eq!(status(server.site("site-a").record_migration(&record("alice", "site-b", "maybe")).await), 400);
    server.stop().await;
}

#[tokio::test]
async fn sites_register_heartbeat_and_report_health() {
    let server = Server::in_memory().await;
    let control = server.client();
    let registered = server.site("site-a").register_site("site-a", &site(9001)).await.unwrap();
    assert!(!registered.healthy);
    assert_eq!((registered.site.capacity, registered.site.phones), (4, 0));
    server.site("site-b").register_site("site-b", &site(9002)).await.unwrap();

    server.site("site-a").heartbeat("site-a", 3).await.unwrap();
    let sites = control.list_sites().await.unwrap();
    let ids: Vec<_> = sites.iter().map(|s| (s.site.id.as_str(), s.healthy, s.site.phones)).collect();
    assert_eq!(ids, [("site-a", true, 3), ("site-b", false, 0)]);

    let (code, body) = raw(server.addr, "GET", "/v1/sites", &[&server.operator_header()], "").await;
    assert_eq!(code, 200);
    assert!(body.contains(r#""healthy":true"#) && body.contains(r#""url":"https://127.0.0.1:9001""#), "{body}");

    assert_eq!(status(server.site("site-z").heartbeat("site-z", 1).await), 404);
    // A site names the version of the list of placed users it holds: the answer repeats the list only once it
    // changed (a site of 100,000 phones heartbeats every second).
    control.create_user("alice").await.unwrap();
    control.set_placement("alice", "site-a").await.unwrap();
    let beat = |placed_version| HeartbeatRequest { phones: 1, degraded: None, placed_version };
    let full = server.site("site-a").heartbeat_with("site-a", &beat(None)).await.unwrap();
    assert_eq!((full.placed.as_slice(), full.placed_unchanged), (&["alice".to_owned()][..], false));
    let same = server.site("site-a").heartbeat_with("site-a", &beat(Some(full.placed_version))).await.unwrap();
    assert!(same.placed_unchanged && same.placed.is_empty(), "{same:?}");
    assert_eq!(same.placed_version, full.placed_version);
    control.set_placement("alice", "site-b").await.unwrap();
    let moved = server.site("site-a").heartbeat_with("site-a", &beat(Some(full.placed_version))).await.unwrap();
    assert!(!moved.placed_unchanged && moved.placed.is_empty() && moved.placed_version != full.placed_version);
    // Re-registering, a site may move its URL but not its position or capacity (they steer phones and checkpoint
    // copies to it); the operator may.
    let moved_url = SiteSpec { url: "https://127.0.0.1:9011".into(), ..site(9001) };
    assert_eq!(server.site("site-a").register_site("site-a", &moved_url).await.unwrap().site.url, moved_url.url);
    let nearer = SiteSpec { lat: 52.5, ..moved_url.clone() };
    assert_eq!(status(server.site("site-a").register_site("site-a", &nearer).await), 403);
    let bigger = SiteSpec { capacity: 4000, ..moved_url.clone() };
    assert_eq!(status(server.site("site-a").register_site("site-a", &bigger).await), 403);
    assert_eq!(control.register_site("site-a", &nearer).await.unwrap().site.lat, 52.5, "the operator may");
    for bad in ["ftp://x", "http://127.0.0.1:9003"] {
        let bad_url = SiteSpec { url: bad.into(), ..site(1) };
        assert_eq!(status(server.site("site-c").register_site("site-c", &bad_url).await), 400, "{bad}");
    }
    let bad_lat = SiteSpec { lat: 100.0, ..site(1) };
    assert_eq!(status(server.site("site-c").register_site("site-c", &bad_lat).await), 400);
    server.stop().await;
}

#[tokio::test]
async fn malformed_json_is_a_400_naming_the_problem() {
    let server = Server::in_memory().await;
    let addr = server.addr;
    let operator = server.operator_header();
    let cases: [(&str, &str); 2] = [(r#"{"name":"#, "EOF"), (r#"{"nom":"alice"}"#, "missing field `name`")];
    for (body, needle) in cases {
        let (code, response) = raw(addr, "POST", "/v1/users", &[JSON, &operator], body).await;
        assert_eq!(code, 400, "{body}: {response}");
        let error: serde_json::Value = serde_json::from_str(&response).unwrap();
        let message = error["error"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message:?} lacks {needle:?}");
    }
    // Site routes, as the site itself (a certificate is needed, so through the client's raw send).
    let site = server.site("site-a");
    let cases: [(Method, &str, &str, &str); 3] = [
        (Method::POST, "/v1/auth", r#"{"token":42}"#, "invalid type"),
        (Method::PUT, "/v1/sites/site-a", r#"{"url":"https://a:1","lat":1,"lon":2,"capacity":-1}"#, "capacity"),
        (Method::POST, "/v1/sites/site-a/heartbeat", "not json", "expected"),
    ];
    for (method, path, body, needle) in cases {
        let url = format!("{}{path}", server.url());
        let sent = Some(("application/json", body.as_bytes().to_vec()));
        let (code, response) = site.caller().send(method.clone(), &url, sent, RequestOptions::default()).await.unwrap();
        let response = String::from_utf8_lossy(&response);
        assert_eq!(code, 400, "{method} {path} {body}: {response}");
        let error: serde_json::Value = serde_json::from_str(&response).unwrap();
        let message = error["error"].as_str().unwrap();
        assert!(message.contains(needle), "{method} {path} {body}: {message:?} lacks {needle:?}");
    }
    let (code, response) = raw(addr, "POST", "/v1/users", &[&operator], r#"{"name":"alice"}"#).await;
    assert_eq!(code, 400, "missing content type");
    assert!(response.contains("Content-Type"), "{response}");
    server.stop().await;
}

#[tokio::test]
async fn restart_on_the_same_file_keeps_users_devices_and_placements() {
    let path = temp_db("restart");
    let server = Server::start(Arc::new(SqliteStore::open(&path).unwrap())).await;
    let control = server.client();
    control.create_user("alice").await.unwrap();
    server.site("site-a").register_site("site-a", &site(9001)).await.unwrap();
    server.site("site-b").register_site("site-b", &site(9002)).await.unwrap();
    control.set_placement("alice", "site-a").await.unwrap();
    control.set_placement("alice", "site-b").await.unwrap();
    let kept = control.create_device("alice", "pixel").await.unwrap();
    let revoked = control.create_device("alice", "old").await.unwrap();
    control.revoke_device(revoked.device_id).await.unwrap();
    server.stop().await;

    let server = Server::start(Arc::new(SqliteStore::open(&path).unwrap())).await;
    let control = server.client();
    assert_eq!(control.list_users().await.unwrap().len(), 1);
    assert_eq!(status(control.create_user("alice").await), 409);
    let devices = control.list_devices("alice").await.unwrap();
    assert_eq!(devices.iter().map(|d| d.revoked).collect::<Vec<_>>(), [false, true]);
    let principal = server.site("site-a").authenticate(&kept.token).await.unwrap().unwrap();
    assert_eq!(principal.device_user(), Some("alice"));
    assert_eq!(server.site("site-a").authenticate(&revoked.token).await.unwrap(), None);
    let info = control.placement("alice").await.unwrap();
    assert_eq!((info.site.as_str(), info.epoch), ("site-b", 2));
    assert_eq!(control.set_placement("alice", "site-a").await.unwrap().epoch, 3);
    assert_eq!(control.phone_for_token(&kept.token).await.unwrap().ws_url, "wss://127.0.0.1:9001/v1/terminal");
    server.stop().await;
    remove_db(&path);
}

#[tokio::test]
async fn client_reports_connect_failure_and_timeout() {
    // A port held by a socket that never listens: connecting is refused, and no one else can take the port.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let control =
        ControlClient::new(&format!("http://{}", closed.local_addr().unwrap()), &Caller::anonymous()).unwrap();
    assert!(matches!(control.healthz().await, Err(ClientError::Connect { .. })));
    drop(closed);

    // A listener that accepts but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        tokio::select! {
            _ = async { loop { held.push(silent.accept().await); } } => {}
            _ = stopped => {}
        }
    });
    let control = ControlClient::new(&format!("http://{addr}"), &Caller::anonymous())
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    assert!(matches!(control.list_users().await, Err(ClientError::Timeout(_))));
    stop.send(()).unwrap();
    holder.await.unwrap();
}

#[tokio::test]
async fn serve_stops_when_the_shutdown_future_completes() {
    let server = Server::in_memory().await;
    let addr = server.addr;
    server.client().healthz().await.unwrap();
    server.stop().await;
    assert!(TcpStream::connect(addr).await.is_err(), "listener is closed after shutdown");
}

/// A tenant admin acts only within their tenant: users, devices and pairing codes of their own users; another
/// tenant's users, the operator's routes and the audit log are refused with 403, and nothing is created.
#[tokio::test]
async fn a_tenant_admin_acts_only_within_the_tenant() {
    let server = Server::in_memory().await;
    let operator = server.client();
    for name in ["acme", "beta"] {
        let req =
            vmi_control_api::TenantRequest { name: name.into(), max_phones: None, max_memory_bytes: None, image: None };
        operator.create_tenant(&req).await.unwrap();
    }
    operator.create_user_in("bea", Some("beta")).await.unwrap();
    let admin = operator.create_tenant_admin("acme", "it").await.unwrap();
    assert_eq!(admin.principal, Principal::TenantAdmin { tenant: "acme".into(), name: "it".into() });
    let acme = operator.as_bearer(&admin.token);

    assert_eq!(acme.create_user("ann").await.unwrap().tenant.as_deref(), Some("acme"), "in their tenant by default");
    assert_eq!(status(acme.create_user_in("bob", Some("beta")).await), 403);
    acme.create_device("ann", "pixel").await.unwrap();
    acme.pair_code("ann").await.unwrap();
    assert_eq!(status(acme.create_device("bea", "pixel").await), 403, "another tenant's user");
    assert_eq!(status(acme.list_devices("bea").await), 403);
    assert_eq!(status(acme.pair_code("bea").await), 403);
    assert_eq!(status(acme.drain_site("site-a").await), 403, "an operator's route");
    assert_eq!(status(acme.audit(&Default::default()).await), 403);
    assert_eq!(status(acme.join_token("site-z").await), 403);

    let users: Vec<_> = operator.list_users().await.unwrap().into_iter().map(|u| u.name).collect();
    assert_eq!(users, ["ann", "bea"], "bob was not created");
    assert!(operator.list_devices("bea").await.unwrap().is_empty(), "no device minted for bea");
    server.stop().await;
}

/// A site enrolling with a join token gets a certificate naming it and its addresses, never another machine: a
/// host in the identity namespace (`control.vmi`, another site) is refused, and the token is not spent by it.
#[tokio::test]
async fn an_enrolling_site_cannot_have_itself_certified_as_another_machine() {
    let server = Server::in_memory().await;
    let operator = server.client();
    let join = operator.join_token("site-m").await.unwrap();
    let key = vmi_trust::KeyPair::generate().unwrap();
    let public_key: String = key.public_key().as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let anonymous = ControlClient::new(&server.url(), &Caller::trusting(server.authority.cert_pem()).unwrap()).unwrap();
    for reserved in ["control.vmi", "site-a.site.vmi"] {
        let request = vmi_control_api::auth::EnrollRequest {
            token: join.token.clone(),
            public_key: public_key.clone(),
            hosts: vec!["127.0.0.1".into(), reserved.into()],
        };
        assert_eq!(status(anonymous.enroll("site-m", &request).await), 400, "{reserved}");
    }
    let request =
        vmi_control_api::auth::EnrollRequest { token: join.token, public_key, hosts: vec!["127.0.0.1".into()] };
    let enrolled = anonymous.enroll("site-m", &request).await.expect("the token still works");
    assert!(enrolled.cert_pem.contains("BEGIN CERTIFICATE"));
    server.stop().await;
}

/// The value of the sample whose line starts with `name` (labels included), if there is one.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_count_what_the_service_saw_and_only_the_operator_reads_them() {
    let server = Server::in_memory().await;
    let control = server.client();
    let tenant =
        vmi_control_api::tenants::TenantRequest { name: "acme".into(), max_phones: Some(1), ..Default::default() };
    control.create_tenant(&tenant).await.unwrap();
    control.create_user_in("alice", Some("acme")).await.unwrap();
    control.create_user_in("bob", Some("acme")).await.unwrap();
    let site_a = server.site("site-a");
    site_a.register_site("site-a", &site(9)).await.unwrap();
    site_a.heartbeat("site-a", 1).await.unwrap();
    site_a.admit("alice", 1 << 20).await.unwrap();
    assert_eq!(status(site_a.admit("bob", 1 << 20).await), 403, "over acme's quota");
    let record = MigrationRecord {
        user: "alice".into(),
        from: "site-a".into(),
        to: "site-b".into(),
        epoch: 2,
        downtime_us: 1_500,
        total_ms: 80.0,
        bytes: 1 << 20,
        outcome: "committed".into(),
        reason: String::new(),
    };
    site_a.record_migration(&record).await.unwrap();

    let (code, text) = raw(server.addr, "GET", "/metrics", &[&server.operator_header()], "").await;
    assert_eq!(code, 200, "{text}");
    assert_eq!(sample(&text, r#"vmi_control_admissions_total{outcome="admitted"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"vmi_control_admissions_total{outcome="refused"}"#), Some(1.0));
    assert_eq!(sample(&text, "vmi_control_heartbeats_total"), Some(1.0));
    assert_eq!(sample(&text, r#"vmi_control_migrations_total{outcome="committed"}"#), Some(1.0));
    assert_eq!(sample(&text, "vmi_control_migration_downtime_seconds_count"), Some(1.0));
    assert_eq!(sample(&text, "vmi_control_migration_downtime_seconds_sum"), Some(0.0015));
    // 1.5 ms lands in the bucket up to 1.6 ms, not the one below.
    assert_eq!(sample(&text, r#"vmi_control_migration_downtime_seconds_bucket{le="0.0008"}"#), Some(0.0));
    assert_eq!(sample(&text, r#"vmi_control_migration_downtime_seconds_bucket{le="0.0016"}"#), Some(1.0));
    assert_eq!(sample(&text, r#"vmi_control_sites{state="healthy"}"#), Some(1.0));
    assert_eq!(sample(&text, r#"vmi_control_site_phones{site="site-a"}"#), Some(1.0));
    assert_eq!(sample(&text, r#"vmi_control_tenant_phones{tenant="acme"}"#), Some(1.0));
    assert!(
        sample(&text, r#"vmi_http_requests_total{route="/v1/users/{user}/admit",method="POST",status="403"}"#)
            == Some(1.0),
        "{text}"
    );
    assert!(!text.contains("alice") && !text.contains("bob"), "no user in any label");
    assert!(sample(&text, "process_cpu_seconds_total").is_some());

    // Nobody else reads them: no credentials, a site.
    let (code, _) = raw(server.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(code, 401);
    let (code, _) = site_a.caller().get_bytes(&format!("{}/metrics", server.url())).await.unwrap();
    assert_eq!(code, 403);
    // Ready: the store answers.
    let (code, body) = raw(server.addr, "GET", "/readyz", &[], "").await;
    assert_eq!(code, 200, "{body}");
    server.stop().await;
}

/// The API reference walks the router: every operation `GET /openapi.json` describes is served at its path with its
/// method (no 405, no fallback 404), and the document served is the one the code builds.
#[tokio::test]
async fn every_route_the_reference_describes_is_served() {
    let server = Server::in_memory().await;
    let (code, body) = raw(server.addr, "GET", "/openapi.json", &[], "").await;
    assert_eq!(code, 200);
    let served: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(served, vmi_control::openapi().expect("document"), "served as built");
    let paths = served["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, item) in paths {
        for method in item.as_object().expect("item").keys() {
            operations += 1;
            let concrete = vmi_openapi::concrete(path, "x1");
            let (code, body) = raw(server.addr, &method.to_ascii_uppercase(), &concrete, &[], "").await;
            assert_ne!(code, 405, "{method} {path}: not served with this method");
            assert!(
                !(code == 404 && body.contains("endpoint")),
                "{method} {path}: fell through to the fallback: {body}"
            );
            let access = item[method]["x-vmi-access"].as_str().expect("access");
            if access != "anyone" {
                assert_eq!(code, 401, "{method} {path} ({access}) refuses a caller without credentials: {body}");
            }
        }
    }
    assert!(operations >= 45, "{operations} operations");
    // A path no route serves is the fallback's 404.
    let (code, body) = raw(server.addr, "GET", "/v1/nothing-here", &[], "").await;
    assert!(code == 404 && body.contains("endpoint"), "{code} {body}");
    server.stop().await;
}
