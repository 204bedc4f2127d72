//! Where a session connects: `-direct`, a JNLP file, or discovery over the
//! `-url`s, over the TCP agent port or a WebSocket.
//!
//! [`plan`] is the decision from the settings (and a JNLP file's
//! arguments), without I/O; [`resolve`] does the fetching around it (the
//! JNLP file, discovery, the WebSocket's `login` check).

use remoting_protocol::InstanceIdentity;
use tracing::warn;

use super::{Route, SessionError};
use crate::connect::web::HttpError;
use crate::settings::{HostPort, Secret, Settings, TransportChoice, Tunnel};

/// How one session reaches its controller.
#[derive(Debug, Clone)]
pub(super) enum Via {
    /// JNLP4-connect on the TCP agent port, TLS pinned to the identity.
    AgentPort {
        agent_port: HostPort,
        identity: InstanceIdentity,
    },
    /// A WebSocket on the web port at this base URL.
    WebSocket {
        url: String,
        /// Chosen because the TCP agent port is disabled (no transport asked).
        fallback: bool,
    },
}

/// Where one session connects.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) controller_url: Option<String>,
    pub(super) via: Via,
    /// Names the controller for its cookies: the identity's fingerprint
    /// (over WebSocket as its pages advertise it), else the URL.
    pub(super) cookie_key: String,
    pub(super) name: String,
    pub(super) secret: Secret,
}

impl Target {
    pub(super) fn transport(&self) -> control::Transport {
        match self.via {
            Via::AgentPort { .. } => control::Transport::Tcp,
            Via::WebSocket { .. } => control::Transport::WebSocket,
        }
    }

    /// Where the channel goes, for logs.
    pub(super) fn endpoint(&self) -> String {
        match &self.via {
            Via::AgentPort { agent_port, .. } => format!("{}:{}", agent_port.host, agent_port.port),
            Via::WebSocket { url, .. } => remoting_protocol::websocket::agents_url(url)
                .map(|u| u.to_string())
                .unwrap_or_else(|_| url.clone()),
        }
    }
}

/// What a JNLP file said, for [`plan`].
#[derive(Debug, Clone)]
pub(super) struct FromJnlp {
    /// The JNLP file's URL, for messages.
    pub url: String,
    /// The node name and secret in its arguments.
    pub name: String,
    pub secret: String,
    /// Its agent options: `-webSocket`, `-url`s, `-tunnel`.
    pub web_socket: bool,
    pub urls: Vec<String>,
    pub tunnel: Option<String>,
}

/// Where to go, before the I/O that finds the details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Plan {
    /// A WebSocket on this web port.
    WebSocket { url: String },
    /// `-direct`: this agent port, pinned to this identity.
    Direct {
        agent_port: HostPort,
        identity: String,
        controller_url: Option<String>,
    },
    /// Discovery over the `-url`s, then the agent port (through `tunnel`).
    Discover {
        urls: Vec<String>,
        tunnel: Option<Tunnel>,
    },
}

/// The node, its secret and the [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Planned {
    pub name: String,
    pub secret: Secret,
    pub plan: Plan,
}

/// The decision from `s` and what a JNLP file said (`jnlp`): the options
/// win over the file, the file fills what they leave out.
pub(super) fn plan(s: &Settings, jnlp: Option<FromJnlp>) -> Result<Planned, SessionError> {
    let mut name = s.name.clone();
    let mut secret = s.secret.clone();
    let mut urls = s.urls.clone();
    let mut tunnel = s.tunnel.clone();
    let mut web_socket = s.transport == TransportChoice::WebSocket;
    if let Some(jnlp) = jnlp {
        // The controller's own launch command says how to reach it.
        web_socket |= jnlp.web_socket;
        name.get_or_insert(jnlp.name);
        secret.get_or_insert_with(|| Secret::new(jnlp.secret));
        if urls.is_empty() {
            urls = jnlp.urls;
        }
        if tunnel.is_none() {
            tunnel = jnlp
                .tunnel
                .as_deref()
                .map(crate::connect::address::tunnel)
                .transpose()
                .map_err(|e| {
                    SessionError::Config(format!("{}: bad -tunnel: -tunnel: {e}", jnlp.url))
                })?;
        }
    }
    let (Some(name), Some(secret)) = (name, secret) else {
        return Err(SessionError::Config(
            "no node name and secret: give -name and -secret (or -jnlpUrl)".into(),
        ));
    };
    if !s.protocols.is_empty()
        && !s
            .protocols
            .iter()
            .any(|p| p == remoting_protocol::handshake::PROTOCOL_NAME)
    {
        return Err(SessionError::Config(format!(
            "-protocols allows only {}, but this agent speaks {}",
            s.protocols.join(", "),
            remoting_protocol::handshake::PROTOCOL_NAME
        )));
    }
    let plan = if web_socket {
        let Some(url) = urls.first() else {
            return Err(SessionError::Config(
                "-webSocket needs the controller's URL: give -url".into(),
            ));
        };
        Plan::WebSocket { url: url.clone() }
    } else if let Some(direct) = &s.direct {
        let identity = s
            .instance_identity
            .clone()
            .ok_or_else(|| SessionError::Config("-direct needs -instanceIdentity".into()))?;
        Plan::Direct {
            agent_port: direct.clone(),
            identity,
            controller_url: urls.first().cloned(),
        }
    } else {
        Plan::Discover { urls, tunnel }
    };
    Ok(Planned { name, secret, plan })
}

