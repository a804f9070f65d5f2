//! RFC 9457 problem details: every error of the API is `application/problem+json`
//! with a stable `type` (`urn:connexa:problem:<slug>`), a `title`, the HTTP
//! `status` and a `detail` in words.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use connexa_core::domain::NodeId;
use connexa_core::engine::EngineError;
use connexa_core::ops::{ImportSummary, OpsError};
use connexa_core::ports::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// The prefix of every problem `type`.
pub const TYPE_PREFIX: &str = "urn:connexa:problem:";

/// The kinds of problem. The slug (the `type` after [`TYPE_PREFIX`]) never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// No, a malformed, an unknown, a revoked or an expired bearer token (401).
    Unauthorized,
    /// Too many failed authentication attempts from this address (429).
    RateLimited,
    /// The token is valid but its role or scope does not allow this (403).
    Forbidden,
    /// No such node, job or route (404).
    NotFound,
    /// The method is not allowed on this path (405).
    MethodNotAllowed,
    /// The request body came too slowly (under the server's minimum body rate) (408).
    RequestTimeout,
    /// The request target (path and query) is too long (414).
    UriTooLong,
    /// The request has too many or too large header fields (431).
    HeadersTooLarge,
    /// A query parameter or path segment is invalid (400).
    BadRequest,
    /// The body is not valid JSON (400).
    InvalidJson,
    /// The JSON is well formed but has wrong types, unknown or missing fields (422).
    InvalidBody,
    /// The body is larger than allowed (413).
    PayloadTooLarge,
    /// The body's content type is not accepted (415).
    UnsupportedMediaType,
    /// The request conflicts with stored data (a duplicate node, a refused transition) (409).
    Conflict,
    /// The request took longer than the server's time limit (503).
    Timeout,
    /// The server cannot take the request now (too many background imports
    /// running, or it is shutting down); try again after `Retry-After` (503).
    Unavailable,
    /// The server failed (500); the detail is in the server log.
    Internal,
}

impl Kind {
    /// The stable slug.
    pub fn slug(self) -> &'static str {
        match self {
            Kind::Unauthorized => "unauthorized",
            Kind::RateLimited => "rate-limited",
            Kind::Forbidden => "forbidden",
            Kind::NotFound => "not-found",
            Kind::MethodNotAllowed => "method-not-allowed",
            Kind::RequestTimeout => "request-timeout",
            Kind::UriTooLong => "uri-too-long",
            Kind::HeadersTooLarge => "headers-too-large",
            Kind::BadRequest => "bad-request",
            Kind::InvalidJson => "invalid-json",
            Kind::InvalidBody => "invalid-body",
            Kind::PayloadTooLarge => "payload-too-large",
            Kind::UnsupportedMediaType => "unsupported-media-type",
            Kind::Conflict => "conflict",
            Kind::Timeout => "timeout",
            Kind::Unavailable => "unavailable",
            Kind::Internal => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Kind::UriTooLong => StatusCode::URI_TOO_LONG,
            Kind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Kind::BadRequest | Kind::InvalidJson => StatusCode::BAD_REQUEST,
            Kind::InvalidBody => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::Timeout | Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Kind::Unauthorized => "Authentication required",
            Kind::RateLimited => "Too many failed authentication attempts",
            Kind::Forbidden => "Not allowed for this token",
            Kind::NotFound => "Not found",
            Kind::MethodNotAllowed => "Method not allowed",
            Kind::RequestTimeout => "Request body too slow",
            Kind::UriTooLong => "Request target too long",
            Kind::HeadersTooLarge => "Request headers too large",
            Kind::BadRequest => "Bad request",
            Kind::InvalidJson => "Malformed JSON",
            Kind::InvalidBody => "Invalid request body",
            Kind::PayloadTooLarge => "Request body too large",
            Kind::UnsupportedMediaType => "Unsupported media type",
            Kind::Conflict => "Conflict",
            Kind::Timeout => "Request timed out",
            Kind::Unavailable => "Service unavailable",
            Kind::Internal => "Internal server error",
        }
    }
}

/// A problem document (RFC 9457).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:connexa:problem:<slug>`; the slug is stable (see docs/http.md).
    #[serde(rename = "type")]
    pub type_: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong, in words.
    pub detail: String,
    /// For `rate-limited` and `unavailable`: seconds before trying again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// For `conflict` on node creation: the stored node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// For `payload-too-large` on import: what was imported before the limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportSummary>,
}

