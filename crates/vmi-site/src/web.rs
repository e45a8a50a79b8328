//! The browser terminal's files (`web/`): the page, its style sheet, its ES modules and its
//! service worker, embedded in the binary and served as they are (the browser loads the
//! modules itself, no build step); and `/offline-phone.wasm`, the module a page runs a
//! checked-out phone with (`vmi-browser-phone`, built for wasm32 with the phone image).

use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use vmi_openapi::{ApiRouter, Op};

/// One embedded file: the URL path it is served at, its content type and its text.
struct WebFile {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
/// ES modules must come with a JavaScript type, or the browser refuses to run them.
const JS: &str = "text/javascript; charset=utf-8";
/// What makes the page installable as a web app.
const MANIFEST: &str = "application/manifest+json";
const SVG: &str = "image/svg+xml";
/// `WebAssembly.instantiateStreaming` wants this type.
const WASM: &str = "application/wasm";

macro_rules! web_file {
    ($path:literal, $file:literal, $content_type:expr) => {
        WebFile { path: $path, content_type: $content_type, body: include_str!(concat!("../web/", $file)) }
    };
}

/// Every file the page loads. `web/package.json` is not here: it only tells node (the
/// unit tests) that the `.js` files are ES modules.
const FILES: &[WebFile] = &[
    web_file!("/", "index.html", HTML),
    web_file!("/style.css", "style.css", CSS),
    web_file!("/manifest.webmanifest", "manifest.webmanifest", MANIFEST),
    web_file!("/icon.svg", "icon.svg", SVG),
    web_file!("/terminal.js", "terminal.js", JS),
    web_file!("/api.js", "api.js", JS),
    web_file!("/codec.js", "codec.js", JS),
    web_file!("/display.js", "display.js", JS),
    web_file!("/follow-hint.js", "follow-hint.js", JS),
    web_file!("/format.js", "format.js", JS),
    web_file!("/history.js", "history.js", JS),
    web_file!("/input.js", "input.js", JS),
    web_file!("/kept-inputs.js", "kept-inputs.js", JS),
    web_file!("/lz4.js", "lz4.js", JS),
    web_file!("/map.js", "map.js", JS),
    web_file!("/map-latency.js", "map-latency.js", JS),
    web_file!("/map-moves.js", "map-moves.js", JS),
    web_file!("/map-picture.js", "map-picture.js", JS),
    web_file!("/notifications.js", "notifications.js", JS),
    web_file!("/pairing.js", "pairing.js", JS),
    web_file!("/ping.js", "ping.js", JS),
    web_file!("/protocol-error.js", "protocol-error.js", JS),
    web_file!("/screen.js", "screen.js", JS),
    web_file!("/session.js", "session.js", JS),
    web_file!("/sleep.js", "sleep.js", JS),
    web_file!("/status.js", "status.js", JS),
    web_file!("/storage.js", "storage.js", JS),
    web_file!("/offline.js", "offline.js", JS),
    web_file!("/offline-phone.js", "offline-phone.js", JS),
    web_file!("/sw.js", "sw.js", JS),
];

/// Where the page's offline module is served.
const OFFLINE_PHONE_PATH: &str = "/offline-phone.wasm";

/// `api` with a route serving each of the browser terminal's files.
pub fn routes<S: Clone + Send + Sync + 'static>(api: ApiRouter<S>) -> ApiRouter<S> {
    FILES
        .iter()
        .fold(api, |api, file| {
            let op = Op::get("A file of the browser terminal's page").answers(200, Some(file.content_type), "the file");
            api.route(file.path, get(serve), [op])
        })
        .route(
            OFFLINE_PHONE_PATH,
            get(offline_phone),
            [Op::get("The module a page runs a checked-out phone with").answers(200, Some(WASM), "the module")],
        )
}

/// `GET /offline-phone.wasm`.
async fn offline_phone() -> Response {
    ([(header::CONTENT_TYPE, WASM)], vmi_phone_image::BROWSER_PHONE_WASM).into_response()
}

/// The embedded file at `uri`'s path.
async fn serve(uri: Uri) -> Response {
    match FILES.iter().find(|f| f.path == uri.path()) {
        Some(f) => ([(header::CONTENT_TYPE, f.content_type)], f.body).into_response(),
        // only routed paths get here
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    fn served_name(f: &WebFile) -> &str {
        if f.path == "/" { "index.html" } else { &f.path[1..] }
    }

    /// A module added to web/ but not to FILES would load under node and fail in the
    /// browser: the table holds exactly the page's files.
    #[test]
    fn every_page_file_in_web_is_served_and_nothing_else() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
            .expect("read web/")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| [".html", ".css", ".js", ".webmanifest", ".svg"].iter().any(|ext| n.ends_with(ext)))
            .collect();
        let served: BTreeSet<String> = FILES.iter().map(|f| served_name(f).to_owned()).collect();
        assert_eq!(served, on_disk);
        for f in FILES {
            let on_disk = std::fs::read_to_string(dir.join(served_name(f))).expect("read file");
            assert_eq!(f.body, on_disk, "{} embeds its file", f.path);
        }
    }

    /// Every relative import of every module names a served module.
    #[test]
    fn every_import_is_served() {
        let mut imports = 0;
        for f in FILES.iter().filter(|f| f.content_type == JS) {
            for line in f.body.lines().filter(|l| l.starts_with("import ") || l.starts_with("export {")) {
                let Some((_, from)) = line.split_once(" from './") else { continue };
                let name = from.trim_end_matches("';");
                assert!(FILES.iter().any(|g| g.path == format!("/{name}")), "{} imports {name}", f.path);
                imports += 1;
            }
        }
        assert!(imports > 20, "found {imports} imports: the entry imports every concern");
    }

    #[tokio::test]
    async fn modules_are_javascript_and_the_page_is_html() {
        for (path, want) in [("/terminal.js", JS), ("/session.js", JS), ("/", HTML), ("/style.css", CSS)] {
            let response = serve(Uri::from_static(path)).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], want, "{path}");
        }
        assert_eq!(serve(Uri::from_static("/package.json")).await.status(), StatusCode::NOT_FOUND);
        let wasm = offline_phone().await;
        assert_eq!(wasm.headers()[header::CONTENT_TYPE], WASM);
    }
}
