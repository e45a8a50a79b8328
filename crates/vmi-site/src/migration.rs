//! Live migration between sites (docs/MIGRATION.md).
//!
//! Source: pre-copy rounds while the phone keeps serving its terminals, then a short
//! stop for the dirty rest. Destination: applies each round as it comes, and on the final
//! one restores the phone, moves the placement epoch at the control service with a
//! compare-and-set (the single point where ownership changes), starts the phone, and
//! answers Committed. Then the source fences itself: it redirects its terminals and drops
//! its copy. Any failure before the commit leaves the source running; a lost answer after
//! it is resolved by asking the control service who owns the phone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message as ClientMessage;
use vmi_engine::{ImageHash, RestoreStage};
use vmi_protocol::migration::{MIGRATION_VERSION, MigrationMessage, decode_migration, encode_migration};

use crate::phone::PhoneCommand;
use crate::{SiteError, SiteState};

/// Most pre-copy rounds before the final stop.
pub const MAX_ROUNDS: usize = 6;
/// A round this small (pages) means the rest can go in the stop.
pub const SMALL_ROUND_PAGES: usize = 64;
/// Tries (100 ms apart) to reach the control service before a migration gives up.
const CONTROL_RETRIES: u32 = 50;
/// Longest wait for any answer from the other site.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// What one migration did, as the source saw it.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationReport {
    /// The user whose phone moved.
    pub user: String,
    /// From this site.
    pub from: String,
    /// To that site.
    pub to: String,
    /// "committed" or "aborted".
    pub outcome: String,
    /// Why it aborted, if it did.
    pub reason: Option<String>,
    /// Pre-copy rounds sent.
    pub rounds: usize,
    /// Bytes of snapshots sent.
    pub bytes: u64,
    /// From the phone stopping at the source to running at the destination, µs.
    pub downtime_us: u64,
    /// The whole migration, ms.
    pub total_ms: f64,
    /// Placement epoch after the move.
    pub epoch: Option<u64>,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Ws, m: &MigrationMessage) -> Result<(), String> {
    tokio::time::timeout(STEP_TIMEOUT, ws.send(ClientMessage::Binary(encode_migration(m).into())))
        .await
        .map_err(|_| "sending to the destination timed out".to_string())?
        .map_err(|e| format!("send to destination: {e}"))
}

async fn recv(ws: &mut Ws) -> Result<MigrationMessage, String> {
    loop {
        let m = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .map_err(|_| "the destination did not answer in time".to_string())?
            .ok_or("the destination closed the connection")?
            .map_err(|e| format!("link to the destination: {e}"))?;
        match m {
            ClientMessage::Binary(b) => return decode_migration(&b).map_err(|e| format!("bad message: {e}")),
            ClientMessage::Close(_) => return Err("the destination closed the connection".into()),
            _ => continue,
        }
    }
}

/// Moves `user`'s phone from this site to `to_id` at `to_url`. On any failure before the
/// destination committed, the phone keeps running here.
pub async fn migrate_out(
    site: &Arc<SiteState>,
    user: &str,
    to_id: &str,
    to_url: &str,
) -> Result<MigrationReport, SiteError> {
    if to_id == site.id {
        return Err(SiteError::Migration(format!("{user}'s phone is already on {to_id}")));
    }
    // A checked-out phone runs on its terminal (docs/OFFLINE.md): nothing here to move.
    if let Some(why) = site.checkout_refusal(user) {
        return Err(SiteError::CheckedOut(why));
    }
    let phone = site.phone(user).ok_or_else(|| SiteError::NoPhone(user.to_string()))?;
    {
        let mut migrating = site.migrating.lock().unwrap_or_else(|p| p.into_inner());
        // Asked again under the migration lock, which a checkout also takes: a phone is
        // checked out or migrated, never both at once.
        if let Some(why) = site.checkout_refusal(user) {
            return Err(SiteError::CheckedOut(why));
        }
        if !migrating.insert(user.to_string()) {
            return Err(SiteError::Migration(format!("{user}'s phone is already moving or being restored")));
        }
    }
    let started = Instant::now();
    let mut report = MigrationReport {
        user: user.into(),
        from: site.id.clone(),
        to: to_id.into(),
        outcome: "aborted".into(),
        reason: None,
        rounds: 0,
        bytes: 0,
        downtime_us: 0,
        total_ms: 0.0,
        epoch: None,
    };
    let result = drive(site, &phone, user, to_id, to_url, &mut report).await;
    site.migrating.lock().unwrap_or_else(|p| p.into_inner()).remove(user);
    report.total_ms = started.elapsed().as_secs_f64() * 1e3;
    if let Err(reason) = result {
        tracing::warn!(user, to = to_id, "migration aborted: {reason}");
        report.reason = Some(reason);
    }
    let record = vmi_control_api::MigrationRecord {
        user: report.user.clone(),
        from: report.from.clone(),
        to: report.to.clone(),
        epoch: report.epoch.unwrap_or(0),
        downtime_us: report.downtime_us,
        total_ms: report.total_ms,
        bytes: report.bytes,
        outcome: report.outcome.clone(),
        reason: report.reason.clone().unwrap_or_default(),
    };
    if let Err(e) = site.control.record_migration(&record).await {
        tracing::warn!("could not log the migration at the control service: {e}");
    }
    Ok(report)
}

