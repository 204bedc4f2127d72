//! Rows as both databases store them: the conversions between the pool's
//! types and the columns (JSON for nested values, i64 milliseconds), so
//! that SQLite and PostgreSQL read and write exactly the same thing.

use std::time::Duration;

use control::Transport;
use serde_json::{json, Value};

use crate::pool::{
    Attempt, Borrower, EndReason, Lease, LeaseRequest, LeaseState, Place, ReturnCause, Secret,
};
use control::labels::Expr;

/// A row that does not read back: what is wrong with it.
#[derive(Debug)]
pub(super) struct Corrupt(pub String);

type Res<T> = Result<T, Corrupt>;

// Database integers are i64; times and durations here are u64 ms, far below
// i64::MAX, saturate just in case.
pub(super) fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn uint(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(super) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(super) fn corrupt(what: impl std::fmt::Display) -> Corrupt {
    Corrupt(what.to_string())
}

pub(super) fn place_url(place: &Place) -> Option<&str> {
    match place {
        Place::Home => None,
        Place::Borrowed { url } => Some(url),
    }
}

pub(super) fn place_from(url: Option<String>) -> Place {
    url.map_or(Place::Home, |url| Place::Borrowed { url })
}

pub(super) fn state_detail(state: &LeaseState) -> Option<Value> {
    match state {
        LeaseState::Queued | LeaseState::Reserved | LeaseState::Active => None,
        LeaseState::Returning(ReturnCause::Requested) => Some(json!({"kind": "requested"})),
        LeaseState::Returning(ReturnCause::Reclaimed { for_lease }) => {
            Some(json!({"kind": "reclaimed", "for_lease": for_lease}))
        }
        LeaseState::Ended(reason) => Some(match reason {
            EndReason::Returned => json!({"kind": "returned"}),
            EndReason::Reclaimed { for_lease } => {
                json!({"kind": "reclaimed", "for_lease": for_lease})
            }
            EndReason::AgentLeft { place } => {
                json!({"kind": "agent_left", "url": place_url(place)})
            }
            EndReason::TimedOut { message } => json!({"kind": "timed_out", "message": message}),
            EndReason::Failed { message } => json!({"kind": "failed", "message": message}),
            EndReason::Cancelled => json!({"kind": "cancelled"}),
        }),
    }
}

pub(super) fn state_from(name: &str, detail: Option<&str>) -> Res<LeaseState> {
    let detail: Value = match detail {
        Some(text) => serde_json::from_str(text).map_err(corrupt)?,
        None => Value::Null,
    };
    let kind = detail["kind"].as_str().unwrap_or_default();
    let for_lease = || {
        detail["for_lease"]
            .as_u64()
            .ok_or_else(|| corrupt(format!("lease state {detail} without for_lease")))
    };
    let message = || detail["message"].as_str().unwrap_or_default().to_owned();
    Ok(match (name, kind) {
        ("queued", _) => LeaseState::Queued,
        ("reserved", _) => LeaseState::Reserved,
        ("active", _) => LeaseState::Active,
        ("returning", "requested") => LeaseState::Returning(ReturnCause::Requested),
        ("returning", "reclaimed") => LeaseState::Returning(ReturnCause::Reclaimed {
            for_lease: for_lease()?,
        }),
        ("ended", "returned") => LeaseState::Ended(EndReason::Returned),
        ("ended", "reclaimed") => LeaseState::Ended(EndReason::Reclaimed {
            for_lease: for_lease()?,
        }),
        ("ended", "agent_left") => LeaseState::Ended(EndReason::AgentLeft {
            place: place_from(detail["url"].as_str().map(str::to_owned)),
        }),
        ("ended", "timed_out") => LeaseState::Ended(EndReason::TimedOut { message: message() }),
        ("ended", "failed") => LeaseState::Ended(EndReason::Failed { message: message() }),
        ("ended", "cancelled") => LeaseState::Ended(EndReason::Cancelled),
        _ => return Err(corrupt(format!("lease state {name:?} {detail}"))),
    })
}

pub(super) fn transport_name(transport: Option<Transport>) -> Option<&'static str> {
    transport.map(|t| match t {
        Transport::Tcp => "tcp",
        Transport::WebSocket => "web_socket",
    })
}

