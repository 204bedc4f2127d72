//! The WebSocket transport (`-webSocket`): the channel runs inside binary
//! messages on the controller's web port (PROTOCOL.md 3) instead of the
//! TCP agent port.
//!
//! Each attempt: the `login` readiness check (in the session, over the web
//! port's HTTP client), then TCP to the web port (through the proxy of the
//! URL's scheme, always as a `CONNECT` tunnel), TLS for `wss` (ordinary
//! checks, see [`super::tls`]), and the upgrade with the node's headers,
//! the cookie of the last channel, and `-webSocketHeader`s.
//!
//! The lender link opens its WebSocket through the same [`dial_stream`]
//! and [`secure_stream`] (see [`WsTarget`]).
//!
//! What the upgrade yields is an `AsyncRead + AsyncWrite` chunk stream, so
//! the engine bridge runs over it unchanged. Keepalive that agent.jar lacks
//! (own pings, a dead connection noticed after a bounded silence, write
//! timeouts) lives in [`remoting_protocol::websocket::WsChannel`].

use std::io;
use std::sync::Arc;
use std::time::Duration;

use remoting_protocol::websocket::{self, Accepted, KeepAlive, UpgradeHeaders, WebSocketError};
use remoting_protocol::Capability;

use super::dial::{self, DialError, Io};
use super::proxy::ProxyChoice;
use crate::settings::{Credentials, HostPort, Secret, Settings};

/// The channel's stream over a WebSocket.
pub type Channel = websocket::WsChannel<Box<dyn Io>>;

/// Time for TCP (and a proxy's answer) to the web port.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for TLS and the upgrade together.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a WebSocket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum WsConnectError {
    /// The URL has no host or an unusable scheme.
    #[error("cannot open a WebSocket to {url}: {reason}")]
    Url {
        /// The controller URL.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// TCP to the web port (or through the proxy) failed.
    #[error("cannot reach the controller's web port for the WebSocket: {0}")]
    Dial(#[from] DialError),
    /// The TLS handshake with the web port failed.
    #[error(
        "TLS with {url} failed: {source}; if the controller uses a private CA, pass it with \
         -cert @FILE (a last resort: -noCertificateCheck)"
    )]
    Tls {
        /// The controller URL.
        url: String,
        /// rustls' error.
        #[source]
        source: io::Error,
    },
    /// The upgrade failed or was refused.
    #[error(transparent)]
    Upgrade(#[from] WebSocketError),
    /// TLS and the upgrade took too long.
    #[error("the WebSocket upgrade at {url} got no answer within {}s", .timeout.as_secs())]
    Timeout {
        /// The controller URL.
        url: String,
        /// The time allowed.
        timeout: Duration,
    },
}

impl WsConnectError {
    /// Whether the controller refused the upgrade (as opposed to the
    /// connection failing).
    pub fn refusal(&self) -> Option<&websocket::Refusal> {
        match self {
            WsConnectError::Upgrade(WebSocketError::Refused(refusal)) => Some(refusal),
            _ => None,
        }
    }
}

/// What one upgrade needs.
#[derive(Debug)]
pub struct Upgrade<'a> {
    /// The controller's base URL (`http(s)://host[:port]/path/`).
    pub url: &'a str,
    /// The node.
    pub name: &'a str,
    /// Its secret.
    pub secret: &'a Secret,
    /// The engine's capability, offered to the controller.
    pub capability: &'a Capability,
    /// The last channel's cookie at this controller, to take it over.
    pub cookie: Option<&'a str>,
}

