//! `vmi bench failover`: the site running a phone is killed (SIGKILL) or cut off (SIGSTOP: its sockets stay open,
//! it does nothing) while a terminal types, again and again; how long until the phone answers input on another
//! site, whether any input was lost, and whether two sites ever applied input for the phone at once.
//!
//! The control service runs in this process (placer and failover every second, as `vmi control`); three sites run
//! as `vmi site` processes of this binary, close together so each is the others' nearest standby. After each fault
//! the faulted site is repaired (started again after a kill, continued after a stop) before the next one, which
//! hits whichever site runs the phone then.
//!
//! With `--cluster` the control plane is two `vmi control` replicas on a 3-member etcd cluster (loopback
//! addresses), and every fifth fault also kills the leading replica at the same moment (the failover then waits
//! for the other to lead: `leader_failover_ms`); after the faults, the phone is migrated a few times and the
//! replicas' etcd transactions per migration are counted (heartbeats left out).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use vmi_control_api::{Caller, ControlClient};
use vmi_protocol::{Input, TouchPhase};
use vmi_terminal::{Terminal, TerminalEvent, TerminalOptions};

use crate::bench::{layout, percentile};

const SITES: [&str; 3] = ["site-x", "site-y", "site-z"];
/// One keystroke this often, all run long.
const TYPE_EVERY: Duration = Duration::from_millis(50);
/// Migrations made to count etcd writes (`--cluster`).
const MIGRATIONS: usize = 5;
/// Most time one failover may take before the run gives up.
const FAILOVER_WITHIN: Duration = Duration::from_secs(60);

/// One `vmi site` process, killed when dropped.
struct SiteProcess {
    id: &'static str,
    child: Child,
}

impl SiteProcess {
    fn start(id: &'static str, dir: &Path, control_url: &str, lat: f64) -> Result<SiteProcess> {
        let exe = std::env::current_exe().context("this binary")?;
        let log = std::fs::File::create(dir.join(format!("{id}.log")))?;
        let child = Command::new(exe)
            .args(["site", "--id", id, "--listen", "127.0.0.1:0", "--control", control_url, "--lon", "24.94"])
            .args(["--lat", &lat.to_string(), "--checkpoint-every", "off", "--data-dir"])
            .arg(dir.join(id))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {id}"))?;
        Ok(SiteProcess { id, child })
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid, with a plain signal number.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
    }
}

