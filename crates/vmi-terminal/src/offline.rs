//! Offline use (docs/OFFLINE.md): `vmi terminal checkout` downloads the phone (its
//! snapshot and image) under a lease, `vmi terminal run-offline` runs it here on the same
//! engine the sites use, and `vmi terminal checkin` sends the offline state back as
//! deltas against the checkout.
//!
//! A checkout lives in one directory (default `./vmi-offline/USER`):
//!
//! ```text
//! offline.json    the lease, the device token, and the chain of the offline state
//! image.wasm      the phone's image
//! base.snap       the checkout base (a full snapshot, as the site keeps it)
//! run-N.snap      one delta per offline run, each the child of the one before
//! ```
//!
//! Each `run-offline` restores the chain, plays its script, and appends one delta, so
//! the phone can be used offline any number of times before one checkin uploads the
//! deltas (the first names the checkout base as parent). After a checkin, `offline.json`
//! becomes `checked-in.json`, and the directory can take a new checkout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use vmi_control_api::http_client::{Method, RequestOptions};
use vmi_engine::{Engine, Event, SnapshotId, SnapshotRequest, SystemClock, VirtualPhone, VmConfig};
use vmi_protocol::offline::{Checkin, CheckinHeader, CheckoutRequest, OfflineLease};
use vmi_wasm_engine::{WasmEngine, WasmEngineConfig};

use crate::TerminalError;
use crate::cli::{DEFAULT_CONTROL, TerminalArgs};
use crate::progress::Progress;
use crate::script::Step;

/// The checkout's state in its directory.
pub const OFFLINE_FILE: &str = "offline.json";
/// What [`OFFLINE_FILE`] becomes once checked in.
pub const CHECKED_IN_FILE: &str = "checked-in.json";
/// The checkout base in the directory.
pub const BASE_FILE: &str = "base.snap";
/// The image in the directory.
pub const IMAGE_FILE: &str = "image.wasm";
/// Where checkouts go without `--dir`: `./vmi-offline/USER`.
pub const DEFAULT_ROOT: &str = "vmi-offline";
/// Largest answer read from a site (a bundle: snapshot and image).
const MAX_ANSWER_BYTES: usize = vmi_protocol::migration::MAX_SNAPSHOT_BYTES + (64 << 20);
/// How long one exchange with a site may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(120);

/// `vmi terminal`: a session (the arguments of [`TerminalArgs`]), or an offline command.
#[derive(clap::Args, Clone, Debug, PartialEq)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct TerminalCommand {
    /// Take the phone offline and back.
    #[command(subcommand)]
    pub offline: Option<OfflineCmd>,
    /// A session with the phone on its site.
    #[command(flatten)]
    pub session: Option<TerminalArgs>,
}

/// The offline subcommands of `vmi terminal`.
#[derive(clap::Subcommand, Clone, Debug, PartialEq)]
pub enum OfflineCmd {
    /// Download the phone (snapshot and image) to run it here; the site holds a lease and
    /// refuses to run it until checkin, lease expiry, or an operator's cancel.
    Checkout(CheckoutArgs),
    /// Run the checked-out phone here, playing a script; saves the result as a delta.
    RunOffline(RunArgs),
    /// Send the offline state back; the site resumes the phone with it.
    Checkin(CheckinArgs),
}

/// Arguments of `vmi terminal checkout`.
#[derive(clap::Args, Clone, Debug, Default, PartialEq)]
pub struct CheckoutArgs {
    /// Control service URL (the phone's site is looked up with the token).
    #[arg(long, value_name = "URL")]
    pub control: Option<String>,
    /// A file (0600) holding the device token issued by the control service (never the token itself in argv,
    /// where `ps` shows it).
    #[arg(long = "token-file", value_name = "FILE", value_parser = crate::token_from_file)]
    pub token: String,
    /// The provider CA (PEM) `https://` answers are checked against (default: the file `VMI_CA_FILE` names).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// How long the phone may stay out: 90s, 30m, 24h, 3d (default: the site's, a day;
    /// at most 7 days).
    #[arg(long, value_name = "DURATION")]
    pub lease: Option<String>,
    /// Where to keep it (default ./vmi-offline/USER).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Arguments of `vmi terminal run-offline`.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct RunArgs {
    /// The checkout's directory (default: the only one under ./vmi-offline).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Script to play (the `vmi terminal --script` format; `wait` lets timers fire).
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,
    /// Save the screen as PNG after the script.
    #[arg(long, value_name = "FILE")]
    pub screenshot: Option<PathBuf>,
    /// Run as a CPU this many times slower would: after each event, wait (N-1) times
    /// what it took.
    #[arg(long, value_name = "N", default_value_t = 1.0)]
    pub cpu_slowdown: f64,
}

