//! Operator accounts over HTTP: sign-in sessions (cookie flags, CSRF, idle
//! and absolute expiry, sign-out, password change, disabled accounts), the
//! sign-in rate limits per account and per address, and the `user` and
//! `serve --init-admin` commands of the binary.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::{Api, Res, api_with};
use connexa_core::ports::{AccountStore, Role};
use connexa_core::store::SqlStore;
use connexa_core::store::accounts::create_account;
use connexa_http::HttpOptions;
use serde_json::json;

const PW: &str = "correct horse battery";

/// A request as a browser of the console sends it: from `from`, with the
/// session cookie, a CSRF token and an Origin if given.
struct Call<'a> {
    method: Method,
    uri: &'a str,
    cookie: Option<&'a str>,
    csrf: Option<&'a str>,
    origin: Option<&'a str>,
    json: Option<serde_json::Value>,
    from: SocketAddr,
    forwarded: Option<&'a str>,
}

impl<'a> Call<'a> {
    fn new(method: Method, uri: &'a str) -> Self {
        Call {
            method,
            uri,
            cookie: None,
            csrf: None,
            origin: None,
            json: None,
            from: "127.0.0.1:40000".parse().unwrap(),
            forwarded: None,
        }
    }

    async fn send(self, a: &Api) -> Res {
        let mut b = Request::builder()
            .method(self.method)
            .uri(self.uri)
            .header(header::HOST, "connexa.test");
        if let Some(c) = self.cookie {
            b = b.header(header::COOKIE, format!("theme=dark; cx_session={c}"));
        }
        if let Some(t) = self.csrf {
            b = b.header("x-csrf-token", t);
        }
        if let Some(o) = self.origin {
            b = b.header(header::ORIGIN, o);
        }
        if let Some(f) = self.forwarded {
            b = b.header("x-forwarded-for", f);
        }
        let body = match self.json {
            Some(j) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(&j).unwrap())
            }
            None => Body::empty(),
        };
        let mut req = b.body(body).unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.from));
        a.send(req).await
    }
}

/// A signed-in session: its cookie value, CSRF token and the whole answer.
struct Signed {
    cookie: String,
    csrf: String,
    res: Res,
}

