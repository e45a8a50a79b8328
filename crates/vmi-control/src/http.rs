//! The HTTP API: [`app`] builds the router, [`serve`] / [`serve_with`] run it (and the placer) until shut down.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri, header};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use vmi_control_api::Caller as Outbound;
use vmi_control_api::auth::{
    AdminRequest, AuditEntry, AuditQuery, EnrollRequest, Enrollment, JoinToken, MAX_AUDIT_REPORTED, NewCredential,
    Principal,
};
use vmi_control_api::model::{
    AuthRequest, CatalogedCheckpoint, CheckpointEntry, DEFAULT_MIGRATIONS_LISTED, Device, FollowRules, HeartbeatReply,
    HeartbeatRequest, LEASE_MS, LoggedMigration, MAX_MIGRATIONS_LISTED, MigrationRecord, NameRequest, NewDevice,
    PairCode, PairRequest, PhoneLocation, Placement, PlacementInfo, PlacementRequest, ReportRequest, SiteSpec,
    SiteStatus, StandbyRequest, TerminalReport, User,
};
use vmi_control_api::tenants::{
    Admission, AdmitRequest, ImageVersion, MAX_LINUX_IMAGE_BYTES, Tenant, TenantRequest, TenantStatus, TenantUpdate,
    UserImage, UserRequest,
};

use vmi_trust::{Authority, CONTROL_NAME, CertRequest, ConnectionLimits, PublicKey, site_name};

use crate::access::{self, Caller, Guard};
use crate::device_cache::DeviceCache;
use crate::metrics::ControlMetrics;
use crate::pairing::PairCodes;
use crate::placement::PolicyParams;
use crate::store::now_ms;
use crate::validate::validate_report;
use crate::{ControlError, Leadership, Reports, Store, run_placer};
use vmi_openapi::{ApiDoc, ApiRouter, Op};

type StoreRef = Arc<dyn Store>;

/// How many times a site is told of a revocation before giving up (backing off from 250 ms to 30 s).
const REVOCATION_TRIES: u32 = 10;

/// How long a site join token works.
pub const JOIN_TOKEN_TTL_MS: u64 = 24 * 60 * 60 * 1000;
type ApiResult<T> = Result<T, ControlError>;

/// What every handler can reach ([`Services`]), behind one `Arc`: a request clones it a few times (middleware,
/// extractors), and one reference count costs less than one per field on two cores.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The durable registry, the in-memory terminal reports and pairing codes, the guard against guessing, the
/// provider CA, and how this service calls sites.
pub(crate) struct Services {
    pub(crate) store: StoreRef,
    reports: Reports,
    pair_codes: PairCodes,
    pub(crate) guard: Arc<Guard>,
    /// Device tokens that authenticated lately (a terminal's reports need no store lookup each).
    pub(crate) devices: Arc<DeviceCache>,
    /// Whether the store tells the cache of revocations (else it is not used).
    pub(crate) devices_followed: bool,
    pub(crate) now_ms: Arc<dyn Fn() -> u64 + Send + Sync>,
    trust: Option<ControlTrust>,
    metrics: Arc<ControlMetrics>,
}

impl FromRef<AppState> for Arc<ControlMetrics> {
    fn from_ref(state: &AppState) -> Self {
        state.metrics.clone()
    }
}

/// The control service's part in the provider's PKI: the CA it issues site certificates from, and how it calls
/// sites (its own certificate, claiming `control`).
#[derive(Clone)]
pub struct ControlTrust {
    /// The provider CA.
    pub authority: Arc<Authority>,
    /// How the service calls sites (revocations, migrate orders).
    pub caller: Outbound,
    /// The host names the service's certificate names besides `control.vmi` (what it answers to).
    pub hosts: Vec<String>,
}

impl FromRef<AppState> for PairCodes {
    fn from_ref(state: &AppState) -> Self {
        state.pair_codes.clone()
    }
}

impl FromRef<AppState> for StoreRef {
    fn from_ref(state: &AppState) -> Self {
        state.store.clone()
    }
}

impl FromRef<AppState> for Reports {
    fn from_ref(state: &AppState) -> Self {
        state.reports.clone()
    }
}

/// `Json<T>` whose rejection is a [`ControlError::BadRequest`] naming the problem, so every error body has the
/// same `{"error": ...}` shape.
struct ApiJson<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ControlError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ControlError::BadRequest(rejection.body_text())),
        }
    }
}

/// `Query<T>` with the same JSON error shape as [`ApiJson`].
struct ApiQuery<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ControlError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ControlError::BadRequest(rejection.body_text())),
        }
    }
}

/// The control service's router with a fresh, empty [`Reports`], no CA (enrollment refused) and the system clock.
/// Cheap to build, so tests build one per case.
pub fn app(store: Arc<dyn Store>) -> Router {
    app_with(store, Reports::new(), None, Arc::new(Guard::new()))
}

/// The control service's router over `store` and `reports` (share `reports` with [`run_placer`]), issuing site
/// certificates from `trust`'s CA, with `guard` against guessing.
///
/// Every route is authenticated by [`access::authenticate`] and then authorized by the rule named beside it,
/// before its handler reads a body (docs/SECURITY.md has the table of who may call what).
pub fn app_with(store: Arc<dyn Store>, reports: Reports, trust: Option<ControlTrust>, guard: Arc<Guard>) -> Router {
    app_measured(store, reports, trust, guard, Arc::new(ControlMetrics::new()))
}

/// [`app_with`], counting in `metrics` (shared with [`run_placer`]).
pub fn app_measured(
    store: Arc<dyn Store>,
    reports: Reports,
    trust: Option<ControlTrust>,
    guard: Arc<Guard>,
    metrics: Arc<ControlMetrics>,
) -> Router {
    documented(store, reports, trust, guard, metrics, |api| api).0
}

/// The service's OpenAPI document (`GET /openapi.json` serves the same), built from its routes.
pub fn openapi() -> Result<serde_json::Value, ControlError> {
    let store: Arc<dyn Store> = Arc::new(crate::SqliteStore::in_memory()?);
    let extra = replica_route(store.clone(), &ServeOptions::default());
    let metrics = Arc::new(ControlMetrics::new());
    Ok(documented(store, Reports::new(), None, Arc::new(Guard::new()), metrics, extra).1.to_json())
}

/// Who may call a route, in the words of docs/SECURITY.md's table.
mod who {
    pub(super) const OPERATOR: &str = "operator";
    pub(super) const ADMIN: &str = "operator or tenant admin";
    pub(super) const USER_ADMIN: &str = "admin of {user} (the operator, or an admin of the user's tenant)";
    pub(super) const SIGNED_IN: &str = "any signed-in caller";
    pub(super) const DEVICE: &str = "a device (its own user, taken from the token)";
    pub(super) const USER_OWNER: &str = "a device of {user}, or an admin of {user}";
    pub(super) const USER_READER: &str = "any site, a device of {user}, or an admin of {user}";
    pub(super) const ANY_SITE: &str = "any site (its certificate)";
    pub(super) const OWNER_SITE: &str = "the site the placement names as {user}'s owner";
    pub(super) const SITE_ITSELF: &str = "the site {id} itself";
    pub(super) const SITE_OR_OPERATOR: &str = "a site or the operator";
    pub(super) const SITE_ITSELF_OR_OPERATOR: &str = "the site {id} itself, or the operator";
    pub(super) const SITE_OR_USER_ADMIN: &str = "any site, or an admin of {user}";
}

