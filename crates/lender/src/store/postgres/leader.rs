//! Who is the active lender among those on one database: the one holding
//! a session-level advisory lock on a connection of its own. Taking the
//! lock bumps `lender_leader.epoch`; the new leader's store writes only
//! while the epoch is still its own ([`super::PgStore::fenced`]).
//!
//! The lock goes with its session: a lender killed, or cut off from the
//! database, loses it when PostgreSQL sees the connection close (at once
//! for a killed process; after the session's TCP keepalive, about 6 s, for
//! a vanished host), and a standby's next [`Leadership::try_acquire`]
//! takes it. A paused lender keeps its session (its kernel still answers
//! keepalives): then the epoch keeps it from writing once it wakes after a
//! takeover, and it steps down at its next check.

use std::sync::Arc;

use super::connect::PgTarget;
use super::worker::{Conn, Gone};
use super::{at, schema, Fault};
use crate::store::StoreError;

/// The lock's connection, and what was won on it.
#[derive(Debug)]
pub struct Leadership {
    conn: Conn,
    target: Arc<PgTarget>,
    /// The epoch and the session (backend pid) that hold the lock.
    held: Option<(i64, i32)>,
}

/// Why the leader is no longer one.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    /// The lock's connection failed or was replaced: the lock went with it.
    #[error("lost the leadership lock's connection: {0}")]
    Connection(StoreError),
    /// Another lender took over (bumped the epoch).
    #[error("another lender took over (epoch {current}, ours {mine})")]
    TakenOver {
        /// Ours.
        mine: i64,
        /// The database's.
        current: i64,
    },
}

impl Leadership {
    /// Connects the lock's own connection.
    pub fn connect(target: &PgTarget) -> Result<Self, StoreError> {
        let target = Arc::new(target.clone());
        let conn = Conn::open(target.clone(), true)
            .map_err(|err| at(target.location(), Fault::Pg(err)))?;
        Ok(Leadership {
            conn,
            target,
            held: None,
        })
    }

    /// Takes the lock if no one holds it: the new epoch, or `None` (another
    /// lender is active).
    pub fn try_acquire(&mut self, holder: &str, now_ms: u64) -> Result<Option<i64>, StoreError> {
        if let Some((epoch, _)) = self.held {
            return Ok(Some(epoch));
        }
        let holder = holder.to_owned();
        let won = self.call(move |w| {
            let client = w.client()?;
            // The server's side of the lock's connection: a leader whose
            // host vanishes (no FIN, no RST) loses the lock in about
            // 3 + 3 × 1 s, not the system's default of hours.
            client.batch_execute(
                "SET tcp_keepalives_idle = 3; SET tcp_keepalives_interval = 1; \
                 SET tcp_keepalives_count = 3",
            )?;
            let got: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&schema::LEADER_LOCK])?
                .get(0);
            if !got {
                return Ok(None);
            }
            let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
            let row = client.query_one(
                "UPDATE lender_leader SET epoch = epoch + 1, holder = $1, since_ms = $2 \
                 WHERE id = 1 RETURNING epoch, pg_backend_pid()",
                &[&holder, &now],
            )?;
            Ok(Some((row.get(0), row.get(1))))
        })?;
        self.held = won;
        Ok(won.map(|(epoch, _)| epoch))
    }

    /// Whether this lender still leads: its session still holds the lock
    /// and the epoch is still its own.
    pub fn check(&self) -> Result<(), Lost> {
        let Some((mine, pid)) = self.held else {
            return Err(Lost::TakenOver {
                mine: 0,
                current: 0,
            });
        };
        let (session, current) = self
            .call(|w| {
                let row = w.client()?.query_one(
                    "SELECT pg_backend_pid(), epoch FROM lender_leader WHERE id = 1",
                    &[],
                )?;
                Ok((row.get::<_, i32>(0), row.get::<_, i64>(1)))
            })
            .map_err(Lost::Connection)?;
        if session != pid {
            return Err(Lost::Connection(at(
                self.target.location(),
                Fault::Corrupt("the connection was replaced".into()),
            )));
        }
        if current != mine {
            return Err(Lost::TakenOver { mine, current });
        }
        Ok(())
    }

    /// The epoch won, if any.
    pub fn epoch(&self) -> Option<i64> {
        self.held.map(|(epoch, _)| epoch)
    }

    fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut super::Worker) -> Result<T, Fault> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.conn
            .call(job)
            .unwrap_or_else(|Gone| Err(Fault::Gone))
            .map_err(|fault| at(self.target.location(), fault))
    }
}
