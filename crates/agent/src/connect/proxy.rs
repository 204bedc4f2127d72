//! Which HTTP proxy, if any, stands between the agent and a controller.
//!
//! The variables are read in the order reqwest reads them for the web port
//! (`HTTP_PROXY`, `http_proxy`, then the `HTTPS_` and `ALL_` forms; `NO_PROXY`
//! before `no_proxy`), and `no_proxy` is decided by the same library
//! (hyper-util's proxy matcher), so the web port, the agent port and the
//! WebSocket of one controller agree on whether they go through a proxy.
//!
//! - [`proxy_for`] reads the proxy variables and `no_proxy` and says whether a
//!   host must be reached through a proxy;
//! - [`ProxyChoice`] is that decision plus the credentials to present.

use std::fmt;

use hyper_util::client::proxy::matcher::Matcher;

use crate::settings::{Credentials, Secret};

/// Proxy variables for the agent port, in the order they are consulted.
const PROXY_VARIABLES: [&str; 6] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// `no_proxy` variables, in the order they are consulted.
pub(crate) const NO_PROXY_VARIABLES: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// The variables reqwest reads for an `http://` URL, in order.
pub(crate) const HTTP_URL_VARIABLES: [&str; 4] =
    ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"];

/// The variables reqwest reads for an `https://` URL, in order.
pub(crate) const HTTPS_URL_VARIABLES: [&str; 4] =
    ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];

/// An HTTP proxy taken from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAddr {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (80 when the variable gives none, as reqwest assumes).
    pub port: u16,
    /// `user:password@` from the variable, if it had one. `-proxyCredentials`
    /// takes precedence.
    pub credentials: Option<Credentials>,
    /// The variable it came from, for error messages.
    pub variable: &'static str,
    /// An `https://` proxy: TLS to the proxy itself, then `CONNECT` inside.
    pub tls: bool,
}

impl fmt::Display for ProxyAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (from {})",
            authority(&self.host, self.port),
            self.variable
        )
    }
}

/// How to reach the agent port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyChoice {
    /// A plain TCP connection.
    Direct,
    /// An HTTP `CONNECT` tunnel through a proxy.
    Connect {
        /// The proxy.
        proxy: ProxyAddr,
        /// Sent as `Proxy-Authorization: Basic`, when set.
        credentials: Option<Credentials>,
    },
}

impl ProxyChoice {
    /// The choice for `target_host` given the process environment, with
    /// `-proxyCredentials` (which wins over credentials in the proxy URL).
    pub fn from_env(target_host: &str, proxy_credentials: Option<&Credentials>) -> Self {
        Self::choose(target_host, proxy_credentials, &|name| {
            std::env::var(name).ok()
        })
    }

    /// The choice for a WebSocket to `host` ([`web_proxy_for`]) given the
    /// process environment.
    pub fn for_web_socket(
        host: &str,
        https: bool,
        proxy_credentials: Option<&Credentials>,
    ) -> Self {
        Self::with(
            web_proxy_for(host, https, &|name| std::env::var(name).ok()),
            proxy_credentials,
        )
    }

    fn with(proxy: Option<ProxyAddr>, proxy_credentials: Option<&Credentials>) -> Self {
        match proxy {
            None => ProxyChoice::Direct,
            Some(proxy) => {
                let credentials = proxy_credentials
                    .cloned()
                    .or_else(|| proxy.credentials.clone());
                ProxyChoice::Connect { proxy, credentials }
            }
        }
    }

