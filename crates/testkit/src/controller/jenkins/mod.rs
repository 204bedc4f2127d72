//! A Jenkins HTTP API stand-in for the test controller: users with API
//! tokens and permissions, nodes (agents) with labels, executors and
//! temporary offline, a build queue with Jenkins' `why` texts, and a
//! scheduler that starts builds on connected agents. Written from
//! `/work/shared/JENKINS-REST.md` and Jenkins core's source; where this
//! module assumes something, its doc comment says so.
//!
//! # Layout
//!
//! - this file: the public test-side types ([`NodeConfig`], [`JobSpec`],
//!   [`BuildRecord`], ...) and [`Model`], every decision with no I/O: the
//!   node table, the queue, the scheduler (`maintain`, after Jenkins'
//!   `Queue.maintain`) and each item's cause of blockage.
//! - `labels`: label expressions (Jenkins' grammar and printing).
//! - `messages`: the `why` texts (en, de).
//! - `auth`: users, tokens, permissions and their implication chains.
//! - `api`: the HTTP routes (`/api/json`, `/computer/...`, `/queue/...`,
//!   `/label/...`, `/whoAmI/api/json`) and their JSON.
//! - `wire`: form parameters, `tree=` filtering, `<slave>` XML.
//!
//! # What is modelled, and what is not
//!
//! Modelled: buildable items only (no quiet period, no blocked items, no
//! `pending` stage: an item leaves the queue when its build starts); one
//! executor per `numExecutors`; `Node.canTake` (label, EXCLUSIVE mode);
//! the built-in node with no executors; temporary offline; builds that
//! finish on request or after a duration, or are cut when their node's
//! channel closes. Not modelled: clouds, quiet periods, concurrent-build
//! blocking, one-off executors, per-item ACLs, the load balancer's
//! consistent hash (a build goes to the first candidate node by name),
//! `Computer/Build` permissions, crumbs.

mod api;
pub mod auth;
pub mod labels;
pub mod messages;
mod wire;

pub(super) use api::route;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use self::labels::Label;
use self::messages::{Cause, Lang};
use super::ControllerEvent;

/// The first version with `POST /computer/createItem` taking `<slave>` XML.
pub const XML_CREATE_SINCE: &[u64] = &[2, 539];
/// The first version serving `computer/N/jenkins-agent.jnlp`.
pub const JENKINS_AGENT_JNLP_SINCE: &[u64] = &[2, 264];

/// Whether `version` (e.g. `2.541.1`, `2.500-test`) is at least `min`,
/// comparing the leading dotted numbers.
pub fn version_at_least(version: &str, min: &[u64]) -> bool {
    let numbers: Vec<u64> = version
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()
        .unwrap_or("")
        .split('.')
        .map_while(|n| n.parse().ok())
        .collect();
    numbers.as_slice() >= min
}

/// A node's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// "Use this node as much as possible": takes unlabelled items too.
    #[default]
    Normal,
    /// "Only build jobs with label expressions matching this node".
    Exclusive,
}

impl Mode {
    fn parse(text: &str) -> Option<Mode> {
        match text.trim() {
            "NORMAL" => Some(Mode::Normal),
            "EXCLUSIVE" => Some(Mode::Exclusive),
            _ => None,
        }
    }
}

/// A node's configuration (what `doCreateItem` or `<slave>` XML carries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's name.
    pub name: String,
    /// `labelString`: labels separated by whitespace.
    pub labels: String,
    /// Executors (Jenkins' default 1).
    pub num_executors: u32,
    /// NORMAL or EXCLUSIVE.
    pub mode: Mode,
    /// `nodeDescription`.
    pub description: String,
    /// `remoteFS`.
    pub remote_fs: String,
    /// The launcher is a `JNLPLauncher` (an inbound agent).
    pub inbound: bool,
    /// The launcher's `webSocket` flag: only puts `-webSocket` in the JNLP
    /// file (the controller does not enforce a transport).
    pub web_socket: bool,
}

