//! The placement policy kept up to date incrementally, for ten thousand sites and a million phones.
//!
//! [`decide`](super::decide) looks at every phone and, for each, at every site: phones × sites a call. A
//! [`World`] holds the same inputs (sites, phones, the latest report per user) and the same memory (the dwell
//! clocks), is told what changed, and at each round looks only at the users whose decision can have changed:
//!
//! - a user whose report, placement or migrating state changed;
//! - a user whose dwell clock comes due, or whose report goes stale while a clock runs (a timer);
//! - a user on a site that went down, started draining or came back (every user on it);
//! - a user whose decision depended on a site that became eligible or stopped being so (healthy, not draining,
//!   with room): each evaluation records the sites it *depended on*, those it ranked at or before the one it
//!   chose, and only a change of one of those can change its result (a site ranked after the chosen one
//!   changes nothing, whatever it becomes).
//!
//! Sites stand in an R*-tree (`rstar`) as points on the unit sphere, where the straight-line (chord) distance
//! orders sites as the great-circle distance does. A user's candidates are then only the sites close enough
//! to pass the policy's margin: for a user near their own site that is none at all, and no site is looked at.
//!
//! The decisions are [`decide`](super::decide)'s exactly, move for move and clock for clock: phones in user
//! order, evacuations first, moves of one round taking room from the later ones; a property test checks it on
//! random worlds.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use rstar::{AABB, PointDistance, RTree, RTreeObject};

use super::{EARTH_RADIUS_KM, Move, MoveReason, PolicyParams, SiteView, estimate_rtt_ms};
use vmi_control_api::model::TerminalReport;

/// A site's place in the index: its point on the unit sphere.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SitePoint {
    xyz: [f64; 3],
    site: u32,
}

impl RTreeObject for SitePoint {
    type Envelope = AABB<[f64; 3]>;

    fn envelope(&self) -> Self::Envelope {
        AABB::from_point(self.xyz)
    }
}

impl PointDistance for SitePoint {
    fn distance_2(&self, point: &[f64; 3]) -> f64 {
        let d = [self.xyz[0] - point[0], self.xyz[1] - point[1], self.xyz[2] - point[2]];
        d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    }
}

/// A position on the unit sphere.
fn unit(lat: f64, lon: f64) -> [f64; 3] {
    let (phi, lambda) = (lat.to_radians(), lon.to_radians());
    [phi.cos() * lambda.cos(), phi.cos() * lambda.sin(), phi.sin()]
}

/// The squared chord, on the unit sphere, of a great-circle distance of `km` (a little more, so that rounding
/// never leaves out a site exactly at the edge: the exact test comes after).
fn chord_2_of_km(km: f64) -> f64 {
    let theta = (km / EARTH_RADIUS_KM).clamp(0.0, std::f64::consts::PI);
    let chord = 2.0 * (theta / 2.0).sin();
    (chord * (1.0 + 1e-9) + 1e-12).powi(2)
}

/// A site as the world keeps it.
#[derive(Debug)]
struct Site {
    /// What the caller said last; `None` for an id named by a phone or a report but not registered.
    view: Option<SiteView>,
    /// Phones counted against its capacity this round: its view's, plus the moves decided to it this round.
    load: u32,
    /// Healthy, not draining, with room (`load < capacity`).
    eligible: bool,
    /// Users whose last evaluation depended on whether this site is eligible.
    dependents: HashSet<u32>,
    /// Users placed here.
    placed: HashSet<u32>,
}

impl Site {
    /// A phone on it stays (rule 3) rather than being evacuated (rule 2).
    fn keeps_phones(&self) -> bool {
        self.view.as_ref().is_some_and(|v| v.healthy && !v.draining)
    }

    fn eligible_now(&self) -> bool {
        self.view.as_ref().is_some_and(|v| v.healthy && !v.draining && self.load < v.capacity)
    }
}

/// A user's latest report, with its site ids resolved.
#[derive(Debug, Clone)]
struct Report {
    at_ms: u64,
    position: Option<(f64, f64)>,
    /// Valid measured round-trip times (finite, not negative), by site.
    rtt_ms: Vec<(u32, f64)>,
    /// Valid measured times to site ids nobody has named yet: resolved if such a site appears (kept apart, so
    /// that ids a terminal makes up do not grow the world's sites).
    unresolved: Vec<(Box<str>, f64)>,
}

impl Report {
    fn measured(&self, site: u32) -> Option<f64> {
        self.rtt_ms.iter().find(|(s, _)| *s == site).map(|(_, rtt)| *rtt)
    }
}

/// A user as the world keeps them.
#[derive(Debug)]
struct User {
    name: Arc<str>,
    /// The site the phone is placed on, if it has one.
    site: Option<u32>,
    migrating: bool,
    report: Option<Report>,
    /// The dwell clock: the site it started on, and when.
    candidate: Option<(u32, u64)>,
    /// The sites the last evaluation depended on.
    depends_on: Vec<u32>,
}