    /// [`ProxyChoice::from_env`] with an explicit environment.
    pub fn choose(
        target_host: &str,
        proxy_credentials: Option<&Credentials>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Self {
        Self::with(proxy_for(target_host, env), proxy_credentials)
    }
}

/// `host:port`, with brackets around an IPv6 address.
pub(crate) fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The first variable among `names` that is set and not blank.
pub(crate) fn first_env(
    env: &dyn Fn(&str) -> Option<String>,
    names: &[&'static str],
) -> Option<(&'static str, String)> {
    names.iter().find_map(|&name| {
        env(name)
            .filter(|value| !value.trim().is_empty())
            .map(|value| (name, value))
    })
}

/// The HTTP proxy to use for a connection to `host` (the agent port's host,
/// after `-tunnel`), or `None` for a direct connection.
///
/// Consults `HTTP_PROXY`, `http_proxy`, `HTTPS_PROXY`, `https_proxy`,
/// `ALL_PROXY`, `all_proxy` (first one set wins), unless `host` matches
/// `NO_PROXY`/`no_proxy` (see [`no_proxy_matches`]). Only `http://` proxies
/// (or values without a scheme) can tunnel; other schemes are ignored with a
/// warning.
pub fn proxy_for(host: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<ProxyAddr> {
    let proxy = proxy_among(&PROXY_VARIABLES, host, env)?;
    if proxy.tls {
        // The agent port's stream is plain TCP under the pinned TLS.
        tracing::warn!(
            variable = proxy.variable,
            "an https:// proxy cannot carry the TCP agent port; connecting directly (-webSocket can use it)"
        );
        return None;
    }
    Some(proxy)
}

/// The proxy for a WebSocket to `host` on the web port: the variables
/// reqwest reads for that URL's scheme (`HTTP_PROXY` for `ws`,
/// `HTTPS_PROXY` for `wss`, then `ALL_PROXY`), so the WebSocket takes the
/// path the web port's requests take. Always a `CONNECT` tunnel.
pub fn web_proxy_for(
    host: &str,
    https: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<ProxyAddr> {
    let variables: &[&'static str] = if https {
        &HTTPS_URL_VARIABLES
    } else {
        &HTTP_URL_VARIABLES
    };
    proxy_among(variables, host, env)
}

fn proxy_among(
    variables: &[&'static str],
    host: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<ProxyAddr> {
    let (variable, value) = first_env(env, variables)?;
    if let Some((_, list)) = first_env(env, &NO_PROXY_VARIABLES) {
        if no_proxy_matches(&list, host) {
            return None;
        }
    }
    match parse_proxy_url(&value, variable) {
        Ok(proxy) => Some(proxy),
        Err(reason) => {
            // The value may hold a password: name the variable only.
            tracing::warn!(
                variable,
                reason,
                "ignoring the proxy setting; connecting directly"
            );
            None
        }
    }
}

/// Parses `[http(s)://][user[:password]@]host[:port][/...]`.
fn parse_proxy_url(value: &str, variable: &'static str) -> Result<ProxyAddr, &'static str> {
    let value = value.trim();
    let (rest, tls) = match value.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (rest, false),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (rest, true),
        Some(_) => return Err("only http:// and https:// proxies can tunnel"),
        None => (value, false),
    };
    let authority_part = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (userinfo, host_port) = match authority_part.rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, authority_part),
    };
    let (host, port) = split_host_port(host_port, if tls { 443 } else { 80 })
        .ok_or("the proxy address is not host[:port]")?;
    let credentials = userinfo.map(|userinfo| {
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        Credentials {
            user: percent_decode(user),
            password: Secret::new(percent_decode(password)),
        }
    });
    Ok(ProxyAddr {
        host,
        port,
        credentials,
        variable,
        tls,
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; `default_port` without one.
fn split_host_port(text: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return None,
            Ok(p) => p,
        },
    };
    Some((host.to_owned(), port))
}

/// `%XX` decoding for userinfo; invalid escapes are kept as they are.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `host` is excluded from proxying by the `no_proxy` list `list`.
///
/// The decision is hyper-util's proxy matcher, the one reqwest applies to
/// the web port's requests, so the agent port, the WebSocket and the web
/// port of one controller can never disagree (curl's rules as hyper-util
/// reads them: comma-separated entries; `*` matches everything; an address
/// or CIDR block matches addresses; any other entry matches that domain and
/// its subdomains, with or without a leading `.`, case-insensitively).
pub fn no_proxy_matches(list: &str, host: &str) -> bool {
    let Some(dst) = probe_uri(host) else {
        return false;
    };
    // A stand-in proxy: only the `no` list decides here.
    let matcher = Matcher::builder()
        .all("http://proxy.invalid:1")
        .no(list)
        .build();
    matcher.intercept(&dst).is_none()
}

/// `http://HOST/` for the matcher, with an IPv6 address in brackets.
fn probe_uri(host: &str) -> Option<http::Uri> {
    let bare = host.trim().trim_start_matches('[').trim_end_matches(']');
    let host = if bare.contains(':') {
        format!("[{bare}]")
    } else {
        bare.to_owned()
    };
    format!("http://{host}/").parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials {
            user: user.to_owned(),
            password: Secret::new(password),
        }
    }

    #[test]
    fn no_proxy_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "anything.example", true),
            ("", "ci.example.com", false),
            ("example.com", "example.com", true),
            ("example.com", "ci.example.com", true),
            ("example.com", "a.b.example.com", true),
            ("example.com", "notexample.com", false),
            ("example.com", "example.com.evil", false),
            (".example.com", "example.com", true),
            (".example.com", "ci.example.com", true),
            // The hand-written rules said true for the next five; reqwest
            // (hyper-util) says false, and the web port always followed it.
            ("*.example.com", "ci.example.com", false),
            ("EXAMPLE.com", "Ci.Example.COM", true),
            ("example.com.", "ci.example.com", false),
            ("example.com", "ci.example.com.", false),
            ("example.com:8080", "ci.example.com", false),
            ("other.org, example.com", "ci.example.com", true),
            (" other.org ,  ,example.com ", "ci.example.com", true),
            ("other.org", "ci.example.com", false),
            ("localhost,127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("10.0.0.0/8", "10.20.30.40", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("192.168.1.0/24", "192.168.1.255", true),
            ("192.168.1.0/24", "192.168.2.1", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("10.0.0.1/32", "10.0.0.1", true),
            ("10.0.0.0/33", "10.0.0.1", false),
            ("::1", "::1", true),
            ("[::1]", "[::1]", false),
            ("fd00::/8", "fd12:3456::1", true),
            ("fd00::/8", "fe80::1", false),
            ("fd00::/8", "10.0.0.1", false),
            // A domain entry never matches an address by text.
            ("0.0.1", "10.0.0.1", false),
            ("example.com", "10.0.0.1", false),
        ];
        for (list, host, expected) in cases {
            assert_eq!(
                no_proxy_matches(list, host),
                *expected,
                "no_proxy={list:?} host={host:?}"
            );
        }
    }

    #[test]
    fn web_socket_proxies_follow_the_url_scheme() {
        let env = env_of(&[
            ("http_proxy", "http://plain:3128"),
            ("HTTPS_PROXY", "http://secure:3129"),
            ("no_proxy", "internal.example"),
        ]);
        let plain = web_proxy_for("ci.example", false, &env).unwrap();
        assert_eq!((plain.host.as_str(), plain.port), ("plain", 3128));
        let secure = web_proxy_for("ci.example", true, &env).unwrap();
        assert_eq!(
            (secure.host.as_str(), secure.variable),
            ("secure", "HTTPS_PROXY")
        );
        assert_eq!(web_proxy_for("ci.internal.example", true, &env), None);
        let all = env_of(&[("ALL_PROXY", "http://all:1")]);
        assert_eq!(web_proxy_for("ci.example", true, &all).unwrap().host, "all");
        let only_https = env_of(&[("https_proxy", "http://secure:3129")]);
        assert_eq!(web_proxy_for("ci.example", false, &only_https), None);
    }

    #[test]
    fn proxy_variables_and_precedence() {
        let env = env_of(&[]);
        assert_eq!(proxy_for("ci.example", &env), None);

        let env = env_of(&[("http_proxy", "http://proxy.corp:3128/")]);
        let proxy = proxy_for("ci.example", &env).unwrap();
        assert_eq!(
            proxy,
            ProxyAddr {
                host: "proxy.corp".to_owned(),
                port: 3128,
                credentials: None,
                variable: "http_proxy",
                tls: false,
            }
        );
        assert_eq!(proxy.to_string(), "proxy.corp:3128 (from http_proxy)");

        let env = env_of(&[
            ("https_proxy", "https-proxy:1"),
            ("http_proxy", "lower:2"),
            ("HTTP_PROXY", "upper:3"),
        ]);
        assert_eq!(proxy_for("h", &env).unwrap().port, 3);
        let env = env_of(&[("https_proxy", "https-proxy:1"), ("ALL_PROXY", "all:4")]);
        assert_eq!(proxy_for("h", &env).unwrap().host, "https-proxy");
        let env = env_of(&[("all_proxy", "all:4")]);
        assert_eq!(proxy_for("h", &env).unwrap().variable, "all_proxy");
        // Blank values count as unset.
        let env = env_of(&[("HTTP_PROXY", " "), ("http_proxy", "p:5")]);
        assert_eq!(proxy_for("h", &env).unwrap().port, 5);

        // no_proxy
        let env = env_of(&[
            ("http_proxy", "p:1"),
            ("no_proxy", ".example.com,10.0.0.0/8"),
        ]);
        assert_eq!(proxy_for("ci.example.com", &env), None);
        assert_eq!(proxy_for("10.1.2.3", &env), None);
        assert!(proxy_for("ci.other.org", &env).is_some());
        let env = env_of(&[
            ("http_proxy", "p:1"),
            ("NO_PROXY", "a.org"),
            ("no_proxy", "b.org"),
        ]);
        assert_eq!(proxy_for("a.org", &env), None);
        assert!(proxy_for("b.org", &env).is_some());
    }

    #[test]
    fn proxy_url_forms() {
        let parse = |v: &str| parse_proxy_url(v, "http_proxy");
        assert_eq!(parse("proxy").unwrap().port, 80);
        assert_eq!(parse("HTTP://Proxy:8080").unwrap().host, "Proxy");
        let v6 = parse("http://[fd00::2]:3128").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("fd00::2", 3128));
        assert_eq!(parse("[::1]").unwrap().port, 80);
        let with_auth = parse("http://us%40er:p%3Ass@proxy:3128").unwrap();
        assert_eq!(with_auth.credentials, Some(creds("us@er", "p:ss")));
        assert!(!format!("{with_auth:?} {with_auth}").contains("p:ss"));
        assert_eq!(
            parse("http://u@proxy:1").unwrap().credentials,
            Some(creds("u", ""))
        );
        let secure = parse("https://proxy").unwrap();
        assert!(secure.tls && secure.port == 443, "{secure:?}");
        assert!(!parse("http://proxy").unwrap().tls);
        // The agent port cannot go through one; a WebSocket can.
        let env = env_of(&[("https_proxy", "https://proxy:8443")]);
        assert_eq!(proxy_for("h", &env), None);
        assert!(web_proxy_for("h", true, &env).unwrap().tls);
        for bad in [
            "socks5://proxy:1080",
            "http://:3128",
            "proxy:0",
            "proxy:99999",
            "proxy:port",
            "http://[::1",
            "http://[::1]x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        // Unusable values fall back to a direct connection.
        let env = env_of(&[("http_proxy", "socks5://proxy:1080")]);
        assert_eq!(proxy_for("h", &env), None);
    }

    #[test]
    fn choice_prefers_proxy_credentials_over_the_url() {
        let env = env_of(&[("http_proxy", "http://url-user:url-pass@p:1")]);
        match ProxyChoice::choose("h", Some(&creds("cli", "pw")), &env) {
            ProxyChoice::Connect { credentials, .. } => {
                assert_eq!(credentials, Some(creds("cli", "pw")));
            }
            other => panic!("{other:?}"),
        }
        match ProxyChoice::choose("h", None, &env) {
            ProxyChoice::Connect { credentials, .. } => {
                assert_eq!(credentials, Some(creds("url-user", "url-pass")));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ProxyChoice::choose("h", Some(&creds("cli", "pw")), &env_of(&[])),
            ProxyChoice::Direct
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%zz%4"), "a b%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("%"), "%");
    }
}
