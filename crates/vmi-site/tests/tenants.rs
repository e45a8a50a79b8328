//! Tenants and images through a real control service and site: a tenant over its phone or
//! memory quota gets a clear error and no phone; a published image version reaches a phone
//! on its next restart with the user's notes kept; a bad version leaves the phone where it
//! was; a rollback brings the old version back, notes still there; a site restart and a
//! migration carry phones on published images.

mod common;

use common::*;
use serde_json::Value;
use vmi_control_api::{TenantRequest, TenantUpdate};
use vmi_protocol::ServerMessage;
use vmi_site::SiteError;

const MIB: u64 = 1 << 20;

/// The same phone code as another image version: an extra custom section changes the
/// image's bytes (and hash) but not what it does (as in vmi-wasm-engine's upgrade test).
fn next_version(wasm: &[u8], tag: u8) -> Vec<u8> {
    let mut v = wasm.to_vec();
    let name = b"vmi-version";
    v.push(0); // custom section id
    v.push((1 + name.len() + 1) as u8);
    v.push(name.len() as u8);
    v.extend_from_slice(name);
    v.push(tag);
    v
}

async fn tenant(control: &Control, name: &str, max_phones: Option<u32>, max_memory_bytes: Option<u64>) {
    let req = TenantRequest { name: name.into(), max_phones, max_memory_bytes, image: None };
    control.client.create_tenant(&req).await.expect("tenant");
}

async fn member(control: &Control, site: &vmi_site::SiteHandle, user: &str, tenant: &str) {
    control.client.create_user_in(user, Some(tenant)).await.expect("user");
    control.client.set_placement(user, &site.state.id).await.expect("placement");
}

/// The phone listing's entry for `user`.
async fn listed(control: &Control, site_url: &str, user: &str) -> Value {
    let (status, body) = control.get(&format!("{site_url}/v1/phones")).await;
    assert_eq!(status, 200);
    let phones: Value = serde_json::from_slice(&body).expect("json");
    phones["phones"].as_array().expect("phones").iter().find(|p| p["user"] == user).cloned().expect("listed")
}

