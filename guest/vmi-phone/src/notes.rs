//! Notes: a plain-text editor with a caret, word wrap and a proportional font. The text
//! lives in VM memory and is written to the persistent store (`notes.text`) on every change.
//!
//! Screen updates are line-granular: the view is a list of rows ([`Row`]), and the phone
//! repaints only the rows whose text or caret changed since the last frame.

use vmi_guest_sdk::gfx::{Canvas, Font, Rect, TextLayout, TextStyle};

use crate::theme::{self, Theme};
use crate::ui;

/// Persistent store key of the text.
pub const KEY: &str = "notes.text";
/// The editor refuses to grow the text past this many bytes.
pub const MAX_LEN: usize = 64 * 1024;

const PLACEHOLDER: &str = "Start typing\u{2026}";

/// What an editing command changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing.
    None,
    /// Only the caret moved (or the view scrolled).
    Caret,
    /// The text changed (save it).
    Text,
}

/// The text, the caret and the wrapped layout for one width.
#[derive(Clone, Debug)]
pub struct Editor {
    text: String,
    caret: usize,
    font: Font,
    style: TextStyle,
    width: i32,
    rows: usize,
    layout: TextLayout,
    /// First visible line.
    scroll: usize,
    /// Column (pixels) kept while moving up and down.
    goal_x: Option<i32>,
}

impl Editor {
    /// An editor for `text` in `style`, wrapping at `width` pixels, `rows` lines visible;
    /// the caret at the end.
    pub fn new(text: String, style: TextStyle, width: i32, rows: usize) -> Editor {
        let layout = TextLayout::new(&text, &style.font, width);
        let mut e = Editor {
            caret: text.len(),
            text,
            font: style.font,
            style,
            width,
            rows: rows.max(1),
            layout,
            scroll: 0,
            goal_x: None,
        };
        e.follow_caret();
        e
    }

    /// The same text, caret and first visible line, wrapped again for another screen.
    pub fn relaid(&self, style: TextStyle, width: i32, rows: usize) -> Editor {
        let mut e = Editor::new(self.text.clone(), style, width, rows);
        e.caret = self.caret;
        e.scroll = self.scroll.min(e.layout.line_of(e.text.len()));
        e.follow_caret();
        e
    }

    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The caret's byte offset.
    #[cfg(test)]
    pub fn caret(&self) -> usize {
        self.caret
    }

    /// The first visible line.
    #[cfg(test)]
    pub fn scroll(&self) -> usize {
        self.scroll
    }

    fn relayout(&mut self) {
        self.layout = TextLayout::new(&self.text, &self.font, self.width);
    }

    /// Keeps the caret's line on screen.
    fn follow_caret(&mut self) {
        let line = self.layout.line_of(self.caret);
        if line < self.scroll {
            self.scroll = line;
        } else if line >= self.scroll + self.rows {
            self.scroll = line + 1 - self.rows;
        }
    }

    fn edited(&mut self) -> Change {
        self.goal_x = None;
        self.relayout();
        self.follow_caret();
        Change::Text
    }

    fn moved(&mut self, keep_goal: bool) -> Change {
        if !keep_goal {
            self.goal_x = None;
        }
        self.follow_caret();
        Change::Caret
    }

    /// Types `c` at the caret (`'\n'` starts a new line; other control characters are
    /// ignored).
    pub fn insert(&mut self, c: char) -> Change {
        let c = if c == '\r' { '\n' } else { c };
        if (c.is_control() && c != '\n' && c != '\t') || self.text.len() + c.len_utf8() > MAX_LEN {
            return Change::None;
        }
        self.text.insert(self.caret, c);
        self.caret += c.len_utf8();
        self.edited()
    }

    /// Erases the character before the caret.
    pub fn backspace(&mut self) -> Change {
        match self.text[..self.caret].chars().next_back() {
            Some(c) => {
                self.caret -= c.len_utf8();
                self.text.remove(self.caret);
                self.edited()
            }
            None => Change::None,
        }
    }

    /// Erases the character after the caret.
    pub fn delete(&mut self) -> Change {
        if self.caret < self.text.len() {
            self.text.remove(self.caret);
            self.edited()
        } else {
            Change::None
        }
    }

