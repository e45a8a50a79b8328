//! Live migration between two sites: nothing typed is lost or doubled, many moves keep
//! the phone whole, and each fault leaves exactly one live copy.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use vmi_engine::{Engine, ManualClock, SnapshotRequest, VmConfig};
use vmi_protocol::Input;
use vmi_protocol::migration::{MIGRATION_VERSION, MigrationMessage, decode_migration, encode_migration};
use vmi_site::SiteHandle;
use vmi_terminal::{Terminal, TerminalEvent};
use vmi_testkit::{eventually, within};

async fn migrate(control: &Control, from: &SiteHandle, to: &SiteHandle, user: &str) -> serde_json::Value {
    let body = serde_json::json!({ "to": to.state.id });
    let (status, text) =
        control.operator().post_json(&format!("{}/v1/phones/{user}/migrate", from.url), &body).await.expect("post");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::json!({ "raw": text }));
    assert!(status == 200 || status == 502, "{status} {v}");
    v
}

async fn notes(control: &Control, site: &SiteHandle, user: &str) -> String {
    let (status, body) = control.get(&format!("{}/v1/phones/{user}/kv/notes.text", site.url)).await;
    if status != 200 {
        return String::new();
    }
    String::from_utf8_lossy(&body).into_owned()
}

fn hosts(site: &SiteHandle, user: &str) -> bool {
    site.state.users().iter().any(|u| u == user)
}

/// One point in a relayed migration where the relay holds the stream until the test opens it.
struct Gate {
    reached: oneshot::Receiver<()>,
    open: oneshot::Sender<()>,
}

impl Gate {
    /// Waits until the migration is held here; returns what opens the gate.
    async fn reached(self, what: &str) -> oneshot::Sender<()> {
        within(Duration::from_secs(30), what, self.reached).await.expect("the relay is alive");
        self.open
    }
}

/// The relay's side of a [`Gate`].
struct Hold {
    reached: oneshot::Sender<()>,
    open: oneshot::Receiver<()>,
}

impl Hold {
    async fn here(self) {
        let _ = self.reached.send(());
        let _ = self.open.await;
    }
}

fn gate() -> (Gate, Hold) {
    let (reached_tx, reached) = oneshot::channel();
    let (open, open_rx) = oneshot::channel();
    (Gate { reached, open }, Hold { reached: reached_tx, open: open_rx })
}

/// A WebSocket relay in front of a site: terminals and migrations reach the site through it unchanged, except that
/// the first migration through it is held twice: when the destination acknowledged the first pre-copy round (the
/// source has not heard it, so the phone is mid pre-copy and runs at the source), and when the source sent its final
/// delta (the phone is stopped at the source; the destination has not seen it).
struct Relay {
    url: String,
    pre_copy: Gate,
    final_delta: Gate,
}

/// Starts the relay on `listener`, in front of site-b listening at `upstream`. It holds site-b's certificate (a
/// stand-in for site-b on the network) and dials site-b as site-a, so it sees the messages it holds.
// The handshake callback's signature is tungstenite's, large error and all.
#[allow(clippy::result_large_err)]
async fn relay(listener: tokio::net::TcpListener, upstream: std::net::SocketAddr) -> Relay {
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let acceptor = tls_acceptor(&site_credentials("site-b"));
    let caller = site_caller("site-a").expecting(&vmi_trust::site_name("site-b").expect("name"));
    let (pre_copy, hold_pre_copy) = gate();
    let (final_delta, hold_final) = gate();
    tokio::spawn(async move {
        let mut holds = Some((hold_pre_copy, hold_final));
        while let Ok((stream, _)) = listener.accept().await {
            let Ok(stream) = acceptor.accept(stream).await else { continue };
            let mut path = String::new();
            let Ok(client) = tokio_tungstenite::accept_hdr_async(stream, |req: &Request, resp: Response| {
                path = req.uri().to_string();
                Ok::<_, ErrorResponse>(resp)
            })
            .await
            else {
                continue;
            };
            let server =
                vmi_site::peer_socket::connect(&caller, &format!("wss://{upstream}{path}")).await.expect("upstream");
            let holds = if path.starts_with("/v1/migrate") { holds.take() } else { None };
            tokio::spawn(forward(client, server, holds));
        }
    });
    Relay { url, pre_copy, final_delta }
}

