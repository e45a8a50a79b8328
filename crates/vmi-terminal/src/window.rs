//! The phone in a window (cargo feature `window`): a `minifb` X11 window, libX11 loaded
//! at run time. The mouse is the finger (left button), the keyboard types, F2 turns the
//! screen off and on; the title shows the connection state and the latency.
//!
//! A phone taller than 1000 pixels is shown at half size (minifb only scales up); touches
//! are mapped back to phone pixels.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use minifb::{InputCallback, Key, KeyRepeat, MouseButton, MouseMode, Window, WindowOptions};
use tokio::sync::mpsc::error::TryRecvError;
use vmi_protocol::{Input, TouchPhase};

use crate::TerminalError;
use crate::session::{Terminal, TerminalEvent};

/// While awake, measure the latency this often (the radio is on anyway: frames flow).
const PING_EVERY: Duration = Duration::from_secs(5);

/// Characters typed, from minifb's callback.
struct Typed(Rc<RefCell<VecDeque<char>>>);

impl InputCallback for Typed {
    fn add_char(&mut self, uni_char: u32) {
        if let Some(c) = char::from_u32(uni_char).filter(|c| !c.is_control()) {
            self.0.borrow_mut().push_back(c);
        }
    }
}

fn key_code(key: Key) -> Option<u8> {
    Some(match key {
        Key::Backspace => 1,
        Key::Enter | Key::NumPadEnter => 2,
        Key::Escape => 3,
        Key::Left => 4,
        Key::Right => 5,
        Key::Up => 6,
        Key::Down => 7,
        Key::Home => 8,
        Key::Delete => 9,
        // The phone's volume keys.
        Key::PageUp => 10,
        Key::PageDown => 11,
        _ => return None,
    })
}

struct View {
    window: Window,
    buffer: Vec<u32>,
    /// Phone pixels per window pixel (1 or 2).
    shrink: usize,
    phone: (u16, u16),
}

impl View {
    fn open(width: u16, height: u16) -> Result<View, TerminalError> {
        let shrink = if height > 1000 { 2 } else { 1 };
        let (w, h) = ((usize::from(width) / shrink).max(1), (usize::from(height) / shrink).max(1));
        let mut window = Window::new("Seed VMI", w, h, WindowOptions::default())
            .map_err(|e| TerminalError::Window(format!("cannot open a window ({e}); is DISPLAY set?")))?;
        window.set_target_fps(60);
        Ok(View { window, buffer: vec![0; w * h], shrink, phone: (width, height) })
    }

    fn size(&self) -> (usize, usize) {
        ((usize::from(self.phone.0) / self.shrink).max(1), (usize::from(self.phone.1) / self.shrink).max(1))
    }

    /// Copies the phone's RGBA pixels into the window buffer (0RGB), every `shrink`-th one.
    fn paint(&mut self, width: u16, rgba: &[u8]) {
        let (w, _) = self.size();
        let stride = usize::from(width) * 4;
        for (i, px) in self.buffer.iter_mut().enumerate() {
            let (x, y) = ((i % w) * self.shrink, (i / w) * self.shrink);
            if let Some(p) = rgba.get(y * stride + x * 4..y * stride + x * 4 + 3) {
                *px = u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2]);
            }
        }
    }

    /// The mouse position in phone pixels, if it is over the window.
    fn mouse(&self) -> Option<(u16, u16)> {
        let (x, y) = self.window.get_mouse_pos(MouseMode::Discard)?;
        let to_phone = |v: f32, max: u16| ((v.max(0.0) as usize) * self.shrink).min(usize::from(max).saturating_sub(1));
        Some((to_phone(x, self.phone.0) as u16, to_phone(y, self.phone.1) as u16))
    }
}

/// Shows the session until the window is closed or the session ends.
pub(crate) fn run(
    mut terminal: Terminal,
    screenshot: Option<PathBuf>,
    runtime: tokio::runtime::Handle,
) -> Result<(), TerminalError> {
    let result = show(&mut terminal, screenshot);
    runtime.block_on(terminal.close());
    result
}

