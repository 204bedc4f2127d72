//! Files holding a secret or a token (the agent's `-secret @FILE`, the
//! lender link's token file, a borrow's `secret_file`, the lender's secret
//! directory and its command line's token files): how they are read and
//! whether other users can read them.
//!
//! Every such file is read by [`read_bounded`] (or [`read_file`], which
//! opens it): at most a given number of bytes, so a huge or endless file
//! (`/dev/zero`) cannot exhaust memory, and UTF-8 text. Whoever reads one
//! checks the metadata of the file it opened (not the path again, which
//! could have changed) and warns with [`ReadableByOthers`]'s text; the file
//! is still used, since refusing would stop an agent that ran until now.

use std::fmt;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// Why a bounded read failed. The texts name the cause only, never the
/// content; callers add which file it was.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening or reading failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// More bytes than the limit.
    #[error("larger than {max} bytes")]
    TooLarge {
        /// The limit, in bytes.
        max: u64,
    },
    /// Not UTF-8 text.
    #[error("not UTF-8 text")]
    NotUtf8,
}

/// All of `reader` as UTF-8 text, refused past `max` bytes (it reads one
/// byte more to know).
pub fn read_bounded(reader: impl Read, max: u64) -> Result<String, ReadError> {
    let mut bytes = Vec::new();
    reader.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge { max });
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotUtf8)
}

/// [`read_bounded`] of the file at `path`, with the metadata of the file
/// opened (for [`readable_by_others`]).
pub fn read_file(path: &Path, max: u64) -> Result<(String, Metadata), ReadError> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    Ok((read_bounded(file, max)?, meta))
}

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
    fn reads_are_bounded_and_text() {
        assert_eq!(read_bounded(&b"abc"[..], 3).unwrap(), "abc");
        assert!(matches!(
            read_bounded(&b"abcd"[..], 3),
            Err(ReadError::TooLarge { max: 3 })
        ));
        assert!(matches!(
            read_bounded(&[0xff_u8][..], 3),
            Err(ReadError::NotUtf8)
        ));
        // An endless source stops at the limit.
        let endless = io::repeat(b'x');
        assert_eq!(
            read_bounded(endless, 1024).unwrap_err().to_string(),
            "larger than 1024 bytes"
        );
        assert!(matches!(
            read_file(Path::new("/nonexistent/secret"), 10),
            Err(ReadError::Io(_))
        ));
    }

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
