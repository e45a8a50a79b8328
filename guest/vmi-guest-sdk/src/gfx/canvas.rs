//! The framebuffer and its drawing operations.

use super::font::ATLAS;
use super::{Color, Damage, Font, Rect, TextLayout, TextStyle, blend};

/// The phone's framebuffer: `width × height` RGBA8 pixels in guest memory, with a clip
/// rectangle and damage tracking (see the [module docs](super)).
///
/// Coordinates are pixels, `(0, 0)` top-left. Shape operations take `f32` geometry and
/// anti-alias their edges; rectangles are whole pixels.
pub struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<u32>,
    clip: Rect,
    damage: Damage,
    /// Where and how big the host was last told the framebuffer is.
    attached: Option<(usize, u32, u32)>,
}

impl std::fmt::Debug for Canvas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canvas")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("clip", &self.clip)
            .field("damage", &self.damage)
            .finish_non_exhaustive()
    }
}

/// Coverage (0..=255) of a pixel whose center is `d` pixels inside an edge (negative:
/// outside), for a one-pixel-wide box filter.
#[inline(always)]
fn coverage(d: f32) -> u32 {
    if d >= 0.5 {
        255
    } else if d <= -0.5 {
        0
    } else {
        ((d + 0.5) * 255.0 + 0.5) as u32
    }
}

