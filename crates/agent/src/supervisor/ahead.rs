//! Work on the place the agent may move to, done beside the live session
//! (make before break): checking a borrower, starting an engine, connecting.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use crate::session::{Continuity, Prepared, Route, SessionError};

/// A target connected for a move when quiet, waiting for a fresh count of
/// build processes to tell whether this place is quiet (at most
/// [`SETTLE_LIMIT`]: under load the census can lag the connection).
pub(super) struct Settling {
    pub(super) candidate: Candidate,
    pub(super) prepared: Prepared,
    pub(super) until: Instant,
}

/// How long a connected target waits for a fresh count before the move is
/// put off as if work had started.
pub(super) const SETTLE_LIMIT: Duration = Duration::from_secs(1);

/// A place the agent may move to, checked and connected ahead of the move
/// while the agent still serves where it is (make before break).
#[derive(Debug)]
pub(super) struct Candidate {
    pub(super) route: Route,
    pub(super) continuity: Continuity,
}

/// Work on a [`Candidate`] that runs beside the live session and hands the
/// candidate back with its result.
pub(super) type Ahead<'a, T> =
    Pin<Box<dyn Future<Output = (Candidate, Result<T, SessionError>)> + 'a>>;

/// Polls an optional [`Ahead`]; pending forever when there is none.
pub(super) async fn ahead<T>(
    work: &mut Option<Ahead<'_, T>>,
) -> (Candidate, Result<T, SessionError>) {
    match work {
        Some(work) => work.await,
        None => std::future::pending().await,
    }
}
