//! [`JenkinsClient`]: the calls of JENKINS-REST.md section 7 over reqwest.
//!
//! Statuses are read as Jenkins means them: 401 is a refused token, 403
//! names the missing permission in `X-Required-Permission`, 302 is how
//! form posts (create, delete, offline) succeed, 404 on a node means it is
//! absent. Redirects are never followed (a 302 to a login page must not
//! read as success of a GET).

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, ACCEPT_LANGUAGE, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::{excerpt, MAX_EXCERPT};
use super::node::{check_name, DUMB_SLAVE_TYPE};
use super::secret::{secret_from_jnlp, MAX_JNLP};
use super::version::{JENKINS_AGENT_JNLP_SINCE, XML_CREATE_SINCE};
use super::{JenkinsError, NodeSpec, Version};

/// The largest JSON answer read (a queue or computer list of thousands).
pub const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// How long one exchange may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take (an unreachable controller fails fast).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest user name or API token accepted.
const MAX_CREDENTIAL: usize = 1024;
/// The longest permission id kept from `X-Required-Permission`.
const MAX_PERMISSION: usize = 200;

/// `tree=` for the queue: only exported names (`labelExpression` is
/// hidden at the default depth, visible through `tree=`).
const QUEUE_TREE: &str =
    "items[id,why,buildable,blocked,stuck,pending,inQueueSince,task[name,url,labelExpression]]";
/// `tree=` for a computer.
/// `executors[currentExecutable[…]]` tells which item's build runs there
/// and since when (`Run.queueId`, `Run.timestamp`; null without Job/Read).
const COMPUTER_FIELDS: &str = "displayName,offline,temporarilyOffline,idle,numExecutors,offlineCauseReason,absoluteRemotePath,assignedLabels[name],executors[currentExecutable[queueId,timestamp]]";

/// A client of one controller, logged in as one user with an API token.
#[derive(Clone)]
pub struct JenkinsClient {
    http: reqwest::Client,
    /// The controller's root URL, ending in `/`.
    base: String,
    user: String,
    token: String,
}

