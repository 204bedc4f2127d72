//! Keeps the agent connected: runs sessions one after another, waiting with
//! exponential backoff and jitter between failed attempts, and stops on a
//! FATAL refusal, on `-noReconnect` / `-noReconnectAfter`, or on SIGTERM /
//! SIGINT.

use std::time::{Duration, Instant};

use rand::Rng as _;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument as _};

use crate::session::{Agent, Continuity, SessionEnd, SessionError};
use remoting_protocol::handshake::HandshakeError;

/// A connection that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(60);

/// Backoff between attempts: doubles from `initial` up to `max`, each wait
/// jittered to between half and all of it so that many agents restarting
/// together do not reconnect in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `initial`, capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// Back to the initial wait.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Why the agent stopped.
#[derive(Debug)]
pub enum Stopped {
    /// Asked to (signal), or the session ended with `-noReconnect`.
    Cleanly,
    /// Gave up: a fatal error, or reconnecting was not allowed.
    Failed(anyhow::Error),
}

/// Runs sessions until told to stop or until reconnecting cannot help.
pub async fn run(agent: &Agent, backoff: &mut Backoff, shutdown: CancellationToken) -> Stopped {
    let mut continuity = Continuity::default();
    let mut last_online = Instant::now();
    let mut last_problem: Option<String> = None;
    let mut attempt: u64 = 0;
    let stopped = loop {
        let started = Instant::now();
        let mut online = false;
        attempt += 1;
        // One span per connection: every line it logs says which attempt.
        let span = tracing::info_span!(
            "session",
            attempt,
            node = agent.settings.name.as_deref().unwrap_or("")
        );
        let result = agent
            .run_session(&mut continuity, &shutdown, || online = true)
            .instrument(span)
            .await;
        if online {
            last_online = Instant::now();
            last_problem = None;
            if started.elapsed() >= STABLE {
                backoff.reset();
            }
        }
        match result {
            Ok(SessionEnd::Shutdown) => break Stopped::Cleanly,
            Ok(end) => {
                info!(?end, "disconnected");
                if agent.settings.no_reconnect {
                    break Stopped::Cleanly;
                }
            }
            Err(err) if err.is_fatal() => {
                error!(%err, "giving up");
                break Stopped::Failed(err.into());
            }
            Err(err) => {
                report(&err, online, &mut last_problem);
                if agent.settings.no_reconnect {
                    break Stopped::Failed(anyhow::Error::new(err).context("-noReconnect is set"));
                }
            }
        }
        if let Some(limit) = agent.settings.no_reconnect_after {
            if last_online.elapsed() >= limit {
                break Stopped::Failed(anyhow::anyhow!(
                    "not connected for {}; giving up as -noReconnectAfter says",
                    humantime::format_duration(limit)
                ));
            }
        }
        let delay = backoff.next_delay();
        info!(delay = %humantime::format_duration(round(delay)), "reconnecting");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => break Stopped::Cleanly,
        }
    };
    continuity.shutdown().await;
    stopped
}

/// Logs a failed attempt: a new problem at WARN (ERROR for security ones),
/// the same problem again only at DEBUG, so a long outage does not flood the log.
fn report(err: &SessionError, was_online: bool, last: &mut Option<String>) {
    let text = err.to_string();
    if last.as_deref() == Some(text.as_str()) {
        tracing::debug!(%err, "still failing");
        return;
    }
    if let SessionError::Handshake(HandshakeError::IdentityMismatch(_)) = err {
        error!(%err, "security: refusing to connect");
    } else if was_online {
        warn!(%err, "connection lost");
    } else {
        warn!(%err, "connection attempt failed");
    }
    *last = Some(text);
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let waits: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for (i, w) in waits.iter().enumerate() {
            let base = Duration::from_millis((100u64 << i).min(1000));
            assert!(*w >= base / 2 && *w <= base, "wait {i}: {w:?} vs {base:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
