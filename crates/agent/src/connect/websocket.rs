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
use crate::settings::{HostPort, Secret, Settings};

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
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad_url("only http and https URLs can carry a WebSocket")),
    };
    let host = uri.host().ok_or_else(|| bad_url("the URL has no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let proxy = ProxyChoice::for_web_socket(&host, https, settings.proxy_credentials.as_ref());
    let tcp = dial::dial_web(
        &HostPort {
            host: host.clone(),
            port,
        },
        &proxy,
        DIAL_TIMEOUT,
        tls,
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
        let io: Box<dyn Io> = if https {
            let Some(config) = tls else {
                return Err(bad_url("no TLS configuration for an https URL"));
            };
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| bad_url("the host is not a valid TLS server name"))?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|source| WsConnectError::Tls {
                    url: url.to_owned(),
                    source,
                })?;
            Box::new(tls)
        } else {
            tcp
        };
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