/// The users a round looks at, in user order (by name), each once: those known at its start sorted once, and
/// those added while it runs (a site filled or freed by a move) merged in by a heap.
#[derive(Default)]
struct Queue {
    sorted: Vec<(Arc<str>, u32)>,
    next: usize,
    late: BinaryHeap<Reverse<(Arc<str>, u32)>>,
    /// `stamp[user] == round`: queued this round.
    stamp: Vec<u32>,
    round: u32,
}

impl Queue {
    /// A queue for round `round` over `users` users, reusing `stamp`.
    fn new(mut stamp: Vec<u32>, users: usize, round: u32) -> Queue {
        stamp.resize(users, 0);
        Queue { stamp, round, ..Queue::default() }
    }

    fn mark(&mut self, user: u32) -> bool {
        let slot = &mut self.stamp[user as usize];
        let new = *slot != self.round;
        *slot = self.round;
        new
    }

    /// Adds a user before the round starts popping.
    fn add(&mut self, name: &Arc<str>, user: u32) {
        if self.mark(user) {
            self.sorted.push((name.clone(), user));
        }
    }

    /// Sorts what was added: the round starts.
    fn start(&mut self) {
        self.sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    }

    /// Adds a user while the round runs.
    fn push(&mut self, name: &Arc<str>, user: u32) {
        if self.mark(user) {
            self.late.push(Reverse((name.clone(), user)));
        }
    }

    fn pop(&mut self) -> Option<(Arc<str>, u32)> {
        let from_sorted = match (self.sorted.get(self.next), self.late.peek()) {
            (Some(a), Some(Reverse(b))) => a.0 <= b.0,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if from_sorted {
            self.next += 1;
            Some(self.sorted[self.next - 1].clone())
        } else {
            self.late.pop().map(|Reverse(item)| item)
        }
    }
}

/// The placement policy's inputs and memory, kept up to date by what changes; see the module docs.
pub struct World {
    params: PolicyParams,
    sites: Vec<Site>,
    site_ids: HashMap<String, u32>,
    /// Each site's id, by index (registered or only named).
    site_names: Vec<Arc<str>>,
    index: RTree<SitePoint>,
    users: Vec<User>,
    user_ids: HashMap<String, u32>,
    /// Users to look at next round.
    dirty: HashSet<u32>,
    /// Due time (ms) → users whose dwell clock comes due or whose report goes stale then.
    timers: BTreeMap<u64, Vec<u32>>,
    /// Users placed on a site that does not keep phones (down, draining, unknown): evacuated each round until
    /// they move.
    evacuees: HashSet<u32>,
    /// Sites whose load a round changed: back to their view's count at the next.
    loaded: Vec<u32>,
    /// Whether the index must be built again (a site was added or moved).
    reindex: bool,
    /// Whether every user is looked at next round (a site was added or moved).
    everyone: bool,
    /// Sites eligible now.
    eligible_sites: usize,
    /// Users whose report names sites nobody has named yet.
    unresolved: HashSet<u32>,
    /// Rounds so far (the queue's stamps).
    rounds: u32,
    /// The queue's stamps, kept from round to round.
    stamps: Vec<u32>,
    /// A user's ranked sites, kept from evaluation to evaluation.
    ranked: Vec<(f64, u32)>,
}

impl World {
    /// An empty world deciding with `params`.
    pub fn new(params: PolicyParams) -> World {
        World {
            params,
            sites: Vec::new(),
            site_ids: HashMap::new(),
            site_names: Vec::new(),
            index: RTree::new(),
            users: Vec::new(),
            user_ids: HashMap::new(),
            dirty: HashSet::new(),
            timers: BTreeMap::new(),
            evacuees: HashSet::new(),
            loaded: Vec::new(),
            reindex: false,
            everyone: false,
            eligible_sites: 0,
            unresolved: HashSet::new(),
            rounds: 0,
            stamps: Vec::new(),
            ranked: Vec::new(),
        }
    }

    fn site_index(&mut self, id: &str) -> u32 {
        if let Some(&i) = self.site_ids.get(id) {
            return i;
        }
        let i = self.sites.len() as u32;
        self.sites.push(Site {
            view: None,
            load: 0,
            eligible: false,
            dependents: HashSet::new(),
            placed: HashSet::new(),
        });
        self.site_ids.insert(id.to_owned(), i);
        self.site_names.push(Arc::from(id));
        // Reports that measured a time to this site before anyone named it.
        let waiting: Vec<u32> = self.unresolved.iter().copied().collect();
        for u in waiting {
            let Some(report) = self.users[u as usize].report.as_mut() else { continue };
            let (named, rest): (Vec<_>, Vec<_>) = report.unresolved.drain(..).partition(|(s, _)| &**s == id);
            report.unresolved = rest;
            report.rtt_ms.extend(named.into_iter().map(|(_, rtt)| (i, rtt)));
            if report.unresolved.is_empty() {
                self.unresolved.remove(&u);
            }
        }
        i
    }

