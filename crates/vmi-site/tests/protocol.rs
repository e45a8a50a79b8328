//! Protocol conformance: a real site driven over a real WebSocket with raw frames, rule by
//! rule as docs/PROTOCOL.md numbers them ("Transport", rules 1–10, "Closing"). Each test
//! says which part of the document it holds the site to.
//!
//! Where a test claims that something was *not* sent, it waits for a later message the
//! site must send after it (a `Pong`, an `InputAck`: both go through the phone task, in
//! order) and asserts on everything before it, rather than sleeping.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use vmi_protocol::{
    CLOSE_NORMAL, ClientMessage, ErrorCode, Input, MAX_SEQ, PROTOCOL_VERSION, Resume, ServerMessage, TouchPhase,
};

/// What the site said, in order, up to and including how it closed.
#[derive(Debug, Default)]
struct Heard {
    messages: Vec<ServerMessage>,
    /// The close frame's code (None: no close frame, the connection just ended).
    close: Option<u16>,
}

/// A terminal that speaks raw WebSocket frames and decodes what comes back.
struct Raw {
    ws: vmi_site::peer_socket::PeerSocket,
}

impl Raw {
    async fn connect(url: &str) -> Raw {
        let ws = vmi_site::peer_socket::connect(&bearer_less(), url).await.expect("websocket");
        Raw { ws }
    }

    async fn send(&mut self, m: &ClientMessage) {
        self.binary(vmi_protocol::encode_client(m)).await;
    }

    async fn binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::Binary(bytes.into())).await.expect("send");
    }

    /// Says Hello (awake, no resume unless given).
    async fn say_hello(&mut self, token: &str, resume: Option<Resume>, asleep: bool) {
        self.send(&ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            device_token: token.into(),
            resume,
            asleep,
            display: None,
        })
        .await;
    }

    /// Says Hello and returns the answer.
    async fn hello(&mut self, token: &str, resume: Option<Resume>, asleep: bool) -> ServerMessage {
        self.say_hello(token, resume, asleep).await;
        self.next().await.expect("an answer to Hello")
    }

    /// The next protocol message; None once the site closed (the close code is kept).
    async fn next_or_close(&mut self) -> Result<ServerMessage, Option<u16>> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.ws.next()).await.expect("the site answers");
            match m {
                Some(Ok(Message::Binary(b))) => {
                    return Ok(vmi_protocol::decode_server(&b).expect("the site sends valid messages"));
                }
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    async fn next(&mut self) -> Option<ServerMessage> {
        self.next_or_close().await.ok()
    }

    /// Everything until the site closes.
    async fn until_closed(&mut self) -> Heard {
        let mut heard = Heard::default();
        loop {
            match self.next_or_close().await {
                Ok(m) => heard.messages.push(m),
                Err(code) => {
                    heard.close = code;
                    return heard;
                }
            }
        }
    }

    /// Messages up to (not including) the one `want` matches, and that one.
    async fn until(&mut self, want: impl Fn(&ServerMessage) -> bool) -> (Vec<ServerMessage>, ServerMessage) {
        let mut before = Vec::new();
        loop {
            let m = self.next().await.expect("the site still talks");
            if want(&m) {
                return (before, m);
            }
            before.push(m);
        }
    }

    /// A Ping and everything the site sent before its Pong: the phone task answers pings
    /// in order, after flushing what it had to send.
    async fn sync(&mut self, nonce: u64) -> Vec<ServerMessage> {
        self.send(&ClientMessage::Ping { nonce }).await;
        let (before, pong) = self.until(|m| matches!(m, ServerMessage::Pong { .. })).await;
        assert_eq!(pong, ServerMessage::Pong { nonce });
        before
    }
}

fn error_of(m: &ServerMessage) -> Option<ErrorCode> {
    match m {
        ServerMessage::Error { code, .. } => Some(*code),
        _ => None,
    }
}

/// The site ended the session with `Error(code)` and the close code that goes with it.
fn assert_closed_with(heard: &Heard, code: ErrorCode) {
    let last = heard.messages.last().unwrap_or_else(|| panic!("no message before the close: {heard:?}"));
    assert_eq!(error_of(last), Some(code), "{heard:?}");
    assert_eq!(heard.close, Some(4000 + u16::from(code.wire())), "close code: {heard:?}");
}

fn frames(messages: &[ServerMessage]) -> Vec<u64> {
    messages
        .iter()
        .filter_map(|m| if let ServerMessage::FrameUpdate { seq, .. } = m { Some(*seq) } else { None })
        .collect()
}

fn key(c: char) -> Input {
    Input::Key { code: 0, text: Some(c) }
}

/// One site with one user whose phone runs there, on the Notes screen so that typing
/// changes pixels.
struct World {
    control: Control,
    site: vmi_site::SiteHandle,
    token: String,
}

