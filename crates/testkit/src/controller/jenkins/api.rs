//! The Jenkins HTTP API routes, with Jenkins' status codes and headers.
//!
//! | route | permission | answer |
//! |---|---|---|
//! | any, bad `Authorization: Basic` | — | 401, `WWW-Authenticate: Basic realm="Jenkins"` |
//! | `GET whoAmI/api/json` | none | `{name, authenticated, anonymous, authorities}` |
//! | `GET api/json` | Overall/Read | the root object |
//! | `GET computer/api/json`, `computer/N/api/json` | Overall/Read | JENKINS-REST.md 4; 404 for an unknown N |
//! | `GET computer/N/jenkins-agent.jnlp` (>= 2.264), `slave-agent.jnlp` | Overall/Read, Agent/Connect | the JNLP file, secret first |
//! | `POST computer/doCreateItem` (form `name`, `type`, `json`) | Agent/Create | 302; 400 for a bad or taken name |
//! | `POST computer/createItem` (`<slave>` XML, >= 2.539) | Agent/Create | 200; 400 if taken. Before 2.539 the route exists for the "New Node" wizard and answers 400 `No mode given` |
//! | `GET`/`POST computer/N/config.xml` | Agent/ExtendedRead / Agent/Configure | the `<slave>` XML / 200 (400 `Node types do not match` for another root) |
//! | `POST computer/N/doDelete` | Agent/Delete | 302; 404 if missing; the channel closes at once |
//! | `POST computer/N/changeOfflineCause` | Agent/Disconnect | 302; idempotent |
//! | `POST computer/N/toggleOffline` | Connect (to online) / Disconnect | 302 |
//! | `POST computer/N/doDisconnect` | Agent/Disconnect | 302; closes the channel |
//! | `GET label/EXPR/api/json` | Overall/Read | name, nodes, executors, offline (JENKINS-REST.md 1.3; no clouds, no load statistics) |
//! | `GET queue/api/json`, `queue/item/ID/api/json` | Overall/Read (+ Job/Read per item) | JENKINS-REST.md 1.1 |
//! | `POST queue/cancelItem?id=N` | Job/Cancel | 204; 404 unknown (or unreadable); 422 without Cancel |
//!
//! A 403 carries `X-You-Are-Authenticated-As`, `X-Required-Permission` and
//! one `X-Permission-Implied-By` per link of the chain
//! (`AccessDeniedException3.reportAsHeaders`). `GET` on a POST-only route
//! is 405 (`@RequirePOST`). `tree=` keeps only the named fields (and
//! `_class`), at any depth; without it, fields hidden at Jenkins' default
//! depth are pruned (a task's `labelExpression`, a Pipeline task's name,
//! the executors' details in the computer list).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::super::http::{jnlp, not_found, percent_decode, text, with_type, xml_escape, Body};
use super::super::Shared;
use super::auth::{Authn, Caller, Permission};
use super::labels::check_good_name;
use super::messages::Lang;
use super::wire::{filter, params, parse_slave_xml, parse_tree, slave_xml, url_encode};
use super::{
    version_at_least, BuildState, Item, JobKind, Mode, Model, Node, NodeConfig,
    JENKINS_AGENT_JNLP_SINCE, XML_CREATE_SINCE,
};

