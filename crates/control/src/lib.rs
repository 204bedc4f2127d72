//! The `jnlp-agent` control socket: its wire protocol, its types and an async
//! client. This page is the protocol's specification; lender tooling that
//! does not use Rust needs nothing else.
//!
//! # Transport
//!
//! - A Unix stream socket. The agent listens on `--control-socket PATH`
//!   (default `<workDir>/<internalDir>/control.sock`); jobs running on the
//!   agent find it in `JNLP_AGENT_CONTROL_SOCKET` ([`SOCKET_ENV`]).
//! - Only the agent's own user, root, and (with `--control-group GROUP`)
//!   members of that group may connect: the socket's mode is 0600 (0660 with
//!   the group) and the agent checks every peer's credentials
//!   (`SO_PEERCRED`). A refused peer gets one `error` line and is closed.
//! - UTF-8, one JSON object per line (`\n`, an optional `\r` before it is
//!   ignored), each way. A line is at most [`MAX_LINE`] bytes (64 KiB) without
//!   its newline; a longer request gets an `error` reply and the connection
//!   is closed.
//! - A connection carries any number of request/reply pairs, in order,
//!   until the client closes it, except `events`, after which the
//!   connection only streams events.
//! - A connection that sends no complete request line for 10 s (after
//!   connecting or after its last reply) gets an `error` line and is
//!   closed; one carrying out a request (an `events` stream, a `borrow` or
//!   `return` with `wait`) is never idle. When the agent's connection slots
//!   are full, a newcomer takes the place of the connection idle the
//!   longest, which gets an `error` line; only when every connection is
//!   busy is the newcomer refused with an `error` line. Build processes on
//!   the agent and other peers have separate slots, so builds cannot keep
//!   the owner out. A client that holds a connection between requests
//!   must reconnect when it finds it closed.
//!
//! # Requests
//!
//! Every request is an object with `"version": 1` ([`PROTOCOL_VERSION`]) and
//! a `"command"`; a request with another version is refused with an error
//! naming the version this agent speaks. Unknown fields are refused, so
//! that a misspelt option is never silently ignored.
//!
//! | `command` | fields | effect |
//! |---|---|---|
//! | `status` | | reply: `status` |
//! | `borrow` | `target`, `name`, `secret` or `secret_file`, optional `lease`, `idle_return`, `when`, `wait` | lend the agent to another controller; reply: `accepted` |
//! | `return` | optional `when`, `wait` | bring the agent home; reply: `accepted` |
//! | `events` | | stream `event` replies until the connection is closed |
//!
//! `borrow` fields ([`BorrowRequest`]):
//!
//! - `target` ([`Target`]): where to connect, one of
//!   - `{"url": "https://b.example/"}`: the borrowing controller's URL, as
//!     `-url` (discovery through `tcpSlaveAgentListener/`);
//!   - `{"jnlp_url": "https://b.example/computer/mac-01/jenkins-agent.jnlp"}`:
//!     a JNLP file, as `-jnlpUrl`;
//!   - `{"direct": "b.example:50000", "instance_identity": "MIIB…",
//!     "engine_jar": "/opt/remoting.jar"}`: the agent port and the
//!     controller's identity key, as `-direct` + `-instanceIdentity`; the
//!     engine jar is a local file since there is no web port to fetch it from.
//! - `name`: the node's name on the borrowing controller.
//! - exactly one of `secret` (the node's secret) and `secret_file` (an
//!   absolute path the *agent* reads: at most 64 KiB, surrounding whitespace
//!   trimmed; a peer that is not the agent's user or root may only name a
//!   file it owns itself).
//! - `lease`: the longest time to stay, e.g. `"2h"`; then the agent returns
//!   home (after draining, like any return).
//! - `idle_return`: return home after being idle this long, e.g. `"30m"`.
//!   Durations use humantime syntax: `"90s"`, `"1h 30m"`, `"2days"`.
//! - `when` ([`When`]): `"idle"` (the default) waits until the agent is not
//!   busy (see [`Busy`]); `"now"` leaves at once, ending running builds.
//! - `wait` (also on `return`): without it the reply comes as soon as the
//!   order is queued. With it (`"10m"`), the reply comes once the agent is
//!   online at the target (`accepted`, saying where and how long the move
//!   took), or as an `error` when the borrow failed (naming the
//!   [`MovePhase`]) or `wait` passed. For a caller that is a build on this
//!   agent and a borrow that waits for idle, the reply comes once the
//!   borrower was checked ([`EventKind::BorrowChecked`]), since the move
//!   waits for that very build.
//!
//! Examples, one per line as sent (`→`) and received (`←`); the tests check
//! that every example line in this page parses and prints back exactly:
//!
//! ```text
//! → {"version":1,"command":"status"}
//! → {"version":1,"command":"borrow","target":{"url":"https://b.example/"},"name":"mac-01","secret_file":"/run/secrets/mac-01","lease":"2h","idle_return":"30m","when":"idle"}
//! → {"version":1,"command":"borrow","target":{"jnlp_url":"https://b.example/computer/mac-01/jenkins-agent.jnlp"},"name":"mac-01","secret":"0f1e2d","when":"now"}
//! → {"version":1,"command":"borrow","target":{"direct":"b.example:50000","instance_identity":"MIIBIjANBgkq","engine_jar":"/opt/remoting.jar"},"name":"mac-01","secret":"0f1e2d","when":"idle"}
//! → {"version":1,"command":"return","when":"idle"}
//! → {"version":1,"command":"events"}
//! ```
//!
//! # Replies
//!
//! Each request gets exactly one reply line, [`Reply`]: `{"ok": RESPONSE}`
//! or `{"error": "MESSAGE"}`. An error reply changes nothing on the agent;
//! the connection stays usable unless the line was too long. RESPONSE
//! ([`Response`]) is one of
//!
//! - `{"status": STATUS}` (for `status`), see [`Status`];
//! - `{"accepted": {"message": "..."}}` (for `borrow` and `return`): the
//!   agent took the order; it says whether it acts now or when idle, and
//!   the outcome shows in `status` and in events;
//! - `{"event": EVENT}` (on an `events` connection), see [`Event`].
//!
//! ```text
//! ← {"ok":{"accepted":{"message":"accepted; will leave when idle"}}}
//! ← {"error":"unsupported protocol version 2; this agent speaks version 1"}
//! ← {"ok":{"status":{"placement":"borrowed","phase":"online","controller_url":"https://b.example/","node_name":"mac-01","since_ms":1700000000000,"lease_deadline_ms":1700007200000,"idle_deadline_ms":null,"pending":null,"busy":{"requests_in_flight":2,"build_processes":1,"last_activity_ms":1700000500000,"busy":true},"engine_pid":4242,"remoting_version":"3283.v92c105e0f819","bytes_to_controller":1024,"bytes_from_controller":2048,"commands_to_controller":0,"commands_from_controller":0,"bytes_per_second_to_controller":0,"bytes_per_second_from_controller":0,"last_error":null,"home_url":"https://a.example/"}}}
//! ← {"ok":{"event":{"at_ms":1700000600000,"kind":"returned_home","reason":"lease_expired","status":{"placement":"home","phase":"connecting","controller_url":"https://a.example/","node_name":"mac-01","since_ms":1700000600000,"lease_deadline_ms":null,"idle_deadline_ms":null,"pending":null,"busy":{"requests_in_flight":0,"build_processes":0,"last_activity_ms":null,"busy":false},"engine_pid":null,"remoting_version":null,"bytes_to_controller":0,"bytes_from_controller":0,"commands_to_controller":0,"commands_from_controller":0,"bytes_per_second_to_controller":0,"bytes_per_second_from_controller":0,"last_error":null,"home_url":"https://a.example/"}}}}
//! ```
//!
//! Times are Unix milliseconds (`*_ms`). Within version 1 replies may gain
//! fields: clients must ignore fields they do not know.
//!
//! # Events
//!
//! After `events`, the agent first sends a `subscribed` event carrying the
//! current status, so a watcher starts from a known state without a race,
//! then one `event` reply per change ([`EventKind`]) until the client closes
//! the connection or the agent stops. A client that reads too slowly to keep
//! up gets an `error` line and is closed; it may reconnect.
//!
//! # Layout
//!
//! - this module: the request and reply types, [`parse_request`],
//!   [`request_line`], [`parse_reply`], [`reply_line`];
//! - [`frame`]: bounded line reading and JSON line writing, shared by the
//!   agent's server and the client;
//! - [`client`]: an async client ([`client::connect`]), used by
//!   `jnlp-agent ctl`.
//! - [`secret_file`]: whether a file holding a secret or a token is
//!   readable by other users, and the warning to give.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub mod client;
pub mod frame;
pub mod link;
pub mod secret_file;

