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
//!         t.send_input(Input::Touch { phase: TouchPhase::Down, x: 360, y: 640, pointer: 0 })?;
//!         t.send_input(Input::Touch { phase: TouchPhase::Up, x: 360, y: 640, pointer: 0 })?;
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
pub mod progress;
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

/// Reads a device token from the file at `path` (the value of `--token-file`): refused when others may read the
/// file, so a token is never in argv (where `ps` shows it) nor in a file anyone can read.
pub fn token_from_file(path: &str) -> Result<String, String> {
    let path = std::path::Path::new(path);
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!("{} is readable by others (mode {mode:o}); make it 0600 (chmod 600)", path.display()));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.len() > 256 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{} does not hold a device token", path.display()));
    }
    Ok(token.to_owned())
}

/// Writes `token` to a fresh 0600 file under the temp directory named after `tag`, for tests of `--token-file`.
#[cfg(test)]
pub(crate) fn test_token_file(tag: &str, token: &str) -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let path = std::env::temp_dir().join(format!("vmi-token-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).expect("token file");
    std::io::Write::write_all(&mut file, token.as_bytes()).expect("write token");
    path.display().to_string()
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

#[cfg(test)]
mod token_file_tests {
    use super::*;

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        let path = test_token_file("perm", "abc\n");
        assert_eq!(token_from_file(&path).as_deref(), Ok("abc"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(token_from_file(&path).expect_err("0644").contains("readable by others"));
        let empty = test_token_file("empty", "\n");
        assert!(token_from_file(&empty).expect_err("empty").contains("does not hold a device token"));
        assert!(token_from_file("/nonexistent/token").expect_err("missing").contains("cannot read"));
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(empty);
    }
}
