//! SIGTERM and SIGINT: the agent leaves its channel and stops.

use tokio_util::sync::CancellationToken;
use tracing::info;

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: closing the channel and stopping"),
            _ = int.recv() => info!("SIGINT: closing the channel and stopping"),
        }
        cancel.cancel();
    });
    Ok(token)
}
