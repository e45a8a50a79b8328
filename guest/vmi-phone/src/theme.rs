//! Colors, type and the screen's fixed geometry, all derived from the screen size so
//! that 720×1280 and 480×800 phones both look right.

use vmi_guest_sdk::gfx::{Color, Font, Rect, TextStyle, Weight, hex, rgba};

/// Page background of apps.
pub const BG: Color = hex(0x0e1014);
/// App bars and the status bar inside apps.
pub const BAR: Color = hex(0x161a21);
/// Raised surfaces: buttons.
pub const SURFACE_2: Color = hex(0x2a303b);
/// Hairlines between list rows.
pub const DIVIDER: Color = hex(0x242a33);
/// Primary text.
pub const TEXT: Color = hex(0xf2f4f8);
/// Secondary text.
pub const TEXT_2: Color = hex(0xa3abb9);
/// Hints and placeholders.
pub const TEXT_3: Color = hex(0x6b7484);
/// Links, carets, unread markers.
pub const ACCENT: Color = hex(0x5b9bff);
/// Badges and the stop button.
pub const RED: Color = hex(0xff453a);
/// The start button.
pub const GREEN: Color = hex(0x30d158);
/// Pure white.
pub const WHITE: Color = hex(0xffffff);
/// The home screen wallpaper, top.
pub const WALL_TOP: Color = hex(0x1d2b53);
/// The home screen wallpaper, bottom.
pub const WALL_BOTTOM: Color = hex(0x4a2456);
/// Frosted glass on the wallpaper.
pub const GLASS: Color = rgba(255, 255, 255, 0x1e);
/// Text on the wallpaper, secondary.
pub const ON_WALL_2: Color = rgba(255, 255, 255, 0xbf);

/// Type roles and geometry for one screen size.
#[derive(Clone, Debug)]
pub struct Theme {
    /// Screen width.
    pub w: i32,
    /// Screen height.
    pub h: i32,
    /// Scale from the 720×1280 design.
    pub s: f32,
    /// Height of the status bar.
    pub status_h: i32,
    /// Height of the navigation bar at the bottom.
    pub nav_h: i32,
    /// Height of an app's title bar.
    pub appbar_h: i32,
    /// Horizontal page margin.
    pub pad: i32,
    /// Status bar text.
    pub status_font: Font,
    /// Small print: times, counts.
    pub caption: Font,
    /// Labels under icons, secondary lines.
    pub label: Font,
    /// Body text.
    pub body: Font,
    /// Emphasized body text (senders, buttons).
    pub strong: Font,
    /// The Notes editor's text.
    pub editor: Font,
    /// Section headlines.
    pub headline: Font,
    /// App bar titles.
    pub title: Font,
    /// Big clock digits.
    pub numerals: Font,
}

impl Theme {
    /// The theme for a `width × height` screen at `density` pixels per CSS pixel × 100 (0: unknown, so the
    /// 720×1280 design is fitted to the screen).
    pub fn new(width: u32, height: u32, density: u32) -> Theme {
        let (w, h) = (width as i32, height as i32);
        let fitted = (w as f32 / 720.0).min(h as f32 / 1280.0);
        // The design is drawn at 2 pixels per point, so a known density sets the scale (text and touch targets
        // keep their size in the hand whatever the orientation); the short side must still hold a 640-pixel
        // design across.
        let s = if density == 0 { fitted } else { (density as f32 / 200.0).min(w.min(h) as f32 / 640.0) };
        let s = s.max(0.25);
        let sz = |px: f32| (px * s).round().max(1.0) as u32;
        let d = |px: f32| (px * s).round() as i32;
        Theme {
            w,
            h,
            s,
            status_h: d(48.0),
            nav_h: d(48.0),
            appbar_h: d(112.0),
            pad: d(32.0),
            status_font: Font::new(sz(24.0), Weight::Bold),
            caption: Font::new(sz(18.0), Weight::Regular),
            label: Font::new(sz(21.0), Weight::Regular),
            body: Font::new(sz(24.0), Weight::Regular),
            strong: Font::new(sz(24.0), Weight::Bold),
            editor: Font::new(sz(28.0), Weight::Regular),
            headline: Font::new(sz(32.0), Weight::Bold),
            title: Font::new(sz(40.0), Weight::Bold),
            numerals: Font::numerals(sz(128.0)),
        }
    }

    /// `px` design pixels at this screen's scale.
    pub fn d(&self, px: f32) -> i32 {
        (px * self.s).round() as i32
    }

    /// `px` design pixels at this screen's scale, unrounded (for shapes).
    pub fn f(&self, px: f32) -> f32 {
        px * self.s
    }

    /// The whole screen.
    pub fn screen(&self) -> Rect {
        Rect::new(0, 0, self.w, self.h)
    }

    /// The status bar.
    pub fn status(&self) -> Rect {
        Rect::new(0, 0, self.w, self.status_h)
    }

    /// The navigation bar (tapping it goes home).
    pub fn nav(&self) -> Rect {
        Rect::new(0, self.h - self.nav_h, self.w, self.nav_h)
    }

    /// An app's title bar, under the status bar.
    pub fn appbar(&self) -> Rect {
        Rect::new(0, self.status_h, self.w, self.appbar_h)
    }

    /// Between an app's title bar and the navigation bar.
    pub fn content(&self) -> Rect {
        Rect::from_edges(0, self.status_h + self.appbar_h, self.w, self.h - self.nav_h)
    }

    /// Paragraph style for reading (mail bodies).
    pub fn reading(&self) -> TextStyle {
        TextStyle::new(self.body).with_line_height(self.d(38.0))
    }

    /// Paragraph style of the Notes editor.
    pub fn writing(&self) -> TextStyle {
        TextStyle::new(self.editor).with_line_height(self.d(44.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_scales_with_the_screen() {
        let big = Theme::new(720, 1280, 0);
        assert_eq!((big.status_h, big.pad), (48, 32));
        assert_eq!(big.content().bottom(), 1280 - 48);
        let small = Theme::new(480, 800, 0);
        assert!(small.status_h < big.status_h);
        assert!(small.title.px() < big.title.px());
        assert!(small.content().h > 0);
    }

    #[test]
    fn a_known_density_keeps_sizes_across_a_rotation() {
        let portrait = Theme::new(780, 1688, 200);
        let landscape = Theme::new(1688, 780, 200);
        assert_eq!((portrait.s, landscape.s), (1.0, 1.0));
        assert_eq!(portrait.body.px(), landscape.body.px());
        assert!(landscape.content().h > 400, "room for content in landscape");
        // A small window at a high density still fits the design across its short side.
        assert!(Theme::new(480, 800, 300).s <= 0.75);
    }
}
