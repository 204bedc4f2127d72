//! How a request to the controller's web port failed, sorted into causes
//! a person can act on.

use std::error::Error as _;
use std::io;

use http::StatusCode;
use remoting_protocol::discovery::DiscoveryError;
use remoting_protocol::jnlp::JnlpError;

/// Longest reason quoted from a failure.
const MAX_REASON_CHARS: usize = 300;

/// Why the HTTP client could not be set up (a local configuration fault).
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    /// A `-cert` value holds no usable PEM certificate.
    #[error(
        "-cert #{index} is unusable: {reason}; pass a PEM certificate \
         (-----BEGIN CERTIFICATE-----...) or @file naming one"
    )]
    Cert {
        /// 1-based position among the `-cert` options.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A proxy variable is not a usable proxy URL. Its value is not echoed:
    /// it may carry a password.
    #[error("the proxy setting {variable} is not a valid proxy URL: fix or unset it")]
    Proxy {
        /// The variable's name.
        variable: &'static str,
    },
    /// reqwest refused the configuration.
    #[error("cannot set up the HTTP client: {reason}")]
    Client {
        /// reqwest's explanation.
        reason: String,
    },
}

/// Why a request to the controller's web port failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL cannot be requested as given.
    #[error("cannot request {url}: {reason}")]
    InvalidUrl {
        /// The URL, with any `user:password@` masked.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No connection: name resolution failed, connection refused or timed out,
    /// or the request timed out.
    #[error(
        "cannot reach {url}: {reason}; check the URL and that the controller is up{}",
        if *.proxied { ", and the http_proxy/https_proxy/no_proxy settings" } else { "" }
    )]
    Unreachable {
        /// The URL requested.
        url: String,
        /// The transport's explanation.
        reason: String,
        /// Whether a proxy variable is set (it may be the culprit).
        proxied: bool,
    },
    /// TLS to the web port failed, typically an untrusted certificate.
    #[error(
        "TLS with {url} failed: {reason}; if the controller uses a private CA, pass it \
         with -cert; -noCertificateCheck disables the check"
    )]
    Tls {
        /// The URL requested.
        url: String,
        /// rustls' explanation.
        reason: String,
    },
    /// 401 or 403.
    #[error("{}", unauthorized_message(url, *.status, option, *.credentials_sent))]
    Unauthorized {
        /// The URL requested (and where it was redirected).
        url: String,
        /// 401 or 403.
        status: StatusCode,
        /// The option that supplies the credentials for this request.
        option: &'static str,
        /// Whether credentials were sent (and refused).
        credentials_sent: bool,
    },
    /// The answer to `tcpSlaveAgentListener/` is unusable: not Jenkins, TCP
    /// agent port disabled, no identity...
    #[error("discovery at {url} failed: {source}")]
    Discovery {
        /// The URL requested (and where it was redirected).
        url: String,
        /// What is wrong with the answer.
        #[source]
        source: DiscoveryError,
    },
    /// Any other status than success.
    #[error("{url} answered HTTP {status}{hint}")]
    Status {
        /// The URL requested (and where it was redirected).
        url: String,
        /// The final status.
        status: StatusCode,
        /// What to check, starting with "; " (or empty).
        hint: &'static str,
    },
    /// The answer to the JNLP request is not a JNLP file at all.
    #[error(
        "{url} answered with {content_type} instead of a JNLP file: check -jnlpUrl, and \
         -jnlpCredentials if a login page answered"
    )]
    NotJnlp {
        /// The URL requested (and where it was redirected).
        url: String,
        /// The `Content-Type` received (shortened).
        content_type: String,
    },
    /// The JNLP file cannot be decrypted or read.
    #[error("the JNLP file from {url} is unusable: {source}")]
    Jnlp {
        /// The URL requested (and where it was redirected).
        url: String,
        /// What is wrong with it.
        #[source]
        source: JnlpError,
    },
    /// The body is larger than allowed.
    #[error("{url} sent more than {max} bytes ({announced}); refusing it")]
    TooLarge {
        /// The URL requested (and where it was redirected).
        url: String,
        /// The limit.
        max: usize,
        /// What the server announced, for the message.
        announced: String,
    },
    /// Another transport failure: the body was cut off, too many redirects...
    #[error("request to {url} failed: {reason}")]
    Request {
        /// The URL requested.
        url: String,
        /// The transport's explanation.
        reason: String,
    },
    /// The WebSocket readiness check (`GET login`) did not answer 200.
    #[error(
        "{url} answered HTTP {status}: the controller is not ready for agents yet \
         (starting, restarting, or in quiet mode); retrying"
    )]
    NotReady {
        /// The `login` URL.
        url: String,
        /// What it answered.
        status: StatusCode,
    },
    /// [`ControllerHttp::discover_any`] was given no URL.
    #[error("no controller URL given: pass -url (or -jnlpUrl)")]
    NoUrls,
    /// Every URL given to [`ControllerHttp::discover_any`] failed.
    #[error("no controller URL worked:{}", failure_list(.failures))]
    AllFailed {
        /// Each URL with its failure, in the order tried.
        failures: Vec<(String, HttpError)>,
    },
}

