//! Tenants with quotas, admission of phones against them, and managed image versions.
//!
//! - A **tenant** (a small business) groups users. Its quotas cap how many phones its users run at once
//!   (`max_phones`) and how much memory those phones may use together (`max_memory_bytes`); `None` is unlimited.
//!   It names the image its phones run (`image`, "phone" by default). A user without a tenant has no quotas and
//!   runs [`DEFAULT_IMAGE`].
//! - **Admission**: before a site boots a phone it asks the control service to admit it with its memory limit
//!   (`POST /v1/users/{user}/admit`). The admission is recorded on the user (`phone_memory_bytes`) and counts
//!   against the tenant until released. A tenant's phones are its *admitted* users (not its placed users: a
//!   placement is set before the phone boots, and may exist with no phone at all); its memory is the sum of
//!   their admitted memory limits. Admitting a user again (a restart, a migration) replaces their own record, so
//!   it never counts twice. Lowering a quota below what is in use refuses new admissions only.
//! - **Images** are published in versions: `POST /v1/images/{name}/versions` with the wasm bytes assigns the next
//!   version number. The *current* version of a name is its newest one not withdrawn. A rollback withdraws the
//!   current version, so the one before becomes current; it is refused when no earlier version is left. Withdrawn
//!   versions stay downloadable: phones still on them must be able to move between sites until they restart.

use serde::{Deserialize, Serialize};

use crate::ControlError;
use crate::model::validate_id;

/// The image a user without a tenant runs, and a new tenant's image unless it names another.
pub const DEFAULT_IMAGE: &str = "phone";

/// Largest image accepted by `POST /v1/images/{name}/versions`, in bytes.
pub const MAX_IMAGE_BYTES: usize = 32 << 20;

/// A tenant and its quotas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Unique name, e.g. "acme".
    pub name: String,
    /// Most phones its users may run at once; `None`: unlimited.
    pub max_phones: Option<u32>,
    /// Most memory its phones may use together, in bytes (the sum of their memory limits); `None`: unlimited.
    pub max_memory_bytes: Option<u64>,
    /// Name of the image its phones run.
    pub image: String,
}

/// A tenant with what it uses now, as listed by `GET /v1/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantStatus {
    /// The tenant.
    #[serde(flatten)]
    pub tenant: Tenant,
    /// Admitted phones.
    pub phones: u32,
    /// Sum of the admitted phones' memory limits, in bytes.
    pub memory_bytes: u64,
}

/// Body of `POST /v1/tenants` (a new tenant) and `PUT /v1/tenants/{name}` (its quotas; `name` is ignored there).
///
/// `PUT` replaces every quota: an absent quota becomes unlimited, an absent image becomes [`DEFAULT_IMAGE`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRequest {
    /// The tenant's name (for `POST`).
    #[serde(default)]
    pub name: String,
    /// Most phones at once; absent or `null`: unlimited.
    #[serde(default)]
    pub max_phones: Option<u32>,
    /// Most memory of all phones together, in bytes; absent or `null`: unlimited.
    #[serde(default)]
    pub max_memory_bytes: Option<u64>,
    /// Image name; absent: [`DEFAULT_IMAGE`].
    #[serde(default)]
    pub image: Option<String>,
}

/// Body of `POST /v1/users`: a name and, optionally, the tenant the user belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRequest {
    /// The user's name.
    pub name: String,
    /// An existing tenant; absent: no tenant (no quotas, the default image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// Body of `POST /v1/users/{user}/admit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmitRequest {
    /// The memory limit the phone will run with, in bytes.
    pub memory_bytes: u64,
}

/// A phone admitted: what its tenant uses now, this phone included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The admitted user.
    pub user: String,
    /// The user's tenant, if any.
    pub tenant: Option<String>,
    /// Admitted phones of the tenant (1 for a user without one).
    pub phones: u32,
    /// Their memory limits together, in bytes.
    pub memory_bytes: u64,
}

/// One published version of an image, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageVersion {
    /// Image name, e.g. "phone".
    pub name: String,
    /// Version number: 1, 2, ... in order of publication.
    pub version: u64,
    /// blake3 of the wasm bytes, lowercase hex (the engine's image hash).
    pub hash: String,
    /// Size of the wasm bytes.
    pub size_bytes: u64,
    /// When it was published, milliseconds since the Unix epoch.
    pub published_ms: u64,
    /// Rolled back: never current again.
    pub withdrawn: bool,
    /// The version phones of this image move to on their next restart.
    pub current: bool,
}