/// The router over `store` and its description: every route through [`ApiRouter::route`] behind authentication
/// and the browser policy, then `extra` routes (the replica status of [`serve_with`]) and `GET /openapi.json`
/// outside them, then the request counter around everything.
fn documented(
    store: Arc<dyn Store>,
    reports: Reports,
    trust: Option<ControlTrust>,
    guard: Arc<Guard>,
    metrics: Arc<ControlMetrics>,
    extra: impl FnOnce(ApiRouter<AppState>) -> ApiRouter<AppState>,
) -> (Router, ApiDoc) {
    let trust_hosts = trust.as_ref().map(|t| t.hosts.clone());
    let http = metrics.http.clone();
    let devices = Arc::new(DeviceCache::new());
    let follower = Arc::downgrade(&devices);
    // Weak: a store outlives the routers built over it (tests build many).
    let devices_followed = store.follow_revocations(Arc::new(move |device| {
        if let Some(cache) = follower.upgrade() {
            cache.revoked(device);
        }
    }));
    let state = AppState(Arc::new(Services {
        store,
        reports,
        pair_codes: PairCodes::new(),
        guard,
        devices,
        devices_followed,
        now_ms: Arc::new(now_ms),
        trust,
        metrics,
    }));
    use access::{
        admin, any_site, device, operator, signed_in, site_itself, site_itself_or_operator, site_or_operator,
        site_or_user_admin, user_admin, user_owner, user_reader,
    };
    use who::*;
    let api = ApiRouter::new(
        "Seed VMI control service",
        "Users, devices and their tokens, tenants and images, sites and their leases, placements, migrations and the \
         checkpoint catalogue. Who may call each route is its x-vmi-access (docs/SECURITY.md); errors are JSON, \
         {\"error\": \"what was wrong\"}.",
    )
    // Anyone: health, the dashboard's files, and the exchanges whose secret is in the body (guarded against guessing).
    .route(
        "/healthz",
        get(|| async { "ok" }),
        [Op::get("Says the process answers").answers(200, Some("text/plain"), "ok")],
    )
    .route(
        "/readyz",
        get(readyz),
        [Op::get("Says whether the service can answer: its store reads")
            .answers(200, Some("application/json"), "ready")
            .answers(503, Some("application/json"), "not ready, and why")],
    )
    .route(
        "/metrics",
        get(scrape).route_layer(from_fn(operator)),
        [Op::get("The service's metrics in the Prometheus (OpenMetrics) text format").access(OPERATOR).answers(
            200,
            Some(vmi_telemetry::CONTENT_TYPE),
            "the metrics",
        )],
    )
    .route(
        "/dashboard",
        get(crate::dashboard::index),
        [Op::get("The operator dashboard's page (its data is read with the operator's token)").answers(
            200,
            Some("text/html"),
            "the page",
        )],
    )
    .route(
        "/dashboard/{file}",
        get(crate::dashboard::file),
        [Op::get("One of the dashboard's files").answers(200, None, "the file").answers(404, None, "no such file")],
    )
    .route(
        "/v1/pair",
        post(pair),
        [Op::post("Pairs a new device with the pairing code's user (codes are one-time; wrong ones lock out)")
            .json::<PairRequest>()
            .returns::<NewDevice>(201, "the device and its token, shown once")
            .answers(429, Some("application/json"), "too many wrong codes from this address")],
    )
    .route(
        "/v1/sites/{id}/enroll",
        post(enroll),
        [Op::post("Enrolls a site: its join token buys a certificate for its key")
            .json::<EnrollRequest>()
            .returns::<Enrollment>(200, "the site's certificate and the provider CA")],
    )
    // Operators and tenant admins.
    .route(
        "/v1/users",
        post(create_user).get(list_users).route_layer(from_fn(admin)),
        [
            Op::post("Creates a user (a tenant admin: in their tenant)")
                .access(ADMIN)
                .json::<UserRequest>()
                .returns::<User>(201, "the user"),
            Op::get("Lists users (a tenant admin: their tenant's)").access(ADMIN).returns::<Vec<User>>(200, "users"),
        ],
    )
    .route(
        "/v1/users/{user}/devices",
        post(create_device).get(list_devices).route_layer(from_fn_with_state(state.clone(), user_admin)),
        [
            Op::post("Adds a device for the user")
                .access(USER_ADMIN)
                .json::<NameRequest>()
                .returns::<NewDevice>(201, "the device and its token, shown once"),
            Op::get("Lists the user's devices (no tokens)").access(USER_ADMIN).returns::<Vec<Device>>(200, "devices"),
        ],
    )
    .route(
        "/v1/users/{user}/pair-code",
        post(user_pair_code).route_layer(from_fn_with_state(state.clone(), user_admin)),
        [Op::post("Makes a one-time pairing code for the user")
            .access(USER_ADMIN)
            .returns::<PairCode>(201, "the code")],
    )
    .route(
        "/v1/devices/{id}/revoke",
        post(revoke_device).route_layer(from_fn(signed_in)),
        [Op::post("Revokes a device: its token stops working and its sessions close")
            .access("an admin of the device's user, or a device of the same user")
            .answers(204, None, "revoked")],
    )
    .route(
        "/v1/sites/{id}/drain",
        post(drain).route_layer(from_fn(operator)),
        [Op::post("Drains a site: the placer moves its phones away and places none there")
            .access(OPERATOR)
            .returns::<SiteStatus>(200, "the site")],
    )
    .route(
        "/v1/sites/{id}/undrain",
        post(undrain).route_layer(from_fn(operator)),
        [Op::post("Ends a site's drain").access(OPERATOR).returns::<SiteStatus>(200, "the site")],
    )
    .route(
        "/v1/sites/{id}/join-token",
        post(join_token).route_layer(from_fn(operator)),
        [Op::post("Makes a one-time join token for a new site")
            .access(OPERATOR)
            .returns::<JoinToken>(201, "the token")],
    )
    .route(
        "/v1/tenants",
        post(create_tenant).get(list_tenants).route_layer(from_fn(operator)),
        [
            Op::post("Creates a tenant with its quotas and image")
                .access(OPERATOR)
                .json::<TenantRequest>()
                .returns::<Tenant>(201, "the tenant"),
            Op::get("Lists tenants with what each uses now")
                .access(OPERATOR)
                .returns::<Vec<TenantStatus>>(200, "tenants"),
        ],
    )
    .route(
        "/v1/tenants/{name}",
        put(update_tenant).route_layer(from_fn(operator)),
        [Op::put("Changes a tenant's quotas or image (fields left out stay)")
            .access(OPERATOR)
            .json::<TenantUpdate>()
            .returns::<Tenant>(200, "the tenant")],
    )
    .route(
        "/v1/tenants/{name}/admins",
        post(create_tenant_admin).route_layer(from_fn(operator)),
        [Op::post("Makes an admin credential for a tenant")
            .access(OPERATOR)
            .json::<AdminRequest>()
            .returns::<NewCredential>(201, "the credential, its token shown once")],
    )
    .route(
        "/v1/images/{name}/versions",
        post(publish_image)
            .route_layer(from_fn(operator))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_LINUX_IMAGE_BYTES)),
        [Op::post("Publishes a new version of an image (a phone image's WebAssembly, or a Linux image)")
            .access(OPERATOR)
            .body("application/octet-stream")
            .returns::<ImageVersion>(201, "the version")],
    )
    .route(
        "/v1/images/{name}/rollback",
        post(rollback_image).route_layer(from_fn(operator)),
        [Op::post("Makes the image's previous version current again")
            .access(OPERATOR)
            .returns::<ImageVersion>(200, "the version now current")],
    )
    .route(
        "/v1/audit",
        get(list_audit).route_layer(from_fn(operator)).merge(post(report_audit).route_layer(from_fn(any_site))),
        [
            Op::get("Reads the audit log: who did what, where, when")
                .access(OPERATOR)
                .query("user", "only entries about this user")
                .query("site", "only entries from this site")
                .query("principal", "only entries by this caller")
                .query("since_ms", "only entries at or after this time (ms since the Unix epoch)")
                .query("until_ms", "only entries before this time")
                .returns::<Vec<AuditEntry>>(200, "entries"),
            Op::post("Reports a site's audit entries (stamped with the caller's site)")
                .access(ANY_SITE)
                .json::<Vec<AuditEntry>>()
                .answers(204, None, "kept"),
        ],
    )
    // Devices, for their own user (taken from the token).
    .route(
        "/v1/phone",
        get(phone).route_layer(from_fn(device)),
        [Op::get("Where the device's phone runs now, and the rules the placer follows it by")
            .access(DEVICE)
            .returns::<PhoneLocation>(200, "the phone's site and terminal URL")],
    )
    .route(
        "/v1/phone/report",
        post(post_report).route_layer(from_fn(device)),
        [Op::post("Reports the terminal's position and round trips (the placer follows them)")
            .access(DEVICE)
            .json::<ReportRequest>()
            .answers(204, None, "kept")],
    )
    .route(
        "/v1/phone/pair-code",
        post(device_pair_code).route_layer(from_fn(device)),
        [Op::post("Makes a pairing code for another device of the same user")
            .access(DEVICE)
            .returns::<PairCode>(201, "the code")],
    )
    .route(
        "/v1/users/{user}/report",
        get(get_report).route_layer(from_fn_with_state(state.clone(), user_owner)),
        [Op::get("The user's latest terminal report").access(USER_OWNER).returns::<TerminalReport>(200, "the report")],
    )
    // Sites, each as itself.
    .route(
        "/v1/auth",
        post(authenticate).route_layer(from_fn(any_site)),
        [Op::post("Says whose a token is (a site checks a terminal's token)")
            .access(ANY_SITE)
            .json::<AuthRequest>()
            .returns::<Principal>(200, "the token's principal")],
    )
    .route(
        "/v1/sites/{id}",
        put(put_site).route_layer(from_fn(site_itself_or_operator)),
        [Op::put("Registers a site, or changes its URL")
            .access(SITE_ITSELF_OR_OPERATOR)
            .json::<SiteSpec>()
            .returns::<SiteStatus>(200, "the site")],
    )
    .route(
        "/v1/sites/{id}/heartbeat",
        post(heartbeat).route_layer(from_fn_with_state(state.clone(), site_itself)),
        [Op::post("A site's heartbeat: renews its lease; the answer lists the users placed on it when that changed")
            .access(SITE_ITSELF)
            .json::<HeartbeatRequest>()
            .returns::<HeartbeatReply>(200, "the lease and the placements")],
    )
    .route(
        "/v1/users/{user}/checkpoints/{site}",
        put(put_site_checkpoints).route_layer(from_fn_with_state(state.clone(), site_itself)),
        [Op::put("What a site holds of the user's checkpoints (the whole list)")
            .access("the site {site} itself")
            .json::<Vec<CheckpointEntry>>()
            .answers(204, None, "kept")],
    )
    .route(
        "/v1/users/{user}/admit",
        post(admit).delete(release).route_layer(from_fn(any_site)),
        [
            Op::post("Admits a new phone against its tenant's quotas")
                .access(ANY_SITE)
                .json::<AdmitRequest>()
                .returns::<Admission>(200, "admitted")
                .answers(403, Some("application/json"), "over a quota, said in words"),
            Op::delete("Releases the phone's admission").access(ANY_SITE).answers(204, None, "released"),
        ],
    )
    .route(
        "/v1/users/{user}/standby",
        put(set_standby).delete(clear_standby).route_layer(from_fn(any_site)),
        [
            Op::put("Names the site holding the phone's standby copy at an epoch")
                .access(OWNER_SITE)
                .json::<StandbyRequest>()
                .answers(204, None, "named"),
            Op::delete("Unnames the phone's standby copy").access(OWNER_SITE).answers(204, None, "unnamed"),
        ],
    )
    .route(
        "/v1/migrations",
        post(record_migration)
            .route_layer(from_fn(any_site))
            .merge(get(list_migrations).route_layer(from_fn(signed_in))),
        [
            Op::post("Logs a migration the calling site took part in")
                .access("a site, the record's from or to")
                .json::<MigrationRecord>()
                .returns::<LoggedMigration>(201, "the logged record"),
            Op::get("Lists migrations, newest first")
                .access("the operator: all; a device: its own user's; a tenant admin: a user of their tenant")
                .query("user", "only this user's")
                .query("limit", "at most this many (1 to 1000)")
                .returns::<Vec<LoggedMigration>>(200, "migrations"),
        ],
    )
    .route(
        "/v1/users/{user}/placement",
        put(set_placement)
            .route_layer(from_fn(site_or_operator))
            .merge(get(get_placement).route_layer(from_fn_with_state(state.clone(), user_reader))),
        [
            Op::put("Places the user's phone on a site (a site: only onto itself, with the expected epoch)")
                .access(SITE_OR_OPERATOR)
                .json::<PlacementRequest>()
                .returns::<Placement>(200, "the new placement and its epoch")
                .answers(409, Some("application/json"), "the epoch moved meanwhile"),
            Op::get("Where the user's phone is placed").access(USER_READER).returns::<PlacementInfo>(200, "it"),
        ],
    )
    .route(
        "/v1/users/{user}/checkpoints",
        get(list_checkpoints).route_layer(from_fn_with_state(state.clone(), user_reader)),
        [Op::get("The catalogue of the user's checkpoints, each with the sites holding it")
            .access(USER_READER)
            .returns::<Vec<CatalogedCheckpoint>>(200, "checkpoints")],
    )
    .route(
        "/v1/users/{user}/image",
        get(user_image).route_layer(from_fn_with_state(state.clone(), site_or_user_admin)),
        [Op::get("The image version the user's phone should run now")
            .access(SITE_OR_USER_ADMIN)
            .returns::<UserImage>(200, "the version")
            .answers(404, Some("application/json"), "none published: sites run their built-in phone")],
    )
    .route(
        "/v1/images/{name}/versions/{version}",
        get(image_wasm).route_layer(from_fn(site_or_operator)),
        [Op::get("One version of an image, as published").access(SITE_OR_OPERATOR).answers(
            200,
            Some("application/octet-stream"),
            "the image",
        )],
    )
    // Anyone signed in.
    .route(
        "/v1/sites",
        get(list_sites).route_layer(from_fn(signed_in)),
        [Op::get("Lists the registered sites with their load and health")
            .access(SIGNED_IN)
            .returns::<Vec<SiteStatus>>(200, "sites")],
    )
    .route(
        "/v1/images",
        get(list_images).route_layer(from_fn(signed_in)),
        [Op::get("Lists the images' current versions").access(SIGNED_IN).returns::<Vec<ImageVersion>>(200, "images")],
    );
    // The layers wrap the routes added so far; `extra` and the document come after them, outside authentication
    // and the audit log: they need no store (a replica answers `GET /v1/replica` while etcd has no quorum).
    let api = api.map(|router| {
        router
            .fallback(|uri: Uri| async move { ControlError::not_found("endpoint", uri.path()) })
            // A request of a trusted caller in a trace continues it (vmi_telemetry::trace), once authenticated.
            .layer(from_fn(vmi_telemetry::trace::accept))
            .layer(from_fn_with_state(state.clone(), access::authenticate))
            // What a browser elsewhere must not do here (docs/SECURITY.md, "Browsers").
            .layer(from_fn_with_state(
                vmi_trust::browser::BrowserPolicy::new(
                    std::iter::once(CONTROL_NAME.to_owned()).chain(trust_hosts.into_iter().flatten()),
                ),
                vmi_trust::browser::browser_hygiene,
            ))
    });
    let (router, doc) = extra(api).finish();
    // Outermost: every request counted by its route and answer, refusals included.
    let router = router.layer(from_fn_with_state(http, vmi_telemetry::track)).with_state(state);
    (router, doc)
}

