//! The built agent against test controllers and the fake engine: the whole
//! path from discovery to the engine, reconnects, errors and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::sessions::{each_way, recorded_session, scripted};
use common::{
    accepted, alive, eventually, fake_engine, read_pids, temp_dir, AgentProcess, CuttableProxy,
};
use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use testkit::controller::ChannelEnd;
use testkit::{Channel, ControllerEvent, TestController, TestIdentity};
use tokio_util::codec::Decoder;

const SECRET: &str = "5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e";
const LONG: Duration = Duration::from_secs(30);

/// A test controller with one node, serving an engine jar.
async fn controller(node: &str) -> TestController {
    TestController::builder()
        .node(node, SECRET)
        .remoting_jar(b"jar".to_vec())
        .start()
        .await
}

/// The agent for `node`, with `cmd` as its engine and the test secret.
fn agent_with_engine(url: &str, node: &str, cmd: &str) -> AgentProcess {
    AgentProcess::start(
        &[
            "-url",
            url,
            "-name",
            node,
            "-secret",
            SECRET,
            "--engine-command",
            cmd,
        ],
        &[],
    )
}

fn sigkill(pid: u32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
}

fn engine(mode: &str) -> String {
    format!("{} {mode}", fake_engine().display())
}

/// The controller side of the recorded session plays against the agent,
/// whose fake engine plays the recorded agent side: every chunk must cross
/// the bridge unchanged, both ways.
#[tokio::test]
async fn recorded_session_crosses_the_bridge_byte_exactly() {
    let (peer, verdict) = scripted(recorded_session);
    let controller = TestController::builder()
        .node("capture-agent", SECRET)
        .remoting_jar(b"engine jar bytes".to_vec())
        .peer(peer)
        .start()
        .await;
    let url = controller.url();
    let cmd = engine("replay session-accepted.jsonl");
    let mut agent = AgentProcess::start(
        &[
            "-url",
            &url,
            "-name",
            "capture-agent",
            "-secret",
            SECRET,
            "-noReconnect",
            "--engine-command",
            &cmd,
        ],
        &[],
    );
    let verdict = tokio::time::timeout(LONG, verdict)
        .await
        .expect("script finished")
        .unwrap();
    verdict.unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));
    let status = agent.wait_exit(LONG).await;
    assert!(status.success(), "{status:?}\n{}", agent.log());
    // The controller's engine jar was fetched and cached by hash, with its
    // Last-Modified for the next start's conditional request.
    let engines = agent.work_dir.join("remoting/engines");
    assert_eq!(common::cached_jars(&engines).len(), 1, "{engines:?}");
    let validators = std::fs::read_to_string(engines.join("validators.json")).unwrap();
    assert!(
        validators.contains(&format!("{url}jnlpJars/remoting.jar")),
        "{validators}"
    );
    assert!(!agent.log().contains(SECRET), "the secret reached the log");
    controller.shutdown().await;
}

/// 1 GiB from the controller through the agent to an echoing engine and back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_each_way_arrives_intact() {
    let (peer, verdict) = scripted(|channel| each_way(channel, 1 << 30));
    let controller = TestController::builder()
        .node("big", SECRET)
        .remoting_jar(b"jar".to_vec())
        .peer(peer)
        .start()
        .await;
    let url = controller.url();
    let cmd = engine("echo");
    let _agent = agent_with_engine(&url, "big", &cmd);
    let verdict = tokio::time::timeout(Duration::from_secs(300), verdict)
        .await
        .expect("1 GiB each way within 5 minutes")
        .unwrap();
    verdict.unwrap();
    controller.shutdown().await;
}

