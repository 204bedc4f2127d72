//! Which lender the link tries next, with several `--lender` URLs (an
//! active lender and its standbys): a pure rotation, without sockets or
//! timers.
//!
//! ```text
//!   try 0 ──passed over──▶ try 1 ──passed over──▶ … try n-1
//!     ▲                      │                        │ passed over
//!     │                      │ welcomed, then drops   ▼
//!     └────── wait (backoff) ◀────────────────────────┘
//! ```
//!
//! A lender is passed over when it cannot be reached, refuses the link
//! (a standby answers 503) or closes it before its `welcome`; the next one
//! is tried at once. Only a whole round that failed, or a link that was up
//! and dropped, waits the backoff, and the next round starts again from the
//! first URL: the order given is the order of preference.

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Try the lender at this index now.
    Try(usize),
    /// Wait the backoff, then start a round at the first lender.
    Wait,
}

/// The position in the list of lenders.
#[derive(Debug, Clone)]
pub(super) struct Rotation {
    count: usize,
    current: usize,
}

impl Rotation {
    /// A rotation over `count` lenders (at least one), starting at the first.
    pub(super) fn new(count: usize) -> Self {
        Self {
            count: count.max(1),
            current: 0,
        }
    }

    /// The index of the lender to try now.
    pub(super) fn current(&self) -> usize {
        self.current
    }

    /// The current lender was passed over (unreachable, refused, or closed
    /// before its welcome): the next one in this round, or wait when it was
    /// the last.
    pub(super) fn passed_over(&mut self) -> Next {
        if self.current + 1 < self.count {
            self.current += 1;
            Next::Try(self.current)
        } else {
            self.current = 0;
            Next::Wait
        }
    }

    /// A link the current lender had welcomed dropped: wait, then start
    /// again from the first.
    pub(super) fn dropped(&mut self) -> Next {
        self.current = 0;
        Next::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_passes_over_each_lender_in_order_then_waits_and_starts_again() {
        let mut r = Rotation::new(3);
        assert_eq!(r.current(), 0);
        assert_eq!(r.passed_over(), Next::Try(1));
        assert_eq!(r.current(), 1);
        assert_eq!(r.passed_over(), Next::Try(2));
        assert_eq!(r.passed_over(), Next::Wait, "one wait per round");
        assert_eq!(r.current(), 0, "the next round starts at the first");
        assert_eq!(r.passed_over(), Next::Try(1));
    }

    #[test]
    fn a_dropped_link_starts_again_from_the_first_after_a_wait() {
        let mut r = Rotation::new(3);
        assert_eq!(r.passed_over(), Next::Try(1));
        // Linked to the second, which then went away.
        assert_eq!(r.dropped(), Next::Wait);
        assert_eq!(r.current(), 0);
    }

    #[test]
    fn one_lender_waits_after_every_attempt_as_before() {
        let mut r = Rotation::new(1);
        assert_eq!(r.passed_over(), Next::Wait);
        assert_eq!(r.current(), 0);
        assert_eq!(r.dropped(), Next::Wait);
        assert_eq!(Rotation::new(0).passed_over(), Next::Wait);
    }
}
