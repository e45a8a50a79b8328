//! The checkpoint catalogue: which checkpoints of each user every site holds.

use rusqlite::{Connection, OptionalExtension, params};
use vmi_control_api::model::{CatalogedCheckpoint, CheckpointEntry};

use super::users::require_user;
use crate::ControlError;
use crate::validate::validate_checkpoints;

pub(super) fn put_site_checkpoints(
    conn: &mut Connection,
    user: &str,
    site: &str,
    entries: &[CheckpointEntry],
) -> Result<(), ControlError> {
    validate_checkpoints(entries)?;
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

pub(super) fn checkpoints(conn: &Connection, user: &str) -> Result<Vec<CatalogedCheckpoint>, ControlError> {
    require_user(conn, user)?;
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

#[cfg(test)]
pub(super) mod tests {
    use vmi_control_api::model::{CheckpointEntry, SiteSpec};

    use crate::ControlError;
    use crate::store::Store;

    /// Conformance case (store/conformance.rs).
    pub(crate) fn the_checkpoint_catalogue_lists_each_copy_once_with_its_sites(s: &dyn Store) {
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
}