    /// Moves the caret one character left.
    pub fn left(&mut self) -> Change {
        match self.text[..self.caret].chars().next_back() {
            Some(c) => {
                self.caret -= c.len_utf8();
                self.moved(false)
            }
            None => Change::None,
        }
    }

    /// Moves the caret one character right.
    pub fn right(&mut self) -> Change {
        match self.text[self.caret..].chars().next() {
            Some(c) => {
                self.caret += c.len_utf8();
                self.moved(false)
            }
            None => Change::None,
        }
    }

    /// Moves the caret one line up (`-1`) or down (`1`), keeping its column.
    pub fn vertical(&mut self, dir: i32) -> Change {
        let (line, x) = self.layout.caret(&self.text, &self.font, self.caret);
        let target = line as i64 + i64::from(dir);
        if target < 0 || target >= self.layout.lines().len() as i64 {
            return Change::None;
        }
        let goal = *self.goal_x.get_or_insert(x);
        self.caret = self.layout.hit(&self.text, &self.font, target as usize, goal);
        self.moved(true)
    }

    /// Puts the caret nearest to `(x, row)` of the view: `row` counts visible lines from the
    /// top, `x` pixels from the text's left edge.
    pub fn click(&mut self, x: i32, row: usize) -> Change {
        let line = self.scroll + row;
        let last = self.layout.lines().len() - 1;
        let before = self.caret;
        self.caret = if line > last { self.text.len() } else { self.layout.hit(&self.text, &self.font, line, x) };
        if self.caret == before { Change::None } else { self.moved(false) }
    }

    /// Scrolls the view by `lines` (negative is up), without moving the caret.
    pub fn scroll_by(&mut self, lines: i32) -> Change {
        let max = self.layout.lines().len().saturating_sub(self.rows);
        let next = (self.scroll as i64 + i64::from(lines)).clamp(0, max as i64) as usize;
        if next == self.scroll {
            return Change::None;
        }
        self.scroll = next;
        Change::Caret
    }

    /// The visible rows, top to bottom: what each shows (for diffing frames).
    pub fn rows(&self) -> Vec<Row> {
        let (caret_line, caret_x) = self.layout.caret(&self.text, &self.font, self.caret);
        (self.scroll..self.scroll + self.rows)
            .map(|i| {
                let line = self.layout.lines().get(i);
                Row {
                    text: line.map_or(String::new(), |l| self.text[l.start..l.end].trim_end_matches(' ').to_string()),
                    caret: (i == caret_line).then_some(caret_x),
                    placeholder: i == 0 && self.text.is_empty(),
                }
            })
            .collect()
    }

    /// The paragraph style.
    pub fn style(&self) -> &TextStyle {
        &self.style
    }
}

/// One visible line of the editor, as drawn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Its text.
    pub text: String,
    /// Where the caret is on it, if it is.
    pub caret: Option<i32>,
    /// Shows the placeholder.
    pub placeholder: bool,
}

/// Where the text goes.
pub fn text_area(t: &Theme) -> Rect {
    let c = t.content();
    Rect::from_edges(t.pad, c.y + t.d(24.0), t.w - t.pad, c.bottom() - t.d(16.0))
}

/// How many lines fit on screen.
pub fn visible_rows(t: &Theme) -> usize {
    let style = t.writing();
    (text_area(t).h / style.line_height.max(1)).max(1) as usize
}

/// The editor for this screen.
pub fn editor(t: &Theme, text: String) -> Editor {
    let area = text_area(t);
    // Leave room for the caret after the last character of a full line.
    Editor::new(text, t.writing(), area.w - t.d(4.0), visible_rows(t))
}

/// `editor` laid out again for this screen (a display change).
pub fn relayout(t: &Theme, editor: &Editor) -> Editor {
    let area = text_area(t);
    editor.relaid(t.writing(), area.w - t.d(4.0), visible_rows(t))
}

/// The Copy button at the right of the bar: copies the whole note to the clipboard.
pub fn copy_button(t: &Theme) -> Rect {
    let bar = t.appbar();
    let w = t.d(200.0);
    Rect::new(t.w - w, bar.y, w, bar.h)
}

/// The screen rectangle of visible row `i`.
pub fn row_rect(t: &Theme, i: usize) -> Rect {
    let area = text_area(t);
    let lh = t.writing().line_height;
    Rect::new(0, area.y + i as i32 * lh, t.w, lh)
}

