//! The engine a session runs: the controller's jar (or `--engine-jar`),
//! a JVM started and announced, and the spare kept between attempts.

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use remoting_protocol::capability::Capability;
use remoting_protocol::preamble::{PreambleError, PreambleReader};
use tokio::io::AsyncReadExt;
use tracing::info;
use tracing::warn;

use super::target::Target;
use super::{Agent, Route, SessionError, ENGINE_START_TIMEOUT, ENGINE_STOP_GRACE};
use crate::connect::web::Fetched;
use crate::engine::class_sharing::{FirstCalls, Plan};
use crate::engine::{find_java, Engine, EngineSpec, MAX_ENGINE_JAR};

/// An engine that has announced itself and waits for its peer.
#[derive(Debug)]
pub(super) struct ReadyEngine {
    pub(super) engine: Engine,
    pub(super) jar: PathBuf,
    pub(super) remoting_version: Option<String>,
    /// The send window the agent sized for it, if it did.
    pub(super) window: Option<control::EngineWindow>,
    pub(super) capability: Capability,
    /// Bytes the engine wrote after its preamble (normally none).
    pub(super) buffered: BytesMut,
    /// Told when the engine answered its first call, if it records its
    /// classes for an archive.
    pub(super) first_calls: Option<FirstCalls>,
    /// The class-data archive it started without, which is being made.
    pub(super) archive_to_come: Option<PathBuf>,
}

/// What outlives a session at one controller: a spare engine (the
/// cookies outlive the process, in the state file).
#[derive(Debug, Default)]
pub struct Continuity {
    pub(super) spare: Option<ReadyEngine>,
}

impl Continuity {
    /// The spare engine's pid, if one is running.
    pub fn spare_pid(&mut self) -> Option<u32> {
        let spare = self.spare.as_mut()?;
        (!spare.engine.has_exited()).then(|| spare.engine.pid())
    }

    /// Drops a spare engine that started without the class-data archive
    /// that is now there, so that the next one starts with it (and answers
    /// its first calls sooner). Says whether it did.
    pub fn drop_spare_without_archive(&mut self) -> bool {
        let stale = self
            .spare
            .as_ref()
            .and_then(|spare| spare.archive_to_come.as_deref())
            .is_some_and(Path::is_file);
        if stale {
            // It has served nothing: its process group is killed as it drops.
            self.spare = None;
        }
        stale
    }

    /// Stops the spare engine, if any.
    pub async fn shutdown(&mut self) {
        if let Some(mut spare) = self.spare.take() {
            spare.engine.stop(ENGINE_STOP_GRACE).await;
        }
    }
}

impl Agent {
    /// The spare engine if it runs this controller's jar, else a new one.
    pub(super) async fn ready_engine(
        &self,
        route: &Route,
        target: &Target,
        continuity: &mut Continuity,
    ) -> Result<ReadyEngine, SessionError> {
        let jar = self.engine_jar(route, target).await?;
        if let Some(mut spare) = continuity.spare.take() {
            if spare.jar == jar && !spare.engine.has_exited() {
                return Ok(spare);
            }
            // Another controller version, or it died waiting.
            spare.engine.stop(ENGINE_STOP_GRACE).await;
        }
        self.start_engine(route, target, jar).await
    }

    /// The engine jar for `target`: `--engine-jar`, or the controller's own,
    /// downloaded and kept by hash.
    pub(super) async fn engine_jar(
        &self,
        route: &Route,
        target: &Target,
    ) -> Result<PathBuf, SessionError> {
        if let Some(jar) = &route.settings.engine_jar {
            return Ok(jar.clone());
        }
        if route.settings.engine_command.is_some() && target.controller_url.is_none() {
            return Ok(PathBuf::new());
        }
        let Some(url) = &target.controller_url else {
            return Err(SessionError::Config(
                "-direct has no web port to fetch the engine from: give --engine-jar".into(),
            ));
        };
        let jar_url = format!("{url}jnlpJars/remoting.jar");
        let known = self.jars.validator(&jar_url);
        let fetched = route
            .http
            .fetch_if_modified(
                &jar_url,
                MAX_ENGINE_JAR,
                known.as_ref().map(|(modified, _)| modified.as_str()),
            )
            .await
            .map_err(SessionError::EngineJar)?;
        match (fetched, known) {
            (Fetched::Unchanged, Some((_, path))) => Ok(path),
            (Fetched::Unchanged, None) => Err(SessionError::Config(format!(
                "{jar_url} answered 304 to an unconditional request"
            ))),
            (
                Fetched::Body {
                    bytes,
                    last_modified,
                },
                _,
            ) => {
                let path = self.jars.store(&bytes)?;
                if let Some(modified) = last_modified {
                    self.jars.remember(&jar_url, &modified, &path);
                }
                Ok(path)
            }
        }
    }

