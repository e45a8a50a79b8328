//! The small HTTP/1.1 client under [`ControlClient`](crate::ControlClient), and requests to any `http://` or
//! `https://` URL: a site's operator endpoints, one site asking another (checkpoint copies, restores), a
//! terminal's offline checkout. Every request goes out as a [`Caller`]: whom it trusts, who it is.
//!
//! One connection per request (no pooling), `Connection: close`, and every exchange, connect and TLS handshake
//! included, bounded by a timeout and by a most number of response bytes. A [`TransferObserver`] may watch a
//! request's body go out and its answer come in (a progress display for a large upload or download). In a trace
//! (`vmi_telemetry::trace`), each exchange is a client span whose context goes with the request (`traceparent`).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
pub use hyper::Method;
use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;

use crate::ClientError;
use crate::caller::Caller;
use vmi_telemetry::trace;
use vmi_trust::Stream;

/// Timeout of [`post_json`] and [`post_bytes`] unless [`RequestOptions`] say otherwise.
pub const OPERATOR_TIMEOUT: Duration = Duration::from_secs(60);

/// Timeout for a whole request (connect, send, receive) of [`get_bytes`] and, unless changed, of
/// [`ControlClient`](crate::ControlClient).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response body read unless [`RequestOptions`] say otherwise.
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// What goes with one request of [`send`] besides its method, URL and body.
#[derive(Debug, Clone)]
pub struct RequestOptions<'a> {
    /// Bound on the whole exchange, connect included.
    pub timeout: Duration,
    /// Most response bytes read; more is [`ClientError::ResponseTooLarge`].
    pub max_response_bytes: usize,
    /// Sent as `Authorization: Bearer TOKEN` instead of the caller's own token (a site forwarding a device's).
    pub bearer: Option<&'a str>,
    /// Told how far the request's body and its answer have got.
    pub observer: Option<TransferObserver>,
}

impl Default for RequestOptions<'_> {
    fn default() -> Self {
        RequestOptions {
            timeout: OPERATOR_TIMEOUT,
            max_response_bytes: MAX_RESPONSE_BYTES,
            bearer: None,
            observer: None,
        }
    }
}

/// How far one request has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// `done` of the request body's `total` bytes handed to the connection.
    Sent {
        /// Bytes handed over so far.
        done: u64,
        /// The body's length.
        total: u64,
    },
    /// `done` bytes of the answer's body received, of `total` when the answer said how many (`Content-Length`).
    Received {
        /// Bytes received so far.
        done: u64,
        /// The answer's length, if it said.
        total: Option<u64>,
    },
}

/// Told of each step of a request's [`Transfer`] (a progress display). Cheap to clone.
#[derive(Clone)]
pub struct TransferObserver(Arc<dyn Fn(Transfer) + Send + Sync>);

impl TransferObserver {
    /// An observer calling `f` with every step.
    pub fn new(f: impl Fn(Transfer) + Send + Sync + 'static) -> TransferObserver {
        TransferObserver(Arc::new(f))
    }

    fn tell(&self, transfer: Transfer) {
        (self.0)(transfer);
    }
}

impl std::fmt::Debug for TransferObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransferObserver")
    }
}

/// The piece an observed body goes out in: small enough for a progress display to move, large enough to cost
/// nothing.
const OBSERVED_PIECE: usize = 256 << 10;

/// A request's body: its bytes in one frame, or, watched by an observer, in pieces of [`OBSERVED_PIECE`] with the
/// observer told as each is handed to the connection (which takes the next once it has room: bytes handed over
/// are close to bytes sent).
pub(crate) struct RequestBody {
    rest: Bytes,
    total: u64,
    observer: Option<TransferObserver>,
}

