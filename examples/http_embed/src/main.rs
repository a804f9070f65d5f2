//! Embeds Connexa's REST API in your own program: a SQLite store of your own,
//! an engine over it, a token, `connexa_http::app` served on an ephemeral
//! loopback port; then one authenticated request (`GET /api/v1/stats`) over a
//! real socket, and exit. Run: `cargo run -p example-http-embed`.

use std::sync::Arc;

use connexa_core::engine::{Engine, EngineConfig, NotAvailable};
use connexa_core::import::{ImportOptions, import_into};
use connexa_core::probe::{LightProber, ProbeConfig};
use connexa_core::store::SqlStore;
use connexa_http::{AppState, HttpOptions, app};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Your store, with a few nodes in it.
    let dir = tempfile::tempdir()?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("embed.db").display()
    );
    let store = Arc::new(SqlStore::connect(&url).await?);
    let list = "127.0.0.5:admin:pw\n127.0.0.6:admin:pw\n";
    import_into(store.clone(), list.as_bytes(), ImportOptions::default()).await;

    // The engine the API starts jobs on, and a bearer token (stored hashed).
    let engine = Engine::new(
        store.clone(),
        Arc::new(LightProber::new(ProbeConfig::default())),
        Arc::new(NotAvailable),
        Arc::new(NotAvailable),
        EngineConfig::default(),
    );
    let (token, _) = connexa_http::auth::create_token(store.as_ref(), "example", None).await?;
    let state = AppState::new(engine, store, HttpOptions::default());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // connexa_http's serve loop: header/idle timeouts, a connection cap, a
    // minimum body rate, and the peer address the auth rate limit needs.
    let server = tokio::spawn(connexa_http::serve::serve(
        listener,
        app(state),
        connexa_http::serve::ServeOptions::default(),
        std::future::pending(),
    ));

    // One request over a real socket.
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "GET /api/v1/stats HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut res = String::new();
    s.read_to_string(&mut res).await?;
    let (head, body) = res.split_once("\r\n\r\n").unwrap_or((&res, ""));
    println!("{}", head.lines().next().unwrap_or(""));
    println!("{body}");
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "unexpected answer: {head}"
    );
    anyhow::ensure!(body.contains("\"total\":2"), "unexpected body: {body}");
    server.abort();
    Ok(())
}