/// Site `id` started behind a [`relay`]: it is known by the relay's address, so a source dials it there and
/// terminals follow it there.
async fn site_behind_relay(control: &Control, id: &str, data_dir: std::path::PathBuf) -> (SiteHandle, Relay) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let config = vmi_site::SiteConfig { public_url: Some(url), ..site_config(control, id, data_dir) };
    let site = vmi_site::start(config).await.expect("the site starts");
    let relay = relay(listener, site.addr).await;
    (site, relay)
}

/// A terminal on `site` with `token`, past its first frame, with Notes open.
async fn terminal_in_notes(site: &SiteHandle, token: &str) -> Terminal {
    let mut term = Terminal::connect(&site.ws_url(), token, terminal_options()).await.expect("terminal");
    wait_event(&mut term, |e| matches!(e, TerminalEvent::Frame { .. })).await;
    let (x, y) = NOTES;
    term.send_input(Input::Touch { phase: vmi_protocol::TouchPhase::Down, x, y, pointer: 0 }).expect("input");
    term.send_input(Input::Touch { phase: vmi_protocol::TouchPhase::Up, x, y, pointer: 0 }).expect("input");
    term
}

/// Asks `from` (as the operator) to migrate `user`'s phone to `to`, in the background: the status and report.
fn start_migration(
    control: &Control,
    from: &SiteHandle,
    to: &SiteHandle,
    user: &str,
) -> tokio::task::JoinHandle<(u16, String)> {
    let (url, to, operator) =
        (format!("{}/v1/phones/{user}/migrate", from.url), to.state.id.clone(), control.operator());
    tokio::spawn(async move { operator.post_json(&url, &serde_json::json!({ "to": to })).await.expect("migrate") })
}

fn migration_message(m: &Message) -> Option<MigrationMessage> {
    let Message::Binary(b) = m else { return None };
    decode_migration(b).ok()
}

/// Copies messages both ways until either side ends, holding at the gates given.
async fn forward(
    client: tokio_tungstenite::WebSocketStream<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    server: vmi_site::peer_socket::PeerSocket,
    holds: Option<(Hold, Hold)>,
) {
    let (mut pre_copy, mut final_delta) = holds.map_or((None, None), |(p, f)| (Some(p), Some(f)));
    let (mut to_client, mut from_client) = client.split();
    let (mut to_server, mut from_server) = server.split();
    let up = async {
        while let Some(Ok(m)) = from_client.next().await {
            if matches!(migration_message(&m), Some(MigrationMessage::Final { .. }))
                && let Some(hold) = final_delta.take()
            {
                hold.here().await;
            }
            if to_server.send(m).await.is_err() {
                break;
            }
        }
        let _ = to_server.close().await;
    };
    let down = async {
        while let Some(Ok(m)) = from_server.next().await {
            if matches!(migration_message(&m), Some(MigrationMessage::RoundAck { .. }))
                && let Some(hold) = pre_copy.take()
            {
                hold.here().await;
            }
            if to_client.send(m).await.is_err() {
                break;
            }
        }
        let _ = to_client.close().await;
    };
    tokio::join!(up, down);
}

/// Types `text` key by key; returns the last input's number.
fn type_keys(term: &Terminal, text: &str) -> u64 {
    let mut last = 0;
    for c in text.chars() {
        last = term.send_input(Input::Key { code: 0, text: Some(c) }).expect("input");
    }
    last
}