/// The controller restarts on the same ports; the agent comes back by itself.
#[tokio::test]
async fn controller_restart_on_the_same_ports_reconnects() {
    let first = controller("n1").await;
    let (http, agent_port) = (first.http_addr().port(), first.agent_addr().port());
    let url = first.url();
    let cmd = engine("echo");
    let agent = agent_with_engine(&url, "n1", &cmd);
    first.wait_for(|log| accepted(log) == 1, LONG).await;
    first.shutdown().await;

    let second = TestController::builder()
        .node("n1", SECRET)
        .remoting_jar(b"jar".to_vec())
        .http_port(http)
        .agent_port(agent_port)
        .start()
        .await;
    second.wait_for(|log| accepted(log) == 1, LONG).await;
    agent.wait_log("\"connected\"", 2, LONG).await;
    assert!(
        !second
            .log()
            .iter()
            .any(|e| matches!(e, ControllerEvent::Refused { .. })),
        "{:?}",
        second.log()
    );
    second.shutdown().await;
}

/// The agent loses its connection while the controller still holds the
/// channel (a half-dead network path): it reconnects with the channel's
/// cookie, and the controller replaces the stale channel instead of
/// answering "already connected".
#[tokio::test]
async fn stale_channel_is_taken_over_with_the_cookie() {
    let controller = controller("n2").await;
    let proxy = CuttableProxy::start(controller.agent_addr()).await;
    let url = controller.url();
    let cmd = engine("echo");
    let tunnel = format!("127.0.0.1:{}", proxy.port);
    let agent = AgentProcess::start(
        &[
            "-url",
            &url,
            "-name",
            "n2",
            "-secret",
            SECRET,
            "-tunnel",
            &tunnel,
            "--engine-command",
            &cmd,
        ],
        &[],
    );
    controller.wait_for(|log| accepted(log) == 1, LONG).await;
    let first_cookie = controller.current_cookie("n2").unwrap();
    proxy.cut_agent_side();
    let log = controller.wait_for(|log| accepted(log) == 2, LONG).await;
    assert!(
        log.iter().any(|e| matches!(
            e,
            ControllerEvent::Accepted {
                took_over: true,
                ..
            }
        )),
        "{log:?}"
    );
    assert!(
        !log.iter()
            .any(|e| matches!(e, ControllerEvent::Refused { .. })),
        "{log:?}"
    );
    assert_ne!(controller.current_cookie("n2").unwrap(), first_cookie);
    agent.wait_log("\"connected\"", 2, LONG).await;
    controller.shutdown().await;
}

/// The engine dies: the agent ends the channel, kills what the engine left
/// running, and reconnects with a fresh engine.
#[tokio::test]
async fn killed_engine_is_replaced_and_leaves_no_orphans() {
    let controller = controller("n3").await;
    let dir = temp_dir("pids");
    let pid_file = dir.join("engine.pid");
    let cmd = engine(&format!(
        "--spawn-child --pid-file {} echo",
        pid_file.display()
    ));
    let url = controller.url();
    let agent = agent_with_engine(&url, "n3", &cmd);
    controller.wait_for(|log| accepted(log) == 1, LONG).await;
    let pids = read_pids(&pid_file, LONG).await;
    let (engine_pid, child_pid) = (pids[0], pids[1]);
    assert!(alive(engine_pid) && alive(child_pid));
    std::fs::remove_file(&pid_file).unwrap();

    sigkill(engine_pid);
    let log = controller.wait_for(|log| accepted(log) == 2, LONG).await;
    assert_offline_before_the_reconnect(&log);
    eventually("the first engine's child is gone", LONG, || {
        !alive(child_pid)
    })
    .await;
    let new_pids = read_pids(&pid_file, LONG).await;
    assert_ne!(new_pids[0], engine_pid, "a fresh engine");
    assert!(alive(new_pids[0]));
    drop(agent);
    controller.shutdown().await;
}

