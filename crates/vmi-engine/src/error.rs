//! Errors of engines and phones.

use vmi_snapshot::SnapshotError;

/// Why an engine could not load an image, create or restore a phone.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The image breaks a rule of docs/GUEST_ABI.md.
    #[error("image refused: {0}")]
    ImageRefused(String),
    /// The image is not valid for this engine.
    #[error("image could not be compiled")]
    Compile(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No image with this hash is loaded.
    #[error("image {0} is not loaded")]
    UnknownImage(String),
    /// The snapshot cannot be used.
    #[error("snapshot refused")]
    Snapshot(#[from] SnapshotError),
    /// The snapshot chain is empty.
    #[error("no snapshot given")]
    EmptyChain,
    /// The configuration asks for something impossible.
    #[error("bad VM configuration: {0}")]
    Config(String),
    /// The phone could not start (instantiation or its init event failed).
    #[error("phone failed to start")]
    Start(#[source] VmError),
    /// The host ran out of a resource (VM slots, memory).
    #[error("engine out of resources: {0}")]
    Exhausted(String),
}

/// Why a phone could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The phone has crashed and takes no events.
    #[error("phone has crashed: {0}")]
    Crashed(String),
    /// The guest trapped during this event; the phone is now crashed.
    #[error("guest trapped: {0}")]
    Trap(String),
    /// The guest used its whole CPU budget for one event; the phone is now crashed.
    #[error("guest exceeded its CPU budget of {budget} per event")]
    CpuBudget {
        /// The budget it had.
        budget: u64,
    },
    /// The guest asked for more memory than its limit; the phone is now crashed.
    #[error("guest exceeded its memory limit of {limit} bytes")]
    MemoryLimit {
        /// The limit.
        limit: u64,
    },
    /// The guest did something the ABI forbids (bad pointer, oversized field…).
    #[error("guest broke the ABI: {0}")]
    Abi(String),
    /// A host-side queue is full.
    #[error("{0} is full")]
    Full(&'static str),
    /// Something handed to the phone is over its size limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// Taking the snapshot failed.
    #[error("snapshot failed: {0}")]
    Snapshot(String),
    /// The phone's engine has no such capability (a Linux phone has no host mailbox, a WebAssembly one no files).
    #[error("this phone cannot {0}")]
    Unsupported(String),
}

/// An error with every cause after it, `: `-separated: what logs and answers show, so a
/// cause is never lost. A message that already ends with its cause's words is not
/// repeated. The one formatter of error chains in the workspace.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod chain_tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_shown_once() {
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(error_chain(&e), "outer: disk full");
        assert_eq!(error_chain(&std::io::Error::other("alone")), "alone");
    }
}
