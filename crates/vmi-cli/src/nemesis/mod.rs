//! `vmi nemesis`: a fault checker in the style of Jepsen, run against `vmi up --cluster` (docs/CONTROL-PLANE.md).
//!
//! It starts the simulated cluster (3 etcd members, 2 control replicas, 3 sites, each in a network namespace of
//! its own; each site on a disk of its own, a tmpfs, so one can fill), with every control replica and site
//! recording its history. Terminals in the host's namespace type into several users' phones, a character every
//! [`TYPE_EVERY`], across the bridge, recording what they typed and what they heard was durable. Meanwhile the
//! nemesis injects faults one after the other ([`faults::FaultKind`]: SIGKILL of a site, partitions of a site
//! from everyone, from the control plane, from the other sites or from its terminals, etcd partitions with and
//! without a quorum, SIGKILL of the leading control replica, SIGSTOP past the lease, a full disk, a corrupt
//! checkpoint chunk), each held a while and healed. Then everything heals, the terminals finish, each phone's
//! notes are read, every phone whose site had a chunk corrupted is moved there and restored from its checkpoints
//! (so the damaged chunk is read and repaired), and the checker ([`checker`]) judges the histories with etcd's
//! own history of every placement.
//!
//! The histories, the report and every service's log stay in the data directory when a check fails (or with
//! `--keep`). Needs root (network namespaces, tmpfs mounts).

pub mod checker;
pub mod faults;

use crate::rng::Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use vmi_control_api::history::History;
use vmi_control_api::{Caller, ControlClient};
use vmi_protocol::{Input, TouchPhase};
use vmi_terminal::{Terminal, TerminalEvent, TerminalOptions};

use faults::{Change, FaultKind, Machine};

/// One keystroke this often per terminal.
pub const TYPE_EVERY: Duration = Duration::from_millis(100);
/// How long, once everything healed, the phones have to come back and every input to become durable.
const SETTLE_WITHIN: Duration = Duration::from_secs(120);
/// Each site's own disk.
const SITE_DISK_MIB: u64 = 768;

/// `vmi nemesis` arguments.
#[derive(Args)]
pub struct NemesisArgs {
    /// How many faults to inject.
    #[arg(long, default_value_t = 100)]
    faults: usize,
    /// How many users type, each into their own phone (placed round the sites).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=12))]
    users: u16,
    /// Where the cluster, the histories and the report go (default: a new directory under the system's temp
    /// directory, removed after a run that passed unless --keep).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Seed for the choice of targets and durations (default: from the clock); printed in the report.
    #[arg(long)]
    seed: Option<u64>,
    /// Only these kinds of fault, in this order (comma-separated: kill-site, pause-site, isolate-site,
    /// site-from-control, site-from-sites, site-from-terminals, etcd-minority, etcd-no-quorum, kill-leader,
    /// disk-full, corrupt-chunk); default: every kind in turn.
    #[arg(long, value_delimiter = ',', value_name = "KINDS")]
    only: Vec<String>,
    /// Keep the data directory even when every check passed.
    #[arg(long)]
    keep: bool,
}

