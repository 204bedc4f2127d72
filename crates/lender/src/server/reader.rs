//! Reads from the store that do not go through the driver: a second handle
//! on the database ([`Store::reader`]), so that a lookup never waits behind
//! a commit (in WAL mode SQLite readers do not wait for a writer). Each call
//! runs on a blocking thread.

use std::sync::{Arc, Mutex};

use crate::controllers::ControllerConfig;
use crate::pool::{Lease, LeaseId};
use crate::store::{LeaseFilter, Store, StoreError};
use crate::tokens::Principal;

/// A store handle for reads (and the token book's small writes), shared by
/// connections.
#[derive(Clone)]
pub(crate) struct ReadStore {
    store: Arc<Mutex<Box<dyn Store>>>,
}

impl std::fmt::Debug for ReadStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadStore")
    }
}

impl ReadStore {
    pub fn new(store: Box<dyn Store>) -> Self {
        ReadStore {
            store: Arc::new(Mutex::new(store)),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = store
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            job(store.as_mut())
        })
        .await
        .unwrap_or_else(|err| {
            Err(StoreError::Io {
                path: "(reader)".into(),
                source: std::io::Error::other(format!("a read panicked: {err}")),
            })
        })
    }

    pub async fn lease(&self, id: LeaseId) -> Result<Option<Lease>, StoreError> {
        self.run(move |store| store.lease(id)).await
    }

    pub async fn leases(
        &self,
        client: String,
        filter: LeaseFilter,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        self.run(move |store| store.leases(&client, filter, limit))
            .await
    }

    /// The registered controllers, as `controller add/remove` left them.
    pub async fn controllers(&self) -> Result<Vec<ControllerConfig>, StoreError> {
        self.run(|store| store.controllers()).await
    }

    pub async fn token(&self, hash: String) -> Result<Option<Principal>, StoreError> {
        self.run(move |store| store.token(&hash)).await
    }

    pub async fn revoked(&self) -> Result<Vec<String>, StoreError> {
        self.run(|store| store.revoked()).await
    }

    pub async fn token_used(&self, hash: String, at_ms: u64) -> Result<(), StoreError> {
        self.run(move |store| store.token_used(&hash, at_ms)).await
    }
}
