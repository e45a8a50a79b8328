//! [`EtcdMembers`]: an etcd cluster of real members, one process each.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{ClusterError, Node, Process};

/// Where Debian's `etcd-server` package puts etcd (`scripts/setup` installs it).
pub const ETCD: &str = "/usr/bin/etcd";
/// Every member's client port (each member has an address of its own).
pub const CLIENT_PORT: u16 = 2379;
/// Every member's peer port.
pub const PEER_PORT: u16 = 2380;
/// How long a member may take to listen.
const LISTEN_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Member {
    name: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    process: Option<Process>,
    node: Option<Node>,
    tls: Option<MemberTls>,
}

impl Member {
    /// The member's URL at `port`: `https://` when it speaks TLS.
    fn url(&self, port: u16) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{port}", self.ip)
    }
}

/// One member's TLS files (PEM): its certificate, which must name its address (it serves clients and its peers
/// with it, and presents it to its peers), its key, and the CA it requires every client and peer to present a
/// certificate from.
#[derive(Debug, Clone)]
pub struct MemberTls {
    /// The CA's certificate.
    pub ca: PathBuf,
    /// The member's certificate.
    pub cert: PathBuf,
    /// The member's private key.
    pub key: PathBuf,
}

/// A running etcd cluster; every member is killed when this is dropped (their data stays in the directory).
#[derive(Debug)]
pub struct EtcdMembers {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
}

impl EtcdMembers {
    /// Starts one member per address (each `(ip, node)`: on a node, it runs in that node's namespace), named
    /// `{name}-0`, ..., with data and logs under `dir`, and waits until each accepts client connections. Elections
    /// are quick (50 ms heartbeats, 500 ms election timeout): the members are one machine's processes.
    pub fn start(name: &str, dir: &Path, at: Vec<(Ipv4Addr, Option<Node>)>) -> Result<EtcdMembers, ClusterError> {
        EtcdMembers::start_with(name, dir, at.into_iter().map(|(ip, node)| (ip, node, None)).collect())
    }

    /// As [`start`](Self::start), each member with its TLS files or none: a member with them speaks only TLS, to
    /// clients and peers alike, and requires their certificates (mutual TLS); its URLs are `https://`.
    pub fn start_with(
        name: &str,
        dir: &Path,
        at: Vec<(Ipv4Addr, Option<Node>, Option<MemberTls>)>,
    ) -> Result<EtcdMembers, ClusterError> {
        if !Path::new(ETCD).exists() {
            return Err(ClusterError::NoEtcd(ETCD));
        }
        std::fs::create_dir_all(dir).map_err(|e| ClusterError::io(format!("creating {}", dir.display()), e))?;
        let members: Vec<Member> = at
            .into_iter()
            .enumerate()
            .map(|(i, (ip, node, tls))| Member {
                name: format!("{name}-{i}"),
                ip,
                dir: dir.join(format!("m{i}")),
                process: None,
                node,
                tls,
            })
            .collect();
        let initial_cluster =
            members.iter().map(|m| format!("{}={}", m.name, m.url(PEER_PORT))).collect::<Vec<_>>().join(",");
        let mut cluster = EtcdMembers { members, initial_cluster, token: format!("vmi-{name}-{}", std::process::id()) };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.members.len() {
            cluster.wait_listening(i)?;
        }
        Ok(cluster)
    }

