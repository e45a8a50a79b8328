//! `vmi control`, `vmi site`, `vmi up` and `vmi mail`: the long-running services and the
//! commands around them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use vmi_control::placement::PolicyParams;
use vmi_control_api::ControlClient;

/// `vmi control` arguments.
#[derive(Args)]
pub struct ControlArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7800")]
    listen: SocketAddr,
    /// SQLite database file (the single-machine store; its directory also holds the CA and operator credential).
    #[arg(long, default_value = "vmi-data/control.db")]
    db: PathBuf,
    /// Keep the control plane in this etcd cluster instead of SQLite (comma-separated client URLs): any number of
    /// replicas then serve the same state, and one, elected through etcd, runs the placer.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    etcd: Vec<String>,
    /// How long etcd keeps its history, in seconds: the leading replica compacts revisions older than this (every
    /// write adds one, the terminal reports' batches above all). 0 keeps everything (a run whose history the fault
    /// checker reads back: `vmi up --history`). Compaction is cluster-wide.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    etcd_keep_history: u64,
    /// The prefix of every key this control plane keeps in etcd.
    #[arg(long, default_value = vmi_control::DEFAULT_ETCD_PREFIX, requires = "etcd")]
    etcd_prefix: String,
    /// This replica's name in the leader election (default: the listening address).
    #[arg(long, requires = "etcd")]
    replica: Option<String>,
    /// The CA that signed the etcd members' certificates, for `https://` members (default: the provider CA, in
    /// pki/ under --state-dir).
    #[arg(long, value_name = "FILE", requires = "etcd")]
    etcd_ca: Option<PathBuf>,
    /// The client certificate to present to `https://` etcd members (default: one the provider CA issues to this
    /// replica at start; with --etcd-key).
    #[arg(long, value_name = "FILE", requires_all = ["etcd", "etcd_key"])]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (with --etcd-cert).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// Where the provider CA (pki/), ca.pem and operator.json live (default: --db's directory). Replicas of one
    /// control plane share the CA: copy pki/ to each, or point them at one directory on one machine.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// How long a better site must stay better before the placer moves a phone, ms.
    #[arg(long, default_value_t = PolicyParams::default().dwell_ms)]
    placer_dwell_ms: u64,
    /// The placer's distance estimate: round trip added per 100 km, ms.
    #[arg(long, default_value_t = PolicyParams::default().rtt_ms_per_100km)]
    rtt_ms_per_100km: f64,
    /// Record every placement move this replica makes (invocation, completion, outcome) to FILE, one JSON object a
    /// line, for the fault checker (`vmi nemesis`).
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
}

/// `vmi site` arguments: run a site, or (with a subcommand) act on one.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SiteArgs {
    #[command(subcommand)]
    command: Option<SiteCmd>,
    /// Site id.
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where the site keeps its phones.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Control service URL.
    #[arg(long, default_value = "http://127.0.0.1:7800")]
    control: String,
    /// Latitude.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    lat: f64,
    /// Longitude.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    lon: f64,
    /// Most phones this site hosts.
    #[arg(long, default_value_t = 1000)]
    pub(crate) capacity: u32,
    /// The URL terminals and other sites reach this site at, when not the listening
    /// address (a proxy in front of it).
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// How often every phone is checkpointed (`30m`, `1h`, …; `off`: only on demand).
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    checkpoint_every: String,
    /// How long a phone with no awake terminal and no timer due stays resident before it hibernates (`30s`, `5m`,
    /// …; `off`: never). A hibernated phone gives back its memory; anything that needs it wakes it.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    hibernate_after: String,
    /// Above this many resident phones, idle ones hibernate after a second already (memory pressure).
    #[arg(long, value_name = "N")]
    max_resident: Option<usize>,
    /// A join file (0600; from `vmi up` or an operator) to enroll with at the first start; later starts use the
    /// certificate saved in DATA_DIR/tls.
    #[arg(long, value_name = "FILE")]
    join: Option<PathBuf>,
    /// Record every input applied (with its phone's placement epoch) to FILE, one JSON object a line, for the fault
    /// checker (`vmi nemesis`).
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
}

/// Operations on a site.
#[derive(clap::Subcommand)]
pub enum SiteCmd {
    /// Move every phone off a site (before maintenance) and wait until it has none.
    Drain {
        /// The site.
        site: String,
        /// Control service URL.
        #[arg(long, default_value = "http://127.0.0.1:7800")]
        control: String,
        /// Give up waiting after this many seconds (the site stays draining).
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Return once the site is marked draining, without waiting for its phones to move.
        #[arg(long, conflicts_with = "timeout")]
        no_wait: bool,
    },
    /// Take a drained site back into service.
    Undrain {
        /// The site.
        site: String,
        /// Control service URL.
        #[arg(long, default_value = "http://127.0.0.1:7800")]
        control: String,
    },
    /// Issue a one-time join file (0600, valid a day) with which a new site enrolls: `vmi site --join FILE`.
    JoinToken {
        /// The new site's id.
        site: String,
        /// Where to write it (default: SITE.join).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Control service URL.
        #[arg(long, default_value = "http://127.0.0.1:7800")]
        control: String,
    },
}

/// Asks the control service for a join token for site `id` and writes the join file (0600) to `path`: the token,
/// the control service's URL as the operator credential names it, and the provider CA.
async fn write_join_file(control: &ControlClient, id: &str, path: &std::path::Path) -> Result<()> {
    let operator = crate::credentials::operator()?;
    let token = control.join_token(id).await.with_context(|| format!("a join token for {id}"))?;
    let join = crate::credentials::JoinFile {
        site: id.to_string(),
        token: token.token,
        control: operator.control.clone(),
        ca_pem: operator.ca_pem.clone(),
    };
    crate::credentials::write_secret(path, &join)
}

/// `vmi vm migrate` arguments.
#[derive(Args)]
pub struct MigrateArgs {
    /// Whose phone.
    user: String,
    /// The site to move it to.
    #[arg(long)]
    to: String,
    /// Control service URL.
    #[arg(long, default_value = "http://127.0.0.1:7800")]
    control: String,
}

/// `vmi vm list` arguments.
#[derive(Args)]
pub struct ListArgs {
    /// Control service URL.
    #[arg(long, default_value = "http://127.0.0.1:7800")]
    control: String,
}

/// `vmi vm logs` arguments.
#[derive(Args)]
pub struct LogsArgs {
    /// Whose phone.
    user: String,
    /// Control service URL.
    #[arg(long, default_value = "http://127.0.0.1:7800")]
    control: String,
}

