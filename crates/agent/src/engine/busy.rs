//! Whether the agent is busy: what decides that it may leave a controller.
//! This module tracks the channel's activity; finding (and ending) build
//! processes is [`super::builds`].
//!
//! Three signals, any of which means busy:
//! - requests from the controller not answered yet, counted from the class
//!   names that start commands on the chunk stream (`UserRequest` and
//!   `RPCRequest` in, `Response` out);
//! - build processes alive: descendants of the agent other than the engine
//!   JVM itself, and processes anywhere carrying this agent's session marker
//!   ([`super::builds::SESSION_ENV`]). On Linux the agent is also a child subreaper, so
//!   processes a build detached (daemonised, `nohup`, double fork) are
//!   re-parented to the agent instead of init. How processes are found on
//!   each OS, and how those the agent cannot read count, is in
//!   [`crate::engine::processes`];
//! - non-ping traffic within the last few seconds (any command but a
//!   `Response` or a `PingThread$Ping` request).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

const USER_REQUEST: &str = "hudson.remoting.UserRequest";
/// Commands the controller sends that expect a `Response`.
const REQUESTS: &[&str] = &[
    USER_REQUEST,
    "hudson.remoting.RemoteInvocationHandler$RPCRequest",
];
const RESPONSE: &str = "hudson.remoting.Response";
/// The callable remoting's ping thread sends (inside a `UserRequest`).
pub const PING_MARKER: &[u8] = b"hudson.remoting.PingThread$Ping";

/// Live activity of the current channel, updated by the bridge.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicI64,
    last_activity_ms: AtomicU64,
}

impl Activity {
    /// A command started on the controller → engine stream.
    pub fn seen_from_controller(&self, class: Option<&str>, head: &[u8]) {
        let is_request = class.is_some_and(|c| REQUESTS.contains(&c));
        if is_request {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        self.touch_unless_ping(class, head);
    }

    /// A command started on the engine → controller stream.
    pub fn seen_from_engine(&self, class: Option<&str>, head: &[u8]) {
        if class == Some(RESPONSE) {
            // Saturating: a Response to a request sent before we started
            // counting must not drive the count negative.
            let _ = self
                .in_flight
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some((n - 1).max(0))
                });
        }
        self.touch_unless_ping(class, head);
    }

    fn touch_unless_ping(&self, class: Option<&str>, head: &[u8]) {
        if class == Some(RESPONSE) || is_ping(class, head) {
            return;
        }
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Requests from the controller not answered yet.
    pub fn requests_in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed).max(0) as u64
    }

    /// When the last non-ping command crossed, in unix ms (`None`: never).
    pub fn last_activity_ms(&self) -> Option<u64> {
        Some(self.last_activity_ms.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }

    /// A new channel: nothing in flight.
    pub fn reset(&self) {
        self.in_flight.store(0, Ordering::Relaxed);
    }
}

/// Whether a command from the controller is a request that starts work
/// (anything it expects an answer to, pings aside): what cancels a move
/// that is about to happen.
pub fn is_work_request(class: Option<&str>, head: &[u8]) -> bool {
    class.is_some_and(|c| REQUESTS.contains(&c)) && !is_ping(class, head)
}

/// A ping is a `UserRequest` carrying the ping callable. Only those heads
/// are searched: this runs for every command on the data path.
fn is_ping(class: Option<&str>, head: &[u8]) -> bool {
    class == Some(USER_REQUEST) && memchr::memmem::find(head, PING_MARKER).is_some()
}

/// Milliseconds since the Unix epoch: the one clock of every `*_ms` field.
pub use control::now_ms;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_balance() {
        let a = Activity::default();
        a.seen_from_controller(Some("hudson.remoting.UserRequest"), b"");
        a.seen_from_controller(
            Some("hudson.remoting.RemoteInvocationHandler$RPCRequest"),
            b"",
        );
        assert_eq!(a.requests_in_flight(), 2);
        a.seen_from_engine(Some(RESPONSE), b"");
        assert_eq!(a.requests_in_flight(), 1);
        a.seen_from_engine(Some(RESPONSE), b"");
        a.seen_from_engine(Some(RESPONSE), b"");
        assert_eq!(a.requests_in_flight(), 0, "never negative");
        a.seen_from_controller(Some("hudson.remoting.UserRequest"), b"");
        assert_eq!(a.requests_in_flight(), 1, "and counting resumes from zero");
    }

    #[test]
    fn pings_and_responses_are_not_activity() {
        let a = Activity::default();
        a.seen_from_controller(
            Some("hudson.remoting.UserRequest"),
            b"...hudson.remoting.PingThread$Ping...",
        );
        a.seen_from_engine(Some(RESPONSE), b"");
        assert_eq!(a.last_activity_ms(), None);
        a.seen_from_controller(Some("hudson.remoting.ProxyOutputStream$Chunk"), b"");
        assert!(a.last_activity_ms().is_some());
    }

    #[test]
    fn only_a_user_request_is_a_ping() {
        // A build's output may well mention the ping class.
        let a = Activity::default();
        a.seen_from_engine(
            Some("hudson.remoting.ProxyOutputStream$Chunk"),
            b"...hudson.remoting.PingThread$Ping...",
        );
        assert!(a.last_activity_ms().is_some());
        let ping = b"...hudson.remoting.PingThread$Ping...";
        assert!(!is_work_request(Some("hudson.remoting.UserRequest"), ping));
        assert!(is_work_request(
            Some("hudson.remoting.RemoteInvocationHandler$RPCRequest"),
            ping
        ));
    }
}
