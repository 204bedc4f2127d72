//! A controller that plays the controller's side of a recorded transcript,
//! byte for byte, and checks that the agent sends exactly the agent's side.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::fixtures::{Direction, Layer, Record};
use crate::TestIdentity;

/// How the replay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records played or matched.
    pub records: usize,
}

/// Options for [`serve_transcript`].
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Stop after the capability exchange (the handshake only).
    pub handshake_only: bool,
    /// Send the controller's first chunks together with its capability,
    /// before reading the agent's, so that they reach the agent in the same
    /// reads as the handshake's last frame.
    pub chunks_with_capability: bool,
}

/// Accepts one connection on `listener` and plays `records` on it.
///
/// Returns an error naming the first record where the agent's bytes differ
/// from the recording, or where the connection failed.
pub async fn serve_transcript(
    listener: TcpListener,
    identity: &TestIdentity,
    records: Vec<Record>,
    options: ReplayOptions,
) -> Result<ReplayReport, String> {
    let (mut tcp, _) = listener
        .accept()
        .await
        .map_err(|e| format!("accept: {e}"))?;
    let plain = |r: &Record| matches!(r.layer, Layer::Protocol | Layer::Ack);
    let (before_tls, after_tls): (Vec<Record>, Vec<Record>) = records.into_iter().partition(plain);
    let mut played = 0;
    for record in &before_tls {
        step(&mut tcp, record).await?;
        played += 1;
    }
    let mut tls = TlsAcceptor::from(identity.server_config())
        .accept(tcp)
        .await
        .map_err(|e| format!("TLS accept: {e}"))?;

    let mut script = after_tls;
    if options.handshake_only {
        script.retain(|r| r.layer != Layer::Chunk);
    }
    if options.chunks_with_capability {
        // Move the controller's chunks before the agent's first one up to
        // just after the controller's capability.
        let first_agent_chunk = script
            .iter()
            .position(|r| r.layer == Layer::Chunk && r.dir == Direction::AgentToController)
            .unwrap_or(script.len());
        let early: Vec<Record> = script[..first_agent_chunk]
            .iter()
            .filter(|r| r.layer == Layer::Chunk)
            .cloned()
            .collect();
        script.retain(|r| !early.contains(r));
        let cap = script
            .iter()
            .position(|r| r.layer == Layer::Capability && r.dir == Direction::ControllerToAgent)
            .ok_or("transcript has no controller capability")?;
        for (i, r) in early.into_iter().enumerate() {
            script.insert(cap + 1 + i, r);
        }
    }
    for record in &script {
        step(&mut tls, record).await?;
        played += 1;
    }
    let _ = tls.shutdown().await;
    Ok(ReplayReport { records: played })
}

async fn step<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    record: &Record,
) -> Result<(), String> {
    match record.dir {
        Direction::ControllerToAgent => {
            io.write_all(&record.bytes)
                .await
                .map_err(|e| format!("seq {}: write: {e}", record.seq))?;
            io.flush()
                .await
                .map_err(|e| format!("seq {}: flush: {e}", record.seq))
        }
        Direction::AgentToController => {
            let mut got = vec![0; record.bytes.len()];
            tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut got))
                .await
                .map_err(|_| format!("seq {}: agent sent nothing for 10 s", record.seq))?
                .map_err(|e| format!("seq {} ({:?}): read: {e}", record.seq, record.layer))?;
            if got != record.bytes {
                return Err(format!(
                    "seq {} ({:?}): agent sent\n  {}\nrecording has\n  {}",
                    record.seq,
                    record.layer,
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&record.bytes)
                ));
            }
            Ok(())
        }
    }
}
