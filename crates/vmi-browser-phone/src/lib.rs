//! # vmi-browser-phone: a checked-out phone in a browser tab
//!
//! A phone is WebAssembly, and so is a browser. When the page checks a phone out
//! (docs/OFFLINE.md, the same lease as `vmi terminal checkout`), the browser's own engine
//! runs the phone's image, and this crate, compiled to `wasm32-unknown-unknown` and served
//! by every site as `/offline-phone.wasm`, does everything else, with the same code the
//! sites run: the checkout bundle's checks, the image's instrumentation, the host state
//! and the `vmi` imports (`vmi-guest-abi`), and the snapshot format (`vmi-snapshot`). So a
//! snapshot saved in the tab restores on a site exactly.
//!
//! ```text
//!  page (web/offline-phone.js)                 this module                  the phone's image
//!  ─────────────────────────────               ───────────                  ─────────────────
//!  checkout bundle ───────────── open ───────► checks, instruments ──────►  instantiated by the page
//!  IndexedDB: saved snapshot ─── restore ────► memory + globals ─────────►  copied into the instance
//!  touches, keys, display ────── message ────► vmi_event(kind, a, b, c) ──►  vmi_event
//!                                              vmi_* imports ◄─────────────  imports (host state here)
//!  canvas ◄───────────────────── frame ──────  framebuffer + damage
//!  IndexedDB ◄────────────────── save ───────  delta against the base
//!  POST /v1/me/checkin ◄──────── checkin ────  checkin body
//! ```
//!
//! [`phone`] is plain Rust, tested natively against the sites' engine; [`exports`] is the
//! thin interface the page calls (wasm32 only).

#[cfg(target_arch = "wasm32")]
pub mod exports;
pub mod phone;

pub use phone::{OfflineError, OfflinePhone, Restored};
