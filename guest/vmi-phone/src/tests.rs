//! The whole phone driven by events against a fake host: what a user does, what the host
//! sees (damage, timers, notifications, the store). With `VMI_RENDER_DIR` set, every
//! screen is also written there as a PNG to look at.

use std::collections::{BTreeMap, HashMap, VecDeque};

use vmi_guest_sdk::gfx::{Canvas, Rect};
use vmi_guest_sdk::{Event, Key, Mail};

use super::*;

/// 2024-05-14 09:41:30 UTC, a Tuesday.
const T0_WALL: u64 = 1_715_679_690_000_000_000;
const SEC: u64 = 1_000_000_000;
/// What the fake host's random generator always says.
const RANDOM: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Default)]
struct FakeHost {
    mono: u64,
    wall0: u64,
    timers: BTreeMap<u32, u64>,
    notifications: Vec<(String, String)>,
    mailbox: VecDeque<Mail>,
    kv: HashMap<String, Vec<u8>>,
    kv_writes: Vec<String>,
    /// Damage of each present that had any.
    frames: Vec<Vec<Rect>>,
    clipboard: Option<String>,
}

impl Host for FakeHost {
    fn monotonic_ns(&mut self) -> u64 {
        self.mono
    }
    fn wall_ns(&mut self) -> u64 {
        self.wall0 + self.mono
    }
    fn timer_set(&mut self, id: u32, deadline_ns: u64) {
        self.timers.insert(id, deadline_ns);
    }
    fn timer_cancel(&mut self, id: u32) {
        self.timers.remove(&id);
    }
    fn notify(&mut self, title: &str, body: &str) -> bool {
        self.notifications.push((title.to_string(), body.to_string()));
        true
    }
    fn mailbox_fetch(&mut self) -> Option<Mail> {
        self.mailbox.pop_front()
    }
    fn kv_get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.kv.get(key).cloned()
    }
    fn kv_set(&mut self, key: &str, value: &[u8]) -> bool {
        self.kv.insert(key.to_string(), value.to_vec());
        self.kv_writes.push(key.to_string());
        true
    }
    fn present(&mut self, canvas: &mut Canvas) {
        let d = canvas.take_damage();
        if !d.is_empty() {
            self.frames.push(d);
        }
    }
    fn random_u64(&mut self) -> u64 {
        RANDOM
    }
    fn clipboard_set(&mut self, text: &str) {
        self.clipboard = Some(text.to_string());
    }
}

/// When the fake host's phone first checks its mail.
fn first_mail_check() -> u64 {
    MAIL_FIRST_NS + RANDOM % (MAIL_REFRESH_NS - MAIL_FIRST_NS)
}

fn host() -> FakeHost {
    FakeHost { wall0: T0_WALL, ..FakeHost::default() }
}

fn boot(w: u32, h: u32, host: FakeHost) -> Phone<FakeHost> {
    Phone::start(host, w, h)
}

/// Sends `event` and returns the damage it presented.
fn send(p: &mut Phone<FakeHost>, event: Event) -> Vec<Rect> {
    let before = p.host().frames.len();
    p.handle(event);
    p.host().frames.get(before).cloned().unwrap_or_default()
}

fn tap(p: &mut Phone<FakeHost>, x: i32, y: i32) -> Vec<Rect> {
    let mut d = send(p, Event::TouchDown { x, y, pointer: 0 });
    d.extend(send(p, Event::TouchUp { x, y, pointer: 0 }));
    d
}

fn key(p: &mut Phone<FakeHost>, key: Key, text: Option<char>) -> Vec<Rect> {
    send(p, Event::Key { key, text, modifiers: 0 })
}

fn type_text(p: &mut Phone<FakeHost>, s: &str) {
    for c in s.chars() {
        if c == '\n' {
            key(p, Key::Enter, None);
        } else {
            key(p, Key::Text, Some(c));
        }
    }
}

/// Advances virtual time to timer `id`'s deadline and fires it.
fn fire(p: &mut Phone<FakeHost>, id: u32) -> Vec<Rect> {
    let at = *p.host().timers.get(&id).expect("timer armed");
    let h = p.host_mut();
    h.mono = h.mono.max(at);
    send(p, Event::Timer(id))
}

fn area(d: &[Rect]) -> i64 {
    d.iter().map(Rect::area).sum()
}

fn within(d: &[Rect], bound: Rect) -> bool {
    d.iter().all(|r| r.intersect(bound) == *r)
}