async fn world(name: &str) -> World {
    let control = control().await;
    // A manual clock: the status bar's clock never ticks under a test that counts frames.
    let clock = vmi_engine::ManualClock::new(1_700_000_000_000_000_000);
    let site = site_with_clock(&control, "site-a", scratch(&format!("protocol-{name}")), clock).await;
    let token = user_with_phone(&control, &site, "pat").await;
    World { control, site, token }
}

impl World {
    /// A terminal past Hello that has taken and acknowledged its first full frame.
    async fn welcomed(&self) -> Raw {
        let mut t = Raw::connect(&self.site.ws_url()).await;
        assert!(matches!(t.hello(&self.token, None, false).await, ServerMessage::Welcome { .. }));
        let (_, first) = t.until(|m| matches!(m, ServerMessage::FrameUpdate { .. })).await;
        let ServerMessage::FrameUpdate { seq, .. } = first else { unreachable!() };
        t.send(&ClientMessage::FrameAck { seq }).await;
        t
    }

    /// A terminal on the Notes screen, all frames acknowledged, inputs numbered to `seq`.
    async fn in_notes(&self) -> (Raw, u64) {
        let mut t = self.welcomed().await;
        t.send(&ClientMessage::Input {
            seq: 1,
            input: Input::Touch { phase: TouchPhase::Down, x: NOTES.0, y: NOTES.1, pointer: 0 },
        })
        .await;
        t.send(&ClientMessage::Input {
            seq: 2,
            input: Input::Touch { phase: TouchPhase::Up, x: NOTES.0, y: NOTES.1, pointer: 0 },
        })
        .await;
        let mut acked = 0;
        let mut last_frame = 0;
        while acked < 2 {
            match t.next().await.expect("talks") {
                ServerMessage::InputAck { seq } => acked = seq,
                ServerMessage::FrameUpdate { seq, .. } => last_frame = seq,
                _ => {}
            }
        }
        for m in t.sync(1).await {
            if let ServerMessage::FrameUpdate { seq, .. } = m {
                last_frame = seq;
            }
        }
        t.send(&ClientMessage::FrameAck { seq: last_frame }).await;
        (t, 2)
    }

    async fn stop(self) {
        self.site.shutdown().await;
        drop(self.control);
    }
}

// ---- Transport ------------------------------------------------------------------------

/// "A text frame is a protocol error", before Hello and after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_a_text_frame_is_a_protocol_error_before_and_after_hello() {
    let w = world("text").await;
    let mut t = Raw::connect(&w.site.ws_url()).await;
    t.ws.send(Message::Text("hello".into())).await.expect("send");
    assert_closed_with(&t.until_closed().await, ErrorCode::BadMessage);

    let mut t = w.welcomed().await;
    t.ws.send(Message::Text("{}".into())).await.expect("send");
    assert_closed_with(&t.until_closed().await, ErrorCode::BadMessage);
    w.stop().await;
}

/// "A message is at most 16 MiB": above it the site answers Error(BadMessage) and closes
/// (it does not drop the connection); up to it the site reads the message and judges its
/// content (here: bytes after the last field).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_one_size_limit_answered_with_bad_message() {
    let w = world("limit").await;
    let limit = vmi_protocol::wire::MAX_MESSAGE_LEN;
    assert_eq!(limit, 16 << 20, "the document's figure");

    // 1 MiB + 1 (the site's old, undocumented limit): read, and refused for its content.
    let mut t = w.welcomed().await;
    let mut ping = vmi_protocol::encode_client(&ClientMessage::Ping { nonce: 1 });
    ping.resize((1 << 20) + 1, 0);
    t.binary(ping).await;
    let heard = t.until_closed().await;
    assert_closed_with(&heard, ErrorCode::BadMessage);
    let ServerMessage::Error { message, .. } = heard.messages.last().expect("error") else { unreachable!() };
    assert!(message.to_lowercase().contains("trailing"), "{message}");

    // 16 MiB + 1: over the limit, answered as the document says. The frame is written
    // from a task of its own: the site answers without reading it all.
    let t = w.welcomed().await;
    let (mut sink, mut stream) = t.ws.split();
    let writer = tokio::spawn(async move {
        let mut big = vmi_protocol::encode_client(&ClientMessage::Ping { nonce: 2 });
        big.resize(limit + 1, 0);
        let _ = sink.send(Message::Binary(big.into())).await;
    });
    let mut heard = Heard::default();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.next()).await.expect("an answer") {
            Some(Ok(Message::Binary(b))) => heard.messages.push(vmi_protocol::decode_server(&b).expect("valid")),
            Some(Ok(Message::Close(f))) => {
                heard.close = f.map(|f| u16::from(f.code));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    writer.abort();
    assert_closed_with(&heard, ErrorCode::BadMessage);
    let ServerMessage::Error { message, .. } = heard.messages.last().expect("error") else { unreachable!() };
    assert!(message.contains("16777216"), "names the limit: {message}");
    w.stop().await;
}

/// One message may arrive in several WebSocket frames (RFC 6455 fragmentation is the
/// transport's business): the site reassembles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_a_message_split_over_two_frames_is_one_message() {
    let w = world("fragments").await;
    let mut t = Raw::connect(&w.site.ws_url()).await;
    let hello = vmi_protocol::encode_client(&ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        device_token: w.token.clone(),
        resume: None,
        asleep: false,
        display: None,
    });
    let (a, b) = hello.split_at(5);
    let first = Frame::from_payload(
        FrameHeader { is_final: false, opcode: OpCode::Data(Data::Binary), ..FrameHeader::default() },
        Bytes::copy_from_slice(a),
    );
    let second = Frame::from_payload(
        FrameHeader { is_final: true, opcode: OpCode::Data(Data::Continue), ..FrameHeader::default() },
        Bytes::copy_from_slice(b),
    );
    t.ws.send(Message::Frame(first)).await.expect("send");
    t.ws.send(Message::Frame(second)).await.expect("send");
    let answer = t.next().await.expect("answer");
    assert!(matches!(answer, ServerMessage::Welcome { .. }), "{answer:?}");
    w.stop().await;
}

