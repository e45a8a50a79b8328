//! Checkpoints through a site: hourly rounds over three virtual days, a restore to three
//! days ago under an attached terminal (and its undo), copies on a second site, and a
//! phone brought back on that second site after its own site is lost.

mod common;

use common::*;
use serde_json::{Value, json};
use vmi_engine::ManualClock;
use vmi_protocol::ServerMessage;

const HOUR_NS: u64 = 3_600_000_000_000;
/// 2026-11-18 23:30 UTC: the day-0 checkpoint is the last of its day, the one that
/// retention keeps once it is more than two days old.
const START_MS: u64 = 1_795_044_600_000;

async fn notes(control: &Control, site_url: &str, user: &str) -> String {
    let (status, body) = control.get(&format!("{site_url}/v1/phones/{user}/kv/notes.text")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    String::from_utf8(body).expect("utf-8")
}

async fn post(control: &Control, url: &str, body: Value) -> (u16, Value) {
    let (status, text) = control.operator().post_json(url, &body).await.expect("post");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn list(control: &Control, site_url: &str, user: &str) -> Vec<Value> {
    let (status, body) = control.get(&format!("{site_url}/v1/phones/{user}/checkpoints")).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).expect("json");
    v["checkpoints"].as_array().expect("array").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_days_back_under_a_live_terminal_and_back_again_from_the_copy_after_losing_the_site() {
    let control = control().await;
    let clock = ManualClock::new(START_MS * 1_000_000);
    let dir_a = scratch("ckpt-a");
    let a = site_with_clock(&control, "site-a", dir_a.clone(), clock.clone()).await;
    let b = site_with_clock(&control, "site-b", scratch("ckpt-b"), clock.clone()).await;
    let token = user_with_phone(&control, &a, "alice").await;
    let mut term = Term::connect(&a.ws_url()).await;
    term.hello(&token, None, false).await;
    term.tap(NOTES).await;
    let last = term.type_text("day zero").await;
    term.acked(last).await;

    // On demand, with a label: stored here and copied to the other site.
    let (status, taken) =
        post(&control, &format!("{}/v1/phones/alice/checkpoints", a.url), json!({ "label": "day 0" })).await;
    assert_eq!(status, 200, "{taken}");
    assert_eq!(taken["replica"], "site-b", "{taken}");
    let day0 = taken["checkpoint"]["id"].as_str().expect("id").to_owned();

    // Three days of hourly checkpoints, a little typing each day.
    for day in 1..=3 {
        let last = term.type_text(&format!(", day {day}")).await;
        term.acked(last).await;
        for _ in 0..24 {
            clock.advance(HOUR_NS);
            a.tick().await;
            a.state.checkpoint_round().await;
            // site-b hosts no phone: its round only applies retention to its copies.
            b.state.checkpoint_round().await;
        }
    }
    let now_text = notes(&control, &a.url, "alice").await;
    assert_eq!(now_text, "day zero, day 1, day 2, day 3");
    let here = list(&control, &a.url, "alice").await;
    // Retention: every checkpoint of the last two days, the last of each day before
    // that (day 0's, and the 23:30 one of day 1).
    assert_eq!(here.len(), 1 + 1 + 48, "{here:?}");
    assert_eq!(here[0]["id"], day0.as_str());
    assert!(here[1..].iter().all(|c| c["label"] == "hourly"));
    // Light use: every hourly checkpoint is small (the typing ones included).
    let most = here[1..].iter().map(|c| c["stored_bytes"].as_u64().expect("bytes")).max().expect("some");
    assert!(most < 100 * 1024, "an hourly checkpoint stored {most} bytes");
    assert_eq!(list(&control, &b.url, "alice").await, here, "the second site holds the same checkpoints");
    // The control service's catalogue knows both copies of each.
    let catalogue = control.client.checkpoints("alice").await.expect("catalogue");
    assert_eq!(catalogue.len(), here.len());
    assert!(catalogue.iter().all(|c| c.sites == ["site-a", "site-b"]), "{catalogue:?}");

    // Back to three days ago, by time, with the terminal attached: it gets the old screen.
    let (status, restored) = post(
        &control,
        &format!("{}/v1/phones/alice/checkpoints/restore", a.url),
        json!({ "at_ms": START_MS + 60_000 }),
    )
    .await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(restored["restored"]["id"], day0.as_str());
    assert_eq!(notes(&control, &a.url, "alice").await, "day zero");
    let (_, hash) = control.get(&format!("{}/v1/phones/alice/screen-hash", a.url)).await;
    let want: Value = serde_json::from_slice(&hash).expect("json");
    let want = want["hash"].as_str().expect("hash").to_owned();
    let shown = |term: &Term| format!("{:016x}", term.screen.as_ref().expect("screen").hash());
    for _ in 0..10 {
        term.until(|m| matches!(m, ServerMessage::FrameUpdate { .. })).await;
        if shown(&term) == want {
            break;
        }
    }
    assert_eq!(shown(&term), want, "the terminal shows the restored phone");

    // The state it left was checkpointed first: undo by restoring that.
    let before = restored["saved_before"]["id"].as_str().expect("saved before").to_owned();
    let (status, undo) =
        post(&control, &format!("{}/v1/phones/alice/checkpoints/restore", a.url), json!({ "id": before })).await;
    assert_eq!(status, 200, "{undo}");
    assert_eq!(notes(&control, &a.url, "alice").await, now_text);
    // Undo points are checkpoints like the others: copied, and in the catalogue.
    let catalogue = control.client.checkpoints("alice").await.expect("catalogue");
    let undo_points: Vec<_> = catalogue
        .iter()
        .filter(|c| c.entry.label.as_deref().is_some_and(|l| l.starts_with("before restoring")))
        .collect();
    assert_eq!(undo_points.len(), 2, "{catalogue:?}");
    assert!(undo_points.iter().all(|c| c.sites == ["site-a", "site-b"]), "{undo_points:?}");

    // Bad requests are named.
    let (status, e) =
        post(&control, &format!("{}/v1/phones/alice/checkpoints/restore", a.url), json!({ "id": "nope" })).await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().expect("error").contains("64 hex digits"), "{e}");
    let (status, e) =
        post(&control, &format!("{}/v1/phones/alice/checkpoints/restore", a.url), json!({ "at_ms": 5 })).await;
    assert_eq!(status, 404, "{e}");
    let (status, e) = post(&control, &format!("{}/v1/phones/alice/checkpoints/restore", a.url), json!({})).await;
    assert_eq!(status, 400, "{e}");
    let (status, _) = post(&control, &format!("{}/v1/phones/ghost/checkpoints", a.url), json!({})).await;
    assert_eq!(status, 404);

    // One more checkpoint after the undo (full: the restored VM shares no snapshot with
    // the last one), then site-a is lost with everything on its disk.
    let (status, taken) = post(&control, &format!("{}/v1/phones/alice/checkpoints", a.url), json!({})).await;
    assert_eq!(status, 200, "{taken}");
    assert_eq!(taken["replica"], "site-b");
    term.vanish();
    a.shutdown().await;
    std::fs::remove_dir_all(&dir_a).expect("site-a's disk is gone");

    // The operator places the phone on site-b; site-b brings it back from its copy.
    let (status, e) =
        post(&control, &format!("{}/v1/phones/alice/checkpoints/restore", b.url), json!({ "at_ms": u64::MAX })).await;
    assert_eq!(status, 409, "not placed there yet: {e}");
    control.client.set_placement("alice", "site-b").await.expect("placement");
    let (status, restored) =
        post(&control, &format!("{}/v1/phones/alice/checkpoints/restore", b.url), json!({ "at_ms": u64::MAX })).await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(notes(&control, &b.url, "alice").await, now_text, "nothing typed before the last checkpoint is lost");
    let mut term = Term::connect(&b.ws_url()).await;
    assert!(matches!(term.hello(&token, None, false).await, ServerMessage::Welcome { .. }));
    term.close().await;
    b.shutdown().await;
}

/// A site never comes back silently from a saved state older than its newest checkpoint: the checkpoint wins,
/// and a phone whose saved state cannot be read at all comes back from its checkpoint too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_restarts_a_phone_from_whichever_is_newer_its_saved_state_or_a_checkpoint() {
    let control = control().await;
    let dir = scratch("newest-state");
    let a = site(&control, "site-a", dir.clone()).await;
    let token = user_with_phone(&control, &a, "alice").await;
    let mut term = Term::connect(&a.ws_url()).await;
    term.hello(&token, None, false).await;
    term.tap(NOTES).await;
    let seq = term.type_text("old").await;
    term.acked(seq).await;
    term.close().await;
    // A saved state with "old" in it (the site writes one within a second of a change).
    let state = dir.join("phones/alice/phone.state");
    vmi_testkit::eventually(std::time::Duration::from_secs(10), "a saved state", async || state.exists()).await;
    let alice_dir = dir.join("phones/alice");
    let (snapshot, input_seqs) =
        vmi_site::persist::StateStore::open(&dir).expect("state store").read_phone(&alice_dir).expect("saved state");
    let stale = vmi_site::phone::SavedPhone { snapshot, input_seqs };

    let mut term = Term::connect(&a.ws_url()).await;
    let welcome = term.hello(&token, None, false).await;
    if let ServerMessage::Welcome { last_input_seq, .. } = welcome {
        term.seq = last_input_seq;
    }
    let seq = term.type_text(" and new").await;
    term.acked(seq).await;
    term.close().await;
    let (status, _) =
        post(&control, &format!("{}/v1/phones/alice/checkpoints", a.url), json!({ "label": "new" })).await;
    assert_eq!(status, 200);
    assert_eq!(a.shutdown().await.saved, 1);

    // The newest saved state is replaced by the stale one: the checkpoint is newer, and wins.
    vmi_site::persist::write_phone(&alice_dir, &stale).expect("stale state back");
    let a = site(&control, "site-a", dir.clone()).await;
    assert_eq!(notes(&control, &a.url, "alice").await, "old and new", "not the stale saved state");
    assert_eq!(a.shutdown().await.saved, 1);

    // A saved state that cannot be read: the checkpoint brings the phone back.
    std::fs::write(&state, b"not a phone").expect("damage");
    let a = site(&control, "site-a", dir).await;
    assert_eq!(notes(&control, &a.url, "alice").await, "old and new");
    a.shutdown().await;
}

