//! Bearer tokens: generation, hashing, the check every request except
//! `/healthz` goes through, and the rate limit on failed attempts.
//!
//! A token is `cxa_` followed by 64 lower-case hex digits (256 random bits).
//! Only its SHA-256 (hex) is stored ([`TokenStore`]): with that much entropy a
//! fast hash is enough, and a copy of the database grants nothing.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use connexa_core::ports::{
    Account, AccountId, ApiToken, Role, StoreError, TokenId, TokenScope, TokenStore,
};
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

/// Creates and stores an `admin` token of full scope; returns the token
/// (shown once, never stored) and its row. See [`create_token_with`].
pub async fn create_token(
    tokens: &dyn TokenStore,
    name: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(String, ApiToken), TokenError> {
    create_token_with(tokens, name, Role::Admin, TokenScope::Full, expires_at).await
}

/// Creates and stores a token of this role and scope; returns the token
/// (shown once, never stored) and its row.
pub async fn create_token_with(
    tokens: &dyn TokenStore,
    name: &str,
    role: Role,
    scope: TokenScope,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(String, ApiToken), TokenError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(TokenError::BadName);
    }
    let token = generate_token().map_err(TokenError::Random)?;
    let row = tokens
        .create_token(
            name,
            &hash_token(&token),
            role,
            scope,
            expires_at,
            Utc::now(),
        )
        .await?;
    Ok((token, row))
}

/// An IP address or a CIDR prefix (`10.0.0.0/8`, `fd00::/8`, `127.0.0.1`):
/// how `--trusted-proxy` names the reverse proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// A malformed [`IpNet`].
#[derive(Debug, thiserror::Error)]
#[error("not an IP address or CIDR prefix: {0:?}")]
pub struct IpNetError(String);

impl IpNet {
    /// `true` if `ip` is in this network (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IpNetError(s.to_owned());
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr = canonical(a.parse::<IpAddr>().map_err(|_| bad())?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An IPv4-mapped IPv6 address as IPv4; others unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The key a client's failures are counted under: its IPv4 address, or the
/// /64 prefix of its IPv6 address (one host usually has a whole /64).
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// The client's address: `peer`, unless `peer` is one of the `trusted`
/// proxies; then the right-most address of `X-Forwarded-For` that is not a
/// trusted proxy (the left part of the header is written by the client and
/// proves nothing). A malformed entry stops the walk at the last trusted hop.
pub fn client_addr(peer: IpAddr, headers: &axum::http::HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let mut client = peer;
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let e = entry.trim();
        let ip = e
            .parse::<IpAddr>()
            .ok()
            .or_else(|| e.parse::<SocketAddr>().ok().map(|s| s.ip()));
        let Some(ip) = ip else {
            return client;
        };
        client = ip;
        if !is_trusted(ip) {
            return ip;
        }
    }
    client
}

/// Failed authentication attempts per client ([`limit_key`]): at most `max`
/// per `window`. Database look-ups of unknown tokens in flight count against
/// the limit too, so a flood of parallel forged tokens costs at most `max`
/// look-ups per window; a request that finds the limit taken only by look-ups
/// in flight waits for them. Tokens accepted before skip the limit
/// altogether (see [`require_token`]), so failures of others never lock out
/// a valid token. The counters live in a least-recently-used map of bounded size.
#[derive(Debug)]
pub struct AuthLimiter {
    max: u32,
    window: Duration,
    map: Mutex<Lru>,
}

/// Slots by key, and their use order (oldest first) for eviction without scans.
#[derive(Debug)]
struct Lru {
    cap: usize,
    next: u64,
    slots: HashMap<IpAddr, (Slot, u64)>,
    order: BTreeMap<u64, IpAddr>,
}

impl Lru {
    fn get(&mut self, key: IpAddr, now: Instant) -> &mut Slot {
        let stamp = self.next;
        self.next += 1;
        let fresh = Slot {
            since: now,
            failures: 0,
            inflight: 0,
        };
        if let Some((_, g)) = self.slots.get_mut(&key) {
            self.order.remove(g);
            *g = stamp;
        } else {
            while self.slots.len() >= self.cap {
                let Some((_, old)) = self.order.pop_first() else {
                    break;
                };
                self.slots.remove(&old);
            }
        }
        self.order.insert(stamp, key);
        &mut self.slots.entry(key).or_insert((fresh, stamp)).0
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    since: Instant,
    failures: u32,
    inflight: u32,
}

/// What [`AuthLimiter::enter`] decided.
pub(crate) enum Gate {
    /// A look-up may run (and must be ended with [`AuthLimiter::leave`]).
    Go,
    /// The limit is taken by look-ups in flight: try again shortly.
    Wait,
    /// Over the limit: retry after this long.
    Limited(Duration),
}

impl AuthLimiter {
    /// At most `max` failures per `window` and client, for up to 100,000 clients.
    pub fn new(max: u32, window: Duration) -> Self {
        AuthLimiter {
            max,
            window,
            map: Mutex::new(Lru {
                cap: 100_000,
                next: 0,
                slots: HashMap::new(),
                order: BTreeMap::new(),
            }),
        }
    }

