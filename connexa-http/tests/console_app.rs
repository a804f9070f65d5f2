//! The console inside the whole application (`connexa_http::app`): served at
//! `/` without a token, while everything else keeps its authentication.

mod common;

use axum::http::{Method, StatusCode, header};

#[tokio::test]
async fn the_console_is_public_and_the_api_is_not() {
    let api = common::api().await;
    for path in ["/", "/assets/app.js", "/assets/api.js", "/assets/app.css"] {
        let res = api.req(Method::GET, path, None, None, None).await;
        assert_eq!(res.status, StatusCode::OK, "{path}");
        let csp = res
            .headers
            .get(header::CONTENT_SECURITY_POLICY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert_eq!(
            csp,
            connexa_http::console::CONTENT_SECURITY_POLICY,
            "{path}"
        );
    }
    // The API and the metrics still need a token.
    for path in ["/api/v1/nodes", "/api/v1/stats", "/metrics"] {
        let res = api.req(Method::GET, path, None, None, None).await;
        assert_eq!(
            res.status,
            StatusCode::UNAUTHORIZED,
            "{path}: {}",
            res.text()
        );
    }
    // The token the page sends works for the page's first call.
    assert_eq!(api.get("/api/v1/stats").await.status, StatusCode::OK);
}

#[tokio::test]
async fn other_paths_and_methods_keep_the_api_errors() {
    let api = common::api().await;
    // Unknown paths outside the console are the API's 404 problem, not the page.
    let res = api.req(Method::GET, "/nodes", None, None, None).await;
    res.problem(404, "not-found");
    let res = api
        .req(Method::GET, "/assets/../Cargo.toml", None, None, None)
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    // The console is read-only.
    let res = api.req(Method::POST, "/", None, None, None).await;
    assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED, "{}", res.text());
}