/// Answers a Jenkins API request; `None` for paths that are not Jenkins
/// API routes (the caller serves those).
pub(in crate::controller) fn route(
    shared: &Arc<Shared>,
    request: &http::request::Parts,
    body: &Bytes,
) -> Option<Response<Body>> {
    let auth = request
        .headers
        .get(http::header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let caller = match shared.state().jenkins.security.authenticate(auth) {
        Authn::Ok(caller) => caller,
        Authn::Invalid => return Some(unauthorized()),
    };
    let path = request.uri.path();
    let query = params(request.uri.query().unwrap_or(""));
    let lang = Lang::from_accept_language(
        request
            .headers
            .get(http::header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    );
    let get = request.method == Method::GET || request.method == Method::HEAD;
    let post = request.method == Method::POST;
    let (job_read, connect) = {
        let state = shared.state();
        let security = &state.jenkins.security;
        (
            security.has(&caller, Permission::JobRead),
            security.has(&caller, Permission::ComputerConnect),
        )
    };
    let api = Api {
        shared,
        caller,
        lang,
        tree: query.get("tree").cloned(),
        job_read,
        connect,
    };

    if path == "/whoAmI/api/json" && get {
        return Some(api.who_am_i());
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let route: Route = match segments.as_slice() {
        ["api", "json"] => Route::Root,
        ["computer", "api", "json"] => Route::Computers,
        ["computer", "doCreateItem"] => Route::CreateForm,
        ["computer", "createItem"] => Route::CreateXml,
        ["computer", name, "api", "json"] => Route::Computer(percent_decode(name)?),
        ["computer", name, file @ ("jenkins-agent.jnlp" | "slave-agent.jnlp")] => {
            Route::Jnlp(percent_decode(name)?, *file == "jenkins-agent.jnlp")
        }
        ["computer", name, "config.xml"] => Route::ConfigXml(percent_decode(name)?),
        ["computer", name, action] => {
            let action = match *action {
                "doDelete" => NodeAction::Delete,
                "changeOfflineCause" => NodeAction::ChangeOfflineCause,
                "toggleOffline" => NodeAction::ToggleOffline,
                "doDisconnect" => NodeAction::Disconnect,
                _ => return None,
            };
            Route::NodeAction(percent_decode(name)?, action)
        }
        ["label", expression, "api", "json"] => Route::Label(percent_decode(expression)?),
        ["queue", "api", "json"] => Route::Queue,
        ["queue", "item", id, "api", "json"] => Route::QueueItem(id.parse().ok()),
        ["queue", "cancelItem"] => Route::Cancel,
        _ => return None,
    };
    // Everything needs Overall/Read, but for the JNLP file: callers
    // without it are still routed there (`LowPermissionResponse`).
    if !matches!(route, Route::Jnlp(..)) {
        if let Some(denied) = api.require(Permission::OverallRead) {
            return Some(denied);
        }
    }
    let form = || {
        let mut all = query.clone();
        for (k, v) in params(&String::from_utf8_lossy(body)) {
            all.entry(k).or_insert(v);
        }
        all
    };
    Some(match (route, get, post) {
        (Route::Root, true, _) => api.root(),
        (Route::Computers, true, _) => api.computers(),
        (Route::Computer(name), true, _) => api.computer(&name),
        (Route::Jnlp(name, new_name), true, _) => api.jnlp(&name, new_name, &query),
        (Route::ConfigXml(name), true, _) => api.config_xml(&name),
        (Route::ConfigXml(name), _, true) => api.update_config_xml(&name, body),
        (Route::Label(expression), true, _) => api.label(&expression),
        (Route::Queue, true, _) => api.queue(),
        (Route::QueueItem(id), true, _) => api.queue_item(id),
        (Route::CreateForm, _, true) => api.create_form(&form()),
        (Route::CreateXml, _, true) => {
            let xml = request
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("application/xml") || t.starts_with("text/xml"));
            api.create_xml(&query, xml, body)
        }
        (Route::NodeAction(name, action), _, true) => api.node_action(&name, action, &form()),
        (Route::Cancel, _, true) => api.cancel(query.get("id").map(String::as_str)),
        // `@RequirePOST` / `@POST` handlers refuse other methods.
        (Route::CreateForm | Route::CreateXml | Route::NodeAction(..) | Route::Cancel, _, _) => {
            html_error(StatusCode::METHOD_NOT_ALLOWED, "POST is required")
        }
        _ => not_found(),
    })
}

#[derive(Debug)]
enum Route {
    Root,
    Computers,
    Computer(String),
    Jnlp(String, bool),
    CreateForm,
    CreateXml,
    NodeAction(String, NodeAction),
    ConfigXml(String),
    Label(String),
    Queue,
    QueueItem(Option<u64>),
    Cancel,
}

/// `POST computer/N/...`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeAction {
    Delete,
    ChangeOfflineCause,
    ToggleOffline,
    Disconnect,
}

/// One request's context.
struct Api<'a> {
    shared: &'a Arc<Shared>,
    caller: Caller,
    lang: Lang,
    tree: Option<String>,
    /// Job/Read: running builds show in executors.
    job_read: bool,
    /// Agent/Connect: `absoluteRemotePath` shows.
    connect: bool,
}

