//! Hibernation on a site: an idle phone with no awake terminal gives back its memory, and everything still reaches
//! it: a terminal's Hello gets the exact screen it had, its timer fires on time and its notification reaches a
//! sleeping terminal, and it can be checkpointed, migrated and checked out as it sleeps.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use vmi_engine::{Clock, ManualClock};
use vmi_protocol::ServerMessage;
use vmi_site::hibernation::HibernationPolicy;
use vmi_site::{SiteConfig, SiteHandle};
use vmi_terminal::{Terminal, TerminalEvent};
use vmi_testkit::eventually;

const NOTES: (u16, u16) = (274, 1090);
/// The default phone's background mail check period (`vmi_phone::MAIL_REFRESH_NS`).
const MAIL_CHECK: u64 = 15 * 60 * SECOND;
const SECOND: u64 = 1_000_000_000;

/// A site whose idle phones hibernate after 300 ms.
async fn hibernating_site(control: &Control, id: &str, clock: Arc<dyn Clock>) -> SiteHandle {
    let policy = HibernationPolicy { idle: Duration::from_millis(300), max_resident: None };
    let config = SiteConfig { clock, hibernation: Some(policy), ..site_config(control, id, scratch(id)) };
    let site = vmi_site::start(config).await.expect("site starts");
    eventually(Duration::from_secs(30), "the site's first heartbeat answered", async || site.state.holds_lease()).await;
    site
}

/// `user`'s entry in the site's phone list, and the list's hibernation summary.
async fn listing(control: &Control, site: &SiteHandle, user: &str) -> (serde_json::Value, serde_json::Value) {
    let (status, body) = control.get(&format!("{}/v1/phones", site.url)).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let phone = v["phones"].as_array().into_iter().flatten().find(|p| p["user"] == user).cloned();
    (phone.unwrap_or_default(), v["hibernation"].clone())
}

