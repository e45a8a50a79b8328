//! SUMO's side of the simulator: a city made with `netgenerate`, trips with `randomTrips.py`, driven by `sumo`
//! into floating-car data (`--fcd-output`), and the two files read back (junctions of the network, vehicle
//! positions over time). Generated scenarios are cached by their parameters outside the repository.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Where Debian's `sumo-tools` puts SUMO's data and tools.
const SUMO_HOME: &str = "/usr/share/sumo";

/// What to generate: the network's size, the trips, the simulated time, the seed.
#[derive(Debug, Clone, PartialEq)]
pub struct CityParams {
    /// `netgenerate --rand.iterations`: junctions (about; the network grows that many times).
    pub junctions: usize,
    /// Trips starting over `minutes` (one every `minutes × 60 / trips` seconds).
    pub trips: usize,
    /// Minutes during which trips start; the simulation runs an hour longer so that they end.
    pub minutes: u64,
    /// Shortest trip, straight line, in metres.
    pub min_trip_m: u64,
    /// Seed of every SUMO tool.
    pub seed: u64,
    /// Seconds between two positions of a vehicle (`--device.fcd.period`).
    pub period_s: u64,
}

/// A generated city: its network and its vehicles' positions.
#[derive(Debug, Clone)]
pub struct City {
    /// The network (`.net.xml`).
    pub net: PathBuf,
    /// The floating-car data (`--fcd-output`).
    pub fcd: PathBuf,
}

/// Whether SUMO's tools are installed (`scripts/setup` installs Debian's `sumo` and `sumo-tools`).
pub fn available() -> bool {
    Path::new("/usr/bin/netgenerate").exists()
        && Path::new("/usr/bin/sumo").exists()
        && Path::new(SUMO_HOME).join("tools/randomTrips.py").exists()
}

/// The city for `params`, generated into `cache` unless it holds one already.
pub fn city(params: &CityParams, cache: &Path) -> Result<City> {
    if !available() {
        bail!("SUMO is not installed (Debian's sumo and sumo-tools; ./scripts/setup installs them)");
    }
    let key = format!(
        "j{}-t{}-m{}-d{}-s{}-p{}",
        params.junctions, params.trips, params.minutes, params.min_trip_m, params.seed, params.period_s
    );
    let dir = cache.join(key);
    let city = City { net: dir.join("city.net.xml"), fcd: dir.join("fcd.xml") };
    if dir.join("done").exists() {
        return Ok(city);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let seed = params.seed.to_string();
    run(Command::new("netgenerate").args([
        "--rand",
        "--rand.iterations",
        &params.junctions.to_string(),
        "--rand.min-distance",
        "300",
        "--rand.max-distance",
        "1500",
        "--rand.bidi-probability",
        "1",
        "--default.speed",
        "16.7",
        "--no-turnarounds",
        "--seed",
        &seed,
        "-o",
    ]))
    .arg(&city.net)
    .status_ok("netgenerate")?;
    let trips = dir.join("trips.xml");
    let end = (params.minutes * 60).to_string();
    let period = format!("{:.3}", (params.minutes * 60) as f64 / params.trips.max(1) as f64);
    run(Command::new("python3").arg(Path::new(SUMO_HOME).join("tools/randomTrips.py")).args([
        "-e",
        &end,
        "-p",
        &period,
        "--min-distance",
        &params.min_trip_m.to_string(),
        "--seed",
        &seed,
        "-n",
    ]))
    .arg(&city.net)
    .arg("-o")
    .arg(&trips)
    .status_ok("randomTrips.py")?;
    let until = (params.minutes * 60 + 3_600).to_string();
    run(Command::new("sumo").args([
        "--device.fcd.period",
        &params.period_s.to_string(),
        "--end",
        &until,
        "--seed",
        &seed,
        "--no-step-log",
        "--no-warnings",
        "--ignore-route-errors",
        "--time-to-teleport",
        "120",
        "-n",
    ]))
    .arg(&city.net)
    .arg("-r")
    .arg(&trips)
    .arg("--fcd-output")
    .arg(&city.fcd)
    .status_ok("sumo")?;
    std::fs::write(dir.join("done"), b"")?;
    Ok(city)
}

/// A command with SUMO's environment, its output kept for an error.
fn run(command: &mut Command) -> &mut Command {
    command.env("SUMO_HOME", SUMO_HOME)
}

trait StatusOk {
    fn status_ok(&mut self, what: &str) -> Result<()>;
}

impl StatusOk for Command {
    fn status_ok(&mut self, what: &str) -> Result<()> {
        let out = self.output().with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }
}

/// The value of attribute `name` in one XML start tag on `line` (SUMO writes one element a line).
fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = line.find(&key)? + key.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

fn number(line: &str, name: &str) -> Option<f64> {
    attr(line, name)?.parse().ok().filter(|x: &f64| x.is_finite())
}

/// The network's junctions (not internal ones), as `(x, y)` in metres.
pub fn junctions(net: &Path) -> Result<Vec<(f64, f64)>> {
    let file = std::fs::File::open(net).with_context(|| format!("opening {}", net.display()))?;
    let mut points = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        let tag = line.trim_start();
        if tag.starts_with("<junction ") && attr(tag, "type") != Some("internal") {
            let (Some(x), Some(y)) = (number(tag, "x"), number(tag, "y")) else {
                bail!("{}: a junction without a position: {tag}", net.display());
            };
            points.push((x, y));
        }
    }
    if points.is_empty() {
        bail!("{}: no junctions", net.display());
    }
    Ok(points)
}

