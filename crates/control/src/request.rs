//! Requests: what a client asks the agent ([`Request`] in an [`Envelope`]),
//! where a borrow goes ([`Target`]) and the checks on what a peer sends
//! (URLs, node names).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{to_json, MAX_URL, PROTOCOL_VERSION};

/// A request, as sent on the wire inside an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Where the agent is and what it is doing.
    Status,
    /// Lend the agent to another controller.
    Borrow(BorrowRequest),
    /// Bring the agent home.
    Return {
        /// Wait until idle (default) or go now.
        #[serde(default)]
        when: When,
        /// Reply only once the agent is online at home, or after this long
        /// (an error then); without it the reply comes at once.
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        wait: Option<Duration>,
    },
    /// Stream events until the connection is closed.
    Events,
}

/// A request with the protocol version beside it: what a client writes.
///
/// Serializes as `{"version":1,"command":...,...}`. The server does not
/// deserialize this type but reads lines with [`parse_request`], which checks
/// the version first so that a request from a newer client gets a clear error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Envelope {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The request.
    #[serde(flatten)]
    pub request: Request,
}

impl Envelope {
    /// `request` with this crate's protocol version.
    pub fn new(request: Request) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            request,
        }
    }
}

/// `borrow`: lend the agent to another controller.
///
/// `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BorrowRequest {
    /// Where to connect.
    pub target: Target,
    /// The node's name on the borrowing controller.
    pub name: String,
    /// The node's secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// An absolute path to a file holding the secret, read by the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// The longest time to stay before returning home.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub lease: Option<Duration>,
    /// Return home after being idle this long.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_return: Option<Duration>,
    /// Wait until idle before leaving home (default), or leave now.
    #[serde(default)]
    pub when: When,
    /// Reply only once the agent is online at the borrower (or the borrow
    /// failed: an error naming the phase), or after this long (an error);
    /// without it the reply comes at once.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub wait: Option<Duration>,
    /// How to reach the borrower: the TCP agent port or a WebSocket on its
    /// web port. Absent: TCP, falling back to WebSocket when the
    /// borrower's TCP agent port is disabled (discovery answers 404).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
}

/// How the channel reaches a controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// JNLP4-connect on the TCP agent port (TLS pinned to the instance identity).
    Tcp,
    /// A WebSocket on the web port (`-webSocket`).
    WebSocket,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::WebSocket => "web_socket",
        })
    }
}

impl fmt::Debug for BorrowRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BorrowRequest")
            .field("target", &self.target)
            .field("name", &self.name)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("secret_file", &self.secret_file)
            .field("lease", &self.lease)
            .field("idle_return", &self.idle_return)
            .field("when", &self.when)
            .field("wait", &self.wait)
            .finish()
    }
}

impl BorrowRequest {
    /// Checks what the types cannot: exactly one of `secret` and
    /// `secret_file`, absolute paths, non-zero durations, a usable target.
    pub fn validate(&self) -> Result<(), String> {
        check_node_name(&self.name).map_err(|rule| format!("borrow: `name` {rule}"))?;
        match (&self.secret, &self.secret_file) {
            (Some(_), Some(_)) => {
                return Err("borrow: give either `secret` or `secret_file`, not both".into())
            }
            (None, None) => return Err("borrow: `secret` or `secret_file` is required".into()),
            (Some(secret), None) if secret.is_empty() => {
                return Err("borrow: `secret` must not be empty".into())
            }
            (None, Some(file)) if !file.is_absolute() => {
                return Err(format!(
                    "borrow: `secret_file` must be an absolute path, not {}",
                    file.display()
                ))
            }
            _ => {}
        }
        for (field, value) in [
            ("lease", self.lease),
            ("idle_return", self.idle_return),
            ("wait", self.wait),
        ] {
            if value == Some(Duration::ZERO) {
                return Err(format!("borrow: `{field}` must be longer than zero"));
            }
        }
        self.target.validate()
    }
}

