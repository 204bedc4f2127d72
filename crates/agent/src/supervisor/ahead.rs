//! Work on the place the agent may move to, done beside the live session
//! (make before break): checking a borrower, starting an engine, connecting.

use std::future::Future;
use std::pin::Pin;

use crate::session::{Continuity, Route, SessionError};

/// A place the agent may move to, checked and connected ahead of the move
/// while the agent still serves where it is (make before break).
#[derive(Debug)]
pub(super) struct Candidate {
    pub(super) route: Route,
    pub(super) continuity: Continuity,
    /// Whether it is home (its engine goes back to home's continuity).
    pub(super) home: bool,
}

/// Work on a [`Candidate`] that runs beside the live session and hands the
/// candidate back with its result.
pub(super) type Ahead<'a, T> =
    Pin<Box<dyn Future<Output = (Candidate, Result<T, SessionError>)> + 'a>>;

/// Polls an optional [`Ahead`] and empties it once done; pending forever
/// when there is none.
pub(super) async fn ahead<T>(
    work: &mut Option<Ahead<'_, T>>,
) -> (Candidate, Result<T, SessionError>) {
    let done = match work {
        Some(work) => work.await,
        None => std::future::pending().await,
    };
    *work = None;
    done
}
