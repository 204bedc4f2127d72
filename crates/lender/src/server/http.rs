//! The HTTP API: routes, bounded JSON bodies, server-sent events (bearer
//! tokens: [`super::bearer`]; responses: [`super::respond`]). The API itself is documented in [`crate::api`].
//!
//! Every check happens before the driver hears of a request: route (404,
//! 405), token (401, 403), body size (413), JSON and fields (400). So a
//! refused request changes nothing.

use std::convert::Infallible;
use std::path::{Component, Path};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper::body::{Frame, Incoming};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::bearer::{authenticate, bearer, Revoked};
use super::driver::{ApiCall, ApiError, Input, ServerEvent};
use super::respond::{error_response, full, json, unavailable, Body};
use super::{link, Shared};
use crate::api::{LeaseBody, LeaseView, MAX_BODY};
use crate::pool::{Borrower, LeaseId, LeaseRequest, Secret};
use crate::store::LeaseFilter;
use crate::tokens::{self, Principal, TokenKind};
use control::labels::Expr;

/// How long a client may take to send a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an idle event stream gets a comment line, so that proxies and
/// clients see it alive.
const EVENT_KEEPALIVE: Duration = Duration::from_secs(15);
/// Event chunks buffered for a slow reader before events are skipped.
const EVENT_QUEUE: usize = 64;
/// Leases `GET /v1/leases` lists unless `limit` says otherwise, and the
/// most it lists.
const DEFAULT_LIST: usize = 100;
const MAX_LIST: usize = 1000;
/// The longest secret file the lender reads.
const MAX_SECRET_FILE: u64 = control::MAX_SECRET_FILE;

/// Answers one request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = match route(&shared, request).await {
        Ok(response) => response,
        Err(err) => error_response(err),
    };
    tracing::debug!(%method, %path, status = %response.status(), "request");
    Ok(response)
}

async fn route(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let allowed = |methods: &'static str| -> Result<(), ApiError> {
        if methods.split(", ").any(|m| m == method.as_str()) {
            Ok(())
        } else {
            let mut err = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {path}; use {methods}"),
            );
            err.allow = Some(methods);
            Err(err)
        }
    };
    if path == control::link::LINK_PATH {
        allowed("GET")?;
        return Ok(link::upgrade(shared, request).await);
    }
    if let Some(rest) = path.strip_prefix("/v1/leases/") {
        allowed("GET, DELETE")?;
        let id: LeaseId = rest.parse().map_err(|_| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no lease {rest:?}: ids are numbers"),
            )
        })?;
        let client = authenticate(shared, &request, TokenKind::Client).await?;
        return if method == Method::GET {
            let view = get_lease(shared, id, &client.name).await?;
            Ok(json(StatusCode::OK, &view))
        } else {
            let when = if query_flag(request.uri().query(), "now")? {
                control::When::Now
            } else {
                control::When::Idle
            };
            let view = call(shared, |reply| ApiCall::Return {
                id,
                client: client.name,
                when,
                reply,
            })
            .await??;
            Ok(json(StatusCode::ACCEPTED, &view))
        };
    }
    match path.as_str() {
        "/v1/leases" => {
            allowed("GET, POST")?;
            let client = authenticate(shared, &request, TokenKind::Client).await?;
            if method == Method::POST {
                create_lease(shared, client, request).await
            } else {
                let query = ListQuery::parse(request.uri().query())?;
                let views = list_leases(shared, client.name, query).await?;
                Ok(json(StatusCode::OK, &views))
            }
        }
        "/v1/agents" => {
            allowed("GET")?;
            authenticate(shared, &request, TokenKind::Client).await?;
            let views = call(shared, |reply| ApiCall::Agents { reply }).await?;
            Ok(json(StatusCode::OK, &views))
        }
        "/v1/controllers" => {
            allowed("GET")?;
            authenticate(shared, &request, TokenKind::Client).await?;
            let agents = call(shared, |reply| ApiCall::Agents { reply }).await?;
            Ok(json(StatusCode::OK, &shared.controllers.views(&agents)))
        }
        "/v1/events" => {
            allowed("GET")?;
            let client = authenticate(shared, &request, TokenKind::Client).await?;
            let hash = tokens::hash(bearer(request.headers())?);
            Ok(events(shared, client, hash))
        }
        "/metrics" => {
            allowed("GET")?;
            authenticate(shared, &request, TokenKind::Client).await?;
            let mut text = call(shared, |reply| ApiCall::Metrics { reply }).await?;
            text.push_str(&shared.controllers.render_metrics());
            let mut response = Response::new(full(text));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(response)
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {path}"),
        )),
    }
}

