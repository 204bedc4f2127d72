//! The JNLP4-connect client handshake (PROTOCOL.md section 2).
//!
//! [`Handshake`] is the protocol logic with no sockets, timers or tasks: feed
//! it received bytes and the time, take from it the bytes to send, the next
//! deadline and the events. [`connect`] drives it over any
//! `AsyncRead + AsyncWrite` (a TCP stream, a proxy tunnel, an in-memory pipe
//! in tests) and performs the TLS upgrade it asks for; the channel then runs
//! over a [`ChannelStream`], whose shutdown never sends a TLS `close_notify`.

mod driver;
mod error;
mod machine;
mod stream;

pub use driver::{connect, Connected};
pub use error::{HandshakeError, Refusal, RefusalKind};
pub use machine::{Event, Handshake, HandshakeConfig, Phase, PROTOCOL_NAME};
pub use stream::ChannelStream;
