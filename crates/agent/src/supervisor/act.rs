//! Carries out the move machine's [`Action`]s: the I/O behind each
//! decision (engines, connections, the state file, `status` and events).

use std::time::{Duration, Instant};

use control::{EventKind, MovePhase};
use tracing::{debug, error, info, warn};

use super::ahead::Candidate;
use super::state::Supervisor;
use crate::departure::Departure;
use crate::engine::busy;
use crate::lending::machine::{Action, Event};
use crate::lending::moves::Move;
use crate::lending::Lease;
use crate::session::{Continuity, Route};

/// Time given to processes left behind by builds between SIGTERM and SIGKILL.
const LEFTOVER_GRACE: Duration = Duration::from_secs(5);

impl<'a> Supervisor<'a> {
    /// Gives the machine an event and carries out what it says, including
    /// the events that carrying it out produces.
    pub(super) async fn feed(&mut self, event: Event, departure: Option<&Departure>) {
        let mut events = vec![event];
        while let Some(event) = events.pop() {
            let actions = self.machine.on(event, Instant::now(), busy::now_ms());
            for action in actions {
                if let Some(next) = self.act_with(action, departure).await {
                    events.push(next);
                }
            }
            let spare = self.publish_warm_engine();
            if self.machine.lease().is_some() && self.machine.warm_ready() && !spare {
                events.push(Event::EngineGone);
            }
        }
    }

    /// Carries out one action with no live session.
    pub(super) async fn act_one(&mut self, action: Action) -> Option<Event> {
        self.act_with(action, None).await
    }

    async fn act_with(&mut self, action: Action, departure: Option<&Departure>) -> Option<Event> {
        match action {
            Action::CheckBorrower(request) => return self.check_borrower(request),
            Action::ForgetBorrower => {
                self.checking = None;
                self.candidate = None;
            }
            Action::WarmEngine => self.warm_home(),
            Action::Connect(to) => return self.connect(to),
            Action::CountBuilds => self.counting = true,
            Action::CloseChannel(intent) => {
                if let Some(departure) = departure {
                    departure.request(intent);
                }
            }
            Action::Abandon => self.abandon(),
            Action::Bridge { to, prepared } => self.bridge(to, prepared).await,
            Action::Persist(lease) => {
                if let Err(err) = self.state.save(lease.as_ref()) {
                    error!(%err, path = %self.state.path().display(), "cannot record the agent's place in the state file");
                }
            }
            Action::Report(kind) => {
                if let EventKind::Moved {
                    ms,
                    connected_ms,
                    answered_ms,
                } = &kind
                {
                    info!(ms, connected_ms, answered_ms, "moved");
                    self.hub.core().awaiting_first_call = false;
                }
                self.hub.emit(kind);
            }
            Action::Phase(phase) => self.hub.set_phase(phase),
            Action::PublishOrders(orders) => self.hub.core().orders = orders,
            Action::IdleDeadline(ms) => self.hub.core().idle_deadline_ms = Some(ms),
            Action::LastError(message) => self.hub.core().last_error = Some(message),
            Action::Reply { id, answer } => {
                if let Some(reply) = self.replies.remove(&id) {
                    // The peer may have gone meanwhile; the order stands.
                    let _ = reply.send(answer);
                }
            }
        }
        None
    }

    /// Starts checking a borrower (resolve, jar, engine) beside the session.
    fn check_borrower(&mut self, request: control::BorrowRequest) -> Option<Event> {
        let lease = Lease {
            request,
            started_ms: busy::now_ms(),
        };
        let route = match lease
            .settings(&self.home_settings)
            .map_err(anyhow::Error::msg)
            .and_then(Route::new)
        {
            Ok(route) => route,
            Err(err) => {
                return Some(Event::BorrowerFailed {
                    phase: MovePhase::Config,
                    reason: format!("{err:#}"),
                })
            }
        };
        info!(borrower = %lease.label(), "checking the borrower before leaving");
        let mut candidate = Candidate {
            route,
            continuity: Continuity::default(),
            home: false,
        };
        let (agent, warm) = (self.agent, self.home_settings.warm_engine);
        self.candidate = None;
        self.checking = Some(Box::pin(async move {
            let checked = agent
                .check(&candidate.route, &mut candidate.continuity, warm)
                .await;
            (candidate, checked)
        }));
        None
    }

    /// While lent, starts an engine for home so that going home costs only
    /// a handshake.
    fn warm_home(&mut self) {
        let mut candidate = Candidate {
            route: self.home.clone(),
            continuity: std::mem::take(&mut self.home_continuity),
            home: true,
        };
        let agent = self.agent;
        self.warming = Some(Box::pin(async move {
            let warmed = agent
                .check(&candidate.route, &mut candidate.continuity, true)
                .await;
            (candidate, warmed)
        }));
    }

    /// While lent: once the class-data archive that home's warm engine
    /// started without is made, drops that engine so that the machine
    /// warms another one with it (a return then costs a handshake and
    /// first calls answered from the archive).
    pub(super) fn renew_warm_engine(&mut self) -> Option<Event> {
        if self.machine.lease().is_none() || !self.home_continuity.drop_spare_without_archive() {
            return None;
        }
        info!("the class-data archive is made: starting home's warm engine again with it");
        Some(Event::EngineGone)
    }

