//! Lending on demand: one auto-lease per build waiting at a registered
//! controller, ended when the build leaves the queue.

use std::collections::BTreeSet;
use std::time::Duration;

use control::When;

use super::decision::outcome_lease;
use super::*;

/// A build waiting at a registered controller, as [`Pool::demand`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemandItem {
    /// The queue item's id there.
    pub queue_id: u64,
    /// When it was queued (unix ms).
    pub in_queue_since_ms: u64,
    /// The label expression it waits for.
    pub requirements: control::labels::Expr,
}

/// What every auto-lease at one controller shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemandTemplate {
    /// The controller's URL (the borrower).
    pub url: String,
    /// `--max-agents`.
    pub max_agents: Option<u32>,
    /// `--idle-return`, enforced by the agent.
    pub idle_return: Option<Duration>,
    /// `--one-build`: each lease ends once its first build is over.
    pub one_build: bool,
}

/// The API client name auto-leases of `controller` are filed under.
pub fn demand_client(controller: &str) -> String {
    format!("controller:{controller}")
}

impl Pool {
    /// The items waiting at controller `controller` now: an auto-lease is
    /// requested for each one that has none (oldest item first), and the
    /// queued or reserved auto-leases of items no longer waiting end (a
    /// reserved one whose `borrow` went out is recalled). Leases whose
    /// agent is online there (active) are left alone: their item may have
    /// left the queue by starting on it. Returns the new leases.
    pub fn demand(
        &mut self,
        controller: &str,
        template: &DemandTemplate,
        items: &[DemandItem],
        now: u64,
    ) -> Vec<LeaseId> {
        let waiting: BTreeSet<u64> = items.iter().map(|i| i.queue_id).collect();
        let mut covered = BTreeSet::new();
        let mut gone = Vec::new();
        for lease in self.leases.values() {
            let Some(origin) = lease.request.origin.as_ref() else {
                continue;
            };
            if origin.controller != controller {
                continue;
            }
            // An item served once is not served again (a refused create
            // skips the item; it does not loop).
            covered.insert(origin.queue_id);
            if matches!(lease.state, LeaseState::Ended(_)) {
                continue;
            }
            if !waiting.contains(&origin.queue_id) {
                gone.push((lease.id, lease.state.clone(), origin.provisioned));
            }
        }
        for (id, state, provisioned) in gone {
            match state {
                LeaseState::Queued => self.end(id, EndReason::Cancelled, now),
                LeaseState::Reserved if !provisioned => {
                    self.end(id, EndReason::Cancelled, now);
                    self.serve_queue(now);
                }
                LeaseState::Reserved => {
                    self.start_return(id, ReturnCause::Requested, When::Idle, now)
                }
                _ => {}
            }
        }
        let mut fresh: Vec<&DemandItem> = items
            .iter()
            .filter(|i| !covered.contains(&i.queue_id))
            .collect();
        fresh.sort_by_key(|i| (i.in_queue_since_ms, i.queue_id));
        let mut created = Vec::new();
        for item in fresh {
            let request = LeaseRequest {
                requirements: item.requirements.clone(),
                borrower: Borrower {
                    url: template.url.clone(),
                    node_name: String::new(),
                    secret: Secret::new(""),
                    transport: None,
                },
                client: demand_client(controller),
                lease: None,
                idle_return: template.idle_return,
                wait: MAX_WAIT,
                origin: Some(Origin {
                    controller: controller.to_owned(),
                    queue_id: item.queue_id,
                    in_queue_since_ms: item.in_queue_since_ms,
                    max_agents: template.max_agents,
                    provisioned: false,
                    one_build: template.one_build,
                    built: false,
                }),
            };
            match self.request_lease(request, now) {
                Ok(outcome) => created.push(outcome_lease(&outcome)),
                Err(err) => {
                    self.record(
                        now,
                        None,
                        None,
                        "demand-refused",
                        format!("controller {controller} item {}: {err}", item.queue_id),
                    );
                }
            }
        }
        created
    }
}
