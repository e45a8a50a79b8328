//! The terminal against fake sites built here with tokio-tungstenite's server side: the
//! boundary a real site sees (WebSocket, binary messages of docs/PROTOCOL.md).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{WebSocketStream, accept_async};
use vmi_protocol::display::Screen;
use vmi_protocol::{
    ClientMessage, ErrorCode, Input, PROTOCOL_VERSION, Resume, ServerMessage, Tile, TileData, TouchPhase,
    decode_client, encode_server,
};
use vmi_terminal::cli::{TerminalArgs, run_headless};
use vmi_terminal::{Terminal, TerminalError, TerminalEvent, TerminalOptions};

type Server = WebSocketStream<TcpStream>;

const W: u16 = 100;
const H: u16 = 70;
const TOKEN: &str = "token-1";

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/v1/terminal", listener.local_addr().expect("addr"));
    (listener, url)
}

async fn accept(listener: &TcpListener) -> Server {
    let (tcp, _) = listener.accept().await.expect("accept");
    accept_async(tcp).await.expect("websocket handshake")
}

/// The next protocol message, or `None` when the terminal closed.
async fn recv(ws: &mut Server) -> Option<ClientMessage> {
    loop {
        match ws.next().await? {
            Ok(Message::Binary(bytes)) => return Some(decode_client(&bytes).expect("terminal sends valid messages")),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn send(ws: &mut Server, msg: ServerMessage) {
    ws.send(Message::binary(encode_server(&msg))).await.expect("send to terminal");
}

/// A version-1 site's Welcome: inputs are forgotten once applied (most tests here are of that).
fn welcome(last_input_seq: u64, resumed: bool) -> ServerMessage {
    ServerMessage::Welcome { version: 1, width: W, height: H, last_input_seq, resumed }
}

/// A full screen in two solid tiles of one colour.
fn full_screen(rgba: [u8; 4]) -> Vec<Tile> {
    let colour = u32::from_le_bytes(rgba);
    vec![
        Tile { x: 0, y: 0, w: 64, h: H, data: TileData::Solid(colour) },
        Tile { x: 64, y: 0, w: W - 64, h: H, data: TileData::Solid(colour) },
    ]
}

fn touch(phase: TouchPhase, x: u16, y: u16) -> Input {
    Input::Touch { phase, x, y, pointer: 0 }
}

async fn next(t: &mut Terminal) -> TerminalEvent {
    tokio::time::timeout(Duration::from_secs(5), t.next_event()).await.expect("event in time").expect("session open")
}

/// Reads events until one matches, returning those before it too.
async fn until(t: &mut Terminal, want: impl Fn(&TerminalEvent) -> bool) -> Vec<TerminalEvent> {
    let mut seen = Vec::new();
    loop {
        let event = next(t).await;
        let done = want(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

#[tokio::test]
async fn frames_inputs_and_a_redirect_with_resume() {
    let (site_a, url_a) = listen().await;
    let (site_b, url_b) = listen().await;
    let tiles = full_screen([10, 20, 30, 255]);
    let mut expected = Screen::new(W, H);
    expected.apply(&tiles).expect("tiles fit");
    let expected_hash = expected.hash();

    let redirect_to = url_b.clone();
    let first_tiles = tiles.clone();
    let a = tokio::spawn(async move {
        let mut ws = accept(&site_a).await;
        let hello = recv(&mut ws).await.expect("hello");
        assert_eq!(
            hello,
            ClientMessage::Hello {
                version: PROTOCOL_VERSION,
                device_token: TOKEN.into(),
                resume: None,
                asleep: false,
                display: None
            }
        );
        send(&mut ws, welcome(0, false)).await;
        send(&mut ws, ServerMessage::FrameUpdate { seq: 1, tiles: first_tiles }).await;
        let mut got = Vec::new();
        // FrameAck{1}, then the two inputs (Ping messages may interleave).
        while got.iter().filter(|m| matches!(m, ClientMessage::Input { .. })).count() < 2 {
            got.push(recv(&mut ws).await.expect("message"));
        }
        send(&mut ws, ServerMessage::InputAck { seq: 1 }).await;
        send(&mut ws, ServerMessage::Redirect { url: redirect_to }).await;
        while let Some(m) = recv(&mut ws).await {
            got.push(m);
        }
        got
    });
    let b = tokio::spawn(async move {
        let mut ws = accept(&site_b).await;
        let hello = recv(&mut ws).await.expect("hello");
        send(&mut ws, welcome(1, true)).await;
        let resent = recv(&mut ws).await.expect("resent input");
        send(&mut ws, ServerMessage::InputAck { seq: 2 }).await;
        let dot = Tile { x: 5, y: 6, w: 1, h: 1, data: TileData::Solid(u32::from_le_bytes([255, 0, 0, 255])) };
        send(&mut ws, ServerMessage::FrameUpdate { seq: 2, tiles: vec![dot] }).await;
        let ack = recv(&mut ws).await.expect("frame ack");
        send(&mut ws, ServerMessage::Notification { title: "ann".into(), body: "Lunch?".into(), at_ms: 42 }).await;
        let mut rest = Vec::new();
        while let Some(m) = recv(&mut ws).await {
            rest.push(m);
        }
        (hello, resent, ack, rest)
    });

    let mut t = Terminal::connect(&url_a, TOKEN, TerminalOptions::default()).await.expect("connects");
    assert_eq!(next(&mut t).await, TerminalEvent::Connected { width: W, height: H, resumed: false });
    match next(&mut t).await {
        TerminalEvent::Frame { seq: 1, tiles: 2, copies: 0, bytes } => {
            assert!(bytes > 0);
        }
        other => panic!("expected frame 1, got {other:?}"),
    }
    let (w, h, rgba) = t.screen();
    assert_eq!((w, h), (W, H));
    assert_eq!(&rgba[..], expected.rgba());
    assert_eq!(t.screen_hash(), expected_hash);

    assert_eq!(t.send_input(touch(TouchPhase::Down, 5, 6)).expect("queued"), 1);
    assert_eq!(t.send_input(touch(TouchPhase::Up, 5, 6)).expect("queued"), 2);

    let seen = until(&mut t, |e| matches!(e, TerminalEvent::Notification { .. })).await;
    let expected_events = [
        TerminalEvent::InputAcked { seq: 1 },
        TerminalEvent::Redirected { url: url_b.clone() },
        TerminalEvent::Connected { width: W, height: H, resumed: true },
        TerminalEvent::InputAcked { seq: 2 },
    ];
    let mut it = seen.iter().filter(|e| !matches!(e, TerminalEvent::Latency { .. } | TerminalEvent::Frame { .. }));
    for want in &expected_events {
        assert_eq!(it.next(), Some(want), "events: {seen:?}");
    }
    assert!(seen.iter().any(|e| matches!(e, TerminalEvent::Frame { seq: 2, tiles: 1, .. })), "{seen:?}");
    assert_eq!(
        seen.last(),
        Some(&TerminalEvent::Notification { title: "ann".into(), body: "Lunch?".into(), at_ms: 42 })
    );
    let (_, _, rgba) = t.screen();
    assert_eq!(&rgba[(6 * usize::from(W) + 5) * 4..][..4], &[255, 0, 0, 255]);

    let stats = t.stats();
    assert_eq!((stats.reconnects, stats.pending_inputs, stats.acked_input, stats.last_frame_seq), (1, 0, 2, 2));
    assert_eq!(stats.url, url_b);
    let energy = t.energy();
    assert!(energy.bytes_up > 0 && energy.bytes_down > 0 && energy.wakeups >= 1, "{energy:?}");
    t.close().await;

    let got_a = a.await.expect("site a");
    assert_eq!(got_a[0], ClientMessage::FrameAck { seq: 1 });
    let inputs: Vec<_> = got_a.iter().filter(|m| matches!(m, ClientMessage::Input { .. })).collect();
    assert_eq!(
        inputs,
        [
            &ClientMessage::Input { seq: 1, input: touch(TouchPhase::Down, 5, 6) },
            &ClientMessage::Input { seq: 2, input: touch(TouchPhase::Up, 5, 6) },
        ]
    );

    let (hello, resent, ack, rest) = b.await.expect("site b");
    assert_eq!(
        hello,
        ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            device_token: TOKEN.into(),
            resume: Some(Resume { last_frame_seq: 1, screen_hash: expected_hash }),
            asleep: false,
            display: None,
        }
    );
    // Input 1 was acknowledged by site A and Welcome said 1 is applied: only 2 is resent.
    assert_eq!(resent, ClientMessage::Input { seq: 2, input: touch(TouchPhase::Up, 5, 6) });
    assert_eq!(ack, ClientMessage::FrameAck { seq: 2 });
    assert!(rest.iter().all(|m| !matches!(m, ClientMessage::Input { .. })), "{rest:?}");
}

#[tokio::test]
async fn a_refused_token_fails_connect() {
    let (site, url) = listen().await;
    let server = tokio::spawn(async move {
        let mut ws = accept(&site).await;
        recv(&mut ws).await.expect("hello");
        send(&mut ws, ServerMessage::Error { code: ErrorCode::Unauthorized, message: "unknown token".into() }).await;
    });
    let e = Terminal::connect(&url, "bad", TerminalOptions::default()).await.unwrap_err();
    assert!(matches!(&e, TerminalError::Site { code: ErrorCode::Unauthorized, message } if message == "unknown token"));
    assert!(e.is_fatal());
    assert_eq!(e.exit_code(), 3);
    server.await.expect("site");
}

/// A refusal whose Error message was lost: the close code alone (4001) says Unauthorized,
/// which is final.
#[tokio::test]
async fn a_close_code_alone_says_why() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let (site, url) = listen().await;
    let server = tokio::spawn(async move {
        let mut ws = accept(&site).await;
        recv(&mut ws).await.expect("hello");
        let frame = CloseFrame { code: 4001.into(), reason: "Unauthorized".into() };
        let _ = ws.send(Message::Close(Some(frame))).await;
    });
    let e = Terminal::connect(&url, "bad", TerminalOptions::default()).await.unwrap_err();
    assert!(matches!(&e, TerminalError::Site { code: ErrorCode::Unauthorized, .. }), "{e}");
    assert!(e.is_fatal());
    server.await.expect("site");
}

#[tokio::test]
async fn asleep_terminal_gets_notifications_and_reconnects_after_a_drop() {
    let (site, url) = listen().await;
    let server = tokio::spawn(async move {
        let mut ws = accept(&site).await;
        let first = recv(&mut ws).await.expect("hello");
        send(&mut ws, welcome(0, false)).await;
        send(&mut ws, ServerMessage::Notification { title: "t".into(), body: "b".into(), at_ms: 1 }).await;
        // The connection drops (site restart, network): the terminal comes back with Resume.
        drop(ws);
        let mut ws = accept(&site).await;
        let second = recv(&mut ws).await.expect("hello again");
        send(&mut ws, welcome(0, true)).await;
        let wake = recv(&mut ws).await.expect("wake");
        send(&mut ws, ServerMessage::FrameUpdate { seq: 1, tiles: vec![] }).await;
        let ack = recv(&mut ws).await.expect("ack");
        while recv(&mut ws).await.is_some() {}
        (first, second, wake, ack)
    });
    let options = TerminalOptions { asleep: true, ..TerminalOptions::default() };
    let mut t = Terminal::connect(&url, TOKEN, options).await.expect("connects");
    assert!(matches!(next(&mut t).await, TerminalEvent::Connected { resumed: false, .. }));
    assert_eq!(next(&mut t).await, TerminalEvent::Notification { title: "t".into(), body: "b".into(), at_ms: 1 });
    assert!(matches!(next(&mut t).await, TerminalEvent::Error { fatal: false, .. }));
    assert_eq!(next(&mut t).await, TerminalEvent::Connected { width: W, height: H, resumed: true });
    t.wake();
    assert!(matches!(next(&mut t).await, TerminalEvent::Frame { seq: 1, tiles: 0, .. }));
    t.close().await;

    let (first, second, wake, ack) = server.await.expect("site");
    assert!(matches!(first, ClientMessage::Hello { resume: None, asleep: true, .. }));
    let zero_hash = Screen::new(W, H).hash();
    assert!(
        matches!(second, ClientMessage::Hello { resume: Some(Resume { last_frame_seq: 0, screen_hash }), asleep: true, .. } if screen_hash == zero_hash),
        "{second:?}"
    );
    assert_eq!(wake, ClientMessage::Wake);
    assert_eq!(ack, ClientMessage::FrameAck { seq: 1 });
}

/// A site that paints the screen once and then, for every input, acknowledges it and
/// repaints one tile; it answers pings.
async fn simple_site(listener: TcpListener) -> Vec<ClientMessage> {
    let mut ws = accept(&listener).await;
    let mut got = vec![recv(&mut ws).await.expect("hello")];
    send(&mut ws, welcome(0, false)).await;
    send(&mut ws, ServerMessage::FrameUpdate { seq: 1, tiles: full_screen([0, 0, 255, 255]) }).await;
    let mut seq = 1;
    while let Some(m) = recv(&mut ws).await {
        match &m {
            ClientMessage::Input { seq: input, .. } => {
                send(&mut ws, ServerMessage::InputAck { seq: *input }).await;
                seq += 1;
                let tile = Tile { x: 0, y: 0, w: 8, h: 8, data: TileData::Solid(seq as u32) };
                send(&mut ws, ServerMessage::FrameUpdate { seq, tiles: vec![tile] }).await;
            }
            ClientMessage::Ping { nonce } => send(&mut ws, ServerMessage::Pong { nonce: *nonce }).await,
            _ => {}
        }
        got.push(m);
    }
    got
}

#[tokio::test]
async fn headless_run_plays_a_script_and_prints_json_lines() {
    let (listener, url) = listen().await;
    let site = tokio::spawn(simple_site(listener));
    let dir = std::env::temp_dir().join(format!("vmi-terminal-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = dir.join("script.txt");
    let mid = dir.join("mid.png");
    let end = dir.join("end.png");
    std::fs::write(&script, format!("tap 10 20\nkey home\nwait 50ms\nscreenshot {}\ntype hi\n", mid.display()))
        .expect("write script");
    let args = TerminalArgs {
        site_ws: Some(url),
        token: TOKEN.into(),
        headless: true,
        script: Some(script),
        screenshot: Some(end.clone()),
        ..TerminalArgs::default()
    };
    let mut out = Vec::new();
    let summary =
        tokio::time::timeout(Duration::from_secs(20), run_headless(&args, TerminalOptions::default(), &mut out))
            .await
            .expect("finishes")
            .expect("runs");
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["event"].as_str().expect("event")).collect();
    assert_eq!(kinds.first(), Some(&"connected"));
    assert_eq!(kinds.last(), Some(&"summary"));
    assert!(kinds.contains(&"latency"), "{kinds:?}");
    let screenshots: Vec<&str> = lines.iter().filter_map(|l| l["file"].as_str()).collect();
    assert_eq!(screenshots, [mid.display().to_string(), end.display().to_string()]);
    // tap (2 inputs) + key + "hi" (2 keys): 5 inputs, all acknowledged before the end screenshot.
    let acked: Vec<u64> =
        lines.iter().filter(|l| l["event"] == "input_acked").map(|l| l["seq"].as_u64().expect("seq")).collect();
    assert_eq!(acked.last(), Some(&5), "{lines:?}");
    let summary_line = lines.last().expect("summary");
    assert_eq!(summary_line["frames"].as_u64(), Some(summary.frames));
    assert!(summary.frames >= 2);
    assert!(summary_line["bytes_up"].as_u64().expect("bytes_up") > 0);
    assert!(summary_line["wakeups"].as_u64().expect("wakeups") >= 1);
    for png in [&mid, &end] {
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).expect("png exists")));
        let reader = decoder.read_info().expect("valid png");
        assert_eq!((reader.info().width, reader.info().height), (u32::from(W), u32::from(H)));
    }

    let got = site.await.expect("site");
    let inputs = got.iter().filter(|m| matches!(m, ClientMessage::Input { .. })).count();
    assert_eq!(inputs, 5);
    assert!(got.contains(&ClientMessage::Input { seq: 3, input: Input::Key { code: 8, text: None } }));
    assert!(got.contains(&ClientMessage::Input { seq: 4, input: Input::Key { code: 0, text: Some('h') } }));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Version 2: an input applied but not yet durable is kept, and after a failover to a site whose phone came back
/// without it (a lower `last_input_seq`), it is sent again; it goes only once `InputDurable` covers it.
#[tokio::test]
async fn inputs_are_kept_until_durable_and_resent_after_a_failover() {
    let (site_a, url_a) = listen().await;
    let (site_b, url_b) = listen().await;
    let redirect_to = url_b.clone();
    let welcome_v2 = |last_input_seq| ServerMessage::Welcome {
        version: PROTOCOL_VERSION,
        width: W,
        height: H,
        last_input_seq,
        resumed: true,
    };
    let a = tokio::spawn(async move {
        let mut ws = accept(&site_a).await;
        recv(&mut ws).await.expect("hello");
        send(&mut ws, welcome_v2(0)).await;
        for _ in 0..2 {
            assert!(matches!(recv(&mut ws).await, Some(ClientMessage::Input { .. })));
        }
        // Both applied, only the first durable; then the site is gone.
        send(&mut ws, ServerMessage::InputAck { seq: 2 }).await;
        send(&mut ws, ServerMessage::InputDurable { seq: 1 }).await;
        send(&mut ws, ServerMessage::Redirect { url: redirect_to }).await;
        while recv(&mut ws).await.is_some() {}
    });
    let b = tokio::spawn(async move {
        let mut ws = accept(&site_b).await;
        recv(&mut ws).await.expect("hello");
        // The phone came back from its standby copy with input 1 only.
        send(&mut ws, welcome_v2(1)).await;
        let resent = recv(&mut ws).await;
        send(&mut ws, ServerMessage::InputAck { seq: 2 }).await;
        send(&mut ws, ServerMessage::InputDurable { seq: 2 }).await;
        while recv(&mut ws).await.is_some() {}
        resent
    });
    let mut t = Terminal::connect(&url_a, TOKEN, TerminalOptions::default()).await.expect("connects");
    t.send_input(Input::Key { code: 2, text: None }).expect("queued");
    t.send_input(Input::Key { code: 3, text: None }).expect("queued");
    until(&mut t, |e| matches!(e, TerminalEvent::InputDurable { seq: 1 })).await;
    until(&mut t, |e| matches!(e, TerminalEvent::InputDurable { seq: 2 })).await;
    let stats = t.stats();
    assert_eq!((stats.pending_inputs, stats.durable_input, stats.acked_input), (0, 2, 2));
    t.close().await;
    a.await.expect("site a");
    let resent = b.await.expect("site b");
    assert_eq!(resent, Some(ClientMessage::Input { seq: 2, input: Input::Key { code: 3, text: None } }));
}

#[tokio::test]
async fn inputs_the_new_site_already_applied_are_not_resent() {
    let (site_a, url_a) = listen().await;
    let (site_b, url_b) = listen().await;
    let redirect_to = url_b.clone();
    let a = tokio::spawn(async move {
        let mut ws = accept(&site_a).await;
        recv(&mut ws).await.expect("hello");
        send(&mut ws, welcome(0, false)).await;
        // Applies both inputs but moves the phone before acknowledging them.
        for _ in 0..2 {
            assert!(matches!(recv(&mut ws).await, Some(ClientMessage::Input { .. })));
        }
        send(&mut ws, ServerMessage::Redirect { url: redirect_to }).await;
        while recv(&mut ws).await.is_some() {}
    });
    let b = tokio::spawn(async move {
        let mut ws = accept(&site_b).await;
        recv(&mut ws).await.expect("hello");
        send(&mut ws, welcome(2, true)).await;
        let mut got = Vec::new();
        while let Some(m) = recv(&mut ws).await {
            got.push(m);
        }
        got
    });
    let mut t = Terminal::connect(&url_a, TOKEN, TerminalOptions::default()).await.expect("connects");
    t.send_input(Input::Key { code: 2, text: None }).expect("queued");
    t.send_input(Input::Key { code: 3, text: None }).expect("queued");
    let seen = until(&mut t, |e| matches!(e, TerminalEvent::InputAcked { .. })).await;
    assert!(seen.contains(&TerminalEvent::Connected { width: W, height: H, resumed: true }), "{seen:?}");
    assert_eq!(seen.last(), Some(&TerminalEvent::InputAcked { seq: 2 }));
    assert_eq!(t.stats().pending_inputs, 0);
    // The next input continues the numbering.
    assert_eq!(t.send_input(Input::Key { code: 4, text: None }).expect("queued"), 3);
    t.close().await; // flushes input 3 first
    a.await.expect("site a");
    let got = b.await.expect("site b");
    let inputs: Vec<_> = got.iter().filter(|m| matches!(m, ClientMessage::Input { .. })).collect();
    assert_eq!(inputs, [&ClientMessage::Input { seq: 3, input: Input::Key { code: 4, text: None } }]);
}

#[tokio::test]
async fn a_site_may_redirect_instead_of_welcoming() {
    let (site_a, url_a) = listen().await;
    let (site_b, url_b) = listen().await;
    let redirect_to = url_b.clone();
    let a = tokio::spawn(async move {
        let mut ws = accept(&site_a).await;
        recv(&mut ws).await.expect("hello");
        send(&mut ws, ServerMessage::Redirect { url: redirect_to }).await;
    });
    let b = tokio::spawn(async move {
        let mut ws = accept(&site_b).await;
        let hello = recv(&mut ws).await.expect("hello");
        send(&mut ws, welcome(0, false)).await;
        while recv(&mut ws).await.is_some() {}
        hello
    });
    let mut t = Terminal::connect(&url_a, TOKEN, TerminalOptions::default()).await.expect("connects");
    assert_eq!(next(&mut t).await, TerminalEvent::Redirected { url: url_b.clone() });
    assert_eq!(next(&mut t).await, TerminalEvent::Connected { width: W, height: H, resumed: false });
    assert_eq!(t.stats().url, url_b);
    t.close().await;
    a.await.expect("site a");
    assert!(matches!(b.await.expect("site b"), ClientMessage::Hello { resume: None, .. }));
}