    /// Remembers at most `cap` clients (at least 1); the least recently seen go first.
    pub fn with_capacity(self, cap: usize) -> Self {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).cap = cap.max(1);
        self
    }

    /// Clients remembered now.
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .slots
            .len()
    }

    /// `true` when no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot<'a>(&self, map: &'a mut Lru, ip: IpAddr, now: Instant) -> &'a mut Slot {
        let s = map.get(limit_key(ip), now);
        if now.duration_since(s.since) >= self.window {
            s.since = now;
            s.failures = 0;
        }
        s
    }

    pub(crate) fn enter(&self, ip: IpAddr) -> Gate {
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

    pub(crate) fn leave(&self, ip: IpAddr, failed: bool) {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let s = self.slot(&mut map, ip, now);
        s.inflight = s.inflight.saturating_sub(1);
        if failed {
            s.failures += 1;
        }
    }

    /// Counts a failure that needed no look-up; `Err` when already over the limit.
    pub(crate) fn fail(&self, ip: IpAddr) -> Result<(), Duration> {
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

impl AuthLimiter {
    /// Enters a look-up slot for `ip`, waiting (up to a few seconds) while the
    /// limit is taken only by look-ups in flight; `Err(retry)` when over the
    /// limit. An `Ok` must be ended with [`AuthLimiter::leave`].
    pub(crate) async fn enter_waiting(&self, ip: IpAddr) -> Result<(), Duration> {
        let started = Instant::now();
        loop {
            match self.enter(ip) {
                Gate::Go => return Ok(()),
                Gate::Limited(retry) => return Err(retry),
                Gate::Wait if started.elapsed() > MAX_WAIT => return Err(Duration::from_secs(1)),
                Gate::Wait => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }
}

/// Failed sign-ins per account name (known or not), on top of the
/// per-address [`AuthLimiter`]:
///
/// * `max` failures within `window` lock the account for one `window`: every
///   sign-in to it is answered `429` without checking the password.
/// * When the lock ends the account stays *watched* for at least one more
///   `window`, and until no address has failed on it for a whole `window`:
///   an address that failed on it is refused until a `window` has passed
///   since its own last failure (refused attempts do not extend it); an
///   address with no recent failure on it gets its password checked. A
///   failure while watched marks that address too but never locks the
///   account again (nor does a full address table: the oldest entries go).
///
/// * Attempts in flight count: an attempt takes a slot ([`begin`](Self::begin))
///   before its password is checked, so parallel guesses from many addresses
///   cannot overshoot `max` while the (slow, Argon2id) checks run. While
///   failures plus attempts in flight reach `max`, further attempts are asked
///   to retry in a second.
///
/// So an attacker keeps the real owner out for at most one `window` per
/// attack (signing in from an address it did not fail from within the last
/// `window`), and after the first `max` guesses gets one guess per address
/// per `window`. Changing the password (`POST /session/password`) counts a
/// wrong current password like a failed sign-in.
#[derive(Debug)]
pub struct AccountLimiter {
    max: u32,
    window: Duration,
    map: Mutex<HashMap<String, AccountSlot>>,
}

#[derive(Debug)]
struct AccountSlot {
    since: Instant,
    failures: u32,
    locked_until: Option<Instant>,
    last_bad: Instant,
    /// Addresses that failed on this account, and when they last failed.
    dirty: HashMap<IpAddr, Instant>,
    /// Attempts that passed [`AccountLimiter::begin`] and have not ended.
    in_flight: u32,
}

/// One password attempt on an account, holding its slot of the
/// [`AccountLimiter`]: [`failed`](Self::failed) counts it as a failure;
/// dropping it otherwise (success, error, refusal) frees the slot.
#[derive(Debug)]
#[must_use = "the attempt's slot is freed when it is dropped"]
pub struct AccountAttempt<'a> {
    limiter: &'a AccountLimiter,
    name: String,
    ip: IpAddr,
}

impl AccountAttempt<'_> {
    /// The password was wrong: counts a failure of the account from this address.
    pub fn failed(self) {
        self.limiter.end(&self.name, self.ip, true);
        std::mem::forget(self);
    }
}

impl Drop for AccountAttempt<'_> {
    fn drop(&mut self) {
        self.limiter.end(&self.name, self.ip, false);
    }
}

/// Accounts remembered at most (stale ones are dropped first).
const ACCOUNT_SLOTS: usize = 100_000;
/// Addresses remembered per account; past it the oldest is forgotten.
const DIRTY_PER_ACCOUNT: usize = 10_000;

impl AccountLimiter {
    /// At most `max` failures per account within `window` (see the type's docs).
    pub fn new(max: u32, window: Duration) -> Self {
        AccountLimiter {
            max: max.max(1),
            window,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn stale(&self, s: &AccountSlot, now: Instant) -> bool {
        if s.in_flight > 0 {
            return false;
        }
        match s.locked_until {
            // Watched for a window after the lock, and a window after the
            // last attempt of an address that failed.
            Some(until) => {
                now >= until + self.window && now.duration_since(s.last_bad) >= self.window
            }
            None => now.duration_since(s.since) >= self.window,
        }
    }

    /// Takes a slot for one password attempt on `name` from `ip`, or says
    /// how long to wait: while the account is locked, while `ip` must wait
    /// after its own failure on the watched account, or (for about a second)
    /// while failures plus attempts in flight already reach the limit.
    pub fn begin(&self, name: &str, ip: IpAddr) -> Result<AccountAttempt<'_>, Duration> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(name).is_some_and(|s| self.stale(s, now)) {
            map.remove(name);
        }
        if !map.contains_key(name) && map.len() >= ACCOUNT_SLOTS {
            map.retain(|_, s| !self.stale(s, now));
            if map.len() >= ACCOUNT_SLOTS {
                // Every slot is busy with recent failures: refusing here
                // would lock everyone out of every other account, so this
                // attempt goes unlimited per account (the per-address
                // limiter still applies).
                return Ok(AccountAttempt {
                    limiter: self,
                    name: String::new(),
                    ip,
                });
            }
        }
        let s = map.entry(name.to_owned()).or_insert_with(|| AccountSlot {
            since: now,
            failures: 0,
            locked_until: None,
            last_bad: now,
            dirty: HashMap::new(),
            in_flight: 0,
        });
        match s.locked_until {
            Some(until) if now < until => return Err(until - now),
            Some(_) => {
                // An address that failed on this account waits a window after
                // its own last failure (refusals do not extend it); others
                // are checked.
                if let Some(at) = s.dirty.get(&limit_key(ip))
                    && now.duration_since(*at) < self.window
                {
                    return Err(self.window - now.duration_since(*at));
                }
            }
            None => {
                let failures = if now.duration_since(s.since) >= self.window {
                    0
                } else {
                    s.failures
                };
                if failures + s.in_flight >= self.max {
                    return Err(Duration::from_secs(1));
                }
            }
        }
        s.in_flight += 1;
        Ok(AccountAttempt {
            limiter: self,
            name: name.to_owned(),
            ip,
        })
    }

    /// Ends an attempt of [`begin`](Self::begin); `failed`: the password was wrong.
    fn end(&self, name: &str, ip: IpAddr, failed: bool) {
        if name.is_empty() {
            return; // an unlimited attempt (see `begin`)
        }
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(s) = map.get_mut(name) else {
            return;
        };
        s.in_flight = s.in_flight.saturating_sub(1);
        if !failed {
            // Nothing worth remembering: no failure, no lock, nothing in flight.
            let clean = s.failures == 0 && s.locked_until.is_none();
            if s.in_flight == 0 && (clean || self.stale(s, now)) {
                map.remove(name);
            }
            return;
        }
        s.last_bad = now;
        let key = limit_key(ip);
        if !s.dirty.contains_key(&key) && s.dirty.len() >= DIRTY_PER_ACCOUNT {
            // Full: forget addresses whose wait is over, else the oldest one.
            // Never lock again: that would let fresh addresses keep the
            // owner out for ever.
            let window = self.window;
            s.dirty.retain(|_, at| now.duration_since(*at) < window);
            if s.dirty.len() >= DIRTY_PER_ACCOUNT
                && let Some(oldest) = s.dirty.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k)
            {
                s.dirty.remove(&oldest);
            }
        }
        s.dirty.insert(key, now);
        if s.locked_until.is_some() {
            return;
        }
        if now.duration_since(s.since) >= self.window {
            s.since = now;
            s.failures = 0;
        }
        s.failures += 1;
        if s.failures >= self.max {
            s.locked_until = Some(now + self.window);
        }
    }
}