/// `GET /v1/replica` (anyone), which [`serve_with`] adds: which replica answered, whether it runs the placer, and
/// its store writes.
fn replica_route(
    store: Arc<dyn Store>,
    options: &ServeOptions,
) -> impl FnOnce(ApiRouter<AppState>) -> ApiRouter<AppState> + use<> {
    let replica = ReplicaStatus {
        replica: options.replica.clone(),
        elected: options.leadership.is_elected(),
        leading: false,
        writes: None,
    };
    let leadership = options.leadership.clone();
    move |api| {
        api.route(
            "/v1/replica",
            get(move || {
                let writes = store.writes().map(|(transactions, heartbeats)| StoreWrites { transactions, heartbeats });
                let status = ReplicaStatus { leading: leadership.is_leading(), writes, ..replica.clone() };
                async move { Json(status) }
            }),
            [Op::get("Which control replica answered, whether it runs the placer, and its store writes")
                .returns::<ReplicaStatus>(200, "the replica")],
        )
    }
}

/// `GET /readyz` (anyone): 200 when the service can read its store (so it can answer what it is asked), 503
/// naming why not. `GET /healthz` says only that the process answers.
async fn readyz(State(store): State<StoreRef>) -> Response {
    let store = store.clone();
    let read = tokio::task::spawn_blocking(move || store.list_sites().map(|sites| sites.len())).await;
    match read {
        Ok(Ok(sites)) => Json(serde_json::json!({ "ready": true, "sites": sites })).into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "why": format!("the store cannot be read: {e}") })),
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "ready": false, "why": e.to_string() })))
            .into_response(),
    }
}