/// The protocol version this crate speaks; every request carries it.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest line either side accepts, in bytes, without its newline.
pub const MAX_LINE: usize = 64 * 1024;

/// The environment variable that names the control socket for jobs and
/// tools running on the agent.
pub const SOCKET_ENV: &str = "JNLP_AGENT_CONTROL_SOCKET";

/// The longest secret file the agent reads, in bytes.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// The longest URL a [`Target`] accepts, in bytes.
pub const MAX_URL: usize = 2048;

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

/// A duration in whole milliseconds, `u64::MAX` for any longer one (a
/// `Duration` holds up to 2^64 seconds; `as u64` would wrap).
pub fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `start_ms` plus `duration`, in Unix ms, saturating instead of
/// overflowing: a peer's huge duration means "never", not a panic or a time
/// in the past.
pub fn ms_after(start_ms: u64, duration: Duration) -> u64 {
    start_ms.saturating_add(duration_ms(duration))
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

/// The reply to a request: `{"ok": RESPONSE}` or `{"error": "MESSAGE"}`.
// A reply lives for one line; boxing the large variant would only make
// matching on it clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The request was carried out (or, for `borrow`/`return`, accepted).
    Ok(Response),
    /// The request was refused; nothing changed.
    Error(String),
}

impl Reply {
    /// An error reply.
    pub fn error(message: impl Into<String>) -> Self {
        Reply::Error(message.into())
    }

