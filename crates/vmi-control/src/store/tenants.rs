//! Tenants with their quotas, the admission of phones against them, and image versions (see
//! `vmi_control_api::tenants` for the rules). Every function runs in the connection it is given; those that
//! check and then write take it mutably and open their own transaction.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use vmi_control_api::tenants::{
    Admission, DEFAULT_IMAGE, ImageVersion, Tenant, TenantRequest, TenantStatus, TenantUpdate, UserImage, format_bytes,
};

use super::now_ms;
use crate::ControlError;
use crate::validate::{validate_id, validate_tenant, validate_wasm};

/// "1 phone", "2 phones".
fn phones_text(n: u64) -> String {
    if n == 1 { "1 phone".to_owned() } else { format!("{n} phones") }
}

/// All tenants by name, with what each uses now, read in one transaction (every usage from the same moment).
pub(super) fn tenants(conn: &mut Connection) -> Result<Vec<TenantStatus>, ControlError> {
    let tx = conn.transaction()?;
    tenants_now(&tx)
}

/// Admits a phone: the quota check and the record are one immediate transaction, so two sites admitting at once
/// cannot both take the last phone of a tenant.
pub(super) fn admit(conn: &mut Connection, user: &str, memory_bytes: u64) -> Result<Admission, ControlError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let admission = admit_now(&tx, user, memory_bytes)?;
    tx.commit()?;
    Ok(admission)
}

/// Publishes the next version of an image, in one immediate transaction.
pub(super) fn publish_image(conn: &mut Connection, name: &str, wasm: &[u8]) -> Result<ImageVersion, ControlError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version = publish_now(&tx, name, wasm)?;
    tx.commit()?;
    Ok(version)
}

/// Withdraws the current version of an image, in one immediate transaction.
pub(super) fn rollback_image(conn: &mut Connection, name: &str) -> Result<ImageVersion, ControlError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version = rollback_now(&tx, name)?;
    tx.commit()?;
    Ok(version)
}

fn tenant_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Tenant> {
    Ok(Tenant { name: row.get(0)?, max_phones: row.get(1)?, max_memory_bytes: row.get(2)?, image: row.get(3)? })
}

pub(super) fn tenant(conn: &Connection, name: &str) -> Result<Option<Tenant>, ControlError> {
    let sql = "SELECT name, max_phones, max_memory_bytes, image FROM tenants WHERE name = ?1";
    Ok(conn.query_row(sql, [name], tenant_row).optional()?)
}

pub(super) fn create_tenant(conn: &Connection, req: &TenantRequest) -> Result<Tenant, ControlError> {
    let image = validate_tenant(req, true)?;
    let inserted = conn.execute(
        "INSERT INTO tenants (name, max_phones, max_memory_bytes, image, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(name) DO NOTHING",
        params![req.name, req.max_phones, req.max_memory_bytes, image, now_ms()],
    )?;
    if inserted == 0 {
        return Err(ControlError::Conflict { what: "tenant", id: req.name.clone() });
    }
    Ok(Tenant { name: req.name.clone(), max_phones: req.max_phones, max_memory_bytes: req.max_memory_bytes, image })
}

/// `now` with `update` applied, checked as a tenant request (both stores update with it).
pub(super) fn updated(now: &Tenant, update: &TenantUpdate) -> Result<Tenant, ControlError> {
    let next = update.apply(now);
    let request = TenantRequest {
        name: next.name.clone(),
        max_phones: next.max_phones,
        max_memory_bytes: next.max_memory_bytes,
        image: Some(next.image.clone()),
    };
    validate_tenant(&request, false)?;
    Ok(next)
}

/// Applies `update` to the tenant in one immediate transaction: what it does not name stays as it is.
pub(super) fn update_tenant(conn: &mut Connection, name: &str, update: &TenantUpdate) -> Result<Tenant, ControlError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = tenant(&tx, name)?.ok_or_else(|| ControlError::not_found("tenant", name))?;
    let next = updated(&now, update)?;
    tx.execute(
        "UPDATE tenants SET max_phones = ?2, max_memory_bytes = ?3, image = ?4 WHERE name = ?1",
        params![name, next.max_phones, next.max_memory_bytes, next.image],
    )?;
    tx.commit()?;
    Ok(next)
}

