//! The site's HTTP surface: the browser terminal, the terminal WebSocket, and operator
//! endpoints (phones, mail, screen, key-value reads).
//!
//! Every route names who may call it (`router`); docs/SECURITY.md has the table.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::Router;
use axum::extract::{Path, State, WebSocketUpgrade};
use axum::http::{Method, StatusCode, header};
use axum::middleware::from_fn;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tracing::Instrument;
use vmi_control_api::auth::Principal;
use vmi_engine::Mail;

use vmi_checkpoint::{CheckpointError, Selector};
use vmi_snapshot::SnapshotId;

use crate::access::{self, Caller};
use crate::checkout::CheckoutError;
use crate::phone::PhoneError;
use crate::{SiteError, SiteState};
use vmi_openapi::{ApiDoc, ApiRouter, Op};

/// The site's routes, each behind the rule of who may call it (docs/SECURITY.md); every request passes the
/// browser policy ([`vmi_trust::browser`]), then is authenticated ([`access::authenticate`]).
pub fn router(state: Arc<SiteState>) -> Router {
    let http = state.metrics.http.clone();
    let (router, _) = documented();
    router
        // A request of a trusted caller in a trace continues it (vmi_telemetry::trace), once authenticated.
        .layer(from_fn(vmi_telemetry::trace::accept))
        .layer(axum::middleware::from_fn_with_state(state.clone(), access::authenticate))
        // Outermost: what a browser elsewhere must not do here (docs/SECURITY.md, "Browsers").
        .layer(axum::middleware::from_fn_with_state(state.browser_policy(), vmi_trust::browser::browser_hygiene))
        // Every request counted by its route and answer, refusals included.
        .layer(axum::middleware::from_fn_with_state(http, vmi_telemetry::track))
        .with_state(state)
}

/// A site's OpenAPI document (`GET /openapi.json` serves the same), built from its routes.
pub fn openapi() -> serde_json::Value {
    documented().1.to_json()
}

/// Who may call a route, in the words of docs/SECURITY.md's table.
mod who {
    pub(super) const OPERATOR: &str = "operator";
    pub(super) const DEVICE: &str = "a device (its own user's phone, taken from the token)";
    pub(super) const OWNER_DEVICE: &str = "a device of {user}";
    pub(super) const CONTROL: &str = "the control service (its certificate)";
    pub(super) const PEER: &str = "a site (its certificate); then only the one the placement names as {user}'s owner";
}

