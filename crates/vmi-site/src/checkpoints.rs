//! Checkpoints of the phones a site runs: taken on a timer (hourly by default) and on
//! demand, kept in a content-addressed [`CheckpointStore`] in the data directory
//! (`checkpoints/`), copied to a second site (the nearest other healthy one) after each
//! one is taken, and restored on request — in place of the running phone, whose
//! terminals stay attached and get the restored screen.
//!
//! The store keeps the site's own phones' history and the copies other sites send it, so
//! a phone whose site is lost can be brought back from the copy (`vmi vm checkpoints
//! restore USER --site SITE`), and a phone that migrated finds its history at the
//! destination whenever that was its replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tracing::Instrument;

use serde::{Deserialize, Serialize};
use vmi_checkpoint::{CheckpointError, CheckpointInfo, CheckpointStore, FsStore, Retention, Selector};
use vmi_snapshot::SnapshotId;

use crate::{SiteError, SiteState};

/// Damaged objects one restore repairs from copies at most (each costs a round trip to another site).
pub const MAX_REPAIRS: usize = 64;
/// Sites beyond those holding a user's checkpoint copies asked for a damaged state-store object: the nearest ones
/// (the standby copy is chosen near; a page shared by an image's phones is on any site that runs them).
const MAX_SITES_ASKED: usize = 8;

/// Which store a repair puts an object back into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repairing {
    /// The checkpoint store: copies of the user's checkpoints on other sites hold it.
    Checkpoints,
    /// The state store of the site's phones and standby copies: this site's checkpoints, the sites holding the
    /// user's checkpoint copies, then the nearest healthy sites (the standby copy's among them).
    States,
}

/// Why a checkpoint was not copied to a second site (it is kept here; the next round
/// copies it).
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// No other healthy site is registered.
    #[error("no other healthy site to copy checkpoints to")]
    NoOtherSite,
    /// The second site failed earlier in this round: the rest of the round does not try.
    #[error("the second site failed earlier in this round; the next round copies")]
    SkippedThisRound,
    /// The second site answered with a refusal.
    #[error("{site} refused ({status}): {answer}")]
    Refused {
        /// Which site (id or URL).
        site: String,
        /// Its HTTP status.
        status: u16,
        /// What it said.
        answer: String,
    },
    /// The second site still lacked objects after every round of sending.
    #[error("{site} still lacks objects")]
    StillLacking {
        /// Which site.
        site: String,
    },
}

/// A checkpoint as the site's HTTP API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CheckpointView {
    /// Snapshot id, 64 hex digits.
    pub id: String,
    /// When it was taken, ms since the Unix epoch (the site's clock).
    pub at_ms: u64,
    /// Why it was taken (`hourly`, a user's label, `before restoring …`).
    pub label: Option<String>,
    /// The phone's memory size.
    pub memory_bytes: u64,
    /// Chunks it added to the store.
    pub new_chunks: u64,
    /// Bytes it added to the store.
    pub stored_bytes: u64,
}

impl From<&CheckpointInfo> for CheckpointView {
    fn from(i: &CheckpointInfo) -> Self {
        CheckpointView {
            id: i.id.to_hex(),
            at_ms: i.at_ms,
            label: i.label.clone(),
            memory_bytes: i.memory_bytes,
            new_chunks: i.new_chunks,
            stored_bytes: i.stored_bytes,
        }
    }
}

impl CheckpointView {
    /// Back to the store's form; None if the id is not 64 hex digits.
    pub fn to_info(&self) -> Option<CheckpointInfo> {
        Some(CheckpointInfo {
            id: SnapshotId::from_hex(&self.id)?,
            at_ms: self.at_ms,
            label: self.label.clone(),
            memory_bytes: self.memory_bytes,
            new_chunks: self.new_chunks,
            stored_bytes: self.stored_bytes,
        })
    }
}

/// A checkpoint just taken, and where its copy went.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Taken {
    /// The checkpoint.
    pub checkpoint: CheckpointView,
    /// The site holding its copy, if the copy succeeded.
    pub replica: Option<String>,
    /// Why there is no copy.
    pub replica_error: Option<String>,
}

