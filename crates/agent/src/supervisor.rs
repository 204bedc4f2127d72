//! Keeps the agent connected to where it should be: home, or the borrower
//! it was lent to. A thin driver over the move machine
//! ([`Machine`](crate::lending::machine::Machine)), which decides every
//! move; this file runs sessions and turns what they, the borrower's check,
//! the engine warm-up, the connection ahead, orders, the busy signals and
//! the machine's wake-up report into events; `act.rs` carries out the
//! actions.
//!
//! One session at a time. Between and during sessions it serves borrow and
//! return orders (from the control socket and the lender link, through the
//! [`Hub`]); the machine also sends the agent home when a lease expires,
//! when the borrower has been idle for `idle_return`, or when the borrower
//! has been unreachable for `--borrow-give-up`. Moving = connect the target
//! beside the live session, ask the session to leave (its channel is
//! closed at the remoting level, so the controller takes the node offline
//! at once; a move that waits for idle is called off if the controller
//! sends work before the close goes out), end the engine, its process
//! group and any build process left behind, record the new place in the
//! state file, serve the channel made ahead. SIGTERM and SIGINT leave at
//! once. Failed attempts wait with exponential backoff and jitter; home is
//! retried forever (unless `-noReconnect` / `-noReconnectAfter` say
//! otherwise); a FATAL refusal stops the agent at home and sends it home
//! from a borrower.

mod act;
mod ahead;
mod online;
mod signals;
mod state;

pub use self::signals::shutdown_on_signals;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::{EventKind, Phase};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument as _};

use self::ahead::ahead;
use self::online::{mark_online, report};
use self::state::Supervisor;
use crate::departure::{Departure, Intent};
use crate::engine::busy;
use crate::lending::backoff::Backoff;
use crate::lending::hub::{Hub, Order};
use crate::lending::machine::{Event, Machine};
use crate::lending::moves::Limits;
use crate::lending::orders::Handler as _;
use crate::lending::{Lease, StateFile};
use crate::session::{Agent, Continuity, Online, Route};
use crate::settings::Settings;

/// A connection that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(60);
/// How often the busy signals are looked at while a decision waits on them
/// (a move when idle, a lease's end, idle return), and the status's
/// throughput window is closed.
const SAMPLE: Duration = Duration::from_millis(200);

/// Why the agent stopped.
#[derive(Debug)]
pub enum Stopped {
    /// Asked to (signal), or the session ended with `-noReconnect`.
    Cleanly,
    /// Gave up: a fatal error, or reconnecting was not allowed.
    Failed(anyhow::Error),
}

/// Runs sessions until told to stop or until reconnecting cannot help.
pub async fn run(
    agent: &Agent,
    home_settings: Settings,
    hub: Arc<Hub>,
    state: StateFile,
    backoff: &mut Backoff,
    shutdown: CancellationToken,
) -> Stopped {
    let home = match Route::new(home_settings.clone()) {
        Ok(home) => home,
        Err(err) => return Stopped::Failed(err),
    };
    let Some(inbox) = hub.take_orders() else {
        return Stopped::Failed(anyhow::anyhow!(
            "the agent's orders are already served by another supervisor"
        ));
    };
    let limits = Limits {
        give_up: home_settings.borrow_give_up,
        grace: home_settings.lease_grace,
        warm_engine: home_settings.warm_engine,
    };
    let (saved, away) = resume(&state, &home_settings);
    let (machine, actions) = Machine::new(limits, saved, Instant::now(), busy::now_ms());
    let mut sup = Supervisor {
        agent,
        home_settings,
        home,
        hub,
        state: Arc::new(state),
        machine,
        away: None,
        home_continuity: Continuity::default(),
        away_continuity: Continuity::default(),
        inbox,
        replies: HashMap::new(),
        next_order: 0,
        candidate: None,
        checking: None,
        warming: None,
        connecting: None,
        ready: None,
        counting: false,
        prepared: None,
        bridged: false,
        abandoning: Vec::new(),
    };
    for action in actions {
        // Only the state file's update for a lease that ended meanwhile.
        let _ = sup.act_now(action).await;
    }
    if let Some(lease) = sup.machine.lease().cloned() {
        info!(borrower = %lease.label(), node = %lease.request.name, "resuming at the borrower");
        sup.away = away;
        sup.hub.core().lease = Some(lease);
    }
    let stopped = sup.serve(backoff, &shutdown).await;
    sup.checking = None;
    sup.warming = None;
    sup.connecting = None;
    sup.home_continuity.shutdown().await;
    sup.away_continuity.shutdown().await;
    for closing in sup.abandoning.drain(..) {
        let _ = closing.await;
    }
    stopped
}

