//! Online GEO and fraud-score providers behind the [`GeoLookup`] and
//! [`FraudScorer`] ports, each speaking its documented JSON API:
//!
//! | provider | port | key | request |
//! |---|---|---|---|
//! | `ip-api` | GEO | none | `GET /json/{ip}?fields=...` |
//! | `ipinfo` | GEO | token | `GET /{ip}`, `Authorization: Bearer {token}` |
//! | `ipqualityscore` | fraud | key | `GET /api/json/ip/{key}/{ip}` |
//! | `abuseipdb` | fraud | key | `GET /api/v2/check?ipAddress={ip}`, `Key: {key}` |
//! | `scamalytics` | fraud | user + key | `GET /{user}/?ip={ip}&key={key}` |
//!
//! Every provider sits behind a [`Limited`] (at most N requests per window,
//! and nothing until a `Retry-After` passed), then a [`Cached`] (answers kept
//! in the store for a TTL); [`GeoChain`] and [`FraudChain`] try sources in
//! order. Base URLs are configurable (tests point them at a stand-in on
//! 127.0.0.1); nothing is requested unless a provider is configured. Keys
//! are [`Secret`]s: they are never logged, and no error message holds a
//! request URL.

mod http;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::domain::{GeoFacts, Risk, Secret};
use crate::ports::{FraudScore, FraudScorer, GeoLookup, LookupError, NodeStore};

/// Which API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// ip-api.com (GEO, no key; the free endpoint is http only, 45 requests a minute).
    IpApi,
    /// ipinfo.io (GEO, token).
    Ipinfo,
    /// IPQualityScore (fraud score, key).
    Ipqualityscore,
    /// AbuseIPDB (abuse confidence score, key).
    Abuseipdb,
    /// Scamalytics (fraud score and risk, user name and key).
    Scamalytics,
}

impl ProviderKind {
    /// Every provider.
    pub const ALL: [ProviderKind; 5] = [
        ProviderKind::IpApi,
        ProviderKind::Ipinfo,
        ProviderKind::Ipqualityscore,
        ProviderKind::Abuseipdb,
        ProviderKind::Scamalytics,
    ];

    /// The name in the config file and in stored records.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::IpApi => "ip-api",
            ProviderKind::Ipinfo => "ipinfo",
            ProviderKind::Ipqualityscore => "ipqualityscore",
            ProviderKind::Abuseipdb => "abuseipdb",
            ProviderKind::Scamalytics => "scamalytics",
        }
    }

    /// The provider's public endpoint.
    pub fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::IpApi => "http://ip-api.com",
            ProviderKind::Ipinfo => "https://ipinfo.io",
            ProviderKind::Ipqualityscore => "https://ipqualityscore.com",
            ProviderKind::Abuseipdb => "https://api.abuseipdb.com",
            ProviderKind::Scamalytics => "https://api11.scamalytics.com",
        }
    }

    /// Requests per minute allowed by the provider's free plan (the default limit).
    pub fn default_per_minute(self) -> u32 {
        match self {
            ProviderKind::IpApi => 45,
            _ => 60,
        }
    }

    /// `true` for GEO providers, `false` for fraud scorers.
    pub fn is_geo(self) -> bool {
        matches!(self, ProviderKind::IpApi | ProviderKind::Ipinfo)
    }

    /// `true` when the provider needs a key.
    pub fn needs_key(self) -> bool {
        self != ProviderKind::IpApi
    }
}

impl std::str::FromStr for ProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ProviderKind::ALL
            .into_iter()
            .find(|p| p.as_str() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                format!(
                    "unknown provider {s:?} (use ip-api, ipinfo, ipqualityscore, abuseipdb or scamalytics)"
                )
            })
    }
}

/// One configured provider.
#[derive(Debug, Clone)]
pub struct Provider {
    kind: ProviderKind,
    base: http::Base,
    key: Option<Secret>,
    user: Option<String>,
    timeout: Duration,
}

