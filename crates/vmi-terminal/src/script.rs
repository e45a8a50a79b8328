//! Terminal scripts: what a user would do, one command per line, played against a live
//! session by `vmi terminal --headless --script FILE`.
//!
//! ```text
//! # comments and blank lines are ignored
//! tap 360 640              # touch down and up
//! drag 100 900 100 300     # down, 8 moves, up (an optional 5th number sets the moves)
//! type Hello, world        # the rest of the line, one key per character
//! key enter                # backspace enter escape|back left right up down home delete
//! wait 500ms               # real time: ms, s or m
//! sleep                    # screen off: the site sends only notifications
//! wake                     # screen on: one up-to-date frame follows
//! ping                     # measure latency
//! screenshot home.png      # PNG of the terminal's screen now
//! ```

use std::path::PathBuf;
use std::time::Duration;

use vmi_protocol::{Input, TouchPhase};

/// Key names and their codes (docs/GUEST_ABI.md, "Key codes").
pub const KEY_NAMES: [(&str, u8); 10] = [
    ("backspace", 1),
    ("enter", 2),
    ("escape", 3),
    ("back", 3),
    ("left", 4),
    ("right", 5),
    ("up", 6),
    ("down", 7),
    ("home", 8),
    ("delete", 9),
];

/// Moves between down and up of a `drag` without a step count.
pub const DEFAULT_DRAG_STEPS: u32 = 8;

/// The code of a key name (case-insensitive), if it is one.
pub fn key_code(name: &str) -> Option<u8> {
    KEY_NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|&(_, code)| code)
}

/// One step of a script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this input.
    Input(Input),
    /// Pause, in real time.
    Wait(Duration),
    /// Screen off.
    Sleep,
    /// Screen on.
    Wake,
    /// Send a latency probe.
    Ping,
    /// Save the screen as a PNG.
    Screenshot(PathBuf),
}

/// A step with the line it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number.
    pub number: usize,
    /// What to do.
    pub step: Step,
}

/// A script line that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ScriptError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses a duration: `500ms`, `2s`, `1.5s`, `3m` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("duration `{s}` has no number"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" | "min" => value * 60.0,
        other => return Err(format!("duration `{s}` has unknown unit `{other}` (use ms, s or m)")),
    };
    if !seconds.is_finite() || !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("duration `{s}` is out of range (at most a day)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn coord(arg: Option<&str>, what: &str) -> Result<u16, String> {
    let s = arg.ok_or_else(|| format!("missing {what}"))?;
    s.parse().map_err(|_| format!("{what} `{s}` is not a pixel coordinate (0 to 65535)"))
}

fn touch(phase: TouchPhase, x: u16, y: u16) -> Step {
    Step::Input(Input::Touch { phase, x, y, pointer: 0 })
}

fn lerp(a: u16, b: u16, k: u32, n: u32) -> u16 {
    let v = i64::from(a) + (i64::from(b) - i64::from(a)) * i64::from(k) / i64::from(n);
    u16::try_from(v).unwrap_or(b)
}

fn parse_line(word: &str, rest: &str, out: &mut Vec<Step>) -> Result<(), String> {
    let mut args = rest.split_whitespace();
    match word {
        "tap" => {
            let (x, y) = (coord(args.next(), "x")?, coord(args.next(), "y")?);
            out.push(touch(TouchPhase::Down, x, y));
            out.push(touch(TouchPhase::Up, x, y));
        }
        "drag" => {
            let (x1, y1) = (coord(args.next(), "x1")?, coord(args.next(), "y1")?);
            let (x2, y2) = (coord(args.next(), "x2")?, coord(args.next(), "y2")?);
            let steps = match args.next() {
                Some(s) => s.parse::<u32>().ok().filter(|n| (1..=1000).contains(n)).ok_or("steps must be 1 to 1000")?,
                None => DEFAULT_DRAG_STEPS,
            };
            out.push(touch(TouchPhase::Down, x1, y1));
            for k in 1..=steps {
                out.push(touch(TouchPhase::Move, lerp(x1, x2, k, steps), lerp(y1, y2, k, steps)));
            }
            out.push(touch(TouchPhase::Up, x2, y2));
        }
        "type" => {
            if rest.is_empty() {
                return Err("type needs text".into());
            }
            out.extend(rest.chars().map(|c| Step::Input(Input::Key { code: 0, text: Some(c) })));
        }
        "key" => {
            let name = args.next().ok_or("missing key name")?;
            let code = key_code(name).ok_or_else(|| {
                let names: Vec<&str> = KEY_NAMES.iter().map(|(n, _)| *n).collect();
                format!("unknown key `{name}` (one of {})", names.join(", "))
            })?;
            out.push(Step::Input(Input::Key { code, text: None }));
        }
        "wait" => out.push(Step::Wait(parse_duration(args.next().ok_or("missing duration")?)?)),
        "sleep" => out.push(Step::Sleep),
        "wake" => out.push(Step::Wake),
        "ping" => out.push(Step::Ping),
        "screenshot" => {
            if rest.is_empty() {
                return Err("missing file name".into());
            }
            out.push(Step::Screenshot(PathBuf::from(rest)));
        }
        other => return Err(format!("unknown command `{other}`")),
    }
    if !matches!(word, "type" | "screenshot") && args.next().is_some() {
        return Err(format!("too many arguments for `{word}`"));
    }
    Ok(())
}

