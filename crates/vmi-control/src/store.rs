//! The registry's storage: the [`Store`] trait and its SQLite implementation.
//!
//! Store methods are synchronous and short (one local-disk transaction each). Async callers may call them directly
//! or move them to `spawn_blocking`; [`SqliteStore`] never holds its lock across an `.await` because it has none.

use std::io::Read;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::ControlError;
use crate::model::{
    CatalogedCheckpoint, CheckpointEntry, Device, Identity, LoggedMigration, MigrationRecord, NewDevice, Placement,
    Site, SiteSpec, User, validate_id, validate_label, validate_migration, validate_site_spec,
};
use crate::tenants::{Admission, ImageVersion, Tenant, TenantRequest, TenantStatus, UserImage, db};

/// Bytes of randomness in a device token; the token is their lowercase hex, twice as many characters.
pub const TOKEN_BYTES: usize = 32;

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
    fn revoke_device(&self, device_id: u64) -> Result<(), ControlError>;
    /// Who a token belongs to; `None` for a malformed, unknown or revoked token.
    fn authenticate(&self, token: &str) -> Result<Option<Identity>, ControlError>;
    /// Registers a site or updates its URL, position and capacity (heartbeat state is kept).
    fn put_site(&self, id: &str, spec: &SiteSpec) -> Result<Site, ControlError>;
    /// Records a heartbeat from a registered site at `at_ms` (milliseconds since the Unix epoch).
    fn heartbeat(&self, id: &str, phones: u32, at_ms: u64) -> Result<(), ControlError>;
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
    /// Replaces a tenant's quotas and image (`req.name` is ignored).
    fn update_tenant(&self, name: &str, req: &TenantRequest) -> Result<Tenant, ControlError>;
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
    /// The image name the user's phone runs (their tenant's, else [`DEFAULT_IMAGE`](crate::DEFAULT_IMAGE)) and
    /// its current version, if one is published.
    fn user_image(&self, user: &str) -> Result<(String, Option<UserImage>), ControlError>;
}

/// Schema migrations; entry `i` takes the database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE users (
        name TEXT PRIMARY KEY NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE devices (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user TEXT NOT NULL REFERENCES users(name),
        name TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0,
        token_hash BLOB NOT NULL UNIQUE
    );
    CREATE INDEX devices_by_user ON devices(user);
    CREATE TABLE sites (
        id TEXT PRIMARY KEY NOT NULL,
        url TEXT NOT NULL,
        lat REAL NOT NULL,
        lon REAL NOT NULL,
        capacity INTEGER NOT NULL,
        phones INTEGER NOT NULL DEFAULT 0,
        last_heartbeat_ms INTEGER
    );
    CREATE TABLE placements (
        user TEXT PRIMARY KEY NOT NULL REFERENCES users(name),
        site TEXT NOT NULL REFERENCES sites(id),
        epoch INTEGER NOT NULL
    );
",
    "
    ALTER TABLE sites ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE migrations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        user TEXT NOT NULL REFERENCES users(name),
        from_site TEXT NOT NULL,
        to_site TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        downtime_us INTEGER NOT NULL,
        total_ms REAL NOT NULL,
        bytes INTEGER NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('committed', 'aborted')),
        reason TEXT NOT NULL
    );
    CREATE INDEX migrations_by_user ON migrations(user, id);