impl Default for RunArgs {
    fn default() -> Self {
        RunArgs { dir: None, script: None, screenshot: None, cpu_slowdown: 1.0 }
    }
}

/// Arguments of `vmi terminal checkin`.
#[derive(clap::Args, Clone, Debug, Default, PartialEq)]
pub struct CheckinArgs {
    /// The checkout's directory (default: the only one under ./vmi-offline).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// A checkout as the terminal keeps it ([`OFFLINE_FILE`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalCheckout {
    /// The site's lease.
    pub lease: OfflineLease,
    /// The device token (checkin authenticates with it).
    pub token: String,
    /// The control service asked at checkout (checkin asks it where the phone's site is
    /// now, in case its address changed).
    pub control: String,
    /// The provider CA trusted at checkout, trusted again at checkin.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Files of the offline state's snapshot chain: a full snapshot ([`BASE_FILE`] until
    /// an engine falls back to a full one), then deltas.
    pub chain: Vec<String>,
}

/// What one offline run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunReport {
    /// Events delivered (inputs, sleep/wake and timers).
    pub events: u64,
    /// The snapshot file written.
    pub snapshot: String,
    /// Whether it is a delta (else a full snapshot that restarts the chain).
    pub incremental: bool,
    /// Time spent waiting to act as a slower CPU.
    pub throttled: Duration,
}

/// Runs `vmi terminal …`: an offline command, or a session. Checkout and checkin show their transfer on
/// `progress`.
pub async fn run_command(command: TerminalCommand, progress: Progress) -> Result<(), TerminalError> {
    let mut stdout = std::io::stdout();
    match (command.offline, command.session) {
        (Some(OfflineCmd::Checkout(args)), _) => {
            let (dir, lease) = checkout_showing(&args, &progress).await?;
            progress.clear();
            let line = json!({
                "event": "checked_out", "user": lease.user, "site": lease.site, "device": lease.device_id,
                "lease": lease.lease_id, "expires_ms": lease.expires_ms, "dir": dir.display().to_string(),
            });
            let _ = writeln!(stdout, "{line}");
            Ok(())
        }
        (Some(OfflineCmd::RunOffline(args)), _) => {
            tokio::task::spawn_blocking(move || run_offline(&args, &mut std::io::stdout()))
                .await
                .map_err(|e| TerminalError::Offline(format!("the offline run failed: {e}")))?
                .map(|_| ())
        }
        (Some(OfflineCmd::Checkin(args)), _) => {
            let report = checkin_showing(&args, &progress).await?;
            progress.clear();
            let _ = writeln!(stdout, "{}", json!({"event": "checked_in", "site": report}));
            Ok(())
        }
        (None, Some(args)) => crate::cli::run(args).await,
        (None, None) => Err(TerminalError::Usage("give --token-file FILE, or a subcommand (see --help)".into())),
    }
}

/// Parses a lease length: `90s`, `30m`, `24h`, `3d` (a bare number is hours).
pub fn parse_lease(text: &str) -> Result<u64, TerminalError> {
    let bad = || TerminalError::Usage(format!("--lease {text:?} is not a duration like 90s, 30m, 24h or 3d"));
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).filter(|&s| s > 0).ok_or_else(bad)
}

fn io_read(path: &Path) -> impl FnOnce(std::io::Error) -> TerminalError + '_ {
    move |source| TerminalError::Read { path: path.to_owned(), source }
}

fn io_write(path: &Path) -> impl FnOnce(std::io::Error) -> TerminalError + '_ {
    move |source| TerminalError::Write { path: path.to_owned(), source }
}

/// Writes a file atomically: a temporary file, synced, renamed over.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TerminalError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io_write(&tmp))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_write(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_write(path))
}

fn save_local(dir: &Path, local: &LocalCheckout) -> Result<(), TerminalError> {
    let path = dir.join(OFFLINE_FILE);
    let bytes = serde_json::to_vec_pretty(local).unwrap_or_default();
    write_atomic(&path, &bytes)?;
    // It holds the device token.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(())
}