/// Reads terminal events until input `seq` is acknowledged.
async fn until_acked(term: &mut Terminal, seq: u64) {
    eventually(Duration::from_secs(30), &format!("input {seq} acknowledged"), async || {
        let _ = tokio::time::timeout(Duration::from_millis(20), term.next_event()).await;
        term.stats().acked_input >= seq
    })
    .await;
}

/// Typing before, during and after a live migration: the relay holds the move mid pre-copy until what was typed
/// then is acknowledged by the source (the two provably overlap), and holds the final delta while more is typed to
/// the stopped phone; every character arrives once, in order, at the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_through_a_migration_loses_and_doubles_nothing() {
    let control = control().await;
    let a = site(&control, "site-a", scratch("type-a")).await;
    let (b, relay) = site_behind_relay(&control, "site-b", scratch("type-b")).await;
    let token = user_with_phone(&control, &a, "alice").await;
    let mut term = terminal_in_notes(&a, &token).await;
    let text: String = (0..300).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let (before, rest) = text.split_at(100);
    let (during, frozen) = rest.split_at(100);

    // Typed before the move.
    let last = type_keys(&term, before);
    until_acked(&mut term, last).await;

    let mover = start_migration(&control, &a, &b, "alice");

    // Mid pre-copy: the phone still runs at A, which acknowledges what is typed now.
    let open = relay.pre_copy.reached("the first pre-copy round").await;
    let last = type_keys(&term, during);
    until_acked(&mut term, last).await;
    assert_eq!(term.stats().url, a.ws_url(), "acknowledged by the source, mid pre-copy");
    assert!(!mover.is_finished(), "the migration is still held");
    let _ = open.send(());

    // The phone is stopped at A for its final delta: what is typed now must reach B exactly once.
    let open = relay.final_delta.reached("the final delta").await;
    let last = type_keys(&term, frozen);
    let _ = open.send(());

    let (status, report) = mover.await.expect("mover");
    assert_eq!(status, 200, "{report}");
    until_acked(&mut term, last).await;
    assert_eq!(term.stats().acked_input, last, "every input acknowledged");
    // And durable where the phone now runs: the terminal keeps none.
    eventually(Duration::from_secs(30), "every input durable", async || {
        let _ = tokio::time::timeout(Duration::from_millis(20), term.next_event()).await;
        term.stats().durable_input >= last && term.stats().pending_inputs == 0
    })
    .await;
    assert!(term.stats().url.contains(&relay.url.replace("https://", "")), "terminal followed the phone");
    assert_eq!(term.stats().prepared_handoffs, 1, "on the connection it opened during pre-copy");
    assert!(!hosts(&a, "alice") && hosts(&b, "alice"), "exactly one copy, on B");
    // Read at site-b's own address (the relay carries only WebSockets).
    let (_, typed) = control.get(&format!("https://{}/v1/phones/alice/kv/notes.text", b.addr)).await;
    assert_eq!(String::from_utf8_lossy(&typed), text, "every character once, in order");
    let report: serde_json::Value = serde_json::from_str(&report).expect("json");
    assert_eq!(report["outcome"], "committed");
    term.close().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// The destination starts the phone provisionally before its compare-and-set (out of the downtime). When the
