//! [`Caller`]: how this process calls other services — whom it trusts (the provider CA), and who it is (a bearer
//! token, or a machine's certificate and the claim it backs).

use std::fmt;
use std::sync::Arc;

use hyper::Method;
use hyper::body::Bytes;
use serde::Serialize;
use vmi_trust::{ClientConfig, Credentials, Stream};

use crate::ClientError;
use crate::http_client::{DEFAULT_TIMEOUT, OPERATOR_TIMEOUT, Origin, RequestOptions};

/// Credentials and trust for outgoing requests. Cheap to clone.
///
/// - `https://` is verified against the provider CA only (never the system's roots). The name checked is the
///   URL's host, or the identity the call expects ([`Caller::expecting`]), e.g. `site-b.site.vmi`: then only
///   the holder of site-b's certificate can answer, whatever address the URL names.
/// - A machine (site, control replica) presents its certificate and says who it is in
///   [`PEER_HEADER`](crate::auth::PEER_HEADER); a person or device sends a bearer token.
#[derive(Clone, Default)]
pub struct Caller {
    tls: Option<Arc<ClientConfig>>,
    claim: Option<Arc<str>>,
    bearer: Option<Arc<str>>,
    expect: Option<Arc<str>>,
    tls_only: bool,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("tls", &self.tls.is_some())
            .field("claim", &self.claim)
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .field("expect", &self.expect)
            .field("tls_only", &self.tls_only)
            .finish()
    }
}

impl Caller {
    /// No credentials and no CA: plain `http://` only (a loopback service, a test).
    pub fn anonymous() -> Caller {
        Caller::default()
    }

    /// A caller that trusts the provider CA `ca_pem` and presents no credentials yet.
    pub fn trusting(ca_pem: &str) -> Result<Caller, ClientError> {
        let tls = vmi_trust::client_config(ca_pem, None).map_err(ClientError::Trust)?;
        Ok(Caller { tls: Some(tls), ..Caller::default() })
    }

    /// A machine: presents `credentials`' certificate and claims `claim` (`site/<id>` or `control`).
    pub fn machine(credentials: &Credentials, claim: &str) -> Result<Caller, ClientError> {
        let tls = vmi_trust::client_config(&credentials.ca_pem, Some(credentials)).map_err(ClientError::Trust)?;
        Ok(Caller { tls: Some(tls), claim: Some(claim.into()), ..Caller::default() })
    }

    /// The same caller sending `token` as its bearer credential.
    pub fn with_bearer(mut self, token: &str) -> Caller {
        self.bearer = Some(token.into());
        self
    }

    /// The same caller, accepting on `https://` only a certificate naming `identity` (e.g. `site-b.site.vmi`).
    pub fn expecting(mut self, identity: &str) -> Caller {
        self.expect = Some(identity.into());
        self
    }

    /// The same caller, refusing plain `http://` and `ws://`: for a peer whose identity must be proven (a site
    /// that receives a phone or a checkpoint copy).
    pub fn tls_only(mut self) -> Caller {
        self.tls_only = true;
        self
    }

    /// The claim sent in [`PEER_HEADER`](crate::auth::PEER_HEADER), if a machine.
    pub fn claim(&self) -> Option<&str> {
        self.claim.as_deref()
    }

    /// The bearer token, if any.
    pub fn bearer(&self) -> Option<&str> {
        self.bearer.as_deref()
    }

    /// The TLS configuration (the provider CA, the client certificate), if any.
    pub fn tls(&self) -> Option<Arc<ClientConfig>> {
        self.tls.clone()
    }

    /// Opens a connection to `origin`: plain for `http://`, TLS verified as described on [`Caller`] for
    /// `https://`.
    pub(crate) async fn dial(&self, origin: &Origin) -> Result<Stream, ClientError> {
        self.dial_addr(origin.tls, &origin.addr, &origin.host).await
    }

    /// Opens a connection to `addr` (`host:port`), TLS when `tls`, checking the expected identity or `host`.
    pub async fn dial_addr(&self, tls: bool, addr: &str, host: &str) -> Result<Stream, ClientError> {
        let name = self.expect.as_deref().unwrap_or(host);
        if !tls && self.tls_only {
            return Err(ClientError::InvalidRequest("this peer must be reached over TLS (https:// or wss://)"));
        }
        if !tls && (self.bearer.is_some() || self.claim.is_some()) && !is_loopback(host) {
            return Err(ClientError::InvalidRequest(CLEAR_TEXT));
        }
        if tls && self.tls.is_none() {
            return Err(ClientError::InvalidRequest("https needs the provider CA (no CA configured)"));
        }
        vmi_trust::dial(tls, addr, name, self.tls.clone()).await.map_err(|e| match e {
            vmi_trust::TrustError::Connect { addr, source } => ClientError::Connect { addr, source },
            other => ClientError::Trust(other),
        })
    }

