//! What commands print: words for a person, or, with the global `--json`, only JSON on stdout for programs (one
//! document; commands that stream, such as `vm run`, `audit` and the services, one JSON object a line). Errors go
//! to stderr either way, with a non-zero exit status.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use serde::Serialize;
pub use vmi_terminal::progress::Progress;

/// Whether this run prints JSON: set once in `main`, after parsing, before any command runs.
static JSON: AtomicBool = AtomicBool::new(false);

/// Makes every command print JSON (`--json`).
pub fn set_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

/// Whether output is JSON for programs (`--json`).
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Prints `value` as one JSON document with `--json`; else `words` prints what a person reads.
pub fn emit<T: Serialize + ?Sized>(value: &T, words: impl FnOnce()) -> Result<()> {
    if json() {
        println!("{}", serde_json::to_string(value)?);
    } else {
        words();
    }
    Ok(())
}

/// A progress line for a long operation: on stderr when it is a terminal, never with `--json`.
pub fn progress() -> Progress {
    Progress::on_terminal(!json())
}
