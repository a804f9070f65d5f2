//! The web console: a single page (plain HTML, CSS and JavaScript modules, no
//! build step) embedded in the binary and served at `/`. It holds no data and
//! no logic of its own beyond presentation: everything it shows comes from the
//! REST API under `/api/v1`, with the Bearer token the operator pastes in.
//!
//! Every response carries a strict Content-Security-Policy (scripts, styles,
//! images and connections from this origin only; no inline script or style, no
//! framing, no form posts), `X-Content-Type-Options: nosniff`, and an `ETag` so
//! browsers revalidate cheaply (`Cache-Control: no-cache`).
//!
//! ```
//! let app: axum::Router = connexa_http::console::router();
//! ```

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The Content-Security-Policy of every console response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
manifest-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: &'static str,
}

/// FNV-1a (64 bit) of a file, computed at compile time, for its `ETag`.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `"` + 16 hex digits + `"`, at compile time.
const fn etag_bytes(hash: u64) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = HEX[((hash >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {{
        const BODY: &[u8] = include_bytes!(concat!("../console/", $name));
        const ETAG: [u8; 18] = etag_bytes(fnv1a(BODY));
        Asset {
            name: $name,
            content_type: $content_type,
            body: BODY,
            etag: match std::str::from_utf8(&ETAG) {
                Ok(s) => s,
                Err(_) => panic!("etag is ASCII"),
            },
        }
    }};
}

/// The console's files. `index.html` is served at `/`, the others at `/assets/NAME`.
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
];

/// The console's routes: `GET /` (the page) and `GET /assets/{name}`. Stateless,
/// so it merges into any application router; none of it needs a token (the page
/// holds no data; the API it calls does).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/assets/{name}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    if name == "index.html" {
        return not_found();
    }
    serve(&name, &headers)
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return not_found();
    };
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == asset.etag
        });
    let mut headers = security_headers();
    headers.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    (StatusCode::OK, headers, asset.body).into_response()
}

fn not_found() -> Response {
    let mut headers = security_headers();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    (StatusCode::NOT_FOUND, headers, "not found\n").into_response()
}

fn security_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    h
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get(path: &str, if_none_match: Option<&str>) -> axum::response::Response {
        let mut req = Request::get(path);
        if let Some(tag) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, tag);
        }
        router::<()>()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    fn h(res: &axum::response::Response, name: header::HeaderName) -> &str {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[tokio::test]
    async fn index_is_html_with_a_strict_csp() {
        let res = get("/", None).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(h(&res, header::CONTENT_TYPE), "text/html; charset=utf-8");
        let csp = h(&res, header::CONTENT_SECURITY_POLICY);
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(h(&res, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(h(&res, header::X_FRAME_OPTIONS), "DENY");
        let body = res.into_body().collect().await.expect("body").to_bytes();
        let text = std::str::from_utf8(&body).expect("utf-8");
        assert!(text.starts_with("<!doctype html>"));
        assert!(text.contains(r#"<script type="module" src="/assets/app.js"></script>"#));
    }

    #[tokio::test]
    async fn every_asset_has_its_content_type() {
        for (path, ty) in [
            ("/assets/app.js", "text/javascript; charset=utf-8"),
            ("/assets/api.js", "text/javascript; charset=utf-8"),
            ("/assets/app.css", "text/css; charset=utf-8"),
            ("/assets/favicon.svg", "image/svg+xml"),
            ("/index.html", "text/html; charset=utf-8"),
        ] {
            let res = get(path, None).await;
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            assert_eq!(h(&res, header::CONTENT_TYPE), ty, "{path}");
            assert!(
                !h(&res, header::CONTENT_SECURITY_POLICY).is_empty(),
                "{path}"
            );
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let index = ASSETS
            .iter()
            .find(|a| a.name == "index.html")
            .expect("index");
        let text = std::str::from_utf8(index.body).expect("utf-8");
        // Every <script> has a src; no style attributes or <style> blocks; no
        // inline event handlers — the CSP would block them all.
        for (i, _) in text.match_indices("<script") {
            let tag = &text[i..i + text[i..].find('>').expect("tag end")];
            assert!(tag.contains(" src=\"/assets/"), "inline script: {tag}");
        }
        assert!(!text.contains("<style"), "inline <style>");
        assert!(!text.contains(" style=\""), "style attribute");
        assert!(!text.contains(" onclick="), "inline handler");
        for a in ASSETS {
            let body = std::str::from_utf8(a.body).expect("utf-8");
            assert!(!body.contains("innerHTML"), "{} writes innerHTML", a.name);
            assert!(!body.contains("eval("), "{} uses eval", a.name);
        }
    }

    #[tokio::test]
    async fn unknown_or_traversing_paths_are_404() {
        for path in [
            "/assets/nope.js",
            "/assets/..%2fCargo.toml",
            "/assets/index.html",
            "/assets/",
            "/assets/%2e%2e%2fsrc%2fmain.rs",
        ] {
            let res = get(path, None).await;
            assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[tokio::test]
    async fn a_matching_etag_gets_304_and_another_gets_the_body() {
        let first = get("/assets/app.js", None).await;
        let tag = h(&first, header::ETAG).to_owned();
        assert_eq!(tag.len(), 18, "{tag}");
        assert_eq!(h(&first, header::CACHE_CONTROL), "no-cache");
        let again = get("/assets/app.js", Some(&tag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(
            again
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
                .is_empty()
        );
        let weak = get("/assets/app.js", Some(&format!("\"x\", W/{tag}"))).await;
        assert_eq!(weak.status(), StatusCode::NOT_MODIFIED);
        let other = get("/assets/app.js", Some("\"0000000000000000\"")).await;
        assert_eq!(other.status(), StatusCode::OK);
        // Different files have different tags.
        let css = get("/assets/app.css", None).await;
        assert_ne!(h(&css, header::ETAG), tag);
    }
}
