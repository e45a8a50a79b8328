//! Leader election among control replicas: the replica whose put of `control/leader` (attached to its own etcd
//! lease) won runs the placer and the failover loop; the others answer requests only.
//!
//! A leader keeps its lease alive every third of its time to live and stops leading, on its own clock, a margin
//! before the lease could have expired at etcd (the time it *sent* the last acknowledged keep-alive plus the time
//! to live, less a third): so two replicas may both think they lead only if clocks run at very different rates.
//! Even then nothing breaks: every placement change is a compare-and-set on its epoch, so leadership saves
//! duplicate work, it does not keep phones single.

use std::time::Duration;

use std::sync::Arc;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio::time::Instant;

use super::EtcdKv;
use crate::Leadership;

/// The leader's etcd lease time to live: how long a dead leader holds the placer up at most.
pub const LEADER_TTL: Duration = Duration::from_secs(3);
/// How often a replica that does not lead looks whether the leader's key is gone.
const CAMPAIGN_EVERY: Duration = Duration::from_millis(250);

/// Starts campaigning for `key` as `replica` on the client's runtime; the returned [`Leadership`] follows it.
pub(crate) fn campaign(handle: &tokio::runtime::Handle, kv: Arc<EtcdKv>, key: String, replica: String) -> Leadership {
    let (tx, rx) = watch::channel(false);
    handle.spawn(async move {
        loop {
            let mut client = kv.client();
            if let Err(e) = lead_once(&mut client, &key, &replica, &tx).await {
                tracing::debug!(error = %e, replica, "leader election: etcd member unreachable; not leading");
                kv.prefer_next();
            }
            if tx.send_replace(false) {
                tracing::warn!(replica, "stopped leading the control plane");
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(CAMPAIGN_EVERY).await;
        }
    });
    Leadership::following(rx)
}

/// Waits to win `key`, then leads until the lease cannot be renewed in time; returns when it no longer leads.
async fn lead_once(
    client: &mut Client,
    key: &str,
    replica: &str,
    leading: &watch::Sender<bool>,
) -> Result<(), etcd_client::Error> {
    let ttl = i64::try_from(LEADER_TTL.as_secs()).unwrap_or(3);
    // Counted from before the grant was asked: the lease at etcd cannot have started earlier.
    let granted = Instant::now();
    let lease = client.lease_grant(ttl, None).await?.id();
    let take = Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(
        key,
        replica,
        Some(PutOptions::new().with_lease(lease)),
    )]);
    if !client.txn(take).await?.succeeded() {
        // Someone leads; our lease is let go (it expires on its own if the revoke is lost).
        let _ = client.lease_revoke(lease).await;
        return Ok(());
    }
    let margin = LEADER_TTL / 3;
    let mut valid_until = granted + LEADER_TTL - margin;
    leading.send_replace(true);
    tracing::info!(replica, "leading the control plane (placer and failover)");
    // Opening the stream sends the first keep-alive and reads its answer (etcd-client does), so each later
    // answer is the one for the keep-alive sent just before it.
    let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
    while !leading.is_closed() {
        tokio::time::sleep(margin).await;
        let sent = Instant::now();
        keeper.keep_alive().await?;
        match tokio::time::timeout_at(valid_until.max(sent), answers.message()).await {
            Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                valid_until = sent + Duration::from_secs(u64::try_from(answer.ttl()).unwrap_or(0)) - margin;
            }
            // The lease is gone at etcd (it answered TTL 0), or the stream ended: someone else may lead now.
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => {}
        }
        if Instant::now() >= valid_until {
            tracing::warn!(replica, "leader lease not renewed in time");
            return Ok(());
        }
    }
    // The service is stopping: hand leadership over now instead of after the time to live.
    let _ = client.lease_revoke(lease).await;
    Ok(())
}