/// The engine dies alone (no child holds its output open) while the bridge
/// runs, so the agent reads the end of its output: the connection is still
/// dropped without a TLS close_notify, or a real controller would keep a
/// ghost channel (PROTOCOL.md 5).
#[tokio::test]
async fn an_engine_dying_alone_is_not_answered_with_close_notify() {
    // The controller's side: one command through the echo engine (so the
    // bridge is up), then reading on, as the controller does, until the end.
    let (bridged_tx, bridged) = tokio::sync::oneshot::channel();
    let bridged_tx = std::sync::Mutex::new(Some(bridged_tx));
    let peer = testkit::Peer::script(move |mut channel: Channel| {
        let bridged_tx = bridged_tx.lock().unwrap().take();
        async move {
            let mut wire = BytesMut::new();
            remoting_protocol::chunk::put_command(&mut wire, b"ping");
            let chunk = remoting_protocol::ChunkCodec
                .decode(&mut wire)
                .unwrap()
                .unwrap();
            if channel.framed.send(chunk).await.is_err() {
                return;
            }
            let echoed = channel.framed.next().await;
            if let (Some(Ok(_)), Some(tx)) = (echoed, bridged_tx) {
                let _ = tx.send(());
            }
            while let Some(Ok(_)) = channel.framed.next().await {}
        }
    });
    let controller = TestController::builder()
        .node("n3b", SECRET)
        .remoting_jar(b"jar".to_vec())
        .peer(peer)
        .start()
        .await;
    let dir = temp_dir("pids");
    let pid_file = dir.join("engine.pid");
    let cmd = engine(&format!("--pid-file {} echo", pid_file.display()));
    let url = controller.url();
    let agent = agent_with_engine(&url, "n3b", &cmd);
    tokio::time::timeout(LONG, bridged)
        .await
        .expect("a command through the bridge")
        .expect("echoed");
    let engine_pid = read_pids(&pid_file, LONG).await[0];
    sigkill(engine_pid);
    let log = controller.wait_for(|log| accepted(log) == 2, LONG).await;
    assert_offline_before_the_reconnect(&log);
    drop(agent);
    controller.shutdown().await;
}

/// With no engine to cooperate, the agent drops TCP without close_notify:
/// the controller takes the node offline before the agent is back, so the
/// new connection needs no cookie and nothing is refused.
fn assert_offline_before_the_reconnect(log: &[ControllerEvent]) {
    assert!(
        !log.iter()
            .any(|e| matches!(e, ControllerEvent::CloseNotifyIgnored { .. })),
        "close_notify sent: {log:#?}"
    );
    let closed_at = log
        .iter()
        .position(|e| {
            matches!(
                e,
                ControllerEvent::ChannelClosed {
                    how: ChannelEnd::ConnectionLost,
                    ..
                }
            )
        })
        .unwrap_or_else(|| panic!("the first channel never closed: {log:#?}"));
    let second = log
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, ControllerEvent::Accepted { .. }))
        .nth(1)
        .map(|(i, e)| (i, e.clone()));
    assert!(
        matches!(&second, Some((i, ControllerEvent::Accepted { took_over: false, .. })) if *i > closed_at),
        "offline before the reconnect: {log:#?}"
    );
    assert!(!log
        .iter()
        .any(|e| matches!(e, ControllerEvent::Refused { .. })));
}

/// SIGTERM: the channel closes, the engine and its children end, exit 0.
#[tokio::test]
async fn sigterm_exits_zero_and_leaves_no_child() {
    let controller = controller("n4").await;
    let dir = temp_dir("pids");
    let pid_file = dir.join("engine.pid");
    let cmd = engine(&format!(
        "--spawn-child --pid-file {} echo",
        pid_file.display()
    ));
    let url = controller.url();
    // The secret comes from the environment, as in the container images.
    let mut agent = AgentProcess::start(
        &["-url", &url, "-name", "n4", "--engine-command", &cmd],
        &[("JENKINS_SECRET", SECRET)],
    );
    controller.wait_for(|log| accepted(log) == 1, LONG).await;
    let pids = read_pids(&pid_file, LONG).await;
    let environ = std::fs::read(format!("/proc/{}/environ", pids[0])).unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0])).unwrap();
    for (what, bytes) in [("environment", &environ), ("command line", &cmdline)] {
        assert!(
            !String::from_utf8_lossy(bytes).contains(SECRET),
            "the engine's {what} carries the secret"
        );
    }
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(LONG).await;
    assert!(status.success(), "exit {status:?}; log:\n{}", agent.log());
    // Signal delivery is asynchronous: give the kernel a moment, no more.
    eventually("the engine is gone", Duration::from_secs(5), || {
        !alive(pids[0])
    })
    .await;
    eventually("the engine's child is gone", Duration::from_secs(5), || {
        !alive(pids[1])
    })
    .await;
    controller
        .wait_for(
            |log| {
                log.iter()
                    .any(|e| matches!(e, ControllerEvent::ChannelClosed { .. }))
            },
            LONG,
        )
        .await;
    assert!(!agent.log().contains(SECRET));
    controller.shutdown().await;
}