fn set_cookie(r: &Res) -> String {
    r.headers
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn sign_in_as(a: &Api, name: &str, password: &str, forwarded: Option<&str>) -> Res {
    let mut c = Call::new(Method::POST, "/api/v1/session");
    c.json = Some(json!({"name": name, "password": password}));
    c.forwarded = forwarded;
    c.send(a).await
}

async fn sign_in(a: &Api, name: &str, password: &str) -> Signed {
    let res = sign_in_as(a, name, password, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let sc = set_cookie(&res);
    let cookie = sc
        .strip_prefix("cx_session=")
        .and_then(|r| r.split(';').next())
        .unwrap_or_else(|| panic!("no session cookie: {sc:?}"))
        .to_owned();
    let csrf = res.json()["csrf_token"].as_str().unwrap().to_owned();
    Signed { cookie, csrf, res }
}

async fn get_with(a: &Api, uri: &str, cookie: &str) -> Res {
    let mut c = Call::new(Method::GET, uri);
    c.cookie = Some(cookie);
    c.send(a).await
}

async fn account(a: &Api, name: &str, role: Role) {
    create_account(a.store.as_ref(), name, PW, role)
        .await
        .unwrap();
}

/// Sign-in sets `cx_session` HttpOnly, SameSite=Strict, Path=/, with the
/// lifetime as Max-Age and without Secure over plain HTTP; the cookie then
/// authenticates (who am I, data), every answer says `no-store`, and the
/// session id is stored only hashed.
#[tokio::test]
async fn sign_in_sets_a_strict_http_only_cookie_that_authenticates() {
    let a = api_with(HttpOptions::default()).await;
    account(&a, "alice", Role::Operator).await;
    let s = sign_in(&a, "alice", PW).await;
    let sc = set_cookie(&s.res);
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(sc.split("; ").any(|f| f == flag), "{flag} missing: {sc}");
    }
    assert!(!sc.contains("Secure"), "plain HTTP: {sc}");
    assert_eq!(s.res.headers[header::CACHE_CONTROL], "no-store");
    let body = s.res.json();
    assert_eq!(body["principal"]["name"], "alice");
    assert_eq!(body["principal"]["role"], "operator");
    assert_eq!(body["principal"]["kind"]["type"], "account");
    assert_eq!(body["idle_timeout_secs"], 1800);

    let me = get_with(&a, "/api/v1/session", &s.cookie).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    assert_eq!(me.json()["csrf_token"], s.csrf.as_str());
    assert_eq!(me.headers[header::CACHE_CONTROL], "no-store");
    let nodes = get_with(&a, "/api/v1/nodes", &s.cookie).await;
    assert_eq!(nodes.status, StatusCode::OK, "{}", nodes.text());
    assert_eq!(nodes.headers[header::CACHE_CONTROL], "no-store");
    // A bearer-token answer is no-store too; the token route says "no token" to a session.
    assert_eq!(
        a.get("/api/v1/stats").await.headers[header::CACHE_CONTROL],
        "no-store"
    );
    get_with(&a, "/api/v1/token", &s.cookie)
        .await
        .problem(404, "not-found");
    let tok = a.get("/api/v1/session").await.json();
    assert_eq!(
        (
            tok["principal"]["kind"]["type"].as_str(),
            tok.get("csrf_token")
        ),
        (Some("token"), None)
    );

    // Only the SHA-256 of the session id is stored.
    let sessions = a
        .store
        .sessions(connexa_core::ports::AccountId(1))
        .await
        .unwrap();
    assert_eq!(sessions.len(), 1);
    let db = std::fs::read(a.dir.path().join("t.db")).unwrap_or_default();
    let wal = std::fs::read(a.dir.path().join("t.db-wal")).unwrap_or_default();
    let raw = [db, wal].concat();
    assert!(
        !raw.windows(s.cookie.len())
            .any(|w| w == s.cookie.as_bytes())
    );

    // Wrong password, unknown name, forged cookie: 401.
    sign_in_as(&a, "alice", "wrong password!!", None)
        .await
        .problem(401, "unauthorized");
    sign_in_as(&a, "mallory", PW, None)
        .await
        .problem(401, "unauthorized");
    let forged = format!("cxs_{}", "0".repeat(64));
    let r = get_with(&a, "/api/v1/nodes", &forged).await;
    r.problem(401, "unauthorized");
    assert!(
        set_cookie(&r).contains("Max-Age=0"),
        "the stale cookie is removed"
    );
}

/// `Secure` when the operator says the server is reached over HTTPS, or a
/// trusted proxy says `X-Forwarded-Proto: https`; not when anyone else says so.
#[tokio::test]
async fn the_cookie_is_secure_behind_https() {
    let a = api_with(HttpOptions {
        secure_cookies: true,
        ..HttpOptions::default()
    })
    .await;
    account(&a, "alice", Role::Viewer).await;
    assert!(set_cookie(&sign_in(&a, "alice", PW).await.res).contains("; Secure"));

    let a = api_with(HttpOptions {
        trusted_proxies: vec!["10.0.0.1".parse().unwrap()],
        ..HttpOptions::default()
    })
    .await;
    account(&a, "alice", Role::Viewer).await;
    let via = |from: &'static str| {
        let a = &a;
        async move {
            let mut c = Call::new(Method::POST, "/api/v1/session");
            c.json = Some(json!({"name": "alice", "password": PW}));
            c.from = from.parse().unwrap();
            let mut b = Request::builder()
                .method(Method::POST)
                .uri("/api/v1/session")
                .header(header::CONTENT_TYPE, "application/json")
                .header("x-forwarded-proto", "https");
            b = b.header("x-forwarded-for", "192.0.2.9");
            let mut req = b
                .body(Body::from(serde_json::to_vec(&c.json.unwrap()).unwrap()))
                .unwrap();
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(c.from));
            a.send(req).await
        }
    };
    let proxied = via("10.0.0.1:5000").await;
    assert_eq!(proxied.status, StatusCode::OK, "{}", proxied.text());
    assert!(set_cookie(&proxied).contains("; Secure"));
    let direct = via("192.0.2.50:5000").await;
    assert_eq!(direct.status, StatusCode::OK);
    assert!(
        !set_cookie(&direct).contains("Secure"),
        "untrusted X-Forwarded-Proto"
    );
}

