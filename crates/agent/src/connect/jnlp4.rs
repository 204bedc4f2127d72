//! The TCP transport: the agent port (found by discovery, or `-direct`),
//! reached directly or through a proxy's `CONNECT`, then JNLP4-connect
//! with TLS pinned to the controller's instance identity
//! ([`remoting_protocol::handshake`]).

use std::time::Duration;

use remoting_protocol::capability::Capability;
use remoting_protocol::handshake::{self, HandshakeConfig, HandshakeError};
use remoting_protocol::InstanceIdentity;

use super::dial::{self, DialError};
use crate::settings::{HostPort, Secret, Settings};

/// The agent port's TCP stream, read through a large buffer: rustls pulls
/// TLS records in small reads, and without it each became a system call.
pub type AgentPort = tokio::io::BufReader<tokio::net::TcpStream>;

/// An accepted JNLP4 connection.
pub type Connected = handshake::Connected<AgentPort>;

/// Read buffer under TLS on the agent port.
const READ_BUFFER: usize = 256 * 1024;
/// Timeout for the TCP connection to the agent port.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the agent port could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Jnlp4Error {
    /// The agent port could not be reached.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The handshake failed or was refused.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

/// What one connection presents to the controller.
#[derive(Debug)]
pub struct Hello<'a> {
    /// The node.
    pub name: &'a str,
    /// Its secret.
    pub secret: &'a Secret,
    /// The engine's capability.
    pub capability: Capability,
    /// The last channel's cookie at this controller, to take it over.
    pub cookie: Option<String>,
}

/// TCP to `agent_port` (through the environment's proxy, with
/// `-proxyCredentials`; keepalive unless `-noKeepAlive`), then the
/// handshake pinned to `identity`.
pub async fn connect(
    agent_port: &HostPort,
    identity: &InstanceIdentity,
    hello: Hello<'_>,
    settings: &Settings,
) -> Result<Connected, Jnlp4Error> {
    let tcp = dial::dial_from_env(
        agent_port,
        settings.proxy_credentials.as_ref(),
        DIAL_TIMEOUT,
        !settings.no_keep_alive,
    )
    .await?;
    let mut config = HandshakeConfig::new(hello.name.to_owned(), hello.secret.expose());
    config.cookie = hello.cookie;
    config.capability = hello.capability;
    let tcp = tokio::io::BufReader::with_capacity(READ_BUFFER, tcp);
    Ok(handshake::connect(tcp, &agent_port.host, identity, config).await?)
}