impl NodeConfig {
    /// An inbound node with one executor, NORMAL, no labels.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            labels: String::new(),
            num_executors: 1,
            mode: Mode::Normal,
            description: String::new(),
            remote_fs: "/home/jenkins/agent".to_owned(),
            inbound: true,
            web_socket: false,
        }
    }

    /// Sets the labels (whitespace-separated).
    pub fn labels(mut self, labels: &str) -> Self {
        self.labels = labels.to_owned();
        self
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the launcher's `webSocket` flag.
    pub fn web_socket(mut self, on: bool) -> Self {
        self.web_socket = on;
        self
    }

    /// Sets the executor count.
    pub fn executors(mut self, n: u32) -> Self {
        self.num_executors = n;
        self
    }

    /// The node's label atoms: its labels plus its own name (the self label).
    /// Assumption: quoted atoms in `labelString` are not supported (split on
    /// whitespace only).
    pub fn atoms(&self) -> BTreeSet<String> {
        let mut atoms: BTreeSet<String> =
            self.labels.split_whitespace().map(str::to_owned).collect();
        atoms.insert(self.name.clone());
        atoms
    }
}

/// What kind of job a queue item builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobKind {
    /// A freestyle project: `task.labelExpression` is exported.
    #[default]
    Freestyle,
    /// A Pipeline `node('label')` step: the task is a `PlaceholderTask` whose
    /// label is not exported (`why` is the only way to learn it).
    Pipeline,
}

/// A job to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// The job's name.
    pub name: String,
    /// The label expression as configured (None: can roam).
    pub label: Option<String>,
    /// Freestyle or Pipeline.
    pub kind: JobKind,
    /// Finish on its own this long after starting (None: until
    /// [`super::JenkinsHandle::finish_build`]).
    pub duration: Option<Duration>,
}

impl JobSpec {
    /// A freestyle job without a label.
    pub fn freestyle(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            label: None,
            kind: JobKind::Freestyle,
            duration: None,
        }
    }

    /// A Pipeline `node` block.
    pub fn pipeline(name: &str) -> Self {
        Self {
            kind: JobKind::Pipeline,
            ..Self::freestyle(name)
        }
    }

    /// Restricts where it runs.
    pub fn label(mut self, expression: &str) -> Self {
        self.label = Some(expression.to_owned());
        self
    }

    /// Finishes on its own after `d`.
    pub fn duration(mut self, d: Duration) -> Self {
        self.duration = Some(d);
        self
    }
}

/// How a build ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildState {
    /// Still running.
    Running,
    /// Finished normally.
    Finished,
    /// Its node's channel closed (or the node was deleted) mid-build.
    Cut,
}

/// A build, for tests to assert on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRecord {
    /// The queue item it came from.
    pub queue_id: u64,
    /// The job.
    pub job: String,
    /// The build number (per job, from 1).
    pub number: u64,
    /// Where it ran.
    pub node: String,
    /// The item's `inQueueSince` (unix ms).
    pub in_queue_since_ms: u64,
    /// When it started (unix ms).
    pub started_ms: u64,
    /// When it ended (unix ms).
    pub ended_ms: Option<u64>,
    /// Running, finished or cut.
    pub state: BuildState,
}

/// An offline cause (`OfflineCause`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OfflineCause {
    pub class: &'static str,
    pub description: String,
    pub timestamp_ms: u64,
}

/// A node in the table.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub secret: String,
    /// Refuse every connection with `FATAL: {reason}`.
    pub fatal: Option<String>,
    pub config: NodeConfig,
    /// Set by `changeOfflineCause` / `toggleOffline`.
    pub temporarily_offline: Option<OfflineCause>,
    /// Why the channel went away last (`ChannelTermination`).
    pub disconnected: Option<OfflineCause>,
    /// Per executor: the queue id of the build it runs.
    pub executors: Vec<Option<u64>>,
}

impl Node {
    pub(crate) fn new(config: NodeConfig, secret: String) -> Self {
        Self {
            secret,
            fatal: None,
            executors: vec![None; config.num_executors as usize],
            config,
            temporarily_offline: None,
            disconnected: None,
        }
    }

    fn idle_executors(&self) -> usize {
        self.executors.iter().filter(|e| e.is_none()).count()
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.executors.iter().all(Option::is_none)
    }
}

