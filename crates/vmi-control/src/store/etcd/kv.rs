//! A blocking face on an etcd cluster: one tokio runtime of its own runs the gRPC client, and every call waits
//! for its answer on a plain channel, so the synchronous [`Store`](crate::Store) methods can call it from any
//! thread (an async handler's included) without nesting runtimes.
//!
//! [`Tx`] is an optimistic transaction over it: reads remember each key's revision, writes are buffered, and the
//! commit is one etcd transaction that applies the writes only if nothing read has changed since (else the whole
//! closure runs again). That makes every store operation serializable, the same as SQLite's `IMMEDIATE`
//! transactions, without a lock held across round trips.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, WatchOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ControlError;

/// How long one request to etcd may take before the next member is asked (or the caller gets
/// [`ControlError::Unavailable`]). A request takes milliseconds; one waits longer only while the cluster elects a
/// leader (about a second), and a site's lease leaves no time for long waits.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one call may spend trying members in turn.
const CALL_DEADLINE: Duration = Duration::from_millis(1500);
/// How long a call keeps asking, from its start, while etcd elects a leader (members answer "no leader", or a
/// read times out on a member still following the dead one): the election takes milliseconds once a member
/// notices (a second or two if votes split), so a call made then is answered a little later instead of failing.
/// Without quorum it fails after this long (plus the last request's time), within the 2 s the service's own
/// clients wait.
const ELECTION_WAIT: Duration = Duration::from_millis(1500);
/// How long a call waits before asking the members again while they elect a leader.
const ELECTION_POLL: Duration = Duration::from_millis(100);
/// How many times an optimistic transaction runs again after losing a race before it gives up.
const MAX_ATTEMPTS: usize = 64;

