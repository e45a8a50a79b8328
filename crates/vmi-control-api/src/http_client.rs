//! The small HTTP/1.1 client under [`ControlClient`](crate::ControlClient), and requests to any `http://` URL:
//! a site's operator endpoints, one site asking another (checkpoint copies, restores), a terminal's offline
//! checkout.
//!
//! One TCP connection per request (no pooling, no TLS), `Connection: close`, and every exchange, connect
//! included, bounded by a timeout and by a most number of response bytes.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
pub use hyper::Method;
use hyper::body::Bytes;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::ClientError;

/// Timeout of [`post_json`] and [`post_bytes`] unless [`RequestOptions`] say otherwise.
pub const OPERATOR_TIMEOUT: Duration = Duration::from_secs(60);

/// Timeout for a whole request (connect, send, receive) of [`get_bytes`] and, unless changed, of
/// [`ControlClient`](crate::ControlClient).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response body read unless [`RequestOptions`] say otherwise.
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// What goes with one request of [`send`] besides its method, URL and body.
#[derive(Debug, Clone, Copy)]
pub struct RequestOptions<'a> {
    /// Bound on the whole exchange, connect included.
    pub timeout: Duration,
    /// Most response bytes read; more is [`ClientError::ResponseTooLarge`].
    pub max_response_bytes: usize,
    /// Sent as `Authorization: Bearer TOKEN`.
    pub bearer: Option<&'a str>,
}

impl Default for RequestOptions<'_> {
    fn default() -> Self {
        RequestOptions { timeout: OPERATOR_TIMEOUT, max_response_bytes: MAX_RESPONSE_BYTES, bearer: None }
    }
}

/// Where requests go: an `http://host[:port]` origin, checked once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    /// `host[:port]` as given, for the `Host` header.
    pub(crate) authority: String,
    /// `host:port` to dial.
    pub(crate) addr: String,
}

impl Origin {
    /// Parses `http://host[:port]` (trailing `/` allowed; no path, query or user info).
    pub(crate) fn parse(base_url: &str) -> Result<Origin, ClientError> {
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
        Ok(Origin { authority: authority.to_owned(), addr })
    }

    /// Splits `http://host:port/path` into its origin and its path (`/` when it has none).
    fn of_url(url: &str) -> Result<(Origin, String), ClientError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| ClientError::InvalidUrl { url: url.to_owned(), reason: "only http:// is supported" })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        Ok((Origin::parse(&format!("http://{authority}"))?, path.to_owned()))
    }

    /// A request to `path` here with a body of the given content type (if any), a bearer token (if any) and,
    /// when `accept_json`, `Accept: application/json`.
    pub(crate) fn request(
        &self,
        method: Method,
        path: String,
        body: Option<(&'static str, Bytes)>,
        bearer: Option<&str>,
        accept_json: bool,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::CONNECTION, "close");
        if accept_json {
            builder = builder.header(header::ACCEPT, "application/json");
        }
        if let Some(token) = bearer {
            let value = header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::InvalidRequest("token contains characters not allowed in a header"))?;
            builder = builder.header(header::AUTHORIZATION, value);
        }
        let payload = match body {
            Some((content_type, bytes)) => {
                builder = builder.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        builder.body(Full::new(payload)).map_err(|_| ClientError::InvalidRequest("cannot build request"))
    }

    /// Sends `request` on a fresh connection within `timeout`; the status and at most `limit` bytes of body.
    pub(crate) async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        tokio::time::timeout(timeout, self.exchange_unbounded(request, limit))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    async fn exchange_unbounded(
        &self,
        request: Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), ClientError> {
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
                        Err(_) => ClientError::ResponseTooLarge(limit),
                    });
                }
            };
            Ok((status, body))
        };
        let (connection_result, result) = tokio::join!(connection, exchange);
        let response = result?;
        if let Err(err) = connection_result {
            // The response is complete; a failure while closing does not change it.
            tracing::debug!(error = %err, "HTTP connection closed with an error");
        }
        Ok(response)
    }
}

