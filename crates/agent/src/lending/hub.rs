//! What the supervisor shares with the control socket and the lender link:
//! the state shown by `status` (a `watch` the supervisor alone writes), the
//! event stream, and the channel that carries orders to the supervisor.
//!
//! The handler only validates and passes orders on; the supervisor accepts
//! or refuses them by the move rules and answers at once, and carries the
//! move out when the agent is idle (or at once with `now`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use control::{
    BorrowRequest, Busy, Event, EventKind, Pending, PendingAction, Phase, Placement, Status,
    WarmEngine, When,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::engine::bridge::Traffic;
use crate::engine::busy;
use crate::engine::census::{Census, Count};
use crate::lending::moves::{Command, Orders, Quietness};
use crate::lending::orders::Answer;
use crate::lending::{target_label, Lease};

/// A `borrow` or `return` for the supervisor, with where its answer goes.
#[derive(Debug)]
pub struct Order {
    /// The order.
    pub command: Command,
    /// What will happen, or why it is refused.
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// Orders waiting for the supervisor at most; more wait to be queued.
const ORDER_QUEUE: usize = 64;

/// The supervisor's state as the control socket shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Core {
    /// The lease in force, if borrowed.
    pub lease: Option<Lease>,
    /// Connection phase.
    pub phase: Phase,
    /// When the phase (or placement) last changed, unix ms.
    pub since_ms: u64,
    /// The connected controller's URL.
    pub controller_url: Option<String>,
    /// The node name in use.
    pub node_name: Option<String>,
    /// The home controller's URL.
    pub home_url: Option<String>,
    /// The orders accepted and not carried out yet, as the supervisor (who
    /// owns them) last published them.
    pub orders: Orders,
    /// The engine of the live session.
    pub engine_pid: Option<u32>,
    /// The last error.
    pub last_error: Option<String>,
    /// When `idle_return` runs out, unix ms.
    pub idle_deadline_ms: Option<u64>,
    /// The connected engine's remoting version.
    pub remoting_version: Option<String>,
    /// The engine's send window, when the agent sized it.
    pub engine_window: Option<control::EngineWindow>,
    /// How the live (or last) connection reaches its controller.
    pub transport: Option<control::Transport>,
    /// That is a WebSocket because the TCP agent port was disabled.
    pub transport_fallback: bool,
    /// Online after a move, the controller's first call not answered yet.
    pub awaiting_first_call: bool,
    /// The engine started ahead of a move: pid and the controller it is for.
    pub warm_engine: Option<(u32, Option<String>)>,
}

/// A change to the [`Core`], published when dropped.
#[derive(Debug)]
pub struct CoreMut<'a> {
    sender: &'a watch::Sender<Core>,
    core: Core,
}

impl std::ops::Deref for CoreMut<'_> {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl std::ops::DerefMut for CoreMut<'_> {
    fn deref_mut(&mut self) -> &mut Core {
        &mut self.core
    }
}

impl Drop for CoreMut<'_> {
    fn drop(&mut self) {
        // Only a real change wakes the watchers (the lender link sends a
        // status for each).
        let core = std::mem::take(&mut self.core);
        self.sender.send_if_modified(|old| {
            let modified = *old != core;
            *old = core;
            modified
        });
    }
}

/// Shared between the supervisor and the control socket.
#[derive(Debug)]
pub struct Hub {
    /// Written by the supervisor alone, read by `status` and events.
    core: watch::Sender<Core>,
    traffic: Arc<Traffic>,
    events: broadcast::Sender<Event>,
    /// Orders for the supervisor.
    orders: mpsc::Sender<Order>,
    /// Their receiving end, until the supervisor takes it.
    inbox: Mutex<Option<mpsc::Receiver<Order>>>,
    /// Traffic this recent counts as busy.
    activity_window: Duration,
    /// The current throughput, from the byte counters.
    rates: Mutex<RateMeter>,
    /// Build processes, counted off the runtime's thread.
    census: Census,
}