fn unauthorized_message(
    url: &str,
    status: StatusCode,
    option: &str,
    credentials_sent: bool,
) -> String {
    if credentials_sent {
        format!(
            "{url} answered HTTP {status} to the credentials given with {option}: \
             check the user name and API token"
        )
    } else {
        format!("{url} answered HTTP {status}: pass {option} user:apitoken")
    }
}

fn failure_list(failures: &[(String, HttpError)]) -> String {
    failures
        .iter()
        .map(|(_, err)| format!("\n  - {err}"))
        .collect()
}

/// Sorts a reqwest error into an [`HttpError`].
pub(super) fn classify(url: &str, err: &reqwest::Error, proxied: bool) -> HttpError {
    let reason = render_chain(err);
    if let Some(tls) = find_rustls_error(err) {
        return HttpError::Tls {
            url: url.to_owned(),
            reason: shorten(&tls.to_string()),
        };
    }
    // A peer that closes during the handshake leaves no rustls::Error.
    if err.is_connect() && reason.to_ascii_lowercase().contains("tls handshake") {
        return HttpError::Tls {
            url: url.to_owned(),
            reason,
        };
    }
    if err.is_body() || err.is_decode() {
        return HttpError::Request {
            url: url.to_owned(),
            reason: format!("the answer was cut off: {reason}"),
        };
    }
    if err.is_timeout() || err.is_connect() {
        return HttpError::Unreachable {
            url: url.to_owned(),
            reason,
            proxied,
        };
    }
    HttpError::Request {
        url: url.to_owned(),
        reason,
    }
}

/// The rustls error somewhere in the chain, if any. `io::Error::source`
/// skips the error it wraps (and hyper-util nests two io::Errors around
/// rustls' error), so wrapped errors are descended into explicitly.
fn find_rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(current) = next {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match current
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
    }
    None
}

/// The causes of `err` joined with ": ", without reqwest's own
/// "error sending request for url (...)" (the URL is in our message) and
/// without repeats.
pub(super) fn render_chain(err: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = err.source();
    while let Some(current) = next {
        let text = current.to_string();
        let noise = text.is_empty() || text.starts_with("client error (");
        if !noise && !parts.last().is_some_and(|last| last.ends_with(&text)) {
            parts.push(text);
        }
        next = current.source();
    }
    if err.is_timeout() && !parts.iter().any(|p| p.contains("timed out")) {
        parts.push("timed out".to_owned());
    }
    if parts.is_empty() {
        parts.push(err.to_string());
    }
    shorten(&parts.join(": "))
}

pub(super) fn shorten(text: &str) -> String {
    remoting_protocol::quote::quote(text.as_bytes(), MAX_REASON_CHARS)
}