/// "Any decoding error is fatal for the session: the site answers Error(BadMessage) and
/// closes."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_an_undecodable_message_after_hello_ends_the_session() {
    let w = world("undecodable").await;
    let mut t = w.welcomed().await;
    t.binary(vec![0x7f, 1, 2]).await;
    assert_closed_with(&t.until_closed().await, ErrorCode::BadMessage);
    w.stop().await;
}

// ---- Rule 1: Hello first ---------------------------------------------------------------

/// Anything before Hello, or a second Hello, is Error(BadMessage); a bad token is
/// Error(Unauthorized).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_1_hello_first_and_only_once() {
    let w = world("hello-first").await;
    let mut t = Raw::connect(&w.site.ws_url()).await;
    t.send(&ClientMessage::Sleep).await;
    assert_closed_with(&t.until_closed().await, ErrorCode::BadMessage);

    let mut t = w.welcomed().await;
    t.say_hello(&w.token, None, false).await;
    assert_closed_with(&t.until_closed().await, ErrorCode::BadMessage);

    let mut t = Raw::connect(&w.site.ws_url()).await;
    t.say_hello("nope", None, false).await;
    assert_closed_with(&t.until_closed().await, ErrorCode::Unauthorized);
    w.stop().await;
}

/// A site that does not run the phone answers `Redirect` (close 1000) when the control
/// service places it on another site, and `Error(NotHere)` when no site is to run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_1_not_here_redirect_or_not_here() {
    let w = world("not-here").await;
    let b = site(&w.control, "site-b", scratch("protocol-not-here-b")).await;
    let mut t = Raw::connect(&b.ws_url()).await;
    t.say_hello(&w.token, None, false).await;
    let heard = t.until_closed().await;
    assert_eq!(heard.messages, [ServerMessage::Redirect { url: w.site.ws_url() }]);
    assert_eq!(heard.close, Some(CLOSE_NORMAL));

    // A user with a device but no placement: no site runs the phone.
    w.control.client.create_user("quinn").await.expect("user");
    let token = w.control.client.create_device("quinn", "t").await.expect("device").token;
    let mut t = Raw::connect(&b.ws_url()).await;
    t.say_hello(&token, None, false).await;
    assert_closed_with(&t.until_closed().await, ErrorCode::NotHere);
    b.shutdown().await;
    w.stop().await;
}

// ---- Rule 2: versioning ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_2_an_unsupported_version_is_refused() {
    let w = world("version").await;
    let mut t = Raw::connect(&w.site.ws_url()).await;
    let mut hello = vmi_protocol::encode_client(&ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        device_token: w.token.clone(),
        resume: None,
        asleep: false,
        display: None,
    });
    hello[1] = (PROTOCOL_VERSION + 1) as u8;
    t.binary(hello).await;
    assert_closed_with(&t.until_closed().await, ErrorCode::Version);
    w.stop().await;
}