/// Throughput over the last whole window of at least [`RATE_WINDOW`]:
/// sampled on the supervisor's tick, so `status` costs nothing extra.
#[derive(Debug, Default)]
struct RateMeter {
    /// When the window began, and both byte counters then.
    start: Option<(std::time::Instant, u64, u64)>,
    /// Bytes per second to the controller over the last window.
    to_controller: u64,
    /// Bytes per second from the controller over the last window.
    from_controller: u64,
}

/// How long a `status` request waits at most for a fresh count of build
/// processes (one is taken within about 200 ms of the first request).
const SETTLE_LIMIT: Duration = Duration::from_secs(1);

/// How long a throughput window lasts.
const RATE_WINDOW: Duration = Duration::from_secs(1);

impl Hub {
    /// A hub for an agent whose home is `home_url`.
    pub fn new(
        traffic: Arc<Traffic>,
        home_url: Option<String>,
        activity_window: Duration,
    ) -> Arc<Self> {
        let (events, _) = broadcast::channel(256);
        let (orders, inbox) = mpsc::channel(ORDER_QUEUE);
        let hub = Self {
            core: watch::Sender::new(Core {
                home_url,
                since_ms: busy::now_ms(),
                ..Core::default()
            }),
            traffic,
            events,
            orders,
            inbox: Mutex::new(Some(inbox)),
            activity_window,
            rates: Mutex::new(RateMeter::default()),
            census: Census::new(),
        };
        Arc::new(hub)
    }

    /// Closes the throughput window once it is [`RATE_WINDOW`] old (called
    /// on every supervisor tick).
    pub fn sample_rates(&self) {
        self.sample_rates_at(std::time::Instant::now());
    }

    fn sample_rates_at(&self, now: std::time::Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        let to = self.traffic.to_controller.load(Relaxed);
        let from = self.traffic.to_engine.load(Relaxed);
        let mut meter = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        match meter.start {
            Some((start, to_before, from_before)) => {
                let elapsed = now.duration_since(start);
                if elapsed < RATE_WINDOW {
                    return;
                }
                let per_second = |delta: u64| (delta as f64 / elapsed.as_secs_f64()) as u64;
                meter.to_controller = per_second(to.saturating_sub(to_before));
                meter.from_controller = per_second(from.saturating_sub(from_before));
                meter.start = Some((now, to, from));
            }
            None => meter.start = Some((now, to, from)),
        }
    }

