//! Paint: finger drawing on white paper with round, anti-aliased strokes, a palette and a
//! clear button. Strokes are kept as points (not pixels) so the drawing comes back when the
//! user returns to the app, for a few bytes per point.

use vmi_guest_sdk::gfx::{Canvas, Color, Rect, hex};

use crate::theme::{self, Theme};
use crate::ui;

/// The palette: ink, red, orange, green, blue, purple.
pub const PALETTE: [Color; 6] =
    [hex(0x1c1c1e), hex(0xff3b30), hex(0xff9500), hex(0x34c759), hex(0x0a84ff), hex(0xaf52de)];
/// Points kept for redrawing; past this, strokes still draw but are not kept.
pub const MAX_POINTS: usize = 50_000;

const PAPER: Color = hex(0xfbfaf7);

/// One stroke: a color and the finger's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stroke {
    color: usize,
    points: Vec<(i16, i16)>,
}

/// A segment of a stroke to draw now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Segment {
    /// From.
    pub from: (i32, i32),
    /// To.
    pub to: (i32, i32),
    /// Ink.
    pub color: Color,
}

/// The drawing and the pen.
#[derive(Clone, Debug, Default)]
pub struct Paint {
    strokes: Vec<Stroke>,
    points: usize,
    color: usize,
    /// Last point of the stroke in progress.
    pen: Option<(i32, i32)>,
    /// The stroke in progress is being kept.
    keeping: bool,
}

impl Paint {
    /// Blank paper, black ink.
    pub fn new() -> Paint {
        Paint::default()
    }

    /// The selected palette entry.
    pub fn color(&self) -> usize {
        self.color
    }

    /// Selects palette entry `i`; true when that changed the selection.
    pub fn select(&mut self, i: usize) -> bool {
        let changed = i < PALETTE.len() && i != self.color;
        if changed {
            self.color = i;
        }
        changed
    }

    /// The kept strokes.
    pub fn strokes(&self) -> &[Stroke] {
        &self.strokes
    }

    /// Erases everything.
    pub fn clear(&mut self) {
        self.strokes.clear();
        self.points = 0;
        self.pen = None;
    }

    fn keep(&mut self, x: i32, y: i32) {
        if self.keeping
            && self.points < MAX_POINTS
            && let Some(s) = self.strokes.last_mut()
        {
            s.points.push((x as i16, y as i16));
            self.points += 1;
        }
    }

    /// The finger touched the paper: a dot.
    pub fn down(&mut self, x: i32, y: i32) -> Segment {
        self.keeping = self.points < MAX_POINTS;
        if self.keeping {
            self.strokes.push(Stroke { color: self.color, points: Vec::new() });
        }
        self.keep(x, y);
        self.pen = Some((x, y));
        Segment { from: (x, y), to: (x, y), color: PALETTE[self.color] }
    }

    /// The finger moved: the segment from the last point, if a stroke is in progress.
    pub fn drag(&mut self, x: i32, y: i32) -> Option<Segment> {
        let from = self.pen?;
        if from == (x, y) {
            return None;
        }
        self.keep(x, y);
        self.pen = Some((x, y));
        Some(Segment { from, to: (x, y), color: PALETTE[self.color] })
    }

    /// The finger lifted.
    pub fn up(&mut self) {
        self.pen = None;
    }

    /// True while a stroke is in progress.
    pub fn drawing(&self) -> bool {
        self.pen.is_some()
    }
}

/// The toolbar (palette and clear button), where other apps have their title bar.
pub fn toolbar(t: &Theme) -> Rect {
    t.appbar()
}

/// The paper.
pub fn paper(t: &Theme) -> Rect {
    t.content()
}

/// Stroke width in pixels.
pub fn brush(t: &Theme) -> f32 {
    t.f(12.0)
}

fn swatch(t: &Theme, i: usize) -> (f32, f32, f32) {
    let bar = toolbar(t);
    let r = t.f(24.0);
    let step = t.f(74.0);
    (t.pad as f32 + r + step * i as f32, bar.y as f32 + bar.h as f32 / 2.0, r)
}

