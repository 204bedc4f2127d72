//! The supervisor's wish to end the live channel, and the bridge's answer.
//!
//! The supervisor asks ([`Departure::request`]); the bridge carries it out
//! at the engine's next command boundary by closing the channel at the
//! remoting level. A leave that waits for quiet ([`Intent::WhenQuiet`]) is
//! given up by the bridge ([`Departure::give_up`]) when a controller
//! request arrives before the close went out: a build that starts while a
//! move is being decided is served, and the supervisor decides again once
//! the agent is idle.
//!
//! The bridge also reports the controller's first call on the channel and
//! the engine's answer to it ([`Departure::controller_sent`],
//! [`Departure::engine_sent`]): a controller shows a node online only once
//! its first calls are answered, so that, not the handshake, is when a move
//! is done.

use std::time::Instant;

use tokio::sync::watch;

/// What should become of the live channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Intent {
    /// Keep it.
    Stay,
    /// Leave, unless a controller request arrives before our close goes out.
    WhenQuiet,
    /// Leave whatever arrives (a signal, `now`, a lease past its grace).
    Now,
}

/// Where the channel's first exchange is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstCall {
    /// Nothing from the controller yet.
    Waiting,
    /// The controller sent something; the engine has not answered since.
    Called,
    /// The engine wrote to the controller after that, at this time.
    Answered(Instant),
}

/// Shared by the supervisor and one session's bridge.
#[derive(Debug)]
pub struct Departure {
    intent: watch::Sender<Intent>,
    first_call: watch::Sender<FirstCall>,
}

impl Default for Departure {
    fn default() -> Self {
        Self::new()
    }
}

impl Departure {
    /// Nothing asked yet.
    pub fn new() -> Self {
        Self {
            intent: watch::Sender::new(Intent::Stay),
            first_call: watch::Sender::new(FirstCall::Waiting),
        }
    }

    /// The bridge passed bytes from the controller to the engine.
    pub fn controller_sent(&self) {
        if *self.first_call.borrow() != FirstCall::Waiting {
            return;
        }
        self.first_call.send_if_modified(|state| {
            let first = *state == FirstCall::Waiting;
            if first {
                *state = FirstCall::Called;
            }
            first
        });
    }

    /// The bridge passed bytes from the engine to the controller: after the
    /// controller's first call, that is the answer.
    pub fn engine_sent(&self) {
        if *self.first_call.borrow() != FirstCall::Called {
            return;
        }
        self.first_call.send_if_modified(|state| {
            let answer = *state == FirstCall::Called;
            if answer {
                *state = FirstCall::Answered(Instant::now());
            }
            answer
        });
    }

    /// Returns when the engine answered the controller's first call (at
    /// once if it already did), with the time of the answer.
    pub async fn first_call_answered(&self) -> Instant {
        let mut rx = self.first_call.subscribe();
        loop {
            if let FirstCall::Answered(at) = *rx.borrow_and_update() {
                return at;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`: cannot happen while we borrow it.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Asks to leave; a stronger wish is never weakened (a signal during a
    /// leave that waits for quiet makes it leave now).
    pub fn request(&self, intent: Intent) {
        self.intent.send_if_modified(|current| {
            let stronger = intent > *current;
            if stronger {
                *current = intent;
            }
            stronger
        });
    }

    /// The current wish.
    pub fn intent(&self) -> Intent {
        *self.intent.borrow()
    }

    /// A controller request arrived before the close went out: a leave that
    /// waits for quiet is called off (true); one that must happen is not.
    pub fn give_up(&self) -> bool {
        self.intent.send_if_modified(|current| {
            let call_off = *current == Intent::WhenQuiet;
            if call_off {
                *current = Intent::Stay;
            }
            call_off
        })
    }

    /// Returns once a leave is asked (at once if it already is).
    pub async fn requested(&self) -> Intent {
        let mut rx = self.intent.subscribe();
        let intent = match rx.wait_for(|intent| *intent != Intent::Stay).await {
            Ok(intent) => *intent,
            // The sender lives in `self`: cannot happen while we borrow it.
            Err(_) => Intent::Now,
        };
        intent
    }

    /// A receiver that sees every change, for the supervisor to notice a
    /// leave that was called off.
    pub fn watch(&self) -> watch::Receiver<Intent> {
        self.intent.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stronger_wish_wins_and_only_a_quiet_leave_is_called_off() {
        let d = Departure::new();
        assert!(!d.give_up(), "nothing to call off");
        d.request(Intent::WhenQuiet);
        assert!(d.give_up());
        assert_eq!(d.intent(), Intent::Stay);
        d.request(Intent::Now);
        d.request(Intent::WhenQuiet);
        assert_eq!(d.intent(), Intent::Now, "never weakened");
        assert!(!d.give_up(), "a forced leave happens anyway");
        assert_eq!(d.intent(), Intent::Now);
    }

    #[tokio::test]
    async fn the_first_call_is_answered_by_engine_output_after_it_only() {
        let d = std::sync::Arc::new(Departure::new());
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.first_call_answered().await }
        });
        // The engine's own output before any call is no answer.
        d.engine_sent();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let called = Instant::now();
        d.controller_sent();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "called, not answered");
        d.engine_sent();
        let at = waiter.await.ok();
        assert!(at.is_some_and(|at| at >= called), "{at:?}");
        // Later traffic does not move the time of the first answer.
        d.controller_sent();
        d.engine_sent();
        assert_eq!(Some(d.first_call_answered().await), at);
    }

    #[tokio::test]
    async fn requested_waits_for_a_wish() {
        let d = std::sync::Arc::new(Departure::new());
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.requested().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        d.request(Intent::WhenQuiet);
        assert_eq!(waiter.await.ok(), Some(Intent::WhenQuiet));
    }
}
