//! Class-data sharing across a move, with a real JVM: the archive made from
//! the first session (once its first call was answered) is there before the
//! next engine starts, and that engine (the borrower's, home's warm one)
//! starts with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use common::{eventually, AgentProcess};
use futures_util::{SinkExt, StreamExt};
use remoting_protocol::chunk::put_command;
use remoting_protocol::ChunkCodec;
use testkit::{Channel, Peer, TestController};
use tokio_util::codec::Decoder;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const LONG: Duration = Duration::from_secs(60);

/// A controller that makes a first call on every channel (the echo engine
/// answers it) and then holds the channel.
fn calling() -> Peer {
    Peer::script(|mut channel: Channel| async move {
        let mut wire = BytesMut::new();
        put_command(&mut wire, b"first call");
        let chunk = ChunkCodec.decode(&mut wire).unwrap().unwrap();
        if channel.framed.send(chunk).await.is_ok() {
            while let Some(Ok(_)) = channel.framed.next().await {}
        }
    })
}

fn archive_in(cds: &Path) -> Option<PathBuf> {
    std::fs::read_dir(cds).ok().and_then(|dir| {
        dir.filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "jsa"))
    })
}

async fn status(agent: &AgentProcess) -> control::Status {
    let mut client = control::client::connect(&agent.socket()).await.unwrap();
    match client.request(control::Request::Status).await.unwrap() {
        control::Response::Status(status) => status,
        other => panic!("{other:?}"),
    }
}

/// `borrow --now` to `away`'s node `away`; returns once the agent is
/// online there.
async fn borrow_now(agent: &AgentProcess, away: &TestController) {
    let mut client = control::client::connect(&agent.socket()).await.unwrap();
    let answer = client
        .request(common::lending::borrow_now(
            away.url(),
            "away",
            SECRET,
            None,
        ))
        .await;
    assert!(
        matches!(answer, Ok(control::Response::Accepted { .. })),
        "{answer:?}\n{}",
        agent.log()
    );
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let status = status(agent).await;
        if status.phase == control::Phase::Online
            && status.placement == control::Placement::Borrowed
            && status.engine_pid.is_some()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not online at the borrower: {status:?}\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Home (whose channels `home_peer` serves) and a borrower, both serving
/// the echo engine's jar, and an agent online at home that records its
/// classes for an hour unless a first call is answered; with its archive
/// directory.
async fn home_and_away(home_peer: Peer) -> (TestController, TestController, AgentProcess, PathBuf) {
    let jar = common::java_echo_engine_jar();
    let home = TestController::builder()
        .node("home", SECRET)
        .remoting_jar(jar.clone())
        .peer(home_peer)
        .start()
        .await;
    let away = TestController::builder()
        .node("away", SECRET)
        .remoting_jar(jar)
        .peer(Peer::Hold)
        .start()
        .await;
    let url = home.url();
    let agent = AgentProcess::start(
        &["-url", &url, "-name", "home", "--class-sharing-after", "1h"],
        &[("JENKINS_SECRET", SECRET)],
    );
    common::until_online(&home, "home", true, LONG).await;
    let cds = agent.work_dir.join("remoting/engines/cds");
    (home, away, agent, cds)
}

fn cmdline(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).replace('\0', " ")
}

#[tokio::test]
async fn the_archive_of_the_first_session_is_there_before_the_next_engine_starts() {
    // A recording time far beyond the test: only the first call answered
    // brings the archive forward.
    let (home, away, agent, cds) = home_and_away(calling()).await;
    eventually("the archive is made", LONG, || archive_in(&cds).is_some()).await;
    let archive = archive_in(&cds).unwrap();
    let with_archive = format!("-XX:SharedArchiveFile={}", archive.display());

    // The borrower's engine, started by the borrow, maps it.
    borrow_now(&agent, &away).await;
    assert!(away.is_online("away"));
    let borrowed = status(&agent).await;
    let pid = borrowed.engine_pid.expect("an engine serves the borrower");
    assert!(cmdline(pid).contains(&with_archive), "{}", cmdline(pid));
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(maps.contains(&*archive.to_string_lossy()), "not mapped");

    // So does home's warm engine, started while lent.
    let deadline = std::time::Instant::now() + LONG;
    let warm = loop {
        if let Some(warm) = status(&agent).await.warm_engine {
            break warm.pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no warm engine:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(cmdline(warm).contains(&with_archive), "{}", cmdline(warm));
    drop(agent);
    home.shutdown().await;
    away.shutdown().await;
}

/// The first session ends before any call (a move at once): its list is
/// dumped then, while home's warm engine is being started without it; once
/// the archive is there, that engine is started again with it.
#[tokio::test]
async fn a_warm_engine_started_while_the_archive_was_made_is_started_again_with_it() {
    let (home, away, agent, cds) = home_and_away(Peer::Hold).await;
    assert!(archive_in(&cds).is_none(), "no call answered yet");
    borrow_now(&agent, &away).await;
    // The archive is made from the first engine's list, and home's warm
    // engine ends up running with it.
    let deadline = std::time::Instant::now() + LONG;
    let mut pids = Vec::new();
    loop {
        let archive = archive_in(&cds);
        let warm = status(&agent).await.warm_engine.map(|w| w.pid);
        if let Some(pid) = warm {
            if !pids.contains(&pid) {
                pids.push(pid);
            }
            if let Some(archive) = &archive {
                let with_archive = format!("-XX:SharedArchiveFile={}", archive.display());
                if cmdline(pid).contains(&with_archive) {
                    break;
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "home's warm engine ({pids:?}) never started with the archive ({archive:?}):\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(agent);
    home.shutdown().await;
    away.shutdown().await;
}