    /// Every member's client URL (`http://ip:2379`, `https://` with TLS), running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.url(CLIENT_PORT)).collect()
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Member `i`'s node, if it runs on one.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.members.get(i).and_then(|m| m.node.as_ref())
    }

    /// Kills member `i` with SIGKILL (its data stays, for [`EtcdMembers::restart`]).
    pub fn kill(&mut self, i: usize) {
        if let Some(m) = self.members.get_mut(i) {
            drop(m.process.take());
        }
    }

    /// Starts member `i` again on its data and waits until it accepts connections.
    pub fn restart(&mut self, i: usize) -> Result<(), ClusterError> {
        if self.members.get(i).is_none_or(|m| m.process.is_some()) {
            return Err(ClusterError::Invalid(format!("member {i} does not exist or runs")));
        }
        self.spawn(i)?;
        self.wait_listening(i)
    }

    /// Whether member `i` runs.
    pub fn running(&self, i: usize) -> bool {
        self.members.get(i).is_some_and(|m| m.process.is_some())
    }

    /// Cuts every member off from every other (each still answers its clients, alone): no quorum anywhere, and
    /// every member can say so. Only for members on nodes.
    pub fn partition_all(&self) -> Result<(), ClusterError> {
        self.each_pair(Node::partition_from)
    }

    /// Undoes [`EtcdMembers::partition_all`].
    pub fn heal_all(&self) -> Result<(), ClusterError> {
        self.each_pair(Node::heal_from)
    }

    /// Cuts member `i` off from the other members (a minority of one; the rest keep their quorum).
    pub fn isolate(&self, i: usize) -> Result<(), ClusterError> {
        self.with_others(i, Node::partition_from)
    }

    /// Undoes [`EtcdMembers::isolate`].
    pub fn rejoin(&self, i: usize) -> Result<(), ClusterError> {
        self.with_others(i, Node::heal_from)
    }

    fn nodes(&self) -> Result<Vec<&Node>, ClusterError> {
        self.members
            .iter()
            .map(|m| m.node.as_ref().ok_or_else(|| ClusterError::Invalid("members are not on nodes".into())))
            .collect()
    }

    fn each_pair(&self, act: impl Fn(&Node, &Node) -> Result<(), ClusterError>) -> Result<(), ClusterError> {
        let nodes = self.nodes()?;
        for (i, a) in nodes.iter().enumerate() {
            for b in &nodes[i + 1..] {
                act(a, b)?;
            }
        }
        Ok(())
    }

    fn with_others(
        &self,
        i: usize,
        act: impl Fn(&Node, &Node) -> Result<(), ClusterError>,
    ) -> Result<(), ClusterError> {
        let nodes = self.nodes()?;
        let one = nodes.get(i).ok_or_else(|| ClusterError::Invalid(format!("no member {i}")))?;
        for (j, other) in nodes.iter().enumerate() {
            if j != i {
                act(one, other)?;
            }
        }
        Ok(())
    }

    /// Where member `i` writes its log.
    pub fn log(&self, i: usize) -> PathBuf {
        self.members[i].dir.with_extension("log")
    }

    fn spawn(&mut self, i: usize) -> Result<(), ClusterError> {
        let m = &self.members[i];
        let state = if m.dir.exists() { "existing" } else { "new" };
        let log_path = m.dir.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| ClusterError::io(format!("opening {}", log_path.display()), e))?;
        let log2 = log.try_clone().map_err(|e| ClusterError::io("cloning the log", e))?;
        let client = m.url(CLIENT_PORT);
        let peer = m.url(PEER_PORT);
        let mut command = match &m.node {
            Some(node) => node.command(ETCD),
            None => Command::new(ETCD),
        };
        command
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        if let Some(tls) = &m.tls {
            // The same files towards clients and towards peers, each side requiring the other's certificate.
            for side in ["", "peer-"] {
                command
                    .arg(format!("--{side}cert-file"))
                    .arg(&tls.cert)
                    .arg(format!("--{side}key-file"))
                    .arg(&tls.key)
                    .arg(format!("--{side}trusted-ca-file"))
                    .arg(&tls.ca)
                    .arg(format!("--{side}client-cert-auth"));
            }
        }
        command.stdin(Stdio::null()).stdout(log).stderr(log2);
        let process = Process::spawn(&mut command)?;
        self.members[i].process = Some(process);
        Ok(())
    }

    fn wait_listening(&mut self, i: usize) -> Result<(), ClusterError> {
        let addr = SocketAddr::from((self.members[i].ip, CLIENT_PORT));
        let deadline = Instant::now() + LISTEN_WITHIN;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            let log = self.log(i).display().to_string();
            let member = self.members[i].name.clone();
            if let Some(p) = self.members[i].process.as_mut()
                && let Some(status) = p.exited()
            {
                return Err(ClusterError::Member { member, what: format!("exited ({status})"), log });
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Member {
                    member,
                    what: format!("did not listen within {LISTEN_WITHIN:?}"),
                    log,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}
