//! Fresh directories for one test, under the system temp dir: never in the
//! checkout, which may be a 0700 directory owned by another user (a
//! process the test starts as someone else could not reach it), and named
//! by process and a random number so that parallel tests and runs never
//! share one.

use std::path::{Path, PathBuf};

/// A fresh, empty directory named after `name`; left in place afterwards
/// (for a look at what a failed test left).
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "jnlp-agent-test-{name}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(err) = std::fs::create_dir_all(&dir) {
        panic!("{}: {err}", dir.display());
    }
    dir
}

/// A fresh directory removed when dropped.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh, empty directory named after `name`.
    pub fn new(name: &str) -> Self {
        Scratch(temp_dir(name))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// `name` in the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `name` in the directory, as a command-line argument.
    pub fn path(&self, name: &str) -> String {
        self.join(name).display().to_string()
    }

    /// The lender database file tests use in it (not created).
    pub fn db(&self) -> PathBuf {
        self.join("lender.db")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_directories_are_fresh_distinct_and_removed_on_drop() {
        let a = Scratch::new("same");
        let b = Scratch::new("same");
        assert_ne!(a.dir(), b.dir());
        assert!(a.dir().is_dir());
        assert!(a.dir().starts_with(std::env::temp_dir()));
        std::fs::write(a.join("f"), b"x").unwrap();
        let kept = a.dir().to_owned();
        drop(a);
        assert!(!kept.exists());
    }
}
