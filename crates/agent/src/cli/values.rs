//! Parsers for individual option values: each takes the option (or
//! environment variable) name for its error, and the raw text.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use control::secret_file::{readable_by_others, ReadableByOthers};

use super::CliError;
use crate::connect::address::{self, AddressError};
use crate::settings::{CertPem, Credentials, HostPort, LogFormat, Secret, Tunnel};

/// `@FILE` arguments are small (a secret, a certificate chain); the cap keeps
/// `-secret @/dev/zero` from eating memory. agent.jar caps certificates at
/// 64 KiB too.
const FILE_LIMIT: u64 = 64 * 1024;

/// A controller URL, normalised to end with `/` (agent.jar appends paths
/// such as `tcpSlaveAgentListener/` to it).
pub(super) fn controller_url(option: &'static str, value: &str) -> Result<String, CliError> {
    check_http_url(option, value)?;
    let mut url = value.to_owned();
    if !url.ends_with('/') {
        url.push('/');
    }
    Ok(url)
}

/// `-jnlpUrl`: an absolute http(s) URL with a host, kept as given.
pub(super) fn http_url(option: &'static str, value: &str) -> Result<String, CliError> {
    check_http_url(option, value)?;
    Ok(value.to_owned())
}

/// An absolute `http://` or `https://` URL with a host.
pub(super) fn check_http_url(option: &'static str, value: &str) -> Result<(), CliError> {
    let bad = |reason| CliError::BadUrl { option, reason };
    let uri: http::Uri = value.parse().map_err(|_| bad("not a valid URL"))?;
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {}
        Some(_) => return Err(bad("only http and https URLs are supported")),
        None => return Err(bad("the URL has no scheme")),
    }
    match uri.host() {
        Some(h) if !h.is_empty() => Ok(()),
        _ => Err(bad("the URL has no host")),
    }
}

/// `HOST:PORT` or `[IPV6]:PORT`, both parts required.
pub(super) fn host_port(option: &'static str, value: &str) -> Result<HostPort, CliError> {
    address::host_port(value).map_err(|err| bad_address(option, err))
}

/// `-tunnel`: `HOST:PORT`, `HOST:` or `:PORT`.
pub(super) fn tunnel(option: &'static str, value: &str) -> Result<Tunnel, CliError> {
    address::tunnel(value).map_err(|err| bad_address(option, err))
}

fn bad_address(option: &'static str, err: AddressError) -> CliError {
    CliError::BadHostPort {
        option,
        expected: err.expected,
        reason: err.reason,
    }
}

/// `USER:PASSWORD`; the password may itself contain colons.
pub(super) fn credentials(option: &'static str, value: &str) -> Result<Credentials, CliError> {
    let (user, password) = value
        .split_once(':')
        .ok_or(CliError::BadCredentials { option })?;
    Ok(Credentials {
        user: user.to_owned(),
        password: Secret::new(password),
    })
}

/// `NAME=VALUE` (split at the first `=`, as agent.jar's map option does):
/// a valid header name and a value without control characters.
pub(super) fn header(option: &'static str, value: &str) -> Result<(String, Secret), CliError> {
    let bad = |reason: &'static str| CliError::BadHeader { option, reason };
    let (name, value) = value.split_once('=').ok_or(bad("expected NAME=VALUE"))?;
    let name = name.trim();
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| bad("the name is not a valid HTTP header name"))?;
    http::HeaderValue::from_str(value)
        .map_err(|_| bad("the value contains characters a header cannot carry"))?;
    Ok((name.to_owned(), Secret::new(value)))
}