impl Provider {
    /// A provider at `base_url` (its public endpoint when `None`).
    ///
    /// # Errors
    /// A base URL that is not http(s), or a missing key or Scamalytics user.
    pub fn new(
        kind: ProviderKind,
        base_url: Option<&str>,
        key: Option<Secret>,
        user: Option<String>,
    ) -> Result<Provider, String> {
        let base = http::Base::parse(base_url.unwrap_or(kind.default_base_url()))
            .map_err(|e| format!("{}: base_url: {e}", kind.as_str()))?;
        if kind.needs_key() && key.as_ref().is_none_or(|k| k.expose().is_empty()) {
            return Err(format!(
                "{}: no API key (set key or key_env in [providers.{}])",
                kind.as_str(),
                kind.as_str()
            ));
        }
        if kind == ProviderKind::Scamalytics && user.as_deref().is_none_or(str::is_empty) {
            return Err("scamalytics: no user (set user in [providers.scamalytics])".into());
        }
        Ok(Provider {
            kind,
            base,
            key,
            user,
            timeout: Duration::from_secs(10),
        })
    }

    /// The provider's kind.
    pub fn kind(&self) -> ProviderKind {
        self.kind
    }

    fn key(&self) -> &str {
        self.key.as_ref().map(Secret::expose).unwrap_or_default()
    }

    async fn fetch(&self, ip: IpAddr) -> Result<Value, LookupError> {
        let name = self.kind.as_str();
        let ip_text = ip.to_string();
        let bearer;
        let (path, headers): (String, Vec<(&str, &str)>) = match self.kind {
            ProviderKind::IpApi => (
                format!(
                    "/json/{ip_text}?fields=status,message,country,countryCode,regionName,city,zip,lat,lon,timezone,as,org"
                ),
                vec![],
            ),
            ProviderKind::Ipinfo => {
                bearer = format!("Bearer {}", self.key());
                (
                    format!("/{ip_text}"),
                    vec![("Authorization", bearer.as_str())],
                )
            }
            ProviderKind::Ipqualityscore => {
                (format!("/api/json/ip/{}/{ip_text}", self.key()), vec![])
            }
            ProviderKind::Abuseipdb => (
                format!("/api/v2/check?ipAddress={ip_text}&maxAgeInDays=90"),
                vec![("Key", self.key())],
            ),
            ProviderKind::Scamalytics => (
                format!(
                    "/{}/?ip={ip_text}&key={}",
                    self.user.as_deref().unwrap_or_default(),
                    self.key()
                ),
                vec![],
            ),
        };
        let r = http::get(&self.base, &path, &headers, self.timeout)
            .await
            .map_err(|e| LookupError::Failed(format!("{name}: {e}")))?;
        let json: Option<Value> = serde_json::from_slice(&r.body).ok();
        let message = json.as_ref().map(error_message).unwrap_or_default();
        match r.status {
            429 => {
                return Err(LookupError::RateLimited {
                    provider: name.into(),
                    retry_after: r.retry_after,
                });
            }
            401 | 403 => {
                return Err(LookupError::Unavailable(format!(
                    "{name}: the key was refused (HTTP {}){message}",
                    r.status
                )));
            }
            200..=299 => {}
            s => return Err(LookupError::Failed(format!("{name}: HTTP {s}{message}"))),
        }
        let Some(v) = json else {
            return Err(LookupError::Failed(format!(
                "{name}: malformed answer (not JSON)"
            )));
        };
        // Errors some providers send with status 200.
        let quota = |m: &str| {
            let m = m.to_ascii_lowercase();
            m.contains("quota") || m.contains("exceeded") || m.contains("rate limit")
        };
        let failed_msg = match self.kind {
            ProviderKind::IpApi if v["status"] == "fail" => {
                Some(v["message"].as_str().unwrap_or("fail"))
            }
            ProviderKind::Ipqualityscore if v["success"] == false => {
                Some(v["message"].as_str().unwrap_or("failed"))
            }
            ProviderKind::Scamalytics if v["status"] == "error" => {
                Some(v["error"].as_str().unwrap_or("error"))
            }
            ProviderKind::Abuseipdb if v.get("errors").is_some() => Some("error"),
            _ => None,
        };
        if let Some(m) = failed_msg {
            if quota(m) {
                return Err(LookupError::RateLimited {
                    provider: name.into(),
                    retry_after: r.retry_after,
                });
            }
            let lower = m.to_ascii_lowercase();
            if lower.contains("key") || lower.contains("auth") {
                return Err(LookupError::Unavailable(format!("{name}: {m}")));
            }
            if matches!(self.kind, ProviderKind::IpApi)
                && (lower.contains("reserved")
                    || lower.contains("private")
                    || lower.contains("invalid query"))
            {
                return Err(LookupError::NotFound(ip));
            }
            return Err(LookupError::Failed(format!("{name}: {m}")));
        }
        Ok(v)
    }
}

