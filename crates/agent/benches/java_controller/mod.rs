//! What the real-engine benches share: a controller side written in Java
//! against the given `remoting.jar` (`benches/java/`), compiled here, and
//! the relay that hands an accepted channel to it in stdio framing.
// Not every bench uses both.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use remoting_protocol::capability::Capability;
use remoting_protocol::preamble::{self, PreambleReader};
use testkit::Channel;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Compiles the crate's `source` (e.g. `benches/java/RealController.java`)
/// against `jar` into a fresh directory and returns it.
pub fn compile(jar: &Path, source: &str) -> PathBuf {
    let class = Path::new(source)
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("a .java file");
    let classes = crate::common::temp_dir(&class.to_lowercase());
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
    let compiled = std::process::Command::new("javac")
        .args(["-nowarn", "-cp"])
        .arg(jar)
        .arg("-d")
        .arg(&classes)
        .arg(&source)
        .status()
        .expect("javac runs");
    assert!(
        compiled.success(),
        "{class} does not compile against {jar:?}: is it a remoting.jar?"
    );
    classes
}

/// Relays `channel` to a controller JVM's stream until either side ends or
/// the test controller kicks the channel: `first_line` (if any), our
/// capability preamble and the bytes read ahead go first; the JVM's own
/// preamble is taken off what it sends.
pub async fn relay(
    channel: Channel,
    first_line: Option<String>,
    mut jvm_read: impl AsyncRead + Unpin,
    mut jvm_write: impl AsyncWrite + Unpin,
) {
    let Channel { framed, kicked, .. } = channel;
    let parts = framed.into_parts();
    let (mut net_read, mut net_write) = tokio::io::split(parts.io);
    let early = parts.read_buf;
    let to_jvm = async move {
        if let Some(line) = first_line {
            jvm_write.write_all(format!("{line}\n").as_bytes()).await?;
        }
        jvm_write
            .write_all(&preamble::encode(Capability::CURRENT))
            .await?;
        jvm_write.write_all(&early).await?;
        tokio::io::copy(&mut net_read, &mut jvm_write).await
    };
    let from_jvm = async move {
        let mut reader = PreambleReader::new();
        let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
        loop {
            if jvm_read.read_buf(&mut buf).await? == 0 {
                return Ok(0);
            }
            if reader
                .feed(&mut buf)
                .map_err(|e| std::io::Error::other(e.to_string()))?
                .is_some()
            {
                break;
            }
        }
        net_write.write_all(&buf).await?;
        tokio::io::copy(&mut jvm_read, &mut net_write).await
    };
    tokio::select! {
        _ = kicked.cancelled() => {}
        _ = to_jvm => {}
        _ = from_jvm => {}
    }
}
