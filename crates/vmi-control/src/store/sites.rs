//! Sites: where they are reachable and stand, their capacity, heartbeats and the draining flag.

use rusqlite::{Connection, OptionalExtension, params};
use vmi_control_api::model::{Site, SiteSpec};

use super::PlacedUsers;
use crate::ControlError;
use crate::validate::{validate_id, validate_site_spec};

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
        degraded: row.get(8)?,
    })
}

const SITE_COLUMNS: &str = "id, url, lat, lon, capacity, phones, last_heartbeat_ms, draining, degraded";

/// One site, if registered.
pub(super) fn load_site(conn: &Connection, id: &str) -> Result<Option<Site>, ControlError> {
    let sql = format!("SELECT {SITE_COLUMNS} FROM sites WHERE id = ?1");
    Ok(conn.query_row(&sql, [id], site_row).optional()?)
}

pub(super) fn put_site(conn: &mut Connection, id: &str, spec: &SiteSpec) -> Result<Site, ControlError> {
    validate_id("site id", id)?;
    let url = validate_site_spec(spec)?;
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

/// Records a heartbeat and lists the users whose phones are placed on the site, in one transaction: a failover
/// (which checks the lease in its own transaction) is wholly before or wholly after it.
pub(super) fn heartbeat(
    conn: &mut Connection,
    id: &str,
    phones: u32,
    degraded: Option<&str>,
    at_ms: u64,
    known: Option<u64>,
) -> Result<PlacedUsers, ControlError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: Option<u64> = tx
        .query_row(
            "UPDATE sites SET phones = ?2, last_heartbeat_ms = ?3, degraded = ?4 WHERE id = ?1 RETURNING placed_version",
            params![id, phones, at_ms, degraded],
            |row| row.get(0),
        )
        .optional()?;
    let Some(version) = version else { return Err(ControlError::not_found("site", id)) };
    // The triggers of schema.rs give the site a new version from one counter at every change of who is placed
    // on it, so an equal version is an equal list (0: none recorded yet, always read).
    let users = if version != 0 && known == Some(version) {
        None
    } else {
        let mut stmt = tx.prepare("SELECT user FROM placements WHERE site = ?1 ORDER BY user")?;
        Some(stmt.query_map([id], |row| row.get(0))?.collect::<Result<Vec<String>, _>>()?)
    };
    tx.commit()?;
    Ok(PlacedUsers { version, users })
}

pub(super) fn site(conn: &Connection, id: &str) -> Result<Option<Site>, ControlError> {
    load_site(conn, id)
}

pub(super) fn list_sites(conn: &Connection) -> Result<Vec<Site>, ControlError> {
    let mut stmt = conn.prepare(&format!("SELECT {SITE_COLUMNS} FROM sites ORDER BY id"))?;
    let sites = stmt.query_map([], site_row)?.collect::<Result<_, _>>()?;
    Ok(sites)
}

pub(super) fn set_draining(conn: &mut Connection, id: &str, draining: bool) -> Result<Site, ControlError> {
    let tx = conn.transaction()?;
    if tx.execute("UPDATE sites SET draining = ?2 WHERE id = ?1", params![id, draining])? == 0 {
        return Err(ControlError::not_found("site", id));
    }
    let site = load_site(&tx, id)?.ok_or_else(|| ControlError::not_found("site", id))?;
    tx.commit()?;
    Ok(site)
}

#[cfg(test)]
pub(super) mod tests {
    use crate::store::test_support::spec;
    use vmi_control_api::model::SiteSpec;

    use crate::ControlError;
    use crate::store::{PlacedUsers, Store, now_ms};

    /// Conformance case (store/conformance.rs).
    pub(crate) fn draining_is_a_stored_flag(s: &dyn Store) {
        assert!(!s.put_site("site-a", &spec(1)).unwrap().draining);
        assert!(s.set_draining("site-a", true).unwrap().draining);
        assert!(s.site("site-a").unwrap().unwrap().draining);
        assert!(s.put_site("site-a", &spec(3)).unwrap().draining, "re-registering keeps the flag");
        assert!(!s.set_draining("site-a", false).unwrap().draining);
        assert!(matches!(s.set_draining("site-z", true), Err(ControlError::NotFound { what: "site", .. })));
    }

