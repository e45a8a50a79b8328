//! Benches that need a site and a terminal: `vmi bench display` and `vmi bench energy`.
//! Both start a control service and a site in this process on free loopback ports and
//! talk to them through a real terminal over WebSocket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use vmi_engine::{Clock, ManualClock, SystemClock};
use vmi_protocol::{Input, TouchPhase};
use vmi_site::{SiteConfig, SiteHandle};
use vmi_terminal::{Terminal, TerminalEvent, TerminalOptions};

use crate::bench::{layout, percentile};

pub(crate) struct World {
    pub(crate) site: SiteHandle,
    token: String,
    _control_stop: tokio::sync::oneshot::Sender<()>,
    pub(crate) data_dir: std::path::PathBuf,
    /// The provider CA of this in-process world (sites get their certificates from it).
    authority: Arc<vmi_trust::Authority>,
    /// The operator, as the benchmark calls the services.
    pub(crate) operator: vmi_control_api::Caller,
    /// The etcd cluster the control service keeps its state in, if not SQLite (kept running as long as this).
    _etcd: Option<vmi_cluster::EtcdMembers>,
}

impl World {
    /// Terminal options trusting this world's CA (sites answer `wss://`).
    fn terminal_options(&self) -> TerminalOptions {
        let caller = vmi_control_api::Caller::trusting(self.authority.cert_pem()).unwrap_or_default();
        TerminalOptions { caller, ..TerminalOptions::default() }
    }

    /// A site's credentials from this world's CA.
    fn site_credentials(&self, id: &str) -> Result<vmi_trust::Credentials> {
        Ok(self.authority.credentials_for(&vmi_trust::site_name(id)?, &["127.0.0.1"])?)
    }
}

async fn world(clock: Arc<dyn Clock>) -> Result<World> {
    world_on(clock, false).await
}

/// The world with its control service on SQLite, or (`etcd`) on a 3-member etcd cluster on loopback.
async fn world_on(clock: Arc<dyn Clock>, etcd: bool) -> Result<World> {
    world_with(clock, etcd, |c| c).await
}

/// [`world_on`] with the site's configuration changed by `tune`.
pub(crate) async fn world_with(
    clock: Arc<dyn Clock>,
    etcd: bool,
    tune: impl FnOnce(SiteConfig) -> SiteConfig,
) -> Result<World> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let control_url = format!("https://{}", listener.local_addr()?);
    let data_dir = std::env::temp_dir().join(format!("vmi-bench-{}", std::process::id()));
    let (store, etcd): (Arc<dyn vmi_control::Store>, _) = if etcd {
        let members = crate::bench_failover::loopback_etcd(&data_dir)?;
        let endpoints = members.endpoints();
        let store = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match vmi_control::EtcdStore::connect(&endpoints, vmi_control::DEFAULT_ETCD_PREFIX) {
                    Ok(store) => return Ok(store),
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!(error = %e, "waiting for etcd");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => return Err(e),
                }
            }
        })
        .await??;
        (Arc::new(store), Some(members))
    } else {
        (Arc::new(vmi_control::SqliteStore::in_memory()?), None)
    };
    let authority = Arc::new(vmi_trust::Authority::create(vmi_trust::AUTHORITY_NAME)?);
    let trust = vmi_control::ServiceTrust::new(authority.clone(), &["127.0.0.1"])?;
    let admin = vmi_control::Store::create_credential(
        store.as_ref(),
        &vmi_control_api::auth::Principal::Operator { name: "bench".into() },
    )?;
    let operator = vmi_control_api::Caller::trusting(authority.cert_pem())?.with_bearer(&admin.token);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = vmi_control::ServeOptions { trust: Some(trust), ..vmi_control::ServeOptions::default() };
    tokio::spawn(vmi_control::serve_with(listener, store, options, async move {
        let _ = stopped.await;
    }));
    let site_credentials = authority.credentials_for(&vmi_trust::site_name("site-a")?, &["127.0.0.1"])?;
    let site = vmi_site::start(tune(SiteConfig {
        id: "site-a".into(),
        listen: "127.0.0.1:0".parse()?,
        data_dir: data_dir.clone(),
        control_url: control_url.clone(),
        lat: 60.17,
        lon: 24.94,
        capacity: 8,
        clock,
        heartbeat: Duration::from_secs(1),
        screen: (720, 1280),
        public_url: None,
        checkpoint_every: None,
        retention: Default::default(),
        credentials: site_credentials,
        limits: Default::default(),
        history: None,
        hibernation: None,
    }))
    .await?;
    let control = vmi_control_api::ControlClient::new(&control_url, &operator)?;
    control.create_user("bench").await?;
    control.set_placement("bench", "site-a").await?;
    site.state.create_phone("bench").await?;
    let token = control.create_device("bench", "bench terminal").await?.token;
    Ok(World { site, token, _control_stop: stop, data_dir, authority, operator, _etcd: etcd })
}

impl World {
    async fn finish(self) {
        self.site.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Waits for an event matching `want`, up to `limit`.
async fn wait_for(
    term: &mut Terminal,
    limit: Duration,
    want: impl Fn(&TerminalEvent) -> bool,
) -> Result<TerminalEvent> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let event = tokio::time::timeout_at(deadline, term.next_event())
            .await
            .context("the terminal waited too long")?
            .context("the terminal session ended")?;
        if want(&event) {
            return Ok(event);
        }
    }
}

/// Takes every event already waiting, without blocking for long.
async fn drain(term: &mut Terminal) {
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(2), term.next_event()).await {}
}

