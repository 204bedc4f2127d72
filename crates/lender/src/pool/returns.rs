//! Ending leases: a return asked for, a lease's agent going home, the end
//! recorded, and `--one-build` auto-leases ended after their build.

use control::When;

use super::*;

impl Pool {
    /// Returns lease `id`: a waiting request is withdrawn; an agent reserved
    /// or lent is asked to go home (`when` idle, or now) and the lease ends
    /// once it reports itself there.
    pub fn return_lease(&mut self, id: LeaseId, when: When, now: u64) -> Result<(), PoolError> {
        match self.state_of(id)? {
            LeaseState::Queued => {
                self.end(id, EndReason::Cancelled, now);
                Ok(())
            }
            LeaseState::Reserved | LeaseState::Active => {
                self.start_return(id, ReturnCause::Requested, when, now);
                Ok(())
            }
            LeaseState::Returning(_) => {
                if when == When::Now {
                    self.start_return(id, ReturnCause::Requested, when, now);
                }
                Ok(())
            }
            state @ LeaseState::Ended(_) => Err(PoolError::WrongState {
                lease: id,
                state: state.name(),
                action: "return",
            }),
        }
    }

    pub(super) fn start_return(&mut self, id: LeaseId, cause: ReturnCause, when: When, now: u64) {
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        lease.state = LeaseState::Returning(cause);
        lease.since_ms = now;
        let agent = lease.agent.clone().unwrap_or_default();
        self.changed_leases.insert(id);
        let detail = match cause {
            ReturnCause::Requested => format!("requested, when {when:?}"),
            ReturnCause::Reclaimed { for_lease } => {
                format!("reclaimed for waiting request {for_lease}")
            }
        };
        self.record(now, Some(id), Some(&agent), "returning", detail);
        self.decisions.push_back(Decision::Recall {
            lease: id,
            agent,
            when,
        });
    }

    pub(super) fn end(&mut self, id: LeaseId, reason: EndReason, now: u64) {
        self.release_agent(id);
        self.queue.remove(&id);
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        lease.state = LeaseState::Ended(reason.clone());
        lease.since_ms = now;
        let agent = lease.agent.clone();
        self.changed_leases.insert(id);
        self.record(now, Some(id), agent.as_deref(), "ended", reason.to_string());
        self.decisions
            .push_back(Decision::Ended { lease: id, reason });
    }

    /// `--one-build`: an active auto-lease whose agent was busy there and
    /// is idle again has had its build; the agent is recalled.
    pub(super) fn one_build(&mut self, id: LeaseId, busy: bool, now: u64) {
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        let Some(origin) = lease.request.origin.as_mut().filter(|o| o.one_build) else {
            return;
        };
        if busy {
            if !origin.built {
                origin.built = true;
                self.changed_leases.insert(id);
                self.record(now, Some(id), None, "building", "one build".into());
            }
        } else if origin.built {
            self.start_return(id, ReturnCause::Requested, When::Idle, now);
        }
    }
}
