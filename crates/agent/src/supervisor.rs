//! Keeps the agent connected to where it should be: home, or the borrower
//! it was lent to.
//!
//! One session at a time. Between and during sessions it serves borrow and
//! return commands (queued by the control socket in the [`Hub`]), and
//! decides on its own to go home when a lease expires, when the borrower
//! has been idle for `idle_return`, or when the borrower has been
//! unreachable for `--borrow-give-up`. Moving = ask the session to leave
//! (its channel is closed at the remoting level, so the controller takes
//! the node offline at once; a move that waits for idle is called off if
//! the controller sends work before the close goes out), end the engine,
//! its process group and any build process left behind, record the new
//! place in the state file, connect there. SIGTERM and SIGINT leave the
//! same way, at once. Failed attempts wait with exponential backoff and jitter; home is
//! retried forever (unless `-noReconnect` / `-noReconnectAfter` say
//! otherwise); a FATAL refusal stops the agent at home and sends it home
//! from a borrower.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::{EventKind, Phase, ReturnReason, When};
use rand::Rng as _;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument as _};

use crate::busy;
use crate::departure::{Departure, Intent};
use crate::hub::{Command, Hub};
use crate::lending::{Lease, StateFile};
use crate::session::{Agent, Continuity, Online, Route, SessionError};
use crate::settings::Settings;
use remoting_protocol::handshake::HandshakeError;

/// A connection that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(60);
/// How often pending moves, leases and idleness are looked at.
const TICK: Duration = Duration::from_millis(200);
/// Time given to processes left behind by builds between SIGTERM and SIGKILL.
const LEFTOVER_GRACE: Duration = Duration::from_secs(5);

/// Backoff between attempts: doubles from `initial` up to `max`, each wait
/// jittered to between half and all of it so that many agents restarting
/// together do not reconnect in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `initial`, capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// Back to the initial wait.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Why the agent stopped.
#[derive(Debug)]
pub enum Stopped {
    /// Asked to (signal), or the session ended with `-noReconnect`.
    Cleanly,
    /// Gave up: a fatal error, or reconnecting was not allowed.
    Failed(anyhow::Error),
}

/// A move the supervisor decided on.
#[derive(Debug, Clone)]
enum Move {
    /// To this borrower.
    Lend(control::BorrowRequest),
    /// Home, for this reason.
    Home(ReturnReason),
}

/// A move, and whether it waits for quiet (and can be called off by work
/// arriving) or happens whatever the channel carries.
#[derive(Debug, Clone)]
struct Decision {
    to: Move,
    intent: Intent,
}

impl Decision {
    fn when(to: Move, when: When) -> Self {
        let intent = match when {
            When::Now => Intent::Now,
            When::Idle => Intent::WhenQuiet,
        };
        Self { to, intent }
    }

    fn quiet(to: Move) -> Self {
        Self {
            to,
            intent: Intent::WhenQuiet,
        }
    }

    fn now(to: Move) -> Self {
        Self {
            to,
            intent: Intent::Now,
        }
    }
}

/// Everything the supervisor tracks.
struct Supervisor<'a> {
    agent: &'a Agent,
    home_settings: Settings,
    home: Route,
    hub: Arc<Hub>,
    state: StateFile,
    lease: Option<Lease>,
    away: Option<Route>,
    home_continuity: Continuity,
    away_continuity: Continuity,
    /// When the agent was last seen busy (for `idle_return`).
    idle_since: Instant,
    /// Since when the current place has had no live session (for give-up).
    offline_since: Instant,
    /// When a lease expired while the agent was busy.
    lease_expired_at: Option<Instant>,
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
    let mut sup = Supervisor {
        agent,
        home_settings,
        home,
        hub,
        state,
        lease: None,
        away: None,
        home_continuity: Continuity::default(),
        away_continuity: Continuity::default(),
        idle_since: Instant::now(),
        offline_since: Instant::now(),
        lease_expired_at: None,
    };
    sup.resume();
    let stopped = sup.serve(backoff, &shutdown).await;
    sup.home_continuity.shutdown().await;
    sup.away_continuity.shutdown().await;
    stopped
}