    async fn start_engine(
        &self,
        route: &Route,
        target: &Target,
        jar: PathBuf,
    ) -> Result<ReadyEngine, SessionError> {
        let settings = &route.settings;
        // Measured first: the window is a JVM option, fixed at start.
        let window = if settings.engine_command.is_none() && settings.java.sized_window {
            let rtt = match &target.controller_url {
                Some(url) => route.http.round_trip(url).await,
                None => None,
            };
            Some(control::EngineWindow {
                bytes: crate::engine::window::for_round_trip(rtt),
                round_trip_us: rtt.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            })
        } else {
            None
        };
        let mut sharing = Plan::Nothing;
        let mut spec = match &settings.engine_command {
            Some(argv) => EngineSpec {
                argv: argv.clone(),
                control_socket: None,
            },
            None => {
                let java = find_java(&settings.java, std::env::var_os("PATH").as_deref())?;
                sharing = self.sharing.plan(&java, &jar, &settings.java.java_opts);
                let mut opts = settings.java.java_opts.clone();
                opts.extend(sharing.options());
                if let Some(window) = window {
                    opts.extend(crate::engine::window::java_option(window.bytes));
                }
                EngineSpec::java(
                    &java,
                    &opts,
                    &jar,
                    self.work.for_engine(),
                    &self.work.jar_cache,
                )
            }
        };
        spec.control_socket = self.control_socket.clone();
        let spawned = std::time::Instant::now();
        let mut started = self.announced_engine(&spec, jar).await;
        if let Ok(ready) = &mut started {
            ready.window = window;
            info!(
                pid = ready.engine.pid(),
                ms = spawned.elapsed().as_millis() as u64,
                class_sharing = sharing.describe(),
                window = window.map(|w| w.bytes),
                round_trip_us = window.and_then(|w| w.round_trip_us),
                "engine ready"
            );
        }
        let archive_to_come = sharing.archive_to_come();
        let first_calls = self.sharing.started(sharing, started.is_ok());
        if let Ok(ready) = &mut started {
            ready.first_calls = first_calls;
            ready.archive_to_come = archive_to_come;
        }
        started
    }

    /// Starts the engine of `spec` and reads its preamble.
    async fn announced_engine(
        &self,
        spec: &EngineSpec,
        jar: PathBuf,
    ) -> Result<ReadyEngine, SessionError> {
        let mut engine = Engine::spawn(spec)?;
        let Some(stdout) = engine.stdout.as_mut() else {
            return Err(SessionError::Config("engine stdout missing".into()));
        };
        let mut buf = BytesMut::with_capacity(4096);
        let mut reader = PreambleReader::new();
        let announced = tokio::time::timeout(ENGINE_START_TIMEOUT, async {
            loop {
                if let Some(preamble) = reader.feed(&mut buf)? {
                    return Ok::<_, PreambleError>(preamble);
                }
                buf.reserve(4096);
                if stdout.read_buf(&mut buf).await? == 0 {
                    return Err(PreambleError::Eof);
                }
            }
        })
        .await;
        let preamble = match announced {
            Ok(Ok(preamble)) => preamble,
            Ok(Err(err)) => {
                engine.stop(ENGINE_STOP_GRACE).await;
                return Err(err.into());
            }
            Err(_) => {
                engine.stop(ENGINE_STOP_GRACE).await;
                return Err(SessionError::EngineTimeout(ENGINE_START_TIMEOUT));
            }
        };
        if !preamble.noise.is_empty() {
            warn!(
                pid = engine.pid(),
                "engine wrote {} bytes on stdout before its preamble",
                preamble.noise.len()
            );
        }
        Ok(ReadyEngine {
            engine,
            remoting_version: crate::engine::remoting_version(&jar),
            window: None,
            jar,
            capability: preamble.capability,
            buffered: buf,
            first_calls: None,
            archive_to_come: None,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::EngineSpec;

    fn spare(archive_to_come: Option<PathBuf>) -> ReadyEngine {
        let spec = EngineSpec {
            argv: vec!["sleep".into(), "300".into()],
            control_socket: None,
        };
        ReadyEngine {
            engine: Engine::spawn(&spec).unwrap(),
            jar: PathBuf::from("/cache/remoting-abc.jar"),
            remoting_version: None,
            window: None,
            capability: Capability::CURRENT,
            buffered: BytesMut::new(),
            first_calls: None,
            archive_to_come,
        }
    }

    #[tokio::test]
    async fn a_spare_started_without_the_archive_is_dropped_once_the_archive_is_there() {
        let dir = test_support::temp_dir("spare-archive");
        let archive = dir.join("remoting-abc-0123.jsa");
        let mut continuity = Continuity {
            spare: Some(spare(Some(archive.clone()))),
        };
        let pid = continuity.spare_pid().unwrap();
        assert!(!continuity.drop_spare_without_archive(), "still being made");
        assert_eq!(continuity.spare_pid(), Some(pid));
        std::fs::write(&archive, b"").unwrap();
        assert!(continuity.drop_spare_without_archive());
        assert_eq!(continuity.spare_pid(), None);
        // Its process is gone (killed, then reaped by the runtime).
        test_support::eventually("the dropped spare gone", Duration::from_secs(30), || {
            !test_support::procfs::alive(pid)
        })
        .await;

        // One started with an archive, or with none to come, is kept.
        let mut continuity = Continuity {
            spare: Some(spare(None)),
        };
        assert!(!continuity.drop_spare_without_archive());
        assert!(continuity.spare_pid().is_some());
        continuity.shutdown().await;
        std::fs::remove_dir_all(dir).unwrap();
    }
}
