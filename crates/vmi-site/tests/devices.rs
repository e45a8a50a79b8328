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