    /// As a `Result`, the shape niri-ipc uses.
    pub fn into_result(self) -> Result<Response, String> {
        match self {
            Reply::Ok(response) => Ok(response),
            Reply::Error(message) => Err(message),
        }
    }
}

impl From<Result<Response, String>> for Reply {
    fn from(result: Result<Response, String>) -> Self {
        match result {
            Ok(response) => Reply::Ok(response),
            Err(message) => Reply::Error(message),
        }
    }
}

/// Reads one reply line (without its newline).
pub fn parse_reply(line: &str) -> Result<Reply, serde_json::Error> {
    serde_json::from_str(line)
}

/// The line the agent sends for `reply` (without the newline).
pub fn reply_line(reply: &Reply) -> String {
    to_json(reply)
}

/// A successful reply's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// For `status`.
    Status(Status),
    /// For `borrow` and `return`: the order was taken.
    Accepted {
        /// What will happen, e.g. "accepted; will leave when idle".
        message: String,
    },
    /// On an `events` connection.
    Event(Event),
}

/// Which controller the agent serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Its home (lender) controller.
    #[default]
    Home,
    /// A borrowing controller.
    Borrowed,
}

/// What the connection to the current controller is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Discovering, starting the engine, handshaking.
    #[default]
    Connecting,
    /// The channel is up.
    Online,
    /// Waiting for the agent to become idle before leaving.
    Draining,
    /// Leaving: the channel is being closed at the remoting level (our
    /// `Channel$CloseCommand` sent or about to be, the controller's answer
    /// awaited); a move that waits for idle may still be called off if the
    /// controller sends work before the close goes out.
    Leaving,
    /// Waiting before the next connection attempt.
    BackingOff,
}

/// The agent's state, as `status` replies and every event carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Home or borrowed.
    pub placement: Placement,
    /// The connection's phase.
    pub phase: Phase,
    /// The controller the agent serves or is connecting to (the address for
    /// a direct target).
    pub controller_url: Option<String>,
    /// The node's name there.
    pub node_name: Option<String>,
    /// When this placement and phase began (Unix ms).
    pub since_ms: u64,
    /// When a borrowed agent's lease ends (Unix ms).
    pub lease_deadline_ms: Option<u64>,
    /// When a borrowed agent returns home if it stays idle (Unix ms).
    pub idle_deadline_ms: Option<u64>,
    /// A borrow or return accepted but waiting for the agent to be idle.
    pub pending: Option<Pending>,
    /// A borrow that arrived while the agent was returning home (asked to,
    /// or by its lease's end): carried out from home, after the return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<Pending>,
    /// What keeps the agent from leaving.
    pub busy: Busy,
    /// The engine (remoting.jar) process.
    pub engine_pid: Option<u32>,
    /// The engine's remoting version.
    pub remoting_version: Option<String>,
    /// The engine's send window per stream, when the agent sized it
    /// (no JVM options of the user's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_window: Option<EngineWindow>,
    /// Bytes sent to controllers since the agent started.
    pub bytes_to_controller: u64,
    /// Bytes received from controllers since the agent started.
    pub bytes_from_controller: u64,
    /// Commands (remoting's, each one or more chunks) sent to controllers
    /// since the agent started.
    #[serde(default)]
    pub commands_to_controller: u64,
    /// Commands received from controllers since the agent started.
    #[serde(default)]
    pub commands_from_controller: u64,
    /// Current throughput to the controller (over the last second).
    #[serde(default)]
    pub bytes_per_second_to_controller: u64,
    /// Current throughput from the controller (over the last second).
    #[serde(default)]
    pub bytes_per_second_from_controller: u64,
    /// The last connection failure, until the next success.
    pub last_error: Option<String>,
    /// The home controller (the address for a direct target).
    pub home_url: Option<String>,
    /// How the current connection reaches the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    /// The WebSocket is in use because the controller's TCP agent port is
    /// disabled and no transport was asked for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transport_fallback: bool,
    /// An engine kept started for where the agent will likely go next (a
    /// pending borrow's target, or home while borrowed), so that a move
    /// costs only a handshake; absent with `--no-warm-engine`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_engine: Option<WarmEngine>,
    /// Online at a new place after a move, but the controller's first call
    /// on the new channel is not answered yet: the controller does not show
    /// the node online until it is, so a lease is not active yet either.
    /// Absent (false) from agents that predate it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_first_call: bool,
}

