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
//! - this module: the protocol's constants, re-exporting each concept's
//!   types from its own file: `request` ([`Request`], [`Target`],
//!   [`parse_request`], [`request_line`]), `reply` ([`Reply`],
//!   [`Response`], [`parse_reply`], [`reply_line`]), `status` ([`Status`]),
//!   `event` ([`Event`]), `clock` ([`now_ms`] and millisecond arithmetic);
//! - [`frame`]: bounded line reading and JSON line writing, shared by the
//!   agent's server and the client;
//! - [`client`]: an async client ([`client::connect`]), used by
//!   `jnlp-agent ctl`.
//! - [`labels`]: Jenkins labels and label expressions, the one rule the
//!   agent and the lender share;
//! - [`secret`]: [`Secret`], a value that never prints;
//! - [`secret_file`]: bounded reading of secret files, and whether a file holding a secret or a token is
//!   readable by other users, and the warning to give.

use serde::Serialize;

pub mod client;
mod clock;
mod event;
pub mod frame;
pub mod labels;
pub mod link;
mod reply;
mod request;
pub mod secret;
pub mod secret_file;
mod status;

pub use clock::{duration_ms, ms_after, now_ms, unix_ms};
pub use event::{Event, EventKind, MovePhase, ReturnReason};
pub use reply::{parse_reply, reply_line, Reply, Response};
pub use request::{
    check_node_name, normalize_scheme, parse_request, request_line, BorrowRequest, Envelope,
    Request, RequestError, Target, Transport, When, MAX_NODE_NAME,
};
pub use secret::Secret;
pub use status::{
    Busy, EngineWindow, Pending, PendingAction, Phase, Placement, Status, WarmEngine,
};

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
    use std::time::Duration;

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