/// Reads the checkout kept in `dir`.
pub fn load_local(dir: &Path) -> Result<LocalCheckout, TerminalError> {
    let path = dir.join(OFFLINE_FILE);
    let bytes = std::fs::read(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            let done = if dir.join(CHECKED_IN_FILE).exists() { " (it was checked in)" } else { "" };
            TerminalError::Offline(format!("{} holds no checkout{done}", dir.display()))
        } else {
            TerminalError::Read { path: path.clone(), source }
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| TerminalError::Offline(format!("{} is damaged: {e}", path.display())))
}

/// `--dir`, or the only checkout under `./vmi-offline`.
fn find_dir(dir: Option<&Path>) -> Result<PathBuf, TerminalError> {
    if let Some(dir) = dir {
        return Ok(dir.to_owned());
    }
    let root = Path::new(DEFAULT_ROOT);
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.join(OFFLINE_FILE).exists()).collect())
        .unwrap_or_default();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => {
            // Checked in already, or never checked out: say which.
            let done = std::fs::read_dir(root)
                .map(|entries| entries.flatten().any(|e| e.path().join(CHECKED_IN_FILE).exists()))
                .unwrap_or(false);
            Err(TerminalError::Usage(if done {
                format!("no checkout out under ./{DEFAULT_ROOT}: the last one was checked in already")
            } else {
                format!("no checkout under ./{DEFAULT_ROOT}; give --dir")
            }))
        }
        _ => {
            let names: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
            Err(TerminalError::Usage(format!("several checkouts ({}); give --dir", names.join(", "))))
        }
    }
}

/// A caller trusting `ca_pem`, or plain-only without one.
fn caller_for(ca_pem: Option<&str>) -> Result<vmi_control_api::Caller, TerminalError> {
    match ca_pem {
        Some(pem) => vmi_control_api::Caller::trusting(pem).map_err(TerminalError::Control),
        None => Ok(vmi_control_api::Caller::anonymous()),
    }
}

/// One POST to a site as `caller`: the status and body, whatever the status; `observer` told how far it got.
async fn post(
    caller: &vmi_control_api::Caller,
    url: &str,
    token: &str,
    content_type: &'static str,
    body: Vec<u8>,
    observer: Option<vmi_control_api::http_client::TransferObserver>,
) -> Result<(u16, Vec<u8>), TerminalError> {
    let options =
        RequestOptions { timeout: HTTP_TIMEOUT, max_response_bytes: MAX_ANSWER_BYTES, bearer: Some(token), observer };
    let (status, answer) = caller
        .send(Method::POST, url, Some((content_type, body)), options)
        .await
        .map_err(|source| TerminalError::Http { url: url.to_owned(), source })?;
    Ok((status, answer.to_vec()))
}

/// The `error` of a site's JSON error body, or the body as text.
fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

/// `vmi terminal checkout`: asks the phone's site for it and keeps it in a directory;
/// returns the directory and the lease.
pub async fn checkout(args: &CheckoutArgs) -> Result<(PathBuf, OfflineLease), TerminalError> {
    checkout_showing(args, &Progress::hidden()).await
}