fn mail(from: &str, subject: &str, body: &str) -> Mail {
    Mail { from: from.into(), subject: subject.into(), body: body.into() }
}

fn sample_mail() -> Vec<Mail> {
    vec![
        mail(
            "Ann Lee <ann@example.com>",
            "Lunch on Friday?",
            "Hi!\n\nAre you free for lunch on Friday? There's a new ramen place near the station \
             that everyone keeps talking about. I could book a table for 12:30.\n\nAnn",
        ),
        mail(
            "Build bot",
            "Nightly build #4821 passed",
            "All 1,284 tests passed in 6 min 12 s.\nArtifacts: phone-image.wasm (1.1 MB)",
        ),
        mail(
            "José Álvarez",
            "Café à Paris — photos",
            "Voilà les photos du week-end ! Merci encore pour l'accueil.\n\nÀ bientôt,\nJosé",
        ),
    ]
}

/// Writes the screen to `$VMI_RENDER_DIR/<name>.png` when that variable is set.
fn shot(p: &Phone<FakeHost>, name: &str) {
    let Some(dir) = std::env::var_os("VMI_RENDER_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("create VMI_RENDER_DIR");
    let c = p.canvas();
    let file = std::fs::File::create(dir.join(format!("{name}.png"))).expect("create png");
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), c.width(), c.height());
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().expect("png header");
    w.write_image_data(&c.to_rgba_bytes()).expect("png data");
}

fn center(r: Rect) -> (i32, i32) {
    r.center()
}

#[test]
fn boots_to_home_with_timers_armed() {
    let p = boot(720, 1280, host());
    assert_eq!(p.host().frames.len(), 1);
    assert_eq!(p.host().frames[0], vec![Rect::new(0, 0, 720, 1280)]);
    // The clock ticks at the next minute boundary (30 s after 09:41:30); mail first at a random point of its
    // 15-minute period.
    assert_eq!(p.host().timers.get(&timers::CLOCK), Some(&(30 * SEC)));
    assert_eq!(p.host().timers.get(&timers::MAIL), Some(&(first_mail_check())));
    assert!(p.host().notifications.is_empty());
    shot(&p, "home_empty");
}

#[test]
fn a_ticking_clock_repaints_only_the_clock() {
    let mut p = boot(720, 1280, host());
    let d = fire(&mut p, timers::CLOCK);
    let clock = status::clock_rect(&p.t);
    assert!(!d.is_empty() && within(&d, clock), "{d:?} outside {clock:?}");
    assert_eq!(p.host().timers.get(&timers::CLOCK), Some(&(90 * SEC)));
    assert_eq!(p.now.hh_mm(), "09:42");
    // Inside an app too.
    let (x, y) = center(home::icon_rect(&p.t, 1));
    tap(&mut p, x, y);
    let d = fire(&mut p, timers::CLOCK);
    assert!(!d.is_empty() && within(&d, clock));
    shot(&p, "notes_after_clock_tick");
}

#[test]
fn mail_arrives_notifies_persists_and_badges() {
    let mut h = host();
    h.mailbox.extend(sample_mail());
    let mut p = boot(720, 1280, h);
    // Mail waiting at boot is fetched right away.
    assert_eq!(p.host().notifications.len(), 3);
    assert_eq!(p.host().notifications[0], ("Ann Lee <ann@example.com>".into(), "Lunch on Friday?".into()));
    assert_eq!(p.inbox.unread(), 3);
    assert!(p.host().kv.contains_key(mail::KEY));

    // More mail while on the home screen: only mail-showing regions repaint.
    p.host_mut().mailbox.push_back(mail("", "", "No sender, no subject."));
    let d = send(&mut p, Event::MailArrived(1));
    assert_eq!(p.host().notifications[3], ("New mail".into(), "(no subject)".into()));
    assert!(!d.is_empty());
    assert!(area(&d) < 720 * 1280 / 2, "{d:?}");
    assert!(d.iter().all(|r| !r.intersects(home::dock(&p.t).offset(0, 0)) || r.intersects(home::icon_rect(&p.t, 0))));
    shot(&p, "home_with_mail");

    // The periodic refresh with nothing new draws nothing and re-arms.
    let d = fire(&mut p, timers::MAIL);
    assert!(d.is_empty());
    assert_eq!(p.host().timers.get(&timers::MAIL), Some(&(first_mail_check() + MAIL_REFRESH_NS)));
    // A refresh with news while in another app repaints only the status badge.
    let (x, y) = center(home::icon_rect(&p.t, 3));
    tap(&mut p, x, y);
    p.host_mut().mailbox.push_back(mail("Carol", "Re: plans", "Sounds good."));
    let d = fire(&mut p, timers::MAIL);
    assert!(within(&d, status::badge_rect(&p.t)), "{d:?}");
    assert_eq!(p.inbox.unread(), 5);

    // It all survives a reboot (an image upgrade keeps the store, not memory).
    let mut again = host();
    again.kv = p.host().kv.clone();
    let q = boot(720, 1280, again);
    assert_eq!(q.inbox, p.inbox);
}