/// A Join is for a move of the joiner's own phone to this site, with that move's ticket, from version 4 on: without
/// a move under way (or with another ticket) it is `NotHere`, with a bad token `Unauthorized`, as version 3
/// `BadMessage`; after a Hello it is out of turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_13_a_join_without_its_move_is_refused() {
    let w = world("join").await;
    let join = |token: &str, version: u16| {
        let mut bytes = vmi_protocol::encode_client(&ClientMessage::Join {
            version: PROTOCOL_VERSION,
            device_token: token.into(),
            ticket: "no-such-ticket".into(),
        });
        bytes[1..3].copy_from_slice(&version.to_le_bytes());
        bytes
    };
    let mut t = Raw::connect(&w.site.ws_url()).await;
    t.binary(join(&w.token, PROTOCOL_VERSION)).await;
    assert_closed_with(&t.until_closed().await, ErrorCode::NotHere);
    let mut t = Raw::connect(&w.site.ws_url()).await;
    t.binary(join("not-a-token", PROTOCOL_VERSION)).await;
    assert_closed_with(&t.until_closed().await, ErrorCode::Unauthorized);
    let mut t = Raw::connect(&w.site.ws_url()).await;
    t.binary(join(&w.token, 3)).await;
    assert_closed_with(&t.until_closed().await, ErrorCode::BadMessage);
    let mut t = Raw::connect(&w.site.ws_url()).await;
    t.hello(&w.token, None, false).await;
    t.binary(join(&w.token, PROTOCOL_VERSION)).await;
    assert_closed_with(&t.until_closed().await, ErrorCode::BadMessage);
    w.stop().await;
}

// ---- Rules 3 and 8: frame numbering and resume ----------------------------------------

/// The first update is 1 without a resume and `last_frame_seq + 1` with one; a resume
/// whose screen matches is answered `resumed: true` and nothing is resent; a
/// `last_frame_seq` above MAX_SEQ is Error(BadMessage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_3_and_8_frame_numbers_and_resume() {
    let w = world("frames").await;
    let mut t = Raw::connect(&w.site.ws_url()).await;
    t.hello(&w.token, None, false).await;
    let (_, first) = t.until(|m| matches!(m, ServerMessage::FrameUpdate { .. })).await;
    let ServerMessage::FrameUpdate { seq: 1, tiles } = first else { panic!("first update is 1: {first:?}") };
    let mut screen = vmi_protocol::display::Screen::new(720, 1280);
    screen.apply(&tiles).expect("apply");

    // Resumed with the same screen: nothing resent, and the next update follows on.
    let resume = Resume { last_frame_seq: 41, screen_hash: screen.hash() };
    let mut r = Raw::connect(&w.site.ws_url()).await;
    let welcome = r.hello(&w.token, Some(resume), false).await;
    assert!(matches!(welcome, ServerMessage::Welcome { resumed: true, .. }), "{welcome:?}");
    assert!(frames(&r.sync(5).await).is_empty(), "a resumed terminal gets no resend");
    r.send(&ClientMessage::Input {
        seq: 1,
        input: Input::Touch { phase: TouchPhase::Down, x: NOTES.0, y: NOTES.1, pointer: 0 },
    })
    .await;
    r.send(&ClientMessage::Input {
        seq: 2,
        input: Input::Touch { phase: TouchPhase::Up, x: NOTES.0, y: NOTES.1, pointer: 0 },
    })
    .await;
    let (_, update) = r.until(|m| matches!(m, ServerMessage::FrameUpdate { .. })).await;
    assert!(matches!(update, ServerMessage::FrameUpdate { seq: 42, .. }), "{update:?}");

    // Not resumed (another screen): a full update numbered from the resume.
    let mut n = Raw::connect(&w.site.ws_url()).await;
    let welcome = n.hello(&w.token, Some(Resume { last_frame_seq: 7, screen_hash: 1 }), false).await;
    assert!(matches!(welcome, ServerMessage::Welcome { resumed: false, .. }), "{welcome:?}");
    let (_, update) = n.until(|m| matches!(m, ServerMessage::FrameUpdate { .. })).await;
    let ServerMessage::FrameUpdate { seq: 8, tiles } = update else { panic!("{update:?}") };
    assert_eq!(tiles.len(), 240, "every tile of a 720x1280 screen");

    let mut bad = Raw::connect(&w.site.ws_url()).await;
    bad.say_hello(&w.token, Some(Resume { last_frame_seq: MAX_SEQ, screen_hash: 0 }), false).await;
    assert_closed_with(&bad.until_closed().await, ErrorCode::BadMessage);
    w.stop().await;
}

// ---- Rules 4 and 6: flow control, sleep and wake ---------------------------------------

