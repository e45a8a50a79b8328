//! Offline checkout and checkin (docs/OFFLINE.md) against a real site and control
//! service: the phone leaves, is edited on the terminal, and comes back with the edits;
//! while it is out the site runs it nowhere and says why; expiry, cancel and a restart
//! follow the documented rules.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use vmi_protocol::offline::{Checkin, CheckinHeader};
use vmi_protocol::{ErrorCode, ServerMessage};
use vmi_site::checkout::CheckoutError;
use vmi_site::{SiteError, SiteHandle};
use vmi_terminal::TerminalError;
use vmi_terminal::offline::{self, CheckinArgs, CheckoutArgs, RunArgs};
use vmi_testkit::eventually;

fn checkout_args(control: &Control, token: &str, dir: &Path, lease: Option<&str>) -> CheckoutArgs {
    CheckoutArgs {
        control: Some(control.url.clone()),
        token: token.into(),
        ca: Some(test_ca_file()),
        lease: lease.map(str::to_owned),
        dir: Some(dir.to_owned()),
    }
}

/// Plays `script` on the checked-out phone in `dir`.
async fn run_offline(dir: &Path, script: &str) -> offline::RunReport {
    let file = dir.with_extension(format!("{}.script", std::process::id()));
    std::fs::write(&file, script).expect("script");
    let args = RunArgs { dir: Some(dir.to_owned()), script: Some(file), ..RunArgs::default() };
    tokio::task::spawn_blocking(move || offline::run_offline(&args, &mut std::io::sink()))
        .await
        .expect("run thread")
        .expect("offline run")
}

async fn checkin(dir: &Path) -> Result<serde_json::Value, TerminalError> {
    offline::checkin(&CheckinArgs { dir: Some(dir.to_owned()) }).await
}

