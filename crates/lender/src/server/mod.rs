//! `jnlp-lender serve`: the HTTP API and the agent links around the pool.
//!
//! ```text
//!  HTTP API ──┐                            ┌─> store (one transaction per input)
//!             ├─ Input ─> driver (Pool) ───┼─> LenderMessage on an agent's link
//!  agent links┘   (mpsc)     │             └─> events (broadcast, SSE)
//!                            └─ timer: queue deadlines, reclaim, borrow replies overdue
//! ```
//!
//! One task, the driver, owns the [`Pool`] and the [`Store`]: every API
//! call and every message from an agent is an input it applies in turn, so
//! decisions never race (no agent is reserved twice however many requests arrive at
//! once). After each input it commits the pool's changes, then carries out
//! the pool's decisions: `borrow` and `return` requests on the agents'
//! links, whose replies come back as inputs.
//!
//! # Layout
//!
//! - this module: [`Config`], [`start`], the listener (plain HTTP on
//!   loopback, TLS otherwise) and the shared state of connections;
//! - `driver`: the task that owns the pool and the store;
//! - `reader`: reads from the store that never wait behind a commit;
//! - `replicated`: on PostgreSQL, one active lender among many (the
//!   others standbys answering 503) and takeover;
//! - `controllers`: the registered Jenkins controllers' watchers and
//!   their status (`GET /v1/controllers`);
//! - `provision`: lending on demand's I/O: demand from a queue, making
//!   and deleting lent nodes;
//! - `auth`: the token book (lookups, revocation, last use);
//! - `http`: routes, bearer tokens, bounded JSON bodies, server-sent
//!   events;
//! - `admission`: the cap and the shorter timeout on connections not yet
//!   authenticated, and the open-files limit;
//! - `link`: the agents' WebSocket (`GET /v1/link`);
//! - `metrics`: the Prometheus text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::pool::Secret;
use crate::pool::{Pool, PoolConfig, PoolError};
use crate::store::{is_postgres_url, PgTarget, SqliteStore, Store, StoreError, BUSY_TIMEOUT};

mod admission;
mod auth;
mod bearer;
mod controllers;
mod driver;
mod http;
mod link;
mod metrics;
mod provision;
mod reader;
mod registry;
mod replicated;
mod respond;

pub use admission::{
    default_max_unauthenticated, raise_open_files_limit, DEFAULT_MAX_UNAUTHENTICATED,
};
pub use driver::ServerEvent;

use admission::{Admission, Ticket, UNAUTHENTICATED_TIMEOUT};

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an authenticated client may take to send a request's head (an
/// unauthenticated one has [`UNAUTHENTICATED_TIMEOUT`] in all).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Inputs waiting for the driver before senders wait.
const INPUT_QUEUE: usize = 1024;
/// Events kept for slow server-sent-event readers.
const EVENT_BUFFER: usize = 1024;

/// Default `--poll`.
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);

/// The certificate and key files for HTTPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// `HOST:PORT` to listen on (port 0: any).
    pub listen: String,
    /// The SQLite database file, or a `postgres://` URL.
    pub db: PathBuf,
    /// PostgreSQL's password (unless the URL has one).
    pub db_password: Option<Secret>,
    /// Create the database if it holds no pool yet; without it, a missing
    /// or empty file is refused (a typo in `--db` must not start an empty
    /// pool).
    pub init: bool,
    /// How long a commit waits for a lock another process holds on the
    /// database before the change is refused.
    pub db_busy_timeout: Duration,
    /// HTTPS; without it the server listens on loopback only, unless
    /// `insecure_listen`.
    pub tls: Option<TlsFiles>,
    /// Allow plain HTTP on a non-loopback address.
    pub insecure_listen: bool,
    /// Reclaim an agent idle at another borrower for at least this long for
    /// a waiting request; `None`: never reclaim.
    pub reclaim_after: Option<Duration>,
    /// The pool's limits.
    pub pool: PoolConfig,
    /// How often agents ping; a link silent for three intervals is dead.
    pub ping_interval: Duration,
    /// The `wait` sent with `borrow` (and `return`): how long an agent has
    /// to come online at the borrower before the borrow counts as failed.
    pub borrow_wait: Duration,
    /// How often the driver looks for agents to reclaim and for overdue
    /// replies.
    pub tick: Duration,
    /// The lender's name, sent in `welcome`.
    pub name: String,
    /// Where `secret_file` in a lease request may point: client `C` names
    /// files under `secret_dir/C/` only; `None`: refused.
    pub secret_dir: Option<PathBuf>,
    /// At most this many connections not yet authenticated; one more
    /// closes the oldest of them.
    pub max_unauthenticated: usize,
    /// How often each registered controller's queue is read, and the
    /// `controllers` table re-read.
    pub poll: Duration,
}