/// `vmi up` arguments.
#[derive(Args)]
pub struct UpArgs {
    /// Where the control service and the sites keep their data.
    #[arg(long, default_value = "vmi-data")]
    data_dir: PathBuf,
    /// Port of the control service; terminals reach the sites on the next three (delay
    /// proxies, with the sites themselves on the three after those). 0: every service on a
    /// port the system picks (see DATA_DIR/up.json for where each one is).
    #[arg(long, default_value_t = 7800)]
    port: u16,
    /// Name of the demo user.
    #[arg(long, default_value = "demo")]
    user: String,
    /// No delay proxies: terminals reach the sites straight (ports PORT+1.. are the sites').
    #[arg(long)]
    no_proxy: bool,
    /// How long a better site must stay better before a phone follows its user, ms.
    #[arg(long, default_value_t = PolicyParams::default().dwell_ms)]
    placer_dwell_ms: u64,
    /// The demo network: round trip added per 100 km, ms, for the delay proxies and the
    /// placer alike. The demo sites are a few km apart, so the default is 100× fibre's 1 ms:
    /// walking across town then costs tens of ms, enough to feel and to move the phone.
    #[arg(long, default_value_t = DEMO_RTT_MS_PER_100KM)]
    rtt_ms_per_100km: f64,
    /// Keep the control plane in this etcd cluster (comma-separated client URLs) instead of SQLite
    /// (docs/CONTROL-PLANE.md).
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    etcd: Vec<String>,
    /// How many control replicas to run on --etcd; one of them, elected through etcd, runs the placer. The first
    /// listens on PORT, the others on PORT+7, PORT+8, ...
    #[arg(long, default_value_t = 1, requires = "etcd", value_parser = clap::value_parser!(u16).range(1..=4))]
    replicas: u16,
    /// Many machines simulated on this one (needs root): 3 etcd members, 2 control replicas and the 3 sites, each
    /// in a network namespace of its own with its own address and a link to a shared bridge, so a partition is a
    /// link taken down. Terminals reach the sites over HTTPS across those links (no delay proxies, no browser
    /// page: the native terminal). docs/CONTROL-PLANE.md.
    #[arg(long, conflicts_with_all = ["etcd", "replicas", "no_proxy"])]
    cluster: bool,
    /// Each control replica and site records its history to DIR/NAME.jsonl (`vmi control --history`, `vmi site
    /// --history`), for the fault checker.
    #[arg(long, value_name = "DIR")]
    history: Option<PathBuf>,
    /// A service that answers no health check for this long is hung: it is killed and started again. Long by
    /// default, so a process stopped on purpose (a debugger, SIGSTOP) is a fault of its own and stays one.
    #[arg(long, value_name = "SECS", default_value_t = crate::supervisor::HUNG_AFTER.as_secs())]
    hung_after_secs: u64,
}

/// The control replicas of `vmi up --cluster`.
const CLUSTER_REPLICAS: usize = 2;
/// The etcd members of `vmi up --cluster`.
const CLUSTER_ETCD_MEMBERS: usize = 3;
/// The port every service of `vmi up --cluster` listens on, each on its own machine's address.
const CLUSTER_PORT: u16 = 7800;

/// The demo network's slope (see `vmi up --rtt-ms-per-100km`).
pub const DEMO_RTT_MS_PER_100KM: f64 = 100.0;

/// `vmi mail send` arguments.
#[derive(Args)]
pub struct MailArgs {
    /// The user whose mailbox gets the mail.
    #[arg(long)]
    to: String,
    /// Subject line.
    #[arg(long)]
    subject: String,
    /// Body text.
    #[arg(long, default_value = "")]
    body: String,
    /// Sender.
    #[arg(long, default_value = "friend@example.com")]
    from: String,
    /// Control service URL.
    #[arg(long, default_value = "http://127.0.0.1:7800")]
    control: String,
}

/// Prints the line that parent processes (and tests) wait for.
pub(crate) fn announce(kind: &str, url: &str, listen: SocketAddr) {
    let event = serde_json::json!({ "event": "listening", "service": kind, "url": url, "listen": listen.to_string() });
    println!("{event}");
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers, only Ctrl-C through tokio's default path.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// How often a site renews its lease. Four times in the 2 s the site may use a lease: an etcd leader change (about
/// a second without writes) then costs no lease.
const SITE_HEARTBEAT: Duration = Duration::from_millis(500);

/// How long `vmi control --etcd` waits for the etcd cluster to answer at start.
const ETCD_WAIT: Duration = Duration::from_secs(30);

/// The provider CA's certificate, written by `vmi control` beside its database for terminals to trust.
pub const CA_FILE: &str = "ca.pem";

/// Runs the control service until SIGINT/SIGTERM.
///
/// At its first start it creates the provider CA (beside the database, in `pki/`) and the first operator
/// credential, written 0600 to `operator.json` beside the database: what the CLI reads (docs/SECURITY.md).
pub async fn control(args: ControlArgs) -> Result<()> {
    let dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => {
            args.db.parent().filter(|d| !d.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), PathBuf::from)
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let replica = args.replica.clone().unwrap_or_else(|| addr.to_string());
    if let Some(path) = &args.history {
        let history = vmi_control_api::history::History::open(path, &replica)
            .with_context(|| format!("opening the history {}", path.display()))?;
        vmi_control::history::record_to(Arc::new(history));
    }
    let authority = Arc::new(vmi_trust::Authority::load_or_create(&dir.join("pki")).context("the provider CA")?);
    let (store, leadership, reports): (Arc<dyn vmi_control::Store>, _, _) = if args.etcd.is_empty() {
        let store =
            vmi_control::SqliteStore::open(&args.db).with_context(|| format!("opening {}", args.db.display()))?;
        (Arc::new(store), vmi_control::Leadership::alone(), vmi_control::Reports::new())
    } else {
        // Connecting blocks (the client has a runtime of its own): off this runtime's workers. A cluster that
        // is starting too (no leader elected yet) is waited for, a while.
        let deadline = std::time::Instant::now() + ETCD_WAIT;
        let tls = etcd_tls_for_control(&args, &authority, &replica)?;
        let store = loop {
            let (endpoints, prefix, tls) = (args.etcd.clone(), args.etcd_prefix.clone(), tls.clone());
            let connected =
                tokio::task::spawn_blocking(move || vmi_control::EtcdStore::connect_with(&endpoints, &prefix, tls));
            match connected.await? {
                // A wrong scheme or file does not mend itself by waiting.
                Err(e @ vmi_control::ControlError::BadRequest(_)) => {
                    return Err(e).with_context(|| format!("connecting to etcd at {}", args.etcd.join(",")));
                }
                Ok(store) => break store,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::info!(error = %e, "waiting for etcd");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("connecting to etcd at {}", args.etcd.join(",")));
                }
            }
        };
        let leadership = match args.etcd_keep_history {
            0 => store.campaign(&replica)?,
            secs => store.campaign_compacting(&replica, Duration::from_secs(secs))?,
        };
        let reports = store.shared_reports();
        tracing::info!(replica, etcd = %args.etcd.join(","), "control replica on etcd");
        (Arc::new(store), leadership, reports)
    };
    let host = addr.ip().to_string();
    let trust = vmi_control::ServiceTrust::new(authority, &[&host, "localhost"])?;
    let url = format!("https://{addr}");
    let credential_path = dir.join("operator.json");
    if !store.has_operator()? || !credential_path.exists() {
        let new = store.create_credential(&vmi_control_api::auth::Principal::Operator { name: "admin".into() })?;
        let credential = crate::credentials::OperatorCredential {
            control: url.clone(),
            token: new.token,
            ca_pem: trust.control.authority.cert_pem().to_owned(),
        };
        crate::credentials::write_secret(&credential_path, &credential)?;
        tracing::info!(path = %credential_path.display(), "operator credential written");
    }
    // The CA certificate is public: terminals are told to trust it (`vmi terminal --ca`).
    let ca_path = dir.join(CA_FILE);
    std::fs::write(&ca_path, trust.control.authority.cert_pem())
        .with_context(|| format!("writing {}", ca_path.display()))?;
    announce("control", &url, addr);
    let params = PolicyParams {
        dwell_ms: args.placer_dwell_ms,
        rtt_ms_per_100km: args.rtt_ms_per_100km,
        ..PolicyParams::default()
    };
    let options = vmi_control::ServeOptions {
        placer: Some(params),
        trust: Some(trust),
        leadership,
        reports,
        replica,
        ..vmi_control::ServeOptions::default()
    };
    vmi_control::serve_with(listener, store, options, stop_signal()).await?;
    Ok(())
}