/// The image version a user's phone should run now, as returned by `GET /v1/users/{user}/image`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserImage {
    /// Image name.
    pub name: String,
    /// Current version.
    pub version: u64,
    /// blake3 of its wasm bytes, lowercase hex.
    pub hash: String,
}

/// Checks a tenant request's name (when `check_name`) and image name.
pub(crate) fn validate_tenant(req: &TenantRequest, check_name: bool) -> Result<String, ControlError> {
    if check_name {
        validate_id("tenant name", &req.name)?;
    }
    let image = req.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.to_owned());
    validate_id("image name", &image)?;
    if let Some(max) = req.max_memory_bytes
        && max > i64::MAX as u64
    {
        return Err(ControlError::BadRequest(format!("max_memory_bytes must be at most {}", i64::MAX)));
    }
    Ok(image)
}

/// Checks that `wasm` could be a WebAssembly module: not empty, not too large, magic and version 1. What it
/// contains (the guest ABI) is checked by the sites' engine when it loads the image.
pub(crate) fn validate_wasm(wasm: &[u8]) -> Result<(), ControlError> {
    if wasm.len() > MAX_IMAGE_BYTES {
        return Err(ControlError::BadRequest(format!("an image may be at most {MAX_IMAGE_BYTES} bytes")));
    }
    if wasm.len() < 8 || wasm[..4] != *b"\0asm" || wasm[4..8] != [1, 0, 0, 0] {
        return Err(ControlError::BadRequest(
            "the body is not a WebAssembly module (expected the \\0asm magic and version 1)".to_owned(),
        ));
    }
    Ok(())
}

