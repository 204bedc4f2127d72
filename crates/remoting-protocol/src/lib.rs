//! The Jenkins controller's inbound-agent protocol, from the agent's side.
//!
//! Everything here is exact to recorded controller traffic (the transcripts
//! under `protocol-fixtures/`); `shared/PROTOCOL.md` explains them.
//!
//! # Layout
//!
//! - [`discovery`]: `tcpSlaveAgentListener/` response → [`discovery::Endpoint`].
//! - [`jnlp`]: `jenkins-agent.jnlp` files, plain and encrypted.
//! - [`identity`]: the controller's instance identity key.
//! - [`utf`], [`headers`], [`capability`]: the handshake's wire values.
//! - [`handshake`]: the JNLP4-connect client handshake: a state machine that
//!   does no I/O ([`handshake::Handshake`]) and an async driver over any
//!   `AsyncRead + AsyncWrite` ([`handshake::connect`]), with TLS pinned to the
//!   identity ([`tls`]).
//! - [`chunk`], [`command`]: the channel's framing, as tokio-util codecs.
//! - [`close`]: the `Channel$CloseCommand` that ends a channel so that the
//!   controller notices (a TLS `close_notify` alone leaves a ghost node).
//! - [`scan`]: following chunk and command boundaries in a stream that
//!   passes through unchanged.
//! - [`preamble`]: the stdio engine's capability preamble.
//! - [`websocket`]: the WebSocket transport (`-webSocket`): URLs, the
//!   upgrade and its refusals, and [`websocket::WsChannel`], the chunk
//!   stream over binary messages with the keepalive agent.jar lacks.

pub mod capability;
pub mod chunk;
pub mod close;
pub mod command;
pub mod discovery;
pub mod handshake;
pub mod headers;
pub mod identity;
pub mod jnlp;
pub mod preamble;
pub mod quote;
pub mod scan;
pub mod tls;
pub mod utf;
pub mod websocket;

pub use capability::Capability;
pub use chunk::{Chunk, ChunkCodec, ChunkError, ChunkHeader};
pub use command::{Command, CommandCodec};
pub use headers::Headers;
pub use identity::InstanceIdentity;
