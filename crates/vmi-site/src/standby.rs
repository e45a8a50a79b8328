//! Standby copies, the site's lease, and failover (docs/FAILOVER.md).
//!
//! - **Records.** While a phone changes, its task takes a record at most every
//!   [`DURABLE_EVERY`](crate::phone::DURABLE_EVERY): an incremental snapshot (the pages written since the record
//!   before) with the input numbering, or a full state when the chain must start again. [`Replication::write`]
//!   appends it to the phone's journal on this site's disk and, at the same time, sends it to the phone's standby
//!   site: the nearest other healthy site. Once both hold it, the inputs it holds are durable, and the terminals
//!   are told (`InputDurable`).
//! - **The standby side** keeps the same files under `standby/USER/` and takes a full state only from the site the
//!   placement names at the epoch it claims (asked of the control service), then records from that site in chain
//!   order; the owner names it to the control service as the phone's standby for that epoch.
//! - **The lease.** Each heartbeat answered renews the site's lease: valid until the heartbeat's *sending* time
//!   plus [`LEASE_MS`] minus [`LEASE_MARGIN_MS`]. A phone that has a standby copy runs only while the lease is
//!   valid (the phone task checks before each input, timer, frame and record), so it has stopped before the control
//!   service, counting [`LEASE_MS`] from when it *received* the heartbeat, fails it over.
//! - **Failover.** The control service moves the placement (compare-and-set, the epoch rises) to the standby site and
//!   tells it to start the phone from the copy of the epoch it moved it from ([`SiteState::promote_standby`],
//!   retried until the site answers). Every heartbeat answer lists the phones placed on the site: one that runs
//!   here but is not listed was failed over while this site had no lease, and is dropped, its state set aside
//!   ([`SiteState::after_heartbeat`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

use vmi_control_api::model::{LEASE_MARGIN_MS, LEASE_MS, SiteStatus};
use vmi_control_api::url::segment;
use vmi_control_api::{Caller, ControlClient};
use vmi_engine::SnapshotId;

use crate::persist::{StateStore, append_journal, read_phone};
use crate::phone::SavedPhone;
use crate::{SiteError, SiteState};

/// Where standby copies live in a site's data directory.
pub const STANDBY_DIR: &str = "standby";
/// How long the list of sites a standby is chosen from is used before it is asked again.
const SITES_FRESH: Duration = Duration::from_secs(5);
/// How long a site that did not take a record is passed over when choosing the standby.
const PASS_OVER: Duration = Duration::from_secs(10);
/// Time allowed for one record to reach the standby site, plus [`push_timeout`]'s share for its size.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// The rate a record is allowed to take on its way, bytes per second: any link between sites keeps it, and a full
/// state of a full-system guest (tens of megabytes) gets the time it needs.
const PUSH_RATE: f64 = 10e6;

/// Time allowed for a record of `bytes` to reach the standby site.
fn push_timeout(bytes: usize) -> Duration {
    PUSH_TIMEOUT + Duration::from_secs_f64(bytes as f64 / PUSH_RATE)
}

/// The site's lease at the control service.
#[derive(Default)]
pub struct Lease {
    /// Until when this site may run phones that have a standby copy (`None`: no heartbeat answered yet).
    valid_until: Mutex<Option<Instant>>,
    /// When the last heartbeat that renewed the lease was sent.
    renewal_sent: Mutex<Option<Instant>>,
    /// Whether the last answer was "placements frozen" (to say so once, not on every heartbeat).
    frozen: std::sync::atomic::AtomicBool,
}

/// Of the lease's time, what a "placements frozen" answer may not use: it must arrive while the lease cannot
/// have expired at the control plane's store, whose clock may run a little apart from this site's.
const FROZEN_SLACK_MS: u64 = 500;

