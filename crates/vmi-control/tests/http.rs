//! The HTTP API exercised end to end: a real listener on 127.0.0.1, [`serve`] in a task, [`ControlClient`] (or
//! raw HTTP where the client cannot misbehave) as the caller, and the shutdown future to stop it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vmi_control::{ClientError, ControlClient, SiteSpec, SqliteStore, Store, serve};

/// A running control service; [`Server::stop`] shuts it down and checks that `serve` returned cleanly.
struct Server {
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(store: Arc<dyn Store>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, store, async {
            let _ = stopped.await;
        }));
        Server { addr, stop, task }
    }

    async fn in_memory() -> Server {
        Server::start(Arc::new(SqliteStore::in_memory().expect("in-memory store"))).await
    }

    fn client(&self) -> ControlClient {
        ControlClient::new(&format!("http://{}", self.addr)).expect("client for server")
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
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
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
    SiteSpec { url: format!("http://127.0.0.1:{port}"), lat: 48.1, lon: 11.6, capacity: 4 }
}

fn status(result: Result<impl std::fmt::Debug, ClientError>) -> u16 {
    match result {
        Err(err) => err.status().unwrap_or_else(|| panic!("not a status error: {err:?}")),
        Ok(value) => panic!("expected an error status, got {value:?}"),
    }
}

fn temp_db(tag: &str) -> PathBuf {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_nanos();
    std::env::temp_dir().join(format!("vmi-control-{tag}-{}-{nanos}.db", std::process::id()))
}

