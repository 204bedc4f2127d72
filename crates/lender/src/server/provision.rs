//! Lending on demand, the I/O half: turning a registered controller's
//! queue into [`DemandItem`]s, making a lent agent's node (create or
//! reuse `<prefix><agent>`, read its secret, pick the transport), deleting
//! it when the lease ends. Each runs in a task whose result goes back to
//! the driver as an input; the decisions stay in the pool.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use control::Transport;

use crate::controllers::ControllerConfig;
use crate::jenkins::why::{self, Wanted};
use crate::jenkins::{Computer, JenkinsClient, JenkinsError, NodeSpec, QueueItem};
use crate::pool::{DemandItem, LeaseId, Secret};
use control::labels::Expr;

/// Why a node could not be made.
#[derive(Debug)]
pub(crate) struct NotMade {
    /// For people (no secret in it).
    pub message: String,
    /// 401 or 403: the token or its permissions, not this item.
    pub denied: bool,
}

/// A node made for a lease: what the `borrow` needs.
#[derive(Debug)]
pub(crate) struct Provisioned {
    pub node: String,
    /// Made now (not reused).
    pub created: bool,
    pub secret: Secret,
    pub transport: Option<Transport>,
}

/// The waiting items of `items` that are demand at `now`: buildable, not
/// pending, queued at least `demand_after` ago, with a label the lender can
/// read. `computers` is fetched only when a `why` names a node.
pub(crate) async fn demand_items(
    config: &ControllerConfig,
    client: &JenkinsClient,
    items: &[QueueItem],
    now: u64,
) -> Result<Vec<DemandItem>, JenkinsError> {
    let after = u64::try_from(config.options.demand_after.as_millis()).unwrap_or(u64::MAX);
    let mut computers: Option<BTreeMap<String, Computer>> = None;
    let mut out = Vec::new();
    for item in items
        .iter()
        .filter(|i| i.is_demand() && now.saturating_sub(i.in_queue_since) >= after)
    {
        let wanted = item.why.as_deref().and_then(why::wanted);
        let expression = match wanted {
            Some(Wanted::Label(label)) => Some(label),
            other => match (&item.task.label_expression, other) {
                (Some(expression), _) => Some(expression.clone()),
                (None, Some(Wanted::Node(name) | Wanted::LabelOrNode(name))) => {
                    if computers.is_none() {
                        computers = Some(
                            client
                                .computers()
                                .await?
                                .into_iter()
                                .map(|c| (c.name.clone(), c))
                                .collect(),
                        );
                    }
                    match computers.as_ref() {
                        Some(all) if all.contains_key(&name) => {
                            named_node_requirement(&name, all, &config.options.node_prefix)
                        }
                        // No such node: the text named a label.
                        _ => Some(name),
                    }
                }
                (None, _) => None,
            },
        };
        let Some(requirements) = expression.and_then(|e| Expr::parse(&e).ok()) else {
            tracing::debug!(queue_id = item.id, why = ?item.why, "waiting item without a readable label");
            continue;
        };
        out.push(DemandItem {
            queue_id: item.id,
            in_queue_since_ms: item.in_queue_since,
            requirements,
        });
    }
    Ok(out)
}

/// What an item whose `why` names node `name` (`‘N’ is offline`,
/// `Waiting for next available executor on ‘N’`) can run on, if a lent
/// agent can serve it at all.
///
/// Jenkins names a node instead of the item's label when that label
/// matches exactly one node (`Queue.BuildableItem.getCauseOfBlockage`:
/// `label.getNodes().size() == 1` gives `BecauseNodeIsOffline` /
/// `BecauseNodeIsBusy`). The label is then either one that only N
/// carries, which an agent with all of N's labels satisfies, or N's
/// self-label (`Node.getSelfLabel`: the item is tied to N, e.g. Pipeline
/// `node('N')`), which no lent node (named `<prefix><agent>`) can ever
/// satisfy. Which one, `why` does not say, so:
/// - N is a node the lender made (its prefix): the label is the one N was
///   made for (a second item for it), N's labels;
/// - another node carries every label of N: a label made of N's labels
///   would match it too, so Jenkins would not have named N; the item is
///   tied to N itself and nothing is lent (None);
/// - N has no label but its name: tied to N (None);
/// - otherwise N's labels (assumed: a label only N carries; an item tied
///   to N is then lent an agent that cannot run it, which goes home after
///   its idle return).
fn named_node_requirement(
    name: &str,
    computers: &BTreeMap<String, Computer>,
    prefix: &str,
) -> Option<String> {
    let node = computers.get(name)?;
    let own: BTreeSet<&String> = node.labels.iter().filter(|l| **l != node.name).collect();
    let made_by_lender = !prefix.is_empty() && name.starts_with(prefix);
    let shared = computers
        .values()
        .any(|other| other.name != node.name && own.iter().all(|l| other.labels.contains(l)));
    if !made_by_lender && shared {
        tracing::debug!(node = %name, "the item is tied to the node itself; a lent agent cannot run it");
        return None;
    }
    node_expression(node)
}

