//! # vmi-phone: the default Seed VMI phone image
//!
//! A phone with a status bar, a home screen and four apps (Mail, Notes, Paint,
//! Stopwatch), built as a `wasm32-unknown-unknown` cdylib on `vmi-guest-sdk`. The host
//! engine runs it; a terminal only shows its pixels.
//!
//! ## How it behaves toward the host
//!
//! - **Damage is minimal.** Every change repaints only the region it affects: a minute
//!   tick repaints the clock's box, a stopwatch tick the digits that changed, a Paint stroke
//!   its segment, a keystroke in Notes the lines it changed. Screens are drawn by one
//!   function per screen; a partial repaint clips to the region and runs it
//!   ([`Phone::redraw`]), so partial and full frames can never disagree.
//! - **Asleep costs nothing.** On [`Event::Sleep`] cosmetic timers (clock, stopwatch
//!   display) stop; background work (mail refresh) goes on but draws nothing until
//!   [`Event::Wake`], which repaints what went stale.
//! - **What the user must not lose lives in the store**: the inbox (`mail.inbox`) and the
//!   note (`notes.text`) are written on every change and read at init, so they survive
//!   image upgrades. Everything else (stopwatch, drawing, scroll positions) lives in VM
//!   memory and survives snapshots and migrations.
//!
//! ## Timers
//!
//! | id | name | period |
//! | --- | --- | --- |
//! | 1 | [`timers::CLOCK`] | at each wall-clock minute boundary, while awake |
//! | 2 | [`timers::MAIL`] | every [`MAIL_REFRESH_NS`] (15 min; the first at a random point of the first period, a minute at least), always |
//! | 3 | [`timers::STOPWATCH`] | every 50 ms while the running stopwatch is on screen and awake |
//! | 4 | [`timers::VOLUME`] | once, 2 s after a volume key |
//! | 5 | [`timers::FLING`] | every [`FLING_FRAME_NS`] while a list glides after a flick |
//! | 6 | [`timers::ALERTS`] | at the top of the hour, while mail alerts are held (Mail's "Alerts: hourly") |
//!
//! ## Testing
//!
//! All logic runs against the [`Host`] trait: [`VmiHost`] in the image, a fake in the
//! unit tests, which drive the whole phone with events and, when `VMI_RENDER_DIR` is set,
//! write every screen there as PNG.

mod home;
mod host;
mod mail;
mod notes;
mod paint;
mod status;
mod stopwatch;
mod theme;
mod time;
mod ui;

#[cfg(test)]
mod tests;

pub use host::{Host, VmiHost};

use vmi_guest_sdk::gfx::{Canvas, Rect};
use vmi_guest_sdk::{App, Event, Key};

use crate::home::AppId;
use crate::mail::Inbox;
use crate::notes::{Change, Editor, Row};
use crate::paint::Paint;
use crate::stopwatch::Stopwatch;
use crate::theme::Theme;
use crate::time::{Civil, ns_to_next_minute};

/// Timer ids the phone arms.
pub mod timers {
    /// Repaint the clock at the next minute boundary (cosmetic: stopped while asleep).
    pub const CLOCK: u32 = 1;
    /// Fetch mail (background: runs asleep or awake).
    pub const MAIL: u32 = 2;
    /// Refresh the stopwatch digits (cosmetic: only while visible, running and awake).
    pub const STOPWATCH: u32 = 3;
    /// Hide the volume level shown after a volume key.
    pub const VOLUME: u32 = 4;
    /// Move a list that glides after a flick (cosmetic: only while awake).
    pub const FLING: u32 = 5;
    /// Raise the mail alerts held back (background: runs asleep).
    pub const ALERTS: u32 = 6;
}

/// A gliding list moves once per this many virtual ns (60 frames a second).
pub const FLING_FRAME_NS: u64 = 16_666_667;
/// A glide slows by a factor e each this many seconds (close to the platforms' feel).
const FLING_TIME_CONSTANT_S: f32 = 0.325;
/// A flick starts a glide at this speed or more, in design pixels (theme.rs) per second; a glide stops below
/// the second.
const FLING_START_PX_S: f32 = 500.0;
const FLING_STOP_PX_S: f32 = 40.0;
/// A finger held still this long before it lifts starts no glide.
const FLING_HOLD_NS: u64 = 100_000_000;

