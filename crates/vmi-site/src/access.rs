//! Every request to a site is authenticated, then authorized, before its body is read (docs/SECURITY.md).
//!
//! - [`authenticate`] (a middleware on the whole router) resolves the caller: a bearer token is asked of the
//!   control service (`POST /v1/auth`, as this site); a machine's claim in
//!   [`PEER_HEADER`](vmi_control_api::auth::PEER_HEADER) must be backed by its TLS client certificate. A wrong
//!   token counts against the caller's address (locked out after a few, doubling). Refusals and operator
//!   actions are kept for the control service's audit log (sent with the heartbeat).
//! - The rules below sit as `route_layer`s on the routes, so they run before any handler reads a body.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use vmi_control_api::auth::{AuditEntry, MAX_AUDIT_REPORTED, PEER_HEADER, Principal};
use vmi_trust::{Lockout, Peer, RateLimit};

use crate::SiteState;

/// Wrong tokens from one address before it is locked out.
const LOCKOUT_THRESHOLD: u32 = 5;
/// The first lockout; each further failure doubles it, up to [`LOCKOUT_MAX`].
const LOCKOUT_BASE: Duration = Duration::from_secs(2);
const LOCKOUT_MAX: Duration = Duration::from_secs(300);
/// Addresses remembered by the guard.
const GUARD_KEYS: usize = 100_000;
/// How long a token the control service vouched for is still accepted while the control service cannot be
/// reached (never while it can: then every token is asked afresh, so a revocation counts at once).
pub const TOKEN_GRACE: Duration = Duration::from_secs(300);
/// Tokens remembered for [`TOKEN_GRACE`].
const TOKENS_KEPT: usize = 10_000;
/// Mails one sender may drop in one user's mailbox at once; then one per [`MAIL_INTERVAL`].
pub const MAIL_BURST: u32 = 20;
/// The pace of a sender past [`MAIL_BURST`].
pub const MAIL_INTERVAL: Duration = Duration::from_secs(3);

/// Who made a request to this site, and from where.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub principal: Principal,
    /// The bearer token the caller presented, to act for them at the control service (the browser map).
    pub token: Option<String>,
}