fn error_message(v: &Value) -> String {
    let m = v["message"]
        .as_str()
        .or_else(|| v["error"].as_str())
        .or_else(|| v["errors"][0]["detail"].as_str());
    m.map(|m| format!(": {}", m.chars().take(200).collect::<String>()))
        .unwrap_or_default()
}

fn malformed(kind: ProviderKind, what: &str) -> LookupError {
    LookupError::Failed(format!("{}: malformed answer ({what})", kind.as_str()))
}

fn text(v: &Value, k: &str) -> Option<String> {
    v[k].as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// `AS7922 Comcast Cable` → (7922, `Comcast Cable`).
fn as_and_org(s: &str) -> (Option<u32>, Option<String>) {
    let s = s.trim();
    let Some(rest) = s.strip_prefix("AS") else {
        return (None, Some(s.to_owned()).filter(|s| !s.is_empty()));
    };
    let (num, org) = rest.split_once(' ').unwrap_or((rest, ""));
    (
        num.parse().ok(),
        Some(org.trim().to_owned()).filter(|s| !s.is_empty()),
    )
}

fn geo_of(kind: ProviderKind, v: &Value) -> Result<GeoFacts, LookupError> {
    if !v.is_object() {
        return Err(malformed(kind, "not an object"));
    }
    Ok(match kind {
        ProviderKind::IpApi => {
            let (asn, org) = v["as"].as_str().map(as_and_org).unwrap_or_default();
            GeoFacts {
                country_code: text(v, "countryCode"),
                country: text(v, "country"),
                region: text(v, "regionName"),
                city: text(v, "city"),
                postal: text(v, "zip"),
                latitude: v["lat"].as_f64(),
                longitude: v["lon"].as_f64(),
                time_zone: text(v, "timezone"),
                asn,
                org: org.or_else(|| text(v, "org")),
            }
        }
        _ => {
            let (lat, lon) = v["loc"]
                .as_str()
                .and_then(|l| l.split_once(','))
                .map(|(a, b)| (a.trim().parse().ok(), b.trim().parse().ok()))
                .unwrap_or_default();
            let (asn, org) = v["org"].as_str().map(as_and_org).unwrap_or_default();
            let code = text(v, "country");
            GeoFacts {
                country: code
                    .as_deref()
                    .and_then(crate::import::location::country)
                    .map(str::to_owned),
                country_code: code,
                region: text(v, "region"),
                city: text(v, "city"),
                postal: text(v, "postal"),
                latitude: lat,
                longitude: lon,
                time_zone: text(v, "timezone"),
                asn,
                org,
            }
        }
    })
}

fn score_of(kind: ProviderKind, v: &Value) -> Result<FraudScore, LookupError> {
    let num = |x: &Value| -> Option<u8> {
        x.as_f64()
            .or_else(|| x.as_str().and_then(|s| s.trim().parse().ok()))
            .filter(|f| (0.0..=100.0).contains(f))
            .map(|f| f.round() as u8)
    };
    let (score, risk) = match kind {
        ProviderKind::Ipqualityscore => (num(&v["fraud_score"]), None),
        ProviderKind::Abuseipdb => (num(&v["data"]["abuseConfidenceScore"]), None),
        _ => (
            num(&v["score"]),
            v["risk"].as_str().and_then(|r| r.parse::<Risk>().ok()),
        ),
    };
    let score = score.ok_or_else(|| malformed(kind, "no score from 0 to 100"))?;
    Ok(FraudScore {
        score,
        risk: risk.unwrap_or_else(|| Risk::from_score(score)),
    })
}

#[async_trait]
impl GeoLookup for Provider {
    fn source(&self) -> String {
        self.kind.as_str().into()
    }
    async fn lookup(&self, ip: IpAddr) -> Result<GeoFacts, LookupError> {
        let v = self.fetch(ip).await?;
        let f = geo_of(self.kind, &v)?;
        if f.is_empty() {
            return Err(LookupError::NotFound(ip));
        }
        Ok(f)
    }
}

#[async_trait]
impl FraudScorer for Provider {
    fn source(&self) -> String {
        self.kind.as_str().into()
    }
    async fn score(&self, ip: IpAddr) -> Result<FraudScore, LookupError> {
        let v = self.fetch(ip).await?;
        score_of(self.kind, &v)
    }
}

/// At most `max` requests per `window`, and none until a provider's
/// `Retry-After` has passed (callers get `RateLimited` meanwhile, with the
/// time left, so a job waits instead of failing).
#[derive(Debug)]
pub struct Limited<T> {
    inner: T,
    name: String,
    max: usize,
    window: Duration,
    state: Mutex<LimitState>,
}

#[derive(Debug, Default)]
struct LimitState {
    sent: VecDeque<Instant>,
    blocked_until: Option<Instant>,
}

impl<T> Limited<T> {
    /// `inner` limited to `max` (at least 1) requests per `window`.
    pub fn new(inner: T, name: impl Into<String>, max: u32, window: Duration) -> Self {
        Limited {
            inner,
            name: name.into(),
            max: usize::try_from(max.max(1)).unwrap_or(usize::MAX),
            window,
            state: Mutex::new(LimitState::default()),
        }
    }

    /// Waits for a slot; `Err(RateLimited)` while a `Retry-After` runs.
    async fn slot(&self) -> Result<(), LookupError> {
        loop {
            let mut st = self.state.lock().await;
            let now = Instant::now();
            if let Some(until) = st.blocked_until {
                if until > now {
                    return Err(LookupError::RateLimited {
                        provider: self.name.clone(),
                        retry_after: Some(until - now),
                    });
                }
                st.blocked_until = None;
            }
            while st
                .sent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.window)
            {
                st.sent.pop_front();
            }
            if st.sent.len() < self.max {
                st.sent.push_back(now);
                return Ok(());
            }
            let wait = st.sent.front().map_or(Duration::ZERO, |t| {
                self.window.saturating_sub(now.duration_since(*t))
            });
            drop(st);
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    async fn note(&self, e: &LookupError) {
        if let LookupError::RateLimited { retry_after, .. } = e {
            let wait = retry_after.unwrap_or(Duration::from_secs(1));
            self.state.lock().await.blocked_until = Some(Instant::now() + wait);
        }
    }
}

#[async_trait]
impl<T: GeoLookup> GeoLookup for Limited<T> {
    fn source(&self) -> String {
        self.inner.source()
    }
    async fn lookup(&self, ip: IpAddr) -> Result<GeoFacts, LookupError> {
        self.slot().await?;
        let r = self.inner.lookup(ip).await;
        if let Err(e) = &r {
            self.note(e).await;
        }
        r
    }
}

#[async_trait]
impl<T: FraudScorer> FraudScorer for Limited<T> {
    fn source(&self) -> String {
        self.inner.source()
    }
    async fn score(&self, ip: IpAddr) -> Result<FraudScore, LookupError> {
        self.slot().await?;
        let r = self.inner.score(ip).await;
        if let Err(e) = &r {
            self.note(e).await;
        }
        r
    }
}

/// Answers kept in the store (`enrichment_cache`) for `ttl`: a second run
/// within it asks the provider nothing.
pub struct Cached<T> {
    inner: T,
    store: Arc<dyn NodeStore>,
    ttl: Duration,
}

impl<T> Cached<T> {
    /// `inner` behind the store's cache.
    pub fn new(inner: T, store: Arc<dyn NodeStore>, ttl: Duration) -> Self {
        Cached { inner, store, ttl }
    }

    async fn get<V: for<'de> Deserialize<'de>>(&self, source: &str, ip: IpAddr) -> Option<V> {
        let since =
            Utc::now() - chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::MAX);
        match self.store.cache_get(source, &ip.to_string(), since).await {
            Ok(Some(text)) => serde_json::from_str(&text).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "enrichment cache: read failed");
                None
            }
        }
    }

    async fn put<V: Serialize>(&self, source: &str, ip: IpAddr, v: &V) {
        if let Ok(text) = serde_json::to_string(v)
            && let Err(e) = self
                .store
                .cache_put(source, &ip.to_string(), &text, Utc::now())
                .await
        {
            tracing::warn!(error = %e, "enrichment cache: write failed");
        }
    }
}

