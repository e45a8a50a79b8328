//! The `vmi terminal` command: find the phone, connect, then either show it in a window or
//! run headless, printing one JSON object per line on stdout.
//!
//! Headless output (logs go to stderr):
//!
//! ```text
//! {"event":"connected","width":720,"height":1280,"resumed":false}
//! {"event":"frame","seq":1,"tiles":240,"bytes":48213,"screen_hash":"7b1279b99bc99dc5"}
//! {"event":"latency","rtt_us":612}
//! {"event":"input_acked","seq":2}
//! {"event":"notification","title":"ann@example.com","body":"Lunch?","at_ms":1700000000000}
//! {"event":"screenshot","file":"home.png"}
//! {"event":"position","t_s":3.0,"lat":60.2,"lon":24.7,"site":"site-a","rtt_ms":2.4,"reported":true,"held":false}
//! {"event":"summary","frames":3,"bytes_up":512,"bytes_down":60210,"wakeups":1,...}
//! ```
//!
//! Order of a headless run: connect; wait for the first frame (unless `--asleep`, at most
//! 10 s); play `--script`; save `--screenshot` (after the script, else after the first
//! frame); stay until `--duration` seconds after connecting have passed (without
//! `--duration` and without a script or screenshot: until the session ends or Ctrl-C);
//! print the summary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::TerminalError;
use crate::energy::EnergyReport;
use crate::script::{self, Step};
use crate::session::{Terminal, TerminalEvent, TerminalOptions, error_chain};

/// How long a headless run waits for the first frame before going on.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `vmi terminal`.
#[derive(clap::Args, Clone, Debug, Default, PartialEq)]
pub struct TerminalArgs {
    /// Control service URL (http://host:port): the phone's site is looked up with the token.
    #[arg(long, value_name = "URL", conflicts_with = "site_ws")]
    pub control: Option<String>,
    /// The site's terminal endpoint (ws://host:port/v1/terminal), without the control service.
    #[arg(long = "site-ws", value_name = "URL")]
    pub site_ws: Option<String>,
    /// A file (0600) holding the device token issued by the control service (never the token itself in argv,
    /// where `ps` shows it).
    #[arg(long = "token-file", value_name = "FILE", value_parser = crate::token_from_file)]
    pub token: String,
    /// The provider CA (PEM) `https://` and `wss://` answers are checked against (default: the file
    /// `VMI_CA_FILE` names).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// No window: print one JSON object per event on stdout.
    #[arg(long)]
    pub headless: bool,
    /// Save the screen as PNG after the first frame, or after the script if there is one.
    #[arg(long, value_name = "FILE")]
    pub screenshot: Option<PathBuf>,
    /// Play a script (tap X Y, drag X1 Y1 X2 Y2, type TEXT, key NAME, wait 500ms, sleep, wake, ping,
    /// screenshot FILE).
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,
    /// Headless: stay connected this many seconds after connecting.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Start with the screen off (only notifications arrive).
    #[arg(long)]
    pub asleep: bool,
    /// Send a keepalive ping after this many seconds without sending (off by default: each one
    /// wakes the radio).
    #[arg(long, value_name = "SECS")]
    pub keepalive: Option<u64>,
    /// Walk a route: lines of `LAT LON SECONDS` (each point reached SECONDS after the one
    /// before; the first line stands SECONDS at the start). Reports the position and the
    /// measured round trip to the control service every second.
    #[arg(long, value_name = "FILE")]
    pub route: Option<PathBuf>,
}

/// What a headless run saw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunSummary {
    /// Frame updates applied.
    pub frames: u64,
    /// The session's traffic and its cost in the LTE model.
    pub energy: EnergyReport,
}

/// Runs `vmi terminal` with default session options, printing headless output on stdout.
pub async fn run(args: TerminalArgs) -> Result<(), TerminalError> {
    let options = options_for(&args)?;
    if args.headless {
        let mut stdout = std::io::stdout();
        run_headless(&args, options, &mut stdout).await.map(|_| ())
    } else {
        run_window(&args, options).await
    }
}

