//! The flow page at `/ui/`: one HTML file, its script and its style, embedded in the binary.
//!
//! The page is public (it holds no data); the API calls it makes carry the bearer token the
//! user types in. It loads nothing from elsewhere, and the Content-Security-Policy says so to
//! the browser: no inline script or style, no other origin, no framing.

use axum::{
    http::{HeaderName, HeaderValue, header},
    response::{IntoResponse, Redirect, Response},
};

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// Everything from this origin only, nothing inline, no plugins, not inside a frame.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /ui`: to `/ui/`, by a relative address, so that the page also works behind a proxy
/// that serves it under a prefix.
pub(super) async fn redirect() -> Redirect {
    Redirect::permanent("ui/")
}

/// `GET /ui/`: the page.
pub(super) async fn index() -> Response {
    embedded("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/app.js`: the page's script.
pub(super) async fn script() -> Response {
    embedded("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /ui/app.css`: the page's style sheet.
pub(super) async fn style() -> Response {
    embedded("text/css; charset=utf-8", STYLE)
}

/// One embedded file with its type and the page's security headers.
fn embedded(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        // The files are small and change with the binary: always ask again.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_file_has_its_type_and_the_policy() {
        for (response, content_type) in [
            (index().await, "text/html; charset=utf-8"),
            (script().await, "text/javascript; charset=utf-8"),
            (style().await, "text/css; charset=utf-8"),
        ] {
            assert_eq!(response.status(), 200);
            let headers = response.headers();
            assert_eq!(headers[header::CONTENT_TYPE], content_type);
            let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(policy.starts_with("default-src 'self';"), "{policy}");
            assert!(!policy.contains("unsafe"), "{policy}");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_and_names_its_assets() {
        // The policy forbids inline code: it would not run, so it must not be there.
        assert!(!INDEX.contains("<script>"));
        assert!(!INDEX.contains("<style"));
        assert!(!INDEX.contains(" style="));
        let handler = INDEX.match_indices(" on").any(|(at, _)| {
            let name: String = INDEX[at + 1..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            INDEX[at + 1 + name.len()..].starts_with('=')
        });
        assert!(!handler, "no inline event handlers");
        assert!(INDEX.contains(r#"<script src="app.js" defer></script>"#));
        assert!(INDEX.contains(r#"<link rel="stylesheet" href="app.css">"#));
    }
}
