//! `vmi`: the Seed VMI command line.

mod audit;
mod bench;
mod bench_checkpoint;
mod bench_density;
mod bench_engines;
mod bench_failover;
mod bench_ingest;
mod bench_net;
mod bench_placer;
mod checkpoints;
mod credentials;
mod headless;
mod nemesis;
mod output;
mod proxy;
mod qemu;
mod rng;
mod script;
mod services;
mod sim;
mod supervisor;
mod tenants;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use vmi_engine::{Engine, ManualClock, VmConfig};
use vmi_snapshot::Snapshot;
use vmi_wasm_engine::{WasmEngine, WasmEngineConfig};

/// Seed VMI: virtual phones on edge sites, thin terminals in hand.
#[derive(Parser)]
#[command(name = "vmi", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Top,
    /// Print only JSON on stdout, for programs: one document, or one object a line where a command streams
    /// (`vm run`, `audit`, `terminal --headless`, the services). No progress lines; errors still go to stderr.
    #[arg(long, global = true)]
    json: bool,
    /// Append this process's traces (OpenTelemetry spans: migrations, checkpoints, failovers) to FILE as OTLP
    /// JSON, one export a line; `vmi up` passes it to the services it starts, which share the file.
    #[arg(long, global = true, env = "VMI_TRACE_FILE", value_name = "FILE")]
    trace_file: Option<PathBuf>,
    /// Send this process's traces to an OTLP/gRPC endpoint (an OpenTelemetry Collector, Jaeger, Tempo) in plain
    /// gRPC, e.g. http://127.0.0.1:4317 (a Collector beside the process); `vmi up` passes it on too.
    #[arg(long, global = true, env = "VMI_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
}

/// Where this process's traces go (see `--trace-file`, `--otlp-endpoint`): the services `vmi up` starts send
/// theirs to the same place.
static TRACE_EXPORT: std::sync::OnceLock<vmi_telemetry::trace::TraceExport> = std::sync::OnceLock::new();

/// The arguments giving a child process this one's trace export.
fn trace_args() -> Vec<std::ffi::OsString> {
    let mut args = Vec::new();
    if let Some(export) = TRACE_EXPORT.get() {
        if let Some(file) = &export.file {
            args.push("--trace-file".into());
            args.push(file.clone().into_os_string());
        }
        if let Some(endpoint) = &export.otlp_endpoint {
            args.push("--otlp-endpoint".into());
            args.push(endpoint.into());
        }
    }
    args
}

/// Who this process is in its traces.
fn traced_service(command: &Top) -> vmi_telemetry::trace::TracedService {
    use vmi_telemetry::trace::TracedService;
    match command {
        Top::Control(_) => TracedService { name: "vmi-control", instance: None },
        Top::Site(args) => TracedService { name: "vmi-site", instance: args.id.clone() },
        Top::Up(_) => TracedService { name: "vmi-up", instance: None },
        _ => TracedService { name: "vmi", instance: None },
    }
}

