//! The placement policy: which phones should live-migrate, and where to. A pure function of what the control
//! service knows ([`PolicyInput`]), the time, and a little memory ([`PolicyState`]); the placer
//! ([`run_placer`](crate::run_placer)) feeds it and carries out its [`Move`]s.
//!
//! # Scoring
//!
//! A site's *score* for a user is the round-trip time the user would see, in milliseconds; lower is better:
//!
//! - the RTT the user's terminal measured to that site, when its latest report has one;
//! - otherwise an estimate from the great-circle distance between the reported position and the site:
//!   [`PolicyParams::base_rtt_ms`] + [`PolicyParams::rtt_ms_per_100km`] per 100 km (light in fibre covers about
//!   100 km and back in 1 ms; the base stands for the access network);
//! - otherwise unknown, and the site is not a candidate.
//!
//! Reports older than [`PolicyParams::report_max_age_ms`] are ignored, as if there were none.
//!
//! # Rules
//!
//! 1. A phone that is migrating is never moved (and its bookkeeping is dropped).
//! 2. A phone on a site that is unhealthy (dead), draining or unknown is *evacuated* at once, no dwell, to the best
//!    eligible site. Without a fresh report (or without a score for a site) the user is assumed to stand at the old
//!    site, so the nearest eligible site to it wins. Evacuations are decided before any other move, so they get
//!    first pick of the free room.
//! 3. A phone on a healthy site moves only for a better site: the best eligible site must beat the current one by
//!    at least [`PolicyParams::min_gain_ms`] *and* [`PolicyParams::min_gain_ratio`] of the current score, and some
//!    site must have done so at every evaluation for [`PolicyParams::dwell_ms`]; the phone then moves to the best
//!    one at that moment. Any evaluation without such a site (or without a fresh report, or a score for the
//!    current site) restarts the clock. The margin keeps a user standing on a border from flapping, the dwell
//!    keeps a short excursion from moving anything.
//! 4. *Eligible* means healthy, not draining, not the current site, and with room: phones (plus moves already
//!    decided in the same call) below capacity. When the best site is full the next best with room is considered,
//!    under the same margin; with no eligible site there is no move.
//!
//! Ties break by site id, and phones are considered in user order, so a decision is reproducible.
//!
//! # At scale
//!
//! [`decide`] looks at every phone and every site each call. The placer runs the same policy through a
//! [`World`], which is told what changed and looks only at the users whose decision can have changed, with the
//! sites in a spatial index; it decides exactly what [`decide`] decides (a property test checks it on random
//! worlds). docs/PLACEMENT.md has the design and the figures.

mod world;

pub use world::World;

use std::collections::{HashMap, HashSet};
use std::fmt;

use vmi_control_api::model::TerminalReport;

/// Mean Earth radius used for great-circle distances, in kilometres.
pub const EARTH_RADIUS_KM: f64 = 6371.0;

/// The policy's knobs. [`PolicyParams::default`] gives the production values.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyParams {
    /// Reports older than this are ignored (default 60 s).
    pub report_max_age_ms: u64,
    /// Estimated RTT at zero distance, in milliseconds (default 2).
    pub base_rtt_ms: f64,
    /// Estimated RTT added per 100 km of great-circle distance, in milliseconds (default 1).
    pub rtt_ms_per_100km: f64,
    /// A better site must beat the current score by at least this fraction of it (default 0.2).
    pub min_gain_ratio: f64,
    /// ... and by at least this many milliseconds (default 2).
    pub min_gain_ms: f64,
    /// How long a better site must keep being better before the phone moves (default 10 s).
    pub dwell_ms: u64,
    /// Used by the placer, not by [`decide`]: after an order fails or the migration aborts, the phone counts as
    /// migrating for this long before it is ordered again (default 30 s).
    pub retry_after_ms: u64,
}