/// One flipped byte in a stored chunk (chunks are shared by checkpoints, and by users): the restore finds it, fetches
/// the chunk from the copy on the other site, checks it, puts it back, and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_chunk_is_repaired_from_the_copy() {
    let control = control().await;
    let (dir_a, dir_b) = (scratch("repair-a"), scratch("repair-b"));
    let a = site(&control, "site-a", dir_a.clone()).await;
    let b = site(&control, "site-b", dir_b.clone()).await;
    let token = user_with_phone(&control, &a, "alice").await;
    let mut term = Term::connect(&a.ws_url()).await;
    term.hello(&token, None, false).await;
    term.tap(NOTES).await;
    let last = term.type_text("kept safe").await;
    term.acked(last).await;
    term.close().await;
    let (status, taken) =
        post(&control, &format!("{}/v1/phones/alice/checkpoints", a.url), json!({ "label": "good" })).await;
    assert_eq!(status, 200, "{taken}");
    assert_eq!(taken["replica"], "site-b", "{taken}");

    // Damage one chunk in site-a's store (the first, by name).
    let chunks = |dir: &std::path::Path| {
        let mut files: Vec<_> = std::fs::read_dir(dir.join("checkpoints/chunks"))
            .expect("chunks")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files
    };
    let damaged = chunks(&dir_a).into_iter().next().expect("a chunk");
    let good = std::fs::read(&damaged).expect("chunk");
    let mut bad = good.clone();
    let end = bad.len() - 1;
    bad[end] ^= 0x55;
    std::fs::write(&damaged, &bad).expect("damage");

    let (status, restored) =
        post(&control, &format!("{}/v1/phones/alice/checkpoints/restore", a.url), json!({ "at_ms": u64::MAX })).await;
    assert_eq!(status, 200, "restored after the repair: {restored}");
    assert_eq!(std::fs::read(&damaged).expect("chunk"), good, "the chunk is whole again");
    assert_eq!(notes(&control, &a.url, "alice").await, "kept safe");
    a.shutdown().await;
    b.shutdown().await;
}