fn show(terminal: &mut Terminal, mut screenshot: Option<PathBuf>) -> Result<(), TerminalError> {
    let mut events = terminal.take_events().ok_or(TerminalError::Closed)?;
    let (width, height, _) = terminal.screen();
    let mut view = View::open(width, height)?;
    let typed = Rc::new(RefCell::new(VecDeque::new()));
    view.window.set_input_callback(Box::new(Typed(typed.clone())));

    let mut dirty = true;
    let mut ended: Option<String> = None;
    let mut status = "connected".to_owned();
    let mut latency_ms: Option<f64> = None;
    let mut touching: Option<(u16, u16)> = None;
    let mut last_ping = Instant::now();
    let mut title = String::new();
    terminal.ping();

    while view.window.is_open() && ended.is_none() {
        loop {
            match events.try_recv() {
                Ok(TerminalEvent::Frame { .. }) => {
                    dirty = true;
                    if let Some(path) = screenshot.take() {
                        terminal.save_png(&path)?;
                    }
                }
                Ok(TerminalEvent::Screen { width: w, height: h }) => {
                    if (w, h) != view.phone {
                        view = View::open(w, h)?;
                        view.window.set_input_callback(Box::new(Typed(typed.clone())));
                    }
                    dirty = true;
                }
                Ok(TerminalEvent::Clipboard { text }) => {
                    // minifb owns no X selection: the copy is said in the log and the title, for the user to take.
                    tracing::info!(%text, "the phone copied");
                    status = format!("copied {} characters", text.chars().count());
                }
                Ok(TerminalEvent::Connected { width: w, height: h, .. }) => {
                    status = "connected".into();
                    if (w, h) != view.phone {
                        view = View::open(w, h)?;
                        view.window.set_input_callback(Box::new(Typed(typed.clone())));
                    }
                    dirty = true;
                }
                Ok(TerminalEvent::Latency { rtt_us }) => latency_ms = Some(rtt_us as f64 / 1000.0),
                Ok(TerminalEvent::Redirected { .. }) => status = "moving".into(),
                Ok(TerminalEvent::Error { message, fatal }) => {
                    tracing::warn!(%message, fatal, "terminal session error");
                    status = if fatal { "failed".into() } else { "reconnecting".into() };
                }
                Ok(TerminalEvent::Notification { title, body, .. }) => {
                    tracing::info!(%title, %body, "notification");
                    status = format!("notification: {title}");
                }
                Ok(TerminalEvent::InputAcked { .. } | TerminalEvent::InputDurable { .. }) => {}
                Ok(TerminalEvent::Closed) | Err(TryRecvError::Disconnected) => {
                    ended = Some(status.clone());
                    break;
                }
                Err(TryRecvError::Empty) => break,
            }
        }

        let asleep = terminal.is_asleep();
        for key in view.window.get_keys_pressed(KeyRepeat::Yes) {
            if key == Key::F2 {
                if asleep { terminal.wake() } else { terminal.sleep() }
            } else if let Some(code) = key_code(key).filter(|_| !asleep) {
                terminal.send_input(Input::Key { code, text: None })?;
            }
        }
        for c in typed.borrow_mut().drain(..) {
            if !asleep {
                terminal.send_input(Input::Key { code: 0, text: Some(c) })?;
            }
        }

        let down = view.window.get_mouse_down(MouseButton::Left) && !asleep;
        match (touching, down, view.mouse()) {
            (None, true, Some((x, y))) => {
                terminal.send_input(Input::Touch { phase: TouchPhase::Down, x, y, pointer: 0 })?;
                touching = Some((x, y));
            }
            (Some(at), true, Some((x, y))) if at != (x, y) => {
                terminal.send_input(Input::Touch { phase: TouchPhase::Move, x, y, pointer: 0 })?;
                touching = Some((x, y));
            }
            (Some((x, y)), false, _) => {
                terminal.send_input(Input::Touch { phase: TouchPhase::Up, x, y, pointer: 0 })?;
                touching = None;
            }
            _ => {}
        }

        if !asleep && last_ping.elapsed() >= PING_EVERY {
            terminal.ping();
            last_ping = Instant::now();
        }
        let state = if asleep { "asleep (F2 wakes)" } else { status.as_str() };
        let next = match latency_ms {
            Some(ms) => format!("Seed VMI — {state} — {ms:.1} ms"),
            None => format!("Seed VMI — {state}"),
        };
        if next != title {
            view.window.set_title(&next);
            title = next;
        }

        if dirty {
            let (w, _, rgba) = terminal.screen();
            view.paint(w, &rgba);
            let (bw, bh) = view.size();
            view.window.update_with_buffer(&view.buffer, bw, bh).map_err(|e| TerminalError::Window(e.to_string()))?;
            dirty = false;
        } else {
            view.window.update();
        }
    }
    match ended {
        Some(reason) if reason == "failed" => Err(TerminalError::Ended("the site closed the session".into())),
        _ => Ok(()),
    }
}