impl Drop for SiteProcess {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the terminals saw, with the time of each: the ground truth of the run.
#[derive(Default)]
struct Seen {
    /// Input number → when it was sent.
    sent: BTreeMap<u64, Instant>,
    /// When an input was sent, and the time from then to the durable acknowledgement covering it, ms.
    durable_ms: Vec<(Instant, f64)>,
    /// From each fault to its repair: inputs sent then wait for the failover, not for a record.
    faulted: Vec<(Instant, Instant)>,
    durable_upto: u64,
    /// When the main terminal was last acknowledged an input, and by which site URL.
    acks: Vec<(Instant, String)>,
    /// Acknowledgements the probe terminal got: when, from which URL.
    probe_acks: Vec<(Instant, String)>,
}

/// Runs `faults` faults (alternately SIGKILL and SIGSTOP) and reports the figures; `cluster`: on control replicas
/// over etcd.
pub async fn failover(faults: usize, cluster: bool) -> Result<Value> {
    let dir = std::env::temp_dir().join(format!("vmi-bench-failover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run(faults, cluster, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The control plane of a run: one service in this process, or replicas over etcd.
enum ControlPlane {
    InProcess { stop: tokio::sync::oneshot::Sender<()>, server: tokio::task::JoinHandle<std::io::Result<()>> },
    Replicated { replicas: Vec<Replica>, _etcd: vmi_cluster::EtcdMembers },
}

/// One `vmi control --etcd` process of a run.
struct Replica {
    name: String,
    listen: String,
    url: String,
    process: Option<vmi_cluster::Process>,
}

impl Replica {
    /// Starts `vmi control` as replica `name` on `listen` and waits until it announces its URL.
    fn start(name: &str, listen: &str, etcd: &str, dir: &Path) -> Result<Replica> {
        use std::io::BufRead;
        let exe = std::env::current_exe().context("this binary")?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let mut command = Command::new(exe);
        command
            .args(["control", "--listen", listen, "--etcd", etcd, "--replica", name, "--state-dir"])
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log);
        let mut process = vmi_cluster::Process::spawn(&mut command)?;
        let stdout = process.take_stdout().context("the replica's stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let event = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.contains("\"listening\""))
            .with_context(|| format!("replica {name} exited before listening (see {name}.log)"))?;
        std::thread::spawn(move || for _ in lines {});
        let v: Value = serde_json::from_str(&event)?;
        let url = v["url"].as_str().context("the replica's url")?.to_owned();
        let listen = v["listen"].as_str().unwrap_or(listen).to_owned();
        Ok(Replica { name: name.to_owned(), listen, url, process: Some(process) })
    }
}

/// `(leading, transactions, heartbeats)` as replica `url` says, if it answers.
async fn replica_status(operator: &Caller, url: &str) -> Option<(bool, u64, u64)> {
    let (status, body) = operator.get_bytes(&format!("{url}/v1/replica")).await.ok()?;
    let v: Value = serde_json::from_slice(&body).ok().filter(|_| status == 200)?;
    let writes = &v["writes"];
    Some((
        v["leading"].as_bool()?,
        writes["transactions"].as_u64().unwrap_or(0),
        writes["heartbeats"].as_u64().unwrap_or(0),
    ))
}

/// Three etcd members on loopback addresses of their own (127.a.b.1..3 with etcd's ports free).
pub(crate) fn loopback_etcd(dir: &Path) -> Result<vmi_cluster::EtcdMembers> {
    let a = u8::try_from(std::process::id() % 200).unwrap_or(0) + 20;
    for b in 200..=u8::MAX {
        let ip = |i: u8| std::net::Ipv4Addr::new(127, a, b, i);
        if std::net::TcpListener::bind((ip(1), vmi_cluster::CLIENT_PORT)).is_ok() {
            let at = (1..=3).map(|i| (ip(i), None)).collect();
            return Ok(vmi_cluster::EtcdMembers::start("bench", &dir.join("etcd"), at)?);
        }
    }
    bail!("no free loopback address for etcd")
}

async fn run(faults: usize, cluster: bool, dir: &Path) -> Result<Value> {
    let (control_url, authority, operator_token, mut plane) = if cluster {
        let etcd = loopback_etcd(dir)?;
        let endpoints = etcd.endpoints().join(",");
        // One after the other: the first makes the CA and the operator credential in `dir`, the second uses them.
        let mut replicas = Vec::new();
        for name in ["r1", "r2"] {
            let (dir, endpoints) = (dir.to_path_buf(), endpoints.clone());
            replicas.push(
                tokio::task::spawn_blocking(move || Replica::start(name, "127.0.0.1:0", &endpoints, &dir)).await??,
            );
        }
        let authority = Arc::new(vmi_trust::Authority::load_or_create(&dir.join("pki"))?);
        let credential: Value = serde_json::from_slice(&std::fs::read(dir.join("operator.json"))?)?;
        let token = credential["token"].as_str().context("the operator's token")?.to_owned();
        let url = replicas.iter().map(|r| r.url.clone()).collect::<Vec<_>>().join(",");
        (url, authority, token, ControlPlane::Replicated { replicas, _etcd: etcd })
    } else {
        // The control service, in this process, with TLS and its placer (which also fails phones over).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let control_url = format!("https://{}", listener.local_addr()?);
        let store = Arc::new(vmi_control::SqliteStore::open(dir.join("control.db"))?);
        let authority = Arc::new(vmi_trust::Authority::create(vmi_trust::AUTHORITY_NAME)?);
        let trust = vmi_control::ServiceTrust::new(authority.clone(), &["127.0.0.1"])?;
        let operator_token = vmi_control::Store::create_credential(
            store.as_ref(),
            &vmi_control_api::auth::Principal::Operator { name: "bench".into() },
        )?
        .token;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = vmi_control::ServeOptions { trust: Some(trust), ..vmi_control::ServeOptions::default() };
        let server = tokio::spawn(vmi_control::serve_with(listener, store, options, async move {
            let _ = stopped.await;
        }));
        (control_url, authority, operator_token, ControlPlane::InProcess { stop, server })
    };
    let operator = Caller::trusting(authority.cert_pem())?.with_bearer(&operator_token);
    let control = ControlClient::new(&control_url, &operator)?;
    let mut leader_ms: Vec<f64> = Vec::new();

    let mut sites: BTreeMap<&'static str, SiteProcess> = BTreeMap::new();
    for (i, id) in SITES.into_iter().enumerate() {
        let credentials = authority.credentials_for(&vmi_trust::site_name(id)?, &["127.0.0.1"])?;
        credentials.save(&dir.join(id).join("tls"))?;
        sites.insert(id, SiteProcess::start(id, dir, &control_url, 60.17 + i as f64 * 0.01)?);
    }
    let urls = leased_sites(&control, SITES.len()).await?;
    control.create_user("bench").await?;
    control.set_placement("bench", "site-x").await?;
    let site_x = operator.clone().expecting(&vmi_trust::site_name("site-x")?);
    let (status, body) = site_x.post_json(&format!("{}/v1/phones", urls["site-x"]), &json!({"user": "bench"})).await?;
    if status != 201 {
        bail!("cannot create the phone: {status} {body}");
    }
    let token = control.create_device("bench", "bench terminal").await?.token;
    let probe_token = control.create_device("bench", "probe").await?.token;

    let terminal_caller = Caller::trusting(authority.cert_pem())?;
    let locator = ControlClient::new(&control_url, &terminal_caller)?;
    let options = TerminalOptions {
        caller: terminal_caller.clone(),
        locate: Some(vmi_terminal::cli::locate_with(locator.clone(), token.clone())),
        ..TerminalOptions::default()
    };
    let ws = vmi_control_api::ws_url(&urls["site-x"]);
    let mut terminal = Terminal::connect(&ws, &token, options).await.context("the terminal connects")?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let events = terminal.take_events().context("the terminal's events")?;
    let terminal = Arc::new(terminal);
    let reader = tokio::spawn(read_events(events, terminal.clone(), seen.clone()));
    // Open the notes and type a letter every TYPE_EVERY, all run long.
    let (x, y) = (layout::NOTES.0 as u16, layout::NOTES.1 as u16);
    for phase in [TouchPhase::Down, TouchPhase::Up] {
        let seq = terminal.send_input(Input::Touch { phase, x, y, pointer: 0 })?;
        seen.lock().unwrap_or_else(|p| p.into_inner()).sent.insert(seq, Instant::now());
    }
    let typed = Arc::new(Mutex::new(String::new()));
    let typing = tokio::spawn(type_letters(terminal.clone(), typed.clone(), seen.clone()));

    let mut failover_ms = Vec::new();
    let mut lag_ms = Vec::new();
    let mut double_owner = 0usize;
    let mut by_kind: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for fault in 0..faults {
        let (owner, _) = placement(&control).await?;
        let owner: &'static str = SITES.into_iter().find(|s| *s == owner).context("the phone runs on a bench site")?;
        // A standby copy in place, and a probe device typing no-op keys straight at the owner.
        let ready_by = Instant::now() + FAILOVER_WITHIN;
        loop {
            let status = phone_status(&operator, &urls_now(&control).await?, owner).await;
            if let Some(status) = status.filter(|s| s["standby"].is_string()) {
                if let Some(lag) = status["standby_lag_ms"].as_f64() {
                    lag_ms.push(lag);
                }
                break;
            }
            if Instant::now() > ready_by {
                bail!("no standby copy of the phone on {owner} within {FAILOVER_WITHIN:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let owner_ws = vmi_control_api::ws_url(&urls_now(&control).await?[owner]);
        let probe = probe(&owner_ws, &probe_token, &terminal_caller, seen.clone()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;

        let kind = if fault % 2 == 0 { "kill" } else { "stop" };
        let acked_before = seen.lock().unwrap_or_else(|p| p.into_inner()).acks.len();
        let at = Instant::now();
        let site = sites.get_mut(owner).context("the owner's process")?;
        site.signal(if kind == "kill" { libc::SIGKILL } else { libc::SIGSTOP });
        // Every fifth fault, the leading control replica dies at the same moment: the other must take over the
        // failover loop first.
        let leader_killed = match &mut plane {
            ControlPlane::Replicated { replicas, .. } if fault % 5 == 4 => {
                let mut leading = None;
                for (i, r) in replicas.iter().enumerate() {
                    if replica_status(&operator, &r.url).await.is_some_and(|(l, _, _)| l) {
                        leading = Some(i);
                    }
                }
                leading.inspect(|&i| drop(replicas[i].process.take()))
            }
            _ => None,
        };
        if let (Some(dead), ControlPlane::Replicated { replicas, .. }) = (leader_killed, &plane) {
            // How long until another replica leads (measured beside the failover, which needs it).
            let others: Vec<String> =
                replicas.iter().enumerate().filter(|(i, _)| *i != dead).map(|(_, r)| r.url.clone()).collect();
            let (operator, at) = (operator.clone(), at);
            let took = tokio::spawn(async move {
                loop {
                    for url in &others {
                        if replica_status(&operator, url).await.is_some_and(|(l, _, _)| l) {
                            return at.elapsed();
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            let took = tokio::time::timeout(FAILOVER_WITHIN, took).await.context("no replica took the lead")??;
            leader_ms.push(took.as_secs_f64() * 1000.0);
        }
        // The phone answers on another site: the first acknowledgement from another URL after the fault.
        let answered = loop {
            if at.elapsed() > FAILOVER_WITHIN {
                bail!("fault {fault} ({kind} of {owner}): no answer from another site within {FAILOVER_WITHIN:?}");
            }
            let moved = {
                let s = seen.lock().unwrap_or_else(|p| p.into_inner());
                s.acks.iter().skip(acked_before).find(|(t, url)| *t > at && *url != owner_ws).map(|(t, _)| *t)
            };
            if let Some(t) = moved {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let ms = answered.duration_since(at).as_secs_f64() * 1000.0;
        failover_ms.push(ms);
        by_kind.entry(kind).or_default().push(ms);

        // Repair the faulted site, then look at what the probe heard from it after the new owner answered.
        let site = sites.get_mut(owner).context("the owner's process")?;
        if kind == "kill" {
            let _ = site.child.wait();
            let lat = 60.17 + SITES.iter().position(|s| *s == owner).unwrap_or(0) as f64 * 0.01;
            *site = SiteProcess::start(site.id, dir, &control_url, lat)?;
        } else {
            site.signal(libc::SIGCONT);
        }
        if let ControlPlane::Replicated { replicas, _etcd: etcd } = &mut plane {
            let endpoints = etcd.endpoints().join(",");
            for r in replicas.iter_mut().filter(|r| r.process.is_none()) {
                let (name, listen, dir, endpoints) =
                    (r.name.clone(), r.listen.clone(), dir.to_path_buf(), endpoints.clone());
                *r = tokio::task::spawn_blocking(move || Replica::start(&name, &listen, &endpoints, &dir)).await??;
            }
        }
        leased_sites(&control, SITES.len()).await?;
        seen.lock().unwrap_or_else(|p| p.into_inner()).faulted.push((at, Instant::now()));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drop(probe);
        double_owner += seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .probe_acks
            .drain(..)
            .filter(|(t, url)| *t > answered && *url == owner_ws)
            .count();
        tracing::info!(fault, kind, owner, ms, "failover");
    }

    typing.abort();
    // Every input durable, then the phone's notes against what was typed.
    let settle_by = Instant::now() + FAILOVER_WITHIN;
    while terminal.stats().pending_inputs > 0 && Instant::now() < settle_by {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let typed = typed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (owner, _) = placement(&control).await?;
    let urls = urls_now(&control).await?;
    let site = operator.clone().expecting(&vmi_trust::site_name(&owner)?);
    let (_, notes) = site.get_bytes(&format!("{}/v1/phones/bench/kv/notes.text", urls[owner.as_str()])).await?;
    let notes = String::from_utf8_lossy(&notes).into_owned();
    let inputs_lost = lost(&typed, &notes);
    reader.abort();
    // etcd transactions per migration: the phone moved a few times while nothing else happens but heartbeats.
    let mut per_migration = None;
    if let ControlPlane::Replicated { replicas, .. } = &plane {
        let writes = async || {
            let mut sum = (0u64, 0u64);
            for r in replicas.iter() {
                if let Some((_, t, h)) = replica_status(&operator, &r.url).await {
                    sum = (sum.0 + t, sum.1 + h);
                }
            }
            sum
        };
        let before = writes().await;
        for _ in 0..MIGRATIONS {
            let (owner, _) = placement(&control).await?;
            let urls = urls_now(&control).await?;
            let to = SITES.into_iter().find(|s| *s != owner).context("another site")?;
            let (status, body) = operator
                .clone()
                .expecting(&vmi_trust::site_name(&owner)?)
                .post_json(&format!("{}/v1/phones/bench/migrate", urls[owner.as_str()]), &json!({ "to": to }))
                .await?;
            if status != 200 {
                bail!("migration from {owner} to {to}: {status} {body}");
            }
        }
        let after = writes().await;
        let transactions = (after.0 - before.0).saturating_sub(after.1 - before.1);
        per_migration = Some(transactions as f64 / MIGRATIONS as f64);
    }
    drop(sites);
    if let ControlPlane::InProcess { stop, server } = plane {
        let _ = stop.send(());
        let _ = server.await;
    }

    let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    // Steady state: inputs sent while no fault was being handled.
    let quiet = |t: &Instant| !seen.faulted.iter().any(|(from, to)| t >= from && t <= to);
    let mut durable: Vec<f64> = seen.durable_ms.iter().filter(|(t, _)| quiet(t)).map(|(_, ms)| *ms).collect();
    let mut kill = by_kind.remove("kill").unwrap_or_default();
    let mut stop_ms = by_kind.remove("stop").unwrap_or_default();
    let control_plane = if cluster {
        "2 `vmi control` replicas on a 3-member etcd cluster (loopback addresses), the leading one also killed at \
         every fifth fault"
    } else {
        "control service in this process (SQLite)"
    };
    Ok(json!({
        "bench": "failover",
        "cluster": cluster,
        "leader_failover_ms_p50": (!leader_ms.is_empty()).then(|| percentile(&mut leader_ms.clone(), 50.0)),
        "leader_failover_ms_max": leader_ms.iter().copied().reduce(f64::max),
        "leader_kills": leader_ms.len(),
        "etcd_writes_per_migration": per_migration,
        "etcd_writes_note": cluster.then_some("etcd transactions the control replicas committed per migration (the \
            destination's compare-and-set, the migration log, the standby it names), heartbeats left out"),
        "conditions": format!(
            "{control_plane} (placer and failover every 1 s), 3 `vmi site` processes on loopback \
             with TLS; lease {} ms (sites stop {} ms sooner); records every {} ms; a terminal types a letter every \
             {} ms; faults alternate SIGKILL (site started again afterwards) and SIGSTOP (continued afterwards)",
            vmi_control_api::model::LEASE_MS,
            vmi_control_api::model::LEASE_MARGIN_MS,
            vmi_site::phone::DURABLE_EVERY.as_millis(),
            TYPE_EVERY.as_millis()
        ),
        "faults": failover_ms.len(),
        "failover_ms_p50": percentile(&mut failover_ms.clone(), 50.0),
        "failover_ms_p99": percentile(&mut failover_ms.clone(), 99.0),
        "failover_ms_max": failover_ms.iter().copied().fold(0.0, f64::max),
        "kill_failover_ms_p50": percentile(&mut kill, 50.0),
        "stop_failover_ms_p50": percentile(&mut stop_ms, 50.0),
        "typed": typed.chars().count(),
        "inputs_lost": inputs_lost,
        "double_owner": double_owner,
        "standby_lag_ms_p50": percentile(&mut lag_ms.clone(), 50.0),
        "standby_lag_ms_p99": percentile(&mut lag_ms, 99.0),
        "durable_ack_note": "inputs sent while no fault was being handled (those sent during one wait for the failover)",
        "durable_ack_ms_p50": percentile(&mut durable.clone(), 50.0),
        "durable_ack_ms_p99": percentile(&mut durable, 99.0),
    }))
}

/// Characters typed that the phone does not hold in order: 0 when the notes are exactly what was typed.
fn lost(typed: &str, notes: &str) -> usize {
    if typed == notes {
        return 0;
    }
    // The longest prefix in common; what follows it is counted as lost (or doubled).
    let common = typed.chars().zip(notes.chars()).take_while(|(a, b)| a == b).count();
    typed.chars().count().saturating_sub(common).max(1)
}

async fn read_events(
    mut events: tokio::sync::mpsc::Receiver<TerminalEvent>,
    terminal: Arc<Terminal>,
    seen: Arc<Mutex<Seen>>,
) {
    while let Some(event) = events.recv().await {
        let now = Instant::now();
        let url = terminal.stats().url;
        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            TerminalEvent::InputAcked { .. } => s.acks.push((now, url)),
            TerminalEvent::InputDurable { seq } if seq > s.durable_upto => {
                let from = s.durable_upto;
                let covered: Vec<(Instant, f64)> = s
                    .sent
                    .range(from + 1..=seq)
                    .map(|(_, at)| (*at, now.duration_since(*at).as_secs_f64() * 1000.0))
                    .collect();
                s.durable_ms.extend(covered);
                s.durable_upto = s.durable_upto.max(seq);
                let upto = s.durable_upto;
                s.sent = s.sent.split_off(&(upto + 1));
            }
            _ => {}
        }
    }
}

async fn type_letters(terminal: Arc<Terminal>, typed: Arc<Mutex<String>>, seen: Arc<Mutex<Seen>>) {
    let mut tick = tokio::time::interval(TYPE_EVERY);
    for i in 0u64.. {
        tick.tick().await;
        let c = char::from(b'a' + (i % 26) as u8);
        if let Ok(seq) = terminal.send_input(Input::Key { code: 0, text: Some(c) }) {
            seen.lock().unwrap_or_else(|p| p.into_inner()).sent.insert(seq, Instant::now());
            typed.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        }
    }
}

/// A second device sending no-op keys straight to `ws` (no relocation): an acknowledgement from the old owner after
/// the new one answered would be two sites applying input at once.
async fn probe(ws: &str, token: &str, caller: &Caller, seen: Arc<Mutex<Seen>>) -> Option<tokio::task::JoinHandle<()>> {
    let options = TerminalOptions { caller: caller.clone(), reconnect_attempts: 1, ..TerminalOptions::default() };
    let mut terminal = Terminal::connect(ws, token, options).await.ok()?;
    let mut events = terminal.take_events()?;
    let url = ws.to_owned();
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let _ = terminal.send_input(Input::Key { code: 0, text: None });
                }
                event = events.recv() => match event {
                    Some(TerminalEvent::InputAcked { .. }) => {
                        let at = terminal.stats().url;
                        if at == url {
                            seen.lock().unwrap_or_else(|p| p.into_inner()).probe_acks.push((Instant::now(), at));
                        }
                    }
                    Some(_) => {}
                    None => return,
                },
            }
        }
    }))
}

/// Waits until `n` sites hold their lease; their URLs by id.
async fn leased_sites(control: &ControlClient, n: usize) -> Result<BTreeMap<String, String>> {
    let by = Instant::now() + FAILOVER_WITHIN;
    loop {
        let sites = control.list_sites().await?;
        if sites.iter().filter(|s| s.leased).count() >= n {
            return Ok(sites.into_iter().map(|s| (s.site.id, s.site.url)).collect());
        }
        if Instant::now() > by {
            bail!("{n} sites did not hold their lease within {FAILOVER_WITHIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn urls_now(control: &ControlClient) -> Result<BTreeMap<String, String>> {
    Ok(control.list_sites().await?.into_iter().map(|s| (s.site.id, s.site.url)).collect())
}

async fn placement(control: &ControlClient) -> Result<(String, u64)> {
    let p = control.placement("bench").await?;
    Ok((p.site, p.epoch))
}

/// The phone's entry in site `id`'s listing, if it runs there.
async fn phone_status(operator: &Caller, urls: &BTreeMap<String, String>, id: &str) -> Option<Value> {
    let caller = operator.clone().expecting(&vmi_trust::site_name(id).ok()?);
    let (status, body) = caller.get_bytes(&format!("{}/v1/phones", urls.get(id)?)).await.ok()?;
    if status != 200 {
        return None;
    }
    let listing: Value = serde_json::from_slice(&body).ok()?;
    listing["phones"].as_array()?.iter().find(|p| p["user"] == "bench").map(|p| p["phone"].clone())
}
