//! The queue: requests that found no free agent wait, first come first
//! served, until their deadline; a freed agent serves the oldest it
//! satisfies.

use super::*;

impl Pool {
    /// Ends every waiting request whose deadline has passed, with a message
    /// saying what held it up. Returns their ids.
    pub fn expire_queue(&mut self, now: u64) -> Vec<LeaseId> {
        let expired: Vec<LeaseId> = self
            .queue()
            .filter(|lease| lease.deadline_ms <= now)
            .map(|lease| lease.id)
            .collect();
        for &id in &expired {
            let message = self.wait_message(id);
            self.end(id, EndReason::TimedOut { message }, now);
        }
        expired
    }

    /// How many of `client`'s requests wait in the queue.
    pub(super) fn queued_of(&self, client: &str) -> usize {
        self.queue().filter(|l| l.request.client == client).count()
    }

    /// Gives free agents to waiting requests, oldest request first.
    pub(super) fn serve_queue(&mut self, now: u64) {
        if self.queue.is_empty() || !self.agents.values().any(Agent::is_free) {
            return;
        }
        // Oldest first: an auto-lease by its item's time in its
        // controller's queue (so the oldest waiting build across
        // controllers goes first), any other by its request.
        let mut waiting: Vec<(u64, LeaseId)> = self
            .queue
            .iter()
            .filter_map(|id| {
                let lease = self.leases.get(id)?;
                let since = lease
                    .request
                    .origin
                    .as_ref()
                    .map_or(lease.requested_ms, |o| o.in_queue_since_ms);
                Some((since, *id))
            })
            .collect();
        waiting.sort_unstable();
        for (_, id) in waiting {
            let live = self.leases.get(&id).is_some_and(|l| l.deadline_ms > now);
            if !live {
                continue;
            }
            if let Some(agent) = self.pick(id) {
                // `pick` only offers free agents, so this cannot be refused.
                let _ = self.reserve(id, &agent, now);
                if !self.agents.values().any(Agent::is_free) {
                    return;
                }
            }
        }
    }

    /// Why lease `id` found no agent: for the borrower's error.
    pub(super) fn wait_message(&self, id: LeaseId) -> String {
        let Some(lease) = self.leases.get(&id) else {
            return String::new();
        };
        let expr = &lease.request.requirements;
        let wait = humantime::format_duration(lease.request.wait);
        let matching: Vec<&Agent> = self
            .agents
            .values()
            .filter(|agent| expr.matches(&agent.labels))
            .collect();
        let mut message = if matching.is_empty() {
            format!("no agent in the pool matches `{expr}` (waited {wait})")
        } else {
            let away = matching
                .iter()
                .filter(|a| a.lease.is_some() || a.place != Place::Home)
                .count();
            let offline = matching.iter().filter(|a| !a.connected).count();
            let busy = matching
                .iter()
                .filter(|a| a.connected && a.busy && a.place == Place::Home && a.lease.is_none())
                .count();
            format!(
                "no agent matching `{expr}` became free within {wait}: {} match \
                 ({away} lent or away, {busy} busy at home, {offline} not connected)",
                matching.len()
            )
        };
        if let Some(cap) = self.config.max_per_borrower {
            if self.at_cap(&lease.request.borrower.url) {
                message.push_str(&format!(
                    "; {} already holds its limit of {cap} agents",
                    lease.request.borrower.url
                ));
            }
        }
        if let Some(last) = lease.attempts.last() {
            message.push_str(&format!(
                "; {} borrow(s) failed, last on {}: {}",
                lease.attempts.len(),
                last.agent,
                last.reason
            ));
        }
        message
    }
}
