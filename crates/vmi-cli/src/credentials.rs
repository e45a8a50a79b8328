//! Where the CLI's secrets live: the operator credential (`vmi control` and `vmi up` write it at install, 0600;
//! every operator command reads it; no secret is ever taken in argv) and a site's join file (docs/SECURITY.md).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use vmi_control_api::{Caller, ControlClient};

/// Environment variable naming the operator credential file.
pub const CREDENTIALS_ENV: &str = "VMI_CREDENTIALS";
/// Where the operator credential is when [`CREDENTIALS_ENV`] is not set: beside `vmi control`'s default database.
pub const DEFAULT_CREDENTIALS: &str = "vmi-data/operator.json";

/// The operator's credential: which control service, the provider CA to trust, and the bearer token.
#[derive(Clone, Serialize, Deserialize)]
pub struct OperatorCredential {
    /// The control service's URL.
    pub control: String,
    /// The bearer token.
    pub token: String,
    /// The provider CA, PEM.
    pub ca_pem: String,
}

/// A site's one-time join file, written by `vmi up` (or an operator) and read by `vmi site --join`.
#[derive(Clone, Serialize, Deserialize)]
pub struct JoinFile {
    /// The site it enrolls.
    pub site: String,
    /// The one-time token.
    pub token: String,
    /// The control service's URL.
    pub control: String,
    /// The provider CA, PEM (the site checks the control service against it).
    pub ca_pem: String,
}

/// Writes `value` as JSON to `path`, readable by its owner only (0600), through a temporary file.
pub fn write_secret<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_secret_bytes(path, &serde_json::to_vec_pretty(value)?)
}

/// Writes `bytes` to `path` readable by its owner only (0600, atomically).
pub fn write_secret_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Reads a JSON secret file, refusing one that others can read.
pub fn read_secret<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!("{} is readable by others (mode {mode:o}); make it 0600 (chmod 600)", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a credential file", path.display()))
}

/// Set by `vmi up` for itself: the credential its own control service wrote.
static CHOSEN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes this process use the operator credential at `path` (`vmi up`, which knows where its control service
/// wrote it).
pub fn use_credentials(path: PathBuf) {
    let _ = CHOSEN.set(path);
}

/// The credential file [`use_credentials`] chose for this process, if any.
pub fn chosen_credentials() -> Option<PathBuf> {
    CHOSEN.get().cloned()
}

/// The operator credential file's path: the one chosen by [`use_credentials`], else [`CREDENTIALS_ENV`], else
/// [`DEFAULT_CREDENTIALS`].
pub fn credentials_path() -> PathBuf {
    if let Some(path) = CHOSEN.get() {
        return path.clone();
    }
    std::env::var_os(CREDENTIALS_ENV).map_or_else(|| PathBuf::from(DEFAULT_CREDENTIALS), PathBuf::from)
}

/// The operator's credential, with a clear error naming where it was looked for.
pub fn operator() -> Result<OperatorCredential> {
    let path = credentials_path();
    read_secret(&path).with_context(|| {
        format!(
            "no operator credential at {} (vmi control / vmi up write it there; set {CREDENTIALS_ENV} to use another)",
            path.display()
        )
    })
}

/// How the CLI calls services as the operator.
pub fn operator_caller() -> Result<Caller> {
    let credential = operator()?;
    Ok(Caller::trusting(&credential.ca_pem)?.with_bearer(&credential.token))
}

/// A client of the control service at `url` as the operator.
pub fn control_client(url: &str) -> Result<ControlClient> {
    Ok(ControlClient::new(url, &operator_caller()?)?)
}
