//! How the agent reaches a controller.
//!
//! - [`web`]: the controller's web port over HTTP(S): discovery of the TCP
//!   agent port, JNLP files, the engine jar, the WebSocket readiness check,
//!   and the round trip that sizes the engine's window (`engine::window`).
//! - [`address`]: `HOST:PORT` and `-tunnel` values.
//! - [`proxy`]: which HTTP proxy, if any, stands in the way (`*_proxy`,
//!   `no_proxy`, `-proxyCredentials`).
//! - [`dial`]: a TCP connection, direct or through a proxy's `CONNECT`.
//! - [`jnlp4`]: the TCP transport: the agent port and JNLP4-connect.
//! - [`websocket`]: the WebSocket transport (`-webSocket`), with [`tls`]
//!   for `wss`.
//!
//! The two transports a channel runs over are chosen per controller: the
//! TCP agent port with JNLP4-connect (TLS pinned to the instance identity),
//! or a WebSocket on the web port (`-webSocket`, ordinary TLS).

pub mod address;
pub mod dial;
pub mod jnlp4;
pub mod proxy;
pub mod tls;
pub mod web;
pub mod websocket;