/// Admitted phones and their memory of `tenant`, leaving out `except` (the user being admitted again).
fn usage(conn: &Connection, tenant: &str, except: &str) -> Result<(u64, u64), ControlError> {
    Ok(conn.query_row(
        "SELECT count(*), coalesce(sum(phone_memory_bytes), 0) FROM users
         WHERE tenant = ?1 AND phone_memory_bytes IS NOT NULL AND name != ?2",
        params![tenant, except],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?)
}

fn tenants_now(conn: &Connection) -> Result<Vec<TenantStatus>, ControlError> {
    let mut stmt = conn.prepare("SELECT name, max_phones, max_memory_bytes, image FROM tenants ORDER BY name")?;
    let tenants: Vec<Tenant> = stmt.query_map([], tenant_row)?.collect::<Result<_, _>>()?;
    tenants
        .into_iter()
        .map(|tenant| {
            let (phones, memory_bytes) = usage(conn, &tenant.name, "")?;
            Ok(TenantStatus { tenant, phones: u32::try_from(phones).unwrap_or(u32::MAX), memory_bytes })
        })
        .collect()
}

/// The user's tenant; [`ControlError::NotFound`] if the user does not exist.
pub(super) fn tenant_of(conn: &Connection, user: &str) -> Result<Option<String>, ControlError> {
    conn.query_row("SELECT tenant FROM users WHERE name = ?1", [user], |row| row.get(0))
        .optional()?
        .ok_or_else(|| ControlError::not_found("user", user))
}

/// The tenant's phones and memory once one more phone of `memory_bytes` is admitted beside the `phones` others using
/// `memory`, or [`ControlError::Quota`] naming the quota it would pass (both stores admit with it).
pub(super) fn within_quota(
    tenant: &Tenant,
    phones: u64,
    memory: u64,
    memory_bytes: u64,
) -> Result<(u64, u64), ControlError> {
    let name = &tenant.name;
    if let Some(max) = tenant.max_phones
        && phones + 1 > u64::from(max)
    {
        return Err(ControlError::Quota(format!("tenant {name:?} is at its quota of {}", phones_text(u64::from(max)))));
    }
    let wanted = memory.saturating_add(memory_bytes);
    if let Some(max) = tenant.max_memory_bytes
        && wanted > max
    {
        return Err(ControlError::Quota(format!(
            "tenant {name:?} would use {} of its {} memory quota",
            format_bytes(wanted),
            format_bytes(max)
        )));
    }
    Ok((phones + 1, wanted))
}

fn admit_now(conn: &Connection, user: &str, memory_bytes: u64) -> Result<Admission, ControlError> {
    if memory_bytes > i64::MAX as u64 {
        return Err(ControlError::BadRequest(format!("memory_bytes must be at most {}", i64::MAX)));
    }
    let tenant_name = tenant_of(conn, user)?;
    let (phones, memory) = match &tenant_name {
        Some(name) => {
            let tenant = tenant(conn, name)?.ok_or_else(|| ControlError::not_found("tenant", name))?;
            let (phones, memory) = usage(conn, name, user)?;
            within_quota(&tenant, phones, memory, memory_bytes)?
        }
        None => (1, memory_bytes),
    };
    conn.execute("UPDATE users SET phone_memory_bytes = ?2 WHERE name = ?1", params![user, memory_bytes])?;
    Ok(Admission {
        user: user.to_owned(),
        tenant: tenant_name,
        phones: u32::try_from(phones).unwrap_or(u32::MAX),
        memory_bytes: memory,
    })
}

pub(super) fn release(conn: &Connection, user: &str) -> Result<(), ControlError> {
    if conn.execute("UPDATE users SET phone_memory_bytes = NULL WHERE name = ?1", [user])? == 0 {
        return Err(ControlError::not_found("user", user));
    }
    Ok(())
}

/// The newest version of `name` that is not withdrawn, as `(version, hash)`.
fn current(conn: &Connection, name: &str) -> Result<Option<(u64, String)>, ControlError> {
    Ok(conn
        .query_row(
            "SELECT version, hash FROM images WHERE name = ?1 AND withdrawn = 0 ORDER BY version DESC LIMIT 1",
            [name],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?)
}

const VERSION_COLUMNS: &str = "name, version, hash, length(wasm), published_ms, withdrawn";

fn version_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ImageVersion> {
    Ok(ImageVersion {
        name: row.get(0)?,
        version: row.get(1)?,
        hash: row.get(2)?,
        size_bytes: row.get(3)?,
        published_ms: row.get(4)?,
        withdrawn: row.get(5)?,
        current: false,
    })
}

fn version(conn: &Connection, name: &str, version: u64) -> Result<Option<ImageVersion>, ControlError> {
    let sql = format!("SELECT {VERSION_COLUMNS} FROM images WHERE name = ?1 AND version = ?2");
    let found = conn.query_row(&sql, params![name, version], version_row).optional()?;
    let current = current(conn, name)?.map(|(v, _)| v);
    Ok(found.map(|v| ImageVersion { current: Some(v.version) == current, ..v }))
}

fn publish_now(conn: &Connection, name: &str, wasm: &[u8]) -> Result<ImageVersion, ControlError> {
    validate_id("image name", name)?;
    validate_wasm(wasm)?;
    let hash = blake3::hash(wasm).to_hex().to_string();
    // Publishing what is current already is a no-op, so a start script may publish on every start.
    if let Some((v, current_hash)) = current(conn, name)?
        && current_hash == hash
    {
        return version(conn, name, v)?.ok_or_else(|| ControlError::not_found("image", name));
    }
    let next: u64 =
        conn.query_row("SELECT coalesce(max(version), 0) + 1 FROM images WHERE name = ?1", [name], |row| row.get(0))?;
    conn.execute(
        "INSERT INTO images (name, version, hash, wasm, published_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![name, next, hash, wasm, now_ms()],
    )?;
    version(conn, name, next)?.ok_or_else(|| ControlError::not_found("image", name))
}

pub(super) fn images(conn: &Connection) -> Result<Vec<ImageVersion>, ControlError> {
    let sql = format!("SELECT {VERSION_COLUMNS} FROM images ORDER BY name, version");
    let mut stmt = conn.prepare(&sql)?;
    let mut versions: Vec<ImageVersion> = stmt.query_map([], version_row)?.collect::<Result<_, _>>()?;
    // Sorted by name then version: the last one not withdrawn of each name is its current one.
    let mut latest: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, v) in versions.iter().enumerate() {
        if !v.withdrawn {
            latest.insert(v.name.clone(), i);
        }
    }
    for i in latest.into_values() {
        versions[i].current = true;
    }
    Ok(versions)
}

pub(super) fn image_wasm(conn: &Connection, name: &str, version: u64) -> Result<Option<Vec<u8>>, ControlError> {
    Ok(conn
        .query_row("SELECT wasm FROM images WHERE name = ?1 AND version = ?2", params![name, version], |row| row.get(0))
        .optional()?)
}

fn rollback_now(conn: &Connection, name: &str) -> Result<ImageVersion, ControlError> {
    let (v, _) = current(conn, name)?.ok_or_else(|| ControlError::not_found("image", name))?;
    let left: u64 =
        conn.query_row("SELECT count(*) FROM images WHERE name = ?1 AND withdrawn = 0", [name], |row| row.get(0))?;
    if left < 2 {
        return Err(ControlError::Refused(format!(
            "image {name:?} has no earlier version to roll back to (version {v} is the only one left)"
        )));
    }
    conn.execute("UPDATE images SET withdrawn = 1 WHERE name = ?1 AND version = ?2", params![name, v])?;
    let (now, _) = current(conn, name)?.ok_or_else(|| ControlError::not_found("image", name))?;
    version(conn, name, now)?.ok_or_else(|| ControlError::not_found("image", name))
}

pub(super) fn user_image(conn: &Connection, user: &str) -> Result<(String, Option<UserImage>), ControlError> {
    let image = match tenant_of(conn, user)? {
        Some(t) => tenant(conn, &t)?.map_or_else(|| DEFAULT_IMAGE.to_owned(), |t| t.image),
        None => DEFAULT_IMAGE.to_owned(),
    };
    let found = current(conn, &image)?.map(|(version, hash)| UserImage { name: image.clone(), version, hash });
    Ok((image, found))
}

#[cfg(test)]
pub(super) mod tests {

    use vmi_control_api::tenants::{DEFAULT_IMAGE, TenantRequest, TenantUpdate};

    use crate::ControlError;
    use crate::store::Store;

    const MIB: u64 = 1 << 20;

    fn tenant(name: &str, max_phones: Option<u32>, max_memory_bytes: Option<u64>) -> TenantRequest {
        TenantRequest { name: name.into(), max_phones, max_memory_bytes, image: None }
    }

    /// A tiny valid module header plus a marker, so each "version" has other bytes.
    fn wasm(marker: u8) -> Vec<u8> {
        vec![0, b'a', b's', b'm', 1, 0, 0, 0, 0, 2, 1, marker]
    }

    /// Conformance case (store/conformance.rs).
    pub(crate) fn tenants_are_created_once_updated_and_listed_with_usage(s: &dyn Store) {
        let acme = s.create_tenant(&tenant("acme", Some(2), Some(64 * MIB))).unwrap();
        assert_eq!(acme.image, DEFAULT_IMAGE);
        assert!(matches!(s.create_tenant(&tenant("acme", None, None)), Err(ControlError::Conflict { .. })));
        assert!(matches!(s.create_tenant(&tenant("a/b", None, None)), Err(ControlError::BadRequest(_))));
        let bad_image = TenantRequest { image: Some("no such/name".into()), ..tenant("x", None, None) };
        assert!(matches!(s.create_tenant(&bad_image), Err(ControlError::BadRequest(_))));

        let user = s.create_user_in("ann", Some("acme")).unwrap();
        assert_eq!(user.tenant.as_deref(), Some("acme"));
        assert!(matches!(s.create_user_in("bob", Some("ghost")), Err(ControlError::NotFound { what: "tenant", .. })));
        assert!(s.list_users().unwrap().iter().all(|u| u.name != "bob"), "nothing created for a missing tenant");
        s.admit("ann", 48 * MIB).unwrap();

        // An update changes what it names and nothing else: the memory quota, not sent, stays.
        let update = TenantUpdate { max_phones: Some(Some(5)), image: Some("office".into()), ..Default::default() };
        let updated = s.update_tenant("acme", &update).unwrap();
        assert_eq!(
            (updated.max_phones, updated.max_memory_bytes, updated.image.as_str()),
            (Some(5), Some(64 * MIB), "office")
        );
        // Sent as null, a quota becomes unlimited; the image stays.
        let unlimited: TenantUpdate = serde_json::from_str(r#"{"max_memory_bytes": null}"#).unwrap();
        assert_eq!(unlimited.max_memory_bytes, Some(None));
        let updated = s.update_tenant("acme", &unlimited).unwrap();
        assert_eq!((updated.max_phones, updated.max_memory_bytes, updated.image.as_str()), (Some(5), None, "office"));
        let bad = TenantUpdate { image: Some("no such/name".into()), ..Default::default() };
        assert!(matches!(s.update_tenant("acme", &bad), Err(ControlError::BadRequest(_))));
        assert_eq!(s.tenants().unwrap()[0].tenant, updated, "a refused update changes nothing");
        assert!(matches!(s.update_tenant("ghost", &TenantUpdate::default()), Err(ControlError::NotFound { .. })));
        let listed = s.tenants().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].phones, listed[0].memory_bytes), (1, 48 * MIB));
        assert_eq!(listed[0].tenant, updated);
    }

    /// Conformance case (store/conformance.rs).
    pub(crate) fn admission_refuses_past_the_phone_quota_with_a_clear_message(s: &dyn Store) {
        s.create_tenant(&tenant("acme", Some(2), None)).unwrap();
        for user in ["ann", "bob", "cat"] {
            s.create_user_in(user, Some("acme")).unwrap();
        }
        assert_eq!(s.admit("ann", 64 * MIB).unwrap().phones, 1);
        assert_eq!(s.admit("bob", 64 * MIB).unwrap().phones, 2);
        let refused = s.admit("cat", 64 * MIB).unwrap_err();
        assert!(matches!(refused, ControlError::Quota(_)), "{refused:?}");
        assert_eq!(refused.status(), axum::http::StatusCode::FORBIDDEN);
        assert_eq!(refused.to_string(), "tenant \"acme\" is at its quota of 2 phones");
        // Admitting a phone again (a restart, a move) replaces its own record: still 2.
        assert_eq!(s.admit("bob", 64 * MIB).unwrap().phones, 2);
        assert_eq!(s.tenants().unwrap()[0].phones, 2, "the refused phone was not recorded");
        // A released phone makes room.
        s.release("ann").unwrap();
        assert_eq!(s.admit("cat", 64 * MIB).unwrap().phones, 2);
        assert!(matches!(s.admit("ghost", 1), Err(ControlError::NotFound { what: "user", .. })));
        assert!(matches!(s.release("ghost"), Err(ControlError::NotFound { what: "user", .. })));
    }

    /// Conformance case (store/conformance.rs).
    pub(crate) fn admission_refuses_past_the_memory_quota_and_users_without_tenant_are_unlimited(s: &dyn Store) {
        s.create_tenant(&tenant("tiny", None, Some(96 * MIB))).unwrap();
        s.create_user_in("ann", Some("tiny")).unwrap();
        s.create_user_in("bob", Some("tiny")).unwrap();
        assert_eq!(s.admit("ann", 64 * MIB).unwrap().memory_bytes, 64 * MIB);
        let refused = s.admit("bob", 64 * MIB).unwrap_err();
        assert_eq!(refused.to_string(), "tenant \"tiny\" would use 128 MiB of its 96 MiB memory quota");
        assert_eq!(s.admit("bob", 32 * MIB).unwrap().memory_bytes, 96 * MIB, "exactly the quota fits");

        s.create_user("solo").unwrap();
        for _ in 0..3 {
            let admitted = s.admit("solo", 1 << 40).unwrap();
            assert_eq!((admitted.tenant, admitted.phones), (None, 1));
        }
    }

    /// Conformance case (store/conformance.rs).
    pub(crate) fn image_versions_increase_and_roll_back_to_the_previous_one(s: &dyn Store) {
        assert!(matches!(s.rollback_image("phone"), Err(ControlError::NotFound { what: "image", .. })));
        assert!(matches!(s.publish_image("phone", b"not wasm"), Err(ControlError::BadRequest(_))));
        let v1 = s.publish_image("phone", &wasm(1)).unwrap();
        assert_eq!((v1.version, v1.current, v1.hash.clone()), (1, true, blake3::hash(&wasm(1)).to_hex().to_string()));
        let again = s.publish_image("phone", &wasm(1)).unwrap();
        assert_eq!(again.version, 1, "publishing the current bytes again is a no-op");
        let only = s.rollback_image("phone").unwrap_err();
        assert!(matches!(only, ControlError::Refused(_)), "{only:?}");
        assert_eq!(only.status(), axum::http::StatusCode::CONFLICT);

        let v2 = s.publish_image("phone", &wasm(2)).unwrap();
        assert_eq!((v2.version, v2.current), (2, true));
        s.create_user("ann").unwrap();
        assert_eq!(s.user_image("ann").unwrap().1.map(|i| i.version), Some(2));

        let back = s.rollback_image("phone").unwrap();
        assert_eq!((back.version, back.current, back.withdrawn), (1, true, false));
        assert_eq!(s.user_image("ann").unwrap().1.map(|i| (i.version, i.hash)), Some((1, v1.hash.clone())));
        let listed = s.images().unwrap();
        assert_eq!(
            listed.iter().map(|v| (v.version, v.current, v.withdrawn)).collect::<Vec<_>>(),
            [(1, true, false), (2, false, true)]
        );
        // A withdrawn version stays downloadable (phones still on it move between sites), and the next
        // publication gets a new number even with the same bytes.
        assert_eq!(s.image_wasm("phone", 2).unwrap(), Some(wasm(2)));
        assert_eq!(s.image_wasm("phone", 9).unwrap(), None);
        assert_eq!(s.publish_image("phone", &wasm(2)).unwrap().version, 3);
    }

    /// Conformance case (store/conformance.rs).
    pub(crate) fn a_user_runs_their_tenants_image_or_the_default(s: &dyn Store) {
        s.create_tenant(&TenantRequest { image: Some("office".into()), ..tenant("acme", None, None) }).unwrap();
        s.create_user_in("ann", Some("acme")).unwrap();
        s.create_user("bob").unwrap();
        s.publish_image("phone", &wasm(1)).unwrap();
        assert_eq!(s.user_image("ann").unwrap(), ("office".to_owned(), None), "office has no version yet");
        assert_eq!(s.user_image("bob").unwrap().1.map(|i| i.name), Some("phone".to_owned()));
        let office = s.publish_image("office", &wasm(7)).unwrap();
        assert_eq!(s.user_image("ann").unwrap().1.map(|i| i.hash), Some(office.hash));
        assert!(matches!(s.user_image("ghost"), Err(ControlError::NotFound { what: "user", .. })));
    }

    /// Conformance case: admissions racing for a tenant's last places never go past its quota.
    pub(crate) fn racing_admissions_never_pass_the_quota(s: &dyn Store) {
        s.create_tenant(&tenant("acme", Some(3), None)).unwrap();
        let users: Vec<String> = (0..8).map(|i| format!("user-{i}")).collect();
        for user in &users {
            s.create_user_in(user, Some("acme")).unwrap();
        }
        let results = std::thread::scope(|scope| {
            let racers: Vec<_> = users.iter().map(|u| scope.spawn(move || s.admit(u, MIB))).collect();
            racers.into_iter().map(|r| r.join().expect("racer")).collect::<Vec<_>>()
        });
        let admitted = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(admitted, 3, "{results:?}");
        assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, ControlError::Quota(_))));
        assert_eq!(s.tenants().unwrap()[0].phones, 3);
    }
}