    /// Connects the move's target while this place is still served.
    fn connect(&mut self, to: Move) -> Option<Event> {
        let candidate = match to {
            Move::Lend(_) => self.candidate.take(),
            Move::Home(_) => Some(Candidate {
                route: self.home.clone(),
                continuity: std::mem::take(&mut self.home_continuity),
                home: true,
            }),
        };
        let Some(mut candidate) = candidate else {
            return Some(Event::Refused {
                phase: MovePhase::Config,
                reason: "the borrower was not checked".into(),
            });
        };
        let (agent, state) = (self.agent, self.state.clone());
        self.abandoning.retain(|closing| !closing.is_finished());
        let closing = std::mem::take(&mut self.abandoning);
        self.connecting = Some(Box::pin(async move {
            for closed in closing {
                let _ = closed.await;
            }
            let connected = agent
                .connect(&candidate.route, &mut candidate.continuity, &state)
                .await;
            (candidate, connected)
        }));
        None
    }

    /// Closes the target's fresh channel again (the move was put off) and
    /// keeps what it was connected with for the next try.
    fn abandon(&mut self) {
        // Still connecting: dropped, its engine with it.
        self.connecting = None;
        let Some((mut candidate, prepared)) = self.ready.take() else {
            return;
        };
        self.abandoning
            .push(self.agent.abandon(prepared, &mut candidate.continuity));
        if candidate.home {
            self.home_continuity = candidate.continuity;
        } else if self.machine.orders().pending_borrow().is_some() {
            self.candidate = Some(candidate);
        }
    }

    /// Carries out a move once the old session is over.
    async fn bridge(&mut self, to: Move, prepared: bool) {
        let leaving_borrower = self.away.is_some();
        // The engine that leaves stops its spare too: the next place runs
        // another controller's engine.
        if leaving_borrower {
            self.away_continuity.shutdown().await;
        } else {
            self.home_continuity.shutdown().await;
        }
        let left =
            crate::engine::builds::end_leftovers(&crate::engine::live_engines(), LEFTOVER_GRACE)
                .await;
        if left > 0 {
            warn!(processes = left, "ended processes that builds left running");
        }
        let ready = self.ready.take().filter(|_| prepared);
        let (candidate, prepared) = match ready {
            Some((candidate, prepared)) => (Some(candidate), Some(prepared)),
            None => (None, None),
        };
        match to {
            Move::Lend(request) => {
                let lease = Lease {
                    request,
                    started_ms: busy::now_ms(),
                };
                let route = match candidate {
                    Some(candidate) => {
                        self.away_continuity = candidate.continuity;
                        Ok(candidate.route)
                    }
                    None => lease
                        .settings(&self.home_settings)
                        .map_err(anyhow::Error::msg)
                        .and_then(Route::new),
                };
                match route {
                    Ok(route) => {
                        info!(borrower = %lease.label(), node = %lease.request.name, lease = ?lease.request.lease, "lent");
                        self.away = Some(route);
                    }
                    Err(err) => {
                        error!("cannot go to the borrower: {err:#}");
                        self.hub.core().last_error = Some(format!("{err:#}"));
                    }
                }
            }
            Move::Home(reason) => {
                info!(?reason, "returning home");
                if let Some(candidate) = candidate {
                    self.home_continuity = candidate.continuity;
                }
                self.away = None;
            }
        }
        self.prepared = prepared;
        self.candidate = None;
        self.bridged = true;
        let mut core = self.hub.core();
        core.lease = self.machine.lease().cloned();
        core.idle_deadline_ms = None;
        core.since_ms = busy::now_ms();
    }

    /// Shows in `status` the engine kept for the next move, if any, and
    /// says whether there is one.
    fn publish_warm_engine(&mut self) -> bool {
        let warm = if self.machine.lease().is_some() {
            let label = self.home.label();
            self.home_continuity.spare_pid().map(|pid| (pid, label))
        } else {
            self.candidate.as_mut().and_then(|candidate| {
                let label = candidate.route.label();
                candidate.continuity.spare_pid().map(|pid| (pid, label))
            })
        };
        let spare = warm.is_some();
        self.hub.core().warm_engine = warm;
        spare
    }

    /// A finished check, warm-up or connection, as an event (the candidate
    /// kept where the next step needs it).
    pub(super) fn checked(
        &mut self,
        candidate: Candidate,
        checked: Result<(), crate::session::SessionError>,
    ) -> Event {
        match checked {
            Ok(()) => {
                info!(
                    borrower = candidate.route.label().unwrap_or_default(),
                    "the borrower is reachable and its engine is ready"
                );
                self.candidate = Some(candidate);
                Event::BorrowerChecked
            }
            // The candidate's engine, which never served, is dropped (its
            // process group killed) so the live session is not held up.
            Err(err) => Event::BorrowerFailed {
                phase: err.phase(),
                reason: err.to_string(),
            },
        }
    }

    pub(super) fn warmed(
        &mut self,
        candidate: Candidate,
        warmed: Result<(), crate::session::SessionError>,
    ) -> Event {
        self.home_continuity = candidate.continuity;
        match warmed {
            Ok(()) => {
                info!("an engine for home is ready");
                Event::EngineReady
            }
            Err(err) => {
                debug!(%err, "cannot start an engine for home yet");
                Event::EngineFailed
            }
        }
    }

    pub(super) fn connected(
        &mut self,
        candidate: Candidate,
        connected: Result<crate::session::Prepared, crate::session::SessionError>,
    ) -> Event {
        match connected {
            Ok(prepared) => {
                self.ready = Some((candidate, prepared));
                Event::Connected
            }
            Err(err) => {
                if candidate.home {
                    self.home_continuity = candidate.continuity;
                }
                Event::Refused {
                    phase: err.phase(),
                    reason: err.to_string(),
                }
            }
        }
    }
}