impl fmt::Debug for JenkinsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token stays out of every log line.
        f.debug_struct("JenkinsClient")
            .field("base", &self.base)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The controller itself (`GET /api/json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// `X-Jenkins`, if sent.
    pub version: Option<Version>,
    /// The TCP agent port: `None` when disabled (`-1`) or not exported.
    pub tcp_agent_port: Option<u16>,
}

impl Root {
    /// Whether agents must connect over WebSocket (no TCP agent port).
    pub fn web_socket_only(&self) -> bool {
        self.tcp_agent_port.is_none()
    }
}

/// A queue item, as the lender reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueItem {
    /// The queue id.
    pub id: u64,
    /// Why it waits (English), if it does.
    #[serde(default)]
    pub why: Option<String>,
    /// A `BuildableItem`.
    #[serde(default)]
    pub buildable: bool,
    /// A `BlockedItem`.
    #[serde(default)]
    pub blocked: bool,
    /// `isStuck()`.
    #[serde(default)]
    pub stuck: bool,
    /// Already handed to an executor.
    #[serde(default)]
    pub pending: bool,
    /// When it was queued (unix ms).
    #[serde(default)]
    pub in_queue_since: u64,
    /// Its task.
    #[serde(default)]
    pub task: Task,
}

/// A queue item's task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// The job's name (for Pipelines: `part of <run>`).
    #[serde(default)]
    pub name: Option<String>,
    /// The job's URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Freestyle and matrix jobs only: the configured label expression.
    #[serde(default)]
    pub label_expression: Option<String>,
}

impl QueueItem {
    /// Demand: buildable and not yet handed to an executor (blocked items
    /// wait for something a new agent does not bring).
    pub fn is_demand(&self) -> bool {
        self.buildable && !self.pending
    }
}

/// A computer (node), as `computer/api/json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Computer {
    /// The node's name (`displayName`; "Built-In Node" for the controller).
    pub name: String,
    /// Temporarily offline or no channel.
    pub offline: bool,
    /// Taken offline on purpose.
    pub temporarily_offline: bool,
    /// Every executor idle.
    pub idle: bool,
    /// Executors.
    pub num_executors: u32,
    /// Why it is offline (`""` if not).
    pub offline_cause_reason: String,
    /// An agent is connected (`absoluteRemotePath` is set; needs
    /// Computer/Connect).
    pub connected: bool,
    /// Its label atoms, its own name included.
    pub labels: Vec<String>,
    /// The builds running on its executors (those the user may read).
    pub builds: Vec<RunningBuild>,
}

/// A build running on an executor: which queue item it came from, and
/// when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningBuild {
    /// The queue item's id (`Run.queueId`).
    pub queue_id: u64,
    /// When it started (unix ms, `Run.timestamp`).
    pub started_ms: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ComputerWire {
    display_name: String,
    #[serde(default)]
    offline: bool,
    #[serde(default)]
    temporarily_offline: bool,
    #[serde(default)]
    idle: bool,
    #[serde(default)]
    num_executors: u32,
    #[serde(default)]
    offline_cause_reason: Option<String>,
    #[serde(default)]
    absolute_remote_path: Option<String>,
    #[serde(default)]
    assigned_labels: Vec<LabelWire>,
    #[serde(default)]
    executors: Vec<ExecutorWire>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecutorWire {
    #[serde(default)]
    current_executable: Option<RunWire>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunWire {
    #[serde(default)]
    queue_id: Option<u64>,
    #[serde(default)]
    timestamp: Option<u64>,
}

#[derive(Deserialize)]
struct LabelWire {
    name: String,
}

impl From<ComputerWire> for Computer {
    fn from(w: ComputerWire) -> Self {
        Computer {
            name: w.display_name,
            offline: w.offline,
            temporarily_offline: w.temporarily_offline,
            idle: w.idle,
            num_executors: w.num_executors,
            offline_cause_reason: w.offline_cause_reason.unwrap_or_default(),
            connected: w.absolute_remote_path.is_some(),
            labels: w.assigned_labels.into_iter().map(|l| l.name).collect(),
            builds: w
                .executors
                .into_iter()
                .filter_map(|e| {
                    let run = e.current_executable?;
                    Some(RunningBuild {
                        queue_id: run.queue_id?,
                        started_ms: run.timestamp?,
                    })
                })
                .collect(),
        }
    }
}

/// A bounded answer.
struct Answer {
    status: StatusCode,
    version: Option<Version>,
    body: Vec<u8>,
}

/// What a request sends.
enum Body {
    None,
    Form(Vec<(&'static str, String)>),
    Xml(String),
}

impl JenkinsClient {
    /// A client of the controller at `url` (`http(s)://host[:port][/prefix]`)
    /// as `user` with `api_token`.
    pub fn new(url: &str, user: &str, api_token: &str) -> Result<Self, JenkinsError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            JenkinsError::Setup(format!("the Jenkins URL {url:?} is not a URL: {e}"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(JenkinsError::Setup(format!(
                "the Jenkins URL must be http(s)://HOST[:PORT][/PATH], not {url:?}"
            )));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(JenkinsError::Setup(
                "the Jenkins URL must not carry credentials: give the user and the API token file separately".into(),
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(JenkinsError::Setup(format!(
                "the Jenkins URL must not have a query or fragment: {url:?}"
            )));
        }
        for (what, value) in [("user", user), ("API token", api_token)] {
            if value.is_empty()
                || value.len() > MAX_CREDENTIAL
                || value.chars().any(char::is_control)
            {
                return Err(JenkinsError::Setup(format!(
                    "the Jenkins {what} must be 1 to {MAX_CREDENTIAL} printable characters"
                )));
            }
        }
        if user.contains(':') {
            return Err(JenkinsError::Setup(
                "the Jenkins user must not contain ':' (Basic auth splits there)".into(),
            ));
        }
        let mut base = parsed.to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| JenkinsError::Setup(format!("cannot set up an HTTP client: {e}")))?;
        Ok(JenkinsClient {
            http,
            base,
            user: user.to_owned(),
            token: api_token.to_owned(),
        })
    }

    /// The controller's root URL (ending in `/`).
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The user the client logs in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// `GET /api/json?tree=slaveAgentPort`: the version and TCP agent port.
    pub async fn root(&self) -> Result<Root, JenkinsError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire {
            #[serde(default)]
            slave_agent_port: Option<i64>,
        }
        let path = "api/json?tree=slaveAgentPort";
        let answer = self
            .expect_ok(Method::GET, path, Body::None, MAX_ANSWER)
            .await?;
        let wire: Wire = decode(path, &answer.body)?;
        Ok(Root {
            version: answer.version,
            tcp_agent_port: wire
                .slave_agent_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0),
        })
    }

    /// `GET /queue/api/json?tree=…`: every item the user may read.
    pub async fn queue(&self) -> Result<Vec<QueueItem>, JenkinsError> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            items: Vec<QueueItem>,
        }
        let path = format!("queue/api/json?tree={QUEUE_TREE}");
        let answer = self
            .expect_ok(Method::GET, &path, Body::None, MAX_ANSWER)
            .await?;
        Ok(decode::<Wire>("queue/api/json", &answer.body)?.items)
    }

    /// `GET /computer/api/json?tree=computer[…]`: every node.
    pub async fn computers(&self) -> Result<Vec<Computer>, JenkinsError> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            computer: Vec<ComputerWire>,
        }
        let path = format!("computer/api/json?tree=computer[{COMPUTER_FIELDS}]");
        let answer = self
            .expect_ok(Method::GET, &path, Body::None, MAX_ANSWER)
            .await?;
        let wire: Wire = decode("computer/api/json", &answer.body)?;
        Ok(wire.computer.into_iter().map(Computer::from).collect())
    }

    /// `GET /computer/N/api/json`: the node, or `None` if it does not exist.
    pub async fn computer(&self, name: &str) -> Result<Option<Computer>, JenkinsError> {
        check_name(name)?;
        let path = format!("computer/{}/api/json?tree={COMPUTER_FIELDS}", encode(name));
        let answer = self
            .send(Method::GET, &path, Body::None, MAX_ANSWER)
            .await?;
        match answer.status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(
                decode::<ComputerWire>(&node_path(name, "api/json"), &answer.body)?.into(),
            )),
            _ => Err(unexpected(&node_path(name, "api/json"), &answer)),
        }
    }

    /// Creates the node: `POST /computer/createItem` with `<slave>` XML from
    /// 2.539 on, else the `doCreateItem` form. An existing name is an error
    /// (400): look first with [`JenkinsClient::computer`] to reuse a node.
    pub async fn create_node(
        &self,
        spec: &NodeSpec,
        version: &Version,
    ) -> Result<(), JenkinsError> {
        check_name(spec.name())?;
        let (path, body) = if version.at_least(XML_CREATE_SINCE) {
            (
                format!("computer/createItem?name={}", encode(spec.name())),
                Body::Xml(spec.to_xml()),
            )
        } else {
            (
                "computer/doCreateItem".to_owned(),
                Body::Form(vec![
                    ("name", spec.name().to_owned()),
                    ("type", DUMB_SLAVE_TYPE.to_owned()),
                    ("json", spec.to_form_json()),
                ]),
            )
        };
        self.post_ok(&path, body).await
    }

    /// The node's secret: the first `<argument>` of
    /// `computer/N/jenkins-agent.jnlp` (`slave-agent.jnlp` before 2.264);
    /// needs Computer/Connect.
    pub async fn node_secret(&self, name: &str, version: &Version) -> Result<String, JenkinsError> {
        check_name(name)?;
        let file = if version.at_least(JENKINS_AGENT_JNLP_SINCE) {
            "jenkins-agent.jnlp"
        } else {
            "slave-agent.jnlp"
        };
        let path = node_path(name, file);
        let answer = self
            .expect_ok(Method::GET, &path, Body::None, MAX_JNLP)
            .await?;
        secret_from_jnlp(&answer.body).map_err(|reason| JenkinsError::Malformed {
            path: node_path(name, file),
            reason,
        })
    }

    /// `POST /computer/N/changeOfflineCause`: temporarily offline with
    /// `message` (idempotent; Computer/Disconnect).
    pub async fn take_offline(&self, name: &str, message: &str) -> Result<(), JenkinsError> {
        check_name(name)?;
        let path = node_path(name, "changeOfflineCause");
        self.post_ok(
            &path,
            Body::Form(vec![("offlineMessage", message.to_owned())]),
        )
        .await
    }

    /// `POST /computer/N/toggleOffline`: clears a temporary offline cause,
    /// or sets one if there is none. Not idempotent: see
    /// [`JenkinsClient::bring_online`].
    pub async fn toggle_offline(&self, name: &str) -> Result<(), JenkinsError> {
        check_name(name)?;
        self.post_ok(&node_path(name, "toggleOffline"), Body::None)
            .await
    }

    /// Brings the node back online if, and only if, it is temporarily
    /// offline; `false` if there was nothing to do (or no such node).
    pub async fn bring_online(&self, name: &str) -> Result<bool, JenkinsError> {
        match self.computer(name).await? {
            Some(c) if c.temporarily_offline => {
                self.toggle_offline(name).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// `POST /computer/N/doDelete` (closes its channel at once: delete only
    /// idle nodes). `false` if the node was already gone.
    pub async fn delete_node(&self, name: &str) -> Result<bool, JenkinsError> {
        check_name(name)?;
        let path = node_path(name, "doDelete");
        let answer = self
            .send(Method::POST, &path, Body::None, MAX_ANSWER)
            .await?;
        match answer.status {
            StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() || s.is_redirection() => Ok(true),
            _ => Err(unexpected(&path, &answer)),
        }
    }

    async fn post_ok(&self, path: &str, body: Body) -> Result<(), JenkinsError> {
        let answer = self.send(Method::POST, path, body, MAX_ANSWER).await?;
        if answer.status.is_success() || answer.status.is_redirection() {
            Ok(())
        } else {
            Err(unexpected(path, &answer))
        }
    }

    async fn expect_ok(
        &self,
        method: Method,
        path: &str,
        body: Body,
        max: usize,
    ) -> Result<Answer, JenkinsError> {
        let answer = self.send(method, path, body, max).await?;
        if answer.status.is_success() {
            Ok(answer)
        } else {
            Err(unexpected(path_only(path), &answer))
        }
    }

    /// One exchange; 401 and 403 become their errors here, any other
    /// status is the caller's to read.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body,
        max: usize,
    ) -> Result<Answer, JenkinsError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.token))
            .header(ACCEPT_LANGUAGE, "en");
        request = match body {
            Body::None => request,
            Body::Form(fields) => request.form(&fields),
            Body::Xml(xml) => request.header(CONTENT_TYPE, "application/xml").body(xml),
        };
        let mut response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let version = header(response.headers(), "x-jenkins").and_then(|v| Version::parse(&v));
        match status {
            StatusCode::UNAUTHORIZED => {
                return Err(JenkinsError::Unauthorized {
                    user: self.user.clone(),
                })
            }
            StatusCode::FORBIDDEN => {
                let permission = header(response.headers(), "x-required-permission")
                    .map(|p| excerpt(&p, MAX_PERMISSION));
                return Err(JenkinsError::Forbidden {
                    user: self.user.clone(),
                    permission,
                    path: path_only(path).to_owned(),
                });
            }
            _ => {}
        }
        if response.content_length().is_some_and(|n| n > max as u64) {
            return Err(too_large(path, max));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.unreachable(&e))? {
            if body.len() + chunk.len() > max {
                return Err(too_large(path, max));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            version,
            body,
        })
    }

    fn unreachable(&self, err: &reqwest::Error) -> JenkinsError {
        // reqwest's message names the URL (no credentials: those are in a
        // header) and the cause chain says what broke.
        let mut reason = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            reason.push_str(": ");
            reason.push_str(&s.to_string());
            source = s.source();
        }
        JenkinsError::Unreachable {
            url: self.base.clone(),
            reason: excerpt(&reason, MAX_EXCERPT * 2),
        }
    }
}

