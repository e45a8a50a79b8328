//! Scrolling through a site: a flick on a long inbox glides frame by frame on the phone's virtual clock, each
//! frame travels as a copy of what the terminal already shows plus the strip it uncovered, and the terminal's
//! screen equals the phone's framebuffer after every step. A terminal of protocol version 3 watching the same
//! glide gets tiles only, and its screen is the phone's too.

mod common;

use std::time::Duration;

use common::*;
use vmi_engine::{Mail, ManualClock};
use vmi_protocol::{Input, TouchPhase};
use vmi_site::phone::PhoneLink;
use vmi_terminal::{Terminal, TerminalEvent};

const MAIL: (u16, u16) = (102, 1090);
const FRAME_NS: u64 = 16_666_667;

/// What the frames that reached the terminal held.
#[derive(Default, Debug)]
struct Seen {
    frames: usize,
    copies: usize,
    bytes: usize,
}

impl Seen {
    fn note(&mut self, event: &TerminalEvent) {
        if let TerminalEvent::Frame { copies, bytes, .. } = event {
            self.frames += 1;
            self.copies += copies;
            self.bytes += bytes;
        }
    }
}

/// The terminal's next event (within 20 s), counted.
async fn next(term: &mut Terminal, seen: &mut Seen, what: &str) -> TerminalEvent {
    let event = tokio::time::timeout(Duration::from_secs(20), term.next_event())
        .await
        .unwrap_or_else(|_| panic!("{what} in time"))
        .expect("session alive");
    seen.note(&event);
    event
}

/// Reads the terminal's events until its screen is the phone's (a phone that is not changing), then the events
/// already waiting.
async fn settle(term: &mut Terminal, phone: &PhoneLink, seen: &mut Seen) -> u64 {
    let shot = phone.screen().await.expect("screen");
    let want = vmi_protocol::display::screen_hash(&shot.rgba);
    while term.screen_hash() != want {
        next(term, seen, "the terminal's screen reaches the phone's").await;
    }
    // The session applies a frame before it reports it: count what is reported by now.
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(20), term.next_event()).await {
        seen.note(&event);
    }
    want
}

/// Sends `input` and waits until the phone applied it.
async fn input(term: &mut Terminal, seen: &mut Seen, input: Input) {
    let seq = term.send_input(input).expect("send");
    while !matches!(next(term, seen, "input acknowledged").await, TerminalEvent::InputAcked { seq: s } if s >= seq) {}
}

fn touch(phase: TouchPhase, x: u16, y: u16) -> Input {
    Input::Touch { phase, x, y, pointer: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fling_reaches_the_terminal_as_copies_and_equals_the_phone_after_every_step() {
    let clock = ManualClock::new(1_764_000_000 * 1_000_000_000);
    let control = control().await;
    let site = site_with_clock(&control, "site-a", scratch("scroll-site-a"), clock.clone()).await;
    let token = user_with_phone(&control, &site, "ines").await;
    let phone = site.state.phone("ines").expect("phone");
    for i in 0..60 {
        let mail = Mail {
            from: format!("Sender {i} <s{i}@example.com>"),
            subject: format!("Message number {i}"),
            body: format!("The body of message {i}, long enough to fill a snippet line."),
        };
        phone.mail(mail, true).await.expect("mail");
    }
    let mut term = Terminal::connect(&site.ws_url(), &token, terminal_options()).await.expect("terminal");
    let mut seen = Seen::default();
    settle(&mut term, &phone, &mut seen).await;
    input(&mut term, &mut seen, touch(TouchPhase::Down, MAIL.0, MAIL.1)).await;
    input(&mut term, &mut seen, touch(TouchPhase::Up, MAIL.0, MAIL.1)).await;
    let inbox = settle(&mut term, &phone, &mut seen).await;
    let options = vmi_terminal::TerminalOptions { protocol_version: 3, ..terminal_options() };
    let mut old = Terminal::connect(&site.ws_url(), &token, options).await.expect("version-3 terminal");
    let mut old_seen = Seen::default();
    settle(&mut old, &phone, &mut old_seen).await;

    // A flick up: six moves of 40 px, 16 ms apart on the phone's clock, then the finger lifts.
    let mut seen = Seen::default();
    let (x, y0) = (360u16, 1000u16);
    input(&mut term, &mut seen, touch(TouchPhase::Down, x, y0)).await;
    for i in 1..=6u16 {
        clock.advance(16_000_000);
        input(&mut term, &mut seen, touch(TouchPhase::Move, x, y0 - 40 * i)).await;
        settle(&mut term, &phone, &mut seen).await;
    }
    input(&mut term, &mut seen, touch(TouchPhase::Up, x, y0 - 240)).await;
    let dragged = settle(&mut term, &phone, &mut seen).await;
    assert_ne!(dragged, inbox, "the list followed the finger");

    // The glide: a frame every 16.7 ms of virtual time, the terminal equal to the phone after each.
    let mut moving_steps = 0;
    let mut still = 0;
    let mut last = dragged;
    for _ in 0..400 {
        clock.advance(FRAME_NS);
        site.tick().await;
        let now = settle(&mut term, &phone, &mut seen).await;
        assert_eq!(settle(&mut old, &phone, &mut old_seen).await, now);
        if now == last {
            still += 1;
            // The last steps move less than a pixel a frame; ten still frames mean it stopped.
            if still == 10 {
                break;
            }
        } else {
            still = 0;
            moving_steps += 1;
        }
        last = now;
    }
    assert_eq!(still, 10, "the glide stops by itself");
    assert!(moving_steps >= 20, "the list glided over {moving_steps} frames");
    assert!(seen.frames >= moving_steps, "every step reached the terminal: {seen:?}");
    assert!(
        seen.copies * 10 >= seen.frames * 8,
        "most scrolled frames travel as a copy: {seen:?} (moving steps {moving_steps})"
    );
    // A scrolled frame costs a strip, not a screen: under a tenth of a full repaint on average.
    let shot = phone.screen().await.expect("screen");
    let full = vmi_protocol::display::Encoder::new(shot.width as u16, shot.height as u16).full(&shot.rgba);
    let full_bytes =
        vmi_protocol::encode_server(&vmi_protocol::ServerMessage::FrameUpdate { seq: 1, tiles: full }).len();
    let per_frame = seen.bytes / seen.frames.max(1);
    assert!(per_frame * 10 < full_bytes, "{per_frame} bytes per scrolled frame, {full_bytes} for a full repaint");
    assert_eq!(old_seen.copies, 0, "a version-3 terminal gets no copy: {old_seen:?}");
    assert!(old_seen.bytes > seen.bytes * 10, "tiles alone cost far more: {old_seen:?} against {seen:?}");
    old.close().await;
    term.close().await;
    site.shutdown().await;
}