/// The session options the arguments ask for, dialling with the CA the user configured ([`crate::CA_ENV`]).
/// With the control service (`--control`, or the default one when no `--site-ws` is given), a lost site is not
/// the end: the session asks the control service where the phone runs now (after a failover, another site).
pub fn options_for(args: &TerminalArgs) -> Result<TerminalOptions, TerminalError> {
    let caller = crate::terminal_caller(args.ca.as_deref())?;
    let control = match (&args.control, &args.site_ws) {
        (Some(control), _) => Some(control.clone()),
        (None, None) => Some(DEFAULT_CONTROL.to_string()),
        (None, Some(_)) => None,
    };
    let locate = match control {
        Some(control) => {
            let client = vmi_control_api::ControlClient::new(&control, &caller).map_err(TerminalError::Control)?;
            Some(locate_with(client, args.token.clone()))
        }
        None => None,
    };
    Ok(TerminalOptions {
        asleep: args.asleep,
        keepalive: args.keepalive.map(Duration::from_secs),
        caller,
        locate,
        ..TerminalOptions::default()
    })
}

/// Asks `control` where the phone of the device holding `token` runs now.
pub fn locate_with(control: vmi_control_api::ControlClient, token: String) -> crate::session::Locate {
    std::sync::Arc::new(move || {
        let (control, token) = (control.clone(), token.clone());
        Box::pin(async move { control.phone_for_token(&token).await.ok().map(|p| p.ws_url) })
    })
}

/// The control service `vmi up` starts, used when neither `--control` nor `--site-ws` is given.
pub const DEFAULT_CONTROL: &str = "http://127.0.0.1:7800";

/// The site's WebSocket URL: `--site-ws`, or asked from `--control` (default
/// [`DEFAULT_CONTROL`]) with the token.
pub async fn resolve_ws_url(args: &TerminalArgs) -> Result<String, TerminalError> {
    // Without either, the control service of `vmi up` on this machine.
    let default_control = DEFAULT_CONTROL.to_string();
    let control =
        if args.site_ws.is_none() { args.control.as_ref().or(Some(&default_control)) } else { args.control.as_ref() };
    match (&args.site_ws, control) {
        (Some(url), None) => Ok(url.clone()),
        (None, Some(control)) => {
            let client = vmi_control_api::ControlClient::new(control, &crate::terminal_caller(args.ca.as_deref())?)
                .map_err(TerminalError::Control)?;
            let phone = client.phone_for_token(&args.token).await.map_err(TerminalError::Control)?;
            tracing::info!(user = %phone.user, site = %phone.site, url = %phone.ws_url, "found the phone");
            Ok(phone.ws_url)
        }
        (Some(_), Some(_)) => Err(TerminalError::Usage("give --control or --site-ws, not both".into())),
        (None, None) => Err(TerminalError::Usage("give --control URL or --site-ws URL".into())),
    }
}

fn check_args(args: &TerminalArgs) -> Result<(), TerminalError> {
    if let Some(secs) = args.duration
        && !(secs.is_finite() && (0.0..=1e7).contains(&secs))
    {
        return Err(TerminalError::Usage(format!("--duration {secs} is not a number of seconds")));
    }
    if args.token.is_empty() {
        return Err(TerminalError::Usage("the device token is empty".into()));
    }
    Ok(())
}

/// Reads and parses a script file.
pub fn load_script(path: &Path) -> Result<Vec<script::Line>, TerminalError> {
    let text = std::fs::read_to_string(path).map_err(|source| TerminalError::Read { path: path.to_owned(), source })?;
    script::parse(&text).map_err(|source| TerminalError::Script { path: path.to_owned(), source })
}

