//! An async client for the control socket.
//!
//! ```no_run
//! # async fn demo() -> Result<(), control::client::ClientError> {
//! use control::{client, Request, Response};
//! let path = client::default_socket_path().expect("JNLP_AGENT_CONTROL_SOCKET is set");
//! let mut agent = client::connect(&path).await?;
//! if let Response::Status(status) = agent.request(Request::Status).await? {
//!     println!("{:?} / {:?}", status.placement, status.phase);
//! }
//! let mut events = agent.events().await?;
//! while let Some(event) = events.next_event().await? {
//!     println!("{}", control::to_json(&event));
//! }
//! # Ok(())
//! # }
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::frame::{read_line_bounded, write_json_line, FrameError};
use crate::{parse_reply, Envelope, Event, Reply, Request, Response, MAX_LINE, SOCKET_ENV};

/// How long [`Client::request`] waits for a reply. The agent answers at once
/// (orders are queued, not carried out, before the reply), so this only
/// guards against a wedged agent.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to look for an error line after a failed write.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// Why talking to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent at the socket: no such file, connection refused, or no
    /// permission to connect.
    #[error("no agent reachable at {}: {source}", path.display())]
    Unreachable {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The agent refused the request (an `error` reply); nothing changed.
    #[error("{0}")]
    Refused(String),
    /// The agent sent something that is not a valid reply, or closed the
    /// connection without replying.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No reply within [`REPLY_TIMEOUT`].
    #[error("no reply from the agent within {}s", REPLY_TIMEOUT.as_secs())]
    TimedOut,
    /// Reading or writing the connection failed.
    #[error("control connection failed: {0}")]
    Io(#[source] io::Error),
}

/// The socket named by `JNLP_AGENT_CONTROL_SOCKET`, if set and not empty.
pub fn default_socket_path() -> Option<PathBuf> {
    std::env::var_os(SOCKET_ENV)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
}

/// Connects to the agent listening on `path`.
pub async fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
    let path = path.as_ref();
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ClientError::Unreachable {
            path: path.to_owned(),
            source,
        })?;
    let (reader, writer) = stream.into_split();
    Ok(Client {
        reader: BufReader::new(reader),
        writer,
        line: String::new(),
    })
}

/// A connection to the agent: requests and replies in turn.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: String,
}

impl Client {
    /// Sends `request` and waits for its reply; an `error` reply is
    /// [`ClientError::Refused`]. For `events`, use [`Client::events`].
    pub async fn request(&mut self, request: Request) -> Result<Response, ClientError> {
        let sent = self.send(request).await;
        if let Err(err) = sent {
            return Err(self.refusal_or(err).await);
        }
        match tokio::time::timeout(REPLY_TIMEOUT, self.read_reply()).await {
            Ok(reply) => reply?.ok_or_else(closed),
            Err(_) => Err(ClientError::TimedOut),
        }
    }

    /// Sends `events` and turns the connection into a stream of events. The
    /// first event is `subscribed`, carrying the current status.
    pub async fn events(mut self) -> Result<EventStream, ClientError> {
        if let Err(err) = self.send(Request::Events).await {
            return Err(self.refusal_or(err).await);
        }
        Ok(EventStream { client: self })
    }

    /// After a failed write: the agent may have refused the connection and
    /// closed it before reading anything (a peer it does not allow, too many
    /// connections), and its error line says more than the broken pipe.
    async fn refusal_or(&mut self, err: ClientError) -> ClientError {
        match tokio::time::timeout(REFUSAL_WAIT, self.read_reply()).await {
            Ok(Err(refused @ ClientError::Refused(_))) => refused,
            _ => err,
        }
    }

    async fn send(&mut self, request: Request) -> Result<(), ClientError> {
        write_json_line(&mut self.writer, &Envelope::new(request))
            .await
            .map_err(|err| match err {
                FrameError::Io(err) => ClientError::Io(err),
                other => ClientError::Protocol(other.to_string()),
            })
    }

