//! Mail: the inbox (kept in the persistent store so it survives image upgrades), its
//! encoding, and the inbox and message views.
//!
//! # Stored form (`mail.inbox`)
//!
//! ```text
//! VMI-INBOX 1\n
//! then for each message, newest first:
//! <U|R> <id> <received unix s> <from bytes> <subject bytes> <body bytes>\n<from><subject><body>\n
//! ```
//!
//! Lengths are decimal byte counts, so any text round-trips. Decoding stops at the first
//! malformed record and keeps what came before: a damaged value loses mail, never the app.

use vmi_guest_sdk::Mail;
use vmi_guest_sdk::gfx::{Canvas, Rect, TextLayout, TextStyle};

use crate::theme::{self, Theme};
use crate::time::{Civil, short_stamp};
use crate::ui;

/// Persistent store key of the inbox.
pub const KEY: &str = "mail.inbox";
/// Persistent store key of when Mail alerts a sleeping screen: `now` or `hourly`.
pub const ALERTS_KEY: &str = "mail.alerts";

/// When new mail raises a notification while the screen is off. Each notification wakes the
/// terminal's radio (a promotion and a tail, about 1.5–13 J in the LTE model); held ones go
/// out together once an hour, as one. With the screen on, mail alerts at once either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alerts {
    /// Every mail at once (the default).
    Now,
    /// Held, then one summary at the top of each hour.
    Hourly,
}

impl Alerts {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Alerts::Now => "now",
            Alerts::Hourly => "hourly",
        }
    }

    /// Reads the stored form; anything else is the default.
    pub fn parse(bytes: &[u8]) -> Alerts {
        if bytes == b"hourly" { Alerts::Hourly } else { Alerts::Now }
    }

    /// The other choice (the app bar's button toggles).
    pub fn toggled(self) -> Alerts {
        match self {
            Alerts::Now => Alerts::Hourly,
            Alerts::Hourly => Alerts::Now,
        }
    }

    /// What the app bar's button says.
    pub fn label(self) -> &'static str {
        match self {
            Alerts::Now => "Alerts: now",
            Alerts::Hourly => "Alerts: hourly",
        }
    }
}

/// The notification that stands for mails held back (sender, subject each), or `None`.
pub fn summary(held: &[(String, String)]) -> Option<(String, String)> {
    match held {
        [] => None,
        [(from, subject)] => Some((from.clone(), subject.clone())),
        many => {
            let mut senders: Vec<&str> = Vec::new();
            for (from, _) in many {
                if !senders.contains(&from.as_str()) {
                    senders.push(from);
                }
            }
            let shown = senders.iter().take(3).copied().collect::<Vec<_>>().join(", ");
            let more = if senders.len() > 3 { format!(" and {} more", senders.len() - 3) } else { String::new() };
            Some((format!("{} new messages", many.len()), format!("From {shown}{more}")))
        }
    }
}
/// The inbox keeps at most this many messages (the oldest go first).
pub const MAX_MESSAGES: usize = 200;
/// The stored inbox stays under this many bytes (the store takes values up to 1 MiB).
pub const MAX_ENCODED: usize = 960 * 1024;
/// Bodies longer than this are cut when a mail arrives.
pub const MAX_BODY: usize = 32 * 1024;

const MAGIC: &str = "VMI-INBOX 1\n";

/// One message in the inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Stable id within this inbox.
    pub id: u32,
    /// Sender.
    pub from: String,
    /// Subject line.
    pub subject: String,
    /// Body text.
    pub body: String,
    /// When the phone fetched it, Unix seconds.
    pub received_s: i64,
    /// Not opened yet.
    pub unread: bool,
}

impl Message {
    /// The sender's name to show: the display name of `Name <address>`, else the
    /// address, else "New mail" when the mail has no sender.
    pub fn sender(&self) -> &str {
        let from = self.from.trim();
        let name = match from.find('<') {
            Some(i) => {
                let name = from[..i].trim().trim_matches('"').trim();
                if name.is_empty() { self.address() } else { name }
            }
            None => from,
        };
        if name.is_empty() { "New mail" } else { name }
    }