/// A buildable queue item.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub id: u64,
    pub job: JobSpec,
    pub label: Option<Label>,
    pub in_queue_since_ms: u64,
    pub buildable_start_ms: u64,
    /// The reasons the last scheduling round found (`transientCausesOfBlockage`).
    pub causes: Option<Vec<Cause>>,
}

/// The built-in node's display name.
pub const BUILT_IN: &str = "Built-In Node";

/// A build that [`Model::maintain`] started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Started {
    pub queue_id: u64,
    pub node: String,
    pub duration: Option<Duration>,
}

/// Everything Jenkins-side the controller keeps, with no I/O: the caller
/// passes in who is online and the time.
#[derive(Debug, Default)]
pub(crate) struct Model {
    pub version: String,
    pub security: auth::Security,
    /// By name, sorted (as `ComputerSet` lists computers).
    pub nodes: BTreeMap<String, Node>,
    /// Buildable items, oldest first.
    pub queue: Vec<Item>,
    pub builds: Vec<BuildRecord>,
    /// Nodes whose name starts with this refuse every secret, as if the
    /// secret in their JNLP file were not theirs (rotated, or a stale copy
    /// served by a cache in front of Jenkins).
    pub refuse_secrets_of: Option<String>,
    next_queue_id: u64,
    numbers: BTreeMap<String, u64>,
}

impl Model {
    /// Whether connections for `node` are refused whatever their secret.
    pub(crate) fn refuses_secret(&self, node: &str) -> bool {
        self.refuse_secrets_of
            .as_deref()
            .is_some_and(|prefix| node.starts_with(prefix))
    }
}

impl Model {
    pub(crate) fn new(version: String) -> Self {
        Self {
            version,
            next_queue_id: 1,
            ..Self::default()
        }
    }

    /// Whether the node's computer is offline: temporarily, or no channel.
    fn node_offline(&self, name: &str, online: &dyn Fn(&str) -> bool) -> bool {
        self.nodes
            .get(name)
            .is_none_or(|n| n.temporarily_offline.is_some() || !online(name))
    }

    /// Queues `job` and returns its id.
    pub(crate) fn enqueue(&mut self, job: JobSpec, now_ms: u64) -> u64 {
        let id = self.next_queue_id;
        self.next_queue_id += 1;
        self.queue.push(Item {
            id,
            label: job.label.as_deref().and_then(Label::for_job),
            job,
            in_queue_since_ms: now_ms,
            buildable_start_ms: now_ms,
            causes: None,
        });
        id
    }

    /// Removes a queue item; false if it is not (or no longer) queued.
    pub(crate) fn cancel(&mut self, id: u64) -> bool {
        let before = self.queue.len();
        self.queue.retain(|item| item.id != id);
        self.queue.len() != before
    }

    /// Nodes (with the built-in node as [`BUILT_IN`]) whose labels satisfy `label`.
    fn label_nodes(&self, label: &Label) -> Vec<&str> {
        let mut nodes: Vec<&str> = self
            .nodes
            .iter()
            .filter(|(_, node)| label.matches(&node.config.atoms()))
            .map(|(name, _)| name.as_str())
            .collect();
        if label.matches(&BTreeSet::from(["built-in".to_owned()])) {
            nodes.push(BUILT_IN);
        }
        nodes
    }

    /// Like `node_offline`, but the built-in node counts as online: Jenkins
    /// keeps its computer even with no executors
    /// (`AbstractCIBase.updateComputer`). Assumption: the built-in node is
    /// configured with 0 executors, as recommended.
    fn is_offline(&self, name: &str, online: &dyn Fn(&str) -> bool) -> bool {
        name != BUILT_IN && self.node_offline(name, online)
    }

    /// `Label.isOffline()`: every matching node offline, or none at all.
    pub(crate) fn label_offline(&self, label: &Label, online: &dyn Fn(&str) -> bool) -> bool {
        self.label_nodes(label)
            .iter()
            .all(|n| self.is_offline(n, online))
    }

