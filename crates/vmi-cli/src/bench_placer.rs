//! `vmi bench placer`: the placement policy at an operator's scale: ten thousand sites and a million users,
//! through the incremental placer ([`World`]) the control service runs, beside the full recomputation
//! ([`decide`]) on a smaller world for reference.
//!
//! The world: sites scattered over a region of about 1,100 × 1,100 km (as cell sites of a country), users each
//! near a random site with a fresh position report. The figures: a full round (every user looked at, as after a
//! start), a report and the round after it (one user looked at), a second's worth of reports for a million users
//! (one every 30 s each) and the round after them, and the memory held.

use std::time::Instant;

use anyhow::Result;
use vmi_control::placement::{
    PhoneView, PolicyInput, PolicyParams, PolicyState, SiteView, World, decide, estimate_rtt_ms,
};
use vmi_control_api::model::TerminalReport;

use crate::bench::{percentile, round, rss_bytes};
use crate::rng::Rng;

/// Sites over the region, and each user's site and position (within about 3 km of it).
struct Layout {
    sites: Vec<SiteView>,
    users: Vec<(String, usize, f64, f64)>,
}

fn layout(sites: usize, users: usize, rng: &mut Rng) -> Layout {
    // Room for three times the mean, so capacity rarely decides.
    let capacity = (users / sites.max(1) * 3).max(10) as u32;
    let mut views: Vec<SiteView> = (0..sites)
        .map(|i| SiteView {
            id: format!("site-{i:05}"),
            lat: 45.0 + rng.unit() * 10.0,
            lon: 5.0 + rng.unit() * 15.0,
            capacity,
            phones: 0,
            healthy: true,
            draining: false,
        })
        .collect();
    let users = (0..users)
        .map(|u| {
            let s = rng.below(sites);
            views[s].phones += 1;
            let (lat, lon) = (views[s].lat + (rng.unit() - 0.5) * 0.05, views[s].lon + (rng.unit() - 0.5) * 0.05);
            (format!("user-{u:07}"), s, lat, lon)
        })
        .collect();
    Layout { sites: views, users }
}

fn report(user: &str, at_ms: u64, lat: f64, lon: f64) -> TerminalReport {
    TerminalReport { user: user.to_owned(), at_ms, lat: Some(lat), lon: Some(lon), rtt_ms: Default::default() }
}