impl Lease {
    /// Whether the site holds its lease now.
    pub fn live(&self) -> bool {
        self.valid_until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|until| Instant::now() < until)
    }

    /// A heartbeat sent at `sent` was answered with a lease of `lease_ms`; returns whether the lease had lapsed
    /// (or was never held) before.
    pub fn renewed(&self, sent: Instant, lease_ms: u64) -> bool {
        let mut until = self.valid_until.lock().unwrap_or_else(|p| p.into_inner());
        let lapsed = until.is_none_or(|u| Instant::now() >= u);
        // Never longer than this build's own idea of the lease, whatever the answer says.
        let lease = lease_ms.min(LEASE_MS).saturating_sub(LEASE_MARGIN_MS);
        let next = sent + Duration::from_millis(lease);
        *until = Some(until.map_or(next, |u| u.max(next)));
        let mut renewal = self.renewal_sent.lock().unwrap_or_else(|p| p.into_inner());
        *renewal = Some(renewal.map_or(sent, |r| r.max(sent)));
        self.frozen.store(false, std::sync::atomic::Ordering::Relaxed);
        lapsed
    }

    /// Marks the lease as held through frozen placements; true if it was not already.
    fn newly_frozen(&self) -> bool {
        !self.frozen.swap(true, std::sync::atomic::Ordering::Relaxed)
    }

    /// A heartbeat sent at `sent` was answered "placements frozen": a majority of the store's members said they
    /// have no leader, so no failover can commit until a new leader is elected, and a new leader first renews
    /// every site's lease for its full time. So the lease is extended as [`Lease::renewed`] does, if the answer
    /// came while the store could not yet have let the lease expire (within the lease's time of the last renewal,
    /// less [`FROZEN_SLACK_MS`] for clocks): a lease that lapsed before stays lapsed, since the site's phones may
    /// have been failed over before the quorum was lost. Returns whether it was extended.
    pub fn extended_while_frozen(&self, sent: Instant, lease_ms: u64) -> bool {
        let renewal = *self.renewal_sent.lock().unwrap_or_else(|p| p.into_inner());
        let Some(renewal) = renewal else { return false };
        if renewal.elapsed() >= Duration::from_millis(LEASE_MS.saturating_sub(FROZEN_SLACK_MS)) {
            return false;
        }
        let mut until = self.valid_until.lock().unwrap_or_else(|p| p.into_inner());
        let lease = lease_ms.min(LEASE_MS).saturating_sub(LEASE_MARGIN_MS);
        let next = sent + Duration::from_millis(lease);
        *until = Some(until.map_or(next, |u| u.max(next)));
        // The proof behind this answer was gathered after `sent`, while no leader could let the lease expire,
        // and any new leader renews it for its full time: the next frozen answer may count from here.
        let mut renewal = self.renewal_sent.lock().unwrap_or_else(|p| p.into_inner());
        *renewal = Some(renewal.map_or(sent, |r| r.max(sent)));
        true
    }
}

/// One record on its way: to this site's journal and to the standby copy.
pub struct Record {
    /// Whose phone.
    pub user: String,
    /// The snapshot's id.
    pub id: SnapshotId,
    /// A full state (else an incremental snapshot, the child of the last record).
    pub full: bool,
    /// The snapshot and the input numbering after it.
    pub saved: SavedPhone,
    /// The site whose copy ends at this record's parent (an incremental record goes only there).
    pub standby_at: Option<String>,
}

/// How a record went.
pub struct Written {
    /// The record's snapshot.
    pub id: SnapshotId,
    /// Whether it was a full state.
    pub full: bool,
    /// The input numbering it holds.
    pub input_seqs: HashMap<String, u64>,
    /// On this site's disk.
    pub local: Result<(), String>,
    /// On the standby site (which one), or no standby to send it to (`Ok(None)`).
    pub standby: Result<Option<String>, String>,
    /// When the record's snapshot was taken (the phone's state it holds).
    pub taken: Instant,
}

impl Written {
    /// A record that was lost on its way (its task failed).
    pub fn lost(why: String) -> Written {
        Written {
            id: SnapshotId([0; 32]),
            full: false,
            input_seqs: HashMap::new(),
            local: Err(why.clone()),
            standby: Err(why),
            taken: Instant::now(),
        }
    }
}

