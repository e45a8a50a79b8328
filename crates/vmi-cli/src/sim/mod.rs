//! `vmi sim`: the placer on real mobility. SUMO drives cars through a generated city, pedestrians walk between
//! its junctions, edge sites stand where the roads are; each user's terminal reports its position when its cell
//! changes (and when a session starts), as a sleeping terminal would. The real incremental placer
//! ([`World`], what the control service runs) places their phones, beside three baselines fed the same reports:
//! always the nearest site (no hysteresis), placed at each session's start and never moved during it (what Anbox
//! Cloud's gateway does), and never moved from where the phone first was.
//!
//! Measured per policy, against where users truly are: the fraction of user-time on a site within 2 ms of the
//! best one (by the RTT model the placer uses, which is also the simulation's truth), migrations per user-hour,
//! ping-pongs (back to the site left less than 5 minutes before), the load of the busiest site over the mean,
//! and the control plane's writes a second. docs/PLACEMENT.md "On real mobility" has the method and figures.

mod mobility;
mod sumo;
mod towers;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use vmi_control::placement::{PolicyParams, SiteView, World, estimate_rtt_ms};
use vmi_control_api::model::TerminalReport;

use crate::bench::round;
use crate::rng::Rng;
pub use sumo::CityParams;

/// A site is "the best" for a user if no other is this much faster (ms).
const ON_BEST_WITHIN_MS: f64 = 2.0;
/// A return to the site left less than this long before is a ping-pong (ms).
const PINGPONG_WITHIN_MS: u64 = 5 * 60 * 1000;
/// Store writes a migration costs the control plane: the placement's compare-and-set and the log's record.
const WRITES_PER_MIGRATION: f64 = 2.0;
/// The longest trace simulated, in steps (a week of 10 s steps).
const MAX_STEPS: usize = 7 * 24 * 360;
/// The simulation's clock starts here (a wall-clock time, as the placer sees in service).
const T0_MS: u64 = 1_700_000_000_000;

/// `vmi sim`'s flags.
#[derive(Debug, clap::Args)]
pub struct SimCliArgs {
    /// Junctions of the generated city (`netgenerate --rand.iterations`; 2,000 span about 45 × 45 km).
    #[arg(long, default_value_t = 2_000)]
    junctions: usize,
    /// Car trips (each a user with a phone), starting over --minutes.
    #[arg(long, default_value_t = 900)]
    trips: usize,
    /// Minutes during which trips start (the simulation runs until they end).
    #[arg(long, default_value_t = 60)]
    minutes: u64,
    /// Pedestrians, present the whole time.
    #[arg(long, default_value_t = 500)]
    pedestrians: usize,
    /// Sites' spacing where the roads are as dense as on average, km.
    #[arg(long, default_value_t = 4.0)]
    site_spacing_km: f64,
    /// The RTT model's slope, ms per 100 km (metro backhaul with its switching; the placer's knob of the
    /// same name, which the simulation also takes as the truth).
    #[arg(long, default_value_t = 20.0)]
    rtt_ms_per_100km: f64,
    /// A new session starts this often while a user is present (the placed-once baseline moves then).
    #[arg(long, default_value_t = 10)]
    session_minutes: u64,
    /// Seed of SUMO, the pedestrians and the sites.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Use this SUMO network (with --fcd) instead of generating a city.
    #[arg(long, requires = "fcd")]
    net: Option<PathBuf>,
    /// Use this SUMO floating-car data (with --net, one position every 10 s).
    #[arg(long, requires = "net")]
    fcd: Option<PathBuf>,
}