#[derive(Serialize, Deserialize)]
struct CachedScore {
    score: u8,
    risk: Risk,
}

#[async_trait]
impl<T: GeoLookup> GeoLookup for Cached<T> {
    fn source(&self) -> String {
        self.inner.source()
    }
    async fn lookup(&self, ip: IpAddr) -> Result<GeoFacts, LookupError> {
        let source = self.inner.source();
        if let Some(f) = self.get::<GeoFacts>(&source, ip).await {
            return Ok(f);
        }
        let f = self.inner.lookup(ip).await?;
        self.put(&source, ip, &f).await;
        Ok(f)
    }
}

#[async_trait]
impl<T: FraudScorer> FraudScorer for Cached<T> {
    fn source(&self) -> String {
        self.inner.source()
    }
    async fn score(&self, ip: IpAddr) -> Result<FraudScore, LookupError> {
        let source = self.inner.source();
        if let Some(c) = self.get::<CachedScore>(&source, ip).await {
            return Ok(FraudScore {
                score: c.score,
                risk: c.risk,
            });
        }
        let s = self.inner.score(ip).await?;
        self.put(
            &source,
            ip,
            &CachedScore {
                score: s.score,
                risk: s.risk,
            },
        )
        .await;
        Ok(s)
    }
}

/// The error of a chain whose every source failed: rate limited (the
/// shortest wait) if any was, so the job waits; else unavailable if every
/// source was; else the last error.
fn chain_error(errors: Vec<LookupError>, ip: IpAddr) -> LookupError {
    let limited = errors
        .iter()
        .filter_map(|e| match e {
            LookupError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        })
        .min_by_key(|d| d.unwrap_or(Duration::from_secs(1)));
    if let Some(retry_after) = limited {
        return LookupError::RateLimited {
            provider: "every source".into(),
            retry_after,
        };
    }
    if !errors.is_empty()
        && errors
            .iter()
            .all(|e| matches!(e, LookupError::Unavailable(_)))
    {
        return errors
            .into_iter()
            .next_back()
            .unwrap_or(LookupError::NotFound(ip));
    }
    errors
        .into_iter()
        .rfind(|e| !matches!(e, LookupError::Unavailable(_)))
        .unwrap_or(LookupError::NotFound(ip))
}

