//! One terminal's WebSocket session (docs/PROTOCOL.md): Hello, authentication, then
//! messages both ways between the socket and the phone task, and a close code that says
//! why the session ended ("Closing").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use vmi_control_api::Identity;
use vmi_control_api::auth::Principal;
use vmi_protocol::{
    CLOSE_GOING_AWAY, CLOSE_NORMAL, ClientMessage, ErrorCode, MAX_SEQ, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION,
    ServerMessage,
};

use crate::SiteState;
use crate::handoff::Move;
use crate::phone::{Attachment, PhoneLink, SESSION_QUEUE, TerminalCommand};

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// How long a terminal has to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection that joined a move is held for its Hello: pre-copy of a large phone takes seconds.
const JOIN_HOLD: Duration = Duration::from_secs(120);
/// Once the move committed, the Hello comes right after the old site's Redirect.
const JOIN_HOLD_AFTER_COMMIT: Duration = Duration::from_secs(10);
/// How long a closing site waits for the terminal's close frame, so that its last words
/// (an `Error`, a `Redirect`) are read before the connection goes.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

async fn send(socket: &mut WebSocket, message: &ServerMessage) -> bool {
    socket.send(Message::Binary(vmi_protocol::encode_server(message).into())).await.is_ok()
}

/// The close frame that ends a session after `last` (the last message sent).
fn close_frame(last: Option<&ServerMessage>) -> CloseFrame {
    let (code, reason) = match last {
        Some(ServerMessage::Error { code, .. }) => (code.close_code(), format!("{code:?}")),
        Some(ServerMessage::Redirect { .. }) => (CLOSE_NORMAL, "Redirect".to_string()),
        // The site let go without an error (it shut down, the phone restarted, the
        // terminal fell behind): reconnect.
        _ => (CLOSE_GOING_AWAY, String::new()),
    };
    CloseFrame { code, reason: reason.into() }
}

/// Closes with `frame` and waits (briefly) for the terminal's answer, so what was sent
/// before is read rather than lost to a reset.
async fn close(mut socket: WebSocket, frame: CloseFrame) {
    let _ = socket.send(Message::Close(Some(frame))).await;
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn refuse(mut socket: WebSocket, code: ErrorCode, message: String) {
    tracing::info!(?code, "terminal refused: {message}");
    let error = ServerMessage::Error { code, message };
    let _ = send(&mut socket, &error).await;
    close(socket, close_frame(Some(&error))).await;
}

/// Who `token` is, as a terminal: a device's token (checked with the control service), else why not.
async fn check_token(
    site: &SiteState,
    from: Option<std::net::IpAddr>,
    token: &str,
) -> Result<Identity, (ErrorCode, String)> {
    if let Err(retry_after) = site.guard.check(from) {
        let why = format!("too many wrong tokens from this address: try again in {} s", retry_after.as_secs().max(1));
        return Err((ErrorCode::Unauthorized, why));
    }
    match site.authenticate(token).await {
        Ok(Some(Principal::Device { user, device_id })) => Ok(Identity { user, device_id }),
        // Only a device holds a phone's screen: an operator's or admin's token is not a terminal's.
        Ok(Some(_)) => Err((ErrorCode::Unauthorized, "not a device token".into())),
        Ok(None) => {
            site.guard.failure(from);
            Err((ErrorCode::Unauthorized, "unknown or revoked device token".into()))
        }
        Err(e) => Err((ErrorCode::Internal, format!("cannot check the token: {e}"))),
    }
}

/// A connection that joined a phone's move here (docs/MIGRATION.md, "The terminal's handoff"): the token is
/// checked and the ticket must be the move's; then the connection is held, reaching no phone, until the
/// terminal's first message after the Join (its Hello, once the old site redirected it), which is returned with
/// who joined. `Err(None)`: the terminal went away; `Err(Some(..))`: refused, and why.
async fn join(
    socket: &mut WebSocket,
    site: &SiteState,
    from: Option<std::net::IpAddr>,
    token: &str,
    ticket: &str,
) -> Result<(Identity, Result<ClientMessage, vmi_protocol::ProtocolError>), Option<(ErrorCode, String)>> {
    let identity = check_token(site, from, token).await.map_err(Some)?;
    let Some((mut state, _joined)) = site.handoffs.join(&identity.user, ticket) else {
        let why = "no move of this phone to this site is under way with that ticket (or it has all the \
            connections it may hold)"
            .to_string();
        return Err(Some((ErrorCode::NotHere, why)));
    };
    // Held: the terminal tells the old site, which may stop the phone for its handoff now.
    if !send(socket, &ServerMessage::Joined).await {
        return Err(None);
    }
    let called_off = || Some((ErrorCode::NotHere, "the move of this phone here was called off".to_string()));
    let mut deadline = tokio::time::Instant::now() + JOIN_HOLD;
    // Until the move settles, the connection also listens to it.
    let mut settled = false;
    let hello = loop {
        tokio::select! {
            m = socket.recv() => match m {
                Some(Ok(Message::Binary(bytes))) => break vmi_protocol::decode_client(&bytes),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Text(_))) => {
                    return Err(Some((ErrorCode::BadMessage, "a text frame: messages are binary".into())));
                }
                _ => return Err(None),
            },
            changed = state.changed(), if !settled => {
                match *state.borrow_and_update() {
                    Move::CalledOff => return Err(called_off()),
                    Move::Committed => settled = true,
                    // The move ended without a word (its guard dropped after a commit): it said Committed before.
                    Move::Arriving => settled = changed.is_err(),
                }
                // Committed: the Hello follows the old site's Redirect within moments.
                if settled {
                    deadline = deadline.min(tokio::time::Instant::now() + JOIN_HOLD_AFTER_COMMIT);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let why = format!("no Hello within {} s of joining the move", JOIN_HOLD.as_secs());
                return Err(Some((ErrorCode::NotHere, why)));
            }
        }
    };
    // A Hello before the commit (it comes after the old site's Redirect, so only a terminal out of turn sends
    // one) waits for the move to settle.
    while *state.borrow() == Move::Arriving {
        if tokio::time::timeout_at(deadline, state.changed()).await.map_or(true, |r| r.is_err()) {
            break;
        }
    }
    if *state.borrow() == Move::CalledOff {
        return Err(called_off());
    }
    Ok((identity, hello))
}