thread_local! {
    /// When the etcd calls made on this thread stop asking again during an election ([`answer_by`]).
    static GIVE_UP_AT: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// Runs `work` with every etcd call it makes on this thread giving up by `by` rather than waiting out an election:
/// for work whose caller stops waiting then (a heartbeat's write), so that it does not hold its thread longer.
pub(crate) fn answer_by<T>(by: std::time::Instant, work: impl FnOnce() -> T) -> T {
    let before = GIVE_UP_AT.replace(Some(by));
    let out = work();
    GIVE_UP_AT.set(before);
    out
}

/// A connected etcd client with its own runtime: one client per member, the one that answered last first.
///
/// etcd-client balances requests over every endpoint and fails those sent to a dead member; a client per member
/// lets a request go to the next member instead when one cannot be reached or has no leader (a member cut off
/// from the majority answers "no leader" at once, because requests require one).
pub(crate) struct EtcdKv {
    runtime: Option<tokio::runtime::Runtime>,
    clients: Vec<Client>,
    /// The same members without "requires a leader": to ask a member whether it has one.
    status_clients: Vec<Client>,
    preferred: AtomicUsize,
    /// Writing transactions committed.
    commits: std::sync::atomic::AtomicU64,
    /// Every key this store writes starts with it (so one cluster can hold several stores, e.g. per test).
    prefix: String,
}

impl std::fmt::Debug for EtcdKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdKv").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Drop for EtcdKv {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio forbids inside another runtime; nothing of ours is pending.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What a prefix watch ([`EtcdKv::watch_prefix`]) saw.
pub(crate) enum Watched<'a> {
    /// The watch (re)started; changes made while none ran were not seen.
    Started,
    /// Changes under the prefix, in commit order.
    Events(&'a [etcd_client::Event]),
    /// Every change committed up to this instant has been delivered: an answer came at or past the revision a
    /// linearizable read found then (asked every [`WATCH_PROGRESS`]), so a member that lags behind the cluster
    /// cannot say so until it has caught up.
    Current(std::time::Instant),
    /// The watch broke (a member went away or lost its leader); it starts again, on the next member.
    Lost,
}

/// How long a broken watch waits before it starts again.
const WATCH_RETRY: Duration = Duration::from_millis(500);
/// How often a watch asks etcd to say it is up to date (so a watch that lags behind can be told from one that
/// has nothing to say).
const WATCH_PROGRESS: Duration = Duration::from_millis(500);

/// One stored value with the revision it was last written at.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The key without the store's prefix.
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

pub(crate) fn unavailable(err: etcd_client::Error) -> ControlError {
    ControlError::Unavailable(format!("etcd: {err}"))
}

impl EtcdKv {
    /// Connects to the cluster at `endpoints` (`http://host:port` each); keys live under `prefix`.
    pub(crate) fn connect(
        endpoints: &[String],
        prefix: &str,
        tls: Option<super::EtcdTls>,
    ) -> Result<EtcdKv, ControlError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("vmi-etcd")
            .enable_all()
            .build()
            .map_err(|e| ControlError::Unavailable(format!("cannot start the etcd client's runtime: {e}")))?;
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_require_leader(true);
        let options = match tls {
            Some(tls) => options.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(tls.ca_pem))
                    .identity(etcd_client::Identity::from_pem(tls.cert_pem, tls.key_pem)),
            ),
            None => options,
        };
        let mut clients = Vec::with_capacity(endpoints.len());
        let mut status_clients = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            for (list, options) in
                [(&mut clients, options.clone()), (&mut status_clients, options.clone().with_require_leader(false))]
            {
                let endpoint = endpoint.clone();
                // Lazy: a member down now is only skipped, not an error.
                let client = run_on(&runtime, async move { Client::connect([endpoint], Some(options)).await })?
                    .map_err(unavailable)?;
                list.push(client);
            }
        }
        Ok(EtcdKv {
            runtime: Some(runtime),
            clients,
            status_clients,
            preferred: AtomicUsize::new(0),
            commits: std::sync::atomic::AtomicU64::new(0),
            prefix: prefix.to_owned(),
        })
    }

    /// Whether a majority of the cluster's voting members answered, within `within`, that they have no leader:
    /// then no write, and no lease expiry, can commit until a new leader is elected, which renews every lease for
    /// its time to live. The voters come from the cluster's member list (not from the endpoints given, which may
    /// be fewer, or one name for many). This needs etcd without pre-vote (3.4's default): a follower that lost its
    /// leader then campaigns in a new term, so the old leader cannot take it back without an election; with
    /// pre-vote it could, and the proof would not hold (etcd 3.4 does not report a candidate's term in its status,
    /// so this cannot be checked from here).
    pub(crate) fn majority_without_leader(&self, within: Duration) -> Result<bool, ControlError> {
        let runtime = self.runtime.as_ref().ok_or_else(|| ControlError::Unavailable("etcd client closed".into()))?;
        let clients = self.status_clients.clone();
        let (voters, statuses) = run_on(runtime, async move {
            let mut voters: Option<std::collections::HashSet<u64>> = None;
            for client in &clients {
                let mut client = client.clone();
                if let Ok(Ok(list)) = tokio::time::timeout(within, client.member_list()).await {
                    voters = Some(list.members().iter().filter(|m| !m.is_learner()).map(|m| m.id()).collect());
                    break;
                }
            }
            // All members asked at once, so the answers describe one moment (as nearly as they can).
            let asks: Vec<_> = clients
                .into_iter()
                .map(|mut c| {
                    tokio::spawn(async move {
                        match tokio::time::timeout(within, c.status()).await {
                            Ok(Ok(s)) => s.header().map(|h| (h.member_id(), s.leader(), s.raft_term())),
                            _ => None,
                        }
                    })
                })
                .collect();
            let mut statuses = Vec::new();
            for ask in asks {
                if let Ok(Some(status)) = ask.await {
                    statuses.push(status);
                }
            }
            (voters, statuses)
        })?;
        let Some(voters) = voters else { return Ok(false) };
        let leaderless: std::collections::HashSet<u64> = statuses
            .iter()
            .filter(|(id, leader, _)| *leader == 0 && voters.contains(id))
            .map(|(id, _, _)| *id)
            .collect();
        Ok(!voters.is_empty() && leaderless.len() * 2 > voters.len())
    }

    /// Runs `work` with a client on this store's runtime and waits for it, trying each member once round while
    /// they cannot be reached. `timeouts_retried`: whether a request that timed out may be sent again (not for
    /// a write, which may have been applied).
    pub(crate) fn call<T, F, Fut>(&self, timeouts_retried: bool, work: F) -> Result<T, ControlError>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        self.call_raw(timeouts_retried, work)?.map_err(unavailable)
    }

    /// As [`EtcdKv::call`], with etcd's own error when every member failed (the caller may need to know whether
    /// the request could have been applied).
    fn call_raw<T, F, Fut>(
        &self,
        timeouts_retried: bool,
        work: F,
    ) -> Result<Result<T, etcd_client::Error>, ControlError>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let runtime = self.runtime.as_ref().ok_or_else(|| ControlError::Unavailable("etcd client closed".into()))?;
        let n = self.clients.len();
        let mut last = None;
        let started = std::time::Instant::now();
        let deadline = GIVE_UP_AT.get();
        let give_up = deadline.map_or(started + ELECTION_WAIT, |by| by.min(started + ELECTION_WAIT));
        // Whether a member said "no leader" during this call (or, for a read, left it in doubt): an election is
        // under way, or quorum is lost.
        let mut electing = false;
        loop {
            let first = self.preferred.load(Ordering::Relaxed);
            for attempt in 0..n {
                if attempt > 0 && (started.elapsed() >= CALL_DEADLINE || std::time::Instant::now() >= give_up) {
                    break;
                }
                let i = (first + attempt) % n;
                let asked = work(self.clients[i].clone());
                let answer = match deadline {
                    // The caller stops waiting then: so does each request (it may still be applied: a timeout).
                    Some(by) => run_on(runtime, async move {
                        match tokio::time::timeout_at(tokio::time::Instant::from_std(by), asked).await {
                            Ok(answer) => answer,
                            Err(_) => Err(etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded(
                                "the caller's deadline passed",
                            ))),
                        }
                    })?,
                    None => run_on(runtime, asked)?,
                };
                match answer {
                    Ok(value) => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return Ok(Ok(value));
                    }
                    Err(e) if unreachable(&e, timeouts_retried) => {
                        tracing::debug!(member = i, error = %e, "etcd member unreachable; trying the next");
                        electing |= no_leader(&e) || (timeouts_retried && outcome_unknown(&e));
                        // The next call starts at the next member too.
                        self.preferred.store(i + 1, Ordering::Relaxed);
                        last = Some(e);
                    }
                    Err(e) => {
                        self.preferred.store(i + 1, Ordering::Relaxed);
                        return Ok(Err(e));
                    }
                }
            }
            // "No leader" is said before the request is looked at (nothing was applied), and a read may be sent
            // again: worth asking again once the members have elected a leader.
            if !electing || std::time::Instant::now() + ELECTION_POLL >= give_up {
                break;
            }
            // Handlers call the store on the service's workers: waiting there must not starve the others
            // (heartbeats above all, which answer "placements frozen" while quorum is lost).
            crate::off_the_runtime(|| std::thread::sleep(ELECTION_POLL));
        }
        last.map(Err).ok_or_else(|| ControlError::Unavailable("no etcd endpoint".into()))
    }

    /// The runtime the client runs on (for long-lived tasks such as lease keep-alives and watches).
    pub(crate) fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.runtime.as_ref().map(|r| r.handle().clone())
    }

    /// Watches every key under `prefix` for as long as this store lives, telling `seen` what happens, on the
    /// store's runtime (so `seen` must not block), and asking for progress every [`WATCH_PROGRESS`]. Large
    /// answers come in fragments (each under etcd's message limit). A broken watch is [`Watched::Lost`], then
    /// started again on the next member.
    pub(crate) fn watch_prefix(&self, prefix: &str, mut seen: impl FnMut(Watched<'_>) + Send + 'static) {
        let Some(handle) = self.handle() else { return };
        // Not the store itself: the task must not keep it alive (it ends with the store's runtime).
        let (clients, full, first) = (self.clients.clone(), self.full(prefix), self.preferred.load(Ordering::Relaxed));
        handle.spawn(async move {
            for i in first.. {
                let mut client = clients[i % clients.len()].clone();
                let options = WatchOptions::new().with_prefix().with_fragment();
                if let Ok(stream) = client.watch(full.clone(), Some(options)).await {
                    let (mut asks, mut answers) = stream.split();
                    let mut progress = tokio::time::interval(WATCH_PROGRESS);
                    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    // The cluster's revision when progress was last asked for, and when: an answer at or past it
                    // proves the watch current as of then.
                    let mut asked: Option<(i64, std::time::Instant)> = None;
                    loop {
                        let response = tokio::select! {
                            _ = progress.tick() => {
                                // The revision every member's watch must reach to be current now.
                                let at = std::time::Instant::now();
                                if let Some(revision) = revision_now(&mut client, &full).await {
                                    asked = Some((revision, at));
                                }
                                if asks.request_progress().await.is_err() {
                                    break;
                                }
                                continue;
                            }
                            response = answers.message() => response,
                        };
                        let Ok(Some(response)) = response else { break };
                        if response.created() {
                            seen(Watched::Started);
                        }
                        if !response.events().is_empty() {
                            seen(Watched::Events(response.events()));
                        }
                        if response.canceled() {
                            break;
                        }
                        let revision = response.header().map_or(0, |h| h.revision());
                        if let Some((wanted, at)) = asked
                            && revision >= wanted
                        {
                            asked = None;
                            seen(Watched::Current(at));
                        }
                    }
                }
                seen(Watched::Lost);
                tokio::time::sleep(WATCH_RETRY).await;
            }
        });
    }

    /// A client per member (cheap to clone), for tasks of their own on this store's runtime.
    pub(crate) fn clients(&self) -> Vec<Client> {
        self.clients.clone()
    }

    /// The client of the member that answered last (cheap to clone).
    pub(crate) fn client(&self) -> Client {
        self.clients[self.preferred.load(Ordering::Relaxed) % self.clients.len()].clone()
    }

    /// Prefers the next member (after the preferred one failed a long-lived call such as a lease keep-alive).
    pub(crate) fn prefer_next(&self) {
        self.preferred.fetch_add(1, Ordering::Relaxed);
    }

    /// Makes member `i` (in the order of the endpoints given) the one asked first.
    #[cfg(test)]
    pub(crate) fn prefer(&self, i: usize) {
        self.preferred.store(i, Ordering::Relaxed);
    }

    /// Which member (in the order of the endpoints given) leads the etcd cluster now, if one answers that.
    #[cfg(test)]
    pub(crate) fn leader_member(&self) -> Option<usize> {
        let runtime = self.runtime.as_ref()?;
        let clients = self.status_clients.clone();
        run_on(runtime, async move {
            let mut ids = Vec::new();
            for mut c in clients {
                ids.push(c.status().await.ok().map(|s| (s.header().map(|h| h.member_id()), s.leader())));
            }
            let leader = ids.iter().flatten().map(|(_, leader)| *leader).find(|l| *l != 0)?;
            ids.iter().position(|s| s.is_some_and(|(id, _)| id == Some(leader)))
        })
        .ok()
        .flatten()
    }

    /// `key` with the store's prefix.
    pub(crate) fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn strip(&self, key: &[u8]) -> String {
        let key = String::from_utf8_lossy(key);
        key.strip_prefix(self.prefix.as_str()).unwrap_or(&key).to_owned()
    }

    /// One key, if present.
    pub(crate) fn get(&self, key: &str) -> Result<Option<Entry>, ControlError> {
        let full = self.full(key);
        let resp = self.call(true, |mut c| {
            let full = full.clone();
            async move { c.get(full, None).await }
        })?;
        Ok(resp.kvs().first().map(|kv| Entry {
            key: key.to_owned(),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
        }))
    }

    /// Every value `key` held, oldest first, as etcd's revisions keep them: each version read at the revision
    /// before the next one's, back to the last compaction; and whether that is all of them (false: older ones
    /// were compacted away).
    pub(crate) fn versions(&self, key: &str) -> Result<(Vec<Entry>, bool), ControlError> {
        let mut versions = Vec::new();
        let mut at = 0; // 0: now
        loop {
            let full = self.full(key);
            let resp = match self.call_raw(true, |mut c| {
                let full = full.clone();
                async move { c.get(full, Some(GetOptions::new().with_revision(at))).await }
            })? {
                Ok(resp) => resp,
                // Older revisions were compacted away: the history kept starts with the versions read so far.
                Err(e) if compacted(&e) => {
                    versions.reverse();
                    return Ok((versions, false));
                }
                Err(e) => return Err(unavailable(e)),
            };
            let Some(kv) = resp.kvs().first() else { break };
            versions.push(Entry { key: key.to_owned(), value: kv.value().to_vec(), mod_revision: kv.mod_revision() });
            if kv.version() <= 1 {
                break;
            }
            at = kv.mod_revision() - 1;
        }
        versions.reverse();
        Ok((versions, true))
    }

    /// Every key under `prefix` (by key, or newest key first with `descending`), at most `limit` (0: all), and
    /// the cluster revision the answer was read at.
    pub(crate) fn range(
        &self,
        prefix: &str,
        descending: bool,
        limit: i64,
        before: Option<&str>,
    ) -> Result<(Vec<Entry>, i64), ControlError> {
        let full = self.full(prefix);
        let end = prefix_end(full.as_bytes());
        // `before` narrows a descending scan to keys below it (paging).
        let (start, end) = match before {
            Some(b) => (full.clone().into_bytes(), self.full(b).into_bytes()),
            None => (full.clone().into_bytes(), end),
        };
        let order = if descending { SortOrder::Descend } else { SortOrder::Ascend };
        let options = GetOptions::new().with_range(end).with_sort(SortTarget::Key, order).with_limit(limit);
        let mut resp = self.call(true, |mut c| {
            let (start, options) = (start.clone(), options.clone());
            async move { c.get(start, Some(options)).await }
        })?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let entries = resp
            .take_kvs()
            .into_iter()
            .map(|kv| Entry { key: self.strip(kv.key()), value: kv.value().to_vec(), mod_revision: kv.mod_revision() })
            .collect();
        Ok((entries, revision))
    }

    /// Puts one key outside any transaction (content-addressed blobs, which are never rewritten).
    pub(crate) fn put_raw(&self, key: &str, value: Vec<u8>) -> Result<(), ControlError> {
        let full = self.full(key);
        // Content-addressed: writing the same bytes twice is harmless, so a timed-out put may be sent again.
        self.call(true, |mut c| {
            let (full, value) = (full.clone(), value.clone());
            async move { c.put(full, value, None).await }
        })?;
        Ok(())
    }

    /// Writing transactions committed so far.
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `body` as an optimistic transaction until it commits, fails, or loses [`MAX_ATTEMPTS`] races.
    pub(crate) fn atomically<T>(
        &self,
        mut body: impl FnMut(&mut Tx<'_>) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        for _ in 0..MAX_ATTEMPTS {
            let mut tx = Tx { kv: self, reads: BTreeMap::new(), ranges: Vec::new(), writes: BTreeMap::new() };
            let value = body(&mut tx)?;
            if tx.commit()? {
                return Ok(value);
            }
        }
        Err(ControlError::Unavailable(format!("etcd: gave up after {MAX_ATTEMPTS} conflicting transactions")))
    }
}

