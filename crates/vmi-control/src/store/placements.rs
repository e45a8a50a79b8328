//! Placements: which site runs each user's phone, with the ownership epoch live migration hands over.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use vmi_control_api::model::Placement;

use super::sites::load_site;
use super::users::require_user;
use crate::ControlError;

fn load_placement(conn: &Connection, user: &str) -> Result<Option<Placement>, ControlError> {
    let placement = conn
        .query_row("SELECT site, epoch FROM placements WHERE user = ?1", [user], |row| {
            Ok(Placement { site: row.get(0)?, epoch: row.get(1)? })
        })
        .optional()?;
    Ok(placement)
}

pub(super) fn move_placement(
    conn: &mut Connection,
    user: &str,
    site: &str,
    expected_epoch: Option<u64>,
) -> Result<Placement, ControlError> {
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

/// Records that `standby` holds the standby copy of `user`'s phone as `owner` runs it at `epoch`: refused unless the
/// placement names `owner` at `epoch` now (a copy of an older life is never a failover target).
pub(super) fn set_standby(
    conn: &mut Connection,
    user: &str,
    owner: &str,
    standby: &str,
    epoch: u64,
) -> Result<(), ControlError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if load_site(&tx, standby)?.is_none() {
        return Err(ControlError::not_found("site", standby));
    }
    if standby == owner {
        return Err(ControlError::BadRequest(format!("{owner} cannot stand by for its own phone")));
    }
    let current = load_placement(&tx, user)?.ok_or_else(|| ControlError::not_found("placement", user))?;
    if current.site != owner || current.epoch != epoch {
        return Err(ControlError::EpochMismatch { user: user.to_owned(), expected: epoch, current: current.epoch });
    }
    tx.execute(
        "UPDATE placements SET standby = ?2, standby_epoch = ?3 WHERE user = ?1",
        params![user, standby, epoch],
    )?;
    tx.commit()?;
    Ok(())
}

/// Forgets `user`'s standby copy; only the site the placement names may.
pub(super) fn clear_standby(conn: &Connection, user: &str, owner: &str) -> Result<(), ControlError> {
    let current = load_placement(conn, user)?.ok_or_else(|| ControlError::not_found("placement", user))?;
    if current.site != owner {
        return Err(ControlError::Forbidden(format!("{owner} does not run {user}'s phone ({} does)", current.site)));
    }
    conn.execute("UPDATE placements SET standby = NULL, standby_epoch = NULL WHERE user = ?1", [user])?;
    Ok(())
}

/// See [`Store::fail_over`](super::Store::fail_over).
pub(super) fn fail_over(
    conn: &mut Connection,
    user: &str,
    from: &str,
    to: &str,
    epoch: u64,
    expired_before_ms: u64,
    live_since_ms: u64,
) -> Result<Placement, ControlError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let beat = |site: &str| -> Result<Option<u64>, ControlError> {
        Ok(load_site(&tx, site)?.ok_or_else(|| ControlError::not_found("site", site))?.last_heartbeat_ms)
    };
    if beat(from)?.is_none_or(|at| at >= expired_before_ms) {
        return Err(ControlError::Refused(format!("{from} renewed its lease: no failover")));
    }
    if beat(to)?.is_none_or(|at| at < live_since_ms) {
        return Err(ControlError::Refused(format!("{to} holds no lease: no failover there")));
    }
    let current = load_placement(&tx, user)?.ok_or_else(|| ControlError::not_found("placement", user))?;
    if current.site != from || current.epoch != epoch {
        return Err(ControlError::EpochMismatch { user: user.to_owned(), expected: epoch, current: current.epoch });
    }
    // Only to the copy the owner names now, of this epoch: a copy it stopped naming may be stale.
    let standby: (Option<String>, Option<u64>) =
        tx.query_row("SELECT standby, standby_epoch FROM placements WHERE user = ?1", [user], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
    if standby != (Some(to.to_owned()), Some(epoch)) {
        return Err(ControlError::Refused(format!("{to} holds no standby copy of {user}'s phone at epoch {epoch}")));
    }
    tx.execute(
        "UPDATE placements SET site = ?2, epoch = epoch + 1, standby = NULL, standby_epoch = NULL WHERE user = ?1",
        params![user, to],
    )?;
    let placement = load_placement(&tx, user)?.ok_or_else(|| ControlError::not_found("placement", user))?;
    tx.commit()?;
    Ok(placement)
}