/// How a control replica speaks TLS to its etcd members: none for `http://` members (one machine's loopback),
/// else the CA and client certificate given, or by default the provider CA and a client certificate it issues to
/// the replica now.
fn etcd_tls_for_control(
    args: &ControlArgs,
    authority: &vmi_trust::Authority,
    replica: &str,
) -> Result<Option<vmi_control::EtcdTls>> {
    if !args.etcd.iter().any(|e| e.starts_with("https://")) {
        return Ok(None);
    }
    let read = |path: &PathBuf| std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()));
    let ca_pem = match &args.etcd_ca {
        Some(path) => read(path)?,
        None => authority.cert_pem().to_owned(),
    };
    let (cert_pem, key_pem) = match (&args.etcd_cert, &args.etcd_key) {
        (Some(cert), Some(key)) => (read(cert)?, read(key)?),
        _ => {
            let issued = etcd_client_credentials(authority, replica)?;
            (issued.cert_pem, issued.key_pem)
        }
    };
    Ok(Some(vmi_control::EtcdTls { ca_pem, cert_pem, key_pem }))
}

/// A client certificate from the provider CA for talking to etcd members as `who` (a replica, the fault checker).
pub(crate) fn etcd_client_credentials(authority: &vmi_trust::Authority, who: &str) -> Result<vmi_trust::Credentials> {
    // A DNS label of the name (a replica may be named by its address): etcd does not check client names.
    let label: String =
        who.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(40).collect();
    let name = format!("{}.etcd-client.vmi", label.trim_matches('-'));
    authority.credentials_for(&name, &[]).context("issuing a client certificate for etcd")
}

/// The etcd TLS a process on this machine uses for `endpoints` of `vmi up`'s cluster in `data_dir` (the provider
/// CA in `data_dir/pki` issues it a client certificate), or none for `http://` members.
pub(crate) fn etcd_tls_in(
    data_dir: &std::path::Path,
    endpoints: &[String],
    who: &str,
) -> Result<Option<vmi_control::EtcdTls>> {
    if !endpoints.iter().any(|e| e.starts_with("https://")) {
        return Ok(None);
    }
    let authority = vmi_trust::Authority::load_or_create(&data_dir.join("pki")).context("the provider CA")?;
    let issued = etcd_client_credentials(&authority, who)?;
    Ok(Some(vmi_control::EtcdTls {
        ca_pem: authority.cert_pem().to_owned(),
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
    }))
}

/// The site's certificate: the one saved in `data_dir/tls`, or a new one from enrolling with `join` (a key made
/// here; only its public half leaves).
async fn site_credentials(
    id: &str,
    data_dir: &std::path::Path,
    join: Option<&std::path::Path>,
    host: &str,
) -> Result<vmi_trust::Credentials> {
    let dir = data_dir.join("tls");
    if dir.join("cert.pem").exists() {
        return vmi_trust::Credentials::load(&dir).context("the site's saved certificate");
    }
    let Some(join) = join else {
        bail!(
            "site {id} has no certificate yet: start it once with --join FILE (a join file from `vmi site join-token`)"
        );
    };
    let join: crate::credentials::JoinFile = crate::credentials::read_secret(join)?;
    if join.site != id {
        bail!("the join file is for site {}, not {id}", join.site);
    }
    let key = vmi_trust::KeyPair::generate()?;
    let public_key: String = key.public_key().as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let control = ControlClient::new(&join.control, &vmi_control_api::Caller::trusting(&join.ca_pem)?)?;
    let request = vmi_control_api::auth::EnrollRequest {
        token: join.token.clone(),
        public_key,
        hosts: vec![host.to_owned(), "localhost".to_owned()],
    };
    let enrollment = control.enroll(id, &request).await.context("enrolling with the control service")?;
    let credentials =
        vmi_trust::Credentials { cert_pem: enrollment.cert_pem, key_pem: key.to_pem(), ca_pem: enrollment.ca_pem };
    credentials.save(&dir)?;
    tracing::info!(site = id, "enrolled; certificate saved");
    Ok(credentials)
}