fn remove_db(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
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
    let (code, body) = raw(server.addr, "POST", "/v1/users", &[JSON], r#"{"name":"bob"}"#).await;
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

    let (code, body) = raw(server.addr, "GET", "/v1/users/alice/devices", &[], "").await;
    assert_eq!(code, 200);
    assert!(!body.contains("token") && !body.contains(&device.token), "{body}");

    let devices = control.list_devices("alice").await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(
        (devices[0].device_id, devices[0].name.as_str(), devices[0].revoked),
        (device.device_id, "pixel", false)
    );

    control.revoke_device(device.device_id).await.unwrap();
    let (code, body) = raw(server.addr, "POST", &format!("/v1/devices/{}/revoke", device.device_id), &[], "").await;
    assert_eq!((code, body.as_str()), (204, ""), "revoking twice is fine");
    assert!(control.list_devices("alice").await.unwrap()[0].revoked);

    assert_eq!(status(control.revoke_device(9_999).await), 404);
    assert_eq!(raw(server.addr, "POST", "/v1/devices/not-a-number/revoke", &[], "").await.0, 404);
    assert_eq!(status(control.create_device("ghost", "pixel").await), 404);
    assert_eq!(status(control.list_devices("ghost").await), 404);
    server.stop().await;
}

#[tokio::test]
async fn revoked_token_is_refused_by_auth_and_phone() {
    let server = Server::in_memory().await;
    let control = server.client();
    control.create_user("alice").await.unwrap();
    control.register_site("site-a", &site(9001)).await.unwrap();
    control.set_placement("alice", "site-a").await.unwrap();
    let device = control.create_device("alice", "pixel").await.unwrap();

    let identity = control.authenticate(&device.token).await.unwrap().unwrap();
    assert_eq!((identity.user.as_str(), identity.device_id), ("alice", device.device_id));
    assert_eq!(control.phone_for_token(&device.token).await.unwrap().user, "alice");

    control.revoke_device(device.device_id).await.unwrap();
    assert_eq!(control.authenticate(&device.token).await.unwrap(), None);
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
    assert_eq!(control.authenticate("nonsense").await.unwrap(), None);

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
    control.register_site("site-a", &site(9001)).await.unwrap();
    control.register_site("site-b", &site(9002)).await.unwrap();
    let alice = control.create_device("alice", "pixel").await.unwrap();
    let bob = control.create_device("bob", "iphone").await.unwrap();

    control.set_placement("alice", "site-a").await.unwrap();
    // Bob is not placed yet: his token must not fall through to anyone else's phone.
    let err = control.phone_for_token(&bob.token).await.unwrap_err();
    assert!(matches!(&err, ClientError::Status { status: 404, body } if body.contains("bob")), "{err:?}");

    let phone = control.phone_for_token(&alice.token).await.unwrap();
    assert_eq!(phone.user, "alice");
    assert_eq!(phone.site, "site-a");
    assert_eq!(phone.site_url, "http://127.0.0.1:9001");
    assert_eq!(phone.ws_url, "ws://127.0.0.1:9001/v1/terminal");

    control.set_placement("bob", "site-b").await.unwrap();
    let phone = control.phone_for_token(&bob.token).await.unwrap();
    assert_eq!((phone.user.as_str(), phone.site.as_str()), ("bob", "site-b"));
    assert_eq!(phone.ws_url, "ws://127.0.0.1:9002/v1/terminal");
    assert_eq!(control.phone_for_token(&alice.token).await.unwrap().site, "site-a");
    server.stop().await;
}

#[tokio::test]
async fn placement_epoch_increments_on_every_move() {
    let server = Server::in_memory().await;
    let control = server.client();
    control.create_user("alice").await.unwrap();
    control.register_site("site-a", &site(9001)).await.unwrap();
    control.register_site("site-b", &site(9002)).await.unwrap();

    assert_eq!(status(control.placement("alice").await), 404);
    assert_eq!(control.set_placement("alice", "site-a").await.unwrap().epoch, 1);
    assert_eq!(control.set_placement("alice", "site-a").await.unwrap().epoch, 1);
    let moved = control.set_placement("alice", "site-b").await.unwrap();
    assert_eq!((moved.site.as_str(), moved.epoch), ("site-b", 2));

    let info = control.placement("alice").await.unwrap();
    assert_eq!((info.site.as_str(), info.site_url.as_str(), info.epoch), ("site-b", "http://127.0.0.1:9002", 2));

    assert_eq!(status(control.set_placement("alice", "site-z").await), 404);
    assert_eq!(status(control.set_placement("ghost", "site-a").await), 404);
    assert_eq!(status(control.placement("ghost").await), 404);
    server.stop().await;
}

#[tokio::test]
async fn sites_register_heartbeat_and_report_health() {
    let server = Server::in_memory().await;
    let control = server.client();
    let registered = control.register_site("site-a", &site(9001)).await.unwrap();
    assert!(!registered.healthy);
    assert_eq!((registered.site.capacity, registered.site.phones), (4, 0));
    control.register_site("site-b", &site(9002)).await.unwrap();

    control.heartbeat("site-a", 3).await.unwrap();
    let sites = control.list_sites().await.unwrap();
    let ids: Vec<_> = sites.iter().map(|s| (s.site.id.as_str(), s.healthy, s.site.phones)).collect();
    assert_eq!(ids, [("site-a", true, 3), ("site-b", false, 0)]);

    let (code, body) = raw(server.addr, "GET", "/v1/sites", &[], "").await;
    assert_eq!(code, 200);
    assert!(body.contains(r#""healthy":true"#) && body.contains(r#""url":"http://127.0.0.1:9001""#), "{body}");

    assert_eq!(status(control.heartbeat("site-z", 1).await), 404);
    let bad_url = SiteSpec { url: "ftp://x".into(), ..site(1) };
    assert_eq!(status(control.register_site("site-c", &bad_url).await), 400);
    let bad_lat = SiteSpec { lat: 100.0, ..site(1) };
    assert_eq!(status(control.register_site("site-c", &bad_lat).await), 400);
    server.stop().await;
}

#[tokio::test]
async fn malformed_json_is_a_400_naming_the_problem() {
    let server = Server::in_memory().await;
    let addr = server.addr;
    let cases: [(&str, &str, &str, &str); 5] = [
        ("POST", "/v1/users", r#"{"name":"#, "EOF"),
        ("POST", "/v1/users", r#"{"nom":"alice"}"#, "missing field `name`"),
        ("POST", "/v1/auth", r#"{"token":42}"#, "invalid type"),
        ("PUT", "/v1/sites/site-a", r#"{"url":"http://a:1","lat":1,"lon":2,"capacity":-1}"#, "capacity"),
        ("POST", "/v1/sites/site-a/heartbeat", "not json", "expected"),
    ];
    for (method, path, body, needle) in cases {
        let (code, response) = raw(addr, method, path, &[JSON], body).await;
        assert_eq!(code, 400, "{method} {path} {body}: {response}");
        let error: serde_json::Value = serde_json::from_str(&response).unwrap();
        let message = error["error"].as_str().unwrap();
        assert!(message.contains(needle), "{method} {path} {body}: {message:?} lacks {needle:?}");
    }
    let (code, response) = raw(addr, "POST", "/v1/users", &[], r#"{"name":"alice"}"#).await;
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
    control.register_site("site-a", &site(9001)).await.unwrap();
    control.register_site("site-b", &site(9002)).await.unwrap();
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
    assert_eq!(control.authenticate(&kept.token).await.unwrap().unwrap().device_id, kept.device_id);
    assert_eq!(control.authenticate(&revoked.token).await.unwrap(), None);
    let info = control.placement("alice").await.unwrap();
    assert_eq!((info.site.as_str(), info.epoch), ("site-b", 2));
    assert_eq!(control.set_placement("alice", "site-a").await.unwrap().epoch, 3);
    assert_eq!(control.phone_for_token(&kept.token).await.unwrap().ws_url, "ws://127.0.0.1:9001/v1/terminal");
    server.stop().await;
    remove_db(&path);
}

#[tokio::test]
async fn client_reports_connect_failure_and_timeout() {
    // A port that was just free: nothing listens there.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let control = ControlClient::new(&format!("http://{free}")).unwrap();
    assert!(matches!(control.healthz().await, Err(ClientError::Connect { .. })));

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
    let control = ControlClient::new(&format!("http://{addr}")).unwrap().with_timeout(Duration::from_millis(200));
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