/// Every route with its description, and `GET /openapi.json`; no state or layer yet.
fn documented() -> (Router<Arc<SiteState>>, ApiDoc) {
    use access::{control, device, operator, operator_or_control, owner_device, peer_site};
    use who::*;
    const JSON: Option<&str> = Some("application/json");
    let api = ApiRouter::new(
        "Seed VMI site",
        "An edge site: the browser terminal, the terminal WebSocket (docs/PROTOCOL.md), phones for the operator, \
         checkouts and checkpoints for a user's devices, migrations, checkpoint copies and standby records between \
         sites. Who may call each route is its x-vmi-access (docs/SECURITY.md); errors are JSON, \
         {\"error\": \"what was wrong\"}.",
    );
    let api = crate::web::routes(api)
        // Anyone: health and readiness, the page, and the terminal WebSocket (its Hello carries the device token).
        .route(
            "/healthz",
            get(|| async { "ok" }),
            [Op::get("Says the process answers").answers(200, Some("text/plain"), "ok")],
        )
        .route(
            "/readyz",
            get(readyz),
            [Op::get("Says whether the site may run phones: its lease held, not shutting down")
                .answers(200, JSON, "ready")
                .answers(503, JSON, "not ready, and why")],
        )
        .route(
            "/v1/terminal",
            get(terminal),
            [Op::get("The terminal WebSocket: Hello with a device token, then frames out and inputs in")
                .describe("docs/PROTOCOL.md. The Hello's token is checked at the control service.")
                .websocket()],
        )
        // Anyone with a pairing code: a new device for the code's user (the page pairs a browser with it).
        .route(
            "/v1/pair",
            post(pair),
            [Op::post("Pairs this browser with the pairing code's user, through the control service")
                .json::<PairBody>()
                .answers(201, JSON, "the device and its token")],
        )
        // The operator.
        .route(
            "/metrics",
            get(metrics).route_layer(from_fn(operator)),
            [Op::get("The site's metrics in the Prometheus (OpenMetrics) text format").access(OPERATOR).answers(
                200,
                Some(vmi_telemetry::CONTENT_TYPE),
                "the metrics",
            )],
        )
        .route(
            "/v1/phones",
            get(list_phones).post(create_phone).route_layer(from_fn(operator)),
            [
                Op::get("Lists the phones here with their state, and the site's residency")
                    .access(OPERATOR)
                    .answers(200, JSON, "phones"),
                Op::post("Boots a new phone for a user (admitted by the control service first)")
                    .access(OPERATOR)
                    .json::<NewPhone>()
                    .answers(201, JSON, "created")
                    .answers(403, JSON, "refused by the tenant's quota, said in words"),
            ],
        )
        .route(
            "/v1/phones/{user}/mail",
            post(send_mail).route_layer(from_fn(operator)),
            [Op::post("Delivers a mail to the phone (pushed: the phone is woken)")
                .access(OPERATOR)
                .json::<NewMail>()
                .answers(202, JSON, "delivered")],
        )
        .route(
            "/v1/phones/{user}/screen.png",
            get(screen_png).route_layer(from_fn(operator)),
            [Op::get("The phone's screen now").access(OPERATOR).answers(200, Some("image/png"), "the screen")],
        )
        .route(
            "/v1/phones/{user}/screen-hash",
            get(screen_hash).route_layer(from_fn(operator)),
            [Op::get("A hash of the phone's framebuffer (tests compare terminals with it)")
                .access(OPERATOR)
                .answers(200, JSON, "the hash")],
        )
        .route(
            "/v1/phones/{user}/logs",
            get(logs).route_layer(from_fn(operator)),
            [Op::get("The phone's recent log lines").access(OPERATOR).answers(200, JSON, "log lines")],
        )
        .route(
            "/v1/phones/{user}/kv/{key}",
            get(kv).route_layer(from_fn(operator)),
            [Op::get("One value of the phone's key-value store").access(OPERATOR).answers(
                200,
                Some("application/octet-stream"),
                "the value",
            )],
        )
        .route(
            "/v1/phones/{user}/file",
            get(guest_file).route_layer(from_fn(operator)),
            [Op::get("A file of a Linux phone's guest, read through its agent")
                .access(OPERATOR)
                .query("path", "the file's path in the guest")
                .answers(200, Some("application/octet-stream"), "the file")],
        )
        .route(
            "/v1/phones/{user}/restart",
            post(restart).route_layer(from_fn(operator)),
            [Op::post("Restarts the phone on its user's current image version").access(OPERATOR).answers(
                200,
                JSON,
                "what happened",
            )],
        )
        .route(
            "/v1/phones/{user}/checkout/cancel",
            post(cancel_checkout).route_layer(from_fn(operator)),
            [Op::post("Ends a checkout without its checkin: the phone runs here again from its last state")
                .access(OPERATOR)
                .answers(200, JSON, "cancelled")],
        )
        .route(
            "/v1/phones/{user}/checkpoints",
            get(list_checkpoints).post(take_checkpoint).route_layer(from_fn(operator)),
            [
                Op::get("Lists the phone's checkpoints held here").access(OPERATOR).returns::<Vec<
                    crate::checkpoints::CheckpointView,
                >>(
                    200, "checkpoints, oldest first"
                ),
                Op::post("Checkpoints the phone now, and copies it to a second site")
                    .access(OPERATOR)
                    .json::<NewCheckpoint>()
                    .returns::<crate::checkpoints::Taken>(200, "the checkpoint and its copy"),
            ],
        )
        .route(
            "/v1/phones/{user}/checkpoints/restore",
            post(restore_checkpoint).route_layer(from_fn(operator)),
            [Op::post("Brings the phone back to a checkpoint (its terminals stay attached)")
                .access(OPERATOR)
                .json::<RestoreRequest>()
                .returns::<crate::checkpoints::Restored>(200, "the checkpoint restored, and one to undo it")],
        )
        // The operator or the control service's placer.
        .route(
            "/v1/phones/{user}/migrate",
            post(migrate).route_layer(from_fn(operator_or_control)),
            [Op::post("Live-migrates the phone to another site")
                .access("the operator, or the control service (the placer)")
                .json::<MigrateRequest>()
                .returns::<crate::migration::MigrationReport>(200, "the migration, committed or aborted")],
        )
        // The control service.
        .route(
            "/v1/devices/{id}/revoked",
            post(device_revoked).route_layer(from_fn(control)),
            [Op::post("Closes a revoked device's sessions at once").access(CONTROL).answers(204, None, "closed")],
        )
        // The user's own devices.
        .route(
            "/v1/phones/{user}/checkout",
            post(checkout).route_layer(from_fn(owner_device)),
            [Op::post("Checks the phone out to the calling device (docs/OFFLINE.md)").access(OWNER_DEVICE).answers(
                200,
                Some("application/octet-stream"),
                "the bundle: lease, base state, image",
            )],
        )
        .route(
            "/v1/phones/{user}/checkin",
            post(checkin).route_layer(from_fn(owner_device)),
            [Op::post("Checks the phone back in from the device that holds it")
                .access(OWNER_DEVICE)
                .body("application/octet-stream")
                .answers(200, JSON, "checked in")],
        )
        .route(
            "/v1/me/checkpoints",
            get(my_checkpoints).post(checkpoint_my_phone).route_layer(from_fn(device)),
            [
                Op::get("Lists the checkpoints of the token's phone").access(DEVICE).answers(200, JSON, "checkpoints"),
                Op::post("Checkpoints the token's phone now").access(DEVICE).json::<NewCheckpoint>().answers(
                    200,
                    JSON,
                    "the checkpoint",
                ),
            ],
        )
        .route(
            "/v1/me/checkpoints/restore",
            post(restore_my_phone).route_layer(from_fn(device)),
            [Op::post("Brings the token's phone back to a checkpoint")
                .access(DEVICE)
                .json::<RestoreRequest>()
                .answers(200, JSON, "restored")],
        )
        .route(
            "/v1/me/pair-code",
            post(my_pair_code).route_layer(from_fn(device)),
            [Op::post("Makes a pairing code for another device of the token's user")
                .access(DEVICE)
                .answers(201, JSON, "the code")],
        )
        .route(
            "/v1/me/checkout",
            post(checkout_my_phone).route_layer(from_fn(device)),
            [Op::post("Checks the token's phone out to this device").access(DEVICE).answers(
                200,
                Some("application/octet-stream"),
                "the bundle",
            )],
        )
        .route(
            "/v1/demo/sites",
            get(demo_sites).route_layer(from_fn(device)),
            [Op::get("The sites, as the control service lists them (asked with the device's token)")
                .access(DEVICE)
                .answers(200, JSON, "sites")],
        )
        .route(
            "/v1/demo/me",
            get(demo_me).route_layer(from_fn(device)),
            [Op::get("Whose phone the token is for, and where it runs").access(DEVICE).answers(200, JSON, "the phone")],
        )
        .route(
            "/v1/demo/report",
            get(demo_latest_report).post(demo_report).route_layer(from_fn(device)),
            [
                Op::get("The token's user's latest terminal report").access(DEVICE).answers(200, JSON, "the report"),
                Op::post("Reports the terminal's position and round trips to the control service")
                    .access(DEVICE)
                    .json::<DemoReport>()
                    .answers(204, None, "sent"),
            ],
        )
        .route(
            "/v1/demo/migrations",
            get(demo_migrations).route_layer(from_fn(device)),
            [Op::get("The token's user's migrations").access(DEVICE).answers(200, JSON, "migrations")],
        )
        // Other sites: migrations in, checkpoint copies.
        .route(
            "/v1/migrate",
            get(migrate_in).route_layer(from_fn(peer_site)),
            [Op::get("A live migration into this site (docs/MIGRATION.md)")
                .access("a site (its certificate); then the placement check")
                .websocket()],
        )
        .route(
            "/v1/replicas/{user}/missing",
            post(replica_missing).route_layer(from_fn(peer_site)),
            [Op::post("Which of a checkpoint's objects this site lacks").access(PEER).json::<Keys>().answers(
                200,
                JSON,
                "the missing keys",
            )],
        )
        .route(
            "/v1/replicas/{user}/import",
            post(replica_import).route_layer(from_fn(peer_site)),
            [Op::post("A checkpoint copied here")
                .access(PEER)
                .body("application/octet-stream")
                .answers(200, JSON, "stored")
                .answers(409, JSON, "objects still missing")],
        )
        .route(
            "/v1/replicas/{user}/objects/{kind}/{hash}",
            get(replica_object).route_layer(from_fn(peer_site)),
            [Op::get("One chunk or page table as stored here, to repair the owner's damaged one")
                .access(PEER)
                .answers(200, Some("application/octet-stream"), "the object")
                .answers(404, JSON, "not here")],
        )
        // Other sites: standby records of their phones; the control service: start one here (a failover).
        .route(
            "/v1/standby/{user}",
            post(standby_record).route_layer(from_fn(peer_site)),
            [Op::post("One record of the sender's phone for its standby copy here")
                .access("a site (its certificate); then only the phone's owner at the epoch")
                .query("epoch", "the placement epoch the sender owns the phone at")
                .query("full", "1 for a full state, 0 for an incremental record")
                .body("application/octet-stream")
                .answers(204, None, "synced here")
                .answers(409, JSON, "a full state must come first")],
        )
        .route(
            "/v1/standby/{user}/promote",
            post(standby_promote).route_layer(from_fn(control)),
            [Op::post("Starts the phone from its standby copy here (a failover)").access(CONTROL).answers(
                200,
                JSON,
                "whether it started",
            )],
        );
    api.finish()
}

