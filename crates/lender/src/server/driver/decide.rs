//! Carrying out the pool's decisions: `borrow` and `return` on the
//! agents' links, with lending on demand's steps (a node made first, a
//! node taken offline and idle before the agent leaves).

use super::*;

impl Driver {
    pub(super) fn decide(&mut self, decision: Decision) {
        match decision {
            Decision::Lend { lease, agent } if self.lend_first(lease, &agent) => {
                tracing::info!(lease, %agent, "taking the home node offline before the agent leaves");
            }
            Decision::Lend { lease, agent } => {
                let Some(l) = self.pool.lease(lease) else {
                    return;
                };
                if l.state != LeaseState::Reserved || l.agent.as_deref() != Some(&agent) {
                    return;
                }
                let request = Request::Borrow(l.borrow_request(Some(self.borrow_wait)));
                tracing::info!(lease, %agent, borrower = %l.request.borrower.url, "sending borrow");
                self.send(&agent, request, lease, PendingKind::Borrow);
            }
            Decision::Recall { lease, agent, when } if self.leave_first(lease, &agent) => {
                tracing::info!(lease, %agent, ?when, "taking the node offline before the agent leaves");
            }
            Decision::Recall { lease, agent, when } => {
                let request = Request::Return {
                    when,
                    wait: Some(self.borrow_wait),
                };
                tracing::info!(lease, %agent, ?when, "sending return");
                self.send(&agent, request, lease, PendingKind::Return);
            }
            Decision::Provision { lease, agent } => self.provision(lease, agent),
            Decision::Ended { lease, reason } => {
                tracing::info!(lease, reason = end_kind(&reason), %reason, "lease ended");
                self.metrics.ended(&reason);
                let made = self.pool.lease(lease).and_then(|l| {
                    let origin = l.request.origin.as_ref()?;
                    origin.provisioned.then(|| {
                        (
                            origin.controller.clone(),
                            l.request.borrower.node_name.clone(),
                        )
                    })
                });
                if let Some((controller, node)) = made {
                    self.delete_node(&controller, &node, Some(lease));
                }
            }
        }
    }

    /// Leaving without guessing: before an auto-lease's agent is taken
    /// from its controller, its node there is taken temporarily offline
    /// (no new build can start), checked idle again (a build that slipped
    /// in is waited for), and only then the agent is sent home at once.
    /// Whether a task now does that (the `return` follows on
    /// [`Input::LeaveReady`]).
    pub(super) fn leave_first(&mut self, lease: LeaseId, agent: &str) -> bool {
        let Some(l) = self.pool.lease(lease) else {
            return false;
        };
        let Some(origin) = l.request.origin.as_ref().filter(|o| o.provisioned) else {
            return false;
        };
        let Some(config) = self.controllers.get(&origin.controller).cloned() else {
            return false;
        };
        if !self.leaving.insert(lease) {
            // Already under way (a re-sent recall).
            return true;
        }
        let node = l.request.borrower.node_name.clone();
        let message = format!("jnlp-lender: returning agent {agent} (lease {lease})");
        let deadline = after(self.borrow_wait);
        let inputs = self.inputs.clone();
        let agent = agent.to_owned();
        let poll = self.tick.max(Duration::from_millis(100));
        self.tracker.spawn(async move {
            let result =
                provision::take_offline_until_idle(&config, &node, &message, poll, deadline)
                    .await
                    .map_err(|err| err.to_string());
            if let Some(inputs) = inputs.upgrade() {
                let _ = inputs
                    .send(Input::LeaveReady {
                        lease,
                        agent,
                        result,
                    })
                    .await;
            }
        });
        true
    }

    /// Leaving home without guessing: when the agent's home is a registered
    /// controller, its node there is taken temporarily offline and checked
    /// idle before the `borrow` goes out (then with `when: now`). Whether a
    /// task now does that (the borrow follows on [`Input::LendReady`]).
    pub(super) fn lend_first(&mut self, lease: LeaseId, agent: &str) -> bool {
        let reserved = self
            .pool
            .lease(lease)
            .is_some_and(|l| l.state == LeaseState::Reserved && l.agent.as_deref() == Some(agent));
        if !reserved || self.pool.agent(agent).map(|a| &a.place) != Some(&Place::Home) {
            return false;
        }
        let Some(config) = self.home_controller(agent) else {
            return false;
        };
        if !self.lending.insert(lease) {
            return true;
        }
        self.offline_at_home.insert(agent.to_owned());
        let message = format!("jnlp-lender: lending {agent} (lease {lease})");
        let deadline = after(self.borrow_wait);
        let poll = self.tick.max(Duration::from_millis(100));
        let inputs = self.inputs.clone();
        let agent = agent.to_owned();
        self.tracker.spawn(async move {
            let result =
                provision::take_offline_until_idle(&config, &agent, &message, poll, deadline)
                    .await
                    .map_err(|err| err.to_string());
            if let Some(inputs) = inputs.upgrade() {
                let _ = inputs
                    .send(Input::LendReady {
                        lease,
                        agent,
                        result,
                    })
                    .await;
            }
        });
        true
    }

