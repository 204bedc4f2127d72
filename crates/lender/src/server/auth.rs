//! Who a bearer token speaks for, without asking the driver: the token book
//! looks tokens up through its own store handles ([`ReadStore`]) and keeps
//! the answers.
//!
//! - **Revocation.** Every [`REVOCATION_POLL`] the book reads which tokens
//!   are revoked (`jnlp-lender token revoke` writes that from another
//!   process), forgets them, and tells the open agent links and event
//!   streams (a `watch`), which close if theirs is among them. So a revoked
//!   token stops working within about a second, on a running server too.
//! - **Last use.** A token's use is noted in the database at most once per
//!   [`USE_RESOLUTION`] (for `token list`), through a handle of its own, off
//!   the request's path: a locked database delays nothing but the note.
//! - The cache holds at most [`CACHE`] tokens; unknown tokens are not kept.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::reader::ReadStore;
use crate::store::StoreError;
use crate::tokens::Principal;

/// How often revocations are read.
pub(crate) const REVOCATION_POLL: Duration = Duration::from_millis(500);
/// A token's last use is recorded to this resolution.
const USE_RESOLUTION: Duration = Duration::from_secs(60);
/// Tokens remembered at most.
const CACHE: usize = 4096;

#[derive(Debug, Clone)]
struct Known {
    principal: Principal,
    /// When its use was last written (Unix ms).
    noted_ms: u64,
}

/// The server's view of the tokens.
#[derive(Debug)]
pub(crate) struct TokenBook {
    lookups: ReadStore,
    notes: ReadStore,
    known: Mutex<HashMap<String, Known>>,
    revoked: Mutex<HashSet<String>>,
    /// Bumped whenever a token is newly revoked.
    generation: watch::Sender<u64>,
}

impl TokenBook {
    pub fn new(lookups: ReadStore, notes: ReadStore) -> Arc<Self> {
        Arc::new(TokenBook {
            lookups,
            notes,
            known: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashSet::new()),
            generation: watch::Sender::new(0),
        })
    }

    fn known(&self) -> MutexGuard<'_, HashMap<String, Known>> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn revoked_set(&self) -> MutexGuard<'_, HashSet<String>> {
        self.revoked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whom the token with this hash speaks for; `None`: unknown or
    /// revoked.
    pub async fn principal(
        self: &Arc<Self>,
        hash: &str,
        tracker: &TaskTracker,
    ) -> Result<Option<Principal>, StoreError> {
        if self.is_revoked(hash) {
            return Ok(None);
        }
        let now = control::now_ms();
        let cached = self.known().get(hash).cloned();
        let known = match cached {
            Some(known) => known,
            None => {
                let Some(principal) = self.lookups.token(hash.to_owned()).await? else {
                    return Ok(None);
                };
                if self.is_revoked(hash) {
                    return Ok(None);
                }
                let known = Known {
                    principal,
                    noted_ms: 0,
                };
                let mut map = self.known();
                if map.len() >= CACHE {
                    map.clear();
                }
                map.insert(hash.to_owned(), known.clone());
                known
            }
        };
        let resolution = USE_RESOLUTION.as_millis() as u64;
        if now.saturating_sub(known.noted_ms) >= resolution {
            if let Some(entry) = self.known().get_mut(hash) {
                entry.noted_ms = now;
            }
            let book = self.clone();
            let hash = hash.to_owned();
            tracker.spawn(async move {
                if let Err(err) = book.notes.token_used(hash, now).await {
                    tracing::debug!(%err, "cannot note a token's use");
                }
            });
        }
        Ok(Some(known.principal))
    }

    /// Whether the token with this hash was revoked since the server read
    /// it.
    pub fn is_revoked(&self, hash: &str) -> bool {
        self.revoked_set().contains(hash)
    }

    /// Changes whenever a token is newly revoked.
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Reads the revoked tokens; forgets and announces new ones.
    async fn refresh(&self) -> Result<(), StoreError> {
        let revoked = self.lookups.revoked().await?;
        let fresh: Vec<String> = {
            let mut set = self.revoked_set();
            revoked
                .into_iter()
                .filter(|hash| set.insert(hash.clone()))
                .collect()
        };
        if !fresh.is_empty() {
            let mut known = self.known();
            for hash in &fresh {
                known.remove(hash);
            }
            drop(known);
            tracing::info!(count = fresh.len(), "tokens revoked");
            self.generation.send_modify(|g| *g += 1);
        }
        Ok(())
    }

    /// Reads revocations every [`REVOCATION_POLL`] until `cancel`.
    pub async fn watch_revocations(self: Arc<Self>, cancel: CancellationToken) {
        let mut failing = false;
        loop {
            match self.refresh().await {
                Ok(()) => failing = false,
                Err(err) if !failing => {
                    failing = true;
                    tracing::warn!(%err, "cannot read revoked tokens; retrying");
                }
                Err(_) => {}
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(REVOCATION_POLL) => {}
            }
        }
    }
}
