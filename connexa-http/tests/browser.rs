//! The web console in a real headless Chromium (Debian's `chromium` +
//! `chromium-driver`, installed by tests/run.sh), driven over WebDriver.
//!
//! Every test name contains `browser`: tests/run.sh skips them (`--skip browser`)
//! where no browser can be provisioned, and fails in CI. Screenshots go to
//! `$CONNEXA_SCREENSHOTS` (`CONNEXA_SCREENSHOTS=docs` refreshes the committed
//! ones) or a temporary directory.

#[path = "browser/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{Browser, screenshot_dir, serve};
use serde_json::json;

const T: Duration = Duration::from_secs(15);

/// The page alone (no API behind it): it loads its modules under the strict CSP,
/// the CSP really blocks an injected inline script, the sign-in form works from
/// the keyboard, and nothing overflows at a phone's width.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_console_page_loads_under_a_strict_csp() {
    let addr = serve(connexa_http::console::router()).await;
    let b = Browser::start().await;
    b.goto(&format!("http://{addr}/")).await;

    // app.js ran: it focused the token field.
    b.wait_js(
        "the token field to have focus",
        T,
        "return document.activeElement && document.activeElement.id === 'token'",
    )
    .await;
    assert_eq!(b.client.title().await.expect("title"), "Connexa console");
    assert_eq!(
        b.js("return document.documentElement.dataset.cspViolations || '0'", vec![])
            .await,
        json!("0"),
        "the page's own files violate its CSP"
    );

    // An empty token is refused by the page itself (Enter submits the form).
    b.type_into("#token", "\n").await;
    b.wait_js(
        "the empty-token message",
        T,
        "return document.querySelector('#signin-error').textContent",
    )
    .await;
    assert_eq!(b.text("#signin-error").await, "Paste a token.");

    // The CSP is enforced: an inline script added to the page does not run.
    let ran = b
        .js(
            "const s = document.createElement('script'); s.textContent = 'window.__inline = 1'; \
             document.body.append(s); return window.__inline === 1",
            vec![],
        )
        .await;
    assert_eq!(ran, json!(false), "an inline script ran: the CSP is not enforced");
    b.wait_js(
        "the CSP violation to be reported",
        T,
        "return document.documentElement.dataset.cspViolations === '1'",
    )
    .await;

    // Phone width: nothing wider than the viewport.
    b.client.set_window_size(390, 844).await.expect("resize");
    b.goto(&format!("http://{addr}/")).await;
    b.wait_js("the sign-in form", T, "return !!document.querySelector('#token:focus')")
        .await;
    let overflow = b
        .js(
            "return document.documentElement.scrollWidth - window.innerWidth",
            vec![],
        )
        .await;
    assert!(
        overflow.as_i64().is_some_and(|o| o <= 0),
        "the page is wider than a phone: {overflow}"
    );
    b.screenshot(&screenshot_dir(), "console-signin-phone").await;
    b.close().await;
}
