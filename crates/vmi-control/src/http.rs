//! The HTTP API: [`app`] builds the router, [`serve`] runs it until shut down.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use crate::model::{
    AuthRequest, Device, HeartbeatRequest, Identity, NameRequest, NewDevice, PhoneLocation, Placement, PlacementInfo,
    PlacementRequest, SiteSpec, SiteStatus, User,
};
use crate::store::now_ms;
use crate::{ControlError, Store};

type AppState = Arc<dyn Store>;
type ApiResult<T> = Result<T, ControlError>;

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

/// The control service's router. Stateless apart from `store`; cheap to build, so tests build one per case.
pub fn app(store: Arc<dyn Store>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/users", post(create_user).get(list_users))
        .route("/v1/users/{user}/devices", post(create_device).get(list_devices))
        .route("/v1/devices/{id}/revoke", post(revoke_device))
        .route("/v1/auth", post(authenticate))
        .route("/v1/sites", get(list_sites))
        .route("/v1/sites/{id}", put(put_site))
        .route("/v1/sites/{id}/heartbeat", post(heartbeat))
        .route("/v1/users/{user}/placement", put(set_placement).get(get_placement))
        .route("/v1/phone", get(phone))
        .fallback(|uri: Uri| async move { ControlError::not_found("endpoint", uri.path()) })
        .with_state(store)
}

/// Serves [`app`] on `listener` until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "control service listening");
    }
    axum::serve(listener, app(store)).with_graceful_shutdown(shutdown).await
}

async fn create_user(
    State(store): State<AppState>,
    ApiJson(req): ApiJson<NameRequest>,
) -> ApiResult<(StatusCode, Json<User>)> {
    Ok((StatusCode::CREATED, Json(store.create_user(&req.name)?)))
}

async fn list_users(State(store): State<AppState>) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(store.list_users()?))
}

async fn create_device(
    State(store): State<AppState>,
    Path(user): Path<String>,
    ApiJson(req): ApiJson<NameRequest>,
) -> ApiResult<(StatusCode, Json<NewDevice>)> {
    let device = store.create_device(&user, &req.name)?;
    tracing::info!(%user, device_id = device.device_id, "device created");
    Ok((StatusCode::CREATED, Json(device)))
}

async fn list_devices(State(store): State<AppState>, Path(user): Path<String>) -> ApiResult<Json<Vec<Device>>> {
    Ok(Json(store.list_devices(&user)?))
}

async fn revoke_device(State(store): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let device_id: u64 = id.parse().map_err(|_| ControlError::not_found("device", id))?;
    store.revoke_device(device_id)?;
    tracing::info!(device_id, "device revoked");
    Ok(StatusCode::NO_CONTENT)
}

async fn authenticate(State(store): State<AppState>, ApiJson(req): ApiJson<AuthRequest>) -> ApiResult<Json<Identity>> {
    store.authenticate(&req.token)?.map(Json).ok_or(ControlError::Unauthorized)
}

async fn put_site(
    State(store): State<AppState>,
    Path(id): Path<String>,
    ApiJson(spec): ApiJson<SiteSpec>,
) -> ApiResult<Json<SiteStatus>> {
    let site = store.put_site(&id, &spec)?;
    let healthy = site.healthy_at(now_ms());
    Ok(Json(SiteStatus { site, healthy }))
}

async fn heartbeat(
    State(store): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> ApiResult<StatusCode> {
    store.heartbeat(&id, req.phones, now_ms())?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_sites(State(store): State<AppState>) -> ApiResult<Json<Vec<SiteStatus>>> {
    let now = now_ms();
    let sites = store.list_sites()?.into_iter().map(|site| SiteStatus { healthy: site.healthy_at(now), site });
    Ok(Json(sites.collect()))
}

async fn set_placement(
    State(store): State<AppState>,
    Path(user): Path<String>,
    ApiJson(req): ApiJson<PlacementRequest>,
) -> ApiResult<Json<Placement>> {
    let placement = store.set_placement(&user, &req.site)?;
    tracing::info!(%user, site = %placement.site, epoch = placement.epoch, "placement set");
    Ok(Json(placement))
}

async fn get_placement(State(store): State<AppState>, Path(user): Path<String>) -> ApiResult<Json<PlacementInfo>> {
    let placement = store.placement(&user)?.ok_or_else(|| ControlError::not_found("placement", &user))?;
    let site = store.site(&placement.site)?.ok_or_else(|| ControlError::not_found("site", &placement.site))?;
    Ok(Json(PlacementInfo { site: placement.site, site_url: site.url, epoch: placement.epoch }))
}

/// `GET /v1/phone`: the caller's token decides whose phone; there is no way to name another user.
async fn phone(State(store): State<AppState>, headers: HeaderMap) -> ApiResult<Json<PhoneLocation>> {
    let token = bearer_token(&headers).ok_or(ControlError::Unauthorized)?;
    let identity = store.authenticate(token)?.ok_or(ControlError::Unauthorized)?;
    let placement =
        store.placement(&identity.user)?.ok_or_else(|| ControlError::not_found("placement", &identity.user))?;
    let site = store.site(&placement.site)?.ok_or_else(|| ControlError::not_found("site", &placement.site))?;
    Ok(Json(PhoneLocation { user: identity.user, ws_url: site.ws_url(), site: site.id, site_url: site.url }))
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}