/// The visible row at screen `y`, if any.
pub fn row_at(t: &Theme, y: i32) -> Option<usize> {
    let area = text_area(t);
    let lh = t.writing().line_height;
    (y >= area.y && y < t.content().bottom()).then(|| ((y - area.y) / lh) as usize)
}

/// Draws the Notes screen: app bar (with Copy, or "Copied" once the text is on the clipboard), then the visible
/// rows.
pub fn draw(c: &mut Canvas, t: &Theme, editor: &Editor, copied: bool) {
    ui::app_bar(c, t, "Notes", false, "");
    if t.appbar().intersects(c.clip()) {
        let b = copy_button(t);
        let (label, ink) = if copied { ("Copied", theme::TEXT_2) } else { ("Copy", theme::ACCENT) };
        let f = &t.strong;
        ui::text_centered_v(c, b.right() - t.pad - f.measure(label), b.y + b.h / 2, label, f, ink);
    }
    let content = t.content();
    c.fill(content, theme::BG);
    let area = text_area(t);
    let style = editor.style();
    let font = style.font;
    for (i, row) in editor.rows().iter().enumerate() {
        let r = row_rect(t, i);
        if !r.intersects(c.clip()) {
            continue;
        }
        let y = r.y + style.text_offset();
        if row.placeholder {
            c.draw_text(area.x, y, PLACEHOLDER, &font, theme::TEXT_3);
        } else {
            c.draw_text(area.x, y, &row.text, &font, theme::TEXT);
        }
        if let Some(x) = row.caret {
            let w = t.d(3.0).max(2);
            let h = font.line_height() + t.d(4.0);
            c.fill_rounded_rect(Rect::new(area.x + x - w / 2, y - t.d(2.0), w, h), w as f32 / 2.0, theme::ACCENT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmi_guest_sdk::gfx::Weight;

    fn ed(text: &str) -> Editor {
        let font = Font::new(24, Weight::Regular);
        Editor::new(text.to_string(), TextStyle::new(font), font.measure("hello world"), 3)
    }

    #[test]
    fn types_erases_and_moves() {
        let mut e = ed("");
        for c in "hé!".chars() {
            assert_eq!(e.insert(c), Change::Text);
        }
        assert_eq!(e.text(), "hé!");
        assert_eq!(e.left(), Change::Caret);
        assert_eq!(e.backspace(), Change::Text);
        assert_eq!(e.text(), "h!");
        assert_eq!(e.delete(), Change::Text);
        assert_eq!(e.text(), "h");
        assert_eq!(e.delete(), Change::None);
        assert_eq!(e.insert('\u{7}'), Change::None);
        assert_eq!(e.insert('\r'), Change::Text);
        assert_eq!(e.text(), "h\n");
        assert_eq!(e.right(), Change::None);
        assert_eq!(e.vertical(-1), Change::Caret);
        assert_eq!(e.caret(), 0);
    }

    #[test]
    fn keeps_the_caret_in_view_and_reports_rows() {
        let mut e = ed("");
        for c in "one\ntwo\nthree\nfour\nfive".chars() {
            e.insert(c);
        }
        assert_eq!(e.scroll(), 2);
        let rows = e.rows();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].text, "five");
        assert!(rows[2].caret.is_some() && rows[0].caret.is_none());
        assert_eq!(e.scroll_by(-10), Change::Caret);
        assert_eq!(e.scroll(), 0);
        assert_eq!(e.click(0, 1), Change::Caret);
        assert_eq!(e.caret(), 4);
        assert!(ed("").rows()[0].placeholder);
    }

    #[test]
    fn wraps_long_lines() {
        let mut e = ed("");
        for c in "hello world again and again".chars() {
            e.insert(c);
        }
        let rows = e.rows();
        assert!(rows.iter().filter(|r| !r.text.is_empty()).count() >= 2);
        assert_eq!(e.vertical(-1), Change::Caret);
        assert!(e.caret() < e.text().len());
    }

    #[test]
    fn refuses_to_grow_past_the_limit() {
        let mut e = ed(&"x".repeat(MAX_LEN));
        assert_eq!(e.insert('y'), Change::None);
        assert_eq!(e.text().len(), MAX_LEN);
    }
}
