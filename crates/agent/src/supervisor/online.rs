//! What the supervisor reports when a session goes online, when a move is
//! done (online as the controller sees it), and when an attempt fails.

use std::time::{Duration, Instant};

use control::{EventKind, Phase};
use remoting_protocol::handshake::HandshakeError;
use tracing::{error, info, warn};

use crate::lending::hub::Hub;
use crate::session::{Online, SessionError};

/// How long after the handshake a controller's first call is awaited
/// before the move counts as done without it (Jenkins calls at once).
pub(super) const FIRST_CALL_WAIT: Duration = Duration::from_secs(2);

/// Returns [`FIRST_CALL_WAIT`] after `online_at`.
pub(super) async fn first_call_given_up(online_at: Option<Instant>) {
    match online_at {
        Some(at) => tokio::time::sleep_until((at + FIRST_CALL_WAIT).into()).await,
        None => std::future::pending().await,
    }
}

/// Reports a move done: online at the new place as its controller sees it.
pub(super) fn report_moved(
    hub: &Hub,
    moved_at: Instant,
    online_at: Option<Instant>,
    answered: Option<Instant>,
) {
    let since = |t: Instant| t.saturating_duration_since(moved_at).as_millis() as u64;
    let ms = since(answered.unwrap_or_else(Instant::now));
    let connected_ms = online_at.map(since);
    let answered_ms = answered.map(since);
    info!(ms, connected_ms, answered_ms, "moved");
    hub.core().awaiting_first_call = false;
    hub.emit(EventKind::Moved {
        ms,
        connected_ms,
        answered_ms,
    });
}

pub(super) fn mark_online(hub: &Hub, online: &Online) {
    {
        let mut core = hub.core();
        core.engine_pid = Some(online.engine_pid);
        core.controller_url = online.controller_url.clone();
        core.node_name = Some(online.node.clone());
        core.remoting_version = online.remoting_version.clone();
        core.engine_window = online.engine_window;
        core.transport = Some(online.transport);
        core.transport_fallback = online.transport_fallback;
        core.last_error = None;
    }
    hub.set_phase(Phase::Online);
}

/// Logs a failed attempt: a new problem at WARN (ERROR for security ones),
/// the same problem again only at DEBUG, so a long outage does not flood the log.
pub(super) fn report(err: &SessionError, was_online: bool, last: &mut Option<String>) {
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