/// How long the volume level stays in the status bar after a volume key, in virtual ns.
pub const VOLUME_SHOWN_NS: u64 = 2_000_000_000;
/// Volume steps (0 is silent).
pub const VOLUME_STEPS: u8 = 10;

/// How often the phone checks the mailbox without being told, in virtual ns: mail that matters is pushed
/// (`MailArrived`); this background check is the fallback, at the period mobile platforms allow background sync
/// (Android's WorkManager: 15 minutes at most often). Each phone's first check falls at a random point of the first
/// period, so a site's phones spread their checks instead of waking together.
pub const MAIL_REFRESH_NS: u64 = 15 * 60 * 1_000_000_000;
/// The first background check comes no sooner than this after boot (a new phone fetched its mail at boot).
pub const MAIL_FIRST_NS: u64 = 60 * 1_000_000_000;
/// Store key holding the local time's offset from UTC in minutes (decimal text, e.g.
/// "120"); absent means UTC.
pub const TZ_KEY: &str = "clock.utc_offset_min";
/// At most this many mails are fetched per event (the rest a moment later), to stay well
/// inside an event's CPU budget.
pub const FETCH_BATCH: usize = 64;

/// Most mail alerts held for the next hour (the summary counts them; the rest are in the inbox).
const MAX_HELD: usize = 256;
/// The host refuses (traps on) notification fields longer than this (GUEST_ABI.md).
const NOTIFY_MAX: usize = 1024;
/// Touch coordinates are clamped to ±this.
const COORD_LIMIT: i32 = 16_384;

/// What is on screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Screen {
    Home,
    Inbox,
    Message(u32),
    Notes,
    Paint,
    Stopwatch,
}

/// The finger that taps and scrolls (the first one down; others only draw in Paint).
#[derive(Clone, Copy, Debug)]
struct Touch {
    pointer: u32,
    x0: i32,
    y0: i32,
    last_y: i32,
    scrolling: bool,
    /// Pixels dragged in Notes not yet turned into whole lines.
    carry: i32,
    /// When the finger last moved, virtual ns, and how fast the content followed it (px/s,
    /// positive: further down the content).
    moved_ns: u64,
    velocity: f32,
}

/// A list gliding after a flick.
#[derive(Clone, Copy, Debug)]
struct Fling {
    /// Pixels per second, positive: further down the content.
    velocity: f32,
    /// When it last moved, virtual ns.
    at_ns: u64,
    /// Distance travelled but not yet drawn (whole pixels are drawn; Notes draws whole lines).
    rest: f32,
    carry: i32,
}

/// The phone: state, screen and host. `Phone` alone is the image's app (on [`VmiHost`]).
pub struct Phone<H: Host = VmiHost> {
    host: H,
    canvas: Canvas,
    t: Theme,
    screen: Screen,
    awake: bool,
    /// Mail changed while asleep: repaint what shows it on wake.
    mail_stale: bool,
    tz_min: i32,
    /// The local time the screen shows (refreshed each minute while awake).
    now: Civil,
    now_s: i64,
    inbox: Inbox,
    /// When mail alerts a sleeping screen, and the alerts held for the next hour (sender, subject).
    alerts: mail::Alerts,
    held: Vec<(String, String)>,
    list_scroll: i32,
    msg_scroll: i32,
    editor: Editor,
    notes_drawn: Vec<Row>,
    paint: Paint,
    stopwatch: Stopwatch,
    sw_drawn: String,
    touch: Option<Touch>,
    fling: Option<Fling>,
    /// Pixels per CSS pixel × 100 the screen was laid out for (0: unknown).
    density: u32,
    /// Volume, 0..=[`VOLUME_STEPS`], and whether the status bar shows it now.
    volume: u8,
    volume_shown: bool,
    /// Notes' text was copied and not changed since: its bar says "Copied".
    notes_copied: bool,
}

impl<H: Host> std::fmt::Debug for Phone<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phone").field("screen", &self.screen).field("awake", &self.awake).finish_non_exhaustive()
    }
}

