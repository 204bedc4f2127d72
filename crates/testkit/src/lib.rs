//! Test-only pieces: a scripted Jenkins controller and a fake stdio engine.
//!
//! # Layout
//!
//! - [`identity`]: RSA instance identity + self-signed certificate + the
//!   agent port's TLS server configuration.
//! - [`fixtures`]: the recorded transcripts.
//! - [`controller`]: [`controller::TestController`], discovery HTTP and the
//!   JNLP4 server side with a node table, cookies and scripted peers.
//! - [`fake_engine`]: a program speaking the engine's stdio preamble, then
//!   echoing or replaying chunks.
//!
//! Test code: panics on setup failures are deliberate.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod controller;
pub mod fake_engine;
pub mod fixtures;
pub mod identity;
pub mod replay;

pub use controller::{Channel, ControllerBuilder, ControllerEvent, Peer, TestController};
pub use identity::TestIdentity;