/// A phone brought back to a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Restored {
    /// The checkpoint it now runs from.
    pub restored: CheckpointView,
    /// The checkpoint of the state it left (to undo the restore), if the phone ran here
    /// and could be snapshotted.
    pub saved_before: Option<CheckpointView>,
}

/// The site's checkpoint store and what it remembers of each phone's last checkpoint.
pub(crate) struct Checkpoints {
    store: Arc<CheckpointStore>,
    /// The last checkpoint taken here of each phone running here: the parent of its next
    /// incremental checkpoint.
    last: Mutex<HashMap<String, SnapshotId>>,
    /// One checkpoint or restore at a time per site: they are short, and this keeps a
    /// restore from racing the timer's checkpoint of the same phone.
    busy: tokio::sync::Mutex<()>,
    /// Retention applied after each timer round.
    retention: Retention,
}

impl Checkpoints {
    pub fn open(dir: &std::path::Path, retention: Retention) -> Result<Checkpoints, SiteError> {
        let objects = FsStore::open(dir)?;
        Ok(Checkpoints {
            store: Arc::new(CheckpointStore::new(Arc::new(objects))),
            last: Mutex::new(HashMap::new()),
            busy: tokio::sync::Mutex::new(()),
            retention,
        })
    }

    fn last(&self, user: &str) -> Option<SnapshotId> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).get(user).copied()
    }

    fn set_last(&self, user: &str, id: Option<SnapshotId>) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match id {
            Some(id) => last.insert(user.to_owned(), id),
            None => last.remove(user),
        };
    }
}

impl SiteState {
    /// Runs a store operation off the async workers (see [`SiteState::blocking`]).
    /// A checkpoint's snapshot from the store; a chunk or page table found damaged or missing is repaired from a
    /// copy on another site that holds the user's checkpoints (each repair logged), up to [`MAX_REPAIRS`] of them.
    async fn restore_repairing(&self, user: &str, which: Selector) -> Result<(CheckpointInfo, Vec<u8>), SiteError> {
        for _ in 0..=MAX_REPAIRS {
            let store = self.checkpoints.store.clone();
            let u = user.to_owned();
            let error = match self.blocking(move || store.restore_with_info(&u, which)).await? {
                Ok(restored) => return Ok(restored),
                Err(e) => e,
            };
            let Some(keys) = error.damaged_object() else { return Err(error.into()) };
            if !self.repair_from_copy(user, &keys, Repairing::Checkpoints).await {
                tracing::error!(user, object = %keys[0], "damaged in this site's checkpoint store, and no copy repairs it");
                return Err(error.into());
            }
        }
        Err(SiteError::CorruptSnapshot(vmi_snapshot::SnapshotError::Corrupt(format!(
            "{user}'s checkpoints needed more than {MAX_REPAIRS} repairs"
        ))))
    }

    /// `dir`'s saved state and the journal records after it (a phone of `user`, here or its standby copy), a stored
    /// object found damaged or missing in the site's state store repaired first (each repair logged), up to
    /// [`MAX_REPAIRS`] of them: from this site's checkpoint store (the same pages, named the same way), else from
    /// another site (see [`Repairing::States`]). A state is never given up for one bad page another disk holds.
    pub(crate) async fn read_durable_repairing(
        &self,
        user: &str,
        dir: &std::path::Path,
    ) -> Result<crate::persist::DurableState, String> {
        for _ in 0..=MAX_REPAIRS {
            let (states, d) = (self.states.clone(), dir.to_path_buf());
            let failure = match self.blocking(move || crate::persist::read_durable_checked(&states, &d)).await {
                Ok(Ok(durable)) => return Ok(durable),
                Ok(Err(failure)) => failure,
                Err(e) => return Err(e.to_string()),
            };
            let Some(keys) = failure.damaged else { return Err(failure.message) };
            if !self.repair_from_copy(user, &keys, Repairing::States).await {
                tracing::error!(user, object = %keys[0], "damaged in this site's state store, and no copy repairs it");
                return Err(failure.message);
            }
        }
        Err(format!("{user}'s saved state needed more than {MAX_REPAIRS} repairs"))
    }

