//! Many machines, simulated honestly on one.
//!
//! - [`Net`] and [`Node`]: each node is a network namespace of its own with one link (a veth pair) to a shared
//!   bridge and an address of its own; the host namespace reaches every node over the bridge. A partition is real:
//!   a node's link taken down ([`Node::link`]), or blackhole routes between two nodes ([`Node::partition_from`]),
//!   never a process paused. Needs root and iproute2.
//! - [`EtcdMembers`]: an etcd cluster (Debian's `etcd`), one process per member, on loopback addresses of their own
//!   or each on a node.
//! - [`Process`]: a child in a process group of its own, killed with the group when dropped.
//!
//! `vmi up --cluster`, the benchmarks and the tests build on it.

mod error;
mod etcd;
mod net;
mod process;

pub use error::ClusterError;
pub use etcd::{CLIENT_PORT, ETCD, EtcdMembers, MemberTls, PEER_PORT};
pub use net::{Net, Node};
pub use process::Process;