/// A flipped byte in a page of a phone's saved state (pages of the site's state store are shared by its phones): at
/// the site's start the read finds it, the page comes back from the other site (which holds the phone's standby
/// copy, the same pages), and the phone runs exactly as it was saved, not from an older checkpoint or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_page_of_a_saved_state_is_repaired_from_another_site() {
    let control = control().await;
    let (dir_a, dir_b) = (scratch("state-repair-a"), scratch("state-repair-b"));
    let a = site(&control, "site-a", dir_a.clone()).await;
    let b = site(&control, "site-b", dir_b.clone()).await;
    let token = user_with_phone(&control, &a, "alice").await;
    let mut term = Term::connect(&a.ws_url()).await;
    term.hello(&token, None, false).await;
    term.tap(NOTES).await;
    let last = term.type_text("kept whole").await;
    term.acked(last).await;
    term.close().await;
    let standby = dir_b.join("standby").join("alice").join(vmi_site::persist::PHONE_FILE);
    vmi_testkit::eventually(std::time::Duration::from_secs(30), "site-b holds alice's standby copy", async || {
        standby.exists()
    })
    .await;
    assert_eq!(a.shutdown().await.saved, 1);
    assert!(list(&control, &b.url, "alice").await.is_empty(), "no checkpoint to fall back on");

    // Pages only an older state needed go first (as the site's next start would sweep them), so each page left is
    // one the saved state needs. Then damage three of them (alice is site-a's only phone: every page is hers).
    vmi_site::persist::StateStore::open(&dir_a).expect("state store").sweep(&dir_a).expect("sweep");
    let mut pages: Vec<_> = std::fs::read_dir(dir_a.join("state/chunks"))
        .expect("state chunks")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    pages.sort();
    let mut good = Vec::new();
    for page in pages.iter().take(3) {
        let bytes = std::fs::read(page).expect("page");
        let mut bad = bytes.clone();
        let end = bad.len() - 1;
        bad[end] ^= 0x55;
        std::fs::write(page, &bad).expect("damage");
        good.push((page.clone(), bytes));
    }

    let a = site(&control, "site-a", dir_a).await;
    assert_eq!(notes(&control, &a.url, "alice").await, "kept whole", "the saved state, whole");
    for (page, bytes) in good {
        assert_eq!(std::fs::read(&page).expect("page"), bytes, "{} is whole again", page.display());
    }
    a.shutdown().await;
    b.shutdown().await;
}
