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

impl Stroke {
    /// Points kept of it.
    #[cfg(test)]
    pub fn points_len(&self) -> usize {
        self.points.len()
    }
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

/// Fingers drawing at once; a further finger draws nothing until one lifts.
pub const MAX_PENS: usize = 5;

/// One finger drawing: where it was last, and the kept stroke it extends (None: past [`MAX_POINTS`]).
#[derive(Clone, Copy, Debug)]
struct Pen {
    pointer: u32,
    at: (i32, i32),
    stroke: Option<usize>,
}

/// The drawing and the fingers drawing it (each finger its own stroke).
#[derive(Clone, Debug, Default)]
pub struct Paint {
    strokes: Vec<Stroke>,
    points: usize,
    color: usize,
    pens: Vec<Pen>,
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
        self.pens.clear();
    }

    fn keep(&mut self, stroke: Option<usize>, x: i32, y: i32) {
        if self.points < MAX_POINTS
            && let Some(s) = stroke.and_then(|i| self.strokes.get_mut(i))
        {
            s.points.push((x as i16, y as i16));
            self.points += 1;
        }
    }

    /// Finger `pointer` touched the paper: a dot, the start of its stroke (None: too many fingers).
    pub fn down(&mut self, pointer: u32, x: i32, y: i32) -> Option<Segment> {
        self.up(pointer);
        if self.pens.len() >= MAX_PENS {
            return None;
        }
        let stroke = (self.points < MAX_POINTS).then(|| {
            self.strokes.push(Stroke { color: self.color, points: Vec::new() });
            self.strokes.len() - 1
        });
        self.keep(stroke, x, y);
        self.pens.push(Pen { pointer, at: (x, y), stroke });
        Some(Segment { from: (x, y), to: (x, y), color: PALETTE[self.color] })
    }

    /// Finger `pointer` moved: the segment from its last point, if it is drawing.
    pub fn drag(&mut self, pointer: u32, x: i32, y: i32) -> Option<Segment> {
        let i = self.pens.iter().position(|p| p.pointer == pointer)?;
        let Pen { at: from, stroke, .. } = self.pens[i];
        if from == (x, y) {
            return None;
        }
        self.keep(stroke, x, y);
        self.pens[i].at = (x, y);
        let color = stroke.and_then(|s| self.strokes.get(s)).map_or(self.color, |s| s.color);
        Some(Segment { from, to: (x, y), color: PALETTE[color] })
    }

    /// Finger `pointer` lifted.
    pub fn up(&mut self, pointer: u32) {
        self.pens.retain(|p| p.pointer != pointer);
    }

    /// Every finger lifted (the app was left).
    pub fn up_all(&mut self) {
        self.pens.clear();
    }

    /// True while finger `pointer` draws a stroke.
    pub fn drawing(&self, pointer: u32) -> bool {
        self.pens.iter().any(|p| p.pointer == pointer)
    }

    /// Moves the drawing to a paper laid out again (a display change): `from` is the old paper's top-left corner,
    /// `to` the new one's, `scale` the new layout's size over the old one's. Strokes in progress end.
    pub fn relayout(&mut self, from: (i32, i32), to: (i32, i32), scale: f32) {
        self.pens.clear();
        let map = |v: i16, o: i32, n: i32| (n as f32 + (i32::from(v) - o) as f32 * scale).round() as i16;
        for s in &mut self.strokes {
            for p in &mut s.points {
                *p = (map(p.0, from.0, to.0), map(p.1, from.1, to.1));
            }
        }
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
        assert_eq!(p.drag(0, 1, 1), None);
        let dot = p.down(0, 10, 10).expect("a pen");
        assert_eq!(dot.from, dot.to);
        assert!(p.select(2));
        assert!(!p.select(2));
        assert!(!p.select(99));
        let seg = p.drag(0, 20, 10).expect("a stroke is in progress");
        assert_eq!(seg.from, (10, 10));
        assert_eq!(p.drag(0, 20, 10), None);
        p.up(0);
        assert!(!p.drawing(0));
        assert_eq!(p.strokes().len(), 1);
        assert_eq!(p.strokes()[0].points.len(), 2);
        p.clear();
        assert!(p.strokes().is_empty());
    }

    #[test]
    fn two_fingers_draw_two_strokes() {
        let mut p = Paint::new();
        p.down(0, 10, 10).expect("first finger");
        p.down(1, 100, 10).expect("second finger");
        assert_eq!(p.drag(0, 10, 50).map(|s| s.from), Some((10, 10)));
        assert_eq!(p.drag(1, 100, 50).map(|s| s.from), Some((100, 10)));
        p.up(0);
        assert!(p.drawing(1) && !p.drawing(0));
        assert_eq!(p.drag(1, 100, 90).map(|s| s.from), Some((100, 50)));
        p.up(1);
        let strokes: Vec<_> = p.strokes().iter().map(|s| s.points.clone()).collect();
        assert_eq!(strokes, vec![vec![(10, 10), (10, 50)], vec![(100, 10), (100, 50), (100, 90)]]);
        p.relayout((0, 100), (0, 50), 2.0);
        assert_eq!(p.strokes()[0].points, vec![(20, -130), (20, -50)]);
    }

    #[test]
    fn swatches_and_button_are_hittable() {
        let t = Theme::new(720, 1280, 0);
        for i in 0..PALETTE.len() {
            let (cx, cy, _) = swatch(&t, i);
            assert_eq!(swatch_at(&t, cx as i32, cy as i32), Some(i));
        }
        let clear = clear_button(&t);
        let last = swatch(&t, PALETTE.len() - 1).0 as i32 + 40;
        assert!(last < clear.x, "palette and button do not overlap");
        let small = Theme::new(480, 800, 0);
        assert!(swatch(&small, PALETTE.len() - 1).0 as i32 + 40 < clear_button(&small).x);
    }
}
