//! Lending on demand, the driver's part: a controller's waiting items
//! become auto-leases, made nodes come back as inputs, idle lent nodes that
//! no open auto-lease uses are deleted.

use super::*;

impl Driver {
    /// A controller's waiting items: the pool keeps one auto-lease each.
    pub(super) fn demand(&mut self, config: ControllerConfig, items: &[DemandItem], now: u64) {
        let name = config.name.clone();
        if self
            .controllers
            .get(&name)
            .is_some_and(|old| *old != config)
        {
            // Re-registered: a refused secret (or create) is for the
            // admin to have fixed; the items it failed for are served
            // again.
            self.refused.remove(&name);
            self.pool.forget_ended_auto(&name);
        }
        if self.refused.contains_key(&name) {
            self.controllers.insert(name, config);
            return;
        }
        let template = DemandTemplate {
            url: config.url.clone(),
            max_agents: config.options.max_agents,
            idle_return: Some(config.options.idle_return),
            one_build: config.options.one_build,
        };
        self.controllers.insert(name.clone(), config);
        let created = self.pool.demand(&name, &template, items, now);
        if !created.is_empty() {
            tracing::info!(controller = %name, leases = ?created, "demand: auto-leases requested");
        }
        // Reserved auto-leases whose node nobody is making (the controller
        // was not polled yet when they were reserved, or a restart lost
        // the task): make it now.
        let orphans: Vec<(LeaseId, String)> = self
            .pool
            .leases()
            .filter(|l| {
                l.state == LeaseState::Reserved
                    && !self.provisioning.contains(&l.id)
                    && l.request
                        .origin
                        .as_ref()
                        .is_some_and(|o| o.controller == name && !o.provisioned)
            })
            .filter_map(|l| Some((l.id, l.agent.clone()?)))
            .collect();
        for (lease, agent) in orphans {
            self.provision(lease, agent);
        }
    }

    /// The borrower refused the agent's connection for the node the lender
    /// made (the secret read from its `jenkins-agent.jnlp` does not
    /// match): another agent would be refused too, so the auto-lease ends
    /// (the agent stays home, the node is deleted), the controller shows
    /// as failing with what to do, and nothing more is lent there until its
    /// registration changes.
    pub(super) fn secret_refused(&mut self, lease: LeaseId, agent: &str, reason: &str, now: u64) {
        let Some(l) = self.pool.lease(lease) else {
            return;
        };
        let Some(origin) = l.request.origin.as_ref().filter(|o| o.provisioned) else {
            // A manual lease: its borrower gave the secret; the next agent
            // is tried as for any failed borrow.
            if let Err(err) = self.pool.fail(lease, reason, now) {
                tracing::warn!(lease, %err, "cannot fail");
            }
            return;
        };
        let controller = origin.controller.clone();
        let node = l.request.borrower.node_name.clone();
        let message = format!(
            "the controller refused the secret of node {node} that the lender read from its \
             jenkins-agent.jnlp ({reason}); check what serves that file (a proxy or cache in \
             front of Jenkins, a plugin rotating agent secrets), then `jnlp-lender controller \
             add {controller} --replace ...` to lend there again"
        );
        tracing::warn!(lease, %agent, %controller, %node, "the controller refused the node's secret; lending there stops");
        self.refused.insert(controller.clone(), message.clone());
        if let Some(view) = self.registry.note_refused(&controller, &message) {
            let _ = self
                .events
                .send(Arc::new(ServerEvent::ControllerFailing(view)));
        }
        if let Err(err) = self.pool.provision_failed(lease, &message, now) {
            tracing::warn!(lease, %err, "cannot end the lease");
        }
    }

    /// Reserved auto-leases whose item left the queue while their agent
    /// is already connected to its node there: the item most likely
    /// started on it before the borrow's answer came back (the queue is
    /// read before the nodes). Kept as if still waiting, so that the pool
    /// does not recall an agent whose build has just started (which would
    /// cut it); the answer makes the lease active. An item cancelled after
    /// the agent arrived leaves the agent there until its idle return.
    pub(super) fn arrived_meanwhile(
        &self,
        controller: &str,
        items: &[DemandItem],
        nodes: &[crate::jenkins::Computer],
    ) -> Vec<DemandItem> {
        let waiting: std::collections::BTreeSet<u64> = items.iter().map(|i| i.queue_id).collect();
        self.pool
            .leases()
            .filter(|l| l.state == LeaseState::Reserved)
            .filter_map(|l| {
                let origin = l.request.origin.as_ref()?;
                let arrived = nodes
                    .iter()
                    .any(|n| n.name == l.request.borrower.node_name && (n.connected || !n.offline));
                (origin.controller == controller
                    && origin.provisioned
                    && !waiting.contains(&origin.queue_id)
                    && arrived)
                    .then(|| DemandItem {
                        queue_id: origin.queue_id,
                        in_queue_since_ms: origin.in_queue_since_ms,
                        requirements: l.request.requirements.clone(),
                    })
            })
            .collect()
    }