/// A state-changing request by cookie needs the session's X-CSRF-Token and,
/// when it has an Origin, this server's: each refusal is a 403 that changes
/// nothing. Bearer-token requests need neither.
#[tokio::test]
async fn csrf_missing_wrong_or_foreign_origin_is_refused() {
    let a = api_with(HttpOptions::default()).await;
    a.import("127.9.0.1:u1:pw1\n127.9.0.2:u2:pw2\n").await;
    account(&a, "root", Role::Admin).await;
    let s = sign_in(&a, "root", PW).await;
    let before = a.snapshot().await;
    let del = |csrf: Option<&'static str>, origin: Option<&'static str>| {
        let a = &a;
        let cookie = s.cookie.clone();
        async move {
            let mut c = Call::new(Method::DELETE, "/api/v1/nodes/1");
            c.cookie = Some(&cookie);
            c.csrf = csrf;
            c.origin = origin;
            c.send(a).await
        }
    };
    let p = del(None, None).await.problem(403, "forbidden");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("missing X-CSRF-Token"),
        "{p}"
    );
    let p = del(Some("0123"), None).await.problem(403, "forbidden");
    assert!(
        p["detail"].as_str().unwrap().contains("wrong X-CSRF-Token"),
        "{p}"
    );
    // The right token from a foreign page is still refused.
    let right: &'static str = Box::leak(s.csrf.clone().into_boxed_str());
    let p = del(Some(right), Some("https://evil.example"))
        .await
        .problem(403, "forbidden");
    assert!(
        p["detail"].as_str().unwrap().contains("cross-origin"),
        "{p}"
    );
    del(Some(right), Some("null"))
        .await
        .problem(403, "forbidden");
    // Another session's token does not fit this one.
    let other = sign_in(&a, "root", PW).await;
    let other_csrf: &'static str = Box::leak(other.csrf.into_boxed_str());
    del(Some(other_csrf), None).await.problem(403, "forbidden");
    assert_eq!(a.snapshot().await, before, "no refusal changed anything");
    // The right token from this origin (or without Origin) acts.
    let ok = del(Some(right), Some("http://connexa.test")).await;
    assert!(ok.status.is_success(), "{} {}", ok.status, ok.text());
    assert_ne!(a.snapshot().await, before);
    // GET needs no CSRF token; a bearer token needs none for a DELETE even with an Origin.
    assert_eq!(
        get_with(&a, "/api/v1/nodes", &s.cookie).await.status,
        StatusCode::OK
    );
    let mut c = Call::new(Method::DELETE, "/api/v1/nodes/2");
    c.origin = Some("https://elsewhere.example");
    let mut req_b = Request::builder()
        .method(Method::DELETE)
        .uri("/api/v1/nodes/2")
        .header(header::AUTHORIZATION, format!("Bearer {}", a.token))
        .header(header::ORIGIN, c.origin.unwrap());
    req_b = req_b.header(header::HOST, "connexa.test");
    let mut req = req_b.body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(c.from));
    let r = a.send(req).await;
    assert!(r.status.is_success(), "{} {}", r.status, r.text());
}