/// Parses a whole script; an error names its line.
pub fn parse(text: &str) -> Result<Vec<Line>, ScriptError> {
    let mut lines = Vec::new();
    let mut steps = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        // `type` keeps its text as written (after one separating space); others drop comments.
        let rest = if word == "type" {
            raw.trim_start().split_once(char::is_whitespace).map_or("", |(_, r)| r)
        } else {
            rest.split_once('#').map_or(rest, |(before, _)| before).trim()
        };
        steps.clear();
        parse_line(word, rest, &mut steps).map_err(|message| ScriptError { line: number, message })?;
        lines.extend(steps.drain(..).map(|step| Line { number, step }));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(text: &str) -> Vec<Step> {
        parse(text).expect("parses").into_iter().map(|l| l.step).collect()
    }

    #[test]
    fn parses_every_command() {
        let s = steps(
            "# a comment\n\ntap 10 20\ndrag 0 0 10 100 2\ntype Hi #1\nkey Enter\nkey back # go back\n\
             wait 500ms\nwait 2s\nsleep\nwake\nping\nscreenshot out dir/a.png\n",
        );
        let t = |phase, x, y| Step::Input(Input::Touch { phase, x, y, pointer: 0 });
        let k = |c| Step::Input(Input::Key { code: 0, text: Some(c) });
        assert_eq!(
            s,
            vec![
                t(TouchPhase::Down, 10, 20),
                t(TouchPhase::Up, 10, 20),
                t(TouchPhase::Down, 0, 0),
                t(TouchPhase::Move, 5, 50),
                t(TouchPhase::Move, 10, 100),
                t(TouchPhase::Up, 10, 100),
                k('H'),
                k('i'),
                k(' '),
                k('#'),
                k('1'),
                Step::Input(Input::Key { code: 2, text: None }),
                Step::Input(Input::Key { code: 3, text: None }),
                Step::Wait(Duration::from_millis(500)),
                Step::Wait(Duration::from_secs(2)),
                Step::Sleep,
                Step::Wake,
                Step::Ping,
                Step::Screenshot(PathBuf::from("out dir/a.png")),
            ]
        );
    }

    #[test]
    fn drag_defaults_to_eight_moves_and_runs_backwards() {
        let s = steps("drag 100 900 100 100");
        assert_eq!(s.len(), 2 + DEFAULT_DRAG_STEPS as usize);
        assert_eq!(s[1], Step::Input(Input::Touch { phase: TouchPhase::Move, x: 100, y: 800, pointer: 0 }));
    }

    #[test]
    fn every_key_name_maps_to_its_code() {
        let names = "backspace enter escape back left right up down home delete";
        let codes: Vec<u8> = names.split(' ').map(|n| key_code(n).expect("known")).collect();
        assert_eq!(codes, [1, 2, 3, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(key_code("HOME"), Some(8));
        assert_eq!(key_code("f1"), None);
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let e = parse("tap 1 2\n\ntpa 3 4\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.to_string(), "line 3: unknown command `tpa`");
        for (text, needle) in [
            ("tap 1", "missing y"),
            ("tap -1 2", "x `-1` is not a pixel coordinate"),
            ("tap 1 2 3", "too many arguments"),
            ("key hyperspace", "unknown key `hyperspace`"),
            ("wait 3y", "unknown unit `y`"),
            ("wait soon", "has no number"),
            ("wait 2d", "unknown unit"),
            ("wait 100000s", "out of range"),
            ("drag 0 0 1 1 0", "steps must be 1 to 1000"),
            ("type", "type needs text"),
            ("screenshot", "missing file name"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.message.contains(needle), "{text:?}: {e}");
            assert_eq!(e.line, 1);
        }
    }
}