/// Every placement with its standby copy, if one is recorded for its current epoch.
pub(super) fn list_standbys(conn: &Connection) -> Result<Vec<(String, Placement, Option<String>)>, ControlError> {
    let mut stmt = conn.prepare(
        "SELECT user, site, epoch, CASE WHEN standby_epoch = epoch THEN standby END FROM placements ORDER BY user",
    )?;
    let rows = stmt
        .query_map([], |row| Ok((row.get(0)?, Placement { site: row.get(1)?, epoch: row.get(2)? }, row.get(3)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(super) fn placement(conn: &Connection, user: &str) -> Result<Option<Placement>, ControlError> {
    require_user(conn, user)?;
    load_placement(conn, user)
}

pub(super) fn list_placements(conn: &Connection) -> Result<Vec<(String, Placement)>, ControlError> {
    let mut stmt = conn.prepare("SELECT user, site, epoch FROM placements ORDER BY user")?;
    let placements = stmt
        .query_map([], |row| Ok((row.get(0)?, Placement { site: row.get(1)?, epoch: row.get(2)? })))?
        .collect::<Result<_, _>>()?;
    Ok(placements)
}

#[cfg(test)]
pub(super) mod tests {
    use crate::store::test_support::spec;
    use vmi_control_api::model::Placement;

    use crate::ControlError;
    use crate::store::Store;

    /// Conformance case (store/conformance.rs).
    pub(crate) fn placement_epoch_increments_on_change_only(s: &dyn Store) {
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

    /// Conformance case (store/conformance.rs).
    pub(crate) fn move_placement_is_a_compare_and_set_on_the_epoch(s: &dyn Store) {
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

    /// Conformance case (store/conformance.rs).
    pub(crate) fn a_failover_moves_a_phone_only_while_the_old_lease_is_expired_and_the_new_one_live(s: &dyn Store) {
        s.create_user("alice").unwrap();
        s.put_site("site-a", &spec(1)).unwrap();
        s.put_site("site-b", &spec(2)).unwrap();
        s.set_placement("alice", "site-a").unwrap();
        s.set_standby("alice", "site-a", "site-b", 1).unwrap();
        s.heartbeat("site-a", 1, None, 10_000).unwrap();
        s.heartbeat("site-b", 0, None, 10_000).unwrap();
        // site-a's last heartbeat (10 s) is not older than 9 s: its lease holds.
        let refused = s.fail_over("alice", "site-a", "site-b", 1, 9_000, 9_000).unwrap_err();
        assert!(matches!(refused, ControlError::Refused(_)), "{refused:?}");
        // Expired before 20 s, but site-b has not been heard from since 20 s either.
        assert!(matches!(s.fail_over("alice", "site-a", "site-b", 1, 20_000, 20_000), Err(ControlError::Refused(_))));
        s.heartbeat("site-b", 0, None, 21_000).unwrap();
        assert!(matches!(
            s.fail_over("alice", "site-a", "site-b", 7, 20_000, 20_000),
            Err(ControlError::EpochMismatch { current: 1, .. })
        ));
        // Only to the copy the owner names: not after it named another (or none).
        s.put_site("site-c", &spec(3)).unwrap();
        s.heartbeat("site-c", 0, None, 21_000).unwrap();
        s.set_standby("alice", "site-a", "site-c", 1).unwrap();
        assert!(matches!(s.fail_over("alice", "site-a", "site-b", 1, 20_000, 20_000), Err(ControlError::Refused(_))));
        s.clear_standby("alice", "site-a").unwrap();
        assert!(matches!(s.fail_over("alice", "site-a", "site-c", 1, 20_000, 20_000), Err(ControlError::Refused(_))));
        s.set_standby("alice", "site-a", "site-b", 1).unwrap();
        let moved = s.fail_over("alice", "site-a", "site-b", 1, 20_000, 20_000).unwrap();
        assert_eq!(moved, Placement { site: "site-b".into(), epoch: 2 });
        // Each site's next heartbeat says where the phone is now.
        assert!(s.heartbeat("site-a", 1, None, 22_000).unwrap().is_empty());
        assert_eq!(s.heartbeat("site-b", 1, None, 22_000).unwrap(), ["alice"]);
        // A second failover of the same epoch (a retry) is refused.
        assert!(s.fail_over("alice", "site-a", "site-b", 1, 30_000, 20_000).is_err());
    }

    /// Conformance case (store/conformance.rs).
    pub(crate) fn a_standby_is_recorded_only_by_the_owner_at_its_epoch_and_counts_only_for_that_epoch(s: &dyn Store) {
        s.create_user("alice").unwrap();
        for (i, id) in ["site-a", "site-b", "site-c"].into_iter().enumerate() {
            s.put_site(id, &spec(i as u16 + 1)).unwrap();
        }
        let placed = s.set_placement("alice", "site-a").unwrap();
        let standby = |s: &dyn Store| s.list_standbys().unwrap().into_iter().map(|(_, _, sb)| sb).collect::<Vec<_>>();
        assert!(matches!(
            s.set_standby("alice", "site-c", "site-b", placed.epoch),
            Err(ControlError::EpochMismatch { .. })
        ));
        assert!(s.set_standby("alice", "site-a", "site-b", placed.epoch + 1).is_err(), "a wrong epoch");
        assert!(s.set_standby("alice", "site-a", "site-a", placed.epoch).is_err(), "not its own standby");
        assert_eq!(standby(s), [None]);
        s.set_standby("alice", "site-a", "site-b", placed.epoch).unwrap();
        assert_eq!(standby(s), [Some("site-b".to_string())]);
        // Unnamed by the owner only (a checkout): no failover target.
        assert!(s.clear_standby("alice", "site-c").is_err(), "not the owner");
        s.clear_standby("alice", "site-a").unwrap();
        assert_eq!(standby(s), [None]);
        s.set_standby("alice", "site-a", "site-b", placed.epoch).unwrap();
        // The phone moves on: the old copy is no failover target any more.
        s.move_placement("alice", "site-c", Some(placed.epoch)).unwrap();
        assert_eq!(standby(s), [None]);
    }

    /// Conformance case: of moves racing with the same expected epoch, exactly one wins; the rest are told the
    /// epoch moved on.
    pub(crate) fn racing_compare_and_sets_on_one_epoch_have_exactly_one_winner(s: &dyn Store) {
        s.create_user("alice").unwrap();
        for (port, site) in [(1, "site-a"), (2, "site-b"), (3, "site-c")] {
            s.put_site(site, &spec(port)).unwrap();
        }
        s.set_placement("alice", "site-a").unwrap();
        let results = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..6)
                .map(|i| {
                    let to = if i % 2 == 0 { "site-b" } else { "site-c" };
                    scope.spawn(move || s.move_placement("alice", to, Some(1)))
                })
                .collect();
            racers.into_iter().map(|r| r.join().expect("racer")).collect::<Vec<_>>()
        });
        let won: Vec<&Placement> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        assert_eq!(won[0].epoch, 2);
        for lost in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(matches!(lost, ControlError::EpochMismatch { expected: 1, current: 2, .. }), "{lost:?}");
        }
        assert_eq!(s.placement("alice").unwrap().as_ref(), Some(won[0]));
    }

    /// Conformance case: a heartbeat racing a failover of its site never leaves two owners. Either the failover
    /// commits first (and the heartbeat's answer no longer names the phone) or the heartbeat does (and the
    /// failover is refused): never both the phone moved and its old site told it still runs it.
    pub(crate) fn a_heartbeat_racing_a_failover_never_leaves_two_owners(s: &dyn Store) {
        s.put_site("site-a", &spec(1)).unwrap();
        s.put_site("site-b", &spec(2)).unwrap();
        s.heartbeat("site-b", 0, None, 10_000).unwrap();
        for round in 0..12 {
            let user = format!("user-{round}");
            s.create_user(&user).unwrap();
            let placed = s.set_placement(&user, "site-a").unwrap();
            s.set_standby(&user, "site-a", "site-b", placed.epoch).unwrap();
            // site-a's lease expired (last heartbeat at 1 s, expiry before 5 s) ...
            s.heartbeat("site-a", 1, None, 1_000).unwrap();
            // ... and now it renews (at 10 s) while the placer fails its phone over.
            let (answer, failover) = std::thread::scope(|scope| {
                let beat = scope.spawn(|| s.heartbeat("site-a", 1, None, 10_000));
                let failover = scope.spawn(|| s.fail_over(&user, "site-a", "site-b", placed.epoch, 5_000, 0));
                (beat.join().expect("heartbeat"), failover.join().expect("failover"))
            });
            let still_owner = answer.unwrap().contains(&user);
            match failover {
                Ok(p) => {
                    assert!(!still_owner, "round {round}: {user} failed over to {p:?} and site-a still owns it");
                    assert_eq!(p.site, "site-b");
                }
                Err(e) => {
                    assert!(matches!(e, ControlError::Refused(_)), "round {round}: {e:?}");
                    assert!(
                        still_owner,
                        "round {round}: the failover was refused yet site-a was not told it owns {user}"
                    );
                }
            }
        }
    }
}
