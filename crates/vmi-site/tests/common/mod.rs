//! Test harness: a control service and sites in this process on free ports, and a bare
//! protocol-level terminal over a real WebSocket.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use vmi_control_api::ControlClient;
use vmi_engine::{Clock, SystemClock};
use vmi_protocol::{ClientMessage, Input, PROTOCOL_VERSION, Resume, ServerMessage, TouchPhase};
use vmi_site::{SiteConfig, SiteHandle};
pub use vmi_testkit::scratch_dir as scratch;

pub const NOTES: (u16, u16) = (274, 1090);
pub const MAIL: (u16, u16) = (102, 1090);

pub struct Control {
    pub url: String,
    pub client: ControlClient,
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
    /// A handle on a control service started elsewhere in the test.
    pub fn attach(url: &str) -> Control {
        Control { client: ControlClient::new(url).expect("url"), url: url.to_string(), stop: None }
    }
}

pub async fn control() -> Control {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let store = Arc::new(vmi_control::SqliteStore::in_memory().expect("store"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(vmi_control::serve(listener, store, async move {
        let _ = stopped.await;
    }));
    Control { client: ControlClient::new(&url).expect("url"), url, stop: Some(stop) }
}

pub async fn site(control: &Control, id: &str, data_dir: PathBuf) -> SiteHandle {
    site_with_clock(control, id, data_dir, SystemClock::shared()).await
}

pub async fn site_with_clock(control: &Control, id: &str, data_dir: PathBuf, clock: Arc<dyn Clock>) -> SiteHandle {
    vmi_site::start(SiteConfig { clock, ..site_config(control, id, data_dir) }).await.expect("site starts")
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
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub seq: u64,
    pub frame_bytes: usize,
    pub screen: Option<vmi_protocol::display::Screen>,
    pub last_frame: u64,
}

impl Term {
    pub async fn connect(ws_url: &str) -> Term {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url).await.expect("websocket");
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
        self.send(&ClientMessage::Hello { version: PROTOCOL_VERSION, device_token: token.into(), resume, asleep })
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
        self.input(Input::Touch { phase: TouchPhase::Down, x, y }).await;
        self.input(Input::Touch { phase: TouchPhase::Up, x, y }).await
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

pub async fn http_get(url: &str) -> (u16, Vec<u8>) {
    vmi_control_api::http_client::get_bytes(url).await.expect("GET")
}
