//! A one-line progress display for long operations (a checkout, an upload, a drain): on stderr, only for a person
//! at a terminal, each update rewriting the line in place (`\r`), the line cleared when the work is done. Programs
//! (stderr not a terminal, or `--json`) see none of it.

use std::fmt::Display;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use vmi_control_api::http_client::{Transfer, TransferObserver};

/// How often frequent updates (bytes of a transfer) redraw the line: a person reads no faster, and a terminal
/// flooded with rewrites lags.
const REDRAW_EVERY: Duration = Duration::from_millis(100);

/// The longest line drawn: a line that wraps cannot be rewritten with `\r`.
const MAX_COLUMNS: usize = 78;

/// A progress line on stderr, or nothing. Clones share the line; it is cleared when the last clone goes.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    line: Option<Arc<Mutex<Line>>>,
}

/// The shown line's state.
#[derive(Debug, Default)]
struct Line {
    /// When it was last drawn.
    drawn_at: Option<Instant>,
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.drawn_at.is_some() {
            erase();
        }
    }
}

/// Clears the terminal line stderr is on.
fn erase() {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[K");
    let _ = err.flush();
}

impl Progress {
    /// A line shown when `wanted` (the output is for a person) and stderr is a terminal; else nothing.
    pub fn on_terminal(wanted: bool) -> Progress {
        let shown = wanted && std::io::stderr().is_terminal();
        Progress { line: shown.then(|| Arc::new(Mutex::new(Line::default()))) }
    }

    /// Shows nothing.
    pub fn hidden() -> Progress {
        Progress { line: None }
    }

    /// Whether anything is drawn.
    pub fn is_shown(&self) -> bool {
        self.line.is_some()
    }

    /// Shows `text` now: a new step.
    pub fn step(&self, text: impl Display) {
        self.draw(&text.to_string(), true);
    }

    /// Shows `text` unless the line was drawn moments ago: for frequent updates.
    pub fn update(&self, text: impl Display) {
        self.draw(&text.to_string(), false);
    }

    /// Shows `what: DONE of TOTAL MiB (P%)`, as a frequent update.
    pub fn bytes(&self, what: &str, done: u64, total: Option<u64>) {
        if !self.is_shown() {
            return;
        }
        match total {
            Some(total) if total > 0 => {
                let percent = done.saturating_mul(100) / total;
                self.update(format!("{what}: {} of {} ({percent}%)", size(done), size(total)));
            }
            _ => self.update(format!("{what}: {}", size(done))),
        }
    }

    /// Clears the line (the next step draws it again).
    pub fn clear(&self) {
        if let Some(line) = &self.line {
            let mut line = line.lock().unwrap_or_else(PoisonError::into_inner);
            if line.drawn_at.take().is_some() {
                erase();
            }
        }
    }

    /// An observer for a transfer that shows its bytes, as `sending` while the request goes out and `receiving`
    /// while the answer comes in (an empty label: that way is not shown); none when nothing is shown.
    pub fn transfer(&self, sending: &str, receiving: &str) -> Option<TransferObserver> {
        if !self.is_shown() {
            return None;
        }
        let (progress, sending, receiving) = (self.clone(), sending.to_owned(), receiving.to_owned());
        Some(TransferObserver::new(move |transfer| match transfer {
            Transfer::Sent { .. } if sending.is_empty() => {}
            Transfer::Sent { done, total } if done == total => {
                progress.step(format!("{sending}: {} sent, waiting for the answer", size(total)));
            }
            Transfer::Sent { done, total } => progress.bytes(&sending, done, Some(total)),
            Transfer::Received { .. } if receiving.is_empty() => {}
            Transfer::Received { done, total } => progress.bytes(&receiving, done, total),
        }))
    }

    /// Awaits `work`, showing `what` and the seconds it has taken, once a second.
    pub async fn while_waiting<T>(&self, what: &str, work: impl Future<Output = T>) -> T {
        if !self.is_shown() {
            return work.await;
        }
        let started = Instant::now();
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = ticks.tick() => self.step(format!("{what} ({} s)", started.elapsed().as_secs())),
            }
        }
    }

    fn draw(&self, text: &str, now: bool) {
        let Some(line) = &self.line else { return };
        let mut line = line.lock().unwrap_or_else(PoisonError::into_inner);
        if !now && line.drawn_at.is_some_and(|at| at.elapsed() < REDRAW_EVERY) {
            return;
        }
        line.drawn_at = Some(Instant::now());
        // One line: no newline from the text, and short enough not to wrap.
        let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(MAX_COLUMNS).collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{text}\x1b[K");
        let _ = err.flush();
    }
}

/// `bytes` for a person: KiB below a MiB, else MiB with one decimal.
fn size(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{} KiB", bytes.div_ceil(1 << 10))
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hidden_line_tells_no_observer_and_waits_plainly() {
        let hidden = Progress::on_terminal(false);
        assert!(!hidden.is_shown());
        assert!(hidden.transfer("up", "down").is_none());
        hidden.step("nothing drawn");
        hidden.clear();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        assert_eq!(runtime.block_on(hidden.while_waiting("waiting", async { 7 })), 7);
    }

    #[test]
    fn sizes_read_in_the_unit_that_suits_them() {
        assert_eq!(size(0), "0 KiB");
        assert_eq!(size(1500), "2 KiB");
        assert_eq!(size(5 << 20), "5.0 MiB");
    }
}
