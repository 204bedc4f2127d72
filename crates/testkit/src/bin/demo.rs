//! `jnlp-agent-demo`: the agent end to end on one machine, no Jenkins or
//! Java needed. Starts the test controller (discovery HTTP + JNLP4 agent
//! port with a generated identity), runs the `jnlp-agent` binary built next
//! to this one against it with the fake engine, exchanges a few commands
//! through the agent's bridge, then stops the agent with SIGTERM.
//!
//! `cargo build --release --workspace && target/release/jnlp-agent-demo`

use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use remoting_protocol::chunk::put_command;
use remoting_protocol::ChunkCodec;
use testkit::{Channel, ControllerEvent, Peer, TestController};
use tokio::sync::oneshot;
use tokio_util::codec::Decoder;

const NODE: &str = "demo-node";
const SECRET: &str = "d3m0d3m0d3m0d3m0d3m0d3m0d3m0d3m0";

#[tokio::main]
async fn main() -> ExitCode {
    let Ok(me) = std::env::current_exe() else {
        eprintln!("cannot find my own path");
        return ExitCode::FAILURE;
    };
    let dir = me
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    // JNLP_AGENT_BIN runs another build of the agent (e.g. the static one).
    let agent_bin = std::env::var_os("JNLP_AGENT_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.join("jnlp-agent"));
    let engine_bin = dir.join("fake-engine");
    for bin in [&agent_bin, &engine_bin] {
        if !bin.exists() {
            eprintln!(
                "{} is missing: run `cargo build --release --workspace` first",
                bin.display()
            );
            return ExitCode::FAILURE;
        }
    }

    let (done_tx, done_rx) = oneshot::channel::<usize>();
    let done = Arc::new(Mutex::new(Some(done_tx)));
    let peer = Peer::script(move |mut channel: Channel| {
        let done = done.clone();
        async move {
            let mut echoed = 0;
            for text in [
                "hello from the controller",
                "a second command",
                "and a third",
            ] {
                let mut wire = BytesMut::new();
                put_command(&mut wire, text.as_bytes());
                let Ok(Some(chunk)) = ChunkCodec.decode(&mut wire) else {
                    return;
                };
                println!("controller -> agent: {text:?}");
                if channel.framed.send(chunk).await.is_err() {
                    return;
                }
                if let Some(Ok(back)) = channel.framed.next().await {
                    println!(
                        "agent -> controller: {:?} (through the engine)",
                        String::from_utf8_lossy(&back.payload)
                    );
                    echoed += 1;
                }
            }
            if let Some(tx) = done.lock().ok().and_then(|mut d| d.take()) {
                let _ = tx.send(echoed);
            }
            // Hold the channel until the agent closes it.
            while let Some(Ok(_)) = channel.framed.next().await {}
        }
    });
    let controller = TestController::builder()
        .node(NODE, SECRET)
        .remoting_jar(b"demo engine jar".to_vec())
        .peer(peer)
        .start()
        .await;
    println!(
        "test controller at {} (agent port {})",
        controller.url(),
        controller.agent_addr()
    );

    let work = std::env::temp_dir().join(format!("jnlp-agent-demo-{}", std::process::id()));
    let engine = format!("{} echo", engine_bin.display());
    let url = controller.url();
    println!(
        "running: jnlp-agent -url {url} -name {NODE} -secret *** -workDir {} --engine-command \"fake-engine echo\"",
        work.display()
    );
    let mut agent = match tokio::process::Command::new(&agent_bin)
        .args(["-url", &url, "-name", NODE, "-workDir"])
        .arg(&work)
        .args(["--engine-command", &engine])
        .env("JENKINS_SECRET", SECRET)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(agent) => agent,
        Err(err) => {
            eprintln!("cannot start {}: {err}", agent_bin.display());
            return ExitCode::FAILURE;
        }
    };

    let echoed = match tokio::time::timeout(Duration::from_secs(30), done_rx).await {
        Ok(Ok(n)) => n,
        _ => {
            eprintln!("the agent did not come online within 30 s");
            return ExitCode::FAILURE;
        }
    };
    let online = controller.is_online(NODE);
    println!("node {NODE} online at the controller: {online}; {echoed} commands crossed the bridge both ways");
    if let Some(pid) = agent.id() {
        println!("stopping the agent with SIGTERM");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let status = tokio::time::timeout(Duration::from_secs(30), agent.wait()).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while !controller
            .log()
            .iter()
            .any(|e| matches!(e, ControllerEvent::ChannelClosed { .. }))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok();
    println!("agent exited: {status:?}; channel closed at the controller: {closed}");
    controller.shutdown().await;
    let _ = std::fs::remove_dir_all(&work);
    if echoed == 3 && online && closed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