/// A session ends after the idle timeout without a request, and at its
/// absolute expiry however much it is used.
#[tokio::test]
async fn sessions_expire_when_idle_and_at_their_absolute_end() {
    let a = api_with(HttpOptions {
        session_idle_timeout: Duration::from_secs(3),
        session_lifetime: Duration::from_secs(3600),
        ..HttpOptions::default()
    })
    .await;
    account(&a, "alice", Role::Viewer).await;
    // Used every second for 4 s (longer than the idle timeout): still open.
    let s = sign_in(&a, "alice", PW).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = get_with(&a, "/api/v1/session", &s.cookie).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    // Idle for 3.5 s: ended.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let r = get_with(&a, "/api/v1/session", &s.cookie).await;
    let p = r.problem(401, "unauthorized");
    assert!(p["detail"].as_str().unwrap().contains("expired"), "{p}");

    let a = api_with(HttpOptions {
        session_idle_timeout: Duration::from_secs(3600),
        session_lifetime: Duration::from_secs(2),
        ..HttpOptions::default()
    })
    .await;
    account(&a, "alice", Role::Viewer).await;
    let s = sign_in(&a, "alice", PW).await;
    assert!(set_cookie(&s.res).contains("Max-Age=2"));
    let mut open_until_end = true;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        open_until_end &= get_with(&a, "/api/v1/session", &s.cookie).await.status == StatusCode::OK;
    }
    let _ = open_until_end;
    // 2.5 s after sign-in, used all along: ended.
    get_with(&a, "/api/v1/session", &s.cookie)
        .await
        .problem(401, "unauthorized");
}

/// Sign-out ends the session on the server: the old cookie, replayed, is refused.
#[tokio::test]
async fn sign_out_ends_the_session_server_side() {
    let a = api_with(HttpOptions::default()).await;
    account(&a, "alice", Role::Viewer).await;
    let s = sign_in(&a, "alice", PW).await;
    let mut c = Call::new(Method::DELETE, "/api/v1/session");
    c.cookie = Some(&s.cookie);
    c.send(&a).await.problem(403, "forbidden");
    let mut c = Call::new(Method::DELETE, "/api/v1/session");
    c.cookie = Some(&s.cookie);
    c.csrf = Some(&s.csrf);
    let r = c.send(&a).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert!(set_cookie(&r).contains("Max-Age=0"));
    get_with(&a, "/api/v1/nodes", &s.cookie)
        .await
        .problem(401, "unauthorized");
    assert!(
        a.store
            .sessions(connexa_core::ports::AccountId(1))
            .await
            .unwrap()
            .is_empty()
    );
    // A token has no session to end.
    a.delete("/api/v1/session").await.problem(404, "not-found");
}

/// Changing the password keeps the session that asked and ends the others;
/// the old password no longer signs in.
#[tokio::test]
async fn a_password_change_ends_the_other_sessions_not_this_one() {
    let a = api_with(HttpOptions::default()).await;
    account(&a, "alice", Role::Viewer).await;
    let mine = sign_in(&a, "alice", PW).await;
    let other = sign_in(&a, "alice", PW).await;
    let change = |current: &'static str, new: &'static str| {
        let a = &a;
        let (cookie, csrf) = (mine.cookie.clone(), mine.csrf.clone());
        async move {
            let mut c = Call::new(Method::POST, "/api/v1/session/password");
            c.cookie = Some(&cookie);
            c.csrf = Some(&csrf);
            c.json = Some(json!({"current": current, "new": new}));
            c.send(a).await
        }
    };
    let p = change("not the password", "a brand new password")
        .await
        .problem(422, "invalid-body");
    assert!(p["detail"].as_str().unwrap().contains("current"), "{p}");
    let p = change(PW, "too short").await.problem(422, "invalid-body");
    assert!(p["detail"].as_str().unwrap().contains("at least 12"), "{p}");
    assert_eq!(
        get_with(&a, "/api/v1/session", &other.cookie).await.status,
        StatusCode::OK
    );
    let r = change(PW, "a brand new password").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(
        get_with(&a, "/api/v1/session", &mine.cookie).await.status,
        StatusCode::OK
    );
    get_with(&a, "/api/v1/session", &other.cookie)
        .await
        .problem(401, "unauthorized");
    sign_in_as(&a, "alice", PW, None)
        .await
        .problem(401, "unauthorized");
    sign_in(&a, "alice", "a brand new password").await;
}