/// [`checkout`], showing its steps and the download on `progress`.
pub async fn checkout_showing(
    args: &CheckoutArgs,
    progress: &Progress,
) -> Result<(PathBuf, OfflineLease), TerminalError> {
    if args.token.is_empty() {
        return Err(TerminalError::Usage("the device token is empty".into()));
    }
    let lease_secs = args.lease.as_deref().map(parse_lease).transpose()?;
    if let Some(dir) = &args.dir
        && dir.join(OFFLINE_FILE).exists()
    {
        return Err(not_empty(dir));
    }
    let control = args.control.as_deref().unwrap_or(DEFAULT_CONTROL);
    let ca_pem = crate::ca_pem(args.ca.as_deref())?;
    let caller = caller_for(ca_pem.as_deref())?;
    let client = vmi_control_api::ControlClient::new(control, &caller).map_err(TerminalError::Control)?;
    progress.step("finding the phone");
    let phone = client.phone_for_token(&args.token).await.map_err(TerminalError::Control)?;
    let dir = args.dir.clone().unwrap_or_else(|| Path::new(DEFAULT_ROOT).join(&phone.user));
    if dir.join(OFFLINE_FILE).exists() {
        return Err(not_empty(&dir));
    }
    let body = serde_json::to_vec(&CheckoutRequest { lease_secs }).unwrap_or_default();
    let url = format!("{}/v1/phones/{}/checkout", phone.site_url.trim_end_matches('/'), phone.user);
    // The site saves the phone before it answers: a while for a large one.
    progress.step(format!("{} saves {}'s phone", phone.site, phone.user));
    let downloading = format!("downloading {}'s phone from {}", phone.user, phone.site);
    let observer = progress.transfer("", &downloading);
    let (status, answer) = post(&caller, &url, &args.token, "application/json", body, observer).await?;
    if status != 200 {
        return Err(TerminalError::Refused { status, message: error_text(&answer) });
    }
    progress.step(format!("writing {}", dir.display()));
    let bundle = vmi_protocol::offline::decode_bundle(&answer).map_err(TerminalError::Protocol)?;
    if SnapshotId::of(&bundle.snapshot).to_hex() != bundle.lease.base_id {
        return Err(TerminalError::Offline("the site's snapshot is not the lease's base (damaged in transit?)".into()));
    }
    std::fs::create_dir_all(&dir).map_err(io_write(&dir))?;
    // A directory checked in before may hold old runs: they belong to no lease now.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".snap") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    write_atomic(&dir.join(IMAGE_FILE), &bundle.image)?;
    write_atomic(&dir.join(BASE_FILE), &bundle.snapshot)?;
    let local = LocalCheckout {
        lease: bundle.lease.clone(),
        token: args.token.clone(),
        control: control.to_string(),
        ca_pem,
        chain: vec![BASE_FILE.into()],
    };
    save_local(&dir, &local)?;
    tracing::info!(user = %bundle.lease.user, dir = %dir.display(), "phone checked out");
    Ok((dir, bundle.lease))
}

fn not_empty(dir: &Path) -> TerminalError {
    TerminalError::Usage(format!(
        "{} already holds a checkout that is not checked in; check it in first (or use another --dir)",
        dir.display()
    ))
}

/// A phone running offline, slowed down like a phone's CPU.
struct Offline<'a> {
    phone: Box<dyn VirtualPhone>,
    slowdown: f64,
    events: u64,
    throttled: Duration,
    out: &'a mut (dyn Write + Send),
}

impl Offline<'_> {
    fn line(&mut self, value: serde_json::Value) {
        let _ = writeln!(self.out, "{value}");
    }

    /// Runs `f` (guest work), then waits as long again times (slowdown - 1).
    fn timed<T>(
        &mut self,
        f: impl FnOnce(&mut dyn VirtualPhone) -> Result<T, vmi_engine::VmError>,
    ) -> Result<T, TerminalError> {
        let started = Instant::now();
        let result = f(self.phone.as_mut()).map_err(TerminalError::Vm)?;
        let pause = started.elapsed().mul_f64(self.slowdown - 1.0);
        if !pause.is_zero() {
            std::thread::sleep(pause);
            self.throttled += pause;
        }
        for n in self.phone.take_notifications() {
            self.line(json!({"event": "notification", "title": n.title, "body": n.body}));
        }
        Ok(result)
    }

    fn deliver(&mut self, event: Event) -> Result<(), TerminalError> {
        self.events += 1;
        self.timed(|p| p.deliver(event))
    }

    /// Lets `duration` of real time pass, firing the phone's timers on the way.
    fn wait(&mut self, duration: Duration) -> Result<(), TerminalError> {
        let until = Instant::now() + duration;
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            let next = match self.phone.next_timer_ns() {
                Some(t) => Duration::from_nanos(t.saturating_sub(self.phone.now_ns())),
                None => until - now,
            };
            std::thread::sleep(next.min(until - now));
            let fired = self.timed(|p| p.fire_due_timers())?;
            self.events += fired as u64;
        }
    }

    fn screenshot(&mut self, path: &Path) -> Result<(), TerminalError> {
        let frame = self.phone.frame().map_err(TerminalError::Vm)?;
        let (w, h) = (u16::try_from(frame.width), u16::try_from(frame.height));
        let (Ok(w), Ok(h)) = (w, h) else {
            return Err(TerminalError::Offline(format!("a {}x{} screen cannot be saved", frame.width, frame.height)));
        };
        crate::session::write_png(path, w, h, frame.rgba)?;
        self.line(json!({"event": "screenshot", "file": path.display().to_string()}));
        Ok(())
    }
}

