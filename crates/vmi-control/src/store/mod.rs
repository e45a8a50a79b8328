//! The registry's storage: the [`Store`] trait and its SQLite implementation, one module per concern.
//!
//! Store methods are synchronous and short (one local-disk transaction each). Async callers may call them directly
//! or move them to `spawn_blocking`; [`SqliteStore`] never holds its lock across an `.await` because it has none.
//!
//! - `schema`: the versioned schema and its migrations at open.
//! - `users`: users, devices and their tokens.
//! - `sites`: sites, heartbeats, draining.
//! - `placements`: which site runs each phone, with the ownership epoch.
//! - `migration_log`: the live migrations the sites report.
//! - `catalogue`: which checkpoints each site holds.
//! - `tenants`: tenants, admission against their quotas, image versions.
//! - `access`: operator and tenant-admin credentials, sites' join tokens, the audit log.
//! - `etcd`: [`EtcdStore`], the same trait on an etcd cluster (past one machine).
//!
//! Each concern module's functions take the connection (mutably when they open a transaction); [`SqliteStore`]
//! hands them its one connection.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use vmi_control_api::TOKEN_BYTES;
use vmi_control_api::auth::{AuditEntry, AuditQuery, JoinToken, NewCredential, Principal};
use vmi_control_api::model::{
    CatalogedCheckpoint, CheckpointEntry, Device, Identity, LoggedMigration, MigrationRecord, NewDevice, Placement,
    Site, SiteSpec, User,
};
use vmi_control_api::tenants::{Admission, ImageVersion, Tenant, TenantRequest, TenantStatus, TenantUpdate, UserImage};

use crate::ControlError;

mod access;
mod catalogue;
#[cfg(test)]
mod conformance;
mod etcd;
mod migration_log;
mod placements;
mod revocations;
mod schema;
mod sites;
mod tenants;
mod users;

pub use access::DEFAULT_AUDIT_LISTED;
pub(crate) use etcd::answer_by;
pub use etcd::{DEFAULT_PREFIX as DEFAULT_ETCD_PREFIX, EtcdStore, EtcdTls, LEADER_TTL};
pub(crate) use etcd::{EtcdKv, Watched};
pub use revocations::RevocationSink;
use revocations::Revocations;
pub use schema::SCHEMA_VERSION;