/// The JSON line printed for an event.
pub fn event_json(event: &TerminalEvent) -> serde_json::Value {
    match event {
        TerminalEvent::Connected { width, height, resumed } => {
            json!({"event": "connected", "width": width, "height": height, "resumed": resumed})
        }
        TerminalEvent::Frame { seq, tiles, copies, bytes } => json!({
            "event": "frame", "seq": seq, "tiles": tiles, "copies": copies, "bytes": bytes
        }),
        TerminalEvent::InputAcked { seq } => json!({"event": "input_acked", "seq": seq}),
        TerminalEvent::InputDurable { seq } => json!({"event": "input_durable", "seq": seq}),
        TerminalEvent::Notification { title, body, at_ms } => {
            json!({"event": "notification", "title": title, "body": body, "at_ms": at_ms})
        }
        TerminalEvent::Redirected { url } => json!({"event": "redirected", "url": url}),
        TerminalEvent::Screen { width, height } => json!({"event": "screen", "width": width, "height": height}),
        TerminalEvent::Clipboard { text } => json!({"event": "clipboard", "text": text}),
        TerminalEvent::Latency { rtt_us } => json!({"event": "latency", "rtt_us": rtt_us}),
        TerminalEvent::Error { message, fatal } => json!({"event": "error", "message": message, "fatal": fatal}),
        TerminalEvent::Closed => json!({"event": "closed"}),
    }
}

/// The summary line.
pub fn summary_json(summary: &RunSummary) -> serde_json::Value {
    let e = &summary.energy;
    json!({
        "event": "summary",
        "frames": summary.frames,
        "bytes_up": e.bytes_up,
        "bytes_down": e.bytes_down,
        "packets_up": e.packets_up,
        "packets_down": e.packets_down,
        "wakeups": e.wakeups,
        "span_ms": e.span_ms,
        "energy_j": e.total_j,
        "promotion_j": e.promotion_j,
        "tail_j": e.tail_j,
        "transfer_j": e.transfer_j,
        "idle_j": e.idle_j,
    })
}

/// Prints events as JSON lines and remembers what the run needs to know.
struct Printer<'a> {
    out: &'a mut (dyn Write + Send),
    events: mpsc::Receiver<TerminalEvent>,
    /// Lines from the route walker, printed between events.
    walker: Option<mpsc::Receiver<serde_json::Value>>,
    frames: u64,
    ended: Option<String>,
    last_fatal: Option<String>,
}

/// Why a pump stopped.
#[derive(PartialEq, Eq)]
enum Stop {
    Deadline,
    Matched,
    Ended,
    Interrupted,
}

impl Printer<'_> {
    fn line(&mut self, value: serde_json::Value) {
        // A closed stdout (e.g. `| head`) must not stop the session.
        let _ = writeln!(self.out, "{value}").and_then(|()| self.out.flush());
    }

    fn take(&mut self, event: TerminalEvent) -> TerminalEvent {
        self.line(event_json(&event));
        match &event {
            TerminalEvent::Frame { .. } => self.frames += 1,
            TerminalEvent::Error { message, fatal: true } => self.last_fatal = Some(message.clone()),
            TerminalEvent::Closed => {
                self.ended = Some(self.last_fatal.clone().unwrap_or_else(|| "closed".to_owned()));
            }
            _ => {}
        }
        event
    }

    /// Prints events (and walker lines) already waiting.
    fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.take(event);
        }
        while let Some(line) = self.walker.as_mut().and_then(|w| w.try_recv().ok()) {
            self.line(line);
        }
    }

    /// Prints events until `deadline`, until `done` matches one, or the session ends.
    async fn pump(&mut self, deadline: Option<Instant>, done: impl Fn(&TerminalEvent) -> bool) -> Stop {
        if self.ended.is_some() {
            return Stop::Ended;
        }
        let until = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(until);
        loop {
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(event) => {
                        let event = self.take(event);
                        if self.ended.is_some() {
                            return Stop::Ended;
                        }
                        if done(&event) {
                            return Stop::Matched;
                        }
                    }
                    None => {
                        self.ended.get_or_insert_with(|| "closed".to_owned());
                        return Stop::Ended;
                    }
                },
                line = next_walker_line(&mut self.walker) => self.line(line),
                () = &mut until => return Stop::Deadline,
                _ = tokio::signal::ctrl_c() => return Stop::Interrupted,
            }
        }
    }

    /// Waits (at most 5 s) until every input is acknowledged (and durable, from a version-2
    /// site), then until frames stop for 250 ms (at most 3 s), so a screenshot shows what the
    /// inputs did.
    async fn settle(&mut self, terminal: &Terminal) -> Stop {
        let acks_by = Instant::now() + Duration::from_secs(5);
        while terminal.stats().pending_inputs > 0 {
            let acked =
                |e: &TerminalEvent| matches!(e, TerminalEvent::InputAcked { .. } | TerminalEvent::InputDurable { .. });
            let stop = self.pump(Some(acks_by), acked).await;
            if stop != Stop::Matched {
                return stop;
            }
        }
        let quiet_by = Instant::now() + Duration::from_secs(3);
        loop {
            let next = (Instant::now() + Duration::from_millis(250)).min(quiet_by);
            match self.pump(Some(next), |e| matches!(e, TerminalEvent::Frame { .. })).await {
                Stop::Matched if Instant::now() < quiet_by => continue,
                Stop::Matched => return Stop::Deadline,
                stop => return stop,
            }
        }
    }

    fn screenshot(&mut self, terminal: &Terminal, path: &Path) -> Result<(), TerminalError> {
        terminal.save_png(path)?;
        self.line(json!({"event": "screenshot", "file": path.display().to_string()}));
        Ok(())
    }
}

