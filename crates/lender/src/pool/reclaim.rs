//! Reclaim: an agent idle at one borrower for long enough goes home for a
//! request another borrower is waiting with.

use std::time::Duration;

use control::When;

use super::*;

/// An agent idle at a borrower that the pool sends home for a waiting
/// request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaim {
    /// The agent.
    pub agent: String,
    /// Its current lease.
    pub lease: LeaseId,
    /// The waiting request it would serve.
    pub for_lease: LeaseId,
}

impl Pool {
    /// Agents worth reclaiming: for each waiting request (oldest first) that
    /// no reclaim already serves, the agent idle longest (at least
    /// `min_idle`) at another borrower that satisfies it. Changes nothing.
    pub fn reclaim_candidates(&self, now: u64, min_idle: Duration) -> Vec<Reclaim> {
        let min_idle = ms(min_idle);
        let served: BTreeSet<LeaseId> = self
            .leases
            .values()
            .filter_map(|lease| match lease.state {
                LeaseState::Returning(ReturnCause::Reclaimed { for_lease }) => Some(for_lease),
                _ => None,
            })
            .collect();
        let mut picked: BTreeSet<&str> = BTreeSet::new();
        let mut out = Vec::new();
        for waiting in self.queue() {
            if waiting.deadline_ms <= now
                || served.contains(&waiting.id)
                || self.at_cap(&waiting.request.borrower.url)
            {
                continue;
            }
            let best = self
                .agents
                .values()
                .filter_map(|agent| {
                    let id = agent.lease?;
                    let current = self.leases.get(&id)?;
                    let idle_since = agent.idle_since_ms?;
                    let eligible = agent.connected
                        && !agent.busy
                        && current.state == LeaseState::Active
                        && now.saturating_sub(idle_since) >= min_idle
                        && !same_url(&current.request.borrower.url, &waiting.request.borrower.url)
                        && !picked.contains(agent.name.as_str())
                        && !waiting.tried(&agent.name)
                        && waiting.request.requirements.matches(&agent.labels);
                    eligible.then_some((idle_since, agent.name.as_str(), id))
                })
                .min();
            if let Some((_, name, lease)) = best {
                picked.insert(name);
                out.push(Reclaim {
                    agent: name.to_owned(),
                    lease,
                    for_lease: waiting.id,
                });
            }
        }
        out
    }

    /// Sends home the agents [`Pool::reclaim_candidates`] picks (when idle),
    /// and returns them.
    pub fn reclaim(&mut self, now: u64, min_idle: Duration) -> Vec<Reclaim> {
        let picked = self.reclaim_candidates(now, min_idle);
        for reclaim in &picked {
            let cause = ReturnCause::Reclaimed {
                for_lease: reclaim.for_lease,
            };
            self.start_return(reclaim.lease, cause, When::Idle, now);
        }
        picked
    }
}
