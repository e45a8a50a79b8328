//! Users, their devices and the devices' tokens.

use rusqlite::{Connection, OptionalExtension, params};
use vmi_control_api::model::{Device, Identity, NewDevice, User};

use super::tenants;
use super::{generate_token, now_ms, token_hash};
use crate::ControlError;
use crate::validate::{validate_id, validate_label};

fn user_exists(conn: &Connection, name: &str) -> Result<bool, ControlError> {
    Ok(conn.query_row("SELECT 1 FROM users WHERE name = ?1", [name], |_| Ok(())).optional()?.is_some())
}

/// [`ControlError::NotFound`] unless the user exists.
pub(super) fn require_user(conn: &Connection, name: &str) -> Result<(), ControlError> {
    if user_exists(conn, name)? { Ok(()) } else { Err(ControlError::not_found("user", name)) }
}

pub(super) fn create_user_in(conn: &mut Connection, name: &str, tenant: Option<&str>) -> Result<User, ControlError> {
    validate_id("user name", name)?;
    let tx = conn.transaction()?;
    if let Some(tenant) = tenant
        && tenants::tenant(&tx, tenant)?.is_none()
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

pub(super) fn list_users(conn: &Connection) -> Result<Vec<User>, ControlError> {
    let mut stmt = conn.prepare("SELECT name, tenant FROM users ORDER BY name")?;
    let users =
        stmt.query_map([], |row| Ok(User { name: row.get(0)?, tenant: row.get(1)? }))?.collect::<Result<_, _>>()?;
    Ok(users)
}

pub(super) fn create_device(conn: &mut Connection, user: &str, name: &str) -> Result<NewDevice, ControlError> {
    validate_label("device name", name)?;
    let token = generate_token()?;
    let hash = token_hash(&token).expect("generated tokens are well-formed");
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

pub(super) fn list_devices(conn: &Connection, user: &str) -> Result<Vec<Device>, ControlError> {
    require_user(conn, user)?;
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

/// Revokes the device; whether it was valid until now.
pub(super) fn revoke_device(conn: &Connection, device_id: u64) -> Result<bool, ControlError> {
    let exists = conn.query_row("SELECT 1 FROM devices WHERE id = ?1", [device_id], |_| Ok(())).optional()?;
    if exists.is_none() {
        return Err(ControlError::not_found("device", device_id.to_string()));
    }
    Ok(conn.execute("UPDATE devices SET revoked = 1 WHERE id = ?1 AND revoked = 0", [device_id])? == 1)
}

pub(super) fn authenticate(conn: &Connection, token: &str) -> Result<Option<Identity>, ControlError> {
    let Some(hash) = token_hash(token) else { return Ok(None) };
    let identity = conn
        .query_row("SELECT user, id FROM devices WHERE token_hash = ?1 AND revoked = 0", [hash], |row| {
            Ok(Identity { user: row.get(0)?, device_id: row.get(1)? })
        })
        .optional()?;
    Ok(identity)
}

#[cfg(test)]
pub(super) mod tests {
    use crate::store::test_support::store;
    use vmi_control_api::model::{Identity, User};

    use crate::ControlError;
    use crate::store::{Store, token_hash};

    /// Conformance case (store/conformance.rs).
    pub(crate) fn users_are_unique_and_listed_by_name(s: &dyn Store) {
        assert_eq!(s.create_user("bob").unwrap(), User { name: "bob".into(), tenant: None });
        s.create_user("alice").unwrap();
        assert!(matches!(s.create_user("bob"), Err(ControlError::Conflict { what: "user", .. })));
        assert!(matches!(s.create_user("no/slash"), Err(ControlError::BadRequest(_))));
        let names: Vec<_> = s.list_users().unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["alice", "bob"]);
    }

    /// Conformance case (store/conformance.rs).
    pub(crate) fn device_tokens_authenticate_until_revoked(s: &dyn Store) {
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

        assert!(s.revoke_device(phone.device_id).unwrap(), "revoked now");
        assert!(!s.revoke_device(phone.device_id).unwrap(), "revoked already");
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

    /// Conformance case (store/conformance.rs).
    pub(crate) fn unknown_and_malformed_tokens_do_not_authenticate(s: &dyn Store) {
        assert_eq!(s.authenticate(&"0".repeat(64)).unwrap(), None);
        assert_eq!(s.authenticate("").unwrap(), None);
        assert_eq!(s.authenticate(&"zz".repeat(32)).unwrap(), None);
        assert_eq!(s.authenticate(&"é".repeat(32)).unwrap(), None);
    }

    /// Conformance case (store/conformance.rs).
    pub(crate) fn devices_need_an_existing_user(s: &dyn Store) {
        assert!(matches!(s.create_device("ghost", "x"), Err(ControlError::NotFound { what: "user", .. })));
        assert!(matches!(s.list_devices("ghost"), Err(ControlError::NotFound { what: "user", .. })));
        assert!(matches!(s.revoke_device(42), Err(ControlError::NotFound { what: "device", .. })));
        s.create_user("alice").unwrap();
        assert!(matches!(s.create_device("alice", ""), Err(ControlError::BadRequest(_))));
    }
}
