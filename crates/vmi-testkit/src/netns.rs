//! Machines simulated honestly on one: each [`Node`] is a network namespace of its own with one link (a veth pair)
//! to a shared bridge, and an address of its own. The test process (and anything in the host namespace) reaches
//! every node over the bridge. A partition is real: a node's link taken down, or a blackhole route between two
//! nodes (packets dropped both ways), not a process paused. Needs root and iproute2 (`ip`); [`Net::available`]
//! says whether this process can.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A bridge and the namespaces attached to it; all removed when dropped.
#[derive(Debug)]
pub struct Net {
    tag: String,
    /// The /24 every node has an address in (`a.b.c.0`); the bridge (the host side) is `.1`.
    subnet: [u8; 3],
    nodes: Vec<(String, String)>,
}

/// One simulated machine: a network namespace with one link to the bridge.
#[derive(Debug, Clone)]
pub struct Node {
    /// The namespace's name (`ip netns exec NAME ...`).
    pub ns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    /// The host end of its link (down: the node is cut off from everyone).
    host_end: String,
}

/// Runs `ip ARGS`, panicking with its error output if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
}

impl Net {
    /// Whether namespaces can be made here (root, and `ip` present).
    pub fn available() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        root && Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success())
    }

    /// A new bridge with the host's address on it, named after this process so tests running at once never share
    /// one.
    pub fn new() -> Net {
        assert!(Net::available(), "network namespaces need root and iproute2 (ip)");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id().wrapping_mul(8).wrapping_add(n)) % 65_536;
        let tag = format!("{id:04x}");
        let subnet = [10, u8::try_from(id >> 8).unwrap_or(0), u8::try_from(id & 0xff).unwrap_or(0)];
        let net = Net { tag, subnet, nodes: Vec::new() };
        let bridge = net.bridge();
        // A bridge left by an earlier run of a process with the same id goes first.
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{}/24", net.host_ip()), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        net
    }

    fn bridge(&self) -> String {
        format!("vmb{}", self.tag)
    }

    /// The host's address on the bridge.
    pub fn host_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// A new node named `name` (unique in this net) with the next address.
    pub fn node(&mut self, name: &str) -> Node {
        let i = self.nodes.len();
        let ns = format!("vmi-{}-{name}", self.tag);
        let host_end = format!("vmh{}{i:02}", self.tag);
        let node_end = format!("vmn{}{i:02}", self.tag);
        let [a, b, c] = self.subnet;
        let ip_addr = Ipv4Addr::new(a, b, c, u8::try_from(10 + i).expect("at most 245 nodes"));
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        self.nodes.push((ns.clone(), host_end.clone()));
        ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &node_end]);
        ip(&["link", "set", &host_end, "master", &self.bridge(), "up"]);
        ip(&["link", "set", &node_end, "netns", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "addr", "add", &format!("{ip_addr}/24"), "dev", &node_end]);
        ip(&["-n", &ns, "link", "set", &node_end, "up"]);
        Node { ns, ip: ip_addr, host_end }
    }
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the link, and with it the host's end.
        for (ns, _) in &self.nodes {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge()]).output();
    }
}

impl Node {
    /// `program` to be run inside this node's namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns, program]);
        command
    }

    /// Cuts this node off from `other` both ways (blackhole routes in both namespaces); the rest still reach it.
    pub fn partition_from(&self, other: &Node) {
        ip(&["-n", &self.ns, "route", "add", "blackhole", &format!("{}/32", other.ip)]);
        ip(&["-n", &other.ns, "route", "add", "blackhole", &format!("{}/32", self.ip)]);
    }

    /// Undoes [`Node::partition_from`].
    pub fn heal_from(&self, other: &Node) {
        ip(&["-n", &self.ns, "route", "del", "blackhole", &format!("{}/32", other.ip)]);
        ip(&["-n", &other.ns, "route", "del", "blackhole", &format!("{}/32", self.ip)]);
    }

    /// Takes this node's link down (`false`: cut off from everyone) or up again.
    pub fn link(&self, up: bool) {
        ip(&["link", "set", &self.host_end, if up { "up" } else { "down" }]);
    }
}