/// Drags the content up by `moves` × `step` px, one move per 16 ms of virtual time, and lifts the finger.
fn flick(p: &mut Phone<FakeHost>, y0: i32, moves: i32, step: i32) {
    send(p, Event::TouchDown { x: 300, y: y0, pointer: 0 });
    for i in 1..=moves {
        p.host_mut().mono += 16_000_000;
        send(p, Event::TouchMove { x: 300, y: y0 - i * step, pointer: 0 });
    }
    send(p, Event::TouchUp { x: 300, y: y0 - moves * step, pointer: 0 });
}

#[test]
fn a_flick_glides_slows_and_stops_and_a_finger_catches_it() {
    let mut h = host();
    for i in 0..80 {
        h.mailbox.push_back(mail(&format!("Sender {i}"), &format!("Message {i}"), "Body text."));
    }
    let mut p = boot(720, 1280, h);
    let (x, y) = center(home::icon_rect(&p.t, 0));
    tap(&mut p, x, y);
    let c = p.t.content();
    flick(&mut p, c.bottom() - 50, 6, 30);
    let after_drag = p.list_scroll;
    assert_eq!(after_drag, 180, "the list followed the finger");
    // The list glides on, a frame at a time, each step shorter, until it stops by itself.
    let mut steps = Vec::new();
    while p.fling.is_some() {
        let before = p.list_scroll;
        let damage = fire(&mut p, timers::FLING);
        assert!(within(&damage, c), "a glide repaints the list only");
        steps.push(p.list_scroll - before);
        assert!(steps.len() < 400, "a glide ends");
    }
    assert!(steps.len() > 20, "it glided for {} frames", steps.len());
    assert!(steps[0] >= 25, "it starts at the finger's speed: {steps:?}");
    assert!(steps.windows(2).all(|w| w[1] <= w[0] + 1), "it slows down: {steps:?}");
    assert!(p.list_scroll > after_drag + 300);
    // A second flick, caught by a finger: the glide stops there, and the touch opens nothing.
    flick(&mut p, c.bottom() - 50, 6, 30);
    fire(&mut p, timers::FLING);
    let caught_at = p.list_scroll;
    tap(&mut p, 300, c.y + 200);
    assert_eq!(p.screen, Screen::Inbox, "catching a glide is not a tap");
    assert!(!p.host().timers.contains_key(&timers::FLING));
    assert_eq!(p.list_scroll, caught_at);
    // A glide towards the top stops at the top; a slow drag (or a finger held still) starts none.
    flick(&mut p, c.y + 100, 8, -60);
    while p.fling.is_some() {
        fire(&mut p, timers::FLING);
    }
    assert_eq!(p.list_scroll, 0);
    flick(&mut p, c.bottom() - 50, 10, 5);
    assert!(p.fling.is_none(), "a slow drag does not glide");
    flick(&mut p, c.bottom() - 50, 6, 30);
    assert!(p.host().timers.contains_key(&timers::FLING));
    send(&mut p, Event::Sleep);
    assert!(!p.host().timers.contains_key(&timers::FLING), "the screen going off stops a glide");
}