    /// `Label.getIdleExecutors()` (or every node's, without a label).
    fn idle_executors(&self, label: Option<&Label>, online: &dyn Fn(&str) -> bool) -> usize {
        self.nodes
            .iter()
            .filter(|(name, node)| {
                !self.is_offline(name, online)
                    && label.is_none_or(|l| l.matches(&node.config.atoms()))
            })
            .map(|(_, node)| node.idle_executors())
            .sum()
    }

    /// `Node.canTake` (label, mode) and then the offer's own check (offline).
    fn can_take(&self, node: &Node, item: &Item, online: &dyn Fn(&str) -> bool) -> Option<Cause> {
        let name = &node.config.name;
        match &item.label {
            Some(label) if !label.matches(&node.config.atoms()) => {
                return Some(Cause::LabelMissing(name.clone(), label.name()))
            }
            None if node.config.mode == Mode::Exclusive => {
                return Some(Cause::Reserved(name.clone()))
            }
            _ => {}
        }
        if self.node_offline(name, online) {
            return Some(Cause::NodeOffline(name.clone()));
        }
        None
    }

    /// One scheduling round (`Queue.maintain`): each buildable item, oldest
    /// first, goes to an idle executor of the first node (by name) that can
    /// take it; an item that finds none keeps the round's reasons for its
    /// `why`. Returns the builds started.
    pub(crate) fn maintain(
        &mut self,
        online: &dyn Fn(&str) -> bool,
        now_ms: u64,
        events: &mut Vec<ControllerEvent>,
    ) -> Vec<Started> {
        let mut started = Vec::new();
        let mut waiting = Vec::new();
        for mut item in std::mem::take(&mut self.queue) {
            let mut reasons = Vec::new();
            let mut chosen = None;
            for (name, node) in &self.nodes {
                // Only idle executors are offered ("parked").
                if node.idle_executors() == 0 {
                    continue;
                }
                match self.can_take(node, &item, online) {
                    Some(reason) => reasons.push(reason),
                    None => {
                        chosen = Some(name.clone());
                        break;
                    }
                }
            }
            let Some(name) = chosen else {
                item.causes = (!reasons.is_empty()).then_some(reasons);
                waiting.push(item);
                continue;
            };
            let Some(node) = self.nodes.get_mut(&name) else {
                waiting.push(item);
                continue;
            };
            if let Some(slot) = node.executors.iter_mut().find(|e| e.is_none()) {
                *slot = Some(item.id);
            }
            let number = self.numbers.entry(item.job.name.clone()).or_insert(0);
            *number += 1;
            let record = BuildRecord {
                queue_id: item.id,
                job: item.job.name.clone(),
                number: *number,
                node: name.clone(),
                in_queue_since_ms: item.in_queue_since_ms,
                started_ms: now_ms,
                ended_ms: None,
                state: BuildState::Running,
            };
            events.push(ControllerEvent::BuildStarted(record.clone()));
            self.builds.push(record);
            started.push(Started {
                queue_id: item.id,
                node: name,
                duration: item.job.duration,
            });
        }
        self.queue = waiting;
        started
    }

    /// Ends a running build (finished or cut) and frees its executor.
    /// None if it is not running.
    pub(crate) fn end_build(
        &mut self,
        queue_id: u64,
        state: BuildState,
        now_ms: u64,
    ) -> Option<BuildRecord> {
        let build = self
            .builds
            .iter_mut()
            .find(|b| b.queue_id == queue_id && b.state == BuildState::Running)?;
        build.state = state;
        build.ended_ms = Some(now_ms);
        if let Some(node) = self.nodes.get_mut(&build.node) {
            for slot in &mut node.executors {
                if *slot == Some(queue_id) {
                    *slot = None;
                }
            }
        }
        Some(build.clone())
    }

    /// Cuts every build running on `node`; returns the events.
    pub(crate) fn cut_builds_on(&mut self, node: &str, now_ms: u64) -> Vec<ControllerEvent> {
        let running: Vec<u64> = self
            .builds
            .iter()
            .filter(|b| b.node == node && b.state == BuildState::Running)
            .map(|b| b.queue_id)
            .collect();
        running
            .into_iter()
            .filter_map(|id| self.end_build(id, BuildState::Cut, now_ms))
            .map(ControllerEvent::BuildCut)
            .collect()
    }