/// `GET /readyz` (anyone): 200 once the site may run phones (its lease held: the control service answered a
/// heartbeat lately) and it is not shutting down; 503 saying which not. `GET /healthz` says only that the process
/// answers.
async fn readyz(State(site): State<Arc<SiteState>>) -> Response {
    let why = if site.registry().is_closing() {
        Some("the site is shutting down")
    } else if !site.holds_lease() {
        Some("no lease: the control service has not answered a heartbeat lately")
    } else {
        None
    };
    match why {
        None => Json(serde_json::json!({ "ready": true, "site": site.id })).into_response(),
        Some(why) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "ready": false, "site": site.id, "why": why })))
                .into_response()
        }
    }
}

/// `GET /metrics` (the operator): the site's metrics in the Prometheus (OpenMetrics) text format.
async fn metrics(State(site): State<Arc<SiteState>>) -> Response {
    site.metrics.exposition(site.checked_out().len())
}

/// An error as an HTTP answer: status and a JSON body naming the problem.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<SiteError> for ApiError {
    /// The one place a site's errors become HTTP statuses. The answer carries the whole
    /// chain of causes (these are operator and site-to-site routes: the cause is what an
    /// operator needs); a 500 is also logged with it.
    fn from(e: SiteError) -> Self {
        let status = match &e {
            SiteError::NoPhone(_) | SiteError::NotPlaced(_) => StatusCode::NOT_FOUND,
            SiteError::BadUser(_) => StatusCode::BAD_REQUEST,
            // Damage in the site's own store, like a corrupt chunk.
            SiteError::CorruptSnapshot(_) => StatusCode::UNPROCESSABLE_ENTITY,
            SiteError::Full(_) | SiteError::Closing => StatusCode::SERVICE_UNAVAILABLE,
            SiteError::Exists(_)
            | SiteError::Moving(_)
            | SiteError::PlacedElsewhere { .. }
            | SiteError::AlreadyThere { .. }
            | SiteError::WrongImage(_)
            | SiteError::CheckedOut(_) => StatusCode::CONFLICT,
            SiteError::Checkout(c) => match c {
                CheckoutError::NotCheckedOut(_) => StatusCode::NOT_FOUND,
                CheckoutError::LeaseRefused(_) => StatusCode::CONFLICT,
                CheckoutError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                CheckoutError::Forbidden(_) => StatusCode::FORBIDDEN,
                CheckoutError::BadRequest(_) => StatusCode::BAD_REQUEST,
                CheckoutError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            SiteError::Phone { source, .. } => match source {
                PhoneError::Gone => StatusCode::NOT_FOUND,
                PhoneError::Moving
                | PhoneError::Crashed { .. }
                | PhoneError::NoGoodState { .. }
                | PhoneError::NoScreen => StatusCode::CONFLICT,
                PhoneError::Vm(_) | PhoneError::Chain(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            SiteError::Admission { status, .. } => StatusCode::from_u16(*status).unwrap_or(StatusCode::FORBIDDEN),
            SiteError::Image(_) | SiteError::Replica(_) => StatusCode::BAD_GATEWAY,
            SiteError::Control(vmi_control_api::ClientError::Status { status: 404, body }) => {
                return ApiError(StatusCode::NOT_FOUND, body.clone());
            }
            SiteError::Checkpoint(c) => match c {
                CheckpointError::UnknownUser(_)
                | CheckpointError::UnknownCheckpoint { .. }
                | CheckpointError::NoneBefore { .. } => StatusCode::NOT_FOUND,
                CheckpointError::InvalidUser(_) | CheckpointError::InvalidKey(_) | CheckpointError::BadBundle(_) => {
                    StatusCode::BAD_REQUEST
                }
                CheckpointError::CorruptChunk { .. }
                | CheckpointError::CorruptManifest { .. }
                | CheckpointError::MissingChunk { .. }
                | CheckpointError::MissingManifest { .. }
                | CheckpointError::Incomplete { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            // The disk would not take it: said as such, with the file and the reason.
            SiteError::Io { .. } => StatusCode::INSUFFICIENT_STORAGE,
            SiteError::Engine(_) | SiteError::Control(_) | SiteError::Background(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let words = vmi_engine::error_chain(&e);
        if status == StatusCode::INTERNAL_SERVER_ERROR || status == StatusCode::INSUFFICIENT_STORAGE {
            tracing::error!("site error: {words}");
        }
        ApiError(status, words)
    }
}

/// Runs `work` in a task of its own: a client that goes away mid-request cannot cut it
/// off halfway (a migration with the phone frozen, a checkout between stopping the phone
/// and keeping its base). The task stays in the request's span (and trace).
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, SiteError>> + Send + 'static,
) -> Result<T, ApiError> {
    let result = tokio::spawn(work.instrument(tracing::Span::current()))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(result?)
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
}

async fn terminal(
    ws: WebSocketUpgrade,
    State(site): State<Arc<SiteState>>,
    peer: Option<Extension<vmi_trust::Peer>>,
    headers: axum::http::HeaderMap,
) -> Response {
    // A web page may open a terminal only if it was served by a site (this one, or another the phone came from):
    // a page elsewhere must not feed this site's lockout with wrong Hellos from the user's own address.
    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
        let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
        if !terminal_origin_allowed(&site, origin.to_str().unwrap_or("null"), host).await {
            let why = format!("a page from {origin:?} may not open a terminal here");
            return ApiError(StatusCode::FORBIDDEN, why).into_response();
        }
    }
    // One limit, the document's (docs/PROTOCOL.md, "Transport"): a bigger message is
    // answered with Error(BadMessage) by the session.
    let limit = vmi_protocol::wire::MAX_MESSAGE_LEN;
    // Wrong tokens in Hello count against the address, as wrong bearer tokens do.
    let from = peer.map(|Extension(p)| p.addr.ip().to_canonical());
    // Before its Hello a caller is unknown, yet may send a message up to the limit: only so many at once.
    let Ok(greeting) = site.greeting.clone().try_acquire_owned() else {
        let why = format!("{HELLOS_AT_ONCE} terminals are saying Hello already; try again in a moment");
        return ApiError(StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    };
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| crate::session::run(socket, site, from, greeting))
}

/// Whether a page of `origin` may open a terminal WebSocket on this site (whose `Host` was `host`): its own
/// pages, pages served on this machine (the loopback demo), and pages of registered sites.
async fn terminal_origin_allowed(site: &SiteState, origin: &str, host: &str) -> bool {
    let Some((_, authority)) = origin.split_once("://") else { return false };
    if authority.eq_ignore_ascii_case(host) {
        return true;
    }
    let origin_host = authority.rsplit_once(':').map_or(authority, |(h, _)| h).trim_matches(['[', ']']);
    if origin_host.eq_ignore_ascii_case("localhost")
        || origin_host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    {
        return true;
    }
    site.registered_origins().await.iter().any(|o| o.eq_ignore_ascii_case(origin))
}

async fn list_phones(State(site): State<Arc<SiteState>>) -> Json<serde_json::Value> {
    let mut phones = Vec::new();
    for user in site.users() {
        let Some(phone) = site.phone_link(&user) else { continue };
        if let Ok(status) = phone.status().await {
            // The image with its published name and version, when the site knows them.
            let image = vmi_engine::ImageHash::from_hex(&status.image).map(|h| site.image_ref(&h));
            phones.push(serde_json::json!({ "user": user, "site": site.id, "phone": status, "image": image }));
        }
    }
    // Phones out on a terminal are this site's too: listed with where they are.
    for (user, why) in site.checked_out() {
        let status = serde_json::json!({ "status": "checked out", "detail": why, "terminals": 0 });
        phones.push(serde_json::json!({ "user": user, "site": site.id, "phone": status }));
    }
    // The site's residency: how many phones hold memory now, and what the hibernated ones share.
    let resident = phones.iter().filter(|p| p["phone"]["resident"] == true).count();
    let hibernation = site.residency_summary(resident);
    Json(serde_json::json!({ "site": site.id, "phones": phones, "hibernation": hibernation }))
}

#[derive(Deserialize, schemars::JsonSchema)]
struct NewPhone {
    user: String,
}

async fn create_phone(State(site): State<Arc<SiteState>>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let NewPhone { user } = json_body(&body)?;
    // Admission (403 with the tenant's quota in words), then the boot, off the async workers.
    site.create_phone(&user).await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "user": user, "site": site.id }))).into_response())
}