    /// Conformance case (store/conformance.rs).
    pub(crate) fn a_heartbeat_sends_the_placed_list_again_only_when_it_changed(s: &dyn Store) {
        s.put_site("site-a", &spec(1)).unwrap();
        s.put_site("site-b", &spec(2)).unwrap();
        // Nothing placed yet: no version to hold, the (empty) list every time.
        let empty = s.heartbeat_since("site-a", 0, None, 1_000, None).unwrap();
        assert_eq!(empty.users.as_deref(), Some(&[][..]));
        assert_eq!(s.heartbeat_since("site-a", 0, None, 1_000, Some(empty.version)).unwrap().users, Some(vec![]));

        for user in ["alice", "bob"] {
            s.create_user(user).unwrap();
            s.set_placement(user, "site-a").unwrap();
        }
        let first = s.heartbeat_since("site-a", 2, None, 2_000, Some(empty.version)).unwrap();
        assert_eq!(first.users.as_deref(), Some(&["alice".to_owned(), "bob".to_owned()][..]));
        assert_ne!(first.version, 0);
        // Held at its version: not sent again, however often asked, while nothing changes for the site.
        let same = s.heartbeat_since("site-a", 2, None, 3_000, Some(first.version)).unwrap();
        assert_eq!(same, PlacedUsers { version: first.version, users: None });
        assert_eq!(s.site("site-a").unwrap().unwrap().last_heartbeat_ms, Some(3_000), "still a heartbeat");
        // Changes elsewhere, or a placement set again to the same site, are no change for it.
        s.create_user("carol").unwrap();
        s.set_placement("carol", "site-b").unwrap();
        s.set_placement("alice", "site-a").unwrap();
        assert_eq!(s.heartbeat_since("site-a", 2, None, 4_000, Some(first.version)).unwrap().users, None);
        // A phone moving away changes both sites' lists; an old version (or none) gets the whole list.
        let moved = s.move_placement("bob", "site-b", Some(1)).unwrap();
        assert_eq!(moved.site, "site-b");
        let after = s.heartbeat_since("site-a", 1, None, 5_000, Some(first.version)).unwrap();
        assert_eq!(after.users.as_deref(), Some(&["alice".to_owned()][..]));
        assert_ne!(after.version, first.version);
        let b = s.heartbeat_since("site-b", 2, None, 5_000, Some(first.version)).unwrap();
        assert_eq!(b.users.as_deref(), Some(&["bob".to_owned(), "carol".to_owned()][..]));
        assert_eq!(s.heartbeat_since("site-a", 1, None, 6_000, None).unwrap().users.map(|u| u.len()), Some(1));
        // And back: a new version, never the old one again.
        s.move_placement("bob", "site-a", Some(2)).unwrap();
        let back = s.heartbeat_since("site-a", 2, None, 7_000, Some(after.version)).unwrap();
        assert_eq!(back.users.map(|u| u.len()), Some(2));
        assert!(back.version != first.version && back.version != after.version);
        assert!(matches!(
            s.heartbeat_since("site-z", 0, None, 1, Some(back.version)),
            Err(ControlError::NotFound { what: "site", .. })
        ));
    }

    /// Conformance case (store/conformance.rs).
    pub(crate) fn site_health_follows_heartbeats(s: &dyn Store) {
        let site = s.put_site("site-a", &spec(1)).unwrap();
        assert_eq!(site.last_heartbeat_ms, None);
        assert!(!site.healthy_at(now_ms()));

        s.heartbeat("site-a", 3, None, 100_000).unwrap();
        let site = s.site("site-a").unwrap().unwrap();
        assert_eq!((site.phones, site.last_heartbeat_ms), (3, Some(100_000)));
        assert!(site.healthy_at(110_000));
        assert!(!site.healthy_at(100_000 + vmi_control_api::HEALTHY_WITHIN_MS + 1));

        // Re-registering updates the spec and keeps the heartbeat state.
        let updated = s.put_site("site-a", &SiteSpec { capacity: 9, ..spec(7) }).unwrap();
        assert_eq!((updated.capacity, updated.url.as_str()), (9, "http://127.0.0.1:7"));
        assert_eq!((updated.phones, updated.last_heartbeat_ms), (3, Some(100_000)));

        assert!(matches!(s.heartbeat("site-z", 0, None, 1), Err(ControlError::NotFound { what: "site", .. })));
        assert_eq!(s.list_sites().unwrap().len(), 1);
        assert_eq!(s.site("site-z").unwrap(), None);
    }
}