/// At most 2 updates un-acked: typing with no acks gets 2 updates, then nothing until an
/// ack, which releases one update with everything coalesced. And rule 4 wins over rule 6:
/// a Wake's update waits for credit too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_4_two_updates_unacked_then_coalesced_and_credit_wins_over_wake() {
    let w = world("credit").await;
    let (mut t, mut seq) = w.in_notes().await;
    let mut sent = Vec::new();
    for c in "abcdef".chars() {
        seq += 1;
        t.send(&ClientMessage::Input { seq, input: key(c) }).await;
        let (before, _) = t.until(|m| matches!(m, ServerMessage::InputAck { seq: s } if *s == seq)).await;
        sent.extend(frames(&before));
    }
    sent.extend(frames(&t.sync(9).await));
    assert_eq!(sent.len(), 2, "two updates outstanding, no more: {sent:?}");

    // Asleep and awake again with no credit: the Wake's update waits.
    t.send(&ClientMessage::Sleep).await;
    t.send(&ClientMessage::Wake).await;
    assert!(frames(&t.sync(10).await).is_empty(), "no credit, no update");
    t.send(&ClientMessage::FrameAck { seq: sent[1] }).await;
    let after = t.sync(11).await;
    assert_eq!(frames(&after), [sent[1] + 1], "one coalesced update once credit is back");
    w.stop().await;
}

/// Asleep: no FrameUpdate, only the rest. Awake: exactly one update (zero tiles if
/// nothing changed), then normal updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_6_asleep_no_frames_awake_exactly_one_update() {
    let w = world("sleep").await;
    let (mut t, mut seq) = w.in_notes().await;
    t.send(&ClientMessage::Sleep).await;
    seq += 1;
    t.send(&ClientMessage::Input { seq, input: key('z') }).await;
    let (before, _) = t.until(|m| matches!(m, ServerMessage::InputAck { .. })).await;
    assert!(frames(&before).is_empty(), "asleep: {before:?}");
    assert!(frames(&t.sync(3).await).is_empty());
    t.send(&ClientMessage::Wake).await;
    let woke = frames(&t.sync(4).await);
    assert_eq!(woke.len(), 1, "exactly one update after Wake: {woke:?}");

    // Wake with nothing changed: still one update, with no tile.
    t.send(&ClientMessage::FrameAck { seq: woke[0] }).await;
    t.send(&ClientMessage::Sleep).await;
    t.send(&ClientMessage::Wake).await;
    let again = t.sync(5).await;
    let updates: Vec<&ServerMessage> =
        again.iter().filter(|m| matches!(m, ServerMessage::FrameUpdate { .. })).collect();
    assert!(matches!(updates.as_slice(), [ServerMessage::FrameUpdate { tiles, .. }] if tiles.is_empty()), "{again:?}");
    w.stop().await;
}

// ---- Rule 5: a static screen costs nothing ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_5_a_static_screen_sends_nothing() {
    let w = world("static").await;
    let (mut t, _) = w.in_notes().await;
    // An input that changes nothing (a key with no text), then a sync.
    t.send(&ClientMessage::Input { seq: 3, input: Input::Key { code: 0, text: None } }).await;
    let (before, _) = t.until(|m| matches!(m, ServerMessage::InputAck { seq: 3 })).await;
    let after = t.sync(6).await;
    assert!(frames(&before).is_empty() && frames(&after).is_empty(), "{before:?} {after:?}");
    w.stop().await;
}

// ---- Rule 7: input numbering -----------------------------------------------------------

/// Inputs are numbered from 1 and never past MAX_SEQ (both refused with BadMessage); a
/// duplicate is acknowledged with the highest applied and not applied again; a gap is
/// accepted (a restore can leave the site's count behind the terminal's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_7_input_numbers() {
    let w = world("inputs").await;
    let (mut t, _) = w.in_notes().await;
    t.send(&ClientMessage::Input { seq: 3, input: key('a') }).await;
    t.send(&ClientMessage::Input { seq: 3, input: key('a') }).await;
    t.send(&ClientMessage::Input { seq: 2, input: key('b') }).await;
    let mut acks = Vec::new();
    while acks.len() < 3 {
        if let ServerMessage::InputAck { seq } = t.next().await.expect("talks") {
            acks.push(seq);
        }
    }
    assert_eq!(acks, [3, 3, 3], "duplicates are acked with the highest applied");
    t.send(&ClientMessage::Input { seq: 10, input: key('c') }).await;
    let (_, ack) = t.until(|m| matches!(m, ServerMessage::InputAck { .. })).await;
    assert_eq!(ack, ServerMessage::InputAck { seq: 10 }, "a gap is applied");
    let (_, body) = w.control.get(&format!("{}/v1/phones/pat/kv/notes.text", w.site.url)).await;
    assert_eq!(String::from_utf8_lossy(&body), "ac", "the duplicate and the old number were not applied");

    t.send(&ClientMessage::Input { seq: MAX_SEQ + 1, input: key('d') }).await;
    assert_closed_with(&t.until_closed().await, ErrorCode::BadMessage);
    let mut z = w.welcomed().await;
    z.send(&ClientMessage::Input { seq: 0, input: key('d') }).await;
    assert_closed_with(&z.until_closed().await, ErrorCode::BadMessage);
    w.stop().await;
}

// ---- Rule 10: keepalive ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_10_ping_is_answered_with_its_nonce() {
    let w = world("ping").await;
    let mut t = w.welcomed().await;
    t.sync(u64::MAX).await;
    w.stop().await;
}