#[test]
fn hourly_mail_alerts_wait_for_the_hour_while_the_screen_is_off_and_say_it_once() {
    let mut p = boot(720, 1280, host());
    let (x, y) = center(home::icon_rect(&p.t, 0));
    tap(&mut p, x, y);
    assert_eq!(p.alerts, mail::Alerts::Now);
    let (bx, by) = center(mail::alerts_button(&p.t));
    let d = tap(&mut p, bx, by);
    assert!(within(&d, p.t.appbar()), "the bar says the new choice");
    assert_eq!(p.alerts, mail::Alerts::Hourly);
    assert_eq!(p.host().kv[mail::ALERTS_KEY], b"hourly");
    shot(&p, "mail_alerts_hourly");

    // Screen off: three mails come, no notification yet; the alert timer is at the top of the hour.
    send(&mut p, Event::Sleep);
    let before = p.host().notifications.len();
    p.host_mut().mailbox.extend([mail("Ann", "One", "a"), mail("Bob", "Two", "b")]);
    send(&mut p, Event::MailArrived(2));
    p.host_mut().mono += 60 * SEC;
    p.host_mut().mailbox.push_back(mail("Ann", "Three", "c"));
    send(&mut p, Event::MailArrived(1));
    assert_eq!(p.host().notifications.len(), before, "held while the screen is off");
    assert_eq!(p.inbox.messages().len(), 3, "the mail itself is in the inbox at once");
    let at = p.host().timers[&timers::ALERTS];
    let wall_at = T0_WALL + at;
    assert_eq!(wall_at % (3600 * SEC), 0, "the top of an hour");
    assert!(at - p.host().mono <= 3600 * SEC);
    fire(&mut p, timers::ALERTS);
    assert_eq!(
        p.host().notifications[before..],
        [("3 new messages".to_string(), "From Ann, Bob".to_string())],
        "one alert says them all"
    );
    // Nothing held: the hour passes quietly. One mail held, then the screen goes on: it is said at once.
    p.host_mut().mailbox.push_back(mail("Cyd", "Four", "d"));
    send(&mut p, Event::MailArrived(1));
    assert_eq!(p.host().notifications.len(), before + 1);
    send(&mut p, Event::Wake);
    assert_eq!(p.host().notifications.last(), Some(&("Cyd".to_string(), "Four".to_string())));
    // Screen on, or alerts "now": at once. The choice survives a restart (it is in the store).
    p.host_mut().mailbox.push_back(mail("Dee", "Five", "e"));
    send(&mut p, Event::MailArrived(1));
    assert_eq!(p.host().notifications.last(), Some(&("Dee".to_string(), "Five".to_string())));
    let mut h = host();
    h.kv = p.host().kv.clone();
    assert_eq!(boot(720, 1280, h).alerts, mail::Alerts::Hourly);
}

#[test]
fn mail_app_lists_opens_and_goes_back() {
    let mut h = host();
    h.mailbox.extend(sample_mail());
    for i in 0..6 {
        h.mailbox.push_back(mail(&format!("Sender {i}"), &format!("Older message {i}"), "Body text."));
    }
    h.mailbox.extend(sample_mail());
    let mut p = boot(720, 1280, h);
    let (x, y) = center(home::icon_rect(&p.t, 0));
    tap(&mut p, x, y);
    assert_eq!(p.screen, Screen::Inbox);
    shot(&p, "mail_inbox");

    // Drag to scroll, without opening anything.
    let c = p.t.content();
    send(&mut p, Event::TouchDown { x: 300, y: c.bottom() - 50, pointer: 0 });
    for step in 1..=10 {
        send(&mut p, Event::TouchMove { x: 300, y: c.bottom() - 50 - step * 40, pointer: 0 });
    }
    send(&mut p, Event::TouchUp { x: 300, y: c.bottom() - 450, pointer: 0 });
    assert_eq!(p.screen, Screen::Inbox);
    assert!(p.list_scroll > 0);
    shot(&p, "mail_inbox_scrolled");
    key(&mut p, Key::Up, None);
    key(&mut p, Key::Up, None);
    key(&mut p, Key::Up, None);
    key(&mut p, Key::Up, None);
    assert_eq!(p.list_scroll, 0);

    // Open the newest (José).
    let unread = p.inbox.unread();
    let rh = mail::row_h(&p.t);
    tap(&mut p, 360, c.y + rh / 2);
    assert!(matches!(p.screen, Screen::Message(_)));
    assert_eq!(p.inbox.unread(), unread - 1);
    assert_eq!(Inbox::decode(&p.host().kv[mail::KEY]).unread(), unread - 1);
    shot(&p, "mail_message");

    // Back (the app bar button), then Escape goes back too, then home.
    let (bx, by) = center(ui::back_button(&p.t));
    tap(&mut p, bx, by);
    assert_eq!(p.screen, Screen::Inbox);
    tap(&mut p, 360, c.y + rh * 3 / 2);
    key(&mut p, Key::Escape, None);
    assert_eq!(p.screen, Screen::Inbox);
    key(&mut p, Key::Escape, None);
    assert_eq!(p.screen, Screen::Home);
    shot(&p, "home_after_reading");
}

