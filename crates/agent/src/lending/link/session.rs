//! One connection's protocol, without sockets or timers: `now` passed in;
//! it says what to send and when to wake.

use std::time::{Duration, Instant};

use control::link::{AgentMessage, LenderMessage, MAX_MESSAGE};
use control::{Event, Reply, Request, Status};
use tokio_tungstenite::tungstenite::Message;
use tracing::warn;

use super::config::LinkError;

/// What a message from the lender asks for.
#[derive(Debug, PartialEq)]
pub(super) enum Inbound {
    /// The first `welcome`: the link is up.
    Welcome {
        /// The lender's name.
        lender: String,
    },
    /// A request to carry out (`status`, `borrow` or `return`).
    Request {
        /// Its id.
        id: u64,
        /// The request.
        request: Request,
    },
    /// A request refused at once with this error.
    Refuse {
        /// Its id.
        id: u64,
        /// Why.
        message: String,
    },
    /// Nothing to do; logged with this reason.
    Ignore {
        /// Why.
        reason: String,
    },
}

/// One connection's protocol state.
///
/// ```text
///   hello sent ──welcome──▶ welcomed
///       │                      │
///       │ no welcome within    │ no frame for
///       │ welcome_timeout      │ 3 × ping_interval
///       ▼                      ▼
///     dead ◀───────────────── dead
/// ```
///
/// Requests are served in both states: a lender may ask before its
/// `welcome` is read.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) ping_interval: Duration,
    pub(super) welcome_timeout: Duration,
    pub(super) welcome_deadline: Option<Instant>,
    pub(super) last_heard: Instant,
    pub(super) last_ping: Instant,
    /// The last status sent, without its counters.
    pub(super) last_status: Option<Status>,
}

impl Session {
    pub(super) fn new(now: Instant, ping_interval: Duration, welcome_timeout: Duration) -> Self {
        Self {
            ping_interval,
            welcome_timeout,
            welcome_deadline: Some(now + welcome_timeout),
            last_heard: now,
            last_ping: now,
            last_status: None,
        }
    }

    /// The first message.
    pub(super) fn hello(
        &mut self,
        node: &str,
        labels: &[String],
        version: &str,
        status: Status,
    ) -> AgentMessage {
        self.last_status = Some(essence(&status));
        AgentMessage::Hello {
            node: node.to_owned(),
            labels: labels.to_vec(),
            version: version.to_owned(),
            status,
        }
    }

    /// A frame arrived (any: text, ping, pong).
    pub(super) fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    pub(super) fn welcomed(&self) -> bool {
        self.welcome_deadline.is_none()
    }

    /// A text message from the lender.
    pub(super) fn on_text(&mut self, text: &str) -> Inbound {
        if text.len() > MAX_MESSAGE {
            return Inbound::Ignore {
                reason: format!("a message larger than {MAX_MESSAGE} bytes"),
            };
        }
        match serde_json::from_str::<LenderMessage>(text) {
            Ok(LenderMessage::Welcome { lender }) => {
                if self.welcome_deadline.take().is_some() {
                    Inbound::Welcome { lender }
                } else {
                    Inbound::Ignore {
                        reason: "a second welcome".into(),
                    }
                }
            }
            Ok(LenderMessage::Request { id, request }) => admit(id, request),
            Err(err) => {
                // A request with a readable id gets an answer, so that the
                // lender does not wait for one forever.
                let value: Option<serde_json::Value> = serde_json::from_str(text).ok();
                let id = value
                    .as_ref()
                    .filter(|v| v.get("type").and_then(|t| t.as_str()) == Some("request"))
                    .and_then(|v| v.get("id"))
                    .and_then(serde_json::Value::as_u64);
                match id {
                    Some(id) => Inbound::Refuse {
                        id,
                        message: format!("bad request: {err}"),
                    },
                    None => Inbound::Ignore {
                        reason: format!("not a lender message: {err}"),
                    },
                }
            }
        }
    }

