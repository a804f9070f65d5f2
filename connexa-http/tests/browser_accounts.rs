//! Signing in with a name and a password, in a real headless Chromium
//! against the real `connexa-http` binary: the console acts through the
//! session cookie (with its CSRF token), keeps no secret in storage, signs
//! out on the server, and the back button then shows no node data.
//!
//! Every test name contains `browser` (tests/run.sh skips them where no
//! browser can be provisioned).

#[path = "browser/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::time::Duration;

use harness::{Browser, Server, screenshot_dir};
use serde_json::json;

const T: Duration = Duration::from_secs(30);
const PW: &str = "a long console password";

/// Sets a form field's value as typed text would.
async fn set_value(b: &Browser, css: &str, value: &str) {
    b.js(
        "const el = document.querySelector(arguments[0]); el.value = arguments[1]; \
         el.dispatchEvent(new Event('input', {bubbles: true}));",
        vec![json!(css), json!(value)],
    )
    .await;
}

/// `true` while any node data is in the page (rows, or the node's address in its text).
const PRIVATE: &str = "return document.querySelectorAll('#rows tr[data-id]').length > 0 \
     || document.body.innerText.includes('127.77.0.1')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_sign_in_with_a_password_act_sign_out_and_back_shows_nothing() {
    let server = Server::start();
    server
        .api_json(
            "POST",
            "/nodes",
            Some(json!({"ip": "127.77.0.1", "login": "first", "password": "node-secret"})),
        )
        .await;
    // The account, made with the CLI (password on stdin).
    let db = server_db(&server);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_connexa-http"))
        .args(["--db", &db, "user", "add", "ops", "--role", "admin"])
        .env_remove("CONNEXA_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("user add");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{PW}").expect("write the password");
    }
    let out = child.wait_with_output().expect("user add ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let b = Browser::start().await;
    b.goto(&format!("{}/", server.base)).await;
    b.wait_js(
        "the sign-in form",
        T,
        "return !!document.querySelector('#account-name:focus')",
    )
    .await;
    // A wrong password is refused on the page.
    b.type_into("#account-name", "ops").await;
    b.type_into("#account-password", "not the password at all")
        .await;
    b.click("#password-form button[type=submit]").await;
    b.wait_js(
        "the refusal",
        T,
        "return document.querySelector('#password-signin-error').textContent",
    )
    .await;
    assert_eq!(
        b.text("#password-signin-error").await,
        "Wrong name or password."
    );
    b.type_into("#account-password", PW).await;
    b.click("#password-form button[type=submit]").await;
    b.wait_js(
        "the console with the node row",
        T,
        "return document.documentElement.dataset.role === 'admin' \
         && !!document.querySelector('#rows tr[data-id]')",
    )
    .await;
    // No secret in storage: the session is an HttpOnly cookie the page cannot read.
    let stored = b
        .js(
            "return [localStorage.length, sessionStorage.length, document.cookie]",
            vec![],
        )
        .await;
    assert_eq!(stored, json!([0, 0, ""]), "{stored}");

    // Act: add a node through the session (a POST: needs the CSRF token).
    b.click("#add-node-open").await;
    b.wait_js(
        "the add-node dialog",
        T,
        "return document.querySelector('#add-node').open",
    )
    .await;
    for (name, value) in [
        ("ip", "127.77.0.2"),
        ("login", "second"),
        ("password", "pw2"),
    ] {
        set_value(&b, &format!("#add-node-form [name={name}]"), value).await;
    }
    b.click("#add-node-submit").await;
    b.wait_js(
        "the dialog closed",
        T,
        "return !document.querySelector('#add-node').open",
    )
    .await;
    let nodes = server.get("/nodes?limit=10").await;
    assert_eq!(nodes["total"], 2, "{nodes}");
    b.screenshot(&screenshot_dir(), "console-signed-in-with-password")
        .await;

    // A second page of the same session (a history entry showing node data).
    b.goto(&format!("{}/index.html", server.base)).await;
    b.wait_js(
        "the console resumed from the cookie",
        T,
        "return !!document.querySelector('#rows tr[data-id]')",
    )
    .await;
    // Sign out: the session ends on the server.
    b.click("#sign-out").await;
    b.wait_js(
        "the sign-in form after sign-out",
        T,
        "return !document.querySelector('#signin').hidden \
         && document.querySelector('#console').hidden",
    )
    .await;
    let (status, sessions) = (
        b.js(
            "return fetch('/api/v1/session').then(r => r.status)",
            vec![],
        )
        .await,
        count_sessions(&db).await,
    );
    assert_eq!((status, sessions), (json!(401), 0));

    // Back: the earlier page shows no node data (reloaded, or from the
    // page cache and cleared before anything shows it as signed in).
    b.js("history.back()", vec![]).await;
    b.wait_js(
        "the earlier page, signed out",
        T,
        "return location.pathname === '/' && document.readyState === 'complete' \
         && !document.querySelector('#signin').hidden",
    )
    .await;
    b.wait_js(
        "no node data",
        T,
        &format!("return !({})", PRIVATE.trim_start_matches("return ")),
    )
    .await;
    // And it stays so (nothing reappears from a late request).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.js(PRIVATE, vec![]).await, json!(false));
    b.close().await;
}

/// The server's database URL (the harness keeps it private; it is the only
/// `sqlite://` argument of its command line).
fn server_db(server: &Server) -> String {
    server.db_url()
}

async fn count_sessions(db: &str) -> usize {
    use connexa_core::ports::{AccountId, AccountStore};
    let store = connexa_core::store::SqlStore::connect(db).await.unwrap();
    store.sessions(AccountId(1)).await.unwrap().len()
}
