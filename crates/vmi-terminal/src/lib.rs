//! # vmi-terminal: the native terminal of Seed VMI
//!
//! A user's phone is a VM on an edge site. The device in the user's hand is a
//! **terminal**: it shows the phone's pixels and sends touches and keys over one WebSocket
//! (docs/PROTOCOL.md), and it should spend radio energy only while something is shown.
//! This crate is that terminal, as a library and as the logic of the `vmi terminal`
//! command.
//!
//! ## Pieces
//!
//! - [`session`]: [`Terminal`], an async client of the protocol. It keeps the phone's
//!   [`Screen`](vmi_protocol::display::Screen), acknowledges frames, numbers and keeps
//!   inputs until acknowledged, follows `Redirect`s and reconnects with `Resume`, and
//!   reports [`TerminalEvent`]s on a bounded channel.
//! - [`energy`]: the energy account. Every message is recorded as a
//!   [`Packet`](energy::Packet) against a pluggable clock and priced with an LTE radio
//!   power model (Huang et al., MobiSys 2012) — a model, not a measurement — next to
//!   [`polling_phone_day`](energy::polling_phone_day), the phone that polls its own mail.
//! - [`script`]: the line-oriented scripts a headless run plays (`tap`, `drag`, `type`,
//!   `key`, `wait`, `sleep`, `wake`, `ping`, `screenshot`).
//! - `offline` (cargo feature `offline`, on by default): `vmi terminal checkout |
//!   run-offline | checkin` (docs/OFFLINE.md): the phone leaves its site under a lease,
//!   runs here on the sites' engine (wasmtime), and goes back as deltas against the
//!   checkout. Without the feature the terminal links no engine: `--no-default-features
//!   --features window` is the thin terminal.
//! - [`cli`]: `vmi terminal`: [`TerminalArgs`] and [`cli::run`]; headless mode prints one
//!   JSON object per event. The window (cargo feature `window`, a `minifb` X11 window
//!   loaded with dlopen) shows the phone, maps the mouse to touches and the keyboard to
//!   keys, and toggles sleep with F2.
//!
//! ## Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), vmi_terminal::TerminalError> {
//! use vmi_protocol::{Input, TouchPhase};
//! use vmi_terminal::{Terminal, TerminalEvent, TerminalOptions};
//!
//! let mut t = Terminal::connect("ws://127.0.0.1:7100/v1/terminal", "token", TerminalOptions::default()).await?;
//! while let Some(event) = t.next_event().await {
//!     if let TerminalEvent::Frame { .. } = event {
//!         t.send_input(Input::Touch { phase: TouchPhase::Down, x: 360, y: 640 })?;
//!         t.send_input(Input::Touch { phase: TouchPhase::Up, x: 360, y: 640 })?;
//!         t.save_png("screen.png")?;
//!         break;
//!     }
//! }
//! println!("{}", t.energy());
//! t.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! ## Boundaries
//!
//! Only this crate's session task touches the terminal's WebSocket; it runs on tokio.
//! The window never appears in tests: every test drives the headless paths.

pub mod cli;
pub mod energy;
mod error;
#[cfg(feature = "offline")]
pub mod offline;
pub mod script;
pub mod session;
#[cfg(feature = "window")]
mod window;

pub use cli::TerminalArgs;
pub use error::TerminalError;
pub use session::{SessionStats, Terminal, TerminalEvent, TerminalOptions};

/// Environment variable naming the provider CA file (PEM) the terminal trusts for `https://` and `wss://`.
pub const CA_ENV: &str = "VMI_CA_FILE";

/// How the terminal calls the control service and sites: trusting the provider CA in the file `ca` (`--ca`), or
/// else the one [`CA_ENV`] names; with neither, plain `http://`/`ws://` only (loopback).
pub fn terminal_caller(ca: Option<&std::path::Path>) -> Result<vmi_control_api::Caller, TerminalError> {
    match ca_pem(ca)? {
        None => Ok(vmi_control_api::Caller::anonymous()),
        Some(pem) => vmi_control_api::Caller::trusting(&pem).map_err(TerminalError::Control),
    }
}

/// The provider CA (PEM) from the file `ca`, or else from the file [`CA_ENV`] names, if either.
pub fn ca_pem(ca: Option<&std::path::Path>) -> Result<Option<String>, TerminalError> {
    let path = match ca {
        Some(path) => path.to_owned(),
        None => match std::env::var_os(CA_ENV) {
            Some(path) => std::path::PathBuf::from(path),
            None => return Ok(None),
        },
    };
    std::fs::read_to_string(&path)
        .map(Some)
        .map_err(|e| TerminalError::Usage(format!("cannot read the CA file {}: {e}", path.display())))
}