/// Runs the nemesis and the checker; fails if a check failed.
pub async fn nemesis(args: NemesisArgs) -> Result<()> {
    if !vmi_cluster::Net::available() {
        bail!(
            "vmi nemesis needs root: it runs vmi up --cluster (a network namespace per simulated machine) and gives \
             each site a disk of its own (a tmpfs mount); run it as root"
        );
    }
    let temporary = args.data_dir.is_none();
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("vmi-nemesis-{}", std::process::id())));
    if dir.join("up.json").exists() {
        bail!("{} holds an earlier run: give an empty or new --data-dir", dir.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let seed = args.seed.unwrap_or_else(|| vmi_control_api::history::now_us() | 1);
    let started = Instant::now();
    let result = run(&args, &dir, seed).await;
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            eprintln!("the nemesis run stopped: {e:#}\nwhat it left: {}", dir.display());
            return Err(e);
        }
    };
    let passed = report["passed"].as_bool().unwrap_or(false);
    let mut report = report;
    report["seconds"] = json!((started.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    report["data_dir"] = json!(dir);
    std::fs::write(dir.join("report.json"), format!("{report:#}\n"))?;
    crate::output::emit(&report, || print_summary(&report))?;
    if !passed {
        bail!("the checker found violations: histories and logs kept in {}", dir.display());
    }
    if temporary && !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn print_summary(report: &Value) {
    let verdict = |v: &Value| if v["passed"].as_bool().unwrap_or(false) { "ok" } else { "FAILED" };
    println!(
        "{} faults in {} s (seed {}): {}",
        report["faults"]["total"], report["seconds"], report["seed"], report["faults"]["by_kind"]
    );
    for (key, what) in [
        ("one_owner", "(a) one site applying input per epoch"),
        ("durable_inputs", "(b) durable characters once and in order"),
        ("phones_live", "(c) every phone running and reachable"),
        ("epochs_match", "(d) every placement move with its epoch"),
    ] {
        let v = &report["checks"][key];
        println!("  {what:<44} {:<7} {}", verdict(v), v["checked"]);
        for violation in v["violations"].as_array().into_iter().flatten() {
            println!("    {}", violation.as_str().unwrap_or_default());
        }
    }
    println!("{}", if report["passed"].as_bool().unwrap_or(false) { "PASSED" } else { "FAILED" });
}

/// The cluster as `vmi up --cluster` wrote it in up.json.
struct Cluster {
    dir: PathBuf,
    machines: Vec<Machine>,
    controls: Vec<String>,
    control_url: String,
    etcd: Vec<String>,
    ca_pem: String,
    operator: Caller,
    control: ControlClient,
}

impl Cluster {
    fn machine(&self, name: &str) -> Result<&Machine> {
        self.machines.iter().find(|m| m.name == name).with_context(|| format!("no machine {name}"))
    }

    fn named(&self, prefix: &str) -> Vec<&Machine> {
        self.machines.iter().filter(|m| m.name.starts_with(prefix)).collect()
    }

    /// The host's address on the bridge (where the terminals are).
    fn host_ip(&self) -> std::net::Ipv4Addr {
        let [a, b, c, _] = self.machines.first().map_or([10, 0, 0, 1], |m| m.ip.octets());
        std::net::Ipv4Addr::new(a, b, c, 1)
    }

    fn site_pid(&self, id: &str) -> Option<u32> {
        let data = self.dir.join(id).display().to_string();
        faults::pid_with_args(&["site", "--id", id, &data])
    }

    fn control_pid(&self, replica: &str) -> Option<u32> {
        let db = self.dir.join("control.db").display().to_string();
        faults::pid_with_args(&["control", "--replica", replica, &db])
    }

    /// The leading replica's name, if one answers that it leads.
    async fn leader(&self) -> Option<String> {
        for url in &self.controls {
            if let Ok((200, body)) = self.operator.get_bytes(&format!("{url}/v1/replica")).await
                && let Ok(v) = serde_json::from_slice::<Value>(&body)
                && v["leading"] == true
            {
                return v["replica"].as_str().map(str::to_owned);
            }
        }
        None
    }

    /// Where `user`'s phone is placed: (site, its URL), if the control plane answers.
    async fn placement(&self, user: &str) -> Option<(String, String)> {
        let p = tokio::time::timeout(Duration::from_secs(3), self.control.placement(user)).await.ok()?.ok()?;
        Some((p.site, p.site_url))
    }

    /// The operator calling site `id`.
    fn site_caller(&self, id: &str) -> Result<Caller> {
        Ok(self.operator.clone().expecting(&vmi_trust::site_name(id)?))
    }

    /// Users whose phones site `id` at `url` runs, if it answers.
    async fn running_on(&self, id: &str, url: &str) -> Option<Vec<String>> {
        let phones = self.phones_on(id, url).await?;
        let running = phones.iter().filter(|p| p["phone"]["status"] == "running");
        Some(running.filter_map(|p| p["user"].as_str().map(str::to_owned)).collect())
    }

    /// Site `id`'s listing of its phones (`GET /v1/phones`), if it answers within 3 s.
    async fn phones_on(&self, id: &str, url: &str) -> Option<Vec<Value>> {
        let caller = self.site_caller(id).ok()?;
        let path = format!("{url}/v1/phones");
        let (status, body) = tokio::time::timeout(Duration::from_secs(3), caller.get_bytes(&path)).await.ok()?.ok()?;
        let mut listing: Value = serde_json::from_slice(&body).ok().filter(|_| status == 200)?;
        match listing["phones"].take() {
            Value::Array(phones) => Some(phones),
            _ => None,
        }
    }
}

/// `vmi up --cluster` as a child, stopped (SIGINT, then waited for) when the run ends.
struct UpProcess(vmi_cluster::Process);

impl UpProcess {
    fn start(dir: &Path) -> Result<UpProcess> {
        use std::io::BufRead;
        let exe = std::env::current_exe().context("this binary")?;
        let log = std::fs::File::create(dir.join("up.log"))?;
        let mut command = std::process::Command::new(exe);
        command
            .args(["up", "--cluster", "--port", "0", "--data-dir"])
            .arg(dir)
            .arg("--history")
            .arg(dir.join("history"))
            .env("VMI_LOG", std::env::var("VMI_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(std::process::Stdio::piped())
            .stderr(log);
        // If this process dies first (killed by a test that failed), vmi up is told to stop, as by Ctrl-C, and
        // takes its services and namespaces with it. The signal follows the thread that spawned it: this must be
        // a thread that lives as long as the process (the main thread; see `run`).
        // SAFETY: prctl(2) is async-signal-safe and touches nothing of the parent's.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
                Ok(())
            });
        }
        let mut process = vmi_cluster::Process::spawn(&mut command)?;
        let stdout = process.take_stdout().context("vmi up's stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        // vmi up gives up by itself if a service does not start within a minute; its stdout ending is the bound.
        if !lines.by_ref().map_while(Result::ok).any(|l| l.contains("Stop with Ctrl-C")) {
            bail!("vmi up --cluster ended before it was up (see {})", dir.join("up.log").display());
        }
        std::thread::spawn(move || for _ in lines {});
        Ok(UpProcess(process))
    }

    /// Ctrl-C to `vmi up` alone (it stops its services, which save their phones), then waits a minute at most.
    fn stop(mut self) {
        faults::signal(self.0.id(), libc::SIGINT);
        let by = Instant::now() + Duration::from_secs(60);
        while self.0.exited().is_none() && Instant::now() < by {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Reads up.json.
fn cluster(dir: &Path) -> Result<Cluster> {
    let up: Value = serde_json::from_slice(&std::fs::read(dir.join("up.json"))?)?;
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
    };
    let mut machines = Vec::new();
    for m in up["machines"].as_array().context("up.json names no machines")? {
        machines.push(Machine {
            name: m["name"].as_str().unwrap_or_default().to_owned(),
            netns: m["netns"].as_str().unwrap_or_default().to_owned(),
            ip: m["ip"].as_str().unwrap_or_default().parse().context("a machine's address")?,
            link: m["link"].as_str().unwrap_or_default().to_owned(),
        });
    }
    crate::credentials::use_credentials(dir.join("operator.json"));
    let operator = crate::credentials::operator_caller()?;
    let control_url = up["control"].as_str().context("the control URLs")?.to_owned();
    Ok(Cluster {
        dir: dir.to_owned(),
        machines,
        controls: strings(&up["controls"]),
        control: ControlClient::new(&control_url, &operator)?,
        control_url,
        etcd: strings(&up["etcd"]),
        ca_pem: std::fs::read_to_string(dir.join(crate::services::CA_FILE))?,
        operator,
    })
}

/// One user's terminal typing into their phone, recording to the terminals' history.
struct Typist {
    user: String,
    terminal: Arc<Terminal>,
    typing: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<()>,
}

impl Typist {
    async fn start(cluster: &Cluster, user: &str, history: Arc<History>) -> Result<Typist> {
        let token = cluster.control.create_device(user, "nemesis terminal").await?.token;
        let caller = Caller::trusting(&cluster.ca_pem)?;
        let locator = ControlClient::new(&cluster.control_url, &caller)?;
        let options = TerminalOptions {
            caller,
            locate: Some(vmi_terminal::cli::locate_with(locator.clone(), token.clone())),
            keepalive: Some(Duration::from_secs(1)),
            ..TerminalOptions::default()
        };
        let ws = locator.phone_for_token(&token).await?.ws_url;
        let mut terminal = Terminal::connect(&ws, &token, options).await.context("a terminal connects")?;
        let mut events = terminal.take_events().context("the terminal's events")?;
        let terminal = Arc::new(terminal);
        let reader = {
            let (history, user) = (history.clone(), user.to_owned());
            tokio::spawn(async move {
                let mut durable = 0;
                while let Some(event) = events.recv().await {
                    match event {
                        TerminalEvent::InputDurable { seq } if seq > durable => {
                            durable = seq;
                            history.record("durable", json!({ "user": user, "seq": seq }));
                        }
                        TerminalEvent::Error { message, fatal: true } => {
                            history.record("terminal-error", json!({ "user": user, "error": message }));
                        }
                        _ => {}
                    }
                }
            })
        };
        // Open the notes, then a letter every TYPE_EVERY until stopped.
        let (x, y) = (crate::bench::layout::NOTES.0 as u16, crate::bench::layout::NOTES.1 as u16);
        for phase in [TouchPhase::Down, TouchPhase::Up] {
            let seq = terminal.send_input(Input::Touch { phase, x, y, pointer: 0 })?;
            history.record("type", json!({ "user": user, "seq": seq, "char": null }));
        }
        let typing = {
            let (terminal, user) = (terminal.clone(), user.to_owned());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TYPE_EVERY);
                // Letters that do not repeat in a cycle: the checker can tell where the notes part from what was
                // typed, and how far (a loss of 138 letters of the alphabet in turn reads like one of 8).
                let salt = user
                    .bytes()
                    .fold(0x9e37_79b9_7f4a_7c15u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
                for i in 0u64.. {
                    tick.tick().await;
                    let c = char::from(b'a' + (splitmix(salt.wrapping_add(i)) % 26) as u8);
                    // Recorded before it is sent: an input the terminal refuses (too many pending) is not typed.
                    if let Ok(seq) = terminal.send_input(Input::Key { code: 0, text: Some(c) }) {
                        history.record("type", json!({ "user": user, "seq": seq, "char": c.to_string() }));
                    }
                }
            })
        };
        Ok(Typist { user: user.to_owned(), terminal, typing, reader })
    }
}

/// One step of SplitMix64: a well-mixed 64-bit value from `x`.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The whole run: returns the report.
async fn run(args: &NemesisArgs, dir: &Path, seed: u64) -> Result<Value> {
    let mut rng = Rng(seed);
    // Each site on a disk of its own (made before vmi up creates the sites' directories on it).
    let mut disks = Vec::new();
    for (id, _, _) in crate::services::DEMO_SITES {
        disks.push(faults::OwnDisk::mount(&dir.join(id), SITE_DISK_MIB)?);
    }
    // On this (the main) thread, not a blocking-pool one, which may end before the run does (see `start`).
    let up = UpProcess::start(dir)?;
    let outcome = drive(args, dir, &mut rng).await;
    tokio::task::spawn_blocking(move || up.stop()).await?;
    // What each site's disk held, kept beside the histories (its tmpfs goes with the run): a failure's evidence.
    for (id, _, _) in crate::services::DEMO_SITES {
        let kept = dir.join("disks").join(id);
        let _ = std::fs::create_dir_all(&kept);
        let copied = std::process::Command::new("cp").arg("-a").arg(dir.join(id).join(".")).arg(&kept).status();
        if !copied.is_ok_and(|s| s.success()) {
            tracing::warn!(site = id, "could not keep a copy of the site's disk");
        }
    }
    drop(disks);
    let (observed, mut facts) = outcome?;
    let histories: Vec<PathBuf> = std::fs::read_dir(dir.join("history"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    let (records, unreadable) = vmi_control_api::history::read(&histories)?;
    let observed = checker::Observed { records, ..observed };
    // The end state and etcd's placement histories beside the report: what a failure is judged against.
    let evidence = json!({ "finals": observed.finals, "placements": observed.placements });
    std::fs::write(dir.join("observed.json"), format!("{evidence:#}\n"))?;
    let report = checker::check(&observed);
    // A phone that cannot come back from its checkpoints after a chunk was damaged has lost state: a failure too.
    let restores_failed = facts["corrupt_chunk_restores_failed"].as_u64().unwrap_or(0);
    facts["passed"] = json!(report.passed && restores_failed == 0);
    facts["seed"] = json!(seed);
    facts["checks"] = serde_json::to_value(&report)?;
    facts["history"] = json!({ "records": observed.records.len(), "unreadable_lines": unreadable,
        "files": histories.len() });
    Ok(facts)
}

/// Starts the typists, injects the faults, heals, and gathers what the checker needs (without the histories).
async fn drive(args: &NemesisArgs, dir: &Path, rng: &mut Rng) -> Result<(checker::Observed, Value)> {
    let cluster = cluster(dir)?;
    let history = Arc::new(History::open(&dir.join("history").join("terminals.jsonl"), "terminal")?);
    let nemesis_history = History::open(&dir.join("history").join("nemesis.jsonl"), "nemesis")?;
    let sites: Vec<String> = crate::services::DEMO_SITES.iter().map(|(id, _, _)| (*id).to_owned()).collect();
    let users: Vec<String> = (0..args.users).map(|i| format!("typist-{i}")).collect();
    for (i, user) in users.iter().enumerate() {
        crate::services::ensure_user_phone(&cluster.control, user, &sites[i % sites.len()]).await?;
    }
    let mut typists = Vec::new();
    for user in &users {
        typists.push(Typist::start(&cluster, user, history.clone()).await?);
    }
    // Every phone with a standby copy before the first fault (else its first failover has nowhere to go).
    wait_for_standbys(&cluster, &users).await?;

    let kinds: Vec<FaultKind> = if args.only.is_empty() {
        FaultKind::ALL.to_vec()
    } else {
        args.only
            .iter()
            .map(|name| {
                FaultKind::ALL.into_iter().find(|k| k.name() == name).with_context(|| format!("no fault kind {name:?}"))
            })
            .collect::<Result<_>>()?
    };
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    let mut corrupted: BTreeMap<String, String> = BTreeMap::new();
    let mut skipped: BTreeMap<&str, usize> = BTreeMap::new();
    // A fault with nothing to hit (no leader answering, no chunk yet) is skipped and its kind tried again next:
    // the run injects `faults` faults, trying at most twice as many times.
    let (mut injected, mut next_kind) = (0usize, 0usize);
    for n in 0..args.faults * 2 {
        if injected == args.faults {
            break;
        }
        let kind = kinds[next_kind % kinds.len()];
        let user = &users[rng.below(users.len())];
        // Site faults hit the site running a phone, where they matter most (any site if none answers).
        let target = match cluster.placement(user).await {
            Some((site, _)) => site,
            None => sites[rng.below(sites.len())].clone(),
        };
        let hold = rng.between(kind.hold());
        let (changes, detail) = match inject(&cluster, kind, &target, user, rng).await {
            Ok(Some(done)) => done,
            Ok(None) => {
                *skipped.entry(kind.name()).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => {
                heal_all(&cluster);
                return Err(e.context(format!("injecting fault {n} ({})", kind.name())));
            }
        };
        if kind == FaultKind::CorruptChunk {
            corrupted.insert(user.clone(), target.clone());
        }
        nemesis_history.record(
            "fault",
            json!({ "n": n, "kind": kind.name(), "target": detail,
            "hold_ms": hold.as_millis() as u64 }),
        );
        *by_kind.entry(kind.name()).or_default() += 1;
        injected += 1;
        next_kind += 1;
        tokio::time::sleep(hold).await;
        for change in changes.iter().rev() {
            if let Err(e) = change.heal() {
                tracing::warn!("healing {change:?}: {e:#}");
            }
        }
        nemesis_history.record("healed", json!({ "n": n, "kind": kind.name() }));
        tokio::time::sleep(Duration::from_millis(300 + rng.next() % 700)).await;
    }
    // Everything heals; the typists stop typing and wait for what they typed to be durable.
    heal_all(&cluster);
    nemesis_history.record("healed-all", Value::Null);
    for t in &typists {
        t.typing.abort();
    }
    let settle_by = Instant::now() + SETTLE_WITHIN;
    while Instant::now() < settle_by {
        let mut settled = true;
        for t in &typists {
            let stats = t.terminal.stats();
            let placed = cluster.placement(&t.user).await;
            let here = placed.is_some_and(|(_, url)| stats.url == vmi_control_api::ws_url(&url));
            settled &= stats.pending_inputs == 0 && stats.connected && here;
        }
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut observed = checker::Observed::default();
    for t in &typists {
        observed.finals.insert(t.user.clone(), final_state(&cluster, t).await);
    }
    for t in typists {
        t.reader.abort();
        if let Ok(terminal) = Arc::try_unwrap(t.terminal) {
            terminal.close().await;
        }
    }
    // Every phone whose site had a chunk corrupted: moved there, then restored from its oldest checkpoint and
    // its newest (taken now) there, so the damaged chunk is read and must be repaired from a copy.
    let mut restored = Vec::new();
    for (user, site) in &corrupted {
        let expected = observed.finals.get(user).and_then(|f| f.notes.clone());
        restored.push(restore_where_corrupted(&cluster, user, site, expected.as_deref()).await);
    }
    observed.placements = placement_histories(&cluster, &users).await?;
    let restore_failures: Vec<&Value> = restored.iter().filter(|r| r["ok"] == false).collect();
    let facts = json!({
        "faults": { "total": by_kind.values().sum::<usize>(), "by_kind": by_kind, "skipped": skipped },
        "users": users.len(),
        "type_every_ms": TYPE_EVERY.as_millis() as u64,
        "corrupt_chunk_restores": restored,
        "corrupt_chunk_restores_failed": restore_failures.len(),
    });
    Ok((observed, facts))
}

/// Injects one fault of `kind`, aimed at `site` (or `user`'s phone there): the changes that heal it and what it
/// hit; `None` if there was nothing to hit (no leader answering, no chunk yet).
async fn inject(
    cluster: &Cluster,
    kind: FaultKind,
    site: &str,
    user: &str,
    rng: &mut Rng,
) -> Result<Option<(Vec<Change>, String)>> {
    let machine = cluster.machine(site)?;
    let others =
        |prefix: &str| -> Vec<&Machine> { cluster.named(prefix).into_iter().filter(|m| m.name != site).collect() };
    Ok(Some(match kind {
        FaultKind::KillSite => {
            let Some(pid) = cluster.site_pid(site) else { return Ok(None) };
            faults::signal(pid, libc::SIGKILL);
            (Vec::new(), site.to_owned())
        }
        FaultKind::PauseSite => {
            let Some(pid) = cluster.site_pid(site) else { return Ok(None) };
            faults::signal(pid, libc::SIGSTOP);
            (vec![Change::Stopped(pid)], site.to_owned())
        }
        FaultKind::IsolateSite => (vec![faults::link_down(&machine.link)?], site.to_owned()),
        FaultKind::SiteFromControl => (faults::partition(machine, &others("control"))?, format!("{site} | control")),
        FaultKind::SiteFromSites => (faults::partition(machine, &others("site-"))?, format!("{site} | sites")),
        FaultKind::SiteFromTerminals => {
            (faults::partition_from_host(machine, cluster.host_ip())?, format!("{site} | terminals"))
        }
        FaultKind::EtcdMinority | FaultKind::EtcdNoQuorum => {
            let members = cluster.named("etcd-");
            let cut = if kind == FaultKind::EtcdMinority { 1 } else { 2 };
            let first = rng.below(members.len());
            let mut changes = Vec::new();
            let mut names = Vec::new();
            for i in 0..cut {
                let m = members[(first + i) % members.len()];
                changes.push(faults::link_down(&m.link)?);
                names.push(m.name.clone());
            }
            (changes, names.join(","))
        }
        FaultKind::KillLeader => {
            let Some(leader) = cluster.leader().await else { return Ok(None) };
            let Some(pid) = cluster.control_pid(&leader) else { return Ok(None) };
            faults::signal(pid, libc::SIGKILL);
            (Vec::new(), leader)
        }
        FaultKind::DiskFull => (vec![faults::fill_disk(&cluster.dir.join(site))?], site.to_owned()),
        FaultKind::CorruptChunk => {
            // A checkpoint first, so the site's store holds the user's chunks; then one of its chunks damaged.
            let Some((now_at, url)) = cluster.placement(user).await.filter(|(s, _)| s == site) else {
                return Ok(None);
            };
            let caller = cluster.site_caller(&now_at)?;
            let taken = caller.post_json(&format!("{url}/v1/phones/{user}/checkpoints"), &json!({})).await;
            if !matches!(taken, Ok((200, _))) {
                return Ok(None);
            }
            let Some(chunk) = faults::corrupt_chunk(&cluster.dir.join(site), rng.next())? else { return Ok(None) };
            (Vec::new(), format!("{site}: {}", chunk.display()))
        }
    }))
}

/// Undoes every fault that could be left: links up, blackholes gone, processes continued, fillers removed.
fn heal_all(cluster: &Cluster) {
    for m in &cluster.machines {
        let _ = Change::LinkDown(m.link.clone()).heal();
        for other in &cluster.machines {
            let _ = Change::Blackhole { netns: Some(m.netns.clone()), ip: other.ip }.heal();
        }
        let _ = Change::Blackhole { netns: Some(m.netns.clone()), ip: cluster.host_ip() }.heal();
        let _ = Change::Blackhole { netns: None, ip: m.ip }.heal();
    }
    for (id, _, _) in crate::services::DEMO_SITES {
        if let Some(pid) = cluster.site_pid(id) {
            faults::signal(pid, libc::SIGCONT);
        }
        let _ = std::fs::remove_file(cluster.dir.join(id).join("nemesis-filler"));
    }
}

async fn wait_for_standbys(cluster: &Cluster, users: &[String]) -> Result<()> {
    let by = Instant::now() + Duration::from_secs(60);
    for user in users {
        loop {
            if let Some((site, url)) = cluster.placement(user).await
                && let Some(phones) = cluster.phones_on(&site, &url).await
                && phones.iter().any(|p| p["user"] == user.as_str() && p["phone"]["standby"].is_string())
            {
                break;
            }
            if Instant::now() > by {
                bail!("{user}'s phone had no standby copy within a minute of starting");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// What was found about `typist`'s phone at the end.
async fn final_state(cluster: &Cluster, typist: &Typist) -> checker::Final {
    let user = &typist.user;
    let stats = typist.terminal.stats();
    let mut end = checker::Final { pending_inputs: stats.pending_inputs, ..checker::Final::default() };
    let Some((site, url)) = cluster.placement(user).await else { return end };
    if stats.connected && stats.url == vmi_control_api::ws_url(&url) {
        end.terminal_on = Some(site.clone());
    }
    if cluster.running_on(&site, &url).await.is_some_and(|users| users.contains(user)) {
        end.running_on = Some(site.clone());
    }
    // A read can meet the phone between two states (waking, or moved by the placer since): it is asked again, on
    // the site the placement names then, for a while; what stopped the last try is kept for the report.
    let by = Instant::now() + NOTES_READ_WITHIN;
    let (mut at, mut at_url) = (site.clone(), url);
    loop {
        match read_notes(cluster, &at, &at_url, user).await {
            Ok(text) => {
                end.notes = Some(text);
                end.notes_unread = None;
                break;
            }
            Err(why) => end.notes_unread = Some(format!("{at}: {why}")),
        }
        if Instant::now() > by {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some((now_at, now_url)) = cluster.placement(user).await {
            (at, at_url) = (now_at, now_url);
        }
    }
    end.placed_on = Some(site);
    end
}

/// How long the final read of a phone's notes is tried again.
const NOTES_READ_WITHIN: Duration = Duration::from_secs(10);

async fn notes(cluster: &Cluster, site: &str, url: &str, user: &str) -> Option<String> {
    read_notes(cluster, site, url, user).await.ok()
}

/// The phone's notes as its site answers them, or why not.
async fn read_notes(cluster: &Cluster, site: &str, url: &str, user: &str) -> Result<String, String> {
    let caller = cluster.site_caller(site).map_err(|e| e.to_string())?;
    match caller.get_bytes(&format!("{url}/v1/phones/{user}/kv/notes.text")).await {
        Ok((200, body)) => String::from_utf8(body).map_err(|_| "the notes are not UTF-8".to_owned()),
        Ok((status, body)) => {
            Err(format!("{status} {}", String::from_utf8_lossy(&body).chars().take(200).collect::<String>()))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Moves `user`'s phone to `site` (where a chunk was corrupted), restores its oldest checkpoint there and then a
/// new one taken first: the notes must come back as `expected`.
async fn restore_where_corrupted(cluster: &Cluster, user: &str, site: &str, expected: Option<&str>) -> Value {
    let outcome = async {
        let (owner, owner_url) = cluster.placement(user).await.context("no placement")?;
        if owner != site {
            let caller = cluster.site_caller(&owner)?;
            let (status, body) =
                caller.post_json(&format!("{owner_url}/v1/phones/{user}/migrate"), &json!({ "to": site })).await?;
            if status != 200 {
                bail!("migrating to {site}: {status} {body}");
            }
        }
        let (_, url) = cluster.placement(user).await.context("no placement")?;
        let caller = cluster.site_caller(site)?;
        let (status, body) = caller.post_json(&format!("{url}/v1/phones/{user}/checkpoints"), &json!({})).await?;
        if status != 200 {
            bail!("checkpoint: {status} {body}");
        }
        let newest: Value = serde_json::from_str(&body)?;
        let newest = newest["checkpoint"]["id"].as_str().context("the new checkpoint's id")?.to_owned();
        // The oldest checkpoint held here that a copy elsewhere can repair: one damaged chunk is one fault, and
        // a checkpoint whose copy never got out (copies fail while sites are cut off) has nothing to repair from.
        let catalogue = cluster.control.checkpoints(user).await?;
        let here = catalogue.iter().filter(|c| c.sites.iter().any(|s| s == site));
        let uncopied = here.clone().filter(|c| c.sites.len() < 2).count();
        let oldest = here.filter(|c| c.sites.len() >= 2).min_by_key(|c| c.entry.at_ms).map(|c| c.entry.id.clone());
        let Some(oldest) = oldest else {
            // Nothing here has a copy to repair from (every copy failed while sites were cut off): a second fault
            // on the same data, not a loss this run can judge.
            return Ok::<_, anyhow::Error>(None);
        };
        for id in [&oldest, &newest] {
            let (status, body) =
                caller.post_json(&format!("{url}/v1/phones/{user}/checkpoints/restore"), &json!({ "id": id })).await?;
            if status != 200 {
                bail!("restoring {id}: {status} {body}");
            }
        }
        let now = notes(cluster, site, &url, user).await;
        if now.as_deref() != expected {
            bail!(
                "after the restores the notes differ from before ({} vs {} characters)",
                now.map_or(0, |n| n.chars().count()),
                expected.map_or(0, |n| n.chars().count())
            );
        }
        Ok(Some(uncopied))
    }
    .await;
    match outcome {
        Ok(Some(uncopied)) => json!({ "user": user, "site": site, "ok": true, "uncopied_checkpoints": uncopied }),
        Ok(None) => {
            json!({ "user": user, "site": site, "ok": null, "skipped": "no checkpoint here has a copy elsewhere" })
        }
        Err(e) => json!({ "user": user, "site": site, "ok": false, "error": format!("{e:#}") }),
    }
}

/// etcd's history of each user's placement (read before the cluster stops).
async fn placement_histories(
    cluster: &Cluster,
    users: &[String],
) -> Result<BTreeMap<String, Vec<(i64, vmi_control_api::model::Placement)>>> {
    let (endpoints, users) = (cluster.etcd.clone(), users.to_vec());
    let tls = crate::services::etcd_tls_in(&cluster.dir, &endpoints, "nemesis")?;
    tokio::task::spawn_blocking(move || {
        let store = vmi_control::EtcdStore::connect_with(&endpoints, vmi_control::DEFAULT_ETCD_PREFIX, tls)?;
        let mut histories = BTreeMap::new();
        for user in users {
            histories.insert(user.clone(), store.placement_history(&user)?);
        }
        Ok::<_, anyhow::Error>(histories)
    })
    .await?
}
