//! Where a PostgreSQL pool lives: `--db postgres://USER@HOST[:PORT]/DBNAME`,
//! its password, its `sslmode`, and connections to it.
//!
//! `sslmode` follows libpq: `disable` (plain), `prefer` (TLS if the server
//! offers it), `require` (TLS, certificate not checked), `verify-full` (TLS,
//! the certificate checked against the system's roots, or `sslrootcert`, and
//! the host name). TLS is rustls with ring, as everywhere in this project.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use postgres::config::{Host, SslMode};
use remoting_protocol::tls::AnyCertificateVerifier;
use rustls::pki_types::CertificateDer;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

/// How long connecting may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalive: a peer gone without a word (host down, cable cut) is
/// noticed in about `idle + 3 × interval`.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);

/// Whether `--db` names a PostgreSQL database rather than a SQLite file.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// A PostgreSQL database to connect to: parsed once, connected many times
/// (the store, its readers, the leadership lock).
#[derive(Clone)]
pub struct PgTarget {
    config: postgres::Config,
    tls: MakeRustlsConnect,
    /// The URL without password or parameters, for messages.
    location: PathBuf,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("PgTarget")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl PgTarget {
    /// Parses `url`; `password` (from `--db-password-file` or `PGPASSWORD`)
    /// is used unless the URL has one.
    pub fn parse(url: &str, password: Option<&str>) -> Result<Self, StoreError> {
        let bad = |detail: String| StoreError::BadUrl {
            url: redact(url),
            detail,
        };
        if !is_postgres_url(url) {
            return Err(bad("it must start with postgres:// or postgresql://".into()));
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut sslmode = "prefer".to_owned();
        let mut rootcert = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", value)) => sslmode = value.to_owned(),
                Some(("sslrootcert", value)) => rootcert = Some(PathBuf::from(value)),
                _ => rest.push(pair),
            }
        }
        let url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config: postgres::Config = url.parse().map_err(|err| bad(format!("{err}")))?;
        let (mode, verify) = match sslmode.as_str() {
            "disable" => (SslMode::Disable, false),
            "prefer" => (SslMode::Prefer, false),
            "require" => (SslMode::Require, false),
            "verify-full" => (SslMode::Require, true),
            other => {
                return Err(bad(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-full"
                )))
            }
        };
        config.ssl_mode(mode);
        if config.get_user().is_none() {
            return Err(bad("no user: write postgres://USER@HOST/DBNAME".into()));
        }
        if config.get_hosts().is_empty() {
            return Err(bad("no host: write postgres://USER@HOST/DBNAME".into()));
        }
        if config.get_password().is_none() {
            if let Some(password) = password {
                config.password(password);
            }
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives(true);
        config.keepalives_idle(KEEPALIVE_IDLE);
        config.keepalives_interval(KEEPALIVE_INTERVAL);
        config.keepalives_retries(3);
        config.application_name("jnlp-lender");
        let location = location_of(&config);
        let tls = tls_config(verify, rootcert.as_deref()).map_err(bad)?;
        Ok(PgTarget {
            config,
            tls: MakeRustlsConnect::new(tls),
            location,
        })
    }

    /// A new connection.
    pub(super) fn connect(&self) -> Result<postgres::Client, postgres::Error> {
        self.config.connect(self.tls.clone())
    }

    /// The database, for messages: `postgres://USER@HOST:PORT/DBNAME`.
    pub fn location(&self) -> &Path {
        &self.location
    }
}

/// `url` without its password, for an error message.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".into();
    };
    match rest.split_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_owned(),
    }
}

fn location_of(config: &postgres::Config) -> PathBuf {
    let user = config.get_user().unwrap_or_default();
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        #[cfg(unix)]
        Some(Host::Unix(dir)) => dir.display().to_string(),
        None => String::new(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or(user);
    PathBuf::from(format!("postgres://{user}@{host}:{port}/{db}"))
}

/// `sslmode=prefer`/`require` (`verify` false): encrypted, the certificate
/// not checked (libpq's meaning), the handshake's signatures still are;
/// `verify-full`: checked against the system roots or `sslrootcert`.
fn tls_config(verify: bool, rootcert: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS: {err}"))?;
    if !verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificateVerifier::new(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match rootcert {
        Some(path) => {
            use rustls_pki_types::pem::PemObject as _;
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|err| format!("sslrootcert {}: {err}", path.display()))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|err| format!("sslrootcert {}: {err}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A system root rustls cannot parse is skipped, as browsers do.
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err("sslmode=verify-full: no trusted roots (give sslrootcert=PATH)".into());
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let target = PgTarget::parse("postgres://lender:pw@db.example:5433/pool", None);
        let Ok(target) = target else {
            panic!("{target:?}");
        };
        assert_eq!(
            target.location(),
            Path::new("postgres://lender@db.example:5433/pool")
        );
        assert!(!format!("{target:?}").contains("pw"));
        let Err(err) = PgTarget::parse("postgres://lender:pw@db/pool?sslmode=maybe", None) else {
            panic!("accepted sslmode=maybe");
        };
        let text = err.to_string();
        assert!(text.contains("sslmode=maybe"), "{text}");
        assert!(!text.contains("pw"), "{text}");
        assert!(PgTarget::parse("postgres://db/pool", None).is_err());
        assert!(PgTarget::parse("postgres://u@db/pool?sslmode=disable", None).is_ok());
        assert!(PgTarget::parse("postgres://u@db/pool?sslmode=require", None).is_ok());
        assert!(is_postgres_url("postgresql://u@h/d"));
        assert!(!is_postgres_url("/var/lib/pool.db"));
    }
}
