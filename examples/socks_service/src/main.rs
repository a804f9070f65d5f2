//! A SOCKS5 service through a node, driven by the engine's reconciler on a
//! temporary SQLite store: the node is marked wanted, one reconciler pass starts
//! the service (port from the configured range, generated credentials, both
//! stored), a page is fetched through it from a loopback HTTP server with a
//! small SOCKS5 client, then the service is no longer wanted and the next pass
//! stops it (the port closes).
//!
//! The tunnel here is the `DirectOpener` (loopback only): it stands in for the
//! node's PPTP tunnel, for demonstrations and tests only.
//! Run: `cargo run -p example-socks-service` (finishes in well under a second).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use connexa_core::domain::{Event, Level, NewNode, NodeFilter, Outcome};
use connexa_core::engine::{Engine, EngineConfig, NotAvailable};
use connexa_core::export::{self, ExportFormat};
use connexa_core::ports::{ApplyContext, InsertOutcome, NodeStore};
use connexa_core::probe::{LightProber, ProbeConfig};
use connexa_core::service::DirectOpener;
use connexa_core::socks::proto::{self, TargetAddr};
use connexa_core::socks::{SocksConfig, SocksLauncher};
use connexa_core::store::SqlStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PAGE: &str = "<html><body>hello through a Connexa SOCKS5 service</body></html>";

/// A one-page HTTP server on loopback.
async fn web_server() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{PAGE}",
                    PAGE.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}

/// SOCKS5 with username/password, CONNECT, then an HTTP/1.0 GET.
async fn fetch(
    proxy: SocketAddr,
    user: &str,
    pass: &str,
    target: &TargetAddr,
) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(proxy).await?;
    let mut two = [0u8; 2];
    s.write_all(&[proto::VERSION, 1, proto::METHOD_USER_PASS])
        .await?;
    s.read_exact(&mut two).await?;
    s.write_all(&proto::encode_auth(user, pass).context("credentials")?)
        .await?;
    s.read_exact(&mut two).await?;
    if two != [1, 0] {
        bail!("login refused");
    }
    s.write_all(&proto::encode_connect(target)).await?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    let (rep, len) = loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("proxy closed");
        }
        reply.extend(&buf[..n]);
        if let Some((rep, _, len)) = proto::parse_reply(&reply)? {
            break (rep, len);
        }
    };
    if rep != proto::Reply::Succeeded || len != reply.len() {
        bail!("CONNECT failed: {rep:?}");
    }
    s.write_all(b"GET / HTTP/1.0\r\nHost: example\r\n\r\n")
        .await?;
    let mut page = String::new();
    s.read_to_string(&mut page).await?;
    Ok(page)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let web = web_server().await?;
    let dir = tempfile::tempdir()?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("connexa.db").display()
    );
    let store: Arc<dyn NodeStore> = Arc::new(SqlStore::connect(&url).await?);

    // A node that passed the speed test (here: recorded as such).
    let [InsertOutcome::Inserted(id)] = store
        .insert(vec![NewNode::new("127.0.0.1", 1723, "vpnuser", "vpnpass")?])
        .await?[..]
    else {
        bail!("insert failed");
    };
    store
        .apply(
            id,
            Event::Tested(Outcome::success(Level::Speed)),
            ApplyContext::now(),
        )
        .await?;

    let launcher = SocksLauncher::new(
        Arc::new(DirectOpener::loopback_only()),
        SocksConfig {
            port_min: 24000,
            port_max: 24999,
            ..SocksConfig::default()
        },
    );
    let engine = Engine::new(
        Arc::clone(&store),
        Arc::new(LightProber::new(ProbeConfig::default())),
        Arc::new(NotAvailable),
        Arc::new(launcher),
        EngineConfig::default(),
    );

    store
        .set_service_wanted(&NodeFilter::ids([id]), true)
        .await?;
    let report = engine.reconcile().await?;
    let node = store.get(id).await?.context("node")?;
    let ep = node.service.clone().context("no service")?;
    println!("reconciler: {report:?}; node {id} is {}", node.status);
    println!(
        "service: socks5://{}:{}@{}:{}",
        ep.username, ep.password, ep.host, ep.port
    );
    let mut line = Vec::new();
    export::write(ExportFormat::SocksColon, [&node], &mut line)?;
    println!(
        "export socks-colon has {} fields",
        String::from_utf8(line)?.trim().split(':').count()
    );

    let proxy = SocketAddr::new(ep.host.parse()?, ep.port);
    let page = fetch(
        proxy,
        &ep.username,
        ep.password.expose(),
        &TargetAddr::Domain("localhost".into(), web.port()),
    )
    .await?;
    let body = page.split("\r\n\r\n").nth(1).unwrap_or_default();
    println!("fetched through the service: {body}");
    if body != PAGE {
        bail!("unexpected page");
    }
    if fetch(proxy, &ep.username, "wrong password", &TargetAddr::Ip(web))
        .await
        .is_ok()
    {
        bail!("a wrong password was accepted");
    }
    println!("a wrong password is refused");

    store
        .set_service_wanted(&NodeFilter::ids([id]), false)
        .await?;
    engine.reconcile().await?;
    let node = store.get(id).await?.context("node")?;
    let closed = TcpStream::connect(proxy).await.is_err();
    println!(
        "stopped: node {id} is {}, port {} closed: {closed}",
        node.status, ep.port
    );
    if !closed {
        bail!("the port is still open");
    }
    Ok(())
}
