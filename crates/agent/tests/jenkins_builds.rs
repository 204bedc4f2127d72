//! Builds scheduled by the test controller's Jenkins stand-in, seen from
//! the agent: a queued job runs on the agent's engine as a build process,
//! which the agent's busy detection counts until the build finishes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{fake_engine, temp_dir, AgentProcess};
use control::{Phase, Request, Response, Status};
use testkit::controller::{BuildState, JobSpec, Mode, NodeConfig};
use testkit::TestController;

const LONG: Duration = Duration::from_secs(30);

async fn wait_status(socket: &Path, what: &str, cond: impl Fn(&Status) -> bool) -> Status {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let answer = match control::client::connect(socket).await {
            Ok(mut client) => client.request(Request::Status).await.ok(),
            Err(_) => None,
        };
        if let Some(Response::Status(s)) = answer {
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

#[tokio::test]
async fn a_scheduled_build_keeps_the_agent_busy_until_it_finishes() {
    let controller = TestController::builder()
        .agent(
            NodeConfig::new("mac-01")
                .labels("macos arm64")
                .mode(Mode::Exclusive),
        )
        .remoting_jar(testkit::fake_remoting_jar("3301.v4363ddcca_4e7"))
        .start()
        .await;
    let secret = controller.node_secret("mac-01").unwrap();
    let url = controller.url();
    let cmd = format!("{} echo", fake_engine().display());
    let agent = AgentProcess::start_in(
        temp_dir("jenkins-build"),
        &["-url", &url, "-name", "mac-01", "--engine-command", &cmd],
        &[("JENKINS_SECRET", &secret)],
    );
    let socket = agent.socket();
    wait_status(&socket, "online", |s| s.phase == Phase::Online).await;
    let idle = wait_status(&socket, "no build yet", |s| s.busy.build_processes == 0).await;
    assert_eq!(idle.busy.build_processes, 0);

    let jenkins = controller.jenkins();
    let item = jenkins.queue(JobSpec::pipeline("app").label("macos && arm64"));
    let build = jenkins.wait_started(item, LONG).await;
    assert_eq!(build.node, "mac-01");
    wait_status(&socket, "the build runs on the agent", |s| {
        s.busy.busy && s.busy.build_processes > 0
    })
    .await;
    assert_eq!(jenkins.idle("mac-01"), Some(false));

    assert!(jenkins.finish_build(item));
    wait_status(&socket, "the build process ended", |s| {
        s.busy.build_processes == 0
    })
    .await;
    assert_eq!(jenkins.build(item).unwrap().state, BuildState::Finished);
    drop(agent);
    controller.shutdown().await;
}
