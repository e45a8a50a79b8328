//! A real etcd cluster for a test ([`vmi_cluster::EtcdMembers`]): Debian's `etcd`, one process per member, each on
//! an address of its own in 127.0.0.0/8 (all of it is loopback on Linux) with etcd's usual ports, so clusters of
//! tests running at the same time never share a port and nothing has to guess a free one; or each member on a node
//! of a [`Net`], where partitions between members are real.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};

use vmi_cluster::{CLIENT_PORT, EtcdMembers, Net, PEER_PORT};

use crate::scratch_dir;

static NEXT_NET: AtomicU8 = AtomicU8::new(0);

/// A running etcd cluster that stops (every member killed) when dropped. Panics where the product would return an
/// error: a test has nothing better to do.
#[derive(Debug)]
pub struct EtcdCluster {
    members: EtcdMembers,
    dir: PathBuf,
}

impl Drop for EtcdCluster {
    /// Kills every member and removes the data, unless the test failed (its logs are the evidence).
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.members.kill(i);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl EtcdCluster {
    /// Starts `size` members named `{name}-0`, ... on loopback addresses and waits until each accepts clients.
    pub fn start(name: &str, size: usize) -> EtcdCluster {
        let [_, a, b, _] = free_net().octets();
        let at =
            (0..size).map(|i| (Ipv4Addr::new(127, a, b, u8::try_from(i + 1).expect("few members")), None)).collect();
        EtcdCluster::launch(name, at)
    }

    /// Starts `size` members, each on a node of its own in `net`.
    pub fn start_in(net: &mut Net, name: &str, size: usize) -> EtcdCluster {
        let at = (0..size)
            .map(|i| {
                let node = net.node(&format!("{name}{i}")).expect("a node for an etcd member");
                (node.ip, Some(node))
            })
            .collect();
        EtcdCluster::launch(name, at)
    }

    fn launch(name: &str, at: Vec<(Ipv4Addr, Option<vmi_cluster::Node>)>) -> EtcdCluster {
        let dir = scratch_dir(&format!("etcd-{name}"));
        let members = EtcdMembers::start(name, &dir, at).unwrap_or_else(|e| panic!("starting etcd: {e}"));
        EtcdCluster { members, dir }
    }

    /// Every member's client URL (`http://ip:2379`), live or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.endpoints()
    }

    /// Kills member `i` with SIGKILL (its data stays for [`EtcdCluster::restart`]).
    pub fn kill(&mut self, i: usize) {
        self.members.kill(i);
    }

    /// Starts member `i` again on its data and waits until it accepts connections.
    pub fn restart(&mut self, i: usize) {
        self.members.restart(i).unwrap_or_else(|e| panic!("restarting etcd member {i}: {e}"));
    }

    /// Cuts every member off from every other: no quorum, and every member can say so.
    pub fn partition_all(&self) {
        self.members.partition_all().unwrap_or_else(|e| panic!("partitioning etcd: {e}"));
    }

    /// Undoes [`EtcdCluster::partition_all`].
    pub fn heal_all(&self) {
        self.members.heal_all().unwrap_or_else(|e| panic!("healing etcd: {e}"));
    }

    /// Where member `i` writes its log.
    pub fn log(&self, i: usize) -> PathBuf {
        self.members.log(i)
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