async fn failing_run(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut agent = AgentProcess::start(args, &[]);
    let status = agent.wait_exit(LONG).await;
    (status, agent.log())
}

#[tokio::test]
async fn refusals_and_bad_targets_give_clear_errors() {
    let controller = TestController::builder()
        .node("n5", SECRET)
        .fatal_node("gone", "Node is disabled")
        .remoting_jar(b"jar".to_vec())
        .start()
        .await;
    let url = controller.url();
    let cmd = engine("echo");
    let base = |name: &'static str, secret: &'static str| {
        vec![
            "-url".to_owned(),
            url.clone(),
            "-name".into(),
            name.into(),
            "-secret".into(),
            secret.into(),
            "--engine-command".into(),
            cmd.clone(),
        ]
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        failing_run(&args).await
    };

    let mut args = base("n5", "0000badsecret");
    args.push("-noReconnect".into());
    let (status, log) = run(args).await;
    assert!(!status.success());
    assert!(
        log.contains("Authorization failure") && log.contains("secret does not match"),
        "{log}"
    );
    assert!(
        !log.contains("0000badsecret"),
        "the wrong secret is still a secret"
    );

    let mut args = base("nobody", SECRET);
    args.push("-noReconnect".into());
    let (status, log) = run(args).await;
    assert!(!status.success());
    assert!(log.contains("Unknown client name: nobody"), "{log}");

    // FATAL stops the agent even without -noReconnect.
    let (status, log) = run(base("gone", SECRET)).await;
    assert!(!status.success());
    assert!(
        log.contains("permanently refused") && log.contains("Node is disabled"),
        "{log}"
    );

    // A pinned identity that is not the controller's.
    let refused_n5 = |log: &[ControllerEvent]| {
        log.iter()
            .filter(|e| matches!(e, ControllerEvent::Refused { node, .. } if node == "n5"))
            .count()
    };
    let refused_before = refused_n5(&controller.log());
    let other = TestIdentity::other().identity().to_base64();
    let direct = format!("127.0.0.1:{}", controller.agent_addr().port());
    let (status, log) = failing_run(&[
        "-direct",
        &direct,
        "-instanceIdentity",
        &other,
        "-name",
        "n5",
        "-secret",
        SECRET,
        "--engine-command",
        &cmd,
        "-noReconnect",
    ])
    .await;
    assert!(!status.success());
    assert!(log.contains("SECURITY"), "{log}");
    assert_eq!(
        refused_n5(&controller.log()),
        refused_before,
        "no header reached the controller"
    );

    // -protocols without the one protocol this agent speaks.
    let (status, log) = failing_run(&[
        "-direct",
        &direct,
        "-instanceIdentity",
        &controller.identity().to_base64(),
        "-protocols",
        "JNLP2-connect",
        "-name",
        "n5",
        "-secret",
        SECRET,
        "--engine-command",
        &cmd,
        "-noReconnect",
    ])
    .await;
    assert!(!status.success());
    assert!(
        log.contains("-protocols allows only JNLP2-connect"),
        "{log}"
    );

    // Nothing listening at the URL.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://127.0.0.1:{}/", closed.local_addr().unwrap().port());
    drop(closed);
    let (status, log) = failing_run(&[
        "-url",
        &dead_url,
        "-name",
        "n5",
        "-secret",
        SECRET,
        "--engine-command",
        &cmd,
        "-noReconnect",
    ])
    .await;
    assert!(!status.success());
    assert!(
        log.contains(&dead_url) && log.to_lowercase().contains("reach"),
        "{log}"
    );
    controller.shutdown().await;
}