/// One request to any `http://` URL with a body of the given content type (if any); the status and the body,
/// whatever the status.
pub async fn send(
    method: Method,
    url: &str,
    body: Option<(&'static str, Vec<u8>)>,
    options: RequestOptions<'_>,
) -> Result<(u16, Bytes), ClientError> {
    let (origin, path) = Origin::of_url(url)?;
    let body = body.map(|(content_type, bytes)| (content_type, Bytes::from(bytes)));
    let request = origin.request(method, path, body, options.bearer, false)?;
    let (status, body) = origin.exchange(request, options.timeout, options.max_response_bytes).await?;
    Ok((status.as_u16(), body))
}

/// POSTs a JSON body to any `http://` URL (a site's operator endpoints, say) and returns the status and the body
/// as text, whatever the status; waits up to [`OPERATOR_TIMEOUT`].
pub async fn post_json(url: &str, body: &serde_json::Value) -> Result<(u16, String), ClientError> {
    post_json_within(url, body, OPERATOR_TIMEOUT).await
}

/// [`post_json`] with another timeout for the whole exchange.
pub async fn post_json_within<B: Serialize>(
    url: &str,
    body: &B,
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    let bytes = serde_json::to_vec(body).map_err(|_| ClientError::InvalidRequest("cannot encode request body"))?;
    let options = RequestOptions { timeout, ..RequestOptions::default() };
    let (status, body) = send(Method::POST, url, Some(("application/json", bytes)), options).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// POSTs bytes (`application/octet-stream`) to any `http://` URL and returns the status and body bytes, whatever
/// the status; waits up to [`OPERATOR_TIMEOUT`].
pub async fn post_bytes(url: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), ClientError> {
    let options = RequestOptions::default();
    let (status, body) = send(Method::POST, url, Some(("application/octet-stream", body)), options).await?;
    Ok((status, body.to_vec()))
}

/// GETs any `http://` URL and returns the status and body bytes, whatever the status; waits up to
/// [`DEFAULT_TIMEOUT`].
pub async fn get_bytes(url: &str) -> Result<(u16, Vec<u8>), ClientError> {
    let options = RequestOptions { timeout: DEFAULT_TIMEOUT, ..RequestOptions::default() };
    let (status, body) = send(Method::GET, url, None, options).await?;
    Ok((status, body.to_vec()))
}

/// The `error` field of a JSON error body, or the body as text.
pub fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => parsed.error,
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_parsed_strictly() {
        let o = Origin::parse("http://127.0.0.1:8080/").expect("origin");
        assert_eq!((o.authority.as_str(), o.addr.as_str()), ("127.0.0.1:8080", "127.0.0.1:8080"));
        assert_eq!(Origin::parse("http://control").expect("origin").addr, "control:80");
        assert_eq!(Origin::parse("http://[::1]:9").expect("origin").addr, "[::1]:9");
        assert_eq!(Origin::parse("http://[::1]").expect("origin").addr, "[::1]:80");
        for bad in ["https://h:1", "h:1", "http://", "http://h:1/v1", "http://h:99999", "http://u@h:1", "http://h:x"] {
            assert!(matches!(Origin::parse(bad), Err(ClientError::InvalidUrl { .. })), "{bad:?}");
        }
    }

    #[test]
    fn urls_split_into_origin_and_path() {
        let (o, path) = Origin::of_url("http://h:1/v1/phones/a%20b?x=1").expect("url");
        assert_eq!((o.authority.as_str(), path.as_str()), ("h:1", "/v1/phones/a%20b?x=1"));
        assert_eq!(Origin::of_url("http://h:1").expect("url").1, "/");
        assert!(matches!(Origin::of_url("https://h:1/x"), Err(ClientError::InvalidUrl { .. })));
    }

    #[test]
    fn error_messages_prefer_the_json_error_field() {
        assert_eq!(error_message(br#"{"error":"user \"x\" not found"}"#), "user \"x\" not found");
        assert_eq!(error_message(b"plain"), "plain");
    }
}