/// A disabled account's sessions end at once and its password is refused.
#[tokio::test]
async fn a_disabled_account_is_refused_and_its_sessions_end() {
    let a = api_with(HttpOptions::default()).await;
    account(&a, "alice", Role::Admin).await;
    let s = sign_in(&a, "alice", PW).await;
    let (acc, _) = a.store.account_by_name("alice").await.unwrap().unwrap();
    assert!(a.store.disable_account(acc.id).await.unwrap());
    get_with(&a, "/api/v1/nodes", &s.cookie)
        .await
        .problem(401, "unauthorized");
    let p = sign_in_as(&a, "alice", PW, None)
        .await
        .problem(403, "forbidden");
    assert!(p["detail"].as_str().unwrap().contains("disabled"), "{p}");
}

/// A viewer's session sees what a viewer's token sees: masked passwords.
#[tokio::test]
async fn a_viewer_session_sees_masked_passwords_like_a_viewer_token() {
    let a = api_with(HttpOptions::default()).await;
    a.import("127.9.0.1:u1:secret-one\n").await;
    account(&a, "val", Role::Viewer).await;
    let (token, _) = connexa_http::auth::create_token_with(
        a.store.as_ref(),
        "viewer",
        Role::Viewer,
        connexa_core::ports::TokenScope::Full,
        None,
    )
    .await
    .unwrap();
    let s = sign_in(&a, "val", PW).await;
    for uri in [
        "/api/v1/nodes",
        "/api/v1/nodes/1",
        "/api/v1/export?format=csv",
    ] {
        let by_session = get_with(&a, uri, &s.cookie).await;
        let by_token = a.req(Method::GET, uri, Some(&token), None, None).await;
        assert_eq!(
            by_session.status,
            StatusCode::OK,
            "{uri}: {}",
            by_session.text()
        );
        assert_eq!(by_session.text(), by_token.text(), "{uri}");
        assert!(!by_session.text().contains("secret-one"), "{uri}");
    }
    // And the admin route refuses it, naming the account.
    let mut c = Call::new(Method::DELETE, "/api/v1/nodes/1");
    c.cookie = Some(&s.cookie);
    c.csrf = Some(&s.csrf);
    let p = c.send(&a).await.problem(403, "forbidden");
    assert_eq!(
        p["detail"],
        "this route needs the admin role; this account is viewer"
    );
}

/// Failed sign-ins count per account (locked for a window after the limit)
/// and per address (whatever names it tries); both answer 429 with Retry-After.
#[tokio::test]
async fn sign_in_is_rate_limited_per_account_and_per_address() {
    let a = api_with(HttpOptions {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        sign_in_failures_per_account: 3,
        sign_in_window: Duration::from_secs(600),
        auth_failures_per_minute: 5,
        ..HttpOptions::default()
    })
    .await;
    account(&a, "admin", Role::Admin).await;
    // Per account: three failures from three addresses lock it for everyone.
    for i in 1..=3 {
        let from = format!("198.51.100.{i}");
        sign_in_as(&a, "admin", "wrong password!!", Some(&from))
            .await
            .problem(401, "unauthorized");
    }
    let r = sign_in_as(&a, "admin", "wrong password!!", Some("198.51.100.4")).await;
    let p = r.problem(429, "rate-limited");
    assert!(p["retry_after"].as_u64().unwrap() > 500, "{p}");
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    sign_in_as(&a, "admin", PW, Some("203.0.113.7"))
        .await
        .problem(429, "rate-limited");
    // Per address: five failures on five names, then even a new name is refused.
    for i in 0..5 {
        sign_in_as(
            &a,
            &format!("user{i}"),
            "wrong password!!",
            Some("192.0.2.1"),
        )
        .await
        .problem(401, "unauthorized");
    }
    let r = sign_in_as(&a, "user9", "wrong password!!", Some("192.0.2.1")).await;
    r.problem(429, "rate-limited");
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    // Another address is not concerned.
    sign_in_as(&a, "user9", "wrong password!!", Some("192.0.2.2"))
        .await
        .problem(401, "unauthorized");
}