/// `GET /v1/leases/{id}`: from the pool, else from the store (a lease that
/// ended and was forgotten, or ended before a restart); another client's
/// lease is "not found", so that ids tell nothing.
async fn get_lease(shared: &Shared, id: LeaseId, client: &str) -> Result<LeaseView, ApiError> {
    let view = match call(shared, |reply| ApiCall::GetLease { id, reply }).await? {
        Some(view) => Some(view),
        None => shared
            .reader
            .lease(id)
            .await
            .map_err(|err| {
                tracing::error!(%err, lease = id, "lease lookup failed");
                unavailable()
            })?
            .map(|lease| LeaseView::of(&lease)),
    };
    view.filter(|view| view.client == client).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no lease {id} of client {client:?}"),
        )
    })
}

/// The query of `GET /v1/leases`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ListQuery {
    filter: LeaseFilter,
    limit: usize,
}

impl ListQuery {
    /// `state=open|ended|all` (default `all`), `limit=1..=MAX_LIST`
    /// (default [`DEFAULT_LIST`]).
    fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
        let mut parsed = ListQuery {
            filter: LeaseFilter::All,
            limit: DEFAULT_LIST,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "state" => {
                    parsed.filter = match value {
                        "all" => LeaseFilter::All,
                        "open" => LeaseFilter::Open,
                        "ended" => LeaseFilter::Ended,
                        other => {
                            return Err(bad(format!(
                                "`state` must be open, ended or all, not {other:?}"
                            )))
                        }
                    }
                }
                "limit" => {
                    parsed.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIST).contains(n))
                        .ok_or_else(|| {
                            bad(format!(
                                "`limit` must be a number from 1 to {MAX_LIST}, not {value:?}"
                            ))
                        })?;
                }
                other => {
                    return Err(bad(format!(
                        "unknown query parameter {other:?}; known: state, limit"
                    )))
                }
            }
        }
        Ok(parsed)
    }
}

/// `GET /v1/leases`: the client's newest leases that pass the filter, in id
/// order. Open leases come from the pool (it holds every one), ended ones
/// from the store, so they stay listed across restarts.
async fn list_leases(
    shared: &Shared,
    client: String,
    query: ListQuery,
) -> Result<Vec<LeaseView>, ApiError> {
    let mut views: std::collections::BTreeMap<LeaseId, LeaseView> =
        std::collections::BTreeMap::new();
    if query.filter != LeaseFilter::Ended {
        let open = call(shared, |reply| ApiCall::Leases {
            client: client.clone(),
            reply,
        })
        .await?;
        views.extend(
            open.into_iter()
                .filter(|view| view.state != "ended")
                .map(|view| (view.id, view)),
        );
    }
    if query.filter != LeaseFilter::Open {
        let ended = shared
            .reader
            .leases(client, LeaseFilter::Ended, query.limit)
            .await
            .map_err(|err| {
                tracing::error!(%err, "listing ended leases failed");
                unavailable()
            })?;
        for lease in ended {
            views
                .entry(lease.id)
                .or_insert_with(|| LeaseView::of(&lease));
        }
    }
    let skip = views.len().saturating_sub(query.limit);
    Ok(views.into_values().skip(skip).collect())
}

