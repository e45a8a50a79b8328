//! Seed VMI control service: the registry of users, devices, sites and placements.
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
//!
//! # Pieces
//!
//! - [`Store`]: the storage trait (object-safe, synchronous); [`SqliteStore`] keeps everything in one SQLite file
//!   in WAL mode, with its schema versioned in a `schema_version` table and migrated at open.
//! - [`app`] / [`serve`]: the JSON HTTP API (axum) and a runner with graceful shutdown.
//! - [`ControlClient`]: the async client used by sites, terminals and the `vmi` CLI.
//!
//! # HTTP API
//!
//! | Method and path                       | Body                              | Success                                  |
//! |---------------------------------------|-----------------------------------|------------------------------------------|
//! | `POST /v1/users`                      | `{"name"}`                        | 201 `{"name"}`; 409 if taken             |
//! | `GET /v1/users`                       |                                   | 200 `[{"name"}]`                         |
//! | `POST /v1/users/{user}/devices`       | `{"name"}`                        | 201 `{"device_id","token"}`              |
//! | `GET /v1/users/{user}/devices`        |                                   | 200 list of [`Device`] (no tokens)       |
//! | `POST /v1/devices/{id}/revoke`        |                                   | 204                                      |
//! | `POST /v1/auth`                       | `{"token"}`                       | 200 `{"user","device_id"}`; 401          |
//! | `PUT /v1/sites/{id}`                  | `{"url","lat","lon","capacity"}`  | 200 [`SiteStatus`]                       |
//! | `POST /v1/sites/{id}/heartbeat`       | `{"phones"}`                      | 204                                      |
//! | `GET /v1/sites`                       |                                   | 200 list of [`SiteStatus`]               |
//! | `PUT /v1/users/{user}/placement`      | `{"site"}`                        | 200 `{"site","epoch"}`                   |
//! | `GET /v1/users/{user}/placement`      |                                   | 200 `{"site","site_url","epoch"}`        |
//! | `GET /v1/phone` + `Authorization: Bearer TOKEN` |                         | 200 `{"user","site","site_url","ws_url"}`|
//! | `GET /healthz`                        |                                   | 200 `ok`                                 |
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
//!   revoke devices, register sites and move placements. This is acceptable only for the loopback demo: bind the
//!   service to `127.0.0.1`. Only `/v1/phone` (bearer token) and `/v1/auth` (token in the body) check tokens.
//! - Plain HTTP only, for the server and [`ControlClient`]; no TLS.
//! - The client opens one connection per request.
//! - The server does not cap concurrent connections.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use vmi_control::{ControlClient, SiteSpec, SqliteStore, serve};
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

mod client;
mod error;
mod http;
mod model;
mod store;

pub use client::{ClientError, ControlClient, DEFAULT_TIMEOUT, MAX_RESPONSE_BYTES, get_bytes, post_json, ws_url};
pub use error::ControlError;
pub use http::{app, serve};
pub use model::{
    AuthRequest, Device, HEALTHY_WITHIN_MS, HeartbeatRequest, Identity, MAX_NAME_LEN, NameRequest, NewDevice,
    PhoneLocation, Placement, PlacementInfo, PlacementRequest, Site, SiteSpec, SiteStatus, User,
};
pub use store::{SCHEMA_VERSION, SqliteStore, Store, TOKEN_BYTES, generate_token, now_ms, token_hash};