#[tokio::test]
async fn malformed_jnlp_file_is_a_clear_error() {
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = server.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut tcp, _)) = server.accept().await {
            let mut request = [0; 4096];
            let _ = tcp.read(&mut request).await;
            let body = "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">]><jnlp><application-desc><argument>&lol;</argument></application-desc></jnlp>";
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-java-jnlp-file\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(response.as_bytes()).await;
        }
    });
    let jnlp = format!("http://127.0.0.1:{port}/computer/x/jenkins-agent.jnlp");
    let cmd = engine("echo");
    let (status, log) =
        failing_run(&["-jnlpUrl", &jnlp, "--engine-command", &cmd, "-noReconnect"]).await;
    assert!(!status.success());
    assert!(log.contains("DOCTYPE"), "{log}");
}

/// The production launch path with a real JVM: the controller serves a jar
/// (a Java echo engine compiled here, standing in for remoting.jar); the
/// agent downloads and caches it, finds java, starts
/// `java $JENKINS_JAVA_OPTS -jar <cached> -workDir .. -internalDir .. -jar-cache ..`,
/// swaps preambles with it and bridges chunks.
#[tokio::test]
async fn a_real_jvm_engine_from_the_controllers_jar() {
    let jar = common::java_echo_engine_jar();

    let (peer, verdict) = scripted(|mut channel: Channel| async move {
        let mut wire = BytesMut::new();
        remoting_protocol::chunk::put_command(&mut wire, &[7u8; 20_000]);
        let mut sent = Vec::new();
        while let Some(chunk) = remoting_protocol::ChunkCodec
            .decode(&mut wire)
            .map_err(|e| e.to_string())?
        {
            sent.push(chunk.clone());
            channel
                .framed
                .send(chunk)
                .await
                .map_err(|e| e.to_string())?;
        }
        for expected in sent {
            let got = channel
                .framed
                .next()
                .await
                .ok_or("channel ended")?
                .map_err(|e| e.to_string())?;
            if got != expected {
                return Err("the JVM engine echoed something else".into());
            }
        }
        Ok(())
    });
    let controller = TestController::builder()
        .node("jvm", SECRET)
        .remoting_jar(jar.clone())
        .peer(peer)
        .start()
        .await;
    let url = controller.url();
    let agent = AgentProcess::start(
        &["-url", &url, "-name", "jvm"],
        &[
            ("JENKINS_SECRET", SECRET),
            ("JENKINS_JAVA_OPTS", "-Dtest.marker=42 -Xshare:auto"),
        ],
    );
    let verdict = tokio::time::timeout(Duration::from_secs(60), verdict)
        .await
        .expect("engine echoed")
        .unwrap();
    verdict.unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    let launch = std::fs::read_to_string(agent.work_dir.join("engine-launch.txt")).unwrap();
    let work = agent.work_dir.display().to_string();
    let cached = agent.work_dir.join("remoting/engines");
    let cached_jar = common::cached_jars(&cached).remove(0);
    assert_eq!(
        std::fs::read(&cached_jar).unwrap(),
        jar,
        "the controller's jar, cached"
    );
    assert!(
        launch.contains(&format!(
            "args=-workDir {work} -internalDir remoting -jar-cache {work}/remoting/jarCache"
        )),
        "{launch}"
    );
    assert!(
        launch.contains("marker=42"),
        "JENKINS_JAVA_OPTS reached the JVM: {launch}"
    );
    assert!(
        launch.contains(&format!("socket={work}/remoting/control.sock")),
        "{launch}"
    );
    assert!(
        launch.contains("secret-env=null"),
        "the engine must not see JENKINS_SECRET: {launch}"
    );
    assert!(!launch.contains(SECRET));
    controller.shutdown().await;
}

