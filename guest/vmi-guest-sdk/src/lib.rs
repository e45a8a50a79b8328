//! # vmi-guest-sdk: write a Seed VMI phone app in Rust
//!
//! A phone image is a `cdylib` built for `wasm32-unknown-unknown`. Implement [`App`],
//! export it with [`export_app!`], draw into a [`gfx::Canvas`] (which reports damage for
//! you) and use the host services below: clocks, timers, randomness, notifications, the
//! user's mailbox and a persistent key-value store. The ABI under this crate is
//! documented in `docs/GUEST_ABI.md`.
//!
//! ```no_run
//! use vmi_guest_sdk::{App, Event, gfx::Canvas};
//! struct Counter { canvas: Canvas, taps: u32 }
//! impl App for Counter {
//!     fn init(width: u32, height: u32) -> Self {
//!         let mut canvas = Canvas::new(width, height);
//!         canvas.clear(0xff202020);
//!         Counter { canvas, taps: 0 }
//!     }
//!     fn event(&mut self, event: Event) {
//!         if let Event::TouchDown { .. } = event {
//!             self.taps += 1;
//!             self.canvas.fill_rect(0, 0, 10 * self.taps as i32, 40, 0xff00a0ff);
//!         }
//!         self.canvas.present();
//!     }
//! }
//! vmi_guest_sdk::export_app!(Counter);
//! # fn main() {}
//! ```

pub mod gfx;
pub mod sys;

/// The ABI version this SDK speaks (docs/GUEST_ABI.md).
pub const ABI_VERSION: i32 = 2;

/// A key on the terminal's keyboard (GUEST_ABI.md, "Key codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// A key that only types text.
    Text,
    /// Erase before the cursor.
    Backspace,
    /// New line / confirm.
    Enter,
    /// Back.
    Escape,
    /// Cursor left.
    Left,
    /// Cursor right.
    Right,
    /// Cursor up.
    Up,
    /// Cursor down.
    Down,
    /// Go to the home screen.
    Home,
    /// Erase after the cursor.
    Delete,
    /// The volume-up hardware key.
    VolumeUp,
    /// The volume-down hardware key.
    VolumeDown,
    /// A code this SDK does not know.
    Other(i32),
}

impl Key {
    /// Decodes an ABI key code.
    pub fn from_code(code: i32) -> Key {
        match code {
            0 => Key::Text,
            1 => Key::Backspace,
            2 => Key::Enter,
            3 => Key::Escape,
            4 => Key::Left,
            5 => Key::Right,
            6 => Key::Up,
            7 => Key::Down,
            8 => Key::Home,
            9 => Key::Delete,
            10 => Key::VolumeUp,
            11 => Key::VolumeDown,
            other => Key::Other(other),
        }
    }
}

/// One event delivered by the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A finger (or mouse button) went down.
    TouchDown {
        /// Pixel column.
        x: i32,
        /// Pixel row.
        y: i32,
        /// Which finger: 0 for the first, 1 for a second held at the same time, …
        pointer: u32,
    },
    /// A finger moved while down.
    TouchMove {
        /// Pixel column.
        x: i32,
        /// Pixel row.
        y: i32,
        /// Which finger: 0 for the first, 1 for a second held at the same time, …
        pointer: u32,
    },
    /// A finger lifted.
    TouchUp {
        /// Pixel column.
        x: i32,
        /// Pixel row.
        y: i32,
        /// Which finger: 0 for the first, 1 for a second held at the same time, …
        pointer: u32,
    },
    /// A key press, with the text it types if any.
    Key {
        /// Which key.
        key: Key,
        /// The character it types.
        text: Option<char>,
        /// Modifier bits (1 shift, 2 ctrl, 4 alt).
        modifiers: u32,
    },
    /// Timer `id` (armed with [`timer_set`]) is due.
    Timer(u32),
    /// The host says new mail waits in the mailbox.
    MailArrived(u32),
    /// A terminal is watching again.
    Wake,
    /// No terminal is watching.
    Sleep,
    /// The display changed (rotation, a resized window, another device): lay the screen out again for
    /// `width × height` pixels and attach a framebuffer of that size ([`gfx::Canvas::resize`]).
    Display {
        /// Screen width in pixels.
        width: u32,
        /// Screen height in pixels.
        height: u32,
        /// Pixels per CSS pixel (point), × 100 (200 on a typical phone).
        density: u32,
    },
    /// An event kind this SDK does not know; ignore it.
    Unknown(i32),
}