#[test]
fn empty_inbox_says_so() {
    let mut p = boot(720, 1280, host());
    let (x, y) = center(home::card_rect(&p.t));
    tap(&mut p, x, y);
    assert_eq!(p.screen, Screen::Inbox);
    shot(&p, "mail_empty");
}

#[test]
fn notes_edit_persist_and_repaint_only_changed_lines() {
    let mut p = boot(720, 1280, host());
    let (x, y) = center(home::icon_rect(&p.t, 1));
    tap(&mut p, x, y);
    assert_eq!(p.screen, Screen::Notes);
    shot(&p, "notes_empty");

    type_text(&mut p, "Shopping list\n- milk\n- eggs");
    assert_eq!(p.host().kv[notes::KEY], b"Shopping list\n- milk\n- eggs");
    let d = key(&mut p, Key::Text, Some('!'));
    let row = notes::row_rect(&p.t, 2);
    assert!(!d.is_empty() && within(&d, row), "one keystroke, one line: {d:?}");
    let d = key(&mut p, Key::Backspace, None);
    assert!(within(&d, row));
    type_text(
        &mut p,
        "\n\nThe quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs! \
         Zoë's café serves crème brûlée.\n\
         “AVATAR” To: Wally — €5 → ✓ … 漢字 日本語 ひらがな カタカナ。",
    );
    shot(&p, "notes_typed");

    // Arrow keys move the caret; the text does not change and is not re-saved.
    let writes = p.host().kv_writes.len();
    let d = key(&mut p, Key::Up, None);
    assert!(!d.is_empty());
    let row_area = notes::row_rect(&p.t, 0).area();
    assert!(area(&d) <= 2 * row_area);
    assert_eq!(p.host().kv_writes.len(), writes);

    // Home and back: the text is still there.
    key(&mut p, Key::Home, None);
    assert_eq!(p.screen, Screen::Home);
    let (x, y) = center(home::icon_rect(&p.t, 1));
    tap(&mut p, x, y);
    assert!(p.editor.text().starts_with("Shopping list"));

    // And after a reboot from the store.
    let mut again = host();
    again.kv = p.host().kv.clone();
    let q = boot(720, 1280, again);
    assert_eq!(q.editor.text(), p.editor.text());
}

#[test]
fn paint_strokes_damage_only_their_segments() {
    let mut p = boot(720, 1280, host());
    let (x, y) = center(home::icon_rect(&p.t, 2));
    tap(&mut p, x, y);
    assert_eq!(p.screen, Screen::Paint);
    let paper = paint::paper(&p.t);

    // A wave in ink.
    let (x0, y0) = (100, paper.y + 200);
    send(&mut p, Event::TouchDown { x: x0, y: y0, pointer: 0 });
    for i in 1..=40 {
        let x = x0 + i * 13;
        let y = y0 + ((i as f32 * 0.35).sin() * 90.0) as i32;
        let d = send(&mut p, Event::TouchMove { x, y, pointer: 0 });
        assert_eq!(d.len(), 1);
        assert!(d[0].w < 60 && d[0].h < 80, "a segment's box: {d:?}");
    }
    send(&mut p, Event::TouchUp { x: x0 + 520, y: y0, pointer: 0 });

    // Colors.
    let mut strokes = 0;
    for (i, dy) in [(1, 320), (2, 420), (3, 520), (4, 620), (5, 720)] {
        let bar = paint::toolbar(&p.t);
        let cx = (p.t.pad as f32 + p.t.f(24.0) + p.t.f(74.0) * i as f32) as i32;
        let d = tap(&mut p, cx, bar.y + bar.h / 2);
        assert!(within(&d, bar));
        send(&mut p, Event::TouchDown { x: 120, y: paper.y + dy, pointer: 0 });
        for k in 1..=12 {
            send(&mut p, Event::TouchMove { x: 120 + k * 40, y: paper.y + dy + (k % 3 - 1) * 20, pointer: 0 });
        }
        send(&mut p, Event::TouchUp { x: 600, y: paper.y + dy, pointer: 0 });
        strokes += 1;
    }
    assert_eq!(p.paint.strokes().len(), strokes + 1);
    // A dot.
    tap(&mut p, 600, paper.y + 900);
    shot(&p, "paint_drawing");

    // Leaving and coming back replays the drawing.
    let before: Vec<u32> = p.canvas().pixels().to_vec();
    key(&mut p, Key::Home, None);
    let (x, y) = center(home::icon_rect(&p.t, 2));
    tap(&mut p, x, y);
    assert_eq!(p.canvas().pixels(), &before[..]);

    // Clear.
    let (cx, cy) = center(paint::clear_button(&p.t));
    let d = tap(&mut p, cx, cy);
    assert!(within(&d, paper));
    assert!(p.paint.strokes().is_empty());
    shot(&p, "paint_cleared");
}

