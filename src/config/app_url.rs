//! The app's base URL, parsed once into what the delivery client uses: the address to
//! connect to, the `Host` header and the path prefix of every route.

use std::net::Ipv6Addr;

use hyper::{Uri, header::HeaderValue};

/// A base URL the delivery client uses exactly as written: `http://host[:port][/prefix]`.
#[derive(Clone, Debug)]
pub struct AppUrl {
    /// `host:port`, to connect to.
    pub address: String,
    /// The `Host` header: the URL's authority as written.
    pub host: HeaderValue,
    /// The path every route is under: empty, or `/prefix` without a trailing `/`.
    pub prefix: String,
    /// `http://host[:port][/prefix]`, for spans and log lines.
    pub base: String,
}

impl AppUrl {
    /// Parses `value`, or says what the client could not use as written. The problem never
    /// repeats the URL: it may hold credentials.
    pub fn parse(value: &str) -> Result<Self, String> {
        let rest = value
            .strip_prefix("http://")
            .ok_or("expected an http:// URL (the app is reached over the pod's loopback)")?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err("the URL has no host".into());
        }
        // Checked before parsing: the URI parser drops a fragment without a word.
        if value.contains('#') {
            return Err("a fragment (#...) is not supported".into());
        }
        // Anywhere, not only in the authority: a password with an unencoded '/' would put
        // the '@' in what looks like the path.
        if rest.contains('@') {
            return Err(
                "credentials (user:password@) are not supported, nor an '@' elsewhere in the URL"
                    .into(),
            );
        }
        let uri: Uri = value
            .parse()
            .map_err(|error| format!("not a valid URL: {error}"))?;
        let authority = uri.authority().ok_or("the URL has no host")?;
        let host = authority.host();
        check_host(host)?;
        let port = port(&authority.as_str()[host.len()..])?;
        if uri.query().is_some() {
            return Err("a query (?...) is not supported: routes are appended to the URL".into());
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| String::from("the host cannot be sent in a Host header"))?;
        Ok(AppUrl {
            address: format!("{host}:{port}"),
            host: header,
            base: format!("http://{authority}{prefix}"),
            prefix,
        })
    }
}

/// A host name (letters, digits, `-`, `.`), an IPv4 address, or an IPv6 address in brackets:
/// what a connect resolves as written. Percent-encoded or other characters are not.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').unwrap_or(inner);
        return inner
            .parse::<Ipv6Addr>()
            .map(drop)
            .map_err(|_| "the host is not a valid IPv6 address".into());
    }
    let valid = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err("the host may hold only letters, digits, '-' and '.' (or be an IP address)".into())
    }
}

/// The port of `":8080"` (the authority after its host), 80 when there is none.
fn port(after_host: &str) -> Result<u16, String> {
    let Some(digits) = after_host.strip_prefix(':') else {
        return Ok(80);
    };
    if digits.is_empty() {
        return Err("the port after ':' is empty".into());
    }
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err("the port is not a number".into());
    }
    match digits.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!(
            "the port {} is out of range (1-65535)",
            digits.chars().take(12).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_are_used_as_written() {
        let url = AppUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(url.address, "127.0.0.1:8080");
        assert_eq!(url.host, "127.0.0.1:8080");
        assert_eq!(url.prefix, "");
        assert_eq!(url.base, "http://127.0.0.1:8080");
        let url = AppUrl::parse("http://localhost/hooks/").unwrap();
        assert_eq!(url.address, "localhost:80");
        assert_eq!(url.host, "localhost");
        assert_eq!(url.prefix, "/hooks");
        assert_eq!(url.base, "http://localhost/hooks");
        let url = AppUrl::parse("http://[::1]:9000/base").unwrap();
        assert_eq!(url.address, "[::1]:9000");
        assert_eq!(url.prefix, "/base");
        assert_eq!(
            AppUrl::parse("http://app:65535").unwrap().address,
            "app:65535"
        );
    }

    #[test]
    fn what_the_client_would_change_or_misread_is_refused() {
        for (url, problem) in [
            ("https://127.0.0.1:8080", "expected an http:// URL"),
            ("HTTP://127.0.0.1:8080", "expected an http:// URL"),
            ("http://", "no host"),
            ("http:///path", "no host"),
            ("http://127.0.0.1:99999", "the port 99999 is out of range"),
            ("http://127.0.0.1:0", "the port 0 is out of range"),
            ("http://127.0.0.1:", "the port after ':' is empty"),
            ("http://127.0.0.1:80a", ""),
            ("http://user:hunter2@127.0.0.1:8080", "credentials"),
            ("http://user:hun/ter2@127.0.0.1:8080", "credentials"),
            ("http://app/hooks?x=1", "a query"),
            ("http://app/hooks#x", "a fragment"),
            ("http://a%41pp:8080", "not a valid URL"),
            ("http://a_b:8080", "the host may hold only"),
            ("http://[::g]:8080", ""),
            ("http://app/a b", "not a valid URL"),
            ("http://app/a<b>", "not a valid URL"),
        ] {
            let error = AppUrl::parse(url).unwrap_err();
            assert!(error.contains(problem), "{url}: {error}");
            assert!(!error.contains("hunter2"), "{url}: {error}");
        }
    }
}
