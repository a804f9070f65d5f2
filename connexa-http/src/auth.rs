//! Bearer tokens: generation, hashing, the check every request except
//! `/healthz` goes through, and the rate limit on failed attempts.
//!
//! A token is `cxa_` followed by 64 lower-case hex digits (256 random bits).
//! Only its SHA-256 (hex) is stored ([`TokenStore`]): with that much entropy a
//! fast hash is enough, and a copy of the database grants nothing.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use connexa_core::ports::{ApiToken, StoreError, TokenId, TokenStore};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::problem::{ApiError, Kind};

/// The prefix of every token.
pub const TOKEN_PREFIX: &str = "cxa_";

/// A new random token (`cxa_` + 64 hex digits).
pub fn generate_token() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex(&b)))
}

/// The stored form of a token: lower-case hex SHA-256.
pub fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `true` for a string of the token's shape (checked before any database access).
pub fn well_formed(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Why a token could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The name is empty or too long.
    #[error("token name must be 1 to 100 printable characters")]
    BadName,
    /// The system's random source failed.
    #[error("no randomness: {0}")]
    Random(getrandom::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates and stores a token; returns the token (shown once, never stored) and its row.
pub async fn create_token(
    tokens: &dyn TokenStore,
    name: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(String, ApiToken), TokenError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(TokenError::BadName);
    }
    let token = generate_token().map_err(TokenError::Random)?;
    let row = tokens
        .create_token(name, &hash_token(&token), expires_at, Utc::now())
        .await?;
    Ok((token, row))
}

/// Failed authentication attempts per client address: at most `max` per
/// `window`. An attempt is counted *before* the token is looked up and refunded
/// when it succeeds, so a flood of parallel forged tokens is cut off at `max`
/// database look-ups per window.
#[derive(Debug)]
pub struct AuthLimiter {
    max: u32,
    window: Duration,
    map: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AuthLimiter {
    /// At most `max` failures per `window` and address.
    pub fn new(max: u32, window: Duration) -> Self {
        AuthLimiter {
            max,
            window,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an attempt; `Err(retry_after)` when the address is over the limit.
    fn reserve(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() > 100_000 {
            let w = self.window;
            map.retain(|_, (t, _)| now.duration_since(*t) < w);
        }
        let e = map.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= self.window {
            *e = (now, 0);
        }
        if e.1 >= self.max {
            return Err(self.window.saturating_sub(now.duration_since(e.0)));
        }
        e.1 += 1;
        Ok(())
    }

    fn refund(&self, ip: IpAddr) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = map.get_mut(&ip) {
            e.1 = e.1.saturating_sub(1);
        }
    }
}

fn unauthorized(detail: &str) -> Response {
    ApiError::new(Kind::Unauthorized, detail).into_response()
}

/// Middleware: requires `Authorization: Bearer <token>` of a stored, unrevoked,
/// unexpired token. The accepted token's row is put in the request extensions.
pub async fn require_token(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return unauthorized("missing Authorization: Bearer <token> header");
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_owned())
        })
        .unwrap_or_default();
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    let limiter = &st.0.limiter;
    if let Err(retry) = limiter.reserve(ip) {
        let mut e = ApiError::new(
            Kind::RateLimited,
            "too many failed authentication attempts from this address",
        );
        e.0.retry_after = Some(retry.as_secs().max(1));
        return e.into_response();
    }
    if !well_formed(&token) {
        return unauthorized("invalid bearer token");
    }
    let now = Utc::now();
    match st.0.tokens.find_token(&hash_token(&token), now).await {
        Ok(Some(t)) => {
            limiter.refund(ip);
            st.touch(t.id);
            req.extensions_mut().insert(t);
            next.run(req).await
        }
        Ok(None) => unauthorized("invalid bearer token"),
        Err(e) => {
            limiter.refund(ip);
            ApiError::internal(&e).into_response()
        }
    }
}

impl AppState {
    /// Records the token's use, at most once a minute per token, off the request path.
    fn touch(&self, id: TokenId) {
        let now = Instant::now();
        {
            let mut t = self
                .0
                .touched
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if t.get(&id)
                .is_some_and(|at| now.duration_since(*at) < Duration::from_secs(60))
            {
                return;
            }
            t.insert(id, now);
        }
        let tokens = self.0.tokens.clone();
        tokio::spawn(async move {
            if let Err(e) = tokens.touch_token(id, Utc::now()).await {
                tracing::warn!(token = %id, error = %e, "cannot record token use");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_well_formed_and_hashed() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        assert!(well_formed(&a) && well_formed(&b));
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), hash_token(&b));
        for bad in [
            "",
            "cxa_",
            "Bearer x",
            &a[..60],
            &a.to_uppercase(),
            &format!("{a}0"),
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
    }

    #[test]
    fn limiter_counts_failures_and_refunds_successes() {
        let l = AuthLimiter::new(2, Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        l.reserve(ip).unwrap();
        l.refund(ip);
        l.reserve(ip).unwrap();
        l.reserve(ip).unwrap();
        assert!(l.reserve(ip).is_err());
        assert!(
            l.reserve("127.0.0.2".parse().unwrap()).is_ok(),
            "per address"
        );
    }
}