/// The palette entry under `(x, y)`.
pub fn swatch_at(t: &Theme, x: i32, y: i32) -> Option<usize> {
    let bar = toolbar(t);
    if !bar.contains(x, y) {
        return None;
    }
    (0..PALETTE.len()).find(|&i| {
        let (cx, _, r) = swatch(t, i);
        (x as f32 - cx).abs() <= r + t.f(12.0)
    })
}

/// The clear button.
pub fn clear_button(t: &Theme) -> Rect {
    let bar = toolbar(t);
    let (w, h) = (t.d(124.0), t.d(60.0));
    Rect::new(t.w - t.pad - w, bar.y + (bar.h - h) / 2, w, h)
}

/// Draws the toolbar.
pub fn draw_toolbar(c: &mut Canvas, t: &Theme, paint: &Paint) {
    let bar = toolbar(t);
    c.fill(bar, theme::BAR);
    for (i, &color) in PALETTE.iter().enumerate() {
        let (cx, cy, r) = swatch(t, i);
        if i == paint.color() {
            c.stroke_circle(cx, cy, r + t.f(7.0), t.f(3.5), theme::TEXT);
        }
        c.fill_circle(cx, cy, r, color);
        if i == 0 {
            // Ink is nearly the bar's color: outline it.
            c.stroke_circle(cx, cy, r - t.f(1.0), t.f(2.0), theme::TEXT_3);
        }
    }
    ui::pill_button(c, clear_button(t), "Clear", &t.strong, theme::SURFACE_2, theme::TEXT);
    c.fill(Rect::new(0, bar.bottom() - 1, t.w, 1), theme::DIVIDER);
}

/// Draws one segment on the paper (damaging only its box).
pub fn draw_segment(c: &mut Canvas, t: &Theme, s: Segment) {
    let w = brush(t);
    c.with_clip(paper(t), |c| {
        let (a, b) = (s.from, s.to);
        c.draw_line(a.0 as f32, a.1 as f32, b.0 as f32, b.1 as f32, w, s.color);
    });
}

/// Draws the paper and every kept stroke.
pub fn draw_paper(c: &mut Canvas, t: &Theme, paint: &Paint) {
    let area = paper(t);
    c.fill(area, PAPER);
    let w = brush(t);
    c.with_clip(area, |c| {
        for s in paint.strokes() {
            let color = PALETTE[s.color];
            let mut prev: Option<(i16, i16)> = None;
            for &p in &s.points {
                let a = prev.unwrap_or(p);
                c.draw_line(a.0 as f32, a.1 as f32, p.0 as f32, p.1 as f32, w, color);
                prev = Some(p);
            }
        }
    });
}

/// Draws the whole Paint screen below the status bar.
pub fn draw(c: &mut Canvas, t: &Theme, paint: &Paint) {
    draw_toolbar(c, t, paint);
    draw_paper(c, t, paint);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strokes_are_kept_and_cleared() {
        let mut p = Paint::new();
        assert_eq!(p.drag(1, 1), None);
        let dot = p.down(10, 10);
        assert_eq!(dot.from, dot.to);
        assert!(p.select(2));
        assert!(!p.select(2));
        assert!(!p.select(99));
        let seg = p.drag(20, 10).expect("a stroke is in progress");
        assert_eq!(seg.from, (10, 10));
        assert_eq!(p.drag(20, 10), None);
        p.up();
        assert!(!p.drawing());
        assert_eq!(p.strokes().len(), 1);
        assert_eq!(p.strokes()[0].points.len(), 2);
        p.clear();
        assert!(p.strokes().is_empty());
    }

    #[test]
    fn swatches_and_button_are_hittable() {
        let t = Theme::new(720, 1280);
        for i in 0..PALETTE.len() {
            let (cx, cy, _) = swatch(&t, i);
            assert_eq!(swatch_at(&t, cx as i32, cy as i32), Some(i));
        }
        let clear = clear_button(&t);
        let last = swatch(&t, PALETTE.len() - 1).0 as i32 + 40;
        assert!(last < clear.x, "palette and button do not overlap");
        let small = Theme::new(480, 800);
        assert!(swatch(&small, PALETTE.len() - 1).0 as i32 + 40 < clear_button(&small).x);
    }
}
