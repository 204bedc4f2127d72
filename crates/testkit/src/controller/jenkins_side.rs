//! The controller's Jenkins side in motion: the scheduler's rounds, builds
//! sent to agents and ended, nodes created, reconfigured, deleted and taken
//! offline (each a change of the shared state plus the events it records),
//! and [`JenkinsHandle`], which drives all of it from a test.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{
    jenkins, random_hex, BuildRecord, ControllerEvent, JobSpec, NodeConfig, Permission, Shared,
    State, TestController, Work,
};

/// Finishes builds whose duration is up, until shutdown.
pub(super) async fn finish_builds(shared: Arc<Shared>, mut due: mpsc::UnboundedReceiver<u64>) {
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            id = due.recv() => match id {
                Some(id) => {
                    shared.finish_build(id);
                }
                None => return,
            },
        }
    }
}

impl Shared {
    /// Runs `change` on the state and records what it returns, under one lock.
    pub(super) fn update<T>(
        &self,
        change: impl FnOnce(&mut State, &mut Vec<ControllerEvent>) -> T,
    ) -> T {
        let (out, recorded) = {
            let mut state = self.state();
            let mut events = Vec::new();
            let out = change(&mut state, &mut events);
            let recorded = !events.is_empty();
            for event in events {
                tracing::debug!(?event, "controller event");
                state.log.push(event);
            }
            (out, recorded)
        };
        if recorded {
            self.changed.send_modify(|version| *version += 1);
        }
        out
    }

    /// One scheduling round, then the started builds are sent to their
    /// agents (see [`Shared::start_builds`]).
    pub(super) fn maintain(&self) {
        let now = jenkins::now_ms();
        let started = self.update(|state, events| {
            let channels = &state.channels;
            let online = |name: &str| channels.contains_key(name);
            let started = state.jenkins.maintain(&online, now, events);
            started
                .into_iter()
                .map(|s| {
                    let work = channels.get(&s.node).map(|c| c.work.clone());
                    (s, work)
                })
                .collect::<Vec<_>>()
        });
        self.start_builds(started);
    }

    /// A build runs on the agent as a process: the built-in peer sends
    /// `fake-engine:spawn` with a shell loop that lasts until the build's
    /// marker file appears (the build finished or was cut) or the
    /// controller's build directory goes away (shutdown), so the agent's
    /// busy detection sees a build process and channel traffic, as with a
    /// real build. A build with a duration is finished by a timer.
    pub(super) fn start_builds(
        self: &Shared,
        started: Vec<(jenkins::Started, Option<mpsc::UnboundedSender<Work>>)>,
    ) {
        for (build, work) in started {
            let dir = self.builds_dir.display().to_string();
            let marker = format!("{dir}/{}", build.queue_id);
            // One hour at most, even if nothing ever ends it.
            let script = format!(
                "i=0; while [ -d '{dir}' ] && [ ! -e '{marker}' ] && [ $i -lt 36000 ]; do sleep 0.1; i=$((i+1)); done"
            );
            let mut command = crate::fake_engine::SPAWN_PREFIX.to_vec();
            command.extend_from_slice(script.as_bytes());
            if let Some(work) = work {
                let _ = work.send(Work::Command(command));
            }
            if let Some(after) = build.duration {
                let token = self.shutdown.clone();
                let finish = self.finish_after.clone();
                let id = build.queue_id;
                self.tracker.spawn(async move {
                    tokio::select! {
                        () = token.cancelled() => {}
                        () = tokio::time::sleep(after) => {
                            let _ = finish.send(id);
                        }
                    }
                });
            }
        }
    }

    /// Ends a running build normally; false if it is not running.
    pub(super) fn finish_build(&self, queue_id: u64) -> bool {
        let now = jenkins::now_ms();
        let ended = self.update(|state, events| {
            let ended = state
                .jenkins
                .end_build(queue_id, jenkins::BuildState::Finished, now);
            if let Some(record) = &ended {
                events.push(ControllerEvent::BuildFinished(record.clone()));
            }
            ended.is_some()
        });
        if ended {
            self.release_build_process(queue_id);
            self.maintain();
        }
        ended
    }

    /// Lets the build's process on the agent end.
    pub(super) fn release_build_process(&self, queue_id: u64) {
        let _ = std::fs::write(self.builds_dir.join(queue_id.to_string()), b"");
    }

    /// Adds a node; `Err` (Jenkins' text) if the name is taken.
    pub(super) fn create_node(&self, config: NodeConfig) -> Result<(), String> {
        let secret = jenkins::node_secret(&self.jenkins_key, &config.name);
        let created = self.update(|state, events| {
            if state.jenkins.nodes.contains_key(&config.name) {
                return Err(format!("Agent called ‘{}’ already exists", config.name));
            }
            events.push(ControllerEvent::NodeCreated {
                node: config.name.clone(),
            });
            state
                .jenkins
                .nodes
                .insert(config.name.clone(), jenkins::Node::new(config, secret));
            Ok(())
        });
        if created.is_ok() {
            self.maintain();
        }
        created
    }