impl Canvas {
    /// A black, opaque canvas. Nothing is damaged until something is drawn.
    pub fn new(width: u32, height: u32) -> Canvas {
        let (width, height) = (width.max(1), height.max(1));
        Canvas {
            width,
            height,
            pixels: vec![0xff00_0000; width as usize * height as usize],
            clip: Rect::new(0, 0, width as i32, height as i32),
            damage: Damage::new(),
            attached: None,
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The whole canvas as a rectangle.
    pub fn bounds(&self) -> Rect {
        Rect::new(0, 0, self.width as i32, self.height as i32)
    }

    /// The pixels, row after row.
    pub fn pixels(&self) -> &[u32] {
        &self.pixels
    }

    /// The pixel at `(x, y)`, if inside.
    pub fn pixel(&self, x: i32, y: i32) -> Option<Color> {
        self.bounds().contains(x, y).then(|| self.pixels[y as usize * self.width as usize + x as usize])
    }

    /// The pixels as RGBA8 bytes, as the host reads them (for tests and screenshots).
    pub fn to_rgba_bytes(&self) -> Vec<u8> {
        self.pixels.iter().flat_map(|p| p.to_le_bytes()).collect()
    }

    /// Restricts drawing (and damage) to `rect` within the canvas.
    pub fn set_clip(&mut self, rect: Rect) {
        self.clip = rect.intersect(self.bounds());
    }

    /// Lifts the clip: the whole canvas is drawable.
    pub fn reset_clip(&mut self) {
        self.clip = self.bounds();
    }

    /// The current clip rectangle.
    pub fn clip(&self) -> Rect {
        self.clip
    }

    /// Runs `draw` with the clip narrowed to `rect` (within the current clip), then
    /// restores it.
    pub fn with_clip<R>(&mut self, rect: Rect, draw: impl FnOnce(&mut Canvas) -> R) -> R {
        let saved = self.clip;
        self.clip = saved.intersect(rect);
        let r = draw(self);
        self.clip = saved;
        r
    }

    /// The damage accumulated since the last [`present`](Canvas::present).
    pub fn damage(&self) -> &Damage {
        &self.damage
    }

    /// Returns the accumulated damage and forgets it, without telling the host (for tests,
    /// or for hosts other than the VMI one).
    pub fn take_damage(&mut self) -> Vec<Rect> {
        self.damage.take()
    }

    /// Marks `rect` (clipped to the canvas) as changed, as if drawn.
    pub fn add_damage(&mut self, rect: Rect) {
        self.damage.add(rect.intersect(self.bounds()));
    }

    /// Hands the frame to the host: attaches the framebuffer if the host has not seen it
    /// where it is now, then reports the damage rectangles and forgets them. Does nothing
    /// when nothing changed. This is the only host call of the canvas.
    pub fn present(&mut self) {
        let here = (self.pixels.as_ptr() as usize, self.width, self.height);
        if self.attached != Some(here) {
            crate::fb_attach(&self.pixels, self.width, self.height);
            self.attached = Some(here);
            self.damage.add(self.bounds());
        }
        for r in self.damage.take() {
            crate::fb_damage(r.x, r.y, r.w, r.h);
        }
    }

    // ---- spans: the inner loops -------------------------------------------------------

    /// Fills columns `x0..x1` of row `y` (already clipped) with an opaque color.
    #[inline(always)]
    fn span(&mut self, y: i32, x0: i32, x1: i32, color: Color) {
        let row = y as usize * self.width as usize;
        self.pixels[row + x0 as usize..row + x1 as usize].fill(color);
    }

    /// Blends `color` over columns `x0..x1` of row `y` (already clipped) at coverage `a`.
    #[inline(always)]
    fn blend_span(&mut self, y: i32, x0: i32, x1: i32, color: Color, a: u32) {
        let row = y as usize * self.width as usize;
        for p in &mut self.pixels[row + x0 as usize..row + x1 as usize] {
            *p = blend(*p, color, a);
        }
    }

    /// Fills columns `x0..x1` of row `y`, clipped, with `color` at coverage `cov`
    /// (times the color's alpha).
    #[inline(always)]
    fn hspan(&mut self, y: i32, x0: i32, x1: i32, color: Color, cov: u32) {
        let c = self.clip;
        if y < c.y || y >= c.bottom() {
            return;
        }
        let (x0, x1) = (x0.max(c.x), x1.min(c.right()));
        if x0 >= x1 {
            return;
        }
        let a = cov * (color >> 24) / 255;
        if a >= 255 {
            self.span(y, x0, x1, color);
        } else if a > 0 {
            self.blend_span(y, x0, x1, color, a);
        }
    }

    /// Blends one pixel, clipped, at coverage `cov` (times the color's alpha).
    #[inline(always)]
    fn plot(&mut self, x: i32, y: i32, color: Color, cov: u32) {
        if cov == 0 || !self.clip.contains(x, y) {
            return;
        }
        let a = cov * (color >> 24) / 255;
        let i = y as usize * self.width as usize + x as usize;
        self.pixels[i] = if a >= 255 { color } else { blend(self.pixels[i], color, a) };
    }

    /// Records damage for `rect` clipped to the clip rectangle; returns the clipped rect.
    fn touch(&mut self, rect: Rect) -> Rect {
        let r = rect.intersect(self.clip);
        self.damage.add(r);
        r
    }

    // ---- rectangles ---------------------------------------------------------------------

    /// Fills the clip rectangle (the whole canvas unless clipped) with `color`.
    pub fn clear(&mut self, color: Color) {
        let clip = self.clip;
        self.fill(clip, color);
    }

    /// Fills the rectangle at `(x, y)` of size `w × h` with `color` (blended when not
    /// opaque).
    pub fn fill_rect(&mut self, x: i32, y: i32, w: i32, h: i32, color: Color) {
        self.fill(Rect::new(x, y, w, h), color);
    }

    /// Fills `rect` with `color` (blended when not opaque).
    pub fn fill(&mut self, rect: Rect, color: Color) {
        let r = self.touch(rect);
        if r.is_empty() {
            return;
        }
        let a = color >> 24;
        for y in r.y..r.bottom() {
            if a == 255 {
                self.span(y, r.x, r.right(), color);
            } else if a > 0 {
                self.blend_span(y, r.x, r.right(), color, a);
            }
        }
    }

    /// Fills `rect` with a vertical gradient from `top` (first row) to `bottom` (last row).
    pub fn fill_vgradient(&mut self, rect: Rect, top: Color, bottom: Color) {
        let r = self.touch(rect);
        let span = (rect.h - 1).max(1);
        for y in r.y..r.bottom() {
            let t = ((y - rect.y) * 255 + span / 2) / span;
            let c = super::mix(top, bottom, t.clamp(0, 255) as u8);
            self.hspan(y, r.x, r.right(), c, 255);
        }
    }

    /// Fills `rect` with a horizontal gradient from `left` to `right`.
    pub fn fill_hgradient(&mut self, rect: Rect, left: Color, right: Color) {
        let r = self.touch(rect);
        if r.is_empty() {
            return;
        }
        let span = (rect.w - 1).max(1);
        let row: Vec<Color> = (r.x..r.right())
            .map(|x| super::mix(left, right, (((x - rect.x) * 255 + span / 2) / span).clamp(0, 255) as u8))
            .collect();
        for y in r.y..r.bottom() {
            let base = y as usize * self.width as usize;
            let dst = &mut self.pixels[base + r.x as usize..base + r.right() as usize];
            for (d, &c) in dst.iter_mut().zip(&row) {
                let a = c >> 24;
                *d = if a == 255 { c } else { blend(*d, c, a) };
            }
        }
    }

    /// Fills `rect` with corners rounded to `radius` pixels, anti-aliased.
    pub fn fill_rounded_rect(&mut self, rect: Rect, radius: f32, color: Color) {
        self.rounded_rect_rows(rect, radius, |_| color);
    }

    /// Fills `rect` with corners rounded to `radius` pixels and a vertical gradient from
    /// `top` to `bottom` (app icons, buttons).
    pub fn fill_rounded_rect_vgradient(&mut self, rect: Rect, radius: f32, top: Color, bottom: Color) {
        let span = (rect.h - 1).max(1);
        self.rounded_rect_rows(rect, radius, |y| {
            super::mix(top, bottom, (((y - rect.y) * 255 + span / 2) / span).clamp(0, 255) as u8)
        });
    }

    /// A rounded rectangle whose row `y` has color `row_color(y)`.
    fn rounded_rect_rows(&mut self, rect: Rect, radius: f32, row_color: impl Fn(i32) -> Color) {
        let r = self.touch(rect);
        if r.is_empty() {
            return;
        }
        let rad = radius.min(rect.w as f32 / 2.0).min(rect.h as f32 / 2.0).max(0.0);
        let corner = rad.ceil() as i32;
        let left = rect.x as f32 + rad;
        let (top, bottom) = (rect.y as f32 + rad, rect.bottom() as f32 - rad);
        for y in r.y..r.bottom() {
            let color = row_color(y);
            let py = y as f32 + 0.5;
            let dy = if py < top {
                top - py
            } else if py > bottom {
                py - bottom
            } else {
                0.0
            };
            if dy == 0.0 || corner == 0 {
                self.hspan(y, rect.x, rect.right(), color, 255);
                continue;
            }
            // Columns past the arc's inner edge are covered; only the pixels the arc
            // crosses get per-pixel coverage (mirrored on the right).
            let inner = if dy < rad - 0.5 { ((rad - 0.5).powi(2) - dy * dy).sqrt() } else { 0.0 };
            let outer = ((rad + 0.5).powi(2) - dy * dy).max(0.0).sqrt();
            let half = (rect.w + 1) / 2;
            let full = ((left - inner - 0.5).ceil() as i32 - rect.x).clamp(0, half);
            let edge = ((left - outer - 0.5).floor() as i32 - rect.x).clamp(0, full);
            self.hspan(y, rect.x + full, rect.right() - full, color, 255);
            for i in edge..full {
                let (xl, xr) = (rect.x + i, rect.right() - 1 - i);
                let dx = left - (xl as f32 + 0.5);
                let cov = if dx > 0.0 { coverage(rad - (dx * dx + dy * dy).sqrt()) } else { 255 };
                self.plot(xl, y, color, cov);
                if xr > xl {
                    self.plot(xr, y, color, cov);
                }
            }
        }
    }

    /// Outlines `rect` with a `width`-pixel line inside its edge, corners rounded to
    /// `radius`, anti-aliased.
    pub fn stroke_rounded_rect(&mut self, rect: Rect, radius: f32, width: f32, color: Color) {
        let r = self.touch(rect);
        if r.is_empty() || width <= 0.0 {
            return;
        }
        let hw = rect.w as f32 / 2.0;
        let hh = rect.h as f32 / 2.0;
        let rad = radius.min(hw).min(hh).max(0.0);
        let (cx, cy) = (rect.x as f32 + hw, rect.y as f32 + hh);
        let band = width.ceil() as i32 + 1;
        let corner = rad.ceil() as i32;
        for y in r.y..r.bottom() {
            let in_corner_rows = y < rect.y + corner.max(band) || y >= rect.bottom() - corner.max(band);
            let mut x = r.x;
            while x < r.right() {
                // Skip the hollow middle of rows away from the top and bottom edges.
                if !in_corner_rows && x >= rect.x + band && x < rect.right() - band {
                    x = rect.right() - band;
                    continue;
                }
                let qx = ((x as f32 + 0.5) - cx).abs() - (hw - rad);
                let qy = ((y as f32 + 0.5) - cy).abs() - (hh - rad);
                let outside = (qx.max(0.0).powi(2) + qy.max(0.0).powi(2)).sqrt();
                let d = outside + qx.max(qy).min(0.0) - rad;
                // Inside the stroke when -width <= d <= 0.
                let cov = coverage(-d).min(coverage(d + width));
                self.plot(x, y, color, cov);
                x += 1;
            }
        }
    }

    // ---- round shapes ---------------------------------------------------------------------

    /// Fills the disc of radius `r` centered at `(cx, cy)`, anti-aliased.
    pub fn fill_circle(&mut self, cx: f32, cy: f32, r: f32, color: Color) {
        if r <= 0.0 {
            return;
        }
        let bbox = Rect::from_edges(
            (cx - r - 1.0).floor() as i32,
            (cy - r - 1.0).floor() as i32,
            (cx + r + 1.0).ceil() as i32,
            (cy + r + 1.0).ceil() as i32,
        );
        let b = self.touch(bbox);
        for y in b.y..b.bottom() {
            let dy = (y as f32 + 0.5 - cy).abs();
            if dy > r + 0.5 {
                continue;
            }
            let outer = ((r + 0.5).powi(2) - dy * dy).max(0.0).sqrt();
            let inner = if dy < r - 0.5 { ((r - 0.5).powi(2) - dy * dy).sqrt() } else { 0.0 };
            // Pixels whose centers are within `inner` of cx are fully covered.
            let full0 = (cx - inner - 0.5).ceil() as i32;
            let full1 = (cx + inner - 0.5).floor() as i32 + 1;
            let edge0 = (cx - outer - 0.5).floor() as i32;
            let edge1 = (cx + outer - 0.5).ceil() as i32 + 1;
            let (full0, full1) = if full1 > full0 { (full0, full1) } else { (edge1, edge1) };
            self.hspan(y, full0, full1, color, 255);
            for x in (edge0..full0.min(edge1)).chain(full1.max(edge0)..edge1) {
                let dx = x as f32 + 0.5 - cx;
                self.plot(x, y, color, coverage(r - (dx * dx + dy * dy).sqrt()));
            }
        }
    }

    /// Draws the circle of radius `r` centered at `(cx, cy)` with a line `width` pixels
    /// wide (centered on the radius), anti-aliased.
    pub fn stroke_circle(&mut self, cx: f32, cy: f32, r: f32, width: f32, color: Color) {
        let hw = width / 2.0;
        let ro = r + hw;
        let ri = (r - hw).max(0.0);
        let bbox = Rect::from_edges(
            (cx - ro - 1.0).floor() as i32,
            (cy - ro - 1.0).floor() as i32,
            (cx + ro + 1.0).ceil() as i32,
            (cy + ro + 1.0).ceil() as i32,
        );
        let b = self.touch(bbox);
        for y in b.y..b.bottom() {
            let dy = (y as f32 + 0.5 - cy).abs();
            if dy > ro + 0.5 {
                continue;
            }
            let outer = ((ro + 0.5).powi(2) - dy * dy).max(0.0).sqrt();
            let hole = if dy < ri - 0.5 { ((ri - 0.5).powi(2) - dy * dy).sqrt() } else { -1.0 };
            let x0 = ((cx - outer - 0.5).floor() as i32).max(b.x);
            let x1 = ((cx + outer - 0.5).ceil() as i32 + 1).min(b.right());
            let (h0, h1) =
                if hole > 0.0 { ((cx - hole + 0.5).ceil() as i32, (cx + hole - 0.5).floor() as i32) } else { (x1, x1) };
            let mut x = x0;
            while x < x1 {
                if x >= h0 && x < h1 {
                    x = h1;
                    continue;
                }
                let dx = x as f32 + 0.5 - cx;
                let d = (dx * dx + dy * dy).sqrt();
                self.plot(x, y, color, coverage(hw - (d - r).abs()));
                x += 1;
            }
        }
    }

    /// Draws a line from `(x0, y0)` to `(x1, y1)`, `width` pixels thick with round caps,
    /// anti-aliased (a point when both ends are equal). Damage is the segment's bounding box.
    pub fn draw_line(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, width: f32, color: Color) {
        let hw = (width / 2.0).max(0.5);
        let bbox = Rect::from_edges(
            (x0.min(x1) - hw - 1.0).floor() as i32,
            (y0.min(y1) - hw - 1.0).floor() as i32,
            (x0.max(x1) + hw + 1.0).ceil() as i32,
            (y0.max(y1) + hw + 1.0).ceil() as i32,
        );
        let b = self.touch(bbox);
        if b.is_empty() {
            return;
        }
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len2 = dx * dx + dy * dy;
        for y in b.y..b.bottom() {
            let py = y as f32 + 0.5;
            // Columns this row can touch: the segment's x over the parameters whose y is
            // within reach, widened by the pen.
            let (t0, t1) = if dy.abs() > 1e-3 {
                let ta = (py - hw - 1.0 - y0) / dy;
                let tb = (py + hw + 1.0 - y0) / dy;
                (ta.min(tb).clamp(0.0, 1.0), ta.max(tb).clamp(0.0, 1.0))
            } else {
                (0.0, 1.0)
            };
            let xa = x0 + dx * t0;
            let xb = x0 + dx * t1;
            let cx0 = ((xa.min(xb) - hw - 1.0).floor() as i32).max(b.x);
            let cx1 = ((xa.max(xb) + hw + 1.0).ceil() as i32).min(b.right());
            for x in cx0..cx1 {
                let px = x as f32 + 0.5;
                let t = if len2 > 0.0 { (((px - x0) * dx + (py - y0) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
                let (ex, ey) = (px - (x0 + dx * t), py - (y0 + dy * t));
                let d = (ex * ex + ey * ey).sqrt();
                self.plot(x, y, color, coverage(hw - d));
            }
        }
    }

    // ---- masks and text -------------------------------------------------------------------

    /// Paints `color` through an 8-bit alpha `mask` of `w × h` pixels (rows of `w` bytes)
    /// with its top-left at `(x, y)`: icons, and glyphs from elsewhere.
    pub fn blit_mask(&mut self, x: i32, y: i32, w: usize, h: usize, mask: &[u8], color: Color) {
        let dest = self.touch(Rect::new(x, y, w as i32, h as i32));
        if dest.is_empty() || mask.len() < w * h {
            return;
        }
        let alpha = color >> 24;
        for row in dest.y..dest.bottom() {
            let src = &mask[(row - y) as usize * w..][..w];
            let base = row as usize * self.width as usize;
            for col in dest.x..dest.right() {
                let m = u32::from(src[(col - x) as usize]);
                if m == 0 {
                    continue;
                }
                let a = m * alpha / 255;
                let p = &mut self.pixels[base + col as usize];
                *p = if a >= 255 { color } else { blend(*p, color, a) };
            }
        }
    }

    /// Draws one 4-bit atlas glyph with its top-left at `(x, y)`, without damage.
    fn blit_glyph(&mut self, x: i32, y: i32, w: usize, h: usize, offset: usize, color: Color) {
        let dest = Rect::new(x, y, w as i32, h as i32).intersect(self.clip);
        if dest.is_empty() {
            return;
        }
        let stride = w.div_ceil(2);
        let Some(mask) = ATLAS.get(offset..offset + stride * h) else {
            return;
        };
        let alpha = color >> 24;
        for row in dest.y..dest.bottom() {
            let src = &mask[(row - y) as usize * stride..][..stride];
            let base = row as usize * self.width as usize;
            for col in dest.x..dest.right() {
                let i = (col - x) as usize;
                let byte = src[i >> 1];
                let m = u32::from(if i & 1 == 0 { byte >> 4 } else { byte & 15 });
                if m == 0 {
                    continue;
                }
                let a = m * 17 * alpha / 255;
                let p = &mut self.pixels[base + col as usize];
                *p = if a >= 255 { color } else { blend(*p, color, a) };
            }
        }
    }

    /// Draws `text` on one line in `font`, the line's top at `y` (the baseline is at
    /// `y + font.ascent()`), starting at `x`. Returns the x where the text ends. Line
    /// breaks are not interpreted; use [`TextLayout`] for paragraphs.
    pub fn draw_text(&mut self, x: i32, y: i32, text: &str, font: &Font, color: Color) -> i32 {
        let height = font.line_height();
        let band = Rect::new(i32::MIN / 2, y - height / 2, i32::MAX, height * 2);
        if !band.intersects(self.clip) {
            return x + font.measure(text);
        }
        let baseline = y + font.ascent();
        let mut pen = x << 6;
        let mut prev = None;
        let mut ink = Rect::default();
        for c in text.chars() {
            let slot = font.slot_or_fallback(c);
            pen += prev.map_or(0, |p| font.kern(p, slot));
            let g = font.glyph(slot);
            if g.w > 0 {
                let gx = ((pen + 32) >> 6) + i32::from(g.x);
                let gy = baseline + i32::from(g.y);
                let (w, h) = (usize::from(g.w), usize::from(g.h));
                self.blit_glyph(gx, gy, w, h, g.offset as usize, color);
                ink = ink.union(Rect::new(gx, gy, w as i32, h as i32));
            }
            pen += i32::from(g.advance);
            prev = Some(slot);
        }
        self.touch(ink);
        (pen + 32) >> 6
    }

    /// Draws `text` horizontally centered on `cx`, the line's top at `y`. Returns its left x.
    pub fn draw_text_centered(&mut self, cx: i32, y: i32, text: &str, font: &Font, color: Color) -> i32 {
        let x = cx - font.measure(text) / 2;
        self.draw_text(x, y, text, font, color);
        x
    }

    /// Draws `text` ending at `right`, the line's top at `y`. Returns its left x.
    pub fn draw_text_right(&mut self, right: i32, y: i32, text: &str, font: &Font, color: Color) -> i32 {
        let x = right - font.measure(text);
        self.draw_text(x, y, text, font, color);
        x
    }

    /// Draws the lines of `layout` (made from `text` with `style.font`), the first line's
    /// top at `(x, y)`, one line every `style.line_height` pixels. Lines outside the clip
    /// cost nothing.
    pub fn draw_layout(&mut self, x: i32, y: i32, text: &str, layout: &TextLayout, style: &TextStyle, color: Color) {
        let lh = style.line_height.max(1);
        let clip = self.clip;
        let first = ((clip.y - y) / lh - 1).max(0) as usize;
        for (i, line) in layout.lines().iter().enumerate().skip(first) {
            let top = y + i as i32 * lh;
            if top >= clip.bottom() {
                break;
            }
            if let Some(s) = text.get(line.start..line.end) {
                self.draw_text(x, top + style.text_offset(), s.trim_end_matches(' '), &style.font, color);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gfx::{Weight, rgb};

    const RED: Color = rgb(255, 0, 0);

    #[test]
    fn fills_and_damage_follow_the_clip() {
        let mut c = Canvas::new(100, 50);
        assert!(c.damage().is_empty());
        c.fill_rect(-10, -10, 30, 30, RED);
        assert_eq!(c.pixel(0, 0), Some(RED));
        assert_eq!(c.pixel(19, 19), Some(RED));
        assert_eq!(c.pixel(20, 20), Some(0xff00_0000));
        assert_eq!(c.take_damage(), vec![Rect::new(0, 0, 20, 20)]);
        c.set_clip(Rect::new(50, 10, 10, 10));
        c.clear(RED);
        c.fill_circle(55.0, 15.0, 40.0, rgb(0, 255, 0));
        assert_eq!(c.take_damage(), vec![Rect::new(50, 10, 10, 10)]);
        assert_eq!(c.pixel(49, 15), Some(0xff00_0000));
        c.reset_clip();
        assert_eq!(c.clip(), c.bounds());
    }

    #[test]
    fn shapes_are_antialiased_and_solid_inside() {
        let mut c = Canvas::new(64, 64);
        c.fill_circle(32.0, 32.0, 20.0, RED);
        assert_eq!(c.pixel(32, 32), Some(RED));
        assert_eq!(c.pixel(32, 5), Some(0xff00_0000));
        let edge = (0..64).filter_map(|x| c.pixel(x, 32)).filter(|&p| p != RED && p != 0xff00_0000).count();
        assert!(edge >= 2, "soft edges on both sides");
        let mut c = Canvas::new(64, 64);
        c.fill_rounded_rect(Rect::new(4, 4, 56, 56), 12.0, RED);
        assert_eq!(c.pixel(4, 32), Some(RED));
        assert_eq!(c.pixel(32, 4), Some(RED));
        assert_eq!(c.pixel(4, 4), Some(0xff00_0000));
        assert_eq!(c.take_damage(), vec![Rect::new(4, 4, 56, 56)]);
    }

    #[test]
    fn lines_damage_only_their_box() {
        let mut c = Canvas::new(200, 200);
        c.draw_line(50.0, 50.0, 60.0, 70.0, 8.0, RED);
        let d = c.take_damage();
        assert_eq!(d.len(), 1);
        assert!(d[0].contains(46, 46) && d[0].contains(63, 73));
        assert!(d[0].area() < 30 * 40);
        assert_eq!(c.pixel(55, 60), Some(RED));
        assert_eq!(c.pixel(100, 100), Some(0xff00_0000));
        c.stroke_circle(100.0, 100.0, 30.0, 4.0, RED);
        assert_eq!(c.pixel(130, 100), Some(RED));
        assert_eq!(c.pixel(100, 100), Some(0xff00_0000));
        c.stroke_rounded_rect(Rect::new(10, 120, 60, 40), 8.0, 3.0, RED);
        assert_eq!(c.pixel(40, 121), Some(RED));
        assert_eq!(c.pixel(40, 140), Some(0xff00_0000));
    }

    #[test]
    fn text_draws_ink_and_reports_its_box() {
        let mut c = Canvas::new(300, 60);
        let f = Font::new(24, Weight::Bold);
        let end = c.draw_text(10, 10, "Héllo, wörld", &f, RED);
        assert_eq!(end, 10 + f.measure("Héllo, wörld"));
        let d = c.damage().bounds();
        assert!(d.x >= 10 && d.right() <= end + 2 && d.y >= 10 && d.bottom() <= 10 + f.line_height());
        let inked = c.pixels().iter().filter(|&&p| p == RED).count();
        assert!(inked > 100);
    }
}