// ---- Closing: revocation, crash, notifications waiting for a terminal ------------------

/// A device revoked mid-session gets Error(Unauthorized) and close 4001 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_revoked_device_is_told_mid_session() {
    let w = world("revoked").await;
    let mut t = w.welcomed().await;
    let devices = w.control.client.list_devices("pat").await.expect("devices");
    w.control.client.revoke_device(devices[0].device_id).await.expect("revoke");
    assert_closed_with(&t.until_closed().await, ErrorCode::Unauthorized);
    w.stop().await;
}

/// A phone serves 16 terminals at once; the 17th gets in, and the terminal idle the longest (not the one that
/// typed last) is closed with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_idlest_terminal_makes_room_for_a_new_one() {
    let w = world("room").await;
    let mut terminals = Vec::new();
    for _ in 0..vmi_site::phone::MAX_SESSIONS {
        let mut t = Raw::connect(&w.site.ws_url()).await;
        assert!(matches!(t.hello(&w.token, None, true).await, ServerMessage::Welcome { .. }));
        terminals.push(t);
    }
    // The first one attached is busy: it types. The second is now the one idle the longest.
    terminals[0].send(&ClientMessage::Input { seq: 1, input: key('x') }).await;
    terminals[0].until(|m| matches!(m, ServerMessage::InputAck { seq: 1 })).await;

    let mut newest = Raw::connect(&w.site.ws_url()).await;
    assert!(matches!(newest.hello(&w.token, None, true).await, ServerMessage::Welcome { .. }), "the 17th gets in");
    let heard = terminals[1].until_closed().await;
    assert_closed_with(&heard, ErrorCode::Internal);
    let said = heard.messages.iter().find_map(|m| match m {
        ServerMessage::Error { message, .. } => Some(message.clone()),
        _ => None,
    });
    assert!(said.as_deref().is_some_and(|m| m.contains("idle the longest")), "{said:?}");
    // The busy one is still served.
    terminals[0].send(&ClientMessage::Input { seq: 2, input: key('y') }).await;
    terminals[0].until(|m| matches!(m, ServerMessage::InputAck { seq: 2 })).await;
    w.stop().await;
}

/// Before their Hello, callers are unknown and may each send a large message: only so many at once. One more is
/// told 503; once one has said Hello, there is room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_so_many_terminals_may_be_saying_hello_at_once() {
    let w = world("greeting").await;
    let mut waiting = Vec::new();
    for _ in 0..vmi_site::HELLOS_AT_ONCE {
        waiting.push(Raw::connect(&w.site.ws_url()).await);
    }
    let refused = match vmi_site::peer_socket::connect(&bearer_less(), &w.site.ws_url()).await {
        Ok(_) => panic!("a caller past the limit was let in"),
        Err(why) => why,
    };
    assert!(refused.contains("503"), "{refused}");
    assert!(matches!(waiting[0].hello(&w.token, None, true).await, ServerMessage::Welcome { .. }));
    let mut next = Raw::connect(&w.site.ws_url()).await;
    assert!(matches!(next.hello(&w.token, None, true).await, ServerMessage::Welcome { .. }), "room again");
    w.stop().await;
}

/// A notification raised while no terminal is attached reaches the next terminal that
/// says Hello, asleep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_raised_with_no_terminal_reach_the_next_hello() {
    let w = world("queued").await;
    let phone = w.site.state.phone("pat").expect("phone");
    let mail = vmi_engine::Mail { from: "ann@example.com".into(), subject: "Lunch?".into(), body: "at noon".into() };
    phone.mail(mail, true).await.expect("mail");
    phone.tick().await.expect("tick");
    let mut t = Raw::connect(&w.site.ws_url()).await;
    assert!(matches!(t.hello(&w.token, None, true).await, ServerMessage::Welcome { .. }));
    let (before, note) = t.until(|m| matches!(m, ServerMessage::Notification { .. })).await;
    assert!(frames(&before).is_empty(), "asleep: no frames");
    assert!(matches!(note, ServerMessage::Notification { ref title, .. } if title == "ann@example.com"), "{note:?}");
    w.stop().await;
}

/// A guest that keeps a value on a key press, logs a line at boot, and traps on a touch.
const CRASHING_GUEST: &str = r#"(module
  (import "vmi" "fb_attach" (func $fb_attach (param i32 i32 i32)))
  (import "vmi" "kv_set" (func $kv_set (param i32 i32 i32 i32) (result i32)))
  (import "vmi" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 64)
  (data (i32.const 0) "notes.text")
  (data (i32.const 16) "kept")
  (data (i32.const 32) "hello from the guest")
  (func (export "vmi_init") (param $w i32) (param $h i32)
    (call $fb_attach (i32.const 65536) (local.get $w) (local.get $h))
    (call $log (i32.const 2) (i32.const 32) (i32.const 20)))
  (func (export "vmi_event") (param $kind i32) (param $a i32) (param $b i32) (param $c i32)
    (if (i32.eq (local.get $kind) (i32.const 4))
      (then (drop (call $kv_set (i32.const 0) (i32.const 10) (i32.const 16) (i32.const 4)))))
    (if (i32.eq (local.get $kind) (i32.const 1)) (then unreachable))))"#;

