//! The placer: the loop that makes phones follow their users ([`run_placer`]), and its rounds one at a time
//! ([`PlacerRounds`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use tokio::task::{Id, JoinSet};
use tokio::time::MissedTickBehavior;

use vmi_control_api::Caller;
use vmi_control_api::ClientError;
use vmi_control_api::model::{LEASE_MS, MigrateOrder};
use vmi_control_api::url::segment;

use crate::placement::{Move, PolicyParams, SiteView, World};
use crate::store::now_ms;
use crate::{ControlError, Leadership, Reports, Store};

/// How long the placer waits for a site to answer a migrate order (the answer comes when the migration ends).
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the placer lists every placement once listing them takes longer than [`QUICK_LISTING`]: placements
/// its own orders and failovers change are known at once; those that change otherwise (a new phone, an
/// operator's migration) are seen within this time.
pub const PLACEMENT_SYNC_MS: u64 = 10_000;

/// A listing of the placements this quick is done every round.
const QUICK_LISTING: Duration = Duration::from_millis(20);

/// Runs the placer every `every` until `shutdown` completes: makes phones follow their users.
///
/// Every period it brings its [`World`] up to date from the [`Store`] and the [`Reports`] (the sites every round;
/// the reports received since the last; the placements every round while listing them is quick, every
/// [`PLACEMENT_SYNC_MS`] once it is not, its own orders and failovers at once), lets it decide (the policy of
/// [`decide`](crate::placement::decide), looking only at the users whose decision can have changed), and for
/// each [`Move`] orders the *source* site to live-migrate the phone:
///
/// ```text
/// placer                    source site                        destination site
///   | POST {src}/v1/phones/{user}/migrate {"to"}                       |
///   |------------------------->| live migration stream --------------->|
///   |                          |                                      | PUT /v1/users/{user}/placement
///   |                          |                                      | {"site":dst,"expected_epoch":e}
///   |                          |                                      | (compare-and-set: one owner)
///   |<-------------------------| 2xx committed, non-2xx aborted (ORDER_TIMEOUT at most)
/// ```
///
/// While an order is in flight its phone counts as migrating (never ordered twice) and as one more phone on the
/// destination. After an order fails (transport error, timeout, non-2xx answer, or a 2xx answer while the
/// placement did not move) the phone also counts as migrating for [`PolicyParams::retry_after_ms`], so a broken
/// site is not hammered. A site's phone count is the larger of its heartbeat's count and the placements on it.
///
/// The loop owns its order tasks: on shutdown it stops deciding and abandons orders still in flight (the
/// connection closes; the site decides what that means for its migration).
///
/// Rounds run only while `leadership` says this replica leads (always, for a replica alone); a replica that stops
/// leading lets its orders in flight finish (each migration commits by compare-and-set, so a second leader's
/// orders cannot make two owners) and decides nothing new.
///
/// Store failures are logged and the round skipped; nothing here ends the loop but `shutdown`. Orders and
/// failovers are counted in `metrics`.
pub async fn run_placer(
    store: Arc<dyn Store>,
    reports: Reports,
    caller: Caller,
    (params, every): (PolicyParams, Duration),
    leadership: Leadership,
    shutdown: impl Future<Output = ()>,
    metrics: Arc<crate::metrics::ControlMetrics>,
) {
    let mut placer = Placer::new(store, reports, caller, params);
    placer.metrics = Some(metrics);
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(done) = placer.orders.join_next_with_id() => placer.finish(done),
            _ = tick.tick() => {
                if !leadership.is_leading() {
                    continue;
                }
                let now = now_ms();
                crate::off_the_runtime(|| {
                    let failed_over = placer.failover(now).len();
                    if let Some(m) = &placer.metrics {
                        m.failed_over(failed_over);
                    }
                    placer.round(now);
                });
            }
        }
    }
    if !placer.orders.is_empty() {
        tracing::info!(orders = placer.orders.len(), "placer stopping; abandoning migrate orders in flight");
    }
    placer.orders.shutdown().await;
}