/// placement moved meanwhile (here an operator takes it back while the final delta is held on its way), the
/// commit is refused: the provisional copy goes with nothing of it written or reachable, and the phone runs on at
/// the source, every character once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_commit_drops_the_destinations_provisional_copy() {
    let control = control().await;
    let a = site(&control, "site-a", scratch("refused-a")).await;
    let b_dir = scratch("refused-b");
    let (b, relay) = site_behind_relay(&control, "site-b", b_dir.clone()).await;
    let token = user_with_phone(&control, &a, "alice").await;
    let mut term = terminal_in_notes(&a, &token).await;
    let last = type_keys(&term, "before");
    until_acked(&mut term, last).await;

    let mover = start_migration(&control, &a, &b, "alice");
    let _ = relay.pre_copy.reached("the first pre-copy round").await.send(());
    let open = relay.final_delta.reached("the final delta").await;
    let epoch = control.client.placement("alice").await.expect("placement").epoch;
    control.client.move_placement("alice", "site-a", Some(epoch)).await.expect("the operator moves it");
    let _ = open.send(());

    let (status, report) = mover.await.expect("mover");
    assert_eq!(status, 502, "{report}");
    assert!(report.contains("ownership did not move"), "{report}");
    assert!(!hosts(&b, "alice"), "no copy at the destination");
    assert!(!b_dir.join("phones/alice").exists(), "nothing of the provisional copy written");
    assert_runs_at(&a, &control, &token, "alice").await;
    let last = type_keys(&term, "after");
    until_acked(&mut term, last).await;
    assert_eq!(notes(&control, &a, "alice").await, "beforeafter", "every character once, at the source");
    assert_eq!(term.stats().url, a.ws_url(), "the terminal stays on the source");
    assert_eq!(term.stats().prepared_handoffs, 0, "its prepared connection was dropped with the move");
    term.close().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_moves_keep_notes_stopwatch_and_mail_timer() {
    let control = control().await;
    let clock = ManualClock::new(1_763_000_000_000_000_000);
    let a = site_with_clock(&control, "site-a", scratch("twenty-a"), clock.clone()).await;
    let b = site_with_clock(&control, "site-b", scratch("twenty-b"), clock.clone()).await;
    let token = user_with_phone(&control, &a, "alice").await;
    {
        let mut term = Term::connect(&a.ws_url()).await;
        term.hello(&token, None, false).await;
        term.tap(NOTES).await;
        let last = term.type_text("kept through twenty moves").await;
        term.acked(last).await;
        term.input(Input::Key { code: 8, text: None }).await; // Home
        term.tap((618, 1090)).await; // Stopwatch
        let go = term.tap((518, 824)).await; // Start
        term.acked(go).await;
        term.close().await;
    }
    let (mut here, mut there) = (&a, &b);
    for i in 0..20 {
        clock.advance(250_000_000);
        here.tick().await;
        let report = migrate(&control, here, there, "alice").await;
        assert_eq!(report["outcome"], "committed", "move {i}: {report}");
        std::mem::swap(&mut here, &mut there);
    }
    assert!(hosts(here, "alice") && !hosts(there, "alice"));
    assert_eq!(notes(&control, here, "alice").await, "kept through twenty moves");

    // The stopwatch still runs: with a terminal watching, its digits move with time.
    let hash = |s: &SiteHandle| {
        let url = format!("{}/v1/phones/alice/screen-hash", s.url);
        let control = &control;
        async move { control.get(&url).await.1 }
    };
    let mut watcher = Term::connect(&here.ws_url()).await;
    watcher.hello(&token, None, false).await;
    watcher.until(|m| matches!(m, vmi_protocol::ServerMessage::FrameUpdate { .. })).await;
    here.tick().await;
    let before = hash(here).await;
    clock.advance(1_000_000_000);
    here.tick().await;
    assert_ne!(hash(here).await, before, "stopwatch ticking after 20 moves");
    watcher.close().await;

    // The background mail check still fires: a mail left without a push is found by
    // the phone's own timer.
    let mail = serde_json::json!({ "from": "ann@example.com", "subject": "Found by the timer", "push": false });
    let (status, _) =
        control.operator().post_json(&format!("{}/v1/phones/alice/mail", here.url), &mail).await.expect("post");
    assert_eq!(status, 202);
    let mut term = Term::connect(&here.ws_url()).await;
    term.hello(&token, None, true).await;
    // Its check comes within a period of the phone's clock (15 minutes, `vmi_phone::MAIL_REFRESH_NS`).
    for _ in 0..16 {
        clock.advance(60_000_000_000);
        here.tick().await;
    }
    let (note, _) = term.until(|m| matches!(m, vmi_protocol::ServerMessage::Notification { .. })).await;
    assert!(matches!(note, vmi_protocol::ServerMessage::Notification { body, .. } if body == "Found by the timer"));
    a.shutdown().await;
    b.shutdown().await;
}