/// Opens the WebSocket for `upgrade` with the transport options of
/// `settings` (proxy credentials, `-webSocketHeader`, idle timeout).
/// `tls` is required for `https` URLs and `https://` proxies.
pub async fn connect(
    upgrade: &Upgrade<'_>,
    settings: &Settings,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(Channel, Accepted), WsConnectError> {
    let url = upgrade.url;
    let bad_url = |reason| WsConnectError::Url {
        url: url.to_owned(),
        reason,
    };
    let uri: http::Uri = url.parse().map_err(|_| bad_url("not a URL"))?;
    let target = WsTarget::from_uri(&uri).map_err(bad_url)?;
    let tcp = dial_stream(
        &target,
        settings.proxy_credentials.as_ref(),
        tls,
        DIAL_TIMEOUT,
    )
    .await?;

    let extra: Vec<(String, String)> = settings
        .web_socket_headers
        .iter()
        .map(|(name, value)| (name.clone(), value.expose().to_owned()))
        .collect();
    let request = websocket::upgrade_request(
        url,
        &UpgradeHeaders {
            node: upgrade.name,
            secret: upgrade.secret.expose(),
            capability: upgrade.capability,
            cookie: upgrade.cookie,
            extra: &extra,
        },
    )?;
    let keepalive = KeepAlive::with_idle_timeout(settings.web_socket_idle_timeout);
    let upgrading = async {
        let io = secure_stream(&target, tcp, tls)
            .await
            .map_err(|err| match err {
                StreamError::Url(reason) => bad_url(reason),
                StreamError::Tls(source) => WsConnectError::Tls {
                    url: url.to_owned(),
                    source,
                },
            })?;
        Ok(websocket::connect(io, request, upgrade.name, keepalive).await?)
    };
    match tokio::time::timeout(UPGRADE_TIMEOUT, upgrading).await {
        Ok(result) => result,
        Err(_) => Err(WsConnectError::Timeout {
            url: url.to_owned(),
            timeout: UPGRADE_TIMEOUT,
        }),
    }
}

/// Where a WebSocket client connects: the controller's web port for the
/// channel, or the lender for the agent link. Both go through
/// [`dial_stream`] and [`secure_stream`], so they take the same proxy (the
/// one reqwest would take for the URL's scheme, with `-proxyCredentials`)
/// and the same TLS roots (`-cert`, `-noCertificateCheck`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsTarget {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (the scheme's default when the URL gives none).
    pub port: u16,
    /// `https`/`wss`: TLS over the TCP stream.
    pub secure: bool,
}

impl WsTarget {
    /// From an `http(s)://` URL.
    pub fn from_uri(uri: &http::Uri) -> Result<WsTarget, &'static str> {
        let secure = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("only http and https URLs can carry a WebSocket"),
        };
        let host = uri.host().ok_or("the URL has no host")?;
        Ok(WsTarget {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: uri.port_u16().unwrap_or(if secure { 443 } else { 80 }),
            secure,
        })
    }
}

/// Why [`secure_stream`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The URL cannot carry TLS (no configuration, or a host that is no
    /// server name).
    #[error("{0}")]
    Url(&'static str),
    /// The TLS handshake failed.
    #[error(transparent)]
    Tls(io::Error),
}

/// TCP to `target` through the proxy the environment names for its scheme
/// (always a `CONNECT` tunnel), within `timeout`. `tls` is needed for an
/// `https://` proxy.
pub async fn dial_stream(
    target: &WsTarget,
    proxy_credentials: Option<&Credentials>,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Box<dyn Io>, DialError> {
    let proxy = ProxyChoice::for_web_socket(&target.host, target.secure, proxy_credentials);
    let address = HostPort {
        host: target.host.clone(),
        port: target.port,
    };
    dial::dial_web(&address, &proxy, timeout, tls).await
}

/// TLS over `tcp` for a secure target (`tls` required then); `tcp` as it
/// is otherwise. The caller bounds the time.
pub async fn secure_stream(
    target: &WsTarget,
    tcp: Box<dyn Io>,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Box<dyn Io>, StreamError> {
    if !target.secure {
        return Ok(tcp);
    }
    let config = tls.ok_or(StreamError::Url("no TLS configuration for an https URL"))?;
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .map_err(|_| StreamError::Url("the host is not a valid TLS server name"))?;
    let stream = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(StreamError::Tls)?;
    Ok(Box::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_from_urls() {
        let target = |url: &str| WsTarget::from_uri(&url.parse().expect("a URI"));
        assert_eq!(
            target("https://ci.example/jenkins/"),
            Ok(WsTarget {
                host: "ci.example".into(),
                port: 443,
                secure: true
            })
        );
        assert_eq!(
            target("http://[::1]:8080/"),
            Ok(WsTarget {
                host: "::1".into(),
                port: 8080,
                secure: false
            })
        );
        assert!(target("ftp://ci.example/").is_err());
        assert!(target("/relative").is_err());
    }
}