/// Sends a call to the driver and waits for its answer.
async fn call<T>(
    shared: &Shared,
    make: impl FnOnce(oneshot::Sender<T>) -> ApiCall,
) -> Result<T, ApiError> {
    let unavailable = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the lender is shutting down",
        )
    };
    let (tx, rx) = oneshot::channel();
    shared
        .driver
        .send(Input::Api(make(tx)))
        .await
        .map_err(|_| unavailable())?;
    rx.await.map_err(|_| unavailable())
}

async fn create_lease(
    shared: &Shared,
    client: Principal,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let (parts, body) = request.into_parts();
    let bytes = read_body(&parts.headers, body).await?;
    let body: LeaseBody =
        serde_json::from_slice(&bytes).map_err(|err| bad(format!("malformed JSON: {err}")))?;
    let requirements = Expr::parse(&body.requirements)
        .map_err(|err| bad(format!("invalid label expression: {err}")))?;
    let borrower = body.borrower;
    let secret = match (borrower.secret, borrower.secret_file) {
        (Some(secret), None) => secret,
        (None, Some(path)) => {
            read_secret_file(shared.secret_dir.as_deref(), &client.name, &path).await?
        }
        (Some(_), Some(_)) => {
            return Err(bad(
                "give either borrower.secret or borrower.secret_file, not both".into(),
            ))
        }
        (None, None) => {
            return Err(bad(
                "borrower.secret or borrower.secret_file is required".into()
            ))
        }
    };
    let request = LeaseRequest {
        requirements,
        borrower: Borrower {
            url: control::normalize_scheme(&borrower.url),
            node_name: borrower.name,
            secret: Secret::new(secret.trim()),
            transport: borrower.transport,
        },
        client: client.name,
        lease: body.lease,
        idle_return: body.idle_return,
        wait: body.wait.unwrap_or(Duration::ZERO),
        origin: None,
    };
    request.validate().map_err(bad)?;
    let (status, view) = call(shared, |reply| ApiCall::Lease {
        request: Box::new(request),
        reply,
    })
    .await??;
    Ok(json(status, &view))
}

/// Reads a body of at most [`MAX_BODY`] bytes within [`BODY_TIMEOUT`].
async fn read_body(headers: &HeaderMap, body: Incoming) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY} bytes"),
        )
    };
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let collect = Limited::new(body, MAX_BODY).collect();
    match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "the body did not arrive in time",
        )),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(err)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {err}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Reads a borrower's secret from a file in the client's own directory
/// under the lender's secret directory, `DIR/CLIENT/`: anywhere else would
/// let a client send a file the lender can read (another client's secret,
/// `/etc/passwd`) to a URL of its choice. `path` is relative to that
/// directory; `..`, absolute paths and symlinks leading out are refused.
async fn read_secret_file(
    dir: Option<&Path>,
    client: &str,
    path: &Path,
) -> Result<String, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let Some(dir) = dir else {
        return Err(bad(
            "borrower.secret_file is not accepted by this lender (no --secret-dir); send the secret"
                .into(),
        ));
    };
    // Token names are free text: only one that is a plain file name can
    // name a directory of its own.
    let plain = !matches!(client, "" | "." | "..") && !client.contains(['/', '\0']);
    if !plain {
        return Err(bad(format!(
            "client {client:?} has no secret directory (its name is not a file name); send the secret"
        )));
    }
    let own = dir.join(client);
    let shown = path.display();
    if path.is_absolute() {
        return Err(bad(format!(
            "borrower.secret_file must be relative to your directory {}, not the absolute path {shown}",
            own.display()
        )));
    }
    let plain_path = path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !plain_path || path.as_os_str().is_empty() {
        return Err(bad(format!(
            "borrower.secret_file must name a file in your directory {} without `..`, not {shown}",
            own.display()
        )));
    }
    let own_real = tokio::fs::canonicalize(&own).await.map_err(|_| {
        bad(format!(
            "client {client:?} has no secret directory {}; the lender's operator creates it",
            own.display()
        ))
    })?;
    let unreadable = || {
        bad(format!(
            "cannot read borrower.secret_file {shown} in {}",
            own.display()
        ))
    };
    let file = tokio::fs::canonicalize(own.join(path))
        .await
        .map_err(|_| unreadable())?;
    if !file.starts_with(&own_real) {
        return Err(bad(format!(
            "borrower.secret_file {shown} leads out of your directory {} (a symbolic link); refused",
            own.display()
        )));
    }
    let meta = tokio::fs::metadata(&file).await.map_err(|_| unreadable())?;
    if !meta.is_file() || meta.len() > MAX_SECRET_FILE {
        return Err(bad(format!(
            "borrower.secret_file {shown} is not a file of at most {MAX_SECRET_FILE} bytes"
        )));
    }
    let text = tokio::fs::read_to_string(&file)
        .await
        .map_err(|_| unreadable())?;
    Ok(text.trim().to_owned())
}