    /// `BuildableItem.getCauseOfBlockage()`.
    pub(crate) fn cause(&self, item: &Item, online: &dyn Fn(&str) -> bool) -> Cause {
        // No agents at all: "pointless to talk about nodes".
        let label = if self.nodes.is_empty() {
            None
        } else {
            item.label.as_ref()
        };
        match label {
            Some(label) => {
                let nodes = self.label_nodes(label);
                if self.label_offline(label, online) {
                    return match nodes.as_slice() {
                        [one] => Cause::NodeOffline((*one).to_owned()),
                        [] => Cause::LabelHasNoNodes(label.name()),
                        _ => Cause::AllNodesOffline(label.name()),
                    };
                }
                if let Some(causes) = &item.causes {
                    if self.idle_executors(Some(label), online) > 0 {
                        return Cause::Composite(causes.clone());
                    }
                }
                match nodes.as_slice() {
                    [one] => Cause::NodeBusy((*one).to_owned()),
                    _ => Cause::LabelBusy(label.name()),
                }
            }
            None => match &item.causes {
                Some(causes) if self.idle_executors(None, online) > 0 => {
                    Cause::Composite(causes.clone())
                }
                _ => Cause::Waiting,
            },
        }
    }

    /// `why` in `lang`.
    pub(crate) fn why(&self, item: &Item, online: &dyn Fn(&str) -> bool, lang: Lang) -> String {
        self.cause(item, online).text(lang)
    }

    /// `BuildableItem.isStuck()`: the label is offline, or (no duration
    /// estimate, as for a new job) buildable for more than 24 hours.
    pub(crate) fn stuck(&self, item: &Item, online: &dyn Fn(&str) -> bool, now_ms: u64) -> bool {
        item.label
            .as_ref()
            .is_some_and(|l| self.label_offline(l, online))
            || now_ms.saturating_sub(item.buildable_start_ms) > 24 * 3600 * 1000
    }
}

/// `hex(HMAC-SHA256(key, name))`: an inbound node's secret, as
/// `JnlpAgentReceiver.SLAVE_SECRET.mac(name)` computes it.
pub(crate) fn node_secret(key: &[u8], name: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    hex::encode(ring::hmac::sign(&key, name.as_bytes()).as_ref())
}