/// Whether `e` says the member could not be reached or has no leader (so another member may answer).
fn unreachable(e: &etcd_client::Error, timeouts_retried: bool) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            // A write goes elsewhere only if it was surely not applied: not sent, or refused unread.
            tonic::Code::Unavailable => timeouts_retried || !maybe_applied(status),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown => timeouts_retried,
            _ => false,
        },
        _ => false,
    }
}

/// Whether an "unavailable" answer may follow a proposal that etcd applied after all ("leader changed", "request
/// timed out", a connection lost once the request was out): only a connection never made and "no leader" say
/// the request was not looked at.
fn maybe_applied(status: &tonic::Status) -> bool {
    let message = status.message();
    !(message.contains("no leader") || message.contains("connect"))
}

/// The cluster's revision now, by a linearizable read of `key` through `client` (the member confirms with the
/// leader and applies up to it first), within [`REQUEST_TIMEOUT`]; `None` if it does not answer.
pub(crate) async fn revision_now(client: &mut Client, key: &str) -> Option<i64> {
    let read = client.get(key, Some(GetOptions::new().with_count_only()));
    let read = tokio::time::timeout(REQUEST_TIMEOUT, read).await.ok()?.ok()?;
    read.header().map(|h| h.revision())
}

/// Whether `e` says the revision asked for was compacted away.
fn compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(status)
        if status.code() == tonic::Code::OutOfRange && status.message().contains("compacted"))
}