    /// Auto-leases whose item's build is seen running on their node: the
    /// metric from the item's `inQueueSince` to its build's start (the
    /// build's own timestamp; the poll's time when Jenkins does not show
    /// the build, e.g. without Job/Read, and the node is busy).
    pub(super) fn builds_started(
        &mut self,
        controller: &str,
        nodes: &[crate::jenkins::Computer],
        now: u64,
    ) {
        if nodes.is_empty() {
            return;
        }
        for lease in self.pool.leases() {
            let Some(origin) = lease.request.origin.as_ref() else {
                continue;
            };
            if origin.controller != controller
                || !origin.provisioned
                || matches!(lease.state, LeaseState::Ended(_))
            {
                continue;
            }
            let Some(node) = nodes
                .iter()
                .find(|n| n.name == lease.request.borrower.node_name)
            else {
                continue;
            };
            let started = match node.builds.iter().find(|b| b.queue_id == origin.queue_id) {
                Some(build) => Some(build.started_ms),
                None if node.builds.is_empty() && !node.idle => Some(now),
                None => None,
            };
            if let Some(started) = started {
                self.metrics
                    .build_started(controller, lease.id, origin.in_queue_since_ms, started);
            }
        }
    }

    /// Deletes the controller's idle nodes with the lender's prefix that no
    /// open auto-lease uses or is making (left by a restart mid-lease, or
    /// by a delete that failed).
    pub(super) fn reconcile_nodes(&mut self, controller: &str, nodes: &[crate::jenkins::Computer]) {
        let Some(config) = self.controllers.get(controller) else {
            return;
        };
        // Forget deletes that are done (the node is no longer listed).
        self.deleting
            .retain(|(c, n)| c != controller || nodes.iter().any(|node| node.name == *n));
        if config.options.keep_nodes || nodes.is_empty() {
            return;
        }
        let mut live = std::collections::BTreeSet::new();
        for lease in self.pool.leases() {
            let Some(origin) = lease.request.origin.as_ref() else {
                continue;
            };
            if origin.controller != controller || matches!(lease.state, LeaseState::Ended(_)) {
                continue;
            }
            live.insert(lease.request.borrower.node_name.clone());
            if let Some(agent) = &lease.agent {
                live.insert(config.node_name(agent));
            }
        }
        let orphans: Vec<String> = nodes
            .iter()
            .filter(|n| {
                n.idle
                    && !live.contains(&n.name)
                    && !self
                        .deleting
                        .contains(&(controller.to_owned(), n.name.clone()))
            })
            .map(|n| n.name.clone())
            .collect();
        for node in orphans {
            tracing::info!(controller, %node, "lent node without a live lease; deleting it");
            self.deleting.insert((controller.to_owned(), node.clone()));
            self.delete_node(controller, &node, None);
        }
    }

    pub(super) fn provisioned(
        &mut self,
        lease: LeaseId,
        agent: &str,
        controller: &str,
        result: Result<Provisioned, provision::NotMade>,
        now: u64,
    ) {
        self.provisioning.remove(&lease);
        match result {
            Ok(made) => {
                if !self.refused.contains_key(controller) {
                    self.registry.clear_refused(controller);
                }
                let node = made.node.clone();
                if let Err(err) =
                    self.pool
                        .provisioned(lease, &made.node, made.secret, made.transport, now)
                {
                    // Cancelled meanwhile (the item left the queue): the
                    // node is not needed.
                    tracing::info!(lease, %agent, %node, %err, "node made for a lease that no longer wants it");
                    self.delete_node(controller, &node, Some(lease));
                }
            }
            Err(provision::NotMade {
                message: reason,
                denied,
            }) => {
                tracing::warn!(lease, %agent, controller, %reason, "cannot make the node; the item is skipped");
                if denied {
                    // The token or its permissions: failing until a node is
                    // made there again or the registration changes (which
                    // serves the skipped items again).
                    let message = format!(
                        "cannot make nodes: {reason}; grant the permission to the lender's \
                         Jenkins user (or fix its token with `jnlp-lender controller add \
                         {controller} --replace ...`, which also retries the items skipped)"
                    );
                    if let Some(view) = self.registry.note_refused(controller, &message) {
                        let _ = self
                            .events
                            .send(Arc::new(ServerEvent::ControllerFailing(view)));
                    }
                } else {
                    self.registry.note_error(controller, &reason);
                }
                if let Err(err) = self.pool.provision_failed(lease, &reason, now) {
                    tracing::debug!(lease, %err, "provisioning failure for a settled lease");
                }
            }
        }
    }

    /// Deletes a lent node in a task, unless `--keep-nodes`.
    pub(super) fn delete_node(&mut self, controller: &str, node: &str, lease: Option<LeaseId>) {
        let Some(config) = self.controllers.get(controller).cloned() else {
            return;
        };
        if config.options.keep_nodes {
            tracing::info!(%node, controller, "node kept (--keep-nodes)");
            return;
        }
        let node = node.to_owned();
        let events = self.events.clone();
        self.tracker.spawn(async move {
            if provision::delete(&config, &node).await {
                let _ = events.send(Arc::new(ServerEvent::NodeDeleted(crate::api::NodeEvent {
                    controller: config.name.clone(),
                    node,
                    lease,
                })));
            }
        });
    }
}

/// Whether a failed borrow's reason is the controller refusing the
/// node's secret (the agent words the JNLP4 `Authorization failure` and
/// the WebSocket 403 this way).
pub(super) fn refused_secret(reason: &str) -> bool {
    [
        "secret does not match",
        "Authorization failure",
        "rejected the secret",
    ]
    .iter()
    .any(|needle| reason.contains(needle))
}
