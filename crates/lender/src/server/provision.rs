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
                    match computers.as_ref().and_then(|c| c.get(&name)) {
                        // The label matched this one node: an agent with all
                        // of its labels satisfies it (perhaps more than it
                        // needs).
                        Some(node) => node_expression(node),
                        None => Some(name),
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