    fn user_index(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.user_ids.get(name) {
            return i;
        }
        let i = self.users.len() as u32;
        self.users.push(User {
            name: Arc::from(name),
            site: None,
            migrating: false,
            report: None,
            candidate: None,
            depends_on: Vec::new(),
        });
        self.user_ids.insert(name.to_owned(), i);
        i
    }

    /// A site as the registry has it now (added, or changed: health, draining, capacity, phones, position).
    pub fn set_site(&mut self, view: SiteView) {
        let i = self.site_index(&view.id);
        let site = &mut self.sites[i as usize];
        let old = site.view.replace(view);
        let view = site.view.as_ref().expect("just set");
        let moved = old.as_ref().is_none_or(|o| o.lat != view.lat || o.lon != view.lon);
        let kept = old.as_ref().is_some_and(|o| o.healthy && !o.draining);
        site.load = view.phones;
        if moved {
            // A new or moved site may be anyone's better site: everyone is looked at, once, next round.
            self.reindex = true;
            self.everyone = true;
        }
        if kept != site.keeps_phones() {
            let placed: Vec<u32> = site.placed.iter().copied().collect();
            let keeps = site.keeps_phones();
            for user in placed {
                if keeps {
                    self.evacuees.remove(&user);
                    self.dirty.insert(user);
                } else if !self.users[user as usize].migrating {
                    self.evacuees.insert(user);
                }
            }
        }
        self.eligibility_may_change(i, None);
    }

    /// `user`'s phone is placed on site `site` (a new phone, or moved), migrating or not.
    pub fn set_phone(&mut self, user: &str, site: &str, migrating: bool) {
        let (u, s) = (self.user_index(user), self.site_index(site));
        let entry = &mut self.users[u as usize];
        if let Some(old) = entry.site.replace(s)
            && old != s
        {
            self.sites[old as usize].placed.remove(&u);
        }
        entry.migrating = migrating;
        self.sites[s as usize].placed.insert(u);
        if !migrating && !self.sites[s as usize].keeps_phones() {
            self.evacuees.insert(u);
        } else {
            self.evacuees.remove(&u);
        }
        self.dirty.insert(u);
    }

    /// `user` has no phone any more.
    pub fn remove_phone(&mut self, user: &str) {
        let Some(&u) = self.user_ids.get(user) else { return };
        if let Some(site) = self.users[u as usize].site.take() {
            self.sites[site as usize].placed.remove(&u);
        }
        self.evacuees.remove(&u);
        // Its clock stops at the next round (a phone placed again before it keeps it, as decide sees it).
        self.dirty.insert(u);
    }

    /// `user`'s latest report (replacing any before it).
    pub fn report(&mut self, report: &TerminalReport) {
        let u = self.user_index(&report.user);
        let (mut rtt_ms, mut unresolved) = (Vec::new(), Vec::new());
        for (site, &rtt) in report.rtt_ms.iter().filter(|(_, rtt)| rtt.is_finite() && **rtt >= 0.0) {
            match self.site_ids.get(site.as_str()) {
                Some(&s) => rtt_ms.push((s, rtt)),
                None => unresolved.push((Box::from(site.as_str()), rtt)),
            }
        }
        if unresolved.is_empty() {
            self.unresolved.remove(&u);
        } else {
            self.unresolved.insert(u);
        }
        let position = report.position();
        self.users[u as usize].report = Some(Report { at_ms: report.at_ms, position, rtt_ms, unresolved });
        self.dirty.insert(u);
    }

    /// The site `user`'s phone is placed on, if it has one.
    pub fn site_of(&self, user: &str) -> Option<&str> {
        let u = *self.user_ids.get(user)?;
        self.users[u as usize].site.map(|s| self.id(s))
    }

    /// Whether `user`'s phone is migrating (left alone).
    pub fn migrating(&self, user: &str) -> bool {
        self.user_ids.get(user).is_some_and(|&u| self.users[u as usize].migrating)
    }

    /// Every user with a placed phone.
    pub fn placed_users(&self) -> impl Iterator<Item = &str> {
        self.users.iter().filter(|u| u.site.is_some()).map(|u| &*u.name)
    }

    /// How many phones are placed on site `id`.
    pub fn placed_on(&self, id: &str) -> u32 {
        self.site_ids.get(id).map_or(0, |&s| self.sites[s as usize].placed.len() as u32)
    }

    /// Since when `user` has continuously had a better site, if they have one now (as
    /// [`PolicyState::candidate_since`](super::PolicyState::candidate_since)).
    pub fn candidate_since(&self, user: &str) -> Option<u64> {
        self.user_ids.get(user).and_then(|&u| self.users[u as usize].candidate).map(|(_, since)| since)
    }

    /// Every running dwell clock: user, the site it started on, since when.
    pub fn candidates(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.users.iter().filter_map(move |u| {
            let (from, since) = u.candidate?;
            Some((&*u.name, self.id(from), since))
        })
    }

