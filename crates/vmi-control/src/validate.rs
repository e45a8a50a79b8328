//! Checks of what callers send, before anything is stored: names and ids, positions, site specs, terminal
//! reports, migration records, checkpoint reports, tenants and images. Each problem is a
//! [`ControlError::BadRequest`] whose message names it.

use vmi_control_api::model::{
    CheckpointEntry, MAX_CHECKPOINTS_REPORTED, MAX_NAME_LEN, MAX_REASON_LEN, MAX_REPORT_SITES, MigrationRecord,
    OUTCOME_ABORTED, OUTCOME_COMMITTED, ReportRequest, SiteSpec,
};
use vmi_control_api::tenants::{DEFAULT_IMAGE, MAX_IMAGE_BYTES, MAX_LINUX_IMAGE_BYTES, TenantRequest};

use crate::ControlError;

/// Checks what a site reports of its checkpoints.
pub(crate) fn validate_checkpoints(entries: &[CheckpointEntry]) -> Result<(), ControlError> {
    if entries.len() > MAX_CHECKPOINTS_REPORTED {
        return Err(ControlError::BadRequest(format!("more than {MAX_CHECKPOINTS_REPORTED} checkpoints")));
    }
    for e in entries {
        if e.id.len() != 64 || !e.id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(ControlError::BadRequest(format!("checkpoint id {:?} is not 64 lowercase hex digits", e.id)));
        }
        if e.label.as_ref().is_some_and(|l| l.chars().count() > MAX_REASON_LEN) {
            return Err(ControlError::BadRequest(format!("checkpoint label longer than {MAX_REASON_LEN} characters")));
        }
    }
    Ok(())
}

/// Checks a user name or site id: 1..=64 characters of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub(crate) fn validate_id(kind: &str, value: &str) -> Result<(), ControlError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if value.is_empty() || value.len() > MAX_NAME_LEN {
        return Err(ControlError::BadRequest(format!("{kind} must be 1 to {MAX_NAME_LEN} characters")));
    }
    if !value.chars().all(ok_char) || value.starts_with(['.', '-']) {
        return Err(ControlError::BadRequest(format!(
            "{kind} may contain only letters, digits, '.', '_' and '-', and may not start with '.' or '-'"
        )));
    }
    Ok(())
}

/// Checks a position: latitude -90..=90 and longitude -180..=180 (NaN is neither).
pub(crate) fn validate_position(lat: f64, lon: f64) -> Result<(), ControlError> {
    if !(-90.0..=90.0).contains(&lat) {
        return Err(ControlError::BadRequest("lat must be between -90 and 90".to_owned()));
    }
    if !(-180.0..=180.0).contains(&lon) {
        return Err(ControlError::BadRequest("lon must be between -180 and 180".to_owned()));
    }
    Ok(())
}

/// Checks a terminal report: a whole position or none, at most [`MAX_REPORT_SITES`] RTTs, each finite and
/// non-negative, keyed by well-formed site ids.
pub(crate) fn validate_report(report: &ReportRequest) -> Result<(), ControlError> {
    match (report.lat, report.lon) {
        (Some(lat), Some(lon)) => validate_position(lat, lon)?,
        (None, None) => {}
        _ => return Err(ControlError::BadRequest("lat and lon must be given together".to_owned())),
    }
    if report.rtt_ms.len() > MAX_REPORT_SITES {
        return Err(ControlError::BadRequest(format!("rtt_ms may name at most {MAX_REPORT_SITES} sites")));
    }
    for (site, rtt) in &report.rtt_ms {
        validate_id("site id", site)?;
        if !rtt.is_finite() || *rtt < 0.0 {
            return Err(ControlError::BadRequest(format!("rtt_ms[{site:?}] must be a finite number >= 0")));
        }
    }
    Ok(())
}

/// Checks a migration record: well-formed ids, a known outcome, counters that fit SQLite's signed 64 bits, a
/// finite non-negative duration, a bounded reason.
pub(crate) fn validate_migration(record: &MigrationRecord) -> Result<(), ControlError> {
    validate_id("user name", &record.user)?;
    validate_id("from site id", &record.from)?;
    validate_id("to site id", &record.to)?;
    let limit = i64::MAX as u64;
    if record.outcome != OUTCOME_COMMITTED && record.outcome != OUTCOME_ABORTED {
        return Err(ControlError::BadRequest(format!("outcome must be {OUTCOME_COMMITTED:?} or {OUTCOME_ABORTED:?}")));
    }
    if !record.total_ms.is_finite() || record.total_ms < 0.0 {
        return Err(ControlError::BadRequest("total_ms must be a finite number >= 0".to_owned()));
    }
    for (name, value) in [("epoch", record.epoch), ("downtime_us", record.downtime_us), ("bytes", record.bytes)] {
        if value > limit {
            return Err(ControlError::BadRequest(format!("{name} must be at most {limit}")));
        }
    }
    if record.reason.chars().count() > MAX_REASON_LEN || record.reason.chars().any(char::is_control) {
        return Err(ControlError::BadRequest(format!(
            "reason must be at most {MAX_REASON_LEN} characters with no control characters"
        )));
    }
    Ok(())
}

