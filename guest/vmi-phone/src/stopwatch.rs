//! Stopwatch: elapsed time is derived from the monotonic clock (a start instant plus what
//! was accumulated before), never from counting ticks, so it keeps running for free while
//! nobody watches, across snapshots and migrations. Ticks only refresh the display.
//!
//! The digits are tabular, so each character has a fixed cell; a tick repaints only the
//! cells whose character changed.

use vmi_guest_sdk::gfx::{Canvas, Rect};

use crate::theme::{self, Theme};
use crate::ui;

/// Display refresh period while visible and running.
pub const TICK_NS: u64 = 50_000_000;

/// Start/stop state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stopwatch {
    accumulated_ns: u64,
    started_at: Option<u64>,
}

impl Stopwatch {
    /// Stopped at zero.
    pub fn new() -> Stopwatch {
        Stopwatch::default()
    }

    /// True while running.
    pub fn running(&self) -> bool {
        self.started_at.is_some()
    }

    /// Elapsed time at monotonic time `now`.
    pub fn elapsed(&self, now: u64) -> u64 {
        self.accumulated_ns + self.started_at.map_or(0, |s| now.saturating_sub(s))
    }

    /// Starts or stops at `now`.
    pub fn toggle(&mut self, now: u64) {
        match self.started_at.take() {
            Some(s) => self.accumulated_ns += now.saturating_sub(s),
            None => self.started_at = Some(now),
        }
    }

    /// Back to zero (still running if it was).
    pub fn reset(&mut self, now: u64) {
        self.accumulated_ns = 0;
        if self.started_at.is_some() {
            self.started_at = Some(now);
        }
    }

    /// When the shown hundredths next change after `now`, aligned to [`TICK_NS`].
    pub fn next_tick(&self, now: u64) -> u64 {
        now + TICK_NS - self.elapsed(now) % TICK_NS
    }
}

/// "mm:ss.cc" (minutes grow past two digits after 99).
pub fn format(elapsed_ns: u64) -> String {
    let cs = elapsed_ns / 10_000_000;
    format!("{:02}:{:02}.{:02}", cs / 6000, cs / 100 % 60, cs % 100)
}

/// Left edge and top of the digits for a text of `len` characters.
fn origin(t: &Theme, len: usize) -> (i32, i32) {
    let f = &t.numerals;
    let template: String = "00:00.00".chars().rev().chain(std::iter::repeat('0')).take(len).collect();
    let area = t.content();
    let x = t.w / 2 - f.measure(&template) / 2;
    let y = area.y + area.h * 30 / 100 - f.line_height() / 2;
    (x, y)
}

/// The cells of `text`'s characters on screen.
pub fn cells(t: &Theme, text: &str) -> Vec<Rect> {
    let f = &t.numerals;
    let (x0, y) = origin(t, text.chars().count());
    let mut x = x0;
    text.chars()
        .map(|c| {
            let w = f.measure(c.encode_utf8(&mut [0; 4]));
            let r = Rect::new(x, y, w, f.line_height());
            x += w;
            r
        })
        .collect()
}

/// The region to repaint to go from showing `old` to showing `new` (None: nothing).
pub fn changed(t: &Theme, old: &str, new: &str) -> Option<Rect> {
    if old.len() != new.len() {
        let a = cells(t, old).into_iter().chain(cells(t, new));
        return Some(a.fold(Rect::default(), |acc, r| acc.union(r)));
    }
    let rects = cells(t, new);
    let r = old
        .chars()
        .zip(new.chars())
        .zip(rects)
        .filter(|((a, b), _)| a != b)
        .fold(Rect::default(), |acc, (_, r)| acc.union(r));
    (!r.is_empty()).then_some(r)
}

/// Center and radius of the start/stop button.
pub fn start_button(t: &Theme) -> (f32, f32, f32) {
    let area = t.content();
    (t.w as f32 * 0.72, area.y as f32 + area.h as f32 * 0.62, t.f(88.0))
}

