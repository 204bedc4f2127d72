//! Files holding a secret or a token (the agent's `-secret @FILE`, the
//! lender link's token file, a borrow's `secret_file`): whether other
//! users can read them. Whoever reads such a file checks the metadata of
//! the file it opened (not the path again, which could have changed) and
//! warns with [`ReadableByOthers`]'s text; the file is still used, since
//! refusing would stop an agent that ran until now.

use std::fmt;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// Read permission for users who are neither the owner nor in the group.
const OTHERS_READ: u32 = 0o004;

/// A secret file that every user on the machine may read. Its `Display`
/// is the warning: it names the file and the fix, never the content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadableByOthers {
    /// The file, as it was named.
    pub path: PathBuf,
    /// Its permission bits (`mode & 0o7777`).
    pub mode: u32,
}

impl fmt::Display for ReadableByOthers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        write!(
            f,
            "{path} holds a secret but other users can read it (mode {:04o}); \
             run `chmod 600 {path}`",
            self.mode
        )
    }
}

/// `Some` when `meta` (of the file opened at `path`) lets other users read
/// it.
pub fn readable_by_others(path: &Path, meta: &Metadata) -> Option<ReadableByOthers> {
    let mode = meta.mode() & 0o7777;
    (mode & OTHERS_READ != 0).then(|| ReadableByOthers {
        path: path.to_owned(),
        mode,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::fs::{self, Permissions};
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn only_files_others_can_read_are_reported() {
        let dir = std::env::temp_dir().join(format!("secret-file-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        fs::write(&file, "s3cret-value").unwrap();
        let check = |mode| {
            fs::set_permissions(&file, Permissions::from_mode(mode)).unwrap();
            readable_by_others(&file, &fs::File::open(&file).unwrap().metadata().unwrap())
        };
        for private in [0o600, 0o400, 0o640, 0o660, 0o700, 0o603] {
            assert_eq!(check(private), None, "{private:o}");
        }
        for open in [0o644, 0o604, 0o666, 0o4755] {
            let warning = check(open).unwrap();
            assert_eq!(warning.mode, open, "{open:o}");
        }
        let warning = check(0o644).unwrap();
        assert_eq!(
            warning.to_string(),
            format!(
                "{0} holds a secret but other users can read it (mode 0644); \
                 run `chmod 600 {0}`",
                file.display()
            )
        );
        assert!(!warning.to_string().contains("s3cret"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
