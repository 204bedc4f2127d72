//! Agents' links: hello (reconciling what the lender remembers with what
//! the agent says), their messages, replies to the lender's requests, and
//! an agent back home.

use super::*;

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn link_up(
        &mut self,
        node: String,
        link: u64,
        labels: Vec<String>,
        version: &str,
        status: &Status,
        tx: mpsc::Sender<LenderMessage>,
        now: u64,
    ) {
        let report = AgentReport::from_status(status);
        self.reconcile(&node, &report);
        if let Some(home) = &status.home_url {
            self.homes.insert(node.clone(), home.clone());
            // After a restart the lender does not know whether it took the
            // home node offline: look once.
            self.offline_at_home.insert(node.clone());
        }
        if let Some(old) = self.links.insert(
            node.clone(),
            Link {
                id: link,
                tx,
                next_request: 1,
            },
        ) {
            // Dropping its sender closes the older link.
            tracing::info!(%node, old = old.id, "agent reconnected; the older link is closed");
            self.pending
                .retain(|(agent, l, _), _| !(agent == &node && *l == old.id));
        }
        tracing::info!(%node, %version, link, place = ?report.place, "agent said hello");
        let hello = AgentHello {
            name: node,
            labels: labels.into_iter().collect(),
            // The agent adds its platform labels itself.
            os: None,
            arch: None,
            report,
        };
        let name = hello.name.clone();
        self.pool.agent_connected(hello, now);
        self.back_home(&name);
    }

    /// Logs where the agent's word and the lender's memory disagree; the
    /// pool then applies the report (the agent's place wins, the lease
    /// follows it).
    pub(super) fn reconcile(&self, node: &str, report: &AgentReport) {
        let Some(known) = self.pool.agent(node) else {
            return;
        };
        if known.place != report.place {
            tracing::warn!(
                %node,
                reported = ?report.place,
                remembered = ?known.place,
                "agent reports another place than the lender remembers; the agent's word wins"
            );
        }
        let lease = known.lease.and_then(|id| self.pool.lease(id));
        match (lease, &report.place) {
            (Some(lease), place) => {
                let at_borrower = matches!(place, Place::Borrowed { url }
                    if url.trim_end_matches('/') == lease.request.borrower.url.trim_end_matches('/'));
                let agrees = match lease.state {
                    LeaseState::Reserved => at_borrower || *place == Place::Home,
                    LeaseState::Active => at_borrower,
                    LeaseState::Returning(_) => true,
                    _ => true,
                };
                if !agrees {
                    tracing::warn!(
                        %node,
                        lease = lease.id,
                        state = lease.state.name(),
                        borrower = %lease.request.borrower.url,
                        reported = ?place,
                        "the agent is not where its lease says; the lease follows the agent"
                    );
                }
            }
            (None, Place::Borrowed { url }) => tracing::warn!(
                %node,
                %url,
                "agent reports being lent outside the pool; not lent until it is home"
            ),
            (None, Place::Home) => {}
        }
    }

    pub(super) fn agent_message(&mut self, node: &str, link: u64, message: AgentMessage, now: u64) {
        let report = |status: &Status| AgentReport::from_status(status);
        let result = match message {
            AgentMessage::Hello { .. } => {
                // The link refuses a second hello; nothing to do here.
                Ok(())
            }
            AgentMessage::Status { status } => {
                self.note_home(node, &status);
                self.pool.agent_reported(node, report(&status), now)
            }
            AgentMessage::Event { event } => {
                self.note_home(node, &event.status);
                self.pool.agent_reported(node, report(&event.status), now)
            }
            AgentMessage::Reply { id, reply } => {
                match self.pending.remove(&(node.to_owned(), link, id)) {
                    Some(pending) => self.on_reply(node, pending, reply, now),
                    None => tracing::debug!(%node, id, "reply to no pending request"),
                }
                Ok(())
            }
        };
        if let Err(err) = result {
            tracing::warn!(%node, %err, "agent message not applied");
        }
        self.back_home(node);
    }

    pub(super) fn note_home(&mut self, node: &str, status: &Status) {
        if let Some(home) = &status.home_url {
            self.homes.insert(node.to_owned(), home.clone());
        }
    }

    /// The registered controller that is `agent`'s home, if any.
    pub(super) fn home_controller(&self, agent: &str) -> Option<ControllerConfig> {
        let home = super::super::registry::same_url(self.homes.get(agent)?);
        self.controllers
            .values()
            .find(|c| super::super::registry::same_url(&c.url) == home)
            .cloned()
    }

    /// An agent home and in no lease whose home node the lender took
    /// offline: brought back online (only if it is temporarily offline
    /// with the lender's message).
    pub(super) fn back_home(&mut self, agent: &str) {
        if !self.offline_at_home.contains(agent) {
            return;
        }
        let home_free = self
            .pool
            .agent(agent)
            .is_some_and(|a| a.place == Place::Home && a.lease.is_none());
        if !home_free {
            return;
        }
        let Some(config) = self.home_controller(agent) else {
            return;
        };
        self.offline_at_home.remove(agent);
        let node = agent.to_owned();
        self.tracker.spawn(async move {
            match provision::bring_online_if_ours(&config, &node).await {
                Ok(true) => {
                    tracing::info!(%node, controller = %config.name, "home node back online")
                }
                Ok(false) => {}
                Err(err) => tracing::warn!(%node, %err, "cannot bring the home node back online"),
            }
        });
    }

    pub(super) fn on_reply(&mut self, node: &str, pending: Pending, reply: Reply, now: u64) {
        let id = pending.lease;
        let current = self
            .pool
            .lease(id)
            .is_some_and(|l| l.state == LeaseState::Reserved && l.agent.as_deref() == Some(node));
        match (pending.kind, reply) {
            (PendingKind::Borrow, Reply::Ok(_)) if current => {
                tracing::info!(lease = id, agent = %node, "agent online at the borrower");
                if let Err(err) = self.pool.confirm(id, now) {
                    tracing::warn!(lease = id, %err, "cannot confirm");
                }
            }
            (PendingKind::Borrow, Reply::Error(reason))
                if current && super::demand::refused_secret(&reason) =>
            {
                self.secret_refused(id, node, &reason, now);
            }
            (PendingKind::Borrow, Reply::Error(reason)) if current => {
                tracing::warn!(lease = id, agent = %node, %reason, "borrow failed; trying the next agent");
                match self.pool.fail(id, &reason, now) {
                    Ok(outcome) => tracing::debug!(lease = id, ?outcome, "after the failure"),
                    Err(err) => tracing::warn!(lease = id, %err, "cannot fail"),
                }
            }
            (PendingKind::Borrow, reply) => {
                tracing::debug!(lease = id, agent = %node, ?reply, "late borrow reply ignored");
            }
            (PendingKind::Return, Reply::Ok(_)) => {
                tracing::debug!(lease = id, agent = %node, "return accepted");
            }
            (PendingKind::Return, Reply::Error(reason)) => {
                tracing::warn!(lease = id, agent = %node, %reason, "return refused or late; the agent's report will end the lease");
            }
        }
    }

    // ---- API ----
}
