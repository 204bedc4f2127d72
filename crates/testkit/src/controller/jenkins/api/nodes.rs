//! The node routes: the computer list and pages, JNLP files, `config.xml`,
//! creating (form and XML routes) and the node actions (delete, offline,
//! disconnect).

use super::*;

impl Api<'_> {
    pub(super) fn computer_json(
        &self,
        model: &Model,
        name: &str,
        node: &Node,
        online: bool,
    ) -> Value {
        let offline = node.temporarily_offline.is_some() || !online;
        let cause = node.temporarily_offline.as_ref().or(if online {
            None
        } else {
            node.disconnected.as_ref()
        });
        let job_read = self.job_read;
        let executors: Vec<Value> = node
            .executors
            .iter()
            .enumerate()
            .map(|(number, slot)| {
                let build = slot.and_then(|id| {
                    model
                        .builds
                        .iter()
                        .find(|b| b.queue_id == id && b.state == BuildState::Running)
                });
                json!({
                    "_class": "hudson.model.Executor",
                    "currentExecutable": match build {
                        Some(b) if job_read => json!({
                            "_class": "hudson.model.FreeStyleBuild",
                            "building": true,
                            "displayName": format!("#{}", b.number),
                            "fullDisplayName": format!("{} #{}", b.job, b.number),
                            "id": b.number.to_string(),
                            "number": b.number,
                            "queueId": b.queue_id,
                            "timestamp": b.started_ms,
                            "url": format!("{}job/{}/{}/", self.shared.url, url_encode(&b.job), b.number),
                        }),
                        _ => Value::Null,
                    },
                    "idle": build.is_none(),
                    "likelyStuck": false,
                    "number": number,
                    "progress": if build.is_some() { 0 } else { -1 },
                })
            })
            .collect();
        let icon = if offline {
            "symbol-computer-offline"
        } else {
            "symbol-computer"
        };
        let connect = self.connect;
        json!({
            "_class": "hudson.slaves.SlaveComputer",
            "actions": [],
            "absoluteRemotePath": if online && connect { json!(node.config.remote_fs) } else { Value::Null },
            "assignedLabels": node.config.atoms().into_iter().map(|a| json!({"name": a})).collect::<Vec<_>>(),
            "description": node.config.description,
            "displayName": name,
            "executors": executors,
            "icon": icon,
            "iconClassName": icon,
            "idle": node.is_idle(),
            "jnlpAgent": node.config.inbound,
            "launchSupported": true,
            "loadStatistics": {"_class": "hudson.model.Label$1"},
            "manualLaunchAllowed": true,
            "monitorData": {},
            "numExecutors": node.config.num_executors,
            "offline": offline,
            "offlineCause": cause.map_or(Value::Null, |c| json!({
                "_class": c.class,
                "description": c.description,
                "timestamp": c.timestamp_ms,
            })),
            "offlineCauseReason": cause.map_or(String::new(), |c| c.description.clone()),
            "oneOffExecutors": [],
            "temporarilyOffline": node.temporarily_offline.is_some(),
        })
    }

    pub(super) fn built_in_json() -> Value {
        json!({
            "_class": "hudson.model.Hudson$MasterComputer",
            "actions": [],
            "assignedLabels": [{"name": "built-in"}],
            "description": "the Jenkins controller's built-in node",
            "displayName": super::super::BUILT_IN,
            "executors": [],
            "icon": "symbol-computer",
            "iconClassName": "symbol-computer",
            "idle": true,
            "jnlpAgent": false,
            "launchSupported": true,
            "loadStatistics": {"_class": "hudson.model.Label$1"},
            "manualLaunchAllowed": true,
            "monitorData": {},
            "numExecutors": 0,
            "offline": false,
            "offlineCause": null,
            "offlineCauseReason": "",
            "oneOffExecutors": [],
            "temporarilyOffline": false,
        })
    }

    pub(super) fn computers(&self) -> Response<Body> {
        let state = self.shared.state();
        let model = &state.jenkins;
        let mut computers = vec![Self::built_in_json()];
        let (mut busy, mut total) = (0, 0);
        for (name, node) in &model.nodes {
            let online = state.channels.contains_key(name);
            if online {
                total += node.executors.len();
                busy += node.executors.iter().filter(|e| e.is_some()).count();
            }
            computers.push(self.computer_json(model, name, node, online));
        }
        drop(state);
        let value = json!({
            "_class": "hudson.model.ComputerSet",
            "busyExecutors": busy,
            "computer": computers,
            "displayName": "Nodes",
            "totalExecutors": total,
        });
        self.json(value, |value| {
            // At the default depth the list shows executors as empty objects.
            if let Some(list) = value.get_mut("computer").and_then(Value::as_array_mut) {
                for computer in list {
                    if let Some(execs) = computer.get_mut("executors").and_then(Value::as_array_mut)
                    {
                        for e in execs {
                            *e = json!({});
                        }
                    }
                }
            }
        })
    }

    pub(super) fn computer(&self, name: &str) -> Response<Body> {
        let state = self.shared.state();
        let value = if name == "(built-in)" {
            Self::built_in_json()
        } else {
            let Some(node) = state.jenkins.nodes.get(name) else {
                return not_found();
            };
            let online = state.channels.contains_key(name);
            self.computer_json(&state.jenkins, name, node, online)
        };
        drop(state);
        self.json(value, |_| {})
    }

    pub(super) fn jnlp(
        &self,
        name: &str,
        new_name: bool,
        query: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let (exists, version) = {
            let state = self.shared.state();
            (
                state.jenkins.nodes.contains_key(name),
                state.jenkins.version.clone(),
            )
        };
        if !exists || (new_name && !version_at_least(&version, JENKINS_AGENT_JNLP_SINCE)) {
            return not_found();
        }
        if let Some(denied) = self.require(Permission::ComputerConnect) {
            return denied;
        }
        jnlp(
            self.shared,
            name,
            query.get("encrypt").is_some_and(|v| v == "true"),
        )
    }

    /// `GET computer/N/config.xml` (Agent/ExtendedRead): the `<slave>` XML.
    pub(super) fn config_xml(&self, name: &str) -> Response<Body> {
        if let Some(denied) = self.require(Permission::ComputerExtendedRead) {
            return denied;
        }
        let Some(config) = self
            .shared
            .state()
            .jenkins
            .nodes
            .get(name)
            .map(|n| n.config.clone())
        else {
            return not_found();
        };
        with_type(
            Response::new(Full::new(Bytes::from(slave_xml(&config)))),
            "application/xml",
        )
    }

    /// `POST computer/N/config.xml` (Agent/Configure): replaces the node's
    /// configuration, keeping its class. Assumption: the node keeps the
    /// name in the URL (renaming through the XML is not modelled).
    pub(super) fn update_config_xml(&self, name: &str, body: &Bytes) -> Response<Body> {
        if let Some(denied) = self.require(Permission::ComputerConfigure) {
            return denied;
        }
        if !self.shared.state().jenkins.nodes.contains_key(name) {
            return not_found();
        }
        let Some(mut config) = parse_slave_xml(&String::from_utf8_lossy(body)) else {
            return html_error(StatusCode::BAD_REQUEST, "Node types do not match");
        };
        config.name = name.to_owned();
        if self.shared.reconfigure_node(config) {
            Response::new(Full::new(Bytes::new()))
        } else {
            not_found()
        }
    }

    pub(super) fn create_form(&self, form: &BTreeMap<String, String>) -> Response<Body> {
        if let Some(denied) = self.require(Permission::ComputerCreate) {
            return denied;
        }
        let Some(name) = form.get("name").map(|n| n.trim()).filter(|n| !n.is_empty()) else {
            return html_error(
                StatusCode::BAD_REQUEST,
                "Query parameter 'name' is required",
            );
        };
        if let Err(reason) = check_good_name(name) {
            return html_error(StatusCode::BAD_REQUEST, &reason);
        }
        if self.shared.state().jenkins.nodes.contains_key(name) {
            return html_error(
                StatusCode::BAD_REQUEST,
                &format!("Agent called ‘{name}’ already exists"),
            );
        }
        let Some(json) = form.get("json") else {
            return html_error(
                StatusCode::BAD_REQUEST,
                "This page expects a form submission",
            );
        };
        // `NodeDescriptor.all().find(type)`: an unknown type is a null
        // descriptor, and Jenkins fails with an exception (500).
        let type_ok = form.get("type").is_some_and(|t| {
            t == "hudson.slaves.DumbSlave$DescriptorImpl" || t == "hudson.slaves.DumbSlave"
        });
        if !type_ok {
            return html_error(StatusCode::INTERNAL_SERVER_ERROR, "No such node type");
        }
        let Ok(Value::Object(json)) = serde_json::from_str::<Value>(json) else {
            return html_error(StatusCode::BAD_REQUEST, "Failed to parse form data");
        };
        let mut config = NodeConfig::new(name);
        let text = |key: &str| match json.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        if let Some(n) = text("numExecutors") {
            match n.trim().parse::<u32>() {
                Ok(n) if n > 0 => config.num_executors = n,
                _ => {
                    return html_error(
                        StatusCode::BAD_REQUEST,
                        &format!("Invalid agent configuration for {name}. Invalid # of executors."),
                    )
                }
            }
        }
        if let Some(mode) = text("mode") {
            match Mode::parse(&mode) {
                Some(mode) => config.mode = mode,
                None => {
                    return html_error(
                        StatusCode::BAD_REQUEST,
                        &format!("No enum constant hudson.model.Node.Mode.{mode}"),
                    )
                }
            }
        }
        config.labels = text("labelString").unwrap_or_default();
        config.description = text("nodeDescription").unwrap_or_default();
        if let Some(fs) = text("remoteFS") {
            config.remote_fs = fs;
        }
        let launcher = json.get("launcher").and_then(Value::as_object);
        config.inbound = launcher.is_some_and(|l| {
            l.get("$class")
                .or_else(|| l.get("stapler-class"))
                .and_then(Value::as_str)
                == Some("hudson.slaves.JNLPLauncher")
        });
        config.web_socket = config.inbound
            && launcher
                .and_then(|l| l.get("webSocket"))
                .is_some_and(|w| w.as_bool() == Some(true) || w.as_str() == Some("true"));
        match self.shared.create_node(config) {
            Ok(()) => redirect(&format!("{}computer/", self.shared.url)),
            Err(reason) => html_error(StatusCode::BAD_REQUEST, &reason),
        }
    }

    pub(super) fn create_xml(
        &self,
        query: &BTreeMap<String, String>,
        xml: bool,
        body: &Bytes,
    ) -> Response<Body> {
        if let Some(denied) = self.require(Permission::ComputerCreate) {
            return denied;
        }
        let version = self.shared.state().jenkins.version.clone();
        if !(xml && version_at_least(&version, XML_CREATE_SINCE)) {
            // The older handler: the "New Node" wizard's second step.
            return match query.get("mode") {
                None => html_error(StatusCode::BAD_REQUEST, "No mode given"),
                Some(mode) => html_error(
                    StatusCode::BAD_REQUEST,
                    &format!("No node type ‘{mode}’ is known"),
                ),
            };
        }
        let Some(mut config) = parse_slave_xml(&String::from_utf8_lossy(body)) else {
            // XStream cannot make a Node of it: an exception, 500.
            return html_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Unable to read the node's XML",
            );
        };
        // `?name=` wins; this route skips `checkGoodName`, as Jenkins does.
        if let Some(name) = query
            .get("name")
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
        {
            config.name = name.to_owned();
        }
        if config.name.is_empty() {
            return html_error(StatusCode::INTERNAL_SERVER_ERROR, "The node has no name");
        }
        let name = config.name.clone();
        match self.shared.create_node(config) {
            Ok(()) => Response::new(Full::new(Bytes::new())),
            Err(_) => html_error(
                StatusCode::BAD_REQUEST,
                &format!("Node '{name}' already exists"),
            ),
        }
    }

    pub(super) fn node_action(
        &self,
        name: &str,
        action: NodeAction,
        form: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let temporarily_offline = {
            let state = self.shared.state();
            match state.jenkins.nodes.get(name) {
                Some(node) => node.temporarily_offline.is_some(),
                None => return not_found(),
            }
        };
        let here = format!("{}computer/{}/", self.shared.url, url_encode(name));
        let message = form.get("offlineMessage").map(String::as_str).unwrap_or("");
        match action {
            NodeAction::Delete => {
                if let Some(denied) = self.require(Permission::ComputerDelete) {
                    return denied;
                }
                if !self.shared.delete_node(name) {
                    return not_found();
                }
                redirect(&format!("{}computer/", self.shared.url))
            }
            NodeAction::ToggleOffline if temporarily_offline => {
                if let Some(denied) = self.require(Permission::ComputerConnect) {
                    return denied;
                }
                self.shared
                    .set_temporarily_offline(name, self.caller.name(), None);
                redirect(&here)
            }
            NodeAction::ChangeOfflineCause | NodeAction::ToggleOffline => {
                if let Some(denied) = self.require(Permission::ComputerDisconnect) {
                    return denied;
                }
                self.shared
                    .set_temporarily_offline(name, self.caller.name(), Some(message));
                redirect(&here)
            }
            NodeAction::Disconnect => {
                if let Some(denied) = self.require(Permission::ComputerDisconnect) {
                    return denied;
                }
                if let Some(live) = self.shared.state().channels.get(name) {
                    live.kicked.cancel();
                }
                redirect(&here)
            }
        }
    }
}
