//! [`ControlClient`]: the async client that sites, terminals and the `vmi` CLI use to talk to the control service.
//!
//! HTTP/1.1 over one connection per request (no pooling), TLS for `https://` with the service's certificate
//! checked for the name `control.vmi` (docs/SECURITY.md). Every call, connect included, is bounded by a timeout
//! ([`DEFAULT_TIMEOUT`](crate::DEFAULT_TIMEOUT) unless changed with [`ControlClient::with_timeout`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::Method;
use hyper::body::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::{
    AdminRequest, AuditEntry, AuditQuery, EnrollRequest, Enrollment, JoinToken, NewCredential, Principal,
};
use crate::http_client::{DEFAULT_TIMEOUT, MAX_RESPONSE_BYTES, Origin, TransferObserver, error_message};
use crate::model::{
    AuthRequest, CatalogedCheckpoint, CheckpointEntry, Device, HeartbeatReply, HeartbeatRequest, LoggedMigration,
    MigrationRecord, NameRequest, NewDevice, PairCode, PairRequest, PhoneLocation, Placement, PlacementInfo,
    PlacementRequest, ReportRequest, SiteSpec, SiteStatus, StandbyRequest, TerminalReport, User,
};
use crate::tenants::{
    Admission, AdmitRequest, ImageVersion, MAX_LINUX_IMAGE_BYTES, Tenant, TenantRequest, TenantStatus, TenantUpdate,
    UserImage, UserRequest,
};
use crate::url::segment;
use crate::{Caller, ClientError};

/// How long a connection from [`ControlClient::dial_ahead`] is used; an older one is replaced by a new one
/// (services close a silent connection after their header timeout, 10 s by default).
pub const DIALED_FRESH_FOR: Duration = Duration::from_secs(5);

/// A connection to the control service opened ahead of the request that will use it.
pub struct Dialed {
    stream: vmi_trust::Stream,
    at: std::time::Instant,
}

impl Dialed {
    /// How long ago it was opened.
    pub fn age(&self) -> Duration {
        self.at.elapsed()
    }
}

impl std::fmt::Debug for Dialed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialed").field("age", &self.at.elapsed()).finish_non_exhaustive()
    }
}

/// A client for the control service: one replica, or several sharing one store. Cheap to clone (clones share
/// which replica answers); holds no connection between calls.
///
/// With several replicas a call goes to the one that answered last; if it cannot be reached (no connection, or
/// 503: its store is unavailable), the call goes to the next, and so on once round. A request that timed out
/// after it was sent is retried elsewhere only if it is a `GET` (another method may have taken effect).
#[derive(Debug, Clone)]
pub struct ControlClient {
    origins: Arc<[Origin]>,
    /// The index in `origins` of the replica that answered last.
    preferred: Arc<AtomicUsize>,
    caller: Caller,
    timeout: Duration,
    /// Told how far each request's body and answer have got (a progress display), if anyone asked.
    observer: Option<TransferObserver>,
}

impl ControlClient {
    /// A client for the service at `base_url` (`https://host[:port]`, or `http://` on this machine; trailing `/`
    /// allowed), calling as `caller`. Several replicas are given comma-separated:
    /// `https://10.0.0.1:7800,https://10.0.0.2:7800`.
    pub fn new(base_url: &str, caller: &Caller) -> Result<Self, ClientError> {
        let caller = caller.clone().expecting(vmi_trust::CONTROL_NAME);
        let origins = base_url.split(',').map(|url| Origin::parse(url.trim())).collect::<Result<Vec<_>, _>>()?;
        Ok(ControlClient {
            origins: origins.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
            caller,
            timeout: DEFAULT_TIMEOUT,
            observer: None,
        })
    }

    /// The replica calls go to first.
    fn origin(&self) -> &Origin {
        let i = self.preferred.load(Ordering::Relaxed) % self.origins.len().max(1);
        &self.origins[i]
    }

    /// The same client calling as the holder of `token` (a site acting for the device that asked it).
    pub fn as_bearer(&self, token: &str) -> ControlClient {
        ControlClient { caller: self.caller.clone().with_bearer(token), ..self.clone() }
    }