/// The placer driven one round at a time, as [`run_placer`] drives it every period: for tests (and tools) that must
/// know a round ran, so that "no move" is the answer of a round and never the absence of one.
pub struct PlacerRounds {
    placer: Placer,
}

impl PlacerRounds {
    /// A placer over `store` and `reports` (the [`Reports`] given to [`app_with`](crate::app_with), to see the
    /// terminal reports it receives).
    /// Orders go out as `caller` (the control service's certificate).
    pub fn new(store: Arc<dyn Store>, reports: Reports, caller: Caller, params: PolicyParams) -> Self {
        PlacerRounds { placer: Placer::new(store, reports, caller, params) }
    }

    /// One round at `now_ms` (milliseconds since the Unix epoch): reads the registry, decides, and starts a migrate
    /// order for each move; returns the moves ordered.
    pub fn round(&mut self, now_ms: u64) -> Vec<Move> {
        self.placer.round(now_ms)
    }

    /// Fails over the phones of sites whose lease expired at `now_ms` (see [`run_placer`]); returns them as
    /// `(user, from, to)`.
    pub fn failover(&mut self, now_ms: u64) -> Vec<(String, String, String)> {
        self.placer.failover(now_ms)
    }

    /// Waits until every order in flight has been answered and booked (a failed one then waits out its back-off).
    pub async fn settle(&mut self) {
        while let Some(done) = self.placer.orders.join_next_with_id().await {
            self.placer.finish(done);
        }
    }
}

/// What an order task returns: the move and the site's status and body, or why there was none.
type OrderResult = (Move, Result<(u16, String), ClientError>);

struct Placer {
    store: Arc<dyn Store>,
    reports: Reports,
    caller: Caller,
    params: PolicyParams,
    orders: JoinSet<OrderResult>,
    /// Order task id → user, to clean up even if a task panics.
    order_users: HashMap<Id, String>,
    /// User → destination of the order in flight.
    in_flight: HashMap<String, String>,
    /// User → time (ms) before which a failed move is not retried.
    retry_at: HashMap<String, u64>,
    /// When this placer started (ms): no site's lease counts as expired before it had a lease's time to renew.
    started_ms: u64,
    /// The policy's inputs and memory, kept up to date.
    world: World,
    /// Each site's base URL, as the last round listed them.
    urls: HashMap<String, String>,
    /// When the placements were last listed (ms), and whether listing them was quick.
    placements_listed: Option<(u64, bool)>,
    /// The time of the last round (ms).
    last_round_ms: u64,
    /// Where orders and failovers are counted, if anywhere.
    metrics: Option<Arc<crate::metrics::ControlMetrics>>,
}

impl Placer {
    fn new(store: Arc<dyn Store>, reports: Reports, caller: Caller, params: PolicyParams) -> Self {
        Placer {
            caller,
            store,
            reports: reports.watched(),
            world: World::new(params.clone()),
            urls: HashMap::new(),
            placements_listed: None,
            last_round_ms: 0,
            params,
            orders: JoinSet::new(),
            order_users: HashMap::new(),
            in_flight: HashMap::new(),
            retry_at: HashMap::new(),
            started_ms: now_ms(),
            metrics: None,
        }
    }

