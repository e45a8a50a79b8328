//! A Linux phone on sites, the way a provider's customer gets one: the operator publishes a Linux image built
//! from Debian's packages, a tenant runs it, a terminal shows the phone and types into its terminal emulator, the
//! phone migrates live to another site mid-session with its files and its shell's history, and a notification
//! raised in the guest reaches the user's sleeping terminal; the browser terminal (Chromium) shows it, types into
//! it, and receives nothing while its screen is still.

mod common;

use std::time::{Duration, Instant};

use common::browser::Driver;
use common::*;
use vmi_control_api::tenants::TenantRequest;
use vmi_protocol::{Input, ServerMessage};

fn linux_image() -> Vec<u8> {
    let work = scratch("linux-image");
    let manifest = vmi_qemu_engine::image::Manifest { memory_mib: 384, ..Default::default() };
    let bytes = vmi_qemu_engine::image::build(manifest, &work).unwrap_or_else(|e| panic!("building the image: {e}"));
    let _ = std::fs::remove_dir_all(work);
    bytes
}

/// The guest file at `path` as `site` reads it through the phone's agent, once it holds `want`.
async fn file_becomes(control: &Control, site: &vmi_site::SiteHandle, user: &str, path: &str, want: &[u8]) {
    let url = format!("{}/v1/phones/{user}/file?path={path}", site.url);
    let by = Instant::now() + Duration::from_secs(180);
    loop {
        // The phone may be busy a moment (a record of its state, a move): a slow answer is asked again.
        let (status, body) = control.operator().get_bytes(&url).await.unwrap_or_else(|e| (0, e.to_string().into()));
        if status == 200 && body == want {
            return;
        }
        assert!(
            Instant::now() < by,
            "{path} on {} never held {:?}: last {status} {:?}",
            site.state.id,
            String::from_utf8_lossy(want),
            String::from_utf8_lossy(&body)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until the terminal's screen shows text in its top rows: the shell's prompt, drawn by the terminal
/// emulator once its window is mapped, and so focused (keys typed before would reach no window).
async fn prompt_shown(term: &mut Term) {
    let by = Instant::now() + Duration::from_secs(120);
    loop {
        let shown = term.screen.as_ref().is_some_and(|s| {
            let row = usize::from(s.width()) * 4;
            s.rgba()[..row * 40].chunks_exact(4).any(|p| p[0] > 0xa0 && p[1] > 0xa0)
        });
        if shown {
            return;
        }
        assert!(Instant::now() < by, "the prompt never showed on the terminal's screen");
        let _ = tokio::time::timeout(Duration::from_millis(200), term.recv()).await;
    }
}

/// Waits until the guest file at `path` is gone (the agent cannot read it).
async fn file_gone(control: &Control, site: &vmi_site::SiteHandle, user: &str, path: &str) {
    let url = format!("{}/v1/phones/{user}/file?path={path}", site.url);
    let by = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = control.operator().get_bytes(&url).await.unwrap_or_else(|e| (0, e.to_string().into()));
        if status == 404 && String::from_utf8_lossy(&body).contains("no readable file") {
            return;
        }
        assert!(Instant::now() < by, "{path} is still there: {status} {:?}", String::from_utf8_lossy(&body));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The guest's uptime in seconds, its own clock, read through its agent.
async fn guest_uptime(control: &Control, site: &vmi_site::SiteHandle, user: &str) -> f64 {
    let url = format!("{}/v1/phones/{user}/file?path=/proc/uptime", site.url);
    let (status, body) = control.operator().get_bytes(&url).await.expect("read /proc/uptime");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let text = String::from_utf8_lossy(&body);
    text.split_whitespace().next().and_then(|t| t.parse().ok()).unwrap_or_else(|| panic!("uptime {text:?}"))
}

fn save_png(screen: &vmi_protocol::display::Screen, name: &str) {
    let path = std::env::temp_dir().join(name);
    let file = std::fs::File::create(&path).expect("png file");
    let mut encoder =
        png::Encoder::new(std::io::BufWriter::new(file), u32::from(screen.width()), u32::from(screen.height()));
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header().and_then(|mut w| w.write_image_data(screen.rgba())).expect("png written");
    eprintln!("the terminal's screen saved to {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linux_phone_types_through_a_terminal_migrates_with_its_files_and_notifies_a_sleeping_terminal() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let image = tokio::task::spawn_blocking(linux_image).await.expect("image build");
    let control = control().await;
    let dirs = [scratch("linux-site-a"), scratch("linux-site-b")];
    let a = site(&control, "site-a", dirs[0].clone()).await;
    let b = site(&control, "site-b", dirs[1].clone()).await;
    let published = control.client.publish_image("linux", &image).await.expect("publish the Linux image");
    let tenant =
        TenantRequest { name: "acme".into(), max_phones: None, max_memory_bytes: None, image: Some("linux".into()) };
    control.client.create_tenant(&tenant).await.expect("tenant");
    control.client.create_user_in("alice", Some("acme")).await.expect("user");
    control.client.set_placement("alice", &a.state.id).await.expect("placement");
    a.state.create_phone("alice").await.expect("a Linux phone");
    let token = control.client.create_device("alice", "test device").await.expect("device").token;

    // The phone listing names its image, the Linux one.
    let (_, body) = control.get(&format!("{}/v1/phones", a.url)).await;
    let phones: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(phones["phones"][0]["image"]["hash"], published.hash, "{phones}");

    let mut term = Term::connect(&a.ws_url()).await;
    assert!(matches!(term.hello(&token, None, false).await, ServerMessage::Welcome { .. }));
    file_becomes(&control, &a, "alice", "/run/user/1000/seed-ready", b"").await;
    prompt_shown(&mut term).await;
    let last = term.type_text("echo hello > hello.txt && cat hello.txt\n").await;
    term.acked(last).await;
    file_becomes(&control, &a, "alice", "/home/phone/hello.txt", b"hello\n").await;
    // A checkpoint (pages through the content-addressed store, QEMU's device state beside them), the file
    // removed, the checkpoint restored: the file is back.
    let (status, taken) = control
        .operator()
        .post_json(&format!("{}/v1/phones/alice/checkpoints", a.url), &serde_json::json!({}))
        .await
        .expect("checkpoint");
    assert_eq!(status, 200, "{taken}");
    let taken: serde_json::Value = serde_json::from_str(&taken).expect("json");
    let id = taken["checkpoint"]["id"].as_str().unwrap_or_else(|| panic!("a checkpoint id in {taken}")).to_owned();
    let last = term.type_text("rm hello.txt\n").await;
    term.acked(last).await;
    file_gone(&control, &a, "alice", "/home/phone/hello.txt").await;
    let (status, restored) = control
        .operator()
        .post_json(&format!("{}/v1/phones/alice/checkpoints/restore", a.url), &serde_json::json!({ "id": id }))
        .await
        .expect("restore");
    assert_eq!(status, 200, "{restored}");
    file_becomes(&control, &a, "alice", "/home/phone/hello.txt", b"hello\n").await;
    // The terminal is repainted from the restored phone; it types on into the same shell.
    term.close().await;
    let mut term = Term::connect(&a.ws_url()).await;
    match term.hello(&token, None, false).await {
        ServerMessage::Welcome { last_input_seq, .. } => term.seq = last_input_seq,
        other => panic!("expected Welcome, got {other:?}"),
    }
    prompt_shown(&mut term).await;

    let last = term.type_text("echo again >> hello.txt\n").await;
    term.acked(last).await;
    file_becomes(&control, &a, "alice", "/home/phone/hello.txt", b"hello\nagain\n").await;
    // The terminal got the screen, drawn by the guest's compositor (looked at: the shell and its output).
    let by = Instant::now() + Duration::from_secs(10);
    while term.frame_bytes == 0 && Instant::now() < by {
        let _ = tokio::time::timeout(Duration::from_millis(200), term.recv()).await;
    }
    assert!(term.frame_bytes > 0, "frames reached the terminal");
    if let Some(screen) = &term.screen {
        save_png(screen, "linux-phone-terminal.png");
    }
    term.close().await;

    // The browser terminal, in Chromium: it shows the guest's desktop, its keyboard types into the guest's shell,
    // and once the screen is still it receives no frame bytes while the guest runs on (the guest's own clock,
    // read through its agent, advances five seconds meanwhile). Screenshots looked at: the prompt, the command.
    let shots = scratch("linux-shots");
    let url = format!("http://{}/#token={token}", a.addr);
    let mut page = Driver::start("linux", &["--url", &url], &shots);
    let shown = page.step("shown").await;
    assert!(shown["light_pixels"].as_u64().is_some_and(|n| n > 0), "the page shows the prompt: {shown}");
    page.step("typed").await;
    file_becomes(&control, &a, "alice", "/home/phone/web.txt", b"hello from chromium\n").await;
    page.step("still").await;
    let began = guest_uptime(&control, &a, "alice").await;
    let by = Instant::now() + Duration::from_secs(120);
    while guest_uptime(&control, &a, "alice").await < began + 5.0 {
        assert!(Instant::now() < by, "the guest's clock did not advance five seconds");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    page.tell("ran").await;
    let still = page.step("static").await;
    assert_eq!((still["frames"].as_u64(), still["frame_bytes"].as_u64()), (Some(0), Some(0)), "{still}");
    assert_eq!(still["state"], "connected", "{still}");
    page.finish().await;
    eprintln!("the browser's screenshots are in {}", shots.display());

    // Live migration to site-b: the destination resumes the guest only once the placement names it.
    let order = serde_json::json!({ "to": "site-b" });
    let (status, report) =
        control.operator().post_json(&format!("{}/v1/phones/alice/migrate", a.url), &order).await.expect("migrate");
    assert_eq!(status, 200, "{report}");
    eprintln!("migration report: {report}");
    assert_eq!(control.client.placement("alice").await.expect("placement").site, "site-b");
    file_becomes(&control, &b, "alice", "/home/phone/hello.txt", b"hello\nagain\n").await;

    // The shell's history came along: the up arrow brings back the last command (the one typed in the browser),
    // which appends once more.
    let mut term = Term::connect(&b.ws_url()).await;
    match term.hello(&token, None, false).await {
        ServerMessage::Welcome { last_input_seq, .. } => term.seq = last_input_seq,
        other => panic!("expected Welcome, got {other:?}"),
    }
    term.input(Input::Key { code: 6, text: None }).await; // up
    let last = term.input(Input::Key { code: 2, text: None }).await; // enter
    term.acked(last).await;
    file_becomes(&control, &b, "alice", "/home/phone/web.txt", b"hello from chromium\nhello from chromium\n").await;
    term.close().await;

    // A notification raised in the guest reaches the user's terminal that sleeps (attached, screen off).
    let mut sleeper = Term::connect(&b.ws_url()).await;
    match sleeper.hello(&token, None, true).await {
        ServerMessage::Welcome { last_input_seq, .. } => sleeper.seq = last_input_seq,
        other => panic!("expected Welcome, got {other:?}"),
    }
    let last = sleeper.type_text("notify-send 'Build done' 'all green'\n").await;
    sleeper.acked(last).await;
    let (note, _) = tokio::time::timeout(
        Duration::from_secs(60),
        sleeper.until(|m| matches!(m, ServerMessage::Notification { .. })),
    )
    .await
    .expect("the notification reached the sleeping terminal");
    match note {
        ServerMessage::Notification { title, body, .. } => {
            assert_eq!((title.as_str(), body.as_str()), ("Build done", "all green"))
        }
        other => panic!("{other:?}"),
    }
    sleeper.close().await;
    a.shutdown().await;
    b.shutdown().await;
    // A Linux phone's states are tens of megabytes: not left behind.
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}