#[derive(Subcommand)]
enum Top {
    /// Build, inspect, publish and roll back phone images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Run, snapshot and restore phones.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Measure speed and density; prints figures (one JSON object with --json).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Start a control service and three edge sites on this machine, with a demo phone.
    Up(services::UpArgs),
    /// Run the control service (users, devices, sites, placement).
    Control(services::ControlArgs),
    /// Run an edge site that hosts phones and serves terminals.
    Site(services::SiteArgs),
    /// Run a TCP proxy that delays bytes like a network path from a user to a site.
    Proxy(proxy::ProxyArgs),
    /// Mail to a user's phone.
    #[command(subcommand)]
    Mail(MailCmd),
    /// Users: create (in a tenant), pairing codes for new devices.
    #[command(subcommand)]
    User(services::UserCmd),
    /// Devices: list, revoke (a lost phone), pair (its replacement).
    #[command(subcommand)]
    Device(services::DeviceCmd),
    /// Tenants: users under quotas (phones, memory) running one image.
    #[command(subcommand)]
    Tenant(tenants::TenantCmd),
    /// Run a native terminal (a window, or --headless for scripts); or take the phone
    /// offline: checkout, run-offline, checkin.
    Terminal(vmi_terminal::offline::TerminalCommand),
    /// The audit log: every operator action and every refusal, by user, site, principal and time.
    Audit(audit::AuditArgs),
    /// A fault checker in the style of Jepsen: faults injected into `vmi up --cluster` while terminals type, then
    /// the histories checked (needs root; docs/CONTROL-PLANE.md).
    Nemesis(nemesis::NemesisArgs),
    /// The placer on real mobility: SUMO drives cars through a generated city, pedestrians walk, and the placer
    /// places their phones beside three baselines (docs/PLACEMENT.md).
    Sim(sim::SimCliArgs),
    /// Print a service's HTTP API as OpenAPI 3.1 (what its GET /openapi.json serves).
    Openapi {
        /// Which service.
        #[arg(value_enum)]
        service: ApiService,
    },
    /// Print a shell's completion script for vmi: `source <(vmi completions bash)`.
    Completions {
        /// Which shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// A service with an HTTP API.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ApiService {
    /// The control service.
    Control,
    /// An edge site.
    Site,
}

#[derive(Subcommand)]
enum MailCmd {
    /// Drop a mail in a user's mailbox; their phone fetches it and notifies them.
    Send(services::MailArgs),
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build a phone image: the default phone, or a guest crate of your own.
    Build {
        /// Write the image here.
        #[arg(long, short, default_value = "phone.wasm")]
        out: PathBuf,
        /// A guest crate (a cdylib using vmi-guest-sdk) to build for wasm32 instead of
        /// the default phone.
        #[arg(long, conflicts_with = "linux")]
        source: Option<PathBuf>,
        /// Build a Linux phone image instead, from Debian's packages (scripts/build-linux-image: a kernel, an
        /// initramfs and a read-only root with cage, foot, bash, nano and dillo; needs root and Debian's mirror,
        /// about a minute the first time, cached after).
        #[arg(long)]
        linux: bool,
        /// A Linux image's guest RAM per phone, MiB.
        #[arg(long, default_value_t = 512, requires = "linux")]
        memory_mib: u32,
        /// Give a Linux image's phones a network: QEMU's user-mode network, fenced off the site's own addresses
        /// (sites run such phones only as root, with cgroup v2; docs/LINUX-PHONES.md).
        #[arg(long, requires = "linux")]
        network: bool,
    },
    /// Check an image against the guest ABI and print what the engine sees.
    Inspect {
        /// The .wasm image.
        image: PathBuf,
    },
    /// Publish an image as its next version at the control service (phones move to it on restart).
    Publish(tenants::PublishArgs),
    /// Published image versions.
    List(tenants::ControlArg),
    /// Withdraw an image's current version: the one before becomes current again.
    Rollback(tenants::ImageNameArgs),
}

#[derive(Args, Clone)]
struct PhoneArgs {
    /// Image to run (default: the built-in phone).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Screen width.
    #[arg(long, default_value_t = 720)]
    width: u32,
    /// Screen height.
    #[arg(long, default_value_t = 1280)]
    height: u32,
    /// Memory cap in MiB.
    #[arg(long, default_value_t = 64)]
    memory_mib: u64,
    /// Event script to play (see `vmi vm run --help`).
    #[arg(long)]
    events: Option<PathBuf>,
    /// Directory for screenshots and snapshots named in the script.
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,
    /// Screenshots show what a terminal would see: only the damage the guest reported
    /// (fb_damage), sent through the protocol's encoder to a terminal's screen.
    #[arg(long)]
    as_terminal: bool,
}

#[derive(Subcommand)]
enum VmCmd {
    /// Boot a phone with no terminal and play an event script. Script commands: tap X Y;
    /// down/move/up X Y; drag X1 Y1 X2 Y2 [STEPS]; type TEXT; key NAME; wait 2s;
    /// mail FROM | SUBJECT | BODY; sleep; wake; screenshot FILE.png; snapshot FILE [incremental].
    Run {
        /// Required: there is no window here (a terminal shows phones, see `vmi terminal`).
        #[arg(long, required = true)]
        headless: bool,
        #[command(flatten)]
        phone: PhoneArgs,
        /// Wall time the phone starts at, in seconds since the Unix epoch (default: now).
        #[arg(long)]
        wall_start: Option<u64>,
    },
    /// Boot a phone, play a script, and write a full snapshot of where it ends.
    Snapshot {
        #[command(flatten)]
        phone: PhoneArgs,
        /// Snapshot file to write.
        #[arg(long, short)]
        out: PathBuf,
        /// Wall time the phone starts at, in seconds since the Unix epoch (default: now).
        #[arg(long)]
        wall_start: Option<u64>,
    },
    /// Bring a phone back from a snapshot chain (full first, then incrementals) and play
    /// a script on it.
    Restore {
        /// Snapshot files: a full one, then incremental ones in order.
        #[arg(required = true)]
        snapshots: Vec<PathBuf>,
        #[command(flatten)]
        phone: PhoneArgs,
        /// Time the phone spent stored, added to its clocks (e.g. 3d); default none.
        #[arg(long)]
        away: Option<String>,
        /// Write a full snapshot of where it ends.
        #[arg(long)]
        snapshot_out: Option<PathBuf>,
    },
    /// Live-migrate a user's phone to another site now.
    Migrate(services::MigrateArgs),
    /// Where every phone runs.
    List(services::ListArgs),
    /// A phone's checkpoints: list, create, restore (`--at 3d`).
    #[command(subcommand)]
    Checkpoints(checkpoints::CheckpointsCmd),
    /// Boot a user's phone on a site (admitted against their tenant's quotas).
    Create(tenants::PhoneArgs),
    /// Restart a user's phone: it moves to its image's current version, keeping the user's
    /// data (a crashed phone restarts from its last good state, or afresh with its store).
    Restart(tenants::PhoneArgs),
    /// A phone's recent log lines (what its apps wrote with the guest ABI's `log`).
    Logs(services::LogsArgs),
    /// Break a phone's offline checkout (a lost terminal): the phone resumes on its site
    /// from the checkout base, and the lease's checkin is refused.
    CheckoutCancel {
        /// Whose phone.
        user: String,
        /// Control service URL.
        #[arg(long, default_value = "http://127.0.0.1:7800")]
        control: String,
    },
    /// Print a snapshot file's header.
    Inspect {
        /// The snapshot file.
        snapshot: PathBuf,
    },
}

/// A dense site (more phones than it pools instances for: most of them hibernated) makes and frees megabyte
/// buffers all day (a phone's first full record, its pages at hibernation). glibc's malloc would serve them from its
/// arenas once a few are freed (its mmap threshold rises to the largest block freed) and keep the freed space
/// resident: such a site measured 1.3 GiB held by arenas for 1,000 phones (4.4 GiB for 3,000) whose live state was
/// a few MiB. There, blocks of 1 MiB and more are mapped and unmapped on their own and at most 4 arenas exist. Not
/// for every process: a fixed threshold costs page faults on the hot path (a live migration's terminal gap measured
/// 3.7-4.8 ms p50 with it, 0.9-1.6 without), which a site running all its phones keeps.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

/// Whether this command runs a dense site (see [`give_back_freed_memory`]).
fn runs_a_dense_site(cli: &Cli) -> bool {
    match &cli.command {
        Top::Site(args) => args.capacity > vmi_site::POOLED_PHONES,
        Top::Bench(bench::BenchCmd::Density { site: Some(n), .. }) => *n > vmi_site::POOLED_PHONES as usize,
        _ => false,
    }
}

fn main() -> ExitCode {
    // Everything this program writes (phone state, checkpoints, keys, tokens) is its owner's alone: files 0600,
    // directories 0700, whatever the caller's umask.
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0o077) };
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let log_filter = tracing_subscriber::EnvFilter::try_from_env("VMI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let export = vmi_telemetry::trace::TraceExport {
        // An empty value (`VMI_TRACE_FILE=`) is no export, as an unset one.
        file: cli.trace_file.clone().filter(|f| !f.as_os_str().is_empty()),
        otlp_endpoint: cli.otlp_endpoint.clone().filter(|e| !e.is_empty()),
    };
    // Colour only for a person at a terminal, not in log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _tracing = match vmi_telemetry::trace::install(log_filter, ansi, &traced_service(&cli.command), &export) {
        Ok(tracing) => tracing,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = TRACE_EXPORT.set(export);
    output::set_json(cli.json);
    if runs_a_dense_site(&cli) {
        give_back_freed_memory();
    }
    // Printing into a closed pipe (`vmi … | head`) ends a command quietly, as for any Unix tool, instead of
    // panicking. Not the services, the terminal or the benches, which hold connections open: a peer that hangs
    // up mid-answer (a killed site) must not kill them (a vectored write to a closed socket raises SIGPIPE), and
    // Rust's default (ignored) turns it into an error on that connection.
    let long_connections = matches!(
        cli.command,
        Top::Up(_)
            | Top::Control(_)
            | Top::Site(_)
            | Top::Proxy(_)
            | Top::Terminal(_)
            | Top::Bench(_)
            | Top::Nemesis(_)
    );
    if !long_connections {
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // A command (`vmi vm migrate`, `vmi checkpoint create`) is the root of its trace when traces are exported;
    // the services are not (a day-long span would make every request of theirs one trace).
    let command_span = (!long_connections && vmi_telemetry::trace::exporting()).then(|| {
        // `vmi vm migrate`: the command's words, never its arguments (a user, a token file).
        let mut words = vec!["vmi"];
        let mut at = &matches;
        while let Some((word, next)) = at.subcommand().filter(|_| words.len() < 3) {
            words.push(word);
            at = next;
        }
        tracing::info_span!("vmi.command", otel.name = %words.join(" "))
    });
    let _in_command = command_span.as_ref().map(tracing::Span::enter);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Top::Image(cmd) => image_cmd(cmd),
        Top::Vm(cmd) => vm_cmd(cmd),
        Top::Bench(cmd) => bench::run(cmd),
        Top::Up(args) => runtime()?.block_on(services::up(args)),
        Top::Control(args) => runtime()?.block_on(services::control(args)),
        Top::Site(args) => runtime()?.block_on(services::site(args)),
        Top::Proxy(args) => runtime()?.block_on(proxy::run(args)),
        Top::Mail(MailCmd::Send(args)) => runtime()?.block_on(services::mail(args)),
        Top::User(cmd) => runtime()?.block_on(services::user(cmd)),
        Top::Device(cmd) => runtime()?.block_on(services::device(cmd)),
        Top::Tenant(cmd) => runtime()?.block_on(tenants::tenant(cmd)),
        Top::Terminal(cmd) => {
            runtime()?.block_on(vmi_terminal::offline::run_command(cmd, output::progress())).map_err(Into::into)
        }
        Top::Audit(args) => runtime()?.block_on(audit::audit(args)),
        Top::Nemesis(args) => runtime()?.block_on(nemesis::nemesis(args)),
        Top::Sim(args) => sim::run(args),
        Top::Openapi { service } => {
            let document = match service {
                ApiService::Control => vmi_control::openapi()?,
                ApiService::Site => vmi_site::openapi(),
            };
            println!("{}", serde_json::to_string_pretty(&document)?);
            Ok(())
        }
        Top::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "vmi", &mut script);
            let script = String::from_utf8(script).context("the completion script is not UTF-8")?;
            output::emit(&serde_json::json!({ "shell": shell.to_string(), "script": script }), || print!("{script}"))
        }
    }
}

