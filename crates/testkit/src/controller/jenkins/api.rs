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

mod nodes;
mod queue;
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
