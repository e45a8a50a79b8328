//! Tenants with quotas, admission of phones against them, and managed image versions: the wire types.
//!
//! - A **tenant** (a small business) groups users. Its quotas cap how many phones its users run at once
//!   (`max_phones`) and how much memory those phones may use together (`max_memory_bytes`); `None` is unlimited.
//!   It names the image its phones run (`image`, "phone" by default). A user without a tenant has no quotas and
//!   runs [`DEFAULT_IMAGE`].
//! - **Admission**: before a site boots a phone it asks the control service to admit it with its memory limit
//!   (`POST /v1/users/{user}/admit`). The admission is recorded on the user (`phone_memory_bytes`) and counts
//!   against the tenant until released. A tenant's phones are its *admitted* users (not its placed users: a
//!   placement is set before the phone boots, and may exist with no phone at all); its memory is the sum of
//!   their admitted memory limits. Admitting a user again (a restart, a migration) replaces their own record, so
//!   it never counts twice. Lowering a quota below what is in use refuses new admissions only.
//! - **Images** are published in versions: `POST /v1/images/{name}/versions` with the wasm bytes assigns the next
//!   version number. The *current* version of a name is its newest one not withdrawn. A rollback withdraws the
//!   current version, so the one before becomes current; it is refused when no earlier version is left. Withdrawn
//!   versions stay downloadable: phones still on them must be able to move between sites until they restart.

use serde::{Deserialize, Serialize};

/// The image a user without a tenant runs, and a new tenant's image unless it names another.
pub const DEFAULT_IMAGE: &str = "phone";

/// Largest WebAssembly image accepted by `POST /v1/images/{name}/versions`, in bytes.
pub const MAX_IMAGE_BYTES: usize = 32 << 20;

/// Largest Linux image (`VMILINUX` magic: a kernel, an initramfs and a root filesystem) accepted there.
pub const MAX_LINUX_IMAGE_BYTES: usize = 512 << 20;

/// A tenant and its quotas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Tenant {
    /// Unique name, e.g. "acme".
    pub name: String,
    /// Most phones its users may run at once; `None`: unlimited.
    pub max_phones: Option<u32>,
    /// Most memory its phones may use together, in bytes (the sum of their memory limits); `None`: unlimited.
    pub max_memory_bytes: Option<u64>,
    /// Name of the image its phones run.
    pub image: String,
}

/// A tenant with what it uses now, as listed by `GET /v1/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TenantStatus {
    /// The tenant.
    #[serde(flatten)]
    pub tenant: Tenant,
    /// Admitted phones.
    pub phones: u32,
    /// Sum of the admitted phones' memory limits, in bytes.
    pub memory_bytes: u64,
}

/// Body of `POST /v1/tenants`: a new tenant. An absent quota is unlimited, an absent image [`DEFAULT_IMAGE`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TenantRequest {
    /// The tenant's name.
    #[serde(default)]
    pub name: String,
    /// Most phones at once; absent or `null`: unlimited.
    #[serde(default)]
    pub max_phones: Option<u32>,
    /// Most memory of all phones together, in bytes; absent or `null`: unlimited.
    #[serde(default)]
    pub max_memory_bytes: Option<u64>,
    /// Image name; absent: [`DEFAULT_IMAGE`].
    #[serde(default)]
    pub image: Option<String>,
}

/// Body of `PUT /v1/tenants/{name}`: what changes. A field not sent is not changed; a quota sent as `null`
/// becomes unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TenantUpdate {
    /// New most phones at once: `Some(None)` (JSON `null`) is unlimited.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub max_phones: Option<Option<u32>>,
    /// New most memory of all phones together, bytes: `Some(None)` (JSON `null`) is unlimited.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub max_memory_bytes: Option<Option<u64>>,
    /// New image name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl TenantUpdate {
    /// `tenant` with this update applied.
    pub fn apply(&self, tenant: &Tenant) -> Tenant {
        Tenant {
            name: tenant.name.clone(),
            max_phones: self.max_phones.unwrap_or(tenant.max_phones),
            max_memory_bytes: self.max_memory_bytes.unwrap_or(tenant.max_memory_bytes),
            image: self.image.clone().unwrap_or_else(|| tenant.image.clone()),
        }
    }
}

/// A field that is present, `null` included: serde gives `None` for an absent field (via `default`) and this
/// gives `Some(None)` for `null`, so "not sent" and "sent as null" differ.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Body of `POST /v1/users`: a name and, optionally, the tenant the user belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UserRequest {
    /// The user's name.
    pub name: String,
    /// An existing tenant; absent: no tenant (no quotas, the default image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// Body of `POST /v1/users/{user}/admit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AdmitRequest {
    /// The memory limit the phone will run with, in bytes.
    pub memory_bytes: u64,
}

/// A phone admitted: what its tenant uses now, this phone included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Admission {
    /// The admitted user.
    pub user: String,
    /// The user's tenant, if any.
    pub tenant: Option<String>,
    /// Admitted phones of the tenant (1 for a user without one).
    pub phones: u32,
    /// Their memory limits together, in bytes.
    pub memory_bytes: u64,
}

/// One published version of an image, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ImageVersion {
    /// Image name, e.g. "phone".
    pub name: String,
    /// Version number: 1, 2, ... in order of publication.
    pub version: u64,
    /// blake3 of the wasm bytes, lowercase hex (the engine's image hash).
    pub hash: String,
    /// Size of the wasm bytes.
    pub size_bytes: u64,
    /// When it was published, milliseconds since the Unix epoch.
    pub published_ms: u64,
    /// Rolled back: never current again.
    pub withdrawn: bool,
    /// The version phones of this image move to on their next restart.
    pub current: bool,
}

/// The image version a user's phone should run now, as returned by `GET /v1/users/{user}/image`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UserImage {
    /// Image name.
    pub name: String,
    /// Current version.
    pub version: u64,
    /// blake3 of its wasm bytes, lowercase hex.
    pub hash: String,
}

/// Bytes as people read quotas: "64 MiB", "1.5 MiB", "512 KiB", "100 bytes".
pub fn format_bytes(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    const KIB: u64 = 1 << 10;
    if bytes >= MIB {
        if bytes.is_multiple_of(MIB) {
            format!("{} MiB", bytes / MIB)
        } else {
            format!("{:.1} MiB", bytes as f64 / MIB as f64)
        }
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_quotas() {
        assert_eq!(format_bytes(64 << 20), "64 MiB");
        assert_eq!(format_bytes(3 << 19), "1.5 MiB");
        assert_eq!(format_bytes(512 << 10), "512 KiB");
        assert_eq!(format_bytes(100), "100 bytes");
    }
}