    /// The home node is offline and idle (or that failed): the borrow goes
    /// out, to leave at once (or, on failure, when idle, as before).
    pub(super) fn lend_ready(&mut self, lease: LeaseId, agent: &str, result: Result<(), String>) {
        self.lending.remove(&lease);
        let Some(l) = self.pool.lease(lease) else {
            return;
        };
        if l.state != LeaseState::Reserved || l.agent.as_deref() != Some(agent) {
            self.back_home(agent);
            return;
        }
        let mut borrow = l.borrow_request(Some(self.borrow_wait));
        match result {
            Ok(()) => borrow.when = When::Now,
            Err(reason) => {
                tracing::warn!(lease, %agent, %reason, "cannot take the home node offline first; the agent leaves when idle");
            }
        }
        tracing::info!(lease, %agent, borrower = %l.request.borrower.url, when = ?borrow.when, "sending borrow");
        self.send(agent, Request::Borrow(borrow), lease, PendingKind::Borrow);
    }

    /// The node is offline and idle (or that failed): the agent goes now
    /// (or, on failure, as it would have without credentials: when idle).
    pub(super) fn leave_ready(&mut self, lease: LeaseId, agent: &str, result: Result<(), String>) {
        self.leaving.remove(&lease);
        let returning = self.pool.lease(lease).is_some_and(|l| {
            matches!(l.state, LeaseState::Returning(_)) && l.agent.as_deref() == Some(agent)
        });
        if !returning {
            return;
        }
        let when = match result {
            Ok(()) => When::Now,
            Err(reason) => {
                tracing::warn!(lease, %agent, %reason, "cannot take the node offline first; the agent leaves when idle");
                When::Idle
            }
        };
        let request = Request::Return {
            when,
            wait: Some(self.borrow_wait),
        };
        tracing::info!(lease, %agent, ?when, "sending return");
        self.send(agent, request, lease, PendingKind::Return);
    }

    /// Makes the node for reserved auto-lease `lease` in a task; the result
    /// comes back as [`Input::Provisioned`].
    pub(super) fn provision(&mut self, lease: LeaseId, agent: String) {
        let Some(l) = self.pool.lease(lease) else {
            return;
        };
        if l.state != LeaseState::Reserved || l.agent.as_deref() != Some(&agent) {
            return;
        }
        let Some(origin) = l.request.origin.clone() else {
            return;
        };
        let Some(config) = self.controllers.get(&origin.controller).cloned() else {
            // Restarted: the controller's watcher has not reported yet; its
            // first demand input asks again for every reserved auto-lease.
            tracing::info!(lease, controller = %origin.controller, "controller not polled yet; provisioning waits");
            return;
        };
        if self
            .home_controller(&agent)
            .is_some_and(|home| home.name == config.name)
        {
            // The item waits at the agent's own home, which has its node
            // already (busy, or taken offline while it is lent or coming
            // back): its own scheduler uses it. Lending it there as a
            // second node would take it from that node; another agent may
            // serve the item.
            tracing::info!(lease, %agent, controller = %config.name, "the item waits at the agent's home; not lent to itself");
            if let Err(err) = self.pool.fail(
                lease,
                &format!("{agent}'s home is {}: not lent to itself", config.name),
                now_ms(),
            ) {
                tracing::warn!(lease, %err, "cannot pass the lease on");
            }
            return;
        }
        let labels = self
            .pool
            .agent(&agent)
            .map(|a| a.labels.clone())
            .unwrap_or_default();
        let creates = self.creates.entry(config.name.clone()).or_default().clone();
        if !self.provisioning.insert(lease) {
            return;
        }
        let inputs = self.inputs.clone();
        let events = self.events.clone();
        tracing::info!(lease, %agent, controller = %config.name, "making the node");
        self.tracker.spawn(async move {
            let result = provision::provision(&config, lease, &agent, &labels, creates)
                .await
                .map_err(|err| provision::NotMade {
                    denied: matches!(err.status(), Some(401 | 403)),
                    message: err.to_string(),
                });
            if let Ok(made) = &result {
                if made.created {
                    let _ =
                        events.send(Arc::new(ServerEvent::NodeCreated(crate::api::NodeEvent {
                            controller: config.name.clone(),
                            node: made.node.clone(),
                            lease: Some(lease),
                        })));
                }
            }
            if let Some(inputs) = inputs.upgrade() {
                let _ = inputs
                    .send(Input::Provisioned {
                        lease,
                        agent,
                        controller: config.name,
                        result,
                    })
                    .await;
            }
        });
    }

    /// Sends `request` on `agent`'s link. Without a link the order waits
    /// for the agent's hello, after which the pool sends it again.
    pub(super) fn send(
        &mut self,
        agent: &str,
        request: Request,
        lease: LeaseId,
        kind: PendingKind,
    ) {
        let Some(link) = self.links.get_mut(agent) else {
            tracing::info!(%agent, lease, "agent not connected; the order goes out when it says hello");
            return;
        };
        let id = link.next_request;
        link.next_request += 1;
        match link.tx.try_send(LenderMessage::Request { id, request }) {
            Ok(()) => {
                self.pending.insert(
                    (agent.to_owned(), link.id, id),
                    Pending {
                        lease,
                        kind,
                        overdue: after(self.borrow_wait.saturating_add(REPLY_GRACE)),
                    },
                );
            }
            Err(err) => {
                // A link that does not take a message is stuck or gone:
                // drop it; the agent reconnects and gets the order again.
                tracing::warn!(%agent, %err, "agent link does not take messages; dropping it");
                let link = link.id;
                self.links.remove(agent);
                self.pending
                    .retain(|(a, l, _), _| !(a == agent && *l == link));
                if let Err(err) = self.pool.agent_disconnected(agent, now_ms()) {
                    tracing::warn!(%agent, %err, "cannot mark the agent disconnected");
                }
            }
        }
    }
}
