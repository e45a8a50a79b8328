//! Who is where, step by step: drivers from SUMO's floating-car data, pedestrians walking between junctions
//! (random waypoint), all on one clock of fixed steps; and where the map's metres are on the globe.

use std::collections::HashMap;

use super::sumo::Samples;
use crate::rng::Rng;

/// The latitude the city's origin is put at (a metro area of the demo's region).
const ORIGIN_LAT: f64 = 60.0;
/// Its longitude.
const ORIGIN_LON: f64 = 24.0;
/// Metres in a degree of latitude.
const M_PER_DEG: f64 = 111_320.0;

/// Where the map's `(x, y)` metres are, as (latitude, longitude): an equirectangular projection about the
/// origin, exact enough over tens of kilometres.
pub fn to_lat_lon(x: f64, y: f64) -> (f64, f64) {
    (ORIGIN_LAT + y / M_PER_DEG, ORIGIN_LON + x / (M_PER_DEG * ORIGIN_LAT.to_radians().cos()))
}

/// A user's path over the simulation's steps: present from `first` on, one position a step.
#[derive(Debug, Clone)]
pub struct Track {
    /// Step of the first position.
    pub first: usize,
    /// `(x, y)` in metres at each step from `first` on.
    pub positions: Vec<(f64, f64)>,
}

impl Track {
    /// Where the user is at `step`, if present then.
    pub fn at(&self, step: usize) -> Option<(f64, f64)> {
        self.positions.get(step.checked_sub(self.first)?).copied()
    }
}

/// Drivers' tracks from SUMO's per-vehicle positions (seconds and metres), on steps of `step_s` seconds counted
/// from the trace's first position: a position a step, the last known one held where SUMO skipped a step (a
/// vehicle teleported out of a jam). Positions out of time order are put in order.
pub fn drivers(vehicles: HashMap<String, Samples>, step_s: f64) -> Vec<Track> {
    let mut named: Vec<(String, Samples)> = vehicles.into_iter().filter(|(_, v)| v.len() >= 2).collect();
    // In a fixed order, so that a run is reproducible.
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let start = named.iter().flat_map(|(_, v)| v.iter().map(|s| s.0)).fold(f64::INFINITY, f64::min);
    for (_, samples) in &mut named {
        samples.sort_by(|a, b| a.0.total_cmp(&b.0));
        for sample in samples.iter_mut() {
            sample.0 -= start;
        }
    }
    named
        .into_iter()
        .map(|(_, samples)| {
            let first = (samples[0].0 / step_s).round() as usize;
            let last = (samples[samples.len() - 1].0 / step_s).round() as usize;
            let mut positions = Vec::with_capacity(last - first + 1);
            let mut next = samples.iter().peekable();
            let mut held = (samples[0].1, samples[0].2);
            for step in first..=last {
                while let Some(&&(t, x, y)) = next.peek() {
                    if (t / step_s).round() as usize > step {
                        break;
                    }
                    held = (x, y);
                    next.next();
                }
                positions.push(held);
            }
            Track { first, positions }
        })
        .collect()
}

/// Walking speed, metres a second.
const WALK_M_PER_S: f64 = 1.4;
/// The longest walk between two stops, metres.
const WALK_MAX_M: f64 = 3_000.0;
/// The longest stop, seconds.
const STOP_MAX_S: f64 = 900.0;

/// `count` pedestrians present for all `steps`, each starting at a random junction and walking to another
/// within [`WALK_MAX_M`] at [`WALK_M_PER_S`], stopping there up to [`STOP_MAX_S`], and so on.
pub fn pedestrians(count: usize, junctions: &[(f64, f64)], steps: usize, step_s: f64, rng: &mut Rng) -> Vec<Track> {
    let near = |rng: &mut Rng, from: (f64, f64)| {
        // A few draws for a junction within reach; else stay.
        for _ in 0..32 {
            let to = junctions[rng.below(junctions.len())];
            if (to.0 - from.0).hypot(to.1 - from.1) <= WALK_MAX_M {
                return to;
            }
        }
        from
    };
    (0..count)
        .map(|_| {
            let mut at = junctions[rng.below(junctions.len())];
            let mut to = near(rng, at);
            let mut stop_left = rng.unit() * STOP_MAX_S;
            let mut positions = Vec::with_capacity(steps);
            for _ in 0..steps {
                positions.push(at);
                let mut time = step_s;
                while time > 0.0 {
                    if stop_left > 0.0 {
                        let waited = stop_left.min(time);
                        stop_left -= waited;
                        time -= waited;
                        continue;
                    }
                    let (dx, dy) = (to.0 - at.0, to.1 - at.1);
                    let left = dx.hypot(dy);
                    let walked = WALK_M_PER_S * time;
                    if walked < left {
                        at = (at.0 + dx * walked / left, at.1 + dy * walked / left);
                        time = 0.0;
                    } else {
                        at = to;
                        time -= left / WALK_M_PER_S;
                        to = near(rng, at);
                        stop_left = rng.unit() * STOP_MAX_S;
                    }
                }
            }
            Track { first: 0, positions }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_is_on_the_clock_of_steps_and_holds_its_place_across_a_gap() {
        let vehicles = HashMap::from([
            // Out of time order, as a hand-made trace might be; the trace starts at 100 s (b's first).
            ("a".to_owned(), vec![(120.0, 0.0, 0.0), (160.0, 40.0, 0.0), (130.0, 10.0, 0.0)]),
            ("b".to_owned(), vec![(100.0, 5.0, 5.0), (110.0, 6.0, 6.0)]),
            ("short".to_owned(), vec![(0.0, 1.0, 1.0)]),
        ]);
        let tracks = drivers(vehicles, 10.0);
        assert_eq!(tracks.len(), 2, "a vehicle seen once is no track");
        assert_eq!((tracks[1].first, tracks[1].positions.len()), (0, 2), "b starts the clock");
        assert_eq!(tracks[0].first, 2);
        assert_eq!(tracks[0].positions, [(0.0, 0.0), (10.0, 0.0), (10.0, 0.0), (10.0, 0.0), (40.0, 0.0)]);
        assert_eq!(tracks[0].at(1), None);
        assert_eq!(tracks[0].at(6), Some((40.0, 0.0)));
        assert_eq!(tracks[0].at(7), None);
    }

    #[test]
    fn pedestrians_walk_at_walking_speed() {
        let junctions: Vec<(f64, f64)> = (0..50).map(|i| ((i % 7) as f64 * 400.0, (i / 7) as f64 * 400.0)).collect();
        let tracks = pedestrians(20, &junctions, 200, 10.0, &mut Rng(7));
        for track in &tracks {
            assert_eq!(track.positions.len(), 200);
            for pair in track.positions.windows(2) {
                let step = (pair[1].0 - pair[0].0).hypot(pair[1].1 - pair[0].1);
                assert!(step <= WALK_M_PER_S * 10.0 + 1e-6, "{step} m in a step");
            }
        }
        assert!(tracks.iter().any(|t| t.positions[0] != t.positions[199]), "someone walked");
    }

    #[test]
    fn the_origin_maps_to_the_origin_and_a_kilometre_north_is_about_0_009_degrees() {
        assert_eq!(to_lat_lon(0.0, 0.0), (ORIGIN_LAT, ORIGIN_LON));
        let (lat, lon) = to_lat_lon(0.0, 1_000.0);
        assert!((lat - ORIGIN_LAT - 0.008_983).abs() < 1e-5 && lon == ORIGIN_LON);
    }
}
