//! # vmi-guest-abi: the host side of the guest ABI, whatever runs the guest
//!
//! A phone image is a WebAssembly module that imports the `vmi` functions of
//! docs/GUEST_ABI.md. Two runtimes run it: wasmtime on a site (`vmi-wasm-engine`) and
//! the browser's own engine on a terminal that took the phone offline
//! (`vmi-browser-phone`). Everything they must agree on lives here, free of any runtime:
//!
//! - [`image`]: the load-time checks and the instrumentation that exports every mutable
//!   global, so a snapshot can capture and set them;
//! - [`host`]: the host state (clock, timers, RNG, mailbox, notifications, key-value
//!   store, framebuffer) with its snapshot blob, and what each import does, reaching the
//!   guest's memory through [`host::GuestMemory`];
//! - [`event`]: engine events as the guest's `vmi_event(kind, a, b, c)`;
//! - [`guest_log`]: the guest's log lines, cleaned and rate-limited.

pub mod event;
pub mod guest_log;
pub mod host;
pub mod image;
pub mod persist;

pub use host::{carryover_of_host_state, kv_of_host_state};

/// Name recorded in the snapshots of a phone run on this ABI, whichever runtime ran it:
/// a snapshot taken in a browser restores on a site and the other way round.
pub const ENGINE_NAME: &str = "wasm";

/// Why a host-state blob could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GuestAbiError {
    /// The host-state blob of a snapshot is malformed.
    #[error("host state: {0}")]
    HostState(String),
}

impl From<GuestAbiError> for vmi_engine::EngineError {
    fn from(e: GuestAbiError) -> Self {
        match e {
            GuestAbiError::HostState(m) => vmi_engine::EngineError::Snapshot(vmi_snapshot::SnapshotError::Corrupt(m)),
        }
    }
}