/// `POST /v1/phones/{user}/restart`: stops the phone with a full snapshot and boots it
/// again on its user's current image version; 200 with what happened (`upgrade_error`
/// says why it stayed on its old image, if it did).
async fn restart(State(site): State<Arc<SiteState>>, Path(user): Path<String>) -> Result<Response, ApiError> {
    // Its own task: a caller that goes away must not leave the phone stopped halfway.
    let report = detached(async move { site.restart_phone(&user).await }).await?;
    Ok(Json(report).into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
struct NewMail {
    #[serde(default = "default_from")]
    from: String,
    subject: String,
    #[serde(default)]
    body: String,
    /// Tell the phone at once (default), or leave the mail for its next mailbox check.
    #[serde(default = "yes")]
    push: bool,
}

fn yes() -> bool {
    true
}

fn default_from() -> String {
    "postmaster@seed-vmi".into()
}

async fn send_mail(
    State(site): State<Arc<SiteState>>,
    Path(user): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let mail: NewMail = json_body(&body)?;
    if let Some(why) = site.checkout_refusal(&user) {
        return Err(ApiError(StatusCode::CONFLICT, format!("{why}: mail waits until it is back")));
    }
    if let Err(retry_after) = site.guard.allow_mail(&user, &mail.from) {
        let why = format!("too many mails from {} to {user} lately; try again later", mail.from);
        let mut refused = ApiError(StatusCode::TOO_MANY_REQUESTS, why).into_response();
        let secs = axum::http::HeaderValue::from(retry_after.as_secs().max(1));
        refused.headers_mut().insert(axum::http::header::RETRY_AFTER, secs);
        return Ok(refused);
    }
    let push = mail.push;
    let mail = Mail { from: mail.from, subject: mail.subject, body: mail.body };
    site.phone(&user)?.mail(mail, push).await.map_err(|e| {
        // Over a size limit is the sender's problem; the rest (mailbox full, phone moving
        // or crashed) passes.
        let status = match &e {
            PhoneError::Vm(vmi_engine::VmError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            PhoneError::Gone => StatusCode::NOT_FOUND,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, vmi_engine::error_chain(&e))
    })?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn screen_png(State(site): State<Arc<SiteState>>, Path(user): Path<String>) -> Result<Response, ApiError> {
    let shot = site.phone(&user)?.screen().await.map_err(|e| SiteError::phone(&user, e))?;
    let (w, h, rgba) = (shot.width, shot.height, shot.rgba);
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, w, h);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer =
            encoder.write_header().map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let opaque = vmi_protocol::display::opaque(&rgba);
        writer.write_image_data(&opaque).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    }
    Ok(([(header::CONTENT_TYPE, "image/png")], png_bytes).into_response())
}

async fn screen_hash(State(site): State<Arc<SiteState>>, Path(user): Path<String>) -> Result<Response, ApiError> {
    let shot = site.phone(&user)?.screen().await.map_err(|e| SiteError::phone(&user, e))?;
    let (w, h, rgba) = (shot.width, shot.height, shot.rgba);
    let hash = vmi_protocol::display::screen_hash(&rgba);
    Ok(Json(serde_json::json!({ "width": w, "height": h, "hash": format!("{hash:016x}") })).into_response())
}

async fn kv(
    State(site): State<Arc<SiteState>>,
    Path((user, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    match site.phone(&user)?.kv(key.clone()).await.map_err(|e| SiteError::phone(&user, e))? {
        Some(value) => Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response()),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("{user}'s phone has no key {key:?}"))),
    }
}

/// `GET /v1/phones/{user}/file?path=P`: a file of a Linux phone's guest (at most 48 KiB), read by its agent.
async fn guest_file(
    State(site): State<Arc<SiteState>>,
    Path(user): Path<String>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let Some(path) = query.get("path").filter(|p| p.starts_with('/') && !p.contains('\n') && p.len() <= 4096) else {
        return Err(ApiError(StatusCode::BAD_REQUEST, "name the file: ?path=/an/absolute/path (4 KiB at most)".into()));
    };
    match site.phone(&user)?.file(path.clone()).await.map_err(|e| SiteError::phone(&user, e))? {
        Ok(bytes) => Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()),
        Err(why) => Err(ApiError(StatusCode::NOT_FOUND, format!("{user}'s phone: {why}"))),
    }
}

