//! The agent's state as `status` replies and events carry it.

use serde::{Deserialize, Serialize};

use crate::Transport;

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