/// `name=true|false|1|0` in a query; any other parameter is refused.
fn query_flag(query: Option<&str>, name: &str) -> Result<bool, ApiError> {
    let mut value = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, v) = pair.split_once('=').unwrap_or((pair, "true"));
        if key != name {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown query parameter {key:?}; only `{name}` is known"),
            ));
        }
        value = match v {
            "true" | "1" => true,
            "false" | "0" => false,
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("`{name}` must be true or false, not {other:?}"),
                ))
            }
        };
    }
    Ok(value)
}

// ---- server-sent events ----

/// `GET /v1/events`: a stream of the client's lease changes and every
/// agent change, as `event: lease|agent` with the view as `data`.
fn events(shared: &Arc<Shared>, client: Principal, hash: String) -> Response<Body> {
    let events = shared.events.subscribe();
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let cancel = shared.cancel.child_token();
    let revoked = Revoked {
        shared: shared.clone(),
        hash,
    };
    shared
        .tracker
        .spawn(forward_events(events, tx, client.name, revoked, cancel));
    let mut response = Response::new(EventBody { rx }.boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn forward_events(
    mut events: broadcast::Receiver<Arc<ServerEvent>>,
    tx: mpsc::Sender<Bytes>,
    client: String,
    revoked: Revoked,
    cancel: CancellationToken,
) {
    let mut keepalive = tokio::time::interval(EVENT_KEEPALIVE);
    let revocation = revoked.wait();
    tokio::pin!(revocation);
    loop {
        let chunk = tokio::select! {
            () = cancel.cancelled() => return,
            () = tx.closed() => return,
            () = &mut revocation => {
                tracing::info!(%client, "event stream closed: its token was revoked");
                return;
            }
            _ = keepalive.tick() => Bytes::from_static(b":\n\n"),
            event = events.recv() => match event {
                Ok(event) => match event.as_ref() {
                    ServerEvent::Lease(view) if view.client == client => sse("lease", view),
                    ServerEvent::Lease(_) => continue,
                    ServerEvent::Agent(view) => sse("agent", view),
                    ServerEvent::ControllerFailing(view) => sse("controller_failing", view),
                    ServerEvent::Demand(event) => sse("demand", event),
                    ServerEvent::NodeCreated(event) => sse("node_created", event),
                    ServerEvent::NodeDeleted(event) => sse("node_deleted", event),
                },
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    sse("lagged", &serde_json::json!({ "missed": missed }))
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        let sent = tokio::select! {
            () = cancel.cancelled() => return,
            sent = tx.send(chunk) => sent,
        };
        if sent.is_err() {
            return;
        }
    }
}

fn sse<T: Serialize>(event: &str, data: &T) -> Bytes {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// The body of an event stream: chunks from [`forward_events`].
struct EventBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

#[cfg(test)]
mod tests {
    use super::query_flag;

    #[test]
    fn query_flags() {
        assert!(!query_flag(None, "now").is_ok_and(|v| v));
        assert!(query_flag(Some("now=true"), "now").is_ok_and(|v| v));
        assert!(query_flag(Some("now"), "now").is_ok_and(|v| v));
        assert!(query_flag(Some("now=0"), "now").is_ok_and(|v| !v));
        assert!(query_flag(Some("later=1"), "now").is_err());
        assert!(query_flag(Some("now=maybe"), "now").is_err());
    }
}
