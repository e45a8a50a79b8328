//! The database schema, versioned in a `schema_version` table and migrated forward when a store opens.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::ControlError;

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
    // Who may call (store::access): operator and tenant-admin credentials, sites' join tokens, the audit log.
    "
    CREATE TABLE credentials (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ('operator', 'tenant-admin')),
        name TEXT NOT NULL,
        tenant TEXT REFERENCES tenants(name),
        token_hash BLOB NOT NULL UNIQUE,
        created_ms INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE join_tokens (
        token_hash BLOB PRIMARY KEY NOT NULL,
        site TEXT NOT NULL,
        expires_ms INTEGER NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        principal TEXT NOT NULL,
        action TEXT NOT NULL,
        user TEXT,
        site TEXT,
        from_addr TEXT NOT NULL,
        status INTEGER NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_by_time ON audit(at_ms);
",
    // What a site says is wrong with it (it cannot keep its phones durable), from its last heartbeat.
    "ALTER TABLE sites ADD COLUMN degraded TEXT;",
    // Which site holds each phone's standby copy, and for which placement epoch (docs/FAILOVER.md).
    "ALTER TABLE placements ADD COLUMN standby TEXT;
     ALTER TABLE placements ADD COLUMN standby_epoch INTEGER;",
    // The version of each site's list of placed users (what its heartbeat answers): a site holding the list at
    // its version is not sent it again. Every change of who is placed on a site takes the next number of one
    // counter, so a version never names two lists; the counter is never behind the time in microseconds when the
    // database opens, so a new or restored database does not repeat the versions an old one gave out.
    "CREATE TABLE placed_counter (next INTEGER NOT NULL);
     INSERT INTO placed_counter (next) VALUES (CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER));
     ALTER TABLE sites ADD COLUMN placed_version INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX placements_by_site ON placements(site, user);
     CREATE TRIGGER placed_after_insert AFTER INSERT ON placements BEGIN
         UPDATE placed_counter SET next = next + 1;
         UPDATE sites SET placed_version = (SELECT next FROM placed_counter) WHERE id = NEW.site;
     END;
     CREATE TRIGGER placed_after_move AFTER UPDATE OF site ON placements WHEN OLD.site IS NOT NEW.site BEGIN
         UPDATE placed_counter SET next = next + 1;
         UPDATE sites SET placed_version = (SELECT next FROM placed_counter) WHERE id IN (OLD.site, NEW.site);
     END;
     CREATE TRIGGER placed_after_delete AFTER DELETE ON placements BEGIN
         UPDATE placed_counter SET next = next + 1;
         UPDATE sites SET placed_version = (SELECT next FROM placed_counter) WHERE id = OLD.site;
     END;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Takes the database to [`SCHEMA_VERSION`] in one transaction; [`ControlError::UnsupportedSchema`] if it is newer.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), ControlError> {
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
    // Never behind the clock at open either: a database restored from an older copy must not give out again a
    // version it gave out after that copy (for another list).
    tx.execute(
        "UPDATE placed_counter SET next = max(next, CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER))",
        [],
    )?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;
    use vmi_control_api::model::User;

    use super::*;
    use crate::store::{SqliteStore, Store, now_ms};

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