impl Event {
    /// Decodes the arguments of `vmi_event`.
    pub fn from_abi(kind: i32, a: i32, b: i32, c: i32) -> Event {
        match kind {
            1 => Event::TouchDown { x: a, y: b, pointer: c.max(0) as u32 },
            2 => Event::TouchMove { x: a, y: b, pointer: c.max(0) as u32 },
            3 => Event::TouchUp { x: a, y: b, pointer: c.max(0) as u32 },
            4 => Event::Key {
                key: Key::from_code(a),
                text: if b == 0 { None } else { char::from_u32(b as u32) },
                modifiers: c as u32,
            },
            5 => Event::Timer(a as u32),
            6 => Event::MailArrived(a as u32),
            7 => Event::Wake,
            8 => Event::Sleep,
            9 => Event::Display { width: a.max(1) as u32, height: b.max(1) as u32, density: c.max(0) as u32 },
            other => Event::Unknown(other),
        }
    }
}

/// A phone app (or a whole phone image): the host calls `init` once and `event` for each
/// event; both run to completion before the next.
pub trait App {
    /// Creates the app for a screen of `width` × `height` pixels.
    fn init(width: u32, height: u32) -> Self;
    /// Handles one event.
    fn event(&mut self, event: Event);
}

/// Exports `vmi_abi_version`, `vmi_init` and `vmi_event` for an [`App`] type.
#[macro_export]
macro_rules! export_app {
    ($app:ty) => {
        mod __vmi_export {
            use super::*;
            static mut APP: Option<$app> = None;

            #[unsafe(no_mangle)]
            pub extern "C" fn vmi_abi_version() -> i32 {
                $crate::ABI_VERSION
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn vmi_init(width: i32, height: i32) {
                let app = <$app as $crate::App>::init(width.max(1) as u32, height.max(1) as u32);
                // SAFETY: a guest is single-threaded and the host never re-enters an export.
                unsafe { *core::ptr::addr_of_mut!(APP) = Some(app) };
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn vmi_event(kind: i32, a: i32, b: i32, c: i32) {
                // SAFETY: as above; events are delivered one at a time.
                let app = unsafe { (*core::ptr::addr_of_mut!(APP)).as_mut() };
                if let Some(app) = app {
                    $crate::App::event(app, $crate::Event::from_abi(kind, a, b, c));
                }
            }
        }
    };
}

fn ptr<T>(p: *const T) -> i32 {
    p as usize as i32
}

/// Virtual monotonic time in nanoseconds since the VM was created.
pub fn monotonic_ns() -> u64 {
    // SAFETY: no arguments.
    unsafe { sys::clock_monotonic_ns() as u64 }
}

/// Wall-clock time in nanoseconds since the Unix epoch.
pub fn wall_ns() -> u64 {
    // SAFETY: no arguments.
    unsafe { sys::clock_wall_ns() as u64 }
}

/// Arms timer `id` to fire at monotonic time `deadline_ns`.
pub fn timer_set(id: u32, deadline_ns: u64) {
    // SAFETY: plain integers.
    unsafe { sys::timer_set(id as i32, deadline_ns as i64) }
}

/// Arms timer `id` to fire `delay_ns` from now.
pub fn timer_after(id: u32, delay_ns: u64) {
    timer_set(id, monotonic_ns().saturating_add(delay_ns));
}

/// Disarms timer `id`.
pub fn timer_cancel(id: u32) {
    // SAFETY: plain integer.
    unsafe { sys::timer_cancel(id as i32) }
}

/// Fills `buf` with random bytes from the VM's RNG.
pub fn random_fill(buf: &mut [u8]) {
    // SAFETY: the host writes exactly `buf.len()` bytes at `buf`.
    unsafe { sys::random_fill(ptr(buf.as_mut_ptr()), buf.len() as i32) }
}

/// A random `u64` from the VM's RNG.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    random_fill(&mut b);
    u64::from_le_bytes(b)
}

/// Log levels for [`log`].
#[derive(Clone, Copy, Debug)]
pub enum Level {
    /// Something failed.
    Error = 0,
    /// Something looks wrong.
    Warn = 1,
    /// Normal operation.
    Info = 2,
    /// Detail for developers.
    Debug = 3,
    /// Very fine detail.
    Trace = 4,
}

/// Writes a line to the host's log.
pub fn log(level: Level, message: &str) {
    // SAFETY: the host reads `message.len()` bytes at `message`.
    unsafe { sys::log(level as i32, ptr(message.as_ptr()), message.len() as i32) }
}

/// Tells the host where the framebuffer is (RGBA8, `width*height` pixels).
pub fn fb_attach(pixels: &[u32], width: u32, height: u32) {
    debug_assert!(pixels.len() >= (width * height) as usize);
    // SAFETY: the host only reads inside the buffer's bounds, after the event returns.
    unsafe { sys::fb_attach(ptr(pixels.as_ptr()), width as i32, height as i32) }
}

/// Reports a changed rectangle of the framebuffer.
pub fn fb_damage(x: i32, y: i32, w: i32, h: i32) {
    // SAFETY: plain integers; the host clips to the framebuffer.
    unsafe { sys::fb_damage(x, y, w, h) }
}

/// Longest notification title or body the host takes, in bytes.
pub const MAX_NOTIFICATION_FIELD: usize = 1024;

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Raises a notification on the user's terminal (fields longer than
/// [`MAX_NOTIFICATION_FIELD`] are cut). Returns false if the host dropped it.
pub fn notify(title: &str, body: &str) -> bool {
    let (title, body) = (truncate(title, MAX_NOTIFICATION_FIELD), truncate(body, MAX_NOTIFICATION_FIELD));
    // SAFETY: the host reads both strings within their lengths.
    unsafe { sys::notify(ptr(title.as_ptr()), title.len() as i32, ptr(body.as_ptr()), body.len() as i32) == 0 }
}

/// Longest text [`clipboard_set`] hands the host, in bytes.
pub const MAX_CLIPBOARD: usize = 65_535;

/// Copies `text` to the user's clipboard: the host hands it to the terminals watching (text longer than
/// [`MAX_CLIPBOARD`] is cut).
pub fn clipboard_set(text: &str) {
    let text = truncate(text, MAX_CLIPBOARD);
    // SAFETY: the host reads the text within its length.
    unsafe { sys::clipboard_set(ptr(text.as_ptr()), text.len() as i32) }
}

/// One mail from the user's mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mail {
    /// Sender.
    pub from: String,
    /// Subject line.
    pub subject: String,
    /// Body text.
    pub body: String,
}

