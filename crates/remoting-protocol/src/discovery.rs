//! Discovery: interpreting the controller's answer to
//! `GET {url}tcpSlaveAgentListener/` (PROTOCOL.md section 1).
//!
//! Pure functions, no I/O: the caller performs the HTTP request with whatever
//! client it likes and hands the status and headers to
//! [`endpoint_from_response`], which says where the TCP agent port is, which
//! protocols it speaks and which key its TLS certificate must carry.
//!
//! The checks run in a fixed order (status, port header, identity, port value,
//! protocol offer) so that a response which is wrong in several ways is
//! reported by its most fundamental fault: a proxy's login page is "not a
//! Jenkins controller", not "missing instance identity".

use http::{HeaderMap, StatusCode, Uri};

use crate::identity::{IdentityError, InstanceIdentity};
use crate::quote::quote;

/// The path, relative to the controller URL, that publishes the agent port.
pub const LISTENER_PATH: &str = "tcpSlaveAgentListener/";

/// The only TCP protocol this agent speaks.
pub const JNLP4_CONNECT: &str = "JNLP4-connect";

/// TCP agent port.
pub const HEADER_JNLP_PORT: &str = "X-Jenkins-JNLP-Port";
/// TCP agent port, as controllers from the Hudson days name it.
pub const HEADER_LEGACY_JNLP_PORT: &str = "X-Hudson-JNLP-Port";
/// Host to connect to, when it is not the URL's host.
pub const HEADER_JNLP_HOST: &str = "X-Jenkins-JNLP-Host";
/// Comma-separated list of enabled agent protocols.
pub const HEADER_AGENT_PROTOCOLS: &str = "X-Jenkins-Agent-Protocols";
/// Base64 DER SubjectPublicKeyInfo of the controller's identity key.
pub const HEADER_INSTANCE_IDENTITY: &str = "X-Instance-Identity";
/// Oldest remoting version the controller accepts.
pub const HEADER_MINIMUM_REMOTING_VERSION: &str = "X-Remoting-Minimum-Version";
/// Carried by every Jenkins page; used only to word the "not Jenkins" error.
pub const HEADER_JENKINS: &str = "X-Jenkins";

/// Header values from the network are echoed in errors only up to this many
/// characters, so a hostile controller cannot flood the log.
const MAX_ECHOED_CHARS: usize = 64;

/// Why the controller's discovery answer cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The controller URL is unusable (not http(s), no host, has a query...).
    #[error("invalid controller URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// 404: the controller has its TCP agent port disabled.
    #[error(
        "the controller's TCP agent port is disabled (tcpSlaveAgentListener/ answered 404): \
         enable it under Manage Jenkins > Security > Agents, or use -webSocket"
    )]
    PortDisabled,
    /// Any other answer than 200 or 404.
    #[error(
        "tcpSlaveAgentListener/ answered HTTP {status} instead of 200: \
         check the controller URL and any proxy in between"
    )]
    HttpStatus {
        /// The status received.
        status: StatusCode,
    },
    /// 200 but no agent-port header: something other than Jenkins answered.
    #[error("{}", not_jenkins_message(*.jenkins_header))]
    NotJenkins {
        /// Whether the response carried an `X-Jenkins` header (a Jenkins
        /// controller behind a proxy that strips headers, rather than some
        /// other server entirely).
        jenkins_header: bool,
    },
    /// The agent-port header is not a usable port (not a number, out of
    /// range, or -1, which Jenkins publishes when the port is disabled).
    #[error("{}", invalid_port_message(header, value))]
    InvalidPort {
        /// Which header carried it.
        header: &'static str,
        /// The value received (shortened if long).
        value: String,
    },
    /// `X-Jenkins-JNLP-Host` is present but empty or not plain ASCII text.
    #[error(
        "the controller published an unusable X-Jenkins-JNLP-Host {value:?}: \
         fix the agent host setting under Manage Jenkins > Security > Agents"
    )]
    InvalidHost {
        /// The value received (shortened if long, lossily decoded).
        value: String,
    },
    /// No `X-Instance-Identity`: the agent could not authenticate the
    /// controller's TLS certificate.
    #[error(
        "the controller did not publish X-Instance-Identity, so its TLS certificate \
         cannot be verified: check that no proxy strips this header, or pass \
         -instanceIdentity"
    )]
    MissingIdentity,
    /// `X-Instance-Identity` is not a base64 DER public key.
    #[error(
        "the controller published an unreadable X-Instance-Identity \
         (check that no proxy rewrites it): {0}"
    )]
    InvalidIdentity(#[source] IdentityError),
    /// The controller lists its protocols and JNLP4-connect is not among them.
    #[error(
        "the controller does not offer JNLP4-connect (it offers: {}): enable it under \
         Manage Jenkins > Security > Agents, or use -webSocket",
        offered_list(.offered)
    )]
    Jnlp4NotOffered {
        /// The protocols the controller does offer.
        offered: Vec<String>,
    },
}