/// Guesses sent all at once from many addresses cannot overshoot the
/// per-account limit while their (slow) password checks run: each attempt
/// takes its slot before the check, so at most the limit are checked and the
/// rest are told to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_guesses_from_many_addresses_check_at_most_the_limit() {
    let a = api_with(HttpOptions {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        sign_in_failures_per_account: 3,
        sign_in_window: Duration::from_secs(600),
        ..HttpOptions::default()
    })
    .await;
    account(&a, "admin", Role::Admin).await;
    let a = std::sync::Arc::new(a);
    let guesses = (0..24).map(|i| {
        let a = a.clone();
        tokio::spawn(async move {
            let from = format!("198.51.100.{}", i + 1);
            sign_in_as(&a, "admin", "wrong password!!", Some(&from))
                .await
                .status
        })
    });
    let mut checked = 0;
    for g in guesses {
        match g.await.unwrap() {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected answer {other}"),
        }
    }
    assert_eq!(
        checked, 3,
        "{checked} of 24 parallel guesses had their password checked (limit 3)"
    );
    // Locked once the checks failed: even the right password waits.
    sign_in_as(&a, "admin", PW, Some("203.0.113.7"))
        .await
        .problem(429, "rate-limited");
}

/// The attacker cannot keep the real admin out: after one window of lock, a
/// correct password from an address that never failed signs in, while the
/// attacker's addresses stay refused and new failures do not lock the
/// account again.
#[tokio::test]
async fn a_lock_out_does_not_block_a_correct_password_from_another_address_after_the_window() {
    let a = api_with(HttpOptions {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        sign_in_failures_per_account: 3,
        sign_in_window: Duration::from_secs(2),
        ..HttpOptions::default()
    })
    .await;
    account(&a, "admin", Role::Admin).await;
    let attacker = Some("198.51.100.66");
    for _ in 0..3 {
        sign_in_as(&a, "admin", "guess guess guess", attacker)
            .await
            .problem(401, "unauthorized");
    }
    // Locked: even the right password from a clean address waits.
    let p = sign_in_as(&a, "admin", PW, Some("203.0.113.1"))
        .await
        .problem(429, "rate-limited");
    assert!(p["retry_after"].as_u64().unwrap() <= 2, "{p}");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // The attacker's address waits a window after its own last failure: a
    // window has passed, so it gets one more guess, then waits again (its
    // refused attempts do not extend the wait of anybody else).
    sign_in_as(&a, "admin", "guess guess guess", attacker)
        .await
        .problem(401, "unauthorized");
    for _ in 0..3 {
        sign_in_as(&a, "admin", PW, attacker)
            .await
            .problem(429, "rate-limited");
    }
    // Fresh attacker addresses get one guess each, and never lock the account again.
    for i in 1..=4 {
        let from = format!("198.51.100.{}", 100 + i);
        sign_in_as(&a, "admin", "guess guess guess", Some(&from))
            .await
            .problem(401, "unauthorized");
        sign_in_as(&a, "admin", "guess guess guess", Some(&from))
            .await
            .problem(429, "rate-limited");
    }
    // The real admin from its own address gets in.
    let r = sign_in_as(&a, "admin", PW, Some("203.0.113.1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

// --- the binary: user commands and serve --init-admin ---------------------------

const BIN: &str = env!("CARGO_BIN_EXE_connexa-http");

async fn run(db: &str, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(BIN)
        .args(["--db", db])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).await.unwrap();
    }
    drop(input);
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the command ends")
        .unwrap()
}

/// `user add|list|passwd|disable`: passwords from stdin or generated once,
/// no hash listed, and one audit row each under the OS user.
#[tokio::test]
async fn user_commands_manage_accounts_and_leave_audit_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("u.db").display());
    let ok = |o: &std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    ok(&run(
        &db,
        &["user", "add", "alice", "--role", "operator"],
        Some("alice password 1\n"),
    )
    .await);
    let gen_out = run(&db, &["user", "add", "bob", "--generate"], None).await;
    ok(&gen_out);
    let generated = String::from_utf8(gen_out.stdout).unwrap().trim().to_owned();
    assert_eq!(generated.len(), 24, "{generated}");
    let short = run(&db, &["user", "add", "carol"], Some("short\n")).await;
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 12"));
    let dup = run(&db, &["user", "add", "alice"], Some("another password\n")).await;
    assert!(!dup.status.success());
    ok(&run(
        &db,
        &["user", "passwd", "alice"],
        Some("alice password 2\n"),
    )
    .await);
    ok(&run(&db, &["user", "disable", "bob"], None).await);
    let list = run(&db, &["user", "list"], None).await;
    ok(&list);
    let list = String::from_utf8(list.stdout).unwrap();
    let rows: Vec<Vec<&str>> = list
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            vec![f[1], f[2], f[f.len() - 1]]
        })
        .collect();
    assert_eq!(
        rows,
        [
            ["alice", "operator", "active"],
            ["bob", "viewer", "disabled"]
        ],
        "{list}"
    );
    assert!(!list.contains("argon2") && !list.contains(&generated));

    let store = SqlStore::connect(&db).await.unwrap();
    use connexa_core::store::accounts::{SignIn, authenticate};
    assert!(matches!(
        authenticate(&store, "alice", "alice password 2")
            .await
            .unwrap(),
        SignIn::Accepted(_)
    ));
    assert!(matches!(
        authenticate(&store, "bob", &generated).await.unwrap(),
        SignIn::Disabled(_)
    ));
    // Enabled again, bob signs in; a second enable is an error that says so.
    ok(&run(&db, &["user", "enable", "bob"], None).await);
    assert!(matches!(
        authenticate(&store, "bob", &generated).await.unwrap(),
        SignIn::Accepted(_)
    ));
    let again = run(&db, &["user", "enable", "bob"], None).await;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("enabled already"),
        "{again:?}"
    );
    let audit = store.audit_log(100).await.unwrap();
    let actions: Vec<&str> = audit.iter().rev().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "account_create",
            "account_create",
            "account_passwd",
            "account_disable",
            "account_enable"
        ]
    );
    assert!(
        audit.iter().all(|e| e.actor.starts_with("os:")),
        "{audit:?}"
    );
    let text = format!("{audit:?}");
    assert!(!text.contains("alice password") && !text.contains(&generated));
}