/// A registered site, `site-x`, with a certificate naming it, that accepts Begin and then fails as told.
async fn fake_destination(control: &Control, fail: &'static str) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let spec = vmi_control_api::SiteSpec { url, lat: 60.0, lon: 24.0, capacity: 4 };
    site_client(control, "site-x").register_site("site-x", &spec).await.expect("register site-x");
    let acceptor = tls_acceptor(&site_credentials("site-x"));
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let stream = acceptor.accept(stream).await.expect("tls");
        let mut ws = tokio_tungstenite::accept_async(stream).await.expect("ws");
        let send = |m: MigrationMessage| tokio_tungstenite::tungstenite::Message::Binary(encode_migration(&m).into());
        while let Some(Ok(msg)) = ws.next().await {
            let tokio_tungstenite::tungstenite::Message::Binary(b) = msg else { continue };
            match decode_migration(&b).expect("valid") {
                MigrationMessage::Begin { .. } => ws.send(send(MigrationMessage::Ready)).await.expect("send"),
                MigrationMessage::Round { .. } if fail == "mid-copy" => return, // dies
                MigrationMessage::Round { .. } => {
                    ws.send(send(MigrationMessage::RoundAck { applied: 1 })).await.expect("send")
                }
                // A destination that lies: it says Committed without having taken the placement.
                MigrationMessage::Final { .. } if fail == "forged-commit" => {
                    let _ = ws.send(send(MigrationMessage::Committed { epoch: 999, ran_us: 0 })).await;
                    let _ = ws.next().await;
                    return;
                }
                MigrationMessage::Final { .. } => return, // link cut before any commit
                _ => {}
            }
        }
    });
}

/// A registered site, `site-y`, as a destination older than prepared handoffs: a Begin with a ticket is, to it, a
/// Begin with trailing bytes (it answers "expected Begin" and closes); it takes a Begin without one, then dies in
/// the copy. Says each Begin's ticket.
async fn older_destination(control: &Control) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let spec = vmi_control_api::SiteSpec { url, lat: 60.0, lon: 24.0, capacity: 4 };
    site_client(control, "site-y").register_site("site-y", &spec).await.expect("register site-y");
    let acceptor = tls_acceptor(&site_credentials("site-y"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let send = |m: MigrationMessage| tokio_tungstenite::tungstenite::Message::Binary(encode_migration(&m).into());
        for _ in 0..2 {
            let (stream, _) = listener.accept().await.expect("accept");
            let stream = acceptor.accept(stream).await.expect("tls");
            let mut ws = tokio_tungstenite::accept_async(stream).await.expect("ws");
            while let Some(Ok(msg)) = ws.next().await {
                let tokio_tungstenite::tungstenite::Message::Binary(b) = msg else { continue };
                match decode_migration(&b).expect("valid") {
                    MigrationMessage::Begin { ticket, .. } => {
                        let old = ticket.is_empty();
                        let _ = tx.send(ticket);
                        if !old {
                            let abort = MigrationMessage::Abort { reason: "expected Begin".into() };
                            let _ = ws.send(send(abort)).await;
                            break;
                        }
                        ws.send(send(MigrationMessage::Ready)).await.expect("send");
                    }
                    _ => return, // dies in the copy
                }
            }
        }
    });
    rx
}