    /// The sender's address: inside `<…>` if present, else the whole sender.
    pub fn address(&self) -> &str {
        let from = self.from.trim();
        match (from.find('<'), from.rfind('>')) {
            (Some(a), Some(b)) if a < b => from[a + 1..b].trim(),
            _ => from,
        }
    }

    /// The subject to show.
    pub fn title(&self) -> &str {
        let s = self.subject.trim();
        if s.is_empty() { "(no subject)" } else { s }
    }

    /// The start of the body on one line.
    pub fn snippet(&self) -> String {
        let mut out = String::new();
        for word in self.body.split_whitespace() {
            if out.len() > 160 {
                break;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(word);
        }
        out
    }
}

/// The user's messages, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inbox {
    messages: Vec<Message>,
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Inbox {
    /// The messages, newest first.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// How many are unread.
    pub fn unread(&self) -> usize {
        self.messages.iter().filter(|m| m.unread).count()
    }

    /// The message with `id`.
    pub fn get(&self, id: u32) -> Option<&Message> {
        self.messages.iter().find(|m| m.id == id)
    }

    /// Files a newly arrived mail as unread, newest; returns its id.
    pub fn add(&mut self, mail: Mail, received_s: i64) -> u32 {
        let id = self.messages.iter().map(|m| m.id).max().map_or(1, |m| m.wrapping_add(1).max(1));
        self.messages.insert(
            0,
            Message {
                id,
                from: cut(&mail.from, 1024).to_string(),
                subject: cut(&mail.subject, 1024).to_string(),
                body: cut(&mail.body, MAX_BODY).to_string(),
                received_s,
                unread: true,
            },
        );
        self.messages.truncate(MAX_MESSAGES);
        id
    }

    /// Marks `id` read; true when that changed something.
    pub fn mark_read(&mut self, id: u32) -> bool {
        match self.messages.iter_mut().find(|m| m.id == id) {
            Some(m) if m.unread => {
                m.unread = false;
                true
            }
            _ => false,
        }
    }

    /// The stored form (see the module docs), at most [`MAX_ENCODED`] bytes: the oldest
    /// messages are left out when the inbox is bigger.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.as_bytes().to_vec();
        for m in &self.messages {
            let head = format!(
                "{} {} {} {} {} {}\n",
                if m.unread { 'U' } else { 'R' },
                m.id,
                m.received_s,
                m.from.len(),
                m.subject.len(),
                m.body.len()
            );
            if out.len() + head.len() + m.from.len() + m.subject.len() + m.body.len() + 1 > MAX_ENCODED {
                break;
            }
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(m.from.as_bytes());
            out.extend_from_slice(m.subject.as_bytes());
            out.extend_from_slice(m.body.as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// Reads the stored form; anything malformed ends the inbox there.
    pub fn decode(bytes: &[u8]) -> Inbox {
        let mut messages = Vec::new();
        let Some(mut rest) = bytes.strip_prefix(MAGIC.as_bytes()) else {
            return Inbox::default();
        };
        while !rest.is_empty() && messages.len() < MAX_MESSAGES {
            match decode_one(rest) {
                Some((m, tail)) => {
                    messages.push(m);
                    rest = tail;
                }
                None => break,
            }
        }
        Inbox { messages }
    }
}

fn decode_one(bytes: &[u8]) -> Option<(Message, &[u8])> {
    let nl = bytes.iter().take(128).position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&bytes[..nl]).ok()?;
    let mut f = head.split(' ');
    let unread = match f.next()? {
        "U" => true,
        "R" => false,
        _ => return None,
    };
    let id: u32 = f.next()?.parse().ok()?;
    let received_s: i64 = f.next()?.parse().ok()?;
    let lens: [usize; 3] = [f.next()?.parse().ok()?, f.next()?.parse().ok()?, f.next()?.parse().ok()?];
    if f.next().is_some() {
        return None;
    }
    let mut rest = &bytes[nl + 1..];
    let mut take = |n: usize| -> Option<String> {
        let (a, b) = (rest.get(..n)?, rest.get(n..)?);
        rest = b;
        String::from_utf8(a.to_vec()).ok()
    };
    let from = take(lens[0])?;
    let subject = take(lens[1])?;
    let body = take(lens[2])?;
    let rest = rest.strip_prefix(b"\n")?;
    Some((Message { id, from, subject, body, received_s, unread }, rest))
}

// ---- views --------------------------------------------------------------------------------

/// Height of one inbox row.
pub fn row_h(t: &Theme) -> i32 {
    t.d(148.0)
}

/// How far the inbox list can scroll.
pub fn list_max_scroll(t: &Theme, inbox: &Inbox) -> i32 {
    (inbox.messages().len() as i32 * row_h(t) - t.content().h).max(0)
}

/// The message whose row is at `(x, y)` in the inbox scrolled by `scroll`.
pub fn list_hit(t: &Theme, inbox: &Inbox, scroll: i32, x: i32, y: i32) -> Option<u32> {
    let area = t.content();
    if !area.contains(x, y) {
        return None;
    }
    let i = (y - area.y + scroll) / row_h(t);
    inbox.messages().get(i as usize).map(|m| m.id)
}

/// What the app bar of the inbox says on its right.
pub fn unread_label(inbox: &Inbox) -> String {
    match inbox.unread() {
        0 => String::new(),
        n => format!("{n} unread"),
    }
}

/// The alerts button at the right of the inbox's bar (toggles [`Alerts`]).
pub fn alerts_button(t: &Theme) -> Rect {
    let bar = t.appbar();
    let w = t.d(230.0);
    Rect::new(t.w - w, bar.y, w, bar.h)
}

/// Draws the inbox list (app bar included, with the unread count and the alerts button)
/// scrolled by `scroll` pixels.
pub fn draw_list(c: &mut Canvas, t: &Theme, inbox: &Inbox, scroll: i32, alerts: Alerts, when: (i64, i32)) {
    let (now_s, tz_min) = when;
    ui::app_bar(c, t, "Inbox", false, "");
    if t.appbar().intersects(c.clip()) {
        let b = alerts_button(t);
        let (f, mid) = (&t.label, b.y + b.h / 2);
        let x = b.right() - t.pad - f.measure(alerts.label());
        ui::text_centered_v(c, x, mid, alerts.label(), f, theme::ACCENT);
        let unread = unread_label(inbox);
        if !unread.is_empty() {
            c.draw_text_right(b.x, mid - f.line_height() / 2, &unread, f, theme::TEXT_2);
        }
    }
    let area = t.content();
    c.with_clip(area, |c| {
        c.fill(area, theme::BG);
        if inbox.messages().is_empty() {
            empty_state(c, t, area);
            return;
        }
        let rh = row_h(t);
        let first = (scroll / rh).max(0) as usize;
        for (i, m) in inbox.messages().iter().enumerate().skip(first) {
            let y = area.y + i as i32 * rh - scroll;
            if y >= area.bottom() {
                break;
            }
            let row = Rect::new(0, y, t.w, rh);
            if row.intersects(c.clip()) {
                draw_row(c, t, m, row, now_s, tz_min);
            }
        }
    });
}

fn empty_state(c: &mut Canvas, t: &Theme, area: Rect) {
    let (cx, cy) = (area.x + area.w / 2, area.y + area.h * 2 / 5);
    let (w, h) = (t.d(120.0), t.d(84.0));
    ui::envelope(c, Rect::new(cx - w / 2, cy - h, w, h), t.f(6.0), theme::TEXT_3);
    let f = &t.headline;
    c.draw_text_centered(cx, cy + t.d(40.0), "No mail yet", f, theme::TEXT);
    let g = &t.label;
    let y = cy + t.d(40.0) + f.line_height() + t.d(10.0);
    c.draw_text_centered(cx, y, "New messages will appear here.", g, theme::TEXT_2);
}

fn draw_row(c: &mut Canvas, t: &Theme, m: &Message, row: Rect, now_s: i64, tz_min: i32) {
    let r = t.f(34.0);
    let cy = row.y as f32 + row.h as f32 / 2.0;
    ui::avatar(c, t.pad as f32 + t.f(14.0) + r, cy, r, m.sender(), &t.headline);
    if m.unread {
        c.fill_circle(t.f(18.0), cy, t.f(6.5), theme::ACCENT);
    }
    let x = t.pad + t.d(14.0) + 2 * r as i32 + t.d(24.0);
    let right = t.w - t.pad;

    let name_font = if m.unread { &t.strong } else { &t.body };
    let (sub_font, snip_font) = (&t.label, &t.caption);
    let gap = t.d(7.0);
    let block = name_font.line_height() + sub_font.line_height() + snip_font.line_height() + 2 * gap;
    let mut y = row.y + (row.h - block) / 2;

    let stamp = short_stamp(m.received_s, now_s, tz_min);
    let stamp_color = if m.unread { theme::ACCENT } else { theme::TEXT_3 };
    let sw = t.caption.measure(&stamp);
    let stamp_y = y + name_font.ascent() - t.caption.ascent();
    c.draw_text_right(right, stamp_y, &stamp, &t.caption, stamp_color);
    let name = name_font.ellipsize(m.sender(), right - x - sw - t.d(16.0));
    c.draw_text(x, y, &name, name_font, theme::TEXT);
    y += name_font.line_height() + gap;

    let subject_color = if m.unread { theme::TEXT } else { theme::TEXT_2 };
    let subject = sub_font.ellipsize(m.title(), right - x);
    c.draw_text(x, y, &subject, sub_font, subject_color);
    y += sub_font.line_height() + gap;

    let snippet = m.snippet();
    let snippet = snip_font.ellipsize(&snippet, right - x);
    c.draw_text(x, y, &snippet, snip_font, theme::TEXT_3);

    c.fill(Rect::new(x, row.bottom() - 1, t.w - x, 1), theme::DIVIDER);
}

/// Geometry of an open message, shared by drawing and scrolling.
struct MessageLayout {
    subject: TextLayout,
    subject_style: TextStyle,
    body: TextLayout,
    body_style: TextStyle,
    sender_y: i32,
    rule_y: i32,
    body_y: i32,
    height: i32,
}

fn layout_message(t: &Theme, m: &Message) -> MessageLayout {
    let width = t.w - 2 * t.pad;
    let subject_style = TextStyle::new(t.headline).with_line_height(t.d(44.0));
    let subject = TextLayout::new(m.title(), &t.headline, width);
    let body_style = t.reading();
    let body = TextLayout::new(&m.body, &t.body, width);
    let sender_y = t.d(32.0) + subject.height(&subject_style) + t.d(28.0);
    let rule_y = sender_y + t.d(64.0) + t.d(28.0);
    let body_y = rule_y + t.d(28.0);
    let height = body_y + body.height(&body_style) + t.d(48.0);
    MessageLayout { subject, subject_style, body, body_style, sender_y, rule_y, body_y, height }
}

/// How far an open message can scroll.
pub fn message_max_scroll(t: &Theme, m: &Message) -> i32 {
    (layout_message(t, m).height - t.content().h).max(0)
}

/// Draws an open message (app bar with a back button included) scrolled by `scroll`.
pub fn draw_message(c: &mut Canvas, t: &Theme, m: &Message, scroll: i32, now_s: i64, tz_min: i32) {
    ui::app_bar(c, t, "Inbox", true, "");
    let area = t.content();
    let l = layout_message(t, m);
    c.with_clip(area, |c| {
        c.fill(area, theme::BG);
        let top = area.y - scroll;
        c.draw_layout(t.pad, top + t.d(32.0), m.title(), &l.subject, &l.subject_style, theme::TEXT);

        let r = t.f(32.0);
        let sy = top + l.sender_y;
        ui::avatar(c, t.pad as f32 + r, sy as f32 + r, r, m.sender(), &t.headline);
        let x = t.pad + 2 * r as i32 + t.d(20.0);
        let name = t.strong.ellipsize(m.sender(), t.w - t.pad - x);
        c.draw_text(x, sy + t.d(2.0), &name, &t.strong, theme::TEXT);
        let when = Civil::from_unix(m.received_s, tz_min);
        let now = Civil::from_unix(now_s, tz_min);
        let day = if when.days == now.days { "today".to_string() } else { when.day_month() };
        let who = if m.address() != m.sender() { m.address() } else { "to me" };
        let line = format!("{who} \u{b7} {day} {}", when.hh_mm());
        let line = t.caption.ellipsize(&line, t.w - t.pad - x);
        c.draw_text(x, sy + t.d(36.0), &line, &t.caption, theme::TEXT_2);

        c.fill(Rect::new(t.pad, top + l.rule_y, t.w - 2 * t.pad, 1), theme::DIVIDER);
        c.draw_layout(t.pad, top + l.body_y, &m.body, &l.body, &l.body_style, theme::TEXT);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(from: &str, subject: &str, body: &str) -> Mail {
        Mail { from: from.into(), subject: subject.into(), body: body.into() }
    }

    #[test]
    fn newest_first_with_unread_count() {
        let mut inbox = Inbox::default();
        let a = inbox.add(mail("ann", "one", "x"), 10);
        let b = inbox.add(mail("bob", "two", "y"), 20);
        assert_eq!(inbox.messages()[0].id, b);
        assert_eq!(inbox.unread(), 2);
        assert!(inbox.mark_read(a));
        assert!(!inbox.mark_read(a));
        assert_eq!(inbox.unread(), 1);
        for i in 0..MAX_MESSAGES + 5 {
            inbox.add(mail("x", &i.to_string(), ""), 30);
        }
        assert_eq!(inbox.messages().len(), MAX_MESSAGES);
    }

    #[test]
    fn encoding_round_trips_any_text() {
        let mut inbox = Inbox::default();
        inbox.add(mail("Zoë <z@example.com>", "Ünïcode 5 6 7\nnot a header", "line\n\nU 1 2 3 4 5\n"), 1_700_000_000);
        inbox.add(mail("", "", ""), -5);
        inbox.mark_read(1);
        let bytes = inbox.encode();
        assert_eq!(Inbox::decode(&bytes), inbox);
    }

    #[test]
    fn decoding_damaged_values_keeps_what_it_can() {
        let mut inbox = Inbox::default();
        inbox.add(mail("a", "b", "c"), 1);
        inbox.add(mail("d", "e", "f"), 2);
        let bytes = inbox.encode();
        for cut in 0..bytes.len() {
            let partial = Inbox::decode(&bytes[..cut]);
            assert!(partial.messages().len() <= 2);
        }
        let mut broken = bytes.clone();
        let second = broken.len() - 10;
        broken[second] = 0xff;
        assert_eq!(Inbox::decode(&broken).messages().len(), 1);
        assert!(Inbox::decode(b"garbage").messages().is_empty());
        assert!(Inbox::decode(b"VMI-INBOX 1\nU 1 1 99999999999999999999 0 0\n").messages().is_empty());
    }

    #[test]
    fn snippets_are_one_line() {
        let m = Message {
            id: 1,
            from: " ".into(),
            subject: "".into(),
            body: "Hello\n\nthere   you".into(),
            received_s: 0,
            unread: true,
        };
        assert_eq!(m.snippet(), "Hello there you");
        assert_eq!(m.sender(), "New mail");
        assert_eq!(m.title(), "(no subject)");
        let named = |from: &str| Message { from: from.into(), ..m.clone() };
        assert_eq!(named("Ann Lee <ann@example.com>").sender(), "Ann Lee");
        assert_eq!(named("Ann Lee <ann@example.com>").address(), "ann@example.com");
        assert_eq!(named("\"Lee, Ann\" <ann@example.com>").sender(), "Lee, Ann");
        assert_eq!(named("<bob@example.com>").sender(), "bob@example.com");
        assert_eq!(named("bob@example.com").sender(), "bob@example.com");
    }
}
