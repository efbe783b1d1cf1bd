//! Errors as `application/problem+json` (RFC 9457).
//!
//! 4xx problems are the caller's to fix and say exactly what was wrong; 5xx problems say
//! what the caller can do (retry, and whether the event may already be published) and leave
//! the internal detail to the log.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// A problem answer.
#[derive(Debug, Serialize)]
pub struct Problem {
    /// A URI naming the kind of problem: `urn:causeway:problem:<slug>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind.
    pub title: &'static str,
    /// The HTTP status.
    #[serde(serialize_with = "serialize_status")]
    pub status: StatusCode,
    /// What went wrong with this request.
    pub detail: String,
    /// Seconds after which a retry makes sense, also sent as `Retry-After`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u32>,
    /// Each thing wrong with the request, when there are several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Box<serde_json::Value>>,
    /// One result per item of a batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Box<serde_json::Value>>,
}

fn serialize_status<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl Problem {
    /// A problem of kind `slug` with the given status, title and detail.
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            kind: format!("urn:causeway:problem:{slug}"),
            title,
            status,
            detail: detail.into(),
            retry_after: None,
            errors: None,
            results: None,
        }
    }

    /// Adds a `Retry-After`.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 400: the request is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    /// 422: well-formed, but not acceptable.
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable",
            "Unprocessable request",
            detail,
        )
    }

    /// Adds the list of individual problems (`errors`).
    pub fn with_errors(mut self, errors: impl serde::Serialize) -> Self {
        self.errors = serde_json::to_value(errors).ok().map(Box::new);
        self
    }

    /// Adds one result per item of a batch (`results`).
    pub fn with_results(mut self, results: Vec<serde_json::Value>) -> Self {
        self.results = Some(Box::new(serde_json::Value::Array(results)));
        self
    }

    /// 401: the bearer token is missing or wrong.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "this API requires the header Authorization: Bearer <CAUSEWAY_API_TOKEN>",
        )
    }

    /// 404: no such route.
    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("no route for {path}"),
        )
    }

    /// 405: the route exists, the method does not.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            format!("{method} is not allowed on {path}"),
        )
    }

    /// 503: the sidecar cannot take the request now; nothing was done.
    pub fn unavailable(detail: impl Into<String>, retry_after: u32) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        )
        .retry_after(retry_after)
    }

    /// 503: the API has as many requests in flight as `CAUSEWAY_API_MAX_REQUESTS` allows,
    /// and none finished in time; nothing was done.
    pub fn overloaded() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Too many requests in flight",
            "the sidecar is handling as many requests as CAUSEWAY_API_MAX_REQUESTS allows and none finished within 1 s; nothing was done",
        )
        .retry_after(1)
    }

    /// 408: the body did not arrive within `CAUSEWAY_READ_TIMEOUT`; nothing was done.
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timeout",
            "the request body did not arrive within CAUSEWAY_READ_TIMEOUT of the request's first byte; nothing was done",
        )
    }

    /// 500: a fault of the sidecar's; the detail is in its log.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the sidecar failed to handle the request; its log has the details",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
