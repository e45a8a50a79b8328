//! Who may call: operator and tenant-admin credentials, sites' one-time join tokens, and the audit log.
//!
//! Secrets are stored as [`token_hash`]es only, like device tokens.

use rusqlite::{Connection, OptionalExtension, params};
use vmi_control_api::auth::{AuditEntry, AuditQuery, JoinToken, MAX_AUDIT_LISTED, NewCredential, Principal};

use super::{generate_token, tenants, token_hash, users};
use crate::ControlError;
use crate::validate::{validate_id, validate_label};

/// Entries `GET /v1/audit` lists when the query names no limit.
pub const DEFAULT_AUDIT_LISTED: usize = 100;

/// How a bearer credential for `principal` is stored: its kind, name and tenant (both stores keep these).
pub(super) fn credential_parts(
    principal: &Principal,
) -> Result<(&'static str, &String, Option<&String>), ControlError> {
    match principal {
        Principal::Operator { name } => Ok(("operator", name, None)),
        Principal::TenantAdmin { tenant, name } => Ok(("tenant-admin", name, Some(tenant))),
        other => Err(ControlError::BadRequest(format!("{other} is not a principal with a bearer credential"))),
    }
}

/// The principal a stored credential of `kind` names (`None` for a kind this build does not know).
pub(super) fn credential_principal(kind: &str, name: String, tenant: Option<String>) -> Option<Principal> {
    match (kind, tenant) {
        ("operator", _) => Some(Principal::Operator { name }),
        ("tenant-admin", Some(tenant)) => Some(Principal::TenantAdmin { tenant, name }),
        _ => None,
    }
}

pub(super) fn create_credential(conn: &mut Connection, principal: &Principal) -> Result<NewCredential, ControlError> {
    let (kind, name, tenant) = credential_parts(principal)?;
    validate_label("credential name", name)?;
    let token = generate_token()?;
    let hash = token_hash(&token).expect("generated tokens are well-formed");
    let tx = conn.transaction()?;
    if let Some(tenant) = tenant
        && tenants::tenant(&tx, tenant)?.is_none()
    {
        return Err(ControlError::not_found("tenant", tenant));
    }
    tx.execute(
        "INSERT INTO credentials (kind, name, tenant, token_hash, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![kind, name, tenant, hash, super::now_ms()],
    )?;
    tx.commit()?;
    Ok(NewCredential { principal: principal.clone(), token })
}

pub(super) fn has_operator(conn: &Connection) -> Result<bool, ControlError> {
    let found = conn
        .query_row("SELECT 1 FROM credentials WHERE kind = 'operator' AND revoked = 0 LIMIT 1", [], |_| Ok(()))
        .optional()?;
    Ok(found.is_some())
}

/// The principal a bearer token makes its holder: a device, an operator or a tenant admin.
pub(super) fn principal(conn: &Connection, token: &str) -> Result<Option<Principal>, ControlError> {
    if let Some(identity) = users::authenticate(conn, token)? {
        return Ok(Some(Principal::Device { user: identity.user, device_id: identity.device_id }));
    }
    let Some(hash) = token_hash(token) else { return Ok(None) };
    let row: Option<(String, String, Option<String>)> = conn
        .query_row("SELECT kind, name, tenant FROM credentials WHERE token_hash = ?1 AND revoked = 0", [hash], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    Ok(row.and_then(|(kind, name, tenant)| credential_principal(&kind, name, tenant)))
}

pub(super) fn create_join_token(
    conn: &Connection,
    site: &str,
    now_ms: u64,
    ttl_ms: u64,
) -> Result<JoinToken, ControlError> {
    validate_id("site id", site)?;
    let token = generate_token()?;
    let hash = token_hash(&token).expect("generated tokens are well-formed");
    let expires_ms = now_ms.saturating_add(ttl_ms);
    conn.execute("DELETE FROM join_tokens WHERE expires_ms <= ?1", [now_ms])?;
    conn.execute(
        "INSERT INTO join_tokens (site, token_hash, expires_ms) VALUES (?1, ?2, ?3)",
        params![site, hash, expires_ms],
    )?;
    Ok(JoinToken { site: site.to_owned(), token, expires_ms })
}

/// Takes a join token (it works once, for the site it was made for, before it expires); whether it was valid.
pub(super) fn redeem_join_token(conn: &Connection, site: &str, token: &str, now_ms: u64) -> Result<bool, ControlError> {
    let Some(hash) = token_hash(token) else { return Ok(false) };
    let taken = conn.execute(
        "DELETE FROM join_tokens WHERE token_hash = ?1 AND site = ?2 AND expires_ms > ?3",
        params![hash, site, now_ms],
    )?;
    Ok(taken == 1)
}

pub(super) fn record_audit(conn: &mut Connection, entries: &[AuditEntry]) -> Result<(), ControlError> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare(
            "INSERT INTO audit (at_ms, principal, action, user, site, from_addr, status, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for e in entries {
            insert.execute(params![e.at_ms, e.principal, e.action, e.user, e.site, e.from, e.status, e.detail])?;
        }
    }
    tx.commit()?;
    Ok(())
}

