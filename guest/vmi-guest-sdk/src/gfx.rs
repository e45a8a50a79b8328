//! Drawing for phone apps: a [`Canvas`] that owns the framebuffer and tracks damage, a
//! few anti-aliased primitives, and text in DejaVu Sans from a glyph atlas made at build
//! time.
//!
//! # Pixels and colors
//!
//! The framebuffer is RGBA8 as the host reads it: bytes R, G, B, A in memory. A pixel is a
//! [`Color`], a `u32` read from those bytes in little-endian order (wasm32 is
//! little-endian), so its value is `0xAABBGGRR`. Build colors with [`rgb`] and [`rgba`]
//! rather than by hand: `rgb(0x20, 0x80, 0xff)` is `0xffff8020`. The alpha of a color
//! passed to a drawing operation is its opacity; the framebuffer itself stays opaque.
//!
//! # Damage
//!
//! Every drawing operation records the rectangle it touched, clipped to the canvas and the
//! clip rectangle. [`Canvas::present`] hands the host the framebuffer (the first time, or
//! when it moved) and the accumulated damage as a few merged rectangles, then forgets it.
//! Drawing is pure and works off wasm32 (tests render screens to PNG); `present` is the
//! only host call.
//!
//! # Clipping
//!
//! [`Canvas::set_clip`] restricts every operation, and the damage it records, to one
//! rectangle. A cheap way to repaint one region of a screen is to clip to it and run the
//! screen's whole drawing code: only the region's pixels are written and reported.
//!
//! # Text
//!
//! [`Font`] picks a pre-rasterized face of DejaVu Sans by pixel size and [`Weight`];
//! [`Canvas::draw_text`] draws one line with kerning, and [`TextLayout`] wraps paragraphs
//! for [`Canvas::draw_layout`]. Faces cover printable ASCII, Latin-1 and a little common
//! punctuation (dashes, curly quotes, bullet, ellipsis, euro, arrows, check mark), and
//! every full face draws Chinese and Japanese (common hanzi and kanji, kana, CJK
//! punctuation, fullwidth forms) from one CJK face of Droid Sans Fallback at 24 px; any
//! other character draws as U+FFFD (�).

mod canvas;
mod damage;
mod font;
mod text;

pub use canvas::Canvas;
pub use damage::{Damage, MAX_DAMAGE_RECTS};
pub use font::{Font, Weight};
pub use text::{Line, TextLayout, TextStyle};

/// A pixel: RGBA8 bytes read as a little-endian `u32`, i.e. `0xAABBGGRR`. See [`rgb`].
pub type Color = u32;

/// An opaque color from red, green and blue bytes (`0xff_BB_GG_RR`).
pub const fn rgb(r: u8, g: u8, b: u8) -> Color {
    rgba(r, g, b, 0xff)
}

/// A color from red, green, blue and alpha (opacity) bytes (`0xAA_BB_GG_RR`).
pub const fn rgba(r: u8, g: u8, b: u8, a: u8) -> Color {
    (r as u32) | (g as u32) << 8 | (b as u32) << 16 | (a as u32) << 24
}

/// An opaque color from a web-style `0xRRGGBB` value.
pub const fn hex(rgb24: u32) -> Color {
    rgb((rgb24 >> 16) as u8, (rgb24 >> 8) as u8, rgb24 as u8)
}

/// The red, green, blue and alpha bytes of `color`.
pub const fn channels(color: Color) -> [u8; 4] {
    color.to_le_bytes()
}

/// `color` with its alpha replaced by `alpha`.
pub const fn with_alpha(color: Color, alpha: u8) -> Color {
    (color & 0x00ff_ffff) | (alpha as u32) << 24
}

/// The color `t/255` of the way from `a` to `b` (all four channels).
pub const fn mix(a: Color, b: Color, t: u8) -> Color {
    let t = t as u32;
    let t = t + (t >> 7);
    let it = 256 - t;
    let rb = (((a & 0x00ff_00ff) * it + (b & 0x00ff_00ff) * t) >> 8) & 0x00ff_00ff;
    let ga = (((a >> 8) & 0x00ff_00ff) * it + ((b >> 8) & 0x00ff_00ff) * t) & 0xff00_ff00;
    rb | ga
}

/// `src` composited over opaque `dst` by `src`'s alpha: the opaque color a translucent
/// fill leaves. Useful to precompute translucency over a known background, so that the
/// fill is a plain copy instead of a per-pixel blend.
pub fn over(dst: Color, src: Color) -> Color {
    blend(dst | 0xff00_0000, src, src >> 24)
}

/// Composites opaque `src` over `dst` with coverage `a` (0 keeps `dst`, 255 gives `src`).
#[inline(always)]
pub(crate) fn blend(dst: Color, src: Color, a: u32) -> Color {
    let a = a + (a >> 7);
    let ia = 256 - a;
    let src = src | 0xff00_0000;
    let rb = (((src & 0x00ff_00ff) * a + (dst & 0x00ff_00ff) * ia) >> 8) & 0x00ff_00ff;
    let ga = (((src >> 8) & 0x00ff_00ff) * a + ((dst >> 8) & 0x00ff_00ff) * ia) & 0xff00_ff00;
    rb | ga
}