/// The owner side of standby copies: which site stands by, and sending records there. One per site, shared by its
/// phone tasks.
pub struct Replication {
    site_id: String,
    position: (f64, f64),
    caller: Caller,
    control: ControlClient,
    lease: Lease,
    /// The registered sites, when asked.
    sites: Mutex<Option<(Instant, Vec<SiteStatus>)>>,
    /// The placement epoch each phone runs at here, as the control service said at its last full record.
    epochs: Mutex<HashMap<String, u64>>,
    /// Sites that did not take a record lately, and until when they are passed over.
    failing: Mutex<HashMap<String, Instant>>,
    /// The standby site named to the control service for each phone (a failover would start that copy), or
    /// `None` once this process unnamed it. A phone with no entry may still have a copy named by an earlier life
    /// of this site (before a crash or a restart) or of the phone here: unknown, so it is unnamed before the disk
    /// alone may make an input durable.
    named: Mutex<HashMap<String, Option<String>>>,
    /// Where full states are written.
    states: Arc<StateStore>,
    /// Where records' outcomes are counted.
    metrics: Arc<crate::metrics::SiteMetrics>,
}

impl Replication {
    /// Replication for site `site_id` at `position`, calling other sites as `caller` and the control service
    /// through `control`.
    pub fn new(
        site_id: &str,
        position: (f64, f64),
        caller: Caller,
        control: ControlClient,
        states: Arc<StateStore>,
        metrics: Arc<crate::metrics::SiteMetrics>,
    ) -> Replication {
        Replication {
            states,
            metrics,
            site_id: site_id.to_owned(),
            position,
            caller,
            control,
            lease: Lease::default(),
            sites: Mutex::new(None),
            epochs: Mutex::new(HashMap::new()),
            failing: Mutex::new(HashMap::new()),
            named: Mutex::new(HashMap::new()),
        }
    }

    /// The placement epoch `user`'s phone runs at here, as the control service said at its last full record.
    pub fn epoch_of(&self, user: &str) -> Option<u64> {
        self.epochs.lock().unwrap_or_else(|p| p.into_inner()).get(user).copied()
    }

    /// The site's lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The site that should stand by now: the nearest other site that holds its lease, is not draining or degraded
    /// and did not fail to take a record in the last [`PASS_OVER`], by the list last asked.
    fn target(&self) -> Option<(String, String)> {
        let sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let (_, sites) = sites.as_ref()?;
        let (lat, lon) = self.position;
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        failing.retain(|_, until| Instant::now() < *until);
        sites
            .iter()
            .filter(|s| s.site.id != self.site_id && s.leased && !s.site.draining && s.site.degraded.is_none())
            .filter(|s| !failing.contains_key(&s.site.id))
            .min_by(|a, b| {
                let d = |s: &SiteStatus| (s.site.lat - lat).powi(2) + (s.site.lon - lon).powi(2);
                d(a).total_cmp(&d(b)).then_with(|| a.site.id.cmp(&b.site.id))
            })
            .map(|s| (s.site.id.clone(), s.site.url.clone()))
    }

    /// Whether `site` is the site that should stand by now (an incremental record may go there).
    pub fn target_is(&self, site: Option<&str>) -> bool {
        self.target().map(|(id, _)| id).as_deref() == site
    }

