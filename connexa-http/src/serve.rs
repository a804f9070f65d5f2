//! The serve loop: HTTP/1.1 over a [`TcpListener`] with the protections a
//! public API needs against hostile clients (see docs/http.md, "Limits"):
//!
//! - a **header timeout**: a request whose head is not complete this long after
//!   its first byte (or, on a new connection, after the accept) closes the connection;
//! - an **idle timeout**: a keep-alive connection with no request for this long is closed;
//! - a **connection cap**: past it, a new connection is answered a minimal
//!   `503 unavailable` problem and closed (and logged, at most every 10 s);
//! - a **minimum body rate**: a request body slower than `min_body_rate` bytes/s
//!   over a window of `body_rate_window` spent waiting for the client is cut:
//!   the request is answered `408 request-timeout` and the connection closed
//!   (the handler sees a body error and frees what it held, e.g. a background-import slot);
//! - limits on the request line and head (`414 uri-too-long`,
//!   `431 headers-too-large`) answered as problems;
//! - graceful shutdown: no new connections, idle ones close, requests in
//!   flight finish (their connections close after the answer).
//!
//! Every request gets [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo)
//! (the peer address), which the authentication rate limit needs.
//!
//! ```no_run
//! # async fn demo(state: connexa_http::AppState) -> std::io::Result<()> {
//! use connexa_http::serve::{ServeOptions, serve};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! serve(listener, connexa_http::app(state), ServeOptions::default(), std::future::pending()).await
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

use crate::problem::{ApiError, Kind};

/// The limits of [`serve`]. `Default` gives the values of `connexa-http serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A request's head (request line and headers) must be complete this long
    /// after its first byte; a new connection must send a complete head this
    /// long after the accept. Default 10 s.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this
    /// long without a new request. Default 60 s.
    pub idle_timeout: Duration,
    /// Connections open at once; one more is answered `503` and closed. Default 1024.
    pub max_connections: usize,
    /// Slowest accepted request body, bytes per second (0: no minimum). Default 1024.
    pub min_body_rate: u64,
    /// The window over which the body rate is measured: time spent waiting
    /// for the client's body, not time the server spends processing it. Default 10 s.
    pub body_rate_window: Duration,
    /// Longest request target (path and query), bytes; longer: `414`. Default 8 KiB.
    pub max_uri_bytes: usize,
    /// Largest request head (the sum of header names and values), bytes; larger: `431`. Default 32 KiB.
    pub max_header_bytes: usize,
    /// Most header fields in a request; more: `431`. Default 100.
    pub max_headers: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            min_body_rate: 1024,
            body_rate_window: Duration::from_secs(10),
            max_uri_bytes: 8 << 10,
            max_header_bytes: 32 << 10,
            max_headers: 100,
        }
    }
}

/// Open connections, and a wake-up when one ends.
#[derive(Default)]
struct Conns {
    open: AtomicUsize,
    ended: Notify,
}

struct ConnGuard(Arc<Conns>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_waiters();
    }
}

/// Refusals of the connection cap, logged at most every 10 s.
#[derive(Default)]
struct Refusals {
    count: AtomicU64,
    logged: Mutex<Option<Instant>>,
    lingering: AtomicUsize,
}

/// Refused connections whose answer is still being delivered at once; more are just closed.
const MAX_LINGERING: usize = 64;

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting,
/// lets requests in flight finish and returns when every connection has ended.
pub async fn serve<F>(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let options = Arc::new(options);
    let conns = Arc::new(Conns::default());
    let refusals = Arc::new(Refusals::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and the like: wait instead of spinning; the listener stays.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if conns.open.load(Ordering::Acquire) >= options.max_connections {
            refuse(stream, &refusals, options.max_connections);
            continue;
        }
        conns.open.fetch_add(1, Ordering::AcqRel);
        let guard = ConnGuard(Arc::clone(&conns));
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            peer,
            app.clone(),
            Arc::clone(&options),
            stop_rx.clone(),
            guard,
        ));
    }
    drop(listener);
    stop_tx.send_replace(true);
    loop {
        let ended = conns.ended.notified();
        if conns.open.load(Ordering::Acquire) == 0 {
            break;
        }
        ended.await;
    }
    Ok(())
}

