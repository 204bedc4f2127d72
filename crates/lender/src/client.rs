//! A client of the HTTP API ([`crate::api`]), used by `jnlp-lender lease`,
//! `return`, `agents`, `leases` and `controllers`.
//!
//! It may know several lenders (`--lender A,B`: an active one and its
//! standbys on one PostgreSQL database). Each call goes to the one that
//! answered last, and passes on to the next over a 503 (a standby, or an
//! active lender that cannot store) or a connection refused; both mean the
//! request was not acted on, so sending it again elsewhere is safe.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{AgentView, ControllerView, ErrorBody, LeaseBody, LeaseView};
use crate::pool::LeaseId;
use crate::tokens::MAX_TOKEN;

/// The largest answer the client reads (a list of many leases or agents).
const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// How long one HTTP exchange may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Client::wait_settled`] keeps polling through a takeover
/// (no lender answering) past its own limit.
const TAKEOVER_GRACE: Duration = Duration::from_secs(30);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The lender could not be reached, or the exchange broke.
    #[error("cannot reach the lender: {0}")]
    Http(#[from] reqwest::Error),
    /// The lender refused, with its message.
    #[error("{message} (HTTP {status})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The lender's message.
        message: String,
        /// The lease concerned, if the lender sent it.
        lease: Option<Box<LeaseView>>,
    },
    /// The answer is not what the API documents.
    #[error("unexpected answer from the lender: {0}")]
    Decode(String),
    /// The token file, the CA file or the URL.
    #[error("{0}")]
    Setup(String),
}

/// An API client with a client token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Every lender known, in the order given.
    bases: Arc<[String]>,
    /// The one that answered last.
    current: Arc<AtomicUsize>,
    token: String,
}