/// Runs a site until SIGINT/SIGTERM, then saves every phone (or runs a site subcommand).
pub async fn site(args: SiteArgs) -> Result<()> {
    match args.command {
        Some(SiteCmd::Drain { site, control, timeout, no_wait }) => {
            let wait = (!no_wait).then_some(Duration::from_secs(timeout));
            return drain(&site, &control, wait).await;
        }
        Some(SiteCmd::Undrain { site, control }) => {
            let status =
                crate::credentials::control_client(&control)?.undrain_site(&site).await.context("undraining")?;
            return crate::output::emit(&status, || println!("{site} takes phones again"));
        }
        Some(SiteCmd::JoinToken { site, out, control }) => {
            let path = out.unwrap_or_else(|| PathBuf::from(format!("{site}.join")));
            write_join_file(&crate::credentials::control_client(&control)?, &site, &path).await?;
            // The file holds a secret: its name is printed, never what is in it.
            let written = serde_json::json!({ "site": site, "join_file": path });
            return crate::output::emit(&written, || {
                println!("join file for {site}: {} (0600, works once, for a day)", path.display());
                println!("on the new site: vmi site --id {site} --join {} --data-dir DIR", path.display());
            });
        }
        None => {}
    }
    let (Some(id), Some(data_dir)) = (args.id, args.data_dir) else {
        bail!("`vmi site` needs --id and --data-dir (or a subcommand: drain, undrain)");
    };
    let credentials = site_credentials(&id, &data_dir, args.join.as_deref(), &args.listen.ip().to_string()).await?;
    let history = match &args.history {
        Some(path) => Some(Arc::new(
            vmi_control_api::history::History::open(path, &id)
                .with_context(|| format!("opening the history {}", path.display()))?,
        )),
        None => None,
    };
    let config = vmi_site::SiteConfig {
        credentials,
        limits: vmi_trust::ConnectionLimits::default(),
        id: id.clone(),
        listen: args.listen,
        data_dir,
        control_url: args.control,
        lat: args.lat,
        lon: args.lon,
        capacity: args.capacity,
        clock: vmi_engine::SystemClock::shared(),
        heartbeat: SITE_HEARTBEAT,
        screen: (720, 1280),
        public_url: args.public_url,
        checkpoint_every: match args.checkpoint_every.as_str() {
            "off" | "0" => None,
            every => Some(crate::script::parse_duration(every).context("--checkpoint-every")?).filter(|d| !d.is_zero()),
        },
        retention: Default::default(),
        history,
        hibernation: match args.hibernate_after.as_str() {
            "off" | "0" => None,
            after => Some(vmi_site::hibernation::HibernationPolicy {
                idle: crate::script::parse_duration(after).context("--hibernate-after")?,
                max_resident: args.max_resident,
            }),
        },
    };
    let site = vmi_site::start(config).await.context("starting the site")?;
    announce("site", &site.url, site.addr);
    stop_signal().await;
    let report = site.shutdown().await;
    eprintln!("{id}: saved {} phone{}", report.saved, if report.saved == 1 { "" } else { "s" });
    if !report.failed.is_empty() {
        for (user, why) in &report.failed {
            eprintln!("{id}: could not save {user}'s phone: {why}");
        }
        let users: Vec<&str> = report.failed.iter().map(|(u, _)| u.as_str()).collect();
        bail!("{id} could not save the phones of {}", users.join(", "));
    }
    Ok(())
}

/// The demo sites of `vmi up`: three places around Helsinki.
pub const DEMO_SITES: [(&str, f64, f64); 3] =
    [("site-a", 60.2055, 24.6559), ("site-b", 60.1699, 24.9384), ("site-c", 60.2934, 25.0378)];