    /// A hub event: the status after it, then the event.
    pub(super) fn on_event(&mut self, event: Event) -> [AgentMessage; 2] {
        self.last_status = Some(essence(&event.status));
        [
            AgentMessage::Status {
                status: event.status.clone(),
            },
            AgentMessage::Event { event },
        ]
    }

    /// A look at the status: a `status` message if it changed in more than
    /// its counters, or if `force`d.
    pub(super) fn on_status(&mut self, status: Status, force: bool) -> Option<AgentMessage> {
        let now = essence(&status);
        if !force && self.last_status.as_ref() == Some(&now) {
            return None;
        }
        self.last_status = Some(now);
        Some(AgentMessage::Status { status })
    }

    /// When [`Session::tick`] should run next.
    pub(super) fn deadline(&self) -> Instant {
        let mut next = (self.last_ping + self.ping_interval).min(self.last_heard + self.silence());
        if let Some(welcome) = self.welcome_deadline {
            next = next.min(welcome);
        }
        next
    }

    /// Whether to ping now; an error when the link is dead.
    pub(super) fn tick(&mut self, now: Instant) -> Result<bool, LinkError> {
        if let Some(deadline) = self.welcome_deadline {
            if now >= deadline {
                return Err(LinkError::Timeout {
                    phase: "waiting for the lender's welcome",
                    after: self.welcome_timeout,
                });
            }
        }
        if now.saturating_duration_since(self.last_heard) >= self.silence() {
            return Err(LinkError::Silent(self.silence()));
        }
        if now >= self.last_ping + self.ping_interval {
            self.last_ping = now;
            return Ok(true);
        }
        Ok(false)
    }

    pub(super) fn silence(&self) -> Duration {
        self.ping_interval * 3
    }
}

/// A request as the link accepts it: `events` and `secret_file` refused.
pub(super) fn admit(id: u64, request: Request) -> Inbound {
    match request {
        Request::Events => Inbound::Refuse {
            id,
            message: "events is not served over the lender link: the link streams every event \
                      anyway"
                .into(),
        },
        Request::Borrow(borrow) if borrow.secret_file.is_some() => Inbound::Refuse {
            id,
            message: "secret_file is refused over the lender link: the agent reads no file a \
                      remote peer names; send secret"
                .into(),
        },
        request => Inbound::Request { id, request },
    }
}

/// The status without what changes all the time (traffic counters, rates,
/// activity times, memory): what a `status` message is worth sending for.
pub(super) fn essence(status: &Status) -> Status {
    let mut s = status.clone();
    s.bytes_to_controller = 0;
    s.bytes_from_controller = 0;
    s.commands_to_controller = 0;
    s.commands_from_controller = 0;
    s.bytes_per_second_to_controller = 0;
    s.bytes_per_second_from_controller = 0;
    s.busy.requests_in_flight = 0;
    s.busy.build_processes = 0;
    s.busy.last_activity_ms = None;
    if let Some(warm) = &mut s.warm_engine {
        warm.rss_kib = None;
    }
    s
}

/// `message` as a text frame; an oversized reply becomes an error reply,
/// any other oversized message is dropped (logged).
pub(super) fn frame(message: &AgentMessage) -> Option<Message> {
    let text = match serde_json::to_string(message) {
        Ok(text) => text,
        Err(err) => {
            warn!(%err, "cannot encode a message for the lender");
            return None;
        }
    };
    if text.len() <= MAX_MESSAGE {
        return Some(Message::text(text));
    }
    match message {
        AgentMessage::Reply { id, .. } => {
            warn!(
                id,
                "a reply to the lender is too large; sending an error instead"
            );
            frame(&AgentMessage::Reply {
                id: *id,
                reply: Reply::error(format!(
                    "the reply would be larger than {MAX_MESSAGE} bytes"
                )),
            })
        }
        _ => {
            warn!(
                len = text.len(),
                "a message for the lender is too large; not sent"
            );
            None
        }
    }
}