async fn notes(control: &Control, site_url: &str, user: &str) -> String {
    let (status, body) = control.get(&format!("{site_url}/v1/phones/{user}/kv/notes.text")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    String::from_utf8(body).expect("utf-8 notes")
}

async fn restart(control: &Control, site_url: &str, user: &str) -> Value {
    let (status, body) = control
        .operator()
        .post_json(&format!("{site_url}/v1/phones/{user}/restart"), &serde_json::json!({}))
        .await
        .expect("restart");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("report")
}

/// Opens a terminal, goes to Notes and types `text`; returns when it is applied.
async fn type_note(ws_url: &str, token: &str, text: &str) {
    let mut term = Term::connect(ws_url).await;
    match term.hello(token, None, false).await {
        // Input numbering carries across restarts: continue after the last applied input.
        ServerMessage::Welcome { last_input_seq, .. } => term.seq = last_input_seq,
        other => panic!("expected Welcome, got {other:?}"),
    }
    term.tap(NOTES).await;
    let last = term.type_text(text).await;
    term.acked(last).await;
    term.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_phone_quota_gets_a_clear_error_and_no_phone() {
    let control = control().await;
    let site = site(&control, "site-a", scratch("quota-phones")).await;
    tenant(&control, "acme", Some(2), None).await;
    for user in ["ann", "bob", "cat"] {
        member(&control, &site, user, "acme").await;
    }
    site.state.create_phone("ann").await.expect("first phone");
    site.state.create_phone("bob").await.expect("second phone");

    let refused = site.state.create_phone("cat").await.expect_err("a third phone is over the quota");
    assert!(matches!(refused, SiteError::Admission { status: 403, .. }), "{refused:?}");
    assert_eq!(refused.to_string(), "tenant \"acme\" is at its quota of 2 phones");
    assert_eq!(site.state.users(), ["ann", "bob"], "nothing was created");

    // The operator endpoint says the same, with 403.
    let (status, body) = control
        .operator()
        .post_json(&format!("{}/v1/phones", site.url), &serde_json::json!({ "user": "cat" }))
        .await
        .expect("post");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("tenant \\\"acme\\\" is at its quota of 2 phones"), "{body}");
    let acme = &control.client.list_tenants().await.expect("tenants")[0];
    assert_eq!((acme.phones, acme.memory_bytes), (2, 128 * MIB), "the refused phone does not count");
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_memory_quota_gets_a_clear_error_and_no_phone() {
    let control = control().await;
    let site = site(&control, "site-a", scratch("quota-memory")).await;
    tenant(&control, "tiny", None, Some(96 * MIB)).await;
    member(&control, &site, "ann", "tiny").await;
    member(&control, &site, "bob", "tiny").await;
    site.state.create_phone("ann").await.expect("64 MiB fit in 96");
    let refused = site.state.create_phone("bob").await.expect_err("128 MiB do not");
    assert_eq!(refused.to_string(), "tenant \"tiny\" would use 128 MiB of its 96 MiB memory quota");
    assert_eq!(site.state.users(), ["ann"]);

    // More room: the same phone is admitted.
    let more = TenantUpdate { max_memory_bytes: Some(Some(128 * MIB)), ..TenantUpdate::default() };
    control.client.update_tenant("tiny", &more).await.expect("raise the quota");
    site.state.create_phone("bob").await.expect("admitted now");
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_upgrade_keeps_the_users_notes_and_a_rollback_goes_back() {
    let control = control().await;
    let dir = scratch("upgrade");
    let site_a = site(&control, "site-a", dir.clone()).await;
    let builtin = vmi_phone_image::PHONE_WASM;
    let v1 = control.client.publish_image("phone", builtin).await.expect("publish v1");
    assert_eq!(v1.version, 1);
    let token = user_with_phone(&control, &site_a, "alice").await;
    assert_eq!(listed(&control, &site_a.url, "alice").await["image"]["version"], 1);
    type_note(&site_a.ws_url(), &token, "Kept across versions").await;

    // Version 2 reaches the phone on its restart, notes kept.
    let v2 = control.client.publish_image("phone", &next_version(builtin, 2)).await.expect("publish v2");
    assert_eq!(v2.version, 2);
    assert_eq!(listed(&control, &site_a.url, "alice").await["image"]["version"], 1, "nothing changes before a restart");
    let report = restart(&control, &site_a.url, "alice").await;
    assert_eq!((report["upgraded"].clone(), report["to"]["version"].clone()), (true.into(), 2.into()), "{report}");
    let phone = listed(&control, &site_a.url, "alice").await;
    assert_eq!((phone["image"]["version"].clone(), phone["image"]["hash"].clone()), (2.into(), v2.hash.into()));
    assert_eq!(notes(&control, &site_a.url, "alice").await, "Kept across versions");
    type_note(&site_a.ws_url(), &token, "!").await;
    assert_eq!(
        notes(&control, &site_a.url, "alice").await,
        "Kept across versions!",
        "the new version works on the notes"
    );

    // A version that does not load leaves the phone where it was, state intact.
    let bad = control.client.publish_image("phone", b"\0asm\x01\0\0\0").await.expect("control takes any module");
    assert_eq!(bad.version, 3);
    let report = restart(&control, &site_a.url, "alice").await;
    assert_eq!(report["upgraded"], false, "{report}");
    assert!(report["upgrade_error"].as_str().is_some_and(|e| e.contains("version 3")), "{report}");
    assert_eq!(listed(&control, &site_a.url, "alice").await["image"]["version"], 2);
    assert_eq!(notes(&control, &site_a.url, "alice").await, "Kept across versions!");

    // Roll back the bad version, then version 2: the phone goes back to version 1 on its
    // restart, with what was typed on version 2.
    assert_eq!(control.client.rollback_image("phone").await.expect("withdraw v3").version, 2);
    assert_eq!(control.client.rollback_image("phone").await.expect("withdraw v2").version, 1);
    let refused = control.client.rollback_image("phone").await.expect_err("v1 is the only one left");
    assert_eq!(refused.status(), Some(409));
    let report = restart(&control, &site_a.url, "alice").await;
    assert_eq!((report["upgraded"].clone(), report["to"]["version"].clone()), (true.into(), 1.into()), "{report}");
    assert_eq!(notes(&control, &site_a.url, "alice").await, "Kept across versions!");

    // A version published while the site is down reaches the phone when the site starts.
    assert_eq!(site_a.shutdown().await.saved, 1);
    let v4 = control.client.publish_image("phone", &next_version(builtin, 4)).await.expect("publish v4");
    let site_a = site(&control, "site-a", dir).await;
    let phone = listed(&control, &site_a.url, "alice").await;
    assert_eq!((phone["image"]["version"].clone(), phone["image"]["hash"].clone()), (4.into(), v4.hash.into()));
    assert_eq!(notes(&control, &site_a.url, "alice").await, "Kept across versions!");
    site_a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_on_a_published_version_migrates_to_a_site_that_never_had_it() {
    let control = control().await;
    let a = site(&control, "site-a", scratch("image-migrate-a")).await;
    let b = site(&control, "site-b", scratch("image-migrate-b")).await;
    let v2 = next_version(vmi_phone_image::PHONE_WASM, 2);
    control.client.publish_image("phone", &v2).await.expect("publish");
    let token = user_with_phone(&control, &a, "alice").await;
    type_note(&a.ws_url(), &token, "Travels").await;
    let hash = vmi_engine::ImageHash::of(&v2);
    assert!(b.state.image_wasm(&hash).is_none(), "site-b has not seen the image yet");

    let order = serde_json::json!({ "to": "site-b" });
    let (status, body) =
        control.operator().post_json(&format!("{}/v1/phones/alice/migrate", a.url), &order).await.expect("migrate");
    assert_eq!(status, 200, "{body}");
    assert_eq!(listed(&control, &b.url, "alice").await["image"]["hash"], hash.to_hex());
    assert_eq!(b.state.image_wasm(&hash).as_deref(), Some(v2.as_slice()), "fetched from the control service");
    assert_eq!(notes(&control, &b.url, "alice").await, "Travels");
    a.shutdown().await;
    b.shutdown().await;
}
