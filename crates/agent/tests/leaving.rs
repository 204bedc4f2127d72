//! Leaving a controller the way a real one notices (PROTOCOL.md 5): judged
//! by the test controller's own view, which ignores TLS `close_notify` and
//! keeps ghost channels like the real stack does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{accepted, fake_engine, refused, temp_dir, until_online, AgentProcess, CuttableProxy};
use nix::sys::signal::Signal;
use testkit::controller::ChannelEnd;
use testkit::{ControllerEvent, TestController};

const SECRET: &str = "1eaf1eaf1eaf1eaf1eaf1eaf1eaf1eaf1eaf1eaf1eaf1eaf1eaf1eaf1eaf1eaf";
const LONG: Duration = Duration::from_secs(30);
/// How soon the controller must see the node offline after the agent left.
const OFFLINE_WITHIN: Duration = Duration::from_secs(1);
/// How soon a restarted agent must be online again.
const BACK_WITHIN: Duration = Duration::from_secs(5);

async fn controller(node: &str) -> TestController {
    TestController::builder()
        .node(node, SECRET)
        .remoting_jar(b"jar".to_vec())
        .start()
        .await
}

fn start(work: std::path::PathBuf, url: &str, node: &str, extra: &[&str]) -> AgentProcess {
    let cmd = format!("{} echo", fake_engine().display());
    let mut args = vec!["-url", url, "-name", node, "--engine-command", &cmd];
    args.extend_from_slice(extra);
    AgentProcess::start_in(work, &args, &[("JENKINS_SECRET", SECRET)])
}

/// SIGTERM ends the channel with a `Channel$CloseCommand`: the controller
/// shows the node offline at once, and a restart is accepted at once.
#[tokio::test]
async fn sigterm_takes_the_node_offline_at_once_and_a_restart_is_accepted() {
    let controller = controller("t1").await;
    let work = temp_dir("work");
    let url = controller.url();
    let mut agent = start(work.clone(), &url, "t1", &[]);
    controller.wait_for(|log| accepted(log) == 1, LONG).await;
    until_online(&controller, "t1", true, LONG).await;

    agent.signal(Signal::SIGTERM);
    let offline = until_online(&controller, "t1", false, OFFLINE_WITHIN).await;
    eprintln!("SIGTERM -> offline at the controller: {offline:?}");
    let status = agent.wait_exit(LONG).await;
    assert!(status.success(), "{status:?}\n{}", agent.log());
    let log = controller.log();
    assert!(
        log.contains(&ControllerEvent::ChannelClosed {
            node: "t1".into(),
            how: ChannelEnd::CloseCommand
        }),
        "{log:#?}"
    );
    assert!(
        !log.iter()
            .any(|e| matches!(e, ControllerEvent::CloseNotifyIgnored { .. })),
        "no TLS close_notify: {log:#?}"
    );

    let restarted = start(work, &url, "t1", &[]);
    let back = until_online(&controller, "t1", true, BACK_WITHIN).await;
    eprintln!("restart -> online: {back:?}");
    let log = controller.log();
    assert!(refused(&log) == 0, "{log:#?}");
    drop(restarted);
    controller.shutdown().await;
}

/// SIGKILL gives no chance to close; here a relay keeps the controller's
/// side of the connection open, so the controller still holds the channel
/// (as behind a NAT or proxy that does not pass the reset on). The
/// restarted agent takes its own stale channel over with the cookie it
/// persisted, instead of looping on "already connected".
#[tokio::test]
async fn after_sigkill_a_restart_takes_its_stale_channel_over() {
    let controller = controller("t2").await;
    let proxy = CuttableProxy::start(controller.agent_addr()).await;
    let tunnel = format!("127.0.0.1:{}", proxy.port);
    let work = temp_dir("work");
    let url = controller.url();
    let agent = start(work.clone(), &url, "t2", &["-tunnel", &tunnel]);
    controller.wait_for(|log| accepted(log) == 1, LONG).await;
    let cookie = controller.current_cookie("t2").unwrap();
    let state = work.join("remoting/state.json");
    common::eventually("the cookie is persisted", LONG, || {
        std::fs::read_to_string(&state).is_ok_and(|text| text.contains(&cookie))
    })
    .await;
    agent.signal(Signal::SIGKILL);
    drop(agent);
    // The relay kept the controller's side: the node is still online there
    // (the restart below taking that very channel over proves it lived on).
    assert!(controller.is_online("t2"), "{:#?}", controller.log());

    let started = Instant::now();
    let restarted = start(work, &url, "t2", &["-tunnel", &tunnel]);
    let log = controller
        .wait_for(
            |log| {
                log.iter().any(|e| {
                    matches!(
                        e,
                        ControllerEvent::Accepted {
                            took_over: true,
                            ..
                        }
                    )
                })
            },
            BACK_WITHIN,
        )
        .await;
    eprintln!("restart after SIGKILL -> online: {:?}", started.elapsed());
    assert!(refused(&log) == 0, "{log:#?}");
    assert!(log.contains(&ControllerEvent::ChannelClosed {
        node: "t2".into(),
        how: ChannelEnd::TakenOver
    }));
    drop(restarted);
    controller.shutdown().await;
}

/// Without a relay in between, the kernel's close of a SIGKILLed agent is a
/// plain TCP close, which the controller notices at once.
#[tokio::test]
async fn after_sigkill_the_plain_close_is_noticed() {
    let controller = controller("t3").await;
    let work = temp_dir("work");
    let url = controller.url();
    let agent = start(work.clone(), &url, "t3", &[]);
    controller.wait_for(|log| accepted(log) == 1, LONG).await;
    until_online(&controller, "t3", true, LONG).await;
    agent.signal(Signal::SIGKILL);
    drop(agent);
    until_online(&controller, "t3", false, OFFLINE_WITHIN).await;
    let restarted = start(work, &url, "t3", &[]);
    until_online(&controller, "t3", true, BACK_WITHIN).await;
    assert!(refused(&controller.log()) == 0);
    drop(restarted);
    controller.shutdown().await;
}
