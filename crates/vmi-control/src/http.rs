//! The HTTP API: [`app`] builds the router, [`serve`] / [`serve_with`] run it (and the placer) until shut down.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use vmi_control_api::http_client::post_json;
use vmi_control_api::model::{
    AuthRequest, CatalogedCheckpoint, CheckpointEntry, DEFAULT_MIGRATIONS_LISTED, Device, HeartbeatRequest, Identity,
    LoggedMigration, MAX_MIGRATIONS_LISTED, MigrationRecord, NameRequest, NewDevice, PairCode, PairRequest,
    PhoneLocation, Placement, PlacementInfo, PlacementRequest, ReportRequest, SiteSpec, SiteStatus, TerminalReport,
    User,
};
use vmi_control_api::tenants::{
    Admission, AdmitRequest, ImageVersion, MAX_IMAGE_BYTES, Tenant, TenantRequest, TenantStatus, TenantUpdate,
    UserImage, UserRequest,
};

use crate::pairing::PairCodes;
use crate::placement::PolicyParams;
use crate::store::now_ms;
use crate::validate::validate_report;
use crate::{ControlError, Reports, Store, run_placer};

type StoreRef = Arc<dyn Store>;
type ApiResult<T> = Result<T, ControlError>;

/// What every handler can reach: the durable registry and the in-memory terminal reports.
#[derive(Clone)]
struct AppState {
    store: StoreRef,
    reports: Reports,
    pair_codes: PairCodes,
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

/// The control service's router with a fresh, empty [`Reports`]. Cheap to build, so tests build one per case.
pub fn app(store: Arc<dyn Store>) -> Router {
    app_with(store, Reports::new())
}

/// The control service's router over `store` and `reports` (share `reports` with [`run_placer`]).
pub fn app_with(store: Arc<dyn Store>, reports: Reports) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/users", post(create_user).get(list_users))
        .route("/v1/users/{user}/devices", post(create_device).get(list_devices))
        .route("/v1/devices/{id}/revoke", post(revoke_device))
        .route("/v1/users/{user}/pair-code", post(user_pair_code))
        .route("/v1/phone/pair-code", post(device_pair_code))
        .route("/v1/pair", post(pair))
        .route("/v1/auth", post(authenticate))
        .route("/v1/sites", get(list_sites))
        .route("/v1/sites/{id}", put(put_site))
        .route("/v1/sites/{id}/heartbeat", post(heartbeat))
        .route("/v1/sites/{id}/drain", post(drain))
        .route("/v1/sites/{id}/undrain", post(undrain))
        .route("/v1/users/{user}/placement", put(set_placement).get(get_placement))
        .route("/v1/users/{user}/report", get(get_report))
        .route("/v1/phone", get(phone))
        .route("/v1/phone/report", post(post_report))
        .route("/v1/migrations", post(record_migration).get(list_migrations))
        .route("/v1/users/{user}/checkpoints", get(list_checkpoints))
        .route("/v1/users/{user}/checkpoints/{site}", put(put_site_checkpoints))
        .route("/v1/tenants", post(create_tenant).get(list_tenants))
        .route("/v1/tenants/{name}", put(update_tenant))
        .route("/v1/users/{user}/admit", post(admit).delete(release))
        .route("/v1/users/{user}/image", get(user_image))
        .route(
            "/v1/images/{name}/versions",
            post(publish_image).layer(axum::extract::DefaultBodyLimit::max(MAX_IMAGE_BYTES)),
        )
        .route("/v1/images", get(list_images))
        .route("/v1/images/{name}/versions/{version}", get(image_wasm))
        .route("/v1/images/{name}/rollback", post(rollback_image))
        .fallback(|uri: Uri| async move { ControlError::not_found("endpoint", uri.path()) })
        .with_state(AppState { store, reports, pair_codes: PairCodes::new() })
}

/// How [`serve_with`] runs the service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeOptions {
    /// Run the placer with these parameters; `None` turns it off (placements then only change by request).
    pub placer: Option<PolicyParams>,
    /// The placer's period.
    pub placer_every: Duration,
}

