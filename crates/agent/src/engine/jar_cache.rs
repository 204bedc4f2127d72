//! Engine jars on disk, named by content, and the `Last-Modified` each
//! controller sent for its jar, so that a reconnect or a restarted agent
//! asks "changed since?" instead of downloading the jar again.
//!
//! The validators live in `validators.json` beside the jars: at most
//! [`MAX_VALIDATORS`] entries (the least recently used go first), written
//! atomically. A missing, unreadable or corrupt file only costs one
//! download per controller.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::debug;

use super::EngineError;

const VALIDATORS: &str = "validators.json";
/// Controllers remembered; each entry is a URL and a date.
const MAX_VALIDATORS: usize = 32;
/// Larger than any file of [`MAX_VALIDATORS`] sane entries.
const MAX_VALIDATORS_FILE: u64 = 256 * 1024;

/// Engine jars stored by content hash, with their controllers' validators.
#[derive(Debug, Clone)]
pub struct JarCache {
    dir: PathBuf,
    validators: Arc<Mutex<Option<Validators>>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Validators {
    /// By jar URL.
    #[serde(default)]
    jars: BTreeMap<String, Validator>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Validator {
    /// The `Last-Modified` the controller sent with the jar.
    last_modified: String,
    /// The cached jar's file name in the cache directory.
    file: String,
    /// When it was last stored or confirmed (Unix ms), for eviction.
    #[serde(default)]
    used_ms: u64,
}

impl JarCache {
    /// A cache in `dir` (created on first store).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            validators: Arc::default(),
        }
    }

    /// Stores `bytes` as `remoting-<sha256>.jar` unless already there, and
    /// returns its path. Written to a temporary file and renamed, so a
    /// concurrent or interrupted store never leaves a partial jar in place.
    pub fn store(&self, bytes: &[u8]) -> Result<PathBuf, EngineError> {
        let name = format!("remoting-{}.jar", hex::encode(Sha256::digest(bytes)));
        let path = self.dir.join(name);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
            return Ok(path);
        }
        self.write_atomically(&path, bytes)
            .map_err(|source| EngineError::Cache {
                dir: self.dir.clone(),
                source,
            })?;
        Ok(path)
    }

    /// The `Last-Modified` of the cached copy of the jar at `url`, and that
    /// copy, if both are known and the copy is still there.
    pub fn validator(&self, url: &str) -> Option<(String, PathBuf)> {
        let mut guard = self.validators.lock().unwrap_or_else(|e| e.into_inner());
        let validators = guard.get_or_insert_with(|| self.load());
        let known = validators.jars.get(url)?;
        let path = self.dir.join(&known.file);
        path.is_file().then(|| (known.last_modified.clone(), path))
    }

    /// Records that the jar at `url` is `path` (in this cache) as of
    /// `last_modified`, in memory and on disk.
    pub fn remember(&self, url: &str, last_modified: &str, path: &Path) {
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            return;
        };
        let mut guard = self.validators.lock().unwrap_or_else(|e| e.into_inner());
        let validators = guard.get_or_insert_with(|| self.load());
        validators.jars.insert(
            url.to_owned(),
            Validator {
                last_modified: last_modified.to_owned(),
                file: file.to_owned(),
                used_ms: crate::engine::busy::now_ms(),
            },
        );
        while validators.jars.len() > MAX_VALIDATORS {
            let oldest = validators
                .jars
                .iter()
                .min_by_key(|(_, v)| v.used_ms)
                .map(|(url, _)| url.clone());
            if let Some(url) = oldest {
                validators.jars.remove(&url);
            }
        }
        let saved = serde_json::to_vec_pretty(&*validators)
            .map_err(std::io::Error::other)
            .and_then(|json| self.write_atomically(&self.dir.join(VALIDATORS), &json));
        if let Err(err) = saved {
            // Only costs a download after a restart.
            debug!(%err, "cannot record the engine jar's validators");
        }
    }

    fn load(&self) -> Validators {
        let path = self.dir.join(VALIDATORS);
        let read = std::fs::File::open(&path).and_then(|file| {
            let mut json = Vec::new();
            file.take(MAX_VALIDATORS_FILE).read_to_end(&mut json)?;
            Ok(json)
        });
        match read.map(|json| serde_json::from_slice::<Validators>(&json)) {
            Ok(Ok(validators)) => validators,
            Ok(Err(err)) => {
                debug!(%err, path = %path.display(), "ignoring an unreadable validators file");
                Validators::default()
            }
            Err(_) => Validators::default(),
        }
    }

    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let (tmp, mut file) = tempfile_in(&self.dir)?;
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let path = dir.join(format!(
        ".remoting-{}-{}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "jnlp-agent-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn jars_are_named_by_content() {
        let dir = dir("cache");
        let cache = JarCache::new(dir.clone());
        let a = cache.store(b"jar one").unwrap();
        assert_eq!(cache.store(b"jar one").unwrap(), a);
        let b = cache.store(b"jar two").unwrap();
        assert_ne!(a, b);
        assert_eq!(std::fs::read(&a).unwrap(), b"jar one");
        let leftovers = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn validators_survive_a_restart_and_are_bounded() {
        let dir = dir("validators");
        let url = "https://a.example/jnlpJars/remoting.jar";
        let date = "Tue, 01 Dec 2026 10:00:00 GMT";
        {
            let cache = JarCache::new(dir.clone());
            assert_eq!(cache.validator(url), None);
            let jar = cache.store(b"jar one").unwrap();
            cache.remember(url, date, &jar);
        }
        // A new agent process: read back from disk.
        let cache = JarCache::new(dir.clone());
        let (modified, jar) = cache.validator(url).expect("remembered");
        assert_eq!(modified, date);
        assert_eq!(std::fs::read(&jar).unwrap(), b"jar one");
        // A jar removed by hand is not trusted any more.
        std::fs::remove_file(&jar).unwrap();
        assert_eq!(JarCache::new(dir.clone()).validator(url), None);
        // Bounded: the oldest entries go.
        let jar = cache.store(b"jar two").unwrap();
        for i in 0..MAX_VALIDATORS + 5 {
            cache.remember(
                &format!("https://c{i}.example/jnlpJars/remoting.jar"),
                date,
                &jar,
            );
        }
        let text = std::fs::read_to_string(dir.join(VALIDATORS)).unwrap();
        let saved: Validators = serde_json::from_str(&text).unwrap();
        assert_eq!(saved.jars.len(), MAX_VALIDATORS);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_corrupt_validators_file_only_costs_a_download() {
        let dir = dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(VALIDATORS), b"{not json").unwrap();
        let cache = JarCache::new(dir.clone());
        assert_eq!(
            cache.validator("https://a.example/jnlpJars/remoting.jar"),
            None
        );
        let jar = cache.store(b"jar").unwrap();
        cache.remember("https://a.example/jnlpJars/remoting.jar", "d", &jar);
        assert!(cache
            .validator("https://a.example/jnlpJars/remoting.jar")
            .is_some());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
