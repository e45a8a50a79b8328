//! [`ControlClient`]: the async client that sites, terminals and the `vmi` CLI use to talk to the control service.
//!
//! Plain HTTP/1.1 over one TCP connection per request (no pooling, no TLS). Every call, connect included, is bounded
//! by a timeout ([`DEFAULT_TIMEOUT`] unless changed with [`ControlClient::with_timeout`]).

use std::collections::BTreeMap;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use crate::model::{
    AuthRequest, Device, HeartbeatRequest, Identity, LoggedMigration, MigrationRecord, NameRequest, NewDevice,
    PhoneLocation, Placement, PlacementInfo, PlacementRequest, ReportRequest, SiteSpec, SiteStatus, TerminalReport,
    User,
};
use crate::tenants::{
    Admission, AdmitRequest, ImageVersion, Tenant, TenantRequest, TenantStatus, UserImage, UserRequest,
};

/// Timeout for a whole request (connect, send, receive) unless set with [`ControlClient::with_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response body the client will read.
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL is not `http://host[:port]`.
    #[error("invalid control service url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An argument cannot be put in a request (e.g. a token with characters not allowed in a header).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// The TCP connection could not be opened.
    #[error("cannot connect to control service at {addr}")]
    Connect {
        /// `host:port` that was dialled.
        addr: String,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed after connecting (connection reset, malformed response, ...).
    #[error("HTTP exchange with control service failed")]
    Http(#[source] hyper::Error),
    /// The service answered with a non-success status. `body` is the `error` message of a JSON error body, or
    /// the raw body text otherwise.
    #[error("control service answered {status}: {body}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// The error message.
        body: String,
    },
    /// The response body was not the expected JSON.
    #[error("cannot decode control service response")]
    Decode(#[source] serde_json::Error),
    /// The response body exceeded [`MAX_RESPONSE_BYTES`].
    #[error("control service response exceeds {MAX_RESPONSE_BYTES} bytes")]
    ResponseTooLarge,
    /// No complete answer within the timeout.
    #[error("control service did not answer within {0:?}")]
    Timeout(Duration),
}

impl ClientError {
    /// The HTTP status, if the service answered with an error status.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client for one control service. Cheap to clone; holds no connection between calls.
#[derive(Debug, Clone)]
pub struct ControlClient {
    /// `host[:port]` as given, for the `Host` header.
    authority: String,
    /// `host:port` to dial.
    addr: String,
    timeout: Duration,
}

impl ControlClient {
    /// A client for the service at `base_url`, which must be `http://host[:port]` (trailing `/` allowed).
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let invalid = |reason| ClientError::InvalidUrl { url: base_url.to_owned(), reason };
        let rest = base_url.strip_prefix("http://").ok_or_else(|| invalid("only http:// is supported"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() {
            return Err(invalid("missing host"));
        }
        if authority.contains(['/', '?', '#', '@']) || authority.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("expected host[:port] with no path, query or user info"));
        }
        let host_end = authority.rfind(']').map_or(0, |i| i + 1);
        let addr = match authority[host_end..].rsplit_once(':') {
            Some((_, port)) => {
                port.parse::<u16>().map_err(|_| invalid("port is not a number from 0 to 65535"))?;
                authority.to_owned()
            }
            None => format!("{authority}:80"),
        };
        Ok(ControlClient { authority: authority.to_owned(), addr, timeout: DEFAULT_TIMEOUT })
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The base URL this client talks to, `http://host:port`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.authority)
    }

    /// `POST /v1/users/{user}/pair-code`: a one-time code for a new device of `user`.
    pub async fn pair_code(&self, user: &str) -> Result<crate::PairCode, ClientError> {
        self.json(Method::POST, format!("/v1/users/{}/pair-code", segment(user)), None::<&()>).await
    }

    /// `POST /v1/phone/pair-code`: a code issued by a signed-in device for its own user.
    pub async fn pair_code_for_device(&self, token: &str) -> Result<crate::PairCode, ClientError> {
        let bytes = self.call(Method::POST, "/v1/phone/pair-code".to_owned(), None::<&()>, Some(token)).await?;
        serde_json::from_slice(&bytes).map_err(ClientError::Decode)
    }

    /// `POST /v1/pair`: trades a code for a new device (token included).
    pub async fn pair(&self, code: &str, name: &str) -> Result<NewDevice, ClientError> {
        let body = crate::PairRequest { code: code.to_owned(), name: name.to_owned() };
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

    /// `POST /v1/auth`: who `token` belongs to; `Ok(None)` if the service says it is unknown or revoked (401).
    pub async fn authenticate(&self, token: &str) -> Result<Option<Identity>, ClientError> {
        let body = AuthRequest { token: token.to_owned() };
        match self.json(Method::POST, "/v1/auth".to_owned(), Some(&body)).await {
            Ok(identity) => Ok(Some(identity)),
            Err(ClientError::Status { status: 401, .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// `PUT /v1/sites/{id}`: registers or updates a site.
    pub async fn register_site(&self, id: &str, spec: &SiteSpec) -> Result<SiteStatus, ClientError> {
        self.json(Method::PUT, format!("/v1/sites/{}", segment(id)), Some(spec)).await
    }

    /// `POST /v1/sites/{id}/heartbeat`: reports the site alive with `phones` phones running.
    pub async fn heartbeat(&self, id: &str, phones: u32) -> Result<(), ClientError> {
        let path = format!("/v1/sites/{}/heartbeat", segment(id));
        self.call(Method::POST, path, Some(&HeartbeatRequest { phones }), None).await.map(drop)
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
        entries: &[crate::CheckpointEntry],
    ) -> Result<(), ClientError> {
        let path = format!("/v1/users/{}/checkpoints/{}", segment(user), segment(site));
        self.call(Method::PUT, path, Some(&entries), None).await.map(drop)
    }

    /// `GET /v1/users/{user}/checkpoints`: the catalogue of `user`'s checkpoints.
    pub async fn checkpoints(&self, user: &str) -> Result<Vec<crate::CatalogedCheckpoint>, ClientError> {
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

    /// `PUT /v1/tenants/{name}`: replaces the tenant's quotas and image.
    pub async fn update_tenant(&self, name: &str, quotas: &TenantRequest) -> Result<Tenant, ClientError> {
        self.json(Method::PUT, format!("/v1/tenants/{}", segment(name)), Some(quotas)).await
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
        let bytes = self.call_raw(Method::GET, path, None, None, crate::MAX_IMAGE_BYTES).await?;
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
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::CONNECTION, "close")
            .header(header::ACCEPT, "application/json");
        if let Some(token) = bearer {
            let value = header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::InvalidRequest("token contains characters not allowed in a header"))?;
            builder = builder.header(header::AUTHORIZATION, value);
        }
        let payload = match body {
            Some((bytes, content_type)) => {
                builder = builder.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let request =
            builder.body(Full::new(payload)).map_err(|_| ClientError::InvalidRequest("cannot build request"))?;

        let (status, body) = tokio::time::timeout(self.timeout, self.exchange(request, limit))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))??;
        if status.is_success() {
            Ok(body)
        } else {
            Err(ClientError::Status { status: status.as_u16(), body: error_message(&body) })
        }
    }

    async fn exchange(&self, request: Request<Full<Bytes>>, limit: usize) -> Result<(StatusCode, Bytes), ClientError> {
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|source| ClientError::Connect { addr: self.addr.clone(), source })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(ClientError::Http)?;
        // Drive the connection in this task, beside the request: no spawned task to own, and the connection
        // ends as soon as the exchange drops `sender` (the request also says `Connection: close`).
        let exchange = async move {
            let response = sender.send_request(request).await.map_err(ClientError::Http)?;
            let status = response.status();
            let collected = Limited::new(response.into_body(), limit).collect().await;
            drop(sender);
            let body = match collected {
                Ok(collected) => collected.to_bytes(),
                Err(err) => {
                    return Err(match err.downcast::<hyper::Error>() {
                        Ok(err) => ClientError::Http(*err),
                        Err(_) => ClientError::ResponseTooLarge,
                    });
                }
            };
            Ok((status, body))
        };
        let (connection_result, result) = tokio::join!(connection, exchange);
        let response = result?;
        if let Err(err) = connection_result {
            // The response is complete; a failure while closing does not change it.
            tracing::debug!(error = %err, "control connection closed with an error");
        }
        Ok(response)
    }
}

/// Splits `http://host:port/path` into a client for its origin and the path.
fn origin_and_path(url: &str) -> Result<(ControlClient, String), ClientError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::InvalidUrl { url: url.to_owned(), reason: "only http:// is supported" })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((ControlClient::new(&format!("http://{authority}"))?, path.to_owned()))
}

impl ControlClient {
    async fn raw(&self, method: Method, path: String, json: Option<Vec<u8>>) -> Result<(u16, Bytes), ClientError> {
        self.raw_typed(method, path, json.map(|b| ("application/json", b))).await
    }

    async fn raw_typed(
        &self,
        method: Method,
        path: String,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<(u16, Bytes), ClientError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::CONNECTION, "close");
        if let Some((content_type, _)) = &body {
            builder = builder.header(header::CONTENT_TYPE, *content_type);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.map(|(_, b)| b).unwrap_or_default())))
            .map_err(|_| ClientError::InvalidRequest("cannot build request"))?;
        let (status, body) = tokio::time::timeout(self.timeout, self.exchange(request, MAX_RESPONSE_BYTES))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))??;
        Ok((status.as_u16(), body))
    }
}

