//! The keyed speed stream: a speed test target a node cannot fake.
//!
//! A download body is the ChaCha20 keystream of a key derived from the
//! operator's secret [`SpeedKey`] and a fresh per-request nonce, so a node
//! cannot precompute, cache or generate it: it can only relay it from our own
//! endpoint. The tester ([`super::HttpSpeedTester`]) verifies every body byte
//! against the same keystream ([`StreamVerifier`]); any other content ends
//! the test with [`Failure::ContentMismatch`](crate::domain::Failure::ContentMismatch).
//!
//! **Nonces.** `nonce = hex(random 16 bytes ‖ expiry, u64 big-endian Unix
//! seconds ‖ HMAC-SHA256(key, "connexa-speed-nonce-v1" ‖ random ‖ expiry)[..16])`,
//! 80 hex digits. Whoever holds the key (the testing process) issues them;
//! whoever holds the same key (the endpoint, possibly another process on
//! another host: `connexa-http` or `connexa run`) checks them. No API token
//! is needed, only a valid, unexpired nonce.
//!
//! **The endpoint** ([`SpeedEndpoint`], served by [`serve`] or by a frontend's
//! router):
//!
//! - `GET /speed/down?nonce=N&bytes=B` answers `200` with `B` bytes of the
//!   nonce's keystream (`Content-Length: B`, `Cache-Control: no-store`);
//! - `POST /speed/up?nonce=N` reads and discards a body of at most
//!   [`EndpointLimits::max_bytes`] and answers `200`;
//! - both echo the client's address in [`CLIENT_ADDR_HEADER`] (the node's
//!   exit address, as the endpoint sees it);
//! - refused: no nonce `403`, a nonce with a bad signature or an expired one
//!   `403`, `bytes` missing or not a number `400`, more than `max_bytes`
//!   `413`, more than [`EndpointLimits::requests_per_minute`] requests from one
//!   source address (IPv6: one /64) in a minute `429`.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::{ChaCha20, Key, Nonce as ChaChaNonce};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

type HmacSha256 = Hmac<Sha256>;

/// Path of the download.
pub const DOWN_PATH: &str = "/speed/down";
/// Path of the upload sink.
pub const UP_PATH: &str = "/speed/up";
/// Response header carrying the client's address as the endpoint saw it.
pub const CLIENT_ADDR_HEADER: &str = "X-Connexa-Client-Addr";

const RANDOM_LEN: usize = 16;
const TAG_LEN: usize = 16;
const NONCE_LEN: usize = RANDOM_LEN + 8 + TAG_LEN;

/// The operator's secret speed key (32 bytes), shared by the testing process
/// and the endpoint. `Debug` does not show it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SpeedKey([u8; 32]);

impl fmt::Debug for SpeedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpeedKey(..)")
    }
}

/// A nonce the endpoint refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NonceError {
    /// No nonce in the request.
    #[error("no nonce")]
    Missing,
    /// Not 80 hex digits, or the signature does not match our key.
    #[error("invalid nonce")]
    Invalid,
    /// Signed by our key, but past its expiry.
    #[error("expired nonce")]
    Expired,
}