#[test]
fn stopwatch_runs_from_the_clock_and_ticks_only_while_watched() {
    let mut p = boot(720, 1280, host());
    let (x, y) = center(home::icon_rect(&p.t, 3));
    tap(&mut p, x, y);
    assert_eq!(p.screen, Screen::Stopwatch);
    shot(&p, "stopwatch_zero");
    let start = stopwatch::start_button(&p.t);
    tap(&mut p, start.0 as i32, start.1 as i32);
    assert!(p.stopwatch.running());
    assert!(p.host().timers.contains_key(&timers::STOPWATCH));

    // A tick repaints the digits that changed, nothing else.
    let digits = stopwatch::cells(&p.t, "00:00.00").into_iter().fold(Rect::default(), |a, r| a.union(r));
    for _ in 0..5 {
        let d = fire(&mut p, timers::STOPWATCH);
        assert!(within(&d, digits), "{d:?}");
        assert!(area(&d) <= digits.area() / 2);
    }
    assert_eq!(p.sw_drawn, "00:00.25");

    // Asleep: no display ticks, but time goes on.
    send(&mut p, Event::Sleep);
    assert!(!p.host().timers.contains_key(&timers::STOPWATCH));
    assert!(!p.host().timers.contains_key(&timers::CLOCK));
    p.host_mut().mono += 83 * SEC + 410_000_000;
    let d = send(&mut p, Event::Wake);
    assert!(!d.is_empty());
    assert_eq!(p.sw_drawn, "01:23.66");
    assert!(p.host().timers.contains_key(&timers::STOPWATCH));
    assert!(p.host().timers.contains_key(&timers::CLOCK));
    shot(&p, "stopwatch_running");

    // Away from the screen it keeps running without ticks.
    key(&mut p, Key::Home, None);
    assert!(!p.host().timers.contains_key(&timers::STOPWATCH));
    p.host_mut().mono += 10 * SEC;
    let (x, y) = center(home::icon_rect(&p.t, 3));
    tap(&mut p, x, y);
    assert_eq!(p.sw_drawn, "01:33.66");

    // Stop, then reset.
    tap(&mut p, start.0 as i32, start.1 as i32);
    assert!(!p.stopwatch.running());
    assert!(!p.host().timers.contains_key(&timers::STOPWATCH));
    shot(&p, "stopwatch_stopped");
    let reset = stopwatch::reset_button(&p.t);
    tap(&mut p, reset.0 as i32, reset.1 as i32);
    assert_eq!(p.sw_drawn, "00:00.00");
}

#[test]
fn asleep_mail_draws_nothing_until_wake() {
    let mut p = boot(720, 1280, host());
    send(&mut p, Event::Sleep);
    p.host_mut().mailbox.extend(sample_mail());
    let d = send(&mut p, Event::MailArrived(3));
    assert!(d.is_empty(), "nobody watches: {d:?}");
    assert_eq!(p.host().notifications.len(), 3);
    p.host_mut().mono += 5 * 60 * SEC;
    let d = send(&mut p, Event::Wake);
    assert!(d.iter().any(|r| r.intersects(status::clock_rect(&p.t))));
    assert!(d.iter().any(|r| r.intersects(home::card_rect(&p.t))));
    assert_eq!(p.now.hh_mm(), "09:46");
}

#[test]
fn nav_bar_and_keys_go_home() {
    let mut p = boot(720, 1280, host());
    for i in 0..4 {
        let (x, y) = center(home::icon_rect(&p.t, i));
        tap(&mut p, x, y);
        assert_ne!(p.screen, Screen::Home);
        let (nx, ny) = center(p.t.nav());
        tap(&mut p, nx, ny);
        assert_eq!(p.screen, Screen::Home);
        tap(&mut p, x, y);
        key(&mut p, if i % 2 == 0 { Key::Home } else { Key::Escape }, None);
        assert_eq!(p.screen, Screen::Home);
    }
    // Already home: nothing to do, nothing drawn.
    assert!(key(&mut p, Key::Home, None).is_empty());
}