impl Default for ServeOptions {
    /// The placer on, with [`PolicyParams::default`], every second.
    fn default() -> Self {
        ServeOptions { placer: Some(PolicyParams::default()), placer_every: Duration::from_secs(1) }
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
        tracing::info!(%addr, placer = options.placer.is_some(), "control service listening");
    }
    let reports = Reports::new();
    let (stopping, mut stop) = tokio::sync::watch::channel(false);
    let stopping = Arc::new(stopping);
    let signal = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.send_replace(true);
        }
    };
    let router = app_with(store.clone(), reports.clone());
    let server = async {
        let result = axum::serve(listener, router).with_graceful_shutdown(signal).await;
        stopping.send_replace(true);
        result
    };
    let placer = async {
        if let Some(params) = options.placer {
            let stopped = async move {
                // An error means the sender is gone, which also means stop.
                let _ = stop.wait_for(|stopping| *stopping).await;
            };
            run_placer(store, reports, params, options.placer_every, stopped).await;
        }
    };
    let (result, ()) = tokio::join!(server, placer);
    result
}

async fn create_user(
    State(store): State<StoreRef>,
    ApiJson(req): ApiJson<UserRequest>,
) -> ApiResult<(StatusCode, Json<User>)> {
    Ok((StatusCode::CREATED, Json(store.create_user_in(&req.name, req.tenant.as_deref())?)))
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
    Path(user): Path<String>,
    ApiJson(req): ApiJson<AdmitRequest>,
) -> ApiResult<Json<Admission>> {
    match store.admit(&user, req.memory_bytes) {
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

async fn list_users(State(store): State<StoreRef>) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(store.list_users()?))
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

async fn revoke_device(State(store): State<StoreRef>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let device_id: u64 = id.parse().map_err(|_| ControlError::not_found("device", id))?;
    store.revoke_device(device_id)?;
    tracing::info!(device_id, "device revoked");
    // Cut its live sessions at once: every site drops the device's terminals. (A site
    // that misses this still refuses the token at its next Hello.)
    let sites = store.list_sites()?;
    for site in sites {
        tokio::spawn(async move {
            let url = format!("{}/v1/devices/{device_id}/revoked", site.url);
            if let Err(e) = post_json(&url, &serde_json::json!({})).await {
                tracing::warn!(site = %site.id, "could not tell the site about the revocation: {e}");
            }
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
    State(store): State<StoreRef>,
    State(codes): State<PairCodes>,
    headers: HeaderMap,
) -> ApiResult<(StatusCode, Json<PairCode>)> {
    let token = bearer_token(&headers).ok_or(ControlError::Unauthorized)?;
    let identity = store.authenticate(token)?.ok_or(ControlError::Unauthorized)?;
    Ok((StatusCode::CREATED, Json(codes.issue(&identity.user, now_ms())?)))
}

/// `POST /v1/pair {code, name}`: trades a valid code, once, for a new device token.
async fn pair(
    State(store): State<StoreRef>,
    State(codes): State<PairCodes>,
    ApiJson(req): ApiJson<PairRequest>,
) -> ApiResult<(StatusCode, Json<NewDevice>)> {
    let user = codes
        .redeem(&req.code, now_ms())
        .ok_or_else(|| ControlError::not_found("pairing code (unknown, already used or expired)", &req.code))?;
    let device = store.create_device(&user, &req.name)?;
    tracing::info!(user, device_id = device.device_id, "device paired");
    Ok((StatusCode::CREATED, Json(device)))
}

async fn authenticate(State(store): State<StoreRef>, ApiJson(req): ApiJson<AuthRequest>) -> ApiResult<Json<Identity>> {
    store.authenticate(&req.token)?.map(Json).ok_or(ControlError::Unauthorized)
}

async fn put_site(
    State(store): State<StoreRef>,
    Path(id): Path<String>,
    ApiJson(spec): ApiJson<SiteSpec>,
) -> ApiResult<Json<SiteStatus>> {
    let site = store.put_site(&id, &spec)?;
    let healthy = site.healthy_at(now_ms());
    Ok(Json(SiteStatus { site, healthy }))
}

async fn heartbeat(
    State(store): State<StoreRef>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> ApiResult<StatusCode> {
    store.heartbeat(&id, req.phones, now_ms())?;
    Ok(StatusCode::NO_CONTENT)
}

async fn drain(State(store): State<StoreRef>, Path(id): Path<String>) -> ApiResult<Json<SiteStatus>> {
    let site = store.set_draining(&id, true)?;
    tracing::info!(site = %id, "site draining");
    Ok(Json(SiteStatus { healthy: site.healthy_at(now_ms()), site }))
}

async fn undrain(State(store): State<StoreRef>, Path(id): Path<String>) -> ApiResult<Json<SiteStatus>> {
    let site = store.set_draining(&id, false)?;
    tracing::info!(site = %id, "site no longer draining");
    Ok(Json(SiteStatus { healthy: site.healthy_at(now_ms()), site }))
}

async fn list_sites(State(store): State<StoreRef>) -> ApiResult<Json<Vec<SiteStatus>>> {
    let now = now_ms();
    let sites = store.list_sites()?.into_iter().map(|site| SiteStatus { healthy: site.healthy_at(now), site });
    Ok(Json(sites.collect()))
}

async fn set_placement(
    State(store): State<StoreRef>,
    Path(user): Path<String>,
    ApiJson(req): ApiJson<PlacementRequest>,
) -> ApiResult<Json<Placement>> {
    let placement = store.move_placement(&user, &req.site, req.expected_epoch)?;
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
async fn phone(State(store): State<StoreRef>, headers: HeaderMap) -> ApiResult<Json<PhoneLocation>> {
    let token = bearer_token(&headers).ok_or(ControlError::Unauthorized)?;
    let identity = store.authenticate(token)?.ok_or(ControlError::Unauthorized)?;
    let placement =
        store.placement(&identity.user)?.ok_or_else(|| ControlError::not_found("placement", &identity.user))?;
    let site = store.site(&placement.site)?.ok_or_else(|| ControlError::not_found("site", &placement.site))?;
    Ok(Json(PhoneLocation { user: identity.user, ws_url: site.ws_url(), site: site.id, site_url: site.url }))
}

/// `POST /v1/phone/report`: like `GET /v1/phone`, the token alone says whose report it is.
async fn post_report(
    State(store): State<StoreRef>,
    State(reports): State<Reports>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ReportRequest>,
) -> ApiResult<StatusCode> {
    let token = bearer_token(&headers).ok_or(ControlError::Unauthorized)?;
    let identity = store.authenticate(token)?.ok_or(ControlError::Unauthorized)?;
    validate_report(&req)?;
    reports.record(&identity.user, req, now_ms());
    Ok(StatusCode::NO_CONTENT)
}

async fn get_report(State(reports): State<Reports>, Path(user): Path<String>) -> ApiResult<Json<TerminalReport>> {
    reports.latest(&user).map(Json).ok_or_else(|| ControlError::not_found("report", user))
}

async fn record_migration(
    State(store): State<StoreRef>,
    ApiJson(record): ApiJson<MigrationRecord>,
) -> ApiResult<(StatusCode, Json<LoggedMigration>)> {
    let logged = store.record_migration(&record, now_ms())?;
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
#[derive(Deserialize)]
struct MigrationsQuery {
    user: Option<String>,
    limit: Option<usize>,
}

async fn list_migrations(
    State(store): State<StoreRef>,
    ApiQuery(query): ApiQuery<MigrationsQuery>,
) -> ApiResult<Json<Vec<LoggedMigration>>> {
    let limit = query.limit.unwrap_or(DEFAULT_MIGRATIONS_LISTED);
    if !(1..=MAX_MIGRATIONS_LISTED).contains(&limit) {
        return Err(ControlError::BadRequest(format!("limit must be 1 to {MAX_MIGRATIONS_LISTED}")));
    }
    Ok(Json(store.migrations(query.user.as_deref(), limit)?))
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}