/// Storage for users, devices, sites and placements.
///
/// Object-safe so the HTTP layer can hold an `Arc<dyn Store>`. Implementations validate their inputs (names, ids,
/// site specs) and report problems as [`ControlError::BadRequest`], missing rows as [`ControlError::NotFound`].
pub trait Store: Send + Sync {
    /// Creates a user without a tenant; [`ControlError::Conflict`] if the name is taken.
    fn create_user(&self, name: &str) -> Result<User, ControlError> {
        self.create_user_in(name, None)
    }
    /// Creates a user in `tenant` (which must exist) or in none; [`ControlError::Conflict`] if the name is taken.
    fn create_user_in(&self, name: &str, tenant: Option<&str>) -> Result<User, ControlError>;
    /// All users, by name.
    fn list_users(&self) -> Result<Vec<User>, ControlError>;
    /// Registers a device for an existing user and returns its new token (only its hash is stored).
    fn create_device(&self, user: &str, name: &str) -> Result<NewDevice, ControlError>;
    /// The user's devices, oldest first, revoked ones included.
    fn list_devices(&self, user: &str) -> Result<Vec<Device>, ControlError>;
    /// Revokes a device so its token no longer authenticates. Revoking twice is not an error.
    fn revoke_device(&self, device_id: u64) -> Result<bool, ControlError>;
    /// Who a token belongs to; `None` for a malformed, unknown or revoked token.
    fn authenticate(&self, token: &str) -> Result<Option<Identity>, ControlError>;
    /// Registers a site or updates its URL, position and capacity (heartbeat state is kept).
    fn put_site(&self, id: &str, spec: &SiteSpec) -> Result<Site, ControlError>;
    /// Records a heartbeat from a registered site at `at_ms` (milliseconds since the Unix epoch).
    /// Returns the users whose phones are placed on the site, read in the same transaction.
    fn heartbeat(
        &self,
        id: &str,
        phones: u32,
        degraded: Option<&str>,
        at_ms: u64,
    ) -> Result<Vec<String>, ControlError> {
        Ok(self.heartbeat_since(id, phones, degraded, at_ms, None)?.users.unwrap_or_default())
    }
    /// [`Store::heartbeat`] for a site that holds the list of its placed users at version `known`: the list is
    /// read (in the same transaction) only if it changed since. A version is never reused for another list of
    /// the site (it only grows), and 0 means unversioned.
    fn heartbeat_since(
        &self,
        id: &str,
        phones: u32,
        degraded: Option<&str>,
        at_ms: u64,
        known: Option<u64>,
    ) -> Result<PlacedUsers, ControlError>;
    /// One site, if registered.
    fn site(&self, id: &str) -> Result<Option<Site>, ControlError>;
    /// All sites, by id.
    fn list_sites(&self) -> Result<Vec<Site>, ControlError>;
    /// Places the user's phone on a site. The epoch increments when the site changes (see [`Placement`]).
    ///
    /// The same as [`Store::move_placement`] without an expected epoch.
    fn set_placement(&self, user: &str, site: &str) -> Result<Placement, ControlError> {
        self.move_placement(user, site, None)
    }
    /// Places the user's phone on a site, in one transaction, if the placement is at `expected_epoch` now (a user
    /// never placed is at epoch 0); otherwise [`ControlError::EpochMismatch`] and nothing changes. `None` skips
    /// the check. The epoch increments when the site changes, and on every compare-and-set.
    ///
    /// This is the ownership handoff of a live migration: the destination commits with the epoch it was given,
    /// so of two racing commits at most one wins and exactly one site owns the phone.
    fn move_placement(&self, user: &str, site: &str, expected_epoch: Option<u64>) -> Result<Placement, ControlError>;
    /// The user's placement; `None` if never placed, [`ControlError::NotFound`] if the user does not exist.
    fn placement(&self, user: &str) -> Result<Option<Placement>, ControlError>;
    /// Every placement as `(user, placement)`, by user.
    fn list_placements(&self) -> Result<Vec<(String, Placement)>, ControlError>;
    /// Records that site `standby` holds the standby copy of `user`'s phone, which `owner` runs at placement
    /// `epoch`; [`ControlError::EpochMismatch`] unless the placement names `owner` at `epoch` now.
    fn set_standby(&self, user: &str, owner: &str, standby: &str, epoch: u64) -> Result<(), ControlError>;
    /// Forgets `user`'s standby copy (its owner `owner` checked it out, or stopped it); only the owner may.
    fn clear_standby(&self, user: &str, owner: &str) -> Result<(), ControlError>;
    /// A failover in one transaction: `user`'s phone moves from `from` (placed there at `epoch`) to `to` only if
    /// `from`'s last heartbeat is older than `expired_before_ms` and `to`'s is at least `live_since_ms`; the epoch
    /// rises. [`ControlError::EpochMismatch`] or [`ControlError::Refused`] otherwise.
    fn fail_over(
        &self,
        user: &str,
        from: &str,
        to: &str,
        epoch: u64,
        expired_before_ms: u64,
        live_since_ms: u64,
    ) -> Result<Placement, ControlError>;
    /// Every placement as `(user, placement, standby)`, by user: the standby site only if its copy is of the
    /// placement's current epoch (a failover target).
    fn list_standbys(&self) -> Result<Vec<(String, Placement, Option<String>)>, ControlError>;
    /// Sets or clears a site's `draining` flag and returns the site.
    fn set_draining(&self, id: &str, draining: bool) -> Result<Site, ControlError>;
    /// Appends a migration to the log, received at `at_ms`; the user must exist.
    fn record_migration(&self, record: &MigrationRecord, at_ms: u64) -> Result<LoggedMigration, ControlError>;
    /// Up to `limit` logged migrations, newest first, of one user (which must exist) or of everyone.
    fn migrations(&self, user: Option<&str>, limit: usize) -> Result<Vec<LoggedMigration>, ControlError>;
    /// Replaces what the catalogue knows `site` holds of `user`'s checkpoints (both must exist).
    fn put_site_checkpoints(&self, user: &str, site: &str, entries: &[CheckpointEntry]) -> Result<(), ControlError>;
    /// The catalogue of `user`'s checkpoints (the user must exist), oldest first, each with the sites holding it.
    fn checkpoints(&self, user: &str) -> Result<Vec<CatalogedCheckpoint>, ControlError>;