impl Default for PolicyParams {
    fn default() -> Self {
        PolicyParams {
            report_max_age_ms: 60_000,
            base_rtt_ms: 2.0,
            rtt_ms_per_100km: 1.0,
            min_gain_ratio: 0.2,
            min_gain_ms: 2.0,
            dwell_ms: 10_000,
            retry_after_ms: 30_000,
        }
    }
}

/// A site as the policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteView {
    /// Site id.
    pub id: String,
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
    /// Most phones the site will run.
    pub capacity: u32,
    /// Phones on the site now (the placer also counts phones placed or migrating there).
    pub phones: u32,
    /// Heartbeat recent enough.
    pub healthy: bool,
    /// Being emptied: no phone may stay or arrive.
    pub draining: bool,
}

/// A placed phone as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneView {
    /// Owner of the phone.
    pub user: String,
    /// Site id it runs on.
    pub site: String,
    /// A migration is under way (or was just tried): leave it alone.
    pub migrating: bool,
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyInput {
    /// Every registered site.
    pub sites: Vec<SiteView>,
    /// Every placed phone.
    pub phones: Vec<PhoneView>,
    /// The latest terminal report per user, however old ([`decide`] skips stale ones).
    pub reports: HashMap<String, TerminalReport>,
}

/// Why a phone is moved.
#[derive(Debug, Clone, PartialEq)]
pub enum MoveReason {
    /// Another site has been better for the dwell time; the scores (RTT in ms) at the decision.
    Closer {
        /// Score of the current site.
        from_ms: f64,
        /// Score of the destination.
        to_ms: f64,
    },
    /// The current site is unhealthy or unknown.
    SiteDown,
    /// The current site is draining.
    Draining,
}

impl fmt::Display for MoveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoveReason::Closer { from_ms, to_ms } => write!(f, "closer: {from_ms:.1} ms -> {to_ms:.1} ms"),
            MoveReason::SiteDown => f.write_str("site down"),
            MoveReason::Draining => f.write_str("site draining"),
        }
    }
}

/// One decision: migrate `user`'s phone from site `from` to site `to`.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    /// Whose phone.
    pub user: String,
    /// Current site id.
    pub from: String,
    /// Destination site id.
    pub to: String,
    /// Why.
    pub reason: MoveReason,
}

/// What [`decide`] remembers between calls: since when each user has had a better site than their current one.
#[derive(Debug, Clone, Default)]
pub struct PolicyState {
    candidates: HashMap<String, Candidate>,
}

#[derive(Debug, Clone)]
struct Candidate {
    /// The site the phone was on when the clock started; a different current site restarts it.
    from: String,
    since_ms: u64,
}

impl PolicyState {
    /// Empty bookkeeping.
    pub fn new() -> Self {
        Self::default()
    }

    /// Since when `user` has continuously had a better site, if they have one now.
    pub fn candidate_since(&self, user: &str) -> Option<u64> {
        self.candidates.get(user).map(|c| c.since_ms)
    }

    /// Every running dwell clock, sorted: user, the site it started on, since when.
    pub fn clocks(&self) -> Vec<(String, String, u64)> {
        let mut clocks: Vec<_> =
            self.candidates.iter().map(|(user, c)| (user.clone(), c.from.clone(), c.since_ms)).collect();
        clocks.sort();
        clocks
    }
}