    /// One round at `now_ms`: the moves [`decide`](super::decide) would return for the same inputs and history.
    pub fn decide(&mut self, now_ms: u64) -> Vec<Move> {
        if std::mem::take(&mut self.reindex) {
            let points =
                self.sites.iter().enumerate().filter_map(|(i, s)| {
                    s.view.as_ref().map(|v| SitePoint { xyz: unit(v.lat, v.lon), site: i as u32 })
                });
            self.index = RTree::bulk_load(points.collect());
        }
        // Loads back to the registry's counts (the moves of the last round are in them now, or not, as the
        // caller says).
        for i in std::mem::take(&mut self.loaded) {
            let site = &mut self.sites[i as usize];
            site.load = site.view.as_ref().map_or(0, |v| v.phones);
            self.eligibility_may_change(i, None);
        }
        if std::mem::take(&mut self.everyone) {
            self.dirty.extend(0..self.users.len() as u32);
        }
        let due: Vec<u64> = self.timers.range(..=now_ms).map(|(&t, _)| t).collect();
        for t in due {
            let users = self.timers.remove(&t).unwrap_or_default();
            self.dirty.extend(users);
        }
        let mut moves = Vec::new();

        // Rule 2: evacuations, every one each round until it moves, in user order.
        let mut evacuees: Vec<u32> = self.evacuees.iter().copied().collect();
        evacuees.sort_by(|a, b| self.users[*a as usize].name.cmp(&self.users[*b as usize].name));
        self.rounds = self.rounds.wrapping_add(1).max(1);
        let mut queue = Queue::new(std::mem::take(&mut self.stamps), self.users.len(), self.rounds);
        for u in evacuees {
            if let Some(mv) = self.evacuate(u, now_ms, &mut queue) {
                moves.push(mv);
            }
        }

        // Rule 3: the users whose decision may have changed, in user order; a move that fills a site or frees
        // it adds the users that depended on it (those after this one this round, the others next round).
        for u in std::mem::take(&mut self.dirty) {
            let user = &self.users[u as usize];
            match user.site {
                Some(site) if !user.migrating => {
                    if self.sites[site as usize].keeps_phones() {
                        queue.add(&user.name, u);
                    }
                }
                // Not placed, or migrating: left alone, its clock stopped.
                _ => {
                    self.users[u as usize].candidate = None;
                    self.set_depends_on(u, Vec::new());
                }
            }
        }
        queue.start();
        while let Some((name, u)) = queue.pop() {
            if let Some(mv) = self.follow(u, now_ms, &name, &mut queue) {
                moves.push(mv);
            }
        }
        self.stamps = queue.stamp;
        moves
    }

    /// Re-checks site `i`'s eligibility; on a change, its dependents are looked at again: in this round's
    /// `queue` when they come after `after` in user order (or whenever a queue is given without a position),
    /// else next round.
    fn eligibility_may_change(&mut self, i: u32, during: Option<(&mut Queue, Option<&str>)>) {
        let site = &mut self.sites[i as usize];
        let eligible = site.eligible_now();
        if eligible == site.eligible {
            return;
        }
        site.eligible = eligible;
        if eligible {
            self.eligible_sites += 1;
        } else {
            self.eligible_sites -= 1;
        }
        let dependents: Vec<u32> = site.dependents.iter().copied().collect();
        match during {
            None => self.dirty.extend(dependents),
            Some((queue, after)) => {
                for u in dependents {
                    let user = &self.users[u as usize];
                    let stays = user.site.is_some_and(|s| self.sites[s as usize].keeps_phones()) && !user.migrating;
                    if !stays {
                        continue;
                    }
                    if after.is_none_or(|after| &*user.name > after) {
                        let name = user.name.clone();
                        queue.push(&name, u);
                    } else {
                        self.dirty.insert(u);
                    }
                }
            }
        }
    }

    /// A move to site `to` decided this round: its load grows.
    fn take_room(&mut self, to: u32, queue: &mut Queue, after: Option<&str>) {
        self.sites[to as usize].load += 1;
        self.loaded.push(to);
        self.eligibility_may_change(to, Some((queue, after)));
    }

    fn set_depends_on(&mut self, u: u32, sites: Vec<u32>) {
        let old = std::mem::replace(&mut self.users[u as usize].depends_on, sites);
        if old.is_empty() && self.users[u as usize].depends_on.is_empty() {
            return;
        }
        for s in old {
            self.sites[s as usize].dependents.remove(&u);
        }
        for &s in &self.users[u as usize].depends_on {
            self.sites[s as usize].dependents.insert(u);
        }
    }

    fn fresh_report(&self, u: u32, now_ms: u64) -> Option<&Report> {
        let report = self.users[u as usize].report.as_ref()?;
        (now_ms.saturating_sub(report.at_ms) <= self.params.report_max_age_ms).then_some(report)
    }

