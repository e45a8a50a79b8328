//! The browser terminal end to end, in real headless Chromium (Debian's `chromium`,
//! installed by scripts/setup, driven by tests/browser/e2e.mjs with playwright-core):
//! type in Notes, save a checkpoint and restore it from the "Restore my phone to…" view,
//! get a mail notification while asleep with no frame bytes, wake and see
//! the inbox, and the page's screen equals the phone's own framebuffer.

mod common;

use std::path::Path;
use std::process::Command;

use common::browser::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_terminal_types_sleeps_is_notified_and_wakes() {
    let driver = browser_repo().join("tests/browser/e2e.mjs");
    let control = control().await;
    let site = site(&control, "site-a", scratch("browser")).await;
    let token = user_with_phone(&control, &site, "alice").await;
    let shots = scratch("browser-shots");
    std::fs::create_dir_all(&shots).expect("shots dir");

    // Plain HTTP on loopback (the browser does not trust the test CA); the token in the fragment, which the
    // browser never sends to the site; the operator's token (for the mail) in the environment, not in argv.
    let plain = format!("http://{}", site.addr);
    let url = format!("{plain}/#token={token}");
    let mail_url = format!("{plain}/v1/phones/alice/mail");
    let operator = control.operator_token.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .env("VMI_OPERATOR_TOKEN", operator)
            .arg(driver)
            .args(["--url", &url, "--mail-url", &mail_url, "--screenshot-dir"])
            .arg(&shots)
            .output()
            .expect("run node")
    })
    .await
    .expect("driver task");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "e2e.mjs failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let steps: Vec<serde_json::Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let step = |name: &str| {
        steps.iter().find(|s| s["step"] == name).unwrap_or_else(|| panic!("no step {name} in:\n{stdout}")).clone()
    };

    // Typed in the browser, kept in the phone; " and more" typed after the checkpoint
    // saved from the page is gone once the page restored that checkpoint.
    step("typed");
    let restored = step("restored");
    assert!(restored["checkpoints"].as_u64().expect("count") >= 2, "the saved one and the one before the restore");
    let (status, notes) = control.get(&format!("{}/v1/phones/alice/kv/notes.text", site.url)).await;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&notes), "Hello from Chromium");

    // Asleep: the notification came, and no frame bytes with it.
    let notified = step("notified");
    assert_eq!(notified["bytes_while_asleep"], 0, "{notified}");
    assert_eq!(notified["notification"]["title"], "ann@example.com");
    assert_eq!(notified["notification"]["body"], "Lunch?");

    // Awake on the inbox: the canvas shows exactly the phone's screen.
    let inbox = step("inbox");
    let (_, body) = control.get(&format!("{}/v1/phones/alice/screen-hash", site.url)).await;
    let phone: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(inbox["screen_hash"], phone["hash"], "browser screen == phone framebuffer");
    assert_eq!(inbox["toasts_on_wake"], 0, "a notification seen on the lock screen is not toasted again on wake");
    step("done");
    site.shutdown().await;
}

/// On a phone (Chromium emulating one: 390×844, device pixel ratio 3, touch) the terminal is the phone's screen,
/// at least 95% of the viewport's width, installable (a web app manifest), with a keyboard button, and the phone
/// lays out for it; text typed as a phone keyboard and an input method send it (`beforeinput`, composition) lands
/// in Notes exactly; Copy in Notes reaches the page's clipboard; two fingers draw two strokes in Paint; a rotation
/// reaches the phone, and the frame after it equals the phone's framebuffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_terminal_on_a_phone_fills_the_screen_types_copies_draws_with_two_fingers_and_rotates() {
    let driver = browser_repo().join("tests/browser/phone.mjs");
    let control = control().await;
    let site = site(&control, "site-a", scratch("phone")).await;
    let token = user_with_phone(&control, &site, "pat").await;
    // A long inbox to flick through.
    let phone = site.state.phone("pat").expect("phone");
    for i in 0..60 {
        let mail = vmi_engine::Mail {
            from: format!("Sender {i} <s{i}@example.com>"),
            subject: format!("Message number {i}"),
            body: format!("The body of message {i}, long enough to fill its snippet line."),
        };
        phone.mail(mail, true).await.expect("mail");
    }
    let shots = scratch("phone-shots");
    let url = format!("http://{}/#token={token}", site.addr);
    let operator = control.operator_token.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(driver)
            .args(["--url", &url, "--operator-token", &operator, "--user", "pat", "--screenshot-dir"])
            .arg(&shots)
            .output()
            .expect("node")
    })
    .await
    .expect("driver task");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "phone.mjs failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let steps: Vec<serde_json::Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let step = |name: &str| steps.iter().find(|s| s["step"] == name).cloned().unwrap_or_else(|| panic!("no {name}"));
    let layout = step("layout");
    assert!(layout["width_share"].as_f64().is_some_and(|w| w >= 0.95), "{layout}");
    assert_eq!(layout["dpr"], 3, "{layout}");
    let typed = step("typed");
    let (status, notes) = control.get(&format!("{}/v1/phones/pat/kv/notes.text", site.url)).await;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&notes), typed["text"].as_str().expect("text"));
    assert_eq!(String::from_utf8_lossy(&notes), "héllo € 日本");
    // Copy in Notes reached the page's clipboard.
    assert_eq!(step("clipboard")["text"], "héllo € 日本");
    // Two fingers drew two strokes (ink under each, paper between).
    let ink = step("two_fingers");
    assert_ne!(ink["ink"][0], ink["ink"][2], "{ink}");
    assert_ne!(ink["ink"][1], ink["ink"][2], "{ink}");
    // A flick glided over many frames, nearly all of them copies, and left the page showing the phone's screen.
    let fling = step("fling");
    let (frames, copies) = (fling["frames"].as_u64().unwrap_or(0), fling["copies"].as_u64().unwrap_or(0));
    assert!(frames >= 10 && copies * 10 >= frames * 8, "{fling}");
    assert_eq!(fling["page"], fling["site"], "{fling}");
    // The rotation reached the phone, which laid out for landscape; the page shows its framebuffer exactly.
    let rotated = step("rotated");
    assert!(rotated["width"].as_u64() > rotated["height"].as_u64(), "{rotated}");
    assert_eq!(rotated["page"], rotated["site"], "{rotated}");
    let (status, hash) = control.get(&format!("{}/v1/phones/pat/screen-hash", site.url)).await;
    assert_eq!(status, 200);
    let hash: serde_json::Value = serde_json::from_slice(&hash).expect("json");
    assert!(hash["width"].as_u64() > hash["height"].as_u64(), "the phone itself is in landscape: {hash}");
    step("done");
    site.shutdown().await;
}