async fn notes(control: &Control, site: &SiteHandle, user: &str) -> (u16, String) {
    let (status, body) = control.get(&format!("{}/v1/phones/{user}/kv/notes.text", site.url)).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Types `text` into Notes through a real terminal session.
async fn type_online(site: &SiteHandle, token: &str, text: &str) {
    let mut term = Term::connect(&site.ws_url()).await;
    assert!(matches!(term.hello(token, None, false).await, ServerMessage::Welcome { .. }));
    term.tap(NOTES).await;
    let last = term.type_text(text).await;
    term.acked(last).await;
    term.close().await;
}

/// The protocol error a Hello gets, or None if it is welcome.
async fn hello_refusal(site: &SiteHandle, token: &str) -> Option<(ErrorCode, String)> {
    let mut term = Term::connect(&site.ws_url()).await;
    let answer = term.hello(token, None, false).await;
    term.close().await;
    match answer {
        ServerMessage::Error { code, message } => Some((code, message)),
        ServerMessage::Welcome { .. } => None,
        other => panic!("unexpected answer to Hello: {other:?}"),
    }
}

fn refused(result: Result<impl std::fmt::Debug, TerminalError>) -> (u16, String) {
    match result {
        Err(TerminalError::Refused { status, message }) => (status, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Waits until the site runs `user`'s phone again (a lease ended).
async fn until_running(site: &SiteHandle, user: &str) {
    let what = format!("{user}'s phone running on {} again", site.state.id);
    eventually(Duration::from_secs(30), &what, async || site.state.users().iter().any(|u| u == user)).await;
}

fn dir_of(name: &str) -> PathBuf {
    scratch(&format!("offline-{name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_edit_offline_checkin_and_the_site_shows_the_edits() {
    let control = control().await;
    let site = site(&control, "site-a", scratch("offline-main-site")).await;
    let token = user_with_phone(&control, &site, "alice").await;
    type_online(&site, &token, "Online. ").await;
    let dir = dir_of("main");

    // A terminal attached at checkout is told why its phone went.
    let mut watcher = Term::connect(&site.ws_url()).await;
    assert!(matches!(watcher.hello(&token, None, false).await, ServerMessage::Welcome { .. }));
    let (_, lease) = offline::checkout(&checkout_args(&control, &token, &dir, Some("2h"))).await.expect("checkout");
    let (goodbye, _) = watcher.until(|m| matches!(m, ServerMessage::Error { .. })).await;
    assert!(
        matches!(&goodbye, ServerMessage::Error { code: ErrorCode::NotHere, message } if message.contains("checked out to device")),
        "{goodbye:?}"
    );
    assert_eq!(lease.user, "alice");
    assert!(lease.expires_ms - lease.issued_ms == 2 * 3600 * 1000);
    for file in ["base.snap", "image.wasm", "offline.json"] {
        assert!(dir.join(file).exists(), "{file} kept on the terminal");
    }

    // While it is out the site runs it nowhere and says why.
    assert!(site.state.users().is_empty(), "the site does not run a checked-out phone");
    let (code, message) = hello_refusal(&site, &token).await.expect("Hello refused while checked out");
    assert_eq!(code, ErrorCode::NotHere);
    assert!(message.contains(&format!("checked out to device {}", lease.device_id)), "{message}");
    assert!(message.contains(" until 2"), "names the expiry: {message}");
    let second = checkout_args(&control, &token, &dir_of("main-second"), None);
    let (status, message) = refused(offline::checkout(&second).await);
    assert_eq!(status, 409);
    assert!(message.contains(&format!("checked out to device {}", lease.device_id)), "{message}");
    assert!(matches!(site.state.create_phone("alice").await, Err(SiteError::CheckedOut(_))));
    let migrated = vmi_site::migration::migrate_out(&site.state, "alice", "site-b").await;
    assert!(matches!(migrated, Err(SiteError::CheckedOut(_))), "{:?}", migrated.err());
    let same_dir = offline::checkout(&checkout_args(&control, &token, &dir, None)).await;
    assert!(matches!(same_dir, Err(TerminalError::Usage(_))), "a directory holds one checkout");

    // Two offline runs, one delta each; one checkin takes both.
    let first = run_offline(&dir, "tap 274 1090\ntype Offline\n").await;
    assert!(first.incremental, "a delta against the checkout base");
    let second = run_offline(&dir, "type  edits\n").await;
    assert!(second.incremental);
    let report = checkin(&dir).await.expect("checkin");
    assert_eq!(report["outcome"], "checked in");
    assert_eq!(report["applied"], 2);

    assert_eq!(notes(&control, &site, "alice").await, (200, "Online. Offline edits".to_string()));
    assert!(hello_refusal(&site, &token).await.is_none(), "terminals are welcome again");
    assert!(dir.join("checked-in.json").exists() && !dir.join("offline.json").exists());
    let (status, message) = refused(checkin(&dir).await.map_err(|e| match e {
        TerminalError::Offline(m) => TerminalError::Refused { status: 0, message: m },
        e => e,
    }));
    assert_eq!(status, 0, "a checked-in directory has nothing to send: {message}");

    // The directory takes a new checkout, and the phone goes out again.
    offline::checkout(&checkout_args(&control, &token, &dir, None)).await.expect("second checkout after checkin");
    checkin(&dir).await.expect("an unchanged checkin");
    assert_eq!(notes(&control, &site, "alice").await.1, "Online. Offline edits");
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_checkins_are_refused_and_the_base_is_kept() {
    let control = control().await;
    let site = site(&control, "site-a", scratch("offline-bad-site")).await;
    let token = user_with_phone(&control, &site, "alice").await;
    type_online(&site, &token, "Base").await;
    let dir = dir_of("bad");
    let (_, lease) = offline::checkout(&checkout_args(&control, &token, &dir, None)).await.expect("checkout");
    run_offline(&dir, "tap 274 1090\ntype  one\n").await;
    run_offline(&dir, "type  two\n").await;
    let run = |name: &str| std::fs::read(dir.join(name)).expect("run file");
    let header = |id: &str| CheckinHeader { lease_id: id.into(), input_seqs: Default::default() };

    let corrupt = Checkin { header: header(&lease.lease_id), chain: vec![b"not a snapshot".to_vec()] };
    let e = site.state.checkin(&token, "alice", corrupt).await.expect_err("corrupt");
    assert!(matches!(&e, SiteError::Checkout(CheckoutError::BadRequest(m)) if m.contains("corrupt")), "{e}");
    let mut flipped = run("run-1.snap");
    let last = flipped.len() - 10;
    flipped[last] ^= 0xff;
    let damaged = Checkin { header: header(&lease.lease_id), chain: vec![flipped] };
    let e = site.state.checkin(&token, "alice", damaged).await.expect_err("damaged");
    assert!(matches!(&e, SiteError::Checkout(CheckoutError::BadRequest(m)) if m.contains("does not restore")), "{e}");
    let skipped = Checkin { header: header(&lease.lease_id), chain: vec![run("run-2.snap")] };
    let e = site.state.checkin(&token, "alice", skipped).await.expect_err("not against the base");
    assert!(
        matches!(&e, SiteError::Checkout(CheckoutError::BadRequest(m)) if m.contains("not the checkout base")),
        "{e}"
    );
    let wrong = Checkin { header: header("0123"), chain: vec![run("run-1.snap")] };
    let e = site.state.checkin(&token, "alice", wrong).await.expect_err("wrong lease");
    assert!(
        matches!(&e, SiteError::Checkout(CheckoutError::LeaseRefused(m)) if m.contains("is not the one out")),
        "{e}"
    );
    let stranger = control.client.create_user("bob").await.map(|_| ());
    stranger.expect("bob");
    let bobs = control.client.create_device("bob", "bob's").await.expect("device").token;
    let theirs = Checkin { header: header(&lease.lease_id), chain: vec![] };
    let e = site.state.checkin(&bobs, "alice", theirs).await.expect_err("another user's token");
    assert!(matches!(e, SiteError::Checkout(CheckoutError::Forbidden(_))), "{e}");
    assert!(site.state.users().is_empty(), "still out after every refusal");

    // Nothing was lost: the real checkin still goes through.
    checkin(&dir).await.expect("checkin after the refusals");
    assert_eq!(notes(&control, &site, "alice").await.1, "Base one two");
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_resumes_the_phone_from_its_base_and_refuses_the_late_checkin() {
    let control = control().await;
    let site = site(&control, "site-a", scratch("offline-expiry-site")).await;
    let token = user_with_phone(&control, &site, "alice").await;
    type_online(&site, &token, "Base").await;
    let dir = dir_of("expiry");
    offline::checkout(&checkout_args(&control, &token, &dir, Some("1s"))).await.expect("checkout");
    run_offline(&dir, "tap 274 1090\ntype  lost\n").await;
    until_running(&site, "alice").await;

    assert_eq!(notes(&control, &site, "alice").await.1, "Base", "resumed from the checkout base");
    let (status, message) = refused(checkin(&dir).await);
    assert_eq!(status, 409);
    assert!(message.contains("lease expired; the phone resumed on the site at"), "{message}");
    assert!(hello_refusal(&site, &token).await.is_none());
    assert!(dir.join("offline.json").exists(), "the offline state stays on the terminal");
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_checkout_resumes_from_its_base_and_refuses_the_checkin() {
    let control = control().await;
    let site = site(&control, "site-a", scratch("offline-cancel-site")).await;
    let token = user_with_phone(&control, &site, "alice").await;
    type_online(&site, &token, "Base").await;
    let dir = dir_of("cancel");
    offline::checkout(&checkout_args(&control, &token, &dir, None)).await.expect("checkout");
    run_offline(&dir, "tap 274 1090\ntype  gone\n").await;

    let cancel = format!("{}/v1/phones/alice/checkout/cancel", site.url);
    let (status, body) = control.operator().post_json(&cancel, &serde_json::json!({})).await.expect("cancel");
    assert_eq!(status, 200, "{body}");
    assert_eq!(notes(&control, &site, "alice").await, (200, "Base".to_string()));
    let (status, message) = refused(checkin(&dir).await);
    assert_eq!(status, 409);
    assert!(message.contains("cancelled by an operator; the phone resumed on the site at"), "{message}");
    let (status, body) = control.operator().post_json(&cancel, &serde_json::json!({})).await.expect("cancel again");
    assert_eq!(status, 404, "nothing to cancel: {body}");
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_restart_during_checkout_keeps_the_phone_checked_out() {
    let control = control().await;
    let data = scratch("offline-restart-site");
    let site_a = site(&control, "site-a", data.clone()).await;
    let token = user_with_phone(&control, &site_a, "alice").await;
    type_online(&site_a, &token, "Base").await;
    let dir = dir_of("restart");
    let (_, lease) = offline::checkout(&checkout_args(&control, &token, &dir, None)).await.expect("checkout");
    assert_eq!(site_a.shutdown().await.saved, 0, "nothing running to save");

    let site_b = site(&control, "site-a", data.clone()).await;
    assert!(site_b.state.users().is_empty(), "not restored: it is out");
    let (_, message) = hello_refusal(&site_b, &token).await.expect("refused after the restart");
    assert!(message.contains(&format!("checked out to device {}", lease.device_id)), "{message}");
    run_offline(&dir, "tap 274 1090\ntype  and back\n").await;
    checkin(&dir).await.expect("checkin to the restarted site (found through the control service)");
    assert_eq!(notes(&control, &site_b, "alice").await.1, "Base and back");
    assert_eq!(site_b.shutdown().await.saved, 1);

    let site_c = site(&control, "site-a", data).await;
    assert_eq!(
        notes(&control, &site_c, "alice").await.1,
        "Base and back",
        "the checked-in state is what the site keeps"
    );
    site_c.shutdown().await;
}

/// A phone placed elsewhere while it was out (its site given up for lost, brought up from
/// a checkpoint copy) never comes back to life on the old site too: neither the checkin
/// nor the cancel resumes it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_placed_elsewhere_while_out_does_not_resume_on_the_old_site() {
    let control = control().await;
    let site_a = site(&control, "site-a", scratch("offline-moved-a")).await;
    let site_b = site(&control, "site-b", scratch("offline-moved-b")).await;
    let token = user_with_phone(&control, &site_a, "alice").await;
    type_online(&site_a, &token, "Base").await;
    let dir = dir_of("moved");
    offline::checkout(&checkout_args(&control, &token, &dir, None)).await.expect("checkout");
    run_offline(&dir, "tap 274 1090\ntype  offline\n").await;

    control.client.set_placement("alice", "site-b").await.expect("placed on site-b");
    let (status, message) = refused(checkin(&dir).await);
    assert_eq!(status, 409);
    assert!(message.contains("now belongs to site-b"), "{message}");
    let cancel = format!("{}/v1/phones/alice/checkout/cancel", site_a.url);
    let (status, body) = control.operator().post_json(&cancel, &serde_json::json!({})).await.expect("cancel");
    assert_eq!(status, 409, "{body}");
    assert!(site_a.state.users().is_empty(), "not running on site-a");
    site_a.shutdown().await;
    site_b.shutdown().await;
}