async fn drive(
    site: &Arc<SiteState>,
    phone: &crate::phone::PhoneLink,
    user: &str,
    to_id: &str,
    to_url: &str,
    report: &mut MigrationReport,
) -> Result<(), String> {
    // The control service may be restarting: give it a moment before giving up.
    let mut tries = 0;
    let placement = loop {
        match site.control.placement(user).await {
            Ok(p) => break p,
            Err(e) if tries >= CONTROL_RETRIES => return Err(format!("control service: {e}")),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    if placement.site != site.id {
        return Err(format!("this site does not own {user}'s phone ({} does)", placement.site));
    }
    let url = format!("{}/v1/migrate", vmi_control_api::ws_url(to_url).trim_end_matches("/v1/terminal"));
    let (mut ws, _) = tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .map_err(|_| format!("connecting to {url} timed out"))?
        .map_err(|e| format!("connecting to {url}: {e}"))?;
    let (width, height) = site.config.screen;
    // The image this phone runs now (phones of one site may run different versions).
    let image = phone
        .ask(PhoneCommand::Status)
        .await
        .and_then(|status| ImageHash::from_hex(&status.image))
        .ok_or("the phone task is gone")?;
    send(
        &mut ws,
        &MigrationMessage::Begin {
            version: MIGRATION_VERSION,
            user: user.into(),
            image: image.0,
            epoch: placement.epoch,
            width: width as u16,
            height: height as u16,
        },
    )
    .await?;
    match recv(&mut ws).await? {
        MigrationMessage::Ready => {}
        MigrationMessage::Abort { reason } => return Err(format!("destination refused: {reason}")),
        other => return Err(format!("expected Ready, got {other:?}")),
    }

    // Pre-copy: the phone keeps running and serving terminals between rounds.
    for round in 0..MAX_ROUNDS {
        let (bytes, pages) = phone
            .ask(|reply| PhoneCommand::PreCopy(round == 0, reply))
            .await
            .ok_or("the phone task is gone")?
            .map_err(|e| format!("pre-copy: {e}"))?;
        report.bytes += bytes.len() as u64;
        report.rounds += 1;
        send(&mut ws, &MigrationMessage::Round { snapshot: bytes }).await?;
        match recv(&mut ws).await? {
            MigrationMessage::RoundAck { .. } => {}
            MigrationMessage::Abort { reason } => return Err(format!("destination aborted: {reason}")),
            other => return Err(format!("expected RoundAck, got {other:?}")),
        }
        if round > 0 && pages <= SMALL_ROUND_PAGES {
            break;
        }
    }

    // Stop, send the rest, and let the destination commit.
    let stopped = Instant::now();
    let saved = phone
        .ask(PhoneCommand::Freeze)
        .await
        .ok_or("the phone task is gone")?
        .map_err(|e| format!("final delta: {e}"))?;
    report.bytes += saved.snapshot.len() as u64;
    let input_seqs = saved.input_seqs.into_iter().collect();
    let sent = send(&mut ws, &MigrationMessage::Final { snapshot: saved.snapshot, input_seqs }).await;
    let answer = match sent {
        Ok(()) => recv(&mut ws).await,
        Err(e) => Err(e),
    };
    let epoch = match answer {
        Ok(MigrationMessage::Committed { epoch }) => epoch,
        Ok(MigrationMessage::Abort { reason }) => {
            settle_kept(site, user, to_id, true).await;
            let _ = phone.tx.send(PhoneCommand::Thaw).await;
            return Err(format!("destination aborted: {reason}"));
        }
        other => {
            // No clear answer: the control service decides who owns the phone.
            tracing::warn!("no commit answer from the destination: {other:?}");
            match settle(site, user, to_id, placement.epoch, false).await {
                Settled::Moved(epoch) => epoch,
                Settled::Kept => {
                    let _ = phone.tx.send(PhoneCommand::Thaw).await;
                    return Err("the destination did not commit; the phone runs here again".into());
                }
            }
        }
    };
    report.downtime_us = stopped.elapsed().as_micros() as u64;
    report.epoch = Some(epoch);
    report.outcome = "committed".into();
    let new_ws = vmi_control_api::ws_url(to_url);
    let _ = phone.ask(|reply| PhoneCommand::Fence(new_ws, reply)).await;
    site.phones.write().unwrap_or_else(|p| p.into_inner()).remove(user);
    site.forget_saved(user);
    let _ = ws.close(None).await;
    tracing::info!(user, to = to_id, downtime_us = report.downtime_us, "phone migrated");
    Ok(())
}

/// Moves the placement to this site if it is still at `epoch`. A lost answer is settled
/// by reading the placement back: if it names this site, the move happened.
async fn commit(site: &SiteState, user: &str, epoch: u64) -> Result<u64, String> {
    let mut last_error = String::new();
    for _ in 0..CONTROL_RETRIES {
        match site.control.move_placement(user, &site.id, Some(epoch)).await {
            Ok(p) => return Ok(p.epoch),
            Err(e) => last_error = e.to_string(),
        }
        match site.control.placement(user).await {
            Ok(p) if p.site == site.id && p.epoch > epoch => return Ok(p.epoch),
            Ok(p) if p.epoch != epoch => return Err(format!("the phone's epoch moved to {} meanwhile", p.epoch)),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Err(last_error)
}

/// Who owns a phone after a migration whose end is unclear.
enum Settled {
    /// The destination committed (at this epoch): fence.
    Moved(u64),
    /// This site owns it and a late commit can no longer succeed: thaw.
    Kept,
}

/// Decides with the control service who owns `user`'s phone after its final delta went
/// out without a Committed answer. If the destination committed, the phone moved. If
/// not, this site takes the placement back with a compare-and-set, which raises the epoch
/// so a commit still on its way fails; only then may the phone run here again. While the
/// control service cannot be reached the phone stays stopped: never two live copies.
async fn settle(site: &SiteState, user: &str, to_id: &str, epoch: u64, destination_aborted: bool) -> Settled {
    loop {
        match site.control.placement(user).await {
            Ok(p) if p.site == to_id && !destination_aborted => return Settled::Moved(p.epoch),
            Ok(p) if p.site == site.id && p.epoch != epoch => return Settled::Kept,
            Ok(p) => match site.control.move_placement(user, &site.id, Some(p.epoch)).await {
                Ok(_) => return Settled::Kept,
                Err(e) => tracing::info!(user, "taking the placement back raced: {e}; reading it again"),
            },
            Err(e) => {
                tracing::warn!(user, "cannot reach the control service to settle a migration: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// [`settle`] after the destination said it aborted: it dropped its copy, so this site
/// keeps the phone whatever the placement says, and makes the placement say so.
async fn settle_kept(site: &SiteState, user: &str, to_id: &str, aborted: bool) {
    let _ = settle(site, user, to_id, u64::MAX, aborted).await;
}

async fn reply(socket: &mut WebSocket, m: &MigrationMessage) -> bool {
    socket.send(Message::Binary(encode_migration(m).into())).await.is_ok()
}

async fn next(socket: &mut WebSocket) -> Option<MigrationMessage> {
    loop {
        match tokio::time::timeout(STEP_TIMEOUT * 3, socket.recv()).await.ok()?? {
            Ok(Message::Binary(b)) => return decode_migration(&b).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// The destination side of one migration, on the `/v1/migrate` WebSocket.
pub async fn migrate_in(mut socket: WebSocket, site: Arc<SiteState>) {
    let Some(MigrationMessage::Begin { user, image, epoch, width, height, .. }) = next(&mut socket).await else {
        let _ = reply(&mut socket, &MigrationMessage::Abort { reason: "expected Begin".into() }).await;
        return;
    };
    let refuse = |reason: String| MigrationMessage::Abort { reason };
    let Some(_staging) = site.stage_arrival(&user) else {
        let _ = reply(&mut socket, &refuse(format!("{user}'s phone is already arriving here"))).await;
        return;
    };
    // A phone on an image new to this site: fetch it from the control service first.
    if let Err(e) = site.ensure_image(&ImageHash(image)).await {
        let _ = reply(&mut socket, &refuse(e.to_string())).await;
        return;
    }
    if let Err(e) = site.can_host(&user, &ImageHash(image)) {
        let _ = reply(&mut socket, &refuse(e.to_string())).await;
        return;
    }
    if (width as u32, height as u32) != site.config.screen {
        let reason = format!("screen {width}x{height} differs from this site's {:?}", site.config.screen);
        let _ = reply(&mut socket, &refuse(reason)).await;
        return;
    }
    let mut stage: Box<dyn RestoreStage> = match site.engine_begin_restore(&ImageHash(image)) {
        Ok(stage) => stage,
        Err(e) => {
            let _ = reply(&mut socket, &refuse(format!("cannot stage the phone: {e}"))).await;
            return;
        }
    };
    if !reply(&mut socket, &MigrationMessage::Ready).await {
        return;
    }
    while let Some(message) = next(&mut socket).await {
        match message {
            MigrationMessage::Round { snapshot } => {
                if stage.applied() > MAX_ROUNDS {
                    let _ = reply(&mut socket, &refuse(format!("more than {MAX_ROUNDS} rounds"))).await;
                    return;
                }
                // Decompressing a round takes milliseconds: off the async workers.
                let (back, applied) = match tokio::task::spawn_blocking(move || {
                    let r = stage.apply(&snapshot);
                    (stage, r)
                })
                .await
                {
                    Ok(done) => done,
                    Err(_) => return,
                };
                stage = back;
                if let Err(e) = applied {
                    let _ = reply(&mut socket, &refuse(format!("round refused: {e}"))).await;
                    return;
                }
                let applied = stage.applied() as u32;
                if !reply(&mut socket, &MigrationMessage::RoundAck { applied }).await {
                    return;
                }
            }
            MigrationMessage::Final { snapshot, input_seqs } => {
                let phone = match stage.apply(&snapshot).and_then(|()| stage.finish()) {
                    Ok(phone) => phone,
                    Err(e) => {
                        let _ = reply(&mut socket, &refuse(format!("final delta refused: {e}"))).await;
                        return;
                    }
                };
                if site.is_closing() {
                    let _ = reply(&mut socket, &refuse("this site is shutting down".into())).await;
                    return;
                }
                // The commit: ownership moves here only if the source still owned it
                // under the epoch it told us.
                match commit(&site, &user, epoch).await {
                    Ok(new_epoch) => {
                        site.spawn_phone(&user, phone, input_seqs.into_iter().collect());
                        tracing::info!(user, epoch = new_epoch, "phone arrived and runs here");
                        let _ = reply(&mut socket, &MigrationMessage::Committed { epoch: new_epoch }).await;
                    }
                    Err(e) => {
                        let _ = reply(&mut socket, &refuse(format!("ownership did not move: {e}"))).await;
                    }
                }
                return;
            }
            MigrationMessage::Abort { reason } => {
                tracing::info!(user, "source aborted the migration: {reason}");
                return;
            }
            other => {
                let _ = reply(&mut socket, &refuse(format!("unexpected {other:?}"))).await;
                return;
            }
        }
    }
    tracing::info!(user, "migration link closed before the final delta; nothing kept");
}