/// Starts the control service and three sites (each behind a delay proxy unless
/// `--no-proxy`), creates the demo user's phone, prints the browser terminal's URL, and
/// stops everything (phones saved) on Ctrl-C.
///
/// Ports: the control service on PORT; what terminals use on PORT+1..PORT+3 (the proxies,
/// or the sites themselves with `--no-proxy`); the sites behind proxies on PORT+4..PORT+6.
/// With PORT 0 every service listens on a port the system picks, and [`UP_FILE`] in the
/// data directory says where each one is.
pub async fn up(mut args: UpArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    // The simulated machines, if any: kept until every service stopped, then removed.
    let cluster = if args.cluster { Some(SimulatedCluster::start(&args.data_dir)?) } else { None };
    if let Some(c) = &cluster {
        args.etcd = c.etcd.endpoints();
        args.replicas = u16::try_from(CLUSTER_REPLICAS).unwrap_or(2);
        args.no_proxy = true;
    }
    let node_of = |name: &str| cluster.as_ref().and_then(|c| c.nodes.iter().find(|n| n.name == name)).cloned();
    let data = |p: &str| args.data_dir.join(p).display().to_string();
    let any_port = args.port == 0;
    let local = |offset: usize| {
        let port = if any_port { 0 } else { usize::from(args.port) + offset };
        format!("127.0.0.1:{port}")
    };
    let mut services = crate::supervisor::Supervisor::hung_after(Duration::from_secs(args.hung_after_secs.max(1)));
    let mut control_urls = Vec::new();
    let mut controls = Vec::new();
    // One after the other: the first creates the CA and the operator credential the others then use.
    for replica in 0..usize::from(args.replicas) {
        let name = if replica == 0 { "control".to_owned() } else { format!("control-{}", replica + 1) };
        let node = node_of(&name);
        let listen = match &node {
            Some(node) => format!("{}:{CLUSTER_PORT}", node.ip),
            None if replica == 0 => local(0),
            None => local(2 * DEMO_SITES.len() + replica),
        };
        let mut control_args = vec![
            "control".into(),
            "--listen".into(),
            listen,
            "--db".into(),
            data("control.db"),
            "--placer-dwell-ms".into(),
            args.placer_dwell_ms.to_string(),
            "--rtt-ms-per-100km".into(),
            args.rtt_ms_per_100km.to_string(),
        ];
        if !args.etcd.is_empty() {
            control_args.extend(["--etcd".into(), args.etcd.join(","), "--replica".into(), name.clone()]);
        }
        if let Some(dir) = &args.history {
            control_args.extend(["--history".into(), dir.join(format!("{name}.jsonl")).display().to_string()]);
            // The checker reads etcd's whole history of every placement back.
            if !args.etcd.is_empty() {
                control_args.extend(["--etcd-keep-history".into(), "0".into()]);
            }
        }
        let control =
            crate::supervisor::Service::start_in(&name, node.as_ref().map(|n| n.ns.as_str()), control_args).await?;
        control_urls.push(control.url.clone());
        controls.push(control);
    }
    // Every client of the control plane gets every replica.
    let control_url = control_urls.join(",");
    // The control service wrote the operator credential beside its database: this process acts with it, and
    // enrolls each new site with a one-time join file (0600) that only that site reads.
    crate::credentials::use_credentials(args.data_dir.join("operator.json"));
    crate::credentials::operator()?;
    let prober = crate::credentials::operator_caller()?;
    for control in controls {
        control.wait_ready(&prober).await?;
        services.add(control.probed(prober.clone()));
    }
    let control_client = crate::credentials::control_client(&control_url)?;
    let (_, home_lat, home_lon) = DEMO_SITES[0];
    let mut routes = Vec::new();
    for (i, (id, lat, lon)) in DEMO_SITES.iter().enumerate() {
        let public = local(1 + i);
        // The proxy must know where its site will listen before the site, which registers
        // the proxy's URL, starts: with system-picked ports that port is reserved here until
        // the site listens on it.
        let node = node_of(id);
        let (reserved, listen) = match (args.no_proxy, any_port) {
            _ if node.is_some() => {
                (None, format!("{}:{CLUSTER_PORT}", node.as_ref().map_or(String::new(), |n| n.ip.to_string())))
            }
            (true, _) => (None, public.clone()),
            (false, false) => (None, local(1 + DEMO_SITES.len() + i)),
            (false, true) => {
                let (socket, addr) = reserve_port().context("reserving a port for a site")?;
                (Some(socket), addr.to_string())
            }
        };
        let mut site_args = vec![
            "site".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            listen.clone(),
            "--data-dir".into(),
            data(id),
            "--control".into(),
            control_url.clone(),
            "--lat".into(),
            lat.to_string(),
            "--lon".into(),
            lon.to_string(),
        ];
        if let Some(dir) = &args.history {
            site_args.extend(["--history".into(), dir.join(format!("{id}.jsonl")).display().to_string()]);
        }
        if !args.data_dir.join(id).join("tls").join("cert.pem").exists() {
            let path = args.data_dir.join(format!("{id}.join"));
            write_join_file(&control_client, id, &path).await?;
            site_args.extend(["--join".into(), path.display().to_string()]);
        }
        if !args.no_proxy {
            // The proxy first: the site registers the proxy's URL, which must answer.
            let proxy = crate::supervisor::Service::start(
                &format!("{id}-proxy"),
                vec![
                    "proxy".into(),
                    "--listen".into(),
                    public,
                    "--to".into(),
                    listen.clone(),
                    "--site-lat".into(),
                    lat.to_string(),
                    "--site-lon".into(),
                    lon.to_string(),
                    "--control".into(),
                    control_url.clone(),
                    "--user".into(),
                    args.user.clone(),
                    "--home-lat".into(),
                    home_lat.to_string(),
                    "--home-lon".into(),
                    home_lon.to_string(),
                    "--rtt-ms-per-100km".into(),
                    args.rtt_ms_per_100km.to_string(),
                ],
            )
            .await?;
            site_args.extend(["--public-url".into(), proxy.url.clone()]);
            routes.push((id.to_string(), proxy.url.clone(), Some(listen)));
            services.add(proxy);
        }
        let site = crate::supervisor::Service::start_in(id, node.as_ref().map(|n| n.ns.as_str()), site_args).await?;
        drop(reserved);
        if args.no_proxy {
            routes.push((id.to_string(), site.url.clone(), None));
        }
        site.wait_ready(&prober).await?;
        services.add(site.probed(prober.clone()));
    }

    let result = demo(&control_url, &args.user, &args.data_dir).await;
    let result = match result {
        Ok(demo) => write_up_file(&args.data_dir, &control_url, &routes, &demo, cluster.as_ref()).map(|up| (demo, up)),
        Err(e) => Err(e),
    };
    match &result {
        // For programs: where everything is, as in up.json, instead of the words.
        Ok((_, up)) if crate::output::json() => println!("{up}"),
        Ok((demo, _)) => {
            match args.replicas {
                _ if args.cluster => println!(
                    "Seed VMI is up as a simulated cluster: {CLUSTER_ETCD_MEMBERS} etcd members, {CLUSTER_REPLICAS} \
                     control replicas and {} sites, each in a network namespace of its own on bridge {}.",
                    DEMO_SITES.len(),
                    cluster.as_ref().map_or(String::new(), |c| c.net.bridge())
                ),
                1 if args.etcd.is_empty() => {
                    println!("Seed VMI is up: a control service and {} sites.", DEMO_SITES.len());
                }
                n => println!(
                    "Seed VMI is up: {n} control replica{} on etcd ({}) and {} sites.",
                    if n == 1 { "" } else { "s" },
                    args.etcd.join(","),
                    DEMO_SITES.len()
                ),
            }
            for url in &control_urls {
                println!("  {:<8} {url}", "control");
            }
            for (id, url, behind) in &routes {
                match behind {
                    Some(site) => println!("  {id:<8} {url}  (delay proxy; the site listens on {site})"),
                    None => println!("  {id:<8} {url}"),
                }
            }
            if !args.no_proxy {
                println!(
                    "Each site is reached through a proxy that delays bytes like a network path from {}'s \
                     position: {} ms + {} ms per 100 km, round trip.",
                    args.user,
                    PolicyParams::default().base_rtt_ms,
                    args.rtt_ms_per_100km
                );
            }
            println!();
            // The link carries the device token: it goes to a file only its owner reads, never to this log.
            if args.cluster {
                println!(
                    "Browser terminal: the sites speak HTTPS with the provider CA ({}) across the bridge; a browser \
                     must trust it first. The native terminal below needs nothing more.",
                    args.data_dir.join(CA_FILE).display()
                );
            } else {
                println!(
                    "Browser terminal for {}:  {} (open the address written in {}; it holds the device token)",
                    args.user,
                    demo.page,
                    demo.link_file.display()
                );
            }
            println!(
                "Native terminal:           vmi terminal --control {control_url} --ca {} --token-file {}",
                args.data_dir.join(CA_FILE).display(),
                demo.token_file.display()
            );
            if let (false, Some(url)) = (args.cluster, control_urls.first()) {
                // Plain HTTP, as the terminal's page: the control service answers it from loopback peers only.
                println!(
                    "Operator dashboard:        {}/dashboard (sign in with the token in {})",
                    url.replacen("https://", "http://", 1),
                    args.data_dir.join("operator.json").display()
                );
            }
            println!(
                "Send a mail:               VMI_CREDENTIALS={} vmi mail send --control {control_url} --to {} \\
                 --subject Hello --body Hi",
                args.data_dir.join("operator.json").display(),
                args.user
            );
            println!("Stop with Ctrl-C (every phone is saved).");
        }
        Err(e) => eprintln!("error: {e:#}"),
    }
    if result.is_ok() {
        // A service that dies is started again; Ctrl-C (or SIGTERM) stops them all.
        services.run(stop_signal()).await;
    }
    let clean = services.stop_all().await;
    // Only now: the services ran in its namespaces and needed etcd to save.
    drop(cluster);
    if !clean && result.is_ok() {
        bail!("not every service stopped cleanly (see above): some phones may not have been saved");
    }
    result.map(|_| ())
}

/// The machines of `vmi up --cluster`: a bridge, a node (network namespace) per etcd member, control replica and
/// site, and the etcd members running on theirs.
struct SimulatedCluster {
    /// Dropped last (fields drop in order): the members run in its namespaces.
    etcd: vmi_cluster::EtcdMembers,
    nodes: Vec<vmi_cluster::Node>,
    net: vmi_cluster::Net,
}

