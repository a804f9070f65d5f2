//! Headless Chromium over WebDriver (Debian's `chromium` + `chromium-driver`).
//!
//! `chromedriver` runs in its own process group, which is killed as a whole when
//! the [`Browser`] is dropped, so a failing test leaves no Chromium behind.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// The flags the console's browser tests start Chromium with.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
];

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn chromedriver_path() -> PathBuf {
    let path = std::env::var_os("CONNEXA_TEST_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
    assert!(
        path.exists(),
        "{} not found: the browser tests need Debian's chromium and chromium-driver \
         (tests/run.sh installs them; or skip these tests with `cargo test -- --skip browser`)",
        path.display()
    );
    path
}

fn chromium_path() -> String {
    std::env::var("CONNEXA_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

/// A WebDriver session on a private chromedriver.
pub struct Browser {
    pub client: Client,
    driver: Child,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a session.
    pub async fn start() -> Browser {
        let port = free_port();
        let mut driver = Command::new(chromedriver_path())
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chromium_path(), "args": CHROMIUM_FLAGS }),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let mut builder =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            builder.capabilities(caps.clone());
            match builder.connect(&url).await {
                Ok(c) => break c,
                Err(e) => {
                    if let Ok(Some(status)) = driver.try_wait() {
                        panic!("chromedriver exited with {status}");
                    }
                    assert!(Instant::now() < deadline, "no WebDriver session: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Browser { client, driver }
    }

    /// Ends the session (Chromium exits), then chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }

    /// Navigates and waits for the page to finish loading.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("goto");
    }

    /// Runs a script (a function body; `arguments` holds `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `script` returns a truthy value; returns that value.
    pub async fn wait_js(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.client.execute(script, vec![]).await {
                Ok(v) if truthy(&v) => return v,
                Ok(v) => v,
                Err(e) => json!(e.to_string()),
            };
            if Instant::now() > deadline {
                let shot = self.screenshot_to_temp("timeout").await;
                panic!(
                    "timed out after {timeout:?} waiting for {what} (last value {last}); screenshot {shot}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .text()
            .await
            .expect("text")
    }

    /// Clicks the first element matching `css` (a real WebDriver click),
    /// scrolled to the middle of the viewport first: WebDriver only scrolls an
    /// element into view, where the sticky top bar may still cover it.
    pub async fn click(&self, css: &str) {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        let arg = serde_json::to_value(&el).expect("element reference");
        self.client
            .execute(
                "arguments[0].scrollIntoView({block: 'center', inline: 'nearest'})",
                vec![arg],
            )
            .await
            .unwrap_or_else(|e| panic!("scroll to {css}: {e}"));
        el.click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Types into the first element matching `css` (after clearing it).
    pub async fn type_into(&self, css: &str, text: &str) {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        el.clear().await.expect("clear");
        el.send_keys(text).await.expect("send_keys");
    }

    /// Saves a PNG screenshot to `dir/name.png`.
    pub async fn screenshot(&self, dir: &std::path::Path, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::create_dir_all(dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    async fn screenshot_to_temp(&self, name: &str) -> String {
        match self.client.screenshot().await {
            Ok(png) => {
                let path = std::env::temp_dir()
                    .join(format!("connexa-browser-{name}-{}.png", std::process::id()));
                match std::fs::write(&path, png) {
                    Ok(()) => path.display().to_string(),
                    Err(e) => format!("(not written: {e})"),
                }
            }
            Err(e) => format!("(none: {e})"),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the Chromium it started share chromedriver's process group.
        let pgid = self.driver.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status();
        let _ = self.driver.wait();
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// Where screenshots go: `$CONNEXA_SCREENSHOTS` (a relative path is taken from
/// the workspace root, so `docs/console` refreshes the committed ones), else a
/// temporary directory.
pub fn screenshot_dir() -> PathBuf {
    match std::env::var_os("CONNEXA_SCREENSHOTS").map(PathBuf::from) {
        Some(dir) if dir.is_relative() => std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(dir),
        Some(dir) => dir,
        None => std::env::temp_dir().join("connexa-screenshots"),
    }
}

/// Serves a router on a free loopback port in this process.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// The real `connexa-http` binary on a loopback port over a temporary SQLite
/// database, with one API token. Killed (and its database removed) on drop.
pub struct Server {
    pub base: String,
    pub token: String,
    db: String,
    child: Child,
    _dir: tempfile::TempDir,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Like [`Server::start`], with more `serve` options (`--background-import-mib 0`).
    pub fn start_with(serve_args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("connexa.db").display()
        );
        let exe = env!("CARGO_BIN_EXE_connexa-http");
        let out = Command::new(exe)
            .args([
                "--db",
                &db,
                "token",
                "create",
                "--name",
                "browser-test",
                "--role",
                "admin",
            ])
            .env_remove("CONNEXA_CONFIG")
            .output()
            .expect("run connexa-http token create");
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout)
            .expect("utf-8 token")
            .trim()
            .to_owned();
        assert!(!token.is_empty(), "no token printed");
        let mut child = Command::new(exe)
            .args(["--db", &db, "serve", "--listen", "127.0.0.1:0"])
            .args(serve_args)
            .env_remove("CONNEXA_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn connexa-http");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                let mut tx = Some(tx);
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    if let Some(addr) = line.split("listening on http://").nth(1)
                        && let Some(t) = tx.take()
                    {
                        let _ = t.send(addr.trim().to_owned());
                    }
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "connexa-http did not say where it listens: {}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                )
            });
        Server {
            base: format!("http://{addr}"),
            token,
            db,
            child,
            _dir: dir,
            log,
        }
    }

    /// Another token, of this role (`viewer`, `operator`, `admin`), made with
    /// `connexa-http token create` on the server's database.
    #[allow(dead_code)]
    pub fn create_token(&self, name: &str, role: &str) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_connexa-http"))
            .args([
                "--db", &self.db, "token", "create", "--name", name, "--role", role,
            ])
            .env_remove("CONNEXA_CONFIG")
            .output()
            .expect("run connexa-http token create");
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8 token")
            .trim()
            .to_owned()
    }

    /// The URL of the server's database (for the CLI and direct checks).
    #[allow(dead_code)]
    pub fn db_url(&self) -> String {
        self.db.clone()
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// `METHOD /api/v1{path}` with the token; the status and the JSON body (Null if none).
    pub async fn api(&self, method: &str, path: &str) -> (u16, Value) {
        self.api_json(method, path, None).await
    }

    /// Like [`Server::api`], with an optional JSON request body.
    pub async fn api_json(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        use http_body_util::BodyExt;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<hyper::body::Bytes>>();
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}/api/v1{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token));
        let bytes = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                hyper::body::Bytes::from(v.to_string())
            }
            None => hyper::body::Bytes::new(),
        };
        let req = req.body(http_body_util::Full::new(bytes)).expect("request");
        let res = client.request(req).await.expect("API request");
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        let json = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
        };
        (status, json)
    }

    /// `GET` that must answer 200.
    pub async fn get(&self, path: &str) -> Value {
        let (status, v) = self.api("GET", path).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    /// Ids of every node matching a query string (`status=ping_failed`), in id order.
    pub async fn ids(&self, query: &str) -> Vec<i64> {
        let v = self
            .get(&format!("/nodes?limit=10000&sort=id&{query}"))
            .await;
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|n| n["id"].as_i64().expect("id"))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- connexa-http's log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
