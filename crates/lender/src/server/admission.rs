//! Connections not yet authenticated: capped, and given less time.
//!
//! Anyone who can reach the port can open connections and send nothing;
//! under the usual service limit of 1,024 open files, a thousand of those
//! used to leave no descriptor for a legitimate request or an agent link.
//! So:
//!
//! - at start, the soft limit on open files is raised to the hard one
//!   ([`raise_open_files_limit`]);
//! - every accepted connection holds a [`Ticket`] until a request on it
//!   passes bearer authentication (an agent link passes at its upgrade);
//!   at most `cap` tickets exist: admitting one more closes the oldest
//!   unauthenticated connection, so a new connection always gets its
//!   chance and a flood only churns through itself;
//! - a connection still unauthenticated after [`UNAUTHENTICATED_TIMEOUT`]
//!   (TLS handshake and first request together) is closed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long a connection may stay unauthenticated: its TLS handshake and
/// its first request's head and token together.
pub(crate) const UNAUTHENTICATED_TIMEOUT: Duration = Duration::from_secs(10);

/// The cap when the open-files limit is unknown.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 256;

/// A cap on unauthenticated connections for an open-files limit: a quarter
/// of it (the rest for agent links, clients, the database), between 64 and
/// 4,096.
pub fn default_max_unauthenticated(open_files: Option<u64>) -> usize {
    open_files.map_or(DEFAULT_MAX_UNAUTHENTICATED, |limit| {
        usize::try_from(limit / 4)
            .unwrap_or(usize::MAX)
            .clamp(64, 4096)
    })
}

/// Raises the soft limit on open files to the hard limit and logs both;
/// returns the limit in force (`None`: unknown).
pub fn raise_open_files_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(err) => {
            tracing::warn!(%err, "cannot read the open-files limit");
            return None;
        }
    };
    if soft >= hard {
        tracing::info!(limit = soft, "open-files limit (already at the hard limit)");
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!(
                before = soft,
                after = hard,
                "raised the open-files limit to the hard limit"
            );
            Some(hard)
        }
        Err(err) => {
            tracing::warn!(%err, soft, hard, "cannot raise the open-files limit; keeping the soft one");
            Some(soft)
        }
    }
}

/// The unauthenticated connections, oldest first.
#[derive(Debug)]
pub(crate) struct Admission {
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// By admission order: what closes each connection.
    waiting: BTreeMap<u64, CancellationToken>,
    closed: u64,
}

impl Admission {
    /// At most `cap` (at least 1) unauthenticated connections.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Admission {
            cap: cap.max(1),
            inner: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection that `close` closes; at the cap, the oldest
    /// unauthenticated one is closed to make room.
    pub fn admit(self: &Arc<Self>, close: CancellationToken) -> Ticket {
        let mut inner = self.lock();
        while inner.waiting.len() >= self.cap {
            let Some((_, oldest)) = inner.waiting.pop_first() else {
                break;
            };
            oldest.cancel();
            inner.closed += 1;
            // Logged at 1, 2, 4, 8, ...: a flood does not flood the log.
            if inner.closed.is_power_of_two() {
                tracing::warn!(
                    cap = self.cap,
                    closed = inner.closed,
                    "too many unauthenticated connections; closing the oldest"
                );
            }
        }
        let id = inner.next;
        inner.next += 1;
        inner.waiting.insert(id, close);
        Ticket {
            admission: self.clone(),
            id,
            authenticated: AtomicBool::new(false),
        }
    }

    /// How many connections are unauthenticated now.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// How many were closed to make room, in all.
    #[cfg(test)]
    pub fn closed(&self) -> u64 {
        self.lock().closed
    }
}

/// A connection's place among the unauthenticated ones; dropping it (the
/// connection ended) or [`Ticket::authenticated`] gives the place up.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    authenticated: AtomicBool,
}

impl Ticket {
    /// A request on the connection passed bearer authentication: it is no
    /// longer capped nor timed out.
    pub fn authenticated(&self) {
        if !self.authenticated.swap(true, Ordering::AcqRel) {
            self.admission.lock().waiting.remove(&self.id);
        }
    }

    /// Resolves once the connection has been unauthenticated for `limit`;
    /// never, once authenticated.
    pub async fn expired(&self, limit: Duration) {
        tokio::time::sleep(limit).await;
        if self.authenticated.load(Ordering::Acquire) {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.authenticated.load(Ordering::Acquire) {
            self.admission.lock().waiting.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_unauthenticated_connection_is_closed() {
        let admission = Admission::new(3);
        let tokens: Vec<CancellationToken> = (0..5).map(|_| CancellationToken::new()).collect();
        let first = admission.admit(tokens[0].clone());
        let second = admission.admit(tokens[1].clone());
        second.authenticated();
        let _third = admission.admit(tokens[2].clone());
        let _fourth = admission.admit(tokens[3].clone());
        assert_eq!(admission.waiting(), 3);
        assert!(!tokens[0].is_cancelled(), "the authenticated one made room");
        let _fifth = admission.admit(tokens[4].clone());
        assert!(
            tokens[0].is_cancelled(),
            "the oldest unauthenticated is closed"
        );
        assert!(
            !tokens[1].is_cancelled(),
            "an authenticated one is never closed"
        );
        assert!(!tokens[2].is_cancelled() && !tokens[3].is_cancelled());
        assert_eq!((admission.waiting(), admission.closed()), (3, 1));
        drop(first);
        drop(second);
        assert_eq!(admission.waiting(), 3);
    }

    #[test]
    fn an_ended_connection_gives_its_place_up() {
        let admission = Admission::new(2);
        let a = CancellationToken::new();
        let ticket = admission.admit(a.clone());
        drop(ticket);
        let _b = admission.admit(CancellationToken::new());
        let _c = admission.admit(CancellationToken::new());
        assert!(!a.is_cancelled());
        assert_eq!((admission.waiting(), admission.closed()), (2, 0));
    }

    #[test]
    fn the_default_cap_is_a_quarter_of_the_open_files_limit_within_bounds() {
        assert_eq!(default_max_unauthenticated(Some(1024)), 256);
        assert_eq!(default_max_unauthenticated(Some(100)), 64);
        assert_eq!(default_max_unauthenticated(Some(1 << 20)), 4096);
        assert_eq!(default_max_unauthenticated(Some(u64::MAX)), 4096);
        assert_eq!(
            default_max_unauthenticated(None),
            DEFAULT_MAX_UNAUTHENTICATED
        );
    }

    #[tokio::test]
    async fn an_unauthenticated_connection_expires_and_an_authenticated_one_does_not() {
        let admission = Admission::new(2);
        let ticket = admission.admit(CancellationToken::new());
        let limit = Duration::from_millis(20);
        let wait = Duration::from_secs(10);
        assert!(tokio::time::timeout(wait, ticket.expired(limit))
            .await
            .is_ok());
        ticket.authenticated();
        // Never resolves once authenticated, however long one waits.
        let longer = limit * 10;
        assert!(tokio::time::timeout(longer, ticket.expired(limit))
            .await
            .is_err());
    }
}
