//! Requests and the two phases: a request reserves the best free match (or
//! waits), the reservation becomes active once the agent is online at the
//! borrower, and a failed borrow frees the agent for the next match.

use super::*;

impl Pool {
    /// A borrower asks for an agent: reserves the best free match at once,
    /// or queues the request until `now + wait`, or (no wait) ends it with
    /// the reason.
    pub fn request_lease(&mut self, request: LeaseRequest, now: u64) -> Result<Outcome, PoolError> {
        request.validate().map_err(PoolError::InvalidRequest)?;
        let limit = self.config.max_queued_per_client;
        // Refused before anything changes (no id taken) if it would wait
        // beyond the client's limit; served at once, it never queues.
        // (The agents are scanned only for a client at its limit.)
        let at_limit = request.wait > Duration::ZERO && self.queued_of(&request.client) >= limit;
        if at_limit && self.pick_for(&request, &[]).is_none() {
            return Err(PoolError::TooManyQueued {
                client: request.client,
                limit,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let deadline_ms = now.saturating_add(ms(request.wait));
        let lease = Lease {
            id,
            request,
            state: LeaseState::Queued,
            agent: None,
            requested_ms: now,
            deadline_ms,
            since_ms: now,
            attempts: Vec::new(),
        };
        let detail = format!(
            "`{}` for {} ({}), client {:?}",
            lease.request.requirements,
            lease.request.borrower.url,
            lease.request.borrower.node_name,
            lease.request.client
        );
        self.leases.insert(id, lease);
        self.changed_leases.insert(id);
        self.record(now, Some(id), None, "requested", detail);
        Ok(self.place(id, now))
    }

    /// Reserves an agent for lease `id` (queued or just requested), or
    /// queues it, or ends it once its deadline has passed.
    pub(super) fn place(&mut self, id: LeaseId, now: u64) -> Outcome {
        if let Some(agent) = self.pick(id) {
            if self.reserve(id, &agent, now).is_ok() {
                return Outcome::Reserved { lease: id, agent };
            }
        }
        let deadline_ms = self.leases.get(&id).map_or(0, |l| l.deadline_ms);
        if deadline_ms > now {
            if let Some(lease) = self.leases.get_mut(&id) {
                lease.state = LeaseState::Queued;
                lease.agent = None;
                lease.since_ms = now;
            }
            self.queue.insert(id);
            self.changed_leases.insert(id);
            self.record(
                now,
                Some(id),
                None,
                "queued",
                format!("until {deadline_ms}"),
            );
            Outcome::Queued {
                lease: id,
                deadline_ms,
            }
        } else {
            let reason = EndReason::TimedOut {
                message: self.wait_message(id),
            };
            self.end(id, reason.clone(), now);
            Outcome::Ended { lease: id, reason }
        }
    }

    /// The agent of a reserved lease reports itself online at the borrower:
    /// the lease becomes active. Confirming an active lease does nothing.
    pub fn confirm(&mut self, id: LeaseId, now: u64) -> Result<(), PoolError> {
        match self.state_of(id)? {
            LeaseState::Reserved => {
                self.activate(id, now);
                Ok(())
            }
            LeaseState::Active => Ok(()),
            state => Err(PoolError::WrongState {
                lease: id,
                state: state.name(),
                action: "confirm",
            }),
        }
    }

    /// The borrow for reserved lease `id` failed (the borrower refused, the
    /// agent could not go): the agent is released and the lease tries the
    /// next matching agent, or waits again, or gives up.
    pub fn fail(&mut self, id: LeaseId, reason: &str, now: u64) -> Result<Outcome, PoolError> {
        match self.state_of(id)? {
            LeaseState::Reserved => {}
            state => {
                return Err(PoolError::WrongState {
                    lease: id,
                    state: state.name(),
                    action: "fail a borrow",
                })
            }
        }
        let outcome = self.fail_reserved(id, reason, now);
        self.serve_queue(now);
        Ok(outcome)
    }

    pub(super) fn fail_reserved(&mut self, id: LeaseId, reason: &str, now: u64) -> Outcome {
        self.release_agent(id);
        let Some(lease) = self.leases.get_mut(&id) else {
            return Outcome::Ended {
                lease: id,
                reason: EndReason::Cancelled,
            };
        };
        let agent = lease.agent.take().unwrap_or_default();
        lease.attempts.push(Attempt {
            agent: agent.clone(),
            reason: reason.to_owned(),
            at_ms: now,
        });
        let attempts = lease.attempts.len();
        self.changed_leases.insert(id);
        self.record(
            now,
            Some(id),
            Some(&agent),
            "borrow-failed",
            reason.to_owned(),
        );
        if attempts >= self.config.max_attempts {
            let reason = EndReason::Failed {
                message: format!("the borrow failed on {attempts} agents; last: {reason}"),
            };
            self.end(id, reason.clone(), now);
            return Outcome::Ended { lease: id, reason };
        }
        self.place(id, now)
    }

    /// The node for reserved auto-lease `id` exists at its controller:
    /// its name, secret and transport go into the borrower, and the
    /// `borrow` is sent ([`Decision::Lend`]).
    pub fn provisioned(
        &mut self,
        id: LeaseId,
        node_name: &str,
        secret: Secret,
        transport: Option<control::Transport>,
        now: u64,
    ) -> Result<(), PoolError> {
        let lease = self.leases.get(&id).ok_or(PoolError::UnknownLease(id))?;
        let waiting = lease.state == LeaseState::Reserved
            && lease
                .request
                .origin
                .as_ref()
                .is_some_and(|o| !o.provisioned);
        if !waiting {
            return Err(PoolError::WrongState {
                lease: id,
                state: lease.state.name(),
                action: "provision",
            });
        }
        let mut request = lease.request.clone();
        request.borrower.node_name = node_name.to_owned();
        request.borrower.secret = secret;
        request.borrower.transport = transport;
        if let Some(origin) = request.origin.as_mut() {
            origin.provisioned = true;
        }
        request.validate().map_err(PoolError::InvalidRequest)?;
        let agent = lease.agent.clone().unwrap_or_default();
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.request = request;
        }
        self.changed_leases.insert(id);
        self.record(
            now,
            Some(id),
            Some(&agent),
            "provisioned",
            format!("node {node_name}"),
        );
        self.decisions
            .push_back(Decision::Lend { lease: id, agent });
        Ok(())
    }

    /// The node for reserved auto-lease `id` could not be made (refused,
    /// unreachable): the lease ends, its agent is free again.
    pub fn provision_failed(
        &mut self,
        id: LeaseId,
        reason: &str,
        now: u64,
    ) -> Result<(), PoolError> {
        match self.state_of(id)? {
            LeaseState::Reserved => {}
            state => {
                return Err(PoolError::WrongState {
                    lease: id,
                    state: state.name(),
                    action: "fail provisioning",
                })
            }
        }
        self.end(
            id,
            EndReason::Failed {
                message: format!("the node could not be made: {reason}"),
            },
            now,
        );
        self.serve_queue(now);
        Ok(())
    }

    pub(super) fn at_cap(&self, url: &str) -> bool {
        self.config
            .max_per_borrower
            .is_some_and(|cap| self.held.get(&borrower_key(url)).copied().unwrap_or(0) >= cap)
    }

    /// The free agent lease `id` should get: least recently lent, then by
    /// name; none if its borrower is at its cap.
    pub(super) fn pick(&self, id: LeaseId) -> Option<String> {
        let lease = self.leases.get(&id)?;
        self.pick_for(&lease.request, &lease.attempts)
    }

    /// [`Pool::pick`] for a request, skipping the agents already `tried`.
    pub(super) fn pick_for(&self, request: &LeaseRequest, tried: &[Attempt]) -> Option<String> {
        if self.at_cap(&request.borrower.url) || self.origin_at_cap(request) {
            return None;
        }
        self.agents
            .values()
            .filter(|agent| {
                agent.is_free()
                    && !tried.iter().any(|a| a.agent == agent.name)
                    && request.requirements.matches(&agent.labels)
            })
            .min_by_key(|agent| (agent.last_lent_ms, agent.name.as_str()))
            .map(|agent| agent.name.clone())
    }

    /// Whether the controller an auto-lease comes from already holds its
    /// `--max-agents`.
    pub(super) fn origin_at_cap(&self, request: &LeaseRequest) -> bool {
        request
            .origin
            .as_ref()
            .and_then(|o| o.max_agents)
            .is_some_and(|cap| {
                self.held
                    .get(&borrower_key(&request.borrower.url))
                    .copied()
                    .unwrap_or(0)
                    >= cap as usize
            })
    }

    /// Ties `agent` to lease `id`: the one place that does, and it refuses
    /// an agent that is not free.
    pub(super) fn reserve(&mut self, id: LeaseId, name: &str, now: u64) -> Result<(), PoolError> {
        let agent = self
            .agents
            .get_mut(name)
            .ok_or_else(|| PoolError::UnknownAgent(name.to_owned()))?;
        if !agent.is_free() {
            return Err(PoolError::AgentTaken {
                agent: name.to_owned(),
                lease: agent.lease,
            });
        }
        let lease = self
            .leases
            .get_mut(&id)
            .ok_or(PoolError::UnknownLease(id))?;
        agent.lease = Some(id);
        agent.last_lent_ms = Some(now);
        lease.state = LeaseState::Reserved;
        lease.agent = Some(name.to_owned());
        lease.since_ms = now;
        *self
            .held
            .entry(borrower_key(&lease.request.borrower.url))
            .or_default() += 1;
        let detail = format!("for {}", lease.request.borrower.url);
        self.queue.remove(&id);
        self.changed_leases.insert(id);
        self.changed_agents.insert(name.to_owned());
        let provision = lease
            .request
            .origin
            .as_ref()
            .is_some_and(|o| !o.provisioned);
        self.record(now, Some(id), Some(name), "reserved", detail);
        self.decisions.push_back(if provision {
            Decision::Provision {
                lease: id,
                agent: name.to_owned(),
            }
        } else {
            Decision::Lend {
                lease: id,
                agent: name.to_owned(),
            }
        });
        Ok(())
    }

    /// Unties lease `id` from its agent (the lease keeps the name).
    pub(super) fn release_agent(&mut self, id: LeaseId) {
        let Some(lease) = self.leases.get(&id) else {
            return;
        };
        let Some(name) = &lease.agent else {
            return;
        };
        let Some(agent) = self.agents.get_mut(name) else {
            return;
        };
        if agent.lease == Some(id) {
            agent.lease = None;
            self.changed_agents.insert(name.clone());
            let key = borrower_key(&lease.request.borrower.url);
            if let Some(count) = self.held.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.held.remove(&key);
                }
            }
        }
    }

    pub(super) fn activate(&mut self, id: LeaseId, now: u64) {
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        lease.state = LeaseState::Active;
        lease.since_ms = now;
        let agent = lease.agent.clone();
        let detail = format!("online at {}", lease.request.borrower.url);
        self.changed_leases.insert(id);
        self.record(now, Some(id), agent.as_deref(), "active", detail);
    }
}