/// Unix milliseconds now.
pub(crate) use control::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    fn model(nodes: &[NodeConfig]) -> Model {
        let mut m = Model::new("2.541".into());
        for config in nodes {
            m.nodes.insert(
                config.name.clone(),
                Node::new(config.clone(), node_secret(b"k", &config.name)),
            );
        }
        m
    }

    fn why(m: &Model, id: u64, online: &dyn Fn(&str) -> bool, lang: Lang) -> String {
        let item = m.queue.iter().find(|i| i.id == id).expect("queued");
        m.why(item, online, lang)
    }

    #[test]
    fn versions() {
        assert!(version_at_least("2.539", XML_CREATE_SINCE));
        assert!(version_at_least("2.541.1", XML_CREATE_SINCE));
        assert!(!version_at_least("2.538", XML_CREATE_SINCE));
        assert!(!version_at_least("2.500-test", XML_CREATE_SINCE));
        assert!(version_at_least("2.500-test", JENKINS_AGENT_JNLP_SINCE));
        assert!(!version_at_least("2.263.4", JENKINS_AGENT_JNLP_SINCE));
        assert!(version_at_least("10.0", XML_CREATE_SINCE));
    }

    #[test]
    fn secret_is_hmac_of_the_name() {
        // RFC 4231 test case 2.
        assert_eq!(
            node_secret(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn why_texts_follow_the_label_and_its_nodes() {
        let none = |_: &str| false;
        let all = |_: &str| true;
        let mut m = model(&[
            NodeConfig::new("m1")
                .labels("macos arm64")
                .mode(Mode::Exclusive),
            NodeConfig::new("m2").labels("macos"),
        ]);
        let linux = m.enqueue(JobSpec::freestyle("a").label("linux"), 0);
        let mac = m.enqueue(JobSpec::freestyle("b").label("macos && arm64"), 0);
        let macs = m.enqueue(JobSpec::pipeline("c").label("macos"), 0);
        m.maintain(&none, 0, &mut Vec::new());
        assert_eq!(
            why(&m, linux, &none, Lang::En),
            "There are no nodes with the label ‘linux’"
        );
        assert_eq!(why(&m, mac, &none, Lang::En), "‘m1’ is offline");
        assert_eq!(
            why(&m, macs, &none, Lang::En),
            "All nodes of label ‘macos’ are offline"
        );
        assert_eq!(
            why(&m, macs, &none, Lang::De),
            "Alle Knoten des Labels „macos“ sind offline"
        );
        assert_eq!(why(&m, mac, &none, Lang::De), "m1 ist offline");

        // Online: m1 takes the arm64 item, m2 the other macos one.
        let mut events = Vec::new();
        let started = m.maintain(&all, 5, &mut events);
        assert_eq!(
            started
                .iter()
                .map(|s| (s.queue_id, s.node.as_str()))
                .collect::<Vec<_>>(),
            [(mac, "m1"), (macs, "m2")]
        );
        assert!(!m.nodes["m1"].is_idle());
        // Both busy: the next arm64 item waits on the one node it matches.
        let mac2 = m.enqueue(JobSpec::freestyle("b").label("macos&&arm64"), 6);
        let macs2 = m.enqueue(JobSpec::freestyle("d").label("macos"), 6);
        m.maintain(&all, 6, &mut Vec::new());
        assert_eq!(
            why(&m, mac2, &all, Lang::En),
            "Waiting for next available executor on ‘m1’"
        );
        assert_eq!(
            why(&m, macs2, &all, Lang::En),
            "Waiting for next available executor on ‘macos’"
        );
        assert_eq!(
            why(&m, macs2, &all, Lang::De),
            "Warte auf den nächsten freien Build-Prozessor auf macos"
        );
        // m2 frees up: an unlabelled item cannot use exclusive m1, takes m2.
        m.end_build(macs, BuildState::Finished, 7);
        m.cancel(macs2);
        let roam = m.enqueue(JobSpec::freestyle("e"), 8);
        let started = m.maintain(&all, 8, &mut Vec::new());
        assert_eq!(started[0].node, "m2");
        assert_eq!(started[0].queue_id, roam);
    }

    #[test]
    fn composite_reasons_when_executors_idle_elsewhere() {
        let all = |_: &str| true;
        let mut m = model(&[
            NodeConfig::new("x1").labels("x").mode(Mode::Exclusive),
            NodeConfig::new("y1").labels("y"),
        ]);
        let roam_busy = m.enqueue(JobSpec::freestyle("busy"), 0);
        m.maintain(&all, 0, &mut Vec::new());
        assert_eq!(m.builds[0].node, "y1", "{:?}", m.builds);
        let _ = roam_busy;
        // Unlabelled: x1 is reserved, y1 busy; x1 has an idle executor.
        let roam = m.enqueue(JobSpec::freestyle("roam"), 1);
        m.maintain(&all, 1, &mut Vec::new());
        assert_eq!(
            why(&m, roam, &all, Lang::En),
            "‘x1’ is reserved for jobs with matching label expression"
        );
        // Label x||y with x1 temporarily offline and y1 busy: no idle executor anywhere.
        m.nodes.get_mut("x1").unwrap().temporarily_offline = Some(OfflineCause {
            class: "hudson.slaves.OfflineCause$UserCause",
            description: "Disconnected by t".into(),
            timestamp_ms: 0,
        });
        let either = m.enqueue(JobSpec::freestyle("either").label("x||y"), 2);
        m.maintain(&all, 2, &mut Vec::new());
        assert_eq!(
            why(&m, either, &all, Lang::En),
            "Waiting for next available executor on ‘x||y’"
        );
    }

    #[test]
    fn no_agents_at_all_means_no_label_talk() {
        let mut m = model(&[]);
        let id = m.enqueue(JobSpec::freestyle("a").label("linux"), 0);
        m.maintain(&|_| true, 0, &mut Vec::new());
        assert_eq!(
            why(&m, id, &|_| true, Lang::En),
            "Waiting for next available executor"
        );
    }
}
