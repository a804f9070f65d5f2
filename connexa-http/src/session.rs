//! Sign-in sessions of operator accounts (the console's way in; API clients
//! use bearer tokens).
//!
//! * `POST /api/v1/session` with `{name, password}` checks the password
//!   (Argon2id, see connexa-core's `store::accounts`), opens a session and
//!   sets the cookie [`COOKIE`] (`HttpOnly`, `SameSite=Strict`, `Path=/`,
//!   `Secure` when the request came over HTTPS, see [`is_https`]). The
//!   session id is 256 random bits; only its SHA-256 is stored.
//! * A session ends after [`crate::HttpOptions::session_idle_timeout`]
//!   without a request, after [`crate::HttpOptions::session_lifetime`]
//!   whatever its use, at sign-out (`DELETE /api/v1/session`), when the
//!   password changes in another session, and when the account is disabled.
//! * CSRF: a state-changing request (any method but `GET`, `HEAD`,
//!   `OPTIONS`) authenticated by the cookie needs the header [`CSRF_HEADER`]
//!   equal to the session's CSRF token (returned at sign-in and by
//!   `GET /api/v1/session`; the SHA-256 of a fixed label and the session id,
//!   so it needs no storage and proves knowledge of the id), and is refused
//!   when it carries an `Origin` other than the server's own. Bearer-token
//!   requests are not concerned.
//! * Failed sign-ins count per address ([`crate::auth::AuthLimiter`], shared
//!   with failed tokens) and per account name ([`crate::auth::AccountLimiter`]).

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use connexa_core::ports::{Session, StoreError};
use connexa_core::store::accounts::{self, AccountError, SignIn};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Principal, PrincipalKind, hash_token, rate_limited, unauthorized};
use crate::extract;
use crate::problem::{ApiError, Kind};

/// The session cookie's name.
pub const COOKIE: &str = "cx_session";
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The prefix of every session id.
pub const SESSION_PREFIX: &str = "cxs_";
/// The sign-in route (public, rate-limited).
pub const SIGN_IN_PATH: &str = "/api/v1/session";

/// `true` for `POST /api/v1/session`, the one route that needs no credentials.
pub(crate) fn is_sign_in(req: &Request) -> bool {
    req.method() == Method::POST && req.uri().path() == SIGN_IN_PATH
}

/// The session id in the request's cookies, if any.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k.trim() == COOKIE).then(|| v.trim())
        })
        .filter(|v| !v.is_empty())
}

/// `true` if the request carries a session cookie.
pub(crate) fn has_cookie(headers: &HeaderMap) -> bool {
    cookie(headers).is_some()
}

fn well_formed(id: &str) -> bool {
    id.strip_prefix(SESSION_PREFIX).is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The CSRF token of a session id.
pub fn csrf_token(session_id: &str) -> String {
    let d = Sha256::new()
        .chain_update(b"connexa-csrf\0")
        .chain_update(session_id.as_bytes())
        .finalize();
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal strings, compared in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `true` if the request reached us over HTTPS: [`crate::HttpOptions::secure_cookies`]
/// says so, or a trusted proxy sent `X-Forwarded-Proto: https`. (`serve`
/// itself speaks plain HTTP: TLS is a reverse proxy's job.)
pub fn is_https(st: &AppState, headers: &HeaderMap, peer: Option<IpAddr>) -> bool {
    if st.options().secure_cookies {
        return true;
    }
    let from_proxy =
        peer.is_some_and(|p| st.options().trusted_proxies.iter().any(|n| n.contains(p)));
    from_proxy
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next_back())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

fn peer(req_ext: &axum::http::Extensions) -> Option<IpAddr> {
    req_ext
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

fn set_cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("cx_session=; Max-Age=0; Path=/"))
}

/// A `Set-Cookie` that removes the session cookie.
fn clear_cookie(secure: bool) -> HeaderValue {
    set_cookie("", 0, secure)
}

/// `true` for methods that change nothing (no CSRF check).
fn safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Why a cookie request may not change state, if it may not.
fn csrf_refusal(headers: &HeaderMap, session_id: &str) -> Option<&'static str> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let ok = origin.to_str().ok().zip(host).is_some_and(|(o, h)| {
            o.strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
                .is_some_and(|rest| rest.eq_ignore_ascii_case(h))
        });
        if !ok {
            return Some("cross-origin request refused (Origin is not this server)");
        }
    }
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if sent.is_empty() {
        return Some("missing X-CSRF-Token header (a session needs it to change anything)");
    }
    if !same(sent.as_bytes(), csrf_token(session_id).as_bytes()) {
        return Some("wrong X-CSRF-Token for this session");
    }
    None
}