    /// Replaces a node's configuration (labels, mode, executors, ...);
    /// running builds keep their executors. False if there is no such node.
    pub(super) fn reconfigure_node(&self, config: NodeConfig) -> bool {
        let found = self.update(|state, _| match state.jenkins.nodes.get_mut(&config.name) {
            Some(node) => {
                let wanted = config.num_executors as usize;
                // Shrink only by idle executors, as Jenkins lets busy ones finish.
                while node.executors.len() > wanted {
                    match node.executors.iter().rposition(Option::is_none) {
                        Some(i) => {
                            node.executors.remove(i);
                        }
                        None => break,
                    }
                }
                node.executors
                    .resize(wanted.max(node.executors.len()), None);
                node.config = config;
                true
            }
            None => false,
        });
        if found {
            self.maintain();
        }
        found
    }

    /// Removes a node: its builds are cut and its channel closed at once
    /// (`Nodes.removeNode`). False if there is no such node.
    pub(super) fn delete_node(&self, name: &str) -> bool {
        let now = jenkins::now_ms();
        let cut = self.update(|state, events| {
            state.jenkins.nodes.remove(name)?;
            let cut = state.jenkins.cut_builds_on(name, now);
            let ids: Vec<u64> = cut
                .iter()
                .filter_map(|e| match e {
                    ControllerEvent::BuildCut(b) => Some(b.queue_id),
                    _ => None,
                })
                .collect();
            events.push(ControllerEvent::NodeDeleted {
                node: name.to_owned(),
            });
            events.extend(cut);
            if let Some(live) = state.channels.get(name) {
                live.kicked.cancel();
            }
            Some(ids)
        });
        match cut {
            Some(ids) => {
                for id in ids {
                    self.release_build_process(id);
                }
                self.maintain();
                true
            }
            None => false,
        }
    }

    /// Sets or clears a node's temporary offline cause (`message` None:
    /// back online). False if there is no such node.
    pub(super) fn set_temporarily_offline(
        &self,
        name: &str,
        by: &str,
        message: Option<&str>,
    ) -> bool {
        let now = jenkins::now_ms();
        let found = self.update(|state, _| match state.jenkins.nodes.get_mut(name) {
            Some(node) => {
                node.temporarily_offline = message.map(|m| jenkins::OfflineCause {
                    class: "hudson.slaves.OfflineCause$UserCause",
                    description: match m.trim() {
                        "" => format!("Disconnected by {by}"),
                        m => format!("Disconnected by {by} : {m}"),
                    },
                    timestamp_ms: now,
                });
                true
            }
            None => false,
        });
        if found {
            self.maintain();
        }
        found
    }
}

/// A fresh directory (0700) for build markers.
pub(super) fn builds_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("testkit-builds-{}", random_hex(8)));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(&dir)
        .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    assert!(
        !dir.display().to_string().contains('\''),
        "the build directory is quoted in a shell command"
    );
    dir
}

/// Drives the controller's Jenkins side from a test (a cheap clone).
///
/// Builds reach the agent through the built-in [`Peer::Hold`] (the
/// default): a [`Peer::Script`] or [`Peer::Echo`] owns its channel, so with
/// those a build is only recorded, not sent.
///
/// ```no_run
/// # async fn demo() {
/// use testkit::controller::{JobSpec, Mode, NodeConfig, Permission};
/// let controller = testkit::TestController::builder()
///     .jenkins_version("2.541.1")
///     .user("lender", "token", Permission::LENDER)
///     .start()
///     .await;
/// let jenkins = controller.jenkins();
/// jenkins.create_node(NodeConfig::new("mac1").labels("macos arm64").mode(Mode::Exclusive)).unwrap();
/// let item = jenkins.queue(JobSpec::pipeline("app").label("macos && arm64"));
/// // ... an agent connects as mac1 with controller.node_secret("mac1") ...
/// let build = jenkins.wait_started(item, std::time::Duration::from_secs(10)).await;
/// jenkins.finish_build(item);
/// # let _ = build;
/// # }
/// ```
#[derive(Clone)]
pub struct JenkinsHandle {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for JenkinsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JenkinsHandle")
            .field("url", &self.shared.url)
            .finish()
    }
}

impl JenkinsHandle {
    /// The version `X-Jenkins` says (and the routes follow).
    pub fn version(&self) -> String {
        self.shared.state().jenkins.version.clone()
    }

    /// Changes the version, as an upgrade would.
    pub fn set_version(&self, version: &str) {
        self.shared.state().jenkins.version = version.to_owned();
    }