/// The agent's status and its engine's command line, once it is online
/// (its control socket is up by then).
async fn online_engine(agent: &AgentProcess) -> (control::Status, String) {
    let mut client = control::client::connect(&agent.socket()).await.unwrap();
    let deadline = tokio::time::Instant::now() + LONG;
    let (status, pid) = loop {
        match client.request(control::Request::Status).await.unwrap() {
            control::Response::Status(status)
                if status.phase == control::Phase::Online && status.engine_pid.is_some() =>
            {
                let pid = status.engine_pid.unwrap();
                break (status, pid);
            }
            _ if tokio::time::Instant::now() > deadline => {
                panic!("not online with an engine:\n{}", agent.log())
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    (status, String::from_utf8_lossy(&cmdline).replace('\0', " "))
}

/// With no JVM options of the user's, the engine's send window follows
/// the round trip to the controller: twice remoting's own on loopback,
/// 4 MiB across a 20 ms round trip (a delay line in front of the web port,
/// where the agent measures it); the user's options replace it.
#[tokio::test]
async fn the_engine_window_follows_the_round_trip() {
    const WINDOW: &str = "-Dhudson.remoting.Channel.pipeWindowSize=";
    let controller = TestController::builder()
        .node("rtt", SECRET)
        .remoting_jar(common::java_echo_engine_jar())
        .peer(testkit::Peer::Hold)
        .start()
        .await;
    let line =
        testkit::delay_line::DelayLine::start(controller.http_addr(), Duration::from_millis(10))
            .await;
    let far = format!("http://{}/", line.addr());
    for (url, opts, want) in [
        (controller.url(), None, Some("2097152")),
        (far.clone(), None, Some("4194304")),
        (far.clone(), Some("-Dtest.marker=1"), None),
    ] {
        let mut env = vec![("JENKINS_SECRET", SECRET)];
        env.extend(opts.map(|o| ("JAVA_OPTS", o)));
        let agent =
            AgentProcess::start(&["-url", &url, "-name", "rtt", "--no-class-sharing"], &env);
        common::until_online(&controller, "rtt", true, LONG).await;
        let (status, cmdline) = online_engine(&agent).await;
        let window = cmdline.split(' ').find_map(|arg| arg.strip_prefix(WINDOW));
        assert_eq!(window, want, "{url} {opts:?}: {cmdline}\n{}", agent.log());
        // What `ctl status` shows: the window and the round trip behind it.
        match (opts, status.engine_window) {
            (Some(_), shown) => assert_eq!(shown, None),
            (None, Some(shown)) => {
                let bytes: u32 = want.expect("a sized window").parse().unwrap();
                assert_eq!(shown.bytes, bytes);
                let rtt = shown.round_trip_us.expect("measured");
                assert_eq!(rtt >= 20_000, url == far, "{rtt} us to {url}");
            }
            (None, None) => panic!("no window in the status"),
        }
        assert_eq!(
            cmdline.contains("-XX:+UseSerialGC"),
            opts.is_none(),
            "{cmdline}"
        );
        drop(agent);
        common::until_online(&controller, "rtt", false, LONG).await;
    }
    controller.shutdown().await;
}

/// Class-data sharing with a real JVM: the jar's first engine records the
/// classes it loads, the archive is made in the background, and the next
/// engine maps it (its `/proc/PID/maps` shows the file) and still serves.
#[tokio::test]
async fn the_next_engine_maps_the_class_sharing_archive() {
    let controller = TestController::builder()
        .node("jvm", SECRET)
        .remoting_jar(common::java_echo_engine_jar())
        .peer(testkit::Peer::Hold)
        .start()
        .await;
    let url = controller.url();
    let agent = AgentProcess::start(
        &["-url", &url, "-name", "jvm", "--class-sharing-after", "1s"],
        &[("JENKINS_SECRET", SECRET)],
    );
    common::until_online(&controller, "jvm", true, LONG).await;
    let cds = agent.work_dir.join("remoting/engines/cds");
    let archive = || {
        std::fs::read_dir(&cds).ok().and_then(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "jsa"))
        })
    };
    eventually("the archive is made", Duration::from_secs(60), || {
        archive().is_some()
    })
    .await;
    let archive = archive().unwrap();
    let failed: Vec<_> = std::fs::read_dir(&cds)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "failed"))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");

    // A new channel, a new engine: started with the archive, and mapping it.
    let accepts = accepted(&controller.log());
    assert!(controller.disconnect("jvm"));
    controller
        .wait_for(|log| accepted(log) == accepts + 1, LONG)
        .await;
    let (status, cmdline) = online_engine(&agent).await;
    let pid = status.engine_pid.unwrap();
    assert!(
        cmdline.contains(&format!("-XX:SharedArchiveFile={}", archive.display())),
        "{cmdline}"
    );
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(
        maps.contains(&*archive.to_string_lossy()),
        "the engine JVM did not map {}:\n{}",
        archive.display(),
        agent.log()
    );
    assert!(controller.is_online("jvm"));
    controller.shutdown().await;
}

