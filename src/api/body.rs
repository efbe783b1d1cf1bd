//! Request bodies: JSON only, size-limited, with problem answers for each way they fail.

use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, StatusCode, header},
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::problem::Problem;

/// 415 unless the body is declared as JSON (`application/json` or `application/*+json`).
pub(super) fn require_json(headers: &HeaderMap) -> Result<(), Problem> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if json {
        return Ok(());
    }
    let got = if content_type.is_empty() {
        "no Content-Type".to_owned()
    } else {
        format!("Content-Type {content_type:?}")
    };
    Err(Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
        "Unsupported media type",
        format!("the body must be JSON with Content-Type: application/json; got {got}"),
    ))
}

/// Reads the whole body, refusing more than `max` bytes without reading them all.
pub(super) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    max: usize,
) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            format!("the body is larger than the limit of {max} bytes (CAUSEWAY_MAX_BODY)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(error) if super::server::is_read_timeout(&*error) => Err(Problem::request_timeout()),
        Err(error) => Err(Problem::bad_request(format!(
            "the body could not be read: {error}"
        ))),
    }
}

/// Reads a JSON body into `T`: 415, 413, 400 for bad syntax, 422 for well-formed JSON of the
/// wrong shape (a missing or unknown field, a wrong type), naming what is wrong.
pub(super) async fn read_json<T: DeserializeOwned>(
    body: Body,
    headers: &HeaderMap,
    max: usize,
) -> Result<T, Problem> {
    require_json(headers)?;
    let bytes = read_body(body, headers, max).await?;
    serde_json::from_slice(&bytes).map_err(|error| {
        if error.is_data() {
            Problem::unprocessable(format!("the body does not fit: {error}"))
        } else {
            Problem::bad_request(format!("the body is not valid JSON: {error}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_recognised() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            require_json(&headers).is_ok()
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/cloudevents+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/xml"));
        assert!(require_json(&HeaderMap::new()).is_err());
    }
}