impl Supervisor<'_> {
    /// Picks up where the agent was before a restart.
    fn resume(&mut self) {
        let lease = match self.state.load() {
            Ok(lease) => lease,
            Err(err) => {
                warn!("{err:#}; starting at home");
                None
            }
        };
        let Some(lease) = lease else {
            return;
        };
        if lease
            .deadline_ms()
            .is_some_and(|deadline| deadline <= busy::now_ms())
        {
            info!(borrower = %lease.label(), "the lease expired while the agent was stopped: starting at home");
            if let Err(err) = self.state.save(None) {
                warn!(%err, "cannot update the state file");
            }
            return;
        }
        match lease
            .settings(&self.home_settings)
            .map_err(anyhow::Error::msg)
            .and_then(Route::new)
        {
            Ok(route) => {
                info!(borrower = %lease.label(), node = %lease.request.name, "resuming at the borrower");
                self.away = Some(route);
                self.hub.core().lease = Some(lease.clone());
                self.lease = Some(lease);
            }
            Err(err) => warn!("cannot resume the borrow ({err:#}); starting at home"),
        }
    }

    async fn serve(&mut self, backoff: &mut Backoff, shutdown: &CancellationToken) -> Stopped {
        let mut last_online = Instant::now();
        let mut last_problem: Option<String> = None;
        let mut attempt: u64 = 0;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            attempt += 1;
            let borrowed = self.lease.is_some();
            self.hub.set_phase(Phase::Connecting);
            let departure = Departure::new();
            let mut called_off = departure.watch();
            let went_online = Cell::new(false);
            let started = Instant::now();
            let mut decided: Option<Decision> = None;
            let result = {
                let (route, continuity) = match (&self.away, borrowed) {
                    (Some(away), true) => (away, &mut self.away_continuity),
                    _ => (&self.home, &mut self.home_continuity),
                };
                let hub = self.hub.clone();
                let span = tracing::info_span!(
                    "session",
                    attempt,
                    controller = route.label().as_deref().unwrap_or(""),
                    borrowed
                );
                let session = self
                    .agent
                    .run_session(
                        route,
                        continuity,
                        &self.state,
                        &departure,
                        |online: Online| {
                            went_online.set(true);
                            mark_online(&hub, &online);
                        },
                    )
                    .instrument(span);
                tokio::pin!(session);
                loop {
                    tokio::select! {
                        result = &mut session => break result,
                        () = self.hub.woken() => {}
                        _ = tick.tick() => {}
                        _ = called_off.changed() => {}
                        () = shutdown.cancelled(), if departure.intent() != Intent::Now => {
                            departure.request(Intent::Now);
                            self.hub.set_phase(Phase::Leaving);
                            continue;
                        }
                    }
                    if decided.is_some() && departure.intent() == Intent::Stay {
                        // The bridge called the move off: work arrived first.
                        decided = None;
                        self.hub.set_phase(Phase::Draining);
                        self.hub.emit(EventKind::MoveDeferred);
                    }
                    if decided.is_none() {
                        decided = decide(
                            &self.hub,
                            self.lease.as_ref(),
                            went_online.get(),
                            &mut self.idle_since,
                            self.offline_since,
                            &self.home_settings,
                            &mut self.lease_expired_at,
                        );
                        if let Some(decision) = &decided {
                            self.hub.set_phase(Phase::Leaving);
                            departure.request(decision.intent);
                        } else if went_online.get() && self.hub.core().pending.is_some() {
                            self.hub.set_phase(Phase::Draining);
                        }
                    }
                }
            };
            let online = went_online.get();
            {
                let mut core = self.hub.core();
                core.engine_pid = None;
                core.controller_url = None;
            }
            if online {
                last_online = Instant::now();
                last_problem = None;
                self.offline_since = Instant::now();
                if started.elapsed() >= STABLE {
                    backoff.reset();
                }
            }
            if shutdown.is_cancelled() {
                return Stopped::Cleanly;
            }
            if let Some(decided) = decided {
                self.apply(decided.to, backoff).await;
                continue;
            }
            match result {
                Ok(end) => {
                    info!(?end, "disconnected");
                    if !borrowed && self.home_settings.no_reconnect {
                        return Stopped::Cleanly;
                    }
                }
                Err(err) if err.is_fatal() && borrowed => {
                    error!(%err, "the borrower refused the agent for good: going home");
                    self.hub.core().last_error = Some(err.to_string());
                    self.apply(Move::Home(ReturnReason::BorrowerGone), backoff)
                        .await;
                    continue;
                }
                Err(err) if err.is_fatal() => {
                    error!(%err, "giving up");
                    return Stopped::Failed(err.into());
                }
                Err(err) => {
                    report(&err, online, &mut last_problem);
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
            // Wait before the next attempt, still serving commands.
            self.hub.set_phase(Phase::BackingOff);
            let delay = backoff.next_delay();
            info!(delay = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)), "reconnecting");
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    () = shutdown.cancelled() => return Stopped::Cleanly,
                    () = self.hub.woken() => {}
                    _ = tick.tick() => {}
                }
                let decided = decide(
                    &self.hub,
                    self.lease.as_ref(),
                    false,
                    &mut self.idle_since,
                    self.offline_since,
                    &self.home_settings,
                    &mut self.lease_expired_at,
                );
                if let Some(decided) = decided {
                    self.apply(decided.to, backoff).await;
                    break;
                }
            }
        }
    }

    /// Carries out a move once the old session is over.
    async fn apply(&mut self, decided: Move, backoff: &mut Backoff) {
        let leaving = self.lease.is_some();
        // The engine that leaves stops its spare too: the next place runs
        // another controller's engine.
        if leaving {
            self.away_continuity.shutdown().await;
        } else {
            self.home_continuity.shutdown().await;
        }
        let left = busy::end_leftovers(&crate::engine::live_engines(), LEFTOVER_GRACE).await;
        if left > 0 {
            warn!(processes = left, "ended processes that builds left running");
        }
        let returned = match &decided {
            Move::Home(reason) => Some(*reason),
            Move::Lend(_) => None,
        };
        match decided {
            Move::Lend(request) => {
                let lease = Lease {
                    request,
                    started_ms: busy::now_ms(),
                };
                match lease
                    .settings(&self.home_settings)
                    .map_err(anyhow::Error::msg)
                    .and_then(Route::new)
                {
                    Ok(route) => {
                        info!(borrower = %lease.label(), node = %lease.request.name, lease = ?lease.request.lease, "lent");
                        self.away = Some(route);
                        self.away_continuity = Continuity::default();
                        self.lease = Some(lease);
                    }
                    Err(err) => {
                        error!("cannot go to the borrower: {err:#}; staying home");
                        self.hub.core().last_error = Some(format!("{err:#}"));
                    }
                }
            }
            Move::Home(reason) => {
                info!(?reason, "returning home");
                self.lease = None;
                self.away = None;
            }
        }
        if let Err(err) = self.state.save(self.lease.as_ref()) {
            error!(%err, path = %self.state.path().display(), "cannot record the agent's place in the state file");
        }
        {
            let mut core = self.hub.core();
            core.lease = self.lease.clone();
            core.pending = None;
            core.idle_deadline_ms = self
                .lease
                .as_ref()
                .and_then(|lease| lease.request.idle_return)
                .map(|idle| busy::now_ms() + idle.as_millis() as u64);
            core.since_ms = busy::now_ms();
        }
        self.lease_expired_at = None;
        self.idle_since = Instant::now();
        self.offline_since = Instant::now();
        backoff.reset();
        if let Some(reason) = returned {
            self.hub.emit(EventKind::ReturnedHome { reason });
        } else {
            self.hub.emit(EventKind::StateChanged);
        }
    }
}

