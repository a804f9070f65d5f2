//! Who may call what: the one table of the role each route needs
//! ([`ROUTES`]), the middleware that enforces it ([`require_role`]), and the
//! caller's role for handlers that mask secrets ([`Caller`]). The caller is
//! the request's [`Principal`]: an API token or a signed-in account.
//!
//! Roles are connexa-core's [`Role`] (`viewer < operator < admin`). A token of
//! scope [`TokenScope::Metrics`] may only `GET /metrics`; `/metrics` is also
//! open to full-scope tokens of role `operator` and above.

use axum::extract::{FromRequestParts, MatchedPath, Request};
use axum::http::Method;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use connexa_core::ports::{Role, TokenScope};

use crate::auth::{Principal, PrincipalKind};

use crate::problem::{ApiError, Kind};

/// The only route a [`TokenScope::Metrics`] token may call.
pub const METRICS_PATH: &str = "/metrics";

/// Every authenticated route (method, path template as the router and the
/// OpenAPI document spell it) and the lowest role that may call it.
/// `HEAD` is checked as `GET`. A matched route missing here needs `admin`.
pub const ROUTES: &[(Method, &str, Role)] = &[
    (Method::GET, "/api/v1/nodes", Role::Viewer),
    (Method::POST, "/api/v1/nodes", Role::Operator),
    (Method::DELETE, "/api/v1/nodes", Role::Admin),
    (Method::GET, "/api/v1/nodes/values", Role::Viewer),
    (Method::GET, "/api/v1/nodes/{id}", Role::Viewer),
    (Method::PATCH, "/api/v1/nodes/{id}", Role::Operator),
    (Method::DELETE, "/api/v1/nodes/{id}", Role::Admin),
    (Method::GET, "/api/v1/nodes/{id}/history", Role::Viewer),
    (Method::GET, "/api/v1/jobs", Role::Viewer),
    (Method::POST, "/api/v1/jobs", Role::Operator),
    (Method::GET, "/api/v1/jobs/{id}", Role::Viewer),
    (Method::POST, "/api/v1/jobs/cancel", Role::Operator),
    (Method::POST, "/api/v1/jobs/{id}/cancel", Role::Operator),
    (
        Method::POST,
        "/api/v1/jobs/{id}/retest-failed",
        Role::Operator,
    ),
    (Method::GET, "/api/v1/jobs/{id}/events", Role::Viewer),
    (Method::GET, "/api/v1/imports", Role::Viewer),
    (Method::GET, "/api/v1/imports/{id}", Role::Viewer),
    (Method::GET, "/api/v1/imports/{id}/events", Role::Viewer),
    (Method::POST, "/api/v1/import", Role::Operator),
    (Method::GET, "/api/v1/export", Role::Viewer),
    (Method::GET, "/api/v1/services", Role::Viewer),
    (Method::POST, "/api/v1/services/start", Role::Operator),
    (Method::POST, "/api/v1/services/stop", Role::Operator),
    (Method::POST, "/api/v1/services/restart", Role::Operator),
    (Method::GET, "/api/v1/services/{id}/profile", Role::Admin),
    (Method::GET, "/api/v1/stats", Role::Viewer),
    (Method::GET, "/api/v1/workers", Role::Viewer),
    (Method::GET, "/api/v1/openapi.json", Role::Viewer),
    (Method::GET, "/api/v1/token", Role::Viewer),
    (Method::GET, "/api/v1/audit", Role::Admin),
    (Method::GET, "/api/v1/session", Role::Viewer),
    (Method::DELETE, "/api/v1/session", Role::Viewer),
    (Method::POST, "/api/v1/session/password", Role::Viewer),
    (Method::GET, METRICS_PATH, Role::Operator),
];

/// Routes anyone may call without credentials besides `/healthz`, the
/// console's files and the keyed speed endpoint: signing in (rate-limited
/// per address and per account, see [`crate::session`]).
pub const PUBLIC_ROUTES: &[(Method, &str)] = &[(Method::POST, crate::session::SIGN_IN_PATH)];

/// `true` if `method` on `path` is in [`PUBLIC_ROUTES`].
pub fn is_public(method: &Method, path: &str) -> bool {
    PUBLIC_ROUTES.iter().any(|(m, p)| m == method && *p == path)
}

/// The role `method` on the route template `path` needs, if the table names it.
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    ROUTES
        .iter()
        .find(|(m, p, _)| m == method && *p == path)
        .map(|(_, _, r)| *r)
}

/// `true` if some method of the table is declared on `path`.
fn known_path(path: &str) -> bool {
    ROUTES.iter().any(|(_, p, _)| *p == path) || PUBLIC_ROUTES.iter().any(|(_, p)| *p == path)
}

