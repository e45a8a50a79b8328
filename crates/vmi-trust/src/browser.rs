//! What a service reachable from a browser does so that a web page elsewhere cannot use it (docs/SECURITY.md,
//! "Browsers"): a middleware for axum routers.
//!
//! - **Host allowlist** (DNS rebinding): a request whose `Host` is a name must name this service (its site or
//!   control name, `localhost`, or a name it was given); IP literals are always served. Otherwise 421.
//! - **No cross-origin mutations** (CSRF): a request other than GET/HEAD/OPTIONS whose `Origin` is not this
//!   service's own is refused with 403, and one whose body is of a type a plain HTML form or a no-CORS fetch can
//!   send (`text/plain`, `application/x-www-form-urlencoded`, `multipart/form-data`) with 415: mutations are JSON
//!   (or the binary types of uploads), which a foreign page can only send after a CORS preflight this service
//!   never grants.
//! - **Headers on every answer**: a Content-Security-Policy allowing only this origin's own scripts and styles
//!   (the page has no inline script; WebAssembly may be compiled, JavaScript `eval` may not), `frame-ancestors 'none'`, `nosniff`, `no-referrer`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The Content-Security-Policy of every answer. `connect-src` allows the other sites a page follows its phone
/// to (over TLS, or plain on loopback). `'wasm-unsafe-eval'` lets the page compile WebAssembly (a phone checked
/// out to the browser) and nothing else: JavaScript `eval` stays refused.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
     img-src 'self' data: blob:; font-src 'self'; manifest-src 'self'; \
     connect-src 'self' https: wss: http://127.0.0.1:* ws://127.0.0.1:* http://localhost:* ws://localhost:*; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'";

/// Body types a page on another origin can send without a CORS preflight.
const FORM_TYPES: [&str; 3] = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"];

/// The names (besides IP literals and `localhost`) a service answers to.
#[derive(Clone, Debug)]
pub struct BrowserPolicy {
    names: Arc<[String]>,
}

impl BrowserPolicy {
    /// A policy serving `names` (e.g. `site-a.site.vmi` and a public host name), `localhost` and IP literals.
    pub fn new(names: impl IntoIterator<Item = String>) -> BrowserPolicy {
        let mut names: Vec<String> = names.into_iter().map(|n| n.to_ascii_lowercase()).collect();
        names.push("localhost".into());
        BrowserPolicy { names: names.into() }
    }

    /// Whether a request for host `host` (no port) is served.
    pub fn serves(&self, host: &str) -> bool {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>().is_ok() || self.names.iter().any(|n| n.eq_ignore_ascii_case(host))
    }
}

/// `host[:port]` split into the host (brackets kept off an IPv6 literal) and the rest.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    authority
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(authority, |(h, _)| h)
}

/// The request's `host[:port]`: its `Host` header (HTTP/1.1), or the URI's authority.
fn authority(req: &Request) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
}

/// The reason to refuse a request, if any.
fn refusal(policy: &BrowserPolicy, req: &Request) -> Option<(StatusCode, String)> {
    let authority = authority(req);
    if let Some(authority) = &authority
        && !policy.serves(host_of(authority))
    {
        return Some((StatusCode::MISDIRECTED_REQUEST, format!("host {:?} is not served here", host_of(authority))));
    }
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let same = match (origin.to_str().ok().and_then(|o| o.split_once("://")), &authority) {
            (Some((_, origin_authority)), Some(authority)) => origin_authority.eq_ignore_ascii_case(authority),
            _ => false,
        };
        if !same {
            let shown = String::from_utf8_lossy(origin.as_bytes()).into_owned();
            return Some((StatusCode::FORBIDDEN, format!("cross-origin request from {shown:?} refused")));
        }
    }
    if let Some(kind) = form_type(req.headers()) {
        return Some((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("a {kind} body is not accepted here: send application/json"),
        ));
    }
    None
}

/// The body's type if it is one a foreign page can send without a preflight.
fn form_type(headers: &HeaderMap) -> Option<&'static str> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or_default().trim();
    FORM_TYPES.into_iter().find(|t| t.eq_ignore_ascii_case(essence))
}

/// The middleware: refuses as described in the module docs, and puts the security headers on every answer.
pub async fn browser_hygiene(State(policy): State<BrowserPolicy>, req: Request, next: Next) -> Response {
    let mut response = match refusal(&policy, &req) {
        Some((status, why)) => (status, axum::Json(serde_json::json!({ "error": why }))).into_response(),
        None => next.run(req).await,
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn request(method: &str, host: &str, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().method(method).uri("/v1/phones/ann/mail").header("host", host);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(Body::empty()).expect("request")
    }

    fn policy() -> BrowserPolicy {
        BrowserPolicy::new(["site-a.site.vmi".to_owned()])
    }

    #[test]
    fn names_must_be_ours_ip_literals_always_pass() {
        let p = policy();
        for ok in ["127.0.0.1:7801", "[::1]:7801", "localhost:7801", "SITE-A.site.vmi", "10.0.0.7"] {
            assert!(refusal(&p, &request("GET", ok, &[])).is_none(), "{ok}");
        }
        let (status, why) = refusal(&p, &request("GET", "evil.example:7801", &[])).expect("rebinding");
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
        assert!(why.contains("evil.example"), "{why}");
    }

    #[test]
    fn mutations_from_other_origins_or_as_forms_are_refused() {
        let p = policy();
        let json = ("content-type", "application/json");
        let same = ("origin", "http://127.0.0.1:7801");
        assert!(refusal(&p, &request("POST", "127.0.0.1:7801", &[json, same])).is_none());
        assert!(refusal(&p, &request("POST", "127.0.0.1:7801", &[json])).is_none(), "no Origin: not a browser");
        let evil = ("origin", "http://evil.example");
        assert_eq!(
            refusal(&p, &request("POST", "127.0.0.1:7801", &[json, evil])).map(|r| r.0),
            Some(StatusCode::FORBIDDEN)
        );
        let other_port = ("origin", "http://127.0.0.1:9999");
        assert_eq!(
            refusal(&p, &request("POST", "127.0.0.1:7801", &[json, other_port])).map(|r| r.0),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            refusal(&p, &request("POST", "127.0.0.1:7801", &[json, ("origin", "null")])).map(|r| r.0),
            Some(StatusCode::FORBIDDEN)
        );
        for form in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "Text/Plain;charset=utf-8",
        ] {
            let got = refusal(&p, &request("POST", "127.0.0.1:7801", &[("content-type", form)]));
            assert_eq!(got.map(|r| r.0), Some(StatusCode::UNSUPPORTED_MEDIA_TYPE), "{form}");
        }
        assert!(refusal(&p, &request("GET", "127.0.0.1:7801", &[evil])).is_none(), "reads carry no effect");
        let upload = ("content-type", "application/octet-stream");
        assert!(refusal(&p, &request("POST", "127.0.0.1:7801", &[upload])).is_none());
    }
}