    /// The failover of phones whose site lost its lease: a site whose last heartbeat is more than [`LEASE_MS`] old
    /// has stopped its phones (it fences itself [`LEASE_MARGIN_MS`](vmi_control_api::model::LEASE_MARGIN_MS) sooner), so each of its phones with a standby
    /// copy of the current epoch on a site that holds its lease is placed there with a compare-and-set (the epoch
    /// rises: the old site, back, sees its phone placed elsewhere and drops its copy), and that site is told to
    /// start it (it also starts it when its next heartbeat lists it). docs/FAILOVER.md has the timing.
    ///
    /// A service that just started gives every site a lease's time first: heartbeats it never received are no
    /// evidence that a site is gone.
    fn failover(&mut self, now: u64) -> Vec<(String, String, String)> {
        let expired = |s: &vmi_control_api::model::Site| {
            s.last_heartbeat_ms.is_some_and(|t| now.saturating_sub(t.max(self.started_ms)) > LEASE_MS)
        };
        // Every phone and its standby are read only when some site lost its lease: most seconds none did.
        let standbys = self.store.list_sites().and_then(|sites| {
            let any_expired = sites.iter().any(expired);
            Ok((sites, if any_expired { self.store.list_standbys()? } else { Vec::new() }))
        });
        let (sites, standbys) = match standbys {
            Ok(read) => read,
            Err(err) => {
                tracing::warn!(error = %err, "failover cannot read the registry; skipping this round");
                return Vec::new();
            }
        };
        let by_id: HashMap<&str, &vmi_control_api::model::Site> = sites.iter().map(|s| (s.id.as_str(), s)).collect();
        let live =
            |s: &vmi_control_api::model::Site| s.last_heartbeat_ms.is_some_and(|t| now.saturating_sub(t) <= LEASE_MS);
        let mut moved = Vec::new();
        for (user, placement, standby) in standbys {
            let Some(owner) = by_id.get(placement.site.as_str()) else { continue };
            if !expired(owner) {
                continue;
            }
            let Some(target) = standby.as_deref().and_then(|id| by_id.get(id)) else {
                tracing::warn!(%user, site = %placement.site, "the site lost its lease and the phone has no standby copy");
                continue;
            };
            if !live(target) || target.draining || target.degraded.is_some() {
                continue;
            }
            // Checked again in the move's own transaction: a heartbeat that lands meanwhile keeps the phone where
            // it is (the site was told it is still placed there).
            let expired_before = now.saturating_sub(LEASE_MS);
            let live_since = now.saturating_sub(LEASE_MS);
            // One trace per failover: the move here, the standby site's start of the phone.
            let span = tracing::info_span!(
                "failover",
                vmi.user = %user,
                vmi.from = %placement.site,
                vmi.to = %target.id,
                vmi.epoch = tracing::field::Empty,
            );
            let _entered = span.enter();
            let request = serde_json::json!({ "from": placement.site, "to": target.id, "epoch": placement.epoch });
            let moved_over = crate::history::placement_move("failover", &user, request, || {
                self.store.fail_over(&user, &placement.site, &target.id, placement.epoch, expired_before, live_since)
            });
            match moved_over {
                Ok(now_placed) => {
                    tracing::warn!(%user, from = %placement.site, to = %target.id, epoch = now_placed.epoch,
                        "failover: the site lost its lease; the phone starts from its standby copy");
                    // In the audit log, where an operator (and the dashboard) sees failovers as they happen.
                    let entry = vmi_control_api::auth::AuditEntry {
                        id: 0,
                        at_ms: now,
                        principal: "control".to_owned(),
                        action: "FAILOVER".to_owned(),
                        user: Some(user.clone()),
                        site: Some(target.id.clone()),
                        from: "in-process".to_owned(),
                        status: 200,
                        detail: format!(
                            "{} lost its lease; the phone starts on {} from its standby copy (epoch {})",
                            placement.site, target.id, now_placed.epoch
                        ),
                    };
                    if let Err(e) = self.store.record_audit(&[entry]) {
                        tracing::warn!(%user, "the failover is not in the audit log: {e}");
                    }
                    span.record("vmi.epoch", now_placed.epoch as i64);
                    let migrating = self.in_flight.contains_key(&user) || self.retry_at.contains_key(&user);
                    self.world.set_phone(&user, &target.id, migrating);
                    self.promote(&user, &target.id, &target.url, placement.epoch);
                    moved.push((user, placement.site.clone(), target.id.clone()));
                }
                Err(err) => tracing::warn!(%user, error = %err, "failover did not move the placement"),
            }
        }
        moved
    }