    fn schedule(&mut self, at_ms: u64, u: u32) {
        self.timers.entry(at_ms).or_default().push(u);
    }

    fn id(&self, site: u32) -> &str {
        &self.site_names[site as usize]
    }

    /// Rule 2 for user `u` (on a site that keeps no phones): the best eligible site by the report, else by
    /// where the old site stands.
    fn evacuate(&mut self, u: u32, now_ms: u64, queue: &mut Queue) -> Option<Move> {
        let user = &self.users[u as usize];
        let current = user.site?;
        self.users[u as usize].candidate = None;
        self.set_depends_on(u, Vec::new());
        if self.eligible_sites == 0 {
            // Nowhere to go (every site down, draining or full): stays until a site has room.
            return None;
        }
        let report = self.fresh_report(u, now_ms).cloned();
        let origin = self.sites[current as usize].view.as_ref().map(|v| (v.lat, v.lon));
        let position = report.as_ref().and_then(|r| r.position).or(origin);
        let eligible = |w: &World, s: u32| s != current && w.sites[s as usize].eligible;
        let mut best: Option<(f64, u32)> = None;
        let consider = |w: &World, score: f64, s: u32, best: &mut Option<(f64, u32)>| {
            let better = match *best {
                None => true,
                Some((b, bs)) => score.total_cmp(&b).then_with(|| w.id(s).cmp(w.id(bs))) == Ordering::Less,
            };
            if better {
                *best = Some((score, s));
            }
        };
        let measured = report.as_ref().map_or(&[][..], |r| &r.rtt_ms[..]);
        for &(s, rtt) in measured {
            if self.sites[s as usize].view.is_some() && eligible(self, s) {
                consider(self, rtt, s, &mut best);
            }
        }
        let is_measured = |s: u32| measured.iter().any(|(m, _)| *m == s);
        match position {
            Some((lat, lon)) if self.params.rtt_ms_per_100km <= 0.0 => {
                // Distance changes no score (a flat estimate): every eligible unmeasured site, ties by id.
                for s in 0..self.sites.len() as u32 {
                    if let Some(view) = self.sites[s as usize].view.as_ref()
                        && !is_measured(s)
                        && eligible(self, s)
                    {
                        consider(self, estimate_rtt_ms(&self.params, lat, lon, view), s, &mut best);
                    }
                }
            }
            Some((lat, lon)) => {
                // The nearest eligible unmeasured site, and any as near as it (ties by id).
                let point = unit(lat, lon);
                let mut edge = None;
                for (p, d2) in self.index.nearest_neighbor_iter_with_distance_2(point) {
                    if edge.is_some_and(|e| d2 > e) {
                        break;
                    }
                    if is_measured(p.site) || !eligible(self, p.site) {
                        continue;
                    }
                    edge.get_or_insert(d2 * (1.0 + 1e-9) + 1e-15);
                    let view = self.sites[p.site as usize].view.as_ref().expect("indexed sites are registered");
                    consider(self, estimate_rtt_ms(&self.params, lat, lon, view), p.site, &mut best);
                }
            }
            None if best.is_none() => {
                // No score for any unmeasured site: unknown scores rank last, by id.
                let mut by_id: Option<u32> = None;
                for s in 0..self.sites.len() as u32 {
                    if self.sites[s as usize].view.is_some()
                        && !is_measured(s)
                        && eligible(self, s)
                        && by_id.is_none_or(|b| self.id(s) < self.id(b))
                    {
                        by_id = Some(s);
                    }
                }
                best = by_id.map(|s| (f64::INFINITY, s));
            }
            None => {}
        }
        let (_, to) = best?;
        let reason = match self.sites[current as usize].view.as_ref() {
            Some(v) if v.healthy => MoveReason::Draining,
            _ => MoveReason::SiteDown,
        };
        let name = self.users[u as usize].name.clone();
        self.take_room(to, queue, None);
        Some(Move { user: name.to_string(), from: self.id(current).to_owned(), to: self.id(to).to_owned(), reason })
    }

