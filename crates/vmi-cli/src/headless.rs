//! Plays event scripts against a phone with no terminal, on a manual clock, so a run is
//! reproducible frame for frame.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Serialize;
use vmi_engine::{Event, ManualClock, SnapshotRequest, VirtualPhone};

use crate::script::{Command, Line};

/// What a run reports, one JSON line per item.
#[derive(Serialize, Debug)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Report {
    /// A screenshot was written.
    Screenshot {
        /// Where.
        path: String,
        /// blake3 of the RGBA pixels (first 16 hex digits).
        pixels: String,
    },
    /// A snapshot was written.
    Snapshot {
        /// Where.
        path: String,
        /// Its id.
        id: String,
        /// Its size.
        bytes: usize,
        /// Pages it holds.
        pages: usize,
        /// Full or incremental.
        incremental: bool,
    },
    /// The guest logged a line.
    Log {
        /// `error`, `warn`, `info`, `debug` or `trace`.
        level: &'static str,
        /// The line.
        text: String,
    },
    /// The guest raised a notification.
    Notification {
        /// Title.
        title: String,
        /// Body.
        body: String,
    },
}

impl Report {
    /// Its `kind` in JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Report::Screenshot { .. } => "screenshot",
            Report::Snapshot { .. } => "snapshot",
            Report::Log { .. } => "log",
            Report::Notification { .. } => "notification",
        }
    }
}

/// Runs `phone` through `lines`, advancing `clock` on `wait`.
pub struct Runner<'a> {
    /// The phone.
    pub phone: &'a mut dyn VirtualPhone,
    /// The engine's clock.
    pub clock: Arc<ManualClock>,
    /// Where screenshots and snapshots go.
    pub out_dir: PathBuf,
    /// Screenshots show what a terminal would see (`--as-terminal`), not guest memory.
    pub terminal: Option<TerminalView>,
}

/// What a terminal would show: the phone's damage run through the protocol's encoder and
/// applied to a terminal's screen, exactly as a site and a terminal do. A guest that
/// forgets to report damage (`fb_damage`) looks wrong here, as it would on a terminal.
#[derive(Default)]
pub struct TerminalView {
    shown: Option<(vmi_protocol::display::Encoder, vmi_protocol::display::Screen)>,
}

impl TerminalView {
    /// Sends what changed since the last call to the terminal's screen.
    fn update(&mut self, phone: &mut dyn VirtualPhone) -> Result<()> {
        let frame = phone.frame()?;
        if frame.rgba.is_empty() {
            return Ok(());
        }
        let size = (frame.width as u16, frame.height as u16);
        let (encoder, screen) = match &mut self.shown {
            Some((encoder, screen)) if (encoder.width(), encoder.height()) == size => (encoder, screen),
            // The first frame of a session (or of a new framebuffer size) paints every tile.
            shown => {
                let mut encoder = vmi_protocol::display::Encoder::new(size.0, size.1);
                let mut screen = vmi_protocol::display::Screen::new(size.0, size.1);
                screen.apply(&encoder.full(frame.rgba)).context("applying the first frame")?;
                *shown = Some((encoder, screen));
                return Ok(());
            }
        };
        let tiles = encoder.encode(frame.rgba, &frame.damage);
        screen.apply(&tiles).context("applying an update to the terminal's screen")
    }
}

impl Runner<'_> {
    /// Plays the script, handing each thing that happens to `emit` as it happens (so a run
    /// that fails half way has told everything up to the failure).
    pub fn play(&mut self, lines: &[Line], emit: &mut dyn FnMut(Report)) -> Result<()> {
        // What the guest logged while booting comes first.
        self.drain(emit);
        for line in lines {
            let mut reports = Vec::new();
            let stepped = self.step(&line.command, &mut reports);
            // Logs and notifications of a step that failed (a crash) are told too.
            self.drain(&mut |r| reports.push(r));
            reports.into_iter().for_each(&mut *emit);
            stepped.with_context(|| format!("script line {}", line.number))?;
            if let Some(view) = &mut self.terminal {
                view.update(self.phone)?;
            }
        }
        Ok(())
    }

    /// Hands over the guest's log lines, then its notifications.
    fn drain(&mut self, emit: &mut dyn FnMut(Report)) {
        for l in self.phone.take_logs() {
            emit(Report::Log { level: l.level.as_str(), text: l.text });
        }
        for n in self.phone.take_notifications() {
            emit(Report::Notification { title: n.title, body: n.body });
        }
    }

    fn step(&mut self, command: &Command, reports: &mut Vec<Report>) -> Result<()> {
        match command {
            Command::Event(event) => self.phone.deliver(*event)?,
            Command::Type(text) => {
                for c in text.chars() {
                    self.phone.deliver(Event::text(c))?;
                }
            }
            Command::Wait(d) => vmi_engine::advance_phone(self.phone, &self.clock, d.as_nanos() as u64)?,
            Command::Mail(mail) => {
                self.phone.push_mail(mail.clone())?;
                self.phone.deliver(Event::MailArrived)?;
            }
            Command::Screenshot(name) => {
                let path = self.out_dir.join(name);
                let pixels = match &mut self.terminal {
                    Some(view) => {
                        view.update(self.phone)?;
                        let (_, screen) =
                            view.shown.as_ref().context("the phone has not attached a framebuffer yet")?;
                        write_png(screen.width().into(), screen.height().into(), screen.rgba(), &path)?
                    }
                    None => screenshot(self.phone, &path)?,
                };
                reports.push(Report::Screenshot { path: path.display().to_string(), pixels });
            }
            Command::Snapshot { file, incremental } => {
                let kind = if *incremental { SnapshotRequest::Incremental } else { SnapshotRequest::Full };
                let snap = self.phone.snapshot(kind)?;
                let path = self.out_dir.join(file);
                std::fs::write(&path, &snap.bytes).with_context(|| format!("writing {}", path.display()))?;
                reports.push(Report::Snapshot {
                    path: path.display().to_string(),
                    id: snap.id.to_string(),
                    bytes: snap.bytes.len(),
                    pages: snap.pages,
                    incremental: snap.parent.is_some(),
                });
            }
        }
        Ok(())
    }
}

/// Writes the screen (guest memory) as PNG; returns a short hash of its pixels.
pub fn screenshot(phone: &mut dyn VirtualPhone, path: &Path) -> Result<String> {
    let frame = phone.frame()?;
    anyhow::ensure!(!frame.rgba.is_empty(), "the phone has not attached a framebuffer yet");
    write_png(frame.width, frame.height, frame.rgba, path)
}

/// Writes RGBA pixels as PNG (opaque, as every picture of a phone's screen); returns a short
/// hash of the pixels as the guest drew them.
fn write_png(width: u32, height: u32, rgba: &[u8], path: &Path) -> Result<String> {
    vmi_terminal::session::write_png(path, width as u16, height as u16, rgba)?;
    Ok(blake3::hash(rgba).to_hex()[..16].to_string())
}
