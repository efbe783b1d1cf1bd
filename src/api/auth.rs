//! Bearer-token check for the app API, when `CAUSEWAY_API_TOKEN` is set.

use std::fmt;

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

use super::{ApiState, problem::Problem};

/// The token the API requires, kept as its SHA-256 digest only.
///
/// A presented token is hashed and the two digests compared whole, so the time a check
/// takes tells nothing about where the tokens differ, nor how long the expected one is:
/// digests all have one size, and the expected one was hashed once, at start.
#[derive(Clone)]
pub struct ApiToken {
    digest: [u8; 32],
}

impl ApiToken {
    /// The token `token`.
    pub fn new(token: &str) -> Self {
        ApiToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Whether `presented` is the token.
    fn matches(&self, presented: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented).into();
        presented
            .iter()
            .zip(&self.digest)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(…)")
    }
}

/// Lets the request through when no token is configured or the right one is presented.
pub(super) async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(token) if expected.matches(token.trim().as_bytes()) => next.run(request).await,
        _ => {
            let mut response = Problem::unauthorized().into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_itself_matches() {
        let token = ApiToken::new("s3cret-token");
        assert!(token.matches(b"s3cret-token"));
        for other in [
            &b""[..],
            b"s3cret-toke",
            b"s3cret-tokenX",
            b"S3cret-token",
            b"s3cret-token\0",
        ] {
            assert!(!token.matches(other), "{other:?}");
        }
        assert_eq!(format!("{token:?}"), "ApiToken(…)");
    }
}