    /// Puts one of `keys` (the same hash as a chunk or a page table) back into `into`, damaged or missing there,
    /// from a copy that checks against its name; whether it worked.
    async fn repair_from_copy(&self, user: &str, keys: &[String; 2], into: Repairing) -> bool {
        if into == Repairing::States {
            for key in keys {
                let (checkpoints, states, k) = (self.checkpoints.store.clone(), self.states.clone(), key.clone());
                let local = self.blocking(move || match checkpoints.object(&k) {
                    Ok(Some(bytes)) => states.repair(&k, &bytes).is_ok(),
                    _ => false,
                });
                if let Ok(true) = local.await {
                    tracing::warn!(user, object = %key, "repaired a damaged state-store object from this site's checkpoints");
                    return true;
                }
            }
        }
        let mut sites: Vec<String> = match self.control.checkpoints(user).await {
            Ok(list) => list.into_iter().flat_map(|c| c.sites).filter(|s| *s != self.id).collect(),
            Err(e) => {
                tracing::warn!(user, "cannot ask where copies of the checkpoints are: {e}");
                Vec::new()
            }
        };
        let listed = match self.control.list_sites().await {
            Ok(listed) => listed,
            Err(_) => return false,
        };
        if into == Repairing::States {
            // The standby copy's site holds the same state; any healthy site near may hold a shared page.
            let mut near: Vec<_> =
                listed.iter().filter(|s| s.healthy && s.site.id != self.id && !sites.contains(&s.site.id)).collect();
            let (lat, lon) = (self.config.lat, self.config.lon);
            near.sort_by(|a, b| {
                let d =
                    |s: &vmi_control_api::model::SiteStatus| (s.site.lat - lat).powi(2) + (s.site.lon - lon).powi(2);
                d(a).total_cmp(&d(b))
            });
            sites.extend(near.into_iter().take(MAX_SITES_ASKED).map(|s| s.site.id.clone()));
        }
        let mut seen = std::collections::HashSet::new();
        sites.retain(|s| seen.insert(s.clone()));
        let urls: HashMap<String, String> = listed.into_iter().map(|s| (s.site.id, s.site.url)).collect();
        for site in sites {
            let (Some(url), Ok(peer)) = (urls.get(&site), self.peer(&site)) else { continue };
            for key in keys {
                let Ok((200, bytes)) = peer.get_bytes(&format!("{url}/v1/replicas/{user}/objects/{key}")).await else {
                    continue;
                };
                let (checkpoints, states, k) = (self.checkpoints.store.clone(), self.states.clone(), key.clone());
                let put = self.blocking(move || match into {
                    Repairing::Checkpoints => checkpoints.repair(&k, &bytes),
                    Repairing::States => states.repair(&k, &bytes),
                });
                match put.await {
                    Ok(Ok(())) => {
                        tracing::warn!(user, object = %key, from = %site, store = ?into, "repaired a damaged object from a copy");
                        return true;
                    }
                    Ok(Err(e)) => tracing::warn!(user, object = %key, from = %site, "the copy is no good either: {e}"),
                    Err(e) => tracing::warn!(user, "repair did not finish: {e}"),
                }
            }
        }
        false
    }

    /// A chunk or page table of this site's checkpoint store, or else of its state store, as stored (for another
    /// site's repair).
    pub(crate) async fn stored_object(&self, key: &str) -> Result<Option<Vec<u8>>, SiteError> {
        let (checkpoints, states) = (self.checkpoints.store.clone(), self.states.clone());
        let key = key.to_owned();
        self.in_store(move || match checkpoints.object(&key)? {
            Some(bytes) => Ok(Some(bytes)),
            None => states.object(&key),
        })
        .await
    }