    /// Creates a tenant; [`ControlError::Conflict`] if the name is taken.
    fn create_tenant(&self, req: &TenantRequest) -> Result<Tenant, ControlError>;
    /// Changes what `update` names of a tenant's quotas and image, in one transaction; the rest stays.
    fn update_tenant(&self, name: &str, update: &TenantUpdate) -> Result<Tenant, ControlError>;
    /// All tenants by name, with what each uses now.
    fn tenants(&self) -> Result<Vec<TenantStatus>, ControlError>;
    /// Admits the user's phone with `memory_bytes` of memory, in one transaction: [`ControlError::Quota`] if
    /// their tenant would exceed its phones or memory quota (nothing recorded), else the admission is recorded
    /// on the user (replacing an earlier one of theirs).
    fn admit(&self, user: &str, memory_bytes: u64) -> Result<Admission, ControlError>;
    /// Forgets the user's admission: their phone no longer counts against the tenant.
    fn release(&self, user: &str) -> Result<(), ControlError>;
    /// Publishes `wasm` as the next version of image `name` (the current version, unchanged, if its bytes are
    /// the same).
    fn publish_image(&self, name: &str, wasm: &[u8]) -> Result<ImageVersion, ControlError>;
    /// Every published version by name and version, withdrawn ones included.
    fn images(&self) -> Result<Vec<ImageVersion>, ControlError>;
    /// The wasm bytes of one version, withdrawn or not.
    fn image_wasm(&self, name: &str, version: u64) -> Result<Option<Vec<u8>>, ControlError>;
    /// Withdraws the current version of `name` and returns the one now current; [`ControlError::Refused`] if
    /// none would be left.
    fn rollback_image(&self, name: &str) -> Result<ImageVersion, ControlError>;
    /// The image name the user's phone runs (their tenant's, else
    /// [`DEFAULT_IMAGE`](vmi_control_api::DEFAULT_IMAGE)) and its current version, if one is published.
    fn user_image(&self, user: &str) -> Result<(String, Option<UserImage>), ControlError>;

    /// Creates an operator or tenant-admin credential (the tenant must exist) and returns its token, shown once.
    fn create_credential(&self, principal: &Principal) -> Result<NewCredential, ControlError>;
    /// Whether any operator credential exists (the service creates the first at install).
    fn has_operator(&self) -> Result<bool, ControlError>;
    /// Who a bearer token belongs to: a device, an operator or a tenant admin; `None` if nobody (or revoked).
    fn principal(&self, token: &str) -> Result<Option<Principal>, ControlError>;
    /// A one-time token with which site `site` enrolls until `now_ms + ttl_ms`.
    fn create_join_token(&self, site: &str, now_ms: u64, ttl_ms: u64) -> Result<JoinToken, ControlError>;
    /// Takes a join token: true, once, if it was made for `site` and has not expired at `now_ms`.
    fn redeem_join_token(&self, site: &str, token: &str, now_ms: u64) -> Result<bool, ControlError>;
    /// Appends entries to the audit log.
    fn record_audit(&self, entries: &[AuditEntry]) -> Result<(), ControlError>;
    /// Audit entries matching `query`, newest first.
    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, ControlError>;
    /// The user's tenant (`None`: no tenant); [`ControlError::NotFound`] if the user does not exist.
    fn user_tenant(&self, user: &str) -> Result<Option<String>, ControlError>;
    /// The user a device belongs to, revoked or not; `None` if there is no such device.
    fn device_user(&self, device_id: u64) -> Result<Option<String>, ControlError>;

    /// Whether no placement can change now, proven: a distributed store that lost its quorum (a majority of its
    /// members say they have no leader) can commit nothing, failovers included, until a new leader renews every
    /// site's lease. A site whose lease holds may then keep running its phones (docs/CONTROL-PLANE.md). Asked
    /// only after a write failed; a store on one machine never is.
    fn placements_frozen(&self) -> Result<bool, ControlError> {
        Ok(false)
    }

    /// Tells `sink` of every device revocation from now on: `Some(id)` once device `id` stops authenticating (at
    /// once for a revocation made through this store, as soon as it hears of it for one made elsewhere: another
    /// replica of a shared store), `None` when some may have been missed (a watch restarted). Returns whether
    /// this store follows revocations at all; the default does not (then nothing may cache device tokens).
    fn follow_revocations(&self, sink: RevocationSink) -> bool {
        let _ = sink;
        false
    }

    /// Whether the revocations [`Store::follow_revocations`] tells of are current: always for a store on one
    /// machine; for a shared store, while its watch has heard from the cluster within
    /// 2 s. While not, nothing may come from a cache of device tokens.
    fn revocations_current(&self) -> bool {
        false
    }

    /// How many writing transactions this store committed since it opened, and how many of them were heartbeats
    /// (for benchmarks: etcd writes per migration); `None` if it does not count.
    fn writes(&self) -> Option<(u64, u64)> {
        None
    }
}

/// The users placed on a site, as a heartbeat reads them: the list's version, and the list unless the site holds
/// that version already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedUsers {
    /// The list's version (see [`Store::heartbeat_since`]).
    pub version: u64,
    /// The users, by name; `None` when the caller's version is this one.
    pub users: Option<Vec<String>>,
}