impl Client {
    /// A client of the lender at `url` (e.g. `https://lender.example:8765`,
    /// or several separated by commas) with `token`; `ca_pem` adds a
    /// trusted CA (e.g. for a self-signed lender certificate).
    pub fn new(url: &str, token: &str, ca_pem: Option<&[u8]>) -> Result<Self, ClientError> {
        let bases: Vec<String> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect();
        if bases.is_empty() {
            return Err(ClientError::Setup("no lender URL given".into()));
        }
        for url in &bases {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ClientError::Setup(format!(
                    "the lender URL must be http(s)://HOST:PORT, not {url:?}"
                )));
            }
        }
        let token = token.trim();
        if token.is_empty() || token.len() > MAX_TOKEN || token.contains(char::is_whitespace) {
            return Err(ClientError::Setup("the token is empty or malformed".into()));
        }
        let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
        if let Some(pem) = ca_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|err| ClientError::Setup(format!("CA certificate: {err}")))?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(Client {
            http: builder.build()?,
            bases: bases.into(),
            current: Arc::new(AtomicUsize::new(0)),
            token: token.to_owned(),
        })
    }

    /// [`Client::new`] with the token read from a file.
    pub fn with_token_file(
        url: &str,
        token_file: &Path,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, ClientError> {
        let token = read_small_file(token_file)?;
        Self::new(url, &token, ca_pem)
    }

    /// `POST /v1/leases`: the lease, reserved or queued.
    pub async fn lease(&self, body: &LeaseBody) -> Result<LeaseView, ClientError> {
        self.exchange(reqwest::Method::POST, "/v1/leases", Some(body))
            .await
    }

    /// `GET /v1/leases/{id}`.
    pub async fn get_lease(&self, id: LeaseId) -> Result<LeaseView, ClientError> {
        self.exchange::<(), _>(reqwest::Method::GET, &format!("/v1/leases/{id}"), None)
            .await
    }

    /// `GET /v1/leases?state=STATE&limit=N`: this client's newest leases
    /// in `state` (`open`, `ended`, `all`).
    pub async fn leases(&self, state: &str, limit: usize) -> Result<Vec<LeaseView>, ClientError> {
        let path = format!("/v1/leases?state={state}&limit={limit}");
        self.exchange::<(), _>(reqwest::Method::GET, &path, None)
            .await
    }

    /// `DELETE /v1/leases/{id}`: the agent goes home when idle, or `now`.
    pub async fn return_lease(&self, id: LeaseId, now: bool) -> Result<LeaseView, ClientError> {
        let path = format!("/v1/leases/{id}{}", if now { "?now=true" } else { "" });
        self.exchange::<(), _>(reqwest::Method::DELETE, &path, None)
            .await
    }

    /// `GET /v1/agents`.
    pub async fn agents(&self) -> Result<Vec<AgentView>, ClientError> {
        self.exchange::<(), _>(reqwest::Method::GET, "/v1/agents", None)
            .await
    }

    /// `GET /v1/controllers`: the registered Jenkins controllers.
    pub async fn controllers(&self) -> Result<Vec<ControllerView>, ClientError> {
        self.exchange::<(), _>(reqwest::Method::GET, "/v1/controllers", None)
            .await
    }

    /// Polls lease `id` every `every` until it is active (or returning or
    /// ended) or `limit` has passed; returns it as last seen. While no
    /// lender answers (a takeover under way) it keeps polling, up to 30 s
    /// past `limit`.
    pub async fn wait_settled(
        &self,
        id: LeaseId,
        every: Duration,
        limit: Duration,
    ) -> Result<LeaseView, ClientError> {
        // A limit past what an `Instant` holds: no limit.
        let deadline = tokio::time::Instant::now().checked_add(limit);
        loop {
            let lease = match self.get_lease(id).await {
                Ok(lease) => lease,
                Err(err) if err.is_unavailable() => {
                    let give_up = deadline
                        .and_then(|d| d.checked_add(TAKEOVER_GRACE))
                        .is_some_and(|d| tokio::time::Instant::now() >= d);
                    if give_up {
                        return Err(err);
                    }
                    tokio::time::sleep(every).await;
                    continue;
                }
                Err(err) => return Err(err),
            };
            let settled = !matches!(lease.state.as_str(), "queued" | "reserved");
            if settled || deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Ok(lease);
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Which lender answered last (its URL), for messages.
    pub fn lender(&self) -> &str {
        let at = self.current.load(Ordering::Relaxed) % self.bases.len();
        &self.bases[at]
    }

    /// Sends to the lender that answered last, then to the others in turn
    /// over a 503 or a connection that cannot be made.
    async fn exchange<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|err| ClientError::Decode(err.to_string()))?;
        let first = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for step in 0..self.bases.len() {
            let at = (first + step) % self.bases.len();
            match self
                .exchange_with(&self.bases[at], method.clone(), path, body.as_deref())
                .await
            {
                Err(err) if err.is_unavailable() => last = Some(err),
                other => {
                    self.current.store(at, Ordering::Relaxed);
                    return other;
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Setup("no lender URL given".into())))
    }

    async fn exchange_with<T: DeserializeOwned>(
        &self,
        base: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<T, ClientError> {
        let mut request = self
            .http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        let mut response = request.send().await?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if bytes.len() + chunk.len() > MAX_ANSWER {
                return Err(ClientError::Decode(format!(
                    "answer larger than {MAX_ANSWER} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|err| ClientError::Decode(err.to_string()))
        } else {
            let (message, lease) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => (body.error, body.lease.map(Box::new)),
                Err(_) => (String::from_utf8_lossy(&bytes).trim().to_owned(), None),
            };
            Err(ClientError::Api {
                status: status.as_u16(),
                message,
                lease,
            })
        }
    }
}

impl ClientError {
    /// The lender did not act on the request: a 503 (a standby, or a
    /// database refusing), or no connection could be made. Another lender
    /// may be tried.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ClientError::Api { status, .. } => *status == 503,
            ClientError::Http(err) => err.is_connect(),
            _ => false,
        }
    }
}

/// Reads a token or secret file: at most 64 KiB, surrounding whitespace
/// trimmed.
pub fn read_small_file(path: &Path) -> Result<String, ClientError> {
    let (text, _) = control::secret_file::read_file(path, control::MAX_SECRET_FILE)
        .map_err(|err| ClientError::Setup(format!("{}: {err}", path.display())))?;
    Ok(text.trim().to_owned())
}