    /// Asks the control service for the sites again when the list is stale (kept when it cannot answer).
    async fn refresh_sites(&self) {
        let fresh = self
            .sites
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < SITES_FRESH);
        if fresh {
            return;
        }
        match self.control.list_sites().await {
            Ok(sites) => *self.sites.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), sites)),
            Err(e) => tracing::debug!("cannot list the sites for standby copies: {e}"),
        }
    }

    /// Writes `record` to this site's journal in `dir` and to the standby site, at the same time.
    pub async fn write(self: Arc<Self>, dir: PathBuf, record: Record) -> Written {
        let taken = Instant::now();
        let Record { user, id, full, saved, standby_at } = record;
        let body = crate::persist::encode_saved(&saved);
        let input_seqs = saved.input_seqs.clone();
        let states = self.states.clone();
        let local = tokio::task::spawn_blocking(move || {
            if full { states.write_phone(&dir, &saved) } else { append_journal(&dir, &saved) }
        });
        let remote = self.push(&user, full, standby_at.as_deref(), body);
        let (local, standby) = tokio::join!(local, remote);
        let local = match local {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(vmi_engine::error_chain(&e)),
            Err(e) => Err(format!("the write did not finish: {e}")),
        };
        self.metrics.record_written(&standby, taken.elapsed());
        Written { id, full, input_seqs, local, standby, taken }
    }

    /// Sends one record to the standby site; a full state there is named to the control service as the phone's
    /// standby copy for its epoch.
    async fn push(
        &self,
        user: &str,
        full: bool,
        standby_at: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Option<String>, String> {
        self.refresh_sites().await;
        let Some((site, url)) = self.target() else {
            // No site can stand by. Only the disk holds the record then, and that is durable enough only if no
            // older copy is named for a failover (it would come back without this record): unname it first.
            // Unknown (no entry) counts as named: after a restart the control service may still name the copy the
            // site's earlier life sent, and a failover would bring the phone back without what the disk holds since.
            let named = self.named.lock().unwrap_or_else(|p| p.into_inner()).get(user).cloned();
            if named != Some(None) {
                let old = named.flatten().unwrap_or_else(|| "a copy named before this site started".to_owned());
                self.control
                    .clear_standby(user)
                    .await
                    .map_err(|e| format!("{old} cannot take records and cannot be unnamed as the standby: {e}"))?;
                self.named.lock().unwrap_or_else(|p| p.into_inner()).insert(user.to_owned(), None);
                tracing::warn!(user, standby = %old, "no site can stand by: the phone is durable on this disk only");
            }
            return Ok(None);
        };
        if !full && standby_at != Some(site.as_str()) {
            return Err(format!("the standby is {site} now: it needs a full state first"));
        }
        let epoch = if full {
            let placement =
                self.control.placement(user).await.map_err(|e| format!("cannot ask for the placement: {e}"))?;
            if placement.site != self.site_id {
                return Err(format!("the phone is placed on {}, not here", placement.site));
            }
            self.epochs.lock().unwrap_or_else(|p| p.into_inner()).insert(user.to_owned(), placement.epoch);
            placement.epoch
        } else {
            let epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
            *epochs.get(user).ok_or("no epoch known: a full state first")?
        };
        let peer = vmi_trust::site_name(&site).map_err(|e| e.to_string())?;
        let caller = self.caller.clone().expecting(&peer).tls_only();
        let path = format!("{url}/v1/standby/{}?epoch={epoch}&full={}", segment(user), u8::from(full));
        let allowed = push_timeout(body.len());
        let sent = tokio::time::timeout(allowed, caller.post_bytes(&path, body)).await;
        let failed = match sent {
            Ok(Ok((204, _))) => None,
            // It wants a full state: the next record is one, to the same site.
            Ok(Ok((409, body))) => {
                return Err(format!("{site} needs a full state: {}", String::from_utf8_lossy(&body)));
            }
            Ok(Ok((status, body))) => Some(format!(
                "{site} answered {status}: {}",
                String::from_utf8_lossy(&body).chars().take(200).collect::<String>()
            )),
            Ok(Err(e)) => Some(format!("cannot reach {site}: {e}")),
            Err(_) => Some(format!("{site} did not answer within {:.1} s", allowed.as_secs_f64())),
        };
        if let Some(why) = failed {
            // Another site stands by meanwhile (a full state to it next), rather than none.
            self.failing.lock().unwrap_or_else(|p| p.into_inner()).insert(site, Instant::now() + PASS_OVER);
            return Err(why);
        }
        if full {
            self.control
                .set_standby(user, &site, epoch)
                .await
                .map_err(|e| format!("cannot name {site} as the standby: {e}"))?;
            self.named.lock().unwrap_or_else(|p| p.into_inner()).insert(user.to_owned(), Some(site.clone()));
        }
        Ok(Some(site))
    }

    /// Forgets the epoch `user`'s phone ran at here: it starts here again (a restart, an arrival), at an epoch its
    /// next full record asks the control service for. Which standby copy the control service names is unknown from
    /// then on too (see `named`).
    pub fn epoch_unknown(&self, user: &str) {
        self.epochs.lock().unwrap_or_else(|p| p.into_inner()).remove(user);
        self.named.lock().unwrap_or_else(|p| p.into_inner()).remove(user);
    }

    /// Forgets what is known of `user`'s phone here (it left).
    pub fn forget(&self, user: &str) {
        self.epochs.lock().unwrap_or_else(|p| p.into_inner()).remove(user);
        self.named.lock().unwrap_or_else(|p| p.into_inner()).remove(user);
    }

    /// Unnames `user`'s standby copy at the control service (the phone is checked out: no failover may start the
    /// copy while the user runs the phone on their device).
    pub async fn unname(&self, user: &str) -> Result<(), vmi_control_api::ClientError> {
        self.control.clear_standby(user).await?;
        self.named.lock().unwrap_or_else(|p| p.into_inner()).insert(user.to_owned(), None);
        Ok(())
    }
}