",
    // Tenants and images (crate::tenants). A user's tenant NULL means none: no quotas, the default image.
    // phone_memory_bytes is the memory of the user's admitted phone (NULL: no phone admitted).
    "
    CREATE TABLE tenants (
        name TEXT PRIMARY KEY NOT NULL,
        max_phones INTEGER,
        max_memory_bytes INTEGER,
        image TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    ALTER TABLE users ADD COLUMN tenant TEXT REFERENCES tenants(name);
    ALTER TABLE users ADD COLUMN phone_memory_bytes INTEGER;
    CREATE INDEX users_by_tenant ON users(tenant);
    CREATE TABLE images (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        hash TEXT NOT NULL,
        wasm BLOB NOT NULL,
        published_ms INTEGER NOT NULL,
        withdrawn INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (name, version)
    );
    CREATE INDEX images_by_hash ON images(hash);
",
    // The checkpoint catalogue (sites report what they hold of each user).
    "
    CREATE TABLE checkpoints (
        user TEXT NOT NULL REFERENCES users(name),
        site TEXT NOT NULL REFERENCES sites(id),
        id TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        label TEXT,
        stored_bytes INTEGER NOT NULL,
        PRIMARY KEY (user, site, id)
    );
    CREATE INDEX checkpoints_by_user ON checkpoints(user, at_ms);
",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// A [`Store`] in one SQLite database (WAL mode), one connection behind a mutex.
pub struct SqliteStore {
    conn: Mutex<Connection>,
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
        migrate(&mut conn)?;
        Ok(SqliteStore { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic mid-call leaves no open transaction behind (rusqlite rolls back on drop), so the
        // connection is still consistent: recover from poisoning instead of failing every later call.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), ControlError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let found: Option<u32> = tx.query_row("SELECT version FROM schema_version", [], |row| row.get(0)).optional()?;
    let found = match found {
        Some(version) => version,
        None => {
            tx.execute("INSERT INTO schema_version (version) VALUES (0)", [])?;
            0
        }
    };
    if found > SCHEMA_VERSION {
        return Err(ControlError::UnsupportedSchema { found, supported: SCHEMA_VERSION });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)?;
        tracing::info!(from, to = from + 1, "migrated control database schema");
    }
    tx.execute("UPDATE schema_version SET version = ?1", [SCHEMA_VERSION])?;
    tx.commit()?;
    Ok(())
}

/// Milliseconds since the Unix epoch by the system clock (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A new device token: [`TOKEN_BYTES`] bytes from `/dev/urandom` as lowercase hex.
pub fn generate_token() -> Result<String, ControlError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).map_err(ControlError::Entropy)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
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

fn user_exists(conn: &Connection, name: &str) -> Result<bool, ControlError> {
    Ok(conn.query_row("SELECT 1 FROM users WHERE name = ?1", [name], |_| Ok(())).optional()?.is_some())
}

fn require_user(conn: &Connection, name: &str) -> Result<(), ControlError> {
    if user_exists(conn, name)? { Ok(()) } else { Err(ControlError::not_found("user", name)) }
}

fn site_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Site> {
    Ok(Site {
        id: row.get(0)?,
        url: row.get(1)?,
        lat: row.get(2)?,
        lon: row.get(3)?,
        capacity: row.get(4)?,
        phones: row.get(5)?,
        last_heartbeat_ms: row.get(6)?,
        draining: row.get(7)?,
    })
}

const SITE_COLUMNS: &str = "id, url, lat, lon, capacity, phones, last_heartbeat_ms, draining";

fn load_placement(conn: &Connection, user: &str) -> Result<Option<Placement>, ControlError> {
    let placement = conn
        .query_row("SELECT site, epoch FROM placements WHERE user = ?1", [user], |row| {
            Ok(Placement { site: row.get(0)?, epoch: row.get(1)? })
        })
        .optional()?;
    Ok(placement)
}

const MIGRATION_COLUMNS: &str =
    "id, at_ms, user, from_site, to_site, epoch, downtime_us, total_ms, bytes, outcome, reason";

fn migration_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<LoggedMigration> {
    Ok(LoggedMigration {
        id: row.get(0)?,
        at_ms: row.get(1)?,
        record: MigrationRecord {
            user: row.get(2)?,
            from: row.get(3)?,
            to: row.get(4)?,
            epoch: row.get(5)?,
            downtime_us: row.get(6)?,
            total_ms: row.get(7)?,
            bytes: row.get(8)?,
            outcome: row.get(9)?,
            reason: row.get(10)?,
        },
    })
}

fn load_site(conn: &Connection, id: &str) -> Result<Option<Site>, ControlError> {
    let sql = format!("SELECT {SITE_COLUMNS} FROM sites WHERE id = ?1");
    Ok(conn.query_row(&sql, [id], site_row).optional()?)
}

impl Store for SqliteStore {
    fn create_user_in(&self, name: &str, tenant: Option<&str>) -> Result<User, ControlError> {
        validate_id("user name", name)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some(tenant) = tenant
            && db::tenant(&tx, tenant)?.is_none()
        {
            return Err(ControlError::not_found("tenant", tenant));
        }
        let inserted = tx.execute(
            "INSERT INTO users (name, created_ms, tenant) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO NOTHING",
            params![name, now_ms(), tenant],
        )?;
        if inserted == 0 {
            return Err(ControlError::Conflict { what: "user", id: name.to_owned() });
        }
        tx.commit()?;
        Ok(User { name: name.to_owned(), tenant: tenant.map(str::to_owned) })
    }

    fn list_users(&self) -> Result<Vec<User>, ControlError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, tenant FROM users ORDER BY name")?;
        let users =
            stmt.query_map([], |row| Ok(User { name: row.get(0)?, tenant: row.get(1)? }))?.collect::<Result<_, _>>()?;
        Ok(users)
    }

    fn create_device(&self, user: &str, name: &str) -> Result<NewDevice, ControlError> {
        validate_label("device name", name)?;
        let token = generate_token()?;
        let hash = token_hash(&token).expect("generated tokens are well-formed");
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        require_user(&tx, user)?;
        tx.execute(
            "INSERT INTO devices (user, name, created_ms, token_hash) VALUES (?1, ?2, ?3, ?4)",
            params![user, name, now_ms(), hash],
        )?;
        let device_id = u64::try_from(tx.last_insert_rowid()).unwrap_or_default();
        tx.commit()?;
        Ok(NewDevice { device_id, token })
    }

    fn list_devices(&self, user: &str) -> Result<Vec<Device>, ControlError> {
        let conn = self.conn();
        require_user(&conn, user)?;
        let mut stmt =
            conn.prepare("SELECT id, user, name, created_ms, revoked FROM devices WHERE user = ?1 ORDER BY id")?;
        let devices = stmt
            .query_map([user], |row| {
                Ok(Device {
                    device_id: row.get(0)?,
                    user: row.get(1)?,
                    name: row.get(2)?,
                    created_ms: row.get(3)?,
                    revoked: row.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(devices)
    }

    fn revoke_device(&self, device_id: u64) -> Result<(), ControlError> {
        let conn = self.conn();
        let changed = conn.execute("UPDATE devices SET revoked = 1 WHERE id = ?1", [device_id])?;
        if changed == 0 {
            return Err(ControlError::not_found("device", device_id.to_string()));
        }
        Ok(())
    }

    fn authenticate(&self, token: &str) -> Result<Option<Identity>, ControlError> {
        let Some(hash) = token_hash(token) else { return Ok(None) };
        let conn = self.conn();
        let identity = conn
            .query_row("SELECT user, id FROM devices WHERE token_hash = ?1 AND revoked = 0", [hash], |row| {
                Ok(Identity { user: row.get(0)?, device_id: row.get(1)? })
            })
            .optional()?;
        Ok(identity)
    }

    fn put_site(&self, id: &str, spec: &SiteSpec) -> Result<Site, ControlError> {
        validate_id("site id", id)?;
        let url = validate_site_spec(spec)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO sites (id, url, lat, lon, capacity) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(id) DO UPDATE SET url = excluded.url, lat = excluded.lat, lon = excluded.lon,
                                           capacity = excluded.capacity",
            params![id, url, spec.lat, spec.lon, spec.capacity],
        )?;
        let site = load_site(&tx, id)?.ok_or_else(|| ControlError::not_found("site", id))?;
        tx.commit()?;
        Ok(site)
    }

    fn heartbeat(&self, id: &str, phones: u32, at_ms: u64) -> Result<(), ControlError> {
        let conn = self.conn();
        let changed = conn.execute(
            "UPDATE sites SET phones = ?2, last_heartbeat_ms = ?3 WHERE id = ?1",
            params![id, phones, at_ms],
        )?;
        if changed == 0 {
            return Err(ControlError::not_found("site", id));
        }
        Ok(())
    }

    fn site(&self, id: &str) -> Result<Option<Site>, ControlError> {
        load_site(&self.conn(), id)
    }

    fn list_sites(&self) -> Result<Vec<Site>, ControlError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {SITE_COLUMNS} FROM sites ORDER BY id"))?;
        let sites = stmt.query_map([], site_row)?.collect::<Result<_, _>>()?;
        Ok(sites)
    }

    fn move_placement(&self, user: &str, site: &str, expected_epoch: Option<u64>) -> Result<Placement, ControlError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        require_user(&tx, user)?;
        if load_site(&tx, site)?.is_none() {
            return Err(ControlError::not_found("site", site));
        }
        if let Some(expected) = expected_epoch {
            let current = load_placement(&tx, user)?.map_or(0, |p| p.epoch);
            if current != expected {
                return Err(ControlError::EpochMismatch { user: user.to_owned(), expected, current });
            }
        }
        // A compare-and-set always raises the epoch, even to the same site: that is how a
        // migration's source takes its phone back and makes a late commit of the
        // destination (expecting the old epoch) fail. A plain set raises it on a change only.
        let always = expected_epoch.is_some();
        tx.execute(
            "INSERT INTO placements (user, site, epoch) VALUES (?1, ?2, 1)
             ON CONFLICT(user) DO UPDATE SET site = excluded.site, epoch = epoch + 1
             WHERE site != excluded.site OR ?3",
            params![user, site, always],
        )?;
        let placement = load_placement(&tx, user)?.ok_or_else(|| ControlError::not_found("placement", user))?;
        tx.commit()?;
        Ok(placement)
    }

    fn placement(&self, user: &str) -> Result<Option<Placement>, ControlError> {
        let conn = self.conn();
        require_user(&conn, user)?;
        load_placement(&conn, user)
    }

    fn list_placements(&self) -> Result<Vec<(String, Placement)>, ControlError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT user, site, epoch FROM placements ORDER BY user")?;
        let placements = stmt
            .query_map([], |row| Ok((row.get(0)?, Placement { site: row.get(1)?, epoch: row.get(2)? })))?
            .collect::<Result<_, _>>()?;
        Ok(placements)
    }

    fn set_draining(&self, id: &str, draining: bool) -> Result<Site, ControlError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if tx.execute("UPDATE sites SET draining = ?2 WHERE id = ?1", params![id, draining])? == 0 {
            return Err(ControlError::not_found("site", id));
        }
        let site = load_site(&tx, id)?.ok_or_else(|| ControlError::not_found("site", id))?;
        tx.commit()?;
        Ok(site)
    }

    fn record_migration(&self, record: &MigrationRecord, at_ms: u64) -> Result<LoggedMigration, ControlError> {
        validate_migration(record)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        require_user(&tx, &record.user)?;
        tx.execute(
            "INSERT INTO migrations (at_ms, user, from_site, to_site, epoch, downtime_us, total_ms, bytes, outcome,
                                     reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                at_ms,
                record.user,
                record.from,
                record.to,
                record.epoch,
                record.downtime_us,
                record.total_ms,
                record.bytes,
                record.outcome,
                record.reason
            ],
        )?;
        let id = u64::try_from(tx.last_insert_rowid()).unwrap_or_default();
        tx.commit()?;
        Ok(LoggedMigration { id, at_ms, record: record.clone() })
    }

    fn put_site_checkpoints(&self, user: &str, site: &str, entries: &[CheckpointEntry]) -> Result<(), ControlError> {
        crate::model::validate_checkpoints(entries)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        require_user(&tx, user)?;
        if tx.query_row("SELECT 1 FROM sites WHERE id = ?1", [site], |_| Ok(())).optional()?.is_none() {
            return Err(ControlError::not_found("site", site));
        }
        tx.execute("DELETE FROM checkpoints WHERE user = ?1 AND site = ?2", params![user, site])?;
        {
            let mut insert = tx.prepare(
                "INSERT OR REPLACE INTO checkpoints (user, site, id, at_ms, label, stored_bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for e in entries {
                insert.execute(params![user, site, e.id, e.at_ms, e.label, e.stored_bytes])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn checkpoints(&self, user: &str) -> Result<Vec<CatalogedCheckpoint>, ControlError> {
        let conn = self.conn();
        require_user(&conn, user)?;
        let mut stmt = conn.prepare(
            "SELECT id, at_ms, label, stored_bytes, site FROM checkpoints WHERE user = ?1 ORDER BY at_ms, id, site",
        )?;
        let rows = stmt.query_map([user], |row| {
            Ok((
                CheckpointEntry { id: row.get(0)?, at_ms: row.get(1)?, label: row.get(2)?, stored_bytes: row.get(3)? },
                row.get::<_, String>(4)?,
            ))
        })?;
        let mut out: Vec<CatalogedCheckpoint> = Vec::new();
        for row in rows {
            let (entry, site) = row?;
            match out.last_mut() {
                Some(last) if last.entry.id == entry.id => last.sites.push(site),
                _ => out.push(CatalogedCheckpoint { entry, sites: vec![site] }),
            }
        }
        Ok(out)
    }

    fn migrations(&self, user: Option<&str>, limit: usize) -> Result<Vec<LoggedMigration>, ControlError> {
        let conn = self.conn();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let logged = match user {
            Some(user) => {
                require_user(&conn, user)?;
                let sql =
                    format!("SELECT {MIGRATION_COLUMNS} FROM migrations WHERE user = ?1 ORDER BY id DESC LIMIT ?2");
                let mut stmt = conn.prepare(&sql)?;
                stmt.query_map(params![user, limit], migration_row)?.collect::<Result<_, _>>()?
            }
            None => {
                let sql = format!("SELECT {MIGRATION_COLUMNS} FROM migrations ORDER BY id DESC LIMIT ?1");
                let mut stmt = conn.prepare(&sql)?;
                stmt.query_map([limit], migration_row)?.collect::<Result<_, _>>()?
            }
        };
        Ok(logged)
    }

    fn create_tenant(&self, req: &TenantRequest) -> Result<Tenant, ControlError> {
        db::create_tenant(&self.conn(), req)
    }

    fn update_tenant(&self, name: &str, req: &TenantRequest) -> Result<Tenant, ControlError> {
        db::update_tenant(&self.conn(), name, req)
    }

    fn tenants(&self) -> Result<Vec<TenantStatus>, ControlError> {
        let mut conn = self.conn();
        // One read transaction: every tenant's usage from the same moment.
        let tx = conn.transaction()?;
        db::tenants(&tx)
    }

    fn admit(&self, user: &str, memory_bytes: u64) -> Result<Admission, ControlError> {
        let mut conn = self.conn();
        // Immediate: the quota check and the record are one step, so two sites admitting at once cannot both
        // take the last phone of a tenant.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let admission = db::admit(&tx, user, memory_bytes)?;
        tx.commit()?;
        Ok(admission)
    }

    fn release(&self, user: &str) -> Result<(), ControlError> {
        db::release(&self.conn(), user)
    }

    fn publish_image(&self, name: &str, wasm: &[u8]) -> Result<ImageVersion, ControlError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version = db::publish(&tx, name, wasm)?;
        tx.commit()?;
        Ok(version)
    }

    fn images(&self) -> Result<Vec<ImageVersion>, ControlError> {
        db::images(&self.conn())
    }

    fn image_wasm(&self, name: &str, version: u64) -> Result<Option<Vec<u8>>, ControlError> {
        db::wasm(&self.conn(), name, version)
    }

    fn rollback_image(&self, name: &str) -> Result<ImageVersion, ControlError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version = db::rollback(&tx, name)?;
        tx.commit()?;
        Ok(version)
    }

    fn user_image(&self, user: &str) -> Result<(String, Option<UserImage>), ControlError> {
        db::user_image(&self.conn(), user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> SqliteStore {
        SqliteStore::in_memory().expect("in-memory store")
    }

    fn spec(port: u16) -> SiteSpec {
        SiteSpec { url: format!("http://127.0.0.1:{port}"), lat: 52.5, lon: 13.4, capacity: 4 }
    }

    #[test]
    fn users_are_unique_and_listed_by_name() {
        let s = store();
        assert_eq!(s.create_user("bob").unwrap(), User { name: "bob".into(), tenant: None });
        s.create_user("alice").unwrap();
        assert!(matches!(s.create_user("bob"), Err(ControlError::Conflict { what: "user", .. })));
        assert!(matches!(s.create_user("no/slash"), Err(ControlError::BadRequest(_))));
        let names: Vec<_> = s.list_users().unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["alice", "bob"]);
    }

    #[test]
    fn device_tokens_authenticate_until_revoked() {
        let s = store();
        s.create_user("alice").unwrap();
        let phone = s.create_device("alice", "pixel").unwrap();
        let laptop = s.create_device("alice", "laptop").unwrap();
        assert_eq!(phone.token.len(), 64);
        assert_ne!(phone.token, laptop.token);
        assert_ne!(phone.device_id, laptop.device_id);

        let who = s.authenticate(&phone.token).unwrap();
        assert_eq!(who, Some(Identity { user: "alice".into(), device_id: phone.device_id }));
        // Hex is case-insensitive: the token is the bytes, not the spelling.
        assert!(s.authenticate(&phone.token.to_uppercase()).unwrap().is_some());

        s.revoke_device(phone.device_id).unwrap();
        s.revoke_device(phone.device_id).unwrap();
        assert_eq!(s.authenticate(&phone.token).unwrap(), None);
        assert!(s.authenticate(&laptop.token).unwrap().is_some());

        let devices = s.list_devices("alice").unwrap();
        assert_eq!(devices.len(), 2);
        assert!(devices[0].revoked && !devices[1].revoked);
        assert_eq!(devices[0].name, "pixel");
        assert!(devices[0].created_ms > 0);
    }

    #[test]
    fn only_hashes_are_stored() {
        let s = store();
        s.create_user("alice").unwrap();
        let dev = s.create_device("alice", "pixel").unwrap();
        let conn = s.conn();
        let stored: Vec<u8> = conn.query_row("SELECT token_hash FROM devices", [], |r| r.get(0)).unwrap();
        assert_eq!(stored, token_hash(&dev.token).unwrap());
        let as_text: i64 = conn
            .query_row("SELECT count(*) FROM devices WHERE CAST(token_hash AS TEXT) = ?1", [&dev.token], |r| r.get(0))
            .unwrap();
        assert_eq!(as_text, 0);
    }

    #[test]
    fn unknown_and_malformed_tokens_do_not_authenticate() {
        let s = store();
        assert_eq!(s.authenticate(&"0".repeat(64)).unwrap(), None);
        assert_eq!(s.authenticate("").unwrap(), None);
        assert_eq!(s.authenticate(&"zz".repeat(32)).unwrap(), None);
        assert_eq!(s.authenticate(&"é".repeat(32)).unwrap(), None);
    }

    #[test]
    fn devices_need_an_existing_user() {
        let s = store();
        assert!(matches!(s.create_device("ghost", "x"), Err(ControlError::NotFound { what: "user", .. })));
        assert!(matches!(s.list_devices("ghost"), Err(ControlError::NotFound { what: "user", .. })));
        assert!(matches!(s.revoke_device(42), Err(ControlError::NotFound { what: "device", .. })));
        s.create_user("alice").unwrap();
        assert!(matches!(s.create_device("alice", ""), Err(ControlError::BadRequest(_))));
    }

    #[test]
    fn the_checkpoint_catalogue_lists_each_copy_once_with_its_sites() {
        let s = SqliteStore::in_memory().unwrap();
        s.create_user("alice").unwrap();
        for site in ["site-a", "site-b"] {
            s.put_site(site, &SiteSpec { url: "http://127.0.0.1:1".into(), lat: 0.0, lon: 0.0, capacity: 1 }).unwrap();
        }
        let entry = |n: u8, at_ms| CheckpointEntry {
            id: format!("{n:02x}").repeat(32),
            at_ms,
            label: Some("hourly".into()),
            stored_bytes: 10,
        };
        s.put_site_checkpoints("alice", "site-a", &[entry(1, 5), entry(2, 9)]).unwrap();
        s.put_site_checkpoints("alice", "site-b", &[entry(1, 5)]).unwrap();
        let list = s.checkpoints("alice").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].sites, vec!["site-a", "site-b"]);
        assert_eq!(list[1].sites, vec!["site-a"]);
        // A site's report replaces what it reported before (retention dropped one).
        s.put_site_checkpoints("alice", "site-a", &[entry(2, 9)]).unwrap();
        assert_eq!(s.checkpoints("alice").unwrap().iter().map(|c| c.sites.len()).sum::<usize>(), 2);
        let bad = CheckpointEntry { id: "nope".into(), ..entry(3, 1) };
        assert!(matches!(s.put_site_checkpoints("alice", "site-a", &[bad]), Err(ControlError::BadRequest(_))));
        assert!(matches!(s.put_site_checkpoints("bob", "site-a", &[]), Err(ControlError::NotFound { .. })));
        assert!(matches!(s.put_site_checkpoints("alice", "site-z", &[]), Err(ControlError::NotFound { .. })));
    }

    #[test]
    fn placement_epoch_increments_on_change_only() {
        let s = store();
        s.create_user("alice").unwrap();
        s.put_site("site-a", &spec(1)).unwrap();
        s.put_site("site-b", &spec(2)).unwrap();
        assert_eq!(s.placement("alice").unwrap(), None);

        assert_eq!(s.set_placement("alice", "site-a").unwrap(), Placement { site: "site-a".into(), epoch: 1 });
        assert_eq!(s.set_placement("alice", "site-a").unwrap().epoch, 1, "same site is idempotent");
        assert_eq!(s.set_placement("alice", "site-b").unwrap().epoch, 2);
        assert_eq!(s.set_placement("alice", "site-a").unwrap().epoch, 3);
        assert_eq!(s.placement("alice").unwrap(), Some(Placement { site: "site-a".into(), epoch: 3 }));

        assert!(matches!(s.set_placement("alice", "site-z"), Err(ControlError::NotFound { what: "site", .. })));
        assert!(matches!(s.set_placement("ghost", "site-a"), Err(ControlError::NotFound { what: "user", .. })));
        assert!(matches!(s.placement("ghost"), Err(ControlError::NotFound { what: "user", .. })));
    }

    #[test]
    fn move_placement_is_a_compare_and_set_on_the_epoch() {
        let s = store();
        s.create_user("alice").unwrap();
        s.put_site("site-a", &spec(1)).unwrap();
        s.put_site("site-b", &spec(2)).unwrap();

        let mismatch = s.move_placement("alice", "site-a", Some(1)).unwrap_err();
        assert!(matches!(mismatch, ControlError::EpochMismatch { expected: 1, current: 0, .. }), "{mismatch:?}");
        assert_eq!(s.placement("alice").unwrap(), None, "a failed compare-and-set changes nothing");
        assert_eq!(s.move_placement("alice", "site-a", Some(0)).unwrap().epoch, 1, "0 means never placed");

        assert_eq!(
            s.move_placement("alice", "site-b", Some(1)).unwrap(),
            Placement { site: "site-b".into(), epoch: 2 }
        );
        // A second destination committing with the same (now stale) epoch loses.
        let stale = s.move_placement("alice", "site-a", Some(1)).unwrap_err();
        assert!(matches!(stale, ControlError::EpochMismatch { expected: 1, current: 2, .. }), "{stale:?}");
        assert_eq!(stale.to_string(), "placement of \"alice\" is at epoch 2, not the expected epoch 1");
        assert_eq!(s.placement("alice").unwrap(), Some(Placement { site: "site-b".into(), epoch: 2 }));
        // A compare-and-set to the same site still raises the epoch (a source taking its
        // phone back fences out a late commit); a plain set to the same site does not.
        assert_eq!(s.move_placement("alice", "site-b", Some(2)).unwrap().epoch, 3, "same-site CAS raises the epoch");
        assert!(s.move_placement("alice", "site-a", Some(2)).is_err(), "the late commit with epoch 2 loses");
        assert_eq!(s.move_placement("alice", "site-b", None).unwrap().epoch, 3, "plain same-site set keeps it");
        assert_eq!(s.move_placement("alice", "site-a", None).unwrap().epoch, 4);

        s.create_user("bob").unwrap();
        s.set_placement("bob", "site-b").unwrap();
        let all = s.list_placements().unwrap();
        assert_eq!(
            all.iter().map(|(u, p)| (u.as_str(), p.site.as_str(), p.epoch)).collect::<Vec<_>>(),
            [("alice", "site-a", 4), ("bob", "site-b", 1)]
        );
    }

    #[test]
    fn draining_is_a_stored_flag() {
        let s = store();
        assert!(!s.put_site("site-a", &spec(1)).unwrap().draining);
        assert!(s.set_draining("site-a", true).unwrap().draining);
        assert!(s.site("site-a").unwrap().unwrap().draining);
        assert!(s.put_site("site-a", &spec(3)).unwrap().draining, "re-registering keeps the flag");
        assert!(!s.set_draining("site-a", false).unwrap().draining);
        assert!(matches!(s.set_draining("site-z", true), Err(ControlError::NotFound { what: "site", .. })));
    }

    #[test]
    fn migrations_are_logged_newest_first() {
        let s = store();
        s.create_user("alice").unwrap();
        s.create_user("bob").unwrap();
        let record = |user: &str, to: &str, outcome: &str| MigrationRecord {
            user: user.into(),
            from: "site-a".into(),
            to: to.into(),
            epoch: 2,
            downtime_us: 850,
            total_ms: 40.5,
            bytes: 1 << 20,
            outcome: outcome.into(),
            reason: "closer".into(),
        };
        let first = s.record_migration(&record("alice", "site-b", "aborted"), 10).unwrap();
        s.record_migration(&record("bob", "site-b", "committed"), 20).unwrap();
        let third = s.record_migration(&record("alice", "site-c", "committed"), 30).unwrap();
        assert!(first.id < third.id);

        let alice = s.migrations(Some("alice"), 100).unwrap();
        assert_eq!(alice, [third.clone(), first]);
        assert_eq!(s.migrations(None, 100).unwrap().iter().map(|m| m.at_ms).collect::<Vec<_>>(), [30, 20, 10]);
        assert_eq!(s.migrations(None, 1).unwrap(), [third]);

        assert!(matches!(s.migrations(Some("ghost"), 10), Err(ControlError::NotFound { what: "user", .. })));
        let ghost = record("ghost", "site-b", "committed");
        assert!(matches!(s.record_migration(&ghost, 1), Err(ControlError::NotFound { what: "user", .. })));
        let huge = MigrationRecord { bytes: u64::MAX, ..record("alice", "site-b", "committed") };
        assert!(matches!(s.record_migration(&huge, 1), Err(ControlError::BadRequest(_))));
        let long = MigrationRecord { reason: "x".repeat(300), ..record("alice", "site-b", "aborted") };
        assert!(matches!(s.record_migration(&long, 1), Err(ControlError::BadRequest(_))));
        let odd = record("alice", "site-b", "maybe");
        assert!(matches!(s.record_migration(&odd, 1), Err(ControlError::BadRequest(_))));
        let negative = MigrationRecord { total_ms: -1.0, ..record("alice", "site-b", "aborted") };
        assert!(matches!(s.record_migration(&negative, 1), Err(ControlError::BadRequest(_))));
    }

    #[test]
    fn a_version_1_database_is_migrated_in_place() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER NOT NULL);
                            INSERT INTO schema_version (version) VALUES (1);
                            INSERT INTO sites (id, url, lat, lon, capacity) VALUES ('site-a', 'http://a:1', 1, 2, 3);",
        )
        .unwrap();
        let s = SqliteStore::init(conn).unwrap();
        let site = s.site("site-a").unwrap().unwrap();
        assert_eq!((site.capacity, site.draining), (3, false));
        assert!(s.migrations(None, 10).unwrap().is_empty());
    }

    #[test]
    fn a_version_2_database_gets_tenants_images_and_the_catalogue_in_place() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(MIGRATIONS[1]).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER NOT NULL);
             INSERT INTO schema_version (version) VALUES (2);
             INSERT INTO users (name, created_ms) VALUES ('alice', 1);",
        )
        .unwrap();
        let s = SqliteStore::init(conn).unwrap();
        // An existing user has no tenant: no quotas, the default image.
        assert_eq!(s.list_users().unwrap(), [User { name: "alice".into(), tenant: None }]);
        assert_eq!(s.admit("alice", 64 << 20).unwrap().tenant, None);
        assert!(s.tenants().unwrap().is_empty());
        assert!(s.images().unwrap().is_empty());
        assert!(s.checkpoints("alice").unwrap().is_empty());
        let version: u32 = s.conn().query_row("SELECT version FROM schema_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn site_health_follows_heartbeats() {
        let s = store();
        let site = s.put_site("site-a", &spec(1)).unwrap();
        assert_eq!(site.last_heartbeat_ms, None);
        assert!(!site.healthy_at(now_ms()));

        s.heartbeat("site-a", 3, 100_000).unwrap();
        let site = s.site("site-a").unwrap().unwrap();
        assert_eq!((site.phones, site.last_heartbeat_ms), (3, Some(100_000)));
        assert!(site.healthy_at(110_000));
        assert!(!site.healthy_at(100_000 + crate::HEALTHY_WITHIN_MS + 1));

        // Re-registering updates the spec and keeps the heartbeat state.
        let updated = s.put_site("site-a", &SiteSpec { capacity: 9, ..spec(7) }).unwrap();
        assert_eq!((updated.capacity, updated.url.as_str()), (9, "http://127.0.0.1:7"));
        assert_eq!((updated.phones, updated.last_heartbeat_ms), (3, Some(100_000)));

        assert!(matches!(s.heartbeat("site-z", 0, 1), Err(ControlError::NotFound { what: "site", .. })));
        assert_eq!(s.list_sites().unwrap().len(), 1);
        assert_eq!(s.site("site-z").unwrap(), None);
    }

    #[test]
    fn reopening_a_file_keeps_data_and_schema_version() {
        let path = std::env::temp_dir().join(format!("vmi-control-store-{}-{}.db", std::process::id(), now_ms()));
        let token = {
            let s = SqliteStore::open(&path).unwrap();
            s.create_user("alice").unwrap();
            s.create_device("alice", "pixel").unwrap().token
        };
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.authenticate(&token).unwrap().map(|i| i.user).as_deref(), Some("alice"));
        let version: u32 = s.conn().query_row("SELECT version FROM schema_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        s.conn().execute("UPDATE schema_version SET version = 99", []).unwrap();
        drop(s);
        assert!(matches!(SqliteStore::open(&path), Err(ControlError::UnsupportedSchema { found: 99, .. })));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