/// Great-circle (haversine) distance between two points given in degrees, in kilometres.
pub fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let dphi = (lat2 - lat1).to_radians();
    let dlambda = (lon2 - lon1).to_radians();
    let h = (dphi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (dlambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// The estimated RTT in milliseconds from a position to a site: base + per-100-km slope × distance.
pub fn estimate_rtt_ms(params: &PolicyParams, lat: f64, lon: f64, site: &SiteView) -> f64 {
    params.base_rtt_ms + params.rtt_ms_per_100km * distance_km(lat, lon, site.lat, site.lon) / 100.0
}

/// The site's score for a user: the measured RTT if the report has a usable one, else the estimate from the
/// reported position, else the estimate from `fallback` (a position), else unknown.
fn score(
    params: &PolicyParams,
    report: Option<&TerminalReport>,
    fallback: Option<(f64, f64)>,
    site: &SiteView,
) -> Option<f64> {
    if let Some(&rtt) = report.and_then(|r| r.rtt_ms.get(&site.id)).filter(|rtt| rtt.is_finite() && **rtt >= 0.0) {
        return Some(rtt);
    }
    let (lat, lon) = report.and_then(TerminalReport::position).or(fallback)?;
    Some(estimate_rtt_ms(params, lat, lon, site))
}

/// The eligible site (see the module docs) with the lowest score; unknown scores rank last, ties by id.
fn best_site<'a>(
    sites: &'a [SiteView],
    load: &HashMap<&str, u32>,
    current: &str,
    score_of: impl Fn(&SiteView) -> Option<f64>,
) -> Option<(&'a SiteView, Option<f64>)> {
    sites
        .iter()
        .filter(|s| s.healthy && !s.draining && s.id != current)
        .filter(|s| load.get(s.id.as_str()).copied().unwrap_or(s.phones) < s.capacity)
        .map(|s| (s, score_of(s)))
        .min_by(|(a, sa), (b, sb)| {
            let rank = |score: &Option<f64>| score.unwrap_or(f64::INFINITY);
            rank(sa).total_cmp(&rank(sb)).then_with(|| a.id.cmp(&b.id))
        })
}

/// Decides which phones move where at `now_ms` (milliseconds since the Unix epoch). See the module docs for the
/// rules; `state` carries the dwell clocks from one call to the next and must be the same value every call.
pub fn decide(state: &mut PolicyState, input: &PolicyInput, now_ms: u64, params: &PolicyParams) -> Vec<Move> {
    let sites: HashMap<&str, &SiteView> = input.sites.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut load: HashMap<&str, u32> = input.sites.iter().map(|s| (s.id.as_str(), s.phones)).collect();
    let mut phones: Vec<&PhoneView> = input.phones.iter().collect();
    phones.sort_by(|a, b| a.user.cmp(&b.user));

    let placed: HashSet<&str> = phones.iter().filter(|p| !p.migrating).map(|p| p.user.as_str()).collect();
    state.candidates.retain(|user, _| placed.contains(user.as_str()));

    let fresh_report =
        |user: &str| input.reports.get(user).filter(|r| now_ms.saturating_sub(r.at_ms) <= params.report_max_age_ms);
    let mut moves = Vec::new();

    // Rule 2: evacuate dead, draining and unknown sites first.
    let mut stays = Vec::new();
    for phone in phones.into_iter().filter(|p| !p.migrating) {
        let current = sites.get(phone.site.as_str()).copied();
        let reason = match current {
            None => MoveReason::SiteDown,
            Some(site) if !site.healthy => MoveReason::SiteDown,
            Some(site) if site.draining => MoveReason::Draining,
            Some(site) => {
                stays.push((phone, site));
                continue;
            }
        };
        state.candidates.remove(&phone.user);
        let report = fresh_report(&phone.user);
        let origin = current.map(|s| (s.lat, s.lon));
        let best = best_site(&input.sites, &load, &phone.site, |s| {
            score(params, report, None, s).or_else(|| score(params, None, origin, s))
        });
        if let Some((to, _)) = best {
            *load.entry(to.id.as_str()).or_default() += 1;
            moves.push(Move { user: phone.user.clone(), from: phone.site.clone(), to: to.id.clone(), reason });
        }
    }

    // Rule 3: follow the user, with margin and dwell.
    for (phone, current) in stays {
        let report = fresh_report(&phone.user);
        let Some(current_ms) = score(params, report, None, current) else {
            state.candidates.remove(&phone.user);
            continue;
        };
        let better = best_site(&input.sites, &load, &current.id, |s| score(params, report, None, s)).and_then(
            |(site, to_ms)| {
                let to_ms = to_ms?;
                let gain = current_ms - to_ms;
                (gain >= params.min_gain_ms && gain >= params.min_gain_ratio * current_ms).then_some((site, to_ms))
            },
        );
        let Some((to, to_ms)) = better else {
            state.candidates.remove(&phone.user);
            continue;
        };
        let candidate = state
            .candidates
            .entry(phone.user.clone())
            .or_insert_with(|| Candidate { from: current.id.clone(), since_ms: now_ms });
        if candidate.from != current.id {
            *candidate = Candidate { from: current.id.clone(), since_ms: now_ms };
        }
        if now_ms.saturating_sub(candidate.since_ms) >= params.dwell_ms {
            state.candidates.remove(&phone.user);
            *load.entry(to.id.as_str()).or_default() += 1;
            let reason = MoveReason::Closer { from_ms: current_ms, to_ms };
            moves.push(Move { user: phone.user.clone(), from: current.id.clone(), to: to.id.clone(), reason });
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    //! Trace tests: a small world of sites and phones is fed a sequence of (time, report) steps, one [`decide`]
    //! call per step, and the moves are applied at once (an instant migration) unless the test says otherwise.
    //!
    //! Sites sit on the equator, so one degree of longitude is about 111.2 km and a site's estimated RTT from
    //! longitude `x` is `2 + 1.112 * |x - site_lon|` ms.

    use std::collections::BTreeMap;

    use super::*;

    const SECOND: u64 = 1_000;
    const T0: u64 = 1_700_000_000_000;

    fn site(id: &str, lon: f64, capacity: u32) -> SiteView {
        SiteView { id: id.into(), lat: 0.0, lon, capacity, phones: 0, healthy: true, draining: false }
    }

    fn at(lon: f64) -> Report {
        Report { lon: Some(lon), rtt_ms: BTreeMap::new() }
    }

    fn rtts(pairs: &[(&str, f64)]) -> Report {
        Report { lon: None, rtt_ms: pairs.iter().map(|(s, r)| ((*s).to_owned(), *r)).collect() }
    }

    /// What a terminal says in one step: a position on the equator and/or measured RTTs.
    #[derive(Clone)]
    struct Report {
        lon: Option<f64>,
        rtt_ms: BTreeMap<String, f64>,
    }

    struct Sim {
        input: PolicyInput,
        state: PolicyState,
        params: PolicyParams,
        /// Apply moves at once (instant migration); otherwise mark the phone as migrating and leave it.
        apply: bool,
        moves: Vec<(u64, Move)>,
    }

    impl Sim {
        fn new(sites: Vec<SiteView>, phones: &[(&str, &str)]) -> Sim {
            let mut input = PolicyInput { sites, ..PolicyInput::default() };
            for (user, at) in phones {
                input.phones.push(PhoneView { user: (*user).into(), site: (*at).into(), migrating: false });
                input.sites.iter_mut().find(|s| s.id == *at).expect("phone on a known site").phones += 1;
            }
            Sim { input, state: PolicyState::new(), params: PolicyParams::default(), apply: true, moves: Vec::new() }
        }

        fn site_mut(&mut self, id: &str) -> &mut SiteView {
            self.input.sites.iter_mut().find(|s| s.id == id).expect("known site")
        }

        fn report(&mut self, user: &str, t: u64, report: Report) {
            let report = TerminalReport {
                user: user.into(),
                at_ms: T0 + t,
                lat: report.lon.map(|_| 0.0),
                lon: report.lon,
                rtt_ms: report.rtt_ms,
            };
            self.input.reports.insert(user.into(), report);
        }

        /// One evaluation at `T0 + t`; returns the moves it decided.
        fn step(&mut self, t: u64) -> Vec<Move> {
            let moves = decide(&mut self.state, &self.input, T0 + t, &self.params);
            for mv in &moves {
                let phone = self.input.phones.iter_mut().find(|p| p.user == mv.user).expect("moved phone exists");
                assert_eq!(phone.site, mv.from);
                assert!(!phone.migrating, "a migrating phone was moved: {mv:?}");
                if self.apply {
                    phone.site = mv.to.clone();
                    self.site_mut(&mv.from.clone()).phones -= 1;
                    self.site_mut(&mv.to.clone()).phones += 1;
                } else {
                    phone.migrating = true;
                }
                self.moves.push((t, mv.clone()));
            }
            moves
        }

        /// Feeds `user`'s report at every second from `from_s` to `to_s` inclusive, one evaluation after each.
        fn drive(&mut self, user: &str, from_s: u64, to_s: u64, report_at: impl Fn(u64) -> Report) {
            for s in from_s..=to_s {
                self.report(user, s * SECOND, report_at(s));
                self.step(s * SECOND);
            }
        }

        fn hops(&self) -> Vec<(u64, &str, &str)> {
            self.moves.iter().map(|(t, m)| (*t, m.from.as_str(), m.to.as_str())).collect()
        }
    }

    #[test]
    fn estimates_follow_the_documented_formula() {
        let d = distance_km(0.0, 0.0, 0.0, 1.0);
        assert!((d - 111.19).abs() < 0.1, "{d}");
        let berlin_munich = distance_km(52.52, 13.405, 48.137, 11.575);
        assert!((berlin_munich - 504.0).abs() < 5.0, "{berlin_munich}");
        let rtt = estimate_rtt_ms(&PolicyParams::default(), 0.0, 0.0, &site("s", 1.0, 1));
        assert!((rtt - 3.112).abs() < 0.01, "{rtt}");
    }

    /// A commute from A (lon 0) through B (lon 5) to C (lon 10) at 0.05°/s (about 5.6 km/s). B beats A by the
    /// margin (2 ms and 20%) from lon 3.4 on, C beats B from lon 8.4 on: 32 s after the midpoints.
    #[test]
    fn a_commute_across_three_sites_moves_twice_in_order_each_after_the_dwell() {
        let mut sim = Sim::new(vec![site("a", 0.0, 8), site("b", 5.0, 8), site("c", 10.0, 8)], &[("u", "a")]);
        sim.drive("u", 0, 260, |s| at((s as f64 * 0.05).min(10.0)));

        let hops = sim.hops();
        assert_eq!(hops.iter().map(|(_, from, to)| (*from, *to)).collect::<Vec<_>>(), [("a", "b"), ("b", "c")]);
        let dwell = sim.params.dwell_ms;
        // First second at which the destination beats the source by the margin: lon 3.4 (t=68) and 8.4 (t=168).
        for ((t, _, _), better_since) in hops.iter().zip([68 * SECOND, 168 * SECOND]) {
            assert_eq!(*t, better_since + dwell, "moves exactly one dwell after the destination became better");
        }
        assert!(matches!(sim.moves[0].1.reason, MoveReason::Closer { from_ms, to_ms } if from_ms - to_ms >= 2.0));
    }

    /// A user standing on the A/B border: the position wanders around the midpoint with 1.5° swings every 20 s
    /// plus jitter, and the measured RTTs to both sites are noisy. Brief excursions past the margin never last a
    /// dwell, so the phone never ping-pongs.
    #[test]
    fn a_user_on_a_border_does_not_ping_pong() {
        let mut sim = Sim::new(vec![site("a", 0.0, 8), site("b", 5.0, 8)], &[("u", "a")]);
        let mut seed = 0x2545_f491_u64;
        let mut noise = move || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64) - 0.5 // -0.5..0.5
        };
        for s in 0..=900u64 {
            let swing = 1.5 * (s as f64 * std::f64::consts::TAU / 20.0).sin();
            let report = if s % 3 == 0 {
                rtts(&[("a", 8.0 + 6.0 * noise()), ("b", 8.0 + 6.0 * noise())])
            } else {
                at(2.5 + swing + 0.4 * noise())
            };
            sim.report("u", s * SECOND, report);
            sim.step(s * SECOND);
        }
        assert!(sim.moves.len() <= 1, "ping-pong: {:?}", sim.hops());
    }

    #[test]
    fn a_short_excursion_restarts_the_dwell_clock() {
        let mut sim = Sim::new(vec![site("a", 0.0, 8), site("b", 5.0, 8)], &[("u", "a")]);
        // 9 s deep in B's area, 1 s back home, 9 s in B's area again: never 10 s in a row.
        sim.drive("u", 0, 8, |_| at(5.0));
        assert_eq!(sim.state.candidate_since("u"), Some(T0));
        sim.drive("u", 9, 9, |_| at(0.0));
        assert_eq!(sim.state.candidate_since("u"), None);
        sim.drive("u", 10, 18, |_| at(5.0));
        assert!(sim.moves.is_empty());
        sim.drive("u", 19, 20, |_| at(5.0));
        assert_eq!(sim.hops(), [(20 * SECOND, "a", "b")]);
    }

    #[test]
    fn measured_rtt_wins_over_the_distance_estimate() {
        // By position the user is at A, but the terminal measures B much faster (and A slow).
        let mut sim = Sim::new(vec![site("a", 0.0, 8), site("b", 5.0, 8)], &[("u", "a")]);
        sim.drive("u", 0, 12, |_| Report { lon: Some(0.0), rtt_ms: [("a".into(), 30.0), ("b".into(), 4.0)].into() });
        assert_eq!(sim.hops(), [(10 * SECOND, "a", "b")]);
        assert_eq!(sim.moves[0].1.reason, MoveReason::Closer { from_ms: 30.0, to_ms: 4.0 });

        // Measured RTTs that contradict the position keep the phone where it is.
        let mut sim = Sim::new(vec![site("a", 0.0, 8), site("b", 5.0, 8)], &[("u", "a")]);
        sim.drive("u", 0, 60, |_| Report { lon: Some(5.0), rtt_ms: [("a".into(), 3.0), ("b".into(), 3.5)].into() });
        assert!(sim.moves.is_empty(), "{:?}", sim.hops());
    }

    #[test]
    fn a_full_destination_is_skipped_for_the_next_best_with_room_or_not_at_all() {
        let full_b = || SiteView { phones: 1, ..site("b", 5.0, 1) };
        let mut sim = Sim::new(vec![site("a", 0.0, 8), full_b()], &[("u", "a")]);
        sim.drive("u", 0, 60, |_| at(5.0));
        assert!(sim.moves.is_empty(), "{:?}", sim.hops());

        // C (lon 7) still beats A by far more than the margin from lon 5: the phone goes there.
        let mut sim = Sim::new(vec![site("a", 0.0, 8), full_b(), site("c", 7.0, 8)], &[("u", "a")]);
        sim.drive("u", 0, 60, |_| at(5.0));
        assert_eq!(sim.hops(), [(10 * SECOND, "a", "c")]);
    }

    #[test]
    fn moves_decided_in_one_call_count_against_capacity() {
        let mut sim =
            Sim::new(vec![site("a", 0.0, 8), site("b", 5.0, 1), site("c", 7.0, 8)], &[("u1", "a"), ("u2", "a")]);
        for s in 0..=12 {
            sim.report("u1", s * SECOND, at(5.0));
            sim.report("u2", s * SECOND, at(5.0));
            sim.step(s * SECOND);
        }
        assert_eq!(sim.hops(), [(10 * SECOND, "a", "b"), (10 * SECOND, "a", "c")], "B had room for one");
    }

    #[test]
    fn a_dead_site_is_evacuated_at_once() {
        let mut sim =
            Sim::new(vec![site("a", 0.0, 8), site("b", 5.0, 8), site("c", 10.0, 8)], &[("u", "a"), ("v", "a")]);
        sim.step(0);
        sim.site_mut("a").healthy = false;
        // v reports a position near C; u never reported: assumed near A, so the nearest live site wins.
        sim.report("v", 0, at(9.0));
        assert_eq!(sim.step(SECOND).len(), 2, "no dwell");
        assert_eq!(sim.hops(), [(SECOND, "a", "b"), (SECOND, "a", "c")]);
        assert!(sim.moves.iter().all(|(_, m)| m.reason == MoveReason::SiteDown));

        // Nowhere healthy to go: nothing is decided.
        let mut sim =
            Sim::new(vec![site("a", 0.0, 8), SiteView { healthy: false, ..site("b", 5.0, 8) }], &[("u", "a")]);
        sim.site_mut("a").healthy = false;
        assert!(sim.step(0).is_empty());
    }

    #[test]
    fn draining_moves_every_phone_and_receives_none() {
        let phones = [("u1", "a"), ("u2", "a"), ("u3", "a"), ("w", "c")];
        let mut sim = Sim::new(vec![site("a", 0.0, 8), site("b", 5.0, 2), site("c", 10.0, 8)], &phones);
        sim.step(0);
        assert!(sim.moves.is_empty(), "no reports, healthy sites: everyone stays put");
        sim.site_mut("a").draining = true;
        sim.step(SECOND);
        assert_eq!(sim.hops(), [(SECOND, "a", "b"), (SECOND, "a", "b"), (SECOND, "a", "c")]);
        assert!(sim.moves.iter().all(|(_, m)| m.reason == MoveReason::Draining));

        // A draining site is never a destination, however close.
        sim.site_mut("b").draining = true;
        sim.site_mut("a").draining = false;
        sim.moves.clear();
        sim.drive("w", 2, 30, |_| at(5.0));
        let hops = sim.hops();
        assert!(hops.iter().all(|(_, from, to)| *from == "b" && *to != "b"), "{hops:?}");
        assert!(!hops.iter().any(|(_, _, to)| *to == "b"));
        assert!(sim.input.phones.iter().all(|p| p.site != "b"), "b emptied");
    }

    #[test]
    fn a_migrating_phone_is_never_moved_again() {
        let mut sim = Sim::new(vec![site("a", 0.0, 8), site("b", 5.0, 8), site("c", 10.0, 8)], &[("u", "a")]);
        sim.apply = false;
        sim.drive("u", 0, 30, |_| at(5.0));
        assert_eq!(sim.hops(), [(10 * SECOND, "a", "b")]);
        // Still migrating: its site dies, then drains, the user runs to C; nothing more is decided.
        sim.site_mut("a").healthy = false;
        sim.drive("u", 31, 60, |_| at(10.0));
        sim.site_mut("a").draining = true;
        sim.drive("u", 61, 90, |_| at(10.0));
        assert_eq!(sim.moves.len(), 1, "{:?}", sim.hops());
        assert_eq!(sim.state.candidate_since("u"), None);
    }

    #[test]
    fn stale_or_missing_reports_keep_phones_put() {
        let mut sim = Sim::new(vec![site("a", 0.0, 8), site("b", 5.0, 8)], &[("u", "a"), ("v", "b")]);
        for s in 0..=120 {
            sim.step(s * SECOND);
        }
        // A report near B that is already 61 s old when it arrives.
        sim.input.reports.insert(
            "u".into(),
            TerminalReport {
                user: "u".into(),
                at_ms: T0 + 60 * SECOND,
                lat: Some(0.0),
                lon: Some(5.0),
                rtt_ms: BTreeMap::new(),
            },
        );
        for s in 121..=200 {
            sim.step(s * SECOND);
        }
        assert!(sim.moves.is_empty(), "{:?}", sim.hops());

        // A report whose RTTs name only other sites gives no score for the current one: no move.
        sim.drive("u", 201, 260, |_| rtts(&[("b", 1.0)]));
        assert!(sim.moves.is_empty(), "{:?}", sim.hops());
    }
}