fn too_large(path: &str, max: usize) -> JenkinsError {
    JenkinsError::TooLarge {
        path: path_only(path).to_owned(),
        max,
    }
}

fn unexpected(path: &str, answer: &Answer) -> JenkinsError {
    let path = path_only(path).to_owned();
    if answer.status == StatusCode::NOT_FOUND {
        return JenkinsError::NotFound { path };
    }
    JenkinsError::Status {
        status: answer.status.as_u16(),
        path,
        excerpt: excerpt(&String::from_utf8_lossy(&answer.body), MAX_EXCERPT),
    }
}

fn decode<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, JenkinsError> {
    serde_json::from_slice(body).map_err(|e| JenkinsError::Malformed {
        path: path_only(path).to_owned(),
        reason: e.to_string(),
    })
}

/// A path without its query (errors need not repeat `tree=`).
fn path_only(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

fn node_path(name: &str, rest: &str) -> String {
    format!("computer/{}/{rest}", encode(name))
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Percent-encodes all but unreserved characters, as Jenkins'
/// `Util.fullEncode` does for path segments.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode("lent-mac1"), "lent-mac1");
        assert_eq!(encode("a b+é"), "a%20b%2B%C3%A9");
    }

    #[test]
    fn refuses_unusable_setups_without_echoing_the_token() {
        for (url, user, token) in [
            ("ftp://j/", "u", "t"),
            ("not a url", "u", "t"),
            ("http://u:p@j/", "u", "t"),
            ("http://j/?x=1", "u", "t"),
            ("http://j/", "", "t"),
            ("http://j/", "a:b", "t"),
            ("http://j/", "u", ""),
            ("http://j/", "u", "sec\nret"),
        ] {
            let err = JenkinsClient::new(url, user, token).expect_err(url);
            assert!(!err.to_string().contains("sec\nret"));
        }
        let c = JenkinsClient::new("http://j:8080/jenkins", "u", "hidden-token").expect("valid");
        assert_eq!(c.url(), "http://j:8080/jenkins/");
        assert!(!format!("{c:?}").contains("hidden-token"));
    }

    #[test]
    fn reads_a_queue_item() {
        let item: QueueItem = serde_json::from_str(
            r#"{"_class":"hudson.model.Queue$BuildableItem","buildable":true,"id":42,"inQueueSince":1767000000000,
                "pending":false,"task":{"_class":"x","labelExpression":null},"why":"‘m1’ is offline"}"#,
        )
        .expect("an item");
        assert!(item.is_demand());
        assert_eq!(item.task.label_expression, None);
        assert_eq!(item.in_queue_since, 1_767_000_000_000);
    }
}