/// How long [`post_json`] waits for an answer.
pub const OPERATOR_TIMEOUT: Duration = Duration::from_secs(60);

/// POSTs a JSON body to any `http://` URL (a site's operator endpoints, say) and returns
/// the status and the body as text, whatever the status.
pub async fn post_json(url: &str, body: &serde_json::Value) -> Result<(u16, String), ClientError> {
    post_json_within(url, body, OPERATOR_TIMEOUT).await
}

/// [`post_json`] with another timeout for the whole exchange.
pub(crate) async fn post_json_within<B: Serialize>(
    url: &str,
    body: &B,
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    let (client, path) = origin_and_path(url)?;
    let bytes = serde_json::to_vec(body).map_err(|_| ClientError::InvalidRequest("cannot encode request body"))?;
    let (status, body) = client.with_timeout(timeout).raw(Method::POST, path, Some(bytes)).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// POSTs bytes (`application/octet-stream`) to any `http://` URL and returns the status
/// and body bytes, whatever the status.
pub async fn post_bytes(url: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), ClientError> {
    let (client, path) = origin_and_path(url)?;
    let (status, body) = client
        .with_timeout(OPERATOR_TIMEOUT)
        .raw_typed(Method::POST, path, Some(("application/octet-stream", body)))
        .await?;
    Ok((status, body.to_vec()))
}

/// GETs any `http://` URL and returns the status and body bytes, whatever the status.
pub async fn get_bytes(url: &str) -> Result<(u16, Vec<u8>), ClientError> {
    let (client, path) = origin_and_path(url)?;
    let (status, body) = client.raw(Method::GET, path, None).await?;
    Ok((status, body.to_vec()))
}

/// The terminal WebSocket URL of a site's base URL (`http://h:p` → `ws://h:p/v1/terminal`).
pub fn ws_url(site_url: &str) -> String {
    let base = site_url.trim_end_matches('/');
    let base = match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}"),
        None => format!("ws://{}", base.strip_prefix("http://").unwrap_or(base)),
    };
    format!("{base}/v1/terminal")
}

