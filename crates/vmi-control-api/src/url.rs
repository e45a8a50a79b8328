//! URL helpers shared by the client, the server and the sites.

/// The terminal WebSocket URL of a site's base URL (`http://h:p` → `ws://h:p/v1/terminal`, `https` → `wss`).
pub fn ws_url(site_url: &str) -> String {
    let base = site_url.trim_end_matches('/');
    let base = match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}"),
        None => format!("ws://{}", base.strip_prefix("http://").unwrap_or(base)),
    };
    format!("{base}/v1/terminal")
}

/// Percent-encodes a path segment or query value (everything but RFC 3986 unreserved characters).
pub fn segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_url_maps_scheme_and_appends_path() {
        assert_eq!(ws_url("http://127.0.0.1:9000"), "ws://127.0.0.1:9000/v1/terminal");
        assert_eq!(ws_url("http://127.0.0.1:9000/"), "ws://127.0.0.1:9000/v1/terminal");
        assert_eq!(ws_url("https://edge.example"), "wss://edge.example/v1/terminal");
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("site-a.b_c~"), "site-a.b_c~");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
        assert_eq!(segment("é"), "%C3%A9");
    }
}
