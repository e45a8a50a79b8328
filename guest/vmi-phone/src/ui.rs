//! Pieces every screen shares: the navigation bar, app title bars, avatars, small glyphs.

use vmi_guest_sdk::gfx::{Canvas, Color, Font, Rect, with_alpha};

use crate::theme::{self, Theme};

/// Draws the navigation bar: a home pill, on the wallpaper (`glass`) or on an app page.
pub fn nav_bar(c: &mut Canvas, t: &Theme, on_wallpaper: bool) {
    let nav = t.nav();
    if !on_wallpaper {
        c.fill(nav, theme::BG);
    }
    let (pw, ph) = (t.f(150.0), t.f(9.0));
    let (cx, cy) = (nav.x as f32 + nav.w as f32 / 2.0, nav.y as f32 + nav.h as f32 / 2.0);
    let pill = Rect::new((cx - pw / 2.0) as i32, (cy - ph / 2.0) as i32, pw as i32, ph.round() as i32);
    let color = if on_wallpaper { with_alpha(theme::WHITE, 0xd0) } else { theme::TEXT_2 };
    c.fill_rounded_rect(pill, ph / 2.0, color);
}

/// Where the back button of an app bar is.
pub fn back_button(t: &Theme) -> Rect {
    let bar = t.appbar();
    Rect::new(0, bar.y, t.d(260.0), bar.h)
}

/// Draws an app's title bar with `title`; with `back`, a chevron before it (and the title
/// smaller, as the name of where back goes). `trailing` is right-aligned small text.
pub fn app_bar(c: &mut Canvas, t: &Theme, title: &str, back: bool, trailing: &str) {
    let bar = t.appbar();
    c.fill(bar, theme::BAR);
    let mid = bar.y + bar.h / 2;
    if back {
        let x = t.pad as f32 + t.f(4.0);
        let (arm, w) = (t.f(14.0), t.f(4.5));
        let y = mid as f32;
        c.draw_line(x + arm, y - arm, x, y, w, theme::ACCENT);
        c.draw_line(x, y, x + arm, y + arm, w, theme::ACCENT);
        let f = &t.body;
        c.draw_text(t.pad + t.d(30.0), mid - f.line_height() / 2, title, f, theme::ACCENT);
    } else {
        let f = &t.title;
        text_centered_v(c, t.pad, mid, title, f, theme::TEXT);
    }
    if !trailing.is_empty() {
        let f = &t.label;
        let y = mid - f.line_height() / 2;
        c.draw_text_right(t.w - t.pad, y, trailing, f, theme::TEXT_2);
    }
    c.fill(Rect::new(0, bar.bottom() - 1, t.w, 1), theme::DIVIDER);
}

/// Draws `text` so that its capital letters are vertically centered on `mid`.
pub fn text_centered_v(c: &mut Canvas, x: i32, mid: i32, text: &str, f: &Font, color: Color) -> i32 {
    let top = mid - f.cap_height() / 2 - (f.ascent() - f.cap_height());
    c.draw_text(x, top, text, f, color)
}

/// The line top that vertically centers a font's capitals on `mid`.
pub fn cap_top(mid: i32, f: &Font) -> i32 {
    mid - f.cap_height() / 2 - (f.ascent() - f.cap_height())
}

/// A stable, pleasant color for a person's avatar.
pub fn avatar_color(name: &str) -> Color {
    const COLORS: [Color; 8] = [
        theme::ACCENT,
        crate::theme::GREEN,
        vmi_guest_sdk::gfx::hex(0xff9f0a),
        vmi_guest_sdk::gfx::hex(0xbf5af2),
        vmi_guest_sdk::gfx::hex(0xff375f),
        vmi_guest_sdk::gfx::hex(0x64d2ff),
        vmi_guest_sdk::gfx::hex(0xffd60a),
        vmi_guest_sdk::gfx::hex(0x5e5ce6),
    ];
    // FNV-1a: deterministic across builds, unlike std's hasher.
    let h = name.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    COLORS[(h % COLORS.len() as u32) as usize]
}

/// The letter an avatar shows for a sender ("Ann <ann@x>" → 'A').
pub fn initial(name: &str) -> char {
    name.chars().find(|c| c.is_alphanumeric()).map_or('?', |c| c.to_uppercase().next().unwrap_or(c))
}

/// A round avatar with the sender's initial.
pub fn avatar(c: &mut Canvas, cx: f32, cy: f32, r: f32, name: &str, font: &Font) {
    c.fill_circle(cx, cy, r, avatar_color(name));
    let letter = initial(name).to_string();
    let top = cap_top(cy as i32, font);
    c.draw_text_centered(cx as i32, top, &letter, font, theme::WHITE);
}

/// An envelope outline inside `r`.
pub fn envelope(c: &mut Canvas, r: Rect, stroke: f32, color: Color) {
    c.stroke_rounded_rect(r, stroke * 1.2, stroke, color);
    let inset = stroke * 1.6;
    let (x0, x1) = (r.x as f32 + inset, r.right() as f32 - inset);
    let y0 = r.y as f32 + inset;
    let (mx, my) = ((x0 + x1) / 2.0, r.y as f32 + r.h as f32 * 0.56);
    c.draw_line(x0, y0, mx, my, stroke, color);
    c.draw_line(mx, my, x1, y0, stroke, color);
}

/// A red count badge centered at `(cx, cy)`; returns its box.
pub fn badge(c: &mut Canvas, cx: i32, cy: i32, count: usize, font: &Font, t: &Theme) -> Rect {
    let text = if count > 99 { "99+".to_string() } else { count.to_string() };
    let h = font.cap_height() + t.d(18.0);
    let w = (font.measure(&text) + t.d(18.0)).max(h);
    let r = Rect::new(cx - w / 2, cy - h / 2, w, h);
    c.fill_rounded_rect(r, h as f32 / 2.0, theme::RED);
    c.draw_text_centered(cx, cap_top(cy, font), &text, font, theme::WHITE);
    r
}

/// A pill-shaped button with centered text.
pub fn pill_button(c: &mut Canvas, r: Rect, text: &str, font: &Font, fill: Color, ink: Color) {
    c.fill_rounded_rect(r, r.h as f32 / 2.0, fill);
    let (cx, cy) = r.center();
    c.draw_text_centered(cx, cap_top(cy, font), text, font, ink);
}