    async fn in_store<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, CheckpointError> + Send + 'static,
    ) -> Result<T, SiteError> {
        Ok(self.blocking(work).await??)
    }

    /// Checkpoints `user`'s phone now (incremental against its last checkpoint here when
    /// possible) and copies it to the replica site.
    pub async fn checkpoint(&self, user: &str, label: Option<String>) -> Result<Taken, SiteError> {
        self.checkpoint_copied(user, label, true).await
    }

    /// [`checkpoint`](Self::checkpoint), with or without the copy to a second site.
    async fn checkpoint_copied(&self, user: &str, label: Option<String>, copy: bool) -> Result<Taken, SiteError> {
        // One trace per checkpoint: this span (a child of the request's when it carried one), its copy and the
        // replica site's import, the catalogue's update at the control service.
        let span = tracing::info_span!(
            "checkpoint",
            vmi.site = %self.id,
            vmi.user = %user,
            vmi.label = label.as_deref().unwrap_or(""),
            vmi.checkpoint = tracing::field::Empty,
            vmi.stored_bytes = tracing::field::Empty,
            vmi.replica = tracing::field::Empty,
        );
        self.checkpoint_traced(user, label, copy).instrument(span).await
    }

    async fn checkpoint_traced(&self, user: &str, label: Option<String>, copy: bool) -> Result<Taken, SiteError> {
        let info = {
            let _busy = self.checkpoints.busy.lock().await;
            if let Some(why) = self.checkout_refusal(user) {
                return Err(SiteError::CheckedOut(why));
            }
            if self.phones.is_leaving(user) {
                return Err(SiteError::Moving(user.to_string()));
            }
            let started = std::time::Instant::now();
            let taken = self.checkpoint_locked(user, label).await;
            self.metrics.checkpointed(taken.as_ref().ok().map(|i| i.stored_bytes), started.elapsed());
            taken?
        };
        // Copied without the lock: a slow replica delays no restore. The newest
        // checkpoint is never expired, so collection cannot take what is being sent.
        Ok(self.publish(user, &info, copy).await)
    }

    /// After a checkpoint is stored: its copy on a second site (unless `copy` is off),
    /// and the catalogue.
    async fn publish(&self, user: &str, info: &CheckpointInfo, copy: bool) -> Taken {
        let started = std::time::Instant::now();
        let copied = if copy {
            let span = tracing::info_span!("checkpoint.copy", vmi.replica = tracing::field::Empty);
            self.replicate(user, info).instrument(span).await
        } else {
            Err(ReplicaError::SkippedThisRound.into())
        };
        if copy {
            self.metrics.checkpoint_copied(copied.is_ok(), started.elapsed());
        }
        let span = tracing::Span::current();
        span.record("vmi.checkpoint", info.id.to_string()).record("vmi.stored_bytes", info.stored_bytes as i64);
        let (replica, replica_error) = match copied {
            Ok(site) => {
                span.record("vmi.replica", site.as_str());
                (Some(site), None)
            }
            Err(e) => {
                tracing::warn!(site = %self.id, user, "checkpoint not copied to a second site: {}", vmi_engine::error_chain(&e));
                (None, Some(e.to_string()))
            }
        };
        self.report_catalogue(user).await;
        Taken { checkpoint: CheckpointView::from(info), replica, replica_error }
    }

    /// Tells the control service's catalogue what this site holds of `user`'s
    /// checkpoints. The stores are the truth; a failed report is logged and the next one
    /// (after the next checkpoint or retention round) corrects it.
    async fn report_catalogue(&self, user: &str) {
        let entries = match self.checkpoints_of(user).await {
            Ok(list) => list
                .into_iter()
                .map(|c| vmi_control_api::CheckpointEntry {
                    id: c.id,
                    at_ms: c.at_ms,
                    label: c.label,
                    stored_bytes: c.stored_bytes,
                })
                .collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(site = %self.id, user, "cannot list checkpoints for the catalogue: {}", vmi_engine::error_chain(&e));
                return;
            }
        };
        if let Err(e) = self.control.put_site_checkpoints(user, &self.id, &entries).await {
            tracing::warn!(site = %self.id, user, "checkpoint catalogue not updated: {}", vmi_engine::error_chain(&e));
        }
    }

    /// Takes and stores a checkpoint; the caller holds the busy lock and has made sure
    /// the phone is not migrating.
    async fn checkpoint_locked(&self, user: &str, label: Option<String>) -> Result<CheckpointInfo, SiteError> {
        let parent = self.checkpoints.last(user);
        let snapshot = self.phone(user)?.checkpoint(parent).await.map_err(|e| SiteError::phone(user, e))?;
        let store = self.checkpoints.store.clone();
        let (u, at_ms) = (user.to_owned(), self.now_ms());
        let info = self.in_store(move || store.put(&u, &snapshot, at_ms, label)).await?;
        self.checkpoints.set_last(user, Some(info.id));
        tracing::info!(site = %self.id, user, id = %info.id, stored_bytes = info.stored_bytes, "checkpoint");
        Ok(info)
    }

    /// The checkpoints of `user` this site holds (its own phone's or a copy), oldest first.
    pub async fn checkpoints_of(&self, user: &str) -> Result<Vec<CheckpointView>, SiteError> {
        let store = self.checkpoints.store.clone();
        let u = user.to_owned();
        Ok(self.in_store(move || store.list(&u)).await?.iter().map(CheckpointView::from).collect())
    }

    /// Brings `user`'s phone back to a checkpoint. A phone running here is first
    /// checkpointed (so the restore can be undone) and then replaced in place; a phone
    /// that runs nowhere (its site was lost) is started here from the checkpoint, if the
    /// control service places it here.
    pub async fn restore_checkpoint(self: &Arc<Self>, user: &str, which: Selector) -> Result<Restored, SiteError> {
        let _busy = self.checkpoints.busy.lock().await;
        // Marked as moving for the duration: no migration may start from a VM that is
        // about to be replaced.
        let _leaving = self.phones.mark_leaving(user).ok_or_else(|| SiteError::Moving(user.to_string()))?;
        // Asked after the mark (a checkout refuses a moving phone): a phone that is out on
        // a terminal is not restored here behind its back.
        if let Some(why) = self.checkout_refusal(user) {
            return Err(SiteError::CheckedOut(why));
        }
        let running = self.phones.get(user).is_some();
        // Held until the phone runs: no migration may arrive for it meanwhile.
        let mut _arrival = None;
        if !running {
            let placement = self.control.placement(user).await?;
            if placement.site != self.id {
                return Err(SiteError::PlacedElsewhere {
                    user: user.into(),
                    site: placement.site,
                    here: self.id.clone(),
                });
            }
            _arrival = Some(self.phones.arrive(user).ok_or_else(|| SiteError::Exists(user.to_owned()))?);
        }
        let (info, bytes) = self.restore_repairing(user, which).await?;

        let saved_before = if running {
            let label = format!("before restoring to {}", crate::checkpoints::describe_time(info.at_ms));
            match self.checkpoint_locked(user, Some(label)).await {
                Ok(before) => Some(before),
                // A crashed phone has nothing worth keeping beyond its checkpoints.
                Err(e @ SiteError::Phone { .. }) => {
                    tracing::warn!(
                        user,
                        "restoring without a checkpoint of the current state: {}",
                        vmi_engine::error_chain(&e)
                    );
                    None
                }
                // The store failed: the running state would have no copy. Keep it.
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let phone = self.restore_snapshot(&bytes).await?;
        if running {
            self.phone(user)?.replace(phone).await.map_err(|e| SiteError::phone(user, e))?;
        } else {
            self.spawn_phone(user, phone, HashMap::new());
        }
        // The restored VM has no snapshot in common with the last checkpoint.
        self.checkpoints.set_last(user, None);
        // The undo point is a checkpoint like any other: copied and catalogued.
        drop(_busy);
        let saved_before = match saved_before {
            Some(before) => Some(self.publish(user, &before, true).await.checkpoint),
            None => {
                self.report_catalogue(user).await;
                None
            }
        };
        tracing::info!(site = %self.id, user, id = %info.id, at_ms = info.at_ms, "phone restored to a checkpoint");
        Ok(Restored { restored: CheckpointView::from(&info), saved_before })
    }

    /// One timer round: checkpoint every phone here, expire old checkpoints of every user
    /// this site holds, collect what no checkpoint needs.
    pub async fn checkpoint_round(&self) {
        // After one copy fails, the rest of the round is not copied: an unreachable
        // second site must not cost every phone its timeout. A later checkpoint's copy
        // carries everything it needs.
        let mut copy = true;
        for user in self.users() {
            match self.checkpoint_copied(&user, Some("hourly".into()), copy).await {
                Ok(taken) => copy &= taken.replica.is_some(),
                Err(e) => {
                    tracing::warn!(site = %self.id, user, "scheduled checkpoint failed: {}", vmi_engine::error_chain(&e))
                }
            }
        }
        let store = self.checkpoints.store.clone();
        let (retention, now) = (self.checkpoints.retention, self.now_ms());
        let _busy = self.checkpoints.busy.lock().await;
        let result = self
            .in_store(move || {
                let mut changed = Vec::new();
                for user in store.users()? {
                    if store.expire(&user, &retention, now)?.manifests_deleted > 0 {
                        changed.push(user);
                    }
                }
                if !changed.is_empty() {
                    store.gc()?;
                }
                Ok(changed)
            })
            .await;
        match result {
            Ok(changed) => {
                for user in changed {
                    self.report_catalogue(&user).await;
                }
            }
            Err(e) => tracing::error!(site = %self.id, "checkpoint retention failed: {}", vmi_engine::error_chain(&e)),
        }
    }

    /// Copies a checkpoint to the nearest other healthy site; returns its id.
    async fn replicate(&self, user: &str, info: &CheckpointInfo) -> Result<String, SiteError> {
        let sites = self.control.list_sites().await?;
        let me = sites.iter().find(|s| s.site.id == self.id).map(|s| (s.site.lat, s.site.lon));
        let (lat, lon) = me.unwrap_or((self.config.lat, self.config.lon));
        let replica = sites
            .iter()
            .filter(|s| s.site.id != self.id && s.healthy)
            .min_by(|a, b| {
                let d = |s: &vmi_control_api::SiteStatus| (s.site.lat - lat).powi(2) + (s.site.lon - lon).powi(2);
                d(a).total_cmp(&d(b)).then_with(|| a.site.id.cmp(&b.site.id))
            })
            .ok_or(ReplicaError::NoOtherSite)?;
        tracing::Span::current().record("vmi.replica", replica.site.id.as_str());
        let base = format!("{}/v1/replicas/{user}", replica.site.url.trim_end_matches('/'));
        let store = self.checkpoints.store.clone();

        let (u, id) = (user.to_owned(), info.id);
        let top = {
            let s = store.clone();
            self.in_store(move || s.top_keys(&u, id)).await?
        };
        let peer = self.peer(&replica.site.id)?;
        let lacking = ask_missing(&peer, &base, top).await?;
        let chunks = {
            let s = store.clone();
            let l = lacking.clone();
            self.in_store(move || s.chunks_of(&l)).await?
        };
        let mut send = lacking;
        send.extend(ask_missing(&peer, &base, chunks).await?);
        for _attempt in 0..2 {
            let (s, u, keys) = (store.clone(), user.to_owned(), send.clone());
            let objects = self.in_store(move || s.export(&u, id, &keys)).await?;
            let body = import_body(&CheckpointView::from(info), &objects);
            let (status, answer) = peer.post_bytes(&format!("{base}/import"), body).await?;
            match status {
                200 => return Ok(replica.site.id.clone()),
                // It lacks more than it said (it collected in between): send that too.
                409 => {
                    let lacking = serde_json::from_slice::<Missing>(&answer).map_err(|_| ReplicaError::Refused {
                        site: replica.site.id.clone(),
                        status,
                        answer: String::from_utf8_lossy(&answer).into_owned(),
                    })?;
                    send.extend(lacking.missing);
                    send.sort();
                    send.dedup();
                }
                _ => {
                    let answer = String::from_utf8_lossy(&answer).into_owned();
                    return Err(ReplicaError::Refused { site: replica.site.id.clone(), status, answer }.into());
                }
            }
        }
        Err(ReplicaError::StillLacking { site: replica.site.id.clone() }.into())
    }

    /// Replica side: which of `keys` this site's store lacks.
    pub(crate) async fn replica_missing(&self, keys: Vec<String>) -> Result<Vec<String>, SiteError> {
        let store = self.checkpoints.store.clone();
        self.in_store(move || store.missing(&keys)).await
    }

    /// Replica side: takes in a checkpoint another site sent. `Ok(None)`: stored;
    /// `Ok(Some(keys))`: still missing these.
    pub(crate) async fn replica_import(&self, user: &str, body: &[u8]) -> Result<Option<Vec<String>>, SiteError> {
        let span = tracing::info_span!("checkpoint.import", vmi.site = %self.id, vmi.user = %user, vmi.bytes = body.len() as i64);
        self.replica_import_traced(user, body).instrument(span).await
    }

    async fn replica_import_traced(&self, user: &str, body: &[u8]) -> Result<Option<Vec<String>>, SiteError> {
        let (view, objects) = parse_import_body(body)?;
        let info = view.to_info().ok_or_else(|| bad_bundle("checkpoint id is not 64 hex digits"))?;
        let store = self.checkpoints.store.clone();
        let u = user.to_owned();
        match self.in_store(move || store.import(&u, &info, objects)).await {
            Ok(()) => {
                self.report_catalogue(user).await;
                Ok(None)
            }
            Err(SiteError::Checkpoint(CheckpointError::Incomplete { missing, .. })) => Ok(Some(missing)),
            Err(e) => Err(e),
        }
    }
}

fn bad_bundle(detail: &str) -> SiteError {
    SiteError::Checkpoint(CheckpointError::BadBundle(detail.to_owned()))
}

/// Keys a replica lacks, as it answers.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct Missing {
    pub missing: Vec<String>,
}

