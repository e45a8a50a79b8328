//! A real etcd cluster for a test: Debian's `etcd` binary, one process per member, each on an address of its own
//! in 127.0.0.0/8 (all of it is loopback on Linux) with etcd's usual ports, so clusters of tests running at the same
//! time never share a port and nothing has to guess a free one.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::netns::{Net, Node};
use crate::{ChildGuard, scratch_dir};

/// Where Debian's `etcd-server` package puts etcd (`scripts/setup` installs it).
pub const ETCD: &str = "/usr/bin/etcd";
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

static NEXT_NET: AtomicU8 = AtomicU8::new(0);

/// One member: its name, addresses and process (none while killed).
#[derive(Debug)]
struct Member {
    name: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    process: Option<ChildGuard>,
    /// The namespace it runs in (`None`: this process's, on a loopback address).
    node: Option<Node>,
}

/// A running etcd cluster that stops (every member killed) when dropped.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
}

impl EtcdCluster {
    /// Starts `size` members named `{name}-0`, ... and waits until each accepts client connections.
    /// Panics (naming the log to read) if etcd is missing or a member does not come up within 30 s.
    pub fn start(name: &str, size: usize) -> EtcdCluster {
        let base = free_net();
        let members = (0..size)
            .map(|i| {
                let [_, a, b, _] = base.octets();
                (Ipv4Addr::new(127, a, b, u8::try_from(i + 1).expect("at most 254 members")), None)
            })
            .collect();
        EtcdCluster::launch(name, members)
    }

    /// Starts `size` members, each on a node of its own in `net` (its own namespace and link): partitions
    /// between members are then real ([`EtcdCluster::partition_all`]).
    pub fn start_in(net: &mut Net, name: &str, size: usize) -> EtcdCluster {
        let members = (0..size)
            .map(|i| {
                let node = net.node(&format!("{name}{i}"));
                (node.ip, Some(node))
            })
            .collect();
        EtcdCluster::launch(name, members)
    }

    fn launch(name: &str, addresses: Vec<(Ipv4Addr, Option<Node>)>) -> EtcdCluster {
        assert!(std::path::Path::new(ETCD).exists(), "{ETCD} is missing: run ./scripts/setup (Debian's etcd-server)");
        let root = scratch_dir(&format!("etcd-{name}"));
        let size = addresses.len();
        let members: Vec<Member> = addresses
            .into_iter()
            .enumerate()
            .map(|(i, (ip, node))| {
                let dir = root.join(format!("m{i}"));
                Member { name: format!("{name}-{i}"), ip, dir, process: None, node }
            })
            .collect();
        let initial_cluster =
            members.iter().map(|m| format!("{}=http://{}:{PEER_PORT}", m.name, m.ip)).collect::<Vec<_>>().join(",");
        let mut cluster = EtcdCluster { members, initial_cluster, token: format!("vmi-{name}-{}", std::process::id()) };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait_listening(i);
        }
        cluster
    }

    /// Every member's client URL (`http://ip:2379`), live or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("http://{}:{CLIENT_PORT}", m.ip)).collect()
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}:{CLIENT_PORT}", self.members[i].ip)
    }

    /// Kills member `i` with SIGKILL (its data stays for [`EtcdCluster::restart`]).
    pub fn kill(&mut self, i: usize) {
        drop(self.members[i].process.take());
    }

    /// Starts member `i` again on its data and waits until it accepts connections.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].process.is_none(), "member {i} is running");
        self.spawn(i);
        self.wait_listening(i);
    }

    /// Cuts every member off from every other (each keeps answering clients, alone): the cluster has no
    /// quorum, and every member can say so. Only for a cluster started with [`EtcdCluster::start_in`].
    pub fn partition_all(&self) {
        self.each_pair(Node::partition_from);
    }

    /// Undoes [`EtcdCluster::partition_all`].
    pub fn heal_all(&self) {
        self.each_pair(Node::heal_from);
    }

    fn each_pair(&self, act: impl Fn(&Node, &Node)) {
        let nodes: Vec<&Node> =
            self.members.iter().map(|m| m.node.as_ref().expect("a cluster started in a Net")).collect();
        for (i, a) in nodes.iter().enumerate() {
            for b in &nodes[i + 1..] {
                act(a, b);
            }
        }
    }

    /// Where member `i` writes its log.
    pub fn log(&self, i: usize) -> PathBuf {
        self.members[i].dir.with_extension("log")
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let state = if m.dir.exists() { "existing" } else { "new" };
        let log = std::fs::File::create(m.dir.with_extension("log")).expect("etcd log file");
        let client = format!("http://{}:{CLIENT_PORT}", m.ip);
        let peer = format!("http://{}:{PEER_PORT}", m.ip);
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
            // Quick elections for quick tests: loopback answers in microseconds.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log);
        let process = ChildGuard::spawn(&mut command).unwrap_or_else(|e| panic!("starting {ETCD}: {e}"));
        self.members[i].process = Some(process);
    }

    fn wait_listening(&mut self, i: usize) {
        let addr = SocketAddr::from((self.members[i].ip, CLIENT_PORT));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(p) = self.members[i].process.as_mut()
                && let Ok(Some(status)) = p.child().try_wait()
            {
                panic!("etcd member {i} exited ({status}); its log: {}", self.log(i).display());
            }
            assert!(
                Instant::now() < deadline,
                "etcd member {i} did not listen within 30 s; log: {}",
                self.log(i).display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A 127.a.b.0/24 whose first address has etcd's ports free (a cluster of another test process may hold one).
fn free_net() -> Ipv4Addr {
    let pid = std::process::id();
    let a = u8::try_from(pid % 200).unwrap_or(0) + 20;
    for _ in 0..=u8::MAX {
        let b = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        let ip = Ipv4Addr::new(127, a, b, 1);
        let free = |port| TcpListener::bind((ip, port)).is_ok();
        if free(CLIENT_PORT) && free(PEER_PORT) {
            return Ipv4Addr::new(127, a, b, 0);
        }
    }
    panic!("no free 127.{a}.*.1 address for etcd");
}