fn mark_online(hub: &Hub, online: &Online) {
    {
        let mut core = hub.core();
        core.engine_pid = Some(online.engine_pid);
        core.controller_url = online.controller_url.clone();
        core.node_name = Some(online.node.clone());
        core.remoting_version = online.remoting_version.clone();
        core.last_error = None;
    }
    hub.set_phase(Phase::Online);
}

/// Whether to move now, from the pending command, the lease and the busy
/// signals.
fn decide(
    hub: &Hub,
    lease: Option<&Lease>,
    online: bool,
    idle_since: &mut Instant,
    offline_since: Instant,
    settings: &Settings,
    lease_expired_at: &mut Option<Instant>,
) -> Option<Decision> {
    let (give_up, grace) = (settings.borrow_give_up, settings.lease_grace);
    busy::reap_orphans_now_and_then(&crate::engine::live_engines());
    let pending = hub.core().pending.clone();
    if pending.is_none() && lease.is_none() {
        // At home with nothing asked: no need to look at /proc.
        return None;
    }
    let busy = hub.busy();
    if busy.busy {
        *idle_since = Instant::now();
    }
    match pending {
        Some((Command::Borrow(request), _)) if request.when == When::Now || !busy.busy => {
            let when = request.when;
            return Some(Decision::when(Move::Lend(request), when));
        }
        Some((Command::Return(when), _))
            if lease.is_some() && (when == When::Now || !busy.busy) =>
        {
            return Some(Decision::when(Move::Home(ReturnReason::Requested), when));
        }
        _ => {}
    }
    let lease = lease?;
    if lease
        .deadline_ms()
        .is_some_and(|deadline| deadline <= busy::now_ms())
    {
        if !busy.busy {
            return Some(Decision::quiet(Move::Home(ReturnReason::LeaseExpired)));
        }
        let expired = *lease_expired_at.get_or_insert_with(Instant::now);
        if expired.elapsed() >= grace {
            warn!(
                grace = %humantime::format_duration(grace),
                "the lease expired and the agent stayed busy through the grace period: leaving anyway"
            );
            return Some(Decision::now(Move::Home(ReturnReason::LeaseExpired)));
        }
    }
    if !online && offline_since.elapsed() >= give_up {
        warn!(
            borrower = %lease.label(),
            after = %humantime::format_duration(give_up),
            "the borrower stayed unreachable: going home"
        );
        return Some(Decision::now(Move::Home(ReturnReason::BorrowerGone)));
    }
    if let Some(idle) = lease.request.idle_return {
        let deadline =
            busy::now_ms() + idle.saturating_sub(idle_since.elapsed()).as_millis() as u64;
        hub.core().idle_deadline_ms = Some(deadline);
        if online && idle_since.elapsed() >= idle {
            return Some(Decision::quiet(Move::Home(ReturnReason::Idle)));
        }
    }
    None
}

/// Logs a failed attempt: a new problem at WARN (ERROR for security ones),
/// the same problem again only at DEBUG, so a long outage does not flood the log.
fn report(err: &SessionError, was_online: bool, last: &mut Option<String>) {
    let text = err.to_string();
    if last.as_deref() == Some(text.as_str()) {
        tracing::debug!(%err, "still failing");
        return;
    }
    if let SessionError::Handshake(HandshakeError::IdentityMismatch(_)) = err {
        error!(%err, "security: refusing to connect");
    } else if was_online {
        warn!(%err, "connection lost");
    } else {
        warn!(%err, "connection attempt failed");
    }
    *last = Some(text);
}

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: closing the channel and stopping"),
            _ = int.recv() => info!("SIGINT: closing the channel and stopping"),
        }
        cancel.cancel();
    });
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let waits: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for (i, w) in waits.iter().enumerate() {
            let base = Duration::from_millis((100u64 << i).min(1000));
            assert!(*w >= base / 2 && *w <= base, "wait {i}: {w:?} vs {base:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
