//! The names machines carry in their certificates.

use crate::TrustError;

/// The identity name of the control service: its certificate names it, and sites check it.
pub const CONTROL_NAME: &str = "control.vmi";

/// The domain under which every site's identity name lives.
const SITE_DOMAIN: &str = "site.vmi";

/// Whether `host` is in the namespace of machine identities (`vmi` or `*.vmi`, any case, trailing dot or not):
/// such a name may be only the name a certificate is issued for, never one of its extra hosts, or a site could
/// have itself certified as `control.vmi` or as another site.
pub fn is_identity_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "vmi" || host.ends_with(".vmi")
}

/// The identity name of site `site_id`: `"{site_id}.site.vmi"`.
///
/// The id becomes one DNS label, so it must be 1..=63 characters of `[a-z0-9-]`, not starting or
/// ending with '-'. Refusing anything else keeps one site's name from ever spelling another's
/// (no dots, no upper case that would compare equal).
pub fn site_name(site_id: &str) -> Result<String, TrustError> {
    let invalid = |reason| Err(TrustError::InvalidSiteId { id: site_id.to_string(), reason });
    if site_id.is_empty() {
        return invalid("it is empty");
    }
    if site_id.len() > 63 {
        return invalid("it is longer than 63 characters");
    }
    if !site_id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return invalid("only lower-case letters, digits and '-' are allowed");
    }
    if site_id.starts_with('-') || site_id.ends_with('-') {
        return invalid("it must not start or end with '-'");
    }
    Ok(format!("{site_id}.{SITE_DOMAIN}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_names_are_labels_under_site_vmi() {
        assert_eq!(site_name("site-a").ok().as_deref(), Some("site-a.site.vmi"));
        assert_eq!(site_name("a").ok().as_deref(), Some("a.site.vmi"));
        for reserved in ["control.vmi", "SITE-A.site.vmi", "site-a.site.vmi.", "vmi", "x.VMI."] {
            assert!(is_identity_name(reserved), "{reserved}");
        }
        for free in ["127.0.0.1", "edge.example.com", "vmi.example", "localhost", "notvmi"] {
            assert!(!is_identity_name(free), "{free}");
        }
        let longest = "a".repeat(63);
        assert_eq!(site_name(&longest).ok(), Some(format!("{longest}.site.vmi")));
    }

    #[test]
    fn bad_site_ids_are_refused_by_name() {
        for bad in ["", "-a", "a-", "Site", "a.b", "a_b", "a b", "é", &"a".repeat(64)] {
            match site_name(bad) {
                Err(e @ TrustError::InvalidSiteId { .. }) => {
                    assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}
