//! `jnlp-agent-demo`: lending on demand on one machine, no Jenkins or Java
//! needed, narrated, in well under 30 s.
//!
//! 1. Two test controllers: `home`, where two agents live (nodes `mac-01`,
//!    `box-01`), and `ci`, with Jenkins' HTTP API and a user for the lender.
//! 2. A lender on SQLite, set up and run with the real `jnlp-lender`
//!    commands (`token create`, `controller add`, `serve`).
//! 3. Two `jnlp-agent`s, online at home, linked to the lender.
//! 4. A job waiting at `ci` for label `macos`: the lender sees it in `ci`'s
//!    queue, creates node `lent-mac-01` there, lends `mac-01`, the build
//!    runs on it, and once the agent has been idle for `--idle-return` it
//!    goes home and the node is deleted.
//!
//! Every step is judged by what the controllers themselves record.
//!
//! `cargo build --release --workspace && target/release/jnlp-agent-demo`

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use testkit::controller::{JobSpec, Lang, NodeConfig, Permission};
use testkit::{ControllerEvent, TestController};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

const HOME_SECRET: &str = "d3m0d3m0d3m0d3m0d3m0d3m0d3m0d3m0";
const USER: &str = "lender";
const API_TOKEN: &str = "11d3m0a9170ce5";
const LABEL: &str = "macos";
const STEP: Duration = Duration::from_secs(20);

type Res<T> = Result<T, String>;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo failed: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The binaries built next to this one (`JNLP_AGENT_BIN` runs another
/// build of the agent, e.g. the static one).
struct Bins {
    agent: PathBuf,
    lender: PathBuf,
    engine: PathBuf,
}

fn bins() -> Res<Bins> {
    let me = std::env::current_exe().map_err(|err| format!("cannot find my own path: {err}"))?;
    let dir = me.parent().map(Path::to_path_buf).unwrap_or_default();
    let bins = Bins {
        agent: std::env::var_os("JNLP_AGENT_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join("jnlp-agent")),
        lender: dir.join("jnlp-lender"),
        engine: dir.join("fake-engine"),
    };
    for bin in [&bins.agent, &bins.lender, &bins.engine] {
        if !bin.exists() {
            return Err(format!(
                "{} is missing: run `cargo build --release --workspace` first",
                bin.display()
            ));
        }
    }
    Ok(bins)
}

/// Children killed when the demo ends, however it ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.start_kill();
        }
    }
}

