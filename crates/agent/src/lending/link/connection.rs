//! The connection: dial, serve one session, and reconnect with backoff
//! ([`Link`], the task that keeps the link).

use std::sync::Arc;
use std::time::{Duration, Instant};

use control::link::{AgentMessage, MAX_MESSAGE};
use control::{Reply, Request, Response};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument as _};

use crate::connect::dial::Io;
use crate::lending::backoff::Backoff;
use crate::lending::orders::{carry_out_borrow, carry_out_return, status_changed, Handler};

use super::config::{echo, Endpoint, LinkConfig, LinkError};
use super::order::{Next, Rotation};
use super::session::{frame, Inbound, Session};

/// A link up this long counts as stable: the next reconnect waits the
/// shortest time again.
pub const STABLE: Duration = Duration::from_secs(60);
/// Requests from the lender carried out at once; more get an error reply.
pub(super) const MAX_IN_FLIGHT: usize = 64;
/// Time for TCP to the lender (or its proxy's answer).
pub(super) const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for each of the TLS handshake and the WebSocket upgrade.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for one message to be written: a lender that does not read is dead.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for a goodbye `close` when the agent stops.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The running link; dropping it (or [`Link::stop`]) ends it.
#[derive(Debug)]
pub struct Link {
    cancel: DropGuard,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Starts keeping the link of `config` for `handler` (the hub), until
    /// `shutdown` is cancelled or the handle dropped.
    pub fn start(
        config: LinkConfig,
        handler: Arc<dyn Handler>,
        shutdown: &CancellationToken,
    ) -> Self {
        let cancel = shutdown.child_token();
        let span = tracing::info_span!("lender_link", lenders = %config.shown());
        let task = tokio::spawn(run(config, handler, cancel.clone()).instrument(span));
        Self {
            cancel: cancel.drop_guard(),
            task,
        }
    }

    /// Ends the link (a `close` to the lender, if it is up) and waits.
    pub async fn stop(self) {
        let Link { cancel, task } = self;
        drop(cancel);
        let _ = task.await;
    }
}

/// How a session ended.
#[derive(Debug)]
pub(super) enum Stop {
    /// The agent is stopping.
    Shutdown,
    /// The link failed or was closed.
    Failed(LinkError),
}

/// Connects, serves, and reconnects with backoff until cancelled. With
/// several lenders, each round tries them in order (see [`Rotation`]).
pub(super) async fn run(config: LinkConfig, handler: Arc<dyn Handler>, cancel: CancellationToken) {
    let mut backoff = Backoff::new(config.reconnect_delay, config.reconnect_max_delay);
    let mut rotation = Rotation::new(config.endpoints.len());
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        let Some(endpoint) = config.endpoints.get(rotation.current()) else {
            error!("no lender URL to link to");
            return;
        };
        let span = tracing::info_span!("connection", attempt, lender = %endpoint.shown);
        let connected = tokio::select! {
            () = cancel.cancelled() => return,
            connected = connect(&config, endpoint).instrument(span.clone()) => connected,
        };
        let (err, next, up) = match connected {
            Err(err) => (err, rotation.passed_over(), None),
            Ok(ws) => {
                let started = Instant::now();
                let (stop, welcomed) = serve(ws, &config, &handler, &cancel)
                    .instrument(span.clone())
                    .await;
                let err = match stop {
                    Stop::Shutdown => {
                        let _enter = span.enter();
                        info!("lender link closed: the agent is stopping");
                        return;
                    }
                    Stop::Failed(err) => err,
                };
                if welcomed {
                    let up = started.elapsed();
                    if up >= STABLE {
                        backoff.reset();
                    }
                    (err, rotation.dropped(), Some(up))
                } else {
                    // Closed before its welcome (a standby, a lender
                    // stepping down): the next one may take the link.
                    (err, rotation.passed_over(), None)
                }
            }
        };
        let _enter = span.enter();
        let delay = match next {
            Next::Try(index) => {
                let next_lender = config
                    .endpoints
                    .get(index)
                    .map(|e| e.shown.as_str())
                    .unwrap_or_default();
                warn!(%err, %next_lender, "passed over a lender; trying the next");
                continue;
            }
            Next::Wait => backoff.next_delay(),
        };
        let retry_in = humantime::format_duration(round_ms(delay)).to_string();
        match up {
            Some(up) => {
                let up_for = humantime::format_duration(Duration::from_secs(up.as_secs()));
                warn!(%err, up_for = %up_for, %retry_in, "lender link down; reconnecting");
            }
            // A standby's 503 is expected while another lender is active.
            None if matches!(err, LinkError::Refused { status, .. } if status != 503) => {
                error!(%err, %retry_in, "cannot open the lender link");
            }
            None => warn!(%err, %retry_in, "cannot open the lender link"),
        }
        drop(_enter);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

pub(super) fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

pub(super) type Ws = WebSocketStream<Box<dyn Io>>;

/// TCP (through the proxy) to `endpoint`, TLS for `wss`, and the upgrade
/// with the token.
pub(super) async fn connect(config: &LinkConfig, endpoint: &Endpoint) -> Result<Ws, LinkError> {
    use crate::connect::websocket::{dial_stream, secure_stream, StreamError, WsTarget};
    // The controller's WebSocket client path: same proxy, same TLS roots.
    let target = WsTarget {
        host: endpoint.host.clone(),
        port: endpoint.port,
        secure: endpoint.secure,
    };
    let tls = Some(&config.tls);
    let tcp = dial_stream(
        &target,
        config.proxy_credentials.as_ref(),
        tls,
        DIAL_TIMEOUT,
    )
    .await
    .map_err(LinkError::Dial)?;
    let io = match tokio::time::timeout(HANDSHAKE_TIMEOUT, secure_stream(&target, tcp, tls)).await {
        Ok(Ok(io)) => io,
        Ok(Err(StreamError::Url(reason))) => {
            return Err(LinkError::Url {
                url: endpoint.shown.clone(),
                reason,
            })
        }
        Ok(Err(StreamError::Tls(err))) => return Err(LinkError::Tls(err)),
        Err(_) => {
            return Err(LinkError::Timeout {
                phase: "the TLS handshake with the lender",
                after: HANDSHAKE_TIMEOUT,
            })
        }
    };

    let mut request = endpoint
        .url
        .as_str()
        .into_client_request()
        .map_err(|err| LinkError::Handshake(err.to_string()))?;
    // Checked by the CLI (visible ASCII); the error must not quote it.
    let mut auth = http::HeaderValue::from_str(&format!("Bearer {}", config.token.expose()))
        .map_err(|_| LinkError::Handshake("the token cannot go in an HTTP header".into()))?;
    auth.set_sensitive(true);
    let headers = request.headers_mut();
    headers.insert(http::header::AUTHORIZATION, auth);
    headers.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!("jnlp-agent/", env!("CARGO_PKG_VERSION"))),
    );
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let upgrade = tokio_tungstenite::client_async_with_config(request, io, Some(ws_config));
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(WsError::Http(response))) => Err(LinkError::Refused {
            status: response.status().as_u16(),
            detail: response
                .body()
                .as_deref()
                .map(|b| echo(&String::from_utf8_lossy(b)))
                .unwrap_or_default(),
            node: config.node.clone(),
        }),
        Ok(Err(WsError::Io(err))) => Err(LinkError::Broken(err.to_string())),
        Ok(Err(err)) => Err(LinkError::Handshake(err.to_string())),
        Err(_) => Err(LinkError::Timeout {
            phase: "the WebSocket upgrade at the lender",
            after: HANDSHAKE_TIMEOUT,
        }),
    }
}