/// The standby copies this site holds: whose, from which site, at which epoch, ending at which snapshot.
#[derive(Default)]
pub struct Copies {
    held: tokio::sync::Mutex<HashMap<String, Copy>>,
}

struct Copy {
    owner: String,
    epoch: u64,
    last: SnapshotId,
}

/// Why a standby record was refused (the HTTP layer turns it into a status).
#[derive(Debug)]
pub enum Refusal {
    /// The sender does not own the phone at that epoch (403).
    NotOwner(String),
    /// The record does not follow what is held here: send a full state (409).
    NeedsFull(String),
    /// The phone runs here (409).
    RunsHere(String),
    /// The site could not store it or ask about it (507 / 503).
    Failed(SiteError),
}

impl SiteState {
    fn standby_dir(&self, user: &str) -> PathBuf {
        self.config.data_dir.join(STANDBY_DIR).join(user)
    }

    /// Takes one record of `user`'s phone from site `from`, which says it runs the phone at `epoch` (see the
    /// module's doc).
    pub(crate) async fn take_standby_record(
        &self,
        from: &str,
        user: &str,
        epoch: u64,
        full: bool,
        body: Vec<u8>,
    ) -> Result<(), Refusal> {
        if self.phones.get(user).is_some() {
            return Err(Refusal::RunsHere(format!("{user}'s phone runs on this site")));
        }
        let (snapshot, seqs) = read_phone(&body).map_err(|e| Refusal::NeedsFull(format!("not a record: {e}")))?;
        let header = vmi_snapshot::Snapshot::peek_header(&snapshot)
            .map_err(|e| Refusal::NeedsFull(format!("not a snapshot: {e}")))?;
        if full != header.kind.parent().is_none() {
            return Err(Refusal::NeedsFull("the record's kind and its snapshot disagree".into()));
        }
        let id = SnapshotId::of(&snapshot);
        let mut held = self.standby.held.lock().await;
        if full {
            let placement = self.control.placement(user).await.map_err(|e| Refusal::Failed(SiteError::Control(e)))?;
            if placement.site != from || placement.epoch != epoch {
                return Err(Refusal::NotOwner(format!(
                    "{from} does not run {user}'s phone at epoch {epoch} ({} does, at {})",
                    placement.site, placement.epoch
                )));
            }
        } else {
            match held.get(user) {
                Some(c) if c.owner == from && c.epoch == epoch && header.kind.parent() == Some(c.last) => {}
                _ => {
                    return Err(Refusal::NeedsFull(format!(
                        "this site's copy of {user}'s phone does not end at the record's parent"
                    )));
                }
            }
        }
        let dir = self.standby_dir(user);
        let saved = SavedPhone { snapshot, input_seqs: seqs };
        let states = self.states.clone();
        let written = tokio::task::spawn_blocking(move || {
            if full { states.write_phone(&dir, &saved) } else { append_journal(&dir, &saved) }
        })
        .await
        .map_err(|e| {
            Refusal::Failed(SiteError::Io {
                path: self.standby_dir(user),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
        if let Err(e) = written {
            held.remove(user);
            return Err(Refusal::Failed(e));
        }
        if full {
            let label = serde_json::json!({ "owner": from, "epoch": epoch }).to_string();
            let path = self.standby_dir(user).join(COPY_LABEL);
            if let Err(source) = std::fs::write(&path, label) {
                held.remove(user);
                return Err(Refusal::Failed(SiteError::Io { path, source }));
            }
        }
        held.insert(user.to_owned(), Copy { owner: from.to_owned(), epoch, last: id });
        Ok(())
    }

    /// Starts `user`'s phone from the standby copy held here, now that the placement names this site (a
    /// failover). Nothing happens if it runs here already; [`SiteError::NoPhone`] if no copy is held.
    pub async fn promote_standby(self: &Arc<Self>, user: &str, from_epoch: u64) -> Result<bool, SiteError> {
        // In the failover's trace when the control service's order carried it.
        let span = tracing::info_span!(
            "failover.promote",
            vmi.site = %self.id,
            vmi.user = %user,
            vmi.from_epoch = from_epoch as i64,
            vmi.started = tracing::field::Empty,
        );
        let started = self.promote_standby_traced(user, from_epoch).instrument(span.clone()).await;
        if let Ok(started) = &started {
            span.record("vmi.started", *started);
        }
        started
    }

    async fn promote_standby_traced(self: &Arc<Self>, user: &str, from_epoch: u64) -> Result<bool, SiteError> {
        if self.phones.get(user).is_some() {
            return Ok(false);
        }
        let dir = self.standby_dir(user);
        if !dir.join(crate::PHONE_FILE).exists() {
            return Err(SiteError::NoPhone(user.to_owned()));
        }
        // Only the copy the control service failed over to: the one of the epoch it moved the phone from.
        match read_copy_label(&dir) {
            Some((_, epoch)) if epoch == from_epoch => {}
            other => {
                return Err(SiteError::CorruptSnapshot(vmi_snapshot::SnapshotError::Corrupt(format!(
                    "the standby copy here is of epoch {:?}, not the failed-over epoch {from_epoch}",
                    other.map(|(_, e)| e)
                ))));
            }
        }
        if let Some(why) = self.checkout_refusal(user) {
            return Err(SiteError::CheckedOut(why));
        }
        let Some(_arriving) = self.phones.arrive(user) else { return Ok(false) };
        match self.control.placement(user).await {
            Ok(p) if p.site == self.id && p.epoch == from_epoch + 1 => {}
            Ok(p) => return Err(SiteError::PlacedElsewhere { user: user.into(), site: p.site, here: self.id.clone() }),
            Err(e) => return Err(SiteError::Control(e)),
        }
        let held = self.standby.held.lock().await;
        let read = match self.read_durable_repairing(user, &dir).await {
            Ok(d) => self
                .blocking(move || d.flatten().map(|bytes| (bytes, d.input_seqs, d.chain.len())))
                .await
                .map_err(|e| SiteError::CorruptSnapshot(vmi_snapshot::SnapshotError::Corrupt(e.to_string())))?,
            Err(e) => Err(e),
        };
        let (bytes, input_seqs, records) =
            read.map_err(|e| SiteError::CorruptSnapshot(vmi_snapshot::SnapshotError::Corrupt(e)))?;
        let (phone, _report) = self.boot_saved(user, bytes.into()).await?;
        // The copy becomes the phone's state here: the files move, then the phone runs. Whatever state of the phone
        // this site had (an older life) is set aside, not deleted.
        let phones_dir = self.phone_dir(user);
        self.set_aside(user, &phones_dir);
        if let Some(parent) = phones_dir.parent() {
            std::fs::create_dir_all(parent).map_err(|source| SiteError::Io { path: parent.to_path_buf(), source })?;
        }
        std::fs::rename(&dir, &phones_dir).map_err(|source| SiteError::Io { path: dir.clone(), source })?;
        drop(held);
        self.standby.held.lock().await.remove(user);
        tracing::warn!(site = %self.id, user, records, "failover: the phone runs here from its standby copy");
        drop(_arriving);
        self.spawn_phone(user, phone, input_seqs);
        Ok(true)
    }

    /// Moves `dir` (a phone's state that must not run again, but may be all that is left of something) to
    /// `superseded/USER-MS` for an operator.
    pub(crate) fn set_aside(&self, user: &str, dir: &std::path::Path) {
        if !dir.exists() {
            return;
        }
        let aside = self.config.data_dir.join("superseded").join(format!("{user}-{}", self.now_ms()));
        let moved = aside.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::rename(dir, &aside));
        match moved {
            Ok(()) => tracing::warn!(user, path = %aside.display(), "a superseded state of the phone is kept aside"),
            Err(e) => tracing::error!(user, path = %dir.display(), "cannot set a superseded state aside: {e}"),
        }
    }

    /// What a heartbeat's answer means for the phones here: the lease is renewed, and every phone that runs here
    /// but is placed elsewhere now (a failover happened while this site had no lease) is dropped, never resumed.
    /// Only phones that started here before the heartbeat was sent are judged by its answer (one that arrived
    /// since is not on a list made before it came), and none that is arriving or leaving (a migration decides).
    pub(crate) fn after_heartbeat(self: &Arc<Self>, sent: Instant, reply: vmi_control_api::model::HeartbeatReply) {
        if reply.frozen {
            // No list of placements comes with it (the store cannot be read): nothing is dropped or started.
            let lease = self.replication.lease();
            if lease.extended_while_frozen(sent, reply.lease_ms) {
                if lease.newly_frozen() {
                    tracing::warn!(site = %self.id, "the control plane's store has no quorum: placements are frozen, phones here keep running");
                }
            } else {
                tracing::warn!(site = %self.id, "placements are frozen but this site's lease had lapsed: its phones stay stopped");
            }
            return;
        }
        let Some(placed) = self.placed_list(&reply) else {
            // "Unchanged" from a list this site does not hold (it never should): no lease without a list to judge
            // by; the next heartbeat names no version and gets the whole list.
            tracing::warn!(site = %self.id, version = reply.placed_version, "heartbeat answered with an unknown list version");
            return;
        };
        // The same list found every phone here placed here already (none started since): the same verdict,
        // without looking at 100,000 phones every second.
        let superseded: Vec<String> = match placed {
            Judged::Already => Vec::new(),
            Judged::Now(placed) => {
                let not_placed = self.phones.started_before_and_not_in(sent, &placed);
                // Only "every phone is on the list" stands for the next unchanged lists: a phone not on it (being
                // dropped, or passed over while it arrives or leaves) is looked at by every heartbeat until it is
                // gone or placed here, and the lease waits for its drop each time.
                self.judged(reply.placed_version, sent, not_placed.is_empty());
                not_placed
                    .into_iter()
                    .filter(|user| !self.phones.is_leaving(user) && !self.phones.is_arriving(user))
                    .collect()
            }
        };
        if superseded.is_empty() {
            let lapsed = self.replication.lease().renewed(sent, reply.lease_ms);
            self.metrics.lease_renewed(lapsed);
            return;
        }
        // The lease is renewed only once those phones are gone: renewed first, a phone placed elsewhere would run
        // again (and take inputs) until its drop came round. Off the heartbeat's loop: the next heartbeat must not
        // wait for this.
        let site = self.clone();
        tokio::spawn(async move {
            for user in superseded {
                site.drop_superseded(&user).await;
                site.metrics.fenced_drop();
            }
            let lapsed = site.replication.lease().renewed(sent, reply.lease_ms);
            site.metrics.lease_renewed(lapsed);
        });
    }

    /// The version of the list of placed users this site holds, for its next heartbeat.
    pub(crate) fn placed_version(&self) -> Option<u64> {
        self.placed.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|kept| kept.version)
    }

    /// The users placed here as `reply` says: its list, kept with its version; the one kept if unchanged, or
    /// [`Judged::Already`] if that one found every phone here placed here, and none started since. `None` if it
    /// says "unchanged" from a version not kept here.
    fn placed_list(&self, reply: &vmi_control_api::model::HeartbeatReply) -> Option<Judged> {
        let mut kept = self.placed.lock().unwrap_or_else(|p| p.into_inner());
        if reply.placed_unchanged {
            let Some(list) = kept.as_mut().filter(|k| k.version == reply.placed_version) else {
                *kept = None;
                return None;
            };
            if list.all_placed_before.is_some_and(|judged| self.phones.last_insert().is_none_or(|at| at < judged)) {
                return Some(Judged::Already);
            }
            return Some(Judged::Now(list.users.clone()));
        }
        let users = Arc::new(reply.placed.iter().cloned().collect::<std::collections::HashSet<_>>());
        *kept = (reply.placed_version != 0).then(|| PlacedList {
            version: reply.placed_version,
            users: users.clone(),
            all_placed_before: None,
        });
        Some(Judged::Now(users))
    }

    /// Records what the list at `version` found of the phones that started before `sent`: all placed here, or not.
    fn judged(&self, version: u64, sent: Instant, all_placed: bool) {
        let mut kept = self.placed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = kept.as_mut().filter(|k| k.version == version) {
            list.all_placed_before = all_placed.then_some(sent);
        }
    }

    /// Drops `user`'s phone here: while this site had no lease it was failed over and runs elsewhere now. Its
    /// terminals are sent where it runs; its state here is removed (the copy elsewhere is the phone).
    async fn drop_superseded(&self, user: &str) {
        let Some(phone) = self.phones.remove(user) else { return };
        let url = match self.control.placement(user).await {
            Ok(p) => vmi_control_api::ws_url(&p.site_url),
            Err(_) => String::new(),
        };
        phone.fence(url).await;
        self.replication.forget(user);
        // Set aside, not deleted: until the new owner has shown it runs, this may be the only bootable copy.
        self.set_aside(user, &self.phone_dir(user));
        tracing::warn!(site = %self.id, user, "the phone was failed over while this site had no lease: its copy here is dropped");
    }
}

/// The users placed on this site, as the control service last listed them.
pub(crate) struct PlacedList {
    /// The list's version (the control service's).
    version: u64,
    users: Arc<std::collections::HashSet<String>>,
    /// Every phone that started here before this instant is on this list (it found none to drop or pass over).
    all_placed_before: Option<Instant>,
}

/// What a heartbeat's list says about the phones here.
enum Judged {
    /// Nothing new: the list and the phones are those found all placed here already.
    Already,
    /// Judge the phones that started before the heartbeat by this list.
    Now(Arc<std::collections::HashSet<String>>),
}

/// Whose copy a standby directory holds, and of which placement epoch: `copy.json`, written with each full state.
const COPY_LABEL: &str = "copy.json";

/// The owner and epoch a standby directory's copy belongs to, if it says.
fn read_copy_label(dir: &std::path::Path) -> Option<(String, u64)> {
    let label: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(COPY_LABEL)).ok()?).ok()?;
    Some((label["owner"].as_str()?.to_owned(), label["epoch"].as_u64()?))
}

/// `full` as the query says it.
pub(crate) fn parse_query(query: &str) -> Option<(u64, bool)> {
    let mut epoch = None;
    let mut full = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("epoch", v)) => epoch = v.parse().ok(),
            Some(("full", "1")) => full = Some(true),
            Some(("full", "0")) => full = Some(false),
            _ => {}
        }
    }
    Some((epoch?, full?))
}