/// A headless run with `options`, writing JSON lines to `out`. Returns what it saw; the
/// summary line is printed even when the session ended early (then the result is
/// [`TerminalError::Ended`]).
pub async fn run_headless(
    args: &TerminalArgs,
    options: TerminalOptions,
    out: &mut (dyn Write + Send),
) -> Result<RunSummary, TerminalError> {
    check_args(args)?;
    let steps = args.script.as_deref().map(load_script).transpose()?;
    let route = load_route_args(args)?;
    let url = resolve_ws_url(args).await?;
    let asleep = options.asleep;
    let mut terminal = Terminal::connect(&url, &args.token, options).await?;
    let started = Instant::now();
    let events = terminal.take_events().ok_or(TerminalError::Closed)?;
    let (walker_lines, walker) = match route {
        Some(_) => {
            let (tx, rx) = mpsc::channel(16);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let mut printer = Printer { out, events, walker, frames: 0, ended: None, last_fatal: None };
    terminal.ping();

    let session = async {
        let mut stop = Stop::Deadline;
        if !asleep {
            stop =
                printer.pump(Some(started + FIRST_FRAME_TIMEOUT), |e| matches!(e, TerminalEvent::Frame { .. })).await;
            if stop == Stop::Deadline {
                tracing::warn!("no frame within {FIRST_FRAME_TIMEOUT:?}");
            }
        }
        play(&mut printer, &terminal, args, steps.as_deref().unwrap_or_default(), started, stop).await
    };
    let result = match (route, walker_lines) {
        (Some((control, route)), Some(lines)) => {
            let walk = walk(route, control, &args.token, Probe::Session(&terminal), started, lines);
            tokio::select! {
                result = session => result,
                () = walk => Ok(()),
            }
        }
        _ => session.await,
    };

    printer.drain();
    let summary = RunSummary { frames: printer.frames, energy: terminal.energy() };
    terminal.close().await;
    printer.drain();
    printer.line(summary_json(&summary));
    result?;
    match printer.ended {
        Some(reason) if printer.last_fatal.is_some() => Err(TerminalError::Ended(reason)),
        _ => Ok(summary),
    }
}

async fn play(
    printer: &mut Printer<'_>,
    terminal: &Terminal,
    args: &TerminalArgs,
    steps: &[script::Line],
    started: Instant,
    mut stop: Stop,
) -> Result<(), TerminalError> {
    for line in steps {
        if matches!(stop, Stop::Ended | Stop::Interrupted) {
            return Ok(());
        }
        match &line.step {
            Step::Input(input) => {
                terminal.send_input(input.clone())?;
            }
            Step::Wait(duration) => stop = printer.pump(Some(Instant::now() + *duration), |_| false).await,
            Step::Sleep => terminal.sleep(),
            Step::Wake => terminal.wake(),
            Step::Ping => terminal.ping(),
            Step::Screenshot(path) => {
                stop = printer.settle(terminal).await;
                printer.screenshot(terminal, path)?;
            }
        }
        printer.drain();
    }
    if matches!(stop, Stop::Ended | Stop::Interrupted) {
        return Ok(());
    }
    // A script's inputs reach the phone before the terminal goes: wait for their
    // acknowledgements (and the frames they cause) whether or not a screenshot follows.
    if !steps.is_empty() {
        stop = printer.settle(terminal).await;
    }
    if matches!(stop, Stop::Ended | Stop::Interrupted) {
        return Ok(());
    }
    if let Some(path) = &args.screenshot {
        printer.screenshot(terminal, path)?;
    }
    if stop == Stop::Interrupted {
        return Ok(());
    }
    match args.duration {
        Some(secs) => {
            printer.pump(Some(started + Duration::from_secs_f64(secs)), |_| false).await;
        }
        None if steps.is_empty() && args.screenshot.is_none() => {
            printer.pump(None, |_| false).await;
        }
        None => {}
    }
    Ok(())
}

/// Window mode.
#[cfg(feature = "window")]
async fn run_window(args: &TerminalArgs, options: TerminalOptions) -> Result<(), TerminalError> {
    check_args(args)?;
    if args.script.is_some() || args.duration.is_some() {
        return Err(TerminalError::Usage("--script and --duration need --headless".into()));
    }
    let route = load_route_args(args)?;
    let url = resolve_ws_url(args).await?;
    let terminal = Terminal::connect(&url, &args.token, options).await?;
    let screenshot = args.screenshot.clone();
    let handle = tokio::runtime::Handle::current();
    // The route walker prints its lines on stdout and stops with the window.
    let walker = route.map(|(control, route)| {
        let (lines, mut printed) = mpsc::channel::<serde_json::Value>(16);
        let token = args.token.clone();
        tokio::spawn(async move {
            let print = async {
                while let Some(line) = printed.recv().await {
                    println!("{line}");
                }
            };
            tokio::join!(walk(route, control, &token, Probe::Http, Instant::now(), lines), print);
        })
    });
    let result = tokio::task::spawn_blocking(move || crate::window::run(terminal, screenshot, handle))
        .await
        .map_err(|e| TerminalError::Window(format!("window thread failed: {e}")));
    if let Some(walker) = walker {
        walker.abort();
    }
    result?
}

/// Window mode is not built in: say how to get it.
#[cfg(not(feature = "window"))]
async fn run_window(_args: &TerminalArgs, _options: TerminalOptions) -> Result<(), TerminalError> {
    Err(TerminalError::Usage(
        "this build has no window (cargo feature `window` of vmi-terminal); use --headless".into(),
    ))
}

// ---- routes ---------------------------------------------------------------------------

/// How often a terminal walking a route reports where it is (when the report can ride on a radio already up).
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// What a position report sends, as the radio sees it: the HTTPS request with its token and body in a TLS record.
pub const REPORT_UP_BYTES: usize = 450;
/// What comes back: a `204` in a TLS record, and TCP's acknowledgement.
pub const REPORT_DOWN_BYTES: usize = 200;

/// A walk for `--route`: waypoints in degrees, each reached `secs` after the one before,
/// in a straight line at even speed; the first waypoint's `secs` is spent standing there.
/// After the last waypoint the walker stays put.
///
/// The file has one `LAT LON SECONDS` waypoint a line; blank lines and `#` comments are
/// skipped:
///
/// ```text
/// # from site-a to site-c, then stay
/// 60.2055 24.6559 3
/// 60.2934 25.0378 4
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    points: Vec<(f64, f64, f64)>,
}

impl Route {
    /// Parses a route file's text; the error names the line.
    pub fn parse(text: &str) -> Result<Route, String> {
        let mut points = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let bad = |why: &str| format!("line {}: {why}: {raw:?}", i + 1);
            let [lat, lon, secs] = fields[..] else {
                return Err(bad("expected LAT LON SECONDS"));
            };
            let number = |s: &str| s.parse::<f64>().ok().filter(|x| x.is_finite());
            let (Some(lat), Some(lon), Some(secs)) = (number(lat), number(lon), number(secs)) else {
                return Err(bad("not a number"));
            };
            if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                return Err(bad("latitude must be within ±90 and longitude within ±180"));
            }
            if !(0.0..=1e7).contains(&secs) {
                return Err(bad("seconds must be 0 or more"));
            }
            points.push((lat, lon, secs));
        }
        if points.is_empty() {
            return Err("the route has no waypoints".into());
        }
        Ok(Route { points })
    }

    /// Seconds from setting out to reaching the last waypoint.
    pub fn duration_secs(&self) -> f64 {
        self.points.iter().map(|p| p.2).sum()
    }

    /// Where the walker is `t` seconds after setting out: (latitude, longitude).
    pub fn position_at(&self, t: f64) -> (f64, f64) {
        let (lat0, lon0, wait) = self.points[0];
        let (mut at, mut from) = (wait, (lat0, lon0));
        if t <= at {
            return from;
        }
        for &(lat, lon, secs) in &self.points[1..] {
            if t < at + secs {
                let f = (t - at) / secs;
                return (from.0 + (lat - from.0) * f, from.1 + (lon - from.1) * f);
            }
            at += secs;
            from = (lat, lon);
        }
        from
    }
}

