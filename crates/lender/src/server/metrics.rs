//! `GET /metrics`: the pool in Prometheus' text format.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `jnlp_lender_agents` | gauge | `state`: free, leased, busy, away, offline |
//! | `jnlp_lender_agent_links` | gauge | |
//! | `jnlp_lender_leases` | gauge | `state`: queued, reserved, active, returning |
//! | `jnlp_lender_queue_length` | gauge | |
//! | `jnlp_lender_lease_wait_seconds` | summary | `quantile` 0.5, 0.9, 0.99 over the last 1,024 leases |
//! | `jnlp_lender_borrow_failures_total` | counter | |
//! | `jnlp_lender_leases_ended_total` | counter | `reason`: returned, reclaimed, agent_left, timed_out, failed, cancelled |
//! | `jnlp_lender_store_failures_total` | counter | `change`: client (refused, answered 503), reported (kept, retried) |
//! | `jnlp_lender_store_unsaved` | gauge | 1 while reported changes wait for the database (nothing is decided meanwhile) |
//! | `jnlp_lender_auto_leases` | gauge | `controller`, `state`: auto-leases (lending on demand) not ended |
//! | `jnlp_lender_demand_build_started_seconds` | summary (sum, count) | `controller`: from an item's `inQueueSince` to its build starting on the lent node (the build's own start time, seen at the next poll) |
//! | `jnlp_lender_demand_agent_online_seconds` | summary (sum, count) | `controller`: from an item's `inQueueSince` to its agent online there |
//! | `jnlp_lender_demand_waiting_items` | gauge | `controller`, `label`: waiting items with a label, at the last poll |
//! | `jnlp_lender_controller_errors_total` | counter | `controller`, `status`: failed polls by HTTP status (`unreachable`, `other` without one) |
//!
//! Counters start at zero with each process.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt::Write as _;

use crate::api::{agent_state, end_kind};
use crate::pool::{Changes, EndReason, LeaseId, LeaseState, Pool};

/// Wait times kept for the quantiles.
const WINDOW: usize = 1024;

const AGENT_STATES: [&str; 5] = ["free", "leased", "busy", "away", "offline"];
const LEASE_STATES: [&str; 4] = ["queued", "reserved", "active", "returning"];
const END_KINDS: [&str; 6] = [
    "returned",
    "reclaimed",
    "agent_left",
    "timed_out",
    "failed",
    "cancelled",
];

/// Counters the pool does not keep itself.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    borrow_failures: u64,
    ended: BTreeMap<&'static str, u64>,
    /// From request to active, in ms, newest last.
    waits: VecDeque<u64>,
    wait_sum_ms: u64,
    wait_count: u64,
    /// Leases seen active, so that each wait is counted once.
    active: HashSet<LeaseId>,
    /// Commits the store refused: a client's change, a reported one.
    store_failures: [u64; 2],
    /// Per controller: (sum ms, count) from `inQueueSince` to active.
    served: BTreeMap<String, (u64, u64)>,
    /// Per controller: (sum ms, count) from `inQueueSince` to the item's
    /// build started.
    started: BTreeMap<String, (u64, u64)>,
    /// Auto-leases whose build start was counted (each once).
    started_leases: HashSet<LeaseId>,
}

/// Whose change a refused commit held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    /// A client's request: refused with 503.
    Client,
    /// What agents or timers changed: kept and retried.
    Reported,
}

impl Metrics {
    /// Counts what a batch of changes shows: leases that became active
    /// (their wait) and failed borrows.
    pub fn observe(&mut self, changes: &Changes) {
        for lease in &changes.leases {
            match lease.state {
                LeaseState::Active if self.active.insert(lease.id) => {
                    if let Some(origin) = &lease.request.origin {
                        let served = lease.since_ms.saturating_sub(origin.in_queue_since_ms);
                        let entry = self.served.entry(origin.controller.clone()).or_default();
                        entry.0 = entry.0.saturating_add(served);
                        entry.1 += 1;
                    }
                    let wait = lease.since_ms.saturating_sub(lease.requested_ms);
                    if self.waits.len() == WINDOW {
                        self.waits.pop_front();
                    }
                    self.waits.push_back(wait);
                    self.wait_sum_ms = self.wait_sum_ms.saturating_add(wait);
                    self.wait_count += 1;
                }
                LeaseState::Ended(_) => {
                    self.active.remove(&lease.id);
                }
                _ => {}
            }
        }
        self.borrow_failures += changes
            .audit
            .iter()
            .filter(|entry| entry.action == "borrow-failed")
            .count() as u64;
    }

    /// Counts the build of auto-lease `lease`'s item started at
    /// `started_ms` (once per lease).
    pub fn build_started(
        &mut self,
        controller: &str,
        lease: LeaseId,
        in_queue_since_ms: u64,
        started_ms: u64,
    ) {
        if !self.started_leases.insert(lease) {
            return;
        }
        if self.started_leases.len() > 4 * WINDOW {
            // Old leases will not be seen again; keep the set bounded.
            self.started_leases.clear();
            self.started_leases.insert(lease);
        }
        let entry = self.started.entry(controller.to_owned()).or_default();
        entry.0 = entry
            .0
            .saturating_add(started_ms.saturating_sub(in_queue_since_ms));
        entry.1 += 1;
    }

    /// Counts a commit the store refused.
    pub fn store_failed(&mut self, kind: ChangeKind) {
        self.store_failures[kind as usize] += 1;
    }