/// How long an accepted token is remembered without asking the store again
/// (a revocation takes effect within this time).
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);

/// How long an accepted token skips the rate limit on failures of its address
/// (after its last acceptance; a failed look-up ends it at once).
pub const KNOWN_TTL: Duration = Duration::from_secs(3600);

/// Longest a request waits for look-ups in flight from its address.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// Who makes a request: an API token or a signed-in account. Put in the
/// request extensions by [`require_token`] for both; [`crate::roles`] checks it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Principal {
    /// The token's or the account's name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Where it is accepted (always `full` for an account).
    pub scope: TokenScope,
    /// A token or an account, and its id.
    pub kind: PrincipalKind,
}

/// What kind of [`Principal`] it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(tag = "type", content = "id", rename_all = "lowercase")]
pub enum PrincipalKind {
    /// An API token.
    Token(TokenId),
    /// An operator account signed in with a password (a session).
    Account(AccountId),
}

impl Principal {
    /// The principal of a token.
    pub fn token(t: &ApiToken) -> Principal {
        Principal {
            name: t.name.clone(),
            role: t.role,
            scope: t.scope,
            kind: PrincipalKind::Token(t.id),
        }
    }

    /// The principal of a signed-in account.
    pub fn account(a: &Account) -> Principal {
        Principal {
            name: a.name.clone(),
            role: a.role,
            scope: TokenScope::Full,
            kind: PrincipalKind::Account(a.id),
        }
    }