    /// Adds (or replaces) a user with an API token and permissions.
    pub fn add_user(&self, name: &str, api_token: &str, permissions: &[Permission]) {
        self.shared
            .state()
            .jenkins
            .security
            .add_user(name, api_token, permissions);
    }

    /// Replaces a user's permissions; false if there is no such user.
    pub fn grant(&self, name: &str, permissions: &[Permission]) -> bool {
        self.shared
            .state()
            .jenkins
            .security
            .grant(name, permissions)
    }

    /// Adds a node (as an administrator would); `Err` with Jenkins' text
    /// if the name is taken.
    pub fn create_node(&self, config: NodeConfig) -> Result<(), String> {
        self.shared.create_node(config)
    }

    /// Deletes a node, closing its channel; false if there is none.
    pub fn delete_node(&self, name: &str) -> bool {
        self.shared.delete_node(name)
    }

    /// From now on, connections for nodes whose name starts with `prefix`
    /// are refused as a wrong secret (`ERROR: Authorization failure`), as
    /// if their JNLP files carried a secret that is not theirs; `None`
    /// stops that.
    pub fn refuse_secrets_of(&self, prefix: Option<&str>) {
        self.shared.state().jenkins.refuse_secrets_of = prefix.map(str::to_owned);
    }

    /// Whether the node exists.
    pub fn has_node(&self, name: &str) -> bool {
        self.shared.state().jenkins.nodes.contains_key(name)
    }

    /// Takes a node temporarily offline with `message` (Some), or brings it
    /// back (None); false if there is no such node.
    pub fn set_temporarily_offline(&self, name: &str, message: Option<&str>) -> bool {
        self.shared.set_temporarily_offline(name, "admin", message)
    }

    /// The node's temporary offline description, if it is temporarily offline.
    pub fn temporarily_offline(&self, name: &str) -> Option<String> {
        self.shared
            .state()
            .jenkins
            .nodes
            .get(name)
            .and_then(|n| n.temporarily_offline.as_ref())
            .map(|c| c.description.clone())
    }

    /// Whether every executor of the node is idle (None: no such node).
    pub fn idle(&self, name: &str) -> Option<bool> {
        self.shared
            .state()
            .jenkins
            .nodes
            .get(name)
            .map(|n| n.is_idle())
    }

    /// Queues a job; returns its queue id. The scheduler runs at once.
    pub fn queue(&self, job: JobSpec) -> u64 {
        let now = jenkins::now_ms();
        let id = self
            .shared
            .update(|state, _| state.jenkins.enqueue(job, now));
        self.shared.maintain();
        id
    }

    /// Cancels a queued item; false if it is not queued (any more).
    pub fn cancel(&self, queue_id: u64) -> bool {
        self.shared.update(|state, events| {
            let cancelled = state.jenkins.cancel(queue_id);
            if cancelled {
                events.push(ControllerEvent::ItemCancelled { queue_id });
            }
            cancelled
        })
    }

    /// Queue ids still waiting, oldest first.
    pub fn queued(&self) -> Vec<u64> {
        self.shared
            .state()
            .jenkins
            .queue
            .iter()
            .map(|i| i.id)
            .collect()
    }

    /// The item's `why` as `Accept-Language: en` (or `de`) would show it.
    pub fn why(&self, queue_id: u64, lang: jenkins::messages::Lang) -> Option<String> {
        let state = self.shared.state();
        let online = |name: &str| state.channels.contains_key(name);
        let item = state.jenkins.queue.iter().find(|i| i.id == queue_id)?;
        Some(state.jenkins.why(item, &online, lang))
    }

    /// Finishes the build of `queue_id` normally; false if it is not running.
    pub fn finish_build(&self, queue_id: u64) -> bool {
        self.shared.finish_build(queue_id)
    }

    /// Every build so far, in start order.
    pub fn builds(&self) -> Vec<BuildRecord> {
        self.shared.state().jenkins.builds.clone()
    }

    /// The build of `queue_id`, if it started.
    pub fn build(&self, queue_id: u64) -> Option<BuildRecord> {
        self.shared
            .state()
            .jenkins
            .builds
            .iter()
            .find(|b| b.queue_id == queue_id)
            .cloned()
    }

    /// Waits until the item's build has started; panics with the log after `timeout`.
    pub async fn wait_started(&self, queue_id: u64, timeout: Duration) -> BuildRecord {
        let log = TestController::wait_on(
            &self.shared,
            |log| {
                log.iter().any(
                    |e| matches!(e, ControllerEvent::BuildStarted(b) if b.queue_id == queue_id),
                )
            },
            timeout,
        )
        .await;
        log.into_iter()
            .find_map(|e| match e {
                ControllerEvent::BuildStarted(b) if b.queue_id == queue_id => Some(b),
                _ => None,
            })
            .expect("the predicate found it")
    }
}
