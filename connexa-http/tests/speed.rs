//! The keyed speed endpoint at `/speed/...`: no token, but only with a valid
//! signed nonce; bounded in size; rate-limited per source; the body is the
//! nonce's keyed stream, over `oneshot` and over a real socket.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::Method;
use common::api;
use connexa_core::speed::http::{self as client, HttpUrl};
use connexa_core::speed::keyed::{
    CLIENT_ADDR_HEADER, EndpointLimits, SpeedEndpoint, SpeedKey, StreamVerifier, down_url,
};

fn key() -> SpeedKey {
    SpeedKey::from_bytes([0x5c; 32])
}

fn endpoint(max_bytes: u64, requests_per_minute: u32) -> Arc<SpeedEndpoint> {
    Arc::new(SpeedEndpoint::new(
        key(),
        EndpointLimits {
            max_bytes,
            requests_per_minute,
            ..EndpointLimits::default()
        },
    ))
}

#[tokio::test]
async fn the_endpoint_refuses_requests_without_a_valid_nonce_and_oversize_ones() {
    let mut a = api().await;
    let from = Some(SocketAddr::from(([192, 0, 2, 7], 40000)));
    let nonce = key()
        .issue(SystemTime::now(), Duration::from_secs(60))
        .unwrap();
    let get = |uri: String| {
        let a = &a;
        async move { a.req(Method::GET, &uri, None, None, from).await }
    };
    // No endpoint configured: the path does not exist.
    get(format!("/speed/down?nonce={nonce}&bytes=10"))
        .await
        .problem(404, "not-found");

    a.state = a.state.clone().with_speed_endpoint(endpoint(1 << 20, 1000));
    a.app = connexa_http::app(a.state.clone());
    let get = |uri: String| {
        let a = &a;
        async move { a.req(Method::GET, &uri, None, None, from).await }
    };
    // No nonce.
    let r = get("/speed/down?bytes=10".into()).await;
    assert_eq!(r.status.as_u16(), 403, "{}", r.text());
    assert!(r.text().contains("no nonce"), "{}", r.text());
    // A nonce signed with another key: bad HMAC.
    let forged = SpeedKey::from_bytes([1; 32])
        .issue(SystemTime::now(), Duration::from_secs(60))
        .unwrap();
    let r = get(format!("/speed/down?nonce={forged}&bytes=10")).await;
    assert_eq!(r.status.as_u16(), 403);
    assert!(r.text().contains("invalid nonce"), "{}", r.text());
    // Our key, but expired an hour ago.
    let old = key()
        .issue(
            SystemTime::now() - Duration::from_secs(3600),
            Duration::from_secs(60),
        )
        .unwrap();
    let r = get(format!("/speed/down?nonce={old}&bytes=10")).await;
    assert_eq!(r.status.as_u16(), 403);
    assert!(r.text().contains("expired"), "{}", r.text());
    // Oversize and malformed sizes.
    let r = get(format!("/speed/down?nonce={nonce}&bytes={}", (1 << 20) + 1)).await;
    assert_eq!(r.status.as_u16(), 413, "{}", r.text());
    let r = get(format!("/speed/down?nonce={nonce}&bytes=lots")).await;
    assert_eq!(r.status.as_u16(), 400, "{}", r.text());
    let r = a
        .req(
            Method::POST,
            &format!("/speed/up?nonce={nonce}"),
            None,
            Some(("application/octet-stream", vec![0u8; (1 << 20) + 1])),
            from,
        )
        .await;
    assert_eq!(r.status.as_u16(), 413, "{}", r.text());
    // A valid nonce: the keyed stream, the client's address echoed, no token.
    let r = get(format!("/speed/down?nonce={nonce}&bytes=100000")).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(r.body.len(), 100_000);
    let valid = key().check(Some(&nonce), SystemTime::now()).unwrap();
    let mut expected = vec![0u8; 100_000];
    key().keystream(&valid).fill(&mut expected);
    assert!(r.body == expected, "the body is the nonce's keyed stream");
    assert_eq!(
        r.headers
            .get(CLIENT_ADDR_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some("192.0.2.7")
    );
    assert_eq!(
        r.headers.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let r = a
        .req(
            Method::POST,
            &format!("/speed/up?nonce={nonce}"),
            None,
            Some(("application/octet-stream", vec![9u8; 300_000])),
            from,
        )
        .await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "300000\n".to_owned()));
    let r = a
        .req(
            Method::POST,
            "/speed/up",
            None,
            Some(("application/octet-stream", vec![1])),
            from,
        )
        .await;
    assert_eq!(r.status.as_u16(), 403);
}

#[tokio::test]
async fn the_endpoint_rate_limits_each_source() {
    let mut a = api().await;
    a.state = a.state.clone().with_speed_endpoint(endpoint(1000, 3));
    a.app = connexa_http::app(a.state.clone());
    let nonce = key()
        .issue(SystemTime::now(), Duration::from_secs(60))
        .unwrap();
    let uri = format!("/speed/down?nonce={nonce}&bytes=10");
    let one = Some(SocketAddr::from(([192, 0, 2, 1], 1)));
    let two = Some(SocketAddr::from(([192, 0, 2, 2], 1)));
    for _ in 0..3 {
        assert_eq!(a.req(Method::GET, &uri, None, None, one).await.status, 200);
    }
    assert_eq!(a.req(Method::GET, &uri, None, None, one).await.status, 429);
    assert_eq!(a.req(Method::GET, &uri, None, None, two).await.status, 200);
}

/// Over a real socket through the binary's serve loop: the streamed body has
/// its Content-Length and verifies byte for byte with the tester's verifier.
#[tokio::test]
async fn a_real_download_verifies_against_the_keyed_stream() {
    let a = api().await;
    let state = a.state.clone().with_speed_endpoint(endpoint(1 << 30, 100));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(connexa_http::serve::serve(
        listener,
        connexa_http::app(state),
        Default::default(),
        async {
            let _ = rx.await;
        },
    ));
    let nonce = key()
        .issue(SystemTime::now(), Duration::from_secs(60))
        .unwrap();
    let url = HttpUrl::parse(&down_url(&format!("http://{addr}"), &nonce, 5_000_000)).unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let valid = key().check(Some(&nonce), SystemTime::now()).unwrap();
    let mut v = StreamVerifier::new(&key(), &valid);
    let mut mismatch = None;
    let (head, n) = client::get(&mut s, &url, |d| {
        if mismatch.is_none() {
            mismatch = v.feed(d).err();
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (head.status, head.content_length, n, mismatch),
        (200, Some(5_000_000), 5_000_000, None)
    );
    assert_eq!(v.verified(), 5_000_000);
    assert_eq!(head.client_addr, Some("127.0.0.1".parse().unwrap()));
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}