/// The answer to a connection over the cap.
fn refusal_bytes(max: usize) -> Vec<u8> {
    let mut e = ApiError::new(
        Kind::Unavailable,
        format!("the server has {max} connections open; try again later"),
    );
    e.0.retry_after = Some(1);
    let body = serde_json::to_vec(e.problem()).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Answers `503` without reading the request and closes. The socket lingers
/// (at most [`MAX_LINGERING`] at once, at most 2 s) reading what the client
/// sent, so that closing does not reset the connection before the client has read the answer.
fn refuse(stream: TcpStream, refusals: &Arc<Refusals>, max: usize) {
    let n = refusals.count.fetch_add(1, Ordering::Relaxed) + 1;
    {
        let mut logged = refusals
            .logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            *logged = Some(Instant::now());
            tracing::warn!(
                max_connections = max,
                refused_total = n,
                "connection cap reached: new connections are answered 503 and closed"
            );
        }
    }
    let bytes = refusal_bytes(max);
    let _ = stream.try_write(&bytes);
    if refusals.lingering.fetch_add(1, Ordering::AcqRel) >= MAX_LINGERING {
        refusals.lingering.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let refusals = Arc::clone(refusals);
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        use tokio::io::AsyncWriteExt as _;
        let mut stream = stream;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        refusals.lingering.fetch_sub(1, Ordering::AcqRel);
    });
}

/// What the watchdog of a connection knows.
struct Activity {
    state: Mutex<ActState>,
}

struct ActState {
    /// Requests whose answer is not sent yet.
    inflight: u32,
    /// Since when no request is in flight (the accept, or the end of the last answer).
    idle_since: Instant,
    /// The first byte of the next request's head, if it came.
    head_started: Option<Instant>,
    /// Requests received on this connection.
    served: u64,
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, ActState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) {
        let mut s = self.lock();
        if s.inflight == 0 && s.head_started.is_none() {
            s.head_started = Some(Instant::now());
        }
    }

    /// When the connection is to be closed if nothing changes; `None` while a request is in flight.
    fn deadline(&self, o: &ServeOptions) -> Option<Instant> {
        let s = self.lock();
        if s.inflight > 0 {
            None
        } else if let Some(t) = s.head_started {
            Some(t + o.header_timeout)
        } else if s.served == 0 {
            Some(s.idle_since + o.header_timeout)
        } else {
            Some(s.idle_since + o.idle_timeout)
        }
    }
}

/// Decrements the requests in flight when the answer's body is dropped (sent or abandoned).
struct InflightGuard(Arc<Activity>);

impl InflightGuard {
    fn start(a: &Arc<Activity>) -> Self {
        let mut s = a.lock();
        s.inflight += 1;
        s.served += 1;
        s.head_started = None;
        drop(s);
        InflightGuard(Arc::clone(a))
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.inflight = s.inflight.saturating_sub(1);
        if s.inflight == 0 {
            s.idle_since = Instant::now();
            s.head_started = None;
        }
    }
}

/// The socket, noting every read for the watchdog.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    options: Arc<ServeOptions>,
    mut stop: watch::Receiver<bool>,
    _guard: ConnGuard,
) {
    let activity = Arc::new(Activity {
        state: Mutex::new(ActState {
            inflight: 0,
            idle_since: Instant::now(),
            head_started: None,
            served: 0,
        }),
    });
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let service = ConnService {
        app,
        peer,
        activity: Arc::clone(&activity),
        options: Arc::clone(&options),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        // Our own watchdog times heads (hyper's timer would also cut idle keep-alive).
        .header_read_timeout(None)
        // Room above our own limits, so that most oversized heads get a problem answer.
        .max_headers(options.max_headers.saturating_mul(2).clamp(100, 1000));
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = if stopping {
            None
        } else {
            activity.deadline(&options)
        };
        let wait = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            r = stop.wait_for(|s| *s), if !stopping => {
                let _ = r;
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = wait => {
                if activity.deadline(&options).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(%peer, "closing a connection: header or idle timeout");
                    return;
                }
            }
        }
    }
}