pub(super) fn audit(conn: &Connection, query: &AuditQuery) -> Result<Vec<AuditEntry>, ControlError> {
    let limit = query.limit.unwrap_or(DEFAULT_AUDIT_LISTED);
    if !(1..=MAX_AUDIT_LISTED).contains(&limit) {
        return Err(ControlError::BadRequest(format!("limit must be 1 to {MAX_AUDIT_LISTED}")));
    }
    // A principal filter matches the whole name or, ending in ':' or '/', every name it begins.
    let principal_like = query.principal.as_ref().map(|p| {
        let escaped = p.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        if p.ends_with(':') || p.ends_with('/') { format!("{escaped}%") } else { escaped }
    });
    let mut stmt = conn.prepare(
        "SELECT id, at_ms, principal, action, user, site, from_addr, status, detail FROM audit
         WHERE (?1 IS NULL OR user = ?1) AND (?2 IS NULL OR site = ?2)
           AND (?3 IS NULL OR principal LIKE ?3 ESCAPE '\\')
           AND (?4 IS NULL OR at_ms >= ?4) AND (?5 IS NULL OR at_ms < ?5)
         ORDER BY id DESC LIMIT ?6",
    )?;
    let rows = stmt.query_map(
        params![query.user, query.site, principal_like, query.since_ms, query.until_ms, limit as i64],
        |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                at_ms: r.get(1)?,
                principal: r.get(2)?,
                action: r.get(3)?,
                user: r.get(4)?,
                site: r.get(5)?,
                from: r.get(6)?,
                status: r.get(7)?,
                detail: r.get(8)?,
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The user a device belongs to, if the device exists.
pub(super) fn device_user(conn: &Connection, device_id: u64) -> Result<Option<String>, ControlError> {
    Ok(conn.query_row("SELECT user FROM devices WHERE id = ?1", [device_id], |row| row.get(0)).optional()?)
}

#[cfg(test)]
pub(super) mod tests {
    use vmi_control_api::auth::{AuditEntry, AuditQuery, Principal};
    use vmi_control_api::tenants::TenantRequest;

    use crate::ControlError;
    use crate::store::Store;

    /// Conformance case (store/conformance.rs).
    pub(crate) fn operator_and_tenant_admin_tokens_name_their_principal(s: &dyn Store) {
        assert!(!s.has_operator().unwrap());
        let op = s.create_credential(&Principal::Operator { name: "admin".into() }).unwrap();
        assert!(s.has_operator().unwrap());
        assert_eq!(s.principal(&op.token).unwrap(), Some(Principal::Operator { name: "admin".into() }));

        let admin = Principal::TenantAdmin { tenant: "acme".into(), name: "it".into() };
        assert!(matches!(s.create_credential(&admin), Err(ControlError::NotFound { what: "tenant", .. })));
        s.create_tenant(&TenantRequest { name: "acme".into(), ..TenantRequest::default() }).unwrap();
        let it = s.create_credential(&admin).unwrap();
        assert_eq!(s.principal(&it.token).unwrap(), Some(admin));
        assert!(s.create_credential(&Principal::Site { id: "site-a".into() }).is_err(), "sites hold certificates");

        s.create_user("ann").unwrap();
        let phone = s.create_device("ann", "pixel").unwrap();
        assert_eq!(s.principal(&phone.token).unwrap(), Some(Principal::Device { user: "ann".into(), device_id: 1 }));
        assert_eq!(s.principal(&"0".repeat(64)).unwrap(), None);
        assert_eq!(s.principal("short").unwrap(), None);
    }

    /// Conformance case (store/conformance.rs).
    pub(crate) fn a_join_token_works_once_for_its_site_before_it_expires(s: &dyn Store) {
        let t = s.create_join_token("site-a", 1_000, 500).unwrap();
        assert!(!s.redeem_join_token("site-b", &t.token, 1_100).unwrap(), "another site");
        assert!(!s.redeem_join_token("site-a", &t.token, 1_500).unwrap(), "expired");
        let t = s.create_join_token("site-a", 2_000, 500).unwrap();
        assert!(s.redeem_join_token("site-a", &t.token, 2_100).unwrap());
        assert!(!s.redeem_join_token("site-a", &t.token, 2_100).unwrap(), "used");
    }

    /// Conformance case (store/conformance.rs).
    pub(crate) fn the_audit_log_filters_by_user_site_principal_and_time(s: &dyn Store) {
        let entry = |at_ms, principal: &str, user: Option<&str>, site: Option<&str>| AuditEntry {
            id: 0,
            at_ms,
            principal: principal.into(),
            action: "POST /x".into(),
            user: user.map(Into::into),
            site: site.map(Into::into),
            from: "127.0.0.1".into(),
            status: 403,
            detail: String::new(),
        };
        s.record_audit(&[
            entry(10, "operator:admin", Some("ann"), None),
            entry(20, "device:bob/2", Some("ann"), Some("site-a")),
            entry(30, "anonymous", None, Some("site-b")),
        ])
        .unwrap();
        let ats = |q: AuditQuery| s.audit(&q).unwrap().into_iter().map(|e| e.at_ms).collect::<Vec<_>>();
        assert_eq!(ats(AuditQuery::default()), [30, 20, 10], "newest first");
        assert_eq!(ats(AuditQuery { user: Some("ann".into()), ..Default::default() }), [20, 10]);
        assert_eq!(ats(AuditQuery { site: Some("site-b".into()), ..Default::default() }), [30]);
        assert_eq!(ats(AuditQuery { principal: Some("device:".into()), ..Default::default() }), [20]);
        assert_eq!(ats(AuditQuery { principal: Some("device".into()), ..Default::default() }), [] as [u64; 0]);
        assert_eq!(ats(AuditQuery { since_ms: Some(20), until_ms: Some(30), ..Default::default() }), [20]);
        assert_eq!(ats(AuditQuery { limit: Some(1), ..Default::default() }), [30]);
        assert!(s.audit(&AuditQuery { limit: Some(0), ..Default::default() }).is_err());
    }
}