/// Where to connect for `route`: [`plan`], with the JNLP file fetched
/// before and discovery or the WebSocket's check after.
pub(super) async fn resolve(route: &Route) -> Result<Target, SessionError> {
    let s = &route.settings;
    let jnlp = match &s.jnlp_url {
        Some(jnlp_url) => {
            let args = route
                .http
                .fetch_jnlp(
                    jnlp_url,
                    s.secret.as_ref().map(Secret::expose),
                    s.jnlp_credentials.as_ref(),
                )
                .await?;
            let options = args
                .agent_options()
                .map_err(|e| SessionError::Config(format!("{jnlp_url}: {e}")))?;
            Some(FromJnlp {
                url: jnlp_url.clone(),
                name: args.name.clone(),
                secret: args.secret.clone(),
                web_socket: options.web_socket,
                urls: options.urls.clone(),
                tunnel: options.tunnel.clone(),
            })
        }
        None => None,
    };
    let Planned { name, secret, plan } = plan(s, jnlp)?;
    match plan {
        Plan::WebSocket { url } => web_socket_target(route, &url, name, secret, false).await,
        Plan::Direct {
            agent_port,
            identity,
            controller_url,
        } => {
            let identity = InstanceIdentity::from_base64(&identity)
                .map_err(|e| SessionError::Config(format!("-instanceIdentity: {e}")))?;
            Ok(Target {
                controller_url,
                cookie_key: identity.fingerprint(),
                via: Via::AgentPort {
                    agent_port,
                    identity,
                },
                name,
                secret,
            })
        }
        Plan::Discover { urls, tunnel } => {
            let (url, endpoint) = match route.http.discover_any(&urls).await {
                Ok(found) => found,
                Err(err)
                    if s.transport == TransportChoice::TcpElseWebSocket && port_disabled(&err) =>
                {
                    let Some(url) = urls.first() else {
                        return Err(err.into());
                    };
                    warn!(
                        controller = %url,
                        "the controller's TCP agent port is disabled (tcpSlaveAgentListener/ \
                         answered 404) and no transport was asked for: using a WebSocket on its web port"
                    );
                    return web_socket_target(route, url, name, secret, true).await;
                }
                Err(err) => return Err(err.into()),
            };
            let agent_port = match &tunnel {
                Some(tunnel) => tunnel.apply(&endpoint.host, endpoint.port),
                None => HostPort {
                    host: endpoint.host.clone(),
                    port: endpoint.port,
                },
            };
            Ok(Target {
                controller_url: Some(url),
                cookie_key: endpoint.identity.fingerprint(),
                via: Via::AgentPort {
                    agent_port,
                    identity: endpoint.identity,
                },
                name,
                secret,
            })
        }
    }
}

/// A WebSocket target at `url`, once its `login` page says the
/// controller is ready (agent.jar's check before every attempt).
async fn web_socket_target(
    route: &Route,
    url: &str,
    name: String,
    secret: Secret,
    fallback: bool,
) -> Result<Target, SessionError> {
    let identity = route.http.login(url).await?;
    let cookie_key = identity
        .as_deref()
        .and_then(|text| InstanceIdentity::from_base64(text).ok())
        .map(|identity| identity.fingerprint())
        .unwrap_or_else(|| format!("url:{url}"));
    Ok(Target {
        controller_url: Some(url.to_owned()),
        via: Via::WebSocket {
            url: url.to_owned(),
            fallback,
        },
        cookie_key,
        name,
        secret,
    })
}

/// Whether discovery failed only because the TCP agent port is disabled.
fn port_disabled(err: &HttpError) -> bool {
    use remoting_protocol::discovery::DiscoveryError;
    match err {
        HttpError::Discovery {
            source: DiscoveryError::PortDisabled,
            ..
        } => true,
        HttpError::AllFailed { failures } => failures.iter().all(|(_, e)| port_disabled(e)),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
