//! `jnlp-lender token create|list|revoke`: bearer tokens for agents and
//! API clients, straight in the database (only their hashes are stored).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use lender::tokens::{self, Principal, TokenKind, TokenRecord};

use super::db;

pub fn create(
    db: &Path,
    agent: Option<String>,
    client: Option<String>,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let (kind, name) = match (agent, client) {
        (Some(name), None) => (TokenKind::Agent, name),
        (None, Some(name)) => (TokenKind::Client, name),
        _ => anyhow::bail!("give exactly one of --agent and --client"),
    };
    tokens::check_name(&name).map_err(anyhow::Error::msg)?;
    let token = tokens::generate(kind);
    // The file first: a token stored but not delivered would be a token
    // nobody has.
    let written = out
        .map(|path| write_new_private(path, &format!("{token}\n")).map(|()| path))
        .transpose()?;
    let mut store = db::create(db)?;
    let stored = store.add_token(&TokenRecord {
        hash: tokens::hash(&token),
        principal: Principal { kind, name },
        created_ms: control::now_ms(),
    });
    if let Err(err) = stored {
        if let Some(path) = written {
            let _ = std::fs::remove_file(path);
        }
        return Err(anyhow::Error::new(err).context("storing the token"));
    }
    match written {
        Some(path) => eprintln!(
            "jnlp-lender: token written to {} (mode 0600); only its hash is stored",
            path.display()
        ),
        None => {
            println!("{token}");
            eprintln!("jnlp-lender: keep this token now; only its hash is stored");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates `path` readable by its owner only and writes `text`; an existing
/// file is an error, never overwritten.
fn write_new_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|err| {
        if err.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} already exists; not overwriting it (remove it, or choose another --out)",
                path.display()
            )
        } else {
            anyhow::Error::new(err).context(format!("creating {}", path.display()))
        }
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

pub fn list(db: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let store = db::open(db)?;
    let tokens = store.tokens()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&tokens)?);
        return Ok(ExitCode::SUCCESS);
    }
    let time = |ms: Option<u64>| {
        ms.map_or("-".to_owned(), |ms| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        })
    };
    println!("ID\tKIND\tNAME\tCREATED\tLAST USED\tREVOKED");
    for token in &tokens {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            token.id,
            token.kind,
            token.name,
            time(Some(token.created_ms)),
            time(token.last_used_ms),
            time(token.revoked_ms)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn revoke(db: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let mut store = db::open(db)?;
    let count = store.revoke(name, control::now_ms())?;
    if count == 0 {
        eprintln!("jnlp-lender: no valid token named {name:?} (see `jnlp-lender token list`)");
        return Ok(ExitCode::from(1));
    }
    eprintln!("jnlp-lender: revoked {count} token(s) of {name:?}");
    Ok(ExitCode::SUCCESS)
}