    /// Tells site `id` at `url` to start `user`'s phone from its standby copy of placement epoch `from_epoch`,
    /// retrying (every second, for a minute) until it answers.
    fn promote(&self, user: &str, id: &str, url: &str, from_epoch: u64) {
        let url = format!("{url}/v1/standby/{}/promote", segment(user));
        let caller = match vmi_trust::site_name(id) {
            Ok(name) => self.caller.clone().expecting(&name),
            Err(_) => self.caller.clone(),
        };
        let user = user.to_owned();
        let body = serde_json::json!({ "from_epoch": from_epoch });
        // The current span (the failover's) goes with the task: the order is in its trace.
        let span = tracing::Span::current();
        let task = async move {
            for _ in 0..60 {
                match caller.post_json_within(&url, &body, ORDER_TIMEOUT).await {
                    Ok((status, _)) if (200..300).contains(&status) => return,
                    Ok((status, body)) => {
                        tracing::warn!(%user, status, body, "the standby site did not start the phone");
                        // It answered: only a transient refusal (503) is worth another try.
                        if status != 503 {
                            return;
                        }
                    }
                    Err(err) => tracing::warn!(%user, error = %err, "cannot reach the standby site"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::spawn(task.instrument(span));
    }

    /// One evaluation: bring the world up to date, decide, order. Returns the moves ordered.
    fn round(&mut self, now: u64) -> Vec<Move> {
        // Time only goes forward here: a wall clock stepped back must not make stale reports fresh again for
        // the users the world would not look at.
        let now = now.max(self.last_round_ms);
        self.last_round_ms = now;
        // Phones whose failed move waited out its back-off may move again.
        let mut again = Vec::new();
        self.retry_at.retain(|user, at| {
            let waiting = *at > now;
            if !waiting {
                again.push(user.clone());
            }
            waiting
        });
        for user in again {
            if let Some(site) = self.world.site_of(&user).map(str::to_owned) {
                self.world.set_phone(&user, &site, self.in_flight.contains_key(&user));
            }
        }
        if let Err(err) = self.sync(now) {
            tracing::warn!(error = %err, "placer cannot read the registry; skipping this round");
            return Vec::new();
        }
        let mut ordered = Vec::new();
        for mv in self.world.decide(now) {
            match (self.urls.get(&mv.from), self.urls.contains_key(&mv.to)) {
                (Some(from_url), true) => {
                    let from_url = from_url.clone();
                    ordered.push(mv.clone());
                    self.order(mv, &from_url);
                }
                _ => tracing::warn!(user = %mv.user, from = %mv.from, to = %mv.to, "placer move names an unknown site"),
            }
        }
        ordered
    }

    /// Brings the world up to date: every site (its phones: the larger of its heartbeat's count and the phones
    /// placed or moving there), the reports received since the last round, and the placements (every round while
    /// listing them is quick, else every [`PLACEMENT_SYNC_MS`]).
    fn sync(&mut self, now: u64) -> Result<(), ControlError> {
        let due = match self.placements_listed {
            None => true,
            Some((at, quick)) => quick || now.saturating_sub(at) >= PLACEMENT_SYNC_MS || now < at,
        };
        if due {
            let listing = std::time::Instant::now();
            let placements = self.store.list_placements()?;
            let quick = listing.elapsed() <= QUICK_LISTING;
            let mut listed = std::collections::HashSet::with_capacity(placements.len());
            for (user, placement) in &placements {
                let migrating = self.in_flight.contains_key(user) || self.retry_at.contains_key(user);
                if self.world.site_of(user) != Some(placement.site.as_str()) || self.world.migrating(user) != migrating
                {
                    self.world.set_phone(user, &placement.site, migrating);
                }
                listed.insert(user.as_str());
            }
            let gone: Vec<String> =
                self.world.placed_users().filter(|u| !listed.contains(u)).map(str::to_owned).collect();
            for user in gone {
                self.world.remove_phone(&user);
            }
            self.placements_listed = Some((now, quick));
        }
        for report in self.reports.take_changed() {
            self.world.report(&report);
        }
        let sites = self.store.list_sites()?;
        let mut moving_to: HashMap<&str, u32> = HashMap::new();
        for to in self.in_flight.values() {
            *moving_to.entry(to.as_str()).or_default() += 1;
        }
        for site in &sites {
            let placed = self.world.placed_on(&site.id) + moving_to.get(site.id.as_str()).copied().unwrap_or(0);
            self.world.set_site(SiteView {
                id: site.id.clone(),
                lat: site.lat,
                lon: site.lon,
                capacity: site.capacity,
                phones: site.phones.max(placed),
                healthy: site.healthy_at(now),
                // A degraded site (it cannot keep phones durable) is evacuated as a draining one is.
                draining: site.draining || site.degraded.is_some(),
            });
        }
        self.urls = sites.into_iter().map(|site| (site.id, site.url)).collect();
        Ok(())
    }

    /// Starts the migrate order for `mv` as a task of the placer.
    fn order(&mut self, mv: Move, from_url: &str) {
        tracing::info!(user = %mv.user, from = %mv.from, to = %mv.to, reason = %mv.reason, "ordering migration");
        let url = format!("{from_url}/v1/phones/{}/migrate", segment(&mv.user));
        let body = MigrateOrder { to: mv.to.clone() };
        let user = mv.user.clone();
        self.in_flight.insert(user.clone(), mv.to.clone());
        // Counted as migrating (left alone) until its order is answered.
        self.world.set_phone(&user, &mv.from, true);
        let caller = match vmi_trust::site_name(&mv.from) {
            Ok(name) => self.caller.clone().expecting(&name),
            Err(_) => self.caller.clone(),
        };
        // One trace per ordered migration: this order, the site's migration, the destination's arrival.
        let span = tracing::info_span!(
            "placer.migrate",
            vmi.user = %mv.user,
            vmi.from = %mv.from,
            vmi.to = %mv.to,
            vmi.reason = %mv.reason,
        );
        let task = self.orders.spawn(
            async move {
                let answer = caller.post_json_within(&url, &body, ORDER_TIMEOUT).await;
                (mv, answer)
            }
            .instrument(span),
        );
        self.order_users.insert(task.id(), user);
    }

    /// Books the end of an order task.
    fn finish(&mut self, done: Result<(Id, OrderResult), tokio::task::JoinError>) {
        let (id, (mv, answer)) = match done {
            Ok(done) => done,
            Err(err) => {
                if let Some(user) = self.order_users.remove(&err.id()) {
                    tracing::error!(%user, error = %err, "migrate order task failed");
                    self.in_flight.remove(&user);
                    self.retry_later(&user);
                }
                return;
            }
        };
        self.order_users.remove(&id);
        self.in_flight.remove(&mv.user);
        let failure = match answer {
            Ok((status, _)) if (200..300).contains(&status) => match self.store.placement(&mv.user) {
                Ok(Some(placement)) if placement.site == mv.to => {
                    tracing::info!(user = %mv.user, from = %mv.from, to = %mv.to, epoch = placement.epoch,
                        "migration committed");
                    self.world.set_phone(&mv.user, &placement.site, false);
                    if let Some(m) = &self.metrics {
                        m.order(true);
                    }
                    return;
                }
                Ok(placement) => {
                    format!("site answered {status} but the placement is {:?}", placement.map(|p| (p.site, p.epoch)))
                }
                Err(err) => format!("site answered {status}; reading the placement failed: {err}"),
            },
            Ok((status, body)) => format!("site answered {status}: {}", body.chars().take(200).collect::<String>()),
            Err(err) => err.to_string(),
        };
        tracing::warn!(user = %mv.user, from = %mv.from, to = %mv.to, %failure,
            retry_in_ms = self.params.retry_after_ms, "migration not done");
        if let Some(m) = &self.metrics {
            m.order(false);
        }
        self.retry_later(&mv.user);
    }

    fn retry_later(&mut self, user: &str) {
        self.retry_at.insert(user.to_owned(), now_ms().saturating_add(self.params.retry_after_ms));
    }
}