/// `GET /metrics` (the operator): the service's metrics in the Prometheus (OpenMetrics) text format.
async fn scrape(State(state): State<AppState>) -> Response {
    let (metrics, store, now) = (state.metrics.clone(), state.store.clone(), (state.now_ms)());
    tokio::task::spawn_blocking(move || metrics.exposition(store.as_ref(), now))
        .await
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}

/// How [`serve_with`] runs the service.
#[derive(Clone)]
pub struct ServeOptions {
    /// Run the placer with these parameters; `None` turns it off (placements then only change by request).
    pub placer: Option<PolicyParams>,
    /// The placer's period.
    pub placer_every: Duration,
    /// The provider CA and the service's certificate: serves HTTPS (plain HTTP only to loopback peers), issues
    /// site certificates, calls sites over mutual TLS. `None`: plain HTTP on loopback, no enrollment.
    pub trust: Option<ServiceTrust>,
    /// Connection caps and timeouts of the listener.
    pub limits: ConnectionLimits,
    /// Whether this replica runs the placer now ([`Leadership::alone`]: the only replica).
    pub leadership: Leadership,
    /// Where terminal reports are kept: this replica's memory ([`Reports::new`]) or, for replicas sharing etcd,
    /// [`EtcdStore::shared_reports`](crate::EtcdStore::shared_reports).
    pub reports: Reports,
    /// This replica's name, as `GET /v1/replica` says it.
    pub replica: String,
}

/// What a control service with TLS holds: its [`ControlTrust`] and the server configuration it listens with.
#[derive(Clone)]
pub struct ServiceTrust {
    /// The CA and the caller towards sites.
    pub control: ControlTrust,
    /// The HTTPS server configuration (the service's certificate; client certificates optional, CA-checked).
    pub server: Arc<vmi_trust::ServerConfig>,
}

impl ServiceTrust {
    /// Trust from the CA in `authority`, with a fresh certificate for `control.vmi` and `hosts`.
    pub fn new(authority: Arc<Authority>, hosts: &[&str]) -> Result<ServiceTrust, ControlError> {
        let credentials = authority.credentials_for(CONTROL_NAME, hosts).map_err(ControlError::Trust)?;
        let server = vmi_trust::server_config(&credentials).map_err(ControlError::Trust)?;
        let caller = Outbound::machine(&credentials, "control")
            .map_err(|e| ControlError::BadRequest(format!("cannot use the control certificate: {e}")))?;
        let hosts = hosts.iter().map(|h| h.to_string()).collect();
        Ok(ServiceTrust { control: ControlTrust { authority, caller, hosts }, server })
    }
}

impl Default for ServeOptions {
    /// The placer on, with [`PolicyParams::default`], every second; no TLS; default limits.
    fn default() -> Self {
        ServeOptions {
            placer: Some(PolicyParams::default()),
            placer_every: Duration::from_secs(1),
            trust: None,
            limits: ConnectionLimits::default(),
            leadership: Leadership::alone(),
            reports: Reports::new(),
            replica: "control".to_owned(),
        }
    }
}

/// Serves [`app`] on `listener`, with the placer on at its defaults ([`ServeOptions::default`]), until `shutdown`
/// completes, then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, store, ServeOptions::default(), shutdown).await
}