impl Mail {
    /// Parses the `from\nsubject\nbody` record of `mailbox_fetch`.
    pub fn parse(record: &str) -> Mail {
        let mut parts = record.splitn(3, '\n');
        Mail {
            from: parts.next().unwrap_or_default().to_string(),
            subject: parts.next().unwrap_or_default().to_string(),
            body: parts.next().unwrap_or_default().to_string(),
        }
    }
}

/// Takes the oldest unread mail from the user's mailbox, if any.
pub fn mailbox_fetch() -> Option<Mail> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: the host writes at most `buf.len()` bytes at `buf`.
        let n = unsafe { sys::mailbox_fetch(ptr(buf.as_mut_ptr()), buf.len() as i32) };
        if n == 0 {
            return None;
        }
        if n < 0 {
            buf.resize((-n) as usize, 0);
            continue;
        }
        buf.truncate(n as usize);
        return Some(Mail::parse(&String::from_utf8_lossy(&buf)));
    }
}

/// Reads `key` from the persistent key-value store.
pub fn kv_get(key: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: the host reads the key within its length and writes at most `buf.len()`.
        let n = unsafe { sys::kv_get(ptr(key.as_ptr()), key.len() as i32, ptr(buf.as_mut_ptr()), buf.len() as i32) };
        if n < 0 {
            return None;
        }
        let n = n as usize;
        if n > buf.len() {
            buf.resize(n, 0);
            continue;
        }
        buf.truncate(n);
        return Some(buf);
    }
}

/// Reads `key` as UTF-8 text.
pub fn kv_get_string(key: &str) -> Option<String> {
    kv_get(key).map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Writes `key` to the persistent key-value store. Returns false when over a limit.
pub fn kv_set(key: &str, value: &[u8]) -> bool {
    // SAFETY: the host reads both buffers within their lengths.
    unsafe { sys::kv_set(ptr(key.as_ptr()), key.len() as i32, ptr(value.as_ptr()), value.len() as i32) == 0 }
}

/// Removes `key` from the persistent key-value store.
pub fn kv_delete(key: &str) {
    // SAFETY: the host reads the key within its length.
    unsafe { sys::kv_delete(ptr(key.as_ptr()), key.len() as i32) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_events() {
        assert_eq!(Event::from_abi(1, 3, 4, 0), Event::TouchDown { x: 3, y: 4, pointer: 0 });
        assert_eq!(Event::from_abi(2, 3, 4, 1), Event::TouchMove { x: 3, y: 4, pointer: 1 });
        assert_eq!(Event::from_abi(9, 780, 1688, 200), Event::Display { width: 780, height: 1688, density: 200 });
        assert_eq!(Event::from_abi(4, 10, 0, 0), Event::Key { key: Key::VolumeUp, text: None, modifiers: 0 });
        assert_eq!(Event::from_abi(4, 0, 'é' as i32, 1), Event::Key { key: Key::Text, text: Some('é'), modifiers: 1 });
        assert_eq!(Event::from_abi(5, 7, 0, 0), Event::Timer(7));
        assert_eq!(Event::from_abi(99, 0, 0, 0), Event::Unknown(99));
    }

    #[test]
    fn parses_mail_records() {
        let m = Mail::parse("ann@example.com\nLunch?\nAt noon\nbring cake");
        assert_eq!(m.from, "ann@example.com");
        assert_eq!(m.subject, "Lunch?");
        assert_eq!(m.body, "At noon\nbring cake");
    }
}
