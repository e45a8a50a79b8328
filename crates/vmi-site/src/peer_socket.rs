//! WebSockets from this site to another (live migration): dialled as a [`Caller`], so the TLS handshake checks
//! the peer's certificate and this site's own certificate and claim go with the upgrade request.

use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use vmi_control_api::Caller;
use vmi_control_api::auth::PEER_HEADER;

/// A WebSocket to another site.
pub type PeerSocket = WebSocketStream<vmi_trust::Stream>;

/// Opens a WebSocket to `url` (`ws://` or `wss://`) as `caller`.
pub async fn connect(caller: &Caller, url: &str) -> Result<PeerSocket, String> {
    let stream = caller.dial_ws(url).await.map_err(|e| vmi_engine::error_chain(&e))?;
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    if let Some(claim) = caller.claim() {
        let value = HeaderValue::from_str(claim).map_err(|e| e.to_string())?;
        request.headers_mut().insert(PEER_HEADER, value);
    }
    // The migration's trace goes on at the destination (vmi_telemetry::trace).
    if let Some(value) = vmi_telemetry::trace::traceparent().and_then(|v| HeaderValue::from_str(&v).ok()) {
        request.headers_mut().insert(vmi_telemetry::trace::TRACEPARENT, value);
    }
    let (socket, _) = tokio_tungstenite::client_async(request, stream).await.map_err(|e| e.to_string())?;
    Ok(socket)
}