/// agent.jar's `-noReconnectAfter` accepts Spring-style `10m` / `500ms`,
/// ISO-8601 `PT10M`, and a bare number meaning milliseconds; we accept those
/// and everything `humantime` reads (`1h30m`, `1h 30m`).
pub(super) fn duration(option: &'static str, value: &str) -> Result<Duration, CliError> {
    let bad = |reason| CliError::BadDuration { option, reason };
    let text = value.trim();
    let text = text.strip_prefix('+').unwrap_or(text);
    if text.starts_with('-') {
        return Err(bad("it is negative"));
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // agent.jar's default unit, surprising as it is.
        let ms = text
            .parse::<u64>()
            .map_err(|_| bad("the number is too large"))?;
        return Ok(Duration::from_millis(ms));
    }
    if text.starts_with(['P', 'p']) {
        return iso8601(&text.to_ascii_uppercase()).ok_or(bad("not a valid ISO-8601 duration"));
    }
    // humantime's own messages quote the text; ours must not.
    humantime::parse_duration(text).map_err(|e| {
        bad(match e {
            humantime::DurationError::Empty => "it is empty",
            humantime::DurationError::UnknownUnit { .. } => "unknown unit",
            humantime::DurationError::NumberOverflow => "the number is too large",
            humantime::DurationError::InvalidCharacter(_) => "invalid character",
            humantime::DurationError::NumberExpected(_) => "a number is missing",
        })
    })
}

/// The subset of ISO-8601 that Java's `Duration.parse` reads: `PnDTnHnMn.nS`.
fn iso8601(text: &str) -> Option<Duration> {
    let mut rest = text.strip_prefix('P')?;
    let mut total = Duration::ZERO;
    let mut in_time = false;
    let mut any = false;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('T') {
            if in_time {
                return None;
            }
            in_time = true;
            rest = r;
            continue;
        }
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(end);
        let mut chars = tail.chars();
        let unit = chars.next()?;
        rest = chars.as_str();
        let part = match (in_time, unit) {
            (true, 'S') => Duration::try_from_secs_f64(number.parse::<f64>().ok()?).ok()?,
            (false, 'D') | (true, 'H') | (true, 'M') => {
                let per = match unit {
                    'D' => 86_400,
                    'H' => 3_600,
                    _ => 60,
                };
                Duration::from_secs(number.parse::<u64>().ok()?.checked_mul(per)?)
            }
            _ => return None,
        };
        total = total.checked_add(part)?;
        any = true;
    }
    any.then_some(total)
}

/// `-secret S` or `-secret @FILE` (the file holds the secret alone; trailing
/// newline trimmed). `files` is false for `JENKINS_SECRET`, which the image's
/// script passes on literally. A file other users can read is added to
/// `exposed`.
pub(super) fn secret(
    option: &'static str,
    value: &str,
    files: bool,
    exposed: &mut Vec<ReadableByOthers>,
) -> Result<Secret, CliError> {
    let Some(path) = value.strip_prefix('@').filter(|_| files) else {
        return Ok(Secret::new(value));
    };
    let text = read_secret_file(option, Path::new(path), exposed)?;
    let secret = text.trim();
    let invalid = |why: &str| CliError::ReadFile {
        option,
        path: PathBuf::from(path),
        source: io::Error::new(io::ErrorKind::InvalidData, why),
    };
    if secret.is_empty() {
        return Err(invalid("the file is empty"));
    }
    if secret.contains(char::is_whitespace) {
        return Err(invalid("the file must hold the secret alone, on one line"));
    }
    Ok(Secret::new(secret))
}

/// A secret with, when it was read from a file other users can read, the
/// warning to log once logging is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SecretArg {
    pub(super) secret: Secret,
    pub(super) exposed: Option<ReadableByOthers>,
}

impl SecretArg {
    /// A secret given as it is (a variable, a positional argument).
    pub(super) fn literal(value: impl Into<String>) -> Self {
        Self {
            secret: Secret::new(value),
            exposed: None,
        }
    }
}

/// `-secret S`, `-secret @FILE` or `JENKINS_SECRET` as a value parser: an
/// option (its name starts with `-`) reads `@FILE`, the variable is taken
/// literally (the image's script passes it on as it is).
pub(super) fn secret_arg(option: &'static str, value: &str) -> Result<SecretArg, CliError> {
    let mut exposed = Vec::new();
    let secret = secret(option, value, option.starts_with('-'), &mut exposed)?;
    Ok(SecretArg {
        secret,
        exposed: exposed.pop(),
    })
}