    /// Opens the connection a WebSocket to `url` (`ws://` plain, `wss://` TLS verified as [`Caller::dial_addr`])
    /// runs over; the caller then does the upgrade on it.
    pub async fn dial_ws(&self, url: &str) -> Result<Stream, ClientError> {
        let http = match (url.strip_prefix("wss://"), url.strip_prefix("ws://")) {
            (Some(rest), _) => format!("https://{rest}"),
            (_, Some(rest)) => format!("http://{rest}"),
            _ => return Err(ClientError::InvalidUrl { url: url.to_owned(), reason: "expected ws:// or wss://" }),
        };
        let (origin, _path) = Origin::of_url(&http)?;
        self.dial(&origin).await
    }

    /// One request to any `http(s)://` URL with a body of the given content type (if any); the status and the
    /// body, whatever the status.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<(&'static str, Vec<u8>)>,
        options: RequestOptions<'_>,
    ) -> Result<(u16, Bytes), ClientError> {
        let (origin, path) = Origin::of_url(url)?;
        if options.bearer.is_some() && !origin.tls && !is_loopback(&origin.host) {
            return Err(ClientError::InvalidRequest(CLEAR_TEXT));
        }
        let body = body.map(|(content_type, bytes)| (content_type, Bytes::from(bytes)));
        let request = origin.request(method, path, body, self, options.bearer, false)?;
        let (status, body) = origin
            .exchange(self, request, options.timeout, options.max_response_bytes, options.observer.as_ref())
            .await?;
        Ok((status.as_u16(), body))
    }

    /// POSTs a JSON body and returns the status and the body as text, whatever the status; waits up to
    /// [`OPERATOR_TIMEOUT`].
    pub async fn post_json<B: Serialize>(&self, url: &str, body: &B) -> Result<(u16, String), ClientError> {
        self.post_json_within(url, body, OPERATOR_TIMEOUT).await
    }

    /// [`Caller::post_json`] with another timeout for the whole exchange.
    pub async fn post_json_within<B: Serialize>(
        &self,
        url: &str,
        body: &B,
        timeout: std::time::Duration,
    ) -> Result<(u16, String), ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|_| ClientError::InvalidRequest("cannot encode request body"))?;
        let options = RequestOptions { timeout, ..RequestOptions::default() };
        let (status, body) = self.send(Method::POST, url, Some(("application/json", bytes)), options).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// POSTs bytes (`application/octet-stream`) and returns the status and body bytes, whatever the status;
    /// waits up to [`OPERATOR_TIMEOUT`].
    pub async fn post_bytes(&self, url: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), ClientError> {
        let options = RequestOptions::default();
        let (status, body) = self.send(Method::POST, url, Some(("application/octet-stream", body)), options).await?;
        Ok((status, body.to_vec()))
    }

    /// GETs a URL and returns the status and body bytes, whatever the status; waits up to [`DEFAULT_TIMEOUT`].
    pub async fn get_bytes(&self, url: &str) -> Result<(u16, Vec<u8>), ClientError> {
        let options = RequestOptions { timeout: DEFAULT_TIMEOUT, ..RequestOptions::default() };
        let (status, body) = self.send(Method::GET, url, None, options).await?;
        Ok((status, body.to_vec()))
    }
}

/// Why a credential is not sent: plain HTTP to another machine would show it to the network.
const CLEAR_TEXT: &str = "a credential goes in clear text only to this machine (loopback): use https://";

/// Whether `host` (a name or an IP literal, brackets off) is this machine.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod clear_text_tests {
    use super::*;

    #[tokio::test]
    async fn credentials_never_go_in_clear_text_to_another_machine() {
        let device = Caller::anonymous().with_bearer("secret");
        for url in ["http://192.0.2.7:7800/v1/phone", "http://edge.example:80/x"] {
            let sent = device.send(Method::GET, url, None, RequestOptions::default()).await;
            assert!(matches!(sent, Err(ClientError::InvalidRequest(m)) if m == CLEAR_TEXT), "{url}");
        }
        let relaying = Caller::anonymous();
        let options = RequestOptions { bearer: Some("secret"), ..RequestOptions::default() };
        let sent = relaying.send(Method::GET, "http://192.0.2.7:7800/x", None, options).await;
        assert!(matches!(sent, Err(ClientError::InvalidRequest(m)) if m == CLEAR_TEXT));
        assert!(is_loopback("127.0.0.1") && is_loopback("[::1]") && is_loopback("LOCALHOST"));
        assert!(!is_loopback("192.0.2.7") && !is_loopback("localhost.evil.example"));
    }
}
