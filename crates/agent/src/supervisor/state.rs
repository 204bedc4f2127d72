//! Everything the supervisor tracks between and during sessions.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::ahead::Candidate;
use crate::lending::hub::{Hub, Order};
use crate::lending::moves::{Orders, Timers};
use crate::lending::{Lease, StateFile};
use crate::session::{Agent, Continuity, Prepared, Route};
use crate::settings::Settings;

/// Everything the supervisor tracks.
pub(super) struct Supervisor<'a> {
    pub(super) agent: &'a Agent,
    pub(super) home_settings: Settings,
    pub(super) home: Route,
    pub(super) hub: Arc<Hub>,
    pub(super) state: Arc<StateFile>,
    pub(super) lease: Option<Lease>,
    pub(super) away: Option<Route>,
    pub(super) home_continuity: Continuity,
    pub(super) away_continuity: Continuity,
    /// Idleness, reachability, the lease's grace and retries: the move
    /// rules' clocks.
    pub(super) timers: Timers,
    /// The orders accepted and not carried out yet: owned here, published
    /// to the hub for `status`.
    pub(super) orders: Orders,
    /// Orders from the control socket and the lender link.
    pub(super) inbox: mpsc::Receiver<Order>,
    /// The borrower of the pending borrow, once checked.
    pub(super) candidate: Option<Candidate>,
    /// The connection the next session serves (made before the move).
    pub(super) prepared: Option<Prepared>,
    /// When the move in progress was decided (for the `moved` event).
    pub(super) move_started: Option<Instant>,
    /// Prepared connections being closed after a move was called off; the
    /// next connection ahead waits for them (its target may be the same).
    pub(super) abandoning: Vec<JoinHandle<()>>,
}