#[test]
fn small_screen_renders_every_screen() {
    let mut h = host();
    h.mailbox.extend(sample_mail());
    h.kv.insert(notes::KEY.into(), b"Remember: the phone also works at 480x800.".to_vec());
    h.kv.insert(TZ_KEY.into(), b"120".to_vec());
    let mut p = boot(480, 800, h);
    assert_eq!(p.now.hh_mm(), "11:41");
    shot(&p, "small_home");
    for (i, name) in ["small_mail", "small_notes", "small_paint", "small_stopwatch"].iter().enumerate() {
        let (x, y) = center(home::icon_rect(&p.t, i));
        tap(&mut p, x, y);
        if i == 2 {
            let paper = paint::paper(&p.t);
            send(&mut p, Event::TouchDown { x: 60, y: paper.y + 60, pointer: 0 });
            send(&mut p, Event::TouchMove { x: 300, y: paper.y + 200, pointer: 0 });
            send(&mut p, Event::TouchUp { x: 300, y: paper.y + 200, pointer: 0 });
        }
        shot(&p, name);
        if i == 0 {
            let c = p.t.content();
            tap(&mut p, 200, c.y + 10);
            shot(&p, "small_message");
        }
        key(&mut p, Key::Home, None);
    }
}

#[test]
fn garbage_in_the_store_does_not_break_boot() {
    let mut h = host();
    h.kv.insert(mail::KEY.into(), vec![0xff; 100]);
    h.kv.insert(notes::KEY.into(), vec![0xc3, 0x28, b'a']);
    h.kv.insert(TZ_KEY.into(), b"not a number".to_vec());
    let p = boot(720, 1280, h);
    assert!(p.inbox.messages().is_empty());
    assert_eq!(p.tz_min, 0);
    assert!(p.editor.text().ends_with('a'));
}

#[test]
fn odd_screen_sizes_work_everywhere() {
    for (w, h) in [(1, 1), (100, 100), (1280, 720), (1440, 3040)] {
        let mut host = host();
        host.mailbox.extend(sample_mail());
        let mut p = boot(w, h, host);
        for i in 0..4 {
            let (x, y) = center(home::icon_rect(&p.t, i));
            tap(&mut p, x, y);
            type_text(&mut p, "Hello\nworld");
            send(&mut p, Event::TouchDown { x: w as i32 / 2, y: h as i32 / 2, pointer: 0 });
            send(&mut p, Event::TouchMove { x: w as i32 / 3, y: h as i32 / 3, pointer: 0 });
            send(&mut p, Event::TouchUp { x: 0, y: 0, pointer: 0 });
            tap(&mut p, w as i32 / 2, h as i32 / 3);
            key(&mut p, Key::Escape, None);
            key(&mut p, Key::Home, None);
        }
        for v in [i32::MIN, i32::MAX] {
            for i in 0..4 {
                let (x, y) = center(home::icon_rect(&p.t, i));
                tap(&mut p, x, y);
                send(&mut p, Event::TouchDown { x: v, y: v / 2, pointer: 0 });
                send(&mut p, Event::TouchMove { x: v / 3, y: v, pointer: 0 });
                send(&mut p, Event::TouchUp { x: v, y: v, pointer: 0 });
                key(&mut p, Key::Home, None);
            }
        }
        fire(&mut p, timers::CLOCK);
        if (w, h) == (1280, 720) {
            shot(&p, "landscape_home");
        }
    }
}