/// `vmi terminal run-offline`: restores the checked-out phone, plays the script, and
/// appends the result to the offline chain. Prints JSON lines on `out`.
pub fn run_offline(args: &RunArgs, out: &mut (dyn Write + Send)) -> Result<RunReport, TerminalError> {
    if !(args.cpu_slowdown.is_finite() && (1.0..=1000.0).contains(&args.cpu_slowdown)) {
        return Err(TerminalError::Usage(format!("--cpu-slowdown {} is not from 1 to 1000", args.cpu_slowdown)));
    }
    let steps = args.script.as_deref().map(crate::cli::load_script).transpose()?.unwrap_or_default();
    let dir = find_dir(args.dir.as_deref())?;
    let mut local = load_local(&dir)?;
    let image_path = dir.join(IMAGE_FILE);
    let image = std::fs::read(&image_path).map_err(io_read(&image_path))?;
    let mut chain = Vec::with_capacity(local.chain.len());
    for name in &local.chain {
        let path = dir.join(name);
        chain.push(std::fs::read(&path).map_err(io_read(&path))?);
    }
    let parent =
        SnapshotId::of(chain.last().ok_or_else(|| TerminalError::Offline("the offline chain is empty".into()))?);

    // The same engine as the sites', compiling the image once per checkout directory.
    let config = WasmEngineConfig { max_vms: 2, cache_dir: Some(dir.join("compiled")), ..WasmEngineConfig::default() };
    let engine = WasmEngine::with_config(config, SystemClock::shared()).map_err(TerminalError::Engine)?;
    let info = engine.load_image(&image).map_err(TerminalError::Engine)?;
    if info.hash.to_hex() != local.lease.image {
        return Err(TerminalError::Offline(format!(
            "{} is image {}, not the checkout's {}",
            image_path.display(),
            info.hash.to_hex(),
            local.lease.image
        )));
    }
    let refs: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
    let vm = VmConfig { width: local.lease.width, height: local.lease.height, ..VmConfig::default() };
    let phone = engine.restore(&info.hash, &refs, &vm).map_err(TerminalError::Engine)?;
    let mut run = Offline { phone, slowdown: args.cpu_slowdown, events: 0, throttled: Duration::ZERO, out };
    run.line(json!({"event": "restored", "user": local.lease.user, "chain": local.chain.len()}));
    // The screen is on while the phone is used here, and off again when it is saved (as
    // on a site with no terminal awake).
    run.deliver(Event::Wake)?;
    for line in &steps {
        match &line.step {
            Step::Input(input) => run.deliver(input.to_event())?,
            Step::Wait(duration) => run.wait(*duration)?,
            Step::Sleep => run.deliver(Event::Sleep)?,
            Step::Wake => run.deliver(Event::Wake)?,
            // No site to measure a round trip to.
            Step::Ping => {}
            Step::Screenshot(path) => run.screenshot(path)?,
        }
    }
    if let Some(path) = &args.screenshot {
        run.screenshot(path)?;
    }
    run.deliver(Event::Sleep)?;

    let snapshot = run.phone.snapshot(SnapshotRequest::Incremental).map_err(TerminalError::Vm)?;
    let incremental = match snapshot.parent {
        Some(p) if p == parent => true,
        // The engine could not track writes: a full snapshot starts the chain afresh.
        None => false,
        Some(p) => {
            return Err(TerminalError::Offline(format!(
                "the engine took a delta against {}, not against the chain's end {}",
                p.to_hex(),
                parent.to_hex()
            )));
        }
    };
    let name = format!("run-{}.snap", local.chain.len());
    write_atomic(&dir.join(&name), &snapshot.bytes)?;
    if incremental {
        local.chain.push(name.clone());
    } else {
        local.chain = vec![name.clone()];
    }
    save_local(&dir, &local)?;
    let report = RunReport { events: run.events, snapshot: name, incremental, throttled: run.throttled };
    run.line(json!({
        "event": "saved", "snapshot": report.snapshot, "incremental": incremental, "bytes": snapshot.bytes.len(),
        "pages": snapshot.pages, "events": report.events, "throttled_ms": report.throttled.as_millis() as u64,
    }));
    Ok(report)
}

