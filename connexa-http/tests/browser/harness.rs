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
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium_path(), "args": CHROMIUM_FLAGS },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
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

    /// Clicks the first element matching `css` (a real WebDriver click).
    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
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
                let path = std::env::temp_dir().join(format!(
                    "connexa-browser-{name}-{}.png",
                    std::process::id()
                ));
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

/// Where screenshots go: `$CONNEXA_SCREENSHOTS` (e.g. `docs` to refresh the
/// committed ones), else a temporary directory.
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("CONNEXA_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("connexa-screenshots"))
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