/// A checked nonce: its bytes (what the keystream is derived from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidNonce([u8; NONCE_LEN]);

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl SpeedKey {
    /// A key of these bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SpeedKey(bytes)
    }

    /// A fresh random key.
    ///
    /// # Errors
    /// The operating system's random source failed.
    pub fn generate() -> io::Result<Self> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| io::Error::other(format!("random source: {e}")))?;
        Ok(SpeedKey(k))
    }

    /// Parses 64 hex digits (surrounding whitespace ignored).
    ///
    /// # Errors
    /// Not 64 hex digits.
    pub fn from_hex(text: &str) -> io::Result<Self> {
        let mut k = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut k).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "a speed key is 64 hex digits (32 bytes)",
            )
        })?;
        Ok(SpeedKey(k))
    }

    /// The key as 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads the key file at `path` (64 hex digits); when it does not exist,
    /// generates a key and writes it there with mode 0600 (created atomically:
    /// two processes starting together end up with the same key).
    ///
    /// # Errors
    /// The file cannot be read or written, or does not hold a key.
    pub fn load_or_create(path: &Path) -> io::Result<Self> {
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        match std::fs::read_to_string(path) {
            Ok(text) => return Self::from_hex(&text).map_err(named),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(named(e)),
        }
        let key = Self::generate()?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        match opts.open(path) {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(format!("{}\n", key.to_hex()).as_bytes())
                    .map_err(named)?;
                tracing::info!(path = %path.display(), "generated a new speed test key");
                Ok(key)
            }
            // Another process created it first: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(path).map_err(named)?;
                Self::from_hex(&text).map_err(named)
            }
            Err(e) => Err(named(e)),
        }
    }

    fn mac(&self, label: &[u8], data: &[u8]) -> HmacSha256 {
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes keys of any length");
        m.update(label);
        m.update(data);
        m
    }

    /// A fresh nonce valid until `now + ttl`.
    ///
    /// # Errors
    /// The operating system's random source failed.
    pub fn issue(&self, now: SystemTime, ttl: Duration) -> io::Result<String> {
        let mut n = [0u8; NONCE_LEN];
        getrandom::fill(&mut n[..RANDOM_LEN])
            .map_err(|e| io::Error::other(format!("random source: {e}")))?;
        let expiry = unix(now).saturating_add(ttl.as_secs().max(1));
        n[RANDOM_LEN..RANDOM_LEN + 8].copy_from_slice(&expiry.to_be_bytes());
        let tag = self
            .mac(b"connexa-speed-nonce-v1", &n[..RANDOM_LEN + 8])
            .finalize()
            .into_bytes();
        n[RANDOM_LEN + 8..].copy_from_slice(&tag[..TAG_LEN]);
        Ok(hex::encode(n))
    }

    /// Checks a nonce's signature and expiry.
    ///
    /// # Errors
    /// See [`NonceError`].
    pub fn check(&self, nonce: Option<&str>, now: SystemTime) -> Result<ValidNonce, NonceError> {
        let text = nonce.filter(|n| !n.is_empty()).ok_or(NonceError::Missing)?;
        let mut n = [0u8; NONCE_LEN];
        hex::decode_to_slice(text, &mut n).map_err(|_| NonceError::Invalid)?;
        self.mac(b"connexa-speed-nonce-v1", &n[..RANDOM_LEN + 8])
            .verify_truncated_left(&n[RANDOM_LEN + 8..])
            .map_err(|_| NonceError::Invalid)?;
        let mut e = [0u8; 8];
        e.copy_from_slice(&n[RANDOM_LEN..RANDOM_LEN + 8]);
        if u64::from_be_bytes(e) < unix(now) {
            return Err(NonceError::Expired);
        }
        Ok(ValidNonce(n))
    }

    /// The keystream of a checked nonce, from its first byte.
    pub fn keystream(&self, nonce: &ValidNonce) -> Keystream {
        let seed = self
            .mac(b"connexa-speed-stream-v1", &nonce.0)
            .finalize()
            .into_bytes();
        let mut k = [0u8; 32];
        k.copy_from_slice(&seed[..32]);
        Keystream(ChaCha20::new(&Key::from(k), &ChaChaNonce::from([0u8; 12])))
    }
}

/// The body bytes of one nonce, in order (ChaCha20 keystream; any chunking
/// gives the same bytes).
pub struct Keystream(ChaCha20);

impl fmt::Debug for Keystream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keystream(..)")
    }
}

impl Keystream {
    /// Overwrites `buf` with the next `buf.len()` bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        buf.fill(0);
        self.0.apply_keystream(buf);
    }
}

/// Checks a received body against the keystream, chunk by chunk.
#[derive(Debug)]
pub struct StreamVerifier {
    stream: Keystream,
    offset: u64,
    scratch: Vec<u8>,
}

/// Received bytes that are not the keystream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("body byte {offset} differs from the keyed stream")]
pub struct Mismatch {
    /// Offset of the first wrong byte in the body.
    pub offset: u64,
}