/// The session of a request authenticated by cookie (in its extensions,
/// beside the [`Principal`]).
#[derive(Debug, Clone)]
pub struct CurrentSession {
    /// The stored session.
    pub session: Session,
    /// The SHA-256 of its id.
    pub hash: String,
    /// Its CSRF token.
    pub csrf: String,
}

/// The session path of [`crate::auth::require_token`]: a request with the
/// session cookie and no `Authorization` header.
pub(crate) async fn authenticate(st: AppState, mut req: Request, next: Next) -> Response {
    let secure = is_https(&st, req.headers(), peer(req.extensions()));
    let ip = crate::auth::request_client(&st, &req);
    let refuse = |detail: &str| {
        let mut r = match ip.map(|ip| st.0.limiter.fail(ip)) {
            Some(Err(retry)) => rate_limited(retry),
            _ => unauthorized(detail),
        };
        r.headers_mut()
            .append(header::SET_COOKIE, clear_cookie(secure));
        r
    };
    let Some(accounts) = st.accounts() else {
        return refuse("this server has no accounts set up: use a bearer token");
    };
    let Some(id) = cookie(req.headers()).map(str::to_owned) else {
        return refuse("no session");
    };
    if !well_formed(&id) {
        return refuse("invalid session cookie");
    }
    let hash = hash_token(&id);
    let now = Utc::now();
    let o = st.options();
    let (session, account) = match accounts
        .find_session(&hash, now, o.session_idle_timeout)
        .await
    {
        Ok(Some(found)) => found,
        Ok(None) => return refuse("session expired or ended: sign in again"),
        Err(e) => return ApiError::internal(&e).into_response(),
    };
    if !safe(req.method())
        && let Some(why) = csrf_refusal(req.headers(), &id)
    {
        return ApiError::new(Kind::Forbidden, why).into_response();
    }
    // last_seen is written at most once per tenth of the idle timeout (≤ 60 s).
    let step = (o.session_idle_timeout / 10).min(std::time::Duration::from_secs(60));
    let since = (now - session.last_seen).to_std().unwrap_or_default();
    if since >= step
        && let Err(e) = accounts.touch_session(session.id, now).await
    {
        tracing::warn!(session = session.id, error = %e, "cannot record session use");
    }
    req.extensions_mut().insert(Principal::account(&account));
    req.extensions_mut().insert(CurrentSession {
        session,
        hash,
        csrf: csrf_token(&id),
    });
    next.run(req).await
}

/// Name and password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInBody {
    /// The account name.
    pub name: String,
    /// Its password.
    pub password: String,
}

/// Who the caller is, and for a session its CSRF token and expiry.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// The caller.
    pub principal: Principal,
    /// The value of the `X-CSRF-Token` header state-changing requests of this
    /// session need (absent for a bearer token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
    /// When the session ends whatever its use (absent for a bearer token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Seconds without a request after which the session ends (absent for a bearer token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
}

/// Sign in with a name and a password: sets the `cx_session` cookie.
#[utoipa::path(post, path = "/api/v1/session", tag = "session", security(()),
    request_body = SignInBody,
    responses(
        (status = 200, body = SessionView, description = "Signed in; `Set-Cookie: cx_session=...; HttpOnly; SameSite=Strict; Path=/`"),
        (status = 401, body = crate::problem::Problem, description = "Wrong name or password (`unauthorized`)"),
        (status = 403, body = crate::problem::Problem, description = "The account is disabled (`forbidden`)"),
        (status = 429, body = crate::problem::Problem, description = "Too many failed sign-ins for this account or from this address (`rate-limited`, `Retry-After`)"),
    ))]