/// A [`Store`] in one SQLite database (WAL mode), one connection behind a mutex.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Who follows device revocations (the service is the database's only writer: it sees them all).
    revocations: Revocations,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, switches it to WAL and migrates its schema.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ControlError> {
        Self::init(Connection::open(path)?)
    }

    /// A fresh database that lives only as long as this value (for tests and demos).
    pub fn in_memory() -> Result<Self, ControlError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, ControlError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // In-memory databases answer "memory"; both are fine.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        schema::migrate(&mut conn)?;
        Ok(SqliteStore { conn: Mutex::new(conn), revocations: Revocations::default() })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic mid-call leaves no open transaction behind (rusqlite rolls back on drop), so the
        // connection is still consistent: recover from poisoning instead of failing every later call.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Milliseconds since the Unix epoch by the system clock (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A new device token (see [`vmi_control_api::generate_token`]).
pub(crate) fn generate_token() -> Result<String, ControlError> {
    vmi_control_api::generate_token().map_err(ControlError::Entropy)
}

/// The stored form of a token: blake3 of its decoded bytes. `None` if it is not 64 hex digits.
///
/// A plain fast hash is enough because tokens carry 256 bits of randomness; nothing can be guessed offline.
pub fn token_hash(token: &str) -> Option<[u8; 32]> {
    let digits = token.as_bytes();
    if digits.len() != TOKEN_BYTES * 2 {
        return None;
    }
    let mut bytes = [0u8; TOKEN_BYTES];
    for (out, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        let hex = std::str::from_utf8(pair).ok()?;
        *out = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(*blake3::hash(&bytes).as_bytes())
}

impl Store for SqliteStore {
    fn create_user_in(&self, name: &str, tenant: Option<&str>) -> Result<User, ControlError> {
        users::create_user_in(&mut self.conn(), name, tenant)
    }

    fn list_users(&self) -> Result<Vec<User>, ControlError> {
        users::list_users(&self.conn())
    }

    fn create_device(&self, user: &str, name: &str) -> Result<NewDevice, ControlError> {
        users::create_device(&mut self.conn(), user, name)
    }

    fn list_devices(&self, user: &str) -> Result<Vec<Device>, ControlError> {
        users::list_devices(&self.conn(), user)
    }

    fn revoke_device(&self, device_id: u64) -> Result<bool, ControlError> {
        let revoked = users::revoke_device(&self.conn(), device_id)?;
        if revoked {
            self.revocations.revoked(Some(device_id));
        }
        Ok(revoked)
    }

    fn follow_revocations(&self, sink: RevocationSink) -> bool {
        self.revocations.follow(sink);
        true
    }

    fn revocations_current(&self) -> bool {
        true
    }

    fn authenticate(&self, token: &str) -> Result<Option<Identity>, ControlError> {
        users::authenticate(&self.conn(), token)
    }

    fn put_site(&self, id: &str, spec: &SiteSpec) -> Result<Site, ControlError> {
        sites::put_site(&mut self.conn(), id, spec)
    }

    fn heartbeat_since(
        &self,
        id: &str,
        phones: u32,
        degraded: Option<&str>,
        at_ms: u64,
        known: Option<u64>,
    ) -> Result<PlacedUsers, ControlError> {
        sites::heartbeat(&mut self.conn(), id, phones, degraded, at_ms, known)
    }

    fn site(&self, id: &str) -> Result<Option<Site>, ControlError> {
        sites::site(&self.conn(), id)
    }

    fn list_sites(&self) -> Result<Vec<Site>, ControlError> {
        sites::list_sites(&self.conn())
    }

    fn move_placement(&self, user: &str, site: &str, expected_epoch: Option<u64>) -> Result<Placement, ControlError> {
        placements::move_placement(&mut self.conn(), user, site, expected_epoch)
    }

    fn placement(&self, user: &str) -> Result<Option<Placement>, ControlError> {
        placements::placement(&self.conn(), user)
    }

    fn list_placements(&self) -> Result<Vec<(String, Placement)>, ControlError> {
        placements::list_placements(&self.conn())
    }

    fn set_standby(&self, user: &str, owner: &str, standby: &str, epoch: u64) -> Result<(), ControlError> {
        placements::set_standby(&mut self.conn(), user, owner, standby, epoch)
    }

    fn clear_standby(&self, user: &str, owner: &str) -> Result<(), ControlError> {
        placements::clear_standby(&self.conn(), user, owner)
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
        placements::fail_over(&mut self.conn(), user, from, to, epoch, expired_before_ms, live_since_ms)
    }

    fn list_standbys(&self) -> Result<Vec<(String, Placement, Option<String>)>, ControlError> {
        placements::list_standbys(&self.conn())
    }

    fn set_draining(&self, id: &str, draining: bool) -> Result<Site, ControlError> {
        sites::set_draining(&mut self.conn(), id, draining)
    }

    fn record_migration(&self, record: &MigrationRecord, at_ms: u64) -> Result<LoggedMigration, ControlError> {
        migration_log::record_migration(&mut self.conn(), record, at_ms)
    }

    fn migrations(&self, user: Option<&str>, limit: usize) -> Result<Vec<LoggedMigration>, ControlError> {
        migration_log::migrations(&self.conn(), user, limit)
    }

    fn put_site_checkpoints(&self, user: &str, site: &str, entries: &[CheckpointEntry]) -> Result<(), ControlError> {
        catalogue::put_site_checkpoints(&mut self.conn(), user, site, entries)
    }

    fn checkpoints(&self, user: &str) -> Result<Vec<CatalogedCheckpoint>, ControlError> {
        catalogue::checkpoints(&self.conn(), user)
    }

    fn create_tenant(&self, req: &TenantRequest) -> Result<Tenant, ControlError> {
        tenants::create_tenant(&self.conn(), req)
    }

    fn update_tenant(&self, name: &str, update: &TenantUpdate) -> Result<Tenant, ControlError> {
        tenants::update_tenant(&mut self.conn(), name, update)
    }

    fn tenants(&self) -> Result<Vec<TenantStatus>, ControlError> {
        tenants::tenants(&mut self.conn())
    }

    fn admit(&self, user: &str, memory_bytes: u64) -> Result<Admission, ControlError> {
        tenants::admit(&mut self.conn(), user, memory_bytes)
    }

    fn release(&self, user: &str) -> Result<(), ControlError> {
        tenants::release(&self.conn(), user)
    }

    fn publish_image(&self, name: &str, wasm: &[u8]) -> Result<ImageVersion, ControlError> {
        tenants::publish_image(&mut self.conn(), name, wasm)
    }

    fn images(&self) -> Result<Vec<ImageVersion>, ControlError> {
        tenants::images(&self.conn())
    }

    fn image_wasm(&self, name: &str, version: u64) -> Result<Option<Vec<u8>>, ControlError> {
        tenants::image_wasm(&self.conn(), name, version)
    }

    fn rollback_image(&self, name: &str) -> Result<ImageVersion, ControlError> {
        tenants::rollback_image(&mut self.conn(), name)
    }

    fn user_image(&self, user: &str) -> Result<(String, Option<UserImage>), ControlError> {
        tenants::user_image(&self.conn(), user)
    }

    fn create_credential(&self, principal: &Principal) -> Result<NewCredential, ControlError> {
        access::create_credential(&mut self.conn(), principal)
    }

    fn has_operator(&self) -> Result<bool, ControlError> {
        access::has_operator(&self.conn())
    }

    fn principal(&self, token: &str) -> Result<Option<Principal>, ControlError> {
        access::principal(&self.conn(), token)
    }

    fn create_join_token(&self, site: &str, now_ms: u64, ttl_ms: u64) -> Result<JoinToken, ControlError> {
        access::create_join_token(&self.conn(), site, now_ms, ttl_ms)
    }

    fn redeem_join_token(&self, site: &str, token: &str, now_ms: u64) -> Result<bool, ControlError> {
        access::redeem_join_token(&self.conn(), site, token, now_ms)
    }

    fn record_audit(&self, entries: &[AuditEntry]) -> Result<(), ControlError> {
        access::record_audit(&mut self.conn(), entries)
    }

    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, ControlError> {
        access::audit(&self.conn(), query)
    }

    fn user_tenant(&self, user: &str) -> Result<Option<String>, ControlError> {
        tenants::tenant_of(&self.conn(), user)
    }

    fn device_user(&self, device_id: u64) -> Result<Option<String>, ControlError> {
        access::device_user(&self.conn(), device_id)
    }
}

/// What the store's unit tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use vmi_control_api::model::SiteSpec;

    use super::SqliteStore;

    /// A fresh store in memory.
    pub(crate) fn store() -> SqliteStore {
        SqliteStore::in_memory().expect("in-memory store")
    }

    /// A site on loopback at `port`.
    pub(crate) fn spec(port: u16) -> SiteSpec {
        SiteSpec { url: format!("http://127.0.0.1:{port}"), lat: 52.5, lon: 13.4, capacity: 4 }
    }
}