    /// Passes an order to the supervisor, which owns the orders, and
    /// returns its answer.
    async fn order(&self, command: Command) -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        let stopped = || "the agent is stopping".to_owned();
        self.orders
            .send(Order { command, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// The orders for the supervisor; `None` after the first call.
    pub fn take_orders(&self) -> Option<mpsc::Receiver<Order>> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The state, for the supervisor to change: the change is published to
    /// every [`Hub::watch`]er when the returned handle is dropped.
    pub fn core(&self) -> CoreMut<'_> {
        CoreMut {
            sender: &self.core,
            core: self.core.borrow().clone(),
        }
    }

    /// The busy signals now, with the latest count of build processes
    /// (see [`Hub::settle`](crate::lending::orders::Handler::settle)
    /// for a fresh one).
    pub fn busy(&self) -> Busy {
        self.busy_counted().0
    }

    /// Whether the agent may leave now: work here, quiet, or not known until
    /// a fresh count of build processes arrives. A move is decided only on
    /// `Quiet`, so it waits a moment for the count rather than trusting an
    /// old one.
    pub fn quiet_to_move(&self) -> Quietness {
        match self.busy_counted() {
            (busy, _) if busy.busy => Quietness::Busy,
            (_, false) => Quietness::Unknown,
            (_, true) => Quietness::Quiet,
        }
    }

    fn busy_counted(&self) -> (Busy, bool) {
        let activity = &self.traffic.activity;
        let requests_in_flight = activity.requests_in_flight();
        let (build_processes, counted) = match self.census.builds() {
            Count::Fresh(builds) => (builds, true),
            Count::Stale(builds) => (builds, false),
        };
        let last_activity_ms = activity.last_activity_ms();
        let recent = last_activity_ms.is_some_and(|t| {
            busy::now_ms().saturating_sub(t) < control::duration_ms(self.activity_window)
        });
        let busy = Busy {
            requests_in_flight,
            build_processes,
            last_activity_ms,
            busy: requests_in_flight > 0 || build_processes > 0 || recent,
        };
        (busy, counted)
    }

    /// Changes the phase (and records when).
    pub fn set_phase(&self, phase: Phase) {
        let changed = {
            let mut core = self.core();
            let changed = core.phase != phase;
            if changed {
                core.phase = phase;
                core.since_ms = busy::now_ms();
            }
            changed
        };
        if changed {
            self.emit(EventKind::StateChanged);
        }
    }

    /// Sends an event with the current status to every `events` subscriber.
    pub fn emit(&self, kind: EventKind) {
        let _ = self.events.send(Event {
            at_ms: busy::now_ms(),
            kind,
            status: self.snapshot(),
        });
    }

    /// The status as `status` answers it.
    pub fn snapshot(&self) -> Status {
        let busy = self.busy();
        let rates = {
            let meter = self.rates.lock().unwrap_or_else(|e| e.into_inner());
            (meter.to_controller, meter.from_controller)
        };
        let rates = RateMeter {
            start: None,
            to_controller: rates.0,
            from_controller: rates.1,
        };
        let core = self.core.borrow().clone();
        Status {
            placement: if core.lease.is_some() {
                Placement::Borrowed
            } else {
                Placement::Home
            },
            phase: core.phase,
            controller_url: core.controller_url,
            node_name: core.node_name,
            since_ms: core.since_ms,
            lease_deadline_ms: core.lease.as_ref().and_then(Lease::deadline_ms),
            idle_deadline_ms: core.idle_deadline_ms,
            queued: core
                .orders
                .next_borrow
                .as_ref()
                .map(|(request, since_ms)| Pending {
                    action: PendingAction::Borrow,
                    controller_url: Some(target_label(&request.target)),
                    since_ms: *since_ms,
                }),
            pending: core
                .orders
                .pending
                .as_ref()
                .map(|(command, since_ms)| Pending {
                    action: match command {
                        Command::Borrow(_) => PendingAction::Borrow,
                        Command::Return(_) => PendingAction::Return,
                    },
                    controller_url: match command {
                        Command::Borrow(request) => Some(target_label(&request.target)),
                        Command::Return(_) => core.home_url.clone(),
                    },
                    since_ms: *since_ms,
                }),
            busy,
            engine_pid: core.engine_pid,
            remoting_version: core.remoting_version,
            engine_window: core.engine_window,
            bytes_to_controller: self
                .traffic
                .to_controller
                .load(std::sync::atomic::Ordering::Relaxed),
            bytes_from_controller: self
                .traffic
                .to_engine
                .load(std::sync::atomic::Ordering::Relaxed),
            commands_to_controller: self
                .traffic
                .commands_from_engine
                .load(std::sync::atomic::Ordering::Relaxed),
            commands_from_controller: self
                .traffic
                .commands_from_controller
                .load(std::sync::atomic::Ordering::Relaxed),
            bytes_per_second_to_controller: rates.to_controller,
            bytes_per_second_from_controller: rates.from_controller,
            last_error: core.last_error,
            home_url: core.home_url,
            transport: core.transport,
            transport_fallback: core.transport_fallback,
            warm_engine: core.warm_engine.map(|(pid, controller_url)| WarmEngine {
                pid,
                controller_url,
                rss_kib: crate::engine::builds::rss_kib(pid),
            }),
            awaiting_first_call: core.awaiting_first_call,
        }
    }
}

impl crate::lending::orders::Handler for Hub {
    fn status(&self) -> Status {
        self.snapshot()
    }

    fn settle(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
            while matches!(self.census.builds(), Count::Stale(_))
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    }

    fn borrow(&self, request: BorrowRequest) -> Answer<'_> {
        Box::pin(async move {
            request.validate()?;
            if request.secret.is_none() {
                return Err("borrow: no secret".into());
            }
            self.order(Command::Borrow(request)).await
        })
    }