/// Reads and parses a route file.
pub fn load_route(path: &Path) -> Result<Route, TerminalError> {
    let text = std::fs::read_to_string(path).map_err(|source| TerminalError::Read { path: path.to_owned(), source })?;
    Route::parse(&text).map_err(|e| TerminalError::Usage(format!("route {}: {e}", path.display())))
}

/// `--route`, with the control service it reports to.
fn load_route_args(args: &TerminalArgs) -> Result<Option<(vmi_control_api::ControlClient, Route)>, TerminalError> {
    let Some(path) = &args.route else { return Ok(None) };
    let route = load_route(path)?;
    let control = match (&args.control, &args.site_ws) {
        (Some(url), _) => url.clone(),
        (None, None) => DEFAULT_CONTROL.to_string(),
        (None, Some(_)) => {
            return Err(TerminalError::Usage("--route reports to the control service: give --control".into()));
        }
    };
    // As the device: it reads the sites' list and reports its own position.
    let caller = crate::terminal_caller(args.ca.as_deref())?.with_bearer(&args.token);
    let client = vmi_control_api::ControlClient::new(&control, &caller).map_err(TerminalError::Control)?;
    Ok(Some((client.with_timeout(Duration::from_secs(2)), route)))
}

/// How a walker measures the round trip to the site it is connected to.
enum Probe<'a> {
    /// The session's own `Ping`/`Pong` (headless).
    Session(&'a Terminal),
    /// An HTTP request to the phone's site (when the window owns the session).
    #[cfg_attr(not(feature = "window"), allow(dead_code))]
    Http,
}

