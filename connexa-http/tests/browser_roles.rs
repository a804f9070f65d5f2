//! The console follows the token's role, in a real headless Chromium against
//! the real `connexa-http` binary: a viewer sees no action it may not use
//! (tests, services, import, add, edit, delete, password reveal), an operator
//! sees the tests but neither delete nor reveal, an admin sees everything,
//! the audit trail included.
//! The server refuses those actions anyway (tests/roles.rs); this is the page.
//!
//! Every test name contains `browser` (tests/run.sh skips them where no
//! browser can be provisioned).

#[path = "browser/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::time::Duration;

use harness::{Browser, Server};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

/// Signs in with `token` (signing out first if signed in) and waits until
/// the page knows the role and shows the node row.
async fn sign_in_as(b: &Browser, server: &Server, token: &str, role: &str) {
    b.goto(&format!("{}/", server.base)).await;
    b.js("sessionStorage.clear(); location.reload();", vec![])
        .await;
    b.wait_js(
        "the sign-in form",
        T,
        "return !!document.querySelector('#account-name:focus')",
    )
    .await;
    b.type_into("#token", token).await;
    b.click("#signin-form button[type=submit]").await;
    b.wait_js(
        "the console with the role and the node row",
        T,
        &format!(
            "return document.documentElement.dataset.role === '{role}' \
             && !!document.querySelector('#nodes tbody tr[data-id]')"
        ),
    )
    .await;
}

/// Which of these controls are displayed (rendered, not `display: none`).
async fn shown(b: &Browser, selectors: &[&str]) -> Vec<(String, bool)> {
    let v = b
        .js(
            "return arguments[0].map(s => { const e = document.querySelector(s); \
             return [s, !!e && getComputedStyle(e).display !== 'none' && !e.closest('[hidden]')]; });",
            vec![json!(selectors)],
        )
        .await;
    serde_json::from_value(v).expect("pairs")
}

const OPERATOR: [&str; 6] = [
    "#import-open",
    "#add-node-open",
    "[data-action=light]",
    "[data-action=service_start]",
    "[data-action=service_stop]",
    "#node-edit",
];
const ADMIN: [&str; 3] = [
    "[data-action=delete]",
    "#nodes tbody [data-reveal]",
    "#audit",
];
const EVERYONE: [&str; 3] = ["#refresh", "[data-action=export]", "#sign-out"];

fn expect(operator: bool, admin: bool) -> Vec<(String, bool)> {
    OPERATOR
        .iter()
        .map(|s| (s.to_string(), operator))
        .chain(ADMIN.iter().map(|s| (s.to_string(), admin)))
        .chain(EVERYONE.iter().map(|s| (s.to_string(), true)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_console_hides_what_the_role_may_not_do() {
    let server = Server::start();
    let (status, body) = server
        .api_json(
            "POST",
            "/nodes",
            Some(json!({"ip": "127.9.0.1", "login": "u", "password": "pw"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let viewer = server.create_token("dash", "viewer");
    let operator = server.create_token("ops", "operator");
    let b = Browser::start().await;
    let all: Vec<&str> = OPERATOR
        .iter()
        .chain(&ADMIN)
        .chain(&EVERYONE)
        .copied()
        .collect();
    for (token, role, operator_ok, admin_ok) in [
        (viewer.as_str(), "viewer", false, false),
        (operator.as_str(), "operator", true, false),
        (server.token.as_str(), "admin", true, true),
    ] {
        sign_in_as(&b, &server, token, role).await;
        let mut got = shown(&b, &all).await;
        let mut want = expect(operator_ok, admin_ok);
        got.sort();
        want.sort();
        assert_eq!(got, want, "as {role}");
    }
    // The admin's audit panel lists the node added over the API, by its token.
    b.wait_js(
        "the audit row of the node added",
        T,
        "return [...document.querySelectorAll('#audit-rows tr[data-action=import]')]\
         .some(r => r.dataset.actor.startsWith('token:'))",
    )
    .await;
    b.close().await;
}