/// Serves the API on `listener` and runs the placer as `options` say, until `shutdown` completes. The placer
/// stops when shutdown begins (or when the server fails); then in-flight requests finish and this returns.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        vmi_trust::check_listen(addr, options.trust.is_some()).map_err(std::io::Error::other)?;
        tracing::info!(%addr, placer = options.placer.is_some(), tls = options.trust.is_some(), "control service listening");
    }
    let reports = options.reports.clone();
    let (stopping, mut stop) = tokio::sync::watch::channel(false);
    let stopping = Arc::new(stopping);
    let signal = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.send_replace(true);
        }
    };
    let control_trust = options.trust.as_ref().map(|t| t.control.clone());
    let caller = control_trust.as_ref().map_or_else(Outbound::anonymous, |t| t.caller.clone());
    let metrics = Arc::new(ControlMetrics::new());
    let extra = replica_route(store.clone(), &options);
    let (router, _) =
        documented(store.clone(), reports.clone(), control_trust, Arc::new(Guard::new()), metrics.clone(), extra);
    // With the placer on, `GET /v1/phone` says its rules (every replica: a follower may lead next).
    let router = match &options.placer {
        Some(params) => router.layer(Extension(follow_rules(params))),
        None => router,
    };
    let tls = options.trust.as_ref().map(|t| t.server.clone());
    let server = async {
        let result = vmi_trust::serve(listener, router, tls, options.limits, signal).await;
        stopping.send_replace(true);
        result
    };
    // A task of its own: its rounds call the store, which may block for a while, and must not hold up the
    // server's accept loop.
    let placer = options.placer.map(|params| {
        let stopped = async move {
            // An error means the sender is gone, which also means stop.
            let _ = stop.wait_for(|stopping| *stopping).await;
        };
        let (leadership, every) = (options.leadership.clone(), options.placer_every);
        tokio::spawn(run_placer(store, reports, caller, (params, every), leadership, stopped, metrics))
    });
    let result = server.await;
    if let Some(placer) = placer {
        // It stops when `stopping` is set, which the server did on its way out.
        let _ = placer.await;
    }
    result
}

/// `GET /v1/replica`: which control replica answered and whether it runs the placer (public, as `/healthz`).
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
struct ReplicaStatus {
    replica: String,
    /// Whether replicas elect a leader (false: this one leads alone).
    elected: bool,
    leading: bool,
    /// What this replica wrote to its store, if the store counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    writes: Option<StoreWrites>,
}

/// Writing transactions a replica committed since it started, heartbeats among them.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
struct StoreWrites {
    transactions: u64,
    heartbeats: u64,
}

/// `POST /v1/users`: an operator creates a user in any tenant; a tenant admin only in their own (the default).
async fn create_user(
    State(store): State<StoreRef>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<UserRequest>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let tenant = match &caller.principal {
        Principal::TenantAdmin { tenant, .. } => match req.tenant.as_deref() {
            None => Some(tenant.as_str()),
            Some(named) if named == tenant => Some(tenant.as_str()),
            Some(_) => {
                return Err(ControlError::Forbidden(format!("{} may create users only in {tenant}", caller.principal)));
            }
        },
        _ => req.tenant.as_deref(),
    };
    Ok((StatusCode::CREATED, Json(store.create_user_in(&req.name, tenant)?)))
}

/// `POST /v1/tenants/{name}/admins`: a credential for the tenant's administrator, shown once.
async fn create_tenant_admin(
    State(store): State<StoreRef>,
    Path(tenant): Path<String>,
    ApiJson(req): ApiJson<AdminRequest>,
) -> ApiResult<(StatusCode, Json<NewCredential>)> {
    let credential = store.create_credential(&Principal::TenantAdmin { tenant, name: req.name })?;
    tracing::info!(principal = %credential.principal, "tenant admin credential created");
    Ok((StatusCode::CREATED, Json(credential)))
}

/// `POST /v1/sites/{id}/join-token`: a one-time token for enrolling site `id`.
async fn join_token(
    State(state): State<AppState>,
    Path(site): Path<String>,
) -> ApiResult<(StatusCode, Json<JoinToken>)> {
    if state.trust.is_none() {
        return Err(ControlError::Refused("this control service runs without a CA: sites cannot enroll".to_owned()));
    }
    let token = state.store.create_join_token(&site, (state.now_ms)(), JOIN_TOKEN_TTL_MS)?;
    tracing::info!(%site, expires_ms = token.expires_ms, "join token issued");
    Ok((StatusCode::CREATED, Json(token)))
}