impl StreamVerifier {
    /// A verifier of the body of `nonce`, from its first byte.
    pub fn new(key: &SpeedKey, nonce: &ValidNonce) -> Self {
        StreamVerifier {
            stream: key.keystream(nonce),
            offset: 0,
            scratch: Vec::new(),
        }
    }

    /// Checks the next chunk of the body.
    ///
    /// # Errors
    /// A byte differs (the verifier is then spent).
    pub fn feed(&mut self, data: &[u8]) -> Result<(), Mismatch> {
        self.scratch.resize(data.len(), 0);
        self.stream.fill(&mut self.scratch);
        if let Some(i) = self.scratch.iter().zip(data).position(|(a, b)| a != b) {
            return Err(Mismatch {
                offset: self.offset + i as u64,
            });
        }
        self.offset += data.len() as u64;
        Ok(())
    }

    /// Body bytes verified so far.
    pub fn verified(&self) -> u64 {
        self.offset
    }
}

/// The endpoint's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointLimits {
    /// Largest download (`bytes`) and upload body, bytes. Default 1 GiB.
    pub max_bytes: u64,
    /// Requests per source address (IPv6: per /64) and minute. Default 600.
    pub requests_per_minute: u32,
    /// Source addresses the rate limit remembers at once. Default 100,000.
    pub capacity: usize,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        EndpointLimits {
            max_bytes: 1 << 30,
            requests_per_minute: 600,
            capacity: 100_000,
        }
    }
}

/// Why the endpoint refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The nonce is missing, invalid or expired (`403`).
    #[error("{0}")]
    Nonce(NonceError),
    /// `bytes` missing or not a number (`400`).
    #[error("bytes must be a whole number")]
    BadBytes,
    /// More than the limit (`413`).
    #[error("{asked} bytes is more than the limit of {max}")]
    TooLarge {
        /// What was asked.
        asked: u64,
        /// [`EndpointLimits::max_bytes`].
        max: u64,
    },
    /// Too many requests from this source (`429`).
    #[error("too many speed test requests from this address")]
    RateLimited,
}

impl Refusal {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Nonce(_) => 403,
            Refusal::BadBytes => 400,
            Refusal::TooLarge { .. } => 413,
            Refusal::RateLimited => 429,
        }
    }
}

/// A granted download: the body's length and keystream.
#[derive(Debug)]
pub struct Download {
    /// Body length.
    pub bytes: u64,
    /// The body.
    pub stream: Keystream,
}

/// The value of `name` in a query string (`a=1&b=2`; no percent-decoding:
/// nonces and numbers need none).
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The rate-limit bucket of an address: itself, or its /64 for IPv6.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(
                seg[0], seg[1], seg[2], seg[3], 0, 0, 0, 0,
            ))
        }
    }
}

