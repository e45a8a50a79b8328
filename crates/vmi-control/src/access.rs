//! Every request is authenticated, then authorized, before its body is read (docs/SECURITY.md).
//!
//! - **Authentication** ([`authenticate`], a middleware on the whole router): a bearer token names a device, an
//!   operator or a tenant admin; a machine says which it is in the [`PEER_HEADER`] and its TLS client
//!   certificate must name it (`site-a.site.vmi`, `control.vmi`). A wrong secret is 401 and counts against the
//!   caller's address ([`Guard`]: after a few, 429 with `Retry-After`, doubling). The result is a [`Caller`] in
//!   the request's extensions. Operator actions and every refusal go to the audit log.
//! - **Authorization** (the rules below, as `route_layer`s in the router, so they run after routing and before
//!   any handler reads a body): who may call each route. Rules that depend on the body (a site may record only
//!   migrations it is party to) are checked in the handler, on a body from a caller already authenticated.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use vmi_control_api::auth::{AuditEntry, PEER_HEADER, Principal};
use vmi_trust::{Lockout, Peer, RateLimit};

use crate::http::AppState;
use crate::{ControlError, Store};

/// Failed secrets from one address before it is locked out.
pub const LOCKOUT_THRESHOLD: u32 = 5;
/// The first lockout; each further failure doubles it.
pub const LOCKOUT_BASE: Duration = Duration::from_secs(2);
/// The longest lockout.
pub const LOCKOUT_MAX: Duration = Duration::from_secs(300);
/// Refusals recorded in the audit log per address: one per this interval, after a burst.
const AUDIT_INTERVAL: Duration = Duration::from_millis(100);
/// Refusals recorded from one address at once before [`AUDIT_INTERVAL`] applies.
const AUDIT_BURST: u32 = 50;
/// Addresses the guard remembers.
const GUARD_KEYS: usize = 100_000;

/// Who made a request and from where: what [`authenticate`] established.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub principal: Principal,
    /// The caller's address; `None` for a request that did not come through a listener (in-process tests).
    pub from: Option<IpAddr>,
}

impl Caller {
    /// The caller's address as written in the audit log.
    pub fn from_text(&self) -> String {
        self.from.map_or_else(|| "in-process".to_owned(), |ip| ip.to_string())
    }

    /// 403 unless the caller is an operator.
    pub fn require_operator(&self) -> Result<(), ControlError> {
        if self.principal.is_operator() { Ok(()) } else { Err(forbidden(&self.principal, "only an operator may")) }
    }

    /// 403 unless the caller administers `user`: an operator, or an admin of the user's tenant.
    pub fn require_admin_of(&self, store: &dyn Store, user: &str) -> Result<(), ControlError> {
        match &self.principal {
            Principal::Operator { .. } => Ok(()),
            Principal::TenantAdmin { tenant, .. } if store.user_tenant(user)?.as_deref() == Some(tenant) => Ok(()),
            other => Err(forbidden(other, "only an operator or an admin of the user's tenant may")),
        }
    }

    /// 403 unless the caller is `user`'s own device or administers `user`.
    pub fn require_owner_of(&self, store: &dyn Store, user: &str) -> Result<(), ControlError> {
        match &self.principal {
            Principal::Device { user: own, .. } if own == user => Ok(()),
            Principal::Device { .. } => Err(forbidden(&self.principal, "a device may act only for its own user")),
            _ => self.require_admin_of(store, user),
        }
    }

    /// The site id, or 403 unless the caller is a site.
    pub fn require_site(&self) -> Result<&str, ControlError> {
        match &self.principal {
            Principal::Site { id } => Ok(id),
            other => Err(forbidden(other, "only a site may")),
        }
    }
}

fn forbidden(principal: &Principal, rule: &str) -> ControlError {
    ControlError::Forbidden(format!("{principal} may not do this: {rule}"))
}

/// Per-address lockout after failed secrets, and the rate of refusals written to the audit log.
pub struct Guard {
    lockout: Mutex<Lockout<Option<IpAddr>>>,
    audited: Mutex<RateLimit<Option<IpAddr>>>,
    clock: Arc<dyn Fn() -> Duration + Send + Sync>,
}

