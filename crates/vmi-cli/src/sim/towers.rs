//! Edge sites laid out as an operator lays out cell sites: where the roads are, closer together where there are
//! more of them.
//!
//! Candidates are the network's junctions, in a random order; one becomes a site unless a site already stands
//! within its spacing. The spacing is `spacing_m` where the network is as dense as on average, shrinking (to
//! half) where it is denser and growing (to double) where it is sparser, as the square root of the local density
//! (junctions within [`DENSITY_RADIUS_M`]): sites then serve about as many roads each.

use std::collections::HashMap;

use crate::rng::Rng;

/// How far around a junction its density is counted.
const DENSITY_RADIUS_M: f64 = 3_000.0;

/// Sites' positions `(x, y)` in metres over `junctions`, about `spacing_m` apart on average density.
pub fn lay_out(junctions: &[(f64, f64)], spacing_m: f64, rng: &mut Rng) -> Vec<(f64, f64)> {
    let density = local_density(junctions);
    let mean = density.iter().sum::<f64>() / density.len().max(1) as f64;
    let mut order: Vec<usize> = (0..junctions.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let cell = spacing_m * 2.0;
    let mut grid: HashMap<(i64, i64), Vec<(f64, f64)>> = HashMap::new();
    let key = |(x, y): (f64, f64)| ((x / cell).floor() as i64, (y / cell).floor() as i64);
    let mut sites = Vec::new();
    for j in order {
        let at = junctions[j];
        let spacing = spacing_m * (mean / density[j].max(1.0)).sqrt().clamp(0.5, 2.0);
        let (cx, cy) = key(at);
        let taken = (-2..=2).any(|dx| {
            (-2..=2).any(|dy| {
                grid.get(&(cx + dx, cy + dy))
                    .is_some_and(|near| near.iter().any(|s| (s.0 - at.0).hypot(s.1 - at.1) < spacing))
            })
        });
        if !taken {
            grid.entry((cx, cy)).or_default().push(at);
            sites.push(at);
        }
    }
    sites
}

/// Junctions within [`DENSITY_RADIUS_M`] of each junction (itself included).
fn local_density(junctions: &[(f64, f64)]) -> Vec<f64> {
    let key = |(x, y): (f64, f64)| ((x / DENSITY_RADIUS_M).floor() as i64, (y / DENSITY_RADIUS_M).floor() as i64);
    let mut grid: HashMap<(i64, i64), Vec<(f64, f64)>> = HashMap::new();
    for &j in junctions {
        grid.entry(key(j)).or_default().push(j);
    }
    junctions
        .iter()
        .map(|&at| {
            let (cx, cy) = key(at);
            let mut n = 0usize;
            for dx in -1..=1 {
                for dy in -1..=1 {
                    if let Some(cell) = grid.get(&(cx + dx, cy + dy)) {
                        n += cell.iter().filter(|p| (p.0 - at.0).hypot(p.1 - at.1) <= DENSITY_RADIUS_M).count();
                    }
                }
            }
            n as f64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_stand_where_the_roads_are_and_closer_where_they_are_dense() {
        // A dense town (100 m grid, 3 × 3 km) beside sparse countryside (1 km grid, 12 × 12 km).
        let mut junctions = Vec::new();
        for i in 0..30 {
            for j in 0..30 {
                junctions.push((i as f64 * 100.0, j as f64 * 100.0));
            }
        }
        for i in 0..12 {
            for j in 0..12 {
                junctions.push((20_000.0 + i as f64 * 1_000.0, j as f64 * 1_000.0));
            }
        }
        let sites = lay_out(&junctions, 3_000.0, &mut Rng(11));
        assert!(sites.iter().all(|s| junctions.contains(s)), "every site on a junction");
        let town = sites.iter().filter(|s| s.0 < 3_000.0).count() as f64 / 9.0;
        let country = sites.iter().filter(|s| s.0 >= 20_000.0).count() as f64 / 144.0;
        assert!(town > 2.0 * country, "sites per km²: town {town:.2}, countryside {country:.2}");
        for (i, a) in sites.iter().enumerate() {
            for b in &sites[i + 1..] {
                assert!((a.0 - b.0).hypot(a.1 - b.1) >= 1_500.0 - 1e-9, "{a:?} and {b:?} too close");
            }
        }
    }
}
