//! Who is calling, and what the services remember of it: [`Principal`], the [`AuditEntry`] log, site
//! enrollment, and the credential file the CLI reads (docs/SECURITY.md).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Header a site or the control service sends to say which machine it is; the service believes the claim only
/// when the caller's TLS client certificate names that machine (docs/SECURITY.md).
pub const PEER_HEADER: &str = "vmi-peer";

/// Who made a request, as the service that received it established (authentication), before it decides
/// whether the caller may do it (authorization).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Principal {
    /// The provider's operator: every site, tenant and user.
    Operator {
        /// The credential's name.
        name: String,
    },
    /// A tenant's administrator: the tenant's users, their devices and their phones.
    TenantAdmin {
        /// The tenant.
        tenant: String,
        /// The credential's name.
        name: String,
    },
    /// A paired terminal: its own user's phone only.
    Device {
        /// The device's user.
        user: String,
        /// The device.
        device_id: u64,
    },
    /// An edge site, proven by its certificate.
    Site {
        /// The site's id.
        id: String,
    },
    /// A control service replica, proven by its certificate.
    Control,
    /// No credential presented.
    Anonymous,
}

impl Principal {
    /// The user a device principal belongs to.
    pub fn device_user(&self) -> Option<&str> {
        match self {
            Principal::Device { user, .. } => Some(user),
            _ => None,
        }
    }

    /// Whether this is the provider's operator.
    pub fn is_operator(&self) -> bool {
        matches!(self, Principal::Operator { .. })
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Operator { name } => write!(f, "operator:{name}"),
            Principal::TenantAdmin { tenant, name } => write!(f, "tenant-admin:{tenant}/{name}"),
            Principal::Device { user, device_id } => write!(f, "device:{user}/{device_id}"),
            Principal::Site { id } => write!(f, "site:{id}"),
            Principal::Control => f.write_str("control"),
            Principal::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// The principal a machine claims in [`PEER_HEADER`], and the identity name its TLS certificate must carry for
/// the claim to count: `control` → `control.vmi`, `site/ID` → `ID.site.vmi`. `None` for anything else.
pub fn claimed_machine(claim: &str) -> Option<(Principal, String)> {
    if claim == "control" {
        return Some((Principal::Control, vmi_trust::CONTROL_NAME.to_owned()));
    }
    let id = claim.strip_prefix("site/")?;
    let name = vmi_trust::site_name(id).ok()?;
    Some((Principal::Site { id: id.to_owned() }, name))
}

/// The token of an `Authorization` header's value `Bearer TOKEN` (the scheme in any case); `None` for another
/// scheme or an empty token.
pub fn bearer_of(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// One line of the audit log: an operator's action or a refusal for security reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditEntry {
    /// Position in the log (0 in an entry a site reports; the control service numbers it).
    #[serde(default)]
    pub id: u64,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// Who ([`Principal`]'s display form, or `anonymous`).
    pub principal: String,
    /// What: `METHOD /path` of the request, or an event: `FAILOVER` (the placer moved a phone to its standby copy), `CRASH` (a phone crashed on `site`).
    pub action: String,
    /// The user acted on, when the request names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The site acted on, or where the entry was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The caller's address.
    pub from: String,
    /// The answer's status code.
    pub status: u16,
    /// Why it was refused, or what was done.
    #[serde(default)]
    pub detail: String,
}

/// Most entries one `GET /v1/audit` returns.
pub const MAX_AUDIT_LISTED: usize = 1000;
/// Most entries one site report carries.
pub const MAX_AUDIT_REPORTED: usize = 500;

/// Filters of `GET /v1/audit` (all optional, all must match).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditQuery {
    /// Entries naming this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Entries naming this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Entries by this principal (display form, e.g. `operator:admin`, or a prefix such as `device:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Entries at or after this time, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// Entries before this time, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// Most entries, newest first (default 100, at most [`MAX_AUDIT_LISTED`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Answer of `POST /v1/sites/{id}/join-token`: a one-time token a new site enrolls with.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JoinToken {
    /// The site it enrolls.
    pub site: String,
    /// The secret (shown once; the service keeps its hash).
    pub token: String,
    /// When it stops working, ms since the Unix epoch.
    pub expires_ms: u64,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken").field("site", &self.site).field("expires_ms", &self.expires_ms).finish()
    }
}

/// Body of `POST /v1/sites/{id}/enroll`: the join token and the site's public key (its private key never
/// leaves it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EnrollRequest {
    /// The one-time join token.
    pub token: String,
    /// The site's P-256 public key, uncompressed point, lowercase hex.
    pub public_key: String,
    /// Hosts (IPs or DNS names) the site is also reachable at, put in its certificate.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// Answer of `POST /v1/sites/{id}/enroll`: the site's certificate and the provider CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Enrollment {
    /// The site's certificate, PEM.
    pub cert_pem: String,
    /// The provider CA's certificate, PEM.
    pub ca_pem: String,
}

/// Body of `POST /v1/tenants/{name}/admins`: a name for the new tenant-admin credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AdminRequest {
    /// The credential's name.
    pub name: String,
}

/// A new operator or tenant-admin credential: its token, shown once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NewCredential {
    /// Who it makes its holder.
    pub principal: Principal,
    /// The bearer token.
    pub token: String,
}

impl fmt::Debug for NewCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewCredential").field("principal", &self.principal).field("token", &"<redacted>").finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_read_as_their_kind_and_name() {
        assert_eq!(Principal::Operator { name: "admin".into() }.to_string(), "operator:admin");
        assert_eq!(Principal::Device { user: "ann".into(), device_id: 3 }.to_string(), "device:ann/3");
        let json = serde_json::to_string(&Principal::Site { id: "site-a".into() }).expect("json");
        assert_eq!(json, r#"{"kind":"site","id":"site-a"}"#);
        let back: Principal = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, Principal::Site { id: "site-a".into() });
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let token = JoinToken { site: "s".into(), token: "secret-123".into(), expires_ms: 1 };
        assert!(!format!("{token:?}").contains("secret-123"));
        let cred = NewCredential { principal: Principal::Control, token: "secret-456".into() };
        assert!(!format!("{cred:?}").contains("secret-456"));
    }
}

#[cfg(test)]
mod claim_tests {
    use super::*;

    #[test]
    fn claims_name_the_identity_a_certificate_must_carry() {
        assert_eq!(claimed_machine("control"), Some((Principal::Control, "control.vmi".into())));
        assert_eq!(
            claimed_machine("site/site-a"),
            Some((Principal::Site { id: "site-a".into() }, "site-a.site.vmi".into()))
        );
        for bad in ["site/", "site/a.b", "operator", "Control", ""] {
            assert_eq!(claimed_machine(bad), None, "{bad:?}");
        }
        assert_eq!(bearer_of("Bearer abc"), Some("abc"));
        assert_eq!(bearer_of("bearer  abc "), Some("abc"));
        assert_eq!(bearer_of("Basic abc"), None);
        assert_eq!(bearer_of("Bearer "), None);
    }
}
