//! [`Leadership`]: whether this control replica runs the placer and the failover loop.
//!
//! One replica over SQLite leads alone. Replicas over etcd elect one through a lease-held key
//! ([`EtcdStore::campaign`](crate::EtcdStore::campaign)); the others serve requests and wait to take over.

use tokio::sync::watch;

/// Whether this replica leads now (cheap to clone; every clone follows the same election).
#[derive(Debug, Clone)]
pub struct Leadership {
    /// `None`: the only replica, always leading.
    election: Option<watch::Receiver<bool>>,
}

impl Leadership {
    /// The only replica: it always leads.
    pub fn alone() -> Leadership {
        Leadership { election: None }
    }

    /// Follows an election's outcome as it changes.
    pub(crate) fn following(election: watch::Receiver<bool>) -> Leadership {
        Leadership { election: Some(election) }
    }

    /// Whether this replica leads at this moment.
    pub fn is_leading(&self) -> bool {
        self.election.as_ref().is_none_or(|e| *e.borrow())
    }

    /// Whether this replica takes part in an election (false: it leads alone).
    pub fn is_elected(&self) -> bool {
        self.election.is_some()
    }

    /// Waits until this replica leads.
    pub async fn until_leading(&mut self) {
        if let Some(e) = self.election.as_mut() {
            // An error means the election stopped, which only happens when the service is stopping.
            let _ = e.wait_for(|leading| *leading).await;
        }
    }
}

impl Default for Leadership {
    fn default() -> Self {
        Leadership::alone()
    }
}