/// The send window per stream the agent gave its engine
/// (`hudson.remoting.Channel.pipeWindowSize`), and why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineWindow {
    /// The window, bytes.
    pub bytes: u32,
    /// The round trip to the controller it was sized for (microseconds);
    /// `None`: it could not be measured, and the window is the largest.
    pub round_trip_us: Option<u64>,
}

/// An engine started ahead of a move.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmEngine {
    /// Its process.
    pub pid: u32,
    /// The controller it is for.
    pub controller_url: Option<String>,
    /// What it costs: its resident memory, where the OS tells.
    pub rss_kib: Option<u64>,
}

/// An accepted order that waits for the agent to be idle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Borrow or return.
    pub action: PendingAction,
    /// Where the agent will go: the borrower's URL or address, or home's.
    pub controller_url: Option<String>,
    /// When the order was accepted (Unix ms).
    pub since_ms: u64,
}

/// What a [`Pending`] order will do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingAction {
    /// Go to a borrowing controller.
    Borrow,
    /// Go home.
    Return,
}

/// The busy signals (see the design's "What busy means").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Busy {
    /// Commands from the controller not answered yet.
    pub requests_in_flight: u64,
    /// Processes still running below the engine (builds).
    pub build_processes: u64,
    /// The last non-ping traffic on the channel (Unix ms).
    pub last_activity_ms: Option<u64>,
    /// The agent's verdict from the three signals above.
    pub busy: bool,
}

/// Something that happened, with the status right after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When (Unix ms).
    pub at_ms: u64,
    /// What; flattened into the event object as `"kind"` and its fields.
    #[serde(flatten)]
    pub kind: EventKind,
    /// The status after it.
    pub status: Status,
}

/// What an [`Event`] reports: `{"kind": "...", ...fields}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The first event on every `events` connection: the current status.
    Subscribed,
    /// The placement or phase changed.
    StateChanged,
    /// A `borrow` was accepted.
    BorrowAccepted,
    /// A `return` was accepted.
    ReturnAccepted,
    /// A move about to happen was called off because the controller sent
    /// work (a build) before the channel close went out; the agent waits
    /// for idle again.
    MoveDeferred,
    /// A pending borrow's target was checked while the agent still serves
    /// home: reachable, its engine jar fetched and its engine started. The
    /// agent moves when idle (or at once with `now`).
    BorrowChecked,
    /// A borrow failed before the agent left home: it stays there.
    BorrowFailed {
        /// Where it failed.
        phase: MovePhase,
        /// Why, as the agent would log it (never a secret).
        reason: String,
    },
    /// The agent is online at its new place after a move, as the controller
    /// sees it: the controller's first call on the new channel was answered
    /// (the status says where).
    Moved {
        /// From the decision to move until the controller's first call was
        /// answered (or, from a controller that sent none within a few
        /// seconds, until the agent stopped waiting for one), in ms.
        ms: u64,
        /// From the decision to move until the new channel was accepted
        /// (the handshake done), in ms. Absent from agents that predate it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connected_ms: Option<u64>,
        /// From the decision to move until the controller's first call was
        /// answered, in ms; absent when the controller sent none in time
        /// (and from agents that predate it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answered_ms: Option<u64>,
    },
    /// A borrowed agent went home.
    ReturnedHome {
        /// Why.
        reason: ReturnReason,
    },
    /// Something failed (a connection attempt, a borrow).
    Error {
        /// What.
        message: String,
    },
}

/// Where a borrow failed. The agent checks the borrower while still at
/// home: it never leaves for a place it could not reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MovePhase {
    /// The request cannot work (e.g. a secret file that cannot be read).
    Config,
    /// Finding the agent port and identity: discovery or the JNLP file
    /// (unreachable, not a Jenkins controller, TCP agent port disabled).
    Resolve,
    /// Fetching the borrower's engine jar.
    EngineJar,
    /// Starting the borrower's engine and waiting for its preamble.
    EngineStart,
    /// Reaching the agent port.
    Connect,
    /// The JNLP4-connect handshake: a refusal (bad secret, unknown node,
    /// already connected, FATAL) or a wrong identity.
    Handshake,
}