/// Runs `jnlp-lender ARGS` to completion, echoing the command.
async fn lender_cli(bin: &Path, args: &[&str]) -> Res<()> {
    println!("  $ jnlp-lender {}", args.join(" "));
    let out = Command::new(bin)
        .args(args)
        .output()
        .await
        .map_err(|err| format!("cannot run {}: {err}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "jnlp-lender {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Starts `jnlp-lender serve` and returns it with its URL.
async fn serve(bin: &Path, db: &str) -> Res<(Child, String)> {
    let args = [
        "serve",
        "--db",
        db,
        "--listen",
        "127.0.0.1:0",
        "--poll",
        "500ms",
    ];
    println!("  $ jnlp-lender {}", args.join(" "));
    let mut child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("cannot start {}: {err}", bin.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr from the lender")?;
    let mut lines = BufReader::new(stderr).lines();
    let url = tokio::time::timeout(STEP, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.strip_prefix("jnlp-lender: listening on ") {
                return Some(format!("http://{}", addr.trim()));
            }
            eprintln!("  lender: {line}");
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or("the lender did not start")?;
    // Its warnings, if any, as they come.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("  lender: {line}");
        }
    });
    Ok((child, url))
}

async fn until(what: &str, mut done: impl FnMut() -> bool) -> Res<()> {
    let deadline = Instant::now() + STEP;
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {STEP:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn logged(controller: &TestController, event: &ControllerEvent) -> bool {
    controller.log().contains(event)
}

async fn run() -> Res<()> {
    let bins = bins()?;
    let started = Instant::now();
    let at = || format!("[{:>5.1}s]", started.elapsed().as_secs_f64());

    let home = TestController::builder()
        .node("mac-01", HOME_SECRET)
        .node("box-01", HOME_SECRET)
        .remoting_jar(testkit::fake_remoting_jar("3301.v4363ddcca_4e7"))
        .start()
        .await;
    let ci = TestController::builder()
        .jenkins_version("2.541.1")
        .user(USER, API_TOKEN, Permission::LENDER)
        .agent(NodeConfig::new("ci-linux").labels("linux"))
        .remoting_jar(testkit::fake_remoting_jar("3355.v388858a_47b_33"))
        .start()
        .await;
    println!("{} two test controllers:", at());
    println!(
        "    home {}  (nodes mac-01, box-01: the pool's machines)",
        home.url()
    );
    println!(
        "    ci   {}  (Jenkins {}, user {USER:?} with an API token; no macOS node)",
        ci.url(),
        ci.jenkins().version()
    );

    let dir = std::env::temp_dir().join(format!("jnlp-agent-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    let result = lend_on_demand(&bins, &dir, &home, &ci, &at).await;
    let _ = std::fs::remove_dir_all(&dir);
    home.shutdown().await;
    ci.shutdown().await;
    result?;
    println!("{} done", at());
    Ok(())
}

async fn lend_on_demand(
    bins: &Bins,
    dir: &Path,
    home: &TestController,
    ci: &TestController,
    at: &dyn Fn() -> String,
) -> Res<()> {
    let path = |name: &str| dir.join(name).display().to_string();
    let db = path("pool.db");
    std::fs::write(dir.join("ci.api-token"), API_TOKEN).map_err(|err| err.to_string())?;
    println!("{} the lender, on SQLite:", at());
    for agent in ["mac-01", "box-01"] {
        let out = path(&format!("{agent}.token"));
        lender_cli(
            &bins.lender,
            &[
                "token", "create", "--db", &db, "--agent", agent, "--out", &out,
            ],
        )
        .await?;
    }
    let ci_url = ci.url();
    let api_token = path("ci.api-token");
    lender_cli(
        &bins.lender,
        &[
            "controller",
            "add",
            "ci",
            "--db",
            &db,
            "--url",
            &ci_url,
            "--user",
            USER,
            "--api-token-file",
            &api_token,
            "--demand-after",
            "0s",
            "--idle-return",
            "3s",
        ],
    )
    .await?;
    let (lender, lender_url) = serve(&bins.lender, &db).await?;
    let mut children = Children(vec![lender]);

    println!("{} two agents, at home, linked to the lender:", at());
    let engine = format!("{} echo", bins.engine.display());
    let home_url = home.url();
    for (agent, labels) in [("mac-01", "macos xcode16"), ("box-01", "linux-box")] {
        let token = path(&format!("{agent}.token"));
        println!(
            "  $ jnlp-agent -url {home_url} -name {agent} --lender {lender_url} \
             --lender-token-file {agent}.token --labels '{labels}'"
        );
        let child = Command::new(&bins.agent)
            .args(["-url", &home_url, "-name", agent, "-workDir"])
            .arg(dir.join(agent))
            .args(["--engine-command", &engine, "--lender", &lender_url])
            .args(["--lender-token-file", &token, "--labels", labels])
            .env("JENKINS_SECRET", HOME_SECRET)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", bins.agent.display()))?;
        children.0.push(child);
    }
    until("both agents online at home", || {
        home.is_online("mac-01") && home.is_online("box-01")
    })
    .await?;
    println!("{} home shows mac-01 and box-01 online", at());

    let jenkins = ci.jenkins();
    let item = jenkins.queue(
        JobSpec::pipeline("app")
            .label(LABEL)
            .duration(Duration::from_secs(2)),
    );
    let why = jenkins.why(item, Lang::En).unwrap_or_default();
    println!(
        "{} a job waits at ci for label {LABEL:?}; ci's queue says: {why:?}",
        at()
    );

    let node = "lent-mac-01";
    until("the lender creates the node", || {
        logged(ci, &ControllerEvent::NodeCreated { node: node.into() })
    })
    .await?;
    println!(
        "{} the lender saw the demand and created node {node} at ci",
        at()
    );
    let build = jenkins.wait_started(item, STEP).await;
    println!(
        "{} the build runs on {} ({:.1}s after it was queued)",
        at(),
        build.node,
        build.started_ms.saturating_sub(build.in_queue_since_ms) as f64 / 1000.0,
    );
    if build.node != node {
        return Err(format!("the build ran on {}, not {node}", build.node));
    }
    until("mac-01 leaves home", || !home.is_online("mac-01")).await?;
    println!("{} home shows mac-01 offline: it is lent to ci", at());
    until("the build finishes", || {
        jenkins
            .build(item)
            .is_some_and(|b| b.state == testkit::controller::BuildState::Finished)
    })
    .await?;
    println!(
        "{} the build finished; mac-01 idles at ci for --idle-return 3s",
        at()
    );
    until("the node is deleted", || {
        logged(ci, &ControllerEvent::NodeDeleted { node: node.into() })
    })
    .await?;
    until("mac-01 back home", || home.is_online("mac-01")).await?;
    println!(
        "{} mac-01 is home again (home shows it online) and ci's node {node} is deleted",
        at()
    );
    let cut = jenkins
        .builds()
        .iter()
        .any(|b| b.state == testkit::controller::BuildState::Cut);
    if cut || !home.is_online("box-01") {
        return Err("a build was cut, or box-01 left home".into());
    }
    drop(children);
    Ok(())
}
