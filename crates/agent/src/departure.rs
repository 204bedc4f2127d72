//! The supervisor's wish to end the live channel, and the bridge's answer.
//!
//! The supervisor asks ([`Departure::request`]); the bridge carries it out
//! at the engine's next command boundary by closing the channel at the
//! remoting level. A leave that waits for quiet ([`Intent::WhenQuiet`]) is
//! given up by the bridge ([`Departure::give_up`]) when a controller
//! request arrives before the close went out: a build that starts while a
//! move is being decided is served, and the supervisor decides again once
//! the agent is idle.

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

/// Shared by the supervisor and one session's bridge.
#[derive(Debug)]
pub struct Departure {
    intent: watch::Sender<Intent>,
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
