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

/// The box of the volume level shown after a volume key, centered in the bar.
pub fn volume_rect(t: &Theme) -> Rect {
    let w = t.d(200.0);
    Rect::new((t.w - w) / 2, 0, w, t.status_h)
}

/// What the status bar shows.
#[derive(Clone, Copy, Debug)]
pub struct Status<'a> {
    /// The time, as the phone's clock setting writes it.
    pub clock: &'a str,
    /// Unread mails.
    pub unread: usize,
    /// The volume and its most, while shown.
    pub volume: Option<(u8, u8)>,
}

/// Draws the status bar. `on_wallpaper`: transparent over the home screen (the caller has
/// painted the wallpaper); otherwise on the app bar color.
pub fn draw(c: &mut Canvas, t: &Theme, status: &Status<'_>, on_wallpaper: bool) {
    let Status { clock, unread, volume } = *status;
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

    if let Some((level, most)) = volume {
        // A speaker and a track filled to the level.
        let r = volume_rect(t);
        let (sx, sh) = (r.x + t.d(6.0), t.d(16.0));
        c.fill(Rect::new(sx, mid - sh / 4, t.d(6.0), sh / 2), ink);
        let (cone_x, cone_w) = (sx + t.d(6.0), t.d(9.0).max(1));
        for i in 0..cone_w {
            let half = sh / 4 + sh / 4 * i / cone_w;
            c.fill(Rect::new(cone_x + i, mid - half, 1, 2 * half), ink);
        }
        let track = Rect::new(sx + t.d(30.0), mid - t.d(3.0), r.right() - t.d(8.0) - (sx + t.d(30.0)), t.d(6.0).max(2));
        c.fill_rounded_rect(track, t.f(3.0), with_alpha(ink, 0x50));
        let filled = track.w * i32::from(level) / i32::from(most.max(1));
        if filled > 0 {
            c.fill_rounded_rect(Rect::new(track.x, track.y, filled, track.h), t.f(3.0), ink);
        }
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