/// `POST /v1/sites/{id}/enroll`: a join token and a public key in, the site's certificate out. A wrong token
/// counts against the caller's address like any wrong secret.
async fn enroll(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(site): Path<String>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> ApiResult<Json<Enrollment>> {
    let trust = state.trust.as_ref().ok_or_else(|| {
        ControlError::Refused("this control service runs without a CA: sites cannot enroll".to_owned())
    })?;
    state.guard.check(caller.from)?;
    let public_key =
        hex_bytes(&req.public_key).and_then(|bytes| PublicKey::from_bytes(&bytes).ok()).ok_or_else(|| {
            ControlError::BadRequest("public_key must be a P-256 public key (65 bytes) in hex".to_owned())
        })?;
    let name = site_name(&site).map_err(|e| ControlError::BadRequest(e.to_string()))?;
    if req.hosts.len() > 8 || req.hosts.iter().any(|h| h.is_empty() || h.len() > 253) {
        return Err(ControlError::BadRequest("hosts: at most 8 names or addresses".to_owned()));
    }
    // Checked before the token is spent: a site's certificate names it and its addresses, never another machine.
    if let Some(reserved) = req.hosts.iter().find(|h| vmi_trust::is_identity_name(h)) {
        return Err(ControlError::BadRequest(format!("hosts: {reserved:?} is a machine identity name (*.vmi)")));
    }
    if !state.store.redeem_join_token(&site, &req.token, (state.now_ms)())? {
        state.guard.failure(caller.from);
        return Err(ControlError::Unauthorized);
    }
    let request = CertRequest {
        name,
        extra_hosts: req.hosts.clone(),
        public_key,
        validity_days: vmi_trust::DEFAULT_VALIDITY_DAYS,
    };
    let cert_pem = trust.authority.issue(&request).map_err(ControlError::Trust)?;
    tracing::info!(%site, hosts = ?req.hosts, "site enrolled");
    Ok(Json(Enrollment { cert_pem, ca_pem: trust.authority.cert_pem().to_owned() }))
}

/// Lowercase or uppercase hex to bytes; `None` if it is not hex.
fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// `GET /v1/audit`: the audit log, newest first.
async fn list_audit(
    State(store): State<StoreRef>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    Ok(Json(store.audit(&query)?))
}

/// `POST /v1/audit`: a site's own entries (operator actions and refusals at the site), marked as reported by it.
async fn report_audit(
    State(store): State<StoreRef>,
    Extension(caller): Extension<Caller>,
    ApiJson(entries): ApiJson<Vec<AuditEntry>>,
) -> ApiResult<StatusCode> {
    let site = caller.require_site()?.to_owned();
    let now = now_ms();
    if entries.len() > MAX_AUDIT_REPORTED {
        return Err(ControlError::BadRequest(format!("at most {MAX_AUDIT_REPORTED} entries at once")));
    }
    let entries: Vec<AuditEntry> = entries
        .into_iter()
        .map(|mut e| {
            e.site = Some(site.clone());
            e.detail = format!("reported by site {site}: {}", e.detail);
            // A site cannot date an entry in the future (where a newest-first listing would keep it on top).
            e.at_ms = e.at_ms.min(now);
            e
        })
        .collect();
    store.record_audit(&entries)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_tenant(
    State(store): State<StoreRef>,
    ApiJson(req): ApiJson<TenantRequest>,
) -> ApiResult<(StatusCode, Json<Tenant>)> {
    let tenant = store.create_tenant(&req)?;
    tracing::info!(tenant = %tenant.name, max_phones = ?tenant.max_phones, max_memory_bytes = ?tenant.max_memory_bytes,
        image = %tenant.image, "tenant created");
    Ok((StatusCode::CREATED, Json(tenant)))
}

async fn list_tenants(State(store): State<StoreRef>) -> ApiResult<Json<Vec<TenantStatus>>> {
    Ok(Json(store.tenants()?))
}

async fn update_tenant(
    State(store): State<StoreRef>,
    Path(name): Path<String>,
    ApiJson(update): ApiJson<TenantUpdate>,
) -> ApiResult<Json<Tenant>> {
    let tenant = store.update_tenant(&name, &update)?;
    tracing::info!(tenant = %name, max_phones = ?tenant.max_phones, max_memory_bytes = ?tenant.max_memory_bytes,
        image = %tenant.image, "tenant updated");
    Ok(Json(tenant))
}

/// `POST /v1/users/{user}/admit`: a site asks before it boots a phone; 403 with the quota's words if refused.
async fn admit(
    State(store): State<StoreRef>,
    State(metrics): State<Arc<ControlMetrics>>,
    Path(user): Path<String>,
    ApiJson(req): ApiJson<AdmitRequest>,
) -> ApiResult<Json<Admission>> {
    let admitted = store.admit(&user, req.memory_bytes);
    metrics.admission(admitted.is_ok());
    match admitted {
        Ok(admission) => Ok(Json(admission)),
        Err(e) => {
            if matches!(e, ControlError::Quota(_)) {
                tracing::info!(%user, "phone refused: {e}");
            }
            Err(e)
        }
    }
}

async fn release(State(store): State<StoreRef>, Path(user): Path<String>) -> ApiResult<StatusCode> {
    store.release(&user)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/users/{user}/image`: the version the user's phone should run now; 404 when its image has no
/// published version (sites then run their built-in phone).
async fn user_image(State(store): State<StoreRef>, Path(user): Path<String>) -> ApiResult<Json<UserImage>> {
    let (name, current) = store.user_image(&user)?;
    current.map(Json).ok_or_else(|| ControlError::not_found("published image", name))
}

async fn publish_image(
    State(store): State<StoreRef>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<ImageVersion>)> {
    let version = store.publish_image(&name, &body)?;
    tracing::info!(image = %name, version = version.version, hash = %version.hash, "image published");
    Ok((StatusCode::CREATED, Json(version)))
}

async fn list_images(State(store): State<StoreRef>) -> ApiResult<Json<Vec<ImageVersion>>> {
    Ok(Json(store.images()?))
}

async fn image_wasm(
    State(store): State<StoreRef>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<([(header::HeaderName, &'static str); 1], Vec<u8>)> {
    let id = format!("{name} version {version}");
    let version: u64 = version.parse().map_err(|_| ControlError::not_found("image", id.clone()))?;
    let wasm = store.image_wasm(&name, version)?.ok_or_else(|| ControlError::not_found("image", id))?;
    Ok(([(header::CONTENT_TYPE, "application/wasm")], wasm))
}

async fn rollback_image(State(store): State<StoreRef>, Path(name): Path<String>) -> ApiResult<Json<ImageVersion>> {
    let now = store.rollback_image(&name)?;
    tracing::info!(image = %name, current = now.version, "image rolled back");
    Ok(Json(now))
}

/// `GET /v1/users`: every user for an operator, the tenant's own for a tenant admin.
async fn list_users(State(store): State<StoreRef>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Vec<User>>> {
    let users = store.list_users()?;
    Ok(Json(match &caller.principal {
        Principal::TenantAdmin { tenant, .. } => {
            users.into_iter().filter(|u| u.tenant.as_deref() == Some(tenant.as_str())).collect()
        }
        _ => users,
    }))
}

async fn create_device(
    State(store): State<StoreRef>,
    Path(user): Path<String>,
    ApiJson(req): ApiJson<NameRequest>,
) -> ApiResult<(StatusCode, Json<NewDevice>)> {
    let device = store.create_device(&user, &req.name)?;
    tracing::info!(%user, device_id = device.device_id, "device created");
    Ok((StatusCode::CREATED, Json(device)))
}

async fn list_devices(State(store): State<StoreRef>, Path(user): Path<String>) -> ApiResult<Json<Vec<Device>>> {
    Ok(Json(store.list_devices(&user)?))
}

/// `POST /v1/devices/{id}/revoke`: by an administrator of the device's user, or by another device of that user
/// (the lost-phone case: the new terminal revokes the old).
async fn revoke_device(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let store = state.store.clone();
    let device_id: u64 = id.parse().map_err(|_| ControlError::not_found("device", id.clone()))?;
    let user = store.device_user(device_id)?.ok_or_else(|| ControlError::not_found("device", id))?;
    caller.require_owner_of(store.as_ref(), &user)?;
    // Revoked already or not, the sites are told (again): an earlier push may have been lost.
    if store.revoke_device(device_id)? {
        tracing::info!(device_id, "device revoked");
    }
    // Cut its live sessions at once: every site drops the device's terminals. A site that does not answer is
    // told again, backing off, for about two minutes: a lost push must not leave a thief's session open. (A site
    // refuses the token at the next Hello in any case.)
    let sites = store.list_sites()?;
    let outbound = state.trust.as_ref().map_or_else(Outbound::anonymous, |t| t.caller.clone());
    for site in sites {
        let caller = outbound.clone();
        tokio::spawn(async move {
            let url = format!("{}/v1/devices/{device_id}/revoked", site.url);
            let Ok(name) = site_name(&site.id) else { return };
            let caller = caller.expecting(&name);
            let mut wait = Duration::from_millis(250);
            for attempt in 1..=REVOCATION_TRIES {
                match caller.post_json(&url, &serde_json::json!({})).await {
                    Ok((status, _)) if status < 300 => return,
                    Ok((status, body)) => {
                        tracing::warn!(site = %site.id, status, attempt, "revocation refused: {body}")
                    }
                    Err(e) => {
                        tracing::warn!(site = %site.id, attempt, "could not tell the site about the revocation: {e}")
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            tracing::error!(site = %site.id, device_id, "the site never confirmed the revocation");
        });
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/users/{user}/pair-code`: an operator issues a one-time pairing code.
async fn user_pair_code(
    State(store): State<StoreRef>,
    State(codes): State<PairCodes>,
    Path(user): Path<String>,
) -> ApiResult<(StatusCode, Json<PairCode>)> {
    store.placement(&user)?; // the user must exist
    Ok((StatusCode::CREATED, Json(codes.issue(&user, now_ms())?)))
}

/// `POST /v1/phone/pair-code`: a signed-in device issues a code for its own user.
async fn device_pair_code(
    State(codes): State<PairCodes>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<(StatusCode, Json<PairCode>)> {
    let user = caller.principal.device_user().ok_or(ControlError::Unauthorized)?;
    Ok((StatusCode::CREATED, Json(codes.issue(user, now_ms())?)))
}

/// `POST /v1/pair {code, name}`: trades a valid code, once, for a new device token.
///
/// Codes are guessable in principle (10 digits), so a wrong code counts against the caller's address: after a
/// few, the address is locked out (429) for a doubling while; the right code works again once it ends.
async fn pair(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<PairRequest>,
) -> ApiResult<(StatusCode, Json<NewDevice>)> {
    let store = state.store.clone();
    // A site pairing for a page it served guards its own callers (by their addresses): counting its calls here
    // would lock all of its users out at once.
    let guarded = !matches!(caller.principal, Principal::Site { .. });
    if guarded {
        state.guard.check(caller.from)?;
    }
    let Some(user) = state.pair_codes.redeem(&req.code, (state.now_ms)()) else {
        if guarded {
            state.guard.failure(caller.from);
        }
        return Err(ControlError::not_found("pairing code (unknown, already used or expired)", &req.code));
    };
    let device = store.create_device(&user, &req.name)?;
    tracing::info!(user, device_id = device.device_id, "device paired");
    Ok((StatusCode::CREATED, Json(device)))
}

/// `POST /v1/auth` (sites): who a token a terminal or an operator presented to the site belongs to. Wrong
/// tokens do not count against the site's address: the site guards its own callers.
async fn authenticate(State(store): State<StoreRef>, ApiJson(req): ApiJson<AuthRequest>) -> ApiResult<Json<Principal>> {
    crate::off_the_runtime(|| store.principal(&req.token))?.map(Json).ok_or(ControlError::Unauthorized)
}

async fn put_site(
    State(store): State<StoreRef>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    ApiJson(spec): ApiJson<SiteSpec>,
) -> ApiResult<Json<SiteStatus>> {
    // Where a site is and how much it holds decide which phones and checkpoint copies come to it: after its first
    // registration only the operator changes them; the site itself may only say where it is reached.
    if !caller.principal.is_operator()
        && let Some(known) = store.site(&id)?
        && (known.lat != spec.lat || known.lon != spec.lon || known.capacity != spec.capacity)
    {
        return Err(ControlError::Forbidden(format!(
            "{id} is registered at ({}, {}) with capacity {}: only an operator changes a site's position and \
             capacity",
            known.lat, known.lon, known.capacity
        )));
    }
    // Peers and terminals check a site by the certificate it serves: an address without TLS could not prove it.
    if !spec.url.starts_with("https://") {
        return Err(ControlError::BadRequest(format!(
            "site URL {:?}: a site is reached over TLS, so its URL is https://",
            spec.url
        )));
    }
    let site = store.put_site(&id, &spec)?;
    let healthy = site.healthy_at(now_ms());
    let leased = site.leased_at(now_ms());
    Ok(Json(SiteStatus { site, healthy, leased }))
}

async fn heartbeat(
    State(store): State<StoreRef>,
    State(metrics): State<Arc<ControlMetrics>>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> ApiResult<Json<HeartbeatReply>> {
    if let Some(why) = &req.degraded {
        if why.len() > 1000 {
            return Err(ControlError::BadRequest("degraded: at most 1000 bytes".to_owned()));
        }
        tracing::warn!(site = %id, why, "site degraded: its phones move away");
    }
    // Bounded: the site's lease runs out two heartbeats after its last renewal, so an answer must come quickly
    // even while the store hangs (a write waits for a leader that is gone); the write may still land later.
    let write = {
        let (store, id, degraded) = (store.clone(), id.clone(), req.degraded.clone());
        let known = req.placed_version;
        // Past the bound nobody waits for the write: it does not wait out an etcd election either (with many
        // sites beating while quorum is lost, abandoned writes would fill the blocking pool).
        let by = std::time::Instant::now() + HEARTBEAT_WRITE_WITHIN;
        tokio::task::spawn_blocking(move || {
            crate::store::answer_by(by, || store.heartbeat_since(&id, req.phones, degraded.as_deref(), now_ms(), known))
        })
    };
    let written = match tokio::time::timeout(HEARTBEAT_WRITE_WITHIN, write).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(ControlError::Unavailable("the heartbeat's write stopped".into())),
        Err(_) => Err(ControlError::Unavailable("the heartbeat's write did not finish in time".into())),
    };
    metrics.heartbeat();
    match written {
        Ok(placed) => Ok(Json(HeartbeatReply {
            lease_ms: LEASE_MS,
            placed_unchanged: placed.users.is_none(),
            placed: placed.users.unwrap_or_default(),
            placed_version: placed.version,
            frozen: false,
        })),
        // The heartbeat could not be written: if that is because nothing can be written anywhere (no quorum,
        // proven), no failover can happen either, and the site is told it may go on.
        Err(ControlError::Unavailable(why)) => {
            match tokio::task::spawn_blocking(move || store.placements_frozen()).await {
                Ok(Ok(true)) => {
                    tracing::debug!(site = %id, "store without quorum: placements frozen; the site keeps its lease");
                    Ok(Json(HeartbeatReply {
                        lease_ms: LEASE_MS,
                        placed: Vec::new(),
                        placed_version: 0,
                        placed_unchanged: false,
                        frozen: true,
                    }))
                }
                _ => Err(ControlError::Unavailable(why)),
            }
        }
        Err(e) => Err(e),
    }
}

/// How long a heartbeat's write may take before the answer says whether placements are frozen instead.
const HEARTBEAT_WRITE_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);

/// `PUT /v1/users/{user}/standby` `{site, epoch}`: the site running the phone says which site holds its standby
/// copy (docs/FAILOVER.md). Only the owner at the placement's current epoch may.
async fn set_standby(
    State(store): State<StoreRef>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
    ApiJson(req): ApiJson<StandbyRequest>,
) -> ApiResult<StatusCode> {
    let Principal::Site { id } = &caller.principal else {
        return Err(ControlError::Forbidden("only the site running the phone names its standby".into()));
    };
    store.set_standby(&user, id, &req.site, req.epoch)?;
    tracing::debug!(%user, owner = %id, standby = %req.site, epoch = req.epoch, "standby copy recorded");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/users/{user}/standby`: the site running the phone says it has no standby copy any more (it was
/// checked out to a terminal, or stopped): no failover may start the old copy.
async fn clear_standby(
    State(store): State<StoreRef>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
) -> ApiResult<StatusCode> {
    let Principal::Site { id } = &caller.principal else {
        return Err(ControlError::Forbidden("only the site running the phone clears its standby".into()));
    };
    store.clear_standby(&user, id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn drain(State(store): State<StoreRef>, Path(id): Path<String>) -> ApiResult<Json<SiteStatus>> {
    let site = store.set_draining(&id, true)?;
    tracing::info!(site = %id, "site draining");
    Ok(Json(SiteStatus { healthy: site.healthy_at(now_ms()), leased: site.leased_at(now_ms()), site }))
}

async fn undrain(State(store): State<StoreRef>, Path(id): Path<String>) -> ApiResult<Json<SiteStatus>> {
    let site = store.set_draining(&id, false)?;
    tracing::info!(site = %id, "site no longer draining");
    Ok(Json(SiteStatus { healthy: site.healthy_at(now_ms()), leased: site.leased_at(now_ms()), site }))
}

async fn list_sites(State(store): State<StoreRef>) -> ApiResult<Json<Vec<SiteStatus>>> {
    let now = now_ms();
    let sites = store.list_sites()?.into_iter().map(|site| SiteStatus {
        healthy: site.healthy_at(now),
        leased: site.leased_at(now),
        site,
    });
    Ok(Json(sites.collect()))
}

/// `PUT /v1/users/{user}/placement`: an operator places a phone anywhere; a site only on itself and only by
/// compare-and-set (the ownership handoff of a migration it is the destination of, or a fence of its own).
async fn set_placement(
    State(store): State<StoreRef>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
    ApiJson(req): ApiJson<PlacementRequest>,
) -> ApiResult<Json<Placement>> {
    if let Principal::Site { id } = &caller.principal
        && (req.site != *id || req.expected_epoch.is_none())
    {
        return Err(ControlError::Forbidden(format!(
            "{} may place a phone only on itself and only with an expected epoch",
            caller.principal
        )));
    }
    let request = serde_json::json!({ "site": req.site, "expected_epoch": req.expected_epoch });
    let placement = crate::history::placement_move("move", &user, request, || {
        store.move_placement(&user, &req.site, req.expected_epoch)
    })?;
    tracing::info!(%user, site = %placement.site, epoch = placement.epoch, expected_epoch = ?req.expected_epoch,
        "placement set");
    Ok(Json(placement))
}

async fn get_placement(State(store): State<StoreRef>, Path(user): Path<String>) -> ApiResult<Json<PlacementInfo>> {
    let placement = store.placement(&user)?.ok_or_else(|| ControlError::not_found("placement", &user))?;
    let site = store.site(&placement.site)?.ok_or_else(|| ControlError::not_found("site", &placement.site))?;
    Ok(Json(PlacementInfo { site: placement.site, site_url: site.url, epoch: placement.epoch }))
}

/// `GET /v1/phone`: the caller's token decides whose phone; there is no way to name another user.
async fn phone(
    State(store): State<StoreRef>,
    Extension(caller): Extension<Caller>,
    follow: Option<Extension<FollowRules>>,
) -> ApiResult<Json<PhoneLocation>> {
    let user = caller.principal.device_user().ok_or(ControlError::Unauthorized)?.to_owned();
    let placement = store.placement(&user)?.ok_or_else(|| ControlError::not_found("placement", &user))?;
    let site = store.site(&placement.site)?.ok_or_else(|| ControlError::not_found("site", &placement.site))?;
    let follow = follow.map(|Extension(rules)| rules);
    Ok(Json(PhoneLocation { user, ws_url: site.ws_url(), site: site.id, site_url: site.url, follow }))
}

/// The placer's rules as a terminal reads them.
fn follow_rules(params: &PolicyParams) -> FollowRules {
    FollowRules {
        min_gain_ms: params.min_gain_ms,
        min_gain_ratio: params.min_gain_ratio,
        dwell_ms: params.dwell_ms,
        report_max_age_ms: params.report_max_age_ms,
    }
}

/// `POST /v1/phone/report`: like `GET /v1/phone`, the token alone says whose report it is.
async fn post_report(
    State(reports): State<Reports>,
    State(metrics): State<Arc<ControlMetrics>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ReportRequest>,
) -> ApiResult<StatusCode> {
    let user = caller.principal.device_user().ok_or(ControlError::Unauthorized)?;
    validate_report(&req)?;
    metrics.report();
    reports.record(user, req, now_ms());
    Ok(StatusCode::NO_CONTENT)
}

async fn get_report(State(reports): State<Reports>, Path(user): Path<String>) -> ApiResult<Json<TerminalReport>> {
    reports.latest(&user).map(Json).ok_or_else(|| ControlError::not_found("report", user))
}

/// `POST /v1/migrations`: a site logs a migration it took part in.
async fn record_migration(
    State(store): State<StoreRef>,
    State(metrics): State<Arc<ControlMetrics>>,
    Extension(caller): Extension<Caller>,
    ApiJson(record): ApiJson<MigrationRecord>,
) -> ApiResult<(StatusCode, Json<LoggedMigration>)> {
    let site = caller.require_site()?;
    if record.from != site && record.to != site {
        return Err(ControlError::Forbidden(format!("{} may log only migrations it took part in", caller.principal)));
    }
    let logged = store.record_migration(&record, now_ms())?;
    metrics.migration(&record);
    tracing::info!(user = %record.user, from = %record.from, to = %record.to, epoch = record.epoch,
        outcome = %record.outcome, downtime_us = record.downtime_us, "migration logged");
    Ok((StatusCode::CREATED, Json(logged)))
}

/// `PUT /v1/users/{user}/checkpoints/{site}`: what `site` holds of `user`'s checkpoints
/// (the whole list; it replaces the last report).
async fn put_site_checkpoints(
    State(store): State<StoreRef>,
    Path((user, site)): Path<(String, String)>,
    ApiJson(entries): ApiJson<Vec<CheckpointEntry>>,
) -> ApiResult<StatusCode> {
    store.put_site_checkpoints(&user, &site, &entries)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/users/{user}/checkpoints`: the catalogue of `user`'s checkpoints, each with the sites holding it.
async fn list_checkpoints(
    State(store): State<StoreRef>,
    Path(user): Path<String>,
) -> ApiResult<Json<Vec<CatalogedCheckpoint>>> {
    Ok(Json(store.checkpoints(&user)?))
}

/// Query of `GET /v1/migrations`.
#[derive(Deserialize, schemars::JsonSchema)]
struct MigrationsQuery {
    user: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/migrations`: all for an operator; one user's for a device (its own) or a tenant admin (their users).
async fn list_migrations(
    State(store): State<StoreRef>,
    Extension(caller): Extension<Caller>,
    ApiQuery(mut query): ApiQuery<MigrationsQuery>,
) -> ApiResult<Json<Vec<LoggedMigration>>> {
    match &caller.principal {
        Principal::Operator { .. } => {}
        Principal::Device { user, .. } if query.user.is_none() => query.user = Some(user.clone()),
        Principal::Device { .. } | Principal::TenantAdmin { .. } => match &query.user {
            Some(user) => caller.require_owner_of(store.as_ref(), user)?,
            None => return Err(ControlError::BadRequest("name the user: ?user=NAME".to_owned())),
        },
        other => return Err(ControlError::Forbidden(format!("{other} may not read the migration log"))),
    }
    let limit = query.limit.unwrap_or(DEFAULT_MIGRATIONS_LISTED);
    if !(1..=MAX_MIGRATIONS_LISTED).contains(&limit) {
        return Err(ControlError::BadRequest(format!("limit must be 1 to {MAX_MIGRATIONS_LISTED}")));
    }
    Ok(Json(store.migrations(query.user.as_deref(), limit)?))
}