impl SimulatedCluster {
    fn start(data_dir: &std::path::Path) -> Result<SimulatedCluster> {
        let mut net = vmi_cluster::Net::new().map_err(|e| match e {
            vmi_cluster::ClusterError::NotRoot => anyhow::anyhow!(
                "vmi up --cluster needs root: it makes a network namespace, with its own address and link, for each \
                 simulated machine (ip netns); run it as root, or run vmi up without --cluster"
            ),
            other => anyhow::Error::new(other).context("making the simulated network"),
        })?;
        let mut members = Vec::new();
        for i in 0..CLUSTER_ETCD_MEMBERS {
            let node = net.node(&format!("etcd-{i}"))?;
            members.push((node.ip, Some(node)));
        }
        let mut nodes: Vec<vmi_cluster::Node> = Vec::new();
        for i in 0..CLUSTER_REPLICAS {
            let name = if i == 0 { "control".to_owned() } else { format!("control-{}", i + 1) };
            nodes.push(net.node(&name)?);
        }
        for (id, _, _) in DEMO_SITES {
            nodes.push(net.node(id)?);
        }
        // The members speak TLS to each other and to the control replicas (they are machines of their own): each
        // gets a certificate naming its address from the provider CA, made here before the control service starts.
        let authority =
            vmi_trust::Authority::load_or_create(&data_dir.join("pki")).context("the provider CA for etcd")?;
        let mut with_tls = Vec::new();
        for (i, (ip, node)) in members.into_iter().enumerate() {
            let dir = data_dir.join("etcd").join(format!("tls-{i}"));
            let ip_text = ip.to_string();
            authority
                .credentials_for(&format!("etcd-{i}.etcd.vmi"), &[ip_text.as_str()])
                .and_then(|c| c.save(&dir))
                .with_context(|| format!("a certificate for etcd member {i}"))?;
            let files =
                vmi_cluster::MemberTls { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") };
            with_tls.push((ip, node, Some(files)));
        }
        let etcd =
            vmi_cluster::EtcdMembers::start_with("etcd", &data_dir.join("etcd"), with_tls).context("starting etcd")?;
        eprintln!(
            "simulated cluster: bridge {} ({}/24); etcd at {}",
            net.bridge(),
            net.host_ip(),
            etcd.endpoints().join(",")
        );
        Ok(SimulatedCluster { etcd, nodes, net })
    }
}

/// The file in `vmi up`'s data directory that says where each service listens (JSON:
/// `control`, `sites` as `id`, `url` terminals use and `listen` where the site itself
/// listens, and the demo user's browser `terminal` URL), for scripts and tests.
pub const UP_FILE: &str = "up.json";

/// Writes [`UP_FILE`] and returns what it holds.
fn write_up_file(
    dir: &std::path::Path,
    control: &str,
    routes: &[Route],
    demo: &Demo,
    cluster: Option<&SimulatedCluster>,
) -> Result<serde_json::Value> {
    let sites: Vec<_> = routes
        .iter()
        .map(|(id, url, behind)| {
            let listen = behind.clone().unwrap_or_else(|| url.trim_start_matches("http://").to_string());
            serde_json::json!({ "id": id, "url": url, "listen": listen })
        })
        .collect();
    let controls: Vec<&str> = control.split(',').collect();
    // Where each simulated machine is, for tools (and tests) that cut its link.
    let machines = cluster.map(|c| {
        let etcd = (0..c.etcd.len()).filter_map(|i| c.etcd.node(i));
        etcd.chain(&c.nodes)
            .map(|n| serde_json::json!({ "name": n.name, "netns": n.ns, "ip": n.ip.to_string(), "link": n.link }))
            .collect::<Vec<_>>()
    });
    let up = serde_json::json!({
        "machines": machines,
        "etcd": cluster.map(|c| c.etcd.endpoints()),
        "control": control,
        "controls": controls,
        "sites": sites,
        "terminal": demo.page,
        "link_file": demo.link_file,
        "token_file": demo.token_file,
        "ca_file": dir.join(CA_FILE),
        "credentials": dir.join("operator.json"),
    });
    let path = dir.join(UP_FILE);
    std::fs::write(&path, format!("{up:#}\n")).with_context(|| format!("writing {}", path.display()))?;
    Ok(up)
}

/// What terminals use to reach a site (id, URL) and, behind a proxy, where the site listens.
type Route = (String, String, Option<String>);

/// Holds a loopback port that the system picked, for a child that will listen on it: the
/// socket is bound with SO_REUSEADDR and never listens, so the system gives the port to no
/// one else while the child (whose listener also sets SO_REUSEADDR, as tokio's do) may
/// bind and listen on it. Drop it once the child listens.
fn reserve_port() -> std::io::Result<(tokio::net::TcpSocket, SocketAddr)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = socket.local_addr()?;
    Ok((socket, addr))
}

/// The demo user's terminal: the browser page (without its token), and the 0600 files holding the device token
/// and the page's address with it.
struct Demo {
    page: String,
    token_file: PathBuf,
    link_file: PathBuf,
}

/// Makes sure the demo user has a phone and a fresh device; writes its token and the browser link (the token in
/// the fragment, which the browser never sends) to 0600 files in `dir`.
async fn demo(control_url: &str, user: &str, dir: &std::path::Path) -> Result<Demo> {
    let control = crate::credentials::control_client(control_url)?;
    ensure_user_phone(&control, user, DEMO_SITES[0].0).await?;
    let device = control.create_device(user, "browser").await.context("creating a device")?;
    let placement = control.placement(user).await.context("finding the phone")?;
    let page = browser_page(&placement.site_url);
    let token_file = dir.join(format!("{user}.token"));
    crate::credentials::write_secret_bytes(&token_file, device.token.as_bytes())?;
    let link_file = dir.join(format!("{user}.link"));
    crate::credentials::write_secret_bytes(&link_file, format!("{page}#token={}\n", device.token).as_bytes())?;
    Ok(Demo { page, token_file, link_file })
}

/// The address a browser on this machine opens a site's page at: plain HTTP on loopback (a browser does not
/// trust the provider CA; sites answer plain HTTP from loopback only), the site's own HTTPS address otherwise.
pub fn browser_page(site_url: &str) -> String {
    let base = site_url.trim_end_matches('/');
    let plain = base.strip_prefix("https://").filter(|rest| {
        let host = rest.rsplit_once(':').map_or(*rest, |(h, _)| h);
        matches!(host, "127.0.0.1" | "localhost" | "[::1]")
    });
    match plain {
        Some(rest) => format!("http://{rest}/"),
        None => format!("{base}/"),
    }
}

/// Creates the user (if new), places the phone (if unplaced) and boots it on its site (if
/// the site does not have it yet).
pub async fn ensure_user_phone(control: &ControlClient, user: &str, default_site: &str) -> Result<()> {
    match control.create_user(user).await {
        Ok(_) => {}
        Err(vmi_control_api::ClientError::Status { status: 409, .. }) => {}
        Err(e) => return Err(e).context("creating the user"),
    }
    let placement = match control.placement(user).await {
        Ok(p) => p,
        Err(vmi_control_api::ClientError::Status { status: 404, .. }) => {
            control.set_placement(user, default_site).await.context("placing the phone")?;
            control.placement(user).await.context("reading the placement")?
        }
        Err(e) => return Err(e).context("reading the placement"),
    };
    let status = crate::credentials::operator_caller()?
        .post_json(&format!("{}/v1/phones", placement.site_url), &serde_json::json!({ "user": user }))
        .await
        .context("booting the phone")?;
    if status.0 != 201 && status.0 != 409 {
        bail!("the site refused to boot the phone: {} {}", status.0, status.1);
    }
    Ok(())
}

