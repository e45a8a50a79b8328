//! The source side of a live migration: pre-copy rounds while the phone runs, a short
//! stop for the dirty rest, then fence (the destination committed) or thaw (it did not).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tracing::Instrument;
use tracing::field::Empty;
use vmi_engine::ImageHash;
use vmi_protocol::migration::{MIGRATION_VERSION, MigrationMessage, decode_migration, encode_migration};

use super::{
    CONTROL_RETRIES, MAX_ROUNDS, MigrationError, MigrationOutcome, MigrationReport, SMALL_ROUND_PAGES, STEP_TIMEOUT,
};
use crate::phone::PhoneLink;
use crate::{SiteError, SiteState};

type Ws = crate::peer_socket::PeerSocket;

/// Longest the stop waits for the terminals to join the destination (a TLS handshake over a mobile network, with
/// room to spare); past it, a terminal not yet prepared reconnects after the Redirect as before.
const HANDOFF_WAIT: Duration = Duration::from_secs(2);
/// However long pre-copy took, the terminals get this long to say they are ready (most are by then).
const HANDOFF_WAIT_AT_LEAST: Duration = Duration::from_millis(50);
/// A wait this long for the terminals gets its own pre-copy round before the stop.
const CATCH_UP_AFTER: Duration = Duration::from_millis(5);

async fn send(ws: &mut Ws, m: &MigrationMessage) -> Result<(), MigrationError> {
    tokio::time::timeout(STEP_TIMEOUT, ws.send(WsMessage::Binary(encode_migration(m).into())))
        .await
        .map_err(|_| MigrationError::Link("sending timed out".into()))?
        .map_err(|e| MigrationError::Link(format!("send: {e}")))
}

async fn recv(ws: &mut Ws) -> Result<MigrationMessage, MigrationError> {
    let closed = || MigrationError::Link("the destination closed the connection".into());
    loop {
        let m = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .map_err(|_| MigrationError::Link("the destination did not answer in time".into()))?
            .ok_or_else(closed)?
            .map_err(|e| MigrationError::Link(e.to_string()))?;
        match m {
            WsMessage::Binary(b) => {
                return decode_migration(&b).map_err(|e| MigrationError::Link(format!("bad message: {e}")));
            }
            WsMessage::Close(_) => return Err(closed()),
            _ => continue,
        }
    }
}

/// Sends one pre-copy round and reads its acknowledgement.
async fn send_round(ws: &mut Ws, snapshot: Vec<u8>) -> Result<(), MigrationError> {
    send(ws, &MigrationMessage::Round { snapshot }).await?;
    match recv(ws).await? {
        MigrationMessage::RoundAck { .. } => Ok(()),
        MigrationMessage::Abort { reason } => Err(MigrationError::Refused(reason)),
        other => Err(MigrationError::OutOfTurn(format!("{other:?} (expected RoundAck)"))),
    }
}

/// Moves `user`'s phone from this site to site `to_id` (its address from the control service's registry; the
/// peer must prove it is `to_id` with its certificate). On any failure before the
/// destination committed, the phone keeps running here.
pub async fn migrate_out(site: &Arc<SiteState>, user: &str, to_id: &str) -> Result<MigrationReport, SiteError> {
    // One trace per migration: this span (a child of the order's when the control service or an operator's
    // request carried one), the destination's arrival, the commit at the control service.
    let span = tracing::info_span!(
        "migration.out",
        vmi.user = %user,
        vmi.from = %site.id,
        vmi.to = %to_id,
        vmi.outcome = Empty,
        vmi.rounds = Empty,
        vmi.bytes = Empty,
        vmi.downtime_us = Empty,
        vmi.epoch = Empty,
        otel.status_code = Empty,
    );
    migrate_out_traced(site, user, to_id).instrument(span).await
}

