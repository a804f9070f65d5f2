//! The keyed speed endpoint (`GET /speed/down`, `POST /speed/up`), outside
//! `/api/v1` and without a token: connexa-core's
//! [`SpeedEndpoint`](connexa_core::speed::keyed::SpeedEndpoint) checks the
//! signed nonce, the size and the per-source rate; this module only streams.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use connexa_core::speed::keyed::{CLIENT_ADDR_HEADER, Refusal};
use futures::StreamExt;

use crate::AppState;
use crate::problem::ApiError;

/// The client's address (through trusted proxies), as the auth limiter sees it.
fn client(state: &AppState, req: &Request) -> IpAddr {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    crate::auth::client_addr(peer, req.headers(), &state.options().trusted_proxies)
}

fn refused(r: &Refusal) -> Response {
    let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::FORBIDDEN);
    (status, r.to_string()).into_response()
}

fn with_client(mut res: Response, ip: IpAddr) -> Response {
    if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
        res.headers_mut().insert(CLIENT_ADDR_HEADER, v);
    }
    res
}

/// `GET /speed/down?nonce=..&bytes=N`: N bytes of the nonce's keyed stream.
pub async fn down(State(state): State<AppState>, req: Request) -> Response {
    let Some(ep) = state.speed_endpoint() else {
        return ApiError::not_found("this server has no speed endpoint").into_response();
    };
    let ip = client(&state, &req);
    let d = match ep.download(req.uri().query().unwrap_or(""), ip) {
        Ok(d) => d,
        Err(r) => return refused(&r),
    };
    let body = futures::stream::unfold((d.stream, d.bytes), |(mut ks, left)| async move {
        if left == 0 {
            return None;
        }
        let n = usize::try_from(left.min(64 * 1024)).unwrap_or(64 * 1024);
        let mut buf = vec![0u8; n];
        ks.fill(&mut buf);
        Some((Ok::<_, Infallible>(Bytes::from(buf)), (ks, left - n as u64)))
    });
    let mut res = Body::from_stream(body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(d.bytes));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    with_client(res, ip)
}

/// `POST /speed/up?nonce=..`: reads and discards the body (at most the limit).
pub async fn up(State(state): State<AppState>, req: Request) -> Response {
    let Some(ep) = state.speed_endpoint() else {
        return ApiError::not_found("this server has no speed endpoint").into_response();
    };
    let ip = client(&state, &req);
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let max = match ep.upload(req.uri().query().unwrap_or(""), length, ip) {
        Ok(m) => m,
        Err(r) => return refused(&r),
    };
    let mut body = req.into_body().into_data_stream();
    let mut got = 0u64;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => {
                got += c.len() as u64;
                if got > max {
                    return refused(&Refusal::TooLarge {
                        asked: got,
                        max: ep.limits().max_bytes,
                    });
                }
            }
            Err(_) => break,
        }
    }
    with_client((StatusCode::OK, format!("{got}\n")).into_response(), ip)
}