/// One connection's service: checks the head, adds the peer address, bounds
/// the body rate and tracks the request until its answer is sent.
#[derive(Clone)]
struct ConnService {
    app: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
    options: Arc<ServeOptions>,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = InflightGuard::start(&self.activity);
        let o = &self.options;
        if let Some(early) = check_head(&req, o) {
            return Box::pin(async move { Ok(track(close(early), guard)) });
        }
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ConnectInfo(self.peer));
        let tripped = Arc::new(AtomicBool::new(false));
        let body = if o.min_body_rate > 0 && !o.body_rate_window.is_zero() {
            Body::new(MinRate {
                inner: body,
                required: required_bytes(o.min_body_rate, o.body_rate_window),
                window: o.body_rate_window,
                waited: Duration::ZERO,
                bytes: 0,
                pending_since: None,
                sleep: None,
                tripped: Arc::clone(&tripped),
            })
        } else {
            Body::new(body)
        };
        let req = Request::from_parts(parts, body);
        let app = self.app.clone();
        let (rate, window) = (o.min_body_rate, o.body_rate_window);
        Box::pin(async move {
            let res = match app.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let res = if tripped.load(Ordering::Acquire) {
                close(
                    ApiError::new(
                        Kind::RequestTimeout,
                        format!(
                            "the request body came slower than {rate} bytes/s over {} s",
                            window.as_secs_f64()
                        ),
                    )
                    .into_response(),
                )
            } else {
                res
            };
            Ok(track(res, guard))
        })
    }
}

fn required_bytes(rate: u64, window: Duration) -> u64 {
    u64::try_from(u128::from(rate) * window.as_millis() / 1000).unwrap_or(u64::MAX)
}

/// `414`/`431` for a head over the limits, before the app sees it.
fn check_head<B>(req: &Request<B>, o: &ServeOptions) -> Option<Response<Body>> {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > o.max_uri_bytes {
        return Some(
            ApiError::new(
                Kind::UriTooLong,
                format!(
                    "the request target is longer than {} bytes",
                    o.max_uri_bytes
                ),
            )
            .into_response(),
        );
    }
    let h = req.headers();
    let size: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if h.len() > o.max_headers || size > o.max_header_bytes {
        return Some(
            ApiError::new(
                Kind::HeadersTooLarge,
                format!(
                    "at most {} header fields and {} bytes of headers",
                    o.max_headers, o.max_header_bytes
                ),
            )
            .into_response(),
        );
    }
    None
}

/// Asks hyper to close the connection after this answer.
fn close(mut res: Response<Body>) -> Response<Body> {
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

fn track(res: Response<Body>, guard: InflightGuard) -> Response<Body> {
    res.map(|inner| {
        Body::new(Tracked {
            inner,
            _guard: guard,
        })
    })
}

/// An answer's body holding its request's [`InflightGuard`].
struct Tracked {
    inner: Body,
    _guard: InflightGuard,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error a request body too slow ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body is too slow")]
pub struct BodyTooSlow;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body that fails with [`BodyTooSlow`] when fewer than `required`
/// bytes came during a `window` of time spent waiting for them.
struct MinRate {
    inner: Incoming,
    required: u64,
    window: Duration,
    /// Time waited for the client in the current window.
    waited: Duration,
    /// Bytes received in the current window.
    bytes: u64,
    pending_since: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    tripped: Arc<AtomicBool>,
}

impl MinRate {
    fn trip(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.tripped.store(true, Ordering::Release);
        self.sleep = None;
        Poll::Ready(Some(Err(Box::new(BodyTooSlow))))
    }
}

impl hyper::body::Body for MinRate {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.tripped.load(Ordering::Acquire) {
            return Poll::Ready(Some(Err(Box::new(BodyTooSlow))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let now = Instant::now();
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if let Some(since) = this.pending_since.take() {
                    this.waited += now.duration_since(since);
                }
                if this.waited >= this.window {
                    if this.bytes < this.required {
                        return this.trip();
                    }
                    this.waited = Duration::ZERO;
                    this.bytes = 0;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => loop {
                let now = Instant::now();
                let since = *this.pending_since.get_or_insert(now);
                let deadline = since + this.window.saturating_sub(this.waited);
                match &mut this.sleep {
                    Some(s) if s.deadline() == deadline => {}
                    Some(s) => s.as_mut().reset(deadline),
                    None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                let Some(sleep) = this.sleep.as_mut() else {
                    return Poll::Pending;
                };
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // A whole window spent waiting for the client.
                if this.bytes < this.required {
                    return this.trip();
                }
                this.waited = Duration::ZERO;
                this.bytes = 0;
                this.pending_since = Some(Instant::now());
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