/// What a probe found: the site (id) and the round trip to it in ms, when known.
struct Measured {
    site: Option<String>,
    rtt_ms: Option<f64>,
}

/// The walker's memory between ticks.
#[derive(Default)]
struct ProbeState {
    /// The sites as last listed.
    sites: Vec<vmi_control_api::SiteStatus>,
    /// The session's URL when the last ping went out.
    pinged: Option<String>,
}

impl Probe<'_> {
    async fn measure(&self, control: &vmi_control_api::ControlClient, token: &str, state: &mut ProbeState) -> Measured {
        match self {
            // Screen off: no probe of its own (a ping would wake the radio); the round trip is measured again
            // when the session's traffic flows.
            Probe::Session(terminal) if terminal.is_asleep() => Measured { site: None, rtt_ms: None },
            Probe::Session(terminal) => {
                let stats = terminal.stats();
                // The last pong answers the ping sent a tick ago, if the session has not
                // moved since; after a redirect the old site's figure is not this site's.
                let rtt_ms = (state.pinged.as_deref() == Some(stats.url.as_str()))
                    .then_some(stats.latency_us)
                    .flatten()
                    .map(|us| us as f64 / 1000.0);
                terminal.ping();
                state.pinged = Some(stats.url.clone());
                let site_of = |sites: &[vmi_control_api::SiteStatus]| {
                    sites.iter().find(|s| vmi_control_api::ws_url(&s.site.url) == stats.url).map(|s| s.site.id.clone())
                };
                let mut site = site_of(&state.sites);
                if site.is_none()
                    && let Ok(sites) = control.list_sites().await
                {
                    state.sites = sites;
                    site = site_of(&state.sites);
                }
                Measured { site, rtt_ms }
            }
            Probe::Http => {
                let Ok(phone) = control.phone_for_token(token).await else {
                    return Measured { site: None, rtt_ms: None };
                };
                let started = std::time::Instant::now();
                let answered = control.caller().get_bytes(&format!("{}/healthz", phone.site_url)).await;
                let rtt_ms = matches!(answered, Ok((200, _))).then(|| started.elapsed().as_secs_f64() * 1000.0);
                Measured { site: Some(phone.site), rtt_ms }
            }
        }
    }
}