async fn tap(term: &mut Terminal, (x, y): (i32, i32)) -> Result<()> {
    let (x, y) = (x as u16, y as u16);
    term.send_input(Input::Touch { phase: TouchPhase::Down, x, y, pointer: 0 })?;
    let seq = term.send_input(Input::Touch { phase: TouchPhase::Up, x, y, pointer: 0 })?;
    wait_for(term, Duration::from_secs(10), |e| matches!(e, TerminalEvent::InputAcked { seq: s } if *s >= seq)).await?;
    Ok(())
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// `vmi bench display`: over WSS (TLS 1.3, the provider CA), or with `plain` over plain WebSocket on loopback,
/// which sites still answer there (the figure TLS is compared with).
pub async fn display(keys: usize, static_secs: u64, plain: bool) -> Result<Value> {
    let w = world(SystemClock::shared()).await?;
    let url = if plain { w.site.ws_url().replace("wss://", "ws://") } else { w.site.ws_url() };
    let mut term = Terminal::connect(&url, &w.token, w.terminal_options()).await?;
    wait_for(&mut term, Duration::from_secs(10), |e| matches!(e, TerminalEvent::Frame { .. })).await?;
    tap(&mut term, layout::NOTES).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drain(&mut term).await;

    let mut latency_ms = Vec::with_capacity(keys);
    let mut frame_bytes = 0u64;
    let mut key_bytes = Vec::with_capacity(keys);
    for i in 0..keys {
        let input = if (i / 30) % 2 == 0 {
            Input::Key { code: 0, text: Some(if i % 5 == 4 { ' ' } else { 'e' }) }
        } else {
            Input::Key { code: 1, text: None }
        };
        let t = Instant::now();
        term.send_input(input)?;
        match wait_for(&mut term, Duration::from_secs(10), |e| matches!(e, TerminalEvent::Frame { .. })).await? {
            TerminalEvent::Frame { bytes, .. } => {
                frame_bytes += bytes as u64;
                key_bytes.push(bytes as f64);
            }
            _ => unreachable!("waited for a frame"),
        }
        latency_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drain(&mut term).await;

    // A static screen: the only thing that moves is the status-bar clock, once a minute,
    // so a window under a minute is placed inside one minute (0 bytes), and a window of
    // 61 s or more measures the clock's update.
    let second = (SystemClock::shared().wall_ns() / 1_000_000_000) % 60;
    if second + static_secs >= 59 {
        tokio::time::sleep(Duration::from_secs(61 - second)).await;
        drain(&mut term).await;
    }
    let before = term.stats();
    let bytes_before = term.energy().bytes_down;
    tokio::time::sleep(Duration::from_secs(static_secs)).await;
    drain(&mut term).await;
    let static_bytes = term.energy().bytes_down - bytes_before;
    let static_frames = term.stats().frames - before.frames;

    let scroll = scroll(&w, &mut term, &url).await?;

    // Encoding speed on the phone's real screen.
    let shot = w.site.state.phone("bench")?.screen().await?;
    let (sw, sh, rgba) = (shot.width, shot.height, shot.rgba);
    let rounds = 50;
    let t = Instant::now();
    for _ in 0..rounds {
        let mut encoder = vmi_protocol::display::Encoder::new(sw as u16, sh as u16);
        std::hint::black_box(encoder.full(&rgba));
    }
    let encode_ms = t.elapsed().as_secs_f64() * 1e3 / rounds as f64;
    let mpixels = (sw * sh) as f64 / 1e6;

    // A display change (a rotation, each way, over and over) to the first frame that shows the phone's new
    // screen whole at the terminal, checked against the phone's own framebuffer once per direction.
    let mut resize_ms = Vec::new();
    let turns = [
        vmi_protocol::Display { width: 844, height: 390, density: 300 },
        vmi_protocol::Display { width: 390, height: 844, density: 300 },
    ];
    for i in 0..20 {
        let display = turns[i % 2];
        let want = display.phone_screen();
        let t = Instant::now();
        term.set_display(display);
        wait_for(&mut term, Duration::from_secs(10), |e| {
            matches!(e, TerminalEvent::Screen { width, height } if (u32::from(*width), u32::from(*height)) == (want.width, want.height))
        })
        .await?;
        wait_for(&mut term, Duration::from_secs(10), |e| matches!(e, TerminalEvent::Frame { .. })).await?;
        resize_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if i < 2 {
            let shot = w.site.state.phone("bench")?.screen().await?;
            let (tw, th, rgba) = term.screen();
            anyhow::ensure!(
                (u32::from(tw), u32::from(th)) == (shot.width, shot.height) && rgba == shot.rgba,
                "after a display change the terminal's screen ({tw}x{th}) is not the phone's ({}x{})",
                shot.width,
                shot.height
            );
        }
    }
    drain(&mut term).await;

    term.close().await;
    w.finish().await;
    Ok(json!({
        "bench": "display",
        "conditions": format!("site and terminal in one process over loopback WebSocket ({}); default phone 720x1280 in Notes; {keys} keys (typing and erasing); static window {static_secs} s", if plain { "plain" } else { "TLS 1.3" }),
        "tls": !plain,
        "input_to_frame_ms_p50": round(percentile(&mut latency_ms, 50.0), 3),
        "input_to_frame_ms_p99": round(percentile(&mut latency_ms, 99.0), 3),
        "bytes_per_keystroke": round(frame_bytes as f64 / keys as f64, 1),
        "keystroke_bytes_min": round(percentile(&mut key_bytes, 0.0), 1),
        "keystroke_bytes_p50": round(percentile(&mut key_bytes, 50.0), 1),
        "keystroke_bytes_max": round(percentile(&mut key_bytes, 100.0), 1),
        "static_bytes_per_min": round(static_bytes as f64 * 60.0 / static_secs as f64, 1),
        "static_frames": static_frames,
        "encode_ms_per_mpixel": round(encode_ms / mpixels, 3),
        "encode_full_frame_ms": round(encode_ms, 3),
        "resize_to_frame_ms_p50": round(percentile(&mut resize_ms, 50.0), 3),
        "resize_to_frame_ms_p99": round(percentile(&mut resize_ms, 99.0), 3),
        "resize_conditions": "20 display changes between 390x844 and 844x390 CSS px at DPR 3 (phone screens 780x1688 and 1688x780), in Notes; display change sent to the first frame update after Screen",
        "scroll_bytes_per_frame": scroll["bytes_per_frame"],
        "scroll_fps": scroll["fps"],
        "scroll_frame_bytes_ratio": scroll["frame_bytes_ratio"],
        "scroll": scroll,
    }))
}

/// What one terminal received during the flicks.
#[derive(Default)]
struct Received {
    frames: usize,
    copies: usize,
    bytes: usize,
    /// Per flick: when its frames arrived.
    times: Vec<Vec<Instant>>,
}

impl Received {
    fn record(&mut self, event: Option<TerminalEvent>) -> Result<bool> {
        match event.context("the terminal session ended")? {
            TerminalEvent::Frame { copies, bytes, .. } => {
                self.frames += 1;
                self.copies += copies;
                self.bytes += bytes;
                if let Some(flick) = self.times.last_mut() {
                    flick.push(Instant::now());
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// Gives the phone `n` mails (an inbox with a history to scroll through).
async fn fill_inbox(phone: &vmi_site::phone::PhoneLink, n: usize) -> Result<()> {
    for i in 0..n {
        let mail = vmi_engine::Mail {
            from: format!("Sender {i} <sender{i}@example.com>"),
            subject: format!("Quarterly figures, part {i}"),
            body: format!("Message {i}: the numbers you asked for are attached, with a summary of each region."),
        };
        phone.mail(mail, true).await?;
    }
    Ok(())
}

/// Flicks through a long inbox (the phone glides on its own 60 Hz timer) while two terminals watch: `term`
/// (protocol version 4: a scroll travels as a copy and the uncovered strip) and one speaking version 3 (tiles
/// only), in the same run on the same frames.
async fn scroll(w: &World, term: &mut Terminal, url: &str) -> Result<Value> {
    const FLICKS: usize = 6;
    let phone = w.site.state.phone("bench")?;
    fill_inbox(&phone, 80).await?;
    term.send_input(Input::Key { code: 8, text: None })?;
    tap(term, layout::MAIL).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drain(term).await;
    let options = TerminalOptions { protocol_version: 3, ..w.terminal_options() };
    let mut old = Terminal::connect(url, &w.token, options).await?;
    wait_for(&mut old, Duration::from_secs(10), |e| matches!(e, TerminalEvent::Frame { .. })).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drain(&mut old).await;
    drain(term).await;

    let (mut new_rx, mut old_rx) = (Received::default(), Received::default());
    for flick in 0..FLICKS {
        new_rx.times.push(Vec::new());
        old_rx.times.push(Vec::new());
        // Three flicks down the list, three back up: six moves of 40 px 16 ms apart, then the finger lifts.
        let (y0, step): (i32, i32) = if flick < FLICKS / 2 { (1000, -40) } else { (300, 40) };
        let at = |i: i32| Input::Touch { phase: TouchPhase::Move, x: 360, y: (y0 + i * step) as u16, pointer: 0 };
        term.send_input(Input::Touch { phase: TouchPhase::Down, x: 360, y: y0 as u16, pointer: 0 })?;
        for i in 1..=6 {
            tokio::time::sleep(Duration::from_millis(16)).await;
            term.send_input(at(i))?;
        }
        term.send_input(Input::Touch { phase: TouchPhase::Up, x: 360, y: (y0 + 6 * step) as u16, pointer: 0 })?;
        // The glide is over once no frame came for 400 ms.
        let mut quiet = tokio::time::Instant::now() + Duration::from_millis(400);
        loop {
            tokio::select! {
                e = term.next_event() => if new_rx.record(e)? { quiet = tokio::time::Instant::now() + Duration::from_millis(400) },
                e = old.next_event() => { old_rx.record(e)?; }
                _ = tokio::time::sleep_until(quiet) => break,
            }
        }
    }
    drain(&mut old).await;
    old.close().await;
    // The terminal shows exactly the phone's screen after the last glide.
    let shot = phone.screen().await?;
    let (_, _, rgba) = term.screen();
    anyhow::ensure!(rgba == shot.rgba, "after the flicks the terminal's screen is not the phone's");
    let full = vmi_protocol::display::Encoder::new(shot.width as u16, shot.height as u16).full(&shot.rgba);
    let full_bytes =
        vmi_protocol::encode_server(&vmi_protocol::ServerMessage::FrameUpdate { seq: 1, tiles: full }).len();
    // Frames per second at the terminal while a list moves: over each flick, frames after the first by the time
    // from the first to the last.
    let (mut gaps, mut span_s) = (0usize, 0f64);
    for times in &new_rx.times {
        if let (Some(first), Some(last)) = (times.first(), times.last()) {
            gaps += times.len() - 1;
            span_s += last.duration_since(*first).as_secs_f64();
        }
    }
    let per_frame = new_rx.bytes as f64 / new_rx.frames.max(1) as f64;
    let tiles_per_frame = old_rx.bytes as f64 / old_rx.frames.max(1) as f64;
    Ok(json!({
        "conditions": format!("{FLICKS} flicks (6 moves of 40 px, 16 ms apart) on an inbox of 80 mails, 720x1280, the phone gliding on its 60 Hz timer; two terminals on the same frames: version 4 (copies) and version 3 (tiles only)"),
        "frames": new_rx.frames,
        "frames_with_copy": new_rx.copies,
        "bytes_per_frame": round(per_frame, 1),
        "fps": round(gaps as f64 / span_s.max(1e-9), 1),
        "full_repaint_bytes": full_bytes,
        "frame_bytes_ratio": round(per_frame / full_bytes as f64, 4),
        "tiles_only_frames": old_rx.frames,
        "tiles_only_bytes_per_frame": round(tiles_per_frame, 1),
        "tiles_only_frame_bytes_ratio": round(tiles_per_frame / full_bytes as f64, 4),
        "bytes_per_s": round(new_rx.bytes as f64 / span_s.max(1e-9), 0),
        "tiles_only_bytes_per_s": round(old_rx.bytes as f64 / span_s.max(1e-9), 0),
        "video_codec": "not compared: no well-kept Rust crate encodes H.264/VP8/AV1 for the browser's WebCodecs without a C toolchain build (openh264) or a slow pure-Rust encoder (rav1e) on 2 cores",
    }))
}

/// The phone's application processor takes this many times as long as this machine's core for the same decoding
/// (an assumption that charges the terminal generously: a 2013 phone core against a current server core).
const PHONE_CORE_SLOWER: f64 = 4.0;

/// Where Mail's alerts button is on a 720×1280 screen (guest/vmi-phone: the right of the inbox's bar).
const MAIL_ALERTS: (i32, i32) = (605, 104);

/// How many mails a notification announces: one, or the N of Mail's hourly "N new messages".
fn mails_in(title: &str) -> u64 {
    title.strip_suffix(" new messages").and_then(|n| n.parse().ok()).unwrap_or(1)
}

/// `vmi bench energy`: a whole day of a terminal, replayed through a real site in virtual time, beside a phone
/// that polls its mail, with the radio, screen and processor of both priced in one model.
pub async fn energy(active_min: u64, day_h: u64, mail_every_min: u64) -> Result<Value> {
    use vmi_terminal::energy::{
        DeviceParams, LteParams, Packet, Polling, RadioPolicy, lte_energy_span_releasing, polling_phone_day,
    };
    const SECOND_NS: u64 = 1_000_000_000;
    const SCROLL_MIN: u64 = 1;
    let asleep_min = (day_h * 60).checked_sub(active_min + SCROLL_MIN).context("the day is shorter than its use")?;
    let start_wall = SystemClock::shared().wall_ns();
    let clock = ManualClock::new(start_wall);
    let w = world(clock.clone()).await?;
    let phone = w.site.state.phone("bench")?;
    // An inbox with a history to scroll through (its alerts reach the terminal when it attaches).
    fill_inbox(&phone, 80).await?;
    let ms_clock = clock.clone();
    let options = TerminalOptions { clock: Arc::new(move || ms_clock.wall_ns() / 1_000_000), ..w.terminal_options() };
    let mut term = Terminal::connect(&w.site.ws_url(), &w.token, options).await?;
    wait_for(&mut term, Duration::from_secs(10), |e| matches!(e, TerminalEvent::Frame { .. })).await?;
    let cpu_at_start = phone.status().await?.cpu_units;
    // The terminal's position reports, due every REPORT_PERIOD_MS all day, each sent only on a radio already up.
    let mut reports = PositionReports::default();

    // Active use: Notes open, a key every two seconds (typing, then erasing).
    tap(&mut term, layout::NOTES).await?;
    let keys = active_min * 60 / 2;
    let mut active_bytes = 0u64;
    for i in 0..keys {
        let input = if (i / 40) % 2 == 0 {
            Input::Key { code: 0, text: Some('a') }
        } else {
            Input::Key { code: 1, text: None }
        };
        let seq = term.send_input(input)?;
        wait_for(
            &mut term,
            Duration::from_secs(10),
            |e| matches!(e, TerminalEvent::InputAcked { seq: s } if *s >= seq),
        )
        .await?;
        if let TerminalEvent::Frame { bytes, .. } =
            wait_for(&mut term, Duration::from_secs(10), |e| matches!(e, TerminalEvent::Frame { .. })).await?
        {
            active_bytes += bytes as u64;
        }
        reports.tick(&term);
        clock.advance(2 * SECOND_NS);
        w.site.tick().await;
        drain(&mut term).await;
    }

    // A minute of scrolling the inbox: a flick every 4 s, down then up, the list gliding on the phone's timer.
    // Then Mail's alerts go hourly for the night.
    let scroll_from_ms = clock.wall_ns() / 1_000_000;
    let down_before = term.energy().bytes_down;
    term.send_input(Input::Key { code: 8, text: None })?;
    tap(&mut term, layout::MAIL).await?;
    tap(&mut term, MAIL_ALERTS).await?;
    let flicks = SCROLL_MIN * 60 / 4;
    for flick in 0..flicks {
        let flick_ends = clock.wall_ns() + 4 * SECOND_NS;
        let (y0, step): (i32, i32) = if flick % 2 == 0 { (1000, -40) } else { (300, 40) };
        let touch = |phase, i: i32| Input::Touch { phase, x: 360, y: (y0 + i * step) as u16, pointer: 0 };
        let mut last = term.send_input(touch(TouchPhase::Down, 0))?;
        for i in 1..=6 {
            clock.advance(16_000_000);
            last = term.send_input(touch(TouchPhase::Move, i))?;
            wait_for(
                &mut term,
                Duration::from_secs(10),
                |e| matches!(e, TerminalEvent::InputAcked { seq } if *seq >= last),
            )
            .await?;
        }
        last = term.send_input(touch(TouchPhase::Up, 6)).map(|s| s.max(last))?;
        wait_for(
            &mut term,
            Duration::from_secs(10),
            |e| matches!(e, TerminalEvent::InputAcked { seq } if *seq >= last),
        )
        .await?;
        while clock.wall_ns() < flick_ends {
            clock.advance(16_666_667);
            w.site.tick().await;
            drain(&mut term).await;
        }
        reports.tick(&term);
    }
    let scroll_bytes = term.energy().bytes_down - down_before;

    // Screen off for the rest of the day: only notifications may reach the terminal; Mail holds its alerts for
    // the top of each hour.
    let asleep_from_ms = clock.wall_ns() / 1_000_000;
    let cpu_in_use = phone.status().await?.cpu_units - cpu_at_start;
    term.sleep();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drain(&mut term).await;
    let frames_before = term.stats().frames;
    let (mut mails, mut notifications, mut announced) = (0u64, 0u64, 0u64);
    let mut mail_times_ms = Vec::new();
    for minute in 1..=asleep_min {
        clock.advance(60 * SECOND_NS);
        w.site.tick().await;
        if minute % mail_every_min == 0 {
            mails += 1;
            let mail = vmi_engine::Mail {
                from: "ann@example.com".into(),
                subject: format!("Mail {mails}"),
                body: "See you soon".into(),
            };
            phone.mail(mail, true).await?;
            mail_times_ms.push(clock.wall_ns() / 1_000_000);
        }
        while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(3), term.next_event()).await {
            if let TerminalEvent::Notification { title, .. } = event {
                notifications += 1;
                announced += mails_in(&title);
            }
        }
        reports.tick(&term);
    }
    let asleep_frames = term.stats().frames - frames_before;
    let decode_s = term.stats().decode_ns as f64 / 1e9;
    let live = term.energy();
    let end_ms = clock.wall_ns() / 1_000_000;
    let start_ms = start_wall / 1_000_000;
    let params = LteParams::HUANG_2012;
    let policy = RadioPolicy::FAST_DORMANCY;
    let trace: Vec<Packet> = term.with_energy_meter(|m| m.trace().to_vec());
    term.close().await;
    w.finish().await;
    // Every mail was announced, but those held for an hour the day ended in.
    let held_at_end = mails - announced.min(mails);
    if held_at_end > 60 / mail_every_min + 1 || announced > mails {
        bail!("{mails} mails, {announced} announced in {notifications} notifications");
    }

    // The terminal's radio, part by part, with fast dormancy (as the terminal runs) and without.
    let part_of = |trace: &[Packet], from: u64, to: u64, release: Option<u64>| {
        let lo = trace.partition_point(|p| p.at_ms < from);
        let hi = trace.partition_point(|p| p.at_ms < to);
        lte_energy_span_releasing(&trace[lo..hi], (from, to), params, release)
    };
    let part = |from: u64, to: u64, release: Option<u64>| part_of(&trace, from, to, release);
    // The day with its position reports, without them, and with them sent every period whatever the radio.
    let day = |trace: &[Packet]| {
        [
            part_of(trace, start_ms, scroll_from_ms, policy.static_release_ms),
            part_of(trace, scroll_from_ms, asleep_from_ms, policy.static_release_ms),
            part_of(trace, asleep_from_ms, end_ms + 1, policy.asleep_release_ms),
        ]
        .iter()
        .fold((0u64, 0.0), |(w, j), e| (w + e.wakeups, j + e.total_j))
    };
    let without_reports = reports.removed_from(&trace);
    let regardless = reports.sent_every_period(&without_reports);
    let (with_wakeups, with_j) = day(&trace);
    let (without_wakeups, without_j) = day(&without_reports);
    let (regardless_wakeups, regardless_j) = day(&regardless);
    if with_wakeups != without_wakeups {
        bail!("position reports added {} radio wakeups", with_wakeups as i64 - without_wakeups as i64);
    }
    let active = part(start_ms, scroll_from_ms, policy.static_release_ms);
    let scroll = part(scroll_from_ms, asleep_from_ms, policy.static_release_ms);
    let asleep = part(asleep_from_ms, end_ms + 1, policy.asleep_release_ms);
    let radio_j = active.total_j + scroll.total_j + asleep.total_j;
    // What typing would cost if the radio went after 1 s of quiet too: each key then pays a promotion (and its
    // 260 ms before the key leaves), which is why the terminal keeps the radio for 3 s with the screen on.
    let typing_released = part(start_ms, scroll_from_ms, policy.asleep_release_ms);
    let radio_plain_j = part(start_ms, scroll_from_ms, None).total_j
        + part(scroll_from_ms, asleep_from_ms, None).total_j
        + part(asleep_from_ms, end_ms + 1, None).total_j;
    // The same night with every mail alerted at once: one notification (of the night's average size) per mail.
    let asleep_lo = trace.partition_point(|p| p.at_ms < asleep_from_ms);
    let night_bytes: u64 = trace[asleep_lo..].iter().map(|p| u64::from(p.bytes)).sum();
    let each = (night_bytes / notifications.max(1)) as u32;
    let at_once: Vec<Packet> = mail_times_ms
        .iter()
        .map(|&at_ms| Packet { at_ms, direction: vmi_terminal::energy::Direction::Down, bytes: each })
        .collect();
    let asleep_at_once =
        lte_energy_span_releasing(&at_once, (asleep_from_ms, end_ms + 1), params, policy.asleep_release_ms);

    // The rest of each device: the same screen time; the terminal decodes, the polling phone runs the apps itself
    // (the phone image's own instructions in that time) and wakes for each poll at night.
    let device = DeviceParams::NEXUS_5;
    let screen_on_ms = (asleep_from_ms - start_ms) as f64;
    let terminal_device = device.energy(screen_on_ms, decode_s * PHONE_CORE_SLOWER * device.cpu_ips, notifications);
    let poll = Polling::default();
    let night_polls = (end_ms - asleep_from_ms) / poll.interval_ms;
    let polling_device = device.energy(screen_on_ms, cpu_in_use as f64, night_polls);
    let span_ms = end_ms - start_ms;
    let polling = polling_phone_day(span_ms, poll);
    let polling_fd = polling_phone_day(span_ms, Polling { release_after_ms: Some(1_000), ..poll });
    let terminal_j = radio_j + terminal_device.screen_j + terminal_device.cpu_j;
    let polling_j = polling.total_j + polling_device.screen_j + polling_device.cpu_j;
    let polling_fd_j = polling_fd.total_j + polling_device.screen_j + polling_device.cpu_j;

    let r = |e: &vmi_terminal::energy::EnergyReport| {
        json!({
            "total_j": round(e.total_j, 1), "promotion_j": round(e.promotion_j, 1), "tail_j": round(e.tail_j, 1),
            "transfer_j": round(e.transfer_j, 2), "idle_j": round(e.idle_j, 1), "wakeups": e.wakeups,
            "releases": e.releases, "bytes_down": e.bytes_down, "bytes_up": e.bytes_up,
        })
    };
    let d = |e: &vmi_terminal::energy::DeviceEnergy| {
        json!({ "screen_j": round(e.screen_j, 1), "cpu_j": round(e.cpu_j, 1), "compute_s": round(e.compute_s, 3),
            "background_wakes": e.background_wakes })
    };
    Ok(json!({
        "bench": "energy",
        "model": "LTE RRC power model of Huang et al., MobiSys 2012 (promotion, 11.6 s tail, DRX, paging); screen and processor from the Nexus 5's AOSP power_profile.xml at 4.0 V; a model, not a measurement",
        "conditions": format!("a {day_h} h day: {active_min} min typing in Notes (a key every 2 s), {SCROLL_MIN} min flicking through an 80-mail inbox (a flick every 4 s), then the screen off with a mail every {mail_every_min} min and Mail's alerts hourly; real site and terminal over loopback, virtual time. Polling phone: its mail every 5 min (1 KiB up, 2 KiB down), the same screen time, the phone image's own instructions while in use (1 per cycle at 1.4976 GHz), 1 s awake per night poll. Terminal decoding: this machine's time x{PHONE_CORE_SLOWER}"),
        "span_h": round(span_ms as f64 / 3.6e6, 2),
        "mails": mails,
        "notifications": notifications,
        "mails_announced": announced,
        "frames_while_asleep": asleep_frames,
        "position_reports": {
            "due_every_s": REPORT_PERIOD_MS / 1000,
            "sent": reports.sent.len(),
            "held_for_a_radio_up": reports.held,
            "wakeups_added": with_wakeups as i64 - without_wakeups as i64,
            "energy_added_j": round(with_j - without_j, 2),
            "if_sent_every_period_regardless": {
                "sent": reports.due.len(),
                "wakeups_added": regardless_wakeups as i64 - without_wakeups as i64,
                "energy_added_j": round(regardless_j - without_j, 1),
            },
        },
        "active_frame_bytes": active_bytes,
        "scroll_frame_bytes": scroll_bytes,
        "terminal": {
            "total_j": round(terminal_j, 1),
            "radio_j": round(radio_j, 1),
            "radio_without_fast_dormancy_j": round(radio_plain_j, 1),
            "radio": { "typing": r(&active), "scrolling": r(&scroll), "asleep": r(&asleep) },
            "asleep_radio_if_every_mail_alerted_at_once_j": round(asleep_at_once.total_j, 1),
            "typing_radio_if_released_after_1s": r(&typing_released),
            "device": d(&terminal_device),
            "decode_s_here": round(decode_s, 3),
            "live_meter_j": round(live.total_j, 1),
        },
        "polling_phone": {
            "total_j": round(polling_j, 1),
            "radio": r(&polling),
            "device": d(&polling_device),
            "guest_instructions_in_use": cpu_in_use,
        },
        "polling_phone_with_fast_dormancy": { "total_j": round(polling_fd_j, 1), "radio": r(&polling_fd) },
        "terminal_vs_polling": round(terminal_j / polling_j.max(1e-9), 3),
        "terminal_vs_polling_with_fast_dormancy": round(terminal_j / polling_fd_j.max(1e-9), 3),
        "radio_only": {
            "terminal_vs_polling": round(radio_j / polling.total_j.max(1e-9), 3),
            "terminal_vs_polling_with_fast_dormancy": round(radio_j / polling_fd.total_j.max(1e-9), 3),
        },
    }))
}

/// How often the energy bench's terminal has a position report due.
const REPORT_PERIOD_MS: u64 = 30_000;

/// The energy bench's position reports: one due every [`REPORT_PERIOD_MS`], sent with
/// [`Terminal::ride_along`] (only on a radio already up), else held until the radio is up.
#[derive(Default)]
struct PositionReports {
    /// When each report fell due.
    due: Vec<u64>,
    /// When each was sent.
    sent: Vec<u64>,
    /// Reports that waited for the radio.
    held: u64,
    pending: bool,
}

impl PositionReports {
    /// At the terminal's now: a report falls due each period; a due one goes if it can ride along.
    fn tick(&mut self, term: &Terminal) {
        let now = term.with_energy_meter(|m| m.now_ms());
        // Every period that passed since the last tick has its report due (the night's ticks are a minute apart).
        let mut fell_due = false;
        loop {
            let next = self.due.last().map_or(now, |&last| last + REPORT_PERIOD_MS);
            if next > now {
                break;
            }
            self.due.push(next);
            fell_due = true;
        }
        if fell_due {
            // Only the latest position matters: one report sends it, however many fell due.
            self.pending = true;
        }
        if self.pending {
            if term.ride_along(vmi_terminal::cli::REPORT_UP_BYTES, vmi_terminal::cli::REPORT_DOWN_BYTES) {
                self.sent.push(now);
                self.pending = false;
            } else if fell_due {
                self.held += 1;
            }
        }
    }

    /// `trace` without the reports' packets (one up and one down of the report's sizes at each sending).
    fn removed_from(&self, trace: &[vmi_terminal::energy::Packet]) -> Vec<vmi_terminal::energy::Packet> {
        use vmi_terminal::energy::Direction;
        let mut left: Vec<(u64, Direction, u32)> = Vec::new();
        for &at in &self.sent {
            left.push((at, Direction::Up, vmi_terminal::cli::REPORT_UP_BYTES as u32));
            left.push((at, Direction::Down, vmi_terminal::cli::REPORT_DOWN_BYTES as u32));
        }
        trace
            .iter()
            .filter(|p| match left.iter().position(|&(at, d, b)| at == p.at_ms && d == p.direction && b == p.bytes) {
                Some(i) => {
                    left.swap_remove(i);
                    false
                }
                None => true,
            })
            .copied()
            .collect()
    }

    /// `trace` with a report sent at each due time, whatever the radio (what a naive terminal would do).
    fn sent_every_period(&self, trace: &[vmi_terminal::energy::Packet]) -> Vec<vmi_terminal::energy::Packet> {
        use vmi_terminal::energy::{Direction, Packet};
        let mut all = trace.to_vec();
        for &at_ms in &self.due {
            all.push(Packet { at_ms, direction: Direction::Up, bytes: vmi_terminal::cli::REPORT_UP_BYTES as u32 });
            all.push(Packet { at_ms, direction: Direction::Down, bytes: vmi_terminal::cli::REPORT_DOWN_BYTES as u32 });
        }
        all.sort_by_key(|p| p.at_ms);
        all
    }
}

/// A phone for the migration bench whose whole memory is in use: 16 MiB, every page non-zero (a quarter
/// incompressible, the rest repetitive, like a heap), with its framebuffer in it; a key paints a small square
/// and says so (each key its own colour, so every key is a frame), so the terminal sees frames while it types.
const FILLED_PHONE: &str = concat!(
    r#"(module
  (import "vmi" "fb_attach" (func $fb_attach (param i32 i32 i32)))
  (import "vmi" "fb_damage" (func $fb_damage (param i32 i32 i32 i32)))
  (memory (export "memory") 256 256)
  (global $w (mut i32) (i32.const 0))
  (global $keys (mut i32) (i32.const 0))
  (func (export "vmi_init") (param $w i32) (param $h i32) (local $i i32) (local $x i32)"#,
    crate::bench::fill_16mib_wat!(),
    r#"
    (global.set $w (local.get $w))
    (call $fb_attach (i32.const 0) (local.get $w) (local.get $h)))
  (func (export "vmi_event") (param $kind i32) (param $a i32) (param $b i32) (param $c i32)
    (local $x i32) (local $row i32) (local $col i32)
    (if (i32.ne (local.get $kind) (i32.const 4)) (then (return)))
    (global.set $keys (i32.add (global.get $keys) (i32.const 1)))
    (local.set $x (i32.mul (i32.rem_u (global.get $keys) (i32.const 40)) (i32.const 16)))
    (loop $rows
      (local.set $col (i32.const 0))
      (loop $cols
        (i32.store
          (i32.shl (i32.add (i32.mul (i32.add (i32.const 100) (local.get $row)) (global.get $w))
            (i32.add (local.get $x) (local.get $col))) (i32.const 2))
          (i32.or (i32.const 0xff000000) (i32.mul (global.get $keys) (i32.const 0x010203))))
        (local.set $col (i32.add (local.get $col) (i32.const 1)))
        (br_if $cols (i32.lt_u (local.get $col) (i32.const 16))))
      (local.set $row (i32.add (local.get $row) (i32.const 1)))
      (br_if $rows (i32.lt_u (local.get $row) (i32.const 16))))
    (call $fb_damage (local.get $x) (i32.const 100) (i32.const 16) (i32.const 16))))"#
);

/// Whose phone a migration series moves: the bench user's default phone, a 16 MiB filled one, or a Linux phone
/// of this image.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum SeriesPhone {
    Default,
    Filled16,
    Linux(Arc<Vec<u8>>),
}

/// What one series of migrations measured.
pub(crate) struct MigrationSeries {
    pub(crate) downtime_ms: Vec<f64>,
    /// Of the downtime: stopping the phone and taking its final delta at the source.
    pub(crate) freeze_ms: Vec<f64>,
    pub(crate) final_bytes: Vec<f64>,
    /// Stop to the final delta flushed (what QEMU counts as its downtime).
    pub(crate) sent_ms: Vec<f64>,
    pub(crate) commit_ms: Vec<f64>,
    pub(crate) total_ms: Vec<f64>,
    pub(crate) gap_ms: Vec<f64>,
    pub(crate) bytes_sent: Vec<f64>,
    pub(crate) memory_bytes: u64,
    pub(crate) screen: (u32, u32),
}

/// `vmi bench migrate`: live migrations back and forth between two sites while a
/// terminal types, with the control service on SQLite and then on etcd, plus (where KVM and
/// QEMU exist) a QEMU guest migrated the same way.
pub async fn migrate(rounds: usize, qemu_mib: u64, qemu_runs: usize) -> Result<Value> {
    // Like with like: a phone of 16 MiB with every page in use, beside a QEMU guest of that size.
    let MigrationSeries {
        mut downtime_ms,
        mut freeze_ms,
        mut final_bytes,
        mut sent_ms,
        mut commit_ms,
        mut total_ms,
        mut gap_ms,
        bytes_sent,
        memory_bytes: nonzero,
        screen: (sw, sh),
    } = migration_series(rounds, false, SeriesPhone::Filled16).await?;
    let mut default = migration_series(rounds, false, SeriesPhone::Default).await?;
    let default_mean_bytes = default.bytes_sent.iter().sum::<f64>() / default.bytes_sent.len().max(1) as f64;
    let default_phone = json!({
        "memory_mib": round(default.memory_bytes as f64 / (1 << 20) as f64, 2),
        "downtime_ms_p50": round(percentile(&mut default.downtime_ms, 50.0), 3),
        "downtime_ms_p99": round(percentile(&mut default.downtime_ms, 99.0), 3),
        "commit_ms_p50": round(percentile(&mut default.commit_ms, 50.0), 3),
        "total_ms": round(percentile(&mut default.total_ms, 50.0), 2),
        "bytes_sent": default_mean_bytes.round(),
        "terminal_gap_ms_p50": round(percentile(&mut default.gap_ms, 50.0), 2),
        "terminal_gap_ms_p99": round(percentile(&mut default.gap_ms, 99.0), 2),
        "conditions": "the same moves of the default phone (its pages in use, typing in Notes)",
    });
    let mut on_etcd = migration_series(rounds, true, SeriesPhone::Default).await?;
    let etcd = json!({
        "downtime_ms_p50": round(percentile(&mut on_etcd.downtime_ms, 50.0), 3),
        "downtime_ms_p99": round(percentile(&mut on_etcd.downtime_ms, 99.0), 3),
        "commit_ms_p50": round(percentile(&mut on_etcd.commit_ms, 50.0), 3),
        "commit_ms_p99": round(percentile(&mut on_etcd.commit_ms, 99.0), 3),
        "total_ms": round(percentile(&mut on_etcd.total_ms, 50.0), 2),
        "terminal_gap_ms_p50": round(percentile(&mut on_etcd.gap_ms, 50.0), 2),
        "conditions": "the same, the control service's state in a 3-member etcd cluster on loopback addresses \
            (the destination's compare-and-set goes through etcd's consensus, commit_ms, while the phone already \
            runs there provisionally: out of the downtime, inside the terminal's gap)",
    });
    let out = migrate_report(rounds, qemu_mib, qemu_runs, nonzero, (sw, sh), &bytes_sent);
    let mut out = out;
    out["downtime_ms_p50"] = json!(round(percentile(&mut downtime_ms, 50.0), 3));
    out["downtime_ms_p99"] = json!(round(percentile(&mut downtime_ms, 99.0), 3));
    out["commit_ms_p50"] = json!(round(percentile(&mut commit_ms, 50.0), 3));
    out["commit_ms_p99"] = json!(round(percentile(&mut commit_ms, 99.0), 3));
    out["freeze_ms_p50"] = json!(round(percentile(&mut freeze_ms, 50.0), 3));
    out["downtime_as_qemu_counts_ms_p50"] = json!(round(percentile(&mut sent_ms, 50.0), 3));
    out["downtime_as_qemu_counts_ms_p99"] = json!(round(percentile(&mut sent_ms, 99.0), 3));
    out["final_bytes_p50"] = json!(percentile(&mut final_bytes, 50.0).round());
    out["total_ms"] = json!(round(percentile(&mut total_ms, 50.0), 2));
    out["terminal_gap_ms_p50"] = json!(round(percentile(&mut gap_ms, 50.0), 2));
    out["terminal_gap_ms_p99"] = json!(round(percentile(&mut gap_ms, 99.0), 2));
    if let (Some(q), Some(d)) = (out["qemu_downtime_ms"].as_f64(), out["downtime_ms_p50"].as_f64()) {
        out["qemu_downtime_over_phone_downtime"] = json!(round(q / d.max(1e-9), 1));
    }
    // Like with like: QEMU's downtime is what its source sees (stop to the last byte sent, whole ms), not the
    // destination's load and start, which the phone's downtime_ms holds.
    if let (Some(q), Some(d)) = (out["qemu_downtime_ms"].as_f64(), out["downtime_as_qemu_counts_ms_p50"].as_f64()) {
        out["qemu_downtime_over_phone_downtime_as_qemu_counts"] = json!(round(q / d.max(1e-9), 1));
    }
    out["default_phone"] = default_phone;
    out["etcd"] = etcd;
    Ok(out)
}

/// `rounds` migrations back and forth between two sites while a terminal types; the control service on SQLite
/// or on etcd.
pub(crate) async fn migration_series(rounds: usize, etcd: bool, which: SeriesPhone) -> Result<MigrationSeries> {
    let w = world_on(SystemClock::shared(), etcd).await?;
    let b = vmi_site::start(SiteConfig {
        id: "site-b".into(),
        listen: "127.0.0.1:0".parse()?,
        data_dir: w.data_dir.join("b"),
        control_url: w.site.state.control_url().to_string(),
        lat: 60.29,
        lon: 25.04,
        capacity: 8,
        clock: SystemClock::shared(),
        heartbeat: Duration::from_secs(1),
        screen: (720, 1280),
        public_url: None,
        checkpoint_every: None,
        retention: Default::default(),
        credentials: w.site_credentials("site-b")?,
        limits: Default::default(),
        history: None,
        hibernation: None,
    })
    .await?;
    let sites = [(w.site.state.id.clone(), w.site.url.clone()), (b.state.id.clone(), b.url.clone())];
    let (user, token) = match &which {
        SeriesPhone::Default => ("bench", w.token.clone()),
        SeriesPhone::Linux(image) => {
            // Published like any tenant's image; both sites run it on their QEMU engine.
            let control = vmi_control_api::ControlClient::new(w.site.state.control_url(), &w.operator)?;
            control.publish_image("linux", image).await?;
            let tenant = vmi_control_api::tenants::TenantRequest {
                name: "benchlinux".into(),
                max_phones: None,
                max_memory_bytes: None,
                image: Some("linux".into()),
            };
            control.create_tenant(&tenant).await?;
            control.create_user_in("tux", Some("benchlinux")).await?;
            control.set_placement("tux", "site-a").await?;
            w.site.state.create_phone("tux").await?;
            // Its session up before it moves: a phone in use, not one booting.
            let phone = w.site.state.phone("tux")?;
            let by = Instant::now() + Duration::from_secs(180);
            while phone.file("/run/user/1000/seed-ready".into()).await?.is_err() {
                if Instant::now() > by {
                    bail!("the Linux phone's session did not come up within 3 minutes");
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            ("tux", control.create_device("tux", "bench terminal").await?.token)
        }
        SeriesPhone::Filled16 => {
            // Its own image, published like any tenant's: the phone's engine and image come from the control
            // service; both sites run it.
            let control = vmi_control_api::ControlClient::new(w.site.state.control_url(), &w.operator)?;
            let wasm = wat::parse_str(FILLED_PHONE).context("the filled phone")?;
            control.publish_image("filled-16mib", &wasm).await?;
            let tenant = vmi_control_api::tenants::TenantRequest {
                name: "bench16".into(),
                max_phones: None,
                max_memory_bytes: None,
                image: Some("filled-16mib".into()),
            };
            control.create_tenant(&tenant).await?;
            control.create_user_in("big", Some("bench16")).await?;
            control.set_placement("big", "site-a").await?;
            w.site.state.create_phone("big").await?;
            ("big", control.create_device("big", "bench terminal").await?.token)
        }
    };
    let mut term = Terminal::connect(&w.site.ws_url(), &token, w.terminal_options()).await?;
    wait_for(&mut term, Duration::from_secs(10), |e| matches!(e, TerminalEvent::Frame { .. })).await?;
    if which == SeriesPhone::Default {
        tap(&mut term, layout::NOTES).await?;
    }
    // A Linux phone types into its shell's prompt: 'm' and space, as the others.

    // What the phone holds: its non-zero memory, from a full snapshot.
    let phone = w.site.state.phone(user)?;
    let shot = phone.screen().await?;
    let (sw, sh) = (shot.width, shot.height);
    let status = phone.status().await?;

    let mut downtime_ms = Vec::new();
    let mut freeze_ms = Vec::new();
    let mut final_bytes = Vec::new();
    let mut sent_ms = Vec::new();
    let mut commit_ms = Vec::new();
    let mut total_ms = Vec::new();
    let mut gap_ms = Vec::new();
    let mut bytes_sent = Vec::new();
    for i in 0..rounds {
        let (from, to) = (&sites[i % 2], &sites[(i + 1) % 2]);
        let body = json!({ "to": to.0 });
        let url = format!("{}/v1/phones/{user}/migrate", from.1);
        let operator = w.operator.clone();
        let call = tokio::spawn(async move { operator.post_json(&url, &body).await });
        // Keep typing through the move; watch what the terminal sees.
        let mut last_frame: Option<Instant> = None;
        let mut redirected: Option<Instant> = None;
        let mut gap = None;
        let mut typed = 0;
        let started = Instant::now();
        // A key every 2 ms; a Linux phone under TCG gets a person's pace (its keys are paced into the guest).
        let every =
            if matches!(which, SeriesPhone::Linux(_)) { Duration::from_millis(100) } else { Duration::from_millis(2) };
        let limit =
            if matches!(which, SeriesPhone::Linux(_)) { Duration::from_secs(60) } else { Duration::from_secs(20) };
        while gap.is_none() && started.elapsed() < limit {
            let seq = term.send_input(Input::Key { code: 0, text: Some(if typed % 2 == 0 { 'm' } else { ' ' }) })?;
            typed += 1;
            let until = tokio::time::Instant::now() + every;
            while let Ok(Some(event)) = tokio::time::timeout_at(until, term.next_event()).await {
                match event {
                    TerminalEvent::Frame { .. } if redirected.is_none() => last_frame = Some(Instant::now()),
                    TerminalEvent::Redirected { .. } => redirected = Some(Instant::now()),
                    TerminalEvent::InputAcked { seq: s } if redirected.is_some() && s >= seq.saturating_sub(1) => {
                        if let Some(t) = last_frame {
                            gap = Some(t.elapsed().as_secs_f64() * 1e3);
                        }
                    }
                    _ => {}
                }
            }
        }
        let (status_code, text) = call.await??;
        let report: Value = serde_json::from_str(&text).unwrap_or_default();
        if status_code != 200 {
            bail!("migration {i} failed: {text}");
        }
        downtime_ms.push(report["downtime_us"].as_f64().unwrap_or(f64::NAN) / 1e3);
        commit_ms.push(report["commit_us"].as_f64().unwrap_or(f64::NAN) / 1e3);
        freeze_ms.push(report["freeze_us"].as_f64().unwrap_or(f64::NAN) / 1e3);
        final_bytes.push(report["final_bytes"].as_f64().unwrap_or(f64::NAN));
        sent_ms.push(report["final_sent_us"].as_f64().unwrap_or(f64::NAN) / 1e3);
        total_ms.push(report["total_ms"].as_f64().unwrap_or(f64::NAN));
        bytes_sent.push(report["bytes"].as_f64().unwrap_or(f64::NAN));
        gap_ms.push(gap.context("the terminal never saw the phone answer from its new site")?);
        // Let the erase-and-type settle so each move starts from a quiet phone.
        drain(&mut term).await;
    }
    let nonzero = status.memory_bytes;
    term.close().await;
    b.shutdown().await;
    w.finish().await;
    Ok(MigrationSeries {
        downtime_ms,
        freeze_ms,
        final_bytes,
        sent_ms,
        commit_ms,
        total_ms,
        gap_ms,
        bytes_sent,
        memory_bytes: nonzero,
        screen: (sw, sh),
    })
}

/// The report's conditions, sizes and the QEMU comparison (the series' times are filled in by the caller).
fn migrate_report(
    rounds: usize,
    qemu_mib: u64,
    qemu_runs: usize,
    nonzero: u64,
    (sw, sh): (u32, u32),
    bytes_sent: &[f64],
) -> Value {
    let measured = if qemu_runs == 0 {
        Err("not asked (--qemu-runs 0)".to_string())
    } else {
        crate::qemu::measure(qemu_mib, qemu_runs)
    };
    let qemu = match measured {
        Ok(runs) => {
            let mut d: Vec<f64> = runs.iter().map(|r| r.downtime_ms).collect();
            let mut t: Vec<f64> = runs.iter().map(|r| r.total_ms).collect();
            json!({
                "qemu_memory_mib": qemu_mib,
                "qemu_downtime_ms": round(percentile(&mut d, 50.0), 3),
                "qemu_total_ms": round(percentile(&mut t, 50.0), 1),
                "qemu_bytes": runs.first().map(|r| r.transferred_bytes),
                "qemu_version": runs.first().map(|r| r.qemu_version.clone()),
                "qemu_runs": runs.len(),
            })
        }
        Err(reason) => json!({ "qemu_skipped": reason }),
    };
    // The second anchor: a real Linux guest (TCG, 128 MiB, 16 MiB of random data in its tmpfs).
    let linux = if qemu_runs == 0 {
        Err("not asked (--qemu-runs 0)".to_string())
    } else {
        crate::qemu::measure_linux(qemu_runs)
    };
    let linux = match linux {
        Ok(crate::qemu::LinuxRuns { migrations: runs, failed }) => {
            let mut d: Vec<f64> = runs.iter().map(|r| r.downtime_ms).collect();
            let mut t: Vec<f64> = runs.iter().map(|r| r.total_ms).collect();
            let mut b: Vec<f64> = runs.iter().map(|r| r.transferred_bytes as f64).collect();
            json!({
                "qemu_linux_failed_runs": failed.len(),
                "qemu_linux_failures": failed,
                "qemu_linux_memory_mib": crate::qemu::LINUX_MEMORY_MIB,
                "qemu_linux_downtime_ms_p50": round(percentile(&mut d, 50.0), 1),
                "qemu_linux_downtime_ms_max": round(percentile(&mut d, 100.0), 1),
                "qemu_linux_total_ms": round(percentile(&mut t, 50.0), 1),
                "qemu_linux_bytes": percentile(&mut b, 50.0).round(),
                "qemu_linux_runs": runs.len(),
                "qemu_linux_conditions": "Debian's linux-image-cloud-amd64 with a busybox-static initramfs under QEMU's TCG (KVM here cannot boot it), 128 MiB, 16 MiB of random data in its tmpfs, a line on its serial port 5 times a second; QEMU's default migration parameters, loopback",
            })
        }
        Err(reason) => json!({ "qemu_linux_skipped": reason }),
    };
    let mean_bytes = bytes_sent.iter().sum::<f64>() / bytes_sent.len().max(1) as f64;
    let mut out = json!({
        "bench": "migrate",
        "conditions": format!("{rounds} live migrations back and forth between two sites in one process over loopback (mutual TLS 1.3 between the sites, the terminal over WSS), a terminal typing a key every 2 ms throughout; a phone of 16 MiB with every page in use and its {sw}x{sh} framebuffer in it (each key paints a square), beside a QEMU guest of the same memory; default_phone: the same moves of the default phone typing in Notes"),
        "tls": true,
        "memory_mib": round(nonzero as f64 / (1 << 20) as f64, 2),
        "bytes_sent": mean_bytes.round(),
        "bytes_sent_per_memory_byte": round(mean_bytes / nonzero.max(1) as f64, 3),
    });
    for anchor in [qemu, linux] {
        if let (Value::Object(o), Value::Object(q)) = (&mut out, anchor) {
            o.extend(q);
        }
    }
    out
}
