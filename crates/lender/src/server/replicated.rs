//! Several lenders on one PostgreSQL database: one active, the others
//! standbys.
//!
//! ```text
//!            try_acquire every second
//!   ┌──────────┐  won (epoch+1)  ┌────────┐
//!   │ standby  │ ──────────────> │ active │  check() every second
//!   │ 503 all  │ <────────────── │ serves │
//!   └──────────┘  lost: lock's   └────────┘
//!                 connection, epoch, or check too slow
//! ```
//!
//! A standby answers every request (the agents' link included) with 503,
//! `Retry-After` and a reason, so that clients and agents pass on to the
//! next lender they know. The one that wins the advisory lock loads the
//! pool from the database and serves it with a store fenced by its epoch
//! ([`PgStore::fenced`]). An active lender that loses the lock or cannot
//! reach the database steps down at once: it stops serving (never deciding
//! from memory alone) and becomes a standby, which takes over again once
//! the database is back and no other lender holds the lock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::{bind, start_on, tls_config, Config, Running, ServerError, HEADER_TIMEOUT};
use crate::store::{Leadership, PgStore, PgTarget};

/// How often a standby tries to take the lock, and the active lender
/// checks that it still holds it.
const BEAT: Duration = Duration::from_secs(1);
/// A check slower than this counts as a lost database.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long stepping down may wait for the server to stop.
const STEP_DOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// What a standby's 503 tells clients to wait.
const STANDBY_RETRY_AFTER: &str = "1";

/// Checks the database (it must hold a pool unless `init`), binds the
/// listener, and runs the standby/active cycle until the returned
/// [`Running`] is shut down.
pub(super) async fn start(config: Config, target: PgTarget) -> Result<Running, ServerError> {
    let tls = config.tls.as_ref().map(tls_config).transpose()?;
    let listener = bind(&config.listen, tls.is_some(), config.insecure_listen).await?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            address: config.listen.clone(),
            source,
        })?;
    // Wrong URL, password or database: said now, not in a loop.
    let init = config.init;
    let check = target.clone();
    tokio::task::spawn_blocking(move || {
        if init {
            PgStore::open(&check).map(drop)
        } else {
            PgStore::open_existing(&check).map(drop)
        }
    })
    .await
    .map_err(|err| ServerError::Tls(format!("database check panicked: {err}")))??;
    let leadership = {
        let target = target.clone();
        tokio::task::spawn_blocking(move || Leadership::connect(&target))
            .await
            .map_err(|err| ServerError::Tls(format!("database check panicked: {err}")))??
    };
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.close();
    let supervisor = Supervisor {
        config,
        target,
        tls,
        addr,
        cancel: cancel.clone(),
    };
    let driver = tokio::spawn(
        supervisor
            .run(listener, Some(leadership))
            .instrument(tracing::info_span!("replicated", %addr)),
    );
    Ok(Running {
        addr,
        cancel,
        tracker,
        driver,
    })
}

struct Supervisor {
    config: Config,
    target: PgTarget,
    tls: Option<Arc<rustls::ServerConfig>>,
    addr: SocketAddr,
    cancel: CancellationToken,
}