/// Where a borrowed agent connects.
///
/// On the wire, an object with exactly one of `url`, `jnlp_url` or `direct`
/// (the last with `instance_identity` and `engine_jar`), see the crate docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TargetRepr", into = "TargetRepr")]
pub enum Target {
    /// The controller's URL; the agent port is discovered from it.
    Url {
        /// e.g. `https://b.example/`.
        url: String,
    },
    /// A JNLP file's URL.
    JnlpUrl {
        /// e.g. `https://b.example/computer/mac-01/jenkins-agent.jnlp`.
        url: String,
    },
    /// The agent port itself, with the controller's pinned identity.
    Direct {
        /// `HOST:PORT` (an IPv6 host in brackets or bare).
        address: String,
        /// The controller's instance identity (base64 public key).
        instance_identity: String,
        /// An absolute path to the remoting.jar to run as the engine.
        engine_jar: PathBuf,
    },
}

impl Target {
    /// Checks URLs, `HOST:PORT` and paths.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Target::Url { url } => check_url("url", url),
            Target::JnlpUrl { url } => check_url("jnlp_url", url),
            Target::Direct {
                address,
                instance_identity,
                engine_jar,
            } => {
                let port_ok = address
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !port_ok {
                    return Err(format!(
                        "target: `direct` must be HOST:PORT, not {address:?}"
                    ));
                }
                if instance_identity.trim().is_empty() {
                    return Err("target: `instance_identity` must not be empty".into());
                }
                if !engine_jar.is_absolute() {
                    return Err(format!(
                        "target: `engine_jar` must be an absolute path, not {}",
                        engine_jar.display()
                    ));
                }
                Ok(())
            }
        }
    }

    /// A short description for messages and logs: the URL or address.
    pub fn describe(&self) -> &str {
        match self {
            Target::Url { url } | Target::JnlpUrl { url } => url,
            Target::Direct { address, .. } => address,
        }
    }
}

fn check_url(field: &str, url: &str) -> Result<(), String> {
    if url.len() > MAX_URL {
        return Err(format!(
            "target: `{field}` is {} bytes long; at most {MAX_URL} are accepted",
            url.len()
        ));
    }
    if url.contains(['\0', '\r', '\n']) {
        return Err(format!("target: `{field}` must not contain NUL, CR or LF"));
    }
    match after_scheme(url) {
        Some(rest) if !rest.is_empty() && !url.contains(char::is_whitespace) => Ok(()),
        _ => Err(format!(
            "target: `{field}` must be an http(s) URL, not {url:?}"
        )),
    }
}

/// The URL after `http://` or `https://`, the scheme in any case (RFC 3986
/// makes schemes case-insensitive).
fn after_scheme(url: &str) -> Option<&str> {
    ["https://", "http://"].iter().find_map(|scheme| {
        let head = url.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme)
            .then(|| &url[scheme.len()..])
    })
}

/// `url` with an `http://` or `https://` scheme in lower case (`HTTPS://b/`
/// becomes `https://b/`), so that every later comparison and parser sees one
/// spelling; any other text is returned as it is.
pub fn normalize_scheme(url: &str) -> String {
    match after_scheme(url) {
        Some(rest) => {
            let scheme_len = url.len() - rest.len();
            format!("{}{rest}", url[..scheme_len].to_ascii_lowercase())
        }
        None => url.to_owned(),
    }
}

/// The longest node name Jenkins-side checks here accept, in bytes.
pub const MAX_NODE_NAME: usize = 255;

/// Characters Jenkins' `checkGoodName` refuses in a node name.
const BAD_NAME_CHARS: &str = "?*/\\%!@#$^&|<>[]:;";

