//! The browser terminal end to end, in real headless Chromium (Debian's `chromium`,
//! installed by scripts/setup, driven by tests/browser/e2e.mjs with playwright-core):
//! type in Notes, save a checkpoint and restore it from the "Restore my phone to…" view,
//! get a mail notification while asleep with no frame bytes, wake and see
//! the inbox, and the page's screen equals the phone's own framebuffer.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_terminal_types_sleeps_is_notified_and_wakes() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let driver = repo.join("tests/browser/e2e.mjs");
    assert!(
        repo.join("tests/browser/node_modules/playwright-core").exists() && Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Chromium and playwright-core: run ./scripts/setup first"
    );
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
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let driver = repo.join("tests/browser/phone.mjs");
    assert!(
        repo.join("tests/browser/node_modules/playwright-core").exists() && Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Chromium and playwright-core: run ./scripts/setup first"
    );
    let control = control().await;
    let site = site(&control, "site-a", scratch("phone")).await;
    let token = user_with_phone(&control, &site, "pat").await;
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
