//! Waits between attempts to connect (the controller's channel and the
//! lender link alike).

use std::time::Duration;

use rand::Rng as _;

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
        // Saturating: a `--reconnect-max-delay` near `Duration::MAX` must
        // not overflow the doubling.
        self.next = self.next.saturating_mul(2).min(self.max);
        base.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// Back to the initial wait.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_backoff_saturates_instead_of_overflowing() {
        let mut b = Backoff::new(Duration::MAX / 2 + Duration::from_secs(1), Duration::MAX);
        for _ in 0..3 {
            assert!(b.next_delay() <= Duration::MAX);
        }
    }

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
