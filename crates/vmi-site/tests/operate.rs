//! What an operator sees of a site: `GET /metrics` after a scripted session (a terminal types, a checkpoint, a
//! live migration) counts each thing once where it happened, refuses anyone but the operator, and `GET /readyz`
//! says when the site may run phones.

mod common;

use common::*;

/// The value of the sample whose line starts with `name` (labels included), if there is one.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

async fn scrape(control: &Control, site_url: &str) -> String {
    let (status, body) = control.get(&format!("{site_url}/metrics")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    String::from_utf8(body).expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_scripted_session_once_each_and_only_the_operator_reads_them() {
    let control = control().await;
    let a = site(&control, "site-a", scratch("operate-a")).await;
    let b = site(&control, "site-b", scratch("operate-b")).await;
    let token = user_with_phone(&control, &a, "alice").await;

    // Ready once the lease is held (the helper waited for it); health says only that the process answers.
    let (status, body) = bearer("").get_bytes(&format!("{}/readyz", a.url)).await.expect("readyz");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    let mut term = Term::connect(&a.ws_url()).await;
    term.hello(&token, None, false).await;
    term.tap(NOTES).await;
    let last = term.type_text("counted").await;
    term.acked(last).await;
    let text = scrape(&control, &a.url).await;
    assert_eq!(sample(&text, r#"vmi_site_phones{state="resident"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"vmi_site_terminals{state="awake"}"#), Some(1.0), "{text}");
    // Keys typed faster than frames are acknowledged share frames: at least the tap's and the typing's.
    let frames = sample(&text, "vmi_site_frames_sent_total").expect("frames");
    assert!(frames >= 2.0, "{text}");
    assert!(sample(&text, "vmi_site_frame_sent_bytes_total").expect("bytes") > frames * 100.0);
    let shown = sample(&text, "vmi_site_input_to_frame_seconds_count").expect("latency");
    assert!(shown >= 1.0 && shown <= frames, "inputs shown {shown}, frames {frames}");
    assert!(sample(&text, "process_resident_memory_bytes").expect("rss") > 1e6);
    term.close().await;

    let (status, taken) = control.post(&format!("{}/v1/phones/alice/checkpoints", a.url), &serde_json::json!({})).await;
    assert_eq!(status, 200, "{taken}");
    let (status, moved) =
        control.post(&format!("{}/v1/phones/alice/migrate", a.url), &serde_json::json!({ "to": "site-b" })).await;
    assert_eq!(status, 200, "{moved}");
    let report: serde_json::Value = serde_json::from_str(&moved).expect("report");
    assert_eq!(report["outcome"], "committed", "{report}");

    let text = scrape(&control, &a.url).await;
    assert_eq!(sample(&text, r#"vmi_site_checkpoints_total{outcome="stored"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, "vmi_site_checkpoint_seconds_count"), Some(1.0));
    assert_eq!(sample(&text, r#"vmi_site_checkpoint_copies_total{outcome="copied"}"#), Some(1.0));
    assert!(sample(&text, "vmi_site_checkpoint_stored_bytes_total").expect("bytes") > 0.0);
    assert_eq!(sample(&text, r#"vmi_site_migrations_total{outcome="committed"}"#), Some(1.0), "once: {text}");
    assert_eq!(sample(&text, r#"vmi_site_migrations_total{outcome="aborted"}"#), None, "{text}");
    assert_eq!(sample(&text, "vmi_site_migration_downtime_seconds_count"), Some(1.0));
    // The downtime lands in the bucket its report says.
    let downtime_s = report["downtime_us"].as_f64().expect("downtime") / 1e6;
    let sum = sample(&text, "vmi_site_migration_downtime_seconds_sum").expect("sum");
    assert!((sum - downtime_s).abs() < 1e-6, "sum {sum} vs the report's {downtime_s}");
    assert_eq!(sample(&text, r#"vmi_site_phones{state="resident"}"#), Some(0.0), "the phone left: {text}");
    assert!(
        sample(&text, r#"vmi_http_requests_total{route="/v1/phones/{user}/migrate",method="POST",status="200"}"#)
            == Some(1.0),
        "{text}"
    );
    assert!(!text.contains("alice"), "no user in any label");
    assert!(sample(&text, "vmi_site_lease_renewals_total").expect("renewals") >= 1.0);
    let b_text = scrape(&control, &b.url).await;
    assert_eq!(sample(&b_text, r#"vmi_site_migration_arrivals_total{outcome="committed"}"#), Some(1.0));
    assert_eq!(sample(&b_text, r#"vmi_site_phones{state="resident"}"#), Some(1.0), "{b_text}");

    // Nobody else: no credentials, a device's token, a peer site's certificate.
    let (status, _) = bearer("").get_bytes(&format!("{}/metrics", a.url)).await.expect("anonymous");
    assert_eq!(status, 401);
    let (status, _) = bearer(&token).get_bytes(&format!("{}/metrics", a.url)).await.expect("device");
    assert_eq!(status, 403);
    let text = scrape(&control, &a.url).await;
    assert_eq!(
        sample(&text, r#"vmi_http_requests_total{route="/metrics",method="GET",status="401"}"#),
        Some(1.0),
        "refusals are counted too: {text}"
    );

    // A site shutting down is not ready.
    let url = a.url.clone();
    a.shutdown().await;
    assert!(bearer("").get_bytes(&format!("{url}/readyz")).await.is_err(), "gone");
    b.shutdown().await;
}

/// The API reference walks the router: every operation the site's `GET /openapi.json` describes is served at its
/// path with its method (no 405, no fallback 404), refuses a caller without credentials unless anyone may call
/// it, and the document served is the one the code builds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_the_reference_describes_is_served() {
    let control = control().await;
    let a = site(&control, "site-a", scratch("operate-api")).await;
    let anonymous = bearer("");
    let (status, body) = anonymous.get_bytes(&format!("{}/openapi.json", a.url)).await.expect("document");
    assert_eq!(status, 200);
    let served: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(served, vmi_site::openapi(), "served as built");
    let mut operations = 0;
    for (path, item) in served["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            operations += 1;
            let url = format!("{}{}", a.url, vmi_openapi::concrete(path, "x1"));
            let method = vmi_control_api::http_client::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .expect("a method");
            let options = vmi_control_api::http_client::RequestOptions::default();
            let (status, body) = anonymous.send(method.clone(), &url, None, options).await.expect("request");
            let body = String::from_utf8_lossy(&body);
            assert_ne!(status, 405, "{method:?} {path}: not served with this method");
            assert!(!(status == 404 && body.is_empty()), "{method:?} {path}: fell through to the fallback");
            if op["x-vmi-access"] != "anyone" {
                assert_eq!(status, 401, "{method:?} {path} refuses a caller without credentials: {body}");
            }
        }
    }
    assert!(operations >= 60, "{operations} operations");
    let (status, _) = anonymous.get_bytes(&format!("{}/v1/nothing-here", a.url)).await.expect("fallback");
    assert_eq!(status, 404);
    a.shutdown().await;
}