/// `vmi vm checkout-cancel USER`: asks the phone's site to break the lease.
async fn checkout_cancel(user: &str, control: &str) -> Result<()> {
    let control = crate::credentials::control_client(control)?;
    let placement = control.placement(user).await.with_context(|| format!("finding {user}'s phone"))?;
    let url = format!("{}/v1/phones/{user}/checkout/cancel", placement.site_url);
    let (status, text) = crate::credentials::operator_caller()?
        .post_json(&url, &serde_json::json!({}))
        .await
        .context("asking the site")?;
    if status != 200 {
        bail!("{} did not cancel the checkout ({status}): {text}", placement.site);
    }
    let answer: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "user": user, "cancelled": true }));
    output::emit(&answer, || println!("{text}"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

fn read_image(path: Option<&Path>) -> Result<Vec<u8>> {
    match path {
        Some(p) => std::fs::read(p).with_context(|| format!("reading image {}", p.display())),
        None => Ok(vmi_phone_image::PHONE_WASM.to_vec()),
    }
}

fn image_cmd(cmd: ImageCmd) -> Result<()> {
    match cmd {
        ImageCmd::Publish(args) => runtime()?.block_on(tenants::publish(args)),
        ImageCmd::List(args) => runtime()?.block_on(tenants::list(args)),
        ImageCmd::Rollback(args) => runtime()?.block_on(tenants::rollback(args)),
        ImageCmd::Build { out, linux: true, memory_mib, network, .. } => {
            let work = std::env::temp_dir().join(format!("vmi-linux-image-{}", std::process::id()));
            let manifest = vmi_qemu_engine::image::Manifest { memory_mib, network, ..Default::default() };
            let built = build_linux_image(manifest, &work, &output::progress());
            let _ = std::fs::remove_dir_all(&work);
            let bytes = built.context("building the Linux image")?;
            std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            let hash = vmi_engine::ImageHash::of(&bytes).to_hex();
            let built = serde_json::json!({ "out": out, "bytes": bytes.len(), "image": hash, "engine": "qemu" });
            output::emit(&built, || println!("{} {} bytes, Linux image {hash}", out.display(), bytes.len()))
        }
        ImageCmd::Build { out, source, .. } => {
            let bytes = match source {
                None => vmi_phone_image::PHONE_WASM.to_vec(),
                Some(dir) => build_guest(&dir)?,
            };
            let engine = WasmEngine::new()?;
            let info = engine.load_image(&bytes).context("the built image is not a valid phone image")?;
            std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            let hash = info.hash.to_hex();
            let built = serde_json::json!({ "out": out, "bytes": bytes.len(), "image": hash, "engine": info.engine });
            output::emit(&built, || println!("{} {} bytes, image {hash}", out.display(), bytes.len()))
        }
        ImageCmd::Inspect { image } => {
            let bytes = read_image(Some(&image))?;
            let engine = WasmEngine::new()?;
            let info = engine.load_image(&bytes)?;
            if output::json() {
                let v = serde_json::json!({
                    "hash": info.hash.to_hex(), "bytes": info.size_bytes, "abi_version": info.abi_version,
                    "initial_memory_bytes": info.initial_memory_bytes, "max_memory_bytes": info.max_memory_bytes,
                    "captured_globals": info.captured_globals, "functions": info.functions,
                    "imports": info.imports, "engine": info.engine,
                });
                println!("{v}");
            } else {
                println!("image            {}", info.hash.to_hex());
                println!("engine           {}", info.engine);
                println!("size             {} bytes", info.size_bytes);
                println!("guest ABI        version {}", info.abi_version);
                println!("initial memory   {} KiB", info.initial_memory_bytes / 1024);
                match info.max_memory_bytes {
                    Some(m) => println!("maximum memory   {} KiB", m / 1024),
                    None => println!("maximum memory   none declared (capped per VM)"),
                }
                println!("captured globals {}", info.captured_globals);
                println!("functions        {}", info.functions);
                println!("host imports     {}", info.imports.join(", "));
            }
            Ok(())
        }
    }
}

/// The prefix of the Linux image build script's step lines on its stderr.
const BUILD_STEP: &str = "build-linux-image: ";

/// Builds a Linux image's parts with the build script (`vmi_qemu_engine::image::build_script`) in `work` and packs
/// them with `manifest`, as `vmi_qemu_engine::image::build` does, showing the script's steps on `progress`.
fn build_linux_image(
    manifest: vmi_qemu_engine::image::Manifest,
    work: &Path,
    progress: &output::Progress,
) -> Result<Vec<u8>> {
    let script = vmi_qemu_engine::image::build_script();
    let mut command = std::process::Command::new(&script);
    command.arg(work);
    if progress.is_shown() {
        // Read here, so that nothing it prints lands in the middle of the progress line.
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    } else {
        // What its tools print is for a person: stdout stays this command's (JSON with --json).
        command.stdout(std::io::stderr());
    }
    let mut child = command.spawn().with_context(|| format!("running {}", script.display()))?;
    if let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) {
        let last = show_build_steps(vec![Box::new(stdout), Box::new(stderr)], progress);
        progress.clear();
        // The last step stays on the screen: how it ended ("done: kernel …", or why it failed).
        eprintln!("{BUILD_STEP}{last}");
    }
    let status = child.wait().with_context(|| format!("waiting for {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status}); its output says why", script.display());
    }
    Ok(vmi_qemu_engine::image::pack_dir(manifest, work)?)
}

/// Shows the build script's steps (its [`BUILD_STEP`] lines) on `progress`, with the time taken so far, until it
/// closes `outputs`; prints its other lines (warnings, a failure's log) as they come. Returns the last step.
fn show_build_steps(outputs: Vec<Box<dyn std::io::Read + Send>>, progress: &output::Progress) -> String {
    use std::io::BufRead;
    use std::sync::mpsc::RecvTimeoutError;
    let (send, lines) = std::sync::mpsc::channel();
    for output in outputs {
        let send = send.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(output).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
    }
    // Only the readers hold senders now: the channel closes when the script has closed both.
    drop(send);
    let started = std::time::Instant::now();
    let mut step = "starting".to_owned();
    loop {
        // A step can take a minute (the root filesystem): the clock moves every second meanwhile.
        match lines.recv_timeout(std::time::Duration::from_secs(1)) {
            Ok(line) => match line.strip_prefix(BUILD_STEP) {
                Some(next) => step = next.to_owned(),
                None => {
                    progress.clear();
                    eprintln!("{line}");
                }
            },
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return step,
        }
        progress.step(format!("[{} s] {step}", started.elapsed().as_secs()));
    }
}

/// Builds a guest crate for wasm32 with cargo and returns its module.
fn build_guest(dir: &Path) -> Result<Vec<u8>> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.exists() {
        bail!("{} has no Cargo.toml; --source takes a guest crate directory", dir.display());
    }
    let status = std::process::Command::new("cargo")
        .args(["build", "--release", "--target", "wasm32-unknown-unknown", "--message-format=short", "--manifest-path"])
        .arg(&manifest)
        // Whatever cargo says is for a person: stdout stays this command's (JSON with --json).
        .stdout(std::io::stderr())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo could not build {} for wasm32-unknown-unknown", dir.display());
    }
    let meta = std::process::Command::new("cargo")
        .args(["metadata", "--format-version=1", "--no-deps", "--manifest-path"])
        .arg(&manifest)
        .output()
        .context("running cargo metadata")?;
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout).context("reading cargo metadata")?;
    let target_dir = meta["target_directory"].as_str().context("cargo metadata has no target directory")?;
    let manifest_abs = std::fs::canonicalize(&manifest)?;
    let package = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["manifest_path"].as_str().map(PathBuf::from) == Some(manifest_abs.clone())))
        .context("the crate is not in cargo metadata")?;
    let name = package["name"].as_str().context("package has no name")?.replace('-', "_");
    let wasm = Path::new(target_dir).join("wasm32-unknown-unknown/release").join(format!("{name}.wasm"));
    std::fs::read(&wasm).with_context(|| format!("reading {} (is the crate a cdylib?)", wasm.display()))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

