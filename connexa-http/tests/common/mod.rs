//! Shared helpers of the in-process tests: a temporary SQLite store, an engine
//! with a fast prober, a token, and `oneshot` requests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use connexa_core::domain::NodeFilter;
use connexa_core::engine::{Engine, EngineConfig, NotAvailable};
use connexa_core::ops;
use connexa_core::probe::{LightProber, ProbeConfig};
use connexa_core::store::SqlStore;
use connexa_http::{AppState, HttpOptions, app};
use http_body_util::BodyExt;
use tower::ServiceExt;

pub struct Api {
    pub dir: tempfile::TempDir,
    pub store: Arc<SqlStore>,
    pub state: AppState,
    pub app: Router,
    pub token: String,
}

pub struct Res {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Res {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts an RFC 9457 problem with this status and slug.
    pub fn problem(&self, status: u16, slug: &str) -> serde_json::Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        assert_eq!(
            self.headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        let j = self.json();
        assert_eq!(j["type"], format!("urn:connexa:problem:{slug}"), "{j}");
        assert_eq!(j["status"], status);
        assert!(j["title"].is_string() && j["detail"].is_string(), "{j}");
        j
    }
}

pub async fn api() -> Api {
    api_with(HttpOptions::default()).await
}

pub async fn api_with(options: HttpOptions) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let store = Arc::new(SqlStore::connect(&url).await.unwrap());
    let prober = LightProber::new(ProbeConfig {
        connect_timeout: Duration::from_millis(500),
        handshake_timeout: Duration::from_millis(500),
        attempts: 1,
        icmp: None,
        ..ProbeConfig::default()
    });
    let engine = Engine::new(
        store.clone(),
        Arc::new(prober),
        Arc::new(NotAvailable),
        Arc::new(NotAvailable),
        EngineConfig {
            concurrency: 64,
            poll_interval: Duration::from_millis(50),
            node_timeout: Duration::from_secs(5),
            ..EngineConfig::default()
        },
    );
    let (token, _) = connexa_http::auth::create_token(store.as_ref(), "test", None)
        .await
        .unwrap();
    let state = AppState::new(engine, store.clone(), options).with_accounts(store.clone());
    let app = app(state.clone());
    Api {
        dir,
        store,
        state,
        app,
        token,
    }
}

impl Api {
    pub async fn req(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
        from: Option<SocketAddr>,
    ) -> Res {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some((ct, bytes)) => {
                b = b.header(header::CONTENT_TYPE, ct);
                Body::from(bytes)
            }
            None => Body::empty(),
        };
        let mut req = b.body(body).unwrap();
        if let Some(addr) = from {
            req.extensions_mut().insert(ConnectInfo(addr));
        }
        self.send(req).await
    }

    /// Sends a request as it is and reads the whole answer.
    pub async fn send(&self, req: Request<Body>) -> Res {
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
        Res {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Res {
        self.req(Method::GET, uri, Some(&self.token), None, None)
            .await
    }

    pub async fn delete(&self, uri: &str) -> Res {
        self.req(Method::DELETE, uri, Some(&self.token), None, None)
            .await
    }

    pub async fn send_json(&self, method: Method, uri: &str, body: serde_json::Value) -> Res {
        let bytes = serde_json::to_vec(&body).unwrap();
        self.req(
            method,
            uri,
            Some(&self.token),
            Some(("application/json", bytes)),
            None,
        )
        .await
    }

    pub async fn import(&self, list: &str) -> Res {
        self.req(
            Method::POST,
            "/api/v1/import",
            Some(&self.token),
            Some(("text/plain", list.as_bytes().to_vec())),
            None,
        )
        .await
    }

    /// Every node, in an exact textual form (ids, statuses, meta, passwords).
    pub async fn snapshot(&self) -> String {
        let nodes = ops::all_matching(self.store.as_ref(), &NodeFilter::all())
            .await
            .unwrap();
        nodes
            .iter()
            .map(|n| serde_json::to_string(&ops::NodeView::new(n, true)).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `n` nodes on 127.9.x.y, countries cycling through US, DE, FR.
pub fn fleet_list(n: usize) -> String {
    let places = ["US:Texas:75001", "DE:Berlin:10115", "FR:Paris:75002"];
    (0..n)
        .map(|i| {
            format!(
                "127.9.{}.{}:user{i}:pw{i}:{}\n",
                i / 250,
                i % 250 + 1,
                places[i % 3]
            )
        })
        .collect()
}
