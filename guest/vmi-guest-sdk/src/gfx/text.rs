//! Paragraph layout: greedy word wrap with the atlas's real advances, caret positions and
//! hit testing, for text views and editors.

use super::Font;

/// How a paragraph looks: a face and the distance between baselines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextStyle {
    /// The face.
    pub font: Font,
    /// Pixels from one line's top to the next's (at least the font's own line height
    /// reads well; 1.3–1.5 × the em size is comfortable for body text).
    pub line_height: i32,
}

impl TextStyle {
    /// `font` with its natural line height.
    pub fn new(font: Font) -> TextStyle {
        TextStyle { font, line_height: font.line_height() }
    }

    /// The same face with `line_height` pixels between lines.
    pub fn with_line_height(self, line_height: i32) -> TextStyle {
        TextStyle { line_height, ..self }
    }

    /// Offset from a line's top to where [`Canvas::draw_text`](super::Canvas::draw_text)
    /// must start to center the font's glyph box in the line.
    pub fn text_offset(&self) -> i32 {
        (self.line_height - self.font.line_height()) / 2
    }
}

/// One laid-out line: the bytes `start..end` of the text (without the `'\n'` that ends a
/// paragraph; a soft-wrapped line keeps the spaces it broke after) and its drawn width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// Width in pixels, trailing spaces excluded.
    pub width: i32,
}

/// A text broken into lines no wider than a given width. Paragraphs end at `'\n'`; lines
/// break after spaces, and a word longer than the width breaks between characters. An
/// empty text, and a text ending in `'\n'`, end with an empty line (where a caret goes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextLayout {
    lines: Vec<Line>,
}

impl TextLayout {
    /// Lays out `text` in `font` for lines of at most `max_width` pixels.
    pub fn new(text: &str, font: &Font, max_width: i32) -> TextLayout {
        // A line fits when its width rounded to whole pixels does.
        let max64 = (max_width.max(1) << 6) + 31;
        let mut lines = Vec::new();
        let mut para_start = 0;
        loop {
            let para_end = text[para_start..].find('\n').map_or(text.len(), |i| para_start + i);
            wrap_paragraph(text, para_start, para_end, font, max64, &mut lines);
            if para_end == text.len() {
                break;
            }
            para_start = para_end + 1;
        }
        TextLayout { lines }
    }

    /// The lines, top to bottom (never empty).
    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// Height of the text in `style`.
    pub fn height(&self, style: &TextStyle) -> i32 {
        self.lines.len() as i32 * style.line_height
    }

    /// The line holding a caret at byte `index` (a caret at a soft break goes to the start
    /// of the next line).
    pub fn line_of(&self, index: usize) -> usize {
        self.lines.partition_point(|l| l.start <= index).saturating_sub(1)
    }

    /// Where a caret at byte `index` is: its line and its x offset in pixels.
    pub fn caret(&self, text: &str, font: &Font, index: usize) -> (usize, i32) {
        let line = self.line_of(index);
        let l = self.lines[line];
        let end = index.clamp(l.start, l.end);
        let x = text.get(l.start..end).map_or(0, |s| font.measure(s));
        (line, x)
    }

    /// The caret position (byte index) nearest to pixel offset `x` on line `line`.
    pub fn hit(&self, text: &str, font: &Font, line: usize, x: i32) -> usize {
        let Some(l) = self.lines.get(line.min(self.lines.len() - 1)) else {
            return 0;
        };
        let Some(s) = text.get(l.start..l.end) else {
            return l.start;
        };
        // A soft-wrapped line's trailing spaces belong to the break; the caret stops before.
        let soft = self.lines.get(line + 1).is_some_and(|n| n.start == l.end);
        let limit = if soft { s.trim_end_matches(' ').len() } else { s.len() };
        let x64 = x << 6;
        let mut pen = 0;
        let mut prev = None;
        for (i, c) in s.char_indices() {
            if i >= limit {
                return l.start + limit;
            }
            let slot = font.slot_or_fallback(c);
            let adv = font.advance64(prev, slot);
            if x64 < pen + adv / 2 {
                return l.start + i;
            }
            pen += adv;
            prev = Some(slot);
        }
        l.start + limit
    }
}