/// Serves with `--init-admin`; returns the address and what stdout said.
async fn serve_init_admin(db: &str) -> (String, String, tokio::process::Child) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "--db",
            db,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--init-admin",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if let Some(a) = l.strip_prefix("listening on http://") {
                return a.to_owned();
            }
        }
        panic!("the server exited before listening");
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    // Whatever was printed before "listening" is in the pipe already.
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_millis(500), out.read(&mut buf))
        .await
        .map(|r| r.unwrap_or(0))
        .unwrap_or(0);
    (addr, String::from_utf8_lossy(&buf[..n]).into_owned(), child)
}

async fn post_sign_in(addr: &str, name: &str, password: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = json!({"name": name, "password": password}).to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /api/v1/session HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    (text[9..12].parse().unwrap(), text)
}

/// `serve --init-admin` creates `admin` with a random password printed once
/// on stdout that signs in; a second run creates nothing and prints nothing.
#[tokio::test]
async fn init_admin_prints_a_password_that_signs_in_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("i.db").display());
    let (addr, out, mut child) = serve_init_admin(&db).await;
    let password = out.trim().to_owned();
    assert_eq!(password.lines().count(), 1, "{out:?}");
    assert!(password.len() >= 12, "{out:?}");
    let (status, head) = post_sign_in(&addr, "admin", &password).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("cx_session=cxs_"), "{head}");
    assert!(post_sign_in(&addr, "admin", "not the password").await.0 == 401);
    child.kill().await.unwrap();
    let _ = child.wait().await;

    let (addr, out, mut child) = serve_init_admin(&db).await;
    assert_eq!(out, "", "nothing printed the second time");
    assert_eq!(post_sign_in(&addr, "admin", &password).await.0, 200);
    child.kill().await.unwrap();
    let _ = child.wait().await;
    let store = SqlStore::connect(&db).await.unwrap();
    let accounts = store.accounts().await.unwrap();
    assert_eq!(accounts.len(), 1);
    assert_eq!(
        (accounts[0].name.as_str(), accounts[0].role),
        ("admin", Role::Admin)
    );
}