/// An axis-aligned rectangle of pixels: columns `x..x+w`, rows `y..y+h`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rect {
    /// Left column.
    pub x: i32,
    /// Top row.
    pub y: i32,
    /// Width in pixels (empty when ≤ 0).
    pub w: i32,
    /// Height in pixels (empty when ≤ 0).
    pub h: i32,
}

impl Rect {
    /// The rectangle at `(x, y)` of size `w` × `h`.
    pub const fn new(x: i32, y: i32, w: i32, h: i32) -> Rect {
        Rect { x, y, w, h }
    }

    /// The rectangle between left/top (inclusive) and right/bottom (exclusive) edges.
    pub const fn from_edges(left: i32, top: i32, right: i32, bottom: i32) -> Rect {
        Rect { x: left, y: top, w: right - left, h: bottom - top }
    }

    /// One past the right-most column.
    pub const fn right(&self) -> i32 {
        self.x + self.w
    }

    /// One past the bottom row.
    pub const fn bottom(&self) -> i32 {
        self.y + self.h
    }

    /// True when it holds no pixel.
    pub const fn is_empty(&self) -> bool {
        self.w <= 0 || self.h <= 0
    }

    /// Number of pixels (0 when empty).
    pub const fn area(&self) -> i64 {
        if self.is_empty() { 0 } else { self.w as i64 * self.h as i64 }
    }

    /// True when pixel `(px, py)` is inside.
    pub const fn contains(&self, px: i32, py: i32) -> bool {
        px >= self.x && py >= self.y && px < self.right() && py < self.bottom()
    }

    /// The pixels in both (empty, at the origin, when they do not meet).
    pub fn intersect(&self, other: Rect) -> Rect {
        let r = Rect::from_edges(
            self.x.max(other.x),
            self.y.max(other.y),
            self.right().min(other.right()),
            self.bottom().min(other.bottom()),
        );
        if r.is_empty() { Rect::default() } else { r }
    }

    /// The smallest rectangle holding both (an empty one does not count).
    pub fn union(&self, other: Rect) -> Rect {
        if self.is_empty() {
            return other;
        }
        if other.is_empty() {
            return *self;
        }
        Rect::from_edges(
            self.x.min(other.x),
            self.y.min(other.y),
            self.right().max(other.right()),
            self.bottom().max(other.bottom()),
        )
    }

    /// True when the two share at least one pixel.
    pub fn intersects(&self, other: Rect) -> bool {
        !self.intersect(other).is_empty()
    }

    /// Shrinks every side by `d` pixels (grows when negative).
    pub const fn inset(&self, d: i32) -> Rect {
        Rect { x: self.x + d, y: self.y + d, w: self.w - 2 * d, h: self.h - 2 * d }
    }

    /// Moved by `(dx, dy)`.
    pub const fn offset(&self, dx: i32, dy: i32) -> Rect {
        Rect { x: self.x + dx, y: self.y + dy, w: self.w, h: self.h }
    }

    /// The center, rounded down.
    pub const fn center(&self) -> (i32, i32) {
        (self.x + self.w / 2, self.y + self.h / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colors_are_rgba_bytes_in_memory() {
        assert_eq!(rgb(0x20, 0x80, 0xff), 0xffff_8020);
        assert_eq!(channels(rgba(1, 2, 3, 4)), [1, 2, 3, 4]);
        assert_eq!(hex(0x102030), rgb(0x10, 0x20, 0x30));
        assert_eq!(mix(rgb(0, 0, 0), rgb(255, 255, 255), 255), rgb(255, 255, 255));
        assert_eq!(mix(rgb(0, 0, 0), rgb(255, 255, 255), 0), rgb(0, 0, 0));
        assert_eq!(blend(rgb(0, 0, 0), rgb(200, 100, 50), 255), rgb(200, 100, 50));
        assert_eq!(blend(rgb(9, 9, 9), rgb(200, 100, 50), 0), rgb(9, 9, 9));
        assert_eq!(over(rgb(9, 9, 9), rgba(200, 100, 50, 255)), rgb(200, 100, 50));
        assert_eq!(over(rgb(9, 9, 9), rgba(200, 100, 50, 0)), rgb(9, 9, 9));
        let half = channels(blend(rgb(0, 0, 0), rgb(200, 100, 50), 128));
        assert_eq!(half[3], 255);
        assert!((99..=101).contains(&half[0]));
    }

    #[test]
    fn rect_algebra() {
        let a = Rect::new(0, 0, 10, 10);
        let b = Rect::new(5, 5, 10, 10);
        assert_eq!(a.intersect(b), Rect::new(5, 5, 5, 5));
        assert_eq!(a.union(b), Rect::new(0, 0, 15, 15));
        assert!(a.intersect(Rect::new(20, 20, 1, 1)).is_empty());
        assert_eq!(Rect::default().union(b), b);
        assert!(a.contains(9, 9) && !a.contains(10, 0));
    }
}
