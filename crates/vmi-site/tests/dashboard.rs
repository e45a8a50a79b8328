//! The control service's operator dashboard (`GET /dashboard`) in real headless Chromium, driven by
//! tests/browser/dashboard.mjs: wrong tokens are refused with the reason; the operator sees both sites on the map,
//! healthy, with the phone counted; a live migration shows in the page's live list within a second of its commit
//! and the phone counts move; another phone's crash shows in the live list and its history; the phone's history
//! shows the move and its checkpoint; the graphs fill from `/metrics`; the phone's site stopping shows as that site
//! unhealthy and the failover in the live list and on the map. Screenshots go to the test's scratch directory (`vmi-test-PID-dashboard-shots`).

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::browser::*;
use common::*;
use vmi_control_api::tenants::TenantRequest;
use vmi_site::SiteHandle;

/// A phone image that traps on a touch: a crash on demand.
const CRASHING_GUEST: &str = r#"(module
  (import "vmi" "fb_attach" (func $fb_attach (param i32 i32 i32)))
  (memory (export "memory") 64)
  (func (export "vmi_init") (param $w i32) (param $h i32)
    (call $fb_attach (i32.const 65536) (local.get $w) (local.get $h)))
  (func (export "vmi_event") (param $kind i32) (param $a i32) (param $b i32) (param $c i32)
    (if (i32.eq (local.get $kind) (i32.const 1)) (then unreachable))))"#;

/// How late the page may show a migration, counted from its commit.
const SHOWN_WITHIN_MS: u64 = 1000;

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