fn not_jenkins_message(jenkins_header: bool) -> String {
    if jenkins_header {
        "the answer carries X-Jenkins but no X-Jenkins-JNLP-Port header: \
         a proxy is probably stripping headers; let X-Jenkins-* and X-Instance-Identity \
         through, or use -webSocket"
            .to_owned()
    } else {
        "this URL is not a Jenkins controller (no X-Jenkins-JNLP-Port or X-Jenkins header \
         in the answer to tcpSlaveAgentListener/): check the controller URL, and that no \
         login page or proxy answers in its place"
            .to_owned()
    }
}

fn invalid_port_message(header: &str, value: &str) -> String {
    if value.trim() == "-1" {
        format!(
            "the controller's TCP agent port is disabled ({header}: -1): \
             enable it under Manage Jenkins > Security > Agents, or use -webSocket"
        )
    } else {
        format!(
            "the controller published an invalid TCP agent port {value:?} in {header} \
             (expected 1-65535): check the agent port under Manage Jenkins > Security > Agents"
        )
    }
}

/// The offered protocols for the message, cut short like every other value
/// from the network: the list is a header the controller (or whatever
/// answers in its place) fills at will.
fn offered_list(offered: &[String]) -> String {
    if offered.is_empty() {
        "nothing".to_owned()
    } else {
        quote(offered.join(", ").as_bytes(), MAX_ECHOED_CHARS)
    }
}

/// Where and how to reach a controller's TCP agent port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address to connect to (IPv6 literals without brackets).
    pub host: String,
    /// TCP agent port.
    pub port: u16,
    /// Protocols from `X-Jenkins-Agent-Protocols`, in the controller's order;
    /// `None` when the header was absent (old controllers that predate it).
    pub protocols: Option<Vec<String>>,
    /// The key the agent-port TLS certificate must carry.
    pub identity: InstanceIdentity,
    /// `X-Remoting-Minimum-Version`, if the controller published one.
    pub minimum_remoting_version: Option<String>,
}

impl Endpoint {
    /// Whether JNLP4-connect may be tried. A controller that does not list its
    /// protocols is assumed to offer it, as agent.jar assumes.
    pub fn offers_jnlp4(&self) -> bool {
        match &self.protocols {
            None => true,
            Some(list) => list.iter().any(|p| p == JNLP4_CONNECT),
        }
    }
}

/// The controller URL normalised to end with `/`, e.g.
/// `https://ci.example/jenkins` → `https://ci.example/jenkins/`.
///
/// Refuses non-http(s) schemes, missing hosts, `user:password@`, queries and
/// fragments: all of them would produce wrong URLs once paths are appended.
pub fn controller_base_url(controller_url: &str) -> Result<String, DiscoveryError> {
    let uri = parse_controller_url(controller_url)?;
    // parse_controller_url guarantees scheme and authority.
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = uri.authority().map_or("", |a| a.as_str());
    let path = uri.path();
    let slash = if path.ends_with('/') { "" } else { "/" };
    Ok(format!("{scheme}://{authority}{path}{slash}"))
}

/// The discovery URL: `{controller_url}/tcpSlaveAgentListener/`.
pub fn listener_url(controller_url: &str) -> Result<String, DiscoveryError> {
    Ok(controller_base_url(controller_url)? + LISTENER_PATH)
}

/// The controller URL's host, without the brackets of an IPv6 literal.
pub fn controller_host(controller_url: &str) -> Result<String, DiscoveryError> {
    let uri = parse_controller_url(controller_url)?;
    let host = uri.host().unwrap_or_default();
    Ok(strip_brackets(host).to_owned())
}