    fn give_back(&self, when: When) -> Answer<'_> {
        Box::pin(self.order(Command::Return(when)))
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn status_changes(&self) -> Option<Box<dyn crate::lending::orders::StatusChanges>> {
        Some(Box::new(CoreChanges(self.core.subscribe())))
    }
}

/// The [`Core`]'s changes, for the lender link.
struct CoreChanges(watch::Receiver<Core>);

impl crate::lending::orders::StatusChanges for CoreChanges {
    fn changed(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if self.0.changed().await.is_err() {
                // The hub is gone: the agent is stopping.
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Instant;

    use super::*;

    /// No count yet is not work: a move connected under load waits for the
    /// count instead of being put off (and flapping the target's node).
    #[tokio::test]
    async fn no_count_yet_is_unknown_not_busy() {
        use crate::lending::orders::Handler as _;
        let hub = Hub::new(Arc::new(Traffic::default()), None, Duration::from_secs(5));
        assert_eq!(hub.quiet_to_move(), Quietness::Unknown);
        hub.settle().await;
        let counted = if hub.busy().build_processes > 0 {
            Quietness::Busy
        } else {
            Quietness::Quiet
        };
        assert_eq!(hub.quiet_to_move(), counted);
        hub.traffic
            .activity
            .seen_from_controller(Some("hudson.remoting.UserRequest"), b"");
        assert_eq!(hub.quiet_to_move(), Quietness::Busy);
    }

    /// The lender link hears of a change that no event announced (an
    /// order queued), and not of a write that changed nothing.
    #[tokio::test]
    async fn status_changes_wake_on_a_real_change_only() {
        use crate::lending::orders::Handler as _;
        let hub = Hub::new(Arc::new(Traffic::default()), None, Duration::from_secs(5));
        let mut changes = hub.status_changes().expect("the hub tells its changes");
        let quick = Duration::from_millis(50);
        drop(hub.core());
        assert!(
            tokio::time::timeout(quick, changes.changed())
                .await
                .is_err(),
            "nothing changed"
        );
        hub.core().orders.moving = true;
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("a change to the orders wakes the link");
    }

    #[tokio::test]
    async fn a_move_waits_for_a_fresh_count_of_build_processes() {
        use crate::lending::orders::Handler as _;
        let hub = Hub::new(Arc::new(Traffic::default()), None, Duration::from_secs(5));
        // Nobody asked before: no count yet, so not idle enough to move.
        assert_ne!(hub.quiet_to_move(), Quietness::Quiet);
        // A status request waits for the count.
        hub.settle().await;
        assert!(matches!(hub.census.builds(), Count::Fresh(_)));
        // Shown as counted (other tests' processes may be counted here).
        let shown = hub.busy();
        assert_eq!(shown.busy, shown.build_processes > 0, "{shown:?}");
    }

    #[test]
    fn throughput_is_measured_over_whole_windows() {
        let traffic = Arc::new(Traffic::default());
        let hub = Hub::new(traffic.clone(), None, Duration::from_secs(5));
        let t0 = Instant::now();
        hub.sample_rates_at(t0);
        traffic.to_controller.store(3 << 20, Relaxed);
        traffic.to_engine.store(1 << 20, Relaxed);
        traffic.commands_from_engine.store(7, Relaxed);
        // Half a window: nothing reported yet.
        hub.sample_rates_at(t0 + Duration::from_millis(500));
        assert_eq!(hub.snapshot().bytes_per_second_to_controller, 0);
        hub.sample_rates_at(t0 + Duration::from_secs(2));
        let status = hub.snapshot();
        assert_eq!(status.bytes_per_second_to_controller, 3 << 19);
        assert_eq!(status.bytes_per_second_from_controller, 1 << 19);
        assert_eq!(status.commands_to_controller, 7);
        assert_eq!(status.bytes_to_controller, 3 << 20);
        // An idle window brings the rate back to zero.
        hub.sample_rates_at(t0 + Duration::from_secs(3));
        assert_eq!(hub.snapshot().bytes_per_second_to_controller, 0);
    }
}