/// Runs `vmi sim` and prints its figures.
pub fn run(cli: SimCliArgs) -> Result<()> {
    if cli.junctions < 2 || cli.trips == 0 || cli.minutes == 0 {
        bail!("--junctions must be at least 2, --trips and --minutes at least 1");
    }
    if !(cli.site_spacing_km > 0.0 && cli.site_spacing_km.is_finite()) {
        bail!("--site-spacing-km must be a positive number of kilometres");
    }
    if !(cli.rtt_ms_per_100km >= 0.0 && cli.rtt_ms_per_100km.is_finite()) {
        bail!("--rtt-ms-per-100km must be 0 or more");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("vmi/sim");
    let args = SimArgs {
        city: CityParams {
            junctions: cli.junctions,
            trips: cli.trips,
            minutes: cli.minutes,
            min_trip_m: 8_000,
            seed: cli.seed,
            period_s: 10,
        },
        trace: cli.net.zip(cli.fcd),
        pedestrians: cli.pedestrians,
        spacing_m: cli.site_spacing_km * 1000.0,
        params: PolicyParams { rtt_ms_per_100km: cli.rtt_ms_per_100km, ..PolicyParams::default() },
        session_ms: cli.session_minutes.max(1) * 60_000,
        cell_m: 1_000.0,
        seed: cli.seed,
        cache,
    };
    crate::bench::print(sim(&args)?)
}

/// What [`sim`] runs.
#[derive(Debug, Clone)]
pub struct SimArgs {
    /// The city SUMO generates (ignored with `trace`).
    pub city: CityParams,
    /// A SUMO network and floating-car data of one's own instead: `(net.xml, fcd.xml)`.
    pub trace: Option<(PathBuf, PathBuf)>,
    /// Pedestrians walking the whole time.
    pub pedestrians: usize,
    /// Sites' spacing where the roads are as dense as on average, metres.
    pub spacing_m: f64,
    /// The placer's knobs (and the RTT model, which the simulation also takes as the truth).
    pub params: PolicyParams,
    /// A new session starts this often while a user is present (placed-once moves the phone then).
    pub session_ms: u64,
    /// A terminal reports its position when it enters another square cell of this side, metres.
    pub cell_m: f64,
    /// Seed of the pedestrians and the sites' layout.
    pub seed: u64,
    /// Where generated cities are kept.
    pub cache: PathBuf,
}

/// The four placements compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The control service's placer ([`World`]).
    Ours,
    /// The nearest site with room, at every report.
    NearestAlways,
    /// The nearest site with room at each session's start, then never moved during the session.
    PlacedOnce,
    /// Where the phone first was, for good.
    NeverMoved,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Ours, Kind::NearestAlways, Kind::PlacedOnce, Kind::NeverMoved];

    fn name(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::NearestAlways => "nearest_always",
            Kind::PlacedOnce => "placed_once",
            Kind::NeverMoved => "never_moved",
        }
    }
}

/// One placement's run: where each phone is, each site's load, and the tally.
struct Run {
    kind: Kind,
    world: Option<World>,
    site_of: Vec<Option<usize>>,
    load: Vec<u32>,
    /// Sites whose load changed since the world was last told.
    dirty: Vec<usize>,
    /// Per user: the site they last left and when.
    left: Vec<Option<(usize, u64)>>,
    tally: Tally,
}

#[derive(Default)]
struct Tally {
    user_steps: u64,
    on_best: u64,
    excess_ms: f64,
    migrations: u64,
    pingpongs: u64,
    load_ratio_sum: f64,
    load_ratio_max: f64,
    load_steps: u64,
}

impl Run {
    fn new(kind: Kind, users: usize, sites: &[SiteView], params: &PolicyParams) -> Run {
        let world = (kind == Kind::Ours).then(|| {
            let mut world = World::new(params.clone());
            for site in sites {
                world.set_site(site.clone());
            }
            world
        });
        Run {
            kind,
            world,
            site_of: vec![None; users],
            load: vec![0; sites.len()],
            dirty: Vec::new(),
            left: vec![None; users],
            tally: Tally::default(),
        }
    }

    /// Puts user `u`'s phone on `site` (placing it if it had none); a change of site is a migration.
    fn place(&mut self, u: usize, site: usize, now_ms: u64, sites: &[SiteView]) {
        let from = self.site_of[u];
        if from == Some(site) {
            return;
        }
        if let Some(from) = from {
            self.load[from] -= 1;
            self.dirty.push(from);
            self.tally.migrations += 1;
            if self.left[u].is_some_and(|(s, at)| s == site && now_ms - at < PINGPONG_WITHIN_MS) {
                self.tally.pingpongs += 1;
            }
            self.left[u] = Some((from, now_ms));
        }
        self.load[site] += 1;
        self.dirty.push(site);
        self.site_of[u] = Some(site);
        if let Some(world) = &mut self.world {
            world.set_phone(&user_id(u), &sites[site].id, false);
        }
    }

    /// User `u` is gone (their trip ended): their phone no longer counts on its site.
    fn leave(&mut self, u: usize) {
        if let Some(site) = self.site_of[u].take() {
            self.load[site] -= 1;
            self.dirty.push(site);
        }
        self.left[u] = None;
        if let Some(world) = &mut self.world {
            world.remove_phone(&user_id(u));
        }
    }