impl Guard {
    /// A guard on the system clock.
    pub fn new() -> Guard {
        let start = std::time::Instant::now();
        Guard::with_clock(Arc::new(move || start.elapsed()))
    }

    /// A guard on `clock` (monotonic time since any fixed start), for tests that drive time by hand.
    pub fn with_clock(clock: Arc<dyn Fn() -> Duration + Send + Sync>) -> Guard {
        Guard {
            lockout: Mutex::new(Lockout::new(LOCKOUT_THRESHOLD, LOCKOUT_BASE, LOCKOUT_MAX, GUARD_KEYS)),
            audited: Mutex::new(RateLimit::new(AUDIT_INTERVAL, AUDIT_BURST, GUARD_KEYS)),
            clock,
        }
    }

    /// 429 while `from` is locked out.
    pub fn check(&self, from: Option<IpAddr>) -> Result<(), ControlError> {
        let now = (self.clock)();
        let mut lockout = self.lockout.lock().unwrap_or_else(|p| p.into_inner());
        lockout.check(&from, now).map_err(|retry_after| ControlError::TooManyAttempts { retry_after })
    }

    /// Counts a wrong secret from `from`.
    pub fn failure(&self, from: Option<IpAddr>) {
        let now = (self.clock)();
        self.lockout.lock().unwrap_or_else(|p| p.into_inner()).failure(&from, now);
    }

    /// Whether a refusal from `from` is written to the audit log now (a flood is summarized in the log instead).
    fn audit_refusal(&self, from: Option<IpAddr>) -> bool {
        let now = (self.clock)();
        self.audited.lock().unwrap_or_else(|p| p.into_inner()).allow(&from, now).is_ok()
    }
}