/// `-cert PEM` or `-cert @FILE`; must contain a PEM certificate block.
pub(super) fn cert(option: &'static str, value: &str) -> Result<CertPem, CliError> {
    const MARKER: &str = "-----BEGIN CERTIFICATE-----";
    let value = value.trim();
    if let Some(path) = value.strip_prefix('@') {
        let text = read_small_file(option, Path::new(path))?;
        if !text.contains(MARKER) {
            return Err(CliError::BadCert {
                option,
                what: format!("file {path}"),
            });
        }
        return Ok(CertPem(text));
    }
    if !value.contains(MARKER) {
        return Err(CliError::BadCert {
            option,
            what: "the value".to_owned(),
        });
    }
    Ok(CertPem(value.to_owned()))
}

/// `--log-format`: `text` or `json` (ours, not clap's `value_enum`, which
/// would quote the value).
pub(super) fn log_format(_option: &'static str, value: &str) -> Result<LogFormat, CliError> {
    match value {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(CliError::BadLogFormat),
    }
}

/// A command line split on whitespace (`--engine-command`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Argv(pub(super) Vec<String>);

/// `--engine-command CMD`: a program and its arguments, split on whitespace.
pub(super) fn engine_command(_option: &'static str, value: &str) -> Result<Argv, CliError> {
    let argv: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
    if argv.is_empty() {
        return Err(CliError::EmptyEngineCommand);
    }
    Ok(Argv(argv))
}

/// `-instanceIdentity`: the controller's public key, standard base64.
pub(super) fn instance_identity(option: &'static str, value: &str) -> Result<String, CliError> {
    let value = value.trim();
    match base64::engine::general_purpose::STANDARD.decode(value) {
        Ok(bytes) if !bytes.is_empty() => Ok(value.to_owned()),
        _ => Err(CliError::BadInstanceIdentity { option }),
    }
}

/// `-protocols A,B` (repeatable) / `JENKINS_PROTOCOLS`: comma-separated.
pub(super) fn protocols<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `--lender URL`, repeated or comma-separated: an active lender and its
/// standbys, in the order the link tries them; a URL given twice counts once.
pub(super) fn lender_urls(
    option: &'static str,
    values: &[String],
) -> Result<Vec<String>, CliError> {
    let mut urls: Vec<String> = Vec::new();
    for value in values {
        let mut parts = value.split(',').map(str::trim).filter(|p| !p.is_empty());
        let Some(first) = parts.next() else {
            // Nothing but commas or blanks: the single-URL check names it.
            lender_url(option, value)?;
            continue;
        };
        for part in std::iter::once(first).chain(parts) {
            let url = lender_url(option, part)?;
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
    }
    Ok(urls)
}

/// One `--lender URL`: an absolute http(s) URL with a host, without
/// `user:password@` (the link authenticates with its token) or a query
/// (the link's path is appended to it).
pub(super) fn lender_url(option: &'static str, value: &str) -> Result<String, CliError> {
    check_http_url(option, value)?;
    let bad = |reason| CliError::BadUrl { option, reason };
    let uri: http::Uri = value.parse().map_err(|_| bad("not a valid URL"))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(bad(
            "the URL must not carry user:password@ (the link authenticates with \
             --lender-token-file)",
        ));
    }
    if uri.query().is_some() {
        return Err(bad("the URL must not have a query"));
    }
    Ok(value.to_owned())
}

/// `--lender-token-file FILE`: the token alone in the file, trimmed. A
/// file other users can read is added to `exposed`.
pub(super) fn token_file(
    option: &'static str,
    path: &Path,
    exposed: &mut Vec<ReadableByOthers>,
) -> Result<Secret, CliError> {
    let text = read_secret_file(option, path, exposed)?;
    let token = text.trim();
    let invalid = |why: &str| CliError::ReadFile {
        option,
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidData, why),
    };
    if token.is_empty() {
        return Err(invalid("the file is empty"));
    }
    if token.contains(char::is_whitespace) {
        return Err(invalid("the file must hold the token alone, on one line"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "the token holds characters an HTTP header cannot carry",
        ));
    }
    Ok(Secret::new(token))
}

/// [`logging_config`] as a value parser.
pub(super) fn logging_config_arg(_option: &'static str, value: &str) -> Result<PathBuf, CliError> {
    logging_config(Path::new(value))
}