/// Runs a session to its end.
pub async fn run(
    mut socket: WebSocket,
    site: Arc<SiteState>,
    from: Option<std::net::IpAddr>,
    greeting: tokio::sync::OwnedSemaphorePermit,
) {
    // WebSocket pings and pongs before Hello are the transport's business.
    let first = tokio::time::timeout(HELLO_TIMEOUT, async {
        loop {
            match socket.recv().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    });
    let hello = match first.await {
        Ok(Some(Ok(Message::Binary(bytes)))) => vmi_protocol::decode_client(&bytes),
        Ok(Some(Ok(Message::Text(_)))) => {
            return refuse(socket, ErrorCode::BadMessage, "a text frame: messages are binary".into()).await;
        }
        Ok(Some(Ok(Message::Close(_)))) | Ok(None) => return,
        Ok(Some(Ok(_))) => return refuse(socket, ErrorCode::BadMessage, "expected a binary Hello".into()).await,
        Ok(Some(Err(e))) => return refuse(socket, ErrorCode::BadMessage, unreadable(&e)).await,
        Err(_) => return refuse(socket, ErrorCode::BadMessage, "no Hello within 10 s".into()).await,
    };
    // The Hello is read: what an unknown caller could make the site hold (a message up to the limit) is gone.
    drop(greeting);
    // A connection prepared for a phone moving here: checked now, held until its Hello.
    let (hello, joined) = match hello {
        Ok(ClientMessage::Join { device_token, ticket, .. }) => {
            let revocations = site.guard.revocations();
            match join(&mut socket, &site, from, &device_token, &ticket).await {
                Ok((identity, hello)) => (hello, Some((identity, device_token, revocations))),
                Err(Some((code, why))) => return refuse(socket, code, why).await,
                Err(None) => return,
            }
        }
        other => (other, None),
    };
    let (version, token, resume, asleep, display) = match hello {
        Ok(ClientMessage::Hello { version, device_token, resume, asleep, display }) => {
            if !(OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
                let msg = format!(
                    "protocol version {version} is not supported; this site speaks {OLDEST_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
                );
                return refuse(socket, ErrorCode::Version, msg).await;
            }
            // The next update is numbered last_frame_seq + 1, which must not pass MAX_SEQ.
            if let Some(r) = resume
                && r.last_frame_seq >= MAX_SEQ
            {
                let msg = format!("resume.last_frame_seq {} leaves no frame number below {MAX_SEQ}", r.last_frame_seq);
                return refuse(socket, ErrorCode::BadMessage, msg).await;
            }
            if let Some(Err(why)) = display.map(|d| d.check()) {
                return refuse(socket, ErrorCode::BadMessage, format!("Hello: {why}")).await;
            }
            (version, device_token, resume, asleep, display)
        }
        Ok(other) => {
            return refuse(socket, ErrorCode::BadMessage, format!("expected Hello, got {}", kind(&other))).await;
        }
        Err(e @ vmi_protocol::ProtocolError::UnsupportedVersion { .. }) => {
            return refuse(socket, ErrorCode::Version, e.to_string()).await;
        }
        Err(e) => return refuse(socket, ErrorCode::BadMessage, format!("undecodable Hello: {e}")).await,
    };
    let identity = match joined {
        // The token was checked at the Join; the Hello on that connection must carry the same one. A device
        // revoked meanwhile (any device: the site only counts them) has it checked again.
        Some((identity, joined_token, revocations)) if joined_token == token => {
            if site.guard.revocations() == revocations {
                identity
            } else {
                match check_token(&site, from, &token).await {
                    Ok(identity) => identity,
                    Err((code, why)) => return refuse(socket, code, why).await,
                }
            }
        }
        Some(_) => {
            return refuse(socket, ErrorCode::Unauthorized, "the Hello's token is not the one that joined".into())
                .await;
        }
        None => match check_token(&site, from, &token).await {
            Ok(identity) => identity,
            Err((code, why)) => return refuse(socket, code, why).await,
        },
    };
    let Some(phone) = site.phone_link(&identity.user) else {
        return not_here(socket, &site, &identity.user).await;
    };

    let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<ServerMessage>(SESSION_QUEUE);
    // Version 2 terminals keep their inputs until told they are durable (docs/PROTOCOL.md, rule 7).
    let durable_acks = version >= 2;
    let attachment = Attachment {
        id,
        device_id: identity.device_id.to_string(),
        tx,
        resume,
        asleep,
        durable_acks,
        screen_messages: version >= 3,
        copies: version >= 4,
        display,
    };
    let attached = match phone.attach(attachment).await {
        Ok(Ok(attached)) => attached,
        Ok(Err(refusal)) => return refuse(socket, refusal.code, refusal.message).await,
        // The task ended between the lookup and the attach (it moved, stopped or was
        // checked out): where the phone is now is what the terminal needs.
        Err(_) => return not_here(socket, &site, &identity.user).await,
    };
    tracing::info!(user = %identity.user, device = %identity.device_id, session = id, "terminal attached");
    let welcome = ServerMessage::Welcome {
        version,
        width: attached.width,
        height: attached.height,
        last_input_seq: attached.last_input_seq,
        resumed: attached.resumed,
    };
    if !send(&mut socket, &welcome).await {
        phone.tell(TerminalCommand::Detach { session: id }).await;
        return;
    }
    // Prompt a first flush (the full frame) right away.
    phone.tell(TerminalCommand::FrameAck { session: id, seq: 0 }).await;

    let (mut sink, mut stream) = socket.split();
    // The writer sends what the phone task queues for this terminal; when the task lets
    // go of the session it closes, with the code that says why.
    let metrics = site.metrics.clone();
    let writer = tokio::spawn(async move {
        let mut last = None;
        while let Some(message) = rx.recv().await {
            let bytes = vmi_protocol::encode_server(&message);
            let frame = matches!(message, ServerMessage::FrameUpdate { .. }).then_some(bytes.len());
            if sink.send(Message::Binary(bytes.into())).await.is_err() {
                return;
            }
            if let Some(len) = frame {
                metrics.frame_sent(len);
            }
            last = Some(message);
        }
        let _ = sink.send(Message::Close(Some(close_frame(last.as_ref())))).await;
    });
    let mut writer = writer;
    let mut writer_done = false;
    let mut terminal_closed = false;
    loop {
        // The reader also ends when the writer does (the phone task let go of the
        // session): a terminal that never closes cannot keep the session alive.
        let message = tokio::select! {
            m = stream.next() => m,
            _ = &mut writer, if !writer_done => {
                writer_done = true;
                break;
            }
        };
        let Some(message) = message else { break };
        let failure = match message {
            Ok(Message::Binary(bytes)) => match forward(&phone, id, &bytes).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(failure) => failure,
            },
            Ok(Message::Text(_)) => (ErrorCode::BadMessage, "a text frame: messages are binary".to_string()),
            Ok(Message::Close(_)) => {
                terminal_closed = true;
                break;
            }
            // WebSocket pings and pongs are the transport's business.
            Ok(_) => continue,
            Err(e) => (ErrorCode::BadMessage, unreadable(&e)),
        };
        tracing::info!(session = id, "protocol error, closing: {}", failure.1);
        phone.tell(TerminalCommand::Fail { session: id, code: failure.0, message: failure.1 }).await;
        break;
    }
    phone.tell(TerminalCommand::Detach { session: id }).await;
    // Once the phone task lets go of the session the writer says its last words and
    // closes; then wait (briefly) for the terminal's close frame, unless it came first.
    if !writer_done && tokio::time::timeout(Duration::from_secs(1), &mut writer).await.is_err() {
        writer.abort();
    }
    if terminal_closed {
        tracing::info!(user = %identity.user, session = id, "terminal detached");
        return;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    tracing::info!(user = %identity.user, session = id, "terminal detached");
}

/// Decodes one message from the terminal and hands it to the phone task. `Ok(false)`:
/// the phone task is gone. `Err`: a protocol error to answer.
async fn forward(phone: &PhoneLink, session: u64, bytes: &[u8]) -> Result<bool, (ErrorCode, String)> {
    let command = match vmi_protocol::decode_client(bytes) {
        Ok(ClientMessage::Input { seq, input }) => {
            // Rule 7: inputs are numbered from 1, and never past MAX_SEQ.
            if seq == 0 || seq > MAX_SEQ {
                return Err((ErrorCode::BadMessage, format!("input seq {seq} is outside 1..={MAX_SEQ}")));
            }
            TerminalCommand::Input { session, seq, input }
        }
        Ok(ClientMessage::FrameAck { seq }) => TerminalCommand::FrameAck { session, seq },
        Ok(ClientMessage::Sleep) => TerminalCommand::Sleep { session },
        Ok(ClientMessage::Wake) => TerminalCommand::Wake { session },
        Ok(ClientMessage::Ping { nonce }) => TerminalCommand::Ping { session, nonce },
        Ok(ClientMessage::Prepared) => TerminalCommand::Prepared { session },
        Ok(ClientMessage::Display(display)) => {
            display.check().map_err(|why| (ErrorCode::BadMessage, why))?;
            TerminalCommand::Display { session, display }
        }
        Ok(ClientMessage::Hello { .. }) => return Err((ErrorCode::BadMessage, "a second Hello".into())),
        Ok(ClientMessage::Join { .. }) => return Err((ErrorCode::BadMessage, "a Join after Hello".into())),
        Err(e) => return Err((e.error_code(), e.to_string())),
    };
    Ok(phone.tell(command).await)
}

/// Hello for a phone this site does not run: `Redirect` to the site the control service
/// places it on, else `Error(NotHere)` saying why (rule 1).
async fn not_here(mut socket: WebSocket, site: &SiteState, user: &str) {
    // Checked out to a terminal (docs/OFFLINE.md): say to which device and until when.
    if let Some(why) = site.checkout_refusal(user) {
        return refuse(socket, ErrorCode::NotHere, why).await;
    }
    match site.control().placement(user).await {
        Ok(placement) if placement.site != site.id => {
            let redirect = ServerMessage::Redirect { url: vmi_control_api::ws_url(&placement.site_url) };
            let _ = send(&mut socket, &redirect).await;
            close(socket, close_frame(Some(&redirect))).await;
        }
        Ok(_) => {
            let why = format!("{user}'s phone is placed on this site but is not running here now; retry shortly");
            refuse(socket, ErrorCode::NotHere, why).await
        }
        Err(vmi_control_api::ClientError::Status { status: 404, .. }) => {
            refuse(socket, ErrorCode::NotHere, format!("{user} has no phone on any site")).await
        }
        Err(e) => refuse(socket, ErrorCode::Internal, format!("cannot ask where the phone runs: {e}")).await,
    }
}

/// Words for a message the WebSocket layer could not read (too big, broken framing).
fn unreadable(e: &axum::Error) -> String {
    let text = vmi_engine::error_chain(e);
    if text.contains("too long") || text.contains("too big") || text.contains("Space limit") {
        format!("message larger than {} bytes ({text})", vmi_protocol::wire::MAX_MESSAGE_LEN)
    } else {
        format!("unreadable message: {text}")
    }
}

fn kind(m: &ClientMessage) -> &'static str {
    match m {
        ClientMessage::Hello { .. } => "Hello",
        ClientMessage::Join { .. } => "Join",
        ClientMessage::Prepared => "Prepared",
        ClientMessage::Input { .. } => "Input",
        ClientMessage::FrameAck { .. } => "FrameAck",
        ClientMessage::Display(_) => "Display",
        ClientMessage::Sleep => "Sleep",
        ClientMessage::Wake => "Wake",
        ClientMessage::Ping { .. } => "Ping",
    }
}