/// A phone that crashes before any snapshot of it exists: its terminal is told
/// (Error(PhoneDown), close 4005), a new Hello is refused the same way, the listing says
/// crashed, and a restart brings it back afresh with its key-value store. Its log line
/// reached the site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_crashed_phone_tells_its_terminals_and_restarts_with_its_store() {
    let control = control().await;
    let wasm = wat::parse_str(CRASHING_GUEST).expect("guest parses");
    control.client.publish_image("phone", &wasm).await.expect("publish");
    let site = site(&control, "site-a", scratch("protocol-crash")).await;
    let token = user_with_phone(&control, &site, "cat").await;

    let mut t = Raw::connect(&site.ws_url()).await;
    assert!(matches!(t.hello(&token, None, false).await, ServerMessage::Welcome { .. }));
    t.send(&ClientMessage::Input { seq: 1, input: key('k') }).await;
    // Durable, so a restart from the last good state has it.
    t.until(|m| matches!(m, ServerMessage::InputDurable { seq: 1 })).await;
    let (_, logs) = control.get(&format!("{}/v1/phones/cat/logs", site.url)).await;
    let logs: serde_json::Value = serde_json::from_slice(&logs).expect("json");
    assert_eq!(logs["lines"][0]["text"], "hello from the guest", "{logs}");
    assert_eq!(logs["lines"][0]["level"], "info", "{logs}");

    t.send(&ClientMessage::Input { seq: 2, input: Input::Touch { phase: TouchPhase::Down, x: 1, y: 1, pointer: 0 } })
        .await;
    let heard = t.until_closed().await;
    assert_closed_with(&heard, ErrorCode::PhoneDown);
    let mut again = Raw::connect(&site.ws_url()).await;
    again.say_hello(&token, None, false).await;
    assert_closed_with(&again.until_closed().await, ErrorCode::PhoneDown);
    let (_, listing) = control.get(&format!("{}/v1/phones", site.url)).await;
    let listing: serde_json::Value = serde_json::from_slice(&listing).expect("json");
    assert_eq!(listing["phones"][0]["phone"]["crashed"], true, "{listing}");
    // The crash is counted, and reaches the control service's audit log with the next heartbeat.
    let (_, metrics) = control.get(&format!("{}/metrics", site.url)).await;
    let metrics = String::from_utf8(metrics).expect("text");
    assert!(metrics.contains("vmi_site_phone_crashes_total 1\n"), "{metrics}");
    assert!(metrics.contains("vmi_site_phones{state=\"crashed\"} 1\n"), "{metrics}");
    vmi_testkit::eventually(std::time::Duration::from_secs(10), "the crash in the audit log", async || {
        let (_, audit) = control.get(&format!("{}/v1/audit?user=cat", control.url)).await;
        let audit: serde_json::Value = serde_json::from_slice(&audit).expect("json");
        audit.as_array().is_some_and(|entries| {
            entries.iter().any(|e| e["action"] == "CRASH" && e["site"] == "site-a" && e["detail"] != "")
        })
    })
    .await;

    let (status, body) = control
        .operator()
        .post_json(&format!("{}/v1/phones/cat/restart", site.url), &serde_json::json!({}))
        .await
        .expect("restart");
    assert_eq!(status, 200, "{body}");
    let (_, kept) = control.get(&format!("{}/v1/phones/cat/kv/notes.text", site.url)).await;
    assert_eq!(kept, b"kept", "the store crossed to the fresh phone");
    let mut back = Raw::connect(&site.ws_url()).await;
    assert!(matches!(back.hello(&token, None, false).await, ServerMessage::Welcome { .. }));
    back.send(&ClientMessage::Input { seq: 2, input: key('k') }).await;
    back.until(|m| matches!(m, ServerMessage::InputAck { seq: 2 })).await;
    site.shutdown().await;
}

