//! Test-only pieces: a scripted Jenkins controller, a fake stdio engine,
//! and the network around them (a proxy, a test CA).
//!
//! # Layout
//!
//! - [`identity`]: RSA instance identity + self-signed certificate + the
//!   agent port's TLS server configuration.
//! - [`fixtures`]: the recorded transcripts.
//! - [`controller`]: [`controller::TestController`], discovery HTTP, the
//!   JNLP4 server side and the WebSocket endpoint (`wsagents/`, optionally
//!   over HTTPS) with a node table, cookies and scripted peers, and a
//!   Jenkins HTTP API stand-in (users and permissions, node routes, queue,
//!   `why` texts, a scheduler running builds on connected agents).
//! - [`proxy`]: an HTTP `CONNECT` (and absolute-form) proxy, optionally
//!   over TLS and with credentials, that can freeze its tunnels.
//! - [`delay_line`]: a TCP forwarder adding a round trip (no `netem` here).
//! - [`web_pki`]: a test CA and a server certificate for `localhost`.
//! - [`fake_engine`]: a program speaking the engine's stdio preamble, then
//!   echoing or replaying chunks.
//!
//! Test code: panics on setup failures are deliberate.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod controller;
pub mod delay_line;
pub mod fake_engine;
pub mod fixtures;
pub mod identity;
pub mod proxy;
pub mod replay;
pub mod web_pki;
pub mod windowed;

pub use controller::{
    Channel, ControllerBuilder, ControllerEvent, JenkinsHandle, Peer, TestController,
};
pub use identity::TestIdentity;

/// A stand-in `remoting.jar` for the test controller to serve: a zip whose
/// manifest declares `version`, as remoting's own jar does (no classes; the
/// fake engine runs instead).
pub fn fake_remoting_jar(version: &str) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    zip.start_file(
        "META-INF/MANIFEST.MF",
        zip::write::SimpleFileOptions::default(),
    )
    .expect("zip entry");
    write!(
        zip,
        "Manifest-Version: 1.0\r\nMain-Class: hudson.remoting.Launcher\r\nVersion: {version}\r\n\r\n"
    )
    .expect("manifest");
    zip.finish().expect("zip");
    out.into_inner()
}
