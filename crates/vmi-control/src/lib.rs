//! Seed VMI control service: the registry of users, devices, sites and placements — the server.
//!
//! What crosses the wire (the model), the client ([`ControlClient`]) and the URL helpers are in the
//! `vmi-control-api` crate, which sites and terminals link without this server.
//!
//! Every user's phone is a VM running on an edge *site*. Users hold *devices* (terminals), each with its own bearer
//! token. This crate is the registry that ties them together:
//!
//! - **Users** have a unique name (`alice`).
//! - **Devices** belong to a user. Creating one returns a token (32 random bytes from `/dev/urandom`, as hex) exactly
//!   once; only its blake3 hash is stored. A revoked device's token stops authenticating immediately.
//! - **Sites** register their base URL, position and capacity, then send heartbeats with the number of phones they
//!   run. A site is *healthy* while its last heartbeat is at most [`HEALTHY_WITHIN_MS`] old.
//! - **Placement** maps a user to the site running their phone, with an ownership `epoch` that increments whenever
//!   the site changes (live migration uses it to tell the current owner from a stale one).
//! - **Terminal reports** say where a user is (position) and what they see (RTT to each site); the latest per user
//!   is kept in memory ([`Reports`]).
//! - **Migrations** are logged by the sites that carry them out (`POST /v1/migrations`).
//! - **Tenants** group users under quotas (phones, memory) checked when a site admits a phone; **images** are
//!   published in versions, and a user's phone moves to its image's current version on its next restart (see
//!   the module docs of `vmi_control_api::tenants` and docs/ARCHITECTURE.md, "Tenants and images").
//!
//! # Phones follow their users
//!
//! The *placer* ([`run_placer`], started by [`serve`]) runs the [`placement`] policy every second over the sites,
//! the placements and the fresh terminal reports. When a phone should live somewhere else (its user has had a
//! clearly closer site for a while, or its site died or is draining) the placer orders the phone's current site to
//! live-migrate it: `POST {site_url}/v1/phones/{user}/migrate` with a [`MigrateOrder`]. The destination takes
//! ownership with a compare-and-set on the placement epoch ([`Store::move_placement`], `"expected_epoch"` in
//! `PUT /v1/users/{user}/placement`), so exactly one site owns a phone; a stale commit gets 409.
//!
//! # Pieces
//!
//! - [`Store`]: the storage trait (object-safe, synchronous); [`SqliteStore`] keeps everything in one SQLite file
//!   in WAL mode, with its schema versioned in a `schema_version` table and migrated at open.
//! - [`app`] / [`serve`] / [`serve_with`]: the JSON HTTP API (axum) and a runner, placer included, with graceful
//!   shutdown.
//! - [`placement`]: the placement policy, a pure function ([`decide`]) tested over traces.
//! - [`run_placer`]: the loop that feeds the policy and sends the migrate orders.
//! - `vmi_control_api::ControlClient`: the async client used by sites, terminals and the `vmi` CLI.
//!
//! # HTTP API
//!
//! | Method and path                       | Body                              | Success                                  |
//! |---------------------------------------|-----------------------------------|------------------------------------------|
//! | `POST /v1/users`                      | `{"name","tenant"?}`              | 201 `{"name","tenant"?}`; 409 if taken   |
//! | `GET /v1/users`                       |                                   | 200 `[{"name"}]`                         |
//! | `POST /v1/users/{user}/devices`       | `{"name"}`                        | 201 `{"device_id","token"}`              |
//! | `GET /v1/users/{user}/devices`        |                                   | 200 list of [`Device`] (no tokens)       |
//! | `POST /v1/devices/{id}/revoke`        |                                   | 204                                      |
//! | `POST /v1/auth`                       | `{"token"}`                       | 200 `{"user","device_id"}`; 401          |
//! | `PUT /v1/sites/{id}`                  | `{"url","lat","lon","capacity"}`  | 200 [`SiteStatus`]                       |
//! | `POST /v1/sites/{id}/heartbeat`       | `{"phones"}`                      | 204                                      |
//! | `POST /v1/sites/{id}/drain`           |                                   | 200 [`SiteStatus`] (`"draining":true`)   |
//! | `POST /v1/sites/{id}/undrain`         |                                   | 200 [`SiteStatus`]                       |
//! | `GET /v1/sites`                       |                                   | 200 list of [`SiteStatus`]               |
//! | `PUT /v1/users/{user}/placement`      | `{"site","expected_epoch"?}`      | 200 `{"site","epoch"}`; 409 stale epoch  |
//! | `GET /v1/users/{user}/placement`      |                                   | 200 `{"site","site_url","epoch"}`        |
//! | `GET /v1/phone` + `Authorization: Bearer TOKEN` |                         | 200 `{"user","site","site_url","ws_url"}`|
//! | `POST /v1/phone/report` + bearer      | `{"lat"?,"lon"?,"rtt_ms"?}`       | 204; 401 bad token                       |
//! | `GET /v1/users/{user}/report`         |                                   | 200 [`TerminalReport`]; 404 none yet     |
//! | `POST /v1/migrations`                 | [`MigrationRecord`]               | 201 [`LoggedMigration`]                  |
//! | `GET /v1/migrations?user=U&limit=N`   |                                   | 200 list of [`LoggedMigration`]          |
//! | `POST /v1/tenants`                    | [`TenantRequest`]                 | 201 [`Tenant`]; 409 if taken             |
//! | `GET /v1/tenants`                     |                                   | 200 list of [`TenantStatus`]             |
//! | `PUT /v1/tenants/{name}`              | [`TenantUpdate`] (what changes)    | 200 [`Tenant`]; 404                      |
//! | `POST /v1/users/{user}/admit`         | `{"memory_bytes"}`                | 200 [`Admission`]; 403 over quota        |
//! | `DELETE /v1/users/{user}/admit`       |                                   | 204 (the phone no longer counts)         |
//! | `GET /v1/users/{user}/image`          |                                   | 200 [`UserImage`]; 404 none published    |
//! | `POST /v1/images/{name}/versions`     | the wasm bytes                    | 201 [`ImageVersion`] (next version)      |
//! | `GET /v1/images`                      |                                   | 200 list of [`ImageVersion`]             |
//! | `GET /v1/images/{name}/versions/{v}`  |                                   | 200 `application/wasm`; 404              |
//! | `POST /v1/images/{name}/rollback`     |                                   | 200 [`ImageVersion`] now current; 409    |
//! | `GET /healthz`                        |                                   | 200 `ok`                                 |
//!
//! `expected_epoch` makes the placement change a compare-and-set: it applies only if the placement is at that
//! epoch now (0 for a user never placed); otherwise 409 with a message naming both epochs. Terminal reports are
//! validated (lat/lon together and in range, at most [`MAX_REPORT_SITES`] finite non-negative RTTs) and
//! stamped with the time of arrival. `GET /v1/migrations` lists the newest first, [`DEFAULT_MIGRATIONS_LISTED`]
//! entries unless `limit` (1 to [`MAX_MIGRATIONS_LISTED`]) says otherwise.
//!
//! `GET /v1/phone` is how a terminal finds its phone: the user comes from the token alone, so a token can never
//! reveal another user's phone. It answers 401 for a missing, unknown or revoked token and 404 if the user has no
//! placement. `ws_url` is the site URL with `http`→`ws` and `/v1/terminal` appended.
//!
//! Errors are `{"error": "message"}` with the matching status ([`ControlError::status`]): malformed JSON is a 400
//! whose message names the problem; internal failures are logged once and answered with a generic 500.
//!
//! # Known limitations
//!
//! - **Operator endpoints have no authentication.** Anyone who can reach the service can create users and devices,
//!   revoke devices, register sites, drain them, move placements and write the migration log. This is acceptable
//!   only for the loopback demo: bind the service to `127.0.0.1`. Only `/v1/phone`, `/v1/phone/report` (bearer
//!   token) and `/v1/auth` (token in the body) check tokens.
//! - The placer's migrate orders are plain HTTP POSTs to the site, equally unauthenticated.
//! - Terminal reports live in memory: a restart forgets them (the placer then keeps phones put until new ones
//!   arrive). The migration log grows without bound.
//! - Plain HTTP only, for the server and [`ControlClient`]; no TLS.
//! - Image versions are kept as blobs in the database for ever (withdrawn ones too). An admission is released
//!   only when a phone fails to boot or by `DELETE /v1/users/{user}/admit`: sites have no "delete phone" yet.
//! - The client opens one connection per request.
//! - The server does not cap concurrent connections.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use vmi_control::{SqliteStore, serve};
//! use vmi_control_api::{ControlClient, SiteSpec};
//!
//! let store = Arc::new(SqliteStore::open("control.db")?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7000").await?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(serve(listener, store, async { stopped.await.unwrap_or(()) }));
//!
//! let control = ControlClient::new("http://127.0.0.1:7000")?;
//! control.create_user("alice").await?;
//! let device = control.create_device("alice", "pixel").await?;
//! let spec = SiteSpec { url: "http://127.0.0.1:7100".into(), lat: 52.5, lon: 13.4, capacity: 8 };
//! control.register_site("site-a", &spec).await?;
//! control.set_placement("alice", "site-a").await?;
//! let phone = control.phone_for_token(&device.token).await?;
//! assert_eq!(phone.ws_url, "ws://127.0.0.1:7100/v1/terminal");
//!
//! let _ = stop.send(());
//! server.await??;
//! # Ok(())
//! # }
//! ```