/// The speed endpoint's checks (nonce, size, rate): the frontends call
/// [`SpeedEndpoint::download`] / [`SpeedEndpoint::upload`] and serve the result.
#[derive(Debug)]
pub struct SpeedEndpoint {
    key: SpeedKey,
    limits: EndpointLimits,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl SpeedEndpoint {
    /// An endpoint checking nonces with `key`.
    pub fn new(key: SpeedKey, limits: EndpointLimits) -> Self {
        SpeedEndpoint {
            key,
            limits,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &EndpointLimits {
        &self.limits
    }

    fn admit(&self, peer: IpAddr, now: Instant) -> Result<(), Refusal> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let minute = Duration::from_secs(60);
        if seen.len() >= self.limits.capacity {
            seen.retain(|_, (at, _)| now.saturating_duration_since(*at) < minute);
            if seen.len() >= self.limits.capacity {
                seen.clear();
            }
        }
        let e = seen.entry(source_of(peer)).or_insert((now, 0));
        if now.saturating_duration_since(e.0) >= minute {
            *e = (now, 0);
        }
        if e.1 >= self.limits.requests_per_minute {
            return Err(Refusal::RateLimited);
        }
        e.1 += 1;
        Ok(())
    }

    /// Checks a download request (`query` of `GET /speed/down`) from `peer`.
    ///
    /// # Errors
    /// See [`Refusal`].
    pub fn download(&self, query: &str, peer: IpAddr) -> Result<Download, Refusal> {
        let nonce = self
            .key
            .check(query_value(query, "nonce"), SystemTime::now())
            .map_err(Refusal::Nonce)?;
        let bytes: u64 = query_value(query, "bytes")
            .and_then(|b| b.parse().ok())
            .ok_or(Refusal::BadBytes)?;
        if bytes > self.limits.max_bytes {
            return Err(Refusal::TooLarge {
                asked: bytes,
                max: self.limits.max_bytes,
            });
        }
        self.admit(peer, Instant::now())?;
        Ok(Download {
            bytes,
            stream: self.key.keystream(&nonce),
        })
    }

    /// Checks an upload request (`query` of `POST /speed/up`, its
    /// `Content-Length`) from `peer`; returns the most bytes to read.
    ///
    /// # Errors
    /// See [`Refusal`].
    pub fn upload(
        &self,
        query: &str,
        content_length: Option<u64>,
        peer: IpAddr,
    ) -> Result<u64, Refusal> {
        self.key
            .check(query_value(query, "nonce"), SystemTime::now())
            .map_err(Refusal::Nonce)?;
        if let Some(len) = content_length
            && len > self.limits.max_bytes
        {
            return Err(Refusal::TooLarge {
                asked: len,
                max: self.limits.max_bytes,
            });
        }
        self.admit(peer, Instant::now())?;
        Ok(content_length.unwrap_or(self.limits.max_bytes))
    }
}

/// The download URL of a nonce under `base` (`http://host:port`, no trailing `/`).
pub fn down_url(base: &str, nonce: &str, bytes: u64) -> String {
    format!(
        "{}{DOWN_PATH}?nonce={nonce}&bytes={bytes}",
        base.trim_end_matches('/')
    )
}

/// The upload URL of a nonce under `base`.
pub fn up_url(base: &str, nonce: &str) -> String {
    format!("{}{UP_PATH}?nonce={nonce}", base.trim_end_matches('/'))
}

const MAX_HEAD: usize = 8 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

async fn respond<S: AsyncWrite + Unpin>(s: &mut S, status: u16, text: &str) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        _ => "Error",
    };
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}\n",
        text.len() + 1
    );
    s.write_all(msg.as_bytes()).await?;
    s.flush().await
}

/// Serves one request of one connection (HTTP/1.1, `Connection: close`):
/// the endpoint's download and upload (see the module docs); anything else `404`.
///
/// # Errors
/// I/O errors, or a request head that is too long or does not come in time.
pub async fn serve_connection<S>(mut s: S, peer: IpAddr, endpoint: &SpeedEndpoint) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    let end = tokio::time::timeout(HEAD_TIMEOUT, async {
        let mut chunk = [0u8; 2048];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(end);
            }
            if buf.len() > MAX_HEAD {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request head timed out"))??;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let rest = buf[end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let content_length: Option<u64> = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())
            .flatten()
    });
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match (method, path) {
        ("GET", DOWN_PATH) => match endpoint.download(query, peer) {
            Err(r) => respond(&mut s, r.status(), &r.to_string()).await,
            Ok(mut d) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\
                     Cache-Control: no-store\r\n{CLIENT_ADDR_HEADER}: {peer}\r\nConnection: close\r\n\r\n",
                    d.bytes
                );
                s.write_all(head.as_bytes()).await?;
                let mut chunk = vec![0u8; 64 * 1024];
                let mut left = d.bytes;
                while left > 0 {
                    let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
                    d.stream.fill(&mut chunk[..n]);
                    s.write_all(&chunk[..n]).await?;
                    left -= n as u64;
                }
                s.flush().await
            }
        },
        ("POST", UP_PATH) => match endpoint.upload(query, content_length, peer) {
            Err(r) => respond(&mut s, r.status(), &r.to_string()).await,
            Ok(max) => {
                let mut got = rest.len() as u64;
                let mut chunk = vec![0u8; 64 * 1024];
                while got < max {
                    let n = s.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    got += n as u64;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\
                     {CLIENT_ADDR_HEADER}: {peer}\r\nConnection: close\r\n\r\n"
                );
                s.write_all(head.as_bytes()).await?;
                s.flush().await
            }
        },
        _ => respond(&mut s, 404, "no such route").await,
    }
}