async fn ask_missing(peer: &vmi_control_api::Caller, base: &str, keys: Vec<String>) -> Result<Vec<String>, SiteError> {
    if keys.is_empty() {
        return Ok(keys);
    }
    let (status, body) = peer.post_json(&format!("{base}/missing"), &serde_json::json!({ "keys": keys })).await?;
    if status != 200 {
        return Err(ReplicaError::Refused { site: base.to_string(), status, answer: body }.into());
    }
    let missing = serde_json::from_str::<Missing>(&body).map_err(|e| ReplicaError::Refused {
        site: base.to_string(),
        status,
        answer: format!("{body} ({})", vmi_engine::error_chain(&e)),
    })?;
    Ok(missing.missing)
}

/// An import request: `u32` length of the checkpoint's JSON, the JSON, then the bundle.
fn import_body(view: &CheckpointView, objects: &[(String, Vec<u8>)]) -> Vec<u8> {
    let json = serde_json::to_vec(view).unwrap_or_default();
    let bundle = vmi_checkpoint::encode_bundle(objects);
    let mut body = Vec::with_capacity(4 + json.len() + bundle.len());
    body.extend_from_slice(&(json.len() as u32).to_le_bytes());
    body.extend_from_slice(&json);
    body.extend_from_slice(&bundle);
    body
}

