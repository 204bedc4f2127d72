//! What the lender knows of each registered controller (its config and the
//! last polls' [`Status`]), shared by the watchers, which write it, and the
//! driver and the HTTP API, which read it (`GET /v1/controllers`).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use crate::api::{AgentView, ControllerView};
use crate::controllers::ControllerConfig;

/// What the last polls of a controller found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Status {
    /// `None` until the first poll ends.
    pub ok: Option<bool>,
    pub last_error: Option<String>,
    pub version: Option<String>,
    pub waiting_items: usize,
    pub polled_ms: Option<u64>,
    /// Polls failed in a row.
    pub failures: u32,
    /// Waiting items with a label, by label, at the last poll.
    pub by_label: BTreeMap<String, usize>,
    /// Failed polls by HTTP status (`unreachable`, `other`).
    pub errors: BTreeMap<String, u64>,
    /// The controller refused a lent node's secret, or the lender's user
    /// may not make nodes: failing, whatever the polls say, until the
    /// registration changes (`controller add --replace`), a node is made
    /// there (not after a refused secret), or the lender restarts.
    pub refused: Option<String>,
}

/// The controllers as last read from the table, and their statuses.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    inner: Mutex<BTreeMap<String, (ControllerConfig, Status)>>,
}

impl Registry {
    pub(super) fn lock(&self) -> MutexGuard<'_, BTreeMap<String, (ControllerConfig, Status)>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every controller as the API shows it; `agents` tells which agents
    /// are borrowed where.
    pub fn views(&self, agents: &[AgentView]) -> Vec<ControllerView> {
        self.lock()
            .values()
            .map(|(config, status)| view(config, status, agents))
            .collect()
    }

    /// Notes a failure met while lending there (a create refused).
    pub fn note_error(&self, name: &str, error: &str) {
        self.update(name, |s| s.last_error = Some(error.to_owned()));
    }

    /// Marks the controller failing: it refused the secret of a node the
    /// lender made there. Returns its view for the `controller_failing`
    /// event.
    pub fn note_refused(&self, name: &str, error: &str) -> Option<ControllerView> {
        self.update(name, |s| {
            s.refused = Some(error.to_owned());
            s.last_error = Some(error.to_owned());
        })
    }

    /// A node was made there: a create refused earlier works now.
    pub fn clear_refused(&self, name: &str) {
        self.update(name, |s| s.refused = None);
    }

    /// The controllers' metrics (see `metrics`).
    pub fn render_metrics(&self) -> String {
        use super::metrics::{header, label_value};
        use std::fmt::Write as _;
        let inner = self.lock();
        let mut out = String::new();
        header(
            &mut out,
            "jnlp_lender_demand_waiting_items",
            "gauge",
            "Waiting items with a label at each registered controller, at its last poll.",
        );
        for (name, (_, status)) in inner.iter() {
            for (label, n) in &status.by_label {
                let _ = writeln!(
                    out,
                    "jnlp_lender_demand_waiting_items{{controller=\"{}\",label=\"{}\"}} {n}",
                    label_value(name),
                    label_value(label)
                );
            }
        }
        header(
            &mut out,
            "jnlp_lender_controller_errors_total",
            "counter",
            "Failed polls of registered controllers, by HTTP status.",
        );
        for (name, (_, status)) in inner.iter() {
            for (code, n) in &status.errors {
                let _ = writeln!(
                    out,
                    "jnlp_lender_controller_errors_total{{controller=\"{}\",status=\"{code}\"}} {n}",
                    label_value(name)
                );
            }
        }
        out
    }

    pub(super) fn update(
        &self,
        name: &str,
        change: impl FnOnce(&mut Status),
    ) -> Option<ControllerView> {
        let mut inner = self.lock();
        let (config, status) = inner.get_mut(name)?;
        change(status);
        Some(view(config, status, &[]))
    }
}

fn view(config: &ControllerConfig, status: &Status, agents: &[AgentView]) -> ControllerView {
    let url = same_url(&config.url);
    ControllerView {
        name: config.name.clone(),
        url: config.url.clone(),
        user: config.user.clone(),
        state: match (status.ok, &status.refused) {
            (_, Some(_)) | (Some(false), None) => "failing",
            (None, None) => "pending",
            (Some(true), None) => "ok",
        }
        .to_owned(),
        last_error: status.refused.clone().or_else(|| status.last_error.clone()),
        jenkins_version: status.version.clone(),
        waiting_items: status.waiting_items,
        agents_lent: agents
            .iter()
            .filter(|a| a.borrower_url.as_deref().map(same_url) == Some(url.clone()))
            .count(),
        polled_ms: status.polled_ms,
        demand: config.options.demand,
    }
}

/// A URL compared without its trailing slashes and the case of its scheme
/// and host.
pub(crate) fn same_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            format!(
                "{}://{}{path}",
                scheme.to_ascii_lowercase(),
                host.to_ascii_lowercase()
            )
        }
        None => url.to_owned(),
    }
}