/// `vmi mail send`: drops a mail in a user's mailbox on the site that runs their phone.
pub async fn mail(args: MailArgs) -> Result<()> {
    let control = crate::credentials::control_client(&args.control)?;
    let placement = control.placement(&args.to).await.with_context(|| format!("finding {}'s phone", args.to))?;
    let body = serde_json::json!({ "from": args.from, "subject": args.subject, "body": args.body });
    let (status, text) = crate::credentials::operator_caller()?
        .post_json(&format!("{}/v1/phones/{}/mail", placement.site_url, args.to), &body)
        .await
        .context("delivering the mail")?;
    if status != 202 {
        bail!("the site refused the mail: {status} {text}");
    }
    let delivered = serde_json::json!({ "user": args.to, "site": placement.site, "delivered": true });
    crate::output::emit(&delivered, || println!("mail delivered to {}'s phone on {}", args.to, placement.site))
}

/// The base URL of a registered site.
pub(crate) async fn site_url(control: &ControlClient, id: &str) -> Result<String> {
    let sites = control.list_sites().await.context("listing sites")?;
    sites
        .iter()
        .find(|s| s.site.id == id)
        .map(|s| s.site.url.clone())
        .with_context(|| format!("no site {id} is registered"))
}

/// `vmi vm migrate`: live-migrates a phone now.
pub async fn migrate(args: MigrateArgs) -> Result<()> {
    let control = crate::credentials::control_client(&args.control)?;
    let placement = control.placement(&args.user).await.with_context(|| format!("finding {}'s phone", args.user))?;
    // An unknown destination is named here, before the site is asked.
    site_url(&control, &args.to).await?;
    let body = serde_json::json!({ "to": args.to });
    let (status, text) = crate::credentials::operator_caller()?
        .post_json(&format!("{}/v1/phones/{}/migrate", placement.site_url, args.user), &body)
        .await
        .context("asking the site to migrate")?;
    let report: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::json!({ "error": text }));
    if status != 200 {
        bail!("migration did not happen ({status}): {report}");
    }
    crate::output::emit(&report, || {
        println!(
            "{} moved {} → {} in {:.1} ms, downtime {} µs, {} bytes",
            args.user,
            report["from"],
            report["to"],
            report["total_ms"].as_f64().unwrap_or(0.0),
            report["downtime_us"],
            report["bytes"]
        );
    })
}

/// `vmi vm list`: where every phone runs.
pub async fn list(args: ListArgs) -> Result<()> {
    let control = crate::credentials::control_client(&args.control)?;
    let mut rows = Vec::new();
    for s in control.list_sites().await.context("listing sites")? {
        let (status, body) = crate::credentials::operator_caller()?
            .get_bytes(&format!("{}/v1/phones", s.site.url))
            .await
            .unwrap_or_default();
        let phones: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        for p in phones["phones"].as_array().into_iter().flatten() {
            rows.push(serde_json::json!({
                "user": p["user"], "site": s.site.id, "status": p["phone"]["status"],
                "terminals": p["phone"]["terminals"], "healthy": s.healthy, "draining": s.site.draining,
                "standby": p["phone"]["standby"], "standby_lag_ms": p["phone"]["standby_lag_ms"],
                "resident": p["phone"]["resident"], "memory_bytes": p["phone"]["memory_bytes"],
                "engine": p["phone"]["engine"],
            }));
        }
        if status == 0 {
            rows.push(serde_json::json!({ "site": s.site.id, "status": "unreachable" }));
        }
    }
    if crate::output::json() {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!(
        "{:<16} {:<10} {:<10} {:<10} {:<20} {:<12} STATUS",
        "USER", "SITE", "ENGINE", "TERMINALS", "STANDBY (LAG)", "MEMORY"
    );
    for r in rows {
        let terminals = r["terminals"].as_u64().map(|t| t.to_string()).unwrap_or_else(|| "-".into());
        let standby = match (r["standby"].as_str(), r["standby_lag_ms"].as_u64()) {
            (Some(site), Some(lag)) => format!("{site} ({lag} ms)"),
            (Some(site), None) => site.to_owned(),
            _ => "-".to_owned(),
        };
        // A hibernated phone holds no memory: its pages wait in the site's shared store until something wakes it.
        let memory = match (r["resident"].as_bool(), r["memory_bytes"].as_u64()) {
            (Some(false), _) => "hibernated".to_owned(),
            (_, Some(bytes)) => format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20)),
            _ => "-".to_owned(),
        };
        println!(
            "{:<16} {:<10} {:<10} {:<10} {:<20} {:<12} {}",
            r["user"].as_str().unwrap_or("-"),
            r["site"].as_str().unwrap_or("-"),
            r["engine"].as_str().unwrap_or("-"),
            terminals,
            standby,
            memory,
            r["status"].as_str().unwrap_or("-")
        );
    }
    Ok(())
}