/// The `error` field of a JSON error body, or the body as text.
fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => parsed.error,
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

/// Percent-encodes a path segment or query value (everything but RFC 3986 unreserved characters).
pub(crate) fn segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_parsed_strictly() {
        let c = ControlClient::new("http://127.0.0.1:8080/").unwrap();
        assert_eq!((c.authority.as_str(), c.addr.as_str()), ("127.0.0.1:8080", "127.0.0.1:8080"));
        assert_eq!(ControlClient::new("http://control").unwrap().addr, "control:80");
        assert_eq!(ControlClient::new("http://[::1]:9").unwrap().addr, "[::1]:9");
        assert_eq!(ControlClient::new("http://[::1]").unwrap().addr, "[::1]:80");
        assert_eq!(ControlClient::new("http://h:1").unwrap().base_url(), "http://h:1");
        for bad in ["https://h:1", "h:1", "http://", "http://h:1/v1", "http://h:99999", "http://u@h:1", "http://h:x"] {
            assert!(matches!(ControlClient::new(bad), Err(ClientError::InvalidUrl { .. })), "{bad:?}");
        }
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("site-a.b_c~"), "site-a.b_c~");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn error_messages_prefer_the_json_error_field() {
        assert_eq!(error_message(br#"{"error":"user \"x\" not found"}"#), "user \"x\" not found");
        assert_eq!(error_message(b"plain"), "plain");
    }
}