async fn migrate_out_traced(site: &Arc<SiteState>, user: &str, to_id: &str) -> Result<MigrationReport, SiteError> {
    if to_id == site.id {
        return Err(SiteError::AlreadyThere { user: user.into(), site: to_id.into() });
    }
    // A checked-out phone runs on its terminal (docs/OFFLINE.md): nothing here to move.
    if let Some(why) = site.checkout_refusal(user) {
        return Err(SiteError::CheckedOut(why));
    }
    let phone = site.phone(user)?;
    // Asked again under the leaving lock, which a checkout also takes: a phone is checked
    // out or migrated, never both at once.
    let leaving = site.registry().leave(user, || match site.checkout_refusal(user) {
        Some(why) => Err(SiteError::CheckedOut(why)),
        None => Ok(()),
    })?;
    let Some(leaving) = leaving else { return Err(SiteError::Moving(user.to_string())) };
    let started = Instant::now();
    let mut report = MigrationReport {
        user: user.into(),
        from: site.id.clone(),
        to: to_id.into(),
        outcome: MigrationOutcome::Aborted,
        reason: None,
        rounds: 0,
        bytes: 0,
        downtime_us: 0,
        freeze_us: 0,
        final_bytes: 0,
        final_sent_us: 0,
        commit_us: 0,
        total_ms: 0.0,
        epoch: None,
    };
    let result = drive(site, &phone, user, to_id, &mut report).await;
    drop(leaving);
    report.total_ms = started.elapsed().as_secs_f64() * 1e3;
    if let Err(e) = &result {
        let reason = vmi_engine::error_chain(e);
        tracing::warn!(user, to = to_id, "migration aborted: {reason}");
        report.reason = Some(reason);
    }
    site.metrics.migrated(&report, result.as_ref().err().map(MigrationError::kind));
    let span = tracing::Span::current();
    span.record("vmi.outcome", report.outcome.as_str());
    if result.is_err() {
        vmi_telemetry::trace::failed(&span);
    }
    span.record("vmi.rounds", report.rounds as i64);
    span.record("vmi.bytes", report.bytes as i64);
    span.record("vmi.downtime_us", report.downtime_us as i64);
    if let Some(epoch) = report.epoch {
        span.record("vmi.epoch", epoch as i64);
    }
    let record = vmi_control_api::MigrationRecord {
        user: report.user.clone(),
        from: report.from.clone(),
        to: report.to.clone(),
        epoch: report.epoch.unwrap_or(0),
        downtime_us: report.downtime_us,
        total_ms: report.total_ms,
        bytes: report.bytes,
        outcome: report.outcome.as_str().to_string(),
        reason: report.reason.clone().unwrap_or_default(),
    };
    if let Err(e) = site.control().record_migration(&record).await {
        tracing::warn!("could not log the migration at the control service: {e}");
    }
    Ok(report)
}