/// `GET /v1/phones/{user}/logs`: the guest's recent log lines, oldest first.
async fn logs(State(site): State<Arc<SiteState>>, Path(user): Path<String>) -> Result<Response, ApiError> {
    let lines = site.phone(&user)?.logs().await.map_err(|e| SiteError::phone(&user, e))?;
    Ok(Json(serde_json::json!({ "user": user, "lines": lines })).into_response())
}

/// Body of `POST /v1/phones/{user}/migrate`: the destination by id, never by address.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct MigrateRequest {
    to: String,
}

/// Moves a phone to another site; answers when it committed or aborted.
async fn migrate(
    State(site): State<Arc<SiteState>>,
    Path(user): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let MigrateRequest { to } = json_body(&body)?;
    // The migration runs in its own task: a caller that goes away (a restarting control
    // service, say) must not cut a migration off halfway with the phone frozen.
    let report = detached(async move { crate::migration::migrate_out(&site, &user, &to).await }).await?;
    let status = if report.outcome == crate::migration::MigrationOutcome::Committed {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    Ok((status, Json(report)).into_response())
}

// ---- offline checkout and checkin (docs/OFFLINE.md) ----
//
// Each runs in its own task: a terminal that goes away mid-request must not cut a
// checkout off between stopping the phone and keeping its base.

/// `POST /v1/phones/{user}/checkout` with the device token: the bundle (lease, base
/// snapshot, image) in the layout of `vmi_protocol::offline`.
async fn checkout(
    State(site): State<Arc<SiteState>>,
    Path(user): Path<String>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let token = caller.token.ok_or_else(unauthorized)?;
    let request: vmi_protocol::offline::CheckoutRequest =
        if body.iter().all(u8::is_ascii_whitespace) { Default::default() } else { json_body(&body)? };
    let bundle = detached(async move { site.checkout(&token, &user, request).await }).await?;
    let bytes = vmi_protocol::offline::encode_bundle(&bundle);
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// `POST /v1/me/checkout` (device token): the token's phone, checked out as by
/// `POST /v1/phones/{user}/checkout` (the page's "Take offline"). A phone
/// running on another site is checked out there: the answer names it.
async fn checkout_my_phone(
    State(site): State<Arc<SiteState>>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let user = user_of(&caller)?;
    if let Some((there, url)) = elsewhere(&site, &user).await? {
        let why = format!("your phone runs on {there}: open {url} to take it offline from there");
        return Err(ApiError(StatusCode::CONFLICT, why));
    }
    checkout(State(site), Path(user), Extension(caller), body).await
}

/// `POST /v1/phones/{user}/checkin` with the device token and a checkin body.
async fn checkin(
    State(site): State<Arc<SiteState>>,
    Path(user): Path<String>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let token = caller.token.ok_or_else(unauthorized)?;
    site.may_check_in(&token, &user).await?;
    let body = spool(&site, body, vmi_protocol::offline::MAX_CHECKIN_BYTES, "checkin").await?;
    let checkin = vmi_protocol::offline::decode_checkin(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad checkin body: {e}")))?;
    let report = detached(async move { site.checkin(&token, &user, checkin).await }).await?;
    Ok(Json(report).into_response())
}

/// `POST /v1/phones/{user}/checkout/cancel` (operator): breaks the lease; the phone
/// resumes here from its checkout base.
async fn cancel_checkout(State(site): State<Arc<SiteState>>, Path(user): Path<String>) -> Result<Response, ApiError> {
    let report = detached(async move { site.cancel_checkout(&user).await }).await?;
    Ok(Json(report).into_response())
}

/// `GET /v1/migrate` (a site): a phone arriving; the sender's identity (its certificate) goes with it, and the
/// phone is taken only from the site the placement names as its owner.
async fn migrate_in(
    ws: WebSocketUpgrade,
    State(site): State<Arc<SiteState>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let Principal::Site { id: from } = caller.principal else { return StatusCode::FORBIDDEN.into_response() };
    // The arrival runs after this answer, in a task of its own: its span, made here, is a child of this
    // request's (a child of the sender's migration span when the sender is in a trace).
    let span = tracing::info_span!("migration.in", vmi.from = %from, vmi.user = tracing::field::Empty);
    ws.max_message_size(vmi_protocol::migration::MAX_SNAPSHOT_BYTES + 1024)
        .max_frame_size(vmi_protocol::migration::MAX_SNAPSHOT_BYTES + 1024)
        .on_upgrade(move |socket| crate::migration::migrate_in(socket, site, from).instrument(span))
}

// ---- the browser terminal's map: the control service's answers, from the page's origin ----
//
// The page is served by a site and the control service is another origin, so the site
// forwards what the map needs. Each route is one control call (two for the report); the
// control service's error status and message come back as they are.

impl From<vmi_control_api::ClientError> for ApiError {
    fn from(e: vmi_control_api::ClientError) -> Self {
        match e {
            vmi_control_api::ClientError::Status { status, body } => {
                ApiError(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), body)
            }
            e => {
                tracing::warn!("control service: {e}");
                ApiError(StatusCode::BAD_GATEWAY, "the control service did not answer".into())
            }
        }
    }
}

fn unauthorized() -> ApiError {
    ApiError(StatusCode::UNAUTHORIZED, "a device token is needed (Authorization: Bearer TOKEN)".into())
}

/// `GET /v1/demo/sites` (device): control's `GET /v1/sites`, asked as the device.
async fn demo_sites(
    State(site): State<Arc<SiteState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let token = caller.token.ok_or_else(unauthorized)?;
    Ok(Json(site.control().as_bearer(&token).list_sites().await?).into_response())
}

/// Largest body of `POST /v1/pair`.
const PAIR_BODY_LIMIT: usize = 4096;

/// Body of `POST /v1/pair`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct PairBody {
    code: String,
    name: String,
}

/// `POST /v1/pair {code, name}` (anyone): control's `POST /v1/pair`, so a page this site served can pair its
/// browser. A wrong code counts against the caller's address here, as a wrong token in Hello does (the control
/// service does not count a site's calls: it would lock every user of the site out at once).
async fn pair(
    State(site): State<Arc<SiteState>>,
    peer: Option<Extension<vmi_trust::Peer>>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let from = peer.map(|Extension(p)| p.addr.ip().to_canonical());
    // A locked-out address is refused before its body is read; a body is a code and a name, so a few KiB at most.
    if let Err(retry_after) = site.guard.check(from) {
        let why = format!("too many wrong codes from this address: try again in {} s", retry_after.as_secs().max(1));
        return Err(ApiError(StatusCode::TOO_MANY_REQUESTS, why));
    }
    let body = axum::body::to_bytes(body, PAIR_BODY_LIMIT).await.map_err(|_| {
        ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("a pairing body is at most {PAIR_BODY_LIMIT} bytes"))
    })?;
    let req: PairBody = json_body(&body)?;
    let name = req.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError(StatusCode::BAD_REQUEST, "name: 1 to 100 bytes, e.g. \"Ann's phone\"".into()));
    }
    match site.control().pair(req.code.trim(), name).await {
        Ok(device) => Ok((StatusCode::CREATED, Json(device)).into_response()),
        Err(e @ vmi_control_api::ClientError::Status { status: 404, .. }) => {
            site.guard.failure(from);
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /v1/me/pair-code` (device): control's `POST /v1/phone/pair-code`, a code to pair another device with.
async fn my_pair_code(
    State(site): State<Arc<SiteState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let token = caller.token.ok_or_else(unauthorized)?;
    Ok((StatusCode::CREATED, Json(site.control().pair_code_for_device(&token).await?)).into_response())
}

/// `GET /v1/demo/me` (device): control's `GET /v1/phone` (whose phone, where).
async fn demo_me(
    State(site): State<Arc<SiteState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let token = caller.token.ok_or_else(unauthorized)?;
    Ok(Json(site.control().phone_for_token(&token).await?).into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
struct DemoReport {
    #[serde(default)]
    lat: Option<f64>,
    #[serde(default)]
    lon: Option<f64>,
    #[serde(default)]
    rtt_ms: std::collections::BTreeMap<String, f64>,
}

/// `POST /v1/demo/report` (device): control's `POST /v1/phone/report`.
async fn demo_report(
    State(site): State<Arc<SiteState>>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let report: DemoReport = json_body(&body)?;
    let token = caller.token.ok_or_else(unauthorized)?;
    site.control().report(&token, report.lat, report.lon, report.rtt_ms).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/demo/report` with a bearer token: the latest report of the token's user (from
/// any of their terminals), control's `GET /v1/users/{user}/report`; 204 while there is none.
async fn demo_latest_report(
    State(site): State<Arc<SiteState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let token = caller.token.ok_or_else(unauthorized)?;
    let control = site.control.as_bearer(&token);
    let phone = control.phone_for_token(&token).await?;
    match control.latest_report(&phone.user).await {
        Ok(report) => Ok(Json(report).into_response()),
        Err(vmi_control_api::ClientError::Status { status: 404, .. }) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => Err(e.into()),
    }
}

/// `GET /v1/demo/migrations` (device): control's `GET /v1/migrations` of the device's own user, newest first.
async fn demo_migrations(
    State(site): State<Arc<SiteState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let user = caller.principal.device_user().ok_or_else(unauthorized)?.to_owned();
    let token = caller.token.ok_or_else(unauthorized)?;
    Ok(Json(site.control().as_bearer(&token).migrations(Some(&user)).await?).into_response())
}

/// The control service revoked a device: every phone here closes its terminals.
async fn device_revoked(State(site): State<Arc<SiteState>>, Path(id): Path<String>) -> StatusCode {
    if let Ok(device_id) = id.parse::<u64>() {
        site.forget_device(device_id);
    }
    for user in site.users() {
        if let Some(phone) = site.phone_link(&user) {
            phone.revoke(id.clone()).await;
        }
    }
    StatusCode::NO_CONTENT
}

/// Terminals a site lets say Hello at once (each may send a message up to the protocol's limit before it is
/// known); more are answered 503 until one has said it.
pub const HELLOS_AT_ONCE: usize = 32;

/// Concurrent large uploads (checkins, checkpoint copies) a site takes; more wait for their turn.
pub const UPLOADS_AT_ONCE: usize = 2;
/// The longest an upload may send nothing before it is dropped.
pub const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(15);

/// An upload on disk while it arrives, removed when dropped.
struct Spooled(std::path::PathBuf);

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Receives an upload's `body` into a file under the site's data directory, chunk by chunk, refusing it (413)
/// as soon as it passes `cap` bytes (at once when its Content-Length says so), then reads it back. At most
/// [`UPLOADS_AT_ONCE`] are taken at a time, so memory holds at most that many finished bodies however many
/// arrive; a body never sits in memory while it trickles in.
async fn spool(site: &SiteState, body: axum::body::Body, cap: usize, what: &str) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    use std::io::Write;
    /// Bytes gathered before they go to the file (off the async threads).
    const FLUSH_AT: usize = 1 << 20;
    let too_big = || ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("a {what} is at most {cap} bytes"));
    if axum::body::HttpBody::size_hint(&body).lower() > cap as u64 {
        return Err(too_big());
    }
    let stopping = |_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "the site is stopping".into());
    let _turn = site.uploads.acquire().await.map_err(stopping)?;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let spooled = Spooled(site.config.data_dir.join(format!("upload-{}-{n}.part", std::process::id())));
    let io = |e: std::io::Error| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot receive the {what}: {e}"));
    let mut file = Some(std::fs::File::create(&spooled.0).map_err(io)?);
    let write = |mut f: std::fs::File, buf: Vec<u8>| async move {
        tokio::task::spawn_blocking(move || f.write_all(&buf).map(|()| f))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    };
    let (mut received, mut buf) = (0usize, Vec::new());
    let mut chunks = body.into_data_stream();
    loop {
        // A sender that stops sending gives its turn up: a trickle cannot hold the upload slots.
        let next = tokio::time::timeout(UPLOAD_IDLE, chunks.next()).await.map_err(|_| {
            ApiError(StatusCode::REQUEST_TIMEOUT, format!("the {what} stalled for {} s", UPLOAD_IDLE.as_secs()))
        })?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("the {what} was cut off: {e}")))?;
        received += chunk.len();
        if received > cap {
            return Err(too_big());
        }
        buf.extend_from_slice(&chunk);
        if buf.len() >= FLUSH_AT
            && let Some(f) = file.take()
        {
            file = Some(write(f, std::mem::take(&mut buf)).await.map_err(io)?);
        }
    }
    if let Some(f) = file.take() {
        drop(write(f, buf).await.map_err(io)?);
    }
    let path = spooled.0.clone();
    tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .map_err(|e| io(std::io::Error::other(e.to_string())))?
        .map_err(io)
}