/// The windowed benchmark's four paths work end to end with small
/// transfers: the Java windowed engine through the agent (JNLP4 and
/// `-webSocket`) and on its own (`-direct`, `-websocket`: agent.jar's
/// paths). The controller's side counts every byte each way, then the
/// engine answers pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_windowed_benchmark_paths_stream_both_ways() {
    use testkit::windowed::{self, Direction, TransferConfig};
    let jar = common::java_windowed_engine_jar().expect("the JDK is a test dependency");
    let jar_file = temp_dir("windowed-e2e").join("windowed.jar");
    std::fs::write(&jar_file, &jar).unwrap();
    for (bridge, web_socket) in [(true, false), (true, true), (false, false), (false, true)] {
        let (peer, mut sessions) = windowed::peer();
        let controller = TestController::builder()
            .node("windowed", SECRET)
            .remoting_jar(jar.clone())
            .peer(peer)
            .start()
            .await;
        let url = controller.url();
        let mut agent = None;
        let mut direct = None;
        if bridge {
            let mut args = vec!["-url", &url, "-name", "windowed", "--no-class-sharing"];
            if web_socket {
                args.push("-webSocket");
            }
            agent = Some(AgentProcess::start(&args, &[("JENKINS_SECRET", SECRET)]));
        } else {
            let target = if web_socket {
                let ws = format!("ws://127.0.0.1:{}/wsagents/", controller.http_addr().port());
                vec!["-websocket".to_owned(), ws]
            } else {
                let port = controller.agent_addr().port().to_string();
                vec!["-direct".to_owned(), "127.0.0.1".to_owned(), port]
            };
            direct = Some(
                tokio::process::Command::new("java")
                    .arg("-jar")
                    .arg(&jar_file)
                    .args(&target)
                    .args(["windowed", SECRET])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .expect("java starts"),
            );
        }
        let what = format!("bridge={bridge} web_socket={web_socket}");
        let mut session = tokio::time::timeout(Duration::from_secs(60), sessions.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{what}: no channel; {}",
                    agent.as_ref().map(|a| a.log()).unwrap_or_default()
                )
            })
            .expect("a session");
        // A transfer ends Ok only once the controller has received every
        // byte (from the engine) or every ack (for what it sent).
        for direction in [Direction::ToEngine, Direction::ToController] {
            let mut config = TransferConfig::new(direction, 8 << 20);
            config.ping_every = Some(Duration::from_millis(1));
            config.deadline = LONG;
            if let Err(e) = session.transfer(&config).await {
                panic!("{what} {direction}: {e}");
            }
        }
        let idle = session
            .round_trips(3, Duration::from_millis(1), LONG)
            .await
            .unwrap_or_else(|e| panic!("{what}: idle pings: {e}"));
        assert_eq!(idle.len(), 3, "{what}");
        session.quit().await;
        drop(agent);
        drop(direct);
        controller.shutdown().await;
    }
}