/// Center and radius of the reset button.
pub fn reset_button(t: &Theme) -> (f32, f32, f32) {
    let (_, cy, r) = start_button(t);
    (t.w as f32 * 0.28, cy, r)
}

/// True when `(x, y)` is on the round button `b`.
pub fn on_button(b: (f32, f32, f32), x: i32, y: i32) -> bool {
    let (dx, dy) = (x as f32 + 0.5 - b.0, y as f32 + 0.5 - b.1);
    dx * dx + dy * dy <= b.2 * b.2
}

/// The box around both buttons.
pub fn buttons_rect(t: &Theme) -> Rect {
    let (sx, cy, r) = start_button(t);
    let (rx, _, _) = reset_button(t);
    let r = r + 2.0;
    Rect::from_edges((rx - r) as i32, (cy - r) as i32, (sx + r) as i32 + 1, (cy + r) as i32 + 1)
}

fn round_button(c: &mut Canvas, t: &Theme, b: (f32, f32, f32), label: &str, fill: u32, ink: u32) {
    let (cx, cy, r) = b;
    c.fill_circle(cx, cy, r, fill);
    c.stroke_circle(cx, cy, r - t.f(6.0), t.f(3.0), theme::BG);
    ui::text_centered_v(c, cx as i32 - t.strong.measure(label) / 2, cy as i32, label, &t.strong, ink);
}

/// Draws the Stopwatch screen below the status bar, showing `elapsed_text`.
pub fn draw(c: &mut Canvas, t: &Theme, sw: &Stopwatch, elapsed_text: &str) {
    ui::app_bar(c, t, "Stopwatch", false, "");
    let area = t.content();
    c.fill(area, theme::BG);
    let (x, y) = origin(t, elapsed_text.chars().count());
    c.draw_text(x, y, elapsed_text, &t.numerals, theme::TEXT);

    let (reset_fill, reset_ink) = (theme::SURFACE_2, theme::TEXT);
    round_button(c, t, reset_button(t), "Reset", reset_fill, reset_ink);
    let (label, fill, ink) = if sw.running() {
        ("Stop", vmi_guest_sdk::gfx::hex(0x3a1517), theme::RED)
    } else {
        ("Start", vmi_guest_sdk::gfx::hex(0x10331c), theme::GREEN)
    };
    round_button(c, t, start_button(t), label, fill, ink);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_comes_from_the_clock_not_ticks() {
        let mut sw = Stopwatch::new();
        assert_eq!(sw.elapsed(5), 0);
        sw.toggle(1_000);
        assert!(sw.running());
        assert_eq!(sw.elapsed(61_230_000_000 + 1_000), 61_230_000_000);
        sw.toggle(2_000_000_000);
        assert_eq!(sw.elapsed(9_000_000_000), 2_000_000_000 - 1_000);
        sw.toggle(10_000_000_000);
        assert_eq!(sw.elapsed(11_000_000_000), 3_000_000_000 - 1_000);
        sw.reset(11_000_000_000);
        assert_eq!(sw.elapsed(11_500_000_000), 500_000_000);
        assert_eq!(format(61_234_000_000), "01:01.23");
        assert_eq!(format(100 * 60 * 1_000_000_000), "100:00.00");
        let now = 11_520_000_000;
        assert_eq!(sw.next_tick(now) - now, 30_000_000);
    }

    #[test]
    fn ticks_repaint_only_changed_digits() {
        let t = Theme::new(720, 1280, 0);
        assert_eq!(changed(&t, "00:01.23", "00:01.23"), None);
        let one = changed(&t, "00:01.23", "00:01.24").expect("a digit changed");
        let cells = cells(&t, "00:01.24");
        assert_eq!(one, cells[7]);
        let all = changed(&t, "99:59.99", "100:00.00").expect("grew");
        assert!(all.w > one.w * 8);
    }
}