    /// Counts an ended lease.
    pub fn ended(&mut self, reason: &EndReason) {
        *self.ended.entry(end_kind(reason)).or_default() += 1;
    }

    /// The text for `GET /metrics`.
    pub fn render(&self, pool: &Pool, links: usize, unsaved: bool) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "jnlp_lender_store_failures_total",
            "counter",
            "Commits the database refused.",
        );
        for (change, n) in ["client", "reported"].iter().zip(self.store_failures) {
            let _ = writeln!(
                out,
                "jnlp_lender_store_failures_total{{change=\"{change}\"}} {n}"
            );
        }
        header(
            &mut out,
            "jnlp_lender_store_unsaved",
            "gauge",
            "1 while reported changes wait for the database.",
        );
        let _ = writeln!(out, "jnlp_lender_store_unsaved {}", u8::from(unsaved));
        let mut agents: BTreeMap<&str, u64> = AGENT_STATES.iter().map(|s| (*s, 0)).collect();
        for agent in pool.agents() {
            *agents.entry(agent_state(agent)).or_default() += 1;
        }
        header(&mut out, "jnlp_lender_agents", "gauge", "Agents by state.");
        for (state, n) in &agents {
            let _ = writeln!(out, "jnlp_lender_agents{{state=\"{state}\"}} {n}");
        }
        header(
            &mut out,
            "jnlp_lender_agent_links",
            "gauge",
            "Agent links connected.",
        );
        let _ = writeln!(out, "jnlp_lender_agent_links {links}");

        let mut leases: BTreeMap<&str, u64> = LEASE_STATES.iter().map(|s| (*s, 0)).collect();
        for lease in pool.leases() {
            if !matches!(lease.state, LeaseState::Ended(_)) {
                *leases.entry(lease.state.name()).or_default() += 1;
            }
        }
        header(
            &mut out,
            "jnlp_lender_leases",
            "gauge",
            "Leases not ended, by state.",
        );
        for (state, n) in &leases {
            let _ = writeln!(out, "jnlp_lender_leases{{state=\"{state}\"}} {n}");
        }
        let mut auto: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for lease in pool.leases() {
            if let (Some(origin), false) = (
                &lease.request.origin,
                matches!(lease.state, LeaseState::Ended(_)),
            ) {
                *auto
                    .entry((origin.controller.as_str(), lease.state.name()))
                    .or_default() += 1;
            }
        }
        header(
            &mut out,
            "jnlp_lender_auto_leases",
            "gauge",
            "Auto-leases (lending on demand) not ended, by controller and state.",
        );
        for ((controller, state), n) in &auto {
            let _ = writeln!(
                out,
                "jnlp_lender_auto_leases{{controller=\"{}\",state=\"{state}\"}} {n}",
                label_value(controller)
            );
        }
        for (name, help, values) in [
            (
                "jnlp_lender_demand_build_started_seconds",
                "From a waiting item's inQueueSince to its build started on the lent node.",
                &self.started,
            ),
            (
                "jnlp_lender_demand_agent_online_seconds",
                "From a waiting item's inQueueSince to its agent online at the controller.",
                &self.served,
            ),
        ] {
            header(&mut out, name, "summary", help);
            for (controller, (sum, count)) in values {
                let controller = label_value(controller);
                let _ = writeln!(
                    out,
                    "{name}_sum{{controller=\"{controller}\"}} {}",
                    seconds(*sum)
                );
                let _ = writeln!(out, "{name}_count{{controller=\"{controller}\"}} {count}");
            }
        }
        header(
            &mut out,
            "jnlp_lender_queue_length",
            "gauge",
            "Requests waiting for an agent.",
        );
        let _ = writeln!(out, "jnlp_lender_queue_length {}", pool.queue().count());

        header(
            &mut out,
            "jnlp_lender_lease_wait_seconds",
            "summary",
            "Time from request to active lease.",
        );
        let mut sorted: Vec<u64> = self.waits.iter().copied().collect();
        sorted.sort_unstable();
        for q in [0.5, 0.9, 0.99] {
            let value = quantile(&sorted, q).map_or("NaN".to_owned(), seconds);
            let _ = writeln!(
                out,
                "jnlp_lender_lease_wait_seconds{{quantile=\"{q}\"}} {value}"
            );
        }
        let _ = writeln!(
            out,
            "jnlp_lender_lease_wait_seconds_sum {}",
            seconds(self.wait_sum_ms)
        );
        let _ = writeln!(
            out,
            "jnlp_lender_lease_wait_seconds_count {}",
            self.wait_count
        );

        header(
            &mut out,
            "jnlp_lender_borrow_failures_total",
            "counter",
            "Borrows that failed (refused by the borrower, agent could not go).",
        );
        let _ = writeln!(
            out,
            "jnlp_lender_borrow_failures_total {}",
            self.borrow_failures
        );
        header(
            &mut out,
            "jnlp_lender_leases_ended_total",
            "counter",
            "Leases ended, by reason.",
        );
        for kind in END_KINDS {
            let n = self.ended.get(kind).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "jnlp_lender_leases_ended_total{{reason=\"{kind}\"}} {n}"
            );
        }
        out
    }
}

/// A Prometheus label value: `\\`, `"` and newlines escaped.
pub(crate) fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn seconds(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

/// The nearest-rank quantile of sorted values.
fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn nearest_rank_quantiles() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&values, 0.5), Some(50));
        assert_eq!(quantile(&values, 0.99), Some(99));
        assert_eq!(quantile(&[7], 0.9), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