    /// Rule 3 for user `u` (on a site that keeps phones): follow the user, with margin and dwell.
    fn follow(&mut self, u: u32, now_ms: u64, name: &Arc<str>, queue: &mut Queue) -> Option<Move> {
        let current = self.users[u as usize].site?;
        let mut ranked = std::mem::take(&mut self.ranked);
        ranked.clear();
        let scored = self.rank_better_sites(u, current, now_ms, &mut ranked);
        let chosen = ranked.iter().position(|(_, s)| self.sites[*s as usize].eligible);
        // What this result depends on: the sites ranked up to the chosen one (all of them if none is eligible).
        let depends_on = ranked[..chosen.map_or(ranked.len(), |c| c + 1)].iter().map(|c| c.1).collect();
        self.set_depends_on(u, depends_on);
        let decided = match (scored, chosen) {
            (Some((current_ms, report_at)), Some(chosen)) => Some((current_ms, report_at, ranked[chosen])),
            _ => None,
        };
        self.ranked = ranked;
        let Some((current_ms, report_at, (to_ms, to))) = decided else {
            self.users[u as usize].candidate = None;
            return None;
        };
        let user = &mut self.users[u as usize];
        let since = match user.candidate {
            Some((from, since)) if from == current => since,
            _ => now_ms,
        };
        user.candidate = Some((current, since));
        if now_ms.saturating_sub(since) >= self.params.dwell_ms {
            user.candidate = None;
            self.take_room(to, queue, Some(name));
            let from = self.id(current).to_owned();
            let reason = MoveReason::Closer { from_ms: current_ms, to_ms };
            return Some(Move { user: name.to_string(), from, to: self.id(to).to_owned(), reason });
        }
        // Looked at again when the clock comes due, or when the report goes stale (which stops the clock).
        self.schedule(since.saturating_add(self.params.dwell_ms), u);
        self.schedule(report_at.saturating_add(self.params.report_max_age_ms).saturating_add(1), u);
        None
    }

    /// The sites that would beat `u`'s current site by the policy's margin, into `ranked`, best first (score,
    /// then id), eligible or not; and the current site's score and the report's time. `None` without a fresh
    /// report or a score for the current site.
    fn rank_better_sites(&self, u: u32, current: u32, now_ms: u64, ranked: &mut Vec<(f64, u32)>) -> Option<(f64, u64)> {
        let params = &self.params;
        let report = self.fresh_report(u, now_ms)?;
        let view = self.sites[current as usize].view.as_ref().expect("a site that keeps phones is registered");
        let current_ms = match (report.measured(current), report.position) {
            (Some(rtt), _) => rtt,
            (None, Some((lat, lon))) => estimate_rtt_ms(params, lat, lon, view),
            (None, None) => return None,
        };
        let passes = |to_ms: f64| {
            let gain = current_ms - to_ms;
            gain >= params.min_gain_ms && gain >= params.min_gain_ratio * current_ms
        };
        // Measured ones by their time, the others by their distance: those close enough found in the index.
        for &(s, rtt) in &report.rtt_ms {
            if s != current && self.sites[s as usize].view.is_some() && passes(rtt) {
                ranked.push((rtt, s));
            }
        }
        if let Some((lat, lon)) = report.position {
            let worst_ms = (current_ms - params.min_gain_ms).min(current_ms - params.min_gain_ratio * current_ms);
            // A flat estimate (no slope) reaches everywhere or nowhere.
            let reach_km = if params.rtt_ms_per_100km > 0.0 {
                (worst_ms - params.base_rtt_ms) / params.rtt_ms_per_100km * 100.0
            } else if params.base_rtt_ms <= worst_ms {
                f64::INFINITY
            } else {
                -1.0
            };
            let mut consider = |p: &SitePoint| {
                if p.site == current || report.measured(p.site).is_some() {
                    return None;
                }
                let site = self.sites[p.site as usize].view.as_ref().expect("indexed sites are registered");
                let to_ms = estimate_rtt_ms(params, lat, lon, site);
                passes(to_ms).then(|| {
                    ranked.push((to_ms, p.site));
                    self.sites[p.site as usize].eligible
                })
            };
            if reach_km >= 0.0 && params.rtt_ms_per_100km > 0.0 {
                // Nearest first, up to the first eligible site (and any as near as it): the sites beyond it
                // cannot rank before it.
                let (reach_2, mut edge) = (chord_2_of_km(reach_km), None);
                for (p, d2) in self.index.nearest_neighbor_iter_with_distance_2(unit(lat, lon)) {
                    if d2 > reach_2 || edge.is_some_and(|e| d2 > e) {
                        break;
                    }
                    if consider(p) == Some(true) && edge.is_none() {
                        edge = Some(d2 * (1.0 + 1e-9) + 1e-15);
                    }
                }
            } else if reach_km >= 0.0 {
                // A flat estimate: every site scores the same, ties by id.
                for p in self.index.iter() {
                    consider(p);
                }
            }
        }
        ranked.sort_by(|(a, sa), (b, sb)| a.total_cmp(b).then_with(|| self.id(*sa).cmp(self.id(*sb))));
        Some((current_ms, report.at_ms))
    }
}

#[cfg(test)]
mod tests {
    //! The incremental placer against the full recomputation ([`decide`](super::super::decide)) on random worlds:
    //! the same moves, in the same order, with the same reasons, and the same dwell clocks, round after round.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::super::{PhoneView, PolicyInput, PolicyState, decide};
    use super::*;

    /// One change between two rounds.
    #[derive(Debug, Clone)]
    enum Change {
        /// A report from user `.0`: a position on a small grid (or none) and measured times to sites (an index
        /// past the sites names an unregistered one; some times are not valid).
        Report(usize, Option<(i8, i8)>, Vec<(usize, f64)>),
        Health(usize, bool),
        Drain(usize, bool),
        Capacity(usize, u32),
        /// A migrating phone's move ends: it landed (`true`) or stayed.
        Finish(usize, bool),
        /// The phone of user `.0` is removed, or placed again on site `.1`.
        Replace(usize, Option<usize>),
        /// The next reserved site is registered.
        Register,
    }