/// Offline in the browser: the page checks the phone out and runs it itself; with the site stopped it types in
/// Notes, reloads (its service worker serves the page, the browser's storage the phone) and shows the same screen;
/// with the site back (same address: the browser's storage belongs to the page's origin) it checks the phone in, and
/// the site's phone has the text typed offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_terminal_runs_the_phone_offline_across_a_reload_and_checks_it_in() {
    let control = control().await;
    let data = scratch("offline-browser");
    let site = site(&control, "site-a", data.clone()).await;
    let token = user_with_phone(&control, &site, "olga").await;
    let addr = site.addr;
    let mut driver =
        Driver::start("offline", &["--url", &format!("http://{addr}/#token={token}")], &scratch("offline-shots"));

    let out = driver.step("checked_out").await;
    assert_eq!(out["user"], "olga", "{out}");
    // The site holds the lease and refuses to run the phone meanwhile.
    let (status, _) = control.get(&format!("{}/v1/phones/olga/kv/notes.text", site.url)).await;
    assert_ne!(status, 200, "a checked-out phone is not run on the site");

    site.shutdown().await;
    driver.tell("site-down").await;
    let typed = driver.step("typed_offline").await;
    let reloaded = driver.step("reloaded").await;
    assert_eq!(reloaded["before"], reloaded["after"], "the page shows the same screen after a reload offline");
    eprintln!(
        "offline in the browser: start {} ms after a reload, save {} ms ({} bytes)",
        reloaded["start_ms"], typed["save_ms"], typed["saved_bytes"]
    );

    let config = vmi_site::SiteConfig { listen: addr, ..site_config(&control, "site-a", data) };
    let site = vmi_site::start(config).await.expect("the site starts again at its address");
    vmi_testkit::eventually(std::time::Duration::from_secs(30), "the site's first heartbeat answered", async || {
        site.state.holds_lease()
    })
    .await;
    driver.tell("site-up").await;
    let back = driver.step("checked_in").await;
    driver.finish().await;
    let (status, notes) = control.get(&format!("{}/v1/phones/olga/kv/notes.text", site.url)).await;
    assert_eq!(status, 200, "the phone runs on its site again");
    assert_eq!(String::from_utf8_lossy(&notes), typed["text"].as_str().expect("text"));
    let (_, body) = control.get(&format!("{}/v1/phones/olga/screen-hash", site.url)).await;
    let phone: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(back["screen_hash"], phone["hash"], "the page shows the site's phone again");
    site.shutdown().await;
}

