//! Lending on demand, the driver's part: a controller's waiting items
//! become auto-leases, made nodes come back as inputs, idle lent nodes that
//! no open auto-lease uses are deleted.

use super::*;

impl Driver {
    /// A controller's waiting items: the pool keeps one auto-lease each.
    pub(super) fn demand(&mut self, config: ControllerConfig, items: &[DemandItem], now: u64) {
        let name = config.name.clone();
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
        result: Result<Provisioned, String>,
        now: u64,
    ) {
        self.provisioning.remove(&lease);
        match result {
            Ok(made) => {
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
            Err(reason) => {
                tracing::warn!(lease, %agent, controller, %reason, "cannot make the node; the item is skipped");
                self.registry.note_error(controller, &reason);
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