/// Picks up the lease kept in the state file before a restart, with the
/// route to its borrower (none when it cannot be had: starting at home).
fn resume(state: &StateFile, home: &Settings) -> (Option<Lease>, Option<Route>) {
    let lease = match state.load() {
        Ok(lease) => lease,
        Err(err) => {
            warn!("{err:#}; starting at home");
            None
        }
    };
    let Some(lease) = lease else {
        return (None, None);
    };
    if lease.deadline_ms().is_some_and(|end| end <= busy::now_ms()) {
        // The machine starts at home and updates the state file.
        return (Some(lease), None);
    }
    match lease
        .settings(home)
        .map_err(anyhow::Error::msg)
        .and_then(Route::new)
    {
        Ok(route) => (Some(lease), Some(route)),
        Err(err) => {
            warn!("cannot resume the borrow ({err:#}); starting at home");
            (None, None)
        }
    }
}

/// Sleeps until the machine's next wake-up; forever without one.
async fn wake(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl<'a> Supervisor<'a> {
    /// Carries out one action outside any session.
    async fn act_now(&mut self, action: crate::lending::machine::Action) {
        if let Some(event) = self.act_one(action).await {
            self.feed(event, None).await;
        }
    }

    /// An order from the control socket or the lender link, as an event.
    fn order(&mut self, order: Order) -> Event {
        self.next_order += 1;
        let id = self.next_order;
        self.replies.insert(id, order.reply);
        Event::Order {
            id,
            command: order.command,
        }
    }

    async fn serve(&mut self, backoff: &mut Backoff, shutdown: &CancellationToken) -> Stopped {
        let mut last_online = Instant::now();
        let mut last_problem: Option<String> = None;
        let mut attempt: u64 = 0;
        let mut sample = tokio::time::interval(SAMPLE);
        sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            attempt += 1;
            self.bridged = false;
            let borrowed = self.machine.lease().is_some();
            let departure = Departure::new();
            let mut called_off = departure.watch();
            let started = Instant::now();
            self.feed(Event::SessionStarted, Some(&departure)).await;
            // The session owns its route and continuity for a while, so the
            // supervisor can prepare the other place beside it.
            let (route, mut continuity) = match (&self.away, borrowed) {
                (Some(away), true) => (away.clone(), std::mem::take(&mut self.away_continuity)),
                _ => (self.home.clone(), std::mem::take(&mut self.home_continuity)),
            };
            let (online_tx, mut online_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
            let mut went_online = false;
            let result = {
                let hub = self.hub.clone();
                let (agent, state) = (self.agent, self.state.clone());
                let span = tracing::info_span!(
                    "session",
                    attempt,
                    controller = route.label().as_deref().unwrap_or(""),
                    borrowed
                );
                let session = agent
                    .run_session(
                        &route,
                        &mut continuity,
                        &state,
                        &departure,
                        self.prepared.take(),
                        |online: Online| {
                            mark_online(&hub, &online);
                            let _ = online_tx.send(());
                        },
                    )
                    .instrument(span);
                tokio::pin!(session);
                loop {
                    let event = tokio::select! {
                        result = &mut session => break result,
                        Some(()) = online_rx.recv() => {
                            went_online = true;
                            Event::Online
                        }
                        at = departure.first_call_answered(), if self.machine.awaiting_first_call() => Event::FirstCallAnswered(at),
                        () = wake(self.machine.next_wake()) => Event::Timer,
                        (candidate, checked) = ahead(&mut self.checking) => self.checked(candidate, checked),
                        (candidate, warmed) = ahead(&mut self.warming) => self.warmed(candidate, warmed),
                        (candidate, connected) = ahead(&mut self.connecting) => self.connected(candidate, connected),
                        Some(order) = self.inbox.recv() => self.order(order),
                        () = self.hub.settle(), if self.counting => {
                            self.counting = false;
                            Event::Census(self.hub.quiet_to_move())
                        }
                        _ = sample.tick() => {
                            self.hub.sample_rates();
                            if let Some(gone) = self.renew_warm_engine() {
                                gone
                            } else if self.machine.watches_quiet() {
                                Event::Census(self.hub.quiet_to_move())
                            } else {
                                continue;
                            }
                        }
                        _ = called_off.changed() => {
                            if departure.intent() != Intent::Stay {
                                continue;
                            }
                            Event::RequestSeen
                        }
                        () = shutdown.cancelled(), if departure.intent() != Intent::Now => {
                            departure.request(Intent::Now);
                            self.hub.set_phase(Phase::Leaving);
                            continue;
                        }
                    };
                    let first_call = matches!(event, Event::Online);
                    self.feed(event, Some(&departure)).await;
                    if first_call && self.machine.awaiting_first_call() {
                        self.hub.core().awaiting_first_call = true;
                    }
                }
            };
            if borrowed {
                self.away_continuity = continuity;
            } else {
                self.home_continuity = continuity;
            }
            {
                let mut core = self.hub.core();
                core.engine_pid = None;
                core.awaiting_first_call = false;
                // Where it connects next (status says "serves or is
                // connecting to"): never "nowhere" in the middle of a move.
                core.controller_url = match &core.lease {
                    Some(lease) => Some(crate::lending::target_label(&lease.request.target)),
                    None => core.home_url.clone(),
                };
            }
            if went_online {
                last_online = Instant::now();
                last_problem = None;
                if started.elapsed() >= STABLE {
                    backoff.reset();
                }
            }
            if shutdown.is_cancelled() {
                return Stopped::Cleanly;
            }
            let fatal = matches!(&result, Err(err) if err.is_fatal());
            if fatal && borrowed {
                if let Err(err) = &result {
                    error!(%err, "the borrower refused the agent for good: going home");
                }
            }
            self.feed(Event::SessionEnded { fatal }, None).await;
            if let (true, Err(err)) = (fatal && borrowed, &result) {
                self.hub.core().last_error = Some(err.to_string());
            }
            if self.bridged {
                backoff.reset();
                continue;
            }
            match result {
                Ok(end) => {
                    info!(?end, "disconnected");
                    if !borrowed && self.home_settings.no_reconnect {
                        return Stopped::Cleanly;
                    }
                }
                Err(err) if err.is_fatal() => {
                    error!(%err, "giving up");
                    return Stopped::Failed(err.into());
                }
                Err(err) => {
                    report(&err, went_online, &mut last_problem);
                    self.hub.core().last_error = Some(err.to_string());
                    self.hub.emit(EventKind::Error {
                        message: err.to_string(),
                    });
                    if !borrowed && self.home_settings.no_reconnect {
                        return Stopped::Failed(
                            anyhow::Error::new(err).context("-noReconnect is set"),
                        );
                    }
                }
            }
            if let (false, Some(limit)) = (borrowed, self.home_settings.no_reconnect_after) {
                if last_online.elapsed() >= limit {
                    return Stopped::Failed(anyhow::anyhow!(
                        "not connected for {}; giving up as -noReconnectAfter says",
                        humantime::format_duration(limit)
                    ));
                }
            }
            // Wait before the next attempt, still serving orders; a move
            // decided meanwhile needs no channel kept and goes at once.
            self.hub.set_phase(Phase::BackingOff);
            let delay = backoff.next_delay();
            info!(delay = %humantime::format_duration(Duration::from_millis(control::duration_ms(delay))), "reconnecting");
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            while !self.bridged {
                let event = tokio::select! {
                    () = &mut sleep => break,
                    () = shutdown.cancelled() => return Stopped::Cleanly,
                    () = wake(self.machine.next_wake()) => Event::Timer,
                    (candidate, checked) = ahead(&mut self.checking) => self.checked(candidate, checked),
                    (candidate, warmed) = ahead(&mut self.warming) => self.warmed(candidate, warmed),
                    Some(order) = self.inbox.recv() => self.order(order),
                    _ = sample.tick() => {
                        self.hub.sample_rates();
                        if !self.machine.watches_quiet() {
                            continue;
                        }
                        Event::Census(self.hub.quiet_to_move())
                    }
                };
                self.feed(event, None).await;
            }
            if self.bridged {
                backoff.reset();
            }
        }
    }
}