/// Checks a node name as Jenkins' `checkGoodName` does (a name it would
/// refuse could never come online): not empty, at most [`MAX_NODE_NAME`]
/// bytes, no control characters, none of `?*/\%!@#$^&|<>[]:;`, not `.` or
/// `..`, no trailing `.`. The error names the rule broken.
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NODE_NAME {
        return Err(format!(
            "is {} bytes long; at most {MAX_NODE_NAME} are accepted",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if let Some(bad) = name.chars().find(|c| BAD_NAME_CHARS.contains(*c)) {
        return Err(format!(
            "must not contain {bad:?} (Jenkins refuses any of {BAD_NAME_CHARS})"
        ));
    }
    if matches!(name.trim(), "." | "..") {
        return Err("must not be `.` or `..`".into());
    }
    if name.ends_with('.') {
        return Err("must not end with `.`".into());
    }
    Ok(())
}

/// [`Target`]'s wire form: flat optional fields, checked on conversion so a
/// wrong combination gets a message saying which fields go together.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jnlp_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    direct: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance_identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    engine_jar: Option<PathBuf>,
}

impl TryFrom<TargetRepr> for Target {
    type Error = String;

    fn try_from(repr: TargetRepr) -> Result<Self, String> {
        let direct_only = repr.instance_identity.is_some() || repr.engine_jar.is_some();
        match (repr.url, repr.jnlp_url, repr.direct) {
            (Some(url), None, None) if !direct_only => Ok(Target::Url {
                url: normalize_scheme(&url),
            }),
            (None, Some(url), None) if !direct_only => Ok(Target::JnlpUrl {
                url: normalize_scheme(&url),
            }),
            (None, None, Some(address)) => match (repr.instance_identity, repr.engine_jar) {
                (Some(instance_identity), Some(engine_jar)) => Ok(Target::Direct {
                    address,
                    instance_identity,
                    engine_jar,
                }),
                _ => Err("target: `direct` needs `instance_identity` and `engine_jar`".into()),
            },
            (None, None, None) => {
                Err("target: one of `url`, `jnlp_url` or `direct` is required".into())
            }
            (Some(_), None, None) | (None, Some(_), None) => {
                Err("target: `instance_identity` and `engine_jar` go only with `direct`".into())
            }
            _ => Err("target: give only one of `url`, `jnlp_url` and `direct`".into()),
        }
    }
}

impl From<Target> for TargetRepr {
    fn from(target: Target) -> Self {
        match target {
            Target::Url { url } => TargetRepr {
                url: Some(url),
                ..TargetRepr::default()
            },
            Target::JnlpUrl { url } => TargetRepr {
                jnlp_url: Some(url),
                ..TargetRepr::default()
            },
            Target::Direct {
                address,
                instance_identity,
                engine_jar,
            } => TargetRepr {
                direct: Some(address),
                instance_identity: Some(instance_identity),
                engine_jar: Some(engine_jar),
                ..TargetRepr::default()
            },
        }
    }
}

/// When to leave the current controller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// Once the agent is not busy (no requests in flight, no build
    /// processes, no recent activity).
    #[default]
    Idle,
    /// At once: running builds are ended.
    Now,
}

impl Request {
    /// Checks a request's fields beyond their types (see
    /// [`BorrowRequest::validate`]).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Request::Borrow(borrow) => borrow.validate(),
            Request::Status | Request::Return { .. } | Request::Events => Ok(()),
        }
    }
}

/// Why a request line was refused; its `Display` is the error reply's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The line is not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// The object has no `version`.
    #[error("missing \"version\"; this agent speaks version {PROTOCOL_VERSION}")]
    MissingVersion,
    /// The object has a `version` this agent does not speak.
    #[error("unsupported protocol version {0}; this agent speaks version {PROTOCOL_VERSION}")]
    UnsupportedVersion(String),
    /// Unknown command, unknown or missing field, wrong type.
    #[error("bad request: {0}")]
    Malformed(String),
    /// Well-formed but not acceptable (see [`Request::validate`]).
    #[error("{0}")]
    Invalid(String),
}

/// Reads one request line (without its newline): version first, then the
/// request, then [`Request::validate`].
pub fn parse_request(line: &str) -> Result<Request, RequestError> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|err| RequestError::NotJson(err.to_string()))?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(RequestError::NotJson(format!(
            "found {}",
            json_kind(&value)
        )));
    };
    match object.remove("version") {
        None => return Err(RequestError::MissingVersion),
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(other) => return Err(RequestError::UnsupportedVersion(other.to_string())),
    }
    let value = serde_json::Value::Object(object);
    let request =
        Request::deserialize(&value).map_err(|err| RequestError::Malformed(err.to_string()))?;
    // serde ignores extra fields beside a unit variant's tag; refuse them
    // like every other unknown field.
    if matches!(request, Request::Status | Request::Events) {
        let mut fields = value.as_object().into_iter().flat_map(|o| o.keys());
        if let Some(field) = fields.find(|key| *key != "command") {
            return Err(RequestError::Malformed(format!(
                "unknown field `{field}`, the command takes no fields"
            )));
        }
    }
    request.validate().map_err(RequestError::Invalid)?;
    Ok(request)
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The line a client sends for `request` (without the newline).
pub fn request_line(request: &Request) -> String {
    to_json(&Envelope::new(request.clone()))
}