    /// Tells the world the loads that changed (as heartbeats would).
    fn sync_loads(&mut self, sites: &[SiteView]) {
        let Some(world) = &mut self.world else {
            self.dirty.clear();
            return;
        };
        self.dirty.sort_unstable();
        self.dirty.dedup();
        for &s in &self.dirty {
            world.set_site(SiteView { phones: self.load[s], ..sites[s].clone() });
        }
        self.dirty.clear();
    }
}

fn user_id(u: usize) -> String {
    format!("user-{u:06}")
}

/// The nearest site to `(lat, lon)` with room under `load` (any site if none has room).
fn nearest_with_room(sites: &[SiteView], load: &[u32], lat: f64, lon: f64, params: &PolicyParams) -> usize {
    let mut best: Option<(f64, usize)> = None;
    let mut any: Option<(f64, usize)> = None;
    for (i, site) in sites.iter().enumerate() {
        let ms = estimate_rtt_ms(params, lat, lon, site);
        if any.is_none_or(|(b, _)| ms < b) {
            any = Some((ms, i));
        }
        if load[i] < site.capacity && best.is_none_or(|(b, _)| ms < b) {
            best = Some((ms, i));
        }
    }
    best.or(any).map_or(0, |(_, i)| i)
}

/// Runs the simulation; its figures, per placement.
pub fn sim(args: &SimArgs) -> Result<Value> {
    let started = std::time::Instant::now();
    let (net, fcd) = match &args.trace {
        Some(files) => files.clone(),
        None => {
            let city = sumo::city(&args.city, &args.cache)?;
            (city.net, city.fcd)
        }
    };
    let step_ms = args.city.period_s.max(1) * 1000;
    let step_s = step_ms as f64 / 1000.0;
    let junctions = sumo::junctions(&net)?;
    let mut tracks = mobility::drivers(sumo::vehicles(&fcd)?, step_s);
    let drivers = tracks.len();
    let steps = tracks.iter().map(|t| t.first + t.positions.len()).max().unwrap_or(0);
    if steps == 0 {
        bail!("{}: no vehicle moves in this trace", fcd.display());
    }
    if steps > MAX_STEPS {
        bail!("{}: the trace spans {steps} steps of {step_s} s; at most {MAX_STEPS} (a week)", fcd.display());
    }
    let mut rng = Rng(args.seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    tracks.extend(mobility::pedestrians(args.pedestrians, &junctions, steps, step_s, &mut rng));
    let users = tracks.len();

    // Sites, each with room for three times its share of the most users present at once.
    let towers = towers::lay_out(&junctions, args.spacing_m, &mut rng);
    let peak = (0..steps).map(|s| tracks.iter().filter(|t| t.at(s).is_some()).count()).max().unwrap_or(0);
    let capacity = u32::try_from((3 * peak).div_ceil(towers.len().max(1)).max(4)).unwrap_or(u32::MAX);
    let sites: Vec<SiteView> = towers
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            let (lat, lon) = mobility::to_lat_lon(x, y);
            SiteView { id: format!("site-{i:04}"), lat, lon, capacity, phones: 0, healthy: true, draining: false }
        })
        .collect();

    let params = &args.params;
    let session_steps = (args.session_ms / step_ms).max(1) as usize;
    let mut runs: Vec<Run> = Kind::ALL.iter().map(|&k| Run::new(k, users, &sites, params)).collect();
    let mut cell: Vec<Option<(i64, i64)>> = vec![None; users];
    let mut reports = 0u64;
    let mut present_steps = 0u64;
    let cell_of = |(x, y): (f64, f64)| ((x / args.cell_m).floor() as i64, (y / args.cell_m).floor() as i64);

    for step in 0..steps {
        let now_ms = T0_MS + step as u64 * step_ms;
        for (u, track) in tracks.iter().enumerate() {
            let Some(at) = track.at(step) else {
                if step == track.first + track.positions.len() {
                    for run in &mut runs {
                        run.leave(u);
                    }
                }
                continue;
            };
            let (lat, lon) = mobility::to_lat_lon(at.0, at.1);
            let appears = step == track.first;
            let session = (step - track.first) % session_steps == 0;
            let moved_cell = cell[u] != Some(cell_of(at));
            if !(appears || session || moved_cell) {
                continue;
            }
            // The terminal reports: a new session, or a new cell.
            cell[u] = Some(cell_of(at));
            reports += 1;
            let report = TerminalReport {
                user: user_id(u),
                at_ms: now_ms,
                lat: Some(lat),
                lon: Some(lon),
                rtt_ms: Default::default(),
            };
            for run in &mut runs {
                let nearest = || nearest_with_room(&sites, &run.load, lat, lon, params);
                if appears {
                    let site = nearest();
                    run.place(u, site, now_ms, &sites);
                } else {
                    match run.kind {
                        Kind::NearestAlways => {
                            let site = nearest();
                            run.place(u, site, now_ms, &sites);
                        }
                        Kind::PlacedOnce if session => {
                            let site = nearest();
                            run.place(u, site, now_ms, &sites);
                        }
                        _ => {}
                    }
                }
                if let Some(world) = &mut run.world {
                    world.report(&report);
                }
            }
        }
        for run in &mut runs {
            run.sync_loads(&sites);
            let moves = run.world.as_mut().map(|world| world.decide(now_ms)).unwrap_or_default();
            for decided in moves {
                let u = decided.user.strip_prefix("user-").and_then(|n| n.parse().ok()).context("a user")?;
                let to = sites.iter().position(|s| s.id == decided.to).context("a site")?;
                run.place(u, to, now_ms, &sites);
            }
            run.sync_loads(&sites);
        }

        // Where everyone truly is, against where each placement has their phone.
        let mut present = 0u32;
        for (u, track) in tracks.iter().enumerate() {
            let Some(at) = track.at(step) else { continue };
            present += 1;
            let (lat, lon) = mobility::to_lat_lon(at.0, at.1);
            let best = sites.iter().map(|s| estimate_rtt_ms(params, lat, lon, s)).fold(f64::INFINITY, f64::min);
            for run in &mut runs {
                let Some(site) = run.site_of[u] else { continue };
                let excess = estimate_rtt_ms(params, lat, lon, &sites[site]) - best;
                run.tally.user_steps += 1;
                run.tally.excess_ms += excess;
                if excess <= ON_BEST_WITHIN_MS {
                    run.tally.on_best += 1;
                }
            }
        }
        present_steps += u64::from(present);
        if present > 0 {
            let mean = f64::from(present) / sites.len() as f64;
            for run in &mut runs {
                let ratio = f64::from(run.load.iter().copied().max().unwrap_or(0)) / mean;
                run.tally.load_ratio_sum += ratio;
                run.tally.load_ratio_max = run.tally.load_ratio_max.max(ratio);
                run.tally.load_steps += 1;
            }
        }
    }

    let user_hours = present_steps as f64 * step_s / 3600.0;
    let span_s = steps as f64 * step_s;
    let mut policies = serde_json::Map::new();
    for run in &runs {
        let t = &run.tally;
        let fraction = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
        policies.insert(
            run.kind.name().to_owned(),
            json!({
                "on_best_site_fraction": round(fraction(t.on_best, t.user_steps), 4),
                "mean_excess_rtt_ms": round(if t.user_steps == 0 { 0.0 } else { t.excess_ms / t.user_steps as f64 }, 3),
                "migrations": t.migrations,
                "migrations_per_user_hour": round(t.migrations as f64 / user_hours.max(1e-9), 3),
                "pingpongs": t.pingpongs,
                "pingpong_fraction": round(fraction(t.pingpongs, t.migrations), 4),
                "load_max_over_mean": round(t.load_ratio_sum / t.load_steps.max(1) as f64, 2),
                "load_max_over_mean_worst": round(t.load_ratio_max, 2),
                "control_writes_per_s": round(t.migrations as f64 * WRITES_PER_MIGRATION / span_s, 3),
            }),
        );
    }
    let ours = &policies["ours"];
    let goals_met = ours["on_best_site_fraction"].as_f64().is_some_and(|f| f >= 0.95)
        && ours["pingpong_fraction"].as_f64().is_some_and(|f| f < 0.01);
    Ok(json!({
        "scenario": {
            "net": net.display().to_string(),
            "fcd": fcd.display().to_string(),
            "junctions": junctions.len(),
            "sites": sites.len(),
            "site_capacity": capacity,
            "drivers": drivers,
            "pedestrians": args.pedestrians,
            "peak_present": peak,
            "step_s": step_s,
            "simulated_hours": round(span_s / 3600.0, 2),
            "user_hours": round(user_hours, 1),
            "reports": reports,
            "reports_per_user_hour": round(reports as f64 / user_hours.max(1e-9), 1),
            "report_cell_m": args.cell_m,
            "session_minutes": args.session_ms as f64 / 60_000.0,
            "rtt_model": format!(
                "{} ms + {} ms per 100 km (the placer's estimate, taken as the truth)",
                params.base_rtt_ms, params.rtt_ms_per_100km
            ),
            "seconds": round(started.elapsed().as_secs_f64(), 1),
        },
        "policies": policies,
        "goals_met": goals_met,
    }))
}