pub(super) fn transport_from(name: Option<String>) -> Res<Option<Transport>> {
    match name.as_deref() {
        None => Ok(None),
        Some("tcp") => Ok(Some(Transport::Tcp)),
        Some("web_socket") => Ok(Some(Transport::WebSocket)),
        Some(other) => Err(corrupt(format!("transport {other:?}"))),
    }
}

pub(super) fn attempts_json(attempts: &[Attempt]) -> String {
    Value::Array(
        attempts
            .iter()
            .map(|a| json!({"agent": a.agent, "reason": a.reason, "at_ms": a.at_ms}))
            .collect(),
    )
    .to_string()
}

pub(super) fn attempts_from(text: &str) -> Res<Vec<Attempt>> {
    let value: Value = serde_json::from_str(text).map_err(corrupt)?;
    let items = value
        .as_array()
        .ok_or_else(|| corrupt("attempts is not an array"))?;
    Ok(items
        .iter()
        .map(|a| Attempt {
            agent: a["agent"].as_str().unwrap_or_default().to_owned(),
            reason: a["reason"].as_str().unwrap_or_default().to_owned(),
            at_ms: a["at_ms"].as_u64().unwrap_or(0),
        })
        .collect())
}

pub(super) const LEASE_COLUMNS: &str =
    "id, state, state_detail, agent, requirements, borrower_url, \
     borrower_node, borrower_secret, transport, client, lease_ms, idle_return_ms, wait_ms, \
     requested_ms, deadline_ms, since_ms, attempts, origin";

/// A lease row as read, before the fallible conversions.
pub(super) struct LeaseRow {
    pub(super) id: i64,
    pub(super) state: String,
    pub(super) state_detail: Option<String>,
    pub(super) agent: Option<String>,
    pub(super) requirements: String,
    pub(super) borrower_url: String,
    pub(super) borrower_node: String,
    pub(super) borrower_secret: Option<String>,
    pub(super) transport: Option<String>,
    pub(super) client: String,
    pub(super) lease_ms: Option<i64>,
    pub(super) idle_return_ms: Option<i64>,
    pub(super) wait_ms: i64,
    pub(super) requested_ms: i64,
    pub(super) deadline_ms: i64,
    pub(super) since_ms: i64,
    pub(super) attempts: String,
    pub(super) origin: Option<String>,
}

impl LeaseRow {
    pub(super) fn into_lease(self) -> Res<Lease> {
        let requirements = Expr::parse(&self.requirements)
            .map_err(|err| corrupt(format!("lease {}: requirements: {err}", self.id)))?;
        let millis = |v: i64| Duration::from_millis(uint(v));
        Ok(Lease {
            id: uint(self.id),
            request: LeaseRequest {
                requirements,
                borrower: Borrower {
                    url: self.borrower_url,
                    node_name: self.borrower_node,
                    secret: Secret::new(self.borrower_secret.unwrap_or_default()),
                    transport: transport_from(self.transport)?,
                },
                client: self.client,
                lease: self.lease_ms.map(millis),
                idle_return: self.idle_return_ms.map(millis),
                wait: millis(self.wait_ms),
                origin: self
                    .origin
                    .as_deref()
                    .map(serde_json::from_str)
                    .transpose()
                    .map_err(|err| corrupt(format!("lease {}: origin: {err}", self.id)))?,
            },
            state: state_from(&self.state, self.state_detail.as_deref())?,
            agent: self.agent,
            requested_ms: uint(self.requested_ms),
            deadline_ms: uint(self.deadline_ms),
            since_ms: uint(self.since_ms),
            attempts: attempts_from(&self.attempts)?,
        })
    }
}
