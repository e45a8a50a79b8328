//! Faces of DejaVu Sans rasterized at build time (see `build.rs`), a CJK face, and text metrics.

/// One face of the atlas: a font file at one pixel size.
#[derive(Debug)]
pub(crate) struct FaceDesc {
    /// Em size in pixels.
    pub px: u16,
    /// From DejaVuSans-Bold.
    pub bold: bool,
    /// Covers only `NUMERALS`.
    pub numerals: bool,
    /// Pixels above the baseline that the tallest glyph may reach.
    pub ascent: i32,
    /// Pixels below the baseline that the lowest glyph may reach.
    pub descent: i32,
    /// Extra gap between lines suggested by the font.
    pub line_gap: i32,
    /// Index in `GLYPHS` of the face's first slot.
    pub first_glyph: usize,
}

/// One glyph: metrics and where its 4-bit mask lies in the atlas.
#[derive(Debug)]
pub(crate) struct GlyphDesc {
    /// Pen advance in 1/64 pixel.
    pub advance: u16,
    /// Left edge of the mask relative to the pen.
    pub x: i16,
    /// Top edge of the mask relative to the baseline (negative is above).
    pub y: i16,
    /// Mask width.
    pub w: u16,
    /// Mask height.
    pub h: u16,
    /// Byte offset of the mask in `ATLAS`.
    pub offset: u32,
}

include!(concat!(env!("OUT_DIR"), "/font_atlas.rs"));

/// Every glyph mask, 4 bits per pixel, rows of `ceil(w/2)` bytes, left pixel high.
pub(crate) static ATLAS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/font_atlas.bin"));

/// Slots 0..95 are ASCII 0x20..=0x7E, then 96 of Latin-1 0xA0..=0xFF, then `EXTRAS`.
const LATIN1_SLOT: usize = 95;
const EXTRAS_SLOT: usize = 95 + 96;
/// Slots from here on are CJK characters, `CJK_CHARS[slot - CJK_SLOT]`, drawn from the one CJK
/// face whatever the face asked for (build.rs says why one size).
const CJK_SLOT: usize = 1 << 16;

/// Font weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Weight {
    /// DejaVu Sans.
    Regular,
    /// DejaVu Sans Bold.
    Bold,
}

/// A face of DejaVu Sans at one pixel size, ready to draw: a cheap `Copy` handle into the
/// glyph atlas built into the SDK.
///
/// Only the sizes rasterized at build time exist; [`Font::new`] picks the nearest. Full
/// faces cover printable ASCII, Latin-1 and a little punctuation (see the module docs);
/// numerals faces ([`Font::numerals`]), at clock sizes, cover only `" 0123456789:.-"`. All
/// digits have the same advance, so counters do not jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Font {
    face: u8,
}

impl Font {
    /// The full face of `weight` whose size is nearest to `px` pixels (per em).
    pub fn new(px: u32, weight: Weight) -> Font {
        Font::nearest(px, |f| !f.numerals && f.bold == (weight == Weight::Bold))
    }

    /// The numerals face nearest to `px`, for large clocks and counters. Characters
    /// outside `" 0123456789:.-"` draw as blanks.
    pub fn numerals(px: u32) -> Font {
        Font::nearest(px, |f| f.numerals)
    }

    /// The sizes available for `weight` (full faces), ascending.
    pub fn sizes(weight: Weight) -> Vec<u32> {
        FACES.iter().filter(|f| !f.numerals && f.bold == (weight == Weight::Bold)).map(|f| u32::from(f.px)).collect()
    }

    fn nearest(px: u32, keep: impl Fn(&FaceDesc) -> bool) -> Font {
        let px = px as i64;
        let mut best = (0usize, i64::MAX);
        for (i, f) in FACES.iter().enumerate() {
            // Prefer the larger face on a tie: small text is harder to read than big.
            let d = 2 * (i64::from(f.px) - px).abs() - i64::from(i64::from(f.px) > px);
            if keep(f) && d < best.1 {
                best = (i, d);
            }
        }
        Font { face: best.0 as u8 }
    }

