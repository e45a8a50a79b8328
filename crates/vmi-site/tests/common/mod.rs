//! Test harness: a control service and sites in this process on free ports, and a bare
//! protocol-level terminal over a real WebSocket.
#![allow(dead_code)]

pub mod browser;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use std::sync::OnceLock;

use tokio_tungstenite::tungstenite::Message;
use vmi_control::Store;
use vmi_control_api::auth::Principal;
use vmi_control_api::{Caller, ControlClient};
use vmi_engine::{Clock, SystemClock};
use vmi_protocol::{ClientMessage, Input, PROTOCOL_VERSION, Resume, ServerMessage, TouchPhase};
use vmi_site::peer_socket::PeerSocket;
use vmi_site::{SiteConfig, SiteHandle};
pub use vmi_testkit::scratch_dir as scratch;
use vmi_trust::{Authority, Credentials};

pub const NOTES: (u16, u16) = (274, 1090);
pub const MAIL: (u16, u16) = (102, 1090);

/// The provider CA every control service and site of this test binary trusts.
pub fn test_ca() -> &'static Arc<Authority> {
    static CA: OnceLock<Arc<Authority>> = OnceLock::new();
    CA.get_or_init(|| Arc::new(Authority::create("vmi test CA").expect("test CA")))
}

/// A caller that trusts the test CA and presents `token` (a device's or the operator's).
pub fn bearer(token: &str) -> Caller {
    Caller::trusting(test_ca().cert_pem()).expect("CA").with_bearer(token)
}

/// A control service over HTTPS from [`test_ca`], and its operator.
pub struct Control {
    pub url: String,
    /// Acts as the operator.
    pub client: ControlClient,
    /// The operator's token.
    pub operator_token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Control {
    /// A handle on a control service started elsewhere in the test, with the operator token it was given.
    pub fn attach(url: &str, operator_token: &str) -> Control {
        let client = ControlClient::new(url, &bearer(operator_token)).expect("url");
        Control { client, url: url.to_string(), operator_token: operator_token.to_owned(), stop: None }
    }

    /// Stops the control service (a test of what sites and pages do without it).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// The operator, for calls to sites.
    pub fn operator(&self) -> Caller {
        bearer(&self.operator_token)
    }

    /// `GET url` as the operator: the status and the body.
    pub async fn get(&self, url: &str) -> (u16, Vec<u8>) {
        self.operator().get_bytes(url).await.expect("GET")
    }

    /// `POST url` with a JSON body as the operator: the status and the body as text.
    pub async fn post<B: serde::Serialize>(&self, url: &str, body: &B) -> (u16, String) {
        self.operator().post_json(url, body).await.expect("POST")
    }
}

/// Starts a control service on a free loopback port, with an operator credential.
pub async fn control() -> Control {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let store = Arc::new(vmi_control::SqliteStore::in_memory().expect("store"));
    let operator = store.create_credential(&Principal::Operator { name: "test".into() }).expect("operator").token;
    let trust = vmi_control::ServiceTrust::new(test_ca().clone(), &["127.0.0.1"]).expect("certificate");
    let options = vmi_control::ServeOptions { trust: Some(trust), ..vmi_control::ServeOptions::default() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(vmi_control::serve_with(listener, store, options, async move {
        let _ = stopped.await;
    }));
    let mut control = Control::attach(&url, &operator);
    control.stop = Some(stop);
    control
}

pub async fn site(control: &Control, id: &str, data_dir: PathBuf) -> SiteHandle {
    site_with_clock(control, id, data_dir, SystemClock::shared()).await
}

/// A site, once it holds its lease: a (re)started site runs its phones only after its first heartbeat is answered,
/// and a test that talks to it at once must not race that answer.
pub async fn site_with_clock(control: &Control, id: &str, data_dir: PathBuf, clock: Arc<dyn Clock>) -> SiteHandle {
    let site = vmi_site::start(SiteConfig { clock, ..site_config(control, id, data_dir) }).await.expect("site starts");
    vmi_testkit::eventually(Duration::from_secs(30), "the site's first heartbeat answered", async || {
        site.state.holds_lease()
    })
    .await;
    site
}

/// A certificate from [`test_ca`] naming site `id` (and 127.0.0.1, the address terminals dial).
pub fn site_credentials(id: &str) -> Credentials {
    let name = vmi_trust::site_name(id).expect("site id");
    test_ca().credentials_for(&name, &["127.0.0.1"]).expect("site certificate")
}

/// How the tests run a site: port 0 (bound once, by the site), the system clock.
pub fn site_config(control: &Control, id: &str, data_dir: PathBuf) -> SiteConfig {
    SiteConfig {
        id: id.into(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir,
        control_url: control.url.clone(),
        lat: 60.0,
        lon: 25.0,
        capacity: 16,
        clock: SystemClock::shared(),
        heartbeat: Duration::from_secs(1),
        screen: (720, 1280),
        public_url: None,
        checkpoint_every: None,
        retention: vmi_checkpoint::Retention::default(),
        credentials: site_credentials(id),
        limits: vmi_trust::ConnectionLimits::default(),
        history: None,
        hibernation: None,
    }
}

/// Creates `user` with a phone on `site` and returns a device token.
pub async fn user_with_phone(control: &Control, site: &SiteHandle, user: &str) -> String {
    control.client.create_user(user).await.expect("user");
    control.client.set_placement(user, &site.state.id).await.expect("placement");
    site.state.create_phone(user).await.expect("phone");
    control.client.create_device(user, "test device").await.expect("device").token
}

pub struct Term {
    ws: PeerSocket,
    pub seq: u64,
    pub frame_bytes: usize,
    pub screen: Option<vmi_protocol::display::Screen>,
    pub last_frame: u64,
}

impl Term {
    /// Connects to `ws_url` (`wss://` verified against [`test_ca`], or `ws://` on loopback).
    pub async fn connect(ws_url: &str) -> Term {
        let ws = vmi_site::peer_socket::connect(&bearer_less(), ws_url).await.expect("websocket");
        Term { ws, seq: 0, frame_bytes: 0, screen: None, last_frame: 0 }
    }

    pub async fn send(&mut self, m: &ClientMessage) {
        self.ws.send(Message::Binary(vmi_protocol::encode_client(m).into())).await.expect("send");
    }

    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::Binary(bytes.into())).await.expect("send");
    }

    /// The next message, or None when the site closed.
    pub async fn recv(&mut self) -> Option<ServerMessage> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.ws.next()).await.expect("site answers")?;
            match m {
                Ok(Message::Binary(b)) => {
                    let msg = vmi_protocol::decode_server(&b).expect("site sends valid messages");
                    if let ServerMessage::FrameUpdate { seq, tiles } = &msg {
                        self.frame_bytes += b.len();
                        self.last_frame = *seq;
                        if let Some(screen) = &mut self.screen {
                            screen.apply(tiles).expect("tiles apply");
                        }
                        let ack = ClientMessage::FrameAck { seq: *seq };
                        self.send(&ack).await;
                    }
                    return Some(msg);
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    pub async fn hello(&mut self, token: &str, resume: Option<Resume>, asleep: bool) -> ServerMessage {
        self.send(&ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            device_token: token.into(),
            resume,
            asleep,
            display: None,
        })
        .await;
        let m = self.recv().await.expect("an answer to Hello");
        if let ServerMessage::Welcome { width, height, .. } = &m {
            self.screen = Some(vmi_protocol::display::Screen::new(*width, *height));
        }
        m
    }

    /// Waits for a message matching `want`, collecting the others.
    pub async fn until(&mut self, want: impl Fn(&ServerMessage) -> bool) -> (ServerMessage, Vec<ServerMessage>) {
        let mut seen = Vec::new();
        loop {
            let m = self.recv().await.expect("site still talks");
            if want(&m) {
                return (m, seen);
            }
            seen.push(m);
        }
    }

    pub async fn input(&mut self, input: Input) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        self.send(&ClientMessage::Input { seq, input }).await;
        seq
    }

