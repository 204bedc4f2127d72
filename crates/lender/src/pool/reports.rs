//! Agents' links and reports: an agent connecting, leaving, and saying where
//! it is and whether it is busy. The agent's word wins about its place.

use super::*;

impl Pool {
    /// An agent connected to the lender and introduced itself. A known agent
    /// keeps its lease; orders it may have missed are sent again.
    pub fn agent_connected(&mut self, hello: AgentHello, now: u64) {
        let labels = Agent::labels_for(&hello);
        let name = hello.name.clone();
        let agent = self.agents.entry(name.clone()).or_insert_with(|| Agent {
            name: name.clone(),
            labels: BTreeSet::new(),
            connected: false,
            place: hello.report.place.clone(),
            online: false,
            busy: hello.report.busy,
            idle_since_ms: None,
            last_seen_ms: now,
            last_lent_ms: None,
            lease: None,
        });
        agent.labels = labels;
        agent.connected = true;
        self.record(now, None, Some(&name), "connected", String::new());
        self.apply_report(&name, hello.report, now);
        // Orders sent while the link was down may be lost: send them again
        // (both are idempotent on the agent).
        let pending = self.agents.get(&name).and_then(|agent| {
            let id = agent.lease?;
            let lease = self.leases.get(&id)?;
            match (&lease.state, &agent.place) {
                // An auto-lease whose node is not made yet (a restart
                // lost the provisioning) asks for it again.
                (LeaseState::Reserved, Place::Home)
                    if lease
                        .request
                        .origin
                        .as_ref()
                        .is_some_and(|o| !o.provisioned) =>
                {
                    Some(Decision::Provision {
                        lease: id,
                        agent: name.clone(),
                    })
                }
                (LeaseState::Reserved, Place::Home) => Some(Decision::Lend {
                    lease: id,
                    agent: name.clone(),
                }),
                (LeaseState::Returning(_), Place::Borrowed { .. }) => Some(Decision::Recall {
                    lease: id,
                    agent: name.clone(),
                    when: When::Idle,
                }),
                _ => None,
            }
        });
        self.decisions.extend(pending);
        self.serve_queue(now);
    }

    /// An agent's link to the lender went down. It keeps its place and
    /// lease (it enforces the lease itself); it is not lent until it is back.
    pub fn agent_disconnected(&mut self, name: &str, now: u64) -> Result<(), PoolError> {
        let agent = self
            .agents
            .get_mut(name)
            .ok_or_else(|| PoolError::UnknownAgent(name.to_owned()))?;
        agent.connected = false;
        agent.online = false;
        self.changed_agents.insert(name.to_owned());
        self.record(now, None, Some(name), "disconnected", String::new());
        Ok(())
    }

    /// An agent reported its place and activity. Its lease follows: a
    /// reserved agent online at the borrower makes the lease active; an
    /// agent that left the borrower ends it; an agent that came home serves
    /// the queue.
    pub fn agent_reported(
        &mut self,
        name: &str,
        report: AgentReport,
        now: u64,
    ) -> Result<(), PoolError> {
        if !self.agents.contains_key(name) {
            return Err(PoolError::UnknownAgent(name.to_owned()));
        }
        self.apply_report(name, report, now);
        self.serve_queue(now);
        Ok(())
    }

    pub(super) fn apply_report(&mut self, name: &str, report: AgentReport, now: u64) {
        let Some(agent) = self.agents.get_mut(name) else {
            return;
        };
        // Borrowed without saying where: between two channels. Not evidence
        // of being anywhere else; the next report will say.
        if matches!(&report.place, Place::Borrowed { url } if url.is_empty()) {
            agent.online = false;
            agent.busy = report.busy;
            agent.last_seen_ms = now;
            self.changed_agents.insert(name.to_owned());
            return;
        }
        let moved = agent.place != report.place;
        if report.busy {
            agent.idle_since_ms = None;
        } else if moved || agent.busy || agent.idle_since_ms.is_none() {
            agent.idle_since_ms = Some(now);
        }
        agent.place = report.place.clone();
        agent.online = report.online;
        agent.busy = report.busy;
        agent.last_seen_ms = now;
        let lease_id = agent.lease;
        self.changed_agents.insert(name.to_owned());

        let Some(id) = lease_id else {
            if let (true, Place::Borrowed { url }) = (moved, &report.place) {
                self.record(
                    now,
                    None,
                    Some(name),
                    "unleased",
                    format!(
                        "agent reports being at {url} without a pool lease; not lent until home"
                    ),
                );
            }
            return;
        };
        let Some(lease) = self.leases.get(&id) else {
            return;
        };
        let at_borrower = matches!(&report.place,
            Place::Borrowed { url } if same_url(url, &lease.request.borrower.url));
        match (&lease.state, &report.place) {
            (LeaseState::Reserved, _) if at_borrower => {
                if report.online {
                    self.activate(id, now);
                }
            }
            (LeaseState::Reserved, Place::Home) => {}
            (LeaseState::Reserved, Place::Borrowed { url }) => {
                let reason = format!("agent reports being at {url} instead");
                self.fail_reserved(id, &reason, now);
            }
            (LeaseState::Active, _) if at_borrower => self.one_build(id, report.busy, now),
            (LeaseState::Active, place) => {
                let place = place.clone();
                self.end(id, EndReason::AgentLeft { place }, now);
            }
            (LeaseState::Returning(_), _) if at_borrower => {}
            (LeaseState::Returning(cause), Place::Home) => {
                let reason = match *cause {
                    ReturnCause::Requested => EndReason::Returned,
                    ReturnCause::Reclaimed { for_lease } => EndReason::Reclaimed { for_lease },
                };
                self.end(id, reason, now);
            }
            (LeaseState::Returning(_), place) => {
                let place = place.clone();
                self.end(id, EndReason::AgentLeft { place }, now);
            }
            (LeaseState::Queued | LeaseState::Ended(_), _) => {}
        }
    }
}
