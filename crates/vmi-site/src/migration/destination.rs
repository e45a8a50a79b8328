//! The destination side of a live migration: applies each round as it comes; on the
//! final one restores the phone, moves the placement epoch with a compare-and-set (the
//! single point where ownership changes), starts the phone and answers Committed.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use vmi_engine::{ImageHash, RestoreStage};
use vmi_protocol::migration::{MigrationMessage, decode_migration, encode_migration};

use super::{MAX_ROUNDS, STEP_TIMEOUT, commit};
use crate::SiteState;

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

/// The destination side of one migration, on the `/v1/migrate` WebSocket, from site `from` (proven by its
/// certificate). The phone is taken only from the site the placement names as its owner, at the epoch the
/// source gives: nobody else can push a phone in.
pub async fn migrate_in(mut socket: WebSocket, site: Arc<SiteState>, from: String) {
    let Some(MigrationMessage::Begin { user, image, epoch, width, height, ticket, .. }) = next(&mut socket).await
    else {
        let _ = reply(&mut socket, &MigrationMessage::Abort { reason: "expected Begin".into() }).await;
        return;
    };
    tracing::Span::current().record("vmi.user", user.as_str());
    let refuse = |reason: String| MigrationMessage::Abort { reason };
    match site.control().placement(&user).await {
        Ok(p) if p.site == from && p.epoch == epoch => {}
        Ok(p) => {
            tracing::warn!(user, from, epoch, owner = %p.site, owner_epoch = p.epoch, "refused a phone from a non-owner");
            let reason =
                format!("{from} does not own {user}'s phone at epoch {epoch} ({} does, at {})", p.site, p.epoch);
            let _ = reply(&mut socket, &refuse(reason)).await;
            return;
        }
        Err(e) => {
            let _ = reply(&mut socket, &refuse(format!("cannot check the placement: {e}"))).await;
            return;
        }
    }
    let Some(_arriving) = site.registry().arrive(&user) else {
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
    if (width as u32, height as u32) != site.screen() {
        let reason = format!("screen {width}x{height} differs from this site's {:?}", site.screen());
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
    // The connection the commit will use, opened (TLS handshake included) before the source stops the phone,
    // and again before a round is acknowledged if the last one is getting old: handshakes stay out of the
    // downtime.
    let mut dialed = site.control().dial_ahead().await.ok();
    // From Ready on, the phone's terminals may join this move (make before break); the move is called off for
    // them whenever this ends without a commit.
    let mut handoff = site.handoffs.open(&user, &ticket);
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
                if dialed.as_ref().is_none_or(|d| d.age() > vmi_control_api::DIALED_FRESH_FOR / 2) {
                    dialed = site.control().dial_ahead().await.ok();
                }
                let applied = stage.applied() as u32;
                if !reply(&mut socket, &MigrationMessage::RoundAck { applied }).await {
                    return;
                }
            }
            MigrationMessage::Final { snapshot, input_seqs, screens } => {
                // Off the async workers: a Linux phone's device state loads into its QEMU here.
                let finished =
                    tokio::task::spawn_blocking(move || stage.apply(&snapshot).and_then(|()| stage.finish()))
                        .await
                        .unwrap_or_else(|_| {
                            Err(vmi_engine::EngineError::Config("restoring the phone panicked".into()))
                        });
                let phone = match finished {
                    Ok(phone) => phone,
                    Err(e) => {
                        let _ = reply(&mut socket, &refuse(format!("final delta refused: {e}"))).await;
                        return;
                    }
                };
                if site.registry().is_closing() {
                    let _ = reply(&mut socket, &refuse("this site is shutting down".into())).await;
                    return;
                }
                // The phone runs here at once, provisionally: the source is frozen, so this is the one running
                // copy, and nothing it does leaves it before the commit (no record, no terminal, no service can
                // reach it). The compare-and-set, a round of consensus on etcd, is then out of the downtime.
                // A guest that runs by itself (a Linux phone) is kept stopped until the commit instead: nothing of
                // its downtime is then hidden as time it ran here.
                let kept_stopped = phone.runs_by_itself();
                let resumed = std::time::Instant::now();
                let arrival = site.spawn_provisional(
                    &user,
                    phone,
                    input_seqs.into_iter().collect(),
                    screens.into_iter().collect(),
                );
                // The commit: ownership moves here only if the source still owned it
                // under the epoch it told us.
                match commit(&site, &user, epoch, dialed.take()).await {
                    Ok(new_epoch) => {
                        let ran_us = if kept_stopped { 0 } else { resumed.elapsed().as_micros() as u64 };
                        let registered = site.register_arrival(&user, &arrival).await;
                        site.metrics.arrived(true);
                        if let Some(handoff) = handoff.take() {
                            handoff.committed();
                        }
                        // A phone kept stopped runs from its commit, and the downtime the source counts ends there.
                        if registered && kept_stopped {
                            arrival.commit().await;
                        }
                        tracing::info!(user, epoch = new_epoch, ran_us, "phone arrived and runs here");
                        let _ = reply(&mut socket, &MigrationMessage::Committed { epoch: new_epoch, ran_us }).await;
                        // Only now its first record (a full state, a millisecond or more of a core): the handover
                        // goes first.
                        if registered && !kept_stopped {
                            arrival.commit().await;
                        }
                    }
                    Err(e) => {
                        // Not ours: the provisional copy goes (the source thaws its own).
                        let _ = arrival.stop().await;
                        site.metrics.arrived(false);
                        let reason = format!("ownership did not move: {}", vmi_engine::error_chain(&e));
                        let _ = reply(&mut socket, &refuse(reason)).await;
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
