//! Event scripts for headless runs: one command per line.
//!
//! ```text
//! # comments and blank lines are ignored
//! tap 360 640            # touch down and up
//! down 10 20 / move 30 40 / up 30 40
//! drag 100 300 400 500 8 # down, 8 moves, up
//! type Hello, world      # the rest of the line, one key per character
//! key enter              # backspace, enter, back, home, left, right, up, down, delete
//! wait 2s                # advance virtual time (ms, s, m, h, d) and fire due timers
//! mail ann@example.com | Lunch? | Noon at the usual place
//! sleep / wake
//! screenshot notes.png   # PNG of the screen, relative to the output directory
//! snapshot mid.snap      # full snapshot; `snapshot x.snap incremental` for a delta
//! ```

use std::time::Duration;

use anyhow::{Context, Result, bail};
use vmi_engine::{Event, KeyCode, Mail, TouchPhase};

/// One script command.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Deliver an event.
    Event(Event),
    /// Type text.
    Type(String),
    /// Advance virtual time and fire timers.
    Wait(Duration),
    /// Put a mail in the mailbox and signal it.
    Mail(vmi_engine::Mail),
    /// Save a PNG.
    Screenshot(String),
    /// Save a snapshot.
    Snapshot {
        /// File name.
        file: String,
        /// Incremental against the previous snapshot.
        incremental: bool,
    },
}

/// A command with the line it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// 1-based line number.
    pub number: usize,
    /// What to do.
    pub command: Command,
}

fn int(s: Option<&str>, what: &str) -> Result<i32> {
    let s = s.with_context(|| format!("missing {what}"))?;
    s.parse().with_context(|| format!("{what} `{s}` is not a whole number"))
}

/// Parses a duration such as `500ms`, `2s`, `5m`, `1h`, `3d`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().with_context(|| format!("duration `{s}` has no number"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        other => bail!("duration `{s}` has unknown unit `{other}` (use ms, s, m, h or d)"),
    };
    if !seconds.is_finite() || !(0.0..=1e9).contains(&seconds) {
        bail!("duration `{s}` is out of range");
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn touch(phase: TouchPhase, x: i32, y: i32) -> Command {
    Command::Event(Event::Touch { phase, x, y, pointer: 0 })
}

/// Parses a whole script; errors name the line.
pub fn parse(text: &str) -> Result<Vec<Line>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let mut args = rest.split_whitespace();
        let mut push = |command| out.push(Line { number, command });
        let parsed: Result<()> = (|| {
            match word {
                "tap" => {
                    let (x, y) = (int(args.next(), "x")?, int(args.next(), "y")?);
                    push(touch(TouchPhase::Down, x, y));
                    push(touch(TouchPhase::Up, x, y));
                }
                "down" | "move" | "up" => {
                    let phase = match word {
                        "down" => TouchPhase::Down,
                        "move" => TouchPhase::Move,
                        _ => TouchPhase::Up,
                    };
                    push(touch(phase, int(args.next(), "x")?, int(args.next(), "y")?));
                }
                "drag" => {
                    let (x0, y0, x1, y1) = (
                        int(args.next(), "x1")?,
                        int(args.next(), "y1")?,
                        int(args.next(), "x2")?,
                        int(args.next(), "y2")?,
                    );
                    let steps = match args.next() {
                        Some(s) => int(Some(s), "steps")?.clamp(1, 1000),
                        None => 10,
                    };
                    push(touch(TouchPhase::Down, x0, y0));
                    for k in 1..=steps {
                        push(touch(TouchPhase::Move, x0 + (x1 - x0) * k / steps, y0 + (y1 - y0) * k / steps));
                    }
                    push(touch(TouchPhase::Up, x1, y1));
                }
                "type" => push(Command::Type(rest.to_string())),
                "key" => {
                    let name = args.next().context("missing key name")?;
                    let code = KeyCode::from_name(name).with_context(|| format!("unknown key `{name}`"))?;
                    push(Command::Event(Event::Key { code, text: None }));
                }
                "wait" => push(Command::Wait(parse_duration(args.next().context("missing duration")?)?)),
                "mail" => {
                    let mut parts = rest.splitn(3, '|').map(str::trim);
                    let from = parts.next().filter(|s| !s.is_empty()).context("mail needs `FROM | SUBJECT | BODY`")?;
                    let subject = parts.next().context("mail needs `FROM | SUBJECT | BODY`")?;
                    let body = parts.next().unwrap_or("");
                    push(Command::Mail(Mail { from: from.into(), subject: subject.into(), body: body.into() }));
                }
                "sleep" => push(Command::Event(Event::Sleep)),
                "wake" => push(Command::Event(Event::Wake)),
                "screenshot" => push(Command::Screenshot(args.next().context("missing file name")?.to_string())),
                "snapshot" => {
                    let file = args.next().context("missing file name")?.to_string();
                    let incremental = match args.next() {
                        None | Some("full") => false,
                        Some("incremental") => true,
                        Some(other) => bail!("snapshot kind `{other}` is not `full` or `incremental`"),
                    };
                    push(Command::Snapshot { file, incremental });
                }
                other => bail!("unknown command `{other}`"),
            }
            Ok(())
        })();
        parsed.with_context(|| format!("line {number}: `{}`", raw.trim()))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        let s = parse(
            "# c\n\ntap 1 2\ndrag 0 0 10 10 2\ntype Hi there\nkey enter\nwait 1.5s\nmail a | b | c | d\nsleep\nscreenshot x.png\nsnapshot s.snap incremental\n",
        )
        .expect("parses");
        assert_eq!(s.len(), 2 + 4 + 7);
        assert_eq!(s[0].number, 3);
        assert_eq!(s[6].command, Command::Type("Hi there".into()));
        assert_eq!(s[8].command, Command::Wait(Duration::from_millis(1500)));
        assert_eq!(s[9].command, Command::Mail(Mail { from: "a".into(), subject: "b".into(), body: "c | d".into() }));
        assert_eq!(s[12].command, Command::Snapshot { file: "s.snap".into(), incremental: true });
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("tap 1 2\ntpa 3 4\n").unwrap_err();
        assert!(format!("{e:#}").contains("line 2"), "{e:#}");
        assert!(format!("{e:#}").contains("unknown command `tpa`"));
        let e = parse("tap x 2").unwrap_err();
        assert!(format!("{e:#}").contains("x `x` is not a whole number"), "{e:#}");
        assert!(parse("wait 3 parsecs").is_ok(), "extra words after a duration are ignored");
        assert!(parse("wait 3y").is_err());
        assert!(parse("key hyperspace").is_err());
    }
}