fn wrap_paragraph(text: &str, start: usize, end: usize, font: &Font, max64: i32, out: &mut Vec<Line>) {
    let para = &text[start..end];
    let mut line_start = start;
    let mut pen = 0;
    let mut prev = None;
    // After the last space run on this line: (byte where the next word starts, width of the
    // line without the spaces).
    let mut brk: Option<(usize, i32)> = None;
    let mut last_ink = 0;
    for (off, c) in para.char_indices() {
        let i = start + off;
        let slot = font.slot_or_fallback(c);
        let adv = font.advance64(prev, slot);
        if c == ' ' {
            pen += adv;
            prev = Some(slot);
            brk = Some((i + 1, last_ink));
            continue;
        }
        if pen + adv > max64 && i > line_start {
            match brk {
                Some((b, w)) if b > line_start && b <= i => {
                    out.push(Line { start: line_start, end: b, width: (w + 32) >> 6 });
                    line_start = b;
                    pen = font.measure64(&text[b..i]);
                    prev = text[b..i].chars().last().map(|p| font.slot_or_fallback(p));
                }
                _ => {
                    out.push(Line { start: line_start, end: i, width: (pen + 32) >> 6 });
                    line_start = i;
                    pen = 0;
                    prev = None;
                }
            }
            brk = None;
            let adv = font.advance64(prev, slot);
            pen += adv;
        } else {
            pen += adv;
        }
        last_ink = pen;
        prev = Some(slot);
    }
    let width = font.measure(text[line_start..end].trim_end_matches(' '));
    out.push(Line { start: line_start, end, width });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gfx::Weight;

    fn texts<'a>(text: &'a str, layout: &TextLayout) -> Vec<&'a str> {
        layout.lines().iter().map(|l| &text[l.start..l.end]).collect()
    }

    #[test]
    fn wraps_at_spaces_and_newlines() {
        let f = Font::new(24, Weight::Regular);
        let text = "The quick brown fox jumps over the lazy dog\nand again";
        let width = f.measure("The quick brown fox");
        let layout = TextLayout::new(text, &f, width);
        let lines = texts(text, &layout);
        assert_eq!(lines, vec!["The quick brown fox ", "jumps over the lazy ", "dog", "and again"]);
        for l in layout.lines() {
            assert!(l.width <= width, "{l:?}");
        }
        assert_eq!(layout.lines()[0].width, width);
    }

    #[test]
    fn breaks_long_words_and_keeps_empty_lines() {
        let f = Font::new(24, Weight::Regular);
        let text = "aaaaaaaaaaaaaaaaaaaa\n\n";
        let layout = TextLayout::new(text, &f, f.measure("aaaaaaa"));
        let lines = texts(text, &layout);
        assert_eq!(lines, vec!["aaaaaaa", "aaaaaaa", "aaaaaa", "", ""]);
        assert_eq!(TextLayout::new("", &f, 100).lines().len(), 1);
    }

    #[test]
    fn carets_and_hits_round_trip() {
        let f = Font::new(21, Weight::Regular);
        let text = "héllo wörld, this wraps\nnext";
        let layout = TextLayout::new(text, &f, f.measure("héllo wörld, "));
        for (i, _) in text.char_indices().chain([(text.len(), ' ')]) {
            let (line, x) = layout.caret(text, &f, i);
            let back = layout.hit(text, &f, line, x);
            // A soft break's trailing space maps to the end of the word before it.
            let l = layout.lines()[line];
            assert!(back == i || text[back..i].trim().is_empty(), "{i} -> ({line},{x}) -> {back} in {l:?}");
        }
        assert_eq!(layout.line_of(text.len()), layout.lines().len() - 1);
        assert_eq!(layout.hit(text, &f, 0, -50), 0);
        assert_eq!(layout.hit(text, &f, 99, 10_000), text.len());
    }
}