/// An error response of a handler.
#[derive(Debug, Clone)]
pub struct ApiError(pub Box<Problem>);

impl ApiError {
    /// A problem of `kind` with `detail`.
    pub fn new(kind: Kind, detail: impl Into<String>) -> Self {
        ApiError(Box::new(Problem {
            type_: format!("{TYPE_PREFIX}{}", kind.slug()),
            title: kind.title().to_owned(),
            status: kind.status().as_u16(),
            detail: detail.into(),
            retry_after: None,
            node: None,
            import: None,
        }))
    }

    /// 400 `bad-request`.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(Kind::BadRequest, detail)
    }

    /// 404 `not-found`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, detail)
    }

    /// 422 `invalid-body`.
    pub fn invalid_body(detail: impl Into<String>) -> Self {
        Self::new(Kind::InvalidBody, detail)
    }

    /// 500 `internal`: the cause is logged, not sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(Kind::Internal, "internal error (see the server log)")
    }

    /// The problem.
    pub fn problem(&self) -> &Problem {
        &self.0
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = self.0.retry_after;
        let unauthorized = status == StatusCode::UNAUTHORIZED;
        let body = serde_json::to_vec(&*self.0).unwrap_or_default();
        let mut res = (status, body).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = retry {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if unauthorized {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => ApiError::not_found(format!("no node with id {id}")),
            StoreError::JobNotFound(id) => ApiError::not_found(format!("no job with id {id}")),
            StoreError::Refused(r) => ApiError::new(Kind::Conflict, r.to_string()),
            StoreError::Page(p) => ApiError::bad_request(p.to_string()),
            StoreError::Invalid(e) => ApiError::invalid_body(e.to_string()),
            StoreError::Selection(e) => ApiError::bad_request(e.to_string()),
            StoreError::NothingSelected => ApiError::bad_request("no node matches the selection"),
            other => ApiError::internal(&other),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Store(s) => s.into(),
            other => ApiError::internal(&other),
        }
    }
}

impl From<OpsError> for ApiError {
    fn from(e: OpsError) -> Self {
        match e {
            OpsError::Store(s) => s.into(),
            other => ApiError::internal(&other),
        }
    }
}

impl Kind {
    /// The kind of an error status, if one has a kind of its own (`404` →
    /// [`Kind::NotFound`], …); `None` for the other statuses.
    pub fn of_status(status: StatusCode) -> Option<Kind> {
        const ALL: [Kind; 17] = [
            Kind::Unauthorized,
            Kind::RateLimited,
            Kind::Forbidden,
            Kind::NotFound,
            Kind::MethodNotAllowed,
            Kind::RequestTimeout,
            Kind::UriTooLong,
            Kind::HeadersTooLarge,
            Kind::BadRequest,
            Kind::InvalidBody,
            Kind::PayloadTooLarge,
            Kind::UnsupportedMediaType,
            Kind::Conflict,
            Kind::Unavailable,
            Kind::Internal,
            Kind::InvalidJson,
            Kind::Timeout,
        ];
        // The first of a status wins: 400 is bad-request, 503 unavailable.
        ALL.into_iter().find(|k| k.status() == status)
    }
}

/// Middleware: an error answer (4xx, 5xx) that is not `application/problem+json`
/// yet (axum's own 405 and 413, a body-limit rejection, …) becomes a problem of
/// the same status; its text, if any, becomes the `detail`.
pub async fn problem_bodies(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if is_problem {
        return res;
    }
    let (parts, body) = res.into_parts();
    // Error bodies are short; a long one is cut (it only becomes the detail).
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
        Err(_) => String::new(),
    };
    let detail = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let mut e = match Kind::of_status(status) {
        Some(k) => ApiError::new(k, detail),
        None => {
            let mut e = ApiError::new(Kind::BadRequest, detail);
            e.0.status = status.as_u16();
            e.0.title = status.canonical_reason().unwrap_or("Error").to_owned();
            if status.is_server_error() {
                e.0.type_ = format!("{TYPE_PREFIX}{}", Kind::Internal.slug());
            }
            e
        }
    };
    e.0.retry_after = parts
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut out = e.into_response();
    for (k, v) in &parts.headers {
        if k != header::CONTENT_TYPE
            && k != header::CONTENT_LENGTH
            && !out.headers().contains_key(k)
        {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// The result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;
