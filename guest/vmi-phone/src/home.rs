//! The home screen: wallpaper, the date, a glance at the newest mail, and a dock of app
//! icons drawn from vector primitives.

use vmi_guest_sdk::gfx::{Canvas, Color, Rect, hex, mix, over, with_alpha};

use crate::mail::{Inbox, Message};
use crate::theme::{self, Theme};
use crate::time::{Civil, short_stamp};
use crate::ui;

/// The apps on the phone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppId {
    /// Mail.
    Mail,
    /// Notes.
    Notes,
    /// Paint.
    Paint,
    /// Stopwatch.
    Stopwatch,
}

/// The apps in dock order.
pub const APPS: [AppId; 4] = [AppId::Mail, AppId::Notes, AppId::Paint, AppId::Stopwatch];

impl AppId {
    /// The name under its icon.
    pub fn name(self) -> &'static str {
        match self {
            AppId::Mail => "Mail",
            AppId::Notes => "Notes",
            AppId::Paint => "Paint",
            AppId::Stopwatch => "Stopwatch",
        }
    }

    fn colors(self) -> (Color, Color) {
        match self {
            AppId::Mail => (hex(0x5aa2ff), hex(0x1a5fe0)),
            AppId::Notes => (hex(0xffd866), hex(0xffa41b)),
            AppId::Paint => (hex(0xff7ac0), hex(0x8a4dff)),
            AppId::Stopwatch => (hex(0x47e0a0), hex(0x0c9a6a)),
        }
    }
}

/// How many messages the home card shows.
const CARD_ROWS: usize = 3;

/// The dock holding the app icons.
pub fn dock(t: &Theme) -> Rect {
    let h = t.d(214.0);
    Rect::new(t.pad / 2, t.h - t.nav_h - h - t.d(12.0), t.w - t.pad, h)
}

/// The icon tile of the `i`-th app.
pub fn icon_rect(t: &Theme, i: usize) -> Rect {
    let d = dock(t);
    let size = t.d(116.0);
    let cell = d.w / APPS.len() as i32;
    Rect::new(d.x + cell * i as i32 + (cell - size) / 2, d.y + t.d(26.0), size, size)
}

/// The icon and its label: where a tap opens the app.
fn app_cell(t: &Theme, i: usize) -> Rect {
    let d = dock(t);
    let cell = d.w / APPS.len() as i32;
    Rect::new(d.x + cell * i as i32, d.y, cell, d.h)
}

/// The app whose icon is at `(x, y)`.
pub fn app_at(t: &Theme, x: i32, y: i32) -> Option<AppId> {
    (0..APPS.len()).find(|&i| app_cell(t, i).contains(x, y)).map(|i| APPS[i])
}

/// The date and mail summary at the top.
pub fn widget_rect(t: &Theme) -> Rect {
    let top = t.status_h + t.d(48.0);
    let h = t.title.line_height() + t.d(10.0) + t.body.line_height();
    Rect::new(0, top, t.w, h)
}

/// The card with the newest mail (a tap opens Mail).
pub fn card_rect(t: &Theme) -> Rect {
    let w = widget_rect(t);
    let h = t.d(84.0) + card_rows(t) as i32 * card_row_h(t) + t.d(12.0);
    Rect::new(t.pad, w.bottom() + t.d(40.0), t.w - 2 * t.pad, h)
}

/// Mail rows the card shows: [`CARD_ROWS`], fewer when the card would reach the dock (a landscape screen), at
/// least one.
fn card_rows(t: &Theme) -> usize {
    let top = widget_rect(t).bottom() + t.d(40.0) + t.d(84.0) + t.d(12.0);
    let room = dock(t).y - t.d(24.0) - top;
    ((room / card_row_h(t).max(1)).max(1) as usize).min(CARD_ROWS)
}

fn card_row_h(t: &Theme) -> i32 {
    t.d(78.0)
}

/// Everything on the home screen that shows mail: repaint these when mail changes.
pub fn mail_regions(t: &Theme) -> [Rect; 3] {
    let icon = icon_rect(t, 0);
    let badge = Rect::new(icon.right() - t.d(40.0), icon.y - t.d(22.0), t.d(80.0), t.d(48.0));
    [widget_rect(t), card_rect(t), icon.union(badge)]
}

/// Paints the wallpaper inside the clip.
pub fn wallpaper(c: &mut Canvas, t: &Theme) {
    c.fill_vgradient(t.screen(), theme::WALL_TOP, theme::WALL_BOTTOM);
}