type Objects = Vec<(String, Vec<u8>)>;

fn parse_import_body(body: &[u8]) -> Result<(CheckpointView, Objects), SiteError> {
    let (len, rest) = body.split_first_chunk::<4>().ok_or_else(|| bad_bundle("body too short"))?;
    let len = u32::from_le_bytes(*len) as usize;
    let (json, bundle) = rest.split_at_checked(len).ok_or_else(|| bad_bundle("checkpoint JSON ends early"))?;
    let view: CheckpointView = serde_json::from_slice(json)
        .map_err(|e| bad_bundle(&format!("checkpoint JSON: {}", vmi_engine::error_chain(&e))))?;
    Ok((view, vmi_checkpoint::decode_bundle(bundle)?))
}

use vmi_control_api::time::describe_time;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_bodies_refuse_damage() {
        let view = CheckpointView {
            id: "ab".repeat(32),
            at_ms: 5,
            label: None,
            memory_bytes: 0,
            new_chunks: 0,
            stored_bytes: 0,
        };
        let body = import_body(&view, &[("chunks/x".into(), vec![1])]);
        assert_eq!(parse_import_body(&body).expect("parse").0, view);
        for cut in [0, 3, 10, body.len() - 1] {
            assert!(parse_import_body(&body[..cut]).is_err(), "cut {cut}");
        }
    }
}
