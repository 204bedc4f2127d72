//! Everything the supervisor tracks between and during sessions: the I/O
//! side of moving (routes, engines, connections made ahead); every decision
//! is the [`Machine`]'s.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::ahead::{Ahead, Candidate};
use crate::lending::hub::{Hub, Order};
use crate::lending::machine::Machine;
use crate::lending::StateFile;
use crate::session::{Agent, Continuity, Prepared, Route};
use crate::settings::Settings;

/// Everything the supervisor tracks.
pub(super) struct Supervisor<'a> {
    pub(super) agent: &'a Agent,
    pub(super) home_settings: Settings,
    pub(super) home: Route,
    pub(super) hub: Arc<Hub>,
    pub(super) state: Arc<StateFile>,
    /// The agent's place, lease, orders and move in progress.
    pub(super) machine: Machine,
    /// The borrower's route while lent.
    pub(super) away: Option<Route>,
    pub(super) home_continuity: Continuity,
    pub(super) away_continuity: Continuity,
    /// Orders from the control socket and the lender link.
    pub(super) inbox: mpsc::Receiver<Order>,
    /// Replies owed to orders, by the id the machine was given.
    pub(super) replies: HashMap<u64, oneshot::Sender<Result<String, String>>>,
    pub(super) next_order: u64,
    /// The borrower of the pending borrow, once checked.
    pub(super) candidate: Option<Candidate>,
    /// The borrower being checked.
    pub(super) checking: Option<Ahead<'a, ()>>,
    /// An engine for home being started.
    pub(super) warming: Option<Ahead<'a, ()>>,
    /// The move's target being connected.
    pub(super) connecting: Option<Ahead<'a, Prepared>>,
    /// The move's target, connected.
    pub(super) ready: Option<(Candidate, Prepared)>,
    /// A fresh count of build processes was asked for.
    pub(super) counting: bool,
    /// The connection the next session serves (made before the move).
    pub(super) prepared: Option<Prepared>,
    /// A move was carried out: the next session goes to the new place.
    pub(super) bridged: bool,
    /// Prepared connections being closed after a move was called off; the
    /// next connection ahead waits for them (its target may be the same).
    pub(super) abandoning: Vec<JoinHandle<()>>,
}
