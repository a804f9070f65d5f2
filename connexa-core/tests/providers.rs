//! Online providers against a local stand-in on 127.0.0.1 that answers in
//! each provider's documented JSON shape: keys sent as documented, answers
//! parsed, errors, 429 and quota exhaustion (retry later, the job does not
//! fail), malformed bodies (a per-node error), the rate limit, the cache and
//! the fallback order. Nothing here reaches the internet.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connexa_core::domain::{NodeFilter, Risk, Secret};
use connexa_core::engine::{Engine, EngineConfig, JobOptions, NotAvailable};
use connexa_core::geo::online::{Cached, FraudChain, GeoChain, Limited, Provider, ProviderKind};
use connexa_core::ports::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
    at: Instant,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Reply = (u16, Vec<(&'static str, String)>, String);
type Handler = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

/// An HTTP stand-in: every request is recorded and answered by `handler`
/// (given the request and how many came before it).
async fn stand_in(handler: Handler) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log2 = Arc::clone(&log);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let log = Arc::clone(&log2);
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let mut lines = head.split("\r\n");
                let path = lines
                    .next()
                    .unwrap_or("")
                    .split(' ')
                    .nth(1)
                    .unwrap_or("")
                    .to_owned();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .collect();
                let seen = Seen {
                    path,
                    headers,
                    at: Instant::now(),
                };
                let n = {
                    let mut l = log.lock().unwrap();
                    l.push(seen.clone());
                    l.len() - 1
                };
                let (status, extra, body) = handler(&seen, n);
                let mut resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                    body.len()
                );
                for (k, v) in extra {
                    resp.push_str(&format!("{k}: {v}\r\n"));
                }
                resp.push_str("Connection: close\r\n\r\n");
                resp.push_str(&body);
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}"), log)
}

fn ok(body: &str) -> Reply {
    (200, vec![], body.to_owned())
}