async fn hibernated(control: &Control, site: &SiteHandle, user: &str) {
    eventually(Duration::from_secs(20), &format!("{user}'s phone hibernated"), async || {
        listing(control, site, user).await.0["phone"]["resident"] == false
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernated_phone_greets_with_its_exact_screen_and_its_timer_fires_on_time() {
    let wall = 1_764_000_000 * SECOND;
    let clock = ManualClock::new(wall);
    let control = control().await;
    let site = hibernating_site(&control, "site-a", clock.clone()).await;
    let token = user_with_phone(&control, &site, "hana").await;

    // A terminal sees the phone, then goes: the phone hibernates, and the site says so.
    let mut first = Terminal::connect(&site.ws_url(), &token, terminal_options()).await.expect("terminal");
    wait_event(&mut first, |e| matches!(e, TerminalEvent::Frame { .. })).await;
    let seen = first.screen_hash();
    first.close().await;
    hibernated(&control, &site, "hana").await;
    let (phone, summary) = listing(&control, &site, "hana").await;
    assert_eq!(phone["phone"]["memory_bytes"], 0, "{phone}");
    assert!(summary["page_store"]["pages"].as_u64().is_some_and(|p| p > 0), "{summary}");
    assert_eq!(summary["resident"], 0, "{summary}");
    // Asking about it does not wake it.
    for _ in 0..5 {
        let (phone, _) = listing(&control, &site, "hana").await;
        assert_eq!(
            (phone["phone"]["resident"].clone(), phone["phone"]["wakes"].clone()),
            (false.into(), 0.into()),
            "{phone}"
        );
    }

    // A Hello wakes it with the exact screen it had.
    let mut term = Terminal::connect(&site.ws_url(), &token, terminal_options()).await.expect("terminal");
    wait_event(&mut term, |e| matches!(e, TerminalEvent::Frame { .. })).await;
    assert_eq!(term.screen_hash(), seen, "the screen it had");
    let (phone, _) = listing(&control, &site, "hana").await;
    assert_eq!(
        (phone["phone"]["resident"].clone(), phone["phone"]["wakes"].clone()),
        (true.into(), 1.into()),
        "{phone}"
    );

    // Its terminal's screen off, the phone hibernates again; a mail left for its next check waits in the mailbox.
    term.sleep();
    hibernated(&control, &site, "hana").await;
    let mail = serde_json::json!({ "from": "ann@example.com", "subject": "Lunch?", "push": false });
    let (status, body) = control.post(&format!("{}/v1/phones/hana/mail", site.url), &mail).await;
    assert!(status < 300, "{status} {body}");

    // A check period of the phone's time: its mail check timer fires in it, on the phone's clock, and the
    // notification reaches the sleeping terminal.
    clock.advance(MAIL_CHECK + SECOND);
    let e = wait_event(&mut term, |e| matches!(e, TerminalEvent::Notification { .. })).await;
    let TerminalEvent::Notification { title, at_ms, .. } = e else { unreachable!() };
    assert_eq!(title, "ann@example.com");
    assert_eq!(at_ms, (wall + MAIL_CHECK + SECOND) / 1_000_000, "fired by the phone's clock");

    // Its own timers are its background work, not activity: with a third of its check period passing every 100 ms,
    // it runs each check and sleeps between them (the idle time counts from the last thing from outside).
    let wakes_before = listing(&control, &site, "hana").await.0["phone"]["wakes"].as_u64().expect("wakes");
    let mut seen_asleep_between_ticks = false;
    for _ in 0..30 {
        clock.advance(MAIL_CHECK / 3);
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen_asleep_between_ticks |= listing(&control, &site, "hana").await.0["phone"]["resident"] == false;
    }
    let wakes_after = listing(&control, &site, "hana").await.0["phone"]["wakes"].as_u64().expect("wakes");
    assert!(wakes_after >= wakes_before + 3, "its timers woke it: {wakes_before} -> {wakes_after}");
    assert!(seen_asleep_between_ticks, "it slept between its own timers");
    term.close().await;
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernated_phone_is_checkpointed_migrated_and_checked_out_as_it_sleeps() {
    let control = control().await;
    let clock = vmi_engine::SystemClock::shared();
    let a = hibernating_site(&control, "site-a", clock.clone()).await;
    let b = hibernating_site(&control, "site-b", clock).await;
    let token = user_with_phone(&control, &a, "ivo").await;
    let mut term = Term::connect(&a.ws_url()).await;
    assert!(matches!(term.hello(&token, None, false).await, ServerMessage::Welcome { .. }));
    term.tap(NOTES).await;
    let seq = term.type_text("kept while asleep").await;
    term.acked(seq).await;
    term.close().await;

    // Checkpointed asleep.
    hibernated(&control, &a, "ivo").await;
    let (status, body) = control.post(&format!("{}/v1/phones/ivo/checkpoints", a.url), &serde_json::json!({})).await;
    assert_eq!(status, 200, "{body}");

    // Migrated asleep: on the other site it has its note.
    hibernated(&control, &a, "ivo").await;
    let (status, body) =
        control.post(&format!("{}/v1/phones/ivo/migrate", a.url), &serde_json::json!({ "to": "site-b" })).await;
    assert_eq!(status, 200, "{body}");
    let (status, notes) = control.get(&format!("{}/v1/phones/ivo/kv/notes.text", b.url)).await;
    assert_eq!((status, String::from_utf8_lossy(&notes).into_owned()), (200, "kept while asleep".to_owned()));

    // Checked out asleep: the bundle's base has the note.
    hibernated(&control, &b, "ivo").await;
    let (status, bundle) =
        bearer(&token).post_bytes(&format!("{}/v1/phones/ivo/checkout", b.url), Vec::new()).await.expect("POST");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bundle));
    let bundle = vmi_protocol::offline::decode_bundle(&bundle).expect("a bundle");
    let view = vmi_snapshot::SnapshotView::parse(&bundle.snapshot, &vmi_snapshot::Limits::default()).expect("base");
    let kv = vmi_wasm_engine::kv_of_host_state(view.host_state).expect("host state");
    assert_eq!(kv.get(b"notes.text".as_slice()).map(Vec::as_slice), Some(&b"kept while asleep"[..]));
    a.shutdown().await;
    b.shutdown().await;
}

/// A phone no terminal ever looked at is told its screen is off: only its background work (the mail check, every
/// 15 minutes) wakes it, not the clock's minute, which repaints a screen nobody sees. (A site of 100,000 such phones
/// woke each of them every minute before.) Its full state is in the site's state store, named by its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_nobody_looks_at_wakes_only_for_its_background_work() {
    let clock = ManualClock::new(1_764_000_000 * SECOND);
    let control = control().await;
    let site = hibernating_site(&control, "site-n", clock.clone()).await;
    user_with_phone(&control, &site, "nadia").await;
    hibernated(&control, &site, "nadia").await;
    let wakes = |v: &serde_json::Value| v["phone"]["wakes"].as_u64().expect("wakes");
    let before = wakes(&listing(&control, &site, "nadia").await.0);

    // Half an hour of its clock, a minute at a time: two mail checks at most, never thirty.
    for _ in 0..30 {
        clock.advance(60 * SECOND);
        site.tick().await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    eventually(Duration::from_secs(10), "nadia asleep again", async || {
        listing(&control, &site, "nadia").await.0["phone"]["resident"] == false
    })
    .await;
    let (phone, summary) = listing(&control, &site, "nadia").await;
    let woke = wakes(&phone) - before;
    assert!((1..=2).contains(&woke), "its mail checks woke it, and nothing else: {woke} wakes in 30 minutes");
    assert_eq!(summary["timer_wakes"]["count"].as_u64(), Some(woke), "{summary}");

    // Its saved state is a name in the site's state store, which reads back whole.
    let dir = site.state.data_dir().join("phones").join("nadia");
    let file = std::fs::read(dir.join(vmi_site::PHONE_FILE)).expect("phone.state");
    assert!(file.len() < 1024, "the file names the state ({} bytes)", file.len());
    let (snapshot, _) = site.state.state_store().read_phone(&dir).expect("the state reads back");
    assert!(vmi_snapshot::Snapshot::peek_header(&snapshot).is_ok());
    site.shutdown().await;
}

/// A site whose phones sleep stops without waking them (their journals hold their state: nothing to write) and
/// comes back from those journals with everything they had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_stops_without_waking_its_sleeping_phones_and_comes_back_from_their_journals() {
    let control = control().await;
    let clock = vmi_engine::SystemClock::shared();
    let site = hibernating_site(&control, "site-j", clock.clone()).await;
    let dir = site.state.data_dir().to_path_buf();
    let token = user_with_phone(&control, &site, "jun").await;
    let mut term = Term::connect(&site.ws_url()).await;
    assert!(matches!(term.hello(&token, None, false).await, ServerMessage::Welcome { .. }));
    term.tap(NOTES).await;
    let seq = term.type_text("in the journal").await;
    term.acked(seq).await;
    term.close().await;
    hibernated(&control, &site, "jun").await;

    let phone_dir = dir.join("phones").join("jun");
    let state_file = std::fs::read(phone_dir.join(vmi_site::PHONE_FILE)).expect("phone.state");
    let journal = std::fs::read(phone_dir.join(vmi_site::persist::JOURNAL_FILE)).expect("journal");
    assert!(!journal.is_empty(), "the typing is in the journal");
    let report = site.shutdown().await;
    assert_eq!((report.saved, report.failed.len()), (1, 0), "{report:?}");
    assert_eq!(std::fs::read(phone_dir.join(vmi_site::PHONE_FILE)).expect("phone.state"), state_file, "not rewritten");
    assert_eq!(std::fs::read(phone_dir.join(vmi_site::persist::JOURNAL_FILE)).expect("journal"), journal);

    let policy = HibernationPolicy { idle: Duration::from_millis(300), max_resident: None };
    let config = SiteConfig { clock, hibernation: Some(policy), ..site_config(&control, "site-j", dir) };
    let again = vmi_site::start(config).await.expect("the site starts again");
    let (status, notes) = control.get(&format!("{}/v1/phones/jun/kv/notes.text", again.url)).await;
    assert_eq!((status, String::from_utf8_lossy(&notes).into_owned()), (200, "in the journal".to_owned()));
    again.shutdown().await;
}
