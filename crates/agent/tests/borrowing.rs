//! Lending: two test controllers as lender and borrower, the agent binary
//! with the fake engine, driven through the control socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::lending::{borrower, home, BORROWER_SECRET, HOME_SECRET};
use common::{
    accepted, alive, closed, closed_by_command, fake_engine, refused, temp_dir, until_online,
    AgentProcess,
};
use control::{
    BorrowRequest, EventKind, Phase, Placement, Request, Response, ReturnReason, Status, Target,
    When,
};
use futures_util::{SinkExt, StreamExt};
use remoting_protocol::chunk::put_command;
use remoting_protocol::ChunkCodec;
use testkit::{Channel, ControllerEvent, Peer, TestController};
use tokio_util::codec::Decoder;

const LONG: Duration = Duration::from_secs(30);

fn start_agent(lender: &TestController, extra: &[&str]) -> AgentProcess {
    start_agent_in(temp_dir("work"), lender, extra)
}

fn start_agent_in(work: PathBuf, lender: &TestController, extra: &[&str]) -> AgentProcess {
    let url = lender.url();
    let cmd = format!("{} echo", fake_engine().display());
    let mut args = vec![
        "-url",
        url.as_str(),
        "-name",
        "mac-01",
        "--engine-command",
        cmd.as_str(),
    ];
    args.extend_from_slice(extra);
    AgentProcess::start_in(work, &args, &[("JENKINS_SECRET", HOME_SECRET)])
}

async fn request(
    socket: &Path,
    request: Request,
) -> Result<Response, control::client::ClientError> {
    let mut client = control::client::connect(socket).await?;
    client.request(request).await
}

async fn status(socket: &Path) -> Status {
    match request(socket, Request::Status).await.unwrap() {
        Response::Status(status) => status,
        other => panic!("{other:?}"),
    }
}

fn borrow_request(
    borrower: &TestController,
    lease: Option<Duration>,
    idle_return: Option<Duration>,
    when: When,
) -> BorrowRequest {
    BorrowRequest {
        target: Target::Url {
            url: borrower.url(),
        },
        name: "guest-mac".into(),
        secret: Some(BORROWER_SECRET.into()),
        secret_file: None,
        lease,
        idle_return,
        when,
        wait: None,
        transport: None,
    }
}

/// An `events` stream on the agent's socket.
async fn subscribe(socket: &Path) -> control::client::EventStream {
    control::client::connect(socket)
        .await
        .unwrap()
        .events()
        .await
        .unwrap()
}

/// Asks the agent to go to `borrower`; the request must be accepted.
async fn lend(
    socket: &Path,
    borrower: &TestController,
    lease: Option<Duration>,
    idle_return: Option<Duration>,
    when: When,
) {
    request(
        socket,
        Request::Borrow(borrow_request(borrower, lease, idle_return, when)),
    )
    .await
    .unwrap();
}

/// Runs `jnlp-agent ctl ARGS` against the agent's socket.
async fn ctl(agent: &AgentProcess, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_jnlp-agent"))
        .arg("ctl")
        .arg("--socket")
        .arg(agent.socket())
        .args(args)
        .output()
        .await
        .unwrap()
}