    /// The next reply as a `Result`; `Ok(None)` when the agent closed the
    /// connection.
    async fn read_reply(&mut self) -> Result<Option<Response>, ClientError> {
        match read_line_bounded(&mut self.reader, &mut self.line, MAX_LINE).await {
            Ok(Some(())) => {}
            Ok(None) => return Ok(None),
            Err(FrameError::Io(err)) => return Err(ClientError::Io(err)),
            Err(err) => return Err(ClientError::Protocol(format!("bad reply: {err}"))),
        }
        match parse_reply(&self.line) {
            Ok(Reply::Ok(response)) => Ok(Some(response)),
            Ok(Reply::Error(message)) => Err(ClientError::Refused(message)),
            Err(err) => Err(ClientError::Protocol(format!("bad reply: {err}"))),
        }
    }
}

fn closed() -> ClientError {
    ClientError::Protocol("the agent closed the connection without replying".into())
}

/// The events of an `events` connection.
#[derive(Debug)]
pub struct EventStream {
    client: Client,
}

impl EventStream {
    /// The next event; `Ok(None)` when the agent closed the stream (it is
    /// stopping). An agent that drops a slow reader says so with an error
    /// line: [`ClientError::Refused`].
    pub async fn next_event(&mut self) -> Result<Option<Event>, ClientError> {
        match self.client.read_reply().await? {
            None => Ok(None),
            Some(Response::Event(event)) => Ok(Some(event)),
            Some(other) => Err(ClientError::Protocol(format!(
                "expected an event, got {}",
                crate::to_json(&other)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{EventKind, Status};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    fn socket_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("control-client-{name}-{}.sock", std::process::id()))
    }

    /// A one-connection server that answers each request line with the next
    /// of `replies` (raw lines), then closes.
    async fn serve(name: &str, replies: Vec<&'static str>) -> PathBuf {
        let path = socket_path(name);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            let mut replies = replies.into_iter().peekable();
            while let Some(line) = lines.next_line().await.unwrap() {
                assert!(line.contains("\"version\":1"), "{line}");
                for reply in replies.by_ref() {
                    if reply.is_empty() {
                        break; // next request
                    }
                    w.write_all(reply.as_bytes()).await.unwrap();
                    w.write_all(b"\n").await.unwrap();
                }
                if replies.peek().is_none() {
                    break; // closes the connection
                }
            }
        });
        path
    }

    #[tokio::test]
    async fn replies_map_to_results() {
        let path = serve(
            "results",
            vec![
                r#"{"ok":{"accepted":{"message":"accepted; will leave when idle"}}}"#,
                "",
                r#"{"error":"nope"}"#,
                "",
                "not json",
            ],
        )
        .await;
        let mut client = connect(&path).await.unwrap();
        let when = crate::When::Idle;
        assert_eq!(
            client
                .request(Request::Return { when, wait: None })
                .await
                .unwrap(),
            Response::Accepted {
                message: "accepted; will leave when idle".into()
            }
        );
        assert!(matches!(
            client.request(Request::Status).await,
            Err(ClientError::Refused(m)) if m == "nope"
        ));
        assert!(matches!(
            client.request(Request::Status).await,
            Err(ClientError::Protocol(_))
        ));
        assert!(matches!(
            client.request(Request::Status).await,
            Err(ClientError::Protocol(_) | ClientError::Io(_))
        ));
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn events_stream_until_closed() {
        let event = crate::to_json(&Reply::Ok(Response::Event(Event {
            at_ms: 1,
            kind: EventKind::Subscribed,
            status: Status::default(),
        })))
        .leak();
        let path = serve("events", vec![event, event]).await;
        let mut events = connect(&path).await.unwrap().events().await.unwrap();
        for _ in 0..2 {
            let got = events.next_event().await.unwrap().unwrap();
            assert_eq!(got.kind, EventKind::Subscribed);
        }
        assert!(events.next_event().await.unwrap().is_none());
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable() {
        let err = connect(socket_path("missing")).await.unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    }
}
