//! Lost device, same phone: revoking a device cuts its live session at once and its token
//! forever; a new device paired with a one-time code sees exactly the phone as it was.

mod common;

use common::*;
use vmi_protocol::{ErrorCode, ServerMessage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_cuts_the_old_device_and_a_pairing_code_brings_the_phone_back() {
    let control = control().await;
    let site = site(&control, "site-a", scratch("devices")).await;
    let old_token = user_with_phone(&control, &site, "alice").await;
    let old_device = control.client.list_devices("alice").await.expect("devices")[0].device_id;

    // The old phone in use: a note typed, a live session open.
    let mut old = Term::connect(&site.ws_url()).await;
    old.hello(&old_token, None, false).await;
    old.tap(NOTES).await;
    let last = old.type_text("before the loss").await;
    old.acked(last).await;
    let (_, before) = control.get(&format!("{}/v1/phones/alice/screen-hash", site.url)).await;

    // Lost: the operator revokes it. The live session is closed at once, with the reason.
    control.client.revoke_device(old_device).await.expect("revoke");
    let (error, _) = old.until(|m| matches!(m, ServerMessage::Error { .. })).await;
    assert!(matches!(error, ServerMessage::Error { code: ErrorCode::Unauthorized, .. }), "{error:?}");
    assert!(old.recv().await.is_none(), "the old session is closed");
    let mut again = Term::connect(&site.ws_url()).await;
    let answer = again.hello(&old_token, None, false).await;
    assert!(matches!(answer, ServerMessage::Error { code: ErrorCode::Unauthorized, .. }), "{answer:?}");

    // A new device pairs with a one-time code and finds the phone exactly as it was.
    let code = control.client.pair_code("alice").await.expect("code");
    let new = control.client.pair(&code.code, "new phone").await.expect("pair");
    assert!(control.client.pair(&code.code, "thief").await.is_err(), "a code works once");
    let mut term = Term::connect(&site.ws_url()).await;
    assert!(matches!(term.hello(&new.token, None, false).await, ServerMessage::Welcome { .. }));
    term.until(|m| matches!(m, ServerMessage::FrameUpdate { .. })).await;
    let (_, after) = control.get(&format!("{}/v1/phones/alice/screen-hash", site.url)).await;
    assert_eq!(after, before, "the same screen");
    assert_eq!(
        format!("{:016x}", term.screen.as_ref().expect("screen").hash()),
        serde_json::from_slice::<serde_json::Value>(&after).expect("json")["hash"].as_str().expect("hash"),
        "and the new terminal shows it"
    );
    let (_, notes) = control.get(&format!("{}/v1/phones/alice/kv/notes.text", site.url)).await;
    assert_eq!(notes, b"before the loss");

    // A signed-in device can issue a code too; a made-up code is refused.
    let code = control.client.pair_code_for_device(&new.token).await.expect("code from a device");
    assert_eq!(code.user, "alice");
    assert!(control.client.pair("00000-00000", "guess").await.is_err());
    term.close().await;
    site.shutdown().await;
}

/// The page pairs a browser through the site that served it: a signed-in device asks the site for a code, a
/// caller with no credential trades it at the site for a new device, which then opens the phone. Wrong codes
/// count against the caller's address at the site (the control service does not count the site's calls: one
/// guesser must not lock every user of the site out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_pairs_a_new_device_through_its_site() {
    let control = control().await;
    let site = site(&control, "site-a", scratch("pair-page")).await;
    let token = user_with_phone(&control, &site, "bo").await;

    let (status, body) = bearer(&token).post_json(&format!("{}/v1/me/pair-code", site.url), &()).await.expect("POST");
    assert_eq!(status, 201, "{body}");
    let code: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(code["user"], "bo");
    let code = code["code"].as_str().expect("code").to_owned();

    let anyone = bearer_less();
    let pair = |code: String, name: &str| {
        let anyone = anyone.clone();
        let url = format!("{}/v1/pair", site.url);
        let body = serde_json::json!({ "code": code, "name": name });
        async move { anyone.post_json(&url, &body).await.expect("POST") }
    };
    let (status, body) = pair(code.clone(), "").await;
    assert_eq!(status, 400, "a device needs a name: {body}");
    let (status, body) = pair(code.clone(), "bo's tablet").await;
    assert_eq!(status, 201, "{body}");
    let device: serde_json::Value = serde_json::from_str(&body).expect("json");
    let new_token = device["token"].as_str().expect("token").to_owned();
    let mut term = Term::connect(&site.ws_url()).await;
    assert!(matches!(term.hello(&new_token, None, false).await, ServerMessage::Welcome { .. }));
    term.close().await;

    // Used once; then wrong codes from this address are locked out at the site.
    let (status, body) = pair(code, "thief").await;
    assert_eq!(status, 404, "{body}");
    let mut locked = false;
    for _ in 0..20 {
        let (status, _) = pair("00000-00000".into(), "guess").await;
        if status == 429 {
            locked = true;
            break;
        }
        assert_eq!(status, 404);
    }
    assert!(locked, "guessing is locked out at the site");
    // The control service did not count the site's calls: an operator's code still pairs directly.
    let code = control.client.pair_code("bo").await.expect("code");
    assert!(control.client.pair(&code.code, "desk").await.is_ok());
    site.shutdown().await;
}