impl Api<'_> {
    fn has(&self, permission: Permission) -> bool {
        self.shared
            .state()
            .jenkins
            .security
            .has(&self.caller, permission)
    }

    /// `None` if the caller holds `permission`, else Jenkins' 403.
    fn require(&self, permission: Permission) -> Option<Response<Body>> {
        if self.has(permission) {
            return None;
        }
        let who = self.caller.name().to_owned();
        let mut response = text(
            StatusCode::FORBIDDEN,
            &format!("{who} is missing the {} permission\n", title(permission)),
        );
        let headers = response.headers_mut();
        let value = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("?"));
        headers.insert("x-you-are-authenticated-as", value(&who));
        headers.insert(
            "x-you-are-in-group-disabled",
            HeaderValue::from_static("JENKINS-39402: use -Dhudson.security.AccessDeniedException2.REPORT_GROUP_HEADERS=true or use /whoAmI to diagnose"),
        );
        headers.insert("x-required-permission", value(permission.id()));
        let mut p = permission.implied_by();
        while let Some(each) = p {
            headers.append("x-permission-implied-by", value(each.id()));
            p = each.implied_by();
        }
        Some(response)
    }

    /// Serializes `value` after `tree=` (or the default-depth `prune`).
    fn json(&self, value: Value, prune: impl FnOnce(&mut Value)) -> Response<Body> {
        let value = match &self.tree {
            Some(tree) => match parse_tree(tree) {
                Ok(fields) => filter(&value, &fields),
                Err(reason) => {
                    return html_error(StatusCode::BAD_REQUEST, &format!("bad tree: {reason}"))
                }
            },
            None => {
                let mut value = value;
                prune(&mut value);
                value
            }
        };
        let body = serde_json::to_vec(&value).unwrap_or_default();
        with_type(
            Response::new(Full::new(Bytes::from(body))),
            "application/json;charset=utf-8",
        )
    }

    fn who_am_i(&self) -> Response<Body> {
        let anonymous = self.caller == Caller::Anonymous;
        let value = json!({
            "_class": "hudson.security.WhoAmI",
            // Spring's anonymous token counts as authenticated, as in Jenkins.
            "anonymous": anonymous,
            "authenticated": true,
            "authorities": if anonymous { json!(["anonymous"]) } else { json!(["authenticated"]) },
            "name": self.caller.name(),
        });
        self.json(value, |_| {})
    }

    fn root(&self) -> Response<Body> {
        let state = self.shared.state();
        let value = json!({
            "_class": "hudson.model.Hudson",
            "assignedLabels": [{"name": "built-in"}],
            "mode": "NORMAL",
            "nodeDescription": "the Jenkins controller's built-in node",
            "nodeName": "",
            "numExecutors": 0,
            "description": null,
            "jobs": [],
            "quietingDown": false,
            "slaveAgentPort": if self.shared.tcp_disabled { -1 } else { i64::from(self.shared.agent_port) },
            "url": self.shared.url,
            "useCrumbs": true,
            "useSecurity": state.jenkins.security.enabled(),
            "views": [],
        });
        drop(state);
        self.json(value, |_| {})
    }

    fn computer_json(&self, model: &Model, name: &str, node: &Node, online: bool) -> Value {
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

    fn built_in_json() -> Value {
        json!({
            "_class": "hudson.model.Hudson$MasterComputer",
            "actions": [],
            "assignedLabels": [{"name": "built-in"}],
            "description": "the Jenkins controller's built-in node",
            "displayName": super::BUILT_IN,
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

    fn computers(&self) -> Response<Body> {
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

    fn computer(&self, name: &str) -> Response<Body> {
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

    fn jnlp(&self, name: &str, new_name: bool, query: &BTreeMap<String, String>) -> Response<Body> {
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
    fn config_xml(&self, name: &str) -> Response<Body> {
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
    fn update_config_xml(&self, name: &str, body: &Bytes) -> Response<Body> {
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

    /// `Jenkins.getLabel`: any expression (or, failing to parse, one atom).
    fn label(&self, expression: &str) -> Response<Body> {
        let Some(label) = super::labels::Label::for_job(expression) else {
            return not_found();
        };
        let value = {
            let state = self.shared.state();
            let model = &state.jenkins;
            let online = |name: &str| state.channels.contains_key(name);
            let nodes = model.label_nodes(&label);
            let (mut total, mut busy) = (0, 0);
            for name in &nodes {
                if let Some(node) = model.nodes.get(*name) {
                    if online(name) {
                        total += node.executors.len();
                        busy += node.executors.iter().filter(|e| e.is_some()).count();
                    }
                }
            }
            let class = match &label {
                super::labels::Label::Atom(_) => "hudson.model.labels.LabelAtom",
                super::labels::Label::Not(_) => "hudson.model.labels.LabelExpression$Not",
                super::labels::Label::Paren(_) => "hudson.model.labels.LabelExpression$Paren",
                super::labels::Label::And(..) => "hudson.model.labels.LabelExpression$And",
                super::labels::Label::Or(..) => "hudson.model.labels.LabelExpression$Or",
                super::labels::Label::Implies(..) => "hudson.model.labels.LabelExpression$Implies",
                super::labels::Label::Iff(..) => "hudson.model.labels.LabelExpression$Iff",
            };
            json!({
                "_class": class,
                "actions": [],
                "busyExecutors": busy,
                "clouds": [],
                "description": "",
                "idleExecutors": model.idle_executors(Some(&label), &online),
                "name": label.name(),
                "nodes": nodes.iter().map(|n| if *n == super::BUILT_IN {
                    json!({"_class": "hudson.model.Hudson", "nodeName": ""})
                } else {
                    json!({"_class": "hudson.slaves.DumbSlave", "nodeName": n})
                }).collect::<Vec<_>>(),
                "offline": model.label_offline(&label, &online),
                "tiedJobs": [],
                "totalExecutors": total,
            })
        };
        self.json(value, |_| {})
    }

    fn item_json(
        &self,
        model: &Model,
        item: &Item,
        online: &dyn Fn(&str) -> bool,
        now: u64,
    ) -> Value {
        let url = &self.shared.url;
        let task = match item.job.kind {
            JobKind::Freestyle => json!({
                "_class": "hudson.model.FreeStyleProject",
                "color": "notbuilt",
                "labelExpression": item.job.label,
                "name": item.job.name,
                "url": format!("{url}job/{}/", url_encode(&item.job.name)),
            }),
            JobKind::Pipeline => json!({
                "_class": "org.jenkinsci.plugins.workflow.support.steps.ExecutorStepExecution$PlaceholderTask",
                "fullDisplayName": format!("{} #{}", item.job.name, item.id),
                "name": format!("part of {} #{}", item.job.name, item.id),
                "url": format!("{url}job/{}/{}/", url_encode(&item.job.name), item.id),
            }),
        };
        json!({
            "_class": "hudson.model.Queue$BuildableItem",
            "actions": [],
            "blocked": false,
            "buildable": true,
            "id": item.id,
            "inQueueSince": item.in_queue_since_ms,
            "params": "",
            "stuck": model.stuck(item, online, now),
            "task": task,
            "url": format!("queue/item/{}/", item.id),
            "why": model.why(item, online, self.lang),
            "buildableStartMilliseconds": item.buildable_start_ms,
            "pending": false,
        })
    }

    fn queue(&self) -> Response<Body> {
        let now = super::now_ms();
        let readable = self.job_read;
        let state = self.shared.state();
        let online = |name: &str| state.channels.contains_key(name);
        // Buildable items come newest first (Jenkins lists them reversed);
        // items the caller may not read are left out.
        let items: Vec<Value> = if readable {
            state
                .jenkins
                .queue
                .iter()
                .rev()
                .map(|item| self.item_json(&state.jenkins, item, &online, now))
                .collect()
        } else {
            Vec::new()
        };
        drop(state);
        let value = json!({
            "_class": "hudson.model.Queue",
            "discoverableItems": [],
            "items": items,
        });
        self.json(value, |value| {
            if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
                items.iter_mut().for_each(prune_task);
            }
        })
    }

    fn queue_item(&self, id: Option<u64>) -> Response<Body> {
        let now = super::now_ms();
        let value = {
            let state = self.shared.state();
            let online = |name: &str| state.channels.contains_key(name);
            let Some(item) = id.and_then(|id| state.jenkins.queue.iter().find(|i| i.id == id))
            else {
                return not_found();
            };
            if !state
                .jenkins
                .security
                .has(&self.caller, Permission::JobRead)
            {
                drop(state);
                return self.require(Permission::JobRead).unwrap_or_else(not_found);
            }
            self.item_json(&state.jenkins, item, &online, now)
        };
        self.json(value, prune_task)
    }

    fn create_form(&self, form: &BTreeMap<String, String>) -> Response<Body> {
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

    fn create_xml(
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

    fn node_action(
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

    fn cancel(&self, id: Option<&str>) -> Response<Body> {
        let Some(id) = id.and_then(|id| id.trim().parse::<u64>().ok()) else {
            return html_error(StatusCode::BAD_REQUEST, "Query parameter 'id' is required");
        };
        let (queued, readable) = {
            let state = self.shared.state();
            (
                state.jenkins.queue.iter().any(|i| i.id == id),
                state
                    .jenkins
                    .security
                    .has(&self.caller, Permission::JobRead),
            )
        };
        if !queued || !readable {
            return html_error(
                StatusCode::NOT_FOUND,
                &format!("Provided id ({id}) not found"),
            );
        }
        if !self.has(Permission::JobCancel) {
            return html_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("Item for id ({id}) is not cancellable"),
            );
        }
        let handle = super::super::JenkinsHandle {
            shared: self.shared.clone(),
        };
        if handle.cancel(id) {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        } else {
            html_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("Could not cancel run for id {id}"),
            )
        }
    }
}

/// A Pipeline task shows only `_class` at the default depth, a freestyle
/// one its name, url and color.
fn prune_task(item: &mut Value) {
    if let Some(task) = item.get_mut("task").and_then(Value::as_object_mut) {
        let pipeline = task
            .get("_class")
            .and_then(Value::as_str)
            .is_some_and(|c| c.ends_with("$PlaceholderTask"));
        task.retain(|k, _| k == "_class" || (!pipeline && k != "labelExpression"));
    }
}

/// Permission titles as `AccessDeniedException3`'s message shows them.
fn title(permission: Permission) -> String {
    let id = permission.id();
    let name = id.rsplit('.').next().unwrap_or(id);
    let group = if id.starts_with("hudson.model.Computer.") {
        "Agent"
    } else if id.starts_with("hudson.model.Item.") {
        "Job"
    } else if id.starts_with("hudson.model.Hudson.") {
        "Overall"
    } else {
        "Permission"
    };
    format!("{group}/{name}")
}

fn unauthorized() -> Response<Body> {
    let mut response = html_error(StatusCode::UNAUTHORIZED, "Invalid password/token for user");
    response.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Jenkins\""),
    );
    response
}

/// A `Failure` page (Jenkins renders its `error` view).
fn html_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = format!(
        "<!DOCTYPE html><html><head><title>Error [Jenkins]</title></head><body><h1>Error</h1><p>{}</p></body></html>\n",
        xml_escape(message)
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    with_type(response, "text/html;charset=utf-8")
}

fn redirect(location: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::FOUND;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(http::header::LOCATION, value);
    }
    response
}
