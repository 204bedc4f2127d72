//! URLs and the upgrade request, as agent.jar (remoting's `Engine`, Tyrus)
//! sends them.

use std::fmt;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Uri};

use super::{WebSocketError, CONNECTION_COOKIE, NODE_NAME, SECRET_KEY, X_REMOTING_CAPABILITY};
use crate::Capability;

/// `{controller_url}login`: the readiness check before each attempt (only
/// 200 means ready). `controller_url` is the controller's base URL; a
/// missing trailing `/` is supplied.
pub fn login_url(controller_url: &str) -> String {
    let sep = if controller_url.ends_with('/') {
        ""
    } else {
        "/"
    };
    format!("{controller_url}{sep}login")
}

/// `ws://host[:port]/path/wsagents/` (`wss` for `https`) for a controller
/// base URL. Refuses schemes other than http(s), URLs without a host, and
/// user info (the node's secret authenticates, and a password must not end
/// up in `Host`). A query is dropped.
pub fn agents_url(controller_url: &str) -> Result<Uri, WebSocketError> {
    Ok(Base::parse(controller_url)?.agents)
}

/// A parsed controller base URL.
struct Base {
    agents: Uri,
    /// `http(s)://host[:port]`, the `Origin` agent.jar sends.
    origin: String,
}

impl Base {
    fn parse(controller_url: &str) -> Result<Self, WebSocketError> {
        let bad = |reason: &str| WebSocketError::BadUrl {
            url: redact(controller_url),
            reason: reason.to_owned(),
        };
        let uri: Uri = controller_url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let (ws_scheme, http_scheme) = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => ("ws", "http"),
            Some(s) if s.eq_ignore_ascii_case("https") => ("wss", "https"),
            Some(_) => return Err(bad("the scheme is not http or https")),
            None => return Err(bad("not an absolute http(s) URL")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| bad("the URL has no host"))?
            .as_str();
        if authority.contains('@') {
            return Err(bad(
                "user info (user:password@) is not supported: the node's secret authenticates",
            ));
        }
        let mut path = uri.path().to_owned();
        if !path.ends_with('/') {
            path.push('/');
        }
        path.push_str("wsagents/");
        let agents = Uri::builder()
            .scheme(ws_scheme)
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            agents,
            origin: format!("{http_scheme}://{authority}"),
        })
    }
}

/// The URL with any user info replaced, for error messages.
fn redact(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &rest[at..]),
        None => url.to_owned(),
    }
}

/// What the upgrade request carries besides the URL.
#[derive(Clone, Copy)]
pub struct UpgradeHeaders<'a> {
    /// `Node-Name`.
    pub node: &'a str,
    /// `Secret-Key`.
    pub secret: &'a str,
    /// `X-Remoting-Capability`, as base64 text.
    pub capability: &'a Capability,
    /// `Connection-Cookie`, the one from the last accepted connection.
    pub cookie: Option<&'a str>,
    /// `-webSocketHeader NAME=VALUE`, in order; each replaces a same-named
    /// header (names are case-insensitive).
    pub extra: &'a [(String, String)],
}

impl fmt::Debug for UpgradeHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extra: Vec<&str> = self.extra.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("UpgradeHeaders")
            .field("node", &self.node)
            .field("secret", &"<redacted>")
            .field("capability", self.capability)
            .field("cookie", &self.cookie)
            .field("extra", &extra)
            .finish()
    }
}