/// `vmi vm logs`: asks the site that runs the phone for its recent log lines.
pub async fn logs(args: LogsArgs) -> Result<()> {
    let control = crate::credentials::control_client(&args.control)?;
    let placement = control.placement(&args.user).await.with_context(|| format!("where {}'s phone runs", args.user))?;
    let url = format!("{}/v1/phones/{}/logs", placement.site_url.trim_end_matches('/'), args.user);
    let (status, body) =
        crate::credentials::operator_caller()?.get_bytes(&url).await.with_context(|| format!("GET {url}"))?;
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status != 200 {
        bail!("{} answered {status}: {}", placement.site, answer["error"].as_str().unwrap_or("no reason given"));
    }
    if crate::output::json() {
        println!("{answer}");
        return Ok(());
    }
    let lines = answer["lines"].as_array().cloned().unwrap_or_default();
    if lines.is_empty() {
        println!("{}'s phone has logged nothing since it started on {}", args.user, placement.site);
    }
    for line in &lines {
        println!(
            "{} {:<5} {}",
            vmi_control_api::time::format_ms(line["at_ms"].as_u64().unwrap_or(0)),
            line["level"].as_str().unwrap_or("?"),
            line["text"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// `vmi site drain`: marks the site draining (the control service's placer moves its phones to the best other
/// sites) and, given `wait`, waits that long at most until it has none, showing how many are left.
pub async fn drain(site: &str, control_url: &str, wait: Option<Duration>) -> Result<()> {
    let control = crate::credentials::control_client(control_url)?;
    let url = site_url(&control, site).await?;
    let marked = control.drain_site(site).await.context("marking the site draining")?;
    let Some(wait) = wait else {
        let words = || println!("{site} is draining: its {} phones move away (see vmi vm list)", marked.site.phones);
        return crate::output::emit(&marked, words);
    };
    let progress = crate::output::progress();
    let started = std::time::Instant::now();
    loop {
        // The site's own list, not the count in its last heartbeat: a phone that just left is gone from it.
        let (_, body) = crate::credentials::operator_caller()?
            .get_bytes(&format!("{url}/v1/phones"))
            .await
            .context("asking the site")?;
        let phones: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let left = phones["phones"].as_array().map(Vec::len).unwrap_or(0);
        if left == 0 {
            progress.clear();
            let drained = serde_json::json!({
                "site": site, "draining": true, "phones": 0, "seconds": started.elapsed().as_secs_f64(),
            });
            return crate::output::emit(&drained, || println!("{site} is drained: 0 phones"));
        }
        if started.elapsed() > wait {
            progress.clear();
            bail!("{site} still has {left} phones after {} s (it stays draining)", wait.as_secs());
        }
        let plural = if left == 1 { "" } else { "s" };
        progress.step(format!("draining {site}: {left} phone{plural} left ({} s)", started.elapsed().as_secs()));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `vmi user …`.
#[derive(clap::Subcommand)]
pub enum UserCmd {
    /// Create a user, optionally in a tenant (then its quotas apply to the user's phone).
    Create {
        /// The user's name.
        name: String,
        /// The tenant (see `vmi tenant create`).
        #[arg(long)]
        tenant: Option<String>,
        /// Control service URL.
        #[arg(long, default_value = "http://127.0.0.1:7800")]
        control: String,
    },
    /// Issue a one-time code that pairs a new device with the user's phone (valid 10 min).
    PairCode {
        /// The user.
        user: String,
        /// Control service URL.
        #[arg(long, default_value = "http://127.0.0.1:7800")]
        control: String,
    },
}

/// `vmi device …`.
#[derive(clap::Subcommand)]
pub enum DeviceCmd {
    /// List a user's devices.
    List {
        /// The user.
        user: String,
        /// Control service URL.
        #[arg(long, default_value = "http://127.0.0.1:7800")]
        control: String,
    },
    /// Revoke a device: its live sessions close at once and its token is refused ever after.
    Revoke {
        /// The device id (see `vmi device list`).
        id: u64,
        /// Control service URL.
        #[arg(long, default_value = "http://127.0.0.1:7800")]
        control: String,
    },
    /// Pair this device with a code; keeps its token and the browser terminal link in 0600 files.
    Pair {
        /// The code from `vmi user pair-code` or another signed-in device.
        code: String,
        /// A name for this device.
        #[arg(long, default_value = "new device")]
        name: String,
        /// Control service URL.
        #[arg(long, default_value = "http://127.0.0.1:7800")]
        control: String,
        /// Where to keep the device token (written 0600); the browser link goes beside it, `.link`.
        #[arg(long = "token-file", value_name = "FILE", default_value = "vmi-device.token")]
        token_file: PathBuf,
        /// The provider CA (PEM) to check an `https://` control service against.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
    },
}

/// Runs `vmi user …`.
pub async fn user(cmd: UserCmd) -> Result<()> {
    match cmd {
        UserCmd::Create { name, tenant, control } => {
            crate::tenants::create_user(&name, tenant.as_deref(), &control).await?
        }
        UserCmd::PairCode { user, control } => {
            let code = crate::credentials::control_client(&control)?
                .pair_code(&user)
                .await
                .context("issuing a pairing code")?;
            crate::output::emit(&code, || {
                println!("pairing code for {user}: {}  (valid 10 minutes, once)", code.code);
                println!("on the new device: vmi device pair {} --control {control}", code.code);
            })?;
        }
    }
    Ok(())
}

/// Runs `vmi device …`.
pub async fn device(cmd: DeviceCmd) -> Result<()> {
    match cmd {
        DeviceCmd::List { user, control } => {
            let devices =
                crate::credentials::control_client(&control)?.list_devices(&user).await.context("listing devices")?;
            crate::output::emit(&devices, || {
                println!("ID     REVOKED  NAME");
                for d in &devices {
                    println!("{:<6} {:<8} {}", d.device_id, if d.revoked { "yes" } else { "no" }, d.name);
                }
            })?;
        }
        DeviceCmd::Revoke { id, control } => {
            crate::credentials::control_client(&control)?.revoke_device(id).await.context("revoking")?;
            crate::output::emit(&serde_json::json!({ "device_id": id, "revoked": true }), || {
                println!("device {id} revoked: its sessions are closed and its token is refused");
            })?;
        }
        DeviceCmd::Pair { code, name, control, token_file, ca } => {
            // A new device holds no credential yet: the code is its proof.
            let caller = vmi_terminal::terminal_caller(ca.as_deref())?;
            let client = ControlClient::new(&control, &caller)?;
            let device = client.pair(&code, &name).await.context("pairing (is the code right and fresh?)")?;
            let phone = client.phone_for_token(&device.token).await.context("finding the phone")?;
            crate::credentials::write_secret_bytes(&token_file, device.token.as_bytes())?;
            let link_file = token_file.with_extension("link");
            let link = format!("{}#token={}\n", browser_page(&phone.site_url), device.token);
            crate::credentials::write_secret_bytes(&link_file, link.as_bytes())?;
            if crate::output::json() {
                // The token stays in its 0600 file, as without --json: stdout ends up in logs and terminals.
                let paired = serde_json::json!({
                    "device_id": device.device_id, "user": phone.user, "site": phone.site,
                    "token_file": token_file, "link_file": link_file,
                });
                println!("{paired}");
                return Ok(());
            }
            println!("paired: this is device {} of user {}", device.device_id, phone.user);
            println!("token: in {} (0600)", token_file.display());
            println!("browser terminal: the address in {} (0600)", link_file.display());
            // The sites speak TLS under the provider's CA: the native terminal needs it (a browser is shown it).
            let ca_arg = match &ca {
                Some(ca) => format!(" --ca {}", ca.display()),
                None if phone.site_url.starts_with("https:") => " --ca PROVIDER-CA.pem".to_owned(),
                None => String::new(),
            };
            println!("native terminal: vmi terminal --control {control}{ca_arg} --token-file {}", token_file.display());
            if ca.is_none() && phone.site_url.starts_with("https:") {
                println!("  (PROVIDER-CA.pem: the provider's CA certificate; under vmi up, vmi-data/ca.pem)");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reserved_port_goes_to_the_child_that_listens_on_it_and_to_no_one_else() {
        let (reservation, addr) = reserve_port().expect("reserve");
        assert_ne!(addr.port(), 0);
        // Someone binding without SO_REUSEADDR is refused while the port is held.
        let other = tokio::net::TcpSocket::new_v4().expect("socket");
        assert_eq!(other.bind(addr).map_err(|e| e.kind()).err(), Some(std::io::ErrorKind::AddrInUse));
        // The site (a tokio listener) gets it.
        let site = tokio::net::TcpListener::bind(addr).await.expect("the child binds the reserved port");
        drop(reservation);
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = site.accept().await.expect("accept");
        assert_eq!(accepted.peer_addr().expect("peer"), client.local_addr().expect("local"));
        // Once it listens, nobody else can bind it, SO_REUSEADDR or not.
        assert!(tokio::net::TcpListener::bind(addr).await.is_err());
    }
}