/// Checks a device label: 1..=64 characters, no control characters.
pub(crate) fn validate_label(kind: &str, value: &str) -> Result<(), ControlError> {
    if value.is_empty() || value.chars().count() > MAX_NAME_LEN {
        return Err(ControlError::BadRequest(format!("{kind} must be 1 to {MAX_NAME_LEN} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(ControlError::BadRequest(format!("{kind} may not contain control characters")));
    }
    Ok(())
}

/// Validates a site spec and returns its URL normalised (no trailing slash).
pub(crate) fn validate_site_spec(spec: &SiteSpec) -> Result<String, ControlError> {
    let url = spec.url.strip_suffix('/').unwrap_or(&spec.url);
    let authority = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| ControlError::BadRequest("site url must start with http:// or https://".to_owned()))?;
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) || authority.chars().any(char::is_control)
    {
        return Err(ControlError::BadRequest("site url must be scheme://host[:port] with no path".to_owned()));
    }
    validate_position(spec.lat, spec.lon)?;
    Ok(url.to_owned())
}

/// Checks a tenant request's name (when `check_name`) and image name.
pub(crate) fn validate_tenant(req: &TenantRequest, check_name: bool) -> Result<String, ControlError> {
    if check_name {
        validate_id("tenant name", &req.name)?;
    }
    let image = req.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.to_owned());
    validate_id("image name", &image)?;
    if let Some(max) = req.max_memory_bytes
        && max > i64::MAX as u64
    {
        return Err(ControlError::BadRequest(format!("max_memory_bytes must be at most {}", i64::MAX)));
    }
    Ok(image)
}

/// Checks that `wasm` could be a phone image: a WebAssembly module (magic and version 1, at most
/// [`MAX_IMAGE_BYTES`]) or a Linux image (`VMILINUX` magic, at most [`MAX_LINUX_IMAGE_BYTES`]). What it contains
/// (the guest ABI; a Linux image's parts and their hashes) is checked by the sites' engine when it loads it.
pub(crate) fn validate_wasm(wasm: &[u8]) -> Result<(), ControlError> {
    if wasm.starts_with(b"VMILINUX") {
        if wasm.len() > MAX_LINUX_IMAGE_BYTES {
            return Err(ControlError::BadRequest(format!(
                "a Linux image may be at most {MAX_LINUX_IMAGE_BYTES} bytes"
            )));
        }
        return Ok(());
    }
    if wasm.len() > MAX_IMAGE_BYTES {
        return Err(ControlError::BadRequest(format!("an image may be at most {MAX_IMAGE_BYTES} bytes")));
    }
    if wasm.len() < 8 || wasm[..4] != *b"\0asm" || wasm[4..8] != [1, 0, 0, 0] {
        return Err(ControlError::BadRequest(
            "the body is not a phone image (expected a WebAssembly module: the \\0asm magic and version 1; or a \
             Linux image: the VMILINUX magic)"
                .to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_urls_are_validated() {
        assert!(validate_id("user", "alice_01.x").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_id("user", bad).is_err(), "{bad:?}");
        }
        let spec = |url: &str| SiteSpec { url: url.into(), lat: 1.0, lon: 2.0, capacity: 3 };
        assert_eq!(validate_site_spec(&spec("http://127.0.0.1:8080/")).ok().as_deref(), Some("http://127.0.0.1:8080"));
        for bad in ["ftp://x", "http://", "http://a/b", "127.0.0.1:80"] {
            assert!(validate_site_spec(&spec(bad)).is_err(), "{bad:?}");
        }
        assert!(validate_site_spec(&SiteSpec { lat: 91.0, ..spec("http://a:1") }).is_err());
        assert!(validate_site_spec(&SiteSpec { lon: -181.0, ..spec("http://a:1") }).is_err());
    }

    #[test]
    fn reports_are_validated() {
        let ok = ReportRequest { lat: Some(48.1), lon: Some(11.6), rtt_ms: [("site-a".to_owned(), 3.5)].into() };
        assert!(validate_report(&ok).is_ok());
        assert!(validate_report(&ReportRequest::default()).is_ok());
        let bad = [
            ReportRequest { lat: Some(1.0), ..ReportRequest::default() },
            ReportRequest { lat: Some(f64::NAN), lon: Some(0.0), ..ReportRequest::default() },
            ReportRequest { rtt_ms: [("site-a".to_owned(), -1.0)].into(), ..ReportRequest::default() },
            ReportRequest { rtt_ms: [("a/b".to_owned(), 1.0)].into(), ..ReportRequest::default() },
            ReportRequest {
                rtt_ms: (0..=MAX_REPORT_SITES).map(|i| (format!("s{i}"), 1.0)).collect(),
                ..ReportRequest::default()
            },
        ];
        for report in bad {
            assert!(validate_report(&report).is_err(), "{report:?}");
        }
    }

    #[test]
    fn only_wasm_modules_are_published() {
        assert!(validate_wasm(b"\0asm\x01\0\0\0").is_ok());
        for bad in [&b""[..], b"\0asm", b"ELF\x7f\x01\0\0\0", b"\0asm\x0d\0\x01\0"] {
            assert!(matches!(validate_wasm(bad), Err(ControlError::BadRequest(_))), "{bad:?}");
        }
    }
}