/// Walks `route` from `started` on: every [`REPORT_EVERY`], reports the position (and the
/// round trip measured to the current site) to the control service and sends a `position`
/// line to `lines`. A report goes only on a radio already up for the session's own traffic
/// ([`Terminal::ride_along`]); with the radio idle (the screen off, nothing arriving) it is held,
/// and the next tick with the radio up sends the position then. Runs until dropped (or until
/// `lines` is closed).
async fn walk(
    route: Route,
    control: vmi_control_api::ControlClient,
    token: &str,
    probe: Probe<'_>,
    started: Instant,
    lines: mpsc::Sender<serde_json::Value>,
) {
    let mut every = tokio::time::interval_at(started, REPORT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state = ProbeState::default();
    loop {
        every.tick().await;
        let t = started.elapsed().as_secs_f64();
        let (lat, lon) = route.position_at(t);
        let measured = probe.measure(&control, token, &mut state).await;
        let mut rtt = std::collections::BTreeMap::new();
        if let (Some(site), Some(ms)) = (&measured.site, measured.rtt_ms) {
            rtt.insert(site.clone(), ms);
        }
        let rides = match &probe {
            Probe::Session(terminal) => terminal.ride_along(REPORT_UP_BYTES, REPORT_DOWN_BYTES),
            // The window's own session is not metered here.
            Probe::Http => true,
        };
        let reported = if rides { control.report(token, Some(lat), Some(lon), rtt).await.map(drop) } else { Ok(()) };
        if let Err(e) = &reported {
            tracing::warn!("cannot report the position: {e}");
        }
        let round = |x: f64, digits: i32| (x * 10f64.powi(digits)).round() / 10f64.powi(digits);
        let line = json!({
            "event": "position",
            "t_s": round(t, 1),
            "lat": round(lat, 5),
            "lon": round(lon, 5),
            "site": measured.site,
            "rtt_ms": measured.rtt_ms.map(|ms| round(ms, 2)),
            "reported": rides && reported.is_ok(),
            "held": !rides,
        });
        if lines.send(line).await.is_err() {
            return;
        }
    }
}

/// The next line from the route walker; never, without one.
async fn next_walker_line(walker: &mut Option<mpsc::Receiver<serde_json::Value>>) -> serde_json::Value {
    match walker {
        Some(rx) => match rx.recv().await {
            Some(line) => line,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// An error and its causes on one line, for printing.
pub fn describe(error: &TerminalError) -> String {
    error_chain(error)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TerminalArgs,
    }

    fn parse(argv: &[&str]) -> Result<TerminalArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("vmi-terminal").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn arguments_parse() {
        let t = crate::test_token_file("cli-args", "t");
        let a = parse(&["--site-ws", "ws://h:1/v1/terminal", "--token-file", &t, "--headless", "--duration", "2.5"])
            .expect("parses");
        assert_eq!(a.token, "t");
        assert_eq!(a.site_ws.as_deref(), Some("ws://h:1/v1/terminal"));
        assert!(a.headless);
        assert_eq!(a.duration, Some(2.5));
        assert!(parse(&["--control", "http://c", "--site-ws", "ws://s", "--token-file", &t]).is_err());
        assert!(parse(&["--control", "http://c"]).is_err(), "token is required");
        assert!(parse(&["--control", "http://c", "--token", "t"]).is_err(), "never a token in argv");
    }

    #[tokio::test]
    async fn usage_errors_are_reported_before_connecting() {
        let mut out = Vec::new();
        let none = TerminalArgs { token: "t".into(), headless: true, ..TerminalArgs::default() };
        // Neither --control nor --site-ws: the default control service is asked (and with
        // a made-up token, refuses or is not there).
        let e = run_headless(&none, TerminalOptions::default(), &mut out).await.unwrap_err();
        assert!(matches!(e, TerminalError::Control(_)), "{e}");
        let bad = TerminalArgs { site_ws: Some("ws://127.0.0.1:9".into()), duration: Some(-1.0), ..none.clone() };
        assert!(matches!(run_headless(&bad, TerminalOptions::default(), &mut out).await, Err(TerminalError::Usage(_))));
        let script = TerminalArgs {
            site_ws: Some("ws://127.0.0.1:9".into()),
            script: Some("/nonexistent/script.txt".into()),
            ..none
        };
        let e = run_headless(&script, TerminalOptions::default(), &mut out).await.unwrap_err();
        assert!(matches!(e, TerminalError::Read { .. }), "{e}");
        assert!(out.is_empty());
    }

    #[test]
    fn routes_parse_and_walk_in_straight_lines() {
        let r = Route::parse("# start at A\n10 20 2\n\n20 40 10  # walk\n20 40 5\n").expect("parses");
        assert_eq!(r.duration_secs(), 17.0);
        assert_eq!(r.position_at(0.0), (10.0, 20.0));
        assert_eq!(r.position_at(2.0), (10.0, 20.0));
        assert_eq!(r.position_at(7.0), (15.0, 30.0));
        assert_eq!(r.position_at(12.0), (20.0, 40.0));
        assert_eq!(r.position_at(1e6), (20.0, 40.0));
        // A zero-second leg is a jump.
        let jump = Route::parse("1 1 0\n2 2 0\n").expect("parses");
        assert_eq!(jump.position_at(0.5), (2.0, 2.0));
        for bad in ["", "# nothing\n", "1 2\n", "a 2 3\n", "91 0 1\n", "0 0 -1\n", "0 0 NaN\n"] {
            assert!(Route::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Route::parse("1 1 1\n1 2\n").unwrap_err().starts_with("line 2:"));
    }

    #[test]
    fn a_route_needs_the_control_service() {
        let dir = std::env::temp_dir().join(format!("vmi-route-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("walk.route");
        std::fs::write(&path, "60 25 1\n").expect("route");
        let t = crate::test_token_file("cli-route", "t");
        let args =
            parse(&["--site-ws", "ws://h:1/v1/terminal", "--token-file", &t, "--route", path.to_str().expect("utf-8")])
                .expect("parses");
        assert!(matches!(load_route_args(&args), Err(TerminalError::Usage(_))));
        let args = TerminalArgs { site_ws: None, control: Some("http://127.0.0.1:9".into()), ..args };
        let (_, route) = load_route_args(&args).expect("loads").expect("a route");
        assert_eq!(route.position_at(0.0), (60.0, 25.0));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn events_print_as_json() {
        let frame = TerminalEvent::Frame { seq: 3, tiles: 5, copies: 1, bytes: 1234 };
        assert_eq!(event_json(&frame), json!({"event": "frame", "seq": 3, "tiles": 5, "copies": 1, "bytes": 1234}));
        let n = TerminalEvent::Notification { title: "a".into(), body: "b".into(), at_ms: 7 };
        assert_eq!(event_json(&n)["event"], "notification");
        assert_eq!(event_json(&TerminalEvent::Latency { rtt_us: 9 })["rtt_us"], 9);
    }
}