/// `vmi terminal checkin`: uploads the offline state; returns the site's report.
pub async fn checkin(args: &CheckinArgs) -> Result<serde_json::Value, TerminalError> {
    checkin_showing(args, &Progress::hidden()).await
}

/// [`checkin`], showing the upload on `progress`.
pub async fn checkin_showing(args: &CheckinArgs, progress: &Progress) -> Result<serde_json::Value, TerminalError> {
    let dir = find_dir(args.dir.as_deref())?;
    let local = load_local(&dir)?;
    // The base is the site's already: only what came after it travels.
    let names = match local.chain.split_first() {
        Some((first, rest)) if first == BASE_FILE => rest,
        _ => &local.chain[..],
    };
    let mut chain = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(name);
        chain.push(std::fs::read(&path).map_err(io_read(&path))?);
    }
    let header = CheckinHeader { lease_id: local.lease.lease_id.clone(), input_seqs: Default::default() };
    let body = vmi_protocol::offline::encode_checkin(&Checkin { header, chain });
    let lease = &local.lease;
    // The lease's site, at the address the control service knows now (a site may come
    // back on another one); the lease's own address if the control service is away.
    let caller = caller_for(local.ca_pem.as_deref())?;
    progress.step(format!("finding {}", lease.site));
    let located = match vmi_control_api::ControlClient::new(&local.control, &caller) {
        Ok(client) => client.phone_for_token(&local.token).await.ok().filter(|p| p.site == lease.site),
        Err(_) => None,
    };
    let site_url = located.map_or_else(|| lease.site_url.clone(), |p| p.site_url);
    let url = format!("{}/v1/phones/{}/checkin", site_url.trim_end_matches('/'), lease.user);
    let uploading = format!("uploading {}'s phone to {}", lease.user, lease.site);
    let observer = progress.transfer(&uploading, "");
    let (status, answer) = post(&caller, &url, &local.token, "application/octet-stream", body, observer).await?;
    if status != 200 {
        return Err(TerminalError::Refused { status, message: error_text(&answer) });
    }
    let from = dir.join(OFFLINE_FILE);
    std::fs::rename(&from, dir.join(CHECKED_IN_FILE)).map_err(io_write(&from))?;
    tracing::info!(user = %lease.user, "phone checked in");
    Ok(serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        terminal: TerminalCommand,
    }

    fn parse(argv: &[&str]) -> Result<TerminalCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("vmi-terminal").chain(argv.iter().copied())).map(|c| c.terminal)
    }

    #[test]
    fn sessions_and_offline_commands_parse() {
        let t = crate::test_token_file("offline-args", "t");
        let session = parse(&["--token-file", &t, "--headless"]).expect("parses");
        assert!(session.offline.is_none());
        assert_eq!(session.session.expect("a session").token, "t");
        assert!(parse(&[]).is_err(), "a session needs a token");
        let c = parse(&["checkout", "--token-file", &t, "--lease", "2h"]).expect("parses");
        assert!(
            matches!(c.offline, Some(OfflineCmd::Checkout(CheckoutArgs { ref lease, .. })) if lease.as_deref() == Some("2h"))
        );
        let r = parse(&["run-offline", "--cpu-slowdown", "4", "--dir", "d"]).expect("parses");
        assert!(matches!(r.offline, Some(OfflineCmd::RunOffline(RunArgs { cpu_slowdown: 4.0, .. }))));
        assert!(matches!(parse(&["checkin"]).expect("parses").offline, Some(OfflineCmd::Checkin(_))));
        assert!(parse(&["--token-file", &t, "checkin"]).is_err(), "a session or a subcommand, not both");
    }

    #[test]
    fn lease_lengths_parse() {
        assert_eq!(parse_lease("90s").expect("s"), 90);
        assert_eq!(parse_lease("30m").expect("m"), 1800);
        assert_eq!(parse_lease("24h").expect("h"), 86_400);
        assert_eq!(parse_lease("3d").expect("d"), 259_200);
        assert_eq!(parse_lease("2").expect("hours"), 7200);
        for bad in ["", "0s", "h", "1w", "-1h", "99999999999999999999d"] {
            assert!(parse_lease(bad).is_err(), "{bad:?}");
        }
    }
}