/// GEO sources tried in order (the offline databases first, then providers):
/// the first answer wins; the record's source says which.
pub struct GeoChain {
    sources: Vec<Arc<dyn GeoLookup>>,
    last: std::sync::Mutex<std::collections::HashMap<IpAddr, String>>,
}

impl GeoChain {
    /// A chain of these sources.
    pub fn new(sources: Vec<Arc<dyn GeoLookup>>) -> Self {
        GeoChain {
            sources,
            last: Default::default(),
        }
    }

    /// Looks `ip` up; returns the facts and the source that answered.
    pub async fn lookup_with_source(&self, ip: IpAddr) -> Result<(GeoFacts, String), LookupError> {
        let mut errors = Vec::new();
        for s in &self.sources {
            match s.lookup(ip).await {
                Ok(f) => return Ok((f, s.source())),
                Err(e) => errors.push(e),
            }
        }
        Err(chain_error(errors, ip))
    }
}

#[async_trait]
impl GeoLookup for GeoChain {
    fn source(&self) -> String {
        self.sources
            .iter()
            .map(|s| s.source())
            .collect::<Vec<_>>()
            .join("+")
    }
    async fn lookup(&self, ip: IpAddr) -> Result<GeoFacts, LookupError> {
        let (f, source) = self.lookup_with_source(ip).await?;
        if let Ok(mut m) = self.last.lock() {
            m.insert(ip, source);
        }
        Ok(f)
    }
    fn answered_by(&self, ip: IpAddr) -> Option<String> {
        self.last.lock().ok().and_then(|mut m| m.remove(&ip))
    }
}

/// Fraud scorers tried in order; the first answer wins.
pub struct FraudChain {
    sources: Vec<Arc<dyn FraudScorer>>,
    last: std::sync::Mutex<std::collections::HashMap<IpAddr, String>>,
}

impl FraudChain {
    /// A chain of these scorers.
    pub fn new(sources: Vec<Arc<dyn FraudScorer>>) -> Self {
        FraudChain {
            sources,
            last: Default::default(),
        }
    }
}

#[async_trait]
impl FraudScorer for FraudChain {
    fn source(&self) -> String {
        self.sources
            .iter()
            .map(|s| s.source())
            .collect::<Vec<_>>()
            .join("+")
    }
    async fn score(&self, ip: IpAddr) -> Result<FraudScore, LookupError> {
        let mut errors = Vec::new();
        for s in &self.sources {
            match s.score(ip).await {
                Ok(v) => {
                    if let Ok(mut m) = self.last.lock() {
                        m.insert(ip, s.source());
                    }
                    return Ok(v);
                }
                Err(e) => errors.push(e),
            }
        }
        Err(chain_error(errors, ip))
    }
    fn answered_by(&self, ip: IpAddr) -> Option<String> {
        self.last.lock().ok().and_then(|mut m| m.remove(&ip))
    }
}