struct Session {
    engine: WasmEngine,
    clock: Arc<ManualClock>,
}

/// Where compiled images are kept between runs: `$VMI_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/vmi/compiled`, else `~/.cache/vmi/compiled`.
pub fn compiled_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("VMI_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("vmi").join("compiled"))
}

fn session(wall_start_ns: u64) -> Result<Session> {
    let clock = ManualClock::new(wall_start_ns);
    let config = WasmEngineConfig { max_vms: 4, cache_dir: compiled_cache_dir(), ..WasmEngineConfig::default() };
    let engine = WasmEngine::with_config(config, clock.clone())?;
    Ok(Session { engine, clock })
}

fn vm_config(p: &PhoneArgs) -> VmConfig {
    VmConfig { width: p.width, height: p.height, memory_limit_bytes: p.memory_mib << 20, ..VmConfig::default() }
}

/// Plays the event script of `p` (if any) on `phone`, printing each report as a JSON line; returns how many
/// reports of each kind it printed.
fn play(
    phone: &mut dyn vmi_engine::VirtualPhone,
    s: &Session,
    p: &PhoneArgs,
) -> Result<std::collections::BTreeMap<&'static str, u64>> {
    let mut reported = std::collections::BTreeMap::new();
    let Some(path) = &p.events else { return Ok(reported) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines = script::parse(&text).with_context(|| format!("in {}", path.display()))?;
    std::fs::create_dir_all(&p.out_dir).with_context(|| format!("creating {}", p.out_dir.display()))?;
    let terminal = p.as_terminal.then(headless::TerminalView::default);
    let mut runner = headless::Runner { phone, clock: s.clock.clone(), out_dir: p.out_dir.clone(), terminal };
    runner.play(&lines, &mut |report| match serde_json::to_string(&report) {
        Ok(line) => {
            *reported.entry(report.kind()).or_insert(0) += 1;
            println!("{line}");
        }
        Err(e) => eprintln!("cannot print a report: {e}"),
    })?;
    Ok(reported)
}

