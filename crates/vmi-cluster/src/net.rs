//! [`Net`]: a bridge and the namespaces attached to it; [`Node`]: one of them.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::ClusterError;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A bridge and the namespaces attached to it; all removed when dropped.
#[derive(Debug)]
pub struct Net {
    tag: String,
    /// The /24 every node has an address in (`a.b.c.0`); the bridge (the host side) is `.1`.
    subnet: [u8; 3],
    namespaces: Vec<String>,
}

/// One simulated machine: a network namespace with one link to the bridge.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's name in its net.
    pub name: String,
    /// The namespace's name (`ip netns exec NS ...`).
    pub ns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    /// The host end of its link (down: the node is cut off from everyone).
    pub link: String,
}

/// Runs `ip ARGS`.
fn ip(args: &[&str]) -> Result<(), ClusterError> {
    let out = Command::new("ip").args(args).output().map_err(|e| ClusterError::io("running ip (iproute2)", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ClusterError::Ip { args: args.join(" "), stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
    }
}

impl Net {
    /// Whether namespaces can be made here (root, and `ip` present).
    pub fn available() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        root && Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success())
    }

    /// A new bridge with the host's address on it, named after this process so nets made at once never share one.
    pub fn new() -> Result<Net, ClusterError> {
        if !Net::available() {
            return Err(ClusterError::NotRoot);
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = std::process::id().wrapping_mul(8).wrapping_add(n) % 65_536;
        let tag = format!("{id:04x}");
        let subnet = [10, u8::try_from(id >> 8).unwrap_or(0), u8::try_from(id & 0xff).unwrap_or(0)];
        let net = Net { tag, subnet, namespaces: Vec::new() };
        let bridge = net.bridge();
        // One left by an earlier process with the same id (killed before it could clean up) goes first.
        let _ = ip(&["link", "del", &bridge]);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", net.host_ip()), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        Ok(net)
    }

    /// The bridge's interface name.
    pub fn bridge(&self) -> String {
        format!("vmb{}", self.tag)
    }

    /// The host's address on the bridge.
    pub fn host_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// A new node named `name` (unique in this net) with the next address (`.10`, `.11`, ...).
    pub fn node(&mut self, name: &str) -> Result<Node, ClusterError> {
        let i = self.namespaces.len();
        if i >= 200 || name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(ClusterError::Invalid(format!("bad node {name:?} (or more than 200 nodes)")));
        }
        let ns = format!("vmi-{}-{name}", self.tag);
        let link = format!("vmh{}{i:02}", self.tag);
        let inner = format!("vmn{}{i:02}", self.tag);
        let [a, b, c] = self.subnet;
        let ip_addr = Ipv4Addr::new(a, b, c, u8::try_from(10 + i).unwrap_or(u8::MAX));
        let _ = ip(&["netns", "del", &ns]);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["link", "add", &link, "type", "veth", "peer", "name", &inner])?;
        ip(&["link", "set", &link, "master", &self.bridge(), "up"])?;
        ip(&["link", "set", &inner, "netns", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{ip_addr}/24"), "dev", &inner])?;
        ip(&["-n", &ns, "link", "set", &inner, "up"])?;
        Ok(Node { name: name.to_owned(), ns, ip: ip_addr, link })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the link, and with it the host's end.
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

impl Node {
    /// `program` to be run inside this node's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns]).arg(program);
        command
    }

    /// Cuts this node off from `other` both ways (blackhole routes in both namespaces); the rest still reach both.
    pub fn partition_from(&self, other: &Node) -> Result<(), ClusterError> {
        ip(&["-n", &self.ns, "route", "add", "blackhole", &format!("{}/32", other.ip)])?;
        ip(&["-n", &other.ns, "route", "add", "blackhole", &format!("{}/32", self.ip)])
    }

    /// Undoes [`Node::partition_from`].
    pub fn heal_from(&self, other: &Node) -> Result<(), ClusterError> {
        ip(&["-n", &self.ns, "route", "del", "blackhole", &format!("{}/32", other.ip)])?;
        ip(&["-n", &other.ns, "route", "del", "blackhole", &format!("{}/32", self.ip)])
    }

    /// Takes this node's link down (`false`: cut off from everyone, the host included) or up again.
    pub fn link(&self, up: bool) -> Result<(), ClusterError> {
        ip(&["link", "set", &self.link, if up { "up" } else { "down" }])
    }
}