//!
//! [`ControlClient`]: vmi_control_api::ControlClient
//! [`Device`]: vmi_control_api::Device
//! [`SiteStatus`]: vmi_control_api::SiteStatus
//! [`TerminalReport`]: vmi_control_api::TerminalReport
//! [`MigrationRecord`]: vmi_control_api::MigrationRecord
//! [`LoggedMigration`]: vmi_control_api::LoggedMigration
//! [`TenantRequest`]: vmi_control_api::TenantRequest
//! [`Tenant`]: vmi_control_api::Tenant
//! [`TenantStatus`]: vmi_control_api::TenantStatus
//! [`Admission`]: vmi_control_api::Admission
//! [`UserImage`]: vmi_control_api::UserImage
//! [`ImageVersion`]: vmi_control_api::ImageVersion
//! [`MigrateOrder`]: vmi_control_api::MigrateOrder
//! [`HEALTHY_WITHIN_MS`]: vmi_control_api::HEALTHY_WITHIN_MS
//! [`MAX_REPORT_SITES`]: vmi_control_api::MAX_REPORT_SITES
//! [`DEFAULT_MIGRATIONS_LISTED`]: vmi_control_api::DEFAULT_MIGRATIONS_LISTED
//! [`MAX_MIGRATIONS_LISTED`]: vmi_control_api::MAX_MIGRATIONS_LISTED

pub mod access;
mod error;
mod http;
mod pairing;
pub mod placement;
mod placer;
mod reports;
mod store;
mod validate;

pub use error::ControlError;
pub use http::{ControlTrust, JOIN_TOKEN_TTL_MS, ServeOptions, ServiceTrust, app, app_with, serve, serve_with};
pub use pairing::{PAIR_CODE_TTL_MS, PairCodes};
pub use placement::{Move, MoveReason, PolicyInput, PolicyParams, PolicyState, decide};
pub use placer::{ORDER_TIMEOUT, PlacerRounds, run_placer};
pub use reports::Reports;
pub use store::{DEFAULT_AUDIT_LISTED, SCHEMA_VERSION, SqliteStore, Store, now_ms, token_hash};