/// With `--json`, the last line of a headless run: what ran, where its clock ended, and what it reported.
fn print_run_summary(
    kind: &str,
    phone: &dyn vmi_engine::VirtualPhone,
    image: &vmi_engine::ImageHash,
    reported: &std::collections::BTreeMap<&'static str, u64>,
    extra: serde_json::Value,
) {
    if !output::json() {
        return;
    }
    let mut summary = serde_json::json!({
        "kind": kind, "image": image.to_hex(), "virtual_ns": phone.now_ns(), "reports": reported,
    });
    if let (Some(summary), serde_json::Value::Object(extra)) = (summary.as_object_mut(), extra) {
        summary.extend(extra);
    }
    println!("{summary}");
}

fn vm_cmd(cmd: VmCmd) -> Result<()> {
    match cmd {
        VmCmd::Migrate(args) => runtime()?.block_on(services::migrate(args)),
        VmCmd::List(args) => runtime()?.block_on(services::list(args)),
        VmCmd::Checkpoints(cmd) => runtime()?.block_on(checkpoints::run(cmd)),
        VmCmd::Create(args) => runtime()?.block_on(tenants::create_phone(args)),
        VmCmd::Restart(args) => runtime()?.block_on(tenants::restart(args)),
        VmCmd::Logs(args) => runtime()?.block_on(services::logs(args)),
        VmCmd::CheckoutCancel { user, control } => runtime()?.block_on(checkout_cancel(&user, &control)),
        VmCmd::Run { phone: p, wall_start, .. } => {
            let s = session(wall_start.unwrap_or_else(now_secs) * 1_000_000_000)?;
            let image = s.engine.load_image(&read_image(p.image.as_deref())?)?;
            let mut phone = s.engine.create(&image.hash, &vm_config(&p))?;
            let reported = play(phone.as_mut(), &s, &p)?;
            print_run_summary("ran", phone.as_ref(), &image.hash, &reported, serde_json::json!({}));
            Ok(())
        }
        VmCmd::Snapshot { phone: p, out, wall_start } => {
            let s = session(wall_start.unwrap_or_else(now_secs) * 1_000_000_000)?;
            let image = s.engine.load_image(&read_image(p.image.as_deref())?)?;
            let mut phone = s.engine.create(&image.hash, &vm_config(&p))?;
            play(phone.as_mut(), &s, &p)?;
            let snap = phone.snapshot(vmi_engine::SnapshotRequest::Full)?;
            std::fs::write(&out, &snap.bytes).with_context(|| format!("writing {}", out.display()))?;
            // Already one JSON line: the summary with or without --json.
            println!(
                "{}",
                serde_json::json!({"kind": "snapshot", "path": out.display().to_string(), "id": snap.id.to_string(), "bytes": snap.bytes.len(), "pages": snap.pages})
            );
            Ok(())
        }
        VmCmd::Restore { snapshots, phone: p, away, snapshot_out } => {
            let chain: Vec<Vec<u8>> = snapshots
                .iter()
                .map(|f| std::fs::read(f).with_context(|| format!("reading snapshot {}", f.display())))
                .collect::<Result<_>>()?;
            let last = chain.last().context("no snapshot given")?;
            let header = Snapshot::peek_header(last)
                .with_context(|| format!("reading {}", snapshots[snapshots.len() - 1].display()))?;
            let away_ns = match away {
                Some(a) => script::parse_duration(&a)?.as_nanos() as u64,
                None => 0,
            };
            // Start the manual clock where the snapshot left off, plus the time away.
            let s = session(header.wall_ns + away_ns)?;
            let image = s.engine.load_image(&read_image(p.image.as_deref())?)?;
            if header.image_hash != image.hash.0 {
                anyhow::bail!(
                    "{} was taken on image {}, but {} is image {}: pass that snapshot's image with \
                     --image FILE.wasm (`vmi image inspect FILE.wasm` prints an image's hash)",
                    snapshots[0].display(),
                    vmi_engine::ImageHash(header.image_hash).to_hex(),
                    p.image.as_deref().map_or("the built-in phone".to_string(), |f| f.display().to_string()),
                    image.hash.to_hex(),
                );
            }
            let refs: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
            let mut phone = s.engine.restore(&image.hash, &refs, &vm_config(&p)).context("restoring the phone")?;
            // A terminal looks again: the phone repaints what went stale while it was
            // stored (the clock after `--away`).
            phone.deliver(vmi_engine::Event::Wake)?;
            let reported = play(phone.as_mut(), &s, &p)?;
            let mut written = None;
            if let Some(out) = snapshot_out {
                let snap = phone.snapshot(vmi_engine::SnapshotRequest::Full)?;
                std::fs::write(&out, &snap.bytes).with_context(|| format!("writing {}", out.display()))?;
                written =
                    Some(serde_json::json!({ "path": out, "id": snap.id.to_string(), "bytes": snap.bytes.len() }));
            }
            let restored = serde_json::json!({ "from": snapshots, "away_ns": away_ns, "snapshot_out": written });
            print_run_summary("restored", phone.as_ref(), &image.hash, &reported, restored);
            Ok(())
        }
        VmCmd::Inspect { snapshot } => {
            let bytes = std::fs::read(&snapshot).with_context(|| format!("reading {}", snapshot.display()))?;
            let header = Snapshot::peek_header(&bytes)?;
            let full = Snapshot::decode(&bytes, &vmi_snapshot::Limits::default())?;
            println!(
                "{}",
                serde_json::json!({
                    "id": vmi_snapshot::SnapshotId::of(&bytes).to_string(),
                    "engine": header.engine,
                    "image": vmi_engine::ImageHash(header.image_hash).to_hex(),
                    "memory_bytes": header.memory_bytes,
                    "kind": match header.kind {
                        vmi_snapshot::SnapshotKind::Full => "full".to_string(),
                        vmi_snapshot::SnapshotKind::Incremental { .. } => "incremental".to_string(),
                        vmi_snapshot::SnapshotKind::PreCopy { round, .. } => format!("pre-copy round {round}"),
                    },
                    "parent": header.kind.parent().map(|p| p.to_hex()),
                    "virtual_ns": header.virtual_ns,
                    "wall_ns": header.wall_ns,
                    "pages": full.pages.page_count(),
                    "data_pages": full.pages.data_pages(),
                    "globals": full.globals.len(),
                    "host_state_bytes": full.host_state.len(),
                    "file_bytes": bytes.len(),
                })
            );
            Ok(())
        }
    }
}