/// `-loggingConfig FILE`: an existing regular file, made absolute because
/// the engine JVM resolves a relative path against its own working
/// directory, not ours. Its contents are the JVM's business.
pub(super) fn logging_config(path: &Path) -> Result<PathBuf, CliError> {
    let refuse = |reason: String| CliError::LoggingConfig {
        path: path.to_owned(),
        reason,
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Err(refuse("not a regular file".to_owned())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(refuse("no such file".to_owned()))
        }
        Err(err) => return Err(refuse(format!("cannot use the file: {err}"))),
    }
    let absolute = std::path::absolute(path)
        .map_err(|err| refuse(format!("cannot make the path absolute: {err}")))?;
    if absolute.to_str().is_none() {
        // It travels in a JVM option, which is text.
        return Err(refuse("the path is not valid UTF-8".to_owned()));
    }
    Ok(absolute)
}

/// `--labels` (repeatable) / `JNLP_AGENT_LABELS`: labels separated by
/// whitespace (as Jenkins splits a label string) or commas, each checked by
/// [`control::labels::check_label`]; duplicates dropped, order kept.
pub(super) fn labels(option: &'static str, values: &[String]) -> Result<Vec<String>, CliError> {
    use control::labels::{check_label, split, LabelError};
    let mut out: Vec<String> = Vec::new();
    let words = values
        .iter()
        .flat_map(|v| split(v))
        .flat_map(|w| w.split(','))
        .filter(|w| !w.is_empty());
    for (index, word) in words.enumerate() {
        let index = index + 1;
        match check_label(word) {
            Ok(()) => {}
            Err(LabelError::BadCharacter { character }) => {
                return Err(CliError::BadLabel {
                    option,
                    index,
                    character,
                })
            }
            Err(LabelError::TooLong) => {
                return Err(CliError::LabelTooLong {
                    option,
                    index,
                    max: control::labels::MAX_LABEL,
                })
            }
            // Empty words were skipped above.
            Err(LabelError::Empty) => continue,
        }
        if !out.iter().any(|l| l == word) {
            out.push(word.to_owned());
        }
    }
    Ok(out)
}

/// The node name in a JNLP file URL, `.../computer/NAME/jenkins-agent.jnlp`
/// (or `slave-agent.jnlp`), percent-decoded; `None` for other shapes.
pub(super) fn node_from_jnlp_url(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let mut segments = uri.path().split('/').rev().filter(|s| !s.is_empty());
    let file = segments.next()?;
    if !file.ends_with(".jnlp") {
        return None;
    }
    let name = segments.next()?;
    (segments.next()? == "computer").then_some(())?;
    let name = percent_decode(name)?;
    (!name.trim().is_empty()).then_some(name)
}

/// `%XX` escapes decoded; `None` when one is broken or the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// [`read_small_file`] for a file holding a secret: one other users can
/// read is added to `exposed`, for a warning once logging is up.
fn read_secret_file(
    option: &'static str,
    path: &Path,
    exposed: &mut Vec<ReadableByOthers>,
) -> Result<String, CliError> {
    let (text, meta) = read_file(option, path)?;
    exposed.extend(readable_by_others(path, &meta));
    Ok(text)
}

fn read_small_file(option: &'static str, path: &Path) -> Result<String, CliError> {
    read_file(option, path).map(|(text, _)| text)
}

/// A small UTF-8 file's text, with the metadata of the file opened.
fn read_file(option: &'static str, path: &Path) -> Result<(String, std::fs::Metadata), CliError> {
    use control::secret_file::ReadError;
    control::secret_file::read_file(path, FILE_LIMIT).map_err(|err| CliError::ReadFile {
        option,
        path: path.to_owned(),
        source: match err {
            ReadError::Io(source) => source,
            ReadError::TooLarge { .. } => {
                io::Error::new(io::ErrorKind::InvalidData, "the file is larger than 64 KiB")
            }
            ReadError::NotUtf8 => {
                io::Error::new(io::ErrorKind::InvalidData, "the file is not UTF-8 text")
            }
        },
    })
}