impl Config {
    /// Defaults for everything but where to listen and the database.
    pub fn new(listen: impl Into<String>, db: impl Into<PathBuf>) -> Self {
        Config {
            listen: listen.into(),
            db: db.into(),
            db_password: None,
            init: false,
            db_busy_timeout: BUSY_TIMEOUT,
            tls: None,
            insecure_listen: false,
            reclaim_after: None,
            pool: PoolConfig::default(),
            ping_interval: control::link::PING_INTERVAL,
            borrow_wait: Duration::from_secs(300),
            tick: Duration::from_secs(1),
            name: "jnlp-lender".into(),
            secret_dir: None,
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
            poll: DEFAULT_POLL,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored state does not make a consistent pool.
    #[error("cannot restore the pool from the database: {0}")]
    Restore(#[from] PoolError),
    /// Resolving or binding the listen address.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// Plain HTTP on an address others can reach.
    #[error(
        "{0} is not a loopback address: give --tls-cert and --tls-key, \
         or --insecure-listen to serve plain HTTP there anyway"
    )]
    NotLoopback(String),
    /// The certificate or key.
    #[error("TLS: {0}")]
    Tls(String),
}

/// What connections share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub driver: mpsc::Sender<driver::Input>,
    /// Reads that do not wait behind a commit.
    pub reader: reader::ReadStore,
    pub tokens: Arc<auth::TokenBook>,
    pub events: broadcast::Sender<Arc<ServerEvent>>,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
    pub ping_interval: Duration,
    pub lender_name: String,
    pub secret_dir: Option<PathBuf>,
    pub next_link: AtomicU64,
    pub admission: Arc<Admission>,
    /// The registered controllers and what their watchers found.
    pub controllers: Arc<registry::Registry>,
}

/// A running server; [`Running::shutdown`] stops it.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
    driver: JoinHandle<()>,
}

impl Running {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A token that stops the server when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops accepting, closes every connection and link, waits for the
    /// driver to write its last changes.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        if let Err(err) = self.driver.await {
            tracing::error!(%err, "the driver task failed");
        }
    }
}

/// Opens the database (creating it only with `init`), rebuilds the pool
/// from it, binds the listener and starts serving.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    if let Some(url) = config.db.to_str().filter(|db| is_postgres_url(db)) {
        let target = PgTarget::parse(url, config.db_password.as_ref().map(Secret::expose))?;
        return replicated::start(config, target).await;
    }
    let mut store = if config.init {
        SqliteStore::open(&config.db)?
    } else {
        SqliteStore::open_existing(&config.db)?
    };
    store.set_busy_timeout(config.db_busy_timeout)?;
    start_with_store(config, Box::new(store)).await
}

/// [`start`] with any store (the database file in `config` is not used).
pub async fn start_with_store(
    config: Config,
    store: Box<dyn Store + Send>,
) -> Result<Running, ServerError> {
    let tls = config.tls.as_ref().map(tls_config).transpose()?;
    let listener = bind(&config.listen, tls.is_some(), config.insecure_listen).await?;
    start_on(config, store, listener, tls).await
}