    /// The name audit rows record: `token:<name>` or `user:<name>`.
    pub fn actor_name(&self) -> String {
        match self.kind {
            PrincipalKind::Token(_) => format!("token:{}", self.name),
            PrincipalKind::Account(_) => format!("user:{}", self.name),
        }
    }
}

/// Puts a token and its [`Principal`] in the request extensions.
fn insert_token(req: &mut Request, t: ApiToken) {
    req.extensions_mut().insert(Principal::token(&t));
    req.extensions_mut().insert(t);
}

pub(crate) fn rate_limited(retry: Duration) -> Response {
    let mut e = ApiError::new(
        Kind::RateLimited,
        "too many failed authentication attempts from this address",
    );
    e.0.retry_after = Some(retry.as_secs().max(1));
    e.into_response()
}

pub(crate) fn unauthorized(detail: &str) -> Response {
    ApiError::new(Kind::Unauthorized, detail).into_response()
}

/// Middleware: requires `Authorization: Bearer <token>` of a stored, unrevoked,
/// unexpired token, or (without that header) the `cx_session` cookie of an
/// open session (see [`crate::session`]; state-changing methods also need its
/// CSRF token). The caller's [`Principal`] is put in the request extensions,
/// and for a token also its [`ApiToken`] row. Every answer to an
/// authenticated request carries `Cache-Control: no-store`.
/// `POST /api/v1/session` (signing in) passes without either.
pub async fn require_token(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if crate::session::is_sign_in(&req) {
        return next.run(req).await;
    }
    let mut res = if req.headers().contains_key(header::AUTHORIZATION)
        || !crate::session::has_cookie(req.headers())
    {
        bearer(st, req, next).await
    } else {
        crate::session::authenticate(st, req, next).await
    };
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    res
}

/// The client address of a request, if it carries its peer's (see [`client_addr`]).
pub(crate) fn request_client(st: &AppState, req: &Request) -> Option<IpAddr> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())?;
    Some(client_addr(
        peer,
        req.headers(),
        &st.options().trusted_proxies,
    ))
}

/// The bearer-token path of [`require_token`].
async fn bearer(st: AppState, mut req: Request, next: Next) -> Response {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return unauthorized("missing Authorization: Bearer <token> header (or a session cookie)");
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
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let Some(peer) = peer else {
        // Served without the peer address: counting every client under one
        // key would let anyone lock everyone out, so there is no limit.
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "requests carry no peer address (serve with connexa_http::serve::serve or \
                 into_make_service_with_connect_info): the rate limit on failed authentications is OFF"
            );
        });
        return check_unlimited(&st, req, next, &token).await;
    };
    let ip = client_addr(peer, req.headers(), &st.options().trusted_proxies);
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
            insert_token(&mut req, t);
            return next.run(req).await;
        }
        // A token accepted before is looked up again (it may be revoked)
        // whatever others sent from its address: guessing a token whose hash is
        // known costs as much as guessing any token.
        if st.known(&hash) {
            return look_up(&st, req, next, hash, now, None).await;
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
    look_up(&st, req, next, hash, now, Some(ip)).await
}