fn checked_user(user: &str) -> Result<(), ApiError> {
    vmi_checkpoint::validate_user(user).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

/// `GET /v1/phones/{user}/checkpoints`: the checkpoints of `user` this site holds.
async fn list_checkpoints(State(site): State<Arc<SiteState>>, Path(user): Path<String>) -> Result<Response, ApiError> {
    checked_user(&user)?;
    let list = site.checkpoints_of(&user).await?;
    Ok(Json(serde_json::json!({ "site": site.id, "user": user, "checkpoints": list })).into_response())
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
struct NewCheckpoint {
    #[serde(default)]
    label: Option<String>,
}

/// Longest checkpoint label accepted, in characters.
const MAX_LABEL_CHARS: usize = 200;

/// `POST /v1/phones/{user}/checkpoints` `{label?}`: checkpoint the phone now.
async fn take_checkpoint(
    State(site): State<Arc<SiteState>>,
    Path(user): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    checked_user(&user)?;
    let request: NewCheckpoint = if body.is_empty() { NewCheckpoint::default() } else { json_body(&body)? };
    if request.label.as_ref().is_some_and(|l| l.chars().count() > MAX_LABEL_CHARS) {
        return Err(ApiError(StatusCode::BAD_REQUEST, format!("label longer than {MAX_LABEL_CHARS} characters")));
    }
    Ok(Json(site.checkpoint(&user, request.label).await?).into_response())
}

/// Which checkpoint a restore asks for.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RestoreRequest {
    /// A checkpoint id (64 hex digits).
    #[serde(default)]
    id: Option<String>,
    /// The latest checkpoint at or before this time, ms since the epoch.
    #[serde(default)]
    at_ms: Option<u64>,
}

impl RestoreRequest {
    fn selector(&self) -> Result<Selector, ApiError> {
        match (&self.id, self.at_ms) {
            (Some(id), None) => SnapshotId::from_hex(id)
                .map(Selector::Id)
                .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, format!("checkpoint id {id:?} is not 64 hex digits"))),
            (None, Some(at)) => Ok(Selector::AtOrBefore(at)),
            _ => Err(ApiError(StatusCode::BAD_REQUEST, "give exactly one of \"id\" and \"at_ms\"".into())),
        }
    }
}