/// The wallpaper's color at row `y`.
fn wall_at(t: &Theme, y: i32) -> Color {
    let span = (t.h - 1).max(1);
    mix(theme::WALL_TOP, theme::WALL_BOTTOM, ((y * 255 + span / 2) / span).clamp(0, 255) as u8)
}

/// A frosted-glass panel on the wallpaper. Glass over a vertical gradient is a vertical
/// gradient, so this is a plain fill, not a blend per pixel.
fn glass(c: &mut Canvas, t: &Theme, r: Rect, radius: f32) {
    let top = over(wall_at(t, r.y), theme::GLASS);
    let bottom = over(wall_at(t, r.bottom() - 1), theme::GLASS);
    c.fill_rounded_rect_vgradient(r, radius, top, bottom);
}

/// What the home screen shows.
pub struct HomeData<'a> {
    /// The local date.
    pub today: Civil,
    /// The inbox.
    pub inbox: &'a Inbox,
    /// Now, Unix seconds (for mail stamps).
    pub now_s: i64,
    /// Offset of local time from UTC, minutes.
    pub tz_min: i32,
}

/// Draws the home screen below the status bar (the wallpaper is already painted).
pub fn draw(c: &mut Canvas, t: &Theme, data: &HomeData<'_>) {
    let w = widget_rect(t);
    let x = t.pad + t.d(4.0);
    if w.intersects(c.clip()) {
        let date = format!("{}, {}", data.today.weekday_name(), data.today.day_month());
        c.draw_text(x, w.y, &date, &t.title, theme::WHITE);
        let unread = data.inbox.unread();
        let summary = match unread {
            0 => "No unread mail".to_string(),
            1 => "1 unread message".to_string(),
            n => format!("{n} unread messages"),
        };
        c.draw_text(x, w.y + t.title.line_height() + t.d(10.0), &summary, &t.body, theme::ON_WALL_2);
    }

    let card = card_rect(t);
    if card.intersects(c.clip()) {
        draw_card(c, t, card, data);
    }

    let d = dock(t);
    if d.intersects(c.clip()) {
        glass(c, t, d, t.f(44.0));
        for (i, &app) in APPS.iter().enumerate() {
            let r = icon_rect(t, i);
            draw_icon(c, t, app, r);
            let label_y = r.bottom() + t.d(14.0);
            c.draw_text_centered(r.x + r.w / 2, label_y, app.name(), &t.label, theme::WHITE);
        }
        let unread = data.inbox.unread();
        if unread > 0 {
            let r = icon_rect(t, 0);
            ui::badge(c, r.right() - t.d(8.0), r.y + t.d(8.0), unread, &t.caption, t);
        }
    }
}

fn draw_card(c: &mut Canvas, t: &Theme, card: Rect, data: &HomeData<'_>) {
    glass(c, t, card, t.f(36.0));
    let x = card.x + t.d(28.0);
    let right = card.right() - t.d(28.0);
    let head_mid = card.y + t.d(44.0);
    let (ew, eh) = (t.d(30.0), t.d(22.0));
    ui::envelope(c, Rect::new(x, head_mid - eh / 2, ew, eh), t.f(2.6), theme::WHITE);
    ui::text_centered_v(c, x + ew + t.d(14.0), head_mid, "Mail", &t.strong, theme::WHITE);

    let rows = card_rows(t);
    let messages: Vec<&Message> = data.inbox.messages().iter().take(rows).collect();
    let top = card.y + t.d(84.0);
    if messages.is_empty() {
        let mid = top + rows as i32 * card_row_h(t) / 2 - t.d(12.0);
        c.draw_text_centered(
            card.x + card.w / 2,
            ui::cap_top(mid, &t.body),
            "You're all caught up",
            &t.body,
            theme::ON_WALL_2,
        );
        return;
    }
    for (i, m) in messages.iter().enumerate() {
        let y = top + i as i32 * card_row_h(t);
        if i > 0 {
            c.fill(Rect::new(x, y, right - x, 1), with_alpha(theme::WHITE, 0x22));
        }
        let mid1 = y + t.d(24.0);
        let mid2 = y + t.d(54.0);
        let stamp = short_stamp(m.received_s, data.now_s, data.tz_min);
        let sw = t.caption.measure(&stamp);
        c.draw_text_right(right, ui::cap_top(mid1, &t.caption), &stamp, &t.caption, theme::ON_WALL_2);
        let mut nx = x;
        if m.unread {
            let r = t.f(5.5);
            c.fill_circle(x as f32 + r, mid1 as f32, r, hex(0x8ab8ff));
            nx += t.d(20.0);
        }
        let name_font = if m.unread { &t.strong } else { &t.body };
        let name = name_font.ellipsize(m.sender(), right - nx - sw - t.d(16.0));
        ui::text_centered_v(c, nx, mid1, &name, name_font, theme::WHITE);
        let subject = t.label.ellipsize(m.title(), right - x);
        ui::text_centered_v(c, x, mid2, &subject, &t.label, theme::ON_WALL_2);
    }
}

