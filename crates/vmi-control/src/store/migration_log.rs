//! The log of live migrations, as the sites that carried them out report them.

use rusqlite::{Connection, params};
use vmi_control_api::model::{LoggedMigration, MigrationRecord};

use super::users::require_user;
use crate::ControlError;
use crate::validate::validate_migration;

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

pub(super) fn record_migration(
    conn: &mut Connection,
    record: &MigrationRecord,
    at_ms: u64,
) -> Result<LoggedMigration, ControlError> {
    validate_migration(record)?;
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

pub(super) fn migrations(
    conn: &Connection,
    user: Option<&str>,
    limit: usize,
) -> Result<Vec<LoggedMigration>, ControlError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let logged = match user {
        Some(user) => {
            require_user(conn, user)?;
            let sql = format!("SELECT {MIGRATION_COLUMNS} FROM migrations WHERE user = ?1 ORDER BY id DESC LIMIT ?2");
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

#[cfg(test)]
pub(super) mod tests {

    use vmi_control_api::model::MigrationRecord;

    use crate::ControlError;
    use crate::store::Store;

    /// Conformance case (store/conformance.rs).
    pub(crate) fn migrations_are_logged_newest_first(s: &dyn Store) {
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
}