    fn desc(&self) -> &'static FaceDesc {
        &FACES[self.face as usize]
    }

    /// Em size in pixels.
    pub fn px(&self) -> u32 {
        u32::from(self.desc().px)
    }

    /// The weight of this face.
    pub fn weight(&self) -> Weight {
        if self.desc().bold { Weight::Bold } else { Weight::Regular }
    }

    /// Pixels from the top of a line to its baseline.
    pub fn ascent(&self) -> i32 {
        self.desc().ascent
    }

    /// Pixels below the baseline that glyphs may reach.
    pub fn descent(&self) -> i32 {
        self.desc().descent
    }

    /// The font's natural line height (ascent + descent + gap).
    pub fn line_height(&self) -> i32 {
        let d = self.desc();
        d.ascent + d.descent + d.line_gap
    }

    /// Height of a capital letter above the baseline, for centering labels optically.
    pub fn cap_height(&self) -> i32 {
        // DejaVu Sans caps are 0.729 em.
        (self.px() as i32 * 729 + 500) / 1000
    }

    /// True when `c` has its own glyph in this face.
    pub fn has_glyph(&self, c: char) -> bool {
        self.slot(c).is_some()
    }

    /// The slot of `c` in this face, if covered.
    pub(crate) fn slot(&self, c: char) -> Option<usize> {
        let d = self.desc();
        if d.numerals {
            return NUMERALS.chars().position(|n| n == c);
        }
        match c as u32 {
            0x20..=0x7e => Some(c as usize - 0x20),
            0xa0..=0xff => Some(c as usize - 0xa0 + LATIN1_SLOT),
            _ => (EXTRAS.iter().position(|&e| e == c).map(|i| i + EXTRAS_SLOT))
                .or_else(|| CJK_CHARS.binary_search(&c).ok().map(|i| i + CJK_SLOT)),
        }
    }

    /// The slot drawn for `c`: its own, a space for a tab, else U+FFFD (blank in numerals).
    pub(crate) fn slot_or_fallback(&self, c: char) -> usize {
        if let Some(s) = self.slot(c) {
            return s;
        }
        let fallback = if c == '\t' || self.desc().numerals { ' ' } else { '\u{fffd}' };
        self.slot(fallback).unwrap_or(0)
    }

    pub(crate) fn glyph(&self, slot: usize) -> &'static GlyphDesc {
        match slot.checked_sub(CJK_SLOT) {
            Some(i) => &CJK_GLYPHS[i],
            None => &GLYPHS[self.desc().first_glyph + slot],
        }
    }

    /// Kerning between two slots, in 1/64 pixel.
    pub(crate) fn kern(&self, left: usize, right: usize) -> i32 {
        let d = self.desc();
        if d.numerals || left > 0xff || right > 0xff {
            return 0;
        }
        let (table, upem) = if d.bold { (KERN_BOLD, BOLD_UPEM) } else { (KERN_REGULAR, REGULAR_UPEM) };
        let key = (left << 8 | right) as u16;
        match table.binary_search_by_key(&key, |&(k, _)| k) {
            Ok(i) => {
                let units = i32::from(table[i].1);
                let scaled = units * i32::from(d.px) * 64;
                // Round to nearest, away from zero on halves.
                (scaled + scaled.signum() * upem / 2) / upem
            }
            Err(_) => 0,
        }
    }

    /// Advance for `c` after `prev` (kerning included), in 1/64 pixel.
    pub(crate) fn advance64(&self, prev: Option<usize>, slot: usize) -> i32 {
        let kern = prev.map_or(0, |p| self.kern(p, slot));
        self.glyph(slot).advance as i32 + kern
    }

    /// Width of `text` drawn on one line, in pixels (line breaks are not interpreted).
    pub fn measure(&self, text: &str) -> i32 {
        (self.measure64(text) + 32) >> 6
    }

    /// Width of `text` in 1/64 pixel.
    pub(crate) fn measure64(&self, text: &str) -> i32 {
        let mut pen = 0;
        let mut prev = None;
        for c in text.chars() {
            let s = self.slot_or_fallback(c);
            pen += self.advance64(prev, s);
            prev = Some(s);
        }
        pen
    }

    /// `text` cut to fit `max_width` pixels, ending in "…" when cut.
    pub fn ellipsize<'a>(&self, text: &'a str, max_width: i32) -> std::borrow::Cow<'a, str> {
        if self.measure(text) <= max_width {
            return std::borrow::Cow::Borrowed(text);
        }
        let budget = (max_width.max(0) << 6) - self.measure64("\u{2026}");
        let mut pen = 0;
        let mut prev = None;
        let mut end = 0;
        for (i, c) in text.char_indices() {
            let s = self.slot_or_fallback(c);
            pen += self.advance64(prev, s);
            if pen > budget {
                break;
            }
            prev = Some(s);
            end = i + c.len_utf8();
        }
        let mut out = text[..end].trim_end().to_string();
        out.push('\u{2026}');
        std::borrow::Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_nearest_faces() {
        assert_eq!(Font::new(24, Weight::Regular).px(), 24);
        assert_eq!(Font::new(25, Weight::Regular).px(), 24);
        assert_eq!(Font::new(1000, Weight::Bold).weight(), Weight::Bold);
        assert_eq!(Font::new(1, Weight::Regular).px(), Font::sizes(Weight::Regular)[0]);
        let n = Font::numerals(120);
        assert!(n.px() >= 88);
        assert!(!n.has_glyph('a') && n.has_glyph('7'));
    }

    #[test]
    fn proportional_with_kerning() {
        let f = Font::new(24, Weight::Regular);
        assert!(f.measure("W") > f.measure("i"));
        assert_eq!(f.measure(""), 0);
        assert!(f.measure("AV") < f.measure("A") + f.measure("V"), "DejaVu kerns A-V");
        assert!(f.has_glyph('é') && f.has_glyph('…') && !f.has_glyph('\u{0710}'));
        assert!(f.measure("\u{0710}") > 0, "unknown characters still take room");
        // Chinese and Japanese from the CJK face, in every full face; a numerals face has none.
        for c in ['日', '本', '漢', 'あ', 'カ', '。'] {
            assert!(f.has_glyph(c) && Font::new(40, Weight::Bold).has_glyph(c), "{c}");
        }
        assert!(!Font::numerals(88).has_glyph('日'));
        assert!(f.measure("日本") > f.measure("日"));
        let n = Font::numerals(88);
        let digits: Vec<i32> = "0123456789".chars().map(|c| n.measure(&c.to_string())).collect();
        assert!(digits.iter().all(|&w| w == digits[0]), "tabular digits");
    }

    #[test]
    fn ellipsizes_to_fit() {
        let f = Font::new(18, Weight::Regular);
        assert_eq!(f.ellipsize("short", 500), "short");
        let cut = f.ellipsize("a rather long sentence that cannot fit", 120);
        assert!(cut.ends_with('…'));
        assert!(f.measure(&cut) <= 120);
    }
}