/// `jnlp-agent ctl borrow` to `borrower`'s guest node, the secret in a file,
/// with `extra` options.
async fn ctl_borrow(
    agent: &AgentProcess,
    borrower: &TestController,
    extra: &[&str],
) -> std::process::Output {
    let secret_file = temp_dir("secret").join("borrower-secret");
    std::fs::write(&secret_file, format!("{BORROWER_SECRET}\n")).unwrap();
    let url = borrower.url();
    let mut args = vec![
        "borrow",
        "--url",
        &url,
        "--name",
        "guest-mac",
        "--secret-file",
        secret_file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ctl(agent, &args).await
}

async fn wait_status(socket: &Path, what: &str, cond: impl Fn(&Status) -> bool) -> Status {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        if let Ok(Response::Status(s)) = request(socket, Request::Status).await {
            if cond(&s) {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: last status {s:?}"
            );
        } else {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: control socket unreachable"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn engines(agent: &AgentProcess) -> usize {
    std::fs::read_dir(agent.work_dir.join("remoting/engines"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".jar"))
            })
            .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn borrow_moves_the_agent_and_return_brings_it_back() {
    let lender = home(Peer::Hold).await;
    let borrower = borrower(Peer::Hold).await;
    let agent = start_agent(&lender, &[]);
    lender.wait_for(|log| accepted(log) == 1, LONG).await;
    let socket = agent.socket();
    let home = wait_status(&socket, "online at home", |s| s.phase == Phase::Online).await;
    assert_eq!(home.placement, Placement::Home);
    assert_eq!(home.controller_url.as_deref(), Some(lender.url().as_str()));
    assert_eq!(home.node_name.as_deref(), Some("mac-01"));
    assert!(home.engine_pid.is_some());
    assert_eq!(
        home.remoting_version.as_deref(),
        Some("3301.v4363ddcca_4e7")
    );
    assert!(!home.busy.busy, "{home:?}");

    // Borrow through the CLI, the secret in a file.
    let out = ctl_borrow(&agent, &borrower, &["--lease", "1h"]).await;
    assert!(out.status.success(), "{out:?}");
    borrower.wait_for(|log| accepted(log) == 1, LONG).await;
    lender.wait_for(|log| closed(log) == 1, LONG).await;
    assert!(!lender.is_online("mac-01") && borrower.is_online("guest-mac"));
    let away = wait_status(&socket, "online at the borrower", |s| {
        s.phase == Phase::Online && s.placement == Placement::Borrowed
    })
    .await;
    assert_eq!(
        away.controller_url.as_deref(),
        Some(borrower.url().as_str())
    );
    assert_eq!(away.node_name.as_deref(), Some("guest-mac"));
    assert_eq!(away.home_url.as_deref(), Some(lender.url().as_str()));
    assert!(away
        .lease_deadline_ms
        .is_some_and(|d| d > away.since_ms + 3_500_000));
    assert_ne!(away.engine_pid, home.engine_pid, "a fresh engine");
    assert_eq!(
        away.remoting_version.as_deref(),
        Some("3355.v388858a_47b_33"),
        "the borrower's engine"
    );
    assert_eq!(
        engines(&agent),
        2,
        "the borrower's own engine jar was fetched"
    );
    let state = agent.work_dir.join("remoting/state.json");
    let state_text = std::fs::read_to_string(&state).unwrap();
    assert!(state_text.contains(&borrower.url()));
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A second borrow elsewhere is refused and names the borrower; the same one is fine.
    let other = Target::Url {
        url: "http://127.0.0.1:9/".into(),
    };
    let mut second = borrow_request(&borrower, None, None, When::Now);
    second.target = other;
    let refused = request(&socket, Request::Borrow(second)).await.unwrap_err();
    assert!(refused.to_string().contains(&borrower.url()), "{refused}");
    assert!(request(
        &socket,
        Request::Borrow(borrow_request(&borrower, None, None, When::Now))
    )
    .await
    .is_ok());

    let out = ctl(&agent, &["return"]).await;
    assert!(out.status.success(), "{out:?}");
    lender.wait_for(|log| accepted(log) == 2, LONG).await;
    borrower.wait_for(|log| closed(log) == 1, LONG).await;
    let back = wait_status(&socket, "home again", |s| {
        s.phase == Phase::Online && s.placement == Placement::Home
    })
    .await;
    assert_eq!(back.controller_url.as_deref(), Some(lender.url().as_str()));
    assert!(back.lease_deadline_ms.is_none());
    let out = ctl(&agent, &["status", "--json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["placement"], "home");
    assert_eq!(json["phase"], "online");
    assert!(!agent.log().contains(BORROWER_SECRET) && !agent.log().contains(HOME_SECRET));
    lender.shutdown().await;
    borrower.shutdown().await;
}

#[tokio::test]
async fn lease_expiry_and_idle_return_bring_it_home() {
    let lender = home(Peer::Hold).await;
    let borrower = borrower(Peer::Hold).await;
    let agent = start_agent(&lender, &[]);
    let socket = agent.socket();
    wait_status(&socket, "online", |s| s.phase == Phase::Online).await;
    let mut events = subscribe(&socket).await;

    lend(
        &socket,
        &borrower,
        Some(Duration::from_secs(2)),
        None,
        When::Idle,
    )
    .await;
    borrower.wait_for(|log| accepted(log) == 1, LONG).await;
    lender.wait_for(|log| accepted(log) == 2, LONG).await;
    let reason = returned_home(&mut events).await;
    assert_eq!(reason, ReturnReason::LeaseExpired);

    lend(
        &socket,
        &borrower,
        None,
        Some(Duration::from_secs(1)),
        When::Idle,
    )
    .await;
    borrower.wait_for(|log| accepted(log) == 2, LONG).await;
    lender.wait_for(|log| accepted(log) == 3, LONG).await;
    assert_eq!(returned_home(&mut events).await, ReturnReason::Idle);
    lender.shutdown().await;
    borrower.shutdown().await;
}

/// The first event, within [`LONG`], that `pick` turns into a value.
async fn next_event<T>(
    events: &mut control::client::EventStream,
    mut pick: impl FnMut(control::Event) -> Option<T>,
) -> T {
    loop {
        let event = tokio::time::timeout(LONG, events.next_event())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(found) = pick(event) {
            return found;
        }
    }
}

async fn returned_home(events: &mut control::client::EventStream) -> ReturnReason {
    next_event(events, |event| match event.kind {
        EventKind::ReturnedHome { reason } => Some(reason),
        _ => None,
    })
    .await
}

/// Asks the agent to go home at once; the request must be accepted.
async fn return_now(socket: &Path) {
    request(
        socket,
        Request::Return {
            when: When::Now,
            wait: None,
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_vanished_borrower_sends_it_home() {
    let lender = home(Peer::Hold).await;
    let borrower = borrower(Peer::Hold).await;
    let agent = start_agent(&lender, &["--borrow-give-up", "1s"]);
    let socket = agent.socket();
    wait_status(&socket, "online", |s| s.phase == Phase::Online).await;
    lend(&socket, &borrower, None, None, When::Now).await;
    borrower.wait_for(|log| accepted(log) == 1, LONG).await;
    borrower.shutdown().await;
    lender.wait_for(|log| accepted(log) == 2, LONG).await;
    let s = wait_status(&socket, "home", |s| {
        s.placement == Placement::Home && s.phase == Phase::Online
    })
    .await;
    assert!(s.last_error.is_none(), "online clears the error: {s:?}");
    lender.shutdown().await;
}

/// When a controller side made its first call, and when it got the answer.
type CallTimes = Arc<std::sync::Mutex<(Option<std::time::Instant>, Option<std::time::Instant>)>>;

/// A controller side that, like Jenkins, calls the agent once the channel
/// is up, here `after` a while (the fake engine echoes the command back:
/// the answer), records when it called and when the answer arrived, then
/// holds the channel.
fn calling(after: Duration, times: CallTimes) -> Peer {
    Peer::script(move |mut channel: Channel| {
        let times = times.clone();
        async move {
            tokio::time::sleep(after).await;
            times.lock().unwrap().0 = Some(std::time::Instant::now());
            let mut wire = BytesMut::new();
            put_command(&mut wire, b"first call");
            let chunk = ChunkCodec.decode(&mut wire).unwrap().unwrap();
            channel.framed.send(chunk).await.unwrap();
            if let Some(Ok(_)) = channel.framed.next().await {
                times.lock().unwrap().1 = Some(std::time::Instant::now());
            }
            while let Some(Ok(_)) = channel.framed.next().await {}
        }
    })
}

/// Sends one command whose payload makes the fake engine start `command`.
/// A controller side that starts `build` on the agent's engine as soon as
/// the agent connects (each time), then holds the channel.
fn running(build: String) -> Peer {
    Peer::script(move |mut channel: Channel| {
        let build = build.clone();
        async move {
            start_build(&mut channel, &build).await;
            while let Some(Ok(_)) = channel.framed.next().await {}
        }
    })
}

async fn start_build(channel: &mut Channel, command: &str) {
    let mut wire = BytesMut::new();
    put_command(&mut wire, format!("fake-engine:spawn {command}").as_bytes());
    let chunk = ChunkCodec.decode(&mut wire).unwrap().unwrap();
    channel.framed.send(chunk).await.unwrap();
}

#[tokio::test]
async fn a_busy_agent_leaves_only_after_the_build_unless_now() {
    let dir = temp_dir("builds");
    let started = dir.join("build-started");
    let marker = dir.join("build-done");
    let build = format!(
        "touch {}; sleep 2; touch {}",
        started.display(),
        marker.display()
    );
    let lender = home(running(build)).await;
    // The borrower starts a long build that `now` must cut, and writes its pid.
    let pid_file = dir.join("long-build.pid");
    let long = format!("echo $$ > {}; exec sleep 60", pid_file.display());
    let borrower = borrower(running(long)).await;
    let agent = start_agent(&lender, &[]);
    let socket = agent.socket();
    common::eventually("the build started", LONG, || started.exists()).await;
    wait_status(&socket, "the build runs", |s| {
        s.busy.build_processes > 0 && s.busy.busy
    })
    .await;

    lend(&socket, &borrower, None, None, When::Idle).await;
    let waiting = status(&socket).await;
    assert!(waiting.pending.is_some(), "{waiting:?}");
    // While the build runs the agent stays at the lender.
    while !marker.exists() {
        assert!(
            lender.is_online("mac-01"),
            "left the lender in the middle of a build"
        );
        assert_eq!(accepted(&borrower.log()), 0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    borrower.wait_for(|log| accepted(log) == 1, LONG).await;

    // At the borrower a long build starts; `return --now` does not wait for it,
    // and it is gone before the agent is back at the lender.
    let pid = common::read_pids(&pid_file, LONG).await[0];
    assert!(alive(pid));
    let lender_accepts = accepted(&lender.log());
    return_now(&socket).await;
    lender
        .wait_for(|log| accepted(log) == lender_accepts + 1, LONG)
        .await;
    until_online(&borrower, "guest-mac", false, LONG).await;
    common::eventually("the borrower's build is ended by the move", LONG, || {
        !alive(pid)
    })
    .await;
    lender.shutdown().await;
    borrower.shutdown().await;
}

#[tokio::test]
async fn killed_while_borrowed_it_resumes_at_the_borrower() {
    let lender = home(Peer::Hold).await;
    let borrower = borrower(Peer::Hold).await;
    let work = temp_dir("work");
    let agent = start_agent_in(work.clone(), &lender, &[]);
    let socket = agent.socket();
    wait_status(&socket, "online", |s| s.phase == Phase::Online).await;
    lend(
        &socket,
        &borrower,
        Some(Duration::from_secs(3600)),
        None,
        When::Now,
    )
    .await;
    // Moved (and recorded in the state file) once online there.
    wait_status(&socket, "at the borrower", |s| {
        s.phase == Phase::Online && s.placement == Placement::Borrowed
    })
    .await;
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    drop(agent);
    borrower.wait_for(|log| closed(log) == 1, LONG).await;

    let restarted = start_agent_in(work, &lender, &[]);
    borrower.wait_for(|log| accepted(log) == 2, LONG).await;
    let s = wait_status(&restarted.socket(), "resumed", |s| s.phase == Phase::Online).await;
    assert_eq!(s.placement, Placement::Borrowed);
    assert_eq!(accepted(&lender.log()), 1, "it did not go home first");
    lender.shutdown().await;
    borrower.shutdown().await;
}

#[tokio::test]
async fn bad_control_requests_get_errors_and_change_nothing() {
    let lender = home(Peer::Hold).await;
    let agent = start_agent(&lender, &[]);
    let socket = agent.socket();
    let before = wait_status(&socket, "online", |s| s.phase == Phase::Online).await;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    for line in [
        "not json\n".to_owned(),
        "{\"version\":1,\"command\":\"fly\"}\n".to_owned(),
        "{\"version\":99,\"command\":\"status\"}\n".to_owned(),
        "{\"version\":1,\"command\":\"borrow\",\"target\":{\"url\":\"http://x/\"},\"name\":\"n\"}\n".to_owned(),
        format!("{{\"version\":1,\"command\":\"status\",\"pad\":\"{}\"}}\n", "x".repeat(100_000)),
    ] {
        let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let (read, mut write) = stream.into_split();
        let _ = write.write_all(line.as_bytes()).await;
        let mut reply = String::new();
        BufReader::new(read).read_line(&mut reply).await.unwrap();
        assert!(reply.contains("\"error\""), "{line:.60}: {reply}");
    }
    let refused = request(
        &socket,
        Request::Return {
            when: When::Now,
            wait: None,
        },
    )
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("home"), "{refused}");
    let after = status(&socket).await;
    assert_eq!(
        (after.placement, after.phase, after.pending.is_none()),
        (before.placement, before.phase, true)
    );
    assert_eq!(accepted(&lender.log()), 1);
    let _ = Arc::new(());
    lender.shutdown().await;
}

/// The example job scripts, run as a build step would run them: with the
/// control socket from the engine's environment and `jnlp-agent` on PATH.
#[tokio::test]
async fn the_example_jobs_lend_and_return_the_agent() {
    let lender = home(Peer::Hold).await;
    let borrower = borrower(Peer::Hold).await;
    let agent = start_agent(&lender, &[]);
    let socket = agent.socket();
    let home = wait_status(&socket, "online", |s| s.phase == Phase::Online).await;

    // The engine, and so every build step, knows where the socket is.
    let environ = std::fs::read(format!("/proc/{}/environ", home.engine_pid.unwrap())).unwrap();
    let expected = format!("JNLP_AGENT_CONTROL_SOCKET={}", socket.display());
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|var| var == expected.as_bytes()),
        "the engine's environment lacks {expected}"
    );

    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_jnlp-agent"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let secret_file = temp_dir("secret").join("guest-secret");
    std::fs::write(&secret_file, BORROWER_SECRET).unwrap();
    let run = |script: &str, args: &[&str]| {
        let mut command = tokio::process::Command::new(examples.join(script));
        command
            .args(args)
            .env("PATH", &path)
            .env("JNLP_AGENT_CONTROL_SOCKET", &socket);
        command.output()
    };
    let out = run(
        "lend-this-agent.sh",
        &[
            &borrower.url(),
            "guest-mac",
            secret_file.to_str().unwrap(),
            "1h",
        ],
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    borrower.wait_for(|log| accepted(log) == 1, LONG).await;
    let away = wait_status(&socket, "lent", |s| {
        s.phase == Phase::Online && s.placement == Placement::Borrowed
    })
    .await;
    let idle_deadline = away
        .idle_deadline_ms
        .expect("--idle-return 30m is in force");
    assert!(idle_deadline > away.since_ms + 29 * 60 * 1000, "{away:?}");

    let out = run("return-idle-agent.sh", &[]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    lender.wait_for(|log| accepted(log) == 2, LONG).await;
    wait_status(&socket, "home", |s| {
        s.phase == Phase::Online && s.placement == Placement::Home
    })
    .await;
    let out = run("return-idle-agent.sh", &[]).await.unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("at home"),
        "{out:?}"
    );
    lender.shutdown().await;
    borrower.shutdown().await;
}

/// A state file left by an agent whose lease ran out while it was down:
/// the agent starts at home and records that.
#[tokio::test]
async fn an_expired_lease_found_at_start_sends_it_home() {
    let lender = home(Peer::Hold).await;
    let borrower = borrower(Peer::Hold).await;
    let work = temp_dir("work");
    std::fs::create_dir_all(work.join("remoting")).unwrap();
    let state = work.join("remoting/state.json");
    let saved = serde_json::json!({
        "version": 1,
        "borrowed": {
            "request": {
                "target": {"url": borrower.url()},
                "name": "guest-mac",
                "secret": BORROWER_SECRET,
                "lease": "1s",
                "when": "idle"
            },
            "started_ms": 1_000
        }
    });
    std::fs::write(&state, saved.to_string()).unwrap();
    let agent = start_agent_in(work, &lender, &[]);
    lender.wait_for(|log| accepted(log) == 1, LONG).await;
    let s = wait_status(&agent.socket(), "home", |s| s.phase == Phase::Online).await;
    assert_eq!(s.placement, Placement::Home);
    assert_eq!(accepted(&borrower.log()), 0);
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(
        !text.contains(BORROWER_SECRET),
        "the expired borrow was cleared: {text}"
    );
    lender.shutdown().await;
    borrower.shutdown().await;
}

/// A lease that expires while a build runs waits for it, but only for the
/// grace period; then the agent goes home anyway, says so, and ends the build.
#[tokio::test]
async fn an_expired_lease_outlasting_its_grace_goes_home_anyway() {
    let dir = temp_dir("builds");
    let pid_file = dir.join("build.pid");
    let long = format!("echo $$ > {}; exec sleep 60", pid_file.display());
    let lender = home(Peer::Hold).await;
    let borrower = borrower(running(long)).await;
    let agent = start_agent(&lender, &["--lease-grace", "1s"]);
    let socket = agent.socket();
    wait_status(&socket, "online", |s| s.phase == Phase::Online).await;
    let mut events = subscribe(&socket).await;
    lend(
        &socket,
        &borrower,
        Some(Duration::from_secs(1)),
        None,
        When::Now,
    )
    .await;
    let pid = common::read_pids(&pid_file, LONG).await[0];
    assert_eq!(returned_home(&mut events).await, ReturnReason::LeaseExpired);
    assert!(!alive(pid), "the build outlived the move");
    agent.wait_log("leaving anyway", 1, LONG).await;
    lender.wait_for(|log| accepted(log) == 2, LONG).await;
    lender.shutdown().await;
    borrower.shutdown().await;
}

/// Five round trips: each time the controller the agent left shows the node
/// offline within a second (its channel ended by a `Channel$CloseCommand`),
/// and no connection anywhere is refused.
#[tokio::test]
async fn five_round_trips_leave_no_ghost_behind() {
    let lender = home(Peer::Hold).await;
    let borrower = borrower(Peer::Hold).await;
    let agent = start_agent(&lender, &[]);
    let socket = agent.socket();
    wait_status(&socket, "online", |s| s.phase == Phase::Online).await;
    let mut away = Vec::new();
    let mut home = Vec::new();
    // Make before break: online at the target first, then the place left
    // must show the node offline within a second.
    for round in 1..=5 {
        lend(&socket, &borrower, None, None, When::Now).await;
        until_online(&borrower, "guest-mac", true, LONG).await;
        away.push(until_online(&lender, "mac-01", false, Duration::from_secs(1)).await);
        assert_eq!(accepted(&borrower.log()), round);
        wait_status(&socket, "moved to the borrower", |s| {
            s.phase == Phase::Online && s.placement == Placement::Borrowed
        })
        .await;
        return_now(&socket).await;
        lender
            .wait_for(|log| accepted(log) == round + 1, LONG)
            .await;
        until_online(&lender, "mac-01", true, LONG).await;
        home.push(until_online(&borrower, "guest-mac", false, Duration::from_secs(1)).await);
        wait_status(&socket, "home again", |s| {
            s.phase == Phase::Online && s.placement == Placement::Home
        })
        .await;
    }
    eprintln!("borrow --now: online at the borrower -> offline at the lender: {away:?}");
    eprintln!("return --now: online at home -> offline at the borrower: {home:?}");
    let (lender_log, borrower_log) = (lender.log(), borrower.log());
    assert_eq!(refused(&lender_log) + refused(&borrower_log), 0);
    assert_eq!(closed_by_command(&lender_log), 5, "{lender_log:#?}");
    assert_eq!(closed_by_command(&borrower_log), 5, "{borrower_log:#?}");
    lender.shutdown().await;
    borrower.shutdown().await;
}

/// A build that starts while a move is being decided is served, and the
/// move happens after it. The engine is held in the middle of a command, so
/// the agent, having decided to leave, must wait before its close can go
/// out; the controller sends a request in that window.
#[tokio::test]
async fn work_that_arrives_while_leaving_is_served_before_the_move() {
    use std::sync::Mutex;
    use tokio::sync::mpsc;
    let (go_tx, go_rx) = mpsc::unbounded_channel::<&'static str>();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<String>();
    let go_rx = Arc::new(tokio::sync::Mutex::new(go_rx));
    let seen_tx = Arc::new(Mutex::new(seen_tx));
    let chunk = |payload: &[u8]| {
        let mut wire = BytesMut::new();
        put_command(&mut wire, payload);
        ChunkCodec.decode(&mut wire).unwrap().unwrap()
    };
    let lender = home(Peer::script(move |mut channel: Channel| {
        let (go_rx, seen_tx) = (go_rx.clone(), seen_tx.clone());
        async move {
            let seen = |what: String| {
                let _ = seen_tx.lock().unwrap().send(what);
            };
            let mut go = go_rx.lock().await;
            // The engine starts a command and stays in its middle.
            channel
                .framed
                .send(chunk(testkit::fake_engine::HOLD))
                .await
                .unwrap();
            loop {
                tokio::select! {
                    order = go.recv() => match order {
                        Some("request") => {
                            let mut request = b"\xac\xed\x00\x05\x73\x72\x00\x1bhudson.remoting.UserRequest".to_vec();
                            request.resize(300, 1);
                            channel.framed.send(chunk(&request)).await.unwrap();
                            seen("request sent".into());
                        }
                        Some("release") => {
                            channel.framed.send(chunk(testkit::fake_engine::RELEASE)).await.unwrap();
                        }
                        _ => {}
                    },
                    item = channel.framed.next() => match item {
                        Some(Ok(got)) => {
                            let class = remoting_protocol::command::class_name(&got.payload);
                            if class == Some("hudson.remoting.Response") {
                                seen("response".into());
                            }
                        }
                        _ => {
                            seen("channel ended".into());
                            return;
                        }
                    },
                }
            }
        }
    }))
    .await;
    let borrower = borrower(Peer::Hold).await;
    let agent = start_agent(&lender, &["--quiet-period", "300ms"]);
    let socket = agent.socket();
    wait_status(&socket, "online", |s| s.phase == Phase::Online).await;
    let mut events = subscribe(&socket).await;

    lend(&socket, &borrower, None, None, When::Idle).await;
    // Quiet for 300 ms, the agent decides to leave, but the engine is in
    // the middle of a command: the close waits.
    wait_status(&socket, "deciding to leave", |s| s.phase == Phase::Leaving).await;
    go_tx.send("request").unwrap();
    assert_eq!(seen_rx.recv().await.as_deref(), Some("request sent"));
    next_event(&mut events, |event| {
        (event.kind == EventKind::MoveDeferred).then_some(())
    })
    .await;
    agent
        .wait_log(
            "the controller sent work while the agent was about to leave",
            1,
            LONG,
        )
        .await;
    assert!(lender.is_online("mac-01"));
    // The borrower's channel, made ahead of the move, was closed again.
    until_online(&borrower, "guest-mac", false, LONG).await;
    assert_eq!(
        closed_by_command(&borrower.log()),
        1,
        "{:#?}",
        borrower.log()
    );
    // The engine finishes its command and answers the request; then, quiet
    // again, the agent moves.
    go_tx.send("release").unwrap();
    assert_eq!(seen_rx.recv().await.as_deref(), Some("response"));
    assert_eq!(seen_rx.recv().await.as_deref(), Some("channel ended"));
    until_online(&borrower, "guest-mac", true, LONG).await;
    let lender_log = lender.log();
    assert_eq!(closed_by_command(&lender_log), 1, "{lender_log:#?}");
    lender.shutdown().await;
    borrower.shutdown().await;
}

/// A plain web server that is not Jenkins: every request gets 200 "hello".
async fn not_jenkins() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                )
                .await;
        }
    });
    url
}

/// The next `borrow_failed` event.
async fn borrow_failure(events: &mut control::client::EventStream) -> (control::MovePhase, String) {
    next_event(events, |event| match event.kind {
        EventKind::BorrowFailed { phase, reason } => Some((phase, reason)),
        _ => None,
    })
    .await
}

/// A borrow that cannot work fails with its reason, and the agent never
/// leaves home, as the home controller sees it.
#[tokio::test]
async fn a_borrow_that_cannot_work_fails_and_the_agent_stays_home() {
    use control::MovePhase;
    let lender = home(Peer::Hold).await;
    let borrower = borrower(Peer::Hold).await;
    let agent = start_agent(&lender, &["--quiet-period", "200ms"]);
    let socket = agent.socket();
    wait_status(&socket, "online", |s| s.phase == Phase::Online).await;
    let mut events = subscribe(&socket).await;
    let web = not_jenkins().await;
    let secrets = temp_dir("secrets");
    let cases = [
        (
            "wrong secret",
            borrower.url(),
            "guest-mac",
            "0000",
            MovePhase::Handshake,
            "Authorization failure",
        ),
        (
            "unknown node",
            borrower.url(),
            "nobody-here",
            BORROWER_SECRET,
            MovePhase::Handshake,
            "Unknown client name",
        ),
        (
            "unreachable",
            "http://127.0.0.1:1/".to_owned(),
            "guest-mac",
            BORROWER_SECRET,
            MovePhase::Resolve,
            "127.0.0.1:1",
        ),
        (
            "not Jenkins",
            web,
            "guest-mac",
            BORROWER_SECRET,
            MovePhase::Resolve,
            "Jenkins",
        ),
    ];
    for (case, url, node, secret, phase, says) in cases {
        let file = secrets.join(case.replace(' ', "-"));
        std::fs::write(&file, secret).unwrap();
        let ctl = tokio::spawn({
            let socket = socket.clone();
            let file = file.clone();
            async move {
                tokio::process::Command::new(env!("CARGO_BIN_EXE_jnlp-agent"))
                    .args(["ctl", "--socket"])
                    .arg(&socket)
                    .args(["borrow", "--url", &url, "--name", node, "--secret-file"])
                    .arg(&file)
                    .args(["--wait", "30s"])
                    .output()
                    .await
                    .unwrap()
            }
        });
        // Home stays online all along.
        while !ctl.is_finished() {
            assert!(lender.is_online("mac-01"), "{case}: left home");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let out = ctl.await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: {out:?}");
        assert!(stderr.contains(says), "{case}: {stderr}");
        let (got_phase, reason) = borrow_failure(&mut events).await;
        assert_eq!(got_phase, phase, "{case}: {reason}");
        assert!(
            !reason.contains(secret) || secret == "0000",
            "{case}: the secret leaked"
        );
        let s = status(&socket).await;
        assert_eq!(s.placement, Placement::Home, "{case}");
        assert!(s.pending.is_none(), "{case}: {s:?}");
    }
    assert_eq!(closed(&lender.log()), 0, "home never dropped the agent");
    assert_eq!(accepted(&lender.log()), 1);
    assert_eq!(accepted(&borrower.log()), 0);
    assert!(!agent.log().contains(BORROWER_SECRET));
    lender.shutdown().await;
    borrower.shutdown().await;
}

/// `borrow --wait` exits 0 only once the borrower shows the node online,
/// as a controller does: after its first call on the channel is answered.
/// The `moved` event carries both times (connected, first call answered).
#[tokio::test]
async fn borrow_wait_returns_once_the_borrower_sees_the_node() {
    let lender = home(Peer::Hold).await;
    let times = CallTimes::default();
    // The borrower calls half a second after accepting the channel: an
    // agent that reported the move at the handshake would return first.
    let borrower = borrower(calling(Duration::from_millis(500), times.clone())).await;
    let agent = start_agent(&lender, &["--quiet-period", "200ms"]);
    let socket = agent.socket();
    wait_status(&socket, "online", |s| s.phase == Phase::Online).await;
    let mut events = subscribe(&socket).await;
    let out = ctl_borrow(&agent, &borrower, &["--wait"]).await;
    let returned = std::time::Instant::now();
    assert!(out.status.success(), "{out:?}");
    assert!(borrower.is_online("guest-mac"), "exit 0 before online");
    // The controller had made its first call before `--wait` returned, and
    // gets the answer (in flight when the agent reported the move).
    let called = times.lock().unwrap().0;
    assert!(called.is_some_and(|at| at <= returned), "{called:?}");
    common::eventually("the controller has its answer", LONG, || {
        times.lock().unwrap().1.is_some()
    })
    .await;
    assert!(!lender.is_online("mac-01"));
    let (ms, connected_ms, answered_ms, placement) =
        next_event(&mut events, |event| match event.kind {
            EventKind::Moved {
                ms,
                connected_ms,
                answered_ms,
            } => Some((ms, connected_ms, answered_ms, event.status.placement)),
            _ => None,
        })
        .await;
    assert_eq!(answered_ms, Some(ms), "the first call was answered");
    assert!(
        connected_ms.is_some_and(|c| c <= ms),
        "{connected_ms:?} {ms}"
    );
    assert_eq!(placement, Placement::Borrowed);
    assert!(ms < 30_000, "{ms}");
    let out = ctl(&agent, &["return", "--now", "--wait", "30s"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(lender.is_online("mac-01") && !borrower.is_online("guest-mac"));
    // Each engine jar was downloaded once; checking and connecting again
    // asked "changed since?" and got 304.
    let jar_fetches = |log: &[ControllerEvent], status: u16| {
        log.iter()
            .filter(|e| matches!(e, ControllerEvent::Http { path, status: s } if path.ends_with("remoting.jar") && *s == status))
            .count()
    };
    for (name, log) in [("lender", lender.log()), ("borrower", borrower.log())] {
        assert_eq!(jar_fetches(&log, 200), 1, "{name}: {log:#?}");
        assert!(jar_fetches(&log, 304) >= 1, "{name}: {log:#?}");
    }
    lender.shutdown().await;
    borrower.shutdown().await;
}

/// `return --wait` while home is down: the agent stays at the borrower
/// (rather than going nowhere) and goes home once home is back.
#[tokio::test]
async fn a_return_while_home_is_down_waits_at_the_borrower() {
    let lender_ctl = home(Peer::Hold).await;
    let (http_port, agent_port) = (
        lender_ctl.http_addr().port(),
        lender_ctl.agent_addr().port(),
    );
    let borrower = borrower(Peer::Hold).await;
    let agent = start_agent(&lender_ctl, &[]);
    let socket = agent.socket();
    wait_status(&socket, "online", |s| s.phase == Phase::Online).await;
    lend(&socket, &borrower, None, None, When::Now).await;
    borrower.wait_for(|log| accepted(log) == 1, LONG).await;
    wait_status(&socket, "at the borrower", |s| {
        s.phase == Phase::Online && s.placement == Placement::Borrowed
    })
    .await;
    lender_ctl.shutdown().await;

    let returning = tokio::spawn({
        let socket = socket.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_jnlp-agent"))
                .args(["ctl", "--socket"])
                .arg(&socket)
                .args(["return", "--now", "--wait", "60s"])
                .output()
                .await
                .unwrap()
        }
    });
    // A failed attempt to reach home leaves the agent at the borrower.
    wait_status(&socket, "home found unreachable", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("home:"))
    })
    .await;
    assert!(borrower.is_online("guest-mac"), "it left the borrower");
    assert!(!returning.is_finished());
    let s = status(&socket).await;
    assert_eq!(s.placement, Placement::Borrowed, "{s:?}");

    let lender = TestController::builder()
        .node("mac-01", HOME_SECRET)
        .remoting_jar(testkit::fake_remoting_jar("3301.v4363ddcca_4e7"))
        .http_port(http_port)
        .agent_port(agent_port)
        .start()
        .await;
    let out = tokio::time::timeout(LONG, returning)
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(lender.is_online("mac-01"));
    until_online(&borrower, "guest-mac", false, Duration::from_secs(1)).await;
    assert_eq!(closed_by_command(&borrower.log()), 1);
    lender.shutdown().await;
    borrower.shutdown().await;
}

/// A build that starts at home while the borrower's handshake is under way
/// is not cut: the move waits for it.
#[tokio::test]
async fn a_build_started_during_the_borrower_handshake_is_not_cut() {
    let dir = temp_dir("build");
    let marker = dir.join("build-done");
    let (go_tx, go_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let go_rx = Arc::new(tokio::sync::Mutex::new(go_rx));
    let lender = home(Peer::script(move |mut channel: Channel| {
        let go_rx = go_rx.clone();
        async move {
            let mut go = go_rx.lock().await;
            loop {
                tokio::select! {
                    build = go.recv() => match build {
                        Some(build) => start_build(&mut channel, &build).await,
                        None => return,
                    },
                    item = channel.framed.next() => if !matches!(item, Some(Ok(_))) { return },
                }
            }
        }
    }))
    .await;
    let borrower = TestController::builder()
        .node("guest-mac", BORROWER_SECRET)
        .remoting_jar(testkit::fake_remoting_jar("3355.v388858a_47b_33"))
        .handshake_delay(Duration::from_secs(2))
        .start()
        .await;
    let agent = start_agent(&lender, &["--quiet-period", "200ms"]);
    let socket = agent.socket();
    wait_status(&socket, "online", |s| s.phase == Phase::Online).await;
    let mut events = subscribe(&socket).await;
    lend(&socket, &borrower, None, None, When::Idle).await;
    // The check fetches the jar once; connecting fetches it again, then
    // the handshake waits at the borrower's ACK.
    let jar_fetches = |log: &[ControllerEvent]| {
        log.iter()
            .filter(|e| matches!(e, ControllerEvent::Http { path, .. } if path.ends_with("remoting.jar")))
            .count()
    };
    borrower.wait_for(|log| jar_fetches(log) == 2, LONG).await;
    go_tx
        // Outlasts the 2 s handshake.
        .send(format!("sleep 4; touch {}", marker.display()))
        .unwrap();
    next_event(&mut events, |event| {
        (event.kind == EventKind::MoveDeferred).then_some(())
    })
    .await;
    // The agent stays home until the build is done, then moves.
    while lender.is_online("mac-01") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(marker.exists(), "left home before the build ended");
    borrower.wait_for(|log| accepted(log) >= 1, LONG).await;
    wait_status(&socket, "at the borrower", |s| {
        s.phase == Phase::Online && s.placement == Placement::Borrowed
    })
    .await;
    lender.shutdown().await;
    borrower.shutdown().await;
}

/// The lending job runs on the agent itself: `--wait` cannot wait for the
/// move its own build holds up, so it returns once the borrower is checked
/// (exit 0), or fails at once when the borrower cannot work (exit 1); the
/// move follows the job's end.
#[tokio::test]
async fn a_lending_job_on_the_agent_learns_whether_the_borrower_works() {
    let dir = temp_dir("job");
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_jnlp-agent"))
        .parent()
        .unwrap()
        .to_path_buf();
    let secret_file = dir.join("guest-secret");
    std::fs::write(&secret_file, BORROWER_SECRET).unwrap();
    let borrower = borrower(Peer::Hold).await;
    let job = |url: &str, name: &str| {
        format!(
            "PATH={}:$PATH {} {url} guest-mac {} 1h > {dir}/{name}.out 2>&1; echo $? > {dir}/{name}.code",
            bin_dir.display(),
            examples.join("lend-this-agent.sh").display(),
            secret_file.display(),
            dir = dir.display(),
        )
    };
    let jobs = vec![
        job("http://127.0.0.1:1/", "bad"),
        job(&borrower.url(), "good"),
    ];
    let jobs = Arc::new(std::sync::Mutex::new(jobs.into_iter()));
    let (go_tx, go_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let go_rx = Arc::new(tokio::sync::Mutex::new(go_rx));
    let lender = home(Peer::script(move |mut channel: Channel| {
        let (jobs, go_rx) = (jobs.clone(), go_rx.clone());
        async move {
            let mut go = go_rx.lock().await;
            loop {
                tokio::select! {
                    order = go.recv() => {
                        let next = jobs.lock().unwrap().next();
                        match (order, next) {
                            (Some(()), Some(job)) => start_build(&mut channel, &job).await,
                            _ => return,
                        }
                    }
                    item = channel.framed.next() => if !matches!(item, Some(Ok(_))) { return },
                }
            }
        }
    }))
    .await;
    let agent = start_agent(&lender, &["--quiet-period", "200ms"]);
    let socket = agent.socket();
    wait_status(&socket, "online", |s| s.phase == Phase::Online).await;
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();

    go_tx.send(()).unwrap();
    common::eventually("the failing job ended", LONG, || {
        !read("bad.code").is_empty()
    })
    .await;
    assert_eq!(read("bad.code").trim(), "1", "{}", read("bad.out"));
    assert!(
        read("bad.out").contains("127.0.0.1:1"),
        "{}",
        read("bad.out")
    );
    assert_eq!(status(&socket).await.placement, Placement::Home);

    go_tx.send(()).unwrap();
    common::eventually("the lending job ended", LONG, || {
        !read("good.code").is_empty()
    })
    .await;
    assert_eq!(read("good.code").trim(), "0", "{}", read("good.out"));
    assert!(
        read("good.out").contains("reachable"),
        "{}",
        read("good.out")
    );
    // The job is over: the agent moves.
    wait_status(&socket, "lent", |s| {
        s.phase == Phase::Online && s.placement == Placement::Borrowed
    })
    .await;
    assert!(borrower.is_online("guest-mac") && !lender.is_online("mac-01"));
    lender.shutdown().await;
    borrower.shutdown().await;
}

/// The engine started while a borrow waits for idle is the one that serves
/// the borrower; while borrowed, an engine for home waits, and serves home
/// after the return. Status shows what it costs.
#[tokio::test]
async fn warm_engines_serve_the_next_place() {
    let lender = home(running("sleep 1".into())).await;
    let borrower = borrower(Peer::Hold).await;
    let agent = start_agent(&lender, &["--quiet-period", "200ms"]);
    let socket = agent.socket();
    wait_status(&socket, "busy with a build", |s| s.busy.build_processes > 0).await;
    lend(&socket, &borrower, None, None, When::Idle).await;
    let waiting = wait_status(&socket, "the borrower's engine is warm", |s| {
        s.warm_engine.is_some()
    })
    .await;
    let warm = waiting.warm_engine.unwrap();
    assert_eq!(
        warm.controller_url.as_deref(),
        Some(borrower.url().as_str())
    );
    assert!(warm.rss_kib.is_some_and(|kib| kib > 0), "{warm:?}");
    let away = wait_status(&socket, "at the borrower", |s| {
        s.phase == Phase::Online && s.placement == Placement::Borrowed
    })
    .await;
    assert_eq!(
        away.engine_pid,
        Some(warm.pid),
        "the warm engine serves the borrower"
    );

    let home_warm = wait_status(&socket, "an engine for home is warm", |s| {
        s.warm_engine.is_some()
    })
    .await
    .warm_engine
    .unwrap();
    assert_eq!(
        home_warm.controller_url.as_deref(),
        Some(lender.url().as_str())
    );
    let out = ctl(&agent, &["return", "--wait", "30s"]).await;
    assert!(out.status.success(), "{out:?}");
    let home = status(&socket).await;
    assert_eq!(home.placement, Placement::Home);
    assert_eq!(
        home.engine_pid,
        Some(home_warm.pid),
        "the warm engine serves home"
    );
    lender.shutdown().await;
    borrower.shutdown().await;
}

#[tokio::test]
async fn without_warm_engines_moves_still_work() {
    let lender = home(Peer::Hold).await;
    let borrower = borrower(Peer::Hold).await;
    let agent = start_agent(&lender, &["--quiet-period", "200ms", "--no-warm-engine"]);
    let socket = agent.socket();
    wait_status(&socket, "online", |s| s.phase == Phase::Online).await;
    let out = ctl_borrow(&agent, &borrower, &["--wait", "30s"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(borrower.is_online("guest-mac"));
    // No engine for home is kept while borrowed (that none is ever started
    // is the move rules' unit test `an_engine_for_home_is_warmed_while_lent_
    // and_retried_after_a_failure`, on simulated time).
    assert_eq!(status(&socket).await.warm_engine, None);
    let out = ctl(&agent, &["return", "--wait", "30s"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(lender.is_online("mac-01") && !borrower.is_online("guest-mac"));
    lender.shutdown().await;
    borrower.shutdown().await;
}

/// An order that arrives while a move is under way is not lost: a return
/// sent while the agent connects to the borrower follows the move.
#[tokio::test]
async fn a_return_during_the_move_to_the_borrower_follows_it() {
    let lender = home(Peer::Hold).await;
    let borrower = TestController::builder()
        .node("guest-mac", BORROWER_SECRET)
        .remoting_jar(testkit::fake_remoting_jar("3355.v388858a_47b_33"))
        .handshake_delay(Duration::from_millis(800))
        .start()
        .await;
    let agent = start_agent(&lender, &[]);
    let socket = agent.socket();
    wait_status(&socket, "online", |s| s.phase == Phase::Online).await;
    lend(&socket, &borrower, None, None, When::Now).await;
    // Checked, then connecting: the second jar request, then the delayed
    // handshake, during which the return arrives.
    borrower
        .wait_for(
            |log| {
                log.iter()
                    .filter(|e| matches!(e, ControllerEvent::Http { path, .. } if path.ends_with("remoting.jar")))
                    .count()
                    == 2
            },
            LONG,
        )
        .await;
    assert_eq!(status(&socket).await.placement, Placement::Home);
    let reply = request(
        &socket,
        Request::Return {
            when: When::Now,
            wait: None,
        },
    )
    .await;
    assert!(reply.is_ok(), "{reply:?}");
    borrower.wait_for(|log| accepted(log) == 1, LONG).await;
    wait_status(&socket, "home again", |s| {
        s.phase == Phase::Online && s.placement == Placement::Home && s.pending.is_none()
    })
    .await;
    until_online(&borrower, "guest-mac", false, LONG).await;
    assert!(lender.is_online("mac-01"));
    lender.shutdown().await;
    borrower.shutdown().await;
}

/// A borrow that arrives while the agent is on its way home (here: a
/// return waiting for a build at the borrower) is queued, shown in status,
/// and carried out from home; `borrow --wait` answers once it is done.
#[tokio::test]
async fn a_borrow_during_the_return_is_queued_and_carried_out_from_home() {
    let dir = temp_dir("queued");
    let started = dir.join("build-started");
    let build = format!("touch {}; sleep 2", started.display());
    let lender = home(Peer::Hold).await;
    let borrower = borrower(running(build)).await;
    let agent = start_agent(&lender, &[]);
    let socket = agent.socket();
    wait_status(&socket, "online", |s| s.phase == Phase::Online).await;
    lend(&socket, &borrower, None, None, When::Now).await;
    borrower.wait_for(|log| accepted(log) == 1, LONG).await;
    common::eventually("the build at the borrower started", LONG, || {
        started.exists()
    })
    .await;
    let reply = request(
        &socket,
        Request::Return {
            when: When::Idle,
            wait: None,
        },
    )
    .await;
    assert!(reply.is_ok(), "{reply:?}");
    // Borrowed, a return pending: the borrow waits behind it.
    let queued = tokio::spawn({
        let agent_socket = agent.socket();
        let borrower_url = borrower.url();
        async move {
            let secret_file = temp_dir("secret").join("borrower-secret");
            std::fs::write(&secret_file, BORROWER_SECRET).unwrap();
            tokio::process::Command::new(env!("CARGO_BIN_EXE_jnlp-agent"))
                .arg("ctl")
                .arg("--socket")
                .arg(agent_socket)
                .args(["borrow", "--url", &borrower_url, "--name", "guest-mac"])
                .arg("--secret-file")
                .arg(&secret_file)
                .args(["--wait", "60s"])
                .output()
                .await
                .unwrap()
        }
    });
    let waiting = wait_status(&socket, "the borrow queued", |s| s.queued.is_some()).await;
    assert_eq!(waiting.placement, Placement::Borrowed, "{waiting:?}");
    assert_eq!(
        waiting
            .queued
            .as_ref()
            .and_then(|q| q.controller_url.clone()),
        Some(borrower.url())
    );
    assert!(
        waiting.pending.is_some(),
        "the return is still pending: {waiting:?}"
    );
    let lender_accepts = accepted(&lender.log());
    let out = queued.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Home first (one more channel there), then the borrower again.
    assert_eq!(accepted(&lender.log()), lender_accepts + 1);
    assert_eq!(accepted(&borrower.log()), 2);
    assert!(borrower.is_online("guest-mac"));
    let now = status(&socket).await;
    assert_eq!(now.placement, Placement::Borrowed, "{now:?}");
    assert!(now.queued.is_none() && now.pending.is_none(), "{now:?}");
    lender.shutdown().await;
    borrower.shutdown().await;
}

/// The parent of `pid`, from `/proc`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Whether `pid` is below `ancestor` in the process tree.
fn below(pid: u32, ancestor: u32) -> bool {
    let mut at = pid;
    while let Some(parent) = parent_of(at) {
        if parent == ancestor {
            return true;
        }
        if parent <= 1 {
            return false;
        }
        at = parent;
    }
    false
}

/// A build process that left the agent's tree (setsid and a double fork,
/// with the subreaper off as on macOS or in some containers) is still
/// found by the session marker: it counts as busy and is ended before the
/// agent joins another controller. Processes without the marker, or with
/// another agent's, are never touched.
#[tokio::test]
async fn a_detached_build_is_tracked_by_its_marker_and_others_are_left_alone() {
    let dir = temp_dir("detached");
    let pid_file = dir.join("detached.pid");
    let build = format!(
        "setsid sh -c 'echo $$ > {}.tmp; mv {}.tmp {}; exec sleep 60' < /dev/null > /dev/null 2>&1 &",
        pid_file.display(),
        pid_file.display(),
        pid_file.display()
    );
    let lender = home(running(build)).await;
    let borrower = borrower(Peer::Hold).await;
    // Not ours: no marker, and another agent's marker.
    let mut strangers = Vec::new();
    for env in [None, Some("someone-else")] {
        let mut command = std::process::Command::new("sleep");
        command.arg("60");
        if let Some(marker) = env {
            command.env("JNLP_AGENT_SESSION", marker);
        }
        strangers.push(command.spawn().unwrap());
    }
    let url = lender.url();
    let cmd = format!("{} echo", fake_engine().display());
    let agent = AgentProcess::start(
        &[
            "-url",
            url.as_str(),
            "-name",
            "mac-01",
            "--engine-command",
            cmd.as_str(),
            "--quiet-period",
            "200ms",
        ],
        &[
            ("JENKINS_SECRET", HOME_SECRET),
            ("JNLP_AGENT_TEST_NO_SUBREAPER", "1"),
        ],
    );
    let socket = agent.socket();
    let pid = common::read_pids(&pid_file, LONG).await[0];
    assert!(alive(pid));
    assert!(!below(pid, agent.pid()), "the build left the agent's tree");
    let busy = wait_status(&socket, "the detached build counts", |s| {
        s.busy.build_processes >= 1
    })
    .await;
    assert!(busy.busy.busy);
    // A quiet borrow waits for it: checked, still pending, still home
    // (that a busy agent never moves when quiet is the move rules' unit
    // test `a_borrow_waits_for_its_check_and_for_quiet_unless_now`).
    let mut events = subscribe(&socket).await;
    lend(&socket, &borrower, None, None, When::Idle).await;
    next_event(&mut events, |event| {
        (event.kind == EventKind::BorrowChecked).then_some(())
    })
    .await;
    let waiting = status(&socket).await;
    assert!(
        waiting.pending.is_some() && waiting.busy.busy,
        "{waiting:?}"
    );
    assert!(
        lender.is_online("mac-01"),
        "left in the middle of the detached build"
    );
    // ...and a forced one ends it before joining the borrower.
    return_now(&socket).await;
    lend(&socket, &borrower, None, None, When::Now).await;
    wait_status(&socket, "at the borrower", |s| {
        s.phase == Phase::Online && s.placement == Placement::Borrowed
    })
    .await;
    common::eventually("the detached build is ended", LONG, || !alive(pid)).await;
    for stranger in &mut strangers {
        assert!(
            stranger.try_wait().unwrap().is_none(),
            "a process that is not ours was touched"
        );
        let _ = stranger.kill();
        let _ = stranger.wait();
    }
    lender.shutdown().await;
    borrower.shutdown().await;
}