/// A phone that crashed is saved at shutdown from its last good state (its last durable record), and comes back
/// with its store at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_phone_keeps_its_durable_store_across_a_site_restart() {
    let control = control().await;
    let wasm = wat::parse_str(CRASHING_GUEST).expect("guest parses");
    control.client.publish_image("phone", &wasm).await.expect("publish");
    let dir = scratch("protocol-crash-saved");
    let first = site(&control, "site-a", dir.clone()).await;
    let token = user_with_phone(&control, &first, "dot").await;
    let mut t = Raw::connect(&first.ws_url()).await;
    assert!(matches!(t.hello(&token, None, false).await, ServerMessage::Welcome { .. }));
    t.send(&ClientMessage::Input { seq: 1, input: key('k') }).await;
    t.until(|m| matches!(m, ServerMessage::InputDurable { seq: 1 })).await;
    t.send(&ClientMessage::Input { seq: 2, input: Input::Touch { phase: TouchPhase::Down, x: 1, y: 1, pointer: 0 } })
        .await;
    assert_closed_with(&t.until_closed().await, ErrorCode::PhoneDown);
    assert_eq!(first.shutdown().await.saved, 1, "the crashed phone was saved");

    let second = site(&control, "site-a", dir).await;
    let (status, kept) = control.get(&format!("{}/v1/phones/dot/kv/notes.text", second.url)).await;
    assert_eq!((status, kept.as_slice()), (200, b"kept".as_slice()));
    second.shutdown().await;
}

// ---- Rules 11 and 12: the display and the clipboard (version 3) ----------------------------

/// A display in Hello shapes the phone before Welcome; a `Display` later is answered with `Screen` and then a
/// full update at the new size; a version-2 terminal is closed to reconnect instead; a display out of range is
/// refused naming it; Copy in Notes reaches a version-3 terminal as `Clipboard`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_11_and_12_the_display_and_the_clipboard() {
    let w = world("display").await;
    let (mut t, seq) = w.in_notes().await;
    let mut old = Raw::connect(&w.site.ws_url()).await;
    old.send(&ClientMessage::Hello {
        version: 2,
        device_token: w.token.clone(),
        resume: None,
        asleep: false,
        display: None,
    })
    .await;
    assert!(matches!(old.next().await, Some(ServerMessage::Welcome { width: 720, height: 1280, .. })));

    // A rotation of a 390x844 phone at DPR 3: 1688x780 pixels.
    t.send(&ClientMessage::Display(vmi_protocol::Display { width: 844, height: 390, density: 300 })).await;
    let (before, screen) = t.until(|m| matches!(m, ServerMessage::Screen { .. })).await;
    assert!(before.iter().all(|m| !matches!(m, ServerMessage::Error { .. })), "{before:?}");
    assert_eq!(screen, ServerMessage::Screen { width: 1688, height: 780 });
    let Some(ServerMessage::FrameUpdate { tiles, .. }) = t.next().await else { panic!("a full update follows") };
    let mut painted = vmi_protocol::display::Screen::new(1688, 780);
    painted.apply(&tiles).expect("tiles of the new size");
    let covered: u64 = tiles.iter().map(|t| u64::from(t.w) * u64::from(t.h)).sum();
    assert_eq!(covered, 1688 * 780, "every tile of the new screen");
    let (status, hash) = w.control.get(&format!("{}/v1/phones/pat/screen-hash", w.site.url)).await;
    assert_eq!(status, 200);
    let hash: serde_json::Value = serde_json::from_slice(&hash).expect("json");
    assert_eq!(hash["hash"], format!("{:016x}", vmi_protocol::display::screen_hash(painted.rgba())));
    // The version-2 terminal cannot read Screen: it is closed to reconnect (1001) and reads the size in Welcome.
    assert_eq!(old.until_closed().await.close, Some(vmi_protocol::CLOSE_GOING_AWAY));
    let mut again = Raw::connect(&w.site.ws_url()).await;
    again
        .send(&ClientMessage::Hello {
            version: 2,
            device_token: w.token.clone(),
            resume: None,
            asleep: false,
            display: None,
        })
        .await;
    assert!(matches!(again.next().await, Some(ServerMessage::Welcome { width: 1688, height: 780, .. })));

    // Copy in Notes (the right of the app bar at this scale).
    for (i, phase) in [TouchPhase::Down, TouchPhase::Up].into_iter().enumerate() {
        let input = Input::Touch { phase, x: 1688 - 100, y: 48 + 56, pointer: 0 };
        t.send(&ClientMessage::Input { seq: seq + 1 + i as u64, input }).await;
    }
    let (_, clip) = t.until(|m| matches!(m, ServerMessage::Clipboard { .. })).await;
    assert_eq!(clip, ServerMessage::Clipboard { text: String::new() }, "the note is empty: an empty copy");

    // Out of range: refused, naming the field.
    t.send(&ClientMessage::Display(vmi_protocol::Display { width: 844, height: 390, density: 0 })).await;
    let heard = t.until_closed().await;
    assert!(
        heard.messages.iter().any(|m| matches!(m, ServerMessage::Error { code: ErrorCode::BadMessage, message } if message.contains("density 0"))),
        "{heard:?}"
    );
    w.stop().await;
}