/// A site at (`lat`, `lon`), once it holds its lease (the helpers put every site at one place; the map wants two).
async fn site_at(control: &Control, id: &str, data: PathBuf, lat: f64, lon: f64) -> SiteHandle {
    let site = vmi_site::start(vmi_site::SiteConfig { lat, lon, ..site_config(control, id, data) })
        .await
        .expect("site starts");
    vmi_testkit::eventually(Duration::from_secs(30), "the site's first heartbeat answered", async || {
        site.state.holds_lease()
    })
    .await;
    site
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_sites_a_live_migration_within_a_second_the_history_and_the_graphs() {
    let started = std::time::Instant::now();
    let control = control().await;
    // Two sites about 9 km apart in Helsinki.
    let a = site_at(&control, "site-a", scratch("dashboard-a"), 60.170, 24.938).await;
    let b = site_at(&control, "site-b", scratch("dashboard-b"), 60.205, 25.080).await;
    let tenant = TenantRequest { name: "acme".into(), max_phones: Some(10), ..TenantRequest::default() };
    control.client.create_tenant(&tenant).await.expect("tenant");
    control.client.create_user_in("alice", Some("acme")).await.expect("user");
    control.client.set_placement("alice", "site-a").await.expect("placement");
    a.state.create_phone("alice").await.expect("phone");
    let device = control.client.create_device("alice", "test device").await.expect("device").token;
    // bob, of another tenant, runs an image that crashes when touched.
    let crashy = wat::parse_str(CRASHING_GUEST).expect("guest parses");
    control.client.publish_image("crashy", &crashy).await.expect("publish");
    let beta = TenantRequest { name: "beta".into(), image: Some("crashy".into()), ..TenantRequest::default() };
    control.client.create_tenant(&beta).await.expect("tenant");
    control.client.create_user_in("bob", Some("beta")).await.expect("user");
    control.client.set_placement("bob", "site-a").await.expect("placement");
    a.state.create_phone("bob").await.expect("phone");
    let bob = control.client.create_device("bob", "test device").await.expect("device").token;
    let (status, taken) = control
        .post(&format!("{}/v1/phones/alice/checkpoints", a.url), &serde_json::json!({ "label": "before the move" }))
        .await;
    assert_eq!(status, 200, "{taken}");
    vmi_testkit::eventually(Duration::from_secs(20), "the checkpoint in the catalogue", async || {
        control.client.checkpoints("alice").await.is_ok_and(|c| !c.is_empty())
    })
    .await;
    // Both phones counted in site-a's heartbeat before the page looks.
    vmi_testkit::eventually(Duration::from_secs(10), "site-a's heartbeat counting the phones", async || {
        control.client.list_sites().await.is_ok_and(|s| s.iter().any(|s| s.site.id == "site-a" && s.site.phones == 2))
    })
    .await;

    // The control service serves plain HTTP to loopback on its TLS port (the browser does not trust the test CA),
    // as the other browser tests reach the sites.
    let page = control.url.replace("https://", "http://") + "/dashboard";
    let shots = scratch("dashboard-shots");
    // The tokens in the driver's environment, not its argv.
    let mut driver = Driver::start_with_env(
        "dashboard",
        &["--url", &page, "--user", "alice", "--from", "site-a", "--to", "site-b", "--crashed", "bob"],
        &[("VMI_OPERATOR_TOKEN", &control.operator_token), ("VMI_DEVICE_TOKEN", &device)],
        &shots,
    );
    driver.step("unit").await;

    let refused = driver.step("refused").await;
    let wrong = refused["wrong"].as_str().expect("message");
    assert!(wrong.contains("401") && wrong.contains("unknown or revoked token"), "{refused}");
    assert!(refused["device"].as_str().expect("message").contains("403"), "{refused}");

    let signed_in = driver.step("signed_in").await;
    assert_eq!(signed_in["token_in_url"], false, "{signed_in}");
    assert_eq!(signed_in["token_kept"], true, "kept in sessionStorage: {signed_in}");
    assert_eq!(signed_in["local_storage"], 0, "nothing in localStorage: {signed_in}");
    let sites = signed_in["sites"].as_array().expect("sites");
    assert_eq!(sites.len(), 2, "{signed_in}");
    assert!(sites.iter().all(|s| s["state"] == "healthy"), "{signed_in}");
    assert_eq!(sites.iter().find(|s| s["id"] == "site-a").expect("site-a")["phones"], 2, "{signed_in}");
    assert_eq!(sites.iter().find(|s| s["id"] == "site-b").expect("site-b")["phones"], 0, "{signed_in}");
    let tenants = &signed_in["tenants"];
    assert_eq!(tenants, &serde_json::json!([{ "name": "acme", "phones": 1 }, { "name": "beta", "phones": 1 }]));

    // The migration, and when it committed: the moment the placement names the destination, watched closely (the
    // destination's compare-and-set is the commit), or the log's receipt of the record if that is earlier seen.
    let watcher = {
        let client = control.client.clone();
        tokio::spawn(async move {
            loop {
                if client.placement("alice").await.is_ok_and(|p| p.site == "site-b") {
                    return wall_ms();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let ordered_ms = wall_ms();
    let (status, report) =
        control.post(&format!("{}/v1/phones/alice/migrate", a.url), &serde_json::json!({ "to": "site-b" })).await;
    assert_eq!(status, 200, "{report}");
    let answered_ms = wall_ms();
    let report: serde_json::Value = serde_json::from_str(&report).expect("report");
    assert_eq!(report["outcome"], "committed", "{report}");
    let placed_ms =
        vmi_testkit::within(Duration::from_secs(10), "the placement naming site-b", watcher).await.expect("watcher");
    let logged = control.client.migrations(Some("alice")).await.expect("log");
    let logged = logged.first().expect("the migration logged");
    let committed_ms = placed_ms.min(logged.at_ms);
    assert!(ordered_ms <= committed_ms && committed_ms <= answered_ms.max(logged.at_ms), "{ordered_ms} {committed_ms}");
    driver.tell("migrated").await;

    let seen = driver.step("seen").await;
    assert_eq!(seen["id"], logged.id, "{seen}");
    assert_eq!(seen["outcome"], "committed", "{seen}");
    assert_eq!(seen["on_top"], true, "the newest at the top: {seen}");
    assert!(!seen["arc"].is_null(), "an arc on the map: {seen}");
    let shown_ms = seen["shown_ms"].as_u64().expect("shown_ms");
    let late = shown_ms.saturating_sub(committed_ms);
    eprintln!(
        "dashboard: migration committed at {committed_ms} (placement seen {placed_ms}, logged {}), shown {late} ms \
         later ({} ms after the site answered the order)",
        logged.at_ms,
        shown_ms as i64 - answered_ms as i64
    );
    assert!(late <= SHOWN_WITHIN_MS, "the page showed the migration {late} ms after its commit: {seen}");

    // A mail makes the phone write a record, and site-a its standby copy: what a failover needs.
    let mail = serde_json::json!({ "from": "ann@example.com", "subject": "Moved?", "body": "Seen it on the map" });
    let (status, body) = control.post(&format!("{}/v1/phones/alice/mail", b.url), &mail).await;
    assert_eq!(status, 202, "{body}");

    let moved = driver.step("moved").await;
    let moved_ms = moved["moved_ms"].as_u64().expect("moved_ms");
    eprintln!(
        "dashboard: phone counts moved on the page {} ms after the commit",
        moved_ms.saturating_sub(committed_ms)
    );

    // bob's phone crashes; site-a reports it with its next heartbeat.
    let mut term = Term::connect(&a.ws_url()).await;
    assert!(matches!(term.hello(&bob, None, false).await, vmi_protocol::ServerMessage::Welcome { .. }));
    term.tap(NOTES).await;
    let crashed_ms = wall_ms();
    driver.tell("crashed").await;
    let crash = driver.step("crash").await;
    assert_eq!(crash["site"], "site-a", "{crash}");
    eprintln!(
        "dashboard: bob's crash on the page {} ms after it (a heartbeat carries it)",
        crash["shown_ms"].as_u64().expect("shown_ms") as i64 - crashed_ms as i64
    );
    term.vanish();

    let history = driver.step("history").await;
    let moves = history["moves"].as_array().expect("moves");
    assert!(moves.iter().any(|m| m.as_str().is_some_and(|m| m.contains("site-a → site-b"))), "{history}");
    let checkpoints = history["checkpoints"].as_array().expect("checkpoints");
    assert!(checkpoints.iter().any(|c| c.as_str().is_some_and(|c| c.contains("before the move"))), "{history}");
    assert!(history["crashes"].as_str().is_some_and(|c| c.starts_with("Crashes: none")), "{history}");
    let crashes = driver.step("history_crash").await;
    assert_eq!(crashes["user"], "bob", "{crashes}");
    assert!(crashes["crashes"].as_str().is_some_and(|c| c.contains("on site-a")), "{crashes}");
    assert_eq!(crashes["marks"], 1, "a cross on bob's timeline: {crashes}");
    assert!(history["now"].as_array().is_some_and(|n| n.iter().any(|f| f == "Runs on: site-b (healthy)")), "{history}");

    let graphs = driver.step("graphs").await;
    let charts = graphs["charts"].as_array().expect("charts");
    assert_eq!(charts.len(), 6, "{graphs}");
    assert!(charts.iter().all(|c| c["width"].as_f64().is_some_and(|w| w > 300.0)), "{graphs}");
    let last = &graphs["last"];
    assert_eq!(last["phones"], 2, "alice's and bob's (crashed, still there): {graphs}");
    assert!(last["committedPerMinute"].as_f64().is_some_and(|n| n >= 1.0), "{graphs}");
    assert!(last["downtimeP50Ms"].as_f64().is_some_and(|ms| ms > 0.0), "{graphs}");
    assert!(last["heartbeatsPerS"].as_f64().is_some_and(|n| n > 1.0), "two sites beat every second: {graphs}");
    assert!(last["http2xxPerS"].as_f64().is_some_and(|n| n > 4.0), "the page polls: {graphs}");

    // site-b stops: its lease runs out, the placer fails the phone over to its standby copy on site-a.
    b.shutdown().await;
    let stopped_ms = wall_ms();
    vmi_testkit::eventually(Duration::from_secs(30), "the phone failed over to site-a", async || {
        control.client.placement("alice").await.is_ok_and(|p| p.site == "site-a")
    })
    .await;
    let failed_over_ms = wall_ms();
    driver.tell("failed-over").await;
    let failover = driver.step("failover").await;
    // From the audit log: whose phone, from where to where, drawn on the map; once (the counter agrees).
    assert_eq!(failover["source"], "audit", "{failover}");
    assert_eq!((failover["from"].as_str(), failover["to"].as_str()), (Some("site-b"), Some("site-a")), "{failover}");
    assert!(!failover["arc"].is_null(), "{failover}");
    let once = driver.step("failover_once").await;
    assert_eq!(
        once,
        serde_json::json!({ "step": "failover_once", "counted": 1, "audited": 1, "unlogged": 0, "shown": 1 })
    );
    let site_events = failover["site_events"].as_array().expect("site events");
    assert!(
        site_events.iter().any(|e| e.as_str().is_some_and(|e| e.contains("site-b healthy → unhealthy"))),
        "{failover}"
    );
    eprintln!(
        "dashboard: site-b stopped; failed over {} ms later, on the page {} ms after the failover",
        failed_over_ms - stopped_ms,
        failover["shown_ms"].as_u64().expect("shown_ms") as i64 - failed_over_ms as i64
    );

    let history = driver.step("history_failover").await;
    assert_eq!(history["now"], "site-a", "{history}");
    assert_eq!(history["marks"], 1, "{history}");
    let rows = history["rows"].as_array().expect("rows");
    assert!(rows[0].as_str().is_some_and(|r| r.contains("site-b → site-a") && r.contains("failed over")), "{history}");

    let expired = driver.step("expired").await;
    assert!(expired["error"].as_str().is_some_and(|e| e.contains("401")), "{expired}");
    let problems = driver.step("problems").await;
    assert_eq!(problems["problems"], serde_json::json!([]), "the page's errors and CSP violations: {problems}");
    driver.finish().await;
    eprintln!("dashboard: screenshots in {} ({:.0} s)", shots.display(), started.elapsed().as_secs_f64());
    a.shutdown().await;
}
