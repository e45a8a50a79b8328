//! Mail's hourly alerts through a site: with the terminal's screen off, mails go into the inbox at once but their
//! notification waits for the top of the hour on the phone's clock, and comes as one; with the screen on, at once.

mod common;

use std::time::Duration;

use common::*;
use vmi_engine::{Clock, Mail, ManualClock};
use vmi_protocol::{Input, TouchPhase};
use vmi_terminal::{Terminal, TerminalEvent};

const SECOND: u64 = 1_000_000_000;
const MAIL_ICON: (u16, u16) = (102, 1090);
const ALERTS_BUTTON: (u16, u16) = (605, 104);

/// Taps and waits until the phone applied it.
async fn tap(term: &mut Terminal, (x, y): (u16, u16)) {
    term.send_input(Input::Touch { phase: TouchPhase::Down, x, y, pointer: 0 }).expect("send");
    let seq = term.send_input(Input::Touch { phase: TouchPhase::Up, x, y, pointer: 0 }).expect("send");
    while !matches!(next(term).await, TerminalEvent::InputAcked { seq: s } if s >= seq) {}
}

async fn next(term: &mut Terminal) -> TerminalEvent {
    tokio::time::timeout(Duration::from_secs(20), term.next_event()).await.expect("an event in time").expect("session")
}

/// The notifications that reached the terminal by now (it reads until 200 ms pass without an event).
async fn notifications(term: &mut Terminal) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(200), term.next_event()).await {
        if let TerminalEvent::Notification { title, body, .. } = event {
            seen.push((title, body));
        }
    }
    seen
}

fn mail(from: &str, subject: &str) -> Mail {
    Mail { from: from.into(), subject: subject.into(), body: "b".into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hourly_alerts_reach_a_sleeping_terminal_once_at_the_top_of_the_hour() {
    // 10:05 on the phone's clock.
    let clock = ManualClock::new((1_764_000_000 / 3600 * 3600 + 300) * SECOND);
    let control = control().await;
    let site = site_with_clock(&control, "site-a", scratch("alerts-site-a"), clock.clone()).await;
    let token = user_with_phone(&control, &site, "omar").await;
    let phone = site.state.phone("omar").expect("phone");
    let mut term = Terminal::connect(&site.ws_url(), &token, terminal_options()).await.expect("terminal");
    tap(&mut term, MAIL_ICON).await;
    tap(&mut term, ALERTS_BUTTON).await;
    let (status, kv) = control.get(&format!("{}/v1/phones/omar/kv/mail.alerts", site.url)).await;
    assert_eq!((status, String::from_utf8_lossy(&kv).into_owned()), (200, "hourly".to_string()));

    // Screen on: a mail is announced at once.
    phone.mail(mail("Ann", "Lunch?"), true).await.expect("mail");
    assert_eq!(notifications(&mut term).await, [("Ann".to_string(), "Lunch?".to_string())]);

    // Screen off: two mails, minutes apart, and nothing reaches the terminal until the hour turns.
    term.sleep();
    notifications(&mut term).await;
    phone.mail(mail("Bob", "Report"), true).await.expect("mail");
    clock.advance(20 * 60 * SECOND);
    site.tick().await;
    phone.mail(mail("Cyd", "Photos"), true).await.expect("mail");
    clock.advance(34 * 60 * SECOND); // 10:59
    site.tick().await;
    assert!(notifications(&mut term).await.is_empty(), "held until the hour");
    let (_, inbox) = control.get(&format!("{}/v1/phones/omar/kv/mail.inbox", site.url)).await;
    assert!(String::from_utf8_lossy(&inbox).contains("Photos"), "the mail itself is in the inbox at once");
    clock.advance(60 * SECOND); // 11:00
    site.tick().await;
    assert_eq!(
        notifications(&mut term).await,
        [("2 new messages".to_string(), "From Bob, Cyd".to_string())],
        "one alert at the top of the hour says both"
    );
    assert_eq!(clock.wall_ns() % (3600 * SECOND), 0);
    // And the next hour, with nothing new, stays quiet.
    clock.advance(3600 * SECOND);
    site.tick().await;
    assert!(notifications(&mut term).await.is_empty());
    term.close().await;
    site.shutdown().await;
}