/// A destination older than prepared handoffs refuses a Begin with a ticket: the source moves without one (its
/// terminals follow the Redirect as before); here that destination then dies, and the phone runs on at the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_destination_gets_a_begin_without_a_ticket() {
    let control = control().await;
    let a = site(&control, "site-a", scratch("older-a")).await;
    let token = user_with_phone(&control, &a, "alice").await;
    let mut begins = older_destination(&control).await;
    let body = serde_json::json!({ "to": "site-y" });
    let (status, report) =
        control.operator().post_json(&format!("{}/v1/phones/alice/migrate", a.url), &body).await.expect("post");
    assert_eq!(status, 502, "{report}");
    let first = begins.recv().await.expect("a first Begin");
    assert_eq!(first.len(), 64, "the first Begin carries the move's ticket: {first:?}");
    assert_eq!(begins.recv().await.expect("a second Begin"), "", "the second carries none");
    assert_runs_at(&a, &control, &token, "alice").await;
    a.shutdown().await;
}

async fn assert_runs_at(site: &SiteHandle, control: &Control, token: &str, user: &str) {
    assert!(hosts(site, user));
    assert_eq!(control.client.placement(user).await.expect("placement").site, site.state.id);
    // A site that just got its lease back (the control service was away) runs the phone within a heartbeat.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut term = loop {
        let mut term = Term::connect(&site.ws_url()).await;
        if matches!(term.hello(token, None, false).await, vmi_protocol::ServerMessage::Welcome { .. }) {
            break term;
        }
        assert!(std::time::Instant::now() < deadline, "the phone never ran at {}", site.state.id);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seq = term.type_text("!").await;
    term.acked(seq).await;
    term.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_dying_mid_copy_or_a_cut_link_leave_the_phone_at_the_source() {
    let control = control().await;
    let a = site(&control, "site-a", scratch("fault-a")).await;
    let token = user_with_phone(&control, &a, "alice").await;
    for fail in ["mid-copy", "cut-before-commit"] {
        fake_destination(&control, fail).await;
        let body = serde_json::json!({ "to": "site-x" });
        let (status, report) =
            control.operator().post_json(&format!("{}/v1/phones/alice/migrate", a.url), &body).await.expect("post");
        assert_eq!(status, 502, "{fail}: {report}");
        assert!(report.contains("aborted"), "{report}");
        assert_runs_at(&a, &control, &token, "alice").await;
    }
    assert_eq!(notes(&control, &a, "alice").await, "", "the phone answered, nothing else changed");
    // Taking the phone back raised the epoch past what the fake destinations were given,
    // so a late commit of theirs could never win.
    assert_eq!(control.client.placement("alice").await.expect("placement").epoch, 2);
    // A forged Committed: the source reads the placement back, finds it does not name the destination, and the
    // phone goes on running at the source, its saved state kept.
    let inbox_before = control.get(&format!("{}/v1/phones/alice/kv/mail.inbox", a.url)).await;
    fake_destination(&control, "forged-commit").await;
    let body = serde_json::json!({ "to": "site-x" });
    let (status, report) =
        control.operator().post_json(&format!("{}/v1/phones/alice/migrate", a.url), &body).await.expect("post");
    assert_eq!(status, 502, "forged commit: {report}");
    // The phone was stopped for the final delta and the read-back: an abort reports that downtime too.
    let aborted: serde_json::Value = serde_json::from_str(&report).expect("a report");
    assert!(aborted["downtime_us"].as_u64().is_some_and(|us| us > 0), "{aborted}");
    assert_runs_at(&a, &control, &token, "alice").await;
    let inbox_after = control.get(&format!("{}/v1/phones/alice/kv/mail.inbox", a.url)).await;
    assert_eq!(inbox_after, inbox_before, "its state is the same");
    // And after aborted attempts, a real migration still goes through (a fresh pre-copy).
    let b = site(&control, "site-b", scratch("fault-b")).await;
    let report = migrate(&control, &a, &b, "alice").await;
    assert_eq!(report["outcome"], "committed", "{report}");
    assert_runs_at(&b, &control, &token, "alice").await;
    assert!(!hosts(&a, "alice"));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_vanishing_right_after_the_handoff_leaves_the_destination_running() {
    let control = control().await;
    let b = site(&control, "site-b", scratch("vanish-b")).await;
    control.client.create_user("alice").await.expect("user");
    // Site A is this test: registered, then gone after the handoff.
    let spec = vmi_control_api::SiteSpec { url: "https://127.0.0.1:9".into(), lat: 60.0, lon: 24.0, capacity: 4 };
    site_client(&control, "site-a").register_site("site-a", &spec).await.expect("register");
    let placed = control.client.set_placement("alice", "site-a").await.expect("placement");
    let token = control.client.create_device("alice", "phone").await.expect("device").token;

    // A source (this test) streams a real phone's chain, then vanishes without reading
    // the answer.
    let engine = vmi_wasm_engine::WasmEngine::new().expect("engine");
    let image = engine.load_image(vmi_phone_image::PHONE_WASM).expect("image");
    let mut phone = engine.create(&image.hash, &VmConfig::default()).expect("phone");
    let round = phone.snapshot(SnapshotRequest::PreCopy).expect("round");
    phone.deliver(vmi_engine::Event::text('z')).expect("key");
    let last = phone.snapshot(SnapshotRequest::Incremental).expect("final");
    let ws_url = format!("{}/v1/migrate", b.url.replace("https://", "wss://"));
    let as_site_a = site_caller("site-a").expecting(&vmi_trust::site_name("site-b").expect("name"));
    let mut ws = vmi_site::peer_socket::connect(&as_site_a, &ws_url).await.expect("connect");
    let send = |m: MigrationMessage| tokio_tungstenite::tungstenite::Message::Binary(encode_migration(&m).into());
    ws.send(send(MigrationMessage::Begin {
        version: MIGRATION_VERSION,
        user: "alice".into(),
        image: image.hash.0,
        epoch: placed.epoch,
        width: 720,
        height: 1280,
        ticket: String::new(),
    }))
    .await
    .expect("begin");
    ws.next().await.expect("ready").expect("ready");
    ws.send(send(MigrationMessage::Round { snapshot: round.bytes })).await.expect("round");
    ws.next().await.expect("ack").expect("ack");
    ws.send(send(MigrationMessage::Final { snapshot: last.bytes, input_seqs: vec![("1".into(), 5)], screens: vec![] }))
        .await
        .expect("final");
    drop(ws); // the source is gone

    // The destination committed on its own and serves the phone; the terminal's input
    // numbering came along.
    eventually(Duration::from_secs(30), "site-b hosting alice's phone", async || hosts(&b, "alice")).await;
    let placement = control.client.placement("alice").await.expect("placement");
    assert_eq!(placement.site, "site-b");
    assert_eq!(placement.epoch, placed.epoch + 1);
    assert_runs_at(&b, &control, &token, "alice").await;
    b.shutdown().await;
}

/// Stands in for a control service that is down, on the service's own listening socket: completes the TLS
/// handshake (with the service's certificate), reads the first line of each request, notes it, and hangs up, as a
/// dead service's address would fail the request.
struct Outage {
    asked: Arc<std::sync::Mutex<Vec<String>>>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Outage {
    fn start(listener: tokio::net::TcpListener) -> Outage {
        use tokio::io::AsyncReadExt;
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let noted = asked.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let credentials =
            test_ca().credentials_for(vmi_trust::CONTROL_NAME, &["127.0.0.1"]).expect("control certificate");
        let acceptor = tls_acceptor(&credentials);
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                };
                let Ok(mut stream) = acceptor.accept(stream).await else { continue };
                let mut head = [0u8; 1024];
                let n = stream.read(&mut head).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&head[..n]).lines().next().unwrap_or_default().to_string();
                noted.lock().expect("lock").push(line);
            }
        });
        Outage { asked, stop, task }
    }

    /// How many requests for `path` were turned away.
    fn asked(&self, path: &str) -> usize {
        self.asked.lock().expect("lock").iter().filter(|line| line.contains(path)).count()
    }

    async fn end(self) {
        let _ = self.stop.send(());
        self.task.await.expect("outage task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_service_restarted_during_a_migration_and_a_long_outage() {
    let db = scratch("control-db").join("control.db");
    // One socket for the service's address all test long (bound once): each service, and the outage between
    // them, listens on a clone of it.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    socket.set_nonblocking(true).expect("non-blocking");
    let addr = socket.local_addr().expect("addr");
    let listener =
        || tokio::net::TcpListener::from_std(socket.try_clone().expect("clone the socket")).expect("listener");
    let operator = {
        use vmi_control::Store;
        let store = vmi_control::SqliteStore::open(&db).expect("store");
        let principal = vmi_control_api::auth::Principal::Operator { name: "test".into() };
        store.create_credential(&principal).expect("operator").token
    };
    let start_control = move |listener: tokio::net::TcpListener| {
        let store = Arc::new(vmi_control::SqliteStore::open(&db).expect("store"));
        let trust = vmi_control::ServiceTrust::new(test_ca().clone(), &["127.0.0.1"]).expect("certificate");
        let options = vmi_control::ServeOptions { trust: Some(trust), ..vmi_control::ServeOptions::default() };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(vmi_control::serve_with(listener, store, options, async move {
            let _ = stopped.await;
        }));
        (stop, task)
    };
    let (stop, task) = start_control(listener());
    let control = Control::attach(&format!("https://{addr}"), &operator);
    let a = site(&control, "site-a", scratch("outage-a")).await;
    let b = site(&control, "site-b", scratch("outage-b")).await;
    let token = user_with_phone(&control, &a, "alice").await;

    // The operator's token, checked a moment ago, is what site-a accepts during the outage (it cannot ask).
    assert_eq!(control.get(&format!("{}/v1/phones", a.url)).await.0, 200);

    // Down for longer than a migration waits: it aborts, the phone keeps running at A.
    let _ = stop.send(());
    let _ = task.await;
    let outage = Outage::start(listener());
    let report = migrate(&control, &a, &b, "alice").await;
    assert_eq!(report["outcome"], "aborted", "{report}");
    assert!(hosts(&a, "alice") && !hosts(&b, "alice"));

    // Restarted (same database) while a migration waits for it: the move goes through with the stored epoch.
    let placement = "/v1/users/alice/placement";
    let asked_before = outage.asked(placement);
    let mover = start_migration(&control, &a, &b, "alice");
    eventually(Duration::from_secs(30), "the migration asking the control service in vain", async || {
        outage.asked(placement) > asked_before
    })
    .await;
    assert!(!mover.is_finished(), "the migration waits for the control service");
    outage.end().await;
    let (_stop, _task) = start_control(listener());
    let (status, report) = mover.await.expect("mover");
    assert_eq!(status, 200, "{report}");
    assert_runs_at(&b, &control, &token, "alice").await;
    assert!(!hosts(&a, "alice"));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_site_ends_with_zero_phones() {
    let control = control().await;
    let a = site(&control, "site-a", scratch("drain-a")).await;
    let b = site(&control, "site-b", scratch("drain-b")).await;
    let alice = user_with_phone(&control, &a, "alice").await;
    let _bob = user_with_phone(&control, &a, "bob").await;
    control.client.drain_site("site-a").await.expect("drain");
    // The control service's placer moves every phone off the draining site.
    eventually(Duration::from_secs(60), "site-a without phones", async || a.state.users().is_empty()).await;
    assert_eq!(b.state.users(), vec!["alice".to_string(), "bob".to_string()]);
    assert_runs_at(&b, &control, &alice, "alice").await;
    let log = control.client.migrations(Some("alice")).await.expect("log");
    assert!(log.iter().any(|m| m.record.outcome == "committed" && m.record.to == "site-b"));
    a.shutdown().await;
    b.shutdown().await;
}