/// `-agentLog FILE`: the agent's log and what the engine writes to stderr
/// go to FILE (created 0600, appended to by the next run) and not to
/// stderr.
#[tokio::test]
async fn agent_log_takes_the_log_and_the_engines_stderr_off_stderr() {
    use std::os::unix::fs::PermissionsExt as _;
    const MARKER: &str = "engine-stderr-marker";
    let controller = controller("logged").await;
    let url = controller.url();
    let dir = temp_dir("agent-log");
    // An engine that says something on stderr, then serves.
    let script = dir.join("engine.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"{MARKER} $$\" >&2\nexec {} echo\n",
            fake_engine().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    let log = dir.join("agent.log");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let count = |text: &str, needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    for run in 1..=2 {
        let agent = AgentProcess::start(
            &[
                "-url",
                &url,
                "-name",
                "logged",
                "-secret",
                SECRET,
                "-agentLog",
                log.to_str().unwrap(),
                "--engine-command",
                script.to_str().unwrap(),
            ],
            &[],
        );
        eventually("connected and the engine's line, in the file", LONG, || {
            let text = log_text();
            count(&text, "\"connected\"") == run && count(&text, MARKER) == run
        })
        .await;
        assert!(controller.is_online("logged"));
        let text = log_text();
        // JSON records, as --log-format says; the engine's line among them.
        let marker = text.lines().find(|l| l.contains(MARKER)).unwrap();
        assert!(
            marker.starts_with('{') && marker.contains("\"engine\""),
            "{marker}"
        );
        assert!(!text.contains(SECRET), "the secret reached the log");
        // Nothing on stderr: neither the agent's lines nor the engine's.
        assert!(
            !agent.log().contains("connected") && !agent.log().contains(MARKER),
            "stderr:\n{}",
            agent.log()
        );
        // agent.jar writes no remoting.log with -agentLog; nor do we.
        let rotated = std::fs::read_dir(agent.work_dir.join("remoting/logs"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(rotated, 0, "rotated logs written beside -agentLog");
        drop(agent);
        common::until_online(&controller, "logged", false, LONG).await;
    }
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    controller.shutdown().await;
}

/// `-loggingConfig FILE` reaches the engine JVM's command line as the
/// system property, with the user's own JVM options kept.
#[tokio::test]
async fn logging_config_reaches_the_engine_jvm() {
    let controller = TestController::builder()
        .node("jul", SECRET)
        .remoting_jar(common::java_echo_engine_jar())
        .peer(testkit::Peer::Hold)
        .start()
        .await;
    let dir = temp_dir("jul");
    let config = dir.join("logging.properties");
    std::fs::write(
        &config,
        "handlers=java.util.logging.ConsoleHandler\n.level=INFO\n",
    )
    .unwrap();
    let url = controller.url();
    let agent = AgentProcess::start(
        &[
            "-url",
            &url,
            "-name",
            "jul",
            "--no-class-sharing",
            "-loggingConfig",
            config.to_str().unwrap(),
        ],
        &[("JENKINS_SECRET", SECRET), ("JAVA_OPTS", "-Dtest.marker=1")],
    );
    common::until_online(&controller, "jul", true, LONG).await;
    let (_, cmdline) = online_engine(&agent).await;
    let args: Vec<&str> = cmdline.split(' ').collect();
    let want = format!("-Djava.util.logging.config.file={}", config.display());
    assert!(args.contains(&want.as_str()), "{cmdline}\n{}", agent.log());
    assert!(args.contains(&"-Dtest.marker=1"), "{cmdline}");
    assert!(controller.is_online("jul"));
    drop(agent);
    controller.shutdown().await;
}
