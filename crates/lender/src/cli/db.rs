//! `--db`: a SQLite file or a `postgres://USER@HOST[:PORT]/DBNAME` URL,
//! whose password comes from `--db-password-file` or `PGPASSWORD`; and
//! `jnlp-lender migrate`, which copies a SQLite pool into PostgreSQL.

use std::path::Path;
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::Context as _;
use lender::pool::Changes;
use lender::store::{is_postgres_url, PgStore, PgTarget, SqliteStore, Store};

/// The password given for PostgreSQL, read once at start.
static PASSWORD: OnceLock<Option<String>> = OnceLock::new();

/// Reads the password: `--db-password-file` (its first line), else
/// `PGPASSWORD`.
pub fn set_password(file: Option<&Path>) -> anyhow::Result<()> {
    let password = match file {
        Some(path) => {
            let text = lender::client::read_small_file(path)
                .with_context(|| format!("--db-password-file {}", path.display()))?;
            let line = text.lines().next().unwrap_or_default().to_owned();
            if line.is_empty() {
                anyhow::bail!(
                    "--db-password-file {} is empty: put the database user's password in it",
                    path.display()
                );
            }
            Some(line)
        }
        None => std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()),
    };
    let _ = PASSWORD.set(password);
    Ok(())
}

/// The password, for `serve`'s configuration.
pub fn password() -> Option<String> {
    PASSWORD.get().cloned().flatten()
}

/// Opens `--db`, which must hold a pool already.
pub fn open(db: &Path) -> anyhow::Result<Box<dyn Store>> {
    open_with(db, false)
}

/// Opens `--db`, creating the pool (and the SQLite file) if needed.
pub fn create(db: &Path) -> anyhow::Result<Box<dyn Store>> {
    open_with(db, true)
}

fn open_with(db: &Path, create: bool) -> anyhow::Result<Box<dyn Store>> {
    if let Some(url) = db.to_str().filter(|db| is_postgres_url(db)) {
        let target = PgTarget::parse(url, password().as_deref())?;
        let store = if create {
            PgStore::open(&target)?
        } else {
            PgStore::open_existing(&target)?
        };
        return Ok(Box::new(store));
    }
    let store = if create {
        SqliteStore::open(db)?
    } else {
        SqliteStore::open_existing(db)?
    };
    Ok(Box::new(store))
}

/// `jnlp-lender migrate --from PATH.db --to postgres://...`: agents,
/// leases (ended ones too), the audit log with its positions, tokens with
/// their use and revocation, controllers. The target must hold no leases
/// yet, so that a second run cannot mix two pools.
pub fn migrate(from: &Path, to: &str) -> anyhow::Result<ExitCode> {
    if !is_postgres_url(to) {
        anyhow::bail!("--to must be a postgres:// URL (got {to:?})");
    }
    let source = SqliteStore::open_existing(from)?;
    let target = PgTarget::parse(to, password().as_deref())?;
    let mut dest = PgStore::open(&target)?;
    if dest.load()?.next_id > 1 || !dest.tokens()?.is_empty() {
        anyhow::bail!(
            "{} already holds a pool; migrate into an empty database",
            target.location().display()
        );
    }
    let snapshot = source.load()?;
    // Open leases from the snapshot (with their secrets), ended ones by id.
    let mut leases = snapshot.leases.clone();
    for id in 1..snapshot.next_id {
        if !snapshot.leases.iter().any(|l| l.id == id) {
            leases.extend(source.lease(id)?);
        }
    }
    leases.sort_by_key(|l| l.id);
    let changes = Changes {
        agents: snapshot.agents.clone(),
        leases: leases.clone(),
        audit: Vec::new(),
    };
    dest.commit(&changes)?;
    let mut audit = Vec::new();
    let mut after = 0;
    loop {
        let page = source.audit(after, 10_000)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        audit.extend(page);
    }
    let audit_count = audit.len();
    dest.copy_audit(audit)?;
    let hashes = sqlite_token_hashes(from)?;
    let tokens = source.tokens()?;
    for (hash, info) in hashes.into_iter().zip(tokens) {
        dest.copy_token(hash, info)?;
    }
    let mut controllers = 0;
    for controller in source.controllers()? {
        controllers += usize::from(dest.add_controller(&controller)?);
    }
    eprintln!(
        "jnlp-lender: copied {} agents, {} leases, {} audit entries, {} tokens, {} controllers \
         from {} to {}",
        snapshot.agents.len(),
        leases.len(),
        audit_count,
        dest.tokens()?.len(),
        controllers,
        from.display(),
        target.location().display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Token hashes in the order [`Store::tokens`] lists them (the listing
/// shows only a short id).
fn sqlite_token_hashes(path: &Path) -> anyhow::Result<Vec<String>> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("reading {}", path.display()))?;
    let mut stmt = conn.prepare("SELECT hash FROM tokens ORDER BY created_ms, rowid")?;
    let hashes = stmt
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(hashes)
}