/// Serves the endpoint on `listener` until `shutdown` completes (at most
/// `max_connections` at once; more wait to be accepted). This is what
/// `connexa run` serves on `[test] speed_listen`.
///
/// # Errors
/// Accepting failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    endpoint: Arc<SpeedEndpoint>,
    max_connections: usize,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => return Ok(()),
            p = Arc::clone(&permits).acquire_owned() => p.map_err(io::Error::other)?,
        };
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "speed endpoint accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ep = Arc::clone(&endpoint);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_connection(stream, peer.ip(), &ep).await {
                tracing::debug!(error = %e, %peer, "speed endpoint connection");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SpeedKey {
        SpeedKey::from_bytes([7; 32])
    }

    #[test]
    fn nonces_check_signature_and_expiry() {
        let k = key();
        let now = SystemTime::now();
        let n = k.issue(now, Duration::from_secs(60)).unwrap();
        assert_eq!(n.len(), 2 * NONCE_LEN);
        assert!(k.check(Some(&n), now).is_ok());
        assert_eq!(k.check(None, now), Err(NonceError::Missing));
        assert_eq!(k.check(Some(""), now), Err(NonceError::Missing));
        assert_eq!(k.check(Some("zz"), now), Err(NonceError::Invalid));
        // Another key's nonce, or a flipped bit, is invalid.
        let other = SpeedKey::from_bytes([8; 32])
            .issue(now, Duration::from_secs(60))
            .unwrap();
        assert_eq!(k.check(Some(&other), now), Err(NonceError::Invalid));
        let mut bytes = hex::decode(&n).unwrap();
        bytes[3] ^= 1;
        assert_eq!(
            k.check(Some(&hex::encode(&bytes)), now),
            Err(NonceError::Invalid)
        );
        // Moving the expiry forward breaks the signature.
        let mut bytes = hex::decode(&n).unwrap();
        bytes[RANDOM_LEN + 7] ^= 0x10;
        assert_eq!(
            k.check(Some(&hex::encode(&bytes)), now),
            Err(NonceError::Invalid)
        );
        let later = now + Duration::from_secs(120);
        assert_eq!(k.check(Some(&n), later), Err(NonceError::Expired));
        // Two nonces differ, and so do their streams.
        let n2 = k.issue(now, Duration::from_secs(60)).unwrap();
        assert_ne!(n, n2);
        let (a, b) = (
            k.check(Some(&n), now).unwrap(),
            k.check(Some(&n2), now).unwrap(),
        );
        let (mut x, mut y) = ([0u8; 64], [0u8; 64]);
        k.keystream(&a).fill(&mut x);
        k.keystream(&b).fill(&mut y);
        assert_ne!(x, y);
    }

    #[test]
    fn the_stream_is_the_same_in_any_chunking_and_differs_per_key() {
        let k = key();
        let n = k
            .check(
                Some(&k.issue(SystemTime::now(), Duration::from_secs(9)).unwrap()),
                SystemTime::now(),
            )
            .unwrap();
        let mut whole = vec![0u8; 10_000];
        k.keystream(&n).fill(&mut whole);
        let mut s = k.keystream(&n);
        let mut pieces = Vec::new();
        for len in [1usize, 3, 63, 64, 65, 1000, 8804] {
            let mut b = vec![0u8; len];
            s.fill(&mut b);
            pieces.extend(b);
        }
        assert_eq!(pieces, whole);
        let mut v = StreamVerifier::new(&k, &n);
        v.feed(&whole[..7]).unwrap();
        v.feed(&whole[7..5000]).unwrap();
        assert_eq!(v.verified(), 5000);
        let mut bad = whole[5000..6000].to_vec();
        bad[17] ^= 0x80;
        assert_eq!(v.feed(&bad), Err(Mismatch { offset: 5017 }));
        // The same nonce under another key is another stream.
        let mut other = vec![0u8; 64];
        SpeedKey::from_bytes([9; 32]).keystream(&n).fill(&mut other);
        assert_ne!(other[..], whole[..64]);
    }

    #[test]
    fn key_files_are_created_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("speed.key");
        let k = SpeedKey::load_or_create(&p).unwrap();
        assert_eq!(SpeedKey::load_or_create(&p).unwrap(), k);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&p, "not hex\n").unwrap();
        assert!(SpeedKey::load_or_create(&p).is_err());
        assert!(!format!("{k:?}").contains(&k.to_hex()));
    }

    #[test]
    fn endpoint_refuses_bad_requests_and_rate_limits_per_source() {
        let k = key();
        let ep = SpeedEndpoint::new(
            k,
            EndpointLimits {
                max_bytes: 1000,
                requests_per_minute: 3,
                capacity: 10,
            },
        );
        let n = k.issue(SystemTime::now(), Duration::from_secs(60)).unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let status = |r: Result<Download, Refusal>| r.map(|d| d.bytes).map_err(|e| e.status());
        assert_eq!(status(ep.download("bytes=10", a)), Err(403));
        assert_eq!(
            status(ep.download(&format!("nonce={n}")[..20], a)),
            Err(403)
        );
        assert_eq!(status(ep.download(&format!("nonce={n}"), a)), Err(400));
        assert_eq!(
            status(ep.download(&format!("nonce={n}&bytes=1001"), a)),
            Err(413)
        );
        assert_eq!(
            ep.upload(&format!("nonce={n}"), Some(1001), a)
                .unwrap_err()
                .status(),
            413
        );
        for _ in 0..3 {
            assert_eq!(
                status(ep.download(&format!("nonce={n}&bytes=1000"), a)),
                Ok(1000)
            );
        }
        assert_eq!(
            status(ep.download(&format!("nonce={n}&bytes=1"), a)),
            Err(429)
        );
        // Another source is counted on its own; an IPv6 /64 is one source.
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(status(ep.download(&format!("nonce={n}&bytes=1"), b)), Ok(1));
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        for i in 1..=3 {
            assert!(
                ep.upload(
                    &format!("nonce={n}"),
                    Some(1),
                    v6(&format!("2001:db8::{i}"))
                )
                .is_ok()
            );
        }
        assert_eq!(
            ep.upload(&format!("nonce={n}"), Some(1), v6("2001:db8::99"))
                .unwrap_err(),
            Refusal::RateLimited
        );
    }

    #[tokio::test]
    async fn the_listener_serves_the_stream_and_echoes_the_client_address() {
        let k = key();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ep = Arc::new(SpeedEndpoint::new(k, EndpointLimits::default()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, ep, 8, async {
            let _ = rx.await;
        }));
        let base = format!("http://{addr}");
        let nonce = k.issue(SystemTime::now(), Duration::from_secs(60)).unwrap();
        let url = super::super::http::HttpUrl::parse(&down_url(&base, &nonce, 300_000)).unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let valid = k.check(Some(&nonce), SystemTime::now()).unwrap();
        let mut v = StreamVerifier::new(&k, &valid);
        let mut bad = None;
        let (head, n) = super::super::http::get(&mut s, &url, |d| {
            if bad.is_none() {
                bad = v.feed(d).err();
            }
        })
        .await
        .unwrap();
        assert_eq!(
            (head.status, n, bad, v.verified()),
            (200, 300_000, None, 300_000)
        );
        assert_eq!(head.client_addr, Some("127.0.0.1".parse().unwrap()));
        // No nonce: 403.
        let url =
            super::super::http::HttpUrl::parse(&format!("{base}{DOWN_PATH}?bytes=5")).unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let e = super::super::http::get(&mut s, &url, |_| {})
            .await
            .unwrap_err();
        assert!(e.to_string().contains("HTTP 403"), "{e}");
        // Upload: counted and discarded.
        let url = super::super::http::HttpUrl::parse(&up_url(&base, &nonce)).unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        super::super::http::post_head(&mut s, &url, 100_000)
            .await
            .unwrap();
        s.write_all(&vec![1u8; 100_000]).await.unwrap();
        let head = super::super::http::finish(&mut s, &url).await.unwrap();
        assert_eq!(head.status, 200);
        let _ = tx.send(());
        server.await.unwrap().unwrap();
    }
}
