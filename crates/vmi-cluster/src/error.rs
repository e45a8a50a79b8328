//! What can go wrong building a simulated cluster.

/// An error of [`Net`](crate::Net) or [`EtcdMembers`](crate::EtcdMembers).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Namespaces and links need root.
    #[error("network namespaces need root (run as root, or without the simulated cluster)")]
    NotRoot,
    /// An `ip` command failed.
    #[error("ip {args}: {stderr}")]
    Ip {
        /// Its arguments.
        args: String,
        /// What it said.
        stderr: String,
    },
    /// A program could not be started or a file written.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// etcd is not installed.
    #[error("{0} is missing: run ./scripts/setup (Debian's etcd-server)")]
    NoEtcd(&'static str),
    /// An etcd member exited or did not listen in time.
    #[error("etcd member {member} {what}; its log: {log}")]
    Member {
        /// Which member.
        member: String,
        /// What happened.
        what: String,
        /// Where its log is.
        log: String,
    },
    /// Bad arguments.
    #[error("{0}")]
    Invalid(String),
}

impl ClusterError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> ClusterError {
        ClusterError::Io { what: what.into(), source }
    }
}