/// `a && b && …` over a node's labels but its own name.
fn node_expression(node: &Computer) -> Option<String> {
    let atoms: Vec<String> = node
        .labels
        .iter()
        .filter(|l| **l != node.name)
        .map(|l| format!("\"{}\"", l.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    (!atoms.is_empty()).then(|| atoms.join(" && "))
}

/// Makes (or reuses) the node for `agent` at `config`'s controller and
/// reads its secret. `creates` serializes creates at one controller
/// (Jenkins' create is not thread-safe).
pub(crate) async fn provision(
    config: &ControllerConfig,
    lease: LeaseId,
    agent: &str,
    labels: &BTreeSet<String>,
    creates: Arc<tokio::sync::Mutex<()>>,
) -> Result<Provisioned, JenkinsError> {
    let client = config.client()?;
    let root = client.root().await?;
    let version = root
        .version
        .clone()
        .ok_or_else(|| JenkinsError::Malformed {
            path: "api/json".into(),
            reason: "no X-Jenkins header: is this Jenkins?".into(),
        })?;
    let node = config.node_name(agent);
    let web_socket = root.web_socket_only();
    let created = {
        let _one_at_a_time = creates.lock().await;
        if client.computer(&node).await?.is_none() {
            let spec = NodeSpec::new(
                &node,
                labels
                    .iter()
                    .filter(|l| !l.is_empty() && !l.contains(char::is_whitespace)),
                &format!("lent by jnlp-lender (lease {lease})"),
                web_socket,
            )?;
            client.create_node(&spec, &version).await?;
            tracing::info!(%node, lease, "node created");
            true
        } else {
            tracing::info!(%node, lease, "node exists; reused");
            false
        }
    };
    let secret = client.node_secret(&node, &version).await?;
    Ok(Provisioned {
        node,
        created,
        secret: Secret::new(secret),
        transport: web_socket.then_some(Transport::WebSocket),
    })
}

/// Deletes a lent node (its agent has gone home); whether it was deleted
/// now.
pub(crate) async fn delete(config: &ControllerConfig, node: &str) -> bool {
    let result = match config.client() {
        Ok(client) => client.delete_node(node).await,
        Err(err) => Err(err),
    };
    match result {
        Ok(true) => {
            tracing::info!(%node, "node deleted");
            true
        }
        Ok(false) => {
            tracing::info!(%node, "node already gone");
            false
        }
        Err(err) => {
            tracing::warn!(%node, %err, "cannot delete the node");
            false
        }
    }
}

/// Takes `node` temporarily offline with `message`, then waits (polling
/// every `poll`, until `deadline`) for it to be idle: a build that started
/// before it went offline finishes first.
pub(crate) async fn take_offline_until_idle(
    config: &ControllerConfig,
    node: &str,
    message: &str,
    poll: std::time::Duration,
    deadline: tokio::time::Instant,
) -> Result<(), JenkinsError> {
    let client = config.client()?;
    client.take_offline(node, message).await?;
    loop {
        match client.computer(node).await? {
            None => return Ok(()),
            Some(c) if c.idle => return Ok(()),
            Some(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(JenkinsError::Setup(format!(
                "{node} is still busy; the agent leaves when idle"
            )));
        }
        tokio::time::sleep(poll).await;
    }
}

/// Brings `node` back online if it is temporarily offline because of the
/// lender (its cause names `jnlp-lender`); a node someone else took
/// offline stays so. Whether it was brought online.
pub(crate) async fn bring_online_if_ours(
    config: &ControllerConfig,
    node: &str,
) -> Result<bool, JenkinsError> {
    let client = config.client()?;
    match client.computer(node).await? {
        Some(c) if c.temporarily_offline && c.offline_cause_reason.contains("jnlp-lender") => {
            client.toggle_offline(node).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn computer(name: &str, labels: &[&str]) -> Computer {
        let mut all: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        all.push(name.to_owned());
        Computer {
            name: name.to_owned(),
            offline: false,
            temporarily_offline: false,
            idle: false,
            num_executors: 1,
            offline_cause_reason: String::new(),
            connected: true,
            labels: all,
            builds: Vec::new(),
        }
    }

    fn nodes(list: &[Computer]) -> BTreeMap<String, Computer> {
        list.iter().map(|c| (c.name.clone(), c.clone())).collect()
    }

    #[test]
    fn a_named_node_maps_to_its_labels_only_when_a_label_of_its_own_could_be_meant() {
        let all = nodes(&[
            computer("mac1", &["macos", "arm64"]),
            computer("mac2", &["macos", "arm64", "xcode16"]),
            computer("linux1", &["linux"]),
            computer("bare", &[]),
            computer("lent-box", &["linux"]),
        ]);
        // mac2 carries all of mac1's labels: an item Jenkins says waits for
        // mac1 is tied to mac1 itself; no lent agent can run it.
        assert_eq!(named_node_requirement("mac1", &all, "lent-"), None);
        // mac2 is the only node with all its labels: a label only it
        // carries (e.g. `xcode16`) may be meant.
        assert_eq!(
            named_node_requirement("mac2", &all, "lent-").as_deref(),
            Some("\"macos\" && \"arm64\" && \"xcode16\"")
        );
        // A node with no label but its name: only its self-label.
        assert_eq!(named_node_requirement("bare", &all, "lent-"), None);
        // linux1's one label is also on lent-box (the lender's node), so
        // an item named after linux1 is tied to it.
        assert_eq!(named_node_requirement("linux1", &all, "lent-"), None);
        // The lender's own node: a second item for the label it was made
        // for, even though another node carries the same labels.
        assert_eq!(
            named_node_requirement("lent-box", &all, "lent-").as_deref(),
            Some("\"linux\"")
        );
        assert_eq!(named_node_requirement("gone", &all, "lent-"), None);
    }
}