/// Serves one connection: hello, then events, requests and pings until it
/// ends. Returns how, and whether the lender had welcomed the agent.
pub(super) async fn serve(
    ws: Ws,
    config: &LinkConfig,
    handler: &Arc<dyn Handler>,
    cancel: &CancellationToken,
) -> (Stop, bool) {
    let (mut sink, mut stream) = ws.split();
    // Subscribed before the hello's status is read, so no change falls
    // between (an event may repeat what the hello already says).
    let mut events = handler.subscribe();
    let mut changes = handler.status_changes();
    let mut session = Session::new(Instant::now(), config.ping_interval, config.welcome_timeout);
    handler.settle().await;
    let hello = session.hello(
        &config.node,
        &config.labels,
        &config.version,
        handler.status(),
    );
    debug!(node = %config.node, labels = ?config.labels, "hello sent");

    let (replies, mut replied) = mpsc::channel::<(u64, Reply)>(MAX_IN_FLIGHT);
    let in_flight = InFlight {
        tasks: TaskTracker::new(),
        cancel: cancel.child_token(),
        slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        replies,
    };
    let mut status_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + config.status_interval,
        config.status_interval,
    );
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut outgoing: Vec<Message> = frame(&hello).into_iter().collect();
    let stop = 'session: loop {
        for message in outgoing.drain(..) {
            if let Err(stop) = send(&mut sink, message, cancel).await {
                break 'session stop;
            }
        }
        let wake = tokio::time::Instant::from_std(session.deadline());
        tokio::select! {
            // In this order: an event goes out before the reply it led to
            // (both wait when a move ends), so a lender that reads `ok` has
            // read the status that shows it.
            biased;
            () = cancel.cancelled() => break Stop::Shutdown,
            () = tokio::time::sleep_until(wake) => match session.tick(Instant::now()) {
                Ok(true) => outgoing.push(Message::Ping(Default::default())),
                Ok(false) => {}
                Err(err) => break Stop::Failed(err),
            },
            frame_in = stream.next() => {
                let message = match frame_in {
                    None => break Stop::Failed(LinkError::Closed(None)),
                    Some(Err(err)) => break Stop::Failed(LinkError::from_ws(err)),
                    Some(Ok(message)) => message,
                };
                session.heard(Instant::now());
                let text = match message {
                    Message::Text(text) => text,
                    Message::Close(close) => {
                        let reason = close
                            .map(|c| echo(&format!("{} {}", u16::from(c.code), c.reason.as_str())));
                        break Stop::Failed(LinkError::Closed(reason));
                    }
                    Message::Binary(_) => {
                        warn!("ignored a binary message from the lender");
                        continue;
                    }
                    // Pings are answered by tungstenite as it reads on.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                };
                match session.on_text(text.as_str()) {
                    Inbound::Welcome { lender } => {
                        // The connection's span names the lender's URL.
                        info!(
                            lender_name = %echo(&lender),
                            node = %config.node,
                            labels = ?config.labels,
                            "lender link up"
                        );
                    }
                    Inbound::Ignore { reason } => {
                        warn!(reason = %echo(&reason), "ignored a message from the lender");
                    }
                    Inbound::Refuse { id, message } => {
                        warn!(id, %message, "refused a request from the lender");
                        let reply = Reply::Error(message);
                        outgoing.extend(frame(&AgentMessage::Reply { id, reply }));
                    }
                    Inbound::Request { id, request } => {
                        if let Some(reply) = in_flight.start(handler, id, request) {
                            outgoing.extend(frame(&AgentMessage::Reply { id, reply }));
                        }
                    }
                }
            }
            event = events.recv() => match event {
                Ok(event) => {
                    for message in session.on_event(event) {
                        outgoing.extend(frame(&message));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(missed, "the lender link fell behind the events; sending the status");
                    let status = session.on_status(handler.status(), true);
                    outgoing.extend(status.as_ref().and_then(frame));
                }
                // The hub is gone: the agent is stopping.
                Err(broadcast::error::RecvError::Closed) => break Stop::Shutdown,
            },
            // A change that no event announced (an order queued, a
            // deadline moved): the lender sees it now, not at the next tick.
            () = status_changed(&mut changes) => {
                let status = session.on_status(handler.status(), false);
                outgoing.extend(status.as_ref().and_then(frame));
            }
            Some((id, reply)) = replied.recv() => {
                outgoing.extend(frame(&AgentMessage::Reply { id, reply }));
            }
            _ = status_tick.tick() => {
                // A fresh count of build processes: the pool lends only
                // agents that report idle.
                handler.settle().await;
                let status = session.on_status(handler.status(), false);
                outgoing.extend(status.as_ref().and_then(frame));
            }
        }
    };
    in_flight.finish().await;
    if matches!(stop, Stop::Shutdown) {
        let goodbye = Message::Close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "the agent is stopping".into(),
        }));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(goodbye)).await;
    }
    (stop, session.welcomed())
}