/// `POST /v1/phones/{user}/checkpoints/restore` `{id}` or `{at_ms}` (operator).
async fn restore_checkpoint(
    State(site): State<Arc<SiteState>>,
    Path(user): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    checked_user(&user)?;
    let request: RestoreRequest = json_body(&body)?;
    Ok(Json(site.restore_checkpoint(&user, request.selector()?).await?).into_response())
}

/// The user a bearer token belongs to, or 401.
fn user_of(caller: &Caller) -> Result<String, ApiError> {
    caller.principal.device_user().map(str::to_owned).ok_or_else(unauthorized)
}

/// Where `user`'s phone runs, if not here: its site's base URL.
async fn elsewhere(site: &SiteState, user: &str) -> Result<Option<(String, String)>, ApiError> {
    if site.phone_link(user).is_some() {
        return Ok(None);
    }
    let placement = site.control().placement(user).await?;
    Ok((placement.site != site.id).then_some((placement.site, placement.site_url)))
}

/// Asks the site that runs the caller's phone instead, as the caller (their token; that site checks it).
async fn relay_to(
    site: &SiteState,
    caller: &Caller,
    (peer, url): (String, String),
    method: vmi_control_api::http_client::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Response, ApiError> {
    let token = caller.token.as_deref().ok_or_else(unauthorized)?;
    let peer = site.peer(&peer)?;
    let body = body.map(|b| ("application/json", b));
    let options = vmi_control_api::http_client::RequestOptions { bearer: Some(token), ..Default::default() };
    let (status, answer) = peer.send(method, &format!("{url}{path}"), body, options).await?;
    Ok(relay(status, answer.to_vec()))
}

/// `GET /v1/me/checkpoints` (device token): the checkpoints of the token's phone, from
/// the site it runs on (the browser terminal's "restore my phone to…" view).
async fn my_checkpoints(
    State(site): State<Arc<SiteState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let user = user_of(&caller)?;
    if let Some(there) = elsewhere(&site, &user).await? {
        return relay_to(&site, &caller, there, Method::GET, "/v1/me/checkpoints", None).await;
    }
    list_checkpoints(State(site), Path(user)).await
}

/// `POST /v1/me/checkpoints` (device token) `{label?}`: the user checkpoints their phone.
async fn checkpoint_my_phone(
    State(site): State<Arc<SiteState>>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let user = user_of(&caller)?;
    if let Some(there) = elsewhere(&site, &user).await? {
        return relay_to(&site, &caller, there, Method::POST, "/v1/me/checkpoints", Some(body.to_vec())).await;
    }
    take_checkpoint(State(site), Path(user), body).await
}

/// `POST /v1/me/checkpoints/restore` (device token) `{id}`: the user restores their own
/// phone (on whichever site runs it).
async fn restore_my_phone(
    State(site): State<Arc<SiteState>>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let user = user_of(&caller)?;
    let request: RestoreRequest = json_body(&body)?;
    let selector = request.selector()?;
    if let Some(there) = elsewhere(&site, &user).await? {
        let path = "/v1/me/checkpoints/restore";
        return relay_to(&site, &caller, there, Method::POST, path, Some(body.to_vec())).await;
    }
    if site.phone_link(&user).is_none() {
        return Err(SiteError::NoPhone(user).into());
    }
    Ok(Json(site.restore_checkpoint(&user, selector).await?).into_response())
}

/// Another site's JSON answer, passed on.
fn relay(status: u16, body: Vec<u8>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[derive(Deserialize, schemars::JsonSchema)]
struct Keys {
    keys: Vec<String>,
}

/// Most keys one `missing` question may ask about.
const MAX_KEYS: usize = 1 << 20;

/// `POST /v1/replicas/{user}/missing` `{keys}` (site to site): which objects this site lacks.
/// A checkpoint copy of `user`'s phone is taken only from the site that runs it (the placement's owner): no other
/// site can slip a made-up state into the user's history here.
async fn from_owner(site: &SiteState, caller: &Caller, user: &str) -> Result<(), ApiError> {
    let Principal::Site { id } = &caller.principal else {
        return Err(ApiError(StatusCode::FORBIDDEN, "sites only".into()));
    };
    let owner = site.control().placement(user).await.map_err(|e| match e.status() {
        Some(404) => ApiError(StatusCode::FORBIDDEN, format!("{user} has no phone placed anywhere")),
        _ => ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("cannot check {user}'s placement: {e}")),
    })?;
    if &owner.site != id {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("{id} does not run {user}'s phone ({} does): only the owner copies its checkpoints", owner.site),
        ));
    }
    Ok(())
}