pub async fn sign_in(
    State(st): State<AppState>,
    headers: HeaderMap,
    ext: axum::http::Extensions,
    extract::Json(body): extract::Json<SignInBody>,
) -> Response {
    let Some(accounts) = st.accounts() else {
        return ApiError::not_found("this server has no accounts set up").into_response();
    };
    let peer_ip = peer(&ext);
    let secure = is_https(&st, &headers, peer_ip);
    let ip = peer_ip.map(|p| crate::auth::client_addr(p, &headers, &st.options().trusted_proxies));
    // Per address first (shared with failed tokens), then per account.
    if let Some(ip) = ip
        && let Err(retry) = st.0.limiter.enter_waiting(ip).await
    {
        return rate_limited(retry);
    }
    let leave = |failed: bool| {
        if let Some(ip) = ip {
            st.0.limiter.leave(ip, failed);
        }
    };
    // A name no account can have is a failure of the address only: it
    // costs no look-up and takes no slot of the per-account limiter.
    if accounts::check_name(&body.name).is_err() {
        leave(true);
        return unauthorized("wrong name or password");
    }
    let attempt = match ip.map(|ip| st.0.account_limiter.begin(&body.name, ip)) {
        Some(Err(retry)) => {
            leave(false);
            return rate_limited(retry);
        }
        Some(Ok(a)) => Some(a),
        None => None,
    };
    let outcome = accounts::authenticate(accounts.as_ref(), &body.name, &body.password).await;
    let account = match outcome {
        Ok(SignIn::Accepted(a)) => {
            leave(false);
            a
        }
        Ok(SignIn::Disabled(_)) => {
            leave(false);
            return ApiError::new(Kind::Forbidden, "this account is disabled").into_response();
        }
        Ok(SignIn::Refused) => {
            leave(true);
            if let Some(a) = attempt {
                a.failed();
            }
            return unauthorized("wrong name or password");
        }
        Err(e) => {
            leave(false);
            return ApiError::internal(&e).into_response();
        }
    };
    let id = match crate::auth::generate_token() {
        Ok(t) => format!("{SESSION_PREFIX}{}", &t[crate::auth::TOKEN_PREFIX.len()..]),
        Err(e) => {
            return ApiError::new(Kind::Internal, format!("no randomness: {e}")).into_response();
        }
    };
    let now = Utc::now();
    let o = st.options();
    let lifetime =
        chrono::Duration::from_std(o.session_lifetime).unwrap_or(chrono::Duration::hours(12));
    let source = ip.map(|i| i.to_string());
    let session = match accounts
        .create_session(&account, &hash_token(&id), source, now, now + lifetime)
        .await
    {
        Ok(s) => s,
        // A password change or a disable committed while the password was
        // being checked: the session it would have ended is not opened.
        Err(e @ StoreError::AccountChanged) => return unauthorized(&e.to_string()),
        Err(e) => return ApiError::internal(&e).into_response(),
    };
    let view = SessionView {
        principal: Principal::account(&account),
        csrf_token: Some(csrf_token(&id)),
        expires_at: Some(session.expires_at),
        idle_timeout_secs: Some(o.session_idle_timeout.as_secs()),
    };
    let mut r = Json(view).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&id, o.session_lifetime.as_secs(), secure),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Who am I: the calling account or token, and for a session its CSRF token.
#[utoipa::path(get, path = "/api/v1/session", tag = "session",
    responses((status = 200, body = SessionView)))]
pub async fn current(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    s: Option<Extension<CurrentSession>>,
) -> Json<SessionView> {
    let s = s.map(|Extension(s)| s);
    Json(SessionView {
        principal: p,
        csrf_token: s.as_ref().map(|s| s.csrf.clone()),
        expires_at: s.as_ref().map(|s| s.session.expires_at),
        idle_timeout_secs: s
            .as_ref()
            .map(|_| st.options().session_idle_timeout.as_secs()),
    })
}