fn clip_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl<H: Host> Phone<H> {
    /// Boots the phone on `host` for a `width × height` screen: loads what the store
    /// keeps, draws the home screen, arms the clock and mail timers and fetches waiting
    /// mail.
    pub fn start(mut host: H, width: u32, height: u32) -> Phone<H> {
        let t = Theme::new(width, height, 0);
        let tz_min = host
            .kv_get(TZ_KEY)
            .and_then(|v| String::from_utf8_lossy(&v).trim().parse::<i32>().ok())
            .map_or(0, |m| m.clamp(-14 * 60, 14 * 60));
        let mut text = host.kv_get(notes::KEY).map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
        text.truncate(clip_utf8(&text, notes::MAX_LEN).len());
        let inbox = host.kv_get(mail::KEY).map(|v| Inbox::decode(&v)).unwrap_or_default();
        let alerts = host.kv_get(mail::ALERTS_KEY).map_or(mail::Alerts::Now, |v| mail::Alerts::parse(&v));
        let wall = host.wall_ns();
        let editor = notes::editor(&t, text);
        let mut phone = Phone {
            canvas: Canvas::new(width, height),
            now: Civil::from_wall_ns(wall, tz_min),
            now_s: (wall / 1_000_000_000) as i64,
            host,
            t,
            screen: Screen::Home,
            awake: true,
            mail_stale: false,
            tz_min,
            inbox,
            alerts,
            held: Vec::new(),
            list_scroll: 0,
            msg_scroll: 0,
            editor,
            notes_drawn: Vec::new(),
            paint: Paint::new(),
            stopwatch: Stopwatch::new(),
            sw_drawn: String::new(),
            touch: None,
            fling: None,
            density: 0,
            volume: 6,
            volume_shown: false,
            notes_copied: false,
        };
        phone.redraw(phone.t.screen());
        phone.arm_clock();
        let mono = phone.host.monotonic_ns();
        let phase = MAIL_FIRST_NS + phone.host.random_u64() % (MAIL_REFRESH_NS - MAIL_FIRST_NS);
        phone.host.timer_set(timers::MAIL, mono + phase);
        phone.fetch_mail();
        phone.host.present(&mut phone.canvas);
        phone
    }

    /// Handles one event and presents the frame.
    pub fn handle(&mut self, event: Event) {
        // Coordinates far off screen mean nothing more than "off screen"; bounding them
        // keeps every later computation far from overflow.
        let at = |v: i32| v.clamp(-COORD_LIMIT, COORD_LIMIT);
        match event {
            Event::TouchDown { x, y, pointer } => self.touch_down(at(x), at(y), pointer),
            Event::TouchMove { x, y, pointer } => self.touch_move(at(x), at(y), pointer),
            Event::TouchUp { x, y, pointer } => self.touch_up(at(x), at(y), pointer),
            Event::Display { width, height, density } => self.display(width, height, density),
            Event::Key { key, text, modifiers } => self.key(key, text, modifiers),
            Event::Timer(timers::CLOCK) => {
                if self.awake {
                    self.refresh_clock();
                    self.arm_clock();
                }
            }
            Event::Timer(timers::MAIL) => {
                let mono = self.host.monotonic_ns();
                self.host.timer_set(timers::MAIL, mono + MAIL_REFRESH_NS);
                self.fetch_mail();
            }
            Event::Timer(timers::STOPWATCH) => self.stopwatch_tick(),
            Event::Timer(timers::FLING) => self.fling_step(),
            Event::Timer(timers::ALERTS) => self.raise_held(),
            Event::Timer(timers::VOLUME) => {
                self.volume_shown = false;
                self.redraw(status::volume_rect(&self.t));
            }
            Event::MailArrived(_) => self.fetch_mail(),
            Event::Sleep => {
                self.awake = false;
                self.host.timer_cancel(timers::CLOCK);
                self.host.timer_cancel(timers::STOPWATCH);
                self.stop_fling();
            }
            Event::Wake => self.wake(),
            Event::Timer(_) | Event::Unknown(_) => {}
        }
        self.host.present(&mut self.canvas);
    }

    /// The host (tests inspect their fake through it).
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The host, mutably (tests move their fake clocks).
    pub fn host_mut(&mut self) -> &mut H {
        &mut self.host
    }

    /// The framebuffer.
    pub fn canvas(&self) -> &Canvas {
        &self.canvas
    }

    /// Repaints `region` of the current screen (clipped drawing of the whole screen).
    pub fn redraw(&mut self, region: Rect) {
        self.canvas.set_clip(region);
        self.draw_screen();
        self.canvas.reset_clip();
    }

    fn draw_screen(&mut self) {
        let (c, t) = (&mut self.canvas, &self.t);
        let clock = self.now.hh_mm();
        let unread = self.inbox.unread();
        if self.screen == Screen::Home {
            home::wallpaper(c, t);
        }
        let volume = self.volume_shown.then_some((self.volume, VOLUME_STEPS));
        status::draw(c, t, &status::Status { clock: &clock, unread, volume }, self.screen == Screen::Home);
        match self.screen {
            Screen::Home => {
                let data =
                    home::HomeData { today: self.now, inbox: &self.inbox, now_s: self.now_s, tz_min: self.tz_min };
                home::draw(c, t, &data);
            }
            Screen::Inbox => {
                mail::draw_list(c, t, &self.inbox, self.list_scroll, self.alerts, (self.now_s, self.tz_min))
            }
            Screen::Message(id) => match self.inbox.get(id) {
                Some(m) => mail::draw_message(c, t, m, self.msg_scroll, self.now_s, self.tz_min),
                None => mail::draw_list(c, t, &self.inbox, self.list_scroll, self.alerts, (self.now_s, self.tz_min)),
            },
            Screen::Notes => notes::draw(c, t, &self.editor, self.notes_copied),
            Screen::Paint => paint::draw(c, t, &self.paint),
            Screen::Stopwatch => stopwatch::draw(c, t, &self.stopwatch, &self.sw_drawn),
        }
        ui::nav_bar(c, t, self.screen == Screen::Home);
    }

    // ---- navigation ------------------------------------------------------------------------

    fn show(&mut self, screen: Screen) {
        if self.screen == Screen::Stopwatch && screen != Screen::Stopwatch {
            self.host.timer_cancel(timers::STOPWATCH);
        }
        self.screen = screen;
        self.touch = None;
        self.stop_fling();
        self.paint.up_all();
        match screen {
            Screen::Notes => self.notes_drawn = self.editor.rows(),
            Screen::Stopwatch => {
                let now = self.host.monotonic_ns();
                self.sw_drawn = stopwatch::format(self.stopwatch.elapsed(now));
                self.arm_stopwatch(now);
            }
            _ => {}
        }
        self.redraw(self.t.screen());
    }

    fn open(&mut self, app: AppId) {
        match app {
            AppId::Mail => {
                self.list_scroll = 0;
                self.show(Screen::Inbox);
            }
            AppId::Notes => self.show(Screen::Notes),
            AppId::Paint => self.show(Screen::Paint),
            AppId::Stopwatch => self.show(Screen::Stopwatch),
        }
    }

    fn open_message(&mut self, id: u32) {
        if self.inbox.mark_read(id) {
            self.save_inbox();
        }
        self.msg_scroll = 0;
        self.show(Screen::Message(id));
    }

    // ---- input -----------------------------------------------------------------------------

    fn touch_down(&mut self, x: i32, y: i32, pointer: u32) {
        if self.screen == Screen::Paint && paint::paper(&self.t).contains(x, y) {
            if let Some(seg) = self.paint.down(pointer, x, y) {
                paint::draw_segment(&mut self.canvas, &self.t, seg);
            }
            return;
        }
        // One finger taps and scrolls; a second one held with it does nothing outside the paper.
        if self.touch.is_none_or(|t| t.pointer == pointer) {
            // A finger on a gliding list stops it (and is not a tap on what glides under it).
            let caught = self.stop_fling();
            let moved_ns = self.host.monotonic_ns();
            let touch =
                Touch { pointer, x0: x, y0: y, last_y: y, scrolling: caught, carry: 0, moved_ns, velocity: 0.0 };
            self.touch = Some(touch);
        }
    }

    fn touch_move(&mut self, x: i32, y: i32, pointer: u32) {
        if self.paint.drawing(pointer) {
            if let Some(seg) = self.paint.drag(pointer, x, y) {
                paint::draw_segment(&mut self.canvas, &self.t, seg);
            }
            return;
        }
        let Some(mut touch) = self.touch.filter(|t| t.pointer == pointer) else {
            return;
        };
        if !touch.scrolling && (y - touch.y0).abs() > self.t.d(16.0) {
            touch.scrolling = true;
        }
        if touch.scrolling {
            let dy = touch.last_y - y;
            touch.last_y = y;
            touch.carry = self.scroll_by(dy, touch.carry).0;
            // The finger's speed, smoothed over the last few moves (one move says little).
            let now = self.host.monotonic_ns();
            let dt = now.saturating_sub(touch.moved_ns);
            if dt > 0 {
                let speed = dy as f32 * 1e9 / dt as f32;
                touch.velocity = if dt > FLING_HOLD_NS { speed } else { 0.6 * speed + 0.4 * touch.velocity };
                touch.moved_ns = now;
            }
        }
        self.touch = Some(touch);
    }

    fn touch_up(&mut self, x: i32, y: i32, pointer: u32) {
        if self.paint.drawing(pointer) {
            if let Some(seg) = self.paint.drag(pointer, x, y) {
                paint::draw_segment(&mut self.canvas, &self.t, seg);
            }
            self.paint.up(pointer);
            return;
        }
        if let Some(touch) = self.touch.filter(|t| t.pointer == pointer) {
            self.touch = None;
            if !touch.scrolling {
                self.tap(touch.x0, touch.y0);
                return;
            }
            let now = self.host.monotonic_ns();
            let start = self.t.f(FLING_START_PX_S);
            if now.saturating_sub(touch.moved_ns) < FLING_HOLD_NS && touch.velocity.abs() >= start && self.awake {
                self.fling = Some(Fling { velocity: touch.velocity, at_ns: now, rest: 0.0, carry: touch.carry });
                self.host.timer_set(timers::FLING, now + FLING_FRAME_NS);
            }
        }
    }

    /// Stops a glide; true if one was going.
    fn stop_fling(&mut self) -> bool {
        self.host.timer_cancel(timers::FLING);
        self.fling.take().is_some()
    }

    /// Moves a gliding list by what it travelled since its last step: speed decays
    /// exponentially, so the distance is `v·τ·(1 − e^(−dt/τ))`, whatever the timer's lateness.
    fn fling_step(&mut self) {
        let Some(mut f) = self.fling.take() else {
            return;
        };
        let now = self.host.monotonic_ns();
        let dt = now.saturating_sub(f.at_ns) as f32 / 1e9;
        let decay = (-dt / FLING_TIME_CONSTANT_S).exp();
        f.rest += f.velocity * FLING_TIME_CONSTANT_S * (1.0 - decay);
        f.velocity *= decay;
        f.at_ns = now;
        let step = f.rest.trunc();
        f.rest -= step;
        let (carry, stuck) = self.scroll_by(step as i32, f.carry);
        f.carry = carry;
        if stuck || f.velocity.abs() < self.t.f(FLING_STOP_PX_S) {
            return;
        }
        self.fling = Some(f);
        self.host.timer_set(timers::FLING, now + FLING_FRAME_NS);
    }

    /// Scrolls the current screen's content by `dy` pixels (positive: further down the
    /// content); returns the pixels not yet applied (Notes scrolls by whole lines) and
    /// whether the content is at its end that way (a glide stops there).
    fn scroll_by(&mut self, dy: i32, carry: i32) -> (i32, bool) {
        let t = &self.t;
        let (position, max) = match self.screen {
            Screen::Inbox => (&mut self.list_scroll, mail::list_max_scroll(t, &self.inbox)),
            Screen::Message(id) => {
                (&mut self.msg_scroll, self.inbox.get(id).map_or(0, |m| mail::message_max_scroll(t, m)))
            }
            Screen::Notes => {
                let lh = t.writing().line_height.max(1);
                let total = carry + dy;
                let lines = total / lh;
                let mut stuck = false;
                if lines != 0 {
                    let change = self.editor.scroll_by(lines);
                    stuck = change == notes::Change::None;
                    self.notes_changed(change);
                }
                return (total - lines * lh, stuck);
            }
            _ => return (0, true),
        };
        let next = (*position + dy).clamp(0, max);
        let stuck = dy != 0 && (next == 0 || next == max);
        if next != *position {
            *position = next;
            self.redraw(self.t.content());
        }
        (0, stuck)
    }

    fn tap(&mut self, x: i32, y: i32) {
        let t = &self.t;
        if t.nav().contains(x, y) {
            if self.screen != Screen::Home {
                self.show(Screen::Home);
            }
            return;
        }
        match self.screen {
            Screen::Home => {
                if let Some(app) = home::app_at(t, x, y) {
                    self.open(app);
                } else if home::card_rect(t).contains(x, y) {
                    self.open(AppId::Mail);
                }
            }
            Screen::Inbox => {
                if mail::alerts_button(t).contains(x, y) {
                    self.alerts = self.alerts.toggled();
                    self.host.kv_set(mail::ALERTS_KEY, self.alerts.as_str().as_bytes());
                    if self.alerts == mail::Alerts::Now {
                        self.raise_held();
                    }
                    self.redraw(self.t.appbar());
                } else if let Some(id) = mail::list_hit(t, &self.inbox, self.list_scroll, x, y) {
                    self.open_message(id);
                }
            }
            Screen::Message(_) => {
                if ui::back_button(t).contains(x, y) {
                    self.show(Screen::Inbox);
                }
            }
            Screen::Notes => {
                if notes::copy_button(t).contains(x, y) {
                    self.host.clipboard_set(self.editor.text());
                    if !self.notes_copied {
                        self.notes_copied = true;
                        self.redraw(self.t.appbar());
                    }
                } else if let Some(row) = notes::row_at(t, y) {
                    let x = x - notes::text_area(t).x;
                    let change = self.editor.click(x, row);
                    self.notes_changed(change);
                }
            }
            Screen::Paint => {
                if let Some(i) = paint::swatch_at(t, x, y) {
                    if self.paint.select(i) {
                        self.redraw(paint::toolbar(&self.t));
                    }
                } else if paint::clear_button(t).contains(x, y) {
                    self.paint.clear();
                    self.redraw(paint::paper(&self.t));
                }
            }
            Screen::Stopwatch => {
                let now = self.host.monotonic_ns();
                if stopwatch::on_button(stopwatch::start_button(t), x, y) {
                    self.stopwatch.toggle(now);
                } else if stopwatch::on_button(stopwatch::reset_button(t), x, y) {
                    self.stopwatch.reset(now);
                } else {
                    return;
                }
                self.redraw(stopwatch::buttons_rect(&self.t));
                self.show_elapsed(now);
                self.arm_stopwatch(now);
            }
        }
    }

    fn key(&mut self, key: Key, text: Option<char>, modifiers: u32) {
        match (key, self.screen) {
            (Key::VolumeUp | Key::VolumeDown, _) => self.change_volume(key == Key::VolumeUp),
            (Key::Home, Screen::Home) | (Key::Escape, Screen::Home) => {}
            (Key::Home, _) => self.show(Screen::Home),
            (Key::Escape, Screen::Message(_)) => self.show(Screen::Inbox),
            (Key::Escape, _) => self.show(Screen::Home),
            (_, Screen::Notes) => {
                let change = match key {
                    Key::Backspace => self.editor.backspace(),
                    Key::Delete => self.editor.delete(),
                    Key::Enter => self.editor.insert('\n'),
                    Key::Left => self.editor.left(),
                    Key::Right => self.editor.right(),
                    Key::Up => self.editor.vertical(-1),
                    Key::Down => self.editor.vertical(1),
                    // Ctrl and Alt chords are shortcuts, not text.
                    _ => match text {
                        Some(c) if modifiers & 6 == 0 => self.editor.insert(c),
                        _ => Change::None,
                    },
                };
                self.notes_changed(change);
            }
            (Key::Up | Key::Down, Screen::Inbox | Screen::Message(_)) => {
                let step = mail::row_h(&self.t);
                self.scroll_by(if key == Key::Up { -step } else { step }, 0);
            }
            (Key::Enter, Screen::Stopwatch) => {
                let now = self.host.monotonic_ns();
                self.stopwatch.toggle(now);
                self.redraw(stopwatch::buttons_rect(&self.t));
                self.show_elapsed(now);
                self.arm_stopwatch(now);
            }
            _ => {}
        }
    }

    // ---- notes -----------------------------------------------------------------------------

    fn notes_changed(&mut self, change: Change) {
        if change == Change::None {
            return;
        }
        if change == Change::Text {
            let text = self.editor.text().as_bytes().to_vec();
            self.host.kv_set(notes::KEY, &text);
            if std::mem::take(&mut self.notes_copied) && self.screen == Screen::Notes {
                self.redraw(self.t.appbar());
            }
        }
        if self.screen != Screen::Notes {
            return;
        }
        let rows = self.editor.rows();
        for (i, row) in rows.iter().enumerate() {
            if self.notes_drawn.get(i) != Some(row) {
                self.redraw(notes::row_rect(&self.t, i));
            }
        }
        self.notes_drawn = rows;
    }

    // ---- display and hardware keys --------------------------------------------------------

    /// The display changed: lay every screen out again for `width × height` at `density`, move what is drawn in
    /// screen pixels (Paint's strokes) to the new layout, keep the text, the caret and the scroll positions, and
    /// repaint the whole screen on a framebuffer of the new size.
    fn display(&mut self, width: u32, height: u32, density: u32) {
        let (width, height) = (width.max(1), height.max(1));
        if (width as i32, height as i32, density) == (self.t.w, self.t.h, self.density) {
            return;
        }
        let old = std::mem::replace(&mut self.t, Theme::new(width, height, density));
        self.density = density;
        let (from, to) = (paint::paper(&old), paint::paper(&self.t));
        self.paint.relayout((from.x, from.y), (to.x, to.y), self.t.s / old.s);
        self.editor = notes::relayout(&self.t, &self.editor);
        self.notes_drawn = self.editor.rows();
        self.list_scroll = self.list_scroll.clamp(0, mail::list_max_scroll(&self.t, &self.inbox));
        if let Screen::Message(id) = self.screen {
            let max = self.inbox.get(id).map_or(0, |m| mail::message_max_scroll(&self.t, m));
            self.msg_scroll = self.msg_scroll.clamp(0, max);
        }
        self.touch = None;
        if self.screen == Screen::Stopwatch {
            self.sw_drawn = stopwatch::format(self.stopwatch.elapsed(self.host.monotonic_ns()));
        }
        self.canvas = Canvas::new(width, height);
        self.redraw(self.t.screen());
    }

    fn change_volume(&mut self, up: bool) {
        self.volume = if up { (self.volume + 1).min(VOLUME_STEPS) } else { self.volume.saturating_sub(1) };
        self.volume_shown = true;
        self.redraw(status::volume_rect(&self.t));
        let mono = self.host.monotonic_ns();
        self.host.timer_set(timers::VOLUME, mono + VOLUME_SHOWN_NS);
    }

    // ---- clock -----------------------------------------------------------------------------

    fn arm_clock(&mut self) {
        let wall = self.host.wall_ns();
        let mono = self.host.monotonic_ns();
        self.host.timer_set(timers::CLOCK, mono + ns_to_next_minute(wall));
    }

    /// Reads the wall clock and repaints the clock (and the date where shown) if changed.
    fn refresh_clock(&mut self) {
        let wall = self.host.wall_ns();
        let now = Civil::from_wall_ns(wall, self.tz_min);
        let before = self.now;
        self.now = now;
        self.now_s = (wall / 1_000_000_000) as i64;
        if now.hh_mm() != before.hh_mm() {
            self.redraw(status::clock_rect(&self.t));
        }
        if now.days != before.days {
            // Dates and "today" stamps are shown on these screens.
            match self.screen {
                Screen::Home => {
                    for r in home::mail_regions(&self.t) {
                        self.redraw(r);
                    }
                }
                Screen::Inbox | Screen::Message(_) => self.redraw(self.t.content()),
                _ => {}
            }
        }
    }

    fn wake(&mut self) {
        self.awake = true;
        // The screen is on: what was held for the hour can be said now.
        self.raise_held();
        self.refresh_clock();
        self.arm_clock();
        if self.mail_stale {
            self.mail_stale = false;
            self.mail_changed();
        }
        if self.screen == Screen::Stopwatch {
            let now = self.host.monotonic_ns();
            self.show_elapsed(now);
            self.arm_stopwatch(now);
        }
    }

    // ---- mail ------------------------------------------------------------------------------

    fn fetch_mail(&mut self) {
        let mut fetched = 0;
        let mut received_s = None;
        while fetched < FETCH_BATCH {
            let Some(m) = self.host.mailbox_fetch() else {
                break;
            };
            let s = *received_s.get_or_insert_with(|| (self.host.wall_ns() / 1_000_000_000) as i64);
            let title = if m.from.trim().is_empty() { "New mail" } else { m.from.trim() };
            let body = if m.subject.trim().is_empty() { "(no subject)" } else { m.subject.trim() };
            if self.awake || self.alerts == mail::Alerts::Now {
                self.host.notify(clip_utf8(title, NOTIFY_MAX), clip_utf8(body, NOTIFY_MAX));
            } else {
                self.hold_alert(title, body);
            }
            self.inbox.add(m, s);
            fetched += 1;
        }
        if fetched == FETCH_BATCH {
            // More may wait: continue in a moment, in a fresh event.
            let mono = self.host.monotonic_ns();
            self.host.timer_set(timers::MAIL, mono + 1_000_000);
        }
        if fetched > 0 {
            self.save_inbox();
            if self.screen == Screen::Inbox {
                // Keep the rows the user is looking at in place.
                let max = mail::list_max_scroll(&self.t, &self.inbox);
                if self.list_scroll > 0 {
                    self.list_scroll = (self.list_scroll + fetched as i32 * mail::row_h(&self.t)).min(max);
                }
            }
            if self.awake {
                self.mail_changed();
            } else {
                self.mail_stale = true;
            }
        }
    }

    /// Keeps a mail's alert for the top of the hour (the timer is armed for the first).
    fn hold_alert(&mut self, title: &str, body: &str) {
        if self.held.is_empty() {
            let wall = self.host.wall_ns();
            let hour = 3_600 * 1_000_000_000u64;
            let until = hour - wall % hour;
            let mono = self.host.monotonic_ns();
            self.host.timer_set(timers::ALERTS, mono + until);
        }
        // Only the summary's senders and count need them all; a day of mail stays small.
        if self.held.len() < MAX_HELD {
            self.held.push((clip_utf8(title, NOTIFY_MAX).to_string(), clip_utf8(body, NOTIFY_MAX).to_string()));
        }
    }

    /// Raises the held alerts as one notification.
    fn raise_held(&mut self) {
        self.host.timer_cancel(timers::ALERTS);
        if let Some((title, body)) = mail::summary(&std::mem::take(&mut self.held)) {
            self.host.notify(clip_utf8(&title, NOTIFY_MAX), clip_utf8(&body, NOTIFY_MAX));
        }
    }

    fn save_inbox(&mut self) {
        let bytes = self.inbox.encode();
        self.host.kv_set(mail::KEY, &bytes);
    }

    /// Repaints whatever shows the inbox on the current screen.
    fn mail_changed(&mut self) {
        self.redraw(status::badge_rect(&self.t));
        match self.screen {
            Screen::Home => {
                for r in home::mail_regions(&self.t) {
                    self.redraw(r);
                }
            }
            Screen::Inbox => self.redraw(self.t.appbar().union(self.t.content())),
            _ => {}
        }
    }

    // ---- stopwatch -------------------------------------------------------------------------

    /// Repaints the digits that changed since last shown.
    fn show_elapsed(&mut self, now: u64) {
        let text = stopwatch::format(self.stopwatch.elapsed(now));
        if let Some(r) = stopwatch::changed(&self.t, &self.sw_drawn, &text) {
            self.sw_drawn = text;
            self.redraw(r);
        }
    }

    fn arm_stopwatch(&mut self, now: u64) {
        if self.screen == Screen::Stopwatch && self.awake && self.stopwatch.running() {
            self.host.timer_set(timers::STOPWATCH, self.stopwatch.next_tick(now));
        } else {
            self.host.timer_cancel(timers::STOPWATCH);
        }
    }

    fn stopwatch_tick(&mut self) {
        if self.screen != Screen::Stopwatch || !self.awake {
            return;
        }
        let now = self.host.monotonic_ns();
        self.show_elapsed(now);
        self.arm_stopwatch(now);
    }
}

impl App for Phone<VmiHost> {
    fn init(width: u32, height: u32) -> Self {
        Phone::start(VmiHost, width, height)
    }

    fn event(&mut self, event: Event) {
        self.handle(event);
    }
}

vmi_guest_sdk::export_app!(Phone);