    /// Who this client calls as.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same client telling `observer` how far each request's body and answer have got (an image's upload).
    pub fn with_observer(mut self, observer: TransferObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The base URL of the replica this client talks to now, `http(s)://host:port`.
    pub fn base_url(&self) -> String {
        self.origin().base_url()
    }

    /// Every replica's base URL, comma-separated (what [`ControlClient::new`] takes).
    pub fn base_urls(&self) -> String {
        self.origins.iter().map(Origin::base_url).collect::<Vec<_>>().join(",")
    }

    /// `POST /v1/users/{user}/pair-code`: a one-time code for a new device of `user`.
    pub async fn pair_code(&self, user: &str) -> Result<PairCode, ClientError> {
        self.json(Method::POST, format!("/v1/users/{}/pair-code", segment(user)), None::<&()>).await
    }

    /// `POST /v1/phone/pair-code`: a code issued by a signed-in device for its own user.
    pub async fn pair_code_for_device(&self, token: &str) -> Result<PairCode, ClientError> {
        let bytes = self.call(Method::POST, "/v1/phone/pair-code".to_owned(), None::<&()>, Some(token)).await?;
        serde_json::from_slice(&bytes).map_err(ClientError::Decode)
    }

    /// `POST /v1/sites/{id}/join-token` (operator): a one-time token site `id` enrolls with.
    pub async fn join_token(&self, site: &str) -> Result<JoinToken, ClientError> {
        self.json(Method::POST, format!("/v1/sites/{}/join-token", segment(site)), None::<&()>).await
    }

    /// `POST /v1/sites/{id}/enroll`: trades a join token and the site's public key for its certificate.
    pub async fn enroll(&self, site: &str, request: &EnrollRequest) -> Result<Enrollment, ClientError> {
        self.json(Method::POST, format!("/v1/sites/{}/enroll", segment(site)), Some(request)).await
    }

    /// `POST /v1/tenants/{name}/admins` (operator): a new tenant-admin credential.
    pub async fn create_tenant_admin(&self, tenant: &str, name: &str) -> Result<NewCredential, ClientError> {
        let body = AdminRequest { name: name.to_owned() };
        self.json(Method::POST, format!("/v1/tenants/{}/admins", segment(tenant)), Some(&body)).await
    }

    /// `GET /v1/audit` (operator): the audit log, newest first, filtered by `query`.
    pub async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, ClientError> {
        let mut params = BTreeMap::new();
        if let Some(user) = &query.user {
            params.insert("user", user.clone());
        }
        if let Some(site) = &query.site {
            params.insert("site", site.clone());
        }
        if let Some(principal) = &query.principal {
            params.insert("principal", principal.clone());
        }
        if let Some(since) = query.since_ms {
            params.insert("since_ms", since.to_string());
        }
        if let Some(until) = query.until_ms {
            params.insert("until_ms", until.to_string());
        }
        if let Some(limit) = query.limit {
            params.insert("limit", limit.to_string());
        }
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", segment(v))).collect();
        let path = if query.is_empty() { "/v1/audit".to_owned() } else { format!("/v1/audit?{}", query.join("&")) };
        self.json(Method::GET, path, None::<&()>).await
    }

    /// `POST /v1/audit` (sites): entries this site recorded (operator actions and refusals at the site).
    pub async fn report_audit(&self, entries: &[AuditEntry]) -> Result<(), ClientError> {
        self.call(Method::POST, "/v1/audit".to_owned(), Some(&entries), None).await.map(drop)
    }

    /// `POST /v1/pair`: trades a code for a new device (token included).
    pub async fn pair(&self, code: &str, name: &str) -> Result<NewDevice, ClientError> {
        let body = PairRequest { code: code.to_owned(), name: name.to_owned() };
        self.json(Method::POST, "/v1/pair".to_owned(), Some(&body)).await
    }

    /// `GET /healthz`.
    pub async fn healthz(&self) -> Result<(), ClientError> {
        self.call(Method::GET, "/healthz".to_owned(), None::<&()>, None).await.map(drop)
    }

    /// `POST /v1/users`: creates a user (409 if the name is taken).
    pub async fn create_user(&self, name: &str) -> Result<User, ClientError> {
        self.json(Method::POST, "/v1/users".to_owned(), Some(&NameRequest { name: name.to_owned() })).await
    }

    /// `GET /v1/users`.
    pub async fn list_users(&self) -> Result<Vec<User>, ClientError> {
        self.json(Method::GET, "/v1/users".to_owned(), None::<&()>).await
    }

    /// `POST /v1/users/{user}/devices`: registers a device; the returned token is never shown again.
    pub async fn create_device(&self, user: &str, name: &str) -> Result<NewDevice, ClientError> {
        let path = format!("/v1/users/{}/devices", segment(user));
        self.json(Method::POST, path, Some(&NameRequest { name: name.to_owned() })).await
    }

    /// `GET /v1/users/{user}/devices` (no tokens).
    pub async fn list_devices(&self, user: &str) -> Result<Vec<Device>, ClientError> {
        self.json(Method::GET, format!("/v1/users/{}/devices", segment(user)), None::<&()>).await
    }

    /// `POST /v1/devices/{id}/revoke`.
    pub async fn revoke_device(&self, device_id: u64) -> Result<(), ClientError> {
        self.call(Method::POST, format!("/v1/devices/{device_id}/revoke"), None::<&()>, None).await.map(drop)
    }

    /// `POST /v1/auth` (sites only): who `token` belongs to; `Ok(None)` if the service says it is unknown or
    /// revoked (401).
    pub async fn authenticate(&self, token: &str) -> Result<Option<Principal>, ClientError> {
        let body = AuthRequest { token: token.to_owned() };
        match self.json(Method::POST, "/v1/auth".to_owned(), Some(&body)).await {
            Ok(principal) => Ok(Some(principal)),
            Err(ClientError::Status { status: 401, .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// `PUT /v1/sites/{id}`: registers or updates a site.
    pub async fn register_site(&self, id: &str, spec: &SiteSpec) -> Result<SiteStatus, ClientError> {
        self.json(Method::PUT, format!("/v1/sites/{}", segment(id)), Some(spec)).await
    }

    /// `POST /v1/sites/{id}/heartbeat`: reports the site alive with `phones` phones running.
    pub async fn heartbeat(&self, id: &str, phones: u32) -> Result<HeartbeatReply, ClientError> {
        self.heartbeat_degraded(id, phones, None).await
    }

    /// `POST /v1/sites/{id}/heartbeat`, saying what is wrong with the site (`degraded`), if anything; the answer
    /// is the site's lease and the phones placed on it.
    pub async fn heartbeat_degraded(
        &self,
        id: &str,
        phones: u32,
        degraded: Option<&str>,
    ) -> Result<HeartbeatReply, ClientError> {
        self.heartbeat_with(
            id,
            &HeartbeatRequest { phones, degraded: degraded.map(str::to_owned), placed_version: None },
        )
        .await
    }

    /// `POST /v1/sites/{id}/heartbeat` with the whole request (a site holding its placed list names its version).
    pub async fn heartbeat_with(&self, id: &str, body: &HeartbeatRequest) -> Result<HeartbeatReply, ClientError> {
        let path = format!("/v1/sites/{}/heartbeat", segment(id));
        self.json(Method::POST, path, Some(body)).await
    }

    /// `DELETE /v1/users/{user}/standby` (the phone's owner site): the phone has no standby copy any more.
    pub async fn clear_standby(&self, user: &str) -> Result<(), ClientError> {
        let path = format!("/v1/users/{}/standby", segment(user));
        self.call(Method::DELETE, path, None::<&()>, None).await.map(drop)
    }

    /// `PUT /v1/users/{user}/standby` (the phone's owner site): `site` holds the standby copy of the phone placed
    /// at `epoch`.
    pub async fn set_standby(&self, user: &str, site: &str, epoch: u64) -> Result<(), ClientError> {
        let path = format!("/v1/users/{}/standby", segment(user));
        let body = StandbyRequest { site: site.to_owned(), epoch };
        self.call(Method::PUT, path, Some(&body), None).await.map(drop)
    }

    /// `GET /v1/sites`, each with its health.
    pub async fn list_sites(&self) -> Result<Vec<SiteStatus>, ClientError> {
        self.json(Method::GET, "/v1/sites".to_owned(), None::<&()>).await
    }

    /// `PUT /v1/users/{user}/placement`: places the user's phone on `site`.
    pub async fn set_placement(&self, user: &str, site: &str) -> Result<Placement, ClientError> {
        self.move_placement(user, site, None).await
    }

    /// `PUT /v1/users/{user}/placement` with `expected_epoch`: places the user's phone on `site` only if the
    /// placement is at that epoch now (0 = never placed); 409 naming both epochs otherwise. This is how the
    /// destination of a live migration takes ownership.
    pub async fn move_placement(
        &self,
        user: &str,
        site: &str,
        expected_epoch: Option<u64>,
    ) -> Result<Placement, ClientError> {
        let path = format!("/v1/users/{}/placement", segment(user));
        self.json(Method::PUT, path, Some(&PlacementRequest { site: site.to_owned(), expected_epoch })).await
    }

    /// Opens a connection to the service now (TCP and, for `https://`, the TLS handshake) for one later request
    /// that must be quick: a migration's commit, made while the phone is stopped.
    pub async fn dial_ahead(&self) -> Result<Dialed, ClientError> {
        let stream = self.caller.dial(self.origin()).await?;
        Ok(Dialed { stream, at: std::time::Instant::now() })
    }

    /// [`ControlClient::move_placement`] over `dialed`, a connection opened ahead of time, if it is fresh (the
    /// service closes a connection that sends nothing for its header timeout); on a new one otherwise.
    pub async fn move_placement_over(
        &self,
        dialed: Option<Dialed>,
        user: &str,
        site: &str,
        expected_epoch: Option<u64>,
    ) -> Result<Placement, ClientError> {
        let stream = dialed.filter(|d| d.at.elapsed() < DIALED_FRESH_FOR).map(|d| d.stream);
        let path = format!("/v1/users/{}/placement", segment(user));
        let body = serde_json::to_vec(&PlacementRequest { site: site.to_owned(), expected_epoch })
            .map_err(|_| ClientError::InvalidRequest("cannot encode request body"))?;
        let origin = self.origin();
        let request = origin.request(
            Method::PUT,
            path,
            Some(("application/json", Bytes::from(body))),
            &self.caller,
            None,
            true,
        )?;
        let (status, body) =
            origin.exchange_over(&self.caller, stream, request, self.timeout, MAX_RESPONSE_BYTES, None).await?;
        if !status.is_success() {
            return Err(ClientError::Status { status: status.as_u16(), body: error_message(&body) });
        }
        serde_json::from_slice(&body).map_err(ClientError::Decode)
    }

    /// `GET /v1/users/{user}/placement` (404 if the user has none).
    pub async fn placement(&self, user: &str) -> Result<PlacementInfo, ClientError> {
        self.json(Method::GET, format!("/v1/users/{}/placement", segment(user)), None::<&()>).await
    }

    /// `GET /v1/phone` with `Authorization: Bearer token`: where the token's phone runs (401 bad token, 404 not
    /// placed).
    pub async fn phone_for_token(&self, token: &str) -> Result<PhoneLocation, ClientError> {
        let body = self.call(Method::GET, "/v1/phone".to_owned(), None::<&()>, Some(token)).await?;
        serde_json::from_slice(&body).map_err(ClientError::Decode)
    }

    /// `POST /v1/phone/report` with `Authorization: Bearer token`: what the terminal sees, its position and/or
    /// measured RTTs in ms by site id (401 bad token, 400 out-of-range values).
    pub async fn report(
        &self,
        token: &str,
        lat: Option<f64>,
        lon: Option<f64>,
        rtt_ms: BTreeMap<String, f64>,
    ) -> Result<(), ClientError> {
        let body = ReportRequest { lat, lon, rtt_ms };
        self.call(Method::POST, "/v1/phone/report".to_owned(), Some(&body), Some(token)).await.map(drop)
    }

    /// `GET /v1/users/{user}/report`: the user's latest terminal report (404 if none since the service started).
    pub async fn latest_report(&self, user: &str) -> Result<TerminalReport, ClientError> {
        self.json(Method::GET, format!("/v1/users/{}/report", segment(user)), None::<&()>).await
    }

    /// `POST /v1/sites/{id}/drain`: the placer moves every phone off the site and places none there.
    pub async fn drain_site(&self, id: &str) -> Result<SiteStatus, ClientError> {
        self.json(Method::POST, format!("/v1/sites/{}/drain", segment(id)), None::<&()>).await
    }

    /// `POST /v1/sites/{id}/undrain`: clears the draining flag.
    pub async fn undrain_site(&self, id: &str) -> Result<SiteStatus, ClientError> {
        self.json(Method::POST, format!("/v1/sites/{}/undrain", segment(id)), None::<&()>).await
    }

    /// `POST /v1/migrations`: adds a migration to the log.
    pub async fn record_migration(&self, record: &MigrationRecord) -> Result<LoggedMigration, ClientError> {
        self.json(Method::POST, "/v1/migrations".to_owned(), Some(record)).await
    }

    /// `GET /v1/migrations[?user=U]`: the newest logged migrations first (at most
    /// [`DEFAULT_MIGRATIONS_LISTED`](crate::DEFAULT_MIGRATIONS_LISTED)), of one user or of everyone.
    pub async fn migrations(&self, user: Option<&str>) -> Result<Vec<LoggedMigration>, ClientError> {
        let path = match user {
            Some(user) => format!("/v1/migrations?user={}", segment(user)),
            None => "/v1/migrations".to_owned(),
        };
        self.json(Method::GET, path, None::<&()>).await
    }

    /// `PUT /v1/users/{user}/checkpoints/{site}`: what `site` now holds of `user`'s checkpoints.
    pub async fn put_site_checkpoints(
        &self,
        user: &str,
        site: &str,
        entries: &[CheckpointEntry],
    ) -> Result<(), ClientError> {
        let path = format!("/v1/users/{}/checkpoints/{}", segment(user), segment(site));
        self.call(Method::PUT, path, Some(&entries), None).await.map(drop)
    }

    /// `GET /v1/users/{user}/checkpoints`: the catalogue of `user`'s checkpoints.
    pub async fn checkpoints(&self, user: &str) -> Result<Vec<CatalogedCheckpoint>, ClientError> {
        self.json(Method::GET, format!("/v1/users/{}/checkpoints", segment(user)), None::<&()>).await
    }

    /// `POST /v1/users` with a tenant: creates a user in `tenant` (which must exist; 404 otherwise) or in none.
    pub async fn create_user_in(&self, name: &str, tenant: Option<&str>) -> Result<User, ClientError> {
        let body = UserRequest { name: name.to_owned(), tenant: tenant.map(str::to_owned) };
        self.json(Method::POST, "/v1/users".to_owned(), Some(&body)).await
    }

    /// `POST /v1/tenants`: creates a tenant with its quotas (409 if the name is taken).
    pub async fn create_tenant(&self, tenant: &TenantRequest) -> Result<Tenant, ClientError> {
        self.json(Method::POST, "/v1/tenants".to_owned(), Some(tenant)).await
    }

    /// `GET /v1/tenants`, each with what it uses now.
    pub async fn list_tenants(&self) -> Result<Vec<TenantStatus>, ClientError> {
        self.json(Method::GET, "/v1/tenants".to_owned(), None::<&()>).await
    }

    /// `PUT /v1/tenants/{name}`: changes what `update` names of the tenant; the rest stays.
    pub async fn update_tenant(&self, name: &str, update: &TenantUpdate) -> Result<Tenant, ClientError> {
        self.json(Method::PUT, format!("/v1/tenants/{}", segment(name)), Some(update)).await
    }

    /// `POST /v1/users/{user}/admit`: asks to boot the user's phone with `memory_bytes` of memory; a refusal
    /// over a quota is a 403 whose message says which.
    pub async fn admit(&self, user: &str, memory_bytes: u64) -> Result<Admission, ClientError> {
        let path = format!("/v1/users/{}/admit", segment(user));
        self.json(Method::POST, path, Some(&AdmitRequest { memory_bytes })).await
    }

    /// `DELETE /v1/users/{user}/admit`: the user's phone no longer counts against their tenant.
    pub async fn release(&self, user: &str) -> Result<(), ClientError> {
        self.call(Method::DELETE, format!("/v1/users/{}/admit", segment(user)), None::<&()>, None).await.map(drop)
    }

    /// `GET /v1/users/{user}/image`: the image version the user's phone should run now; `Ok(None)` when the
    /// service answers 404 (no version of the user's image is published, or no such user).
    pub async fn user_image(&self, user: &str) -> Result<Option<UserImage>, ClientError> {
        match self.json(Method::GET, format!("/v1/users/{}/image", segment(user)), None::<&()>).await {
            Ok(image) => Ok(Some(image)),
            Err(ClientError::Status { status: 404, .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// `POST /v1/images/{name}/versions`: publishes `wasm` as the image's next version.
    pub async fn publish_image(&self, name: &str, wasm: &[u8]) -> Result<ImageVersion, ClientError> {
        let path = format!("/v1/images/{}/versions", segment(name));
        let body = Some((Bytes::copy_from_slice(wasm), "application/wasm"));
        let bytes = self.call_raw(Method::POST, path, body, None, MAX_RESPONSE_BYTES).await?;
        serde_json::from_slice(&bytes).map_err(ClientError::Decode)
    }

    /// `GET /v1/images`: every published version, withdrawn ones included.
    pub async fn list_images(&self) -> Result<Vec<ImageVersion>, ClientError> {
        self.json(Method::GET, "/v1/images".to_owned(), None::<&()>).await
    }

    /// `GET /v1/images/{name}/versions/{version}`: the wasm bytes of one version.
    pub async fn image_wasm(&self, name: &str, version: u64) -> Result<Vec<u8>, ClientError> {
        let path = format!("/v1/images/{}/versions/{version}", segment(name));
        let bytes = self.call_raw(Method::GET, path, None, None, MAX_LINUX_IMAGE_BYTES).await?;
        Ok(bytes.to_vec())
    }

    /// `POST /v1/images/{name}/rollback`: withdraws the current version; returns the one now current (409 if
    /// there is no earlier one).
    pub async fn rollback_image(&self, name: &str) -> Result<ImageVersion, ClientError> {
        self.json(Method::POST, format!("/v1/images/{}/rollback", segment(name)), None::<&()>).await
    }

    async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let bytes = self.call(method, path, body, None).await?;
        serde_json::from_slice(&bytes).map_err(ClientError::Decode)
    }

    /// One request with a JSON body (if any) on a fresh connection; the body of a 2xx response, or
    /// [`ClientError::Status`].
    async fn call<B: Serialize>(
        &self,
        method: Method,
        path: String,
        body: Option<&B>,
        bearer: Option<&str>,
    ) -> Result<Bytes, ClientError> {
        let payload = match body {
            Some(body) => Some((
                Bytes::from(
                    serde_json::to_vec(body).map_err(|_| ClientError::InvalidRequest("cannot encode request body"))?,
                ),
                "application/json",
            )),
            None => None,
        };
        self.call_raw(method, path, payload, bearer, MAX_RESPONSE_BYTES).await
    }

    /// One request with a body of the given content type (if any); reads at most `limit` bytes of response.
    async fn call_raw(
        &self,
        method: Method,
        path: String,
        body: Option<(Bytes, &'static str)>,
        bearer: Option<&str>,
        limit: usize,
    ) -> Result<Bytes, ClientError> {
        let body = body.map(|(bytes, content_type)| (content_type, bytes));
        let first = self.preferred.load(Ordering::Relaxed);
        let n = self.origins.len();
        let mut last = None;
        for attempt in 0..n {
            let i = (first + attempt) % n;
            let origin = &self.origins[i];
            let request = origin.request(method.clone(), path.clone(), body.clone(), &self.caller, bearer, true)?;
            let answer = match origin.exchange(&self.caller, request, self.timeout, limit, self.observer.as_ref()).await
            {
                Ok((status, body)) if status.is_success() => Ok(body),
                Ok((status, body)) => Err(ClientError::Status { status: status.as_u16(), body: error_message(&body) }),
                Err(e) => Err(e),
            };
            let try_next = match &answer {
                Err(ClientError::Connect { .. }) => true,
                Err(ClientError::Status { status: 503, .. }) => true,
                Err(ClientError::Timeout(_)) => method == Method::GET,
                _ => false,
            };
            if !try_next || attempt + 1 == n {
                if answer.is_ok() || !try_next {
                    self.preferred.store(i, Ordering::Relaxed);
                }
                return answer;
            }
            tracing::debug!(replica = %origin.base_url(), error = ?answer.as_ref().err(), "control replica unreachable; trying the next");
            last = Some(answer);
        }
        last.unwrap_or(Err(ClientError::InvalidRequest("no control URL")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_parsed_strictly() {
        let caller = Caller::anonymous();
        assert_eq!(ControlClient::new("http://h:1/", &caller).expect("client").base_url(), "http://h:1");
        assert_eq!(ControlClient::new("https://h:1", &caller).expect("client").base_url(), "https://h:1");
        assert!(matches!(ControlClient::new("ftp://h:1", &caller), Err(ClientError::InvalidUrl { .. })));
        let both = ControlClient::new("https://a:1, https://b:2/", &caller).expect("client");
        assert_eq!((both.base_url().as_str(), both.base_urls().as_str()), ("https://a:1", "https://a:1,https://b:2"));
        assert!(matches!(ControlClient::new("https://a:1,", &caller), Err(ClientError::InvalidUrl { .. })));
    }
}