/// The upgrade request as agent.jar sends it (see
/// `fixtures/websocket/upgrade-request.http`): `Connection`, `Host`,
/// `Node-Name`, `Origin`, a random `Sec-WebSocket-Key`,
/// `Sec-WebSocket-Version: 13`, `Secret-Key`, `Upgrade`,
/// `X-Remoting-Capability`, `Connection-Cookie` when given, then the extra
/// headers. Header values must be visible ASCII (the upgrade writes them as
/// text); errors name the header but never show a value.
pub fn upgrade_request(
    controller_url: &str,
    headers: &UpgradeHeaders<'_>,
) -> Result<Request<()>, WebSocketError> {
    let base = Base::parse(controller_url)?;
    let host = base
        .agents
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let capability = headers.capability.to_base64();
    let fixed = [
        (header::CONNECTION, "Connection", "Upgrade"),
        (header::HOST, "Host", host.as_str()),
        (NODE_NAME, "Node-Name", headers.node),
        (header::ORIGIN, "Origin", base.origin.as_str()),
        (header::SEC_WEBSOCKET_KEY, "Sec-WebSocket-Key", key.as_str()),
        (header::SEC_WEBSOCKET_VERSION, "Sec-WebSocket-Version", "13"),
        (SECRET_KEY, "Secret-Key", headers.secret),
        (header::UPGRADE, "Upgrade", "websocket"),
        (
            X_REMOTING_CAPABILITY,
            "X-Remoting-Capability",
            capability.as_str(),
        ),
    ];
    let mut map = HeaderMap::with_capacity(fixed.len() + 1 + headers.extra.len());
    for (name, shown, value) in fixed {
        map.insert(name, header_value(shown, value)?);
    }
    if let Some(cookie) = headers.cookie {
        map.insert(
            CONNECTION_COOKIE,
            header_value("Connection-Cookie", cookie)?,
        );
    }
    for (name, value) in headers.extra {
        let header =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| WebSocketError::BadHeader {
                name: printable(name),
                reason: "not a valid HTTP header name".to_owned(),
            })?;
        map.insert(header, header_value(name, value)?);
    }
    let mut request = Request::get(base.agents)
        .body(())
        .map_err(|e| WebSocketError::Handshake(e.to_string()))?;
    *request.headers_mut() = map;
    Ok(request)
}

/// A header value the upgrade can write: visible ASCII, space and tab.
fn header_value(name: &str, value: &str) -> Result<HeaderValue, WebSocketError> {
    let bad = |reason: &str| WebSocketError::BadHeader {
        name: printable(name),
        reason: reason.to_owned(),
    };
    if !value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(bad(
            "the value holds a character other than printable ASCII (value not shown)",
        ));
    }
    HeaderValue::from_str(value).map_err(|_| bad("not a valid HTTP header value (value not shown)"))
}