impl Supervisor {
    async fn run(self, listener: TcpListener, mut leadership: Option<Leadership>) {
        let mut listener = Some(listener);
        loop {
            let bound = match listener.take() {
                Some(listener) => listener,
                None => match self.rebind().await {
                    Some(listener) => listener,
                    None => return,
                },
            };
            // Standby until the lock is ours.
            let standby = CancellationToken::new();
            let location = self.target.location().display().to_string();
            let answering = tokio::spawn(standby_loop(
                bound,
                self.tls.clone(),
                location,
                standby.clone(),
            ));
            let won = self.acquire(&mut leadership).await;
            standby.cancel();
            let bound = match answering.await {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::error!(%err, "the standby task failed");
                    None
                }
            };
            let Some((lock, epoch)) = won else {
                return; // shut down
            };
            let bound = match bound {
                Some(listener) => listener,
                None => match self.rebind().await {
                    Some(listener) => listener,
                    None => return,
                },
            };
            match self.lead(lock, epoch, bound).await {
                Led::ShutDown => return,
                Led::SteppedDown => {}
            }
        }
    }

    /// Tries the lock every [`BEAT`]; `None` when shut down.
    async fn acquire(&self, leadership: &mut Option<Leadership>) -> Option<(Leadership, i64)> {
        let holder = format!("{} at {}", self.config.name, self.addr);
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    () = self.cancel.cancelled() => return None,
                    () = tokio::time::sleep(BEAT) => {}
                }
            }
            first = false;
            let target = self.target.clone();
            let lock = leadership.take();
            let holder = holder.clone();
            let tried = tokio::task::spawn_blocking(move || {
                let mut lock = match lock {
                    Some(lock) => lock,
                    None => Leadership::connect(&target)?,
                };
                let won = lock.try_acquire(&holder, control::now_ms())?;
                Ok::<_, crate::store::StoreError>((lock, won))
            })
            .await;
            match tried {
                Ok(Ok((lock, Some(epoch)))) => return Some((lock, epoch)),
                Ok(Ok((lock, None))) => *leadership = Some(lock),
                Ok(Err(err)) => tracing::warn!(%err, "standby: cannot reach the database"),
                Err(err) => tracing::error!(%err, "standby: the lock attempt panicked"),
            }
        }
    }

    async fn lead(&self, lock: Leadership, epoch: i64, listener: TcpListener) -> Led {
        let target = self.target.clone();
        let opened = tokio::task::spawn_blocking(move || {
            PgStore::open_existing(&target).map(|s| s.fenced(epoch))
        })
        .await;
        let store = match opened {
            Ok(Ok(store)) => store,
            Ok(Err(err)) => {
                tracing::warn!(%err, "won the lock but cannot open the pool; standing by");
                return Led::SteppedDown;
            }
            Err(err) => {
                tracing::error!(%err, "opening the pool panicked");
                return Led::SteppedDown;
            }
        };
        let running = match start_on(
            self.config.clone(),
            Box::new(store),
            listener,
            self.tls.clone(),
        )
        .await
        {
            Ok(running) => running,
            Err(err) => {
                tracing::warn!(%err, "won the lock but cannot serve the pool; standing by");
                return Led::SteppedDown;
            }
        };
        tracing::info!(epoch, "this lender is now the active one");
        let lock = Arc::new(std::sync::Mutex::new(lock));
        let outcome = loop {
            tokio::select! {
                () = self.cancel.cancelled() => break Led::ShutDown,
                () = tokio::time::sleep(BEAT) => {}
            }
            let held = lock.clone();
            let check = tokio::task::spawn_blocking(move || {
                held.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .check()
                    .map_err(|lost| lost.to_string())
            });
            match tokio::time::timeout(CHECK_TIMEOUT, check).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(lost))) => {
                    tracing::warn!(epoch, reason = %lost, "stepping down");
                    break Led::SteppedDown;
                }
                Ok(Err(err)) => {
                    tracing::error!(epoch, %err, "stepping down: the check panicked");
                    break Led::SteppedDown;
                }
                Err(_) => {
                    tracing::warn!(epoch, "stepping down: the database did not answer in time");
                    break Led::SteppedDown;
                }
            }
        };
        if tokio::time::timeout(STEP_DOWN_TIMEOUT, running.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("the server did not stop in time");
        }
        // The lock's connection closes with it (if it is not stuck in a check).
        drop(lock);
        outcome
    }

    /// The listening address again, after the server that had it stopped.
    async fn rebind(&self) -> Option<TcpListener> {
        loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => return Some(listener),
                Err(err) => tracing::warn!(%err, addr = %self.addr, "cannot listen again"),
            }
            tokio::select! {
                () = self.cancel.cancelled() => return None,
                () = tokio::time::sleep(BEAT) => {}
            }
        }
    }
}

enum Led {
    ShutDown,
    SteppedDown,
}

/// Answers every connection with one 503 until `stop`; gives the listener
/// back.
async fn standby_loop(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    location: String,
    stop: CancellationToken,
) -> Option<TcpListener> {
    let tracker = TaskTracker::new();
    let reason: Arc<str> = Arc::from(format!(
        "this lender is a standby: another jnlp-lender is active on {location}; \
         use the next lender URL, or retry"
    ));
    tracing::info!("standing by");
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let tls = tls.clone();
        let reason = reason.clone();
        // Not cancelled when this lender takes over: a request already
        // read gets its 503 (one per connection) rather than a cut.
        tracker.spawn(async move {
            let _ = stream.set_nodelay(true);
            match tls {
                None => answer_503(TokioIo::new(stream), reason).await,
                Some(config) => {
                    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(super::TLS_HANDSHAKE_TIMEOUT, accept).await
                    {
                        answer_503(TokioIo::new(tls), reason).await;
                    }
                }
            }
        });
    }
    tracker.close();
    Some(listener)
}

async fn answer_503<S>(io: TokioIo<S>, reason: Arc<str>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = service_fn(move |_request: hyper::Request<hyper::body::Incoming>| {
        let body = serde_json::json!({ "error": &*reason }).to_string();
        let mut response = hyper::Response::new(super::respond::full(body));
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static(STANDBY_RETRY_AFTER),
        );
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service)
        .await;
}