/// Serves the pool in `store` on a bound listener.
async fn start_on(
    config: Config,
    store: Box<dyn Store + Send>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Running, ServerError> {
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            address: config.listen.clone(),
            source,
        })?;

    let snapshot = store.load()?;
    let pool = Pool::restore(config.pool.clone(), snapshot)?;
    let reads = reader::ReadStore::new(store.reader()?);
    let tokens = auth::TokenBook::new(reads.clone(), reader::ReadStore::new(store.reader()?));
    // Its own handle: a slow table read never holds up token lookups.
    let store_reader_for_controllers = store.reader()?;
    tracing::info!(
        %addr,
        tls = tls.is_some(),
        leases = pool.leases().count(),
        agents = pool.agents().count(),
        max_unauthenticated = config.max_unauthenticated,
        "lender listening"
    );

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (inputs_tx, inputs_rx) = mpsc::channel(INPUT_QUEUE);
    let (events, _) = broadcast::channel(EVENT_BUFFER);
    let registry = Arc::new(registry::Registry::default());
    let wiring = driver::Wiring {
        registry: registry.clone(),
        inputs: inputs_tx.downgrade(),
        tracker: tracker.clone(),
    };
    let driver = driver::Driver::new(pool, store, &config, events.clone(), wiring);
    let driver = tokio::spawn(
        driver
            .run(inputs_rx, cancel.clone())
            .instrument(tracing::info_span!("driver")),
    );
    tracker.spawn(tokens.clone().watch_revocations(cancel.clone()));
    tracker.spawn(
        controllers::run(
            reader::ReadStore::new(store_reader_for_controllers),
            registry.clone(),
            config.poll,
            events.clone(),
            inputs_tx.clone(),
            tracker.clone(),
            cancel.clone(),
        )
        .instrument(tracing::info_span!("controllers")),
    );
    let shared = Arc::new(Shared {
        driver: inputs_tx,
        reader: reads,
        tokens,
        events,
        cancel: cancel.clone(),
        tracker: tracker.clone(),
        ping_interval: config.ping_interval,
        lender_name: config.name.clone(),
        secret_dir: config.secret_dir.clone(),
        next_link: AtomicU64::new(1),
        admission: Admission::new(config.max_unauthenticated),
        controllers: registry,
    });
    tracker.spawn(accept_loop(shared, listener, tls).instrument(tracing::info_span!("accept")));
    Ok(Running {
        addr,
        cancel,
        tracker,
        driver,
    })
}

async fn bind(address: &str, tls: bool, insecure: bool) -> Result<TcpListener, ServerError> {
    let listen_error = |source| ServerError::Listen {
        address: address.to_owned(),
        source,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(address)
        .await
        .map_err(listen_error)?
        .collect();
    if !tls && !insecure && addrs.iter().any(|a| !a.ip().is_loopback()) {
        return Err(ServerError::NotLoopback(address.to_owned()));
    }
    let mut last = None;
    for addr in addrs {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(err) => last = Some(err),
        }
    }
    Err(listen_error(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
    })))
}

fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| ServerError::Tls(format!("{}: {err}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(ServerError::Tls(format!(
            "{}: no certificate",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|err| ServerError::Tls(format!("{}: {err}", files.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| ServerError::Tls(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|err| ServerError::Tls(err.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    loop {
        let accepted = tokio::select! {
            () = shared.cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let span = tracing::debug_span!("http", %peer);
                shared
                    .tracker
                    .spawn(connection(shared.clone(), stream, tls.clone()).instrument(span));
            }
            Err(err) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One connection: unauthenticated (capped, timed out) until a request on
/// it passes bearer authentication.
async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let close = shared.cancel.child_token();
    let ticket = Arc::new(shared.admission.admit(close.clone()));
    tokio::select! {
        () = close.cancelled() => {
            tracing::debug!("closed: shutting down, or making room for a newer unauthenticated connection");
        }
        () = ticket.expired(UNAUTHENTICATED_TIMEOUT) => {
            tracing::debug!("closed: not authenticated in time");
        }
        () = serve(shared.clone(), stream, tls, ticket.clone()) => {}
    }
}

async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    ticket: Arc<Ticket>,
) {
    let _ = stream.set_nodelay(true);
    match tls {
        None => serve_http(shared, stream, ticket).await,
        Some(config) => {
            let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept).await {
                Ok(Ok(tls)) => serve_http(shared, tls, ticket).await,
                Ok(Err(err)) => tracing::debug!(%err, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    }
}

async fn serve_http<S>(shared: Arc<Shared>, stream: S, ticket: Arc<Ticket>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let cancel = shared.cancel.clone();
    // Each request carries the connection's ticket, for `authenticate`.
    let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ticket.clone());
        http::handle(shared.clone(), request)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        () = cancel.cancelled() => {}
        result = conn => {
            if let Err(err) = result {
                tracing::debug!(%err, "HTTP connection ended with an error");
            }
        }
    }
}