/// A header name as given, safe to print (bounded, control characters
/// replaced).
fn printable(name: &str) -> String {
    name.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use base64::Engine as _;
    use tokio_tungstenite::tungstenite::handshake::client::generate_request;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn headers<'a>(cookie: Option<&'a str>, extra: &'a [(String, String)]) -> UpgradeHeaders<'a> {
        UpgradeHeaders {
            node: "ws-node",
            secret: SECRET,
            capability: &Capability::CURRENT,
            cookie,
            extra,
        }
    }

    /// `(lowercase name, value)` of every header line of a request, sorted.
    fn header_lines(text: &str) -> (String, Vec<(String, String)>) {
        let mut lines = text.split("\r\n");
        let start = lines.next().unwrap().to_owned();
        let mut headers: Vec<(String, String)> = lines
            .take_while(|l| !l.is_empty())
            .map(|l| {
                let (name, value) = l.split_once(':').unwrap();
                (name.to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        headers.sort();
        (start, headers)
    }

    /// The recorded agent.jar request, from the workspace's fixtures.
    fn recorded_request() -> String {
        let path = testkit::fixtures::dir().join("../websocket/upgrade-request.http");
        std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (copy shared/fixtures/websocket/ to protocol-fixtures/websocket/)",
                path.display()
            )
        })
    }

    #[test]
    fn upgrade_request_matches_the_recording() {
        let recorded = recorded_request();
        let extra = [("X-Extra".to_owned(), "demo".to_owned())];
        let request = upgrade_request("http://127.0.0.1:45235/", &headers(None, &extra)).unwrap();
        let (wire, _key) = generate_request(request).unwrap();
        let (ours_start, mut ours) = header_lines(std::str::from_utf8(&wire).unwrap());
        let (start, mut theirs) = header_lines(&recorded);
        assert_eq!(ours_start, start);
        let key = |h: &mut Vec<(String, String)>| {
            let at = h
                .iter()
                .position(|(n, _)| n == "sec-websocket-key")
                .unwrap();
            h.remove(at).1
        };
        let our_key = base64::engine::general_purpose::STANDARD
            .decode(key(&mut ours))
            .unwrap();
        assert_eq!(our_key.len(), 16);
        key(&mut theirs);
        assert_eq!(ours, theirs);
    }

    #[test]
    fn keys_are_random() {
        let a = upgrade_request("http://h/", &headers(None, &[])).unwrap();
        let b = upgrade_request("http://h/", &headers(None, &[])).unwrap();
        assert_ne!(
            a.headers()["sec-websocket-key"],
            b.headers()["sec-websocket-key"]
        );
    }

    #[test]
    fn cookie_only_when_given() {
        let without = upgrade_request("https://h/", &headers(None, &[])).unwrap();
        assert!(without.headers().get("connection-cookie").is_none());
        let with = upgrade_request("https://h/", &headers(Some("0a1b"), &[])).unwrap();
        assert_eq!(with.headers()["connection-cookie"], "0a1b");
        assert_eq!(with.uri(), "wss://h/wsagents/");
        assert_eq!(with.headers()["origin"], "https://h");
    }

    #[test]
    fn extra_headers_replace_same_named_ones() {
        let extra = [
            ("node-NAME".to_owned(), "x".to_owned()),
            ("Host".to_owned(), "jenkins.example".to_owned()),
            ("X-A".to_owned(), "1".to_owned()),
            ("x-a".to_owned(), "2".to_owned()),
        ];
        let request = upgrade_request("http://h:1/", &headers(None, &extra)).unwrap();
        let h = request.headers();
        assert_eq!(h.get_all("node-name").iter().collect::<Vec<_>>(), ["x"]);
        assert_eq!(
            h.get_all("host").iter().collect::<Vec<_>>(),
            ["jenkins.example"]
        );
        assert_eq!(h.get_all("x-a").iter().collect::<Vec<_>>(), ["2"]);
        generate_request(request).unwrap();
    }

    #[test]
    fn invalid_headers_are_named_but_values_never_shown() {
        for (name, value) in [
            ("Bad Name", "v"),
            ("X-Ok", "line\r\nbreak"),
            ("X-Ok", "caf\u{e9}"),
            ("", "v"),
        ] {
            let extra = [(name.to_owned(), value.to_owned())];
            let err = upgrade_request("http://h/", &headers(None, &extra)).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, WebSocketError::BadHeader { .. }), "{err:?}");
            assert!(text.contains(name), "{text}");
            assert!(!text.contains(value) || value == "v", "{text}");
        }
        let mut bad_secret = headers(None, &[]);
        let secret = format!("{SECRET}\n");
        bad_secret.secret = &secret;
        let text = upgrade_request("http://h/", &bad_secret)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("Secret-Key") && !text.contains(SECRET),
            "{text}"
        );
        assert!(!format!("{bad_secret:?}").contains(SECRET));
    }

    #[test]
    fn agents_urls() {
        for (base, expected) in [
            ("http://h:8080/jenkins/", "ws://h:8080/jenkins/wsagents/"),
            ("http://h:8080/jenkins", "ws://h:8080/jenkins/wsagents/"),
            ("https://h/", "wss://h/wsagents/"),
            ("HTTPS://h", "wss://h/wsagents/"),
            ("http://[::1]:8080/", "ws://[::1]:8080/wsagents/"),
            ("http://h/ci/?x=1", "ws://h/ci/wsagents/"),
        ] {
            assert_eq!(agents_url(base).unwrap().to_string(), expected, "{base}");
        }
        for bad in [
            "ftp://h/",
            "h:8080/",
            "/jenkins/",
            "",
            "http://",
            "http://u:pw@h/",
        ] {
            let err = agents_url(bad).unwrap_err();
            assert!(
                matches!(err, WebSocketError::BadUrl { .. }),
                "{bad}: {err:?}"
            );
            assert!(!err.to_string().contains("pw"), "{err}");
        }
    }

    #[test]
    fn login_urls() {
        assert_eq!(
            login_url("http://h:8080/jenkins/"),
            "http://h:8080/jenkins/login"
        );
        assert_eq!(login_url("http://h"), "http://h/login");
    }

    #[test]
    fn redacts_user_info() {
        assert_eq!(redact("http://u:pw@h/x@y"), "http://***@h/x@y");
        assert_eq!(redact("http://h/x@y"), "http://h/x@y");
        assert_eq!(redact("u:pw@h"), "***@h");
    }
}