impl Default for Guard {
    fn default() -> Self {
        Guard::new()
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    vmi_control_api::auth::bearer_of(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// The one route whose device may come from the cache of device tokens: a terminal's report (soft state, and
/// nearly all of a device's requests). Every other route asks the store, so that a revocation another replica
/// has not heard of yet cannot, say, mint a pairing code.
const CACHED_ROUTE: &str = "/v1/phone/report";

/// Who the request's credentials name; 401 for a wrong secret or an unproven claim, 429 while locked out.
/// `cacheable`: whether a device may come from the cache ([`CACHED_ROUTE`]).
fn principal_of(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<&Peer>,
    from: Option<IpAddr>,
    cacheable: bool,
) -> Result<Principal, ControlError> {
    if let Some(token) = bearer_token(headers) {
        state.guard.check(from)?;
        // The cache only while the store's revocations are current; its generation read before the lookup, so
        // that a revocation meanwhile keeps what the lookup found out of it.
        let hash = crate::store::token_hash(token)
            .filter(|_| cacheable && state.devices_followed && state.store.revocations_current());
        let miss = match hash.map(|hash| (hash, state.devices.get(&hash))) {
            Some((_, Ok(device))) => return Ok(device),
            Some((hash, Err(generation))) => Some((hash, generation)),
            None => None,
        };
        return match crate::off_the_runtime(|| state.store.principal(token))? {
            Some(principal) => {
                if let Some((hash, generation)) = miss {
                    state.devices.put(hash, &principal, generation);
                }
                Ok(principal)
            }
            None => {
                state.guard.failure(from);
                Err(ControlError::Unauthorized)
            }
        };
    }
    let Some(claim) = headers.get(PEER_HEADER) else { return Ok(Principal::Anonymous) };
    let claim = claim.to_str().map_err(|_| ControlError::Unauthorized)?;
    let (principal, name) = vmi_control_api::auth::claimed_machine(claim).ok_or(ControlError::Unauthorized)?;
    if peer.is_some_and(|peer| peer.is(&name)) { Ok(principal) } else { Err(ControlError::Unauthorized) }
}

/// The authentication middleware: resolves the [`Caller`], then writes operator actions and refusals to the
/// audit log once the answer is known.
pub(crate) async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<Peer>().cloned();
    let from = peer.as_ref().map(|p| p.addr.ip().to_canonical());
    let action = format!("{} {}", req.method(), req.uri().path());
    let (user, site) = subjects(req.uri().path());
    let mutation = req.method() != Method::GET && req.method() != Method::HEAD;
    let cacheable = req.method() == Method::POST && req.uri().path() == CACHED_ROUTE;
    let (principal, response) = match principal_of(&state, req.headers(), peer.as_ref(), from, cacheable) {
        Ok(principal) => {
            if matches!(principal, Principal::Operator { .. } | Principal::Site { .. } | Principal::Control) {
                // May continue a trace here (vmi_telemetry::trace::accept).
                req.extensions_mut().insert(vmi_telemetry::trace::Trusted);
            }
            req.extensions_mut().insert(Caller { principal: principal.clone(), from });
            (principal, next.run(req).await)
        }
        Err(refusal) => (Principal::Anonymous, refusal.into_response()),
    };
    let status = response.status();
    let refused = matches!(status.as_u16(), 401 | 403 | 429);
    let admin = matches!(principal, Principal::Operator { .. } | Principal::TenantAdmin { .. });
    if refused || (admin && mutation && status.is_success()) {
        if refused && !state.guard.audit_refusal(from) {
            tracing::warn!(%principal, %action, status = status.as_u16(), "refusal not audited: too many from this address");
            return response;
        }
        let entry = AuditEntry {
            id: 0,
            at_ms: (state.now_ms)(),
            principal: principal.to_string(),
            action,
            user,
            site,
            from: from.map_or_else(|| "in-process".to_owned(), |ip| ip.to_string()),
            status: status.as_u16(),
            detail: if refused { "refused".to_owned() } else { "done".to_owned() },
        };
        if let Err(e) = crate::off_the_runtime(|| state.store.record_audit(std::slice::from_ref(&entry))) {
            tracing::error!(error = %e, ?entry, "cannot write the audit log");
        }
    }
    response
}

/// The user and the site a path names (`/v1/users/{user}/…`, `/v1/sites/{id}/…`,
/// `/v1/users/{user}/checkpoints/{site}`), for the audit log.
fn subjects(path: &str) -> (Option<String>, Option<String>) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let after = |name: &str| segments.iter().position(|s| *s == name).and_then(|i| segments.get(i + 1));
    let user = after("users").map(|s| s.to_string());
    let site = after("sites").map(|s| s.to_string()).or_else(|| match segments.as_slice() {
        ["v1", "users", _, "checkpoints", site] => Some(site.to_string()),
        _ => None,
    });
    (user, site)
}

/// The [`Caller`] [`authenticate`] put in the request.
fn caller(req: &Request) -> Result<Caller, ControlError> {
    // Every route sits behind `authenticate`; a request without a caller is a wiring bug, refused safely.
    req.extensions().get::<Caller>().cloned().ok_or(ControlError::Unauthorized)
}

/// Rule: any authenticated caller (not anonymous).
pub(crate) async fn signed_in(req: Request, next: Next) -> Result<Response, ControlError> {
    match caller(&req)?.principal {
        Principal::Anonymous => Err(ControlError::Unauthorized),
        _ => Ok(next.run(req).await),
    }
}

/// Rule: the provider's operator.
pub(crate) async fn operator(req: Request, next: Next) -> Result<Response, ControlError> {
    authenticated(&req)?.require_operator()?;
    Ok(next.run(req).await)
}

/// Rule: an operator or a tenant admin (handlers narrow a tenant admin to their tenant).
pub(crate) async fn admin(req: Request, next: Next) -> Result<Response, ControlError> {
    let caller = authenticated(&req)?;
    match caller.principal {
        Principal::Operator { .. } | Principal::TenantAdmin { .. } => Ok(next.run(req).await),
        other => Err(forbidden(&other, "only an operator or a tenant admin may")),
    }
}

/// Rule: a device (acting for its own user; the handler takes the user from the token, never from the request).
pub(crate) async fn device(req: Request, next: Next) -> Result<Response, ControlError> {
    match authenticated(&req)?.principal {
        Principal::Device { .. } => Ok(next.run(req).await),
        other => Err(forbidden(&other, "only a paired device may")),
    }
}

/// Rule: a site.
pub(crate) async fn any_site(req: Request, next: Next) -> Result<Response, ControlError> {
    authenticated(&req)?.require_site()?;
    Ok(next.run(req).await)
}

/// Rule: the site the path names as `{id}` or `{site}`, itself.
pub(crate) async fn site_itself(
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
    next: Next,
) -> Result<Response, ControlError> {
    let caller = authenticated(&req)?;
    let named = params.iter().find(|(k, _)| k == "id" || k == "site").map(|(_, v)| v.as_str());
    match (&caller.principal, named) {
        (Principal::Site { id }, Some(named)) if id == named => Ok(next.run(req).await),
        (other, _) => Err(forbidden(other, "a site may act only as itself")),
    }
}

/// Rule: as [`site_itself`], or the operator (who sets where a site is and what it holds).
pub(crate) async fn site_itself_or_operator(
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
    next: Next,
) -> Result<Response, ControlError> {
    if authenticated(&req)?.principal.is_operator() {
        return Ok(next.run(req).await);
    }
    site_itself(Path(params), req, next).await
}

/// Who may act on the path's `{user}` under a user rule.
#[derive(Clone, Copy)]
enum UserNeed {
    /// An administrator of the user (operator, or an admin of the user's tenant).
    Admin,
    /// The user themself (their device) or an administrator of them.
    Owner,
}

/// The user rules: `need` of the path's `{user}`, or (when `sites_too`) any site.
async fn user_rule(
    state: &AppState,
    params: &[(String, String)],
    req: Request,
    next: Next,
    need: UserNeed,
    sites_too: bool,
) -> Result<Response, ControlError> {
    let caller = authenticated(&req)?;
    if !(sites_too && matches!(caller.principal, Principal::Site { .. })) {
        let (store, user) = (state.store.as_ref(), path_user(params)?);
        match need {
            UserNeed::Admin => caller.require_admin_of(store, user)?,
            UserNeed::Owner => caller.require_owner_of(store, user)?,
        }
    }
    Ok(next.run(req).await)
}

/// Rule: an administrator of the path's `{user}` (operator, or an admin of the user's tenant).
pub(crate) async fn user_admin(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
    next: Next,
) -> Result<Response, ControlError> {
    user_rule(&state, &params, req, next, UserNeed::Admin, false).await
}

/// Rule: the path's `{user}` themself (their device) or an administrator of them.
pub(crate) async fn user_owner(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
    next: Next,
) -> Result<Response, ControlError> {
    user_rule(&state, &params, req, next, UserNeed::Owner, false).await
}

/// Rule: as [`user_owner`], or any site (sites read placements and the checkpoint catalogue of the phones
/// they run, restore or receive).
pub(crate) async fn user_reader(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
    next: Next,
) -> Result<Response, ControlError> {
    user_rule(&state, &params, req, next, UserNeed::Owner, true).await
}

/// Rule: a site, or an administrator of the path's `{user}`.
pub(crate) async fn site_or_user_admin(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
    next: Next,
) -> Result<Response, ControlError> {
    user_rule(&state, &params, req, next, UserNeed::Admin, true).await
}

/// Rule: a site or the operator.
pub(crate) async fn site_or_operator(req: Request, next: Next) -> Result<Response, ControlError> {
    let caller = authenticated(&req)?;
    match caller.principal {
        Principal::Site { .. } | Principal::Operator { .. } => Ok(next.run(req).await),
        other => Err(forbidden(&other, "only a site or an operator may")),
    }
}

/// The caller, 401 when anonymous (a rule's first question).
fn authenticated(req: &Request) -> Result<Caller, ControlError> {
    let caller = caller(req)?;
    if caller.principal == Principal::Anonymous { Err(ControlError::Unauthorized) } else { Ok(caller) }
}

fn path_user(params: &[(String, String)]) -> Result<&str, ControlError> {
    params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| ControlError::BadRequest("the path names no user".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_log_names_the_user_and_site_of_a_path() {
        assert_eq!(subjects("/v1/users/ann/devices"), (Some("ann".into()), None));
        assert_eq!(subjects("/v1/sites/site-a/heartbeat"), (None, Some("site-a".into())));
        assert_eq!(subjects("/v1/users/ann/checkpoints/site-b"), (Some("ann".into()), Some("site-b".into())));
        assert_eq!(subjects("/v1/pair"), (None, None));
    }
}