    #[derive(Debug, Clone)]
    struct Round {
        changes: Vec<Change>,
        advance_ms: u64,
        /// Moves land at once (an instant migration), or the phones are marked migrating.
        apply: bool,
    }

    fn change(sites: usize, users: usize) -> impl Strategy<Value = Change> {
        let rtt = prop_oneof![8 => 0.0..12.0f64, 1 => Just(f64::NAN), 1 => Just(-1.0)];
        prop_oneof![
            6 => (0..users, proptest::option::weighted(0.85, (-3i8..=3, -1i8..=1)), proptest::collection::vec((0..sites + 1, rtt), 0..3))
                .prop_map(|(u, p, r)| Change::Report(u, p, r)),
            1 => (0..sites, proptest::bool::weighted(0.7)).prop_map(|(s, h)| Change::Health(s, h)),
            1 => (0..sites, proptest::bool::weighted(0.2)).prop_map(|(s, d)| Change::Drain(s, d)),
            1 => (0..sites, 0u32..5).prop_map(|(s, c)| Change::Capacity(s, c)),
            2 => (0..users, any::<bool>()).prop_map(|(u, l)| Change::Finish(u, l)),
            1 => (0..users, proptest::option::of(0..sites + 1)).prop_map(|(u, s)| Change::Replace(u, s)),
            1 => Just(Change::Register),
        ]
    }

    /// A world: sites on a grid (ties in distance happen), their capacities, where each user's phone starts,
    /// the policy's knobs, and the rounds.
    /// Sites (grid longitude, grid latitude, capacity), each user's first site, the knobs, the rounds.
    type RandomWorld = (Vec<(i8, i8, u32)>, Vec<usize>, PolicyParams, Vec<Round>);

    fn world() -> impl Strategy<Value = RandomWorld> {
        (2usize..12, 1usize..30).prop_flat_map(|(sites, users)| {
            let params = (
                prop_oneof![Just(3_000u64), Just(60_000)],
                prop_oneof![Just(0u64), Just(2_000), Just(10_000)],
                prop_oneof![Just(0.0), Just(0.2)],
                prop_oneof![Just(0.0), Just(2.0)],
                prop_oneof![Just(1.0), Just(0.0)],
            )
                .prop_map(|(max_age, dwell, ratio, gain, slope)| PolicyParams {
                    report_max_age_ms: max_age,
                    dwell_ms: dwell,
                    min_gain_ratio: ratio,
                    min_gain_ms: gain,
                    rtt_ms_per_100km: slope,
                    ..PolicyParams::default()
                });
            let round = (proptest::collection::vec(change(sites, users), 0..6), 0u64..4_000, any::<bool>())
                .prop_map(|(changes, advance_ms, apply)| Round { changes, advance_ms, apply });
            (
                proptest::collection::vec((-3i8..=3, -1i8..=1, 0u32..5), sites + 1),
                proptest::collection::vec(0..sites + 2, users),
                params,
                proptest::collection::vec(round, 1..30),
            )
        })
    }

    const T0: u64 = 1_700_000_000_000;

    fn site_id(i: usize) -> String {
        format!("s{i}")
    }

    fn user_id(i: usize) -> String {
        // Not in index order (user order is by name), and one name per user (7 and 31 are coprime; fewer than
        // 31 users).
        format!("u{}", (i * 7) % 31)
    }