async fn drive(
    site: &Arc<SiteState>,
    phone: &PhoneLink,
    user: &str,
    to_id: &str,
    report: &mut MigrationReport,
) -> Result<(), MigrationError> {
    // The control service may be restarting: give it a moment before giving up.
    let mut tries = 0;
    let placement = loop {
        match site.control().placement(user).await {
            Ok(p) => break p,
            Err(e) if tries >= CONTROL_RETRIES => return Err(MigrationError::Control(e)),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    if placement.site != site.id {
        return Err(MigrationError::NotOwner { user: user.into(), owner: placement.site });
    }
    // Only a registered site: its address from the registry, its identity from its certificate. The TLS
    // handshake happens here, before the phone is touched.
    let to_url = site
        .control()
        .list_sites()
        .await
        .map_err(MigrationError::Control)?
        .into_iter()
        .find(|s| s.site.id == to_id)
        .map(|s| s.site.url)
        .ok_or_else(|| MigrationError::Refused(format!("{to_id} is not a registered site")))?;
    let peer = site.peer(to_id).map_err(|e| MigrationError::Refused(e.to_string()))?;
    let url = format!("{}/v1/migrate", vmi_control_api::ws_url(&to_url).trim_end_matches("/v1/terminal"));
    let mut ws = tokio::time::timeout(STEP_TIMEOUT, crate::peer_socket::connect(&peer, &url))
        .await
        .map_err(|_| MigrationError::Link(format!("connecting to {url} timed out")))?
        .map_err(|e| MigrationError::Link(format!("connecting to {url}: {e}")))?;
    let (width, height) = site.screen();
    // The image this phone runs now (phones of one site may run different versions).
    let status = phone.status().await?;
    let image = ImageHash::from_hex(&status.image)
        .ok_or_else(|| MigrationError::Link(format!("the phone names image {:?}", status.image)))?;
    // The move's ticket: the destination holds terminal sessions prepared with it, for this move only.
    let mut ticket = vmi_control_api::token::generate_token().unwrap_or_default();
    let begin = |ticket: &str| MigrationMessage::Begin {
        version: MIGRATION_VERSION,
        user: user.into(),
        image: image.0,
        epoch: placement.epoch,
        width: width as u16,
        height: height as u16,
        ticket: ticket.to_string(),
    };
    send(&mut ws, &begin(&ticket)).await?;
    match recv(&mut ws).await? {
        MigrationMessage::Ready => {}
        // A destination older than prepared handoffs reads no ticket in a Begin: once more without one (its
        // terminals then follow the Redirect as before).
        MigrationMessage::Abort { reason } if reason == "expected Begin" && !ticket.is_empty() => {
            tracing::info!(user, to = to_id, "the destination prepares no terminal sessions: moving without");
            ticket.clear();
            ws = tokio::time::timeout(STEP_TIMEOUT, crate::peer_socket::connect(&peer, &url))
                .await
                .map_err(|_| MigrationError::Link(format!("connecting to {url} timed out")))?
                .map_err(|e| MigrationError::Link(format!("connecting to {url}: {e}")))?;
            send(&mut ws, &begin(&ticket)).await?;
            match recv(&mut ws).await? {
                MigrationMessage::Ready => {}
                MigrationMessage::Abort { reason } => return Err(MigrationError::Refused(reason)),
                other => return Err(MigrationError::OutOfTurn(format!("{other:?} (expected Ready)"))),
            }
        }
        MigrationMessage::Abort { reason } => return Err(MigrationError::Refused(reason)),
        other => return Err(MigrationError::OutOfTurn(format!("{other:?} (expected Ready)"))),
    }
    // Make before break: the terminals open their sessions at the destination while the copy runs.
    let preparing = Instant::now();
    if !ticket.is_empty() {
        phone.prepare(vmi_control_api::ws_url(&to_url), ticket).await;
    }

    // Pre-copy: the phone keeps running and serving terminals between rounds.
    for round in 0..MAX_ROUNDS {
        let span =
            tracing::info_span!("migration.round", vmi.round = round as i64, vmi.pages = Empty, vmi.bytes = Empty);
        let pages = async {
            let crate::phone::PreCopyRound { bytes, pages } = phone.pre_copy(round == 0).await?;
            tracing::Span::current().record("vmi.pages", pages as i64).record("vmi.bytes", bytes.len() as i64);
            report.bytes += bytes.len() as u64;
            report.rounds += 1;
            send_round(&mut ws, bytes).await?;
            Ok::<_, MigrationError>(pages)
        }
        .instrument(span)
        .await?;
        if round > 0 && pages <= SMALL_ROUND_PAGES {
            break;
        }
    }
    // The stop waits (a bounded time) for every terminal's session at the destination to be joined, so the
    // handoff needs no new connection; a terminal that cannot prepare follows the Redirect as before. What the
    // phone wrote meanwhile goes in one more round, not in the stop.
    let waiting = Instant::now();
    let limit = HANDOFF_WAIT.saturating_sub(preparing.elapsed()).max(HANDOFF_WAIT_AT_LEAST);
    if tokio::time::timeout(limit, phone.prepared()).await.is_err() {
        tracing::info!(user, to = to_id, "not every terminal prepared its session at the destination in time");
    }
    if report.rounds < MAX_ROUNDS && waiting.elapsed() > CATCH_UP_AFTER {
        let crate::phone::PreCopyRound { bytes, .. } = phone.pre_copy(false).await?;
        report.bytes += bytes.len() as u64;
        report.rounds += 1;
        send_round(&mut ws, bytes).await?;
    }

    // Stop, send the rest, and let the destination commit. The stop's span lasts until the phone runs in one
    // place again (it ends wherever this returns).
    let stop = tracing::info_span!("migration.stop");
    let stopped = Instant::now();
    let crate::phone::FrozenPhone { saved, screens } = phone.freeze().instrument(stop.clone()).await?;
    report.freeze_us = stopped.elapsed().as_micros() as u64;
    report.final_bytes = saved.snapshot.len() as u64;
    report.bytes += saved.snapshot.len() as u64;
    let input_seqs = saved.input_seqs.into_iter().collect();
    let sent = send(&mut ws, &MigrationMessage::Final { snapshot: saved.snapshot, input_seqs, screens })
        .instrument(stop.clone())
        .await;
    report.final_sent_us = stopped.elapsed().as_micros() as u64;
    let answer = match sent {
        Ok(()) => recv(&mut ws).instrument(stop.clone()).await,
        Err(e) => Err(e),
    };

    // The phone runs at the destination once it says Committed: the downtime ends there, if the read-back below
    // confirms it (which takes a round trip to the control service while the phone already runs).
    let mut downtime = stopped.elapsed();
    let epoch = match answer {
        // The peer's word is not enough: the phone is dropped here only once the control service's placement
        // names the destination (a forged Committed leaves it running here).
        Ok(MigrationMessage::Committed { epoch, ran_us }) => {
            // It ran there (provisionally, through the compare-and-set) before it said so.
            let ran = Duration::from_micros(ran_us).min(downtime);
            downtime -= ran;
            report.commit_us = ran_us;
            // The terminals go to the destination now, while the control service is asked (it may be briefly
            // away): their gap is the handover, not the read-back. The copy here stays frozen until it answers.
            phone.redirect(vmi_control_api::ws_url(&to_url)).await;
            match settle(site, user, to_id, placement.epoch, false).instrument(stop.clone()).await {
                Settled::Moved(confirmed) => {
                    if confirmed != epoch {
                        tracing::warn!(
                            user,
                            claimed = epoch,
                            confirmed,
                            "the destination's epoch differs from the placement's"
                        );
                    }
                    confirmed
                }
                Settled::Kept => {
                    tracing::warn!(
                        user,
                        to = to_id,
                        "the destination said Committed but the placement does not name it"
                    );
                    // The phone was stopped until now, aborted or not: that is its downtime.
                    report.downtime_us = stopped.elapsed().as_micros() as u64;
                    phone.thaw().await;
                    return Err(MigrationError::NotCommitted);
                }
            }
        }
        Ok(MigrationMessage::Abort { reason }) => {
            let settled = settle(site, user, to_id, u64::MAX, true).instrument(stop.clone()).await;
            // The phone was stopped until now, aborted or not: that is its downtime.
            report.downtime_us = stopped.elapsed().as_micros() as u64;
            match settled {
                Settled::Kept => phone.thaw().await,
                // Failed over to a third site while this one waited without its lease: that copy is the phone.
                Settled::Moved(_) => {
                    drop_failed_over(site, user, phone).await;
                }
            }
            return Err(MigrationError::Refused(reason));
        }
        other => {
            // No clear answer: the control service decides who owns the phone.
            tracing::warn!("no commit answer from the destination: {other:?}");
            match settle(site, user, to_id, placement.epoch, false).instrument(stop.clone()).await {
                Settled::Moved(epoch) => {
                    // Without an answer, when it started running there is known only from here.
                    downtime = stopped.elapsed();
                    epoch
                }
                Settled::Kept => {
                    // The phone was stopped until now, aborted or not: that is its downtime.
                    report.downtime_us = stopped.elapsed().as_micros() as u64;
                    phone.thaw().await;
                    return Err(MigrationError::NotCommitted);
                }
            }
        }
    };
    report.downtime_us = downtime.as_micros() as u64;
    report.epoch = Some(epoch);
    report.outcome = MigrationOutcome::Committed;
    let new_ws = vmi_control_api::ws_url(&to_url);
    phone.fence(new_ws).await;
    site.registry().remove(user);
    site.forget_saved(user);
    let _ = ws.close(None).await;
    tracing::info!(user, to = to_id, downtime_us = report.downtime_us, "phone migrated");
    Ok(())
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
        match site.control().placement(user).await {
            Ok(p) if p.site == to_id && !destination_aborted => return Settled::Moved(p.epoch),
            Ok(p) if p.site == site.id && p.epoch != epoch => return Settled::Kept,
            // A third site: the phone was failed over while this site waited (its lease lapsed). That copy is the
            // phone now; the one here goes, never taken back.
            Ok(p) if p.site != site.id && p.site != to_id => return Settled::Moved(p.epoch),
            Ok(p) => match site.control().move_placement(user, &site.id, Some(p.epoch)).await {
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

/// Drops the frozen copy here of a phone that was failed over to a third site while this site waited: its
/// terminals go where the placement says, its state here is set aside.
async fn drop_failed_over(site: &SiteState, user: &str, phone: &crate::phone::PhoneLink) {
    let url = match site.control().placement(user).await {
        Ok(p) => vmi_control_api::ws_url(&p.site_url),
        Err(_) => String::new(),
    };
    phone.fence(url).await;
    site.registry().remove(user);
    site.set_aside(user, &site.phone_dir(user));
    tracing::warn!(user, "the phone was failed over elsewhere during the migration: the copy here is dropped");
}