/// Bytes as people read quotas: "64 MiB", "1.5 MiB", "512 KiB", "100 bytes".
pub fn format_bytes(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    const KIB: u64 = 1 << 10;
    if bytes >= MIB {
        if bytes.is_multiple_of(MIB) {
            format!("{} MiB", bytes / MIB)
        } else {
            format!("{:.1} MiB", bytes as f64 / MIB as f64)
        }
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// "1 phone", "2 phones".
pub(crate) fn phones(n: u64) -> String {
    if n == 1 { "1 phone".to_owned() } else { format!("{n} phones") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SqliteStore, Store};

    const MIB: u64 = 1 << 20;

    fn store() -> SqliteStore {
        SqliteStore::in_memory().expect("in-memory store")
    }

    fn tenant(name: &str, max_phones: Option<u32>, max_memory_bytes: Option<u64>) -> TenantRequest {
        TenantRequest { name: name.into(), max_phones, max_memory_bytes, image: None }
    }

    /// A tiny valid module header plus a marker, so each "version" has other bytes.
    fn wasm(marker: u8) -> Vec<u8> {
        vec![0, b'a', b's', b'm', 1, 0, 0, 0, 0, 2, 1, marker]
    }

    #[test]
    fn tenants_are_created_once_updated_and_listed_with_usage() {
        let s = store();
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

        let updated = s
            .update_tenant("acme", &TenantRequest { image: Some("office".into()), ..tenant("", Some(5), None) })
            .unwrap();
        assert_eq!((updated.max_phones, updated.max_memory_bytes, updated.image.as_str()), (Some(5), None, "office"));
        assert!(matches!(s.update_tenant("ghost", &tenant("", None, None)), Err(ControlError::NotFound { .. })));
        let listed = s.tenants().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].phones, listed[0].memory_bytes), (1, 48 * MIB));
        assert_eq!(listed[0].tenant, updated);
    }

    #[test]
    fn admission_refuses_past_the_phone_quota_with_a_clear_message() {
        let s = store();
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

    #[test]
    fn admission_refuses_past_the_memory_quota_and_users_without_tenant_are_unlimited() {
        let s = store();
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

    #[test]
    fn image_versions_increase_and_roll_back_to_the_previous_one() {
        let s = store();
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

    #[test]
    fn a_user_runs_their_tenants_image_or_the_default() {
        let s = store();
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

    #[test]
    fn bytes_read_like_quotas() {
        assert_eq!(format_bytes(64 << 20), "64 MiB");
        assert_eq!(format_bytes(3 << 19), "1.5 MiB");
        assert_eq!(format_bytes(512 << 10), "512 KiB");
        assert_eq!(format_bytes(100), "100 bytes");
    }

    #[test]
    fn only_wasm_modules_are_published() {
        assert!(validate_wasm(b"\0asm\x01\0\0\0").is_ok());
        for bad in [&b""[..], b"\0asm", b"ELF\x7f\x01\0\0\0", b"\0asm\x0d\0\x01\0"] {
            assert!(matches!(validate_wasm(bad), Err(ControlError::BadRequest(_))), "{bad:?}");
        }
    }
}

/// The SQL behind the [`Store`](crate::Store) methods for tenants, admission and images; each function runs in
/// the connection or transaction it is given.
pub(crate) mod db {
    use rusqlite::{Connection, OptionalExtension, params};

    use super::*;
    use crate::store::now_ms;

    fn tenant_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Tenant> {
        Ok(Tenant { name: row.get(0)?, max_phones: row.get(1)?, max_memory_bytes: row.get(2)?, image: row.get(3)? })
    }

    pub(crate) fn tenant(conn: &Connection, name: &str) -> Result<Option<Tenant>, ControlError> {
        let sql = "SELECT name, max_phones, max_memory_bytes, image FROM tenants WHERE name = ?1";
        Ok(conn.query_row(sql, [name], tenant_row).optional()?)
    }

    pub(crate) fn create_tenant(conn: &Connection, req: &TenantRequest) -> Result<Tenant, ControlError> {
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

    pub(crate) fn update_tenant(conn: &Connection, name: &str, req: &TenantRequest) -> Result<Tenant, ControlError> {
        let image = validate_tenant(req, false)?;
        let changed = conn.execute(
            "UPDATE tenants SET max_phones = ?2, max_memory_bytes = ?3, image = ?4 WHERE name = ?1",
            params![name, req.max_phones, req.max_memory_bytes, image],
        )?;
        if changed == 0 {
            return Err(ControlError::not_found("tenant", name));
        }
        Ok(Tenant { name: name.to_owned(), max_phones: req.max_phones, max_memory_bytes: req.max_memory_bytes, image })
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

    pub(crate) fn tenants(conn: &Connection) -> Result<Vec<TenantStatus>, ControlError> {
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
    pub(crate) fn tenant_of(conn: &Connection, user: &str) -> Result<Option<String>, ControlError> {
        conn.query_row("SELECT tenant FROM users WHERE name = ?1", [user], |row| row.get(0))
            .optional()?
            .ok_or_else(|| ControlError::not_found("user", user))
    }

    pub(crate) fn admit(conn: &Connection, user: &str, memory_bytes: u64) -> Result<Admission, ControlError> {
        if memory_bytes > i64::MAX as u64 {
            return Err(ControlError::BadRequest(format!("memory_bytes must be at most {}", i64::MAX)));
        }
        let tenant_name = tenant_of(conn, user)?;
        let (phones, memory) = match &tenant_name {
            Some(name) => {
                let tenant = tenant(conn, name)?.ok_or_else(|| ControlError::not_found("tenant", name))?;
                let (phones, memory) = usage(conn, name, user)?;
                if let Some(max) = tenant.max_phones
                    && phones + 1 > u64::from(max)
                {
                    return Err(ControlError::Quota(format!(
                        "tenant {name:?} is at its quota of {}",
                        super::phones(u64::from(max))
                    )));
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
                (phones + 1, wanted)
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

    pub(crate) fn release(conn: &Connection, user: &str) -> Result<(), ControlError> {
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

    pub(crate) fn publish(conn: &Connection, name: &str, wasm: &[u8]) -> Result<ImageVersion, ControlError> {
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
            conn.query_row("SELECT coalesce(max(version), 0) + 1 FROM images WHERE name = ?1", [name], |row| {
                row.get(0)
            })?;
        conn.execute(
            "INSERT INTO images (name, version, hash, wasm, published_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, next, hash, wasm, now_ms()],
        )?;
        version(conn, name, next)?.ok_or_else(|| ControlError::not_found("image", name))
    }

    pub(crate) fn images(conn: &Connection) -> Result<Vec<ImageVersion>, ControlError> {
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

    pub(crate) fn wasm(conn: &Connection, name: &str, version: u64) -> Result<Option<Vec<u8>>, ControlError> {
        Ok(conn
            .query_row("SELECT wasm FROM images WHERE name = ?1 AND version = ?2", params![name, version], |row| {
                row.get(0)
            })
            .optional()?)
    }

    pub(crate) fn rollback(conn: &Connection, name: &str) -> Result<ImageVersion, ControlError> {
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

    pub(crate) fn user_image(conn: &Connection, user: &str) -> Result<(String, Option<UserImage>), ControlError> {
        let image = match tenant_of(conn, user)? {
            Some(t) => tenant(conn, &t)?.map_or_else(|| DEFAULT_IMAGE.to_owned(), |t| t.image),
            None => DEFAULT_IMAGE.to_owned(),
        };
        let found = current(conn, &image)?.map(|(version, hash)| UserImage { name: image.clone(), version, hash });
        Ok((image, found))
    }
}
