//! Errors of the QEMU engine's own parts (image files, QMP, the display and agent channels); at the engine
//! contract they become [`vmi_engine::EngineError`] and [`vmi_engine::VmError`].

/// What went wrong inside the QEMU engine.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// A Linux image file is malformed.
    #[error("Linux image: {0}")]
    Image(String),
    /// QEMU could not be started or answered badly.
    #[error("QEMU: {0}")]
    Qemu(String),
    /// A QMP command failed; QEMU's own words.
    #[error("QMP {command}: {message}")]
    Qmp {
        /// The command.
        command: String,
        /// QEMU's error description.
        message: String,
    },
    /// The display (VNC) channel broke or spoke out of turn.
    #[error("display channel: {0}")]
    Display(String),
    /// A file or socket of the phone failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl QemuError {
    /// An I/O error, with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> QemuError {
        let what = what.into();
        move |source| QemuError::Io { what, source }
    }
}
