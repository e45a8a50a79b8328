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
//! The *placer* ([`run_placer`], started by [`serve_with`]) runs the [`placement`] policy every second over the sites,
//! the placements and the fresh terminal reports. When a phone should live somewhere else (its user has had a
//! clearly closer site for a while, or its site died or is draining) the placer orders the phone's current site to
//! live-migrate it: `POST {site_url}/v1/phones/{user}/migrate` with a [`MigrateOrder`], over mutual TLS as the
//! control service; the source looks the destination up in the registry and dials it expecting its certificate. The destination takes
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
//! Every request is authenticated, then authorized, before its body is read ([`access`], docs/SECURITY.md):
//! people and devices send `Authorization: Bearer TOKEN`; a site or control replica presents its TLS client
//! certificate from the provider CA and names itself in the `vmi-peer` header. "Admin" is the operator, or a
//! tenant admin for the users of their tenant; "owner" is the user's own device or an admin of the user.
//! 401 is a missing or wrong credential (five from one address lock it out: 429 with `Retry-After`, doubling),
//! 403 a caller who may not.
//!
//! | Method and path                       | Who                  | Body                              | Success                                  |
//! |---------------------------------------|----------------------|-----------------------------------|------------------------------------------|
//! | `POST /v1/users`                      | admin                | `{"name","tenant"?}`              | 201 `{"name","tenant"?}`; 409 if taken   |
//! | `GET /v1/users`                       | admin                |                                   | 200 `[{"name"}]`                         |
//! | `POST /v1/users/{user}/devices`       | admin of user        | `{"name"}`                        | 201 `{"device_id","token"}`              |
//! | `GET /v1/users/{user}/devices`        | admin of user        |                                   | 200 list of [`Device`] (no tokens)       |
//! | `POST /v1/users/{user}/pair-code`     | admin of user        |                                   | 201 a one-time code                      |
//! | `POST /v1/phone/pair-code`            | device               |                                   | 201 a code for the device's user         |
//! | `POST /v1/pair`                       | anyone (code)        | `{"code","name"}`                 | 201 `{"device_id","token"}`; lockout     |
//! | `POST /v1/devices/{id}/revoke`        | admin, or the device's user | | 204                                       |
//! | `POST /v1/auth`                       | site                 | `{"token"}`                       | 200 the token's principal; 401           |
//! | `PUT /v1/sites/{id}`                  | site `id` itself     | `{"url","lat","lon","capacity"}`  | 200 [`SiteStatus`]                       |
//! | `POST /v1/sites/{id}/heartbeat`       | site `id` itself     | `{"phones","audit"?}`             | 204                                      |
//! | `POST /v1/sites/{id}/join-token`      | operator             |                                   | 201 a one-time join token (a day)        |
//! | `POST /v1/sites/{id}/enroll`          | anyone (join token)  | `{"token","public_key"}`          | 200 the site's certificate and the CA    |
//! | `POST /v1/sites/{id}/drain`, `undrain`| operator             |                                   | 200 [`SiteStatus`]                       |
//! | `GET /v1/sites`                       | signed in            |                                   | 200 list of [`SiteStatus`]               |
//! | `PUT /v1/users/{user}/placement`      | operator; a site only onto itself, with `expected_epoch` | `{"site","expected_epoch"?}` | 200 `{"site","epoch"}`; 409 stale |
//! | `GET /v1/users/{user}/placement`      | owner, or a site     |                                   | 200 `{"site","site_url","epoch"}`        |
//! | `GET /v1/phone`                       | device               |                                   | 200 `{"user","site","site_url","ws_url"}`|
//! | `POST /v1/phone/report`               | device               | `{"lat"?,"lon"?,"rtt_ms"?}`       | 204                                      |
//! | `GET /v1/users/{user}/report`         | owner                |                                   | 200 [`TerminalReport`]; 404 none yet     |
//! | `POST /v1/migrations`                 | a site party to it   | [`MigrationRecord`]               | 201 [`LoggedMigration`]                  |
//! | `GET /v1/migrations?user=U&limit=N`   | signed in (devices: their own) |                         | 200 list of [`LoggedMigration`]          |
//! | `PUT /v1/users/{user}/checkpoints/{site}` | site `site` itself | its checkpoint list              | 204                                      |
//! | `GET /v1/users/{user}/checkpoints`    | owner, or a site     |                                   | 200 the catalogue                        |
//! | `POST /v1/tenants`, `GET /v1/tenants` | operator             | [`TenantRequest`]                 | 201 [`Tenant`] / 200 [`TenantStatus`]s   |
//! | `PUT /v1/tenants/{name}`              | operator             | [`TenantUpdate`] (what changes)   | 200 [`Tenant`]; 404                      |
//! | `POST /v1/tenants/{name}/admins`      | operator             | `{"name"}`                        | 201 the tenant admin's token, once       |
//! | `POST /v1/users/{user}/admit`, `DELETE` | site               | `{"memory_bytes"}`                | 200 [`Admission`]; 403 over quota / 204  |
//! | `GET /v1/users/{user}/image`          | site, or admin of user |                                 | 200 [`UserImage`]; 404 none published    |
//! | `POST /v1/images/{name}/versions`     | operator             | the wasm bytes                    | 201 [`ImageVersion`] (next version)      |
//! | `GET /v1/images`                      | signed in            |                                   | 200 list of [`ImageVersion`]             |
//! | `GET /v1/images/{name}/versions/{v}`  | site or operator     |                                   | 200 `application/wasm`; 404              |
//! | `POST /v1/images/{name}/rollback`     | operator             |                                   | 200 [`ImageVersion`] now current; 409    |
//! | `GET /v1/audit?user&site&principal&since_ms&until_ms&limit` | operator |                         | 200 audit entries, newest first          |
//! | `POST /v1/audit`                      | site                 | its entries                       | 204                                      |
//! | `GET /healthz`                        | anyone               |                                   | 200 `ok`                                 |
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
//! - Terminal reports live in memory: a restart forgets them (the placer then keeps phones put until new ones
//!   arrive). The migration log and the audit log grow without bound.
//! - Image versions are kept as blobs in the database for ever (withdrawn ones too). An admission is released
//!   only when a phone fails to boot or by `DELETE /v1/users/{user}/admit`: sites have no "delete phone" yet.
//! - The client opens one connection (and one TLS handshake) per request.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use vmi_control::{ServeOptions, ServiceTrust, SqliteStore, Store, serve_with};
//! use vmi_control_api::auth::Principal;
//! use vmi_control_api::{Caller, ControlClient};
//!
//! let store = Arc::new(SqliteStore::open("control.db")?);
//! let operator = store.create_credential(&Principal::Operator { name: "admin".into() })?.token;
//! let authority = Arc::new(vmi_trust::Authority::load_or_create(std::path::Path::new("pki"))?);
//! let trust = ServiceTrust::new(authority.clone(), &["127.0.0.1"])?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7000").await?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let options = ServeOptions { trust: Some(trust), ..ServeOptions::default() };
//! let server = tokio::spawn(serve_with(listener, store, options, async { stopped.await.unwrap_or(()) }));
//!
//! let caller = Caller::trusting(authority.cert_pem())?.with_bearer(&operator);
//! let control = ControlClient::new("https://127.0.0.1:7000", &caller)?;
//! control.create_user("alice").await?;
//! let device = control.create_device("alice", "pixel").await?;
//! let phone = control.as_bearer(&device.token).phone_for_token(&device.token).await;
//! assert!(phone.is_err(), "not placed yet: 404");
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
//! [`TenantUpdate`]: vmi_control_api::tenants::TenantUpdate
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
mod dashboard;
mod device_cache;
mod error;
pub mod history;
mod http;
mod leadership;
pub mod metrics;
mod pairing;
pub mod placement;
mod placer;
mod reports;
mod store;
mod validate;

/// Runs `work`, a synchronous store call that may wait on the network (etcd), without stalling the runtime:
/// on a multi-threaded runtime the worker hands its other tasks on first (tokio's `block_in_place`), so a store
/// that hangs for a while (etcd without a leader) cannot starve heartbeats and health checks.
pub(crate) fn off_the_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

pub use error::ControlError;
pub use http::{
    ControlTrust, JOIN_TOKEN_TTL_MS, ServeOptions, ServiceTrust, app, app_measured, app_with, openapi, serve,
    serve_with,
};
pub use leadership::Leadership;
pub use pairing::{PAIR_CODE_TTL_MS, PairCodes};
pub use placement::{Move, MoveReason, PolicyInput, PolicyParams, PolicyState, decide};
pub use placer::{ORDER_TIMEOUT, PlacerRounds, run_placer};
pub use reports::Reports;
pub use store::{
    DEFAULT_AUDIT_LISTED, DEFAULT_ETCD_PREFIX, EtcdStore, EtcdTls, LEADER_TTL, SCHEMA_VERSION, SqliteStore, Store,
    now_ms, token_hash,
};
