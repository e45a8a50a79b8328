//! The status bar: clock, unread-mail indicator, signal and battery.
//!
//! The clock and the mail indicator sit in fixed boxes ([`clock_rect`], [`badge_rect`]) so
//! that a ticking clock repaints only the clock, and new mail only the indicator.

use vmi_guest_sdk::gfx::{Canvas, Rect, with_alpha};

use crate::theme::{self, Theme};
use crate::ui;

/// The box the clock is drawn in (wide enough for any "HH:MM").
pub fn clock_rect(t: &Theme) -> Rect {
    let w = t.status_font.measure("00:00") + t.d(8.0);
    Rect::new(t.pad - t.d(4.0), 0, w, t.status_h)
}

/// The box of the unread-mail indicator, right of the clock.
pub fn badge_rect(t: &Theme) -> Rect {
    let clock = clock_rect(t);
    Rect::new(clock.right() + t.d(8.0), 0, t.d(120.0), t.status_h)
}

/// Draws the status bar. `on_wallpaper`: transparent over the home screen (the caller has
/// painted the wallpaper); otherwise on the app bar color.
pub fn draw(c: &mut Canvas, t: &Theme, clock: &str, unread: usize, on_wallpaper: bool) {
    let bar = t.status();
    if !bar.intersects(c.clip()) {
        return;
    }
    if !on_wallpaper {
        c.fill(bar, theme::BAR);
    }
    let ink = theme::TEXT;
    let mid = bar.h / 2;
    let f = &t.status_font;
    ui::text_centered_v(c, t.pad, mid, clock, f, ink);

    if unread > 0 {
        let b = badge_rect(t);
        let (ew, eh) = (t.d(30.0), t.d(21.0));
        let env = Rect::new(b.x + t.d(10.0), mid - eh / 2, ew, eh);
        ui::envelope(c, env, t.f(2.6), ink);
        let count = if unread > 99 { "99+".to_string() } else { unread.to_string() };
        ui::text_centered_v(c, env.right() + t.d(8.0), mid, &count, &t.caption, ink);
    }

    // Battery: an outlined cell, mostly full, with its terminal nub.
    let (bw, bh) = (t.d(40.0), t.d(21.0));
    let bx = t.w - t.pad - bw - t.d(5.0);
    let by = mid - bh / 2;
    c.stroke_rounded_rect(Rect::new(bx, by, bw, bh), t.f(5.0), t.f(2.2), with_alpha(ink, 0xb0));
    let inset = t.d(4.0);
    let level = Rect::new(bx + inset, by + inset, ((bw - 2 * inset) as f32 * 0.8) as i32, bh - 2 * inset);
    c.fill_rounded_rect(level, t.f(2.0), ink);
    c.fill_rounded_rect(
        Rect::new(bx + bw + t.d(2.0), mid - t.d(4.0), t.d(4.0), t.d(8.0)),
        t.f(1.5),
        with_alpha(ink, 0xb0),
    );

    // Signal: four rising bars.
    let (step, barw) = (t.d(9.0), t.d(6.0));
    let right = bx - t.d(18.0);
    for i in 0..4 {
        let h = t.d(7.0 + 4.5 * i as f32);
        let x = right - (4 - i) * step;
        c.fill_rounded_rect(Rect::new(x, mid + t.d(11.0) - h, barw, h), t.f(1.5), ink);
    }
}
