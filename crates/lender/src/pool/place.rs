//! Where an agent is: what agents report and what a lease that ended with
//! its agent gone remembers. Apart from both, which use it.

/// Where an agent is. The agent is the authority on this; the pool keeps
/// the last report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// At its home (lender) controller.
    Home,
    /// At a borrowing controller.
    Borrowed {
        /// The borrower's URL.
        url: String,
    },
}
