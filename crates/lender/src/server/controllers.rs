//! Watching the registered Jenkins controllers (`jnlp-lender controller
//! add`): one task re-reads the `controllers` table every `--poll` through
//! the server's store reader (so `controller add/remove` while `serve` runs
//! is picked up within one poll), and runs one watcher task per controller.
//! A watcher reads the controller's version and queue every `--poll`
//! (backing off, up to [`MAX_BACKOFF`], while it fails) and keeps its
//! [`Status`] (in the [`Registry`]) for `GET /v1/controllers`; a controller that starts failing
//! is announced as a `controller_failing` event.
//!
//! The API token goes only into the [`JenkinsClient`]'s `Authorization`
//! header; errors, events and log lines never carry it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::driver::{Input, ServerEvent};
use super::reader::ReadStore;
use super::registry::{Registry, Status};
use crate::api::DemandEvent;
use crate::controllers::ControllerConfig;
use crate::jenkins::{Computer, JenkinsClient, JenkinsError};
use crate::pool::DemandItem;

/// The shortest poll interval (a zero `--poll` must not spin).
pub const MIN_POLL: Duration = Duration::from_millis(100);
/// The longest wait between two polls of a failing controller.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Re-reads the table every `poll` and keeps one watcher per controller
/// (restarted when its row changed), until `cancel`.
pub(crate) async fn run(
    reader: ReadStore,
    registry: Arc<Registry>,
    poll: Duration,
    events: broadcast::Sender<Arc<ServerEvent>>,
    inputs: mpsc::Sender<Input>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let poll = poll.max(MIN_POLL);
    let mut watchers: BTreeMap<String, (ControllerConfig, CancellationToken)> = BTreeMap::new();
    loop {
        match reader.controllers().await {
            Ok(configs) => {
                let configs: BTreeMap<String, ControllerConfig> =
                    configs.into_iter().map(|c| (c.name.clone(), c)).collect();
                watchers.retain(|name, (config, stop)| {
                    let keep = configs.get(name) == Some(config);
                    if !keep {
                        stop.cancel();
                        registry.lock().remove(name);
                        tracing::info!(controller = %name, "controller removed or changed: watcher stopped");
                    }
                    keep
                });
                for (name, config) in configs {
                    if watchers.contains_key(&name) {
                        continue;
                    }
                    let stop = cancel.child_token();
                    registry
                        .lock()
                        .insert(name.clone(), (config.clone(), Status::default()));
                    match config.client() {
                        Ok(client) => {
                            let span = tracing::info_span!("controller", controller = %name, url = %config.url);
                            tracker.spawn(
                                watch(
                                    config.clone(),
                                    client,
                                    registry.clone(),
                                    poll,
                                    events.clone(),
                                    inputs.clone(),
                                    stop.clone(),
                                )
                                .instrument(span),
                            );
                            tracing::info!(controller = %name, url = %config.url, "watching controller");
                        }
                        Err(err) => {
                            // A row edited by hand: say so where users look.
                            registry.update(&name, |s| {
                                s.ok = Some(false);
                                s.last_error = Some(err.to_string());
                            });
                            tracing::warn!(controller = %name, %err, "controller cannot be used");
                        }
                    }
                    watchers.insert(name, (config, stop));
                }
            }
            Err(err) => tracing::error!(%err, "cannot read the registered controllers"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// Polls one controller until `stop`.
async fn watch(
    config: ControllerConfig,
    client: JenkinsClient,
    registry: Arc<Registry>,
    poll: Duration,
    events: broadcast::Sender<Arc<ServerEvent>>,
    inputs: mpsc::Sender<Input>,
    stop: CancellationToken,
) {
    let mut seen: BTreeSet<u64> = BTreeSet::new();
    loop {
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = poll_once(&config, &client) => result,
        };
        let now = control::now_ms();
        let mut failing_now = None;
        let failures = match result {
            Ok((version, waiting, items, nodes)) => {
                let mut by_label: BTreeMap<String, usize> = BTreeMap::new();
                for item in &items {
                    *by_label.entry(item.requirements.to_string()).or_default() += 1;
                }
                // `demand` events for items not seen before.
                let now_seen: BTreeSet<u64> = items.iter().map(|i| i.queue_id).collect();
                for item in items.iter().filter(|i| !seen.contains(&i.queue_id)) {
                    let _ = events.send(Arc::new(ServerEvent::Demand(DemandEvent {
                        controller: config.name.clone(),
                        queue_id: item.queue_id,
                        requirements: item.requirements.to_string(),
                        in_queue_since_ms: item.in_queue_since_ms,
                    })));
                }
                seen = now_seen;
                // Sent with --no-demand too (no items): the driver learns
                // the controller's credentials (a home it may take nodes
                // offline at).
                let input = Input::Demand {
                    config: Box::new(config.clone()),
                    items,
                    nodes,
                };
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = inputs.send(input) => {}
                }
                registry.update(&config.name, |s| {
                    if s.ok == Some(false) {
                        tracing::info!("controller recovered");
                    }
                    s.ok = Some(true);
                    s.version = version;
                    s.waiting_items = waiting;
                    s.by_label = by_label;
                    s.polled_ms = Some(now);
                    s.failures = 0;
                });
                0
            }
            Err(err) => {
                let message = err.to_string();
                let mut failures = 0;
                let view = registry.update(&config.name, |s| {
                    let news = s.ok != Some(false) || s.last_error.as_deref() != Some(&message);
                    if news {
                        tracing::warn!(%err, status = ?err.status(), "controller failing");
                    }
                    s.ok = Some(false);
                    s.last_error = Some(message.clone());
                    s.polled_ms = Some(now);
                    s.failures = s.failures.saturating_add(1);
                    let code = match (&err, err.status()) {
                        (_, Some(code)) => code.to_string(),
                        (JenkinsError::Unreachable { .. }, None) => "unreachable".to_owned(),
                        _ => "other".to_owned(),
                    };
                    *s.errors.entry(code).or_default() += 1;
                    failures = s.failures;
                    failing_now = news.then_some(());
                });
                if let (Some(view), Some(())) = (view, failing_now) {
                    let _ = events.send(Arc::new(ServerEvent::ControllerFailing(view)));
                }
                failures
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff(poll, failures)) => {}
        }
    }
}

/// The version, how many items wait (buildable, not pending, queued at
/// least `demand_after` ago), and those of them with a label the lender
/// can read (demand).
async fn poll_once(
    config: &ControllerConfig,
    client: &JenkinsClient,
) -> Result<(Option<String>, usize, Vec<DemandItem>, Vec<Computer>), JenkinsError> {
    let root = client.root().await?;
    let version = root.version.map(|v| v.as_str().to_owned());
    if !config.options.demand {
        return Ok((version, 0, Vec::new(), Vec::new()));
    }
    let items = client.queue().await?;
    let now = control::now_ms();
    let after = u64::try_from(config.options.demand_after.as_millis()).unwrap_or(u64::MAX);
    let waiting = items
        .iter()
        .filter(|i| i.is_demand() && now.saturating_sub(i.in_queue_since) >= after)
        .count();
    let demand = super::provision::demand_items(config, client, &items, now).await?;
    // The lender's own nodes: for reconciling (not with --keep-nodes) and
    // for seeing an item's build start on its lent node (the metric).
    let nodes = client
        .computers()
        .await?
        .into_iter()
        .filter(|c| c.name.starts_with(&config.options.node_prefix))
        .collect();
    Ok((version, waiting, demand, nodes))
}

/// `poll` after a success; doubling with each failure in a row, up to
/// [`MAX_BACKOFF`] (or `poll`, if longer).
fn backoff(poll: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.min(16);
    poll.saturating_mul(factor).min(MAX_BACKOFF.max(poll))
}

#[cfg(test)]
mod tests {
    use super::super::registry::same_url;
    use super::*;

    #[test]
    fn backs_off_to_a_cap() {
        let poll = Duration::from_secs(5);
        assert_eq!(backoff(poll, 0), poll);
        assert_eq!(backoff(poll, 1), Duration::from_secs(10));
        assert_eq!(backoff(poll, 5), MAX_BACKOFF);
        assert_eq!(backoff(poll, u32::MAX), MAX_BACKOFF);
        assert_eq!(
            backoff(Duration::from_secs(120), 3),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn urls_compare_loosely() {
        assert_eq!(
            same_url("HTTP://B.example:8080/"),
            same_url("http://b.example:8080")
        );
        assert_ne!(same_url("http://b/x/"), same_url("http://b/X"));
    }
}