/// Whether `e` is a member's "no leader" (an election under way, or no quorum): the request was refused unread.
fn no_leader(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(status)
        if status.code() == tonic::Code::Unavailable && status.message().contains("no leader"))
}

/// Whether `e` leaves open whether a request that was sent was applied (its connection broke, or it timed out).
fn outcome_unknown(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            tonic::Code::Unknown | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => true,
            tonic::Code::Unavailable => maybe_applied(status),
            _ => false,
        },
        _ => false,
    }
}

/// Runs `fut` on `runtime` and blocks this thread (not a runtime worker of `runtime`) until it ends.
fn run_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, ControlError> {
    let (tx, rx) = mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| ControlError::Unavailable("etcd client stopped".into()))
}

/// The first key after every key starting with `prefix` (etcd's range end for a prefix).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A write buffered until commit: a value (attached to an etcd lease, if one is given), or a deletion.
type Write = Option<(Vec<u8>, Option<i64>)>;

/// An optimistic transaction (see the module doc).
pub(crate) struct Tx<'a> {
    kv: &'a EtcdKv,
    /// Each key read and the revision it was at (0: absent).
    reads: BTreeMap<String, i64>,
    /// Each prefix listed and the cluster revision of the listing.
    ranges: Vec<(String, i64)>,
    writes: BTreeMap<String, Write>,
}

