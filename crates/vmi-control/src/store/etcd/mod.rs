//! A [`Store`] in an etcd cluster: the control plane's state for more than one machine.
//!
//! Every operation is one optimistic etcd transaction ([`kv::Tx`]): the keys it read must be at the revisions it
//! read them at, else it runs again. So a placement move is a compare-and-set on the placement key's revision
//! (which carries the epoch), and a failover, which reads both sites' heartbeat records and the placement, commits
//! only if no heartbeat and no other move slipped in between: the same serial order SQLite's `IMMEDIATE`
//! transactions give. docs/CONTROL-PLANE.md draws the keys.
//!
//! Keys under the store's prefix (`vmi/` by default), values JSON unless noted:
//!
//! | key | value |
//! |---|---|
//! | `users/{name}` | tenant, created, admitted memory |
//! | `devices/{id:020}` | user, name, created, revoked, token hash |
//! | `device-tokens/{hash}` | device id |
//! | `user-devices/{user}` | the user's device ids |
//! | `credentials/{hash}` | operator or tenant-admin credential |
//! | `sites/{id}` | the [`Site`] with its last heartbeat |
//! | `placed/{site}` | users placed on the site (what a heartbeat answers) |
//! | `placements/{user}` | site, epoch, standby site and the epoch of its copy |
//! | `migrations/{id:020}`, `audit/{id:020}` | logs, numbered by `seq/migrations`, `seq/audit` |
//! | `checkpoints/{user}/{site}` | what the site holds of the user's checkpoints |
//! | `tenants/{name}` | the [`Tenant`] |
//! | `images/{name}/{version:020}` | an image version; its bytes in `blobs/{hash}/{n:04}` (raw, 512 KiB each) |
//! | `join-tokens/{hash}` | site and expiry of a one-time join token |
//! | `site-leases/{id}` | the site's etcd lease id, attached to that lease (gone once etcd expired it) |
//! | `control/leader` | the control replica running the placer (held by an etcd lease) |

mod compaction;
mod kv;
mod leader;

pub(crate) use kv::answer_by;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use vmi_control_api::auth::{AuditEntry, AuditQuery, JoinToken, MAX_AUDIT_LISTED, NewCredential, Principal};
use vmi_control_api::model::{
    CatalogedCheckpoint, CheckpointEntry, Device, Identity, LoggedMigration, MigrationRecord, NewDevice, Placement,
    Site, SiteSpec, User,
};
use vmi_control_api::tenants::{
    Admission, DEFAULT_IMAGE, ImageVersion, Tenant, TenantRequest, TenantStatus, TenantUpdate, UserImage,
};

pub(crate) use kv::{EtcdKv, Watched};
pub use leader::LEADER_TTL;

use super::revocations::Revocations;
use super::{DEFAULT_AUDIT_LISTED, PlacedUsers, Store, generate_token, now_ms, token_hash};
use crate::validate::{
    validate_checkpoints, validate_id, validate_label, validate_migration, validate_site_spec, validate_tenant,
    validate_wasm,
};
use crate::{ControlError, Leadership};

/// The key prefix of a store nobody named.
pub const DEFAULT_PREFIX: &str = "vmi/";
/// Image bytes are cut into values of this size (etcd refuses requests over 1.5 MiB).
const BLOB_CHUNK: usize = 512 << 10;
/// Audit entries written per etcd transaction (etcd allows 128 operations in one).
const AUDIT_BATCH: usize = 100;
/// Log entries read per page of a filtered scan.
const PAGE: i64 = 256;

/// A [`Store`] in etcd (see the module doc).
#[derive(Debug)]
pub struct EtcdStore {
    kv: Arc<EtcdKv>,
    /// Heartbeats written (of the kv's commits).
    heartbeats: AtomicU64,
    /// Whether each site's lease is also an etcd lease (`site-leases/{id}`), which a failover needs expired. Off
    /// only for the conformance suite, whose clocks are the test's.
    site_leases: bool,
    /// Who follows device revocations (made here, or heard of by the watch on `devices/`), and how recently
    /// that watch heard from etcd.
    revocations: Arc<Revocations>,
}

