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
/// `window`. Database look-ups in flight count against the limit too, so a flood
/// of parallel forged tokens costs at most `max` look-ups per window; a request
/// that finds the limit taken only by look-ups in flight waits for them (a
/// client's first burst of requests with a valid token is not refused).
#[derive(Debug)]
pub struct AuthLimiter {
    max: u32,
    window: Duration,
    map: Mutex<HashMap<IpAddr, Slot>>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    since: Instant,
    failures: u32,
    inflight: u32,
}

/// What [`AuthLimiter::enter`] decided.
enum Gate {
    /// A look-up may run (and must be ended with [`AuthLimiter::leave`]).
    Go,
    /// The limit is taken by look-ups in flight: try again shortly.
    Wait,
    /// Over the limit: retry after this long.
    Limited(Duration),
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

    fn slot<'a>(
        &self,
        map: &'a mut HashMap<IpAddr, Slot>,
        ip: IpAddr,
        now: Instant,
    ) -> &'a mut Slot {
        if map.len() > 100_000 {
            let w = self.window;
            map.retain(|_, s| s.inflight > 0 || now.duration_since(s.since) < w);
        }
        let s = map.entry(ip).or_insert(Slot {
            since: now,
            failures: 0,
            inflight: 0,
        });
        if now.duration_since(s.since) >= self.window {
            s.since = now;
            s.failures = 0;
        }
        s
    }

    fn enter(&self, ip: IpAddr) -> Gate {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let window = self.window;
        let max = self.max;
        let s = self.slot(&mut map, ip, now);
        if s.failures >= max {
            return Gate::Limited(window.saturating_sub(now.duration_since(s.since)));
        }
        if s.failures + s.inflight >= max {
            return Gate::Wait;
        }
        s.inflight += 1;
        Gate::Go
    }

    fn leave(&self, ip: IpAddr, failed: bool) {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let s = self.slot(&mut map, ip, now);
        s.inflight = s.inflight.saturating_sub(1);
        if failed {
            s.failures += 1;
        }
    }

    /// Counts a failure that needed no look-up; `Err` when already over the limit.
    fn fail(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let (window, max) = (self.window, self.max);
        let s = self.slot(&mut map, ip, now);
        if s.failures + s.inflight >= max {
            return Err(window
                .saturating_sub(now.duration_since(s.since))
                .max(Duration::from_secs(1)));
        }
        s.failures += 1;
        Ok(())
    }
}

/// How long an accepted token is remembered without asking the store again
/// (a revocation takes effect within this time).
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);

/// Longest a request waits for look-ups in flight from its address.
const MAX_WAIT: Duration = Duration::from_secs(5);

fn rate_limited(retry: Duration) -> Response {
    let mut e = ApiError::new(
        Kind::RateLimited,
        "too many failed authentication attempts from this address",
    );
    e.0.retry_after = Some(retry.as_secs().max(1));
    e.into_response()
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
    if !well_formed(&token) {
        return match limiter.fail(ip) {
            Ok(()) => unauthorized("invalid bearer token"),
            Err(retry) => rate_limited(retry),
        };
    }
    let hash = hash_token(&token);
    let now = Utc::now();
    let started = Instant::now();
    loop {
        if let Some(t) = st.cached(&hash, now) {
            st.touch(t.id);
            req.extensions_mut().insert(t);
            return next.run(req).await;
        }
        match limiter.enter(ip) {
            Gate::Go => break,
            Gate::Limited(retry) => return rate_limited(retry),
            Gate::Wait if started.elapsed() > MAX_WAIT => {
                return rate_limited(Duration::from_secs(1));
            }
            Gate::Wait => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    match st.0.tokens.find_token(&hash, now).await {
        Ok(Some(t)) => {
            limiter.leave(ip, false);
            st.remember(hash, &t);
            st.touch(t.id);
            req.extensions_mut().insert(t);
            next.run(req).await
        }
        Ok(None) => {
            limiter.leave(ip, true);
            unauthorized("invalid bearer token")
        }
        Err(e) => {
            limiter.leave(ip, false);
            ApiError::internal(&e).into_response()
        }
    }
}

impl AppState {
    fn cached(&self, hash: &str, now: DateTime<Utc>) -> Option<ApiToken> {
        let c = self
            .0
            .token_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        c.get(hash)
            .filter(|(t, at)| {
                at.elapsed() < TOKEN_CACHE_TTL && t.expires_at.is_none_or(|e| e > now)
            })
            .map(|(t, _)| t.clone())
    }

    fn remember(&self, hash: String, t: &ApiToken) {
        let mut c = self
            .0
            .token_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if c.len() > 10_000 {
            c.clear();
        }
        c.insert(hash, (t.clone(), Instant::now()));
    }

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
    fn limiter_counts_failures_and_in_flight_look_ups() {
        let l = AuthLimiter::new(2, Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(matches!(l.enter(ip), Gate::Go));
        assert!(matches!(l.enter(ip), Gate::Go));
        assert!(matches!(l.enter(ip), Gate::Wait), "two look-ups in flight");
        l.leave(ip, false);
        l.leave(ip, true);
        assert!(matches!(l.enter(ip), Gate::Go));
        l.leave(ip, true);
        assert!(matches!(l.enter(ip), Gate::Limited(_)), "two failures");
        assert!(l.fail(ip).is_err());
        assert!(
            matches!(l.enter("127.0.0.2".parse().unwrap()), Gate::Go),
            "per address"
        );
    }
}
