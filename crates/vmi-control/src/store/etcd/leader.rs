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

use etcd_client::{Client, Compare, CompareOp, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio::time::Instant;

use super::EtcdKv;
use crate::Leadership;

/// The leader's etcd lease time to live: how long a dead leader holds the placer up at most.
pub const LEADER_TTL: Duration = Duration::from_secs(3);
/// How often a replica that does not lead looks whether the leader's key is gone.
const CAMPAIGN_EVERY: Duration = Duration::from_millis(250);
/// How long a leader waits before trying the next etcd member to keep its lease alive through.
const RENEW_RETRY: Duration = Duration::from_millis(100);
/// How long one member may take to renew the lease before the next is tried (a member cut off from the others
/// but not yet aware of it would hold the renewal for etcd's own timeout, seconds).
const RENEW_ATTEMPT: Duration = Duration::from_millis(500);

/// Where the campaign says whether it leads: the [`Leadership`] the service holds (the campaign ends, handing
/// leadership over, once every clone of it is dropped) and the campaign's own tasks (the history's compaction),
/// which must not keep it going.
struct Announce {
    service: watch::Sender<bool>,
    tasks: watch::Sender<bool>,
}

impl Announce {
    /// Says whether this replica leads; true if that changed.
    fn send_replace(&self, leading: bool) -> bool {
        self.tasks.send_replace(leading);
        self.service.send_replace(leading) != leading
    }

    /// Whether the service let go of its [`Leadership`] (it is stopping).
    fn is_closed(&self) -> bool {
        self.service.is_closed()
    }
}

/// Starts campaigning for `key` as `replica` on the client's runtime; the returned [`Leadership`] follows it.
/// With `compact`, the replica compacts etcd's history to what it was that long ago while it leads.
pub(crate) fn campaign(
    handle: &tokio::runtime::Handle,
    kv: Arc<EtcdKv>,
    key: String,
    replica: String,
    compact: Option<Duration>,
) -> Leadership {
    let (service, rx) = watch::channel(false);
    let (tasks, leading) = watch::channel(false);
    if let Some(keep) = compact {
        super::compaction::spawn(handle, kv.clients(), key.clone(), leading, keep);
    }
    let tx = Announce { service, tasks };
    handle.spawn(async move {
        // The lease we led under when it could not be renewed in time (the etcd cluster electing a leader, say):
        // if etcd still has it, the key is still ours, and the next campaign takes leadership back at once
        // instead of waiting for our own key to expire.
        let mut held = None;
        loop {
            let mut client = kv.client();
            if let Err(e) = lead_once(&kv, &mut client, &key, &replica, &tx, &mut held).await {
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

/// A lease's keep-alive stream.
type KeepAlive = (LeaseKeeper, LeaseKeepAliveStream);

/// Waits to win `key` (or takes back `held`, our lease from before), then leads until the lease cannot be renewed
/// in time; returns when it no longer leads, with `held` set if the lease may still be alive.
async fn lead_once(
    kv: &EtcdKv,
    client: &mut Client,
    key: &str,
    replica: &str,
    leading: &Announce,
    held: &mut Option<i64>,
) -> Result<(), etcd_client::Error> {
    let margin = LEADER_TTL / 3;
    // Counted from before the grant (or the keep-alive) was asked: the lease at etcd cannot have started earlier.
    let started = Instant::now();
    let won = match held.take() {
        Some(lease) => {
            let taken = tokio::time::timeout(LEADER_TTL - margin, take_back(client, key, replica, lease)).await;
            match taken {
                Ok(Ok(Some(stream))) => (lease, stream),
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(e)) => {
                    *held = Some(lease);
                    return Err(e);
                }
                // Too slow to lead on: the lease may still be alive; the next campaign asks again.
                Err(_) => {
                    *held = Some(lease);
                    return Ok(());
                }
            }
        }
        None => {
            let Some(lease) = win(client, key, replica).await? else { return Ok(()) };
            // Opening the stream sends the first keep-alive and reads its answer (etcd-client does), so each
            // later answer is the one for the keep-alive sent just before it.
            match client.lease_keep_alive(lease).await {
                Ok(stream) => (lease, stream),
                Err(e) => {
                    *held = Some(lease);
                    return Err(e);
                }
            }
        }
    };
    let (lease, (mut keeper, mut answers)) = won;
    let mut valid_until = started + LEADER_TTL - margin;
    // Getting here may have taken a while (connecting, etcd slow to answer): lead only with time left.
    if Instant::now() >= valid_until {
        *held = Some(lease);
        return Ok(());
    }
    leading.send_replace(true);
    tracing::info!(replica, "leading the control plane (placer and failover)");
    while !leading.is_closed() {
        // Never asleep past the moment the lease could have expired: a renewal may be due sooner than a margin.
        tokio::time::sleep_until((Instant::now() + margin).min(valid_until)).await;
        if Instant::now() >= valid_until {
            tracing::warn!(replica, "leader lease not renewed in time");
            *held = Some(lease);
            return Ok(());
        }
        let sent = Instant::now();
        let answer = match keeper.keep_alive().await {
            Ok(()) => tokio::time::timeout_at(valid_until.max(sent), answers.message()).await,
            Err(e) => Ok(Err(e)),
        };
        match answer {
            Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                valid_until = sent + Duration::from_secs(u64::try_from(answer.ttl()).unwrap_or(0)) - margin;
            }
            // The lease is gone at etcd (it answered TTL 0): someone else may lead now.
            Ok(Ok(Some(_))) => return Ok(()),
            // The member went away (or lost its leader) with the stream: the lease is still ours until it
            // expires, so it is kept alive through another member; losing a member that is not etcd's leader
            // changes nothing.
            Ok(Ok(None)) | Ok(Err(_)) => match keep_alive_elsewhere(kv, lease, valid_until).await {
                Renewal::Renewed(sent, stream) => {
                    (keeper, answers) = *stream;
                    valid_until = sent + LEADER_TTL - margin;
                }
                Renewal::Gone => return Ok(()),
                Renewal::NotInTime => {
                    tracing::warn!(replica, "leader lease not renewed through any etcd member in time");
                    *held = Some(lease);
                    return Ok(());
                }
            },
            // No answer by `valid_until`: the check at the top of the loop ends leading.
            Err(_) => {}
        }
    }
    // The service is stopping: hand leadership over now instead of after the time to live.
    let _ = client.lease_revoke(lease).await;
    Ok(())
}

/// Grants a lease and puts `key` under it if nobody holds the key: the lease, or `None` when someone else leads.
async fn win(client: &mut Client, key: &str, replica: &str) -> Result<Option<i64>, etcd_client::Error> {
    let ttl = i64::try_from(LEADER_TTL.as_secs()).unwrap_or(3);
    let lease = client.lease_grant(ttl, None).await?.id();
    let take = Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(
        key,
        replica,
        Some(PutOptions::new().with_lease(lease)),
    )]);
    if !client.txn(take).await?.succeeded() {
        // Someone leads; our lease is let go (it expires on its own if the revoke is lost).
        let _ = client.lease_revoke(lease).await;
        return Ok(None);
    }
    Ok(Some(lease))
}

/// Whether `e` says the lease asked for is gone at etcd (expired or revoked).
fn lease_gone(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::LeaseKeepAliveError(m) if m == "lease not found")
}

/// Our `lease` from before, renewed, if etcd still has it and `key` is still ours under it: its keep-alive
/// stream; `None` when it is gone (a fresh campaign follows).
async fn take_back(
    client: &mut Client,
    key: &str,
    replica: &str,
    lease: i64,
) -> Result<Option<KeepAlive>, etcd_client::Error> {
    let stream = match client.lease_keep_alive(lease).await {
        Ok(stream) => stream,
        Err(e) if lease_gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let now = client.get(key, None).await?;
    if !now.kvs().first().is_some_and(|kv| kv.lease() == lease && kv.value() == replica.as_bytes()) {
        let _ = client.lease_revoke(lease).await;
        return Ok(None);
    }
    tracing::info!(replica, "took leadership back under the lease it had");
    Ok(Some(stream))
}

/// What keeping a lease alive through other members came to.
enum Renewal {
    /// Renewed by a keep-alive sent at this instant, on this stream.
    Renewed(Instant, Box<KeepAlive>),
    /// The lease is gone at etcd.
    Gone,
    /// No member renewed it in time; it may still be alive.
    NotInTime,
}

/// Opens a keep-alive of `lease` on the next members in turn until one renews it, before `until`. Opening the
/// stream renews the lease (etcd-client reads the first answer and refuses a lease that is gone).
async fn keep_alive_elsewhere(kv: &EtcdKv, lease: i64, until: Instant) -> Renewal {
    while Instant::now() < until {
        kv.prefer_next();
        let mut client = kv.client();
        let sent = Instant::now();
        match tokio::time::timeout_at(until.min(sent + RENEW_ATTEMPT), client.lease_keep_alive(lease)).await {
            Ok(Ok(stream)) => return Renewal::Renewed(sent, Box::new(stream)),
            Ok(Err(e)) if lease_gone(&e) => return Renewal::Gone,
            Ok(Err(e)) => tracing::debug!(error = %e, "leader lease: keep-alive refused; trying the next etcd member"),
            Err(_) => tracing::debug!("leader lease: no keep-alive answer in time; trying the next etcd member"),
        }
        tokio::time::sleep(RENEW_RETRY).await;
    }
    Renewal::NotInTime
}
