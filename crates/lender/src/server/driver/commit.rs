//! The commit path: durable before acknowledged. A client's change is
//! tried on a copy of the pool and kept only once stored; reported changes
//! are stored before any decision behind them is carried out.

use super::*;

impl Driver {
    /// A client's change: tried on a copy of the pool, kept only once the
    /// store has committed it (with any reported changes still unsaved).
    /// Refused by the store: 503, and the pool is as before (but for the
    /// lease ids the copy used, which are never handed out again).
    pub(super) async fn change<T>(
        &mut self,
        inputs: &mut mpsc::Receiver<Input>,
        apply: impl FnOnce(&mut Pool) -> T,
    ) -> Result<T, ApiError> {
        let mut copy = self.pool.clone();
        let result = apply(&mut copy);
        let mut batch = self.unsaved.clone();
        batch.extend(copy.take_changes());
        if batch.is_empty() {
            self.pool = copy;
            return Ok(result);
        }
        match self.write(batch, inputs).await {
            Ok(batch) => {
                self.unsaved = Changes::default();
                self.failing = false;
                self.pool = copy;
                self.publish(&batch);
                Ok(result)
            }
            Err((_, err)) => {
                self.pool.skip_ids_to(copy.next_id());
                self.metrics.store_failed(ChangeKind::Client);
                tracing::error!(%err, "the database refused a client's change; it was not made");
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the lender could not store this change in its database, so it did not \
                     make it (see the lender's log); try again later",
                ))
            }
        }
    }

    // ---- after each input ----

    /// Commits, then carries out decisions until there are none (carrying
    /// one out may fail a borrow, which makes more). Carries out nothing
    /// while the store refuses the changes behind the decisions.
    pub(super) async fn settle(&mut self, inputs: &mut mpsc::Receiver<Input>) {
        loop {
            if !self.commit(inputs).await {
                return;
            }
            let Some(decision) = self.pool.poll_decision() else {
                break;
            };
            self.decide(decision);
        }
    }

    /// Commits what changed (and what the store refused before); whether
    /// everything is on disk now.
    pub(super) async fn commit(&mut self, inputs: &mut mpsc::Receiver<Input>) -> bool {
        let changes = self.pool.take_changes();
        if changes.is_empty() && self.unsaved.is_empty() {
            return true;
        }
        let mut batch = std::mem::take(&mut self.unsaved);
        batch.extend(changes);
        match self.write(batch, inputs).await {
            Ok(batch) => {
                self.failing = false;
                self.publish(&batch);
                true
            }
            Err((batch, err)) => {
                self.failing = true;
                tracing::error!(%err, "cannot write to the database; retrying with the next change, carrying out nothing until then");
                self.metrics.store_failed(ChangeKind::Reported);
                self.unsaved = batch;
                false
            }
        }
    }

    /// Events and metrics for changes now on disk.
    pub(super) fn publish(&mut self, changes: &Changes) {
        self.metrics.observe(changes);
        for lease in &changes.leases {
            let _ = self
                .events
                .send(Arc::new(ServerEvent::Lease(LeaseView::of(lease))));
        }
        for agent in &changes.agents {
            let _ = self
                .events
                .send(Arc::new(ServerEvent::Agent(AgentView::of(agent))));
        }
    }

    /// Writes `batch` on a blocking thread, answering reads meanwhile and
    /// setting other inputs aside; gives the batch back on success.
    pub(super) async fn write(
        &mut self,
        batch: Changes,
        inputs: &mut mpsc::Receiver<Input>,
    ) -> Result<Changes, (Changes, StoreError)> {
        let Some(StoreBox(mut store)) = self.store.take() else {
            let lost = StoreError::Io {
                path: "(lost)".into(),
                source: std::io::Error::other("the store was lost when a commit panicked"),
            };
            return Err((batch, lost));
        };
        let job = tokio::task::spawn_blocking(move || {
            let result = store.commit(&batch);
            (store, batch, result)
        });
        tokio::pin!(job);
        let joined = loop {
            tokio::select! {
                biased;
                joined = &mut job => break joined,
                input = inputs.recv(), if !self.inputs_closed && self.deferred.len() < MAX_DEFERRED => {
                    match input {
                        Some(Input::Api(call)) if call.is_read() => self.read(call),
                        Some(other) => self.deferred.push_back(other),
                        None => self.inputs_closed = true,
                    }
                }
            }
        };
        match joined {
            Ok((store, batch, result)) => {
                self.store = Some(StoreBox(store));
                match result {
                    Ok(()) => Ok(batch),
                    Err(err) => Err((batch, err)),
                }
            }
            // The store went with the panic: every later commit fails too.
            Err(err) => Err((
                Changes::default(),
                StoreError::Io {
                    path: "(lost)".into(),
                    source: std::io::Error::other(format!("the commit panicked: {err}")),
                },
            )),
        }
    }
}
