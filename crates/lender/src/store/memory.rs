//! A store in memory, for tests: same behaviour as SQLite, no file. Its
//! [`Store::reader`] shares the same maps, as a second SQLite connection
//! shares the file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::controllers::ControllerConfig;
use crate::pool::{Agent, Changes, Lease, LeaseId, LeaseState, Secret, Snapshot};
use crate::store::{AuditRecord, LeaseFilter, Store, StoreError};
use crate::tokens::{short_id, Principal, TokenInfo, TokenRecord};

/// Keeps everything in maps; ended leases lose their secret, as in SQLite.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    agents: BTreeMap<String, Agent>,
    leases: BTreeMap<LeaseId, Lease>,
    audit: Vec<AuditRecord>,
    tokens: BTreeMap<String, Token>,
    controllers: BTreeMap<String, ControllerConfig>,
}

#[derive(Debug, Clone)]
struct Token {
    principal: Principal,
    created_ms: u64,
    last_used_ms: Option<u64>,
    revoked_ms: Option<u64>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps, still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn commit(&mut self, changes: &Changes) -> Result<(), StoreError> {
        let mut inner = self.inner();
        for agent in &changes.agents {
            inner.agents.insert(agent.name.clone(), agent.clone());
        }
        for lease in &changes.leases {
            let mut lease = lease.clone();
            if matches!(lease.state, LeaseState::Ended(_)) {
                lease.request.borrower.secret = Secret::new("");
            }
            inner.leases.insert(lease.id, lease);
        }
        for entry in &changes.audit {
            let id = inner.audit.len() as u64 + 1;
            inner.audit.push(AuditRecord {
                id,
                entry: entry.clone(),
            });
        }
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let inner = self.inner();
        Ok(Snapshot {
            agents: inner
                .agents
                .values()
                .cloned()
                .map(|mut agent| {
                    agent.connected = false;
                    agent.online = false;
                    agent.lease = None;
                    agent
                })
                .collect(),
            leases: inner
                .leases
                .values()
                .filter(|lease| !matches!(lease.state, LeaseState::Ended(_)))
                .cloned()
                .collect(),
            next_id: inner.leases.keys().next_back().map_or(1, |id| id + 1),
        })
    }

    fn lease(&self, id: LeaseId) -> Result<Option<Lease>, StoreError> {
        Ok(self.inner().leases.get(&id).cloned())
    }

    fn queue(&self) -> Result<Vec<Lease>, StoreError> {
        Ok(self
            .inner()
            .leases
            .values()
            .filter(|lease| lease.state == LeaseState::Queued)
            .cloned()
            .collect())
    }

    fn leases(
        &self,
        client: &str,
        filter: LeaseFilter,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        Ok(self
            .inner()
            .leases
            .values()
            .rev()
            .filter(|lease| lease.request.client == client)
            .filter(|lease| {
                let ended = matches!(lease.state, LeaseState::Ended(_));
                match filter {
                    LeaseFilter::All => true,
                    LeaseFilter::Open => !ended,
                    LeaseFilter::Ended => ended,
                }
            })
            .take(limit)
            .cloned()
            .collect())
    }

    fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(self
            .inner()
            .audit
            .iter()
            .filter(|record| record.id > after)
            .take(limit)
            .cloned()
            .collect())
    }

    fn add_token(&mut self, token: &TokenRecord) -> Result<(), StoreError> {
        self.inner().tokens.insert(
            token.hash.clone(),
            Token {
                principal: token.principal.clone(),
                created_ms: token.created_ms,
                last_used_ms: None,
                revoked_ms: None,
            },
        );
        Ok(())
    }

    fn token(&self, hash: &str) -> Result<Option<Principal>, StoreError> {
        Ok(self
            .inner()
            .tokens
            .get(hash)
            .filter(|token| token.revoked_ms.is_none())
            .map(|token| token.principal.clone()))
    }

    fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let mut tokens: Vec<TokenInfo> = self
            .inner()
            .tokens
            .iter()
            .map(|(hash, token)| TokenInfo {
                id: short_id(hash),
                kind: token.principal.kind.as_str(),
                name: token.principal.name.clone(),
                created_ms: token.created_ms,
                last_used_ms: token.last_used_ms,
                revoked_ms: token.revoked_ms,
            })
            .collect();
        tokens.sort_by_key(|token| token.created_ms);
        Ok(tokens)
    }

    fn revoked(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .inner()
            .tokens
            .iter()
            .filter(|(_, token)| token.revoked_ms.is_some())
            .map(|(hash, _)| hash.clone())
            .collect())
    }

    fn revoke(&mut self, name: &str, at_ms: u64) -> Result<usize, StoreError> {
        let mut count = 0;
        for token in self.inner().tokens.values_mut() {
            if token.principal.name == name && token.revoked_ms.is_none() {
                token.revoked_ms = Some(at_ms);
                count += 1;
            }
        }
        Ok(count)
    }

    fn token_used(&mut self, hash: &str, at_ms: u64) -> Result<(), StoreError> {
        if let Some(token) = self.inner().tokens.get_mut(hash) {
            token.last_used_ms = Some(at_ms);
        }
        Ok(())
    }

    fn add_controller(&mut self, controller: &ControllerConfig) -> Result<bool, StoreError> {
        let mut inner = self.inner();
        if inner.controllers.contains_key(&controller.name) {
            return Ok(false);
        }
        inner
            .controllers
            .insert(controller.name.clone(), controller.clone());
        Ok(true)
    }

    fn remove_controller(&mut self, name: &str) -> Result<bool, StoreError> {
        Ok(self.inner().controllers.remove(name).is_some())
    }

    fn controllers(&self) -> Result<Vec<ControllerConfig>, StoreError> {
        Ok(self.inner().controllers.values().cloned().collect())
    }

    fn reader(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(self.clone()))
    }

    fn location(&self) -> &Path {
        Path::new(":memory:")
    }
}
