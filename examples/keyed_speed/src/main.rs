//! The speed target that cannot be faked: serves the keyed speed endpoint on
//! loopback (what `connexa-http` serves at `/speed/...` and `connexa run` on
//! `[test] speed_listen`), downloads 1 MB of it with a fresh signed nonce and
//! checks every byte with `StreamVerifier` — as the speed test does through a
//! node's tunnel — then shows that bytes of anyone else's are caught, and that
//! a request without a valid nonce is refused.
//!
//! ```text
//! cargo run -p example-keyed-speed
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, ensure};
use connexa_core::speed::keyed::{
    self, EndpointLimits, SpeedEndpoint, SpeedKey, StreamVerifier, down_url,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).await?;
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no header end")?;
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    Ok((head, all[end + 4..].to_vec()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let key = SpeedKey::generate()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let endpoint = Arc::new(SpeedEndpoint::new(key, EndpointLimits::default()));
    tokio::spawn(keyed::serve(listener, endpoint, 8, std::future::pending()));

    let nonce = key.issue(SystemTime::now(), Duration::from_secs(60))?;
    let url = down_url(&format!("http://{addr}"), &nonce, 1_000_000);
    let path = url
        .splitn(4, '/')
        .nth(3)
        .map(|p| format!("/{p}"))
        .unwrap_or_default();
    let (head, body) = get(addr, &path).await?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    let valid = key
        .check(Some(&nonce), SystemTime::now())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut verifier = StreamVerifier::new(&key, &valid);
    verifier.feed(&body).map_err(|m| anyhow::anyhow!("{m:?}"))?;
    println!("downloaded and verified {} bytes", verifier.verified());
    ensure!(verifier.verified() == 1_000_000);

    // A node answering with bytes of its own is caught at the first one.
    let mut fake = StreamVerifier::new(&key, &valid);
    let caught = fake.feed(&vec![0u8; 4096]).is_err();
    println!(
        "a body of zeros: {}",
        if caught {
            "content mismatch"
        } else {
            "accepted?!"
        }
    );
    ensure!(caught);

    // No nonce, no bytes.
    let (head, _) = get(addr, "/speed/down?bytes=1000").await?;
    println!(
        "without a nonce: {}",
        head.lines().next().unwrap_or_default()
    );
    ensure!(head.starts_with("HTTP/1.1 403"));
    Ok(())
}