/// Why `token` (a token's or an account's [`Principal`]) may not call
/// `method` on the route template `path`, if it may not.
pub fn refusal(token: &Principal, method: &Method, path: &str) -> Option<String> {
    let needed = required_role(method, path);
    if token.scope == TokenScope::Metrics {
        let metrics = path == METRICS_PATH && needed.is_some();
        return (!metrics).then(|| {
            format!(
                "this token's scope is metrics: it may only GET {METRICS_PATH} (token {:?})",
                token.name
            )
        });
    }
    let needed = match needed {
        Some(r) => r,
        // Another method on a known path: the router answers 405.
        None if known_path(path) => return None,
        // A route nobody gave a role: admin only.
        None => Role::Admin,
    };
    let what = match token.kind {
        PrincipalKind::Token(_) => "token",
        PrincipalKind::Account(_) => "account",
    };
    (!token.role.allows(needed)).then(|| {
        format!(
            "this route needs the {needed} role; this {what} is {}",
            token.role
        )
    })
}

/// Middleware (inside [`crate::auth::require_token`]): refuses with `403
/// forbidden` a request whose token's role or scope is below what [`ROUTES`]
/// declares. Requests that matched no route pass (the router answers 404).
/// A refusal is not an authentication failure: the rate limit does not count it.
pub async fn require_role(req: Request, next: Next) -> Response {
    let Some(path) = req.extensions().get::<MatchedPath>() else {
        return next.run(req).await;
    };
    if is_public(req.method(), path.as_str()) {
        return next.run(req).await;
    }
    let Some(token) = req.extensions().get::<Principal>() else {
        // Only reachable if the router was assembled without require_token.
        return ApiError::new(Kind::Unauthorized, "no token").into_response();
    };
    if let Some(why) = refusal(token, req.method(), path.as_str()) {
        return ApiError::new(Kind::Forbidden, why).into_response();
    }
    next.run(req).await
}

/// The role of the request's token (`viewer` if there is none, which only
/// happens on a router assembled without [`crate::auth::require_token`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller(pub Role);

impl Caller {
    /// `Ok` if the caller may see secrets in clear, else `403` naming what was asked.
    pub fn may_reveal(self, what: &str) -> Result<(), ApiError> {
        if self.0.sees_secrets() {
            Ok(())
        } else {
            Err(ApiError::new(
                Kind::Forbidden,
                format!(
                    "{what} needs the {} role; this token is {}",
                    Role::Admin,
                    self.0
                ),
            ))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller(
            parts
                .extensions
                .get::<Principal>()
                .map_or(Role::Viewer, |t| t.role),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connexa_core::ports::{AccountId, TokenId};

    fn token(role: Role, scope: TokenScope) -> Principal {
        Principal {
            name: "t".into(),
            role,
            scope,
            kind: PrincipalKind::Token(TokenId(1)),
        }
    }

    #[test]
    fn the_table_names_each_route_once() {
        let mut seen = std::collections::HashSet::new();
        for (m, p, _) in ROUTES {
            assert!(seen.insert((m.clone(), *p)), "{m} {p} twice");
        }
    }

    #[test]
    fn refusals_follow_the_table_and_the_scope() {
        let viewer = token(Role::Viewer, TokenScope::Full);
        let admin = token(Role::Admin, TokenScope::Full);
        let scraper = token(Role::Admin, TokenScope::Metrics);
        let d = refusal(&viewer, &Method::DELETE, "/api/v1/nodes/{id}").unwrap();
        assert_eq!(d, "this route needs the admin role; this token is viewer");
        assert!(refusal(&viewer, &Method::HEAD, "/api/v1/nodes").is_none());
        assert!(refusal(&admin, &Method::DELETE, "/api/v1/nodes/{id}").is_none());
        assert!(refusal(&viewer, &Method::GET, "/api/v1/new-route").is_some());
        assert!(refusal(&admin, &Method::GET, "/api/v1/new-route").is_none());
        assert!(
            refusal(&viewer, &Method::PUT, "/api/v1/nodes").is_none(),
            "405"
        );
        assert!(refusal(&scraper, &Method::GET, METRICS_PATH).is_none());
        assert!(refusal(&scraper, &Method::GET, "/api/v1/nodes").is_some());
        assert!(refusal(&viewer, &Method::GET, METRICS_PATH).is_some());
        let account = Principal {
            name: "alice".into(),
            role: Role::Operator,
            scope: TokenScope::Full,
            kind: PrincipalKind::Account(AccountId(7)),
        };
        assert_eq!(
            refusal(&account, &Method::DELETE, "/api/v1/nodes/{id}").unwrap(),
            "this route needs the admin role; this account is operator"
        );
        assert_eq!(account.actor_name(), "user:alice");
        assert_eq!(viewer.actor_name(), "token:t");
        assert!(is_public(&Method::POST, "/api/v1/session"));
        assert!(!is_public(&Method::DELETE, "/api/v1/session"));
    }
}