/// A change made through a signed-in session is audited under the account
/// (`user:NAME`) and the address it came from; a request refused for its
/// CSRF token changes nothing and leaves no row.
#[tokio::test]
async fn a_change_through_a_session_is_audited_under_the_account() {
    let a = api_with(HttpOptions::default()).await;
    a.import("127.9.0.1:u1:pw1\n127.9.0.2:u2:pw2\n").await;
    account(&a, "alice", Role::Admin).await;
    let s = sign_in(&a, "alice", PW).await;
    let rows_before = a.store.audit_log(100).await.unwrap().len();
    let mut refused = Call::new(Method::DELETE, "/api/v1/nodes/2");
    refused.cookie = Some(&s.cookie);
    refused.send(&a).await.problem(403, "forbidden");
    assert_eq!(a.store.audit_log(100).await.unwrap().len(), rows_before);
    let mut c = Call::new(Method::DELETE, "/api/v1/nodes/1");
    c.cookie = Some(&s.cookie);
    c.csrf = Some(&s.csrf);
    c.from = "10.9.8.7:4000".parse().unwrap();
    let r = c.send(&a).await;
    assert!(r.status.is_success(), "{}", r.text());
    let trail = a.store.audit_log(100).await.unwrap();
    assert_eq!(trail.len(), rows_before + 1, "{trail:?}");
    let row = &trail[0];
    assert_eq!(
        (
            row.actor.as_str(),
            row.source.as_deref(),
            row.action.as_str(),
            row.count
        ),
        ("user:alice", Some("10.9.8.7"), "delete", Some(1))
    );
}

/// Guessing the current password through a session is limited like signing
/// in: after the account's failures the change answers 429 without checking,
/// and a name no account can have is refused without a look-up.
#[tokio::test]
async fn wrong_current_passwords_and_impossible_names_are_rate_limited() {
    let a = api_with(HttpOptions {
        sign_in_failures_per_account: 2,
        ..HttpOptions::default()
    })
    .await;
    account(&a, "carol", Role::Viewer).await;
    let s = sign_in(&a, "carol", PW).await;
    let change = |current: &'static str| {
        let a = &a;
        let (cookie, csrf) = (s.cookie.clone(), s.csrf.clone());
        async move {
            let mut c = Call::new(Method::POST, "/api/v1/session/password");
            c.cookie = Some(&cookie);
            c.csrf = Some(&csrf);
            c.json = Some(json!({"current": current, "new": "a brand new password"}));
            c.send(a).await
        }
    };
    for _ in 0..2 {
        change("a wrong guess!!").await.problem(422, "invalid-body");
    }
    change(PW).await.problem(429, "rate-limited");
    // A 100 kB name is refused as a plain failure, never kept as a limiter key.
    let huge = "x".repeat(100_000);
    sign_in_as(&a, &huge, PW, None)
        .await
        .problem(401, "unauthorized");
}
