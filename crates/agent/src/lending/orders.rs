//! Order handling for every peer that can move the agent (the control
//! socket, the lender link): the [`Handler`] they drive, and carrying out a
//! `borrow` or `return`, with `wait` answered once the move is done as the
//! controller sees it.

use std::time::Duration;

use control::{BorrowRequest, Event, EventKind, Phase, Placement, Reply, Response, Status, When};
use tokio::sync::broadcast;
use tracing::info;

/// The answer to an order: what will happen, or why it is refused.
pub type Answer<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + 'a>>;

/// What the control socket and the lender link drive: implemented by the
/// hub, which passes orders to the supervisor. `borrow` and `give_back`
/// only queue the order and say what will happen ("accepted; will leave
/// when idle"), or refuse; the move itself follows.
pub trait Handler: Send + Sync + 'static {
    /// The agent's current state.
    fn status(&self) -> Status;
    /// Waits (briefly) until [`Handler::status`] can report what is
    /// counted in the background (build processes) as of now.
    fn settle(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }
    /// Queue a borrow. `request.secret` is always set (the server reads a
    /// `secret_file` itself) and the request is already validated.
    fn borrow(&self, request: BorrowRequest) -> Answer<'_>;
    /// Queue a return home.
    fn give_back(&self, when: When) -> Answer<'_>;
    /// A new receiver of events from now on.
    fn subscribe(&self) -> broadcast::Receiver<Event>;
    /// Wakes its holder when the status may have changed without an event
    /// (an order queued, a deadline moved); `None` when nothing tells.
    fn status_changes(&self) -> Option<Box<dyn StatusChanges>> {
        None
    }
}

/// Tells that the status may have changed since the last call.
pub trait StatusChanges: Send {
    /// Returns at the next change; never once nothing can change any more.
    fn changed(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

/// Waits for the next change, forever when there is nothing to tell.
pub async fn status_changed(changes: &mut Option<Box<dyn StatusChanges>>) {
    match changes {
        Some(changes) => changes.changed().await,
        None => std::future::pending().await,
    }
}

/// Where the agent is, for a reply: the controller's URL, else home or
/// borrowed.
pub fn describe_place(status: &Status) -> String {
    match (&status.controller_url, status.placement) {
        (Some(url), _) => url.clone(),
        (None, Placement::Home) => "home".into(),
        (None, Placement::Borrowed) => "the borrower".into(),
    }
}

/// Carries out a `borrow` whose secret is already read, for any peer (the
/// control socket, the lender link): queued with `handler`, and with `wait`
/// answered once the agent is online at the borrower, the borrow failed or
/// `wait` passed. `from_a_build` (a build on this agent asking to leave when
/// idle) gets the reply once the borrower was checked instead, since the
/// move waits for that very build.
pub async fn carry_out_borrow(
    handler: &dyn Handler,
    borrow: BorrowRequest,
    from_a_build: bool,
) -> Reply {
    info!(
        controller = borrow.target.describe(),
        node = %borrow.name,
        lease = ?borrow.lease,
        idle_return = ?borrow.idle_return,
        when = ?borrow.when,
        wait = ?borrow.wait,
        "borrow requested"
    );
    let wait = borrow.wait;
    // Subscribed before the order, so its outcome cannot be missed.
    let events = wait.map(|_| handler.subscribe());
    let result = handler.borrow(borrow).await;
    if let (Ok(_), Some(limit), Some(events)) = (&result, wait, events) {
        return if from_a_build {
            checked(events, limit).await
        } else {
            outcome(handler, events, limit, Placement::Borrowed).await
        };
    }
    accepted(result)
}

/// Carries out a `return` for any peer: queued with `handler`, and with
/// `wait` answered once the agent is online at home or `wait` passed.
pub async fn carry_out_return(handler: &dyn Handler, when: When, wait: Option<Duration>) -> Reply {
    info!(?when, ?wait, "return requested");
    let events = wait.map(|_| handler.subscribe());
    let result = handler.give_back(when).await;
    if let (Ok(_), Some(limit), Some(events)) = (&result, wait, events) {
        return outcome(handler, events, limit, Placement::Home).await;
    }
    accepted(result)
}

/// The reply to an order that was queued (or refused).
fn accepted(result: Result<String, String>) -> Reply {
    match result {
        Ok(message) => Reply::Ok(Response::Accepted { message }),
        Err(message) => {
            info!(%message, "request refused");
            Reply::Error(message)
        }
    }
}

/// For a `wait`ing borrow from a build on this agent: the reply once the
/// borrower is checked or the borrow failed.
async fn checked(mut events: broadcast::Receiver<Event>, limit: Duration) -> Reply {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(Event {
                    kind: EventKind::BorrowChecked,
                    ..
                }) => {
                    return Reply::Ok(Response::Accepted {
                        message: "the borrower is reachable and its engine is ready; \
                                  the agent moves there once this build and any other \
                                  work have ended"
                            .into(),
                    })
                }
                Ok(Event {
                    kind: EventKind::BorrowFailed { phase, reason },
                    ..
                }) => {
                    return Reply::error(format!(
                        "the borrow failed ({phase}): {reason}; the agent stays where it was"
                    ))
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    return Reply::error("the agent stopped before the borrower was checked")
                }
            }
        }
    };
    tokio::time::timeout(limit, wait).await.unwrap_or_else(|_| {
        Reply::error(format!(
            "the borrower was not checked within {}",
            humantime::format_duration(limit)
        ))
    })
}

/// For an order with `wait`: the reply once the agent is online at `place`
/// after a move, or the borrow failed, or `limit` passed.
async fn outcome(
    handler: &dyn Handler,
    mut events: broadcast::Receiver<Event>,
    limit: Duration,
    place: Placement,
) -> Reply {
    let arrived = |status: &Status| {
        status.placement == place
            && status.phase == Phase::Online
            && !status.awaiting_first_call
            && status.pending.is_none()
    };
    let now = handler.status();
    if arrived(&now) {
        return Reply::Ok(Response::Accepted {
            message: format!("already there: online at {}", describe_place(&now)),
        });
    }
    let wait = async {
        loop {
            match events.recv().await {
                Ok(Event {
                    kind: EventKind::Moved { ms, .. },
                    status,
                    ..
                }) if status.placement == place => {
                    return Reply::Ok(Response::Accepted {
                        message: format!(
                            "online at {} ({ms} ms after the move began)",
                            describe_place(&status)
                        ),
                    })
                }
                Ok(Event {
                    kind: EventKind::BorrowFailed { phase, reason },
                    ..
                }) if place == Placement::Borrowed => {
                    return Reply::error(format!(
                        "the borrow failed ({phase}): {reason}; the agent stays where it was"
                    ))
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    return Reply::error("the agent stopped before the move was done")
                }
            }
        }
    };
    match tokio::time::timeout(limit, wait).await {
        Ok(reply) => reply,
        Err(_) => {
            let now = handler.status();
            Reply::error(format!(
                "not done within {}: the agent is {:?} at {}{}",
                humantime::format_duration(limit),
                now.phase,
                describe_place(&now),
                now.last_error
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            ))
        }
    }
}