/// Draws an app icon: a rounded gradient tile with a white glyph.
pub fn draw_icon(c: &mut Canvas, t: &Theme, app: AppId, r: Rect) {
    let (top, bottom) = app.colors();
    let s = r.w as f32;
    c.fill_rounded_rect_vgradient(r, s * 0.27, top, bottom);
    let (cx, cy) = (r.x as f32 + s / 2.0, r.y as f32 + s / 2.0);
    let tile_at = |y: f32| mix(top, bottom, (((y - r.y as f32) / s) * 255.0).clamp(0.0, 255.0) as u8);
    let white = theme::WHITE;
    match app {
        AppId::Mail => {
            let (w, h) = (s * 0.60, s * 0.44);
            let body = Rect::new((cx - w / 2.0) as i32, (cy - h / 2.0) as i32, w as i32, h as i32);
            c.fill_rounded_rect(body, s * 0.06, white);
            let (x0, x1, y0) = (body.x as f32 + s * 0.05, body.right() as f32 - s * 0.05, body.y as f32 + s * 0.05);
            let ink = tile_at(cy);
            c.draw_line(x0, y0, cx, cy + s * 0.03, s * 0.045, ink);
            c.draw_line(cx, cy + s * 0.03, x1, y0, s * 0.045, ink);
        }
        AppId::Notes => {
            let (w, h) = (s * 0.50, s * 0.60);
            let sheet = Rect::new((cx - w / 2.0) as i32, (cy - h / 2.0) as i32, w as i32, h as i32);
            c.fill_rounded_rect(sheet, s * 0.07, white);
            let ink = hex(0xf0a81c);
            let x0 = sheet.x as f32 + s * 0.09;
            for (i, len) in [0.32f32, 0.32, 0.32, 0.2].iter().enumerate() {
                let y = sheet.y as f32 + s * (0.13 + 0.11 * i as f32);
                c.draw_line(x0, y, x0 + s * len, y, s * 0.04, ink);
            }
        }
        AppId::Paint => {
            let pr = s * 0.30;
            c.fill_circle(cx, cy, pr, white);
            let dots = [
                (hex(0xff3b30), -0.12, -0.14),
                (hex(0xffcc00), 0.06, -0.17),
                (hex(0x34c759), 0.16, -0.02),
                (hex(0x0a84ff), 0.10, 0.14),
            ];
            for (color, dx, dy) in dots {
                c.fill_circle(cx + s * dx, cy + s * dy, s * 0.055, color);
            }
            let (hx, hy) = (cx - s * 0.12, cy + s * 0.11);
            c.fill_circle(hx, hy, s * 0.065, tile_at(hy));
        }
        AppId::Stopwatch => {
            let (fy, fr) = (cy + s * 0.04, s * 0.26);
            c.fill_rounded_rect(
                Rect::new((cx - s * 0.06) as i32, (fy - fr - s * 0.13) as i32, (s * 0.12) as i32, (s * 0.08) as i32),
                s * 0.02,
                white,
            );
            c.draw_line(cx, fy - fr - s * 0.06, cx, fy - fr, s * 0.05, white);
            c.stroke_circle(cx, fy, fr, s * 0.065, white);
            let angle = 0.9f32;
            let (hx, hy) = (cx + angle.sin() * fr * 0.62, fy - angle.cos() * fr * 0.62);
            c.draw_line(cx, fy, hx, hy, s * 0.05, white);
            c.fill_circle(cx, fy, s * 0.045, white);
        }
    }
    let _ = t;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icons_are_where_taps_land() {
        for (w, h) in [(720, 1280), (480, 800)] {
            let t = Theme::new(w, h, 0);
            for (i, &app) in APPS.iter().enumerate() {
                let (x, y) = icon_rect(&t, i).center();
                assert_eq!(app_at(&t, x, y), Some(app));
            }
            assert_eq!(app_at(&t, 5, t.status_h + 5), None);
            assert!(card_rect(&t).bottom() < dock(&t).y, "{w}x{h}: the card clears the dock");
            assert!(dock(&t).bottom() <= t.nav().y);
        }
    }
}