async fn replica_missing(
    State(site): State<Arc<SiteState>>,
    Path(user): Path<String>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    checked_user(&user)?;
    from_owner(&site, &caller, &user).await?;
    let request: Keys = json_body(&body)?;
    if request.keys.len() > MAX_KEYS {
        return Err(ApiError(StatusCode::BAD_REQUEST, format!("more than {MAX_KEYS} keys")));
    }
    let missing = site.replica_missing(request.keys).await?;
    Ok(Json(crate::checkpoints::Missing { missing }).into_response())
}

/// `POST /v1/replicas/{user}/import` (site to site): a checkpoint copied here; 409 with
/// `{missing}` when objects are still lacking.
async fn replica_import(
    State(site): State<Arc<SiteState>>,
    Path(user): Path<String>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    checked_user(&user)?;
    from_owner(&site, &caller, &user).await?;
    let body = spool(&site, body, vmi_checkpoint::MAX_BUNDLE_BYTES + 4096, "checkpoint copy").await?;
    match site.replica_import(&user, &body).await? {
        None => Ok(Json(serde_json::json!({ "stored": true })).into_response()),
        Some(missing) => Ok((StatusCode::CONFLICT, Json(crate::checkpoints::Missing { missing })).into_response()),
    }
}

/// Largest standby record (a full state, compressed): a phone's memory cap and then some.
const MAX_STANDBY_RECORD: usize = 1 << 30;

/// `POST /v1/standby/{user}?epoch=E&full=0|1` (site to site): one record of the sender's phone for its standby copy
/// here (crate::standby). 204 once synced here; 403 if the sender does not own the phone at `epoch`; 409 when a
/// full state must come first.
async fn standby_record(
    State(site): State<Arc<SiteState>>,
    Path(user): Path<String>,
    Extension(caller): Extension<Caller>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    checked_user(&user)?;
    let Principal::Site { id } = &caller.principal else {
        return Err(ApiError(StatusCode::FORBIDDEN, "sites only".into()));
    };
    let Some((epoch, full)) = query.as_deref().and_then(crate::standby::parse_query) else {
        return Err(ApiError(StatusCode::BAD_REQUEST, "give ?epoch=N&full=0|1".into()));
    };
    let body = spool(&site, body, MAX_STANDBY_RECORD, "standby record").await?;
    use crate::standby::Refusal;
    match site.take_standby_record(id, &user, epoch, full, body).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(Refusal::NotOwner(why)) => Err(ApiError(StatusCode::FORBIDDEN, why)),
        Err(Refusal::NeedsFull(why) | Refusal::RunsHere(why)) => Err(ApiError(StatusCode::CONFLICT, why)),
        Err(Refusal::Failed(e)) => Err(e.into()),
    }
}

/// `POST /v1/standby/{user}/promote` `{"from_epoch": E}` (the control service, after moving the placement here from
/// epoch E): starts the phone from its standby copy of epoch E. 200 `{"started": bool}` (false: it runs here
/// already).
async fn standby_promote(
    State(site): State<Arc<SiteState>>,
    Path(user): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    checked_user(&user)?;
    let request: serde_json::Value = json_body(&body)?;
    let Some(from_epoch) = request["from_epoch"].as_u64() else {
        return Err(ApiError(StatusCode::BAD_REQUEST, "give {\"from_epoch\": N}".into()));
    };
    let started = site.promote_standby(&user, from_epoch).await?;
    Ok(Json(serde_json::json!({ "started": started })).into_response())
}

/// `GET /v1/replicas/{user}/objects/{chunks|tables}/{hash}` (site to site): one chunk or page table as stored here
/// (checkpoint store, else state store), for the site running `user`'s phone to repair its damaged one
/// (crate::checkpoints). Only that site may ask; a page is asked for by its content's hash, so a caller learns at
/// most that a page it can already name is stored here.
async fn replica_object(
    State(site): State<Arc<SiteState>>,
    Path((user, kind, hash)): Path<(String, String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    checked_user(&user)?;
    from_owner(&site, &caller, &user).await?;
    if !matches!(kind.as_str(), "chunks" | "tables") || vmi_snapshot::SnapshotId::from_hex(&hash).is_none() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "objects are chunks/HASH or tables/HASH".into()));
    }
    let key = format!("{kind}/{hash}");
    match site.stored_object(&key).await? {
        Some(bytes) => Ok(bytes.into_response()),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no {key} here"))),
    }
}