/// Sign out: ends this session on the server and removes the cookie.
#[utoipa::path(delete, path = "/api/v1/session", tag = "session",
    responses(
        (status = 204, description = "Signed out"),
        (status = 404, body = crate::problem::Problem, description = "The request is not authenticated by a session (`not-found`)"),
    ))]
pub async fn sign_out(
    State(st): State<AppState>,
    headers: HeaderMap,
    ext: axum::http::Extensions,
    s: Option<Extension<CurrentSession>>,
) -> Response {
    let (Some(Extension(s)), Some(accounts)) = (s, st.accounts()) else {
        return ApiError::not_found("this request is not authenticated by a session")
            .into_response();
    };
    if let Err(e) = accounts.end_session(&s.hash).await {
        return ApiError::internal(&e).into_response();
    }
    let secure = is_https(&st, &headers, peer(&ext));
    let mut r = axum::http::StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, clear_cookie(secure));
    r
}

/// The current and the new password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    /// The password now.
    pub current: String,
    /// The new password (at least 12 characters, at most 1024 bytes, no control character).
    pub new: String,
}

/// Change the password of the signed-in account; ends every other session of it.
#[utoipa::path(post, path = "/api/v1/session/password", tag = "session",
    request_body = PasswordBody,
    responses(
        (status = 204, description = "Changed; the account's other sessions are ended"),
        (status = 404, body = crate::problem::Problem, description = "The request is not authenticated by a session (`not-found`)"),
        (status = 422, body = crate::problem::Problem, description = "The new password breaks the rules, or the current one is wrong (`invalid-body`)"),
    ))]
pub async fn change_password(
    State(st): State<AppState>,
    headers: HeaderMap,
    ext: axum::http::Extensions,
    p: Extension<Principal>,
    s: Option<Extension<CurrentSession>>,
    extract::Json(body): extract::Json<PasswordBody>,
) -> Response {
    let (Some(Extension(s)), Some(accounts), PrincipalKind::Account(id)) =
        (s, st.accounts(), p.kind)
    else {
        return ApiError::not_found("this request is not authenticated by a session")
            .into_response();
    };
    // Guessing the current password is limited like signing in: per
    // address and per account.
    let ip =
        peer(&ext).map(|p| crate::auth::client_addr(p, &headers, &st.options().trusted_proxies));
    if let Some(ip) = ip
        && let Err(retry) = st.0.limiter.enter_waiting(ip).await
    {
        return rate_limited(retry);
    }
    let leave = |failed: bool| {
        if let Some(ip) = ip {
            st.0.limiter.leave(ip, failed);
        }
    };
    let attempt = match ip.map(|ip| st.0.account_limiter.begin(&p.name, ip)) {
        Some(Err(retry)) => {
            leave(false);
            return rate_limited(retry);
        }
        Some(Ok(a)) => Some(a),
        None => None,
    };
    let hash = match accounts.account_by_id(id).await {
        Ok(Some((_, h))) => h,
        Ok(None) => {
            leave(false);
            return ApiError::not_found("no such account").into_response();
        }
        Err(e) => {
            leave(false);
            return ApiError::internal(&e).into_response();
        }
    };
    let current = body.current.clone();
    let ok = tokio::task::spawn_blocking(move || accounts::verify_password(&current, &hash))
        .await
        .unwrap_or(false);
    leave(!ok);
    if !ok {
        if let Some(a) = attempt {
            a.failed();
        }
        return ApiError::invalid_body("current: wrong password").into_response();
    }
    match accounts::change_password(accounts.as_ref(), id, &body.new, Some(&s.hash)).await {
        Ok(true) => axum::http::StatusCode::NO_CONTENT.into_response(),
        Ok(false) => ApiError::not_found("no such account").into_response(),
        Err(AccountError::Rules(e)) => ApiError::invalid_body(format!("new: {e}")).into_response(),
        Err(AccountError::Store(e)) => ApiError::internal(&e).into_response(),
        Err(e) => ApiError::new(Kind::Internal, e.to_string()).into_response(),
    }
}