/// The site's defences against guessing, its audit entries on their way to the control service, and the tokens
/// the control service vouched for lately.
pub struct Guard {
    start: Instant,
    lockout: Mutex<Lockout<Option<IpAddr>>>,
    audited: Mutex<RateLimit<Option<IpAddr>>>,
    pending: Mutex<Vec<AuditEntry>>,
    vouched: Mutex<HashMap<[u8; 32], (Principal, Duration)>>,
    mail: Mutex<RateLimit<(String, String)>>,
    /// Devices revoked so far: a connection checked before a revocation checks its token again.
    revocations: std::sync::atomic::AtomicU64,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            start: Instant::now(),
            lockout: Mutex::new(Lockout::new(LOCKOUT_THRESHOLD, LOCKOUT_BASE, LOCKOUT_MAX, GUARD_KEYS)),
            audited: Mutex::new(RateLimit::new(Duration::from_millis(100), 50, GUARD_KEYS)),
            pending: Mutex::new(Vec::new()),
            vouched: Mutex::new(HashMap::new()),
            mail: Mutex::new(RateLimit::new(MAIL_INTERVAL, MAIL_BURST, GUARD_KEYS)),
            revocations: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// What a token is remembered by (never the token itself).
fn token_key(token: &str) -> [u8; 32] {
    blake3::hash(token.as_bytes()).into()
}

impl SiteState {
    /// Who `token` belongs to, as the control service says (`Ok(None)`: nobody, or revoked). While the control
    /// service cannot be reached (or answers that its store is unavailable), a token it vouched for within [`TOKEN_GRACE`] still counts, so terminals and
    /// operators keep working through a control outage; a device revocation pushed to this site forgets its
    /// tokens at once.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Principal>, vmi_control_api::ClientError> {
        let key = token_key(token);
        let now = self.guard.now();
        let vouched = |principal: Option<&Principal>| {
            let mut kept = self.guard.vouched.lock().unwrap_or_else(|p| p.into_inner());
            match principal {
                Some(principal) => {
                    if kept.len() >= TOKENS_KEPT {
                        kept.retain(|_, (_, at)| now.saturating_sub(*at) < TOKEN_GRACE);
                    }
                    if kept.len() < TOKENS_KEPT {
                        kept.insert(key, (principal.clone(), now));
                    }
                }
                None => {
                    kept.remove(&key);
                }
            }
        };
        match self.control().authenticate(token).await {
            Ok(principal) => {
                vouched(principal.as_ref());
                Ok(principal)
            }
            // Unreachable, or reachable without its store (503: no quorum behind it): the same outage.
            Err(e) if e.status().is_none_or(|status| status == 503) => {
                let kept = self.guard.vouched.lock().unwrap_or_else(|p| p.into_inner());
                match kept.get(&key) {
                    Some((principal, at)) if now.saturating_sub(*at) < TOKEN_GRACE => {
                        tracing::info!(%principal, "control service unreachable: token vouched for lately");
                        Ok(Some(principal.clone()))
                    }
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Forgets the tokens of device `device_id` (it was revoked).
    pub(crate) fn forget_device(&self, device_id: u64) {
        self.guard.revocations.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut kept = self.guard.vouched.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(
            |_, (principal, _)| !matches!(principal, Principal::Device { device_id: d, .. } if *d == device_id),
        );
    }
}

impl Guard {
    /// How many devices were revoked so far (compare two readings to learn whether one was in between).
    pub fn revocations(&self) -> u64 {
        self.revocations.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// `Err(retry_after)` when `sender` has dropped too many mails in `user`'s mailbox lately.
    pub fn allow_mail(&self, user: &str, sender: &str) -> Result<(), Duration> {
        let now = self.now();
        let key = (user.to_owned(), sender.to_ascii_lowercase());
        self.mail.lock().unwrap_or_else(|p| p.into_inner()).allow(&key, now)
    }

    /// `Err(retry_after)` while `from` is locked out.
    pub fn check(&self, from: Option<IpAddr>) -> Result<(), Duration> {
        let now = self.now();
        self.lockout.lock().unwrap_or_else(|p| p.into_inner()).check(&from, now)
    }

    /// Counts a wrong secret from `from`.
    pub fn failure(&self, from: Option<IpAddr>) {
        let now = self.now();
        self.lockout.lock().unwrap_or_else(|p| p.into_inner()).failure(&from, now);
    }

    /// Keeps `entry` for the control service's audit log (refusals are rate-limited per address; a flood is
    /// summarized in the site's log instead).
    pub fn record(&self, entry: AuditEntry, refusal: bool, from: Option<IpAddr>) {
        if refusal {
            let now = self.now();
            if self.audited.lock().unwrap_or_else(|p| p.into_inner()).allow(&from, now).is_err() {
                tracing::warn!(principal = %entry.principal, action = %entry.action, "refusal not audited: too many");
                return;
            }
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded while the control service is away: the oldest go first.
        if pending.len() >= 10 * MAX_AUDIT_REPORTED {
            pending.remove(0);
        }
        pending.push(entry);
    }

    /// Takes up to [`MAX_AUDIT_REPORTED`] entries to send.
    pub fn take_pending(&self) -> Vec<AuditEntry> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let n = pending.len().min(MAX_AUDIT_REPORTED);
        pending.drain(..n).collect()
    }

    /// Puts entries back at the front after a failed send.
    pub fn put_back(&self, mut entries: Vec<AuditEntry>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        entries.append(&mut pending);
        *pending = entries;
    }
}

/// The token of an `Authorization: Bearer …` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    vmi_control_api::auth::bearer_of(headers.get(header::AUTHORIZATION)?.to_str().ok()?).map(str::to_owned)
}

/// A refusal as an answer: status and a JSON body naming why.
fn refuse(status: StatusCode, why: &str) -> Response {
    let mut response = (status, axum::Json(serde_json::json!({ "error": why }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    response
}

/// Who the request's credentials name, or the answer refusing them.
async fn principal_of(
    site: &SiteState,
    headers: &HeaderMap,
    peer: Option<&Peer>,
    from: Option<IpAddr>,
) -> Result<Principal, Response> {
    if let Some(token) = bearer(headers) {
        if let Err(retry_after) = site.guard.check(from) {
            let mut refused = refuse(StatusCode::TOO_MANY_REQUESTS, "too many wrong tokens from this address");
            refused.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after.as_secs().max(1)));
            return Err(refused);
        }
        return match site.authenticate(&token).await {
            Ok(Some(principal)) => Ok(principal),
            Ok(None) => {
                site.guard.failure(from);
                Err(refuse(StatusCode::UNAUTHORIZED, "unknown or revoked token"))
            }
            Err(e) => {
                tracing::warn!("cannot check a token with the control service: {e}");
                Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "cannot check the token now; try again"))
            }
        };
    }
    let Some(claim) = headers.get(PEER_HEADER) else { return Ok(Principal::Anonymous) };
    let unproven = || refuse(StatusCode::UNAUTHORIZED, "the peer's certificate does not back its claim");
    let claim = claim.to_str().map_err(|_| unproven())?;
    let (principal, name) = vmi_control_api::auth::claimed_machine(claim).ok_or_else(unproven)?;
    if peer.is_some_and(|peer| peer.is(&name)) { Ok(principal) } else { Err(unproven()) }
}

/// The authentication middleware: puts the [`Caller`] in the request, then keeps refusals and operator actions
/// for the audit log.
pub(crate) async fn authenticate(State(site): State<Arc<SiteState>>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<Peer>().cloned();
    let from = peer.as_ref().map(|p| p.addr.ip().to_canonical());
    let action = format!("{} {}", req.method(), req.uri().path());
    let mutation = req.method() != Method::GET && req.method() != Method::HEAD;
    let user = path_user(req.uri().path());
    let token = bearer(req.headers());
    let (principal, response) = match principal_of(&site, req.headers(), peer.as_ref(), from).await {
        Ok(principal) => {
            if matches!(principal, Principal::Operator { .. } | Principal::Site { .. } | Principal::Control) {
                // May continue a trace here (vmi_telemetry::trace::accept).
                req.extensions_mut().insert(vmi_telemetry::trace::Trusted);
            }
            req.extensions_mut().insert(Caller { principal: principal.clone(), token });
            (principal, next.run(req).await)
        }
        Err(refused) => (Principal::Anonymous, refused),
    };
    let status = response.status();
    let refused = matches!(status.as_u16(), 401 | 403 | 429);
    if refused || (principal.is_operator() && mutation && status.is_success()) {
        let entry = AuditEntry {
            id: 0,
            at_ms: site.now_ms(),
            principal: principal.to_string(),
            action,
            user,
            site: Some(site.id.clone()),
            from: from.map_or_else(|| "in-process".to_owned(), |ip| ip.to_string()),
            status: status.as_u16(),
            detail: if refused { "refused".to_owned() } else { "done".to_owned() },
        };
        site.guard.record(entry, refused, from);
    }
    response
}

/// The user a site path names (`/v1/phones/{user}/…`, `/v1/replicas/{user}/…`).
fn path_user(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "phones" | "replicas", user, ..] => Some((*user).to_owned()),
        _ => None,
    }
}

/// The authenticated caller of `req`; `None` when anonymous (the rules then answer [`unauthenticated`]).
fn caller(req: &Request) -> Option<Caller> {
    req.extensions().get::<Caller>().filter(|c| c.principal != Principal::Anonymous).cloned()
}

fn unauthenticated() -> Response {
    refuse(StatusCode::UNAUTHORIZED, "credentials needed (Authorization: Bearer TOKEN)")
}

fn forbidden(principal: &Principal, rule: &str) -> Response {
    refuse(StatusCode::FORBIDDEN, &format!("{principal} may not do this: {rule}"))
}

/// Rule: the provider's operator.
pub(crate) async fn operator(req: Request, next: Next) -> Response {
    match caller(&req) {
        Some(c) if c.principal.is_operator() => next.run(req).await,
        Some(c) => forbidden(&c.principal, "only an operator may"),
        None => unauthenticated(),
    }
}

/// Rule: the operator, or the control service (its placer orders migrations).
pub(crate) async fn operator_or_control(req: Request, next: Next) -> Response {
    match caller(&req) {
        Some(c) if c.principal.is_operator() || c.principal == Principal::Control => next.run(req).await,
        Some(c) => forbidden(&c.principal, "only an operator or the control service may"),
        None => unauthenticated(),
    }
}

/// Rule: the control service.
pub(crate) async fn control(req: Request, next: Next) -> Response {
    match caller(&req) {
        Some(c) if c.principal == Principal::Control => next.run(req).await,
        Some(c) => forbidden(&c.principal, "only the control service may"),
        None => unauthenticated(),
    }
}

/// Rule: another site.
pub(crate) async fn peer_site(req: Request, next: Next) -> Response {
    match caller(&req) {
        Some(c) if matches!(c.principal, Principal::Site { .. }) => next.run(req).await,
        Some(c) => forbidden(&c.principal, "only a site may"),
        None => unauthenticated(),
    }
}

/// Rule: a paired device (the handler acts for the device's own user).
pub(crate) async fn device(req: Request, next: Next) -> Response {
    match caller(&req) {
        Some(c) if c.principal.device_user().is_some() => next.run(req).await,
        Some(c) => forbidden(&c.principal, "only a paired device may"),
        None => unauthenticated(),
    }
}

/// Rule: a device of the path's `{user}`.
pub(crate) async fn owner_device(Path(params): Path<Vec<(String, String)>>, req: Request, next: Next) -> Response {
    let named = params.iter().find(|(k, _)| k == "user").map(|(_, v)| v.as_str());
    match caller(&req) {
        Some(c) if c.principal.device_user().is_some() && c.principal.device_user() == named => next.run(req).await,
        Some(c) => forbidden(&c.principal, "a device may act only for its own user"),
        None => unauthenticated(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_user() {
        assert_eq!(path_user("/v1/phones/ann/mail").as_deref(), Some("ann"));
        assert_eq!(path_user("/v1/replicas/bob/import").as_deref(), Some("bob"));
        assert_eq!(path_user("/v1/me/checkpoints"), None);
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_never_empty() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "bearer abc".parse().expect("header"));
        assert_eq!(bearer(&headers).as_deref(), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Bearer  ".parse().expect("header"));
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().expect("header"));
        assert_eq!(bearer(&headers), None);
    }
}