fn provider(kind: ProviderKind, base: &str) -> Provider {
    let user = (kind == ProviderKind::Scamalytics).then(|| "acme".to_owned());
    let key = kind.needs_key().then(|| Secret::new("K3Y"));
    Provider::new(kind, Some(base), key, user).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn each_provider_gets_its_key_as_documented_and_its_answer_is_read() {
    let (base, log) = stand_in(Arc::new(|s: &Seen, _| {
        if s.path.starts_with("/json/") {
            ok(r#"{"status":"success","country":"United States","countryCode":"US","regionName":"Texas","city":"Austin","zip":"78701","lat":30.27,"lon":-97.74,"timezone":"America/Chicago","as":"AS7922 Comcast Cable Communications, LLC","org":"Comcast"}"#)
        } else if s.path.starts_with("/api/json/ip/") {
            ok(r#"{"success":true,"message":"Success","fraud_score":88,"country_code":"US","proxy":true,"vpn":true}"#)
        } else if s.path.starts_with("/api/v2/check") {
            ok(r#"{"data":{"ipAddress":"198.51.100.7","abuseConfidenceScore":31,"countryCode":"US"}}"#)
        } else if s.path.starts_with("/acme/") {
            ok(r#"{"status":"ok","ip":"198.51.100.7","score":"12","risk":"low"}"#)
        } else {
            ok(r#"{"ip":"198.51.100.7","city":"Berlin","region":"Land Berlin","country":"DE","loc":"52.52,13.40","org":"AS3320 Deutsche Telekom AG","postal":"10115","timezone":"Europe/Berlin"}"#)
        }
    }))
    .await;
    let a = ip("198.51.100.7");

    let f = provider(ProviderKind::IpApi, &base)
        .lookup(a)
        .await
        .unwrap();
    assert_eq!(
        (
            f.country_code.as_deref(),
            f.region.as_deref(),
            f.city.as_deref(),
            f.postal.as_deref()
        ),
        (Some("US"), Some("Texas"), Some("Austin"), Some("78701"))
    );
    assert_eq!(
        (f.asn, f.org.as_deref()),
        (Some(7922), Some("Comcast Cable Communications, LLC"))
    );
    assert_eq!(
        (f.latitude, f.time_zone.as_deref()),
        (Some(30.27), Some("America/Chicago"))
    );

    let f = provider(ProviderKind::Ipinfo, &base)
        .lookup(a)
        .await
        .unwrap();
    assert_eq!(
        (f.country_code.as_deref(), f.country.as_deref()),
        (Some("DE"), Some("Germany"))
    );
    assert_eq!((f.latitude, f.longitude), (Some(52.52), Some(13.40)));
    assert_eq!(
        (f.asn, f.org.as_deref()),
        (Some(3320), Some("Deutsche Telekom AG"))
    );

    let s = provider(ProviderKind::Ipqualityscore, &base)
        .score(a)
        .await
        .unwrap();
    assert_eq!((s.score, s.risk), (88, Risk::VeryHigh));
    let s = provider(ProviderKind::Abuseipdb, &base)
        .score(a)
        .await
        .unwrap();
    assert_eq!((s.score, s.risk), (31, Risk::Medium));
    let s = provider(ProviderKind::Scamalytics, &base)
        .score(a)
        .await
        .unwrap();
    assert_eq!((s.score, s.risk), (12, Risk::Low));

    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 5);
    assert!(
        log[0].path.starts_with("/json/198.51.100.7?fields="),
        "{:?}",
        log[0]
    );
    assert!(
        log[0].header("Authorization").is_none() && !log[0].path.contains("K3Y"),
        "ip-api has no key"
    );
    assert_eq!(log[1].path, "/198.51.100.7");
    assert_eq!(log[1].header("Authorization"), Some("Bearer K3Y"));
    assert_eq!(log[2].path, "/api/json/ip/K3Y/198.51.100.7");
    assert_eq!(
        log[3].path,
        "/api/v2/check?ipAddress=198.51.100.7&maxAgeInDays=90"
    );
    assert_eq!(log[3].header("Key"), Some("K3Y"));
    assert_eq!(log[4].path, "/acme/?ip=198.51.100.7&key=K3Y");
}

#[tokio::test]
async fn errors_quota_and_malformed_bodies_are_told_apart_and_keys_never_shown() {
    let (base, _log) = stand_in(Arc::new(|s: &Seen, _| {
        if s.path.contains("198.51.100.1") {
            (429, vec![("Retry-After", "7".to_owned())], r#"{"errors":[{"detail":"Daily rate limit of 1000 requests exceeded","status":429}]}"#.to_owned())
        } else if s.path.contains("198.51.100.2") {
            ok(r#"{"success":false,"message":"You have exceeded your request quota of 5000 per month."}"#)
        } else if s.path.contains("198.51.100.3") {
            ok(r#"{"fraud_score": "#)
        } else if s.path.contains("198.51.100.4") {
            (401, vec![], r#"{"errors":[{"detail":"Authentication failed. Your API key is invalid","status":401}]}"#.to_owned())
        } else if s.path.contains("198.51.100.5") {
            ok(r#"{"success":true,"fraud_score":250}"#)
        } else if s.path.contains("10.0.0.1") {
            ok(r#"{"status":"fail","message":"private range","query":"10.0.0.1"}"#)
        } else {
            (500, vec![], "<html>oops</html>".to_owned())
        }
    }))
    .await;
    let q = provider(ProviderKind::Ipqualityscore, &base);
    assert_eq!(
        q.score(ip("198.51.100.1")).await,
        Err(LookupError::RateLimited {
            provider: "ipqualityscore".into(),
            retry_after: Some(Duration::from_secs(7))
        })
    );
    assert!(matches!(
        q.score(ip("198.51.100.2")).await,
        Err(LookupError::RateLimited {
            retry_after: None,
            ..
        })
    ));
    let e = q.score(ip("198.51.100.3")).await.unwrap_err();
    assert!(
        matches!(&e, LookupError::Failed(m) if m.contains("malformed")),
        "{e:?}"
    );
    let e = q.score(ip("198.51.100.4")).await.unwrap_err();
    assert!(
        matches!(&e, LookupError::Unavailable(m) if m.contains("key was refused")),
        "{e:?}"
    );
    let e = q.score(ip("198.51.100.5")).await.unwrap_err();
    assert!(
        matches!(&e, LookupError::Failed(m) if m.contains("0 to 100")),
        "{e:?}"
    );
    let e = q.score(ip("198.51.100.6")).await.unwrap_err();
    assert!(
        matches!(&e, LookupError::Failed(m) if m.contains("HTTP 500")),
        "{e:?}"
    );
    let api = provider(ProviderKind::IpApi, &base);
    assert_eq!(
        api.lookup(ip("10.0.0.1")).await,
        Err(LookupError::NotFound(ip("10.0.0.1")))
    );
    // The key is in the request path of this provider; no message shows it.
    for a in [
        "198.51.100.1",
        "198.51.100.3",
        "198.51.100.4",
        "198.51.100.6",
    ] {
        let e = q.score(ip(a)).await.unwrap_err();
        assert!(!e.to_string().contains("K3Y"), "{e}");
    }
    assert!(!format!("{q:?}").contains("K3Y"), "Debug shows no key");
    // A provider that cannot answer at all is refused before any request.
    assert!(Provider::new(ProviderKind::Ipinfo, Some(&base), None, None).is_err());
    assert!(
        Provider::new(
            ProviderKind::Scamalytics,
            Some(&base),
            Some(Secret::new("k")),
            None
        )
        .is_err()
    );
}

#[tokio::test]
async fn rate_limit_holds_and_retry_after_is_respected_without_calls() {
    let (base, log) = stand_in(Arc::new(|_: &Seen, _| {
        ok(r#"{"status":"ok","score":"40","risk":"medium"}"#)
    }))
    .await;
    let window = Duration::from_millis(1000);
    let limited = Limited::new(
        provider(ProviderKind::Scamalytics, &base),
        "scamalytics",
        3,
        window,
    );
    for i in 0..8 {
        limited.score(ip(&format!("198.51.100.{i}"))).await.unwrap();
    }
    let times: Vec<Instant> = log.lock().unwrap().iter().map(|s| s.at).collect();
    assert_eq!(times.len(), 8);
    // Never more than 3 requests within any window. The stand-in stamps a
    // request when it arrives, which a loaded machine may delay by a few
    // hundred milliseconds after the limiter let it go: 300 ms of slack.
    let strict = window - Duration::from_millis(300);
    for (i, t) in times.iter().enumerate() {
        let within = times[i..]
            .iter()
            .filter(|u| u.duration_since(*t) < strict)
            .count();
        assert!(
            within <= 3,
            "{within} requests within {strict:?} from request {i}"
        );
    }

    // A 429 with Retry-After: further calls are refused here, none is sent.
    let (base, log) = stand_in(Arc::new(|_: &Seen, n| {
        if n == 0 {
            (429, vec![("Retry-After", "30".to_owned())], "{}".to_owned())
        } else {
            ok(r#"{"status":"ok","score":"1","risk":"low"}"#)
        }
    }))
    .await;
    let limited = Limited::new(
        provider(ProviderKind::Scamalytics, &base),
        "scamalytics",
        100,
        Duration::from_secs(60),
    );
    assert!(matches!(
        limited.score(ip("198.51.100.1")).await,
        Err(LookupError::RateLimited { .. })
    ));
    for _ in 0..5 {
        match limited.score(ip("198.51.100.2")).await {
            Err(LookupError::RateLimited {
                retry_after: Some(d),
                ..
            }) => {
                assert!(
                    d > Duration::from_secs(20) && d <= Duration::from_secs(30),
                    "{d:?}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "nothing sent while the provider asked to wait"
    );
}

#[tokio::test]
async fn cache_answers_a_second_run_and_the_chain_falls_back_in_order() {
    let db = common::sqlite().await;
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let (down, down_log) = stand_in(Arc::new(|_: &Seen, _| (503, vec![], "{}".to_owned()))).await;
    let (up, up_log) = stand_in(Arc::new(|_: &Seen, _| {
        ok(r#"{"city":"Oslo","region":"Oslo","country":"NO","org":"AS2119 Telenor","loc":"59.9,10.7"}"#)
    }))
    .await;
    let cached = |kind, base: &str| -> Arc<dyn GeoLookup> {
        Arc::new(Cached::new(
            provider(kind, base),
            Arc::clone(&store),
            Duration::from_secs(3600),
        ))
    };
    let chain = GeoChain::new(vec![
        cached(ProviderKind::IpApi, &down),
        cached(ProviderKind::Ipinfo, &up),
    ]);
    for round in 0..2 {
        for i in 1..=3 {
            let a = ip(&format!("203.0.113.{i}"));
            let f = chain.lookup(a).await.unwrap();
            assert_eq!(f.city.as_deref(), Some("Oslo"));
            assert_eq!(
                chain.answered_by(a).as_deref(),
                Some("ipinfo"),
                "round {round}"
            );
        }
    }
    assert_eq!(
        up_log.lock().unwrap().len(),
        3,
        "the second round came from the cache"
    );
    assert_eq!(down_log.lock().unwrap().len(), 6, "failures are not cached");
}

#[tokio::test]
async fn fraud_job_over_a_quota_waits_and_ends_done_with_per_node_errors() {
    let db = common::sqlite().await;
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let ids = common::seed(store.as_ref(), 6).await; // 10.0.0.0 ..= 10.0.0.5
    // The first answers are a quota message; 10.0.0.5 always gets a malformed body.
    let (base, log) = stand_in(Arc::new(|s: &Seen, n| {
        if s.path.contains("10.0.0.5") {
            ok("{not json")
        } else if n < 2 {
            (429, vec![("Retry-After", "1".to_owned())], "{}".to_owned())
        } else {
            ok(r#"{"data":{"abuseConfidenceScore":64}}"#)
        }
    }))
    .await;
    let limited = Limited::new(
        provider(ProviderKind::Abuseipdb, &base),
        "abuseipdb",
        1000,
        Duration::from_secs(60),
    );
    let engine = Engine::new(
        Arc::clone(&store),
        Arc::new(NoProber),
        Arc::new(NotAvailable),
        Arc::new(NotAvailable),
        EngineConfig {
            poll_interval: Duration::from_millis(20),
            ..EngineConfig::default()
        },
    );
    engine.set_fraud(Arc::new(FraudChain::new(vec![Arc::new(limited)])));
    let job = engine
        .start_job(
            JobKind::Fraud,
            NodeFilter::all(),
            JobOptions::default().concurrency(2),
        )
        .await
        .unwrap();
    let sum = tokio::time::timeout(Duration::from_secs(120), engine.wait(job))
        .await
        .expect("bounded")
        .unwrap();
    assert_eq!(
        sum.job.state,
        JobState::Done,
        "a quota does not fail the job"
    );
    assert_eq!(
        (sum.progress.ok, sum.progress.failed),
        (5, 1),
        "{:?}",
        sum.progress
    );
    for (i, id) in ids.iter().enumerate() {
        let n = store.get(*id).await.unwrap().unwrap();
        match i {
            5 => assert_eq!(n.enrichment.fraud, None),
            _ => {
                let f = n.enrichment.fraud.expect("scored");
                assert_eq!(
                    (f.score, f.risk, f.provider.as_str()),
                    (64, Risk::High, "abuseipdb")
                );
            }
        }
    }
    assert!(log.lock().unwrap().len() >= 8);
}

struct NoProber;

#[async_trait::async_trait]
impl Prober for NoProber {
    async fn probe(
        &self,
        _: &connexa_core::domain::Node,
        _: ProbeDepth,
    ) -> Result<connexa_core::domain::Outcome, ProbeError> {
        panic!("an enrichment job probed a node")
    }
}

#[tokio::test]
async fn the_config_file_wires_providers_and_refuses_a_missing_key() {
    let db = common::sqlite().await;
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let (base, log) = stand_in(Arc::new(|s: &Seen, _| {
        if s.path.starts_with("/json/") {
            ok(r#"{"status":"success","countryCode":"FR","country":"France","city":"Lyon","as":"AS3215 Orange"}"#)
        } else {
            ok(r#"{"status":"ok","score":"77","risk":"high"}"#)
        }
    }))
    .await;
    let text = format!(
        "[geo]\nonline = [\"ip-api\"]\n[fraud]\nproviders = [\"scamalytics\"]\n\
         [providers.ip-api]\nbase_url = \"{base}\"\n\
         [providers.scamalytics]\nbase_url = \"{base}\"\nuser = \"acme\"\nkey = \"F1LEKEY\"\nrequests_per_minute = 5\n"
    );
    let config = connexa_core::config::Config::from_toml_str(&text).unwrap();
    assert!(connexa_core::runtime::geo_configured(&config));
    assert!(connexa_core::runtime::fraud_configured(&config));
    let geo = connexa_core::runtime::geo_lookup(&config, &store)
        .unwrap()
        .expect("geo");
    let fraud = connexa_core::runtime::fraud_scorer(&config, &store)
        .unwrap()
        .expect("fraud");
    let a = ip("192.0.2.44");
    let f = geo.lookup(a).await.unwrap();
    assert_eq!((f.city.as_deref(), f.asn), (Some("Lyon"), Some(3215)));
    assert_eq!(geo.source(), "ip-api");
    let s = fraud.score(a).await.unwrap();
    assert_eq!((s.score, s.risk), (77, Risk::High));
    // Cached: asking again sends nothing.
    fraud.score(a).await.unwrap();
    geo.lookup(a).await.unwrap();
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].path, "/acme/?ip=192.0.2.44&key=F1LEKEY");

    // A key named by an unset environment variable is an error at start.
    let text = "[fraud]\nproviders = [\"abuseipdb\"]\n[providers.abuseipdb]\nkey_env = \"CONNEXA_TEST_SURELY_UNSET_KEY_VAR\"\n";
    let config = connexa_core::config::Config::from_toml_str(text).unwrap();
    let e = connexa_core::runtime::fraud_scorer(&config, &store)
        .err()
        .expect("refused");
    assert!(
        e.to_string().contains("CONNEXA_TEST_SURELY_UNSET_KEY_VAR"),
        "{e}"
    );
    let text = "[fraud]\nproviders = [\"ipqualityscore\"]\n";
    let config = connexa_core::config::Config::from_toml_str(text).unwrap();
    let e = connexa_core::runtime::fraud_scorer(&config, &store)
        .err()
        .expect("refused");
    assert!(e.to_string().contains("no API key"), "{e}");
}