/// Every screen, laid out again after a rotation to landscape and back: the framebuffer takes the new size, the
/// whole screen is repainted, the note and the drawing survive (the strokes moved with the paper), and nothing
/// is drawn outside the new screen.
#[test]
fn a_rotation_lays_every_screen_out_again() {
    let mut h = host();
    h.mailbox.extend(sample_mail());
    h.kv.insert(notes::KEY.into(), b"Rotate me: the text wraps again.".to_vec());
    let mut p = boot(720, 1280, h);
    send(&mut p, Event::Display { width: 780, height: 1688, density: 200 });
    assert_eq!((p.canvas().width(), p.canvas().height()), (780, 1688));
    let (x, y) = center(home::icon_rect(&p.t, 2));
    tap(&mut p, x, y);
    let paper = paint::paper(&p.t);
    send(&mut p, Event::TouchDown { x: 100, y: paper.y + 100, pointer: 0 });
    send(&mut p, Event::TouchMove { x: 400, y: paper.y + 100, pointer: 0 });
    send(&mut p, Event::TouchUp { x: 400, y: paper.y + 100, pointer: 0 });
    for (i, name) in ["mail", "notes", "paint", "stopwatch"].iter().enumerate() {
        key(&mut p, Key::Home, None);
        let (x, y) = center(home::icon_rect(&p.t, i));
        tap(&mut p, x, y);
        let d = send(&mut p, Event::Display { width: 1688, height: 780, density: 200 });
        assert_eq!(d, vec![Rect::new(0, 0, 1688, 780)], "{name}: the whole new screen is repainted");
        assert!(p.t.content().h > 300, "{name}: room for content");
        shot(&p, &format!("landscape_{name}"));
        let d = send(&mut p, Event::Display { width: 780, height: 1688, density: 200 });
        assert_eq!(d, vec![Rect::new(0, 0, 780, 1688)]);
        shot(&p, &format!("portrait_{name}"));
    }
    key(&mut p, Key::Home, None);
    send(&mut p, Event::Display { width: 1688, height: 780, density: 200 });
    shot(&p, "landscape_home");
    assert_eq!(p.editor.text(), "Rotate me: the text wraps again.");
    assert_eq!(p.paint.strokes()[0].points_len(), 2);
    // The same display again changes nothing and presents nothing.
    assert!(send(&mut p, Event::Display { width: 1688, height: 780, density: 200 }).is_empty());
}

#[test]
fn two_fingers_draw_two_strokes_at_once() {
    let mut p = boot(720, 1280, host());
    let (x, y) = center(home::icon_rect(&p.t, 2));
    tap(&mut p, x, y);
    let paper = paint::paper(&p.t);
    let (y0, y1) = (paper.y + 100, paper.y + 500);
    send(&mut p, Event::TouchDown { x: 150, y: y0, pointer: 0 });
    send(&mut p, Event::TouchDown { x: 550, y: y0, pointer: 1 });
    for k in 1..=8 {
        let y = y0 + (y1 - y0) * k / 8;
        let a = send(&mut p, Event::TouchMove { x: 150, y, pointer: 0 });
        let b = send(&mut p, Event::TouchMove { x: 550, y, pointer: 1 });
        assert!(within(&a, Rect::new(100, 0, 100, 1280)) && within(&b, Rect::new(500, 0, 100, 1280)), "{a:?} {b:?}");
    }
    send(&mut p, Event::TouchUp { x: 150, y: y1, pointer: 0 });
    send(&mut p, Event::TouchUp { x: 550, y: y1, pointer: 1 });
    shot(&p, "paint_two_fingers");
    let strokes = p.paint.strokes();
    assert_eq!(strokes.len(), 2, "one stroke per finger");
    assert!(strokes.iter().all(|s| s.points_len() == 9));
    // Ink on both lines, paper between them.
    let px = |x: i32, y: i32| p.canvas().pixel(x, y);
    let paper_px = px(350, (y0 + y1) / 2);
    assert_ne!(px(150, (y0 + y1) / 2), paper_px);
    assert_ne!(px(550, (y0 + y1) / 2), paper_px);
}

#[test]
fn copy_in_notes_reaches_the_clipboard_and_volume_keys_show_the_level() {
    let mut h = host();
    h.kv.insert(notes::KEY.into(), "héllo € 日本".as_bytes().to_vec());
    let mut p = boot(720, 1280, h);
    let (x, y) = center(home::icon_rect(&p.t, 1));
    tap(&mut p, x, y);
    let (x, y) = center(notes::copy_button(&p.t));
    let d = tap(&mut p, x, y);
    assert_eq!(p.host().clipboard.as_deref(), Some("héllo € 日本"));
    assert!(within(&d, p.t.appbar()), "only the bar says Copied: {d:?}");
    shot(&p, "notes_copied");
    // Typing makes it say Copy again.
    let d = key(&mut p, Key::Text, Some('!'));
    assert!(d.iter().any(|r| r.intersects(p.t.appbar())));

    let before = p.volume;
    let d = key(&mut p, Key::VolumeUp, None);
    assert_eq!(p.volume, before + 1);
    assert!(within(&d, status::volume_rect(&p.t)), "{d:?}");
    shot(&p, "volume_shown");
    let d = fire(&mut p, timers::VOLUME);
    assert!(!p.volume_shown && within(&d, status::volume_rect(&p.t)));
    for _ in 0..20 {
        key(&mut p, Key::VolumeDown, None);
    }
    assert_eq!(p.volume, 0);
}
