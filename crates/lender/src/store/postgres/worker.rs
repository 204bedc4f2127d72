//! One PostgreSQL connection on a thread of its own. The sync client runs
//! a small runtime inside, which must not be entered from an async task;
//! the store's callers are both (the driver's blocking thread, the server's
//! start), so every call is handed to this thread and waited for.

use std::sync::mpsc;
use std::sync::Arc;

use postgres::Client;

use super::connect::PgTarget;

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// What a job runs with: the connection, opened again if it dropped
/// (unless `reconnect` is off: the leadership lock must not silently
/// come back on a new session).
pub(super) struct Worker {
    target: Arc<PgTarget>,
    client: Option<Client>,
    reconnect: bool,
}

impl Worker {
    pub fn client(&mut self) -> Result<&mut Client, postgres::Error> {
        let client = match self.client.take() {
            // A closed lock connection stays closed: its errors say so.
            Some(client) if !(client.is_closed() && self.reconnect) => client,
            _ => self.target.connect()?,
        };
        Ok(self.client.insert(client))
    }
}

/// The handle: dropping it ends the thread, which closes the connection.
pub(super) struct Conn {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conn")
    }
}

/// The worker thread is gone (it panicked).
#[derive(Debug)]
pub(super) struct Gone;

impl Conn {
    /// Connects now (so that a wrong URL or password is reported at once),
    /// on the connection's own thread.
    pub fn open(target: Arc<PgTarget>, reconnect: bool) -> Result<Self, postgres::Error> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (opened, first) = mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("postgres".into())
            .spawn(move || {
                let client = match target.connect() {
                    Ok(client) => client,
                    Err(err) => {
                        let _ = opened.send(Err(err));
                        return;
                    }
                };
                let _ = opened.send(Ok(()));
                let mut worker = Worker {
                    target,
                    client: Some(client),
                    reconnect,
                };
                while let Ok(job) = inbox.recv() {
                    job(&mut worker);
                }
            });
        if let Err(err) = spawned {
            // Every call then fails as `Gone`.
            tracing::error!(%err, "cannot start a database thread");
            return Ok(Conn { jobs });
        }
        match first.recv() {
            Ok(Err(err)) => Err(err),
            // Ok, or the thread died (then calls fail as `Gone`).
            _ => Ok(Conn { jobs }),
        }
    }

    /// Runs `job` on the connection's thread and waits for its result.
    pub fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Worker) -> T + Send + 'static,
    ) -> Result<T, Gone> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move |worker| {
                let _ = reply.send(job(worker));
            }))
            .map_err(|_| Gone)?;
        answer.recv().map_err(|_| Gone)
    }
}
