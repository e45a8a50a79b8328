//! Damage accumulation: the rectangles changed since the last present, kept few and
//! merged.

use super::Rect;

/// At most this many rectangles are reported per present; past it the pair whose union
/// wastes the fewest pixels is merged into its bounding box.
pub const MAX_DAMAGE_RECTS: usize = 16;

/// Rectangles this close (in pixels) are merged: reporting two slivers costs the host
/// more than a few extra pixels.
const NEAR: i32 = 8;

/// A set of changed rectangles, merged as they arrive: overlapping or nearby rectangles
/// become their bounding box, and the count never exceeds [`MAX_DAMAGE_RECTS`].
#[derive(Clone, Debug, Default)]
pub struct Damage {
    rects: Vec<Rect>,
}

impl Damage {
    /// No damage.
    pub const fn new() -> Damage {
        Damage { rects: Vec::new() }
    }

    /// Adds a changed rectangle.
    pub fn add(&mut self, rect: Rect) {
        if rect.is_empty() {
            return;
        }
        let mut r = rect;
        // Absorb every rectangle the new one meets or nearly meets; the union may then meet
        // others, so repeat until nothing changes.
        loop {
            let near = r.inset(-NEAR);
            match self.rects.iter().position(|o| near.intersects(*o)) {
                Some(i) => r = r.union(self.rects.swap_remove(i)),
                None => break,
            }
        }
        self.rects.push(r);
        while self.rects.len() > MAX_DAMAGE_RECTS {
            self.merge_cheapest_pair();
        }
    }

    fn merge_cheapest_pair(&mut self) {
        let mut best = (0, 1, i64::MAX);
        for i in 0..self.rects.len() {
            for j in i + 1..self.rects.len() {
                let (a, b) = (self.rects[i], self.rects[j]);
                let waste = a.union(b).area() - a.area() - b.area();
                if waste < best.2 {
                    best = (i, j, waste);
                }
            }
        }
        let (i, j, _) = best;
        let b = self.rects.swap_remove(j);
        self.rects[i] = self.rects[i].union(b);
    }

    /// The current rectangles (pairwise apart by more than a few pixels).
    pub fn rects(&self) -> &[Rect] {
        &self.rects
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.rects.is_empty()
    }

    /// Number of changed pixels reported (the rectangles do not overlap).
    pub fn area(&self) -> i64 {
        self.rects.iter().map(Rect::area).sum()
    }

    /// The bounding box of all damage (empty when none).
    pub fn bounds(&self) -> Rect {
        self.rects.iter().fold(Rect::default(), |acc, r| acc.union(*r))
    }

    /// Returns the rectangles and forgets them.
    pub fn take(&mut self) -> Vec<Rect> {
        std::mem::take(&mut self.rects)
    }

    /// Forgets all damage.
    pub fn clear(&mut self) {
        self.rects.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_overlapping_and_near_rects() {
        let mut d = Damage::new();
        d.add(Rect::new(0, 0, 10, 10));
        d.add(Rect::new(5, 5, 10, 10));
        assert_eq!(d.rects(), &[Rect::new(0, 0, 15, 15)]);
        d.add(Rect::new(18, 0, 4, 4));
        assert_eq!(d.rects(), &[Rect::new(0, 0, 22, 15)]);
        d.add(Rect::new(100, 100, 4, 4));
        assert_eq!(d.rects().len(), 2);
        d.add(Rect::new(0, 0, 0, 50));
        assert_eq!(d.rects().len(), 2);
    }

    #[test]
    fn caps_the_count_by_bounding_boxes() {
        let mut d = Damage::new();
        for i in 0..100 {
            d.add(Rect::new((i % 10) * 50, (i / 10) * 50, 3, 3));
        }
        assert!(d.rects().len() <= MAX_DAMAGE_RECTS);
        for i in 0..100 {
            let (x, y) = ((i % 10) * 50, (i / 10) * 50);
            assert!(d.rects().iter().any(|r| r.contains(x, y) && r.contains(x + 2, y + 2)));
        }
        let rects = d.take();
        for (i, a) in rects.iter().enumerate() {
            for b in &rects[i + 1..] {
                assert!(!a.intersects(*b));
            }
        }
        assert!(d.is_empty());
    }
}