impl fmt::Display for MovePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MovePhase::Config => "configuration",
            MovePhase::Resolve => "finding the borrower",
            MovePhase::EngineJar => "fetching its engine jar",
            MovePhase::EngineStart => "starting its engine",
            MovePhase::Connect => "reaching its agent port",
            MovePhase::Handshake => "handshake",
        })
    }
}

/// Why a borrowed agent went home.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReturnReason {
    /// The lease ran out.
    LeaseExpired,
    /// It was idle for `idle_return`.
    Idle,
    /// The borrowing controller went away or refused the agent.
    BorrowerGone,
    /// A `return` request.
    Requested,
}

/// The current time as Unix milliseconds, the unit of every `*_ms` field.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// `time` as Unix milliseconds (0 before the epoch).
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, duration_ms)
}

/// One JSON line (without the newline) for any value of this crate, e.g. to
/// print a [`Status`] or an [`Event`].
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    // The types here serialize infallibly (no maps with non-string keys, no
    // custom serializers that fail); the fallback keeps this total anyway.
    serde_json::to_string(value).unwrap_or_else(|err| {
        serde_json::json!({ "error": format!("cannot serialize: {err}") }).to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_follow_jenkins_check_good_name() {
        for good in [
            "mac-01",
            "lent node",
            "a.b",
            "ü-node",
            &"n".repeat(MAX_NODE_NAME),
        ] {
            assert_eq!(check_node_name(good), Ok(()), "{good:?}");
        }
        let refused = [
            ("", "empty"),
            ("  ", "empty"),
            (&"n".repeat(MAX_NODE_NAME + 1), "at most 255"),
            ("a\u{7}b", "control"),
            ("a\nb", "control"),
            (".", "`.` or `..`"),
            ("..", "`.` or `..`"),
            ("node.", "end with"),
        ];
        for (name, rule) in refused {
            let err = check_node_name(name).expect_err(name);
            assert!(err.contains(rule), "{name:?}: {err}");
        }
        for bad in "?*/\\%!@#$^&|<>[]:;".chars() {
            let name = format!("a{bad}b");
            let err = check_node_name(&name).expect_err(&name);
            assert!(err.contains(&format!("{bad:?}")), "{name:?}: {err}");
        }
    }

    #[test]
    fn urls_are_bounded_single_line_and_take_the_scheme_in_any_case() {
        let url = |url: &str| Target::Url { url: url.into() }.validate();
        assert_eq!(url("HTTPS://b.example/"), Ok(()));
        assert_eq!(url("Http://b.example/"), Ok(()));
        let long = format!("https://b.example/{}", "x".repeat(MAX_URL));
        assert!(url(&long).is_err_and(|e| e.contains("at most 2048")));
        let just = format!("https://b.example/{}", "x".repeat(MAX_URL - 18));
        assert_eq!(just.len(), MAX_URL);
        assert_eq!(url(&just), Ok(()));
        for bad in ["https://b\0/", "https://b/\r", "https://b/\nx"] {
            assert!(
                url(bad).is_err_and(|e| e.contains("NUL, CR or LF")),
                "{bad:?}"
            );
        }
        assert!(url("ftp://b/").is_err());
        assert!(url("HTTPS://").is_err());
        assert_eq!(
            normalize_scheme("HTTPS://B.example/X"),
            "https://B.example/X"
        );
        assert_eq!(normalize_scheme("ftp://b/"), "ftp://b/");
        // Read off the wire, the scheme arrives in lower case.
        let target: Target = serde_json::from_str(r#"{"url":"HtTpS://b.example/"}"#)
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(target.describe(), "https://b.example/");
    }

    #[test]
    fn huge_durations_saturate_instead_of_wrapping() {
        assert_eq!(duration_ms(Duration::MAX), u64::MAX);
        let eons = Duration::from_secs(500_000_000 * 365 * 86_400);
        assert_eq!(ms_after(now_ms(), Duration::MAX), u64::MAX);
        assert_eq!(ms_after(1, eons), duration_ms(eons) + 1);
        assert_eq!(ms_after(u64::MAX / 2, eons), u64::MAX);
        assert_eq!(ms_after(u64::MAX - 1, Duration::from_secs(1)), u64::MAX);
        assert_eq!(ms_after(1_000, Duration::from_millis(500)), 1_500);
    }
}