/// Runs the benchmark: `sites` × `users` through the incremental placer, `reports` single reports timed, and the
/// full recomputation on `reference_sites` × `reference_users`.
pub fn placer(
    sites: usize,
    users: usize,
    reports: usize,
    (reference_sites, reference_users): (usize, usize),
) -> Result<serde_json::Value> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let params = PolicyParams::default();
    let world_layout = layout(sites, users, &mut rng);
    let t0 = 1_700_000_000_000u64;
    let loading = Instant::now();
    let mut world = World::new(params.clone());
    for site in &world_layout.sites {
        world.set_site(site.clone());
    }
    for (user, s, lat, lon) in &world_layout.users {
        world.set_phone(user, &world_layout.sites[*s].id, false);
        world.report(&report(user, t0, *lat, *lon));
    }
    let load_ms = loading.elapsed().as_secs_f64() * 1e3;

    let full = Instant::now();
    let full_moves = world.decide(t0 + 1_000).len();
    let full_round_ms = full.elapsed().as_secs_f64() * 1e3;
    let idle = Instant::now();
    world.decide(t0 + 2_000);
    let idle_round_us = idle.elapsed().as_secs_f64() * 1e6;

    // One report, then the round after it: users walking up to about 15 km from where they were; every other
    // report also carries the round trip the terminal measured to its site (as terminals send), the estimate
    // plus up to 20 ms of radio, which widens the circle of sites that could beat it.
    let walk = |rng: &mut Rng, u: usize| {
        let (_, _, lat, lon) = &world_layout.users[u];
        (lat + (rng.unit() - 0.5) * 0.3, lon + (rng.unit() - 0.5) * 0.3)
    };
    let mut now = t0 + 3_000;
    let mut per_report = Vec::with_capacity(reports);
    for k in 0..reports {
        let u = rng.below(users);
        let (lat, lon) = walk(&mut rng, u);
        let mut report = report(&world_layout.users[u].0, now, lat, lon);
        if k % 2 == 1 {
            let site = &world_layout.sites[world_layout.users[u].1];
            let measured = estimate_rtt_ms(&params, lat, lon, site) + rng.unit() * 20.0;
            report.rtt_ms.insert(site.id.clone(), measured);
        }
        let timed = Instant::now();
        world.report(&report);
        world.decide(now);
        per_report.push(timed.elapsed().as_secs_f64() * 1e6);
        if k % 1_000 == 999 {
            now += 30;
        }
    }

    // A second of a million users' reports (one every 30 s each), then one round.
    let batch = (users / 30).max(1);
    now += 1_000;
    let ingest = Instant::now();
    for _ in 0..batch {
        let u = rng.below(users);
        let (lat, lon) = walk(&mut rng, u);
        world.report(&report(&world_layout.users[u].0, now, lat, lon));
    }
    let ingest_ms = ingest.elapsed().as_secs_f64() * 1e3;
    let timed_round = Instant::now();
    let batch_moves = world.decide(now + 1).len();
    let batch_round_ms = timed_round.elapsed().as_secs_f64() * 1e3;
    let rss_mib = rss_bytes()? as f64 / (1 << 20) as f64;

    // The full recomputation, on a world it can do in seconds; one site in fifty draining, so that both have
    // phones to move, and must move the same ones to the same sites.
    let mut small = layout(reference_sites, reference_users, &mut rng);
    for site in small.sites.iter_mut().step_by(50) {
        site.draining = true;
    }
    let input = PolicyInput {
        sites: small.sites.clone(),
        phones: small
            .users
            .iter()
            .map(|(user, s, _, _)| PhoneView { user: user.clone(), site: small.sites[*s].id.clone(), migrating: false })
            .collect(),
        reports: small.users.iter().map(|(user, _, lat, lon)| (user.clone(), report(user, t0, *lat, *lon))).collect(),
    };
    let recompute = Instant::now();
    let decided = decide(&mut PolicyState::new(), &input, t0 + 1_000, &params);
    let reference_ms = recompute.elapsed().as_secs_f64() * 1e3;
    let mut reference_world = World::new(params);
    for site in &small.sites {
        reference_world.set_site(site.clone());
    }
    for phone in &input.phones {
        reference_world.set_phone(&phone.user, &phone.site, false);
    }
    for report in input.reports.values() {
        reference_world.report(report);
    }
    let same = Instant::now();
    let incremental = reference_world.decide(t0 + 1_000);
    let reference_incremental_ms = same.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(
        incremental == decided,
        "the incremental placer moved {} phones where the full recomputation moved {}",
        incremental.len(),
        decided.len()
    );

    Ok(serde_json::json!({
        "sites": sites,
        "users": users,
        "load_ms": round(load_ms, 1),
        "full_round_ms": round(full_round_ms, 1),
        "full_round_moves": full_moves,
        "idle_round_us": round(idle_round_us, 2),
        "reports_timed": reports,
        "incremental_us_per_report_p50": round(percentile(&mut per_report, 50.0), 2),
        "incremental_us_per_report_p99": round(percentile(&mut per_report, 99.0), 2),
        "reports_in_one_second": batch,
        "reports_ingest_ms": round(ingest_ms, 1),
        "round_after_them_ms": round(batch_round_ms, 1),
        "round_after_them_moves": batch_moves,
        "rss_mib": round(rss_mib, 1),
        "reference": {
            "sites": reference_sites,
            "users": reference_users,
            "moves": decided.len(),
            "same_moves": true,
            "full_recomputation_ms": round(reference_ms, 1),
            "incremental_full_round_ms": round(reference_incremental_ms, 1),
        },
        "conditions": "one thread; sites uniform over 10° × 15° (45–55 N, 5–20 E), each user within 3 km of a random \
                       site, reports walk up to 15 km, every other timed report with a measured round trip to the \
                       user's site (the estimate plus up to 20 ms); the reference world has one site in fifty \
                       draining; PolicyParams::default()",
    }))
}