/// Without a peer address: the token is checked, nothing is counted.
async fn check_unlimited(st: &AppState, req: Request, next: Next, token: &str) -> Response {
    if !well_formed(token) {
        return unauthorized("invalid bearer token");
    }
    let hash = hash_token(token);
    let now = Utc::now();
    if let Some(t) = st.cached(&hash, now) {
        let mut req = req;
        st.touch(t.id);
        insert_token(&mut req, t);
        return next.run(req).await;
    }
    look_up(st, req, next, hash, now, None).await
}

/// Looks the token up in the store; `gated`: the limiter slot entered for it.
async fn look_up(
    st: &AppState,
    mut req: Request,
    next: Next,
    hash: String,
    now: DateTime<Utc>,
    gated: Option<IpAddr>,
) -> Response {
    let leave = |failed: bool| {
        if let Some(ip) = gated {
            st.0.limiter.leave(ip, failed);
        }
    };
    match st.0.tokens.find_token(&hash, now).await {
        Ok(Some(t)) => {
            leave(false);
            st.remember(hash, &t);
            st.touch(t.id);
            insert_token(&mut req, t);
            next.run(req).await
        }
        Ok(None) => {
            leave(true);
            st.forget_known(&hash);
            unauthorized("invalid bearer token")
        }
        Err(e) => {
            leave(false);
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

    /// `true` if the token of this hash was accepted within [`KNOWN_TTL`].
    fn known(&self, hash: &str) -> bool {
        let k = self
            .0
            .known_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        k.get(hash).is_some_and(|at| at.elapsed() < KNOWN_TTL)
    }

    fn forget_known(&self, hash: &str) {
        self.0
            .known_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(hash);
    }

    fn remember(&self, hash: String, t: &ApiToken) {
        {
            let mut k = self
                .0
                .known_tokens
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if k.len() > 10_000 {
                k.retain(|_, at| at.elapsed() < KNOWN_TTL);
            }
            k.insert(hash.clone(), Instant::now());
        }
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

    #[test]
    fn ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let l = AuthLimiter::new(2, Duration::from_secs(60));
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.fail(a).is_ok());
        assert!(l.fail(same_64).is_ok());
        assert!(l.fail(a).is_err(), "one /64, one counter");
        assert!(l.fail(other_64).is_ok());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(limit_key(mapped), v4);
        assert_eq!(limit_key(v4), v4);
        assert_eq!(limit_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_limiter_forgets_the_least_recently_seen_clients_first() {
        let l = AuthLimiter::new(1, Duration::from_secs(60)).with_capacity(3);
        let ip = |i: u8| IpAddr::from([10, 0, 0, i]);
        for i in 1..=3 {
            assert!(l.fail(ip(i)).is_ok());
        }
        // 1 is seen again (still limited), so 2 is the least recently seen.
        assert!(l.fail(ip(1)).is_err());
        assert!(l.fail(ip(4)).is_ok());
        assert_eq!(l.len(), 3);
        assert!(l.fail(ip(1)).is_err(), "1 was kept");
        assert!(l.fail(ip(3)).is_err(), "3 was kept");
        assert!(l.fail(ip(2)).is_ok(), "2 was forgotten");
        for i in 0..200 {
            let _ = l.fail(IpAddr::from([10, 1, 0, i]));
        }
        assert_eq!(l.len(), 3, "bounded");
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        use axum::http::HeaderMap;
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::1".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.4".parse().unwrap(),
        );
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_addr(stranger, &h, &trusted), stranger);
        assert_eq!(
            client_addr(proxy, &h, &trusted),
            "198.51.100.4".parse::<IpAddr>().unwrap(),
            "the right-most untrusted entry"
        );
        h.append("x-forwarded-for", "10.9.9.9".parse().unwrap());
        assert_eq!(
            client_addr(proxy, &h, &trusted),
            "198.51.100.4".parse::<IpAddr>().unwrap(),
            "trusted hops are skipped, over several header lines"
        );
        h.insert("x-forwarded-for", "junk, 10.9.9.9".parse().unwrap());
        assert_eq!(
            client_addr(proxy, &h, &trusted),
            "10.9.9.9".parse::<IpAddr>().unwrap(),
            "a malformed entry stops at the last trusted hop"
        );
        assert_eq!(client_addr(proxy, &HeaderMap::new(), &trusted), proxy);
        assert_eq!(
            client_addr("fd00::1".parse().unwrap(), &h, &trusted),
            "10.9.9.9".parse::<IpAddr>().unwrap()
        );
        for bad in ["", "10.0.0.0/33", "fd00::/129", "host", "10.0.0.0/x"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(stranger) && !all.contains("::2".parse().unwrap()));
    }
}
