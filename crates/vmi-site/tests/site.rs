//! A site with real terminals over WebSocket: restart keeps the user's notes, a sleeping
//! terminal gets notifications and no frames, users are isolated, and a vanished
//! terminal leaves its phone running.

mod common;

use common::*;
use vmi_protocol::{ClientMessage, ErrorCode, PROTOCOL_VERSION, Resume, ServerMessage};

fn is_error(m: &ServerMessage, code: ErrorCode) -> bool {
    matches!(m, ServerMessage::Error { code: c, .. } if *c == code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_restart_keeps_the_notes_typed_before_it() {
    let control = control().await;
    let dir = scratch("restart");
    let site_a = site(&control, "site-a", dir.clone()).await;
    let token = user_with_phone(&control, &site_a, "alice").await;

    let mut term = Term::connect(&site_a.ws_url()).await;
    assert!(matches!(term.hello(&token, None, false).await, ServerMessage::Welcome { resumed: false, .. }));
    term.tap(NOTES).await;
    let last = term.type_text("Kept across restarts").await;
    term.acked(last).await;
    term.close().await;
    assert_eq!(site_a.shutdown().await.saved, 1, "the phone was saved");
    assert!(dir.join("phones/alice/phone.state").exists());

    // A new site process on the same data directory brings the phone back.
    let site_b = site(&control, "site-a", dir.clone()).await;
    let (status, body) = control.get(&format!("{}/v1/phones/alice/kv/notes.text", site_b.url)).await;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&body), "Kept across restarts");
    // The terminal's input numbering carries over, so nothing is applied twice.
    let mut term = Term::connect(&site_b.ws_url()).await;
    match term.hello(&token, None, false).await {
        ServerMessage::Welcome { last_input_seq, .. } => assert_eq!(last_input_seq, last),
        other => panic!("expected Welcome, got {other:?}"),
    }
    term.close().await;
    site_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asleep_the_terminal_gets_the_notification_and_no_frame_bytes() {
    let control = control().await;
    let site = site(&control, "site-a", scratch("asleep")).await;
    let token = user_with_phone(&control, &site, "alice").await;
    let mut term = Term::connect(&site.ws_url()).await;
    term.hello(&token, None, false).await;
    term.until(|m| matches!(m, ServerMessage::FrameUpdate { .. })).await;

    term.send(&ClientMessage::Sleep).await;
    // Let the Sleep land before the mail does.
    let ping = term.input(vmi_protocol::Input::Key { code: 0, text: None }).await;
    term.acked(ping).await;
    let bytes_before = term.frame_bytes;
    let mail = serde_json::json!({ "from": "ann@example.com", "subject": "Lunch?", "body": "Noon" });
    let (status, _) =
        control.operator().post_json(&format!("{}/v1/phones/alice/mail", site.url), &mail).await.expect("post");
    assert_eq!(status, 202);
    let (note, others) = term.until(|m| matches!(m, ServerMessage::Notification { .. })).await;
    assert_eq!(
        note,
        ServerMessage::Notification {
            title: "ann@example.com".into(),
            body: "Lunch?".into(),
            at_ms: match &note {
                ServerMessage::Notification { at_ms, .. } => *at_ms,
                _ => 0,
            }
        }
    );
    assert!(others.iter().all(|m| !matches!(m, ServerMessage::FrameUpdate { .. })), "no frames while asleep");
    assert_eq!(term.frame_bytes, bytes_before, "asleep: 0 frame bytes");

    // Wake: exactly one up-to-date frame; the terminal's screen then equals the phone's.
    term.send(&ClientMessage::Wake).await;
    term.until(|m| matches!(m, ServerMessage::FrameUpdate { .. })).await;
    let (_, body) = control.get(&format!("{}/v1/phones/alice/screen-hash", site.url)).await;
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let ours = format!("{:016x}", term.screen.as_ref().expect("screen").hash());
    assert_eq!(v["hash"], ours.as_str());
    term.close().await;
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_terminal_never_reaches_another_users_phone() {
    let control = control().await;
    let site = site(&control, "site-a", scratch("isolation")).await;
    let alice = user_with_phone(&control, &site, "alice").await;
    let bob = user_with_phone(&control, &site, "bob").await;

    // Bob types into Notes with his token; Alice's phone does not change.
    let mut term = Term::connect(&site.ws_url()).await;
    term.hello(&bob, None, false).await;
    term.tap(NOTES).await;
    let last = term.type_text("bob was here").await;
    term.acked(last).await;
    term.close().await;
    let (_, bobs) = control.get(&format!("{}/v1/phones/bob/kv/notes.text", site.url)).await;
    assert_eq!(bobs, b"bob was here");
    let (status, _) = control.get(&format!("{}/v1/phones/alice/kv/notes.text", site.url)).await;
    assert_eq!(status, 404, "alice's notes untouched");
    let _ = alice;

    // A made-up token is refused.
    let mut term = Term::connect(&site.ws_url()).await;
    let answer = term.hello("0123456789abcdef", None, false).await;
    assert!(is_error(&answer, ErrorCode::Unauthorized), "{answer:?}");
    assert!(term.recv().await.is_none(), "and the session is closed");

    // A revoked token is refused from then on.
    let device = control.client.create_device("bob", "old phone").await.expect("device");
    control.client.revoke_device(device.device_id).await.expect("revoke");
    let mut term = Term::connect(&site.ws_url()).await;
    let answer = term.hello(&device.token, None, false).await;
    assert!(is_error(&answer, ErrorCode::Unauthorized), "{answer:?}");
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_terminal_leaves_its_phone_running() {
    let control = control().await;
    let site = site(&control, "site-a", scratch("vanish")).await;
    let token = user_with_phone(&control, &site, "alice").await;
    let mut term = Term::connect(&site.ws_url()).await;
    term.hello(&token, None, false).await;
    term.tap(NOTES).await;
    let last = term.type_text("still here").await;
    term.acked(last).await;
    term.vanish();

    // The phone goes on: it takes mail and raises a notification for the next terminal.
    let mail = serde_json::json!({ "from": "ann@example.com", "subject": "After the drop", "body": "" });
    let (status, _) =
        control.operator().post_json(&format!("{}/v1/phones/alice/mail", site.url), &mail).await.expect("post");
    assert_eq!(status, 202);
    let (_, body) = control.get(&format!("{}/v1/phones", site.url)).await;
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["phones"][0]["phone"]["status"], "running");
    let mut term = Term::connect(&site.ws_url()).await;
    term.hello(&token, None, false).await;
    let (_, body) = control.get(&format!("{}/v1/phones/alice/kv/notes.text", site.url)).await;
    assert_eq!(body, b"still here");
    term.close().await;
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hellos_are_refused_precisely_and_misplaced_terminals_redirected() {
    let control = control().await;
    let site_a = site(&control, "site-a", scratch("hello-a")).await;
    // A manual clock: the status bar's minute cannot turn over and send a frame the resume below must not see.
    let clock = vmi_engine::ManualClock::new(1_763_000_000_000_000_000);
    let site_b = site_with_clock(&control, "site-b", scratch("hello-b"), clock).await;
    let token = user_with_phone(&control, &site_b, "carol").await;

    // A future protocol version.
    let mut term = Term::connect(&site_b.ws_url()).await;
    let mut hello = vmi_protocol::encode_client(&ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        device_token: token.clone(),
        resume: None,
        asleep: false,
        display: None,
    });
    hello[1] = 99;
    term.send_raw(hello).await;
    let answer = term.recv().await.expect("answer");
    assert!(is_error(&answer, ErrorCode::Version), "{answer:?}");

    // Garbage instead of a Hello.
    let mut term = Term::connect(&site_b.ws_url()).await;
    term.send_raw(vec![0xde, 0xad, 0xbe, 0xef]).await;
    let answer = term.recv().await.expect("answer");
    assert!(is_error(&answer, ErrorCode::BadMessage), "{answer:?}");

    // Something other than Hello first.
    let mut term = Term::connect(&site_b.ws_url()).await;
    term.send(&ClientMessage::Wake).await;
    let answer = term.recv().await.expect("answer");
    assert!(is_error(&answer, ErrorCode::BadMessage), "{answer:?}");

    // Carol's phone runs on site-b; at site-a she is sent there.
    let mut term = Term::connect(&site_a.ws_url()).await;
    let answer = term.hello(&token, None, false).await;
    assert_eq!(answer, ServerMessage::Redirect { url: site_b.ws_url() });

    // Resuming with a current screen gets no full frame.
    let mut term = Term::connect(&site_b.ws_url()).await;
    term.hello(&token, None, false).await;
    term.until(|m| matches!(m, ServerMessage::FrameUpdate { .. })).await;
    let resume = Resume { last_frame_seq: term.last_frame, screen_hash: term.screen.as_ref().expect("screen").hash() };
    term.close().await;
    let mut again = Term::connect(&site_b.ws_url()).await;
    let answer = again.hello(&token, Some(resume), false).await;
    assert!(matches!(answer, ServerMessage::Welcome { resumed: true, .. }), "{answer:?}");
    let nonce = 77;
    again.send(&ClientMessage::Ping { nonce }).await;
    let (pong, between) = again.until(|m| matches!(m, ServerMessage::Pong { .. })).await;
    assert_eq!(pong, ServerMessage::Pong { nonce });
    assert!(between.iter().all(|m| !matches!(m, ServerMessage::FrameUpdate { .. })), "no resend: {between:?}");
    site_a.shutdown().await;
    site_b.shutdown().await;
}

/// A user has one phone: a site asked to boot one for a user placed elsewhere refuses (a
/// second, empty phone would take the running one's place), naming where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_phone_for_a_user_placed_elsewhere_is_refused() {
    let control = control().await;
    let a = site(&control, "site-a", scratch("one-phone-a")).await;
    let b = site(&control, "site-b", scratch("one-phone-b")).await;
    user_with_phone(&control, &a, "alice").await;
    match b.state.create_phone("alice").await {
        Err(e @ vmi_site::SiteError::PlacedElsewhere { .. }) => {
            assert!(e.to_string().contains("placed on site-a"), "{e}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(b.state.users().is_empty());
    assert_eq!(a.state.users(), ["alice"]);
    a.shutdown().await;
    b.shutdown().await;
}

/// An engine the site knows only through the `vmi-engine` contract: the default engine
/// wrapped, counting the phones it boots. The site runs, serves and restarts phones on it.
struct CountingEngine {
    inner: vmi_wasm_engine::WasmEngine,
    created: std::sync::atomic::AtomicUsize,
}

impl vmi_engine::Engine for CountingEngine {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn load_image(&self, bytes: &[u8]) -> Result<vmi_engine::ImageInfo, vmi_engine::EngineError> {
        self.inner.load_image(bytes)
    }
    fn image(&self, hash: &vmi_engine::ImageHash) -> Option<vmi_engine::ImageInfo> {
        self.inner.image(hash)
    }
    fn create(
        &self,
        image: &vmi_engine::ImageHash,
        config: &vmi_engine::VmConfig,
    ) -> Result<Box<dyn vmi_engine::VirtualPhone>, vmi_engine::EngineError> {
        self.created.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.create(image, config)
    }
    fn restore(
        &self,
        image: &vmi_engine::ImageHash,
        chain: &[&[u8]],
        config: &vmi_engine::VmConfig,
    ) -> Result<Box<dyn vmi_engine::VirtualPhone>, vmi_engine::EngineError> {
        self.inner.restore(image, chain, config)
    }
    fn upgrade(
        &self,
        image: &vmi_engine::ImageHash,
        chain: &[&[u8]],
        config: &vmi_engine::VmConfig,
    ) -> Result<Box<dyn vmi_engine::VirtualPhone>, vmi_engine::EngineError> {
        self.inner.upgrade(image, chain, config)
    }
    fn create_from(
        &self,
        image: &vmi_engine::ImageHash,
        carried: &vmi_engine::Carryover,
        config: &vmi_engine::VmConfig,
    ) -> Result<Box<dyn vmi_engine::VirtualPhone>, vmi_engine::EngineError> {
        self.inner.create_from(image, carried, config)
    }
    fn begin_restore(
        &self,
        image: &vmi_engine::ImageHash,
        config: &vmi_engine::VmConfig,
    ) -> Result<Box<dyn vmi_engine::RestoreStage>, vmi_engine::EngineError> {
        self.inner.begin_restore(image, config)
    }
    fn clock(&self) -> std::sync::Arc<dyn vmi_engine::Clock> {
        self.inner.clock()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_runs_phones_on_any_engine_behind_the_contract() {
    let control = control().await;
    let clock = vmi_engine::SystemClock::shared();
    let inner = vmi_wasm_engine::WasmEngine::with_config(vmi_wasm_engine::WasmEngineConfig::default(), clock.clone())
        .expect("engine");
    let engine = std::sync::Arc::new(CountingEngine { inner, created: 0.into() });
    let mut config = site_config(&control, "site-a", scratch("any-engine"));
    config.clock = clock;
    let site = vmi_site::start_with_engine(config, engine.clone()).await.expect("site starts");
    let token = user_with_phone(&control, &site, "eve").await;
    assert_eq!(engine.created.load(std::sync::atomic::Ordering::SeqCst), 1, "the phone was booted by the given engine");
    let mut term = Term::connect(&site.ws_url()).await;
    assert!(matches!(term.hello(&token, None, false).await, ServerMessage::Welcome { .. }));
    let last = term.type_text("hi").await;
    term.acked(last).await;
    site.shutdown().await;
}

/// One sender may drop a burst of mails in a mailbox, then is told to wait (429 with Retry-After); another
/// sender is not held up by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_flooding_a_mailbox_is_slowed_down() {
    let control = control().await;
    let site = site(&control, "site-a", scratch("mail-flood")).await;
    user_with_phone(&control, &site, "alice").await;
    let url = format!("{}/v1/phones/alice/mail", site.url);
    let mail = |from: &str| serde_json::json!({ "from": from, "subject": "hi", "body": "", "push": false });
    for i in 0..vmi_site::access::MAIL_BURST {
        let (status, body) = control.operator().post_json(&url, &mail("spam@example.com")).await.expect("post");
        assert_eq!(status, 202, "mail {i}: {body}");
    }
    let (status, body) = control.operator().post_json(&url, &mail("SPAM@example.com")).await.expect("post");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too many mails from"), "{body}");
    let (status, body) = control.operator().post_json(&url, &mail("ann@example.com")).await.expect("post");
    assert_eq!(status, 202, "another sender: {body}");
    site.shutdown().await;
}

/// A phone that cannot be written at shutdown is named, never counted as saved, and nothing half-written is left
/// to be mistaken for its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_cannot_be_saved_is_named_at_shutdown() {
    let control = control().await;
    let dir = scratch("unsaveable");
    let site = site(&control, "site-a", dir.clone()).await;
    user_with_phone(&control, &site, "alice").await;
    user_with_phone(&control, &site, "bob").await;
    let alice = dir.join("phones").join("alice");
    // Its first durable state is written before its disk breaks.
    let first = alice.join(vmi_site::PHONE_FILE);
    vmi_testkit::eventually(std::time::Duration::from_secs(10), "alice's first state", async || first.exists()).await;
    break_state_writes(&dir, "alice");
    // A change the broken disk cannot take (a phone whose journal holds its state has nothing to write at a stop).
    let mail = serde_json::json!({ "from": "ann@example.com", "subject": "after the disk broke", "body": "" });
    let url = format!("{}/v1/phones/alice/mail", site.url);
    let (status, body) = control.operator().post_json(&url, &mail).await.expect("post");
    assert_eq!(status, 202, "{body}");
    let report = site.shutdown().await;
    assert_eq!(report.saved, 1, "bob's phone was saved");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].0, "alice");
    assert!(report.failed[0].1.contains("phone.state.tmp"), "the reason names the file: {report:?}");
    // What is on disk is whole: alice's last durable state, not a half-written one.
    let states = vmi_site::persist::StateStore::open(&dir).expect("state store");
    if let Err(e) = states.read_phone(&alice) {
        panic!("alice's last durable state is whole: {e}");
    }
    assert!(dir.join("phones").join("bob").join("phone.state").exists());
}

/// A site that cannot write a phone's state says so in its heartbeat (degraded, naming why), and the control
/// service moves its phones to a site that can, with what was typed on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_cannot_keep_phones_durable_says_so_and_its_phones_move_away() {
    let control = control().await;
    let dir = scratch("degraded-a");
    let a = site(&control, "site-a", dir.clone()).await;
    let b = site(&control, "site-b", scratch("degraded-b")).await;
    let token = user_with_phone(&control, &a, "alice").await;
    break_state_writes(&dir, "alice");
    let mut term = Term::connect(&a.ws_url()).await;
    term.hello(&token, None, false).await;
    term.tap(NOTES).await;
    let last = term.type_text("kept anyway").await;
    term.acked(last).await;

    vmi_testkit::eventually(std::time::Duration::from_secs(30), "site-a reported degraded", async || {
        let sites = control.client.list_sites().await.expect("sites");
        sites.iter().any(|s| s.site.id == "site-a" && s.site.degraded.as_deref().is_some_and(|w| w.contains("alice")))
    })
    .await;
    // On site-b, and (once site-a has confirmed the move with the control service) no longer on site-a: one copy.
    vmi_testkit::eventually(std::time::Duration::from_secs(60), "alice's phone on site-b only", async || {
        b.state.users().iter().any(|u| u == "alice") && !a.state.users().iter().any(|u| u == "alice")
    })
    .await;
    let (status, notes) = control.get(&format!("{}/v1/phones/alice/kv/notes.text", b.url)).await;
    assert_eq!((status, String::from_utf8_lossy(&notes).into_owned()), (200, "kept anyway".to_owned()));
    b.shutdown().await;
    a.shutdown().await;
}

/// A restart whose save fails says so (the phone runs on, from memory), and the site counts itself degraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_cannot_save_says_so() {
    let control = control().await;
    let dir = scratch("restart-unsaved");
    let site = site(&control, "site-a", dir.clone()).await;
    user_with_phone(&control, &site, "alice").await;
    break_state_writes(&dir, "alice");
    let url = format!("{}/v1/phones/alice/restart", site.url);
    let (status, body) = control.post(&url, &serde_json::json!({})).await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(report["not_saved"].as_str().is_some_and(|w| w.contains("phone.state.tmp")), "{report}");
    assert!(site.state.users().iter().any(|u| u == "alice"), "it runs on");
    site.shutdown().await;
}

/// Makes every write of `user`'s state under the site directory `dir` fail, as on a broken disk: a directory
/// stands where the temporary file goes (the tests run as root, which file modes do not stop).
/// Both kinds of write fail: a full state (its temporary file) and a journal record (the journal is a directory).
fn break_state_writes(dir: &std::path::Path, user: &str) {
    let phone = dir.join("phones").join(user);
    let tmp = phone.join(format!("{}.tmp", vmi_site::PHONE_FILE));
    let journal = phone.join(vmi_site::persist::JOURNAL_FILE);
    // A write in flight has a file there for a moment: each obstacle goes in once it is gone.
    for _ in 0..1000 {
        let _ = std::fs::remove_file(&journal);
        if std::fs::create_dir_all(tmp.join("in-the-way")).is_ok() && std::fs::create_dir_all(&journal).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("no obstacle could be put at {}", phone.display());
}
