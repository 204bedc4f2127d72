//! What the supervisor reports when a session goes online and when an
//! attempt fails.

use control::Phase;
use remoting_protocol::handshake::HandshakeError;
use tracing::{error, warn};

use crate::lending::hub::Hub;
use crate::session::{Online, SessionError};

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
