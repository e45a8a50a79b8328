//! One terminal's WebSocket session: Hello, authentication, then messages both ways
//! between the socket and the phone task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use vmi_protocol::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage};

use crate::SiteState;
use crate::phone::{Attachment, PhoneCommand, SESSION_QUEUE};

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// How long a terminal has to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

async fn send(socket: &mut WebSocket, message: &ServerMessage) -> bool {
    socket.send(Message::Binary(vmi_protocol::encode_server(message).into())).await.is_ok()
}

async fn refuse(mut socket: WebSocket, code: ErrorCode, message: String) {
    tracing::info!(?code, "terminal refused: {message}");
    let _ = send(&mut socket, &ServerMessage::Error { code, message }).await;
    let _ = socket.close().await;
}

/// Runs a session to its end.
pub async fn run(mut socket: WebSocket, site: Arc<SiteState>) {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(Message::Binary(bytes)))) => vmi_protocol::decode_client(&bytes),
        Ok(Some(Ok(_))) => return refuse(socket, ErrorCode::BadMessage, "expected a binary Hello".into()).await,
        Ok(_) => return,
        Err(_) => return refuse(socket, ErrorCode::BadMessage, "no Hello within 10 s".into()).await,
    };
    let (token, resume, asleep) = match hello {
        Ok(ClientMessage::Hello { version, device_token, resume, asleep }) => {
            if version != PROTOCOL_VERSION {
                let msg = format!("protocol version {version} is not supported; this site speaks {PROTOCOL_VERSION}");
                return refuse(socket, ErrorCode::Version, msg).await;
            }
            (device_token, resume, asleep)
        }
        Ok(other) => {
            return refuse(socket, ErrorCode::BadMessage, format!("expected Hello, got {}", kind(&other))).await;
        }
        Err(e @ vmi_protocol::ProtocolError::UnsupportedVersion { .. }) => {
            return refuse(socket, ErrorCode::Version, e.to_string()).await;
        }
        Err(e) => return refuse(socket, ErrorCode::BadMessage, format!("undecodable Hello: {e}")).await,
    };
    let identity = match site.control.authenticate(&token).await {
        Ok(Some(identity)) => identity,
        Ok(None) => {
            return refuse(socket, ErrorCode::Unauthorized, "unknown or revoked device token".into()).await;
        }
        Err(e) => return refuse(socket, ErrorCode::Internal, format!("cannot check the token: {e}")).await,
    };
    let Some(phone) = site.phone(&identity.user) else {
        // Checked out to a terminal (docs/OFFLINE.md): say to which device and until when.
        if let Some(why) = site.checkout_refusal(&identity.user) {
            return refuse(socket, ErrorCode::NotHere, why).await;
        }
        // Not here: if the control service knows where the phone runs, send the terminal there.
        if let Ok(placement) = site.control.placement(&identity.user).await
            && placement.site != site.id
        {
            let url = vmi_control_api::ws_url(&placement.site_url);
            let _ = send(&mut socket, &ServerMessage::Redirect { url }).await;
            let _ = socket.close().await;
            return;
        }
        return refuse(socket, ErrorCode::NotHere, format!("no phone for {} on this site", identity.user)).await;
    };

    let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<ServerMessage>(SESSION_QUEUE);
    let attachment = Attachment { id, device_id: identity.device_id.to_string(), tx, resume, asleep };
    let Some(attached) = phone.ask(|reply| PhoneCommand::Attach(attachment, reply)).await else {
        return refuse(socket, ErrorCode::PhoneDown, "the phone is not running".into()).await;
    };
    tracing::info!(user = %identity.user, device = %identity.device_id, session = id, "terminal attached");
    let welcome = ServerMessage::Welcome {
        version: PROTOCOL_VERSION,
        width: attached.width,
        height: attached.height,
        last_input_seq: attached.last_input_seq,
        resumed: attached.resumed,
    };
    if !send(&mut socket, &welcome).await {
        let _ = phone.tx.send(PhoneCommand::Detach(id)).await;
        return;
    }
    // Prompt a first flush (the full frame) right away.
    let _ = phone.tx.send(PhoneCommand::FrameAck(id, 0)).await;

    let (mut sink, mut stream) = socket.split();
    let phone_tx = phone.tx.clone();
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let bytes = vmi_protocol::encode_server(&message);
            if sink.send(Message::Binary(bytes.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    while let Some(message) = stream.next().await {
        let bytes = match message {
            Ok(Message::Binary(bytes)) => bytes,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let command = match vmi_protocol::decode_client(&bytes) {
            Ok(ClientMessage::Input { seq, input }) => PhoneCommand::Input { session: id, seq, input },
            Ok(ClientMessage::FrameAck { seq }) => PhoneCommand::FrameAck(id, seq),
            Ok(ClientMessage::Sleep) => PhoneCommand::Sleep(id),
            Ok(ClientMessage::Wake) => PhoneCommand::Wake(id),
            // Answered through the phone task so a pong never overtakes a frame: the
            // round trip measures what the user feels.
            Ok(ClientMessage::Ping { nonce }) => PhoneCommand::Pong(id, nonce),
            Ok(ClientMessage::Hello { .. }) => {
                tracing::info!(session = id, "second Hello; closing");
                let error = ServerMessage::Error { code: ErrorCode::BadMessage, message: "a second Hello".into() };
                let _ = phone_tx.send(PhoneCommand::Say(id, error)).await;
                break;
            }
            Err(e) => {
                tracing::info!(session = id, "undecodable message, closing: {e}");
                let error = ServerMessage::Error { code: e.error_code(), message: e.to_string() };
                let _ = phone_tx.send(PhoneCommand::Say(id, error)).await;
                break;
            }
        };
        if phone_tx.send(command).await.is_err() {
            break;
        }
    }
    let _ = phone_tx.send(PhoneCommand::Detach(id)).await;
    // The writer ends once the phone task lets go of this session; give it a moment to
    // deliver a last Error.
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(1), &mut writer).await.is_err() {
        writer.abort();
    }
    tracing::info!(user = %identity.user, session = id, "terminal detached");
}

fn kind(m: &ClientMessage) -> &'static str {
    match m {
        ClientMessage::Hello { .. } => "Hello",
        ClientMessage::Input { .. } => "Input",
        ClientMessage::FrameAck { .. } => "FrameAck",
        ClientMessage::Sleep => "Sleep",
        ClientMessage::Wake => "Wake",
        ClientMessage::Ping { .. } => "Ping",
    }
}