    /// Times a terminal measured to sites nobody registered do not become sites (a device cannot grow the
    /// world), and are taken up if such a site registers: then they rank it as `decide` does.
    #[test]
    fn made_up_site_ids_in_reports_are_kept_apart_until_a_site_registers() {
        let site = |id: &str, lon: f64| SiteView {
            id: id.into(),
            lat: 0.0,
            lon,
            capacity: 10,
            phones: 0,
            healthy: true,
            draining: false,
        };
        let params = PolicyParams { dwell_ms: 0, ..PolicyParams::default() };
        let mut world = World::new(params.clone());
        world.set_site(site("a", 0.0));
        world.set_phone("u", "a", false);
        let rtt: BTreeMap<String, f64> = (0..64).map(|i| (format!("made-up-{i}"), 1.0)).collect();
        let mut report = TerminalReport { user: "u".into(), at_ms: T0, lat: None, lon: None, rtt_ms: rtt };
        report.rtt_ms.insert("a".into(), 40.0);
        world.report(&report);
        assert_eq!(world.decide(T0), Vec::new());
        assert_eq!(world.sites.len(), 1, "no site made of a report's ids");
        let mut input = PolicyInput {
            sites: vec![site("a", 0.0)],
            phones: vec![PhoneView { user: "u".into(), site: "a".into(), migrating: false }],
            reports: [("u".to_owned(), report)].into(),
        };
        // One of them registers, far away: only the measured time can make it better.
        world.set_site(site("made-up-7", 90.0));
        input.sites.push(site("made-up-7", 90.0));
        let expected = decide(&mut PolicyState::new(), &input, T0 + 1, &params);
        assert_eq!(expected.len(), 1, "{expected:?}");
        assert_eq!(world.decide(T0 + 1), expected);
        assert_eq!(world.sites.len(), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3_000, ..ProptestConfig::default() })]
        #[test]
        fn the_incremental_placer_decides_what_a_full_recomputation_decides(
            (layout, starts, params, rounds) in world()
        ) {
            // The last site of the layout is reserved: registered by a `Register` change. A start past the
            // layout places the phone on a site nobody registered.
            let mut registered = layout.len() - 1;
            let view = |i: usize| {
                let (lon, lat, capacity) = layout[i];
                SiteView {
                    id: site_id(i),
                    lat: f64::from(lat) * 0.5,
                    lon: f64::from(lon) * 0.9,
                    capacity,
                    phones: 0,
                    healthy: true,
                    draining: false,
                }
            };
            let mut input = PolicyInput { sites: (0..registered).map(view).collect(), ..PolicyInput::default() };
            for (u, &s) in starts.iter().enumerate() {
                input.phones.push(PhoneView { user: user_id(u), site: site_id(s), migrating: false });
            }
            let mut state = PolicyState::new();
            let mut world = World::new(params.clone());
            let count = |input: &mut PolicyInput| {
                for site in input.sites.iter_mut() {
                    site.phones = input.phones.iter().filter(|p| p.site == site.id).count() as u32;
                }
            };
            count(&mut input);
            for site in &input.sites {
                world.set_site(site.clone());
            }
            for phone in &input.phones {
                world.set_phone(&phone.user, &phone.site, phone.migrating);
            }
            // Where each migrating phone was going.
            let mut going: HashMap<String, String> = HashMap::new();
            let mut now = T0;
            for round in rounds {
                for change in round.changes {
                    match change {
                        Change::Report(u, position, rtts) => {
                            let report = TerminalReport {
                                user: user_id(u),
                                at_ms: now,
                                lat: position.map(|(_, lat)| f64::from(lat) * 0.5),
                                lon: position.map(|(lon, _)| f64::from(lon) * 0.9),
                                rtt_ms: rtts.into_iter().map(|(s, rtt)| (site_id(s), rtt)).collect::<BTreeMap<_, _>>(),
                            };
                            world.report(&report);
                            input.reports.insert(report.user.clone(), report);
                        }
                        Change::Health(s, healthy) => {
                            if let Some(site) = input.sites.get_mut(s) { site.healthy = healthy; }
                        }
                        Change::Drain(s, draining) => {
                            if let Some(site) = input.sites.get_mut(s) { site.draining = draining; }
                        }
                        Change::Capacity(s, capacity) => {
                            if let Some(site) = input.sites.get_mut(s) { site.capacity = capacity; }
                        }
                        Change::Finish(u, landed) => {
                            let user = user_id(u);
                            if let Some(phone) = input.phones.iter_mut().find(|p| p.user == user && p.migrating) {
                                phone.migrating = false;
                                if let Some(to) = going.remove(&user).filter(|_| landed) {
                                    phone.site = to;
                                }
                                world.set_phone(&phone.user, &phone.site, false);
                            }
                        }
                        Change::Replace(u, site) => {
                            let user = user_id(u);
                            input.phones.retain(|p| p.user != user);
                            going.remove(&user);
                            world.remove_phone(&user);
                            if let Some(s) = site {
                                input.phones.push(PhoneView { user: user.clone(), site: site_id(s), migrating: false });
                                world.set_phone(&user, &site_id(s), false);
                            }
                        }
                        Change::Register => {
                            if registered < layout.len() {
                                input.sites.push(view(registered));
                                registered += 1;
                            }
                        }
                    }
                }
                count(&mut input);
                for site in &input.sites {
                    world.set_site(site.clone());
                }
                now += round.advance_ms;
                let full = decide(&mut state, &input, now, &params);
                let incremental = world.decide(now);
                prop_assert_eq!(&incremental, &full, "moves at {}", now - T0);
                let mut clocks: Vec<(String, String, u64)> =
                    world.candidates().map(|(u, s, t)| (u.to_owned(), s.to_owned(), t)).collect();
                clocks.sort();
                prop_assert_eq!(clocks, state.clocks(), "dwell clocks at {}", now - T0);
                for mv in full {
                    let phone = input.phones.iter_mut().find(|p| p.user == mv.user).expect("a placed phone moved");
                    if round.apply {
                        phone.site = mv.to.clone();
                    } else {
                        phone.migrating = true;
                        going.insert(mv.user.clone(), mv.to.clone());
                    }
                    world.set_phone(&phone.user, &phone.site, phone.migrating);
                }
            }
        }
    }
}
