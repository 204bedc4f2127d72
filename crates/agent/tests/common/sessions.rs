//! Controller-side scripts the end-to-end tests play over either
//! transport, with their verdict sent back to the test.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use remoting_protocol::Chunk;
use testkit::fixtures::{self, Direction, Layer};
use testkit::{Channel, Peer};
use tokio::sync::oneshot;
use tokio_util::codec::Decoder;

/// A script peer whose verdict comes back through a channel.
pub fn scripted<F, Fut>(script: F) -> (Peer, oneshot::Receiver<Result<(), String>>)
where
    F: Fn(Channel) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let script = Arc::new(script);
    let peer = Peer::script(move |channel| {
        let tx = tx.clone();
        let script = script.clone();
        async move {
            let verdict = script(channel).await;
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(verdict);
            }
        }
    });
    (peer, rx)
}

/// One recorded chunk, decoded.
pub fn chunk(bytes: &[u8]) -> Chunk {
    let mut buf = BytesMut::from(bytes);
    remoting_protocol::ChunkCodec
        .decode(&mut buf)
        .unwrap()
        .unwrap()
}

/// The controller's side of `session-accepted.jsonl`: sends the recorded
/// controller chunks and expects exactly the recorded agent chunks (the
/// fake engine replaying the agent's side).
pub async fn recorded_session(mut channel: Channel) -> Result<(), String> {
    let records = fixtures::load("session-accepted.jsonl");
    for record in records.iter().filter(|r| r.layer == Layer::Chunk) {
        let expected = chunk(&record.bytes);
        match record.dir {
            Direction::ControllerToAgent => channel
                .framed
                .send(expected)
                .await
                .map_err(|e| e.to_string())?,
            Direction::AgentToController => {
                let got = channel
                    .framed
                    .next()
                    .await
                    .ok_or(format!("seq {}: channel ended", record.seq))?
                    .map_err(|e| e.to_string())?;
                if got != expected {
                    return Err(format!("seq {}: agent sent a different chunk", record.seq));
                }
            }
        }
    }
    Ok(())
}

/// Sends `total` bytes in 8 KiB chunks (a pattern per chunk) to an echoing
/// engine while checking every chunk that comes back.
pub async fn each_way(channel: Channel, total: usize) -> Result<(), String> {
    const CHUNK: usize = 8192;
    let (mut tx, mut rx) = channel.framed.split();
    let writer = tokio::spawn(async move {
        let payloads: Vec<Bytes> = (0..251u8).map(|b| Bytes::from(vec![b; CHUNK])).collect();
        for i in 0..total / CHUNK {
            let chunk = Chunk {
                last: true,
                payload: payloads[i % 251].clone(),
            };
            tx.feed(chunk).await.map_err(|e| e.to_string())?;
        }
        tx.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(tx)
    });
    let mut received = 0;
    let mut index = 0;
    while received < total {
        let chunk = rx
            .next()
            .await
            .ok_or("channel ended early")?
            .map_err(|e| e.to_string())?;
        let want = (index % 251) as u8;
        if chunk.payload.len() != CHUNK || chunk.payload.iter().any(|&b| b != want) {
            return Err(format!("chunk {index} corrupted"));
        }
        received += chunk.payload.len();
        index += 1;
    }
    drop(writer.await.map_err(|e| e.to_string())??);
    Ok(())
}