fn parse_controller_url(controller_url: &str) -> Result<Uri, DiscoveryError> {
    let text = controller_url.trim();
    let invalid = |reason| DiscoveryError::InvalidUrl {
        url: controller_url.to_owned(),
        reason,
    };
    // http::Uri silently drops fragments; catch them before it does.
    if text.contains('#') {
        return Err(invalid("it has a #fragment"));
    }
    let uri: Uri = text.parse().map_err(|_| invalid("it is not a valid URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(_) => return Err(invalid("the scheme must be http:// or https://")),
        None => return Err(invalid("it must start with http:// or https://")),
    }
    let Some(authority) = uri.authority() else {
        return Err(invalid("it has no host"));
    };
    if authority.host().is_empty() {
        return Err(invalid("it has no host"));
    }
    if authority.as_str().contains('@') {
        return Err(invalid(
            "user:password@ in the URL is not supported; pass credentials separately",
        ));
    }
    if uri.query().is_some() {
        return Err(invalid("it has a ?query"));
    }
    Ok(uri)
}

fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Interprets the answer to `GET {controller_url}tcpSlaveAgentListener/`.
///
/// `controller_url` supplies the default host (when the controller does not
/// publish `X-Jenkins-JNLP-Host`).
pub fn endpoint_from_response(
    controller_url: &str,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<Endpoint, DiscoveryError> {
    if status == StatusCode::NOT_FOUND {
        return Err(DiscoveryError::PortDisabled);
    }
    if status != StatusCode::OK {
        return Err(DiscoveryError::HttpStatus { status });
    }

    let (port_header, port_value) = match headers.get(HEADER_JNLP_PORT) {
        Some(v) => (HEADER_JNLP_PORT, v),
        None => match headers.get(HEADER_LEGACY_JNLP_PORT) {
            Some(v) => (HEADER_LEGACY_JNLP_PORT, v),
            None => {
                return Err(DiscoveryError::NotJenkins {
                    jenkins_header: headers.contains_key(HEADER_JENKINS),
                })
            }
        },
    };

    let identity_value = headers
        .get(HEADER_INSTANCE_IDENTITY)
        .ok_or(DiscoveryError::MissingIdentity)?;
    // Not-ASCII bytes cannot be base64 either; let the base64 decoder say so.
    let identity =
        InstanceIdentity::from_base64(&String::from_utf8_lossy(identity_value.as_bytes()))
            .map_err(DiscoveryError::InvalidIdentity)?;

    let port = parse_port(port_value.as_bytes()).ok_or_else(|| DiscoveryError::InvalidPort {
        header: port_header,
        value: quote(port_value.as_bytes(), MAX_ECHOED_CHARS),
    })?;

    let protocols = headers
        .get(HEADER_AGENT_PROTOCOLS)
        .map(|v| split_protocols(v.as_bytes()));
    if let Some(offered) = &protocols {
        if !offered.iter().any(|p| p == JNLP4_CONNECT) {
            return Err(DiscoveryError::Jnlp4NotOffered {
                offered: offered.clone(),
            });
        }
    }

    let host = match headers.get(HEADER_JNLP_HOST) {
        Some(value) => {
            let text = value
                .to_str()
                .map(str::trim)
                .ok()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| DiscoveryError::InvalidHost {
                    value: quote(value.as_bytes(), MAX_ECHOED_CHARS),
                })?;
            strip_brackets(text).to_owned()
        }
        None => controller_host(controller_url)?,
    };

    let minimum_remoting_version = headers
        .get(HEADER_MINIMUM_REMOTING_VERSION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned);

    Ok(Endpoint {
        host,
        port,
        protocols,
        identity,
        minimum_remoting_version,
    })
}

/// A port in 1..=65535; anything else (including Jenkins' -1) is `None`.
fn parse_port(value: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(value).ok()?.trim();
    match text.parse::<u16>() {
        Ok(0) | Err(_) => None,
        Ok(port) => Some(port),
    }
}

fn split_protocols(value: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(value)
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// A real 2048-bit RSA SubjectPublicKeyInfo, base64, as Jenkins publishes it.
    const IDENTITY: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtLD7SJEA90heSHDuTR2c7kk6p+PfBeBdWIWq5rB4N00ZPcd1Kn5UZCO3LoJy2DWvrd5iFdDBKPzAdC0aHTcXGb3nzNf5ichNmpKpaEonX+lSZlaz/kENQ8BqLnf6NB5KO6HJ23nTyyikl+oaABnrCumtogYFVVdADeSmdnc/6DjU7DQahj23KBMDObN7AVHIY2pvo9+gkIh/qyVbjMw5+JGYsz2vNFsQRSvDLxdPFbYg3Zh5j7YzFX+UZJkIPlVrtENRWauptH4CutQm3dYt+iNtDgUg803lRRHsNyD+KEUvFKe4CDQpH0bxIpgeFa/sYWAdGygrl9nJIgc9j0ykJQIDAQAB";

    const URL: &str = "http://ci.example:8080/jenkins/";

    /// The header set a Jenkins 2.4xx controller sends on tcpSlaveAgentListener/.
    fn jenkins_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("Date", "Tue, 04 Jun 2024 10:00:00 GMT"),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Type", "text/plain;charset=utf-8"),
            ("X-Hudson-JNLP-Port", "50000"),
            ("X-Jenkins-JNLP-Port", "50000"),
            ("X-Instance-Identity", IDENTITY),
            ("X-Jenkins-Agent-Protocols", "JNLP4-connect, Ping"),
            ("X-Remoting-Minimum-Version", "3107.v665000b_51092"),
            ("X-Hudson", "1.395"),
            ("X-Jenkins", "2.440.3"),
            ("X-Jenkins-Session", "4d9e0c1a"),
        ] {
            h.insert(name, HeaderValue::from_static(value));
        }
        h
    }

    fn with(mut h: HeaderMap, name: &'static str, value: &'static str) -> HeaderMap {
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    fn without(mut h: HeaderMap, name: &str) -> HeaderMap {
        h.remove(name);
        h
    }

    fn discover(h: &HeaderMap) -> Result<Endpoint, DiscoveryError> {
        endpoint_from_response(URL, StatusCode::OK, h)
    }

    #[test]
    fn happy_path() {
        let e = discover(&jenkins_headers()).unwrap();
        assert_eq!(e.host, "ci.example");
        assert_eq!(e.port, 50000);
        assert_eq!(
            e.protocols,
            Some(vec!["JNLP4-connect".to_owned(), "Ping".to_owned()])
        );
        assert_eq!(e.identity, InstanceIdentity::from_base64(IDENTITY).unwrap());
        assert_eq!(
            e.minimum_remoting_version.as_deref(),
            Some("3107.v665000b_51092")
        );
        assert!(e.offers_jnlp4());
    }

    #[test]
    fn jnlp_host_header_wins_over_url_host() {
        let h = with(jenkins_headers(), HEADER_JNLP_HOST, "agents.ci.example");
        assert_eq!(discover(&h).unwrap().host, "agents.ci.example");
        let h = with(jenkins_headers(), HEADER_JNLP_HOST, "[fd00::5]");
        assert_eq!(discover(&h).unwrap().host, "fd00::5");
    }

    #[test]
    fn ipv6_url_host_loses_its_brackets() {
        let e = endpoint_from_response("http://[::1]:8080/", StatusCode::OK, &jenkins_headers())
            .unwrap();
        assert_eq!(e.host, "::1");
    }

    #[test]
    fn legacy_port_header_is_used_when_the_new_one_is_missing() {
        let h = with(
            without(jenkins_headers(), HEADER_JNLP_PORT),
            HEADER_LEGACY_JNLP_PORT,
            "50001",
        );
        assert_eq!(discover(&h).unwrap().port, 50001);
    }

    #[test]
    fn new_port_header_wins_over_legacy() {
        let h = with(jenkins_headers(), HEADER_LEGACY_JNLP_PORT, "1");
        assert_eq!(discover(&h).unwrap().port, 50000);
    }

    #[test]
    fn protocols_are_trimmed_ordered_and_empties_dropped() {
        let h = with(
            jenkins_headers(),
            HEADER_AGENT_PROTOCOLS,
            " Ping ,, JNLP4-connect,  ,Foo",
        );
        assert_eq!(
            discover(&h).unwrap().protocols,
            Some(vec![
                "Ping".to_owned(),
                "JNLP4-connect".to_owned(),
                "Foo".to_owned()
            ])
        );
    }

    #[test]
    fn absent_protocol_list_counts_as_offering_jnlp4() {
        let e = discover(&without(jenkins_headers(), HEADER_AGENT_PROTOCOLS)).unwrap();
        assert_eq!(e.protocols, None);
        assert!(e.offers_jnlp4());
    }

    #[test]
    fn empty_minimum_version_is_none() {
        let h = with(jenkins_headers(), HEADER_MINIMUM_REMOTING_VERSION, " ");
        assert_eq!(discover(&h).unwrap().minimum_remoting_version, None);
    }

    #[test]
    fn not_found_means_port_disabled() {
        let err =
            endpoint_from_response(URL, StatusCode::NOT_FOUND, &HeaderMap::new()).unwrap_err();
        assert!(matches!(err, DiscoveryError::PortDisabled));
        let msg = err.to_string();
        assert!(msg.contains("Manage Jenkins > Security > Agents"), "{msg}");
        assert!(msg.contains("-webSocket"), "{msg}");
    }

    #[test]
    fn other_status_is_reported_with_its_code() {
        let err =
            endpoint_from_response(URL, StatusCode::FORBIDDEN, &jenkins_headers()).unwrap_err();
        assert!(matches!(
            err,
            DiscoveryError::HttpStatus {
                status: StatusCode::FORBIDDEN
            }
        ));
        assert!(err.to_string().contains("403"));
        // Redirects are not followed here: the caller's client decides that.
        let err = endpoint_from_response(URL, StatusCode::FOUND, &jenkins_headers()).unwrap_err();
        assert!(matches!(err, DiscoveryError::HttpStatus { .. }));
    }

    #[test]
    fn status_is_checked_before_anything_else() {
        let err =
            endpoint_from_response(URL, StatusCode::BAD_GATEWAY, &HeaderMap::new()).unwrap_err();
        assert!(matches!(err, DiscoveryError::HttpStatus { .. }));
    }

    #[test]
    fn no_port_header_is_not_jenkins() {
        let h = without(
            without(jenkins_headers(), HEADER_JNLP_PORT),
            HEADER_LEGACY_JNLP_PORT,
        );
        let err = discover(&h).unwrap_err();
        assert!(matches!(
            err,
            DiscoveryError::NotJenkins {
                jenkins_header: true
            }
        ));
        assert!(err.to_string().contains("proxy"));

        let err = discover(&HeaderMap::new()).unwrap_err();
        assert!(matches!(
            err,
            DiscoveryError::NotJenkins {
                jenkins_header: false
            }
        ));
        assert!(err.to_string().contains("not a Jenkins controller"));
    }

    #[test]
    fn missing_identity() {
        let err = discover(&without(jenkins_headers(), HEADER_INSTANCE_IDENTITY)).unwrap_err();
        assert!(matches!(err, DiscoveryError::MissingIdentity));
    }

    #[test]
    fn invalid_identity() {
        let h = with(jenkins_headers(), HEADER_INSTANCE_IDENTITY, "not base64!");
        assert!(matches!(
            discover(&h).unwrap_err(),
            DiscoveryError::InvalidIdentity(IdentityError::Base64(_))
        ));
        // Valid base64, but not a public key.
        let h = with(jenkins_headers(), HEADER_INSTANCE_IDENTITY, "aGVsbG8=");
        assert!(matches!(
            discover(&h).unwrap_err(),
            DiscoveryError::InvalidIdentity(IdentityError::Der(_))
        ));
        let mut h = jenkins_headers();
        h.insert(
            HEADER_INSTANCE_IDENTITY,
            HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert!(matches!(
            discover(&h).unwrap_err(),
            DiscoveryError::InvalidIdentity(_)
        ));
    }

    #[test]
    fn invalid_ports() {
        for bad in [
            "0",
            "65536",
            "-1",
            "http",
            "",
            "5000o",
            "99999999999999999999",
        ] {
            let mut h = jenkins_headers();
            h.insert(HEADER_JNLP_PORT, HeaderValue::from_str(bad).unwrap());
            match discover(&h) {
                Err(DiscoveryError::InvalidPort { header, value }) => {
                    assert_eq!(header, HEADER_JNLP_PORT);
                    assert_eq!(value, bad);
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert_eq!(
            discover(&with(jenkins_headers(), HEADER_JNLP_PORT, " 65535 "))
                .unwrap()
                .port,
            65535
        );
    }

    #[test]
    fn disabled_port_minus_one_says_how_to_enable_it() {
        let err = discover(&with(jenkins_headers(), HEADER_JNLP_PORT, "-1")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("disabled"), "{msg}");
        assert!(msg.contains("Manage Jenkins > Security > Agents"), "{msg}");
    }

    #[test]
    fn long_port_values_are_shortened_in_errors() {
        let long = "9".repeat(1000);
        let mut h = jenkins_headers();
        h.insert(HEADER_JNLP_PORT, HeaderValue::from_str(&long).unwrap());
        let err = discover(&h).unwrap_err();
        assert!(err.to_string().len() < 400);
    }

    #[test]
    fn legacy_port_header_is_named_in_its_error() {
        let h = with(
            without(jenkins_headers(), HEADER_JNLP_PORT),
            HEADER_LEGACY_JNLP_PORT,
            "x",
        );
        assert!(matches!(
            discover(&h).unwrap_err(),
            DiscoveryError::InvalidPort {
                header: HEADER_LEGACY_JNLP_PORT,
                ..
            }
        ));
    }

    #[test]
    fn jnlp4_not_offered_carries_the_offer() {
        let h = with(
            jenkins_headers(),
            HEADER_AGENT_PROTOCOLS,
            "JNLP2-connect, Ping",
        );
        match discover(&h).unwrap_err() {
            DiscoveryError::Jnlp4NotOffered { offered } => {
                assert_eq!(offered, ["JNLP2-connect", "Ping"]);
            }
            other => panic!("{other:?}"),
        }
        let h = with(jenkins_headers(), HEADER_AGENT_PROTOCOLS, "");
        let err = discover(&h).unwrap_err();
        assert!(err.to_string().contains("offers: nothing"), "{err}");
    }

    /// Found by the `discovery_headers` fuzz target: a long protocol list
    /// was echoed whole into the refusal, and so into the agent's log.
    #[test]
    fn a_long_offer_is_cut_short_in_the_message() {
        let long = vec!["JNLP2-connect"; 2000].join(", ");
        let mut h = jenkins_headers();
        h.insert(
            HEADER_AGENT_PROTOCOLS,
            HeaderValue::from_str(&long).unwrap(),
        );
        let err = discover(&h).unwrap_err();
        let message = err.to_string();
        assert!(message.chars().count() < 400, "{message}");
        assert!(
            message.contains("it offers: JNLP2-connect, JNLP2-connect"),
            "{message}"
        );
        assert!(message.contains("…)"), "{message}");
        // The list itself stays whole for a caller that wants it.
        assert!(
            matches!(err, DiscoveryError::Jnlp4NotOffered { offered } if offered.len() == 2000)
        );
    }

    #[test]
    fn invalid_host_header() {
        let h = with(jenkins_headers(), HEADER_JNLP_HOST, "  ");
        assert!(matches!(
            discover(&h).unwrap_err(),
            DiscoveryError::InvalidHost { .. }
        ));
    }

    #[test]
    fn check_order_identity_before_port_value_before_protocols() {
        let h = with(
            with(
                without(jenkins_headers(), HEADER_INSTANCE_IDENTITY),
                HEADER_JNLP_PORT,
                "-1",
            ),
            HEADER_AGENT_PROTOCOLS,
            "Ping",
        );
        assert!(matches!(
            discover(&h).unwrap_err(),
            DiscoveryError::MissingIdentity
        ));
        let h = with(
            with(jenkins_headers(), HEADER_JNLP_PORT, "-1"),
            HEADER_AGENT_PROTOCOLS,
            "Ping",
        );
        assert!(matches!(
            discover(&h).unwrap_err(),
            DiscoveryError::InvalidPort { .. }
        ));
    }

    #[test]
    fn listener_urls() {
        for (given, want) in [
            ("http://ci:8080", "http://ci:8080/tcpSlaveAgentListener/"),
            ("http://ci:8080/", "http://ci:8080/tcpSlaveAgentListener/"),
            (
                "https://ci.example/jenkins",
                "https://ci.example/jenkins/tcpSlaveAgentListener/",
            ),
            (
                " https://ci.example/jenkins/ ",
                "https://ci.example/jenkins/tcpSlaveAgentListener/",
            ),
            (
                "HTTP://[::1]:8080/j/",
                "http://[::1]:8080/j/tcpSlaveAgentListener/",
            ),
        ] {
            assert_eq!(listener_url(given).unwrap(), want, "{given}");
        }
    }

    #[test]
    fn invalid_urls() {
        for bad in [
            "",
            "ci:8080",
            "/jenkins/",
            "ftp://ci/",
            "ws://ci/",
            "http://:8080/",
            "http://u:p@ci/",
            "http://ci/?a=b",
            "http://ci/#top",
            "http://ci/a b",
        ] {
            match listener_url(bad) {
                Err(DiscoveryError::InvalidUrl { url, .. }) => assert_eq!(url, bad),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_controller_url_during_discovery() {
        let err =
            endpoint_from_response("ftp://ci/", StatusCode::OK, &jenkins_headers()).unwrap_err();
        assert!(matches!(err, DiscoveryError::InvalidUrl { .. }));
    }
}