/// The requests of one connection being carried out, each in its own
/// task so that none waits behind another (a `borrow` with `wait` takes as
/// long as the move).
pub(super) struct InFlight {
    pub(super) tasks: TaskTracker,
    /// Cancelled when the connection ends: a reply has nowhere to go then
    /// (the order itself stays queued; the next hello tells the outcome).
    pub(super) cancel: CancellationToken,
    pub(super) slots: Arc<Semaphore>,
    pub(super) replies: mpsc::Sender<(u64, Reply)>,
}

impl InFlight {
    /// Starts carrying out `request` (admitted: see [`admit`]); its reply
    /// comes through `replies`. `status`, and a request beyond
    /// [`MAX_IN_FLIGHT`], are answered at once.
    pub(super) fn start(
        &self,
        handler: &Arc<dyn Handler>,
        id: u64,
        request: Request,
    ) -> Option<Reply> {
        if matches!(request, Request::Status) {
            return Some(Reply::Ok(Response::Status(handler.status())));
        }
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            return Some(Reply::error(format!(
                "too many requests in flight (at most {MAX_IN_FLIGHT}); try again later"
            )));
        };
        let handler = Arc::clone(handler);
        let replies = self.replies.clone();
        let cancel = self.cancel.clone();
        let work = async move {
            match request {
                // The lender is never a build on this agent.
                Request::Borrow(borrow) => carry_out_borrow(&*handler, borrow, false).await,
                Request::Return { when, wait } => carry_out_return(&*handler, when, wait).await,
                Request::Status => Reply::Ok(Response::Status(handler.status())),
                Request::Events => Reply::error("events is not served over the lender link"),
            }
        };
        self.tasks.spawn(
            async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    reply = work => {
                        let _ = replies.send((id, reply)).await;
                    }
                }
                drop(slot);
            }
            .instrument(tracing::info_span!("lender_request", id)),
        );
        None
    }

    /// Cancels what is still running and waits for it.
    pub(super) async fn finish(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Writes one message, within [`WRITE_TIMEOUT`].
pub(super) async fn send(
    sink: &mut futures_util::stream::SplitSink<Ws, Message>,
    message: Message,
    cancel: &CancellationToken,
) -> Result<(), Stop> {
    tokio::select! {
        () = cancel.cancelled() => Err(Stop::Shutdown),
        sent = tokio::time::timeout(WRITE_TIMEOUT, sink.send(message)) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(Stop::Failed(LinkError::from_ws(err))),
            Err(_) => Err(Stop::Failed(LinkError::Timeout {
                phase: "writing to the lender",
                after: WRITE_TIMEOUT,
            })),
        },
    }
}
