//! The operator dashboard: a page the control service serves (`GET /dashboard`, its files under
//! `/dashboard/{file}`), anyone may load it; everything it shows it reads with the operator's token, which the
//! operator gives the page at login, from the control service's own API (`/v1/sites`, `/v1/migrations`,
//! `/v1/tenants`, `/metrics`, ...). Its files are embedded in the binary: no build step, nothing fetched elsewhere.
//!
//! The files (`crates/vmi-control/dashboard/`): `index.html`, `dashboard.css`, and plain ES modules: `app.js`
//! (sign-in, polling, the live list, the tables, a phone's history), `api.js` (the token in sessionStorage,
//! `fetch` with it), `map.js` (the sites in SVG from their coordinates: no map tiles), `metrics.js` (OpenMetrics
//! parsing and the series the graphs draw), `charts.js` (the graphs). The graphs are drawn with uPlot 1.6.32 (MIT,
//! <https://github.com/leeoniya/uPlot>), vendored unchanged as `dashboard/vendor/uPlot.iife.min.js` and
//! `uPlot.min.css` from the npm package `uplot@1.6.32`, its licence beside them and served as
//! `uPlot-LICENSE.txt`. Everything fits the services' Content-Security-Policy (`vmi_trust::browser`): scripts
//! and styles from this origin only, no inline script, style attribute or `eval`.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// One embedded file: its name under `/dashboard/`, its media type, its bytes.
struct File {
    name: &'static str,
    media: &'static str,
    body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// `File` `$name` of type `$media`, from `dashboard/$path`.
macro_rules! file {
    ($name:literal, $media:expr, $path:literal) => {
        File { name: $name, media: $media, body: include_bytes!(concat!("../dashboard/", $path)) }
    };
}

/// The dashboard's files (flat names: the route takes one path segment).
const FILES: &[File] = &[
    file!("index.html", HTML, "index.html"),
    file!("dashboard.css", CSS, "dashboard.css"),
    file!("app.js", JS, "app.js"),
    file!("api.js", JS, "api.js"),
    file!("map.js", JS, "map.js"),
    file!("metrics.js", JS, "metrics.js"),
    file!("charts.js", JS, "charts.js"),
    file!("uPlot.iife.min.js", JS, "vendor/uPlot.iife.min.js"),
    file!("uPlot.min.css", CSS, "vendor/uPlot.min.css"),
    file!("uPlot-LICENSE.txt", TEXT, "vendor/uPlot-LICENSE.txt"),
];

/// `GET /dashboard`: the page.
pub(crate) async fn index() -> Response {
    file(Path("index.html".to_owned())).await
}

/// `GET /dashboard/{file}`: one of its files, or 404.
pub(crate) async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|f| f.name == name) {
        Some(f) => ([(header::CONTENT_TYPE, f.media), (header::CACHE_CONTROL, "no-cache")], f.body).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no dashboard file {name}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_has_a_media_type_of_its_kind() {
        for f in FILES {
            let expected = match f.name.rsplit('.').next() {
                Some("html") => HTML,
                Some("js") => JS,
                Some("css") => CSS,
                Some("txt") => TEXT,
                other => panic!("{}: no media type for {other:?}", f.name),
            };
            assert_eq!(f.media, expected, "{}", f.name);
            assert!(!f.body.is_empty(), "{}", f.name);
        }
    }

    fn text(name: &str) -> &'static str {
        let f = FILES.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("{name} is not served"));
        std::str::from_utf8(f.body).expect("text")
    }

    /// The names after each `marker` up to the next quote: what a file refers to.
    fn references<'a>(body: &'a str, marker: &str) -> Vec<&'a str> {
        body.split(marker).skip(1).filter_map(|rest| rest.split(['\'', '"']).next()).collect()
    }

    #[test]
    fn every_file_the_page_and_its_modules_load_is_served() {
        let page = references(text("index.html"), "/dashboard/");
        assert!(page.len() >= 4, "{page:?}");
        let mut wanted: Vec<&str> = page;
        for f in FILES.iter().filter(|f| f.name.ends_with(".js") && !f.name.starts_with("uPlot")) {
            wanted.extend(references(text(f.name), "from './"));
        }
        for name in wanted {
            assert!(FILES.iter().any(|f| f.name == name), "{name} is referred to but not served");
        }
    }

    /// The Content-Security-Policy allows scripts and styles from the origin only: anything inline would not run.
    #[test]
    fn nothing_inline_that_the_content_security_policy_would_block() {
        let page = text("index.html");
        for tag in page.split("<script").skip(1) {
            assert!(tag.split('>').next().is_some_and(|attrs| attrs.contains("src=")), "inline script: <script{tag}");
        }
        assert!(!page.contains("<style") && !page.contains(" style="), "inline style in index.html");
        let handler = page.split_whitespace().any(|w| w.starts_with("on") && w.contains('='));
        assert!(!handler, "an inline event handler in index.html");
        for f in FILES.iter().filter(|f| f.name.ends_with(".js") && !f.name.starts_with("uPlot")) {
            let js = text(f.name);
            for banned in ["eval(", "new Function", "innerHTML", "setAttribute('style'", "insertAdjacentHTML"] {
                assert!(!js.contains(banned), "{} uses {banned}", f.name);
            }
        }
    }

    #[test]
    fn the_vendored_chart_library_is_the_version_named_with_its_licence() {
        assert!(text("uPlot.iife.min.js").starts_with("/*! https://github.com/leeoniya/uPlot (v1.6.32) */"));
        assert!(text("uPlot-LICENSE.txt").contains("The MIT License"));
        assert!(text("index.html").contains("uPlot 1.6.32"));
    }
}