/// What the watch on `devices/` does: tells the followers of every revocation (a device written revoked, or
/// deleted), and that some may have been missed when the watch starts again; notes up to when it is current.
fn watch_revocations(revocations: Arc<Revocations>) -> impl FnMut(kv::Watched<'_>) + Send + 'static {
    move |seen| match seen {
        // Current only once an answer proves it (the first within milliseconds: progress is asked at once).
        kv::Watched::Started => revocations.revoked(None),
        kv::Watched::Current(at) => revocations.heard_as_of(at),
        kv::Watched::Lost => {
            revocations.lost();
            revocations.revoked(None);
        }
        kv::Watched::Events(events) => {
            for event in events {
                let Some(kv) = event.kv() else { continue };
                let id = String::from_utf8_lossy(kv.key()).rsplit('/').next().and_then(|n| n.parse::<u64>().ok());
                let revoked = event.event_type() != etcd_client::EventType::Put
                    || serde_json::from_slice::<DeviceRecord>(kv.value()).map_or(true, |d| d.revoked);
                if revoked {
                    // A key that names no device: unknown which, so every one.
                    revocations.revoked(id);
                }
            }
        }
    }
}

/// How long a status round may wait for the members' answers.
const STATUS_WITHIN: std::time::Duration = std::time::Duration::from_millis(300);

fn site_lease_key(id: &str) -> String {
    format!("site-leases/{id}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserRecord {
    tenant: Option<String>,
    created_ms: u64,
    /// The memory of the admitted phone; `None` while the user's phone is not admitted.
    #[serde(default)]
    phone_memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeviceRecord {
    user: String,
    name: String,
    created_ms: u64,
    revoked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CredentialRecord {
    kind: String,
    name: String,
    tenant: Option<String>,
    created_ms: u64,
    #[serde(default)]
    revoked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlacementRecord {
    site: String,
    epoch: u64,
    #[serde(default)]
    standby: Option<String>,
    #[serde(default)]
    standby_epoch: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    hash: String,
    size_bytes: u64,
    published_ms: u64,
    withdrawn: bool,
    chunks: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JoinRecord {
    site: String,
    expires_ms: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn numbered(kind: &str, id: u64) -> String {
    format!("{kind}/{id:020}")
}

fn user_key(name: &str) -> String {
    format!("users/{name}")
}

fn site_key(id: &str) -> String {
    format!("sites/{id}")
}

fn placement_key(user: &str) -> String {
    format!("placements/{user}")
}

fn placed_key(site: &str) -> String {
    format!("placed/{site}")
}

fn tenant_key(name: &str) -> String {
    format!("tenants/{name}")
}

fn image_key(name: &str, version: u64) -> String {
    format!("images/{name}/{version:020}")
}

fn blob_key(hash: &str, chunk: u32) -> String {
    format!("blobs/{hash}/{chunk:04}")
}

/// The next number of a counter, written back when the transaction commits.
fn next_number(tx: &mut kv::Tx<'_>, counter: &str) -> Result<u64, ControlError> {
    let next = tx.get::<u64>(counter)?.unwrap_or(0) + 1;
    tx.put(counter, &next)?;
    Ok(next)
}

fn require_user(tx: &mut kv::Tx<'_>, name: &str) -> Result<UserRecord, ControlError> {
    tx.get::<UserRecord>(&user_key(name))?.ok_or_else(|| ControlError::not_found("user", name))
}

fn require_site(tx: &mut kv::Tx<'_>, id: &str) -> Result<Site, ControlError> {
    tx.get::<Site>(&site_key(id))?.ok_or_else(|| ControlError::not_found("site", id))
}

/// Moves `user` between the sites' placed lists (what their heartbeats answer).
fn move_placed(tx: &mut kv::Tx<'_>, user: &str, from: Option<&str>, to: &str) -> Result<(), ControlError> {
    if from == Some(to) {
        return Ok(());
    }
    if let Some(from) = from {
        let mut list: Vec<String> = tx.get(&placed_key(from))?.unwrap_or_default();
        list.retain(|u| u != user);
        tx.put(&placed_key(from), &list)?;
    }
    let mut list: Vec<String> = tx.get(&placed_key(to))?.unwrap_or_default();
    if let Err(at) = list.binary_search_by(|u| u.as_str().cmp(user)) {
        list.insert(at, user.to_owned());
    }
    tx.put(&placed_key(to), &list)
}

/// `(phones, memory)` admitted in `tenant` among `users`, leaving out `except`.
fn usage(users: &[(String, UserRecord)], tenant: &str, except: &str) -> (u64, u64) {
    users
        .iter()
        .filter(|(key, u)| u.tenant.as_deref() == Some(tenant) && key.strip_prefix("users/") != Some(except))
        .filter_map(|(_, u)| u.phone_memory_bytes)
        .fold((0, 0), |(n, m), bytes| (n + 1, m.saturating_add(bytes)))
}

/// Every version of every image, by name and version, with `current` set.
fn image_versions(tx: &mut kv::Tx<'_>, prefix: &str) -> Result<Vec<(ImageVersion, u32)>, ControlError> {
    let mut versions: Vec<(ImageVersion, u32)> = tx
        .list::<ImageRecord>(prefix)?
        .into_iter()
        .filter_map(|(key, r)| {
            let rest = key.strip_prefix("images/")?;
            let (name, version) = rest.rsplit_once('/')?;
            let version = version.parse().ok()?;
            Some((
                ImageVersion {
                    name: name.to_owned(),
                    version,
                    hash: r.hash,
                    size_bytes: r.size_bytes,
                    published_ms: r.published_ms,
                    withdrawn: r.withdrawn,
                    current: false,
                },
                r.chunks,
            ))
        })
        .collect();
    versions.sort_by(|(a, _), (b, _)| (a.name.as_str(), a.version).cmp(&(b.name.as_str(), b.version)));
    let mut latest: HashMap<String, usize> = HashMap::new();
    for (i, (v, _)) in versions.iter().enumerate() {
        if !v.withdrawn {
            latest.insert(v.name.clone(), i);
        }
    }
    for i in latest.into_values() {
        versions[i].0.current = true;
    }
    Ok(versions)
}

fn versions_of(tx: &mut kv::Tx<'_>, name: &str) -> Result<Vec<ImageVersion>, ControlError> {
    Ok(image_versions(tx, &format!("images/{name}/"))?.into_iter().map(|(v, _)| v).collect())
}

fn tenant_of(tx: &mut kv::Tx<'_>, user: &str) -> Result<Option<String>, ControlError> {
    Ok(require_user(tx, user)?.tenant)
}

/// How a client speaks TLS to etcd members (`https://` endpoints): the root it trusts for the members'
/// certificates, and the certificate and key it presents (the members require one: mutual TLS).
#[derive(Clone)]
pub struct EtcdTls {
    /// The CA that signed the members' certificates (PEM).
    pub ca_pem: String,
    /// This client's certificate (PEM).
    pub cert_pem: String,
    /// This client's private key (PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (each `http://host:port`, plain: loopback only); keys live
    /// under `prefix`.
    pub fn connect(endpoints: &[String], prefix: &str) -> Result<EtcdStore, ControlError> {
        EtcdStore::connect_with(endpoints, prefix, None)
    }

    /// Connects to the etcd cluster at `endpoints`: `https://host:port` each with `tls` (mutual TLS, what crosses
    /// between machines), or `http://host:port` each without it. A mix, or a scheme that does not match, is refused.
    pub fn connect_with(endpoints: &[String], prefix: &str, tls: Option<EtcdTls>) -> Result<EtcdStore, ControlError> {
        if endpoints.is_empty() {
            return Err(ControlError::BadRequest("no etcd endpoint given".into()));
        }
        let scheme = if tls.is_some() { "https://" } else { "http://" };
        if let Some(odd) = endpoints.iter().find(|e| !e.starts_with(scheme)) {
            return Err(ControlError::BadRequest(match tls {
                Some(_) => format!("etcd endpoint {odd} is not https:// (TLS is configured for etcd)"),
                None => format!("etcd endpoint {odd} is not http:// (give the etcd TLS files for https://)"),
            }));
        }
        let kv = EtcdKv::connect(endpoints, prefix, tls)?;
        // One read proves the cluster answers (and has a leader) before the service says it is up.
        kv.get("seq/devices")?;
        let revocations = Arc::new(Revocations::default());
        kv.watch_prefix("devices/", watch_revocations(revocations.clone()));
        Ok(EtcdStore { kv: Arc::new(kv), heartbeats: AtomicU64::new(0), site_leases: true, revocations })
    }

    /// The same store judging site leases only by the heartbeat times it is given, as the SQLite store does (so
    /// the conformance suite can drive time by hand).
    #[cfg(test)]
    pub(crate) fn with_clock_leases(self) -> EtcdStore {
        EtcdStore { site_leases: false, ..self }
    }

    /// Renews site `id`'s etcd lease; `Some(lease)` when there was none live and a new one was granted (the
    /// heartbeat's transaction then writes `site-leases/{id}` with it).
    fn renew_site_lease(&self, id: &str) -> Result<Option<i64>, ControlError> {
        if let Some(entry) = self.kv.get(&site_lease_key(id))?
            && let Ok(lease) = serde_json::from_slice::<i64>(&entry.value)
        {
            // Opening a keep-alive stream renews the lease once and reads etcd's answer; a lease etcd no longer
            // knows (it expired) is an error of its own, and a new one is granted below.
            let renewed = self.kv.call(true, move |mut c| async move {
                match c.lease_keep_alive(lease).await {
                    Ok(_) => Ok(true),
                    Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
                    Err(e) => Err(e),
                }
            })?;
            if renewed {
                return Ok(None);
            }
        }
        let ttl = i64::try_from(vmi_control_api::model::LEASE_MS / 1000).unwrap_or(3);
        let granted = self.kv.call(false, move |mut c| async move { c.lease_grant(ttl, None).await })?;
        Ok(Some(granted.id()))
    }

    /// Campaigns, as replica `replica`, to lead the control plane (run the placer and the failover loop), for as
    /// long as the returned [`Leadership`] or a clone of it lives.
    pub fn campaign(&self, replica: &str) -> Result<Leadership, ControlError> {
        self.campaign_with(replica, None)
    }

    /// As [`EtcdStore::campaign`], and while leading compacts etcd's history to what it was `keep` ago
    /// (`compaction.rs`): without it the history grows with every write, the reports' batches above all.
    pub fn campaign_compacting(&self, replica: &str, keep: std::time::Duration) -> Result<Leadership, ControlError> {
        self.campaign_with(replica, Some(keep))
    }

    fn campaign_with(&self, replica: &str, keep: Option<std::time::Duration>) -> Result<Leadership, ControlError> {
        let handle = self.kv.handle().ok_or_else(|| ControlError::Unavailable("etcd client closed".into()))?;
        let key = self.kv.full("control/leader");
        Ok(leader::campaign(&handle, self.kv.clone(), key, replica.to_owned(), keep))
    }

    /// Every placement `user`'s phone ever had, oldest first, with the etcd revision that wrote it: the ground
    /// truth the fault checker (`vmi nemesis`) holds the services' histories against. Unavailable, naming why,
    /// where etcd's history was compacted past its first placement (a checked run keeps the whole history:
    /// `vmi control --etcd-keep-history 0`).
    pub fn placement_history(&self, user: &str) -> Result<Vec<(i64, Placement)>, ControlError> {
        let (versions, whole) = self.kv.versions(&placement_key(user))?;
        if !whole {
            return Err(ControlError::Unavailable(format!(
                "etcd's history of {user}'s placement was compacted: only the last {} of its versions are kept \
                 (run the control replicas with --etcd-keep-history 0 to keep it whole)",
                versions.len()
            )));
        }
        versions
            .into_iter()
            .map(|e| {
                let p: PlacementRecord = kv::decode(&e.key, &e.value)?;
                Ok((e.mod_revision, Placement { site: p.site, epoch: p.epoch }))
            })
            .collect()
    }

    /// Terminal reports kept in etcd, so that whichever replica leads sees the reports every replica received.
    pub fn shared_reports(&self) -> crate::Reports {
        crate::Reports::shared(&self.kv)
    }

    fn write_blob(&self, wasm: &[u8]) -> Result<(String, u32), ControlError> {
        let hash = blake3::hash(wasm).to_hex().to_string();
        let mut chunks = 0u32;
        for (i, chunk) in wasm.chunks(BLOB_CHUNK).enumerate() {
            let n = u32::try_from(i).map_err(|_| ControlError::BadRequest("image too large".into()))?;
            // Content-addressed and written before the version that names it: rewriting is harmless and a
            // version never points at missing bytes.
            self.kv.put_raw(&blob_key(&hash, n), chunk.to_vec())?;
            chunks = n + 1;
        }
        Ok((hash, chunks))
    }

    /// Newest-first entries of a numbered log that pass `keep`, at most `limit`.
    fn scan_log<T: for<'de> Deserialize<'de>>(
        &self,
        kind: &str,
        limit: usize,
        mut keep: impl FnMut(&T) -> bool,
    ) -> Result<Vec<T>, ControlError> {
        let mut out = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let (page, _) = self.kv.range(&format!("{kind}/"), true, PAGE, before.as_deref())?;
            let full = i64::try_from(page.len()).unwrap_or(i64::MAX) == PAGE;
            for entry in &page {
                let value: T = serde_json::from_slice(&entry.value)
                    .map_err(|e| ControlError::Unavailable(format!("etcd holds a bad value at {}: {e}", entry.key)))?;
                if keep(&value) {
                    out.push(value);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            match (full, page.last()) {
                (true, Some(last)) => before = Some(last.key.clone()),
                _ => return Ok(out),
            }
        }
    }
}

impl Store for EtcdStore {
    fn create_user_in(&self, name: &str, tenant: Option<&str>) -> Result<User, ControlError> {
        validate_id("user name", name)?;
        self.kv.atomically(|tx| {
            if let Some(tenant) = tenant
                && tx.get::<Tenant>(&tenant_key(tenant))?.is_none()
            {
                return Err(ControlError::not_found("tenant", tenant));
            }
            if tx.get::<UserRecord>(&user_key(name))?.is_some() {
                return Err(ControlError::Conflict { what: "user", id: name.to_owned() });
            }
            let record =
                UserRecord { tenant: tenant.map(str::to_owned), created_ms: now_ms(), phone_memory_bytes: None };
            tx.put(&user_key(name), &record)
        })?;
        Ok(User { name: name.to_owned(), tenant: tenant.map(str::to_owned) })
    }

    fn list_users(&self) -> Result<Vec<User>, ControlError> {
        self.kv.atomically(|tx| {
            Ok(tx
                .list::<UserRecord>("users/")?
                .into_iter()
                .filter_map(|(key, r)| Some(User { name: key.strip_prefix("users/")?.to_owned(), tenant: r.tenant }))
                .collect())
        })
    }

    fn create_device(&self, user: &str, name: &str) -> Result<NewDevice, ControlError> {
        validate_label("device name", name)?;
        let token = generate_token()?;
        let hash = hex(&token_hash(&token).ok_or_else(|| ControlError::BadRequest("malformed token".into()))?);
        let device_id = self.kv.atomically(|tx| {
            require_user(tx, user)?;
            let id = next_number(tx, "seq/devices")?;
            let record =
                DeviceRecord { user: user.to_owned(), name: name.to_owned(), created_ms: now_ms(), revoked: false };
            tx.put(&numbered("devices", id), &record)?;
            tx.put(&format!("device-tokens/{hash}"), &id)?;
            let mut ids: Vec<u64> = tx.get(&format!("user-devices/{user}"))?.unwrap_or_default();
            ids.push(id);
            tx.put(&format!("user-devices/{user}"), &ids)?;
            Ok(id)
        })?;
        Ok(NewDevice { device_id, token })
    }

    fn list_devices(&self, user: &str) -> Result<Vec<Device>, ControlError> {
        self.kv.atomically(|tx| {
            require_user(tx, user)?;
            let ids: Vec<u64> = tx.get(&format!("user-devices/{user}"))?.unwrap_or_default();
            let mut devices = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(d) = tx.get::<DeviceRecord>(&numbered("devices", id))? {
                    devices.push(Device {
                        device_id: id,
                        user: d.user,
                        name: d.name,
                        created_ms: d.created_ms,
                        revoked: d.revoked,
                    });
                }
            }
            Ok(devices)
        })
    }

    fn revoke_device(&self, device_id: u64) -> Result<bool, ControlError> {
        let revoked = self.kv.atomically(|tx| {
            let key = numbered("devices", device_id);
            let mut device: DeviceRecord =
                tx.get(&key)?.ok_or_else(|| ControlError::not_found("device", device_id.to_string()))?;
            if device.revoked {
                return Ok(false);
            }
            device.revoked = true;
            tx.put(&key, &device)?;
            Ok(true)
        })?;
        if revoked {
            // At once here; other replicas hear of it through their watch.
            self.revocations.revoked(Some(device_id));
        }
        Ok(revoked)
    }

    fn follow_revocations(&self, sink: super::RevocationSink) -> bool {
        self.revocations.follow(sink);
        true
    }

    fn revocations_current(&self) -> bool {
        self.revocations.current()
    }

    fn authenticate(&self, token: &str) -> Result<Option<Identity>, ControlError> {
        let Some(hash) = token_hash(token) else { return Ok(None) };
        self.kv.atomically(|tx| {
            let Some(id) = tx.get::<u64>(&format!("device-tokens/{}", hex(&hash)))? else { return Ok(None) };
            Ok(tx
                .get::<DeviceRecord>(&numbered("devices", id))?
                .filter(|d| !d.revoked)
                .map(|d| Identity { user: d.user, device_id: id }))
        })
    }

    fn put_site(&self, id: &str, spec: &SiteSpec) -> Result<Site, ControlError> {
        validate_id("site id", id)?;
        let url = validate_site_spec(spec)?;
        self.kv.atomically(|tx| {
            let site = match tx.get::<Site>(&site_key(id))? {
                Some(site) => Site { url: url.clone(), lat: spec.lat, lon: spec.lon, capacity: spec.capacity, ..site },
                None => Site {
                    id: id.to_owned(),
                    url: url.clone(),
                    lat: spec.lat,
                    lon: spec.lon,
                    capacity: spec.capacity,
                    phones: 0,
                    last_heartbeat_ms: None,
                    draining: false,
                    degraded: None,
                },
            };
            tx.put(&site_key(id), &site)?;
            Ok(site)
        })
    }

    fn heartbeat_since(
        &self,
        id: &str,
        phones: u32,
        degraded: Option<&str>,
        at_ms: u64,
        known: Option<u64>,
    ) -> Result<PlacedUsers, ControlError> {
        // Renewed first: a lease renewed without its heartbeat recorded only delays a failover, never hastens one.
        let new_lease = if self.site_leases { self.renew_site_lease(id)? } else { None };
        self.kv
            .atomically(|tx| {
                let site = require_site(tx, id)?;
                // Only where no live lease is recorded: a slow heartbeat landing after a newer one must not point
                // the key at its own lease, which nobody renews.
                if let Some(lease) = new_lease
                    && tx.get_raw(&site_lease_key(id))?.is_none()
                {
                    tx.put_leased(&site_lease_key(id), &lease, lease)?;
                }
                // Read in the same transaction: a failover that moved a phone away either committed before (and the
                // list no longer names it) or fails its compare on this site's record and sees this heartbeat. The
                // list's version is the revision of its key (etcd's revisions only grow: never one for two lists).
                let version = u64::try_from(tx.revision(&placed_key(id))?).unwrap_or(0);
                let users = if version != 0 && known == Some(version) {
                    None
                } else {
                    Some(tx.get::<Vec<String>>(&placed_key(id))?.unwrap_or_default())
                };
                let site =
                    Site { phones, last_heartbeat_ms: Some(at_ms), degraded: degraded.map(str::to_owned), ..site };
                tx.put(&site_key(id), &site)?;
                Ok(PlacedUsers { version, users })
            })
            .inspect(|_| {
                self.heartbeats.fetch_add(1, Ordering::Relaxed);
            })
    }

    fn site(&self, id: &str) -> Result<Option<Site>, ControlError> {
        self.kv.atomically(|tx| tx.get(&site_key(id)))
    }

    fn list_sites(&self) -> Result<Vec<Site>, ControlError> {
        self.kv.atomically(|tx| Ok(tx.list::<Site>("sites/")?.into_iter().map(|(_, s)| s).collect()))
    }

    fn move_placement(&self, user: &str, site: &str, expected_epoch: Option<u64>) -> Result<Placement, ControlError> {
        self.kv.atomically(|tx| {
            require_user(tx, user)?;
            require_site(tx, site)?;
            let current: Option<PlacementRecord> = tx.get(&placement_key(user))?;
            if let Some(expected) = expected_epoch {
                let now = current.as_ref().map_or(0, |p| p.epoch);
                if now != expected {
                    return Err(ControlError::EpochMismatch { user: user.to_owned(), expected, current: now });
                }
            }
            let next = match &current {
                None => PlacementRecord { site: site.to_owned(), epoch: 1, standby: None, standby_epoch: None },
                Some(p) if p.site != site || expected_epoch.is_some() => {
                    PlacementRecord { site: site.to_owned(), epoch: p.epoch + 1, ..p.clone() }
                }
                Some(p) => return Ok(Placement { site: p.site.clone(), epoch: p.epoch }),
            };
            move_placed(tx, user, current.as_ref().map(|p| p.site.as_str()), site)?;
            tx.put(&placement_key(user), &next)?;
            Ok(Placement { site: next.site, epoch: next.epoch })
        })
    }

    fn placement(&self, user: &str) -> Result<Option<Placement>, ControlError> {
        self.kv.atomically(|tx| {
            require_user(tx, user)?;
            Ok(tx.get::<PlacementRecord>(&placement_key(user))?.map(|p| Placement { site: p.site, epoch: p.epoch }))
        })
    }

    fn list_placements(&self) -> Result<Vec<(String, Placement)>, ControlError> {
        Ok(self.list_standbys()?.into_iter().map(|(user, p, _)| (user, p)).collect())
    }

    fn set_standby(&self, user: &str, owner: &str, standby: &str, epoch: u64) -> Result<(), ControlError> {
        self.kv.atomically(|tx| {
            require_site(tx, standby)?;
            if standby == owner {
                return Err(ControlError::BadRequest(format!("{owner} cannot stand by for its own phone")));
            }
            let mut current: PlacementRecord =
                tx.get(&placement_key(user))?.ok_or_else(|| ControlError::not_found("placement", user))?;
            if current.site != owner || current.epoch != epoch {
                return Err(ControlError::EpochMismatch {
                    user: user.to_owned(),
                    expected: epoch,
                    current: current.epoch,
                });
            }
            current.standby = Some(standby.to_owned());
            current.standby_epoch = Some(epoch);
            tx.put(&placement_key(user), &current)
        })
    }

    fn clear_standby(&self, user: &str, owner: &str) -> Result<(), ControlError> {
        self.kv.atomically(|tx| {
            let mut current: PlacementRecord =
                tx.get(&placement_key(user))?.ok_or_else(|| ControlError::not_found("placement", user))?;
            if current.site != owner {
                return Err(ControlError::Forbidden(format!(
                    "{owner} does not run {user}'s phone ({} does)",
                    current.site
                )));
            }
            current.standby = None;
            current.standby_epoch = None;
            tx.put(&placement_key(user), &current)
        })
    }

    fn fail_over(
        &self,
        user: &str,
        from: &str,
        to: &str,
        epoch: u64,
        expired_before_ms: u64,
        live_since_ms: u64,
    ) -> Result<Placement, ControlError> {
        self.kv.atomically(|tx| {
            // Both sites' records are read here, so a heartbeat from either that lands before the commit makes
            // the commit fail and this decision is taken again on the new heartbeat.
            if require_site(tx, from)?.last_heartbeat_ms.is_none_or(|at| at >= expired_before_ms) {
                return Err(ControlError::Refused(format!("{from} renewed its lease: no failover")));
            }
            if require_site(tx, to)?.last_heartbeat_ms.is_none_or(|at| at < live_since_ms) {
                return Err(ControlError::Refused(format!("{to} holds no lease: no failover there")));
            }
            // And by etcd's clock: `from`'s lease key is gone only once etcd expired the lease (a new etcd leader
            // first renews every lease for its time to live), `to`'s is there while it lives.
            if self.site_leases {
                if tx.get_raw(&site_lease_key(from))?.is_some() {
                    return Err(ControlError::Refused(format!("{from}'s etcd lease is live: no failover")));
                }
                if tx.get_raw(&site_lease_key(to))?.is_none() {
                    return Err(ControlError::Refused(format!("{to}'s etcd lease expired: no failover there")));
                }
            }
            let current: PlacementRecord =
                tx.get(&placement_key(user))?.ok_or_else(|| ControlError::not_found("placement", user))?;
            if current.site != from || current.epoch != epoch {
                return Err(ControlError::EpochMismatch {
                    user: user.to_owned(),
                    expected: epoch,
                    current: current.epoch,
                });
            }
            // Only to the copy the owner names now, of this epoch: a copy it stopped naming may be stale.
            if current.standby.as_deref() != Some(to) || current.standby_epoch != Some(epoch) {
                return Err(ControlError::Refused(format!(
                    "{to} holds no standby copy of {user}'s phone at epoch {epoch}"
                )));
            }
            let next = PlacementRecord { site: to.to_owned(), epoch: epoch + 1, standby: None, standby_epoch: None };
            move_placed(tx, user, Some(from), to)?;
            tx.put(&placement_key(user), &next)?;
            Ok(Placement { site: next.site, epoch: next.epoch })
        })
    }

    fn list_standbys(&self) -> Result<Vec<(String, Placement, Option<String>)>, ControlError> {
        self.kv.atomically(|tx| {
            Ok(tx
                .list::<PlacementRecord>("placements/")?
                .into_iter()
                .filter_map(|(key, p)| {
                    let user = key.strip_prefix("placements/")?.to_owned();
                    let standby = p.standby.filter(|_| p.standby_epoch == Some(p.epoch));
                    Some((user, Placement { site: p.site, epoch: p.epoch }, standby))
                })
                .collect())
        })
    }

    fn set_draining(&self, id: &str, draining: bool) -> Result<Site, ControlError> {
        self.kv.atomically(|tx| {
            let site = Site { draining, ..require_site(tx, id)? };
            tx.put(&site_key(id), &site)?;
            Ok(site)
        })
    }

    fn record_migration(&self, record: &MigrationRecord, at_ms: u64) -> Result<LoggedMigration, ControlError> {
        validate_migration(record)?;
        self.kv.atomically(|tx| {
            require_user(tx, &record.user)?;
            let id = next_number(tx, "seq/migrations")?;
            let logged = LoggedMigration { id, at_ms, record: record.clone() };
            tx.put(&numbered("migrations", id), &logged)?;
            Ok(logged)
        })
    }

    fn migrations(&self, user: Option<&str>, limit: usize) -> Result<Vec<LoggedMigration>, ControlError> {
        if let Some(user) = user {
            self.kv.atomically(|tx| require_user(tx, user).map(drop))?;
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.scan_log("migrations", limit, |m: &LoggedMigration| user.is_none_or(|u| m.record.user == u))
    }

    fn put_site_checkpoints(&self, user: &str, site: &str, entries: &[CheckpointEntry]) -> Result<(), ControlError> {
        validate_checkpoints(entries)?;
        // One entry per id, the last reported winning (as SQLite's primary key keeps it).
        let mut by_id: BTreeMap<&str, &CheckpointEntry> = BTreeMap::new();
        for e in entries {
            by_id.insert(e.id.as_str(), e);
        }
        let unique: Vec<&CheckpointEntry> = by_id.into_values().collect();
        self.kv.atomically(|tx| {
            require_user(tx, user)?;
            require_site(tx, site)?;
            // An empty list rather than a deletion: the catalogue's listing only notices writes.
            tx.put(&format!("checkpoints/{user}/{site}"), &unique)
        })
    }

    fn checkpoints(&self, user: &str) -> Result<Vec<CatalogedCheckpoint>, ControlError> {
        let held = self.kv.atomically(|tx| {
            require_user(tx, user)?;
            tx.list::<Vec<CheckpointEntry>>(&format!("checkpoints/{user}/"))
        })?;
        let prefix = format!("checkpoints/{user}/");
        let mut rows: Vec<(CheckpointEntry, String)> = held
            .into_iter()
            .filter_map(|(key, entries)| Some((key.strip_prefix(&prefix)?.to_owned(), entries)))
            .flat_map(|(site, entries)| entries.into_iter().map(move |e| (e, site.clone())))
            .collect();
        rows.sort_by(|(a, sa), (b, sb)| (a.at_ms, &a.id, sa).cmp(&(b.at_ms, &b.id, sb)));
        let mut out: Vec<CatalogedCheckpoint> = Vec::new();
        for (entry, site) in rows {
            match out.last_mut() {
                Some(last) if last.entry.id == entry.id => last.sites.push(site),
                _ => out.push(CatalogedCheckpoint { entry, sites: vec![site] }),
            }
        }
        Ok(out)
    }

    fn create_tenant(&self, req: &TenantRequest) -> Result<Tenant, ControlError> {
        let image = validate_tenant(req, true)?;
        let tenant = Tenant {
            name: req.name.clone(),
            max_phones: req.max_phones,
            max_memory_bytes: req.max_memory_bytes,
            image,
        };
        self.kv.atomically(|tx| {
            if tx.get::<Tenant>(&tenant_key(&req.name))?.is_some() {
                return Err(ControlError::Conflict { what: "tenant", id: req.name.clone() });
            }
            tx.put(&tenant_key(&req.name), &tenant)
        })?;
        Ok(tenant)
    }

    fn update_tenant(&self, name: &str, update: &TenantUpdate) -> Result<Tenant, ControlError> {
        self.kv.atomically(|tx| {
            let now: Tenant = tx.get(&tenant_key(name))?.ok_or_else(|| ControlError::not_found("tenant", name))?;
            let next = super::tenants::updated(&now, update)?;
            tx.put(&tenant_key(name), &next)?;
            Ok(next)
        })
    }

    fn tenants(&self) -> Result<Vec<TenantStatus>, ControlError> {
        self.kv.atomically(|tx| {
            let tenants = tx.list::<Tenant>("tenants/")?;
            let users = tx.list::<UserRecord>("users/")?;
            Ok(tenants
                .into_iter()
                .map(|(_, tenant)| {
                    let (phones, memory_bytes) = usage(&users, &tenant.name, "");
                    TenantStatus { tenant, phones: u32::try_from(phones).unwrap_or(u32::MAX), memory_bytes }
                })
                .collect())
        })
    }

    fn admit(&self, user: &str, memory_bytes: u64) -> Result<Admission, ControlError> {
        if memory_bytes > i64::MAX as u64 {
            return Err(ControlError::BadRequest(format!("memory_bytes must be at most {}", i64::MAX)));
        }
        self.kv.atomically(|tx| {
            let mut record = require_user(tx, user)?;
            let (phones, memory) = match &record.tenant {
                Some(name) => {
                    let tenant: Tenant =
                        tx.get(&tenant_key(name))?.ok_or_else(|| ControlError::not_found("tenant", name))?;
                    // The whole user list is read, so an admission racing this one makes one of them run again.
                    let users = tx.list::<UserRecord>("users/")?;
                    let (phones, memory) = usage(&users, name, user);
                    super::tenants::within_quota(&tenant, phones, memory, memory_bytes)?
                }
                None => (1, memory_bytes),
            };
            let tenant = record.tenant.clone();
            record.phone_memory_bytes = Some(memory_bytes);
            tx.put(&user_key(user), &record)?;
            Ok(Admission {
                user: user.to_owned(),
                tenant,
                phones: u32::try_from(phones).unwrap_or(u32::MAX),
                memory_bytes: memory,
            })
        })
    }

    fn release(&self, user: &str) -> Result<(), ControlError> {
        self.kv.atomically(|tx| {
            let mut record = require_user(tx, user)?;
            if record.phone_memory_bytes.is_some() {
                record.phone_memory_bytes = None;
                tx.put(&user_key(user), &record)?;
            }
            Ok(())
        })
    }

    fn publish_image(&self, name: &str, wasm: &[u8]) -> Result<ImageVersion, ControlError> {
        validate_id("image name", name)?;
        validate_wasm(wasm)?;
        let (hash, chunks) = self.write_blob(wasm)?;
        self.kv.atomically(|tx| {
            let versions = versions_of(tx, name)?;
            if let Some(current) = versions.iter().find(|v| v.current)
                && current.hash == hash
            {
                return Ok(current.clone());
            }
            let next = versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
            let record = ImageRecord {
                hash: hash.clone(),
                size_bytes: wasm.len() as u64,
                published_ms: now_ms(),
                withdrawn: false,
                chunks,
            };
            tx.put(&image_key(name, next), &record)?;
            Ok(ImageVersion {
                name: name.to_owned(),
                version: next,
                hash: record.hash,
                size_bytes: record.size_bytes,
                published_ms: record.published_ms,
                withdrawn: false,
                current: true,
            })
        })
    }

    fn images(&self) -> Result<Vec<ImageVersion>, ControlError> {
        self.kv.atomically(|tx| Ok(image_versions(tx, "images/")?.into_iter().map(|(v, _)| v).collect()))
    }

    fn image_wasm(&self, name: &str, version: u64) -> Result<Option<Vec<u8>>, ControlError> {
        let Some(record) = self.kv.atomically(|tx| tx.get::<ImageRecord>(&image_key(name, version)))? else {
            return Ok(None);
        };
        let mut wasm = Vec::with_capacity(usize::try_from(record.size_bytes).unwrap_or(0));
        for n in 0..record.chunks {
            let chunk = self.kv.get(&blob_key(&record.hash, n))?.ok_or_else(|| {
                ControlError::Unavailable(format!("etcd lost chunk {n} of image {name:?} version {version}"))
            })?;
            wasm.extend_from_slice(&chunk.value);
        }
        Ok(Some(wasm))
    }

    fn rollback_image(&self, name: &str) -> Result<ImageVersion, ControlError> {
        self.kv.atomically(|tx| {
            let versions = versions_of(tx, name)?;
            let current = versions.iter().find(|v| v.current).ok_or_else(|| ControlError::not_found("image", name))?;
            let left = versions.iter().filter(|v| !v.withdrawn).count();
            if left < 2 {
                return Err(ControlError::Refused(format!(
                    "image {name:?} has no earlier version to roll back to (version {} is the only one left)",
                    current.version
                )));
            }
            let key = image_key(name, current.version);
            let mut record: ImageRecord = tx.get(&key)?.ok_or_else(|| ControlError::not_found("image", name))?;
            record.withdrawn = true;
            tx.put(&key, &record)?;
            let now = versions
                .iter()
                .filter(|v| !v.withdrawn && v.version != current.version)
                .max_by_key(|v| v.version)
                .ok_or_else(|| ControlError::not_found("image", name))?;
            Ok(ImageVersion { current: true, ..now.clone() })
        })
    }

    fn user_image(&self, user: &str) -> Result<(String, Option<UserImage>), ControlError> {
        self.kv.atomically(|tx| {
            let image = match tenant_of(tx, user)? {
                Some(t) => tx.get::<Tenant>(&tenant_key(&t))?.map_or_else(|| DEFAULT_IMAGE.to_owned(), |t| t.image),
                None => DEFAULT_IMAGE.to_owned(),
            };
            let found = versions_of(tx, &image)?.into_iter().find(|v| v.current).map(|v| UserImage {
                name: image.clone(),
                version: v.version,
                hash: v.hash,
            });
            Ok((image, found))
        })
    }

    fn create_credential(&self, principal: &Principal) -> Result<NewCredential, ControlError> {
        let (kind, name, tenant) = super::access::credential_parts(principal)?;
        validate_label("credential name", name)?;
        let token = generate_token()?;
        let hash = hex(&token_hash(&token).ok_or_else(|| ControlError::BadRequest("malformed token".into()))?);
        self.kv.atomically(|tx| {
            if let Some(tenant) = tenant
                && tx.get::<Tenant>(&tenant_key(tenant))?.is_none()
            {
                return Err(ControlError::not_found("tenant", tenant));
            }
            let record = CredentialRecord {
                kind: kind.to_owned(),
                name: name.clone(),
                tenant: tenant.cloned(),
                created_ms: now_ms(),
                revoked: false,
            };
            tx.put(&format!("credentials/{hash}"), &record)
        })?;
        Ok(NewCredential { principal: principal.clone(), token })
    }

    fn has_operator(&self) -> Result<bool, ControlError> {
        self.kv.atomically(|tx| {
            Ok(tx.list::<CredentialRecord>("credentials/")?.iter().any(|(_, c)| c.kind == "operator" && !c.revoked))
        })
    }

    fn principal(&self, token: &str) -> Result<Option<Principal>, ControlError> {
        if let Some(identity) = self.authenticate(token)? {
            return Ok(Some(Principal::Device { user: identity.user, device_id: identity.device_id }));
        }
        let Some(hash) = token_hash(token) else { return Ok(None) };
        let record = self.kv.atomically(|tx| tx.get::<CredentialRecord>(&format!("credentials/{}", hex(&hash))))?;
        Ok(record.filter(|c| !c.revoked).and_then(|c| super::access::credential_principal(&c.kind, c.name, c.tenant)))
    }

    fn create_join_token(&self, site: &str, now_ms: u64, ttl_ms: u64) -> Result<JoinToken, ControlError> {
        validate_id("site id", site)?;
        let token = generate_token()?;
        let hash = hex(&token_hash(&token).ok_or_else(|| ControlError::BadRequest("malformed token".into()))?);
        let expires_ms = now_ms.saturating_add(ttl_ms);
        self.kv.atomically(|tx| {
            for (key, old) in tx.list::<JoinRecord>("join-tokens/")? {
                if old.expires_ms <= now_ms {
                    tx.delete(&key);
                }
            }
            tx.put(&format!("join-tokens/{hash}"), &JoinRecord { site: site.to_owned(), expires_ms })
        })?;
        Ok(JoinToken { site: site.to_owned(), token, expires_ms })
    }

    fn redeem_join_token(&self, site: &str, token: &str, now_ms: u64) -> Result<bool, ControlError> {
        let Some(hash) = token_hash(token) else { return Ok(false) };
        let key = format!("join-tokens/{}", hex(&hash));
        self.kv.atomically(|tx| match tx.get::<JoinRecord>(&key)? {
            Some(j) if j.site == site && j.expires_ms > now_ms => {
                // The compare on this key's revision makes the token work once even with two racing redeems.
                tx.delete(&key);
                Ok(true)
            }
            _ => Ok(false),
        })
    }

    fn record_audit(&self, entries: &[AuditEntry]) -> Result<(), ControlError> {
        for batch in entries.chunks(AUDIT_BATCH) {
            self.kv.atomically(|tx| {
                for e in batch {
                    let id = next_number(tx, "seq/audit")?;
                    tx.put(&numbered("audit", id), &AuditEntry { id, ..e.clone() })?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, ControlError> {
        let limit = query.limit.unwrap_or(DEFAULT_AUDIT_LISTED);
        if !(1..=MAX_AUDIT_LISTED).contains(&limit) {
            return Err(ControlError::BadRequest(format!("limit must be 1 to {MAX_AUDIT_LISTED}")));
        }
        // As SQLite's LIKE: ASCII case folded, a trailing ':' or '/' matches as a prefix.
        let principal = query.principal.as_ref().map(|p| p.to_ascii_lowercase());
        let prefix = query.principal.as_ref().is_some_and(|p| p.ends_with(':') || p.ends_with('/'));
        self.scan_log("audit", limit, |e: &AuditEntry| {
            query.user.as_ref().is_none_or(|u| e.user.as_ref() == Some(u))
                && query.site.as_ref().is_none_or(|s| e.site.as_ref() == Some(s))
                && principal.as_ref().is_none_or(|p| {
                    let who = e.principal.to_ascii_lowercase();
                    if prefix { who.starts_with(p.as_str()) } else { who == *p }
                })
                && query.since_ms.is_none_or(|t| e.at_ms >= t)
                && query.until_ms.is_none_or(|t| e.at_ms < t)
        })
    }

    fn user_tenant(&self, user: &str) -> Result<Option<String>, ControlError> {
        self.kv.atomically(|tx| tenant_of(tx, user))
    }

    fn placements_frozen(&self) -> Result<bool, ControlError> {
        self.kv.majority_without_leader(STATUS_WITHIN)
    }

    fn writes(&self) -> Option<(u64, u64)> {
        Some((self.kv.commits(), self.heartbeats.load(Ordering::Relaxed)))
    }

    fn device_user(&self, device_id: u64) -> Result<Option<String>, ControlError> {
        self.kv.atomically(|tx| Ok(tx.get::<DeviceRecord>(&numbered("devices", device_id))?.map(|d| d.user)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use vmi_testkit::etcd::EtcdCluster;
    use vmi_testkit::netns::Net;

    use super::{EtcdStore, placement_key, site_lease_key};
    use crate::ControlError;
    use crate::store::Store;
    use crate::store::conformance::connect;
    use crate::store::test_support::spec;

    fn until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !check() {
            assert!(Instant::now() < deadline, "{what}: not within {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The etcd lease of `site`, revoked as its expiry would: what a site that stopped renewing ends with.
    fn expire_lease(s: &EtcdStore, site: &str) {
        let entry = s.kv.get(&site_lease_key(site)).unwrap().expect("a lease key");
        let lease: i64 = serde_json::from_slice(&entry.value).unwrap();
        s.kv.call(false, move |mut c| async move { c.lease_revoke(lease).await }).unwrap();
    }

    /// Polls `leadership` every 10 ms on a thread of its own until the returned flag is set: how many polls found
    /// it not leading.
    fn count_not_leading(
        leadership: crate::Leadership,
    ) -> (std::sync::Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<usize>) {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let polls = std::thread::spawn(move || {
            let mut not_leading = 0;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                not_leading += usize::from(!leadership.is_leading());
                std::thread::sleep(Duration::from_millis(10));
            }
            not_leading
        });
        (stop, polls)
    }

    /// Without quorum a call keeps asking while the member left says "no leader", then fails as unavailable;
    /// a caller that stops waiting sooner (`answer_by`: a heartbeat's write) has its calls give up then too.
    #[test]
    fn without_quorum_a_call_asks_again_until_its_callers_deadline() {
        let mut cluster = EtcdCluster::start("give-up", 3);
        let s = connect(&cluster.endpoints(), "give-up/");
        s.create_user("alice").unwrap();
        cluster.kill(1);
        cluster.kill(2);
        until(Duration::from_secs(10), "the member left to say it has no leader", || s.kv.leader_member().is_none());
        s.kv.prefer(0);
        let asked = Instant::now();
        let hurried = super::answer_by(asked + Duration::from_millis(200), || s.create_user("bob"));
        let hurried_took = asked.elapsed();
        let asked = Instant::now();
        let patient = s.create_user("carol");
        let patient_took = asked.elapsed();
        eprintln!("without quorum: a call gave up after {patient_took:?}, one in a hurry after {hurried_took:?}");
        assert!(matches!(hurried, Err(ControlError::Unavailable(_))), "{hurried:?}");
        assert!(matches!(patient, Err(ControlError::Unavailable(_))), "{patient:?}");
        assert!(patient_took >= Duration::from_millis(1300), "asked again while etcd had no leader: {patient_took:?}");
        assert!(hurried_took < Duration::from_millis(900), "gave up by its caller's deadline: {hurried_took:?}");
        cluster.restart(1);
        cluster.restart(2);
    }

    /// A leader that compacts etcd's history and lets go of its leadership (the service stopping) hands over at
    /// once: its campaign ends and revokes the lease, the compaction task keeping nothing alive.
    #[test]
    fn a_compacting_leader_that_lets_go_hands_over_at_once() {
        let cluster = EtcdCluster::start("hand-over", 1);
        let (a, b) = (connect(&cluster.endpoints(), "hand-over/"), connect(&cluster.endpoints(), "hand-over/"));
        let first = a.campaign_compacting("r1", Duration::from_secs(1)).unwrap();
        until(Duration::from_secs(10), "r1 to lead", || first.is_leading());
        let second = b.campaign("r2").unwrap();
        assert!(!second.is_leading());
        drop(first);
        // Well within the lease's time to live: r1 revoked it rather than letting it expire.
        until(crate::LEADER_TTL / 2, "r2 to lead once r1 let go", || second.is_leading());
    }

    /// The member carrying a leading replica's lease keep-alive dies (not etcd's leader): the keep-alive goes on
    /// through another member, and the replica leads throughout (before, it stepped down and could not lead
    /// again until its own key expired: seconds without a placer).
    #[test]
    fn a_leader_keeps_leading_when_the_member_its_lease_is_kept_through_dies() {
        let mut cluster = EtcdCluster::start("keep-lease", 3);
        let s = connect(&cluster.endpoints(), "keep-lease/");
        let etcd_leader = s.kv.leader_member().expect("an etcd leader");
        let carrier = (etcd_leader + 1) % 3;
        s.kv.prefer(carrier);
        let leadership = s.campaign("r1").unwrap();
        until(Duration::from_secs(10), "r1 to lead", || leadership.is_leading());
        let (stop, polls) = count_not_leading(leadership.clone());
        cluster.kill(carrier);
        // Past the lease's time to live: it must have been renewed through another member.
        std::thread::sleep(crate::LEADER_TTL + Duration::from_secs(1));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(polls.join().unwrap(), 0, "r1 stopped leading when one etcd member of three died");
        assert!(leadership.is_leading());
        cluster.restart(carrier);
    }

    /// etcd's own leader dies: every call made while the members notice and elect another is answered (a
    /// forwarded write waits, a "no leader" is asked again: it means the request was not applied), and the
    /// leading replica leads on.
    #[test]
    fn losing_the_etcd_leader_costs_calls_a_wait_not_an_error() {
        let mut cluster = EtcdCluster::start("lose-leader", 3);
        let s = connect(&cluster.endpoints(), "lose-leader/");
        let etcd_leader = s.kv.leader_member().expect("an etcd leader");
        s.kv.prefer(etcd_leader);
        let leadership = s.campaign("r1").unwrap();
        until(Duration::from_secs(10), "r1 to lead", || leadership.is_leading());
        let killed = Instant::now();
        cluster.kill(etcd_leader);
        // Several callers at once, so that calls arrive at every moment of the election.
        let written: usize = std::thread::scope(|scope| {
            let callers: Vec<_> = (0..4)
                .map(|caller| {
                    let s = &s;
                    scope.spawn(move || {
                        let mut written = 0;
                        while killed.elapsed() < Duration::from_secs(5) {
                            let name = format!("user{caller}-{written}");
                            s.create_user(&name)
                                .unwrap_or_else(|e| panic!("{name}, {:?} after the kill: {e}", killed.elapsed()));
                            written += 1;
                        }
                        written
                    })
                })
                .collect();
            callers.into_iter().map(|c| c.join().unwrap()).sum()
        });
        assert_eq!(s.list_users().unwrap().len(), written);
        eprintln!("{written} users written in the 5 s after etcd's leader died");
        until(Duration::from_secs(1), "r1 to lead again", || leadership.is_leading());
        cluster.restart(etcd_leader);
    }

    /// The watch on `devices/` proves itself current every half second (an answer at or past a linearizable
    /// read's revision), so a replica may trust its cache of device tokens; with etcd gone it may not, within
    /// the bound.
    #[test]
    fn revocations_are_current_while_the_watch_keeps_up_and_not_once_etcd_is_gone() {
        let mut cluster = EtcdCluster::start("revocations-current", 1);
        let s = connect(&cluster.endpoints(), "revocations-current/");
        until(Duration::from_secs(5), "the watch to prove itself current", || s.revocations_current());
        // Writes meanwhile (the watch's revision moves on with them): still current, every time it is asked.
        let watched = Instant::now();
        let mut n = 0;
        while watched.elapsed() < crate::store::revocations::CURRENT_WITHIN + Duration::from_secs(1) {
            s.create_user(&format!("user{n}")).unwrap();
            n += 1;
            assert!(s.revocations_current(), "current all along ({:?} in, {n} writes)", watched.elapsed());
            std::thread::sleep(Duration::from_millis(20));
        }
        cluster.kill(0);
        let killed = Instant::now();
        until(Duration::from_secs(5), "the cache to be distrusted without etcd", || !s.revocations_current());
        assert!(killed.elapsed() <= crate::store::revocations::CURRENT_WITHIN + Duration::from_millis(500));
        cluster.restart(0);
    }

    #[test]
    fn shared_reports_keep_flowing_past_the_batch_keys_lease_renewal() {
        use vmi_control_api::model::ReportRequest;
        let cluster = EtcdCluster::start("report-batches", 1);
        let (a, b) = (connect(&cluster.endpoints(), "shared/"), connect(&cluster.endpoints(), "shared/"));
        let (sent, seen) = (a.shared_reports(), b.shared_reports());
        let arrives = |at_ms: u64| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while seen.latest("alice").map(|r| r.at_ms) != Some(at_ms) {
                assert!(std::time::Instant::now() < deadline, "the report of {at_ms} at the other replica");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };
        sent.record("alice", ReportRequest::default(), 1);
        arrives(1);
        // Past the lease's renewal (10 s): the flusher renews it and goes on sharing.
        std::thread::sleep(std::time::Duration::from_secs(11));
        sent.record("alice", ReportRequest::default(), 2);
        arrives(2);
    }

    #[test]
    fn a_failover_also_needs_the_old_sites_etcd_lease_expired_and_the_new_ones_live() {
        let cluster = EtcdCluster::start("site-leases", 3);
        let s = connect(&cluster.endpoints(), "site-leases/");
        s.create_user("alice").unwrap();
        s.put_site("site-a", &spec(1)).unwrap();
        s.put_site("site-b", &spec(2)).unwrap();
        s.set_placement("alice", "site-a").unwrap();
        s.set_standby("alice", "site-a", "site-b", 1).unwrap();
        s.heartbeat("site-a", 1, None, 1_000).unwrap();
        s.heartbeat("site-b", 0, None, 10_000).unwrap();
        // By the clocks given, site-a's lease expired (last heartbeat 1 s, expiry before 5 s); etcd says it lives.
        let refused = s.fail_over("alice", "site-a", "site-b", 1, 5_000, 0).unwrap_err();
        assert!(matches!(&refused, ControlError::Refused(why) if why.contains("etcd lease is live")), "{refused:?}");
        // Expired at etcd too: now it moves. And a heartbeat renews a lease etcd expired with a new one.
        expire_lease(&s, "site-a");
        expire_lease(&s, "site-b");
        let refused = s.fail_over("alice", "site-a", "site-b", 1, 5_000, 0).unwrap_err();
        assert!(matches!(&refused, ControlError::Refused(why) if why.contains("site-b's etcd lease")), "{refused:?}");
        s.heartbeat("site-b", 0, None, 10_000).unwrap();
        assert_eq!(s.fail_over("alice", "site-a", "site-b", 1, 5_000, 0).unwrap().site, "site-b");
        // etcd's history of the placement, what the fault checker holds the services to: every version in order
        // (naming the standby rewrote it at the same epoch).
        let history = s.placement_history("alice").unwrap();
        assert!(history.windows(2).all(|w| w[0].0 < w[1].0), "revisions rise: {history:?}");
        let mut seen: Vec<(String, u64)> = history.into_iter().map(|(_, p)| (p.site, p.epoch)).collect();
        seen.dedup();
        assert_eq!(seen, [("site-a".to_owned(), 1), ("site-b".to_owned(), 2)]);
    }

    /// The leading replica compacts etcd's history to what it was `keep` ago (`compaction.rs` decides when, by
    /// its own clock, and is tested there): a key's versions are then read back to the compacted revision, the
    /// placement history says it is no longer whole, and writes, reads and the reports shared through a watch
    /// go on.
    #[test]
    fn the_leader_compacts_etcds_history_and_the_store_reads_on() {
        use vmi_control_api::model::ReportRequest;
        let cluster = EtcdCluster::start("compaction", 1);
        let (s, other) = (connect(&cluster.endpoints(), "compaction/"), connect(&cluster.endpoints(), "compaction/"));
        let (sent, seen) = (s.shared_reports(), other.shared_reports());
        s.create_user("alice").unwrap();
        s.put_site("site-a", &spec(1)).unwrap();
        s.put_site("site-b", &spec(2)).unwrap();
        s.set_placement("alice", "site-a").unwrap();
        s.set_placement("alice", "site-b").unwrap();
        assert_eq!(s.placement_history("alice").unwrap().len(), 2, "both placements, before any compaction");
        let leadership = s.campaign_compacting("r1", Duration::from_millis(500)).unwrap();
        until(Duration::from_secs(10), "r1 to lead", || leadership.is_leading());
        until(Duration::from_secs(10), "the first placement to be compacted away", || {
            !s.kv.versions(&placement_key("alice")).unwrap().1
        });
        let (kept, _) = s.kv.versions(&placement_key("alice")).unwrap();
        assert_eq!(kept.len(), 1, "the placement now, the one before compacted away");
        // The fault checker's ground truth is never a part of it passed as the whole.
        let refused = s.placement_history("alice").unwrap_err();
        assert!(refused.to_string().contains("compacted"), "{refused}");
        s.create_user("bob").unwrap();
        assert_eq!(s.list_users().unwrap().len(), 2);
        sent.record("alice", ReportRequest::default(), 42);
        until(Duration::from_secs(5), "a report shared after the compaction", || {
            seen.latest("alice").is_some_and(|r| r.at_ms == 42)
        });
    }

    #[test]
    fn placements_freeze_only_while_a_majority_of_members_say_they_have_no_leader() {
        assert!(Net::available(), "this test partitions etcd members in network namespaces: run it as root");
        let mut net = Net::new().expect("a bridge for the etcd members");
        let mut cluster = EtcdCluster::start_in(&mut net, "quorum", 3);
        let s = connect(&cluster.endpoints(), "quorum/");
        s.put_site("site-a", &spec(1)).unwrap();
        s.heartbeat("site-a", 0, None, 1_000).unwrap();
        assert!(!s.placements_frozen().unwrap());
        // One member dead: the two others have a leader (after an election, if it led); nothing is frozen, and
        // writes go on.
        cluster.kill(2);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while let Err(e) = s.heartbeat("site-a", 0, None, 2_000) {
            assert!(std::time::Instant::now() < deadline, "no write within 10 s of losing one member: {e:?}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(!s.placements_frozen().unwrap());
        cluster.restart(2);
        // Every member cut off from the others: no quorum anywhere, and each says it has no leader.
        cluster.partition_all();
        let cut = Instant::now();
        until(Duration::from_secs(10), "the members to lose their leader", || s.placements_frozen().unwrap());
        eprintln!("no leader proven {:?} after the cut", cut.elapsed());
        let asked = Instant::now();
        let beat = s.heartbeat("site-a", 0, None, 3_000);
        eprintln!("a heartbeat without quorum fails in {:?}", asked.elapsed());
        assert!(matches!(beat, Err(ControlError::Unavailable(_))));
        cluster.heal_all();
        until(Duration::from_secs(20), "writes to work again", || s.heartbeat("site-a", 0, None, 4_000).is_ok());
        assert!(!s.placements_frozen().unwrap());
    }
}