/// One vehicle's positions: `(time s, x m, y m)` in time order.
pub type Samples = Vec<(f64, f64, f64)>;

/// Each vehicle's positions, from floating-car data.
pub fn vehicles(fcd: &Path) -> Result<HashMap<String, Samples>> {
    let file = std::fs::File::open(fcd).with_context(|| format!("opening {}", fcd.display()))?;
    let mut tracks: HashMap<String, Samples> = HashMap::new();
    let mut time = None;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        let tag = line.trim_start();
        if tag.starts_with("<timestep ") {
            time =
                Some(number(tag, "time").filter(|t| *t >= 0.0).with_context(|| {
                    format!("{}:{}: a timestep without a time (or before 0)", fcd.display(), i + 1)
                })?);
        } else if tag.starts_with("<vehicle ") || tag.starts_with("<person ") {
            let (Some(t), Some(id), Some(x), Some(y)) = (time, attr(tag, "id"), number(tag, "x"), number(tag, "y"))
            else {
                bail!("{}:{}: a position without time, id, x or y: {tag}", fcd.display(), i + 1);
            };
            tracks.entry(id.to_owned()).or_default().push((t, x, y));
        }
    }
    Ok(tracks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_read_from_sumo_lines() {
        let line = r#"        <vehicle id="12" x="36148.83" y="-3.5" angle="345.70" type="DEFAULT_VEHTYPE"/>"#;
        assert_eq!(attr(line, "id"), Some("12"));
        assert_eq!(number(line, "x"), Some(36148.83));
        assert_eq!(number(line, "y"), Some(-3.5));
        assert_eq!(attr(line, "speed"), None);
        assert_eq!(number(r#"<a x="NaN"/>"#, "x"), None);
    }

    #[test]
    fn floating_car_data_is_read_per_vehicle_in_time_order() {
        let dir = std::env::temp_dir().join(format!("vmi-sim-fcd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fcd = dir.join("fcd.xml");
        std::fs::write(
            &fcd,
            "<fcd-export>\n<timestep time=\"0.00\">\n<vehicle id=\"a\" x=\"1\" y=\"2\"/>\n</timestep>\n\
             <timestep time=\"10.00\">\n<vehicle id=\"a\" x=\"3\" y=\"4\"/>\n<vehicle id=\"b\" x=\"5\" y=\"6\"/>\n\
             </timestep>\n</fcd-export>\n",
        )
        .unwrap();
        let tracks = vehicles(&fcd).unwrap();
        assert_eq!(tracks["a"], [(0.0, 1.0, 2.0), (10.0, 3.0, 4.0)]);
        assert_eq!(tracks["b"], [(10.0, 5.0, 6.0)]);
        std::fs::write(&fcd, "<vehicle id=\"a\" x=\"1\" y=\"2\"/>\n").unwrap();
        let err = vehicles(&fcd).unwrap_err().to_string();
        assert!(err.contains("fcd.xml:1") && err.contains("without time"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