/// The page's figures and site states: one round trip for the phone's site everywhere on the page (the connection
/// indicator, the map's header, its table row); a stopped site shown down as the control plane says, with no round
/// trip; with the control plane gone, the states shown say how old they are instead of looking live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_terminal_shows_one_round_trip_and_the_control_planes_site_states() {
    let mut control = control().await;
    let site_a = site(&control, "site-a", scratch("sites-a")).await;
    let site_b = site(&control, "site-b", scratch("sites-b")).await;
    let token = user_with_phone(&control, &site_a, "sam").await;
    let url = format!("http://{}/#token={token}", site_a.addr);
    let mut driver = Driver::start("sites", &["--url", &url, "--other", "site-b"], &scratch("sites-shots"));
    let figures = driver.step("figures").await;
    assert_eq!(figures["home"], "site-a", "{figures}");
    site_b.shutdown().await;
    driver.tell("other-down").await;
    driver.step("other_down").await;
    control.stop();
    driver.tell("control-down").await;
    driver.step("control_down").await;
    driver.finish().await;
    site_a.shutdown().await;
}

/// A live migration in the browser: the stopwatch runs, the phone moves to another site, and the page shows no
/// outage overlay and no frame gap longer than the move's own terminal gap (Redirect → first frame from the new
/// site) plus one frame interval (the longest in the second before the move); the map names the new site and gives it
/// the connection's own round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_terminal_follows_a_live_migration_without_an_overlay_or_an_extra_frame_gap() {
    let control = control().await;
    let site_a = site(&control, "site-a", scratch("move-a")).await;
    let site_b = site(&control, "site-b", scratch("move-b")).await;
    let token = user_with_phone(&control, &site_a, "max").await;
    let url = format!("http://{}/#token={token}", site_a.addr);
    let mut driver = Driver::start("move", &["--url", &url, "--to", "site-b"], &scratch("move-shots"));
    driver.step("running").await;
    let body = serde_json::json!({ "to": "site-b" });
    let (status, report) =
        control.operator().post_json(&format!("{}/v1/phones/max/migrate", site_a.url), &body).await.expect("post");
    assert_eq!(status, 200, "{report}");
    driver.tell("migrated").await;
    let moved = driver.step("moved").await;
    driver.finish().await;
    assert_eq!(moved["overlay_shown"], 0, "no outage overlay over a planned move: {moved}");
    assert_eq!(moved["prepared_handoffs"], 1, "the page joined the move ahead of its handoff: {moved}");
    assert!(moved["url"].as_str().is_some_and(|u| u.contains(&site_b.addr.port().to_string())), "{moved}");
    let terminal_gap = moved["move"]["terminalGapMs"].as_f64().expect("terminal gap");
    let frame_gap = moved["move"]["frameGapMs"].as_f64().expect("frame gap");
    let frame = moved["interval_max_ms"].as_f64().expect("frame interval");
    eprintln!(
        "migration in the browser: frame gap {frame_gap:.1} ms, terminal gap {terminal_gap:.1} ms, frame {frame:.1} ms"
    );
    assert!(
        frame_gap <= terminal_gap + frame,
        "frame gap {frame_gap} ms > terminal gap {terminal_gap} ms + one frame {frame} ms"
    );
    site_a.shutdown().await;
    site_b.shutdown().await;
}

/// Pairing from the page: a browser with no device shows the pairing form, refuses a wrong code in plain words,
/// and with the right one pairs itself (a new device of the user, under the name typed) and opens the phone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_terminal_pairs_itself_by_code_and_opens_the_phone() {
    let repo = browser_repo();
    let control = control().await;
    let site = site(&control, "site-a", scratch("pair-browser")).await;
    user_with_phone(&control, &site, "pia").await;
    let code = control.client.pair_code("pia").await.expect("a pairing code").code;
    let shots = scratch("pair-shots");
    let url = format!("http://{}/", site.addr);
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .env("VMI_PAIR_CODE", code)
            .arg(repo.join("tests/browser/pair.mjs"))
            .args(["--url", &url, "--screenshot-dir"])
            .arg(&shots)
            .output()
            .expect("node")
    })
    .await
    .expect("driver task");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "pair.mjs failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let steps: Vec<serde_json::Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let step = |name: &str| steps.iter().find(|s| s["step"] == name).cloned().unwrap_or_else(|| panic!("no {name}"));
    let refused = step("refused");
    assert!(refused["error"].as_str().is_some_and(|e| e.contains("not valid")), "{refused}");
    let paired = step("paired");
    assert_eq!(paired["form_hidden"], true, "{paired}");
    let devices = control.client.list_devices("pia").await.expect("devices");
    assert!(devices.iter().any(|d| d.name == "Test browser"), "{devices:?}");
    site.shutdown().await;
}

/// The browser terminal's own codec tests (LZ4 blocks from the reference C library, the
/// PROTOCOL.md examples, the screen hash vectors, a session encoded by `vmi-protocol`) and
/// its behaviour against a scripted site (reconnect resends inputs, Redirect resumes
/// without a resend, no pings while asleep, a refused token does not loop).
#[test]
fn browser_terminal_codec_and_behaviour_tests_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser");
    for script in ["unit.mjs", "mock-test.mjs"] {
        let out = Command::new("node").arg(dir.join(script)).output().expect("run node");
        assert!(
            out.status.success(),
            "{script} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