impl Tx<'_> {
    /// The raw value of `key`, as this transaction would leave it.
    pub(crate) fn get_raw(&mut self, key: &str) -> Result<Option<Vec<u8>>, ControlError> {
        if let Some(write) = self.writes.get(key) {
            return Ok(write.as_ref().map(|(value, _)| value.clone()));
        }
        let entry = self.kv.get(key)?;
        self.reads.insert(key.to_owned(), entry.as_ref().map_or(0, |e| e.mod_revision));
        Ok(entry.map(|e| e.value))
    }

    /// The revision `key` was last written at (0: absent), without its value; a read like [`Tx::get_raw`]'s (a
    /// change before commit makes the commit fail). Not for a key this transaction writes.
    pub(crate) fn revision(&mut self, key: &str) -> Result<i64, ControlError> {
        let full = self.kv.full(key);
        let resp = self.kv.call(true, |mut c| {
            let full = full.clone();
            async move { c.get(full, Some(GetOptions::new().with_keys_only())).await }
        })?;
        let revision = resp.kvs().first().map_or(0, |kv| kv.mod_revision());
        self.reads.insert(key.to_owned(), revision);
        Ok(revision)
    }

    /// The JSON value of `key`.
    pub(crate) fn get<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, ControlError> {
        self.get_raw(key)?.map(|bytes| decode(key, &bytes)).transpose()
    }

    /// Every `(key, value)` under `prefix`, by key, as this transaction would leave them. A later change under
    /// the prefix (a new or rewritten key) makes the commit fail; deletions under a listed prefix are not
    /// watched, so the store never deletes under a prefix it lists for a decision.
    pub(crate) fn list<T: DeserializeOwned>(&mut self, prefix: &str) -> Result<Vec<(String, T)>, ControlError> {
        let (entries, revision) = self.kv.range(prefix, false, 0, None)?;
        self.ranges.push((prefix.to_owned(), revision));
        let mut merged: BTreeMap<String, Vec<u8>> = entries.into_iter().map(|e| (e.key, e.value)).collect();
        for (key, write) in self.writes.range(prefix.to_owned()..) {
            if !key.starts_with(prefix) {
                break;
            }
            match write {
                Some((value, _)) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        merged.into_iter().map(|(k, v)| decode(&k, &v).map(|t| (k, t))).collect()
    }

    /// Writes `value` as JSON at commit.
    pub(crate) fn put<T: Serialize>(&mut self, key: &str, value: &T) -> Result<(), ControlError> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| ControlError::Unavailable(format!("cannot encode {key}: {e}")))?;
        self.writes.insert(key.to_owned(), Some((bytes, None)));
        Ok(())
    }

    /// Writes `value` as JSON at commit, attached to etcd lease `lease` (etcd deletes it when the lease expires).
    pub(crate) fn put_leased<T: Serialize>(&mut self, key: &str, value: &T, lease: i64) -> Result<(), ControlError> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| ControlError::Unavailable(format!("cannot encode {key}: {e}")))?;
        self.writes.insert(key.to_owned(), Some((bytes, Some(lease))));
        Ok(())
    }

    /// Deletes `key` at commit.
    pub(crate) fn delete(&mut self, key: &str) {
        self.writes.insert(key.to_owned(), None);
    }

    /// Applies the writes if nothing read changed; false if something did (run again).
    fn commit(self) -> Result<bool, ControlError> {
        if self.writes.is_empty() {
            // A read-only transaction saw each key as it was when read; nothing to apply.
            return Ok(true);
        }
        let kv = self.kv;
        // What each key holds once this transaction applied (for an answer that never came).
        let written: Vec<(String, Option<Vec<u8>>)> =
            self.writes.iter().map(|(key, w)| (key.clone(), w.as_ref().map(|(value, _)| value.clone()))).collect();
        let mut compares: Vec<Compare> =
            self.reads.iter().map(|(key, rev)| Compare::mod_revision(kv.full(key), CompareOp::Equal, *rev)).collect();
        for (prefix, revision) in &self.ranges {
            let full = kv.full(prefix);
            let end = prefix_end(full.as_bytes());
            compares.push(Compare::mod_revision(full, CompareOp::Less, revision + 1).with_range(end));
        }
        let ops: Vec<TxnOp> = self
            .writes
            .into_iter()
            .map(|(key, write)| match write {
                Some((value, lease)) => {
                    TxnOp::put(kv.full(&key), value, lease.map(|l| PutOptions::new().with_lease(l)))
                }
                None => TxnOp::delete(kv.full(&key), None),
            })
            .collect();
        let txn = Txn::new().when(compares).and_then(ops);
        match kv.call_raw(false, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })? {
            Ok(resp) => {
                if resp.succeeded() {
                    kv.commits.fetch_add(1, Ordering::Relaxed);
                }
                Ok(resp.succeeded())
            }
            // Sent, and no answer: it may have been applied. Look (on any member) whether every write landed.
            Err(e) if outcome_unknown(&e) => {
                let landed = written.iter().try_fold(true, |all, (key, value)| {
                    let now = kv.get(key)?;
                    Ok::<_, ControlError>(all && now.map(|e| e.value) == *value)
                })?;
                tracing::debug!(error = %e, landed, "etcd transaction without an answer; looked whether it landed");
                Ok(landed)
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ControlError::Unavailable(format!("etcd holds a bad value at {key}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_ends_at_its_last_byte_plus_one() {
        assert_eq!(prefix_end(b"vmi/users/"), b"vmi/users0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