    pub async fn tap(&mut self, (x, y): (u16, u16)) -> u64 {
        self.input(Input::Touch { phase: TouchPhase::Down, x, y, pointer: 0 }).await;
        self.input(Input::Touch { phase: TouchPhase::Up, x, y, pointer: 0 }).await
    }

    pub async fn type_text(&mut self, text: &str) -> u64 {
        let mut last = 0;
        for c in text.chars() {
            last = self.input(Input::Key { code: 0, text: Some(c) }).await;
        }
        last
    }

    /// Waits until input `seq` is acknowledged.
    pub async fn acked(&mut self, seq: u64) {
        self.until(|m| matches!(m, ServerMessage::InputAck { seq: s } if *s >= seq)).await;
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Drops the connection without a WebSocket close: a terminal that vanished.
    pub fn vanish(self) {
        drop(self.ws);
    }
}

/// A caller that trusts the test CA and presents nothing (a terminal before its Hello).
pub fn bearer_less() -> Caller {
    Caller::trusting(test_ca().cert_pem()).expect("CA")
}

/// A caller acting as site `id` (its certificate from [`test_ca`], its claim).
pub fn site_caller(id: &str) -> Caller {
    Caller::machine(&site_credentials(id), &format!("site/{id}")).expect("site caller")
}

/// A client of `control` acting as site `id`.
pub fn site_client(control: &Control, id: &str) -> ControlClient {
    ControlClient::new(&control.url, &site_caller(id)).expect("client")
}

/// The terminal's next event that `want` accepts (the others are passed over), within 20 s.
pub async fn wait_event(
    term: &mut vmi_terminal::Terminal,
    want: impl Fn(&vmi_terminal::TerminalEvent) -> bool,
) -> vmi_terminal::TerminalEvent {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(20), term.next_event())
            .await
            .expect("terminal event in time")
            .expect("session alive");
        if want(&e) {
            return e;
        }
    }
}

/// Terminal options that trust [`test_ca`] for `wss://`.
pub fn terminal_options() -> vmi_terminal::TerminalOptions {
    vmi_terminal::TerminalOptions { caller: bearer_less(), ..vmi_terminal::TerminalOptions::default() }
}

/// Accepts TLS as the holder of `credentials` (a stand-in for a site or the control service).
pub fn tls_acceptor(credentials: &Credentials) -> tokio_rustls::TlsAcceptor {
    tokio_rustls::TlsAcceptor::from(vmi_trust::server_config(credentials).expect("server config"))
}

/// A file holding [`test_ca`]'s certificate (what a terminal is told to trust with `--ca`).
pub fn test_ca_file() -> PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = scratch("test-ca").join("ca.pem");
        std::fs::write(&path, test_ca().cert_pem()).expect("write the CA file");
        path
    })
    .clone()
}