impl RequestBody {
    fn new(bytes: Bytes) -> RequestBody {
        RequestBody { total: bytes.len() as u64, rest: bytes, observer: None }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let piece = match &self.observer {
            Some(_) => OBSERVED_PIECE.min(self.rest.len()),
            None => self.rest.len(),
        };
        let frame = self.rest.split_to(piece);
        if let Some(observer) = &self.observer {
            observer.tell(Transfer::Sent { done: self.total - self.rest.len() as u64, total: self.total });
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        // Exact: the request goes with a Content-Length, as a body of known bytes should.
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

/// Where requests go: an `http://host[:port]` origin, checked once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    /// `https://`: the connection is TLS.
    pub(crate) tls: bool,
    /// `host[:port]` as given, for the `Host` header.
    pub(crate) authority: String,
    /// `host:port` to dial.
    pub(crate) addr: String,
    /// The host alone (brackets of an IPv6 literal removed): the TLS name checked unless the caller expects an
    /// identity.
    pub(crate) host: String,
}

impl Origin {
    /// Parses `http://host[:port]` or `https://host[:port]` (trailing `/` allowed; no path, query or user info).
    pub(crate) fn parse(base_url: &str) -> Result<Origin, ClientError> {
        let invalid = |reason| ClientError::InvalidUrl { url: base_url.to_owned(), reason };
        let (tls, rest) = match (base_url.strip_prefix("http://"), base_url.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Err(invalid("expected http:// or https://")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() {
            return Err(invalid("missing host"));
        }
        if authority.contains(['/', '?', '#', '@']) || authority.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("expected host[:port] with no path, query or user info"));
        }
        let host_end = authority.rfind(']').map_or(0, |i| i + 1);
        let (host, addr) = match authority[host_end..].rsplit_once(':') {
            Some((_, port)) => {
                port.parse::<u16>().map_err(|_| invalid("port is not a number from 0 to 65535"))?;
                (&authority[..authority.len() - port.len() - 1], authority.to_owned())
            }
            None => (authority, format!("{authority}:{}", if tls { 443 } else { 80 })),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(Origin { tls, authority: authority.to_owned(), addr, host })
    }

    /// The base URL, `http(s)://host[:port]`.
    pub(crate) fn base_url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.authority)
    }

    /// Splits `http(s)://host:port/path` into its origin and its path (`/` when it has none).
    pub(crate) fn of_url(url: &str) -> Result<(Origin, String), ClientError> {
        let scheme_end = url
            .find("://")
            .map(|i| i + 3)
            .ok_or_else(|| ClientError::InvalidUrl { url: url.to_owned(), reason: "expected http:// or https://" })?;
        let rest = &url[scheme_end..];
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        Ok((Origin::parse(&format!("{}{authority}", &url[..scheme_end]))?, path.to_owned()))
    }

    /// A request to `path` here with a body of the given content type (if any), `caller`'s credentials (`bearer`
    /// instead of its own token, when given) and, when `accept_json`, `Accept: application/json`.
    pub(crate) fn request(
        &self,
        method: Method,
        path: String,
        body: Option<(&'static str, Bytes)>,
        caller: &Caller,
        bearer: Option<&str>,
        accept_json: bool,
    ) -> Result<Request<RequestBody>, ClientError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::CONNECTION, "close");
        if accept_json {
            builder = builder.header(header::ACCEPT, "application/json");
        }
        if let Some(claim) = caller.claim() {
            builder = builder.header(crate::auth::PEER_HEADER, claim);
        }
        if let Some(token) = bearer.or(caller.bearer()) {
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
        builder.body(RequestBody::new(payload)).map_err(|_| ClientError::InvalidRequest("cannot build request"))
    }

    /// Sends `request` as `caller` on a fresh connection within `timeout`; the status and at most `limit` bytes
    /// of body. `observer`, if any, is told how far the request's body and the answer have got.
    pub(crate) async fn exchange(
        &self,
        caller: &Caller,
        request: Request<RequestBody>,
        timeout: Duration,
        limit: usize,
        observer: Option<&TransferObserver>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.exchange_over(caller, None, request, timeout, limit, observer).await
    }

    /// As [`Origin::exchange`], over `dialed` when given (a connection opened ahead of time) instead of a new one.
    pub(crate) async fn exchange_over(
        &self,
        caller: &Caller,
        dialed: Option<Stream>,
        mut request: Request<RequestBody>,
        timeout: Duration,
        limit: usize,
        observer: Option<&TransferObserver>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        request.body_mut().observer = observer.cloned();
        // In a trace, the exchange is a client span and the site or service asked continues the trace from it.
        let span = trace::client_span(request.method().as_str(), request.uri().path());
        trace::in_span(span, async move {
            if let Some(value) = trace::traceparent().and_then(|v| header::HeaderValue::from_str(&v).ok()) {
                request.headers_mut().insert(trace::TRACEPARENT, value);
            }
            tokio::time::timeout(timeout, self.exchange_unbounded(caller, dialed, request, limit, observer))
                .await
                .map_err(|_| ClientError::Timeout(timeout))?
        })
        .await
    }

    async fn exchange_unbounded(
        &self,
        caller: &Caller,
        dialed: Option<Stream>,
        request: Request<RequestBody>,
        limit: usize,
        observer: Option<&TransferObserver>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let stream = match dialed {
            Some(stream) => stream,
            None => caller.dial(self).await?,
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(ClientError::Http)?;
        // Drive the connection in this task, beside the request: no spawned task to own, and the connection
        // ends as soon as the exchange drops `sender` (the request also says `Connection: close`).
        let exchange = async move {
            let response = sender.send_request(request).await.map_err(ClientError::Http)?;
            let status = response.status();
            let total = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if total.is_some_and(|total| total > limit as u64) {
                return Err(ClientError::ResponseTooLarge(limit));
            }
            let mut incoming = response.into_body();
            let mut body = Vec::with_capacity(total.map_or(0, |t| t as usize));
            while let Some(frame) = incoming.frame().await {
                let Ok(data) = frame.map_err(ClientError::Http)?.into_data() else { continue };
                if body.len() + data.len() > limit {
                    return Err(ClientError::ResponseTooLarge(limit));
                }
                body.extend_from_slice(&data);
                if let Some(observer) = observer {
                    observer.tell(Transfer::Received { done: body.len() as u64, total });
                }
            }
            drop(sender);
            Ok((status, Bytes::from(body)))
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

/// The `error` field of a JSON error body, or the body as text.
pub fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize, schemars::JsonSchema)]
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
        let o = Origin::parse("https://[::1]:9").expect("origin");
        assert_eq!((o.tls, o.host.as_str(), o.base_url().as_str()), (true, "::1", "https://[::1]:9"));
        assert_eq!(Origin::parse("https://site.example").expect("origin").addr, "site.example:443");
        for bad in ["ftp://h:1", "h:1", "http://", "http://h:1/v1", "http://h:99999", "http://u@h:1", "http://h:x"] {
            assert!(matches!(Origin::parse(bad), Err(ClientError::InvalidUrl { .. })), "{bad:?}");
        }
    }

    #[test]
    fn urls_split_into_origin_and_path() {
        let (o, path) = Origin::of_url("http://h:1/v1/phones/a%20b?x=1").expect("url");
        assert_eq!((o.authority.as_str(), path.as_str()), ("h:1", "/v1/phones/a%20b?x=1"));
        assert_eq!(Origin::of_url("http://h:1").expect("url").1, "/");
        assert!(Origin::of_url("https://h:1/x").expect("url").0.tls);
        assert!(matches!(Origin::of_url("h:1/x"), Err(ClientError::InvalidUrl { .. })));
    }

    #[test]
    fn error_messages_prefer_the_json_error_field() {
        assert_eq!(error_message(br#"{"error":"user \"x\" not found"}"#), "user \"x\" not found");
        assert_eq!(error_message(b"plain"), "plain");
    }
}
