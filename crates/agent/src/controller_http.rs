//! The agent's HTTP side toward the controller's web port: discovery of the
//! TCP agent port, the JNLP file, and binaries such as the engine jar.
//!
//! [`ControllerHttp`] wraps one reqwest client configured from the command
//! line the way agent.jar configures its `HttpURLConnection`s:
//!
//! - TLS with the system roots plus every `-cert` PEM; `-noCertificateCheck`
//!   turns verification off (and says so loudly, once per process);
//! - the proxy of the environment (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`,
//!   `NO_PROXY` and their lower-case forms, read as reqwest reads them by
//!   default), with `-proxyCredentials` as proxy basic auth;
//! - `-credentials user:password` as basic auth on controller requests,
//!   `-jnlpCredentials` on the JNLP file request;
//! - connect and request timeouts, a `jnlp-agent/<version>` user agent.
//!
//! Failures are sorted into [`HttpError`] variants that name the URL and
//! what to do. Credentials travel in headers only, never in URLs (URLs with
//! `user:password@` are refused), so no URL in an error or log line carries
//! a secret.

use std::error::Error as _;
use std::fmt;
use std::io;
use std::sync::Once;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use remoting_protocol::discovery::{self, DiscoveryError, Endpoint};
use remoting_protocol::jnlp::{self, JnlpArguments, JnlpError};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;

use crate::agent_port::first_env;
use crate::settings::{CertPem, Credentials, Settings};

/// Time allowed to establish a connection (TCP and TLS) to the web port.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Time allowed for a whole request, body included, except [`ControllerHttp::fetch`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Time allowed for [`ControllerHttp::fetch`]: binaries of a few MiB over a
/// slow link.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// The `User-Agent` header.
const USER_AGENT: &str = concat!("jnlp-agent/", env!("CARGO_PKG_VERSION"));

/// Proxy variables reqwest reads, in its order (per URL scheme).
const HTTP_PROXY_VARIABLES: [&str; 4] = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"];
const HTTPS_PROXY_VARIABLES: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];
const NO_PROXY_VARIABLES: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// Error text from the transport is shortened to this many characters.
const MAX_REASON_CHARS: usize = 300;

/// What [`ControllerHttp`] needs from the settings.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `-cert`: extra trusted roots, PEM.
    pub certs: Vec<CertPem>,
    /// `-noCertificateCheck`.
    pub no_certificate_check: bool,
    /// `-credentials`: basic auth toward the controller.
    pub credentials: Option<Credentials>,
    /// `-proxyCredentials`: basic auth toward the proxy.
    pub proxy_credentials: Option<Credentials>,
    /// See [`CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// See [`FETCH_TIMEOUT`].
    pub fetch_timeout: Duration,
}

impl HttpConfig {
    /// The web-port settings of `settings`, with the default timeouts.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            certs: settings.certs.clone(),
            no_certificate_check: settings.no_certificate_check,
            credentials: settings.credentials.clone(),
            proxy_credentials: settings.proxy_credentials.clone(),
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            fetch_timeout: FETCH_TIMEOUT,
        }
    }
}

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

/// What a conditional fetch found.
#[derive(Debug)]
pub enum Fetched {
    /// 304: the copy we have is current.
    Unchanged,
    /// The resource, and its `Last-Modified` if the server sent one.
    Body {
        /// The body.
        bytes: Bytes,
        /// `Last-Modified`, for the next conditional fetch.
        last_modified: Option<String>,
    },
}

/// The HTTP client for one controller (or list of controller URLs).
#[derive(Clone)]
pub struct ControllerHttp {
    client: reqwest::Client,
    credentials: Option<Credentials>,
    fetch_timeout: Duration,
    /// Whether a proxy variable is set, for the "unreachable" hint.
    proxied: bool,
}

impl fmt::Debug for ControllerHttp {
    // reqwest's Debug prints proxy URLs, which may carry credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControllerHttp")
            .field("credentials", &self.credentials)
            .field("proxied", &self.proxied)
            .finish_non_exhaustive()
    }
}

impl ControllerHttp {
    /// A client configured from the command line and the process environment.
    pub fn new(settings: &Settings) -> Result<Self, HttpSetupError> {
        Self::with_config(HttpConfig::from_settings(settings), &|name| {
            std::env::var(name).ok()
        })
    }

    /// A client from `config`, reading proxy variables through `env`.
    pub fn with_config(
        config: HttpConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, HttpSetupError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(USER_AGENT)
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout);

        for (position, cert) in config.certs.iter().enumerate() {
            for der in parse_cert_pem(cert).map_err(|reason| HttpSetupError::Cert {
                index: position + 1,
                reason,
            })? {
                let cert =
                    reqwest::Certificate::from_der(&der).map_err(|err| HttpSetupError::Cert {
                        index: position + 1,
                        reason: err.to_string(),
                    })?;
                builder = builder.add_root_certificate(cert);
            }
        }

        if config.no_certificate_check {
            static WARNED: Once = Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "-noCertificateCheck: the controller's web-port certificate is NOT verified; \
                     anyone on the network path can impersonate the controller and obtain \
                     the credentials and the agent secret"
                );
            });
            builder = builder.danger_accept_invalid_certs(true);
        }

        // reqwest would read the proxy variables itself, but only for a client
        // without explicit proxies; reading the same variables here, the same
        // way, lets -proxyCredentials be added and keeps tests hermetic.
        builder = builder.no_proxy();
        for proxy in explicit_proxies(env, config.proxy_credentials.as_ref())? {
            builder = builder.proxy(proxy);
        }

        let client = builder.build().map_err(|err| HttpSetupError::Client {
            reason: render_chain(&err),
        })?;
        let proxied = HTTP_PROXY_VARIABLES
            .iter()
            .chain(&HTTPS_PROXY_VARIABLES)
            .any(|name| env(name).is_some_and(|v| !v.trim().is_empty()));
        Ok(Self {
            client,
            credentials: config.credentials,
            fetch_timeout: config.fetch_timeout,
            proxied,
        })
    }

    /// Asks `controller_url` where its TCP agent port is:
    /// `GET {controller_url}tcpSlaveAgentListener/`.
    pub async fn discover(&self, controller_url: &str) -> Result<Endpoint, HttpError> {
        check_url(controller_url)?;
        let listener_url =
            discovery::listener_url(controller_url).map_err(|source| HttpError::Discovery {
                url: controller_url.to_owned(),
                source,
            })?;
        let response = self
            .get(&listener_url, self.credentials.as_ref(), None)
            .await?;
        let url = located(&listener_url, &response);
        let status = response.status();
        check_proxy_auth(&url, status)?;
        if is_unauthorized(status) {
            return Err(HttpError::Unauthorized {
                url,
                status,
                option: "-credentials",
                credentials_sent: self.credentials.is_some(),
            });
        }
        let endpoint =
            discovery::endpoint_from_response(controller_url, status, response.headers())
                .map_err(|source| HttpError::Discovery { url, source })?;
        tracing::debug!(
            controller = %controller_url,
            host = %endpoint.host,
            port = endpoint.port,
            "discovered the agent port"
        );
        Ok(endpoint)
    }

    /// [`ControllerHttp::discover`] on each URL in order (`-url` is
    /// repeatable); the first that works, with its URL normalised to end in
    /// `/`. When all fail, the error lists every URL's failure (a single URL's
    /// failure is returned as it is).
    pub async fn discover_any(&self, urls: &[String]) -> Result<(String, Endpoint), HttpError> {
        let mut failures = Vec::new();
        for url in urls {
            match self.discover(url).await {
                Ok(endpoint) => {
                    // discover() succeeded, so the URL normalises.
                    let base = discovery::controller_base_url(url).unwrap_or_else(|_| url.clone());
                    return Ok((base, endpoint));
                }
                Err(err) => {
                    let url = redact(url);
                    tracing::debug!(controller = %url, %err, "discovery failed, trying the next URL");
                    failures.push((url, err));
                }
            }
        }
        match failures.len() {
            0 => Err(HttpError::NoUrls),
            1 => Err(failures.pop().map_or(HttpError::NoUrls, |(_, err)| err)),
            _ => Err(HttpError::AllFailed { failures }),
        }
    }

    /// Fetches and reads the JNLP file at `jnlp_url` (`-jnlpUrl`), as
    /// agent.jar does: with a secret, asks for the encrypted form
    /// (`encrypt=true`) and decrypts it; without, reads it as it comes.
    /// `jnlp_credentials` (`-jnlpCredentials`) is sent as basic auth.
    pub async fn fetch_jnlp(
        &self,
        jnlp_url: &str,
        secret: Option<&str>,
        jnlp_credentials: Option<&Credentials>,
    ) -> Result<JnlpArguments, HttpError> {
        check_url(jnlp_url)?;
        let request_url = match secret {
            Some(_) => with_encrypt_parameter(jnlp_url),
            None => jnlp_url.to_owned(),
        };
        let response = self.get(&request_url, jnlp_credentials, None).await?;
        let url = located(&request_url, &response);
        let status = response.status();
        check_proxy_auth(&url, status)?;
        if is_unauthorized(status) {
            return Err(HttpError::Unauthorized {
                url,
                status,
                option: "-jnlpCredentials",
                credentials_sent: jnlp_credentials.is_some(),
            });
        }
        if !status.is_success() {
            let hint = if status == StatusCode::NOT_FOUND {
                "; check -jnlpUrl: the node name in it must exist on the controller"
            } else {
                ""
            };
            return Err(HttpError::Status { url, status, hint });
        }
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = read_body(
            &url,
            response,
            jnlp::MAX_JNLP_BYTES + jnlp::IV_LEN,
            self.proxied,
        )
        .await?;
        let parsed = match (
            secret,
            jnlp_body_kind(content_type.as_deref(), secret.is_some()),
        ) {
            (_, JnlpBody::Other) => {
                return Err(HttpError::NotJnlp {
                    url,
                    content_type: shorten(content_type.as_deref().unwrap_or("no Content-Type")),
                })
            }
            (Some(secret), JnlpBody::Encrypted) => jnlp::parse_encrypted_jnlp(secret, &body),
            _ => jnlp::parse_jnlp(&body),
        };
        parsed.map_err(|source| HttpError::Jnlp { url, source })
    }

    /// Downloads `url` (e.g. `{controller}jnlpJars/remoting.jar`) with the
    /// controller credentials, refusing bodies larger than `max_bytes`.
    #[cfg(test)]
    pub async fn fetch(&self, url: &str, max_bytes: usize) -> Result<Bytes, HttpError> {
        match self.fetch_if_modified(url, max_bytes, None).await? {
            Fetched::Body { bytes, .. } => Ok(bytes),
            // Not asked conditionally: a 304 is not an answer.
            Fetched::Unchanged => Err(HttpError::Status {
                url: url.to_owned(),
                status: reqwest::StatusCode::NOT_MODIFIED,
                hint: "",
            }),
        }
    }

    /// [`ControllerHttp::fetch`], conditional on the `Last-Modified` of the
    /// copy we have: the controller serves its jars with one and answers
    /// 304 when they have not changed, so a reconnect need not download the
    /// engine again.
    pub async fn fetch_if_modified(
        &self,
        url: &str,
        max_bytes: usize,
        last_modified: Option<&str>,
    ) -> Result<Fetched, HttpError> {
        check_url(url)?;
        let condition = last_modified.map(|value| (reqwest::header::IF_MODIFIED_SINCE, value));
        let response = self
            .get_with(
                url,
                self.credentials.as_ref(),
                Some(self.fetch_timeout),
                condition,
            )
            .await?;
        let located_url = located(url, &response);
        let status = response.status();
        check_proxy_auth(&located_url, status)?;
        if is_unauthorized(status) {
            return Err(HttpError::Unauthorized {
                url: located_url,
                status,
                option: "-credentials",
                credentials_sent: self.credentials.is_some(),
            });
        }
        if status == reqwest::StatusCode::NOT_MODIFIED && last_modified.is_some() {
            return Ok(Fetched::Unchanged);
        }
        if !status.is_success() {
            return Err(HttpError::Status {
                url: located_url,
                status,
                hint: "",
            });
        }
        let last_modified = response
            .headers()
            .get(reqwest::header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = read_body(&located_url, response, max_bytes, self.proxied).await?;
        Ok(Fetched::Body {
            bytes,
            last_modified,
        })
    }

    /// Sends a GET, following redirects (reqwest drops the authorization
    /// header when a redirect leaves the host).
    async fn get(
        &self,
        url: &str,
        credentials: Option<&Credentials>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, HttpError> {
        self.get_with(url, credentials, timeout, None).await
    }

    /// [`ControllerHttp::get`] with one more request header.
    async fn get_with(
        &self,
        url: &str,
        credentials: Option<&Credentials>,
        timeout: Option<Duration>,
        header: Option<(reqwest::header::HeaderName, &str)>,
    ) -> Result<reqwest::Response, HttpError> {
        let mut request = self.client.get(url);
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        if let Some(credentials) = credentials {
            request = request.basic_auth(&credentials.user, Some(credentials.password.expose()));
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        request
            .send()
            .await
            .map_err(|err| classify(url, &err, self.proxied))
    }
}

/// The proxies reqwest would take from the environment by default (on Linux:
/// `HTTP_PROXY`, `HTTPS_PROXY`, falling back to `ALL_PROXY`, upper case
/// first, excluding `NO_PROXY`), read through `env`, with `credentials`
/// (`-proxyCredentials`) added when given.
fn explicit_proxies(
    env: &dyn Fn(&str) -> Option<String>,
    credentials: Option<&Credentials>,
) -> Result<Vec<reqwest::Proxy>, HttpSetupError> {
    let no_proxy = first_env(env, &NO_PROXY_VARIABLES)
        .and_then(|(_, list)| reqwest::NoProxy::from_string(&list));
    let mut proxies = Vec::new();
    for (variables, https) in [
        (&HTTP_PROXY_VARIABLES, false),
        (&HTTPS_PROXY_VARIABLES, true),
    ] {
        let Some((variable, value)) = first_env(env, variables) else {
            continue;
        };
        let mut proxy = if https {
            reqwest::Proxy::https(value.trim())
        } else {
            reqwest::Proxy::http(value.trim())
        }
        .map_err(|_| HttpSetupError::Proxy { variable })?;
        if let Some(credentials) = credentials {
            proxy = proxy.basic_auth(&credentials.user, credentials.password.expose());
        }
        proxies.push(proxy.no_proxy(no_proxy.clone()));
    }
    Ok(proxies)
}

/// The DER certificates of one `-cert` PEM text.
fn parse_cert_pem(pem: &CertPem) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.0.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("not valid PEM ({err})"))?;
    if certs.is_empty() {
        return Err("no -----BEGIN CERTIFICATE----- block found".to_owned());
    }
    // reqwest only parses the certificates when the client is built, and then
    // says nothing of which one failed: check each here.
    let mut store = rustls::RootCertStore::empty();
    for (n, der) in certs.iter().enumerate() {
        store
            .add(der.clone())
            .map_err(|err| format!("certificate {} of the PEM is not usable: {err}", n + 1))?;
    }
    Ok(certs)
}

/// Refuses URLs that are not http(s) or carry `user:password@`.
fn check_url(url: &str) -> Result<(), HttpError> {
    let invalid = |reason| HttpError::InvalidUrl {
        url: redact(url),
        reason,
    };
    let parsed = reqwest::Url::parse(url.trim()).map_err(|_| invalid("it is not a valid URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http:// or https://"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "user:password@ in the URL is not supported; pass -credentials \
             (or -jnlpCredentials for -jnlpUrl) instead",
        ));
    }
    Ok(())
}

/// `url` with any `user:password@` replaced by `***@`, for messages.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_len].rfind('@') {
        Some(at) => format!(
            "{}***@{}",
            &url[..authority_start],
            &url[authority_start + at + 1..]
        ),
        None => url.to_owned(),
    }
}

/// `jnlp_url` asking for the encrypted form, as agent.jar builds it.
fn with_encrypt_parameter(jnlp_url: &str) -> String {
    let separator = if jnlp_url.contains('?') { '&' } else { '?' };
    format!("{jnlp_url}{separator}encrypt=true")
}

/// How to read a JNLP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JnlpBody {
    /// XML as it is.
    Plain,
    /// IV + AES/CFB8 ciphertext.
    Encrypted,
    /// Something else, e.g. a login page.
    Other,
}

/// Jenkins serves the encrypted form as `application/octet-stream` and the
/// plain one as `application/x-java-jnlp-file`; agent.jar decides by the same
/// header. Content sniffing would be wrong: the random IV may start with `<`.
fn jnlp_body_kind(content_type: Option<&str>, secret_given: bool) -> JnlpBody {
    let media_type = content_type
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if media_type == "application/x-java-jnlp-file" || media_type.contains("xml") {
        JnlpBody::Plain
    } else if media_type.starts_with("text/") {
        JnlpBody::Other
    } else if secret_given {
        JnlpBody::Encrypted
    } else {
        JnlpBody::Plain
    }
}

/// A 407 that reached us: a plain-HTTP request forwarded by a proxy that
/// wants credentials.
fn check_proxy_auth(url: &str, status: StatusCode) -> Result<(), HttpError> {
    if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        return Err(HttpError::Status {
            url: url.to_owned(),
            status,
            hint: "; the HTTP proxy wants credentials: pass -proxyCredentials user:password",
        });
    }
    Ok(())
}

fn is_unauthorized(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
}

/// `requested`, plus where redirects led, for messages.
fn located(requested: &str, response: &reqwest::Response) -> String {
    let last = response.url().as_str();
    if last == requested {
        requested.to_owned()
    } else {
        format!("{requested} (redirected to {})", redact(last))
    }
}

/// Reads the body, refusing more than `max` bytes: by the announced length
/// first, then while streaming (the announcement may be absent or false).
async fn read_body(
    url: &str,
    mut response: reqwest::Response,
    max: usize,
    proxied: bool,
) -> Result<Bytes, HttpError> {
    let too_large = |announced: String| HttpError::TooLarge {
        url: url.to_owned(),
        max,
        announced,
    };
    let announced = response.content_length();
    if let Some(len) = announced {
        if len > max as u64 {
            return Err(too_large(format!("Content-Length: {len}")));
        }
    }
    // The announced length is at most max here.
    let capacity = announced.map_or(0, |len| usize::try_from(len).unwrap_or(0));
    let mut body = BytesMut::with_capacity(capacity);
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| classify(url, &err, proxied))?
    {
        if chunk.len() > max - body.len() {
            return Err(too_large("while streaming".to_owned()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Sorts a reqwest error into an [`HttpError`].
fn classify(url: &str, err: &reqwest::Error, proxied: bool) -> HttpError {
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
fn render_chain(err: &reqwest::Error) -> String {
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

fn shorten(text: &str) -> String {
    remoting_protocol::quote::quote(text.as_bytes(), MAX_REASON_CHARS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use base64::Engine as _;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpListener;

    use crate::settings::Secret;

    /// A 2048-bit RSA SubjectPublicKeyInfo, base64 (`openssl genpkey -algorithm
    /// RSA -pkeyopt rsa_keygen_bits:2048 | openssl pkey -pubout -outform DER | base64 -w0`).
    const IDENTITY: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAncYd2YaVhSsNaJCrjvqdGUX9dz3ENo1rERliyoKkiIOae/KETeqqIn+rnXTLjyhZUUwOKlb115GarnDWIyyL8GyK7cSlI6coicEyf6Eur17DZ83pRd8RgOt8rp/8VXlFqB3+2vdd/ZMg2vqWEHlAuCWSnWccWNPfnWw345jpyA4Q456waWxuDBkRqfWrk3/GSSZ3TeBaMj+/DkEJCRwMifVdig9n/xmNdWFsVreKv0Ug+6+bRyAafvIbPWES1CoTb32qJjSGn5vEU0gLs3B0qe2X7LznCfqiM2k/o8Cw8Ev0M/+HOgrJaVRnuDOeb3StsddVy61HJh+76aTd7sv0YQIDAQAB";

    /// A private CA and a web-port certificate it signed for 127.0.0.1 and
    /// localhost (P-256, valid from 2000 to 2126), made with `openssl ca`.
    const CA_PEM: &str = r"-----BEGIN CERTIFICATE-----
MIIBbjCCARSgAwIBAgICEAAwCgYIKoZIzj0EAwIwHTEbMBkGA1UEAwwSam5scC1h
Z2VudCB0ZXN0IENBMCAXDTAwMDEwMTAwMDAwMFoYDzIxMjYwMTAxMDAwMDAwWjAd
MRswGQYDVQQDDBJqbmxwLWFnZW50IHRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQTtJwHE9aC7HGQNTZ7RSRAEI07cw/sZDLURGG8ZTxAzGR0EoKthnNr
6x9nQLKJ+5z/tp2vNNdCWHz2oEj7kWV6o0IwQDAPBgNVHRMBAf8EBTADAQH/MA4G
A1UdDwEB/wQEAwIBBjAdBgNVHQ4EFgQUCNIGlJ41bXVRetcpN+IqWCDJ31QwCgYI
KoZIzj0EAwIDSAAwRQIgTK19oLgeSmIMGqM5J/uETtfXEBAoRSb18RGBgG0Qv+kC
IQCxMBjYvuusBZLGMu7TVSjqK6plV23Ot9b3Ooh/ktmjEQ==
-----END CERTIFICATE-----
";
    const LEAF_PEM: &str = r"-----BEGIN CERTIFICATE-----
MIIBtTCCAVygAwIBAgICEAEwCgYIKoZIzj0EAwIwHTEbMBkGA1UEAwwSam5scC1h
Z2VudCB0ZXN0IENBMCAXDTAwMDEwMTAwMDAwMFoYDzIxMjYwMTAxMDAwMDAwWjAU
MRIwEAYDVQQDDAkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASH
Yj8iRlt/8A/krHWKZCvEjcZObRythQnOxRGgFyPV4V6rQBckulZBFvDzmg1zT/jw
YEcb7vbhCYIQBbQ1fhvLo4GSMIGPMAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/BAQD
AgeAMBMGA1UdJQQMMAoGCCsGAQUFBwMBMBoGA1UdEQQTMBGHBH8AAAGCCWxvY2Fs
aG9zdDAdBgNVHQ4EFgQUo4DA5oAw0RP/WyQN29kcogXs8zwwHwYDVR0jBBgwFoAU
CNIGlJ41bXVRetcpN+IqWCDJ31QwCgYIKoZIzj0EAwIDRwAwRAIgPBl8ujYra+jt
BqkMtspqPKAu3yxAuAlh1SgUjHDxmokCIE4R0viC3HF+2f+zGq6ZuFLiGzUFZORF
qqT91HjjaYPq
-----END CERTIFICATE-----
";
    const LEAF_KEY_PEM: &str = r"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgQXM2NVdq/ClE2udH
w2rNOlPef0qhyoecMpGl5Kx1AY6hRANCAASHYj8iRlt/8A/krHWKZCvEjcZObRyt
hQnOxRGgFyPV4V6rQBckulZBFvDzmg1zT/jwYEcb7vbhCYIQBbQ1fhvL
-----END PRIVATE KEY-----
";

    const SECRET: &str = "8c2f0e5d7a1b4c9e3f60a7d2b5e8c1f4a9d3e6b0c7f2a5d8e1b4c7f0a3d6e9b2";

    fn config() -> HttpConfig {
        HttpConfig {
            certs: Vec::new(),
            no_certificate_check: false,
            credentials: None,
            proxy_credentials: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(5),
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn client(config: HttpConfig) -> ControllerHttp {
        ControllerHttp::with_config(config, &no_env).unwrap()
    }

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials {
            user: user.to_owned(),
            password: Secret::new(password),
        }
    }

    /// An HTTP/1.1 answer with `Content-Length` and `Connection: close`.
    fn answer(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {status}\r\n");
        for (name, value) in headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ));
        let mut out = out.into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn jenkins_answer() -> Vec<u8> {
        answer(
            "200 OK",
            &[
                ("X-Jenkins", "2.440.3"),
                ("X-Hudson-JNLP-Port", "50000"),
                ("X-Jenkins-JNLP-Port", "50000"),
                ("X-Instance-Identity", IDENTITY),
                ("X-Jenkins-Agent-Protocols", "JNLP4-connect, Ping"),
                ("X-Remoting-Minimum-Version", "3107.v665000b_51092"),
            ],
            b"Jenkins",
        )
    }

    type Handler = dyn Fn(&str) -> Vec<u8> + Send + Sync;

    /// A canned HTTP server: one request per connection, answered by
    /// `handler` from the request head; the heads are recorded.
    struct TestServer {
        url: String,
        heads: Arc<Mutex<Vec<String>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl TestServer {
        async fn start(handler: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> Self {
            Self::start_with(handler, None).await
        }

        async fn start_tls(handler: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> Self {
            let cert = CertificateDer::from_pem_slice(LEAF_PEM.as_bytes()).unwrap();
            let key =
                rustls_pki_types::PrivateKeyDer::from_pem_slice(LEAF_KEY_PEM.as_bytes()).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .unwrap();
            Self::start_with(
                handler,
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
            )
            .await
        }

        async fn start_with(
            handler: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
            tls: Option<tokio_rustls::TlsAcceptor>,
        ) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let heads = Arc::new(Mutex::new(Vec::new()));
            let handler: Arc<Handler> = Arc::new(handler);
            let scheme = if tls.is_some() { "https" } else { "http" };
            let task = {
                let heads = heads.clone();
                tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        let (heads, handler, tls) = (heads.clone(), handler.clone(), tls.clone());
                        tokio::spawn(async move {
                            match tls {
                                None => serve_one(stream, &heads, &*handler).await,
                                Some(tls) => {
                                    if let Ok(stream) = tls.accept(stream).await {
                                        serve_one(stream, &heads, &*handler).await;
                                    }
                                }
                            }
                        });
                    }
                })
            };
            Self {
                url: format!("{scheme}://127.0.0.1:{}/", addr.port()),
                heads,
                task,
            }
        }

        fn heads(&self) -> Vec<String> {
            self.heads.lock().unwrap().clone()
        }
    }

    async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        heads: &Mutex<Vec<String>>,
        handler: &Handler,
    ) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
            assert!(head.len() < 64 * 1024);
        }
        let head = String::from_utf8(head).unwrap();
        let reply = handler(&head);
        heads.lock().unwrap().push(head);
        let _ = stream.write_all(&reply).await;
        let _ = stream.shutdown().await;
    }

    /// A port nobody listens on: bound, then released.
    async fn closed_url() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://127.0.0.1:{}/", addr.port())
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    #[tokio::test]
    async fn discovery_reads_the_listener_headers() {
        let server = TestServer::start(|_| jenkins_answer()).await;
        let endpoint = client(config()).discover(&server.url).await.unwrap();
        assert_eq!(endpoint.host, "127.0.0.1");
        assert_eq!(endpoint.port, 50000);
        assert!(endpoint.offers_jnlp4());
        assert_eq!(
            endpoint.minimum_remoting_version.as_deref(),
            Some("3107.v665000b_51092")
        );
        let heads = server.heads();
        assert_eq!(heads.len(), 1);
        assert!(
            heads[0].starts_with("GET /tcpSlaveAgentListener/ HTTP/1.1\r\n"),
            "{}",
            heads[0]
        );
        assert_eq!(header(&heads[0], "user-agent"), Some(USER_AGENT));
        assert_eq!(header(&heads[0], "authorization"), None);
    }

    #[tokio::test]
    async fn discovery_appends_the_missing_slash() {
        let server = TestServer::start(|_| jenkins_answer()).await;
        let url = format!("{}jenkins", server.url);
        client(config()).discover(&url).await.unwrap();
        assert!(server.heads()[0].starts_with("GET /jenkins/tcpSlaveAgentListener/ "));
    }

    #[tokio::test]
    async fn listener_404_means_the_port_is_disabled() {
        let server = TestServer::start(|_| answer("404 Not Found", &[], b"")).await;
        let err = client(config()).discover(&server.url).await.unwrap_err();
        assert!(
            matches!(
                err,
                HttpError::Discovery {
                    source: DiscoveryError::PortDisabled,
                    ..
                }
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&server.url), "{text}");
        assert!(text.contains("-webSocket"), "{text}");
    }

    #[tokio::test]
    async fn a_200_without_jenkins_headers_is_not_jenkins() {
        let server = TestServer::start(|_| {
            answer(
                "200 OK",
                &[("Content-Type", "text/html")],
                b"<html>It works!</html>",
            )
        })
        .await;
        let err = client(config()).discover(&server.url).await.unwrap_err();
        assert!(
            matches!(
                err,
                HttpError::Discovery {
                    source: DiscoveryError::NotJenkins {
                        jenkins_header: false
                    },
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn unreachable_controller() {
        let url = closed_url().await;
        let err = client(config()).discover(&url).await.unwrap_err();
        assert!(matches!(err, HttpError::Unreachable { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("cannot reach {url}tcpSlaveAgentListener/: ")),
            "{text}"
        );
        assert!(text.contains("refused"), "{text}");
        assert!(
            text.ends_with("check the URL and that the controller is up"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn request_timeout_is_unreachable() {
        // Accepts, never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let mut config = config();
        config.request_timeout = Duration::from_millis(300);
        let err = client(config).discover(&url).await.unwrap_err();
        assert!(matches!(err, HttpError::Unreachable { .. }), "{err:?}");
        assert!(err.to_string().contains("timed out"), "{err}");
    }

    #[tokio::test]
    async fn credentials_go_in_a_basic_auth_header() {
        let server = TestServer::start(|head| {
            if header(head, "authorization").is_some() {
                jenkins_answer()
            } else {
                answer("401 Unauthorized", &[], b"")
            }
        })
        .await;

        let err = client(config()).discover(&server.url).await.unwrap_err();
        assert!(
            matches!(err, HttpError::Unauthorized { status, .. } if status == StatusCode::UNAUTHORIZED),
            "{err:?}"
        );
        assert!(
            err.to_string().ends_with("pass -credentials user:apitoken"),
            "{err}"
        );

        let mut config = config();
        config.credentials = Some(creds("admin", "11aa22bb"));
        let http = client(config);
        http.discover(&server.url).await.unwrap();
        let heads = server.heads();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("admin:11aa22bb")
        );
        assert_eq!(header(&heads[1], "authorization"), Some(expected.as_str()));
        assert!(!format!("{http:?}").contains("11aa22bb"));
    }

    #[tokio::test]
    async fn refused_credentials_are_reported_as_such() {
        let server = TestServer::start(|_| answer("403 Forbidden", &[], b"")).await;
        let mut config = config();
        config.credentials = Some(creds("admin", "wrong-token"));
        let err = client(config).discover(&server.url).await.unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.contains("HTTP 403 Forbidden to the credentials given with -credentials"));
        assert!(!text.contains("wrong-token"), "{text}");
    }

    #[tokio::test]
    async fn urls_with_user_info_are_refused_without_echoing_them() {
        let http = client(config());
        for url in [
            "http://admin:t0ps3cret@ci.example/",
            "http://admin:t0ps3cret@ci.example/computer/a/jenkins-agent.jnlp",
        ] {
            let errors = [
                http.discover(url).await.unwrap_err(),
                http.fetch_jnlp(url, None, None).await.unwrap_err(),
                http.fetch(url, 10).await.unwrap_err(),
            ];
            for err in errors {
                assert!(matches!(err, HttpError::InvalidUrl { .. }), "{err:?}");
                let text = format!("{err} {err:?}");
                assert!(!text.contains("t0ps3cret"), "{text}");
                assert!(text.contains("http://***@ci.example/"), "{text}");
            }
        }
        let err = http.discover("ftp://ci.example/").await.unwrap_err();
        assert!(err.to_string().contains("http:// or https://"), "{err}");
    }

    #[tokio::test]
    async fn discover_any_falls_through_to_the_next_url() {
        let server = TestServer::start(|_| jenkins_answer()).await;
        let dead = closed_url().await;
        let urls = vec![dead.clone(), server.url.trim_end_matches('/').to_owned()];
        let (url, endpoint) = client(config()).discover_any(&urls).await.unwrap();
        assert_eq!(url, server.url);
        assert_eq!(endpoint.port, 50000);
    }

    #[tokio::test]
    async fn discover_any_lists_every_failure() {
        let not_found = TestServer::start(|_| answer("404 Not Found", &[], b"")).await;
        let dead = closed_url().await;
        let urls = vec![dead.clone(), not_found.url.clone()];
        let err = client(config()).discover_any(&urls).await.unwrap_err();
        match &err {
            HttpError::AllFailed { failures } => {
                assert_eq!(failures.len(), 2);
                assert_eq!(failures[0].0, dead);
                assert!(matches!(failures[0].1, HttpError::Unreachable { .. }));
                assert!(matches!(failures[1].1, HttpError::Discovery { .. }));
            }
            other => panic!("{other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.starts_with("no controller URL worked:\n  - cannot reach "),
            "{text}"
        );
        assert_eq!(text.lines().count(), 3, "{text}");

        // A single URL's failure comes back as it is.
        let err = client(config())
            .discover_any(std::slice::from_ref(&dead))
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Unreachable { .. }), "{err:?}");
        assert!(matches!(
            client(config()).discover_any(&[]).await,
            Err(HttpError::NoUrls)
        ));
    }

    #[tokio::test]
    async fn redirects_are_followed_and_reported() {
        let server = TestServer::start(|head| {
            if head.starts_with("GET /old/") {
                answer(
                    "302 Found",
                    &[("Location", "/new/tcpSlaveAgentListener/")],
                    b"",
                )
            } else {
                answer("404 Not Found", &[], b"")
            }
        })
        .await;
        let url = format!("{}old/", server.url);
        let err = client(config()).discover(&url).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "{url}tcpSlaveAgentListener/ (redirected to {}new/tcpSlaveAgentListener/)",
                server.url
            )),
            "{text}"
        );
        assert!(matches!(
            err,
            HttpError::Discovery {
                source: DiscoveryError::PortDisabled,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn fetch_bounds_the_body() {
        let jar = vec![0x50u8; 10_000];
        let server = TestServer::start(move |head| {
            if head.starts_with("GET /jnlpJars/remoting.jar ") {
                answer("200 OK", &[], &jar)
            } else if head.starts_with("GET /chunked ") {
                // No Content-Length: the bound must hold while streaming.
                let mut out =
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                        .to_vec();
                for _ in 0..10 {
                    out.extend_from_slice(b"3e8\r\n");
                    out.extend_from_slice(&[0x41; 1000]);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                out
            } else {
                answer("404 Not Found", &[], b"")
            }
        })
        .await;
        let http = client(config());
        let jar_url = format!("{}jnlpJars/remoting.jar", server.url);
        assert_eq!(http.fetch(&jar_url, 10_000).await.unwrap().len(), 10_000);

        let err = http.fetch(&jar_url, 9_999).await.unwrap_err();
        assert!(
            matches!(err, HttpError::TooLarge { max: 9_999, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("Content-Length: 10000"), "{err}");

        let chunked = format!("{}chunked", server.url);
        assert_eq!(http.fetch(&chunked, 10_000).await.unwrap().len(), 10_000);
        let err = http.fetch(&chunked, 5_500).await.unwrap_err();
        assert!(err.to_string().contains("while streaming"), "{err}");

        let err = http
            .fetch(&format!("{}missing.jar", server.url), 10)
            .await
            .unwrap_err();
        assert!(
            matches!(err, HttpError::Status { status, .. } if status == StatusCode::NOT_FOUND),
            "{err:?}"
        );
    }

    fn agent_jnlp() -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<jnlp codebase="http://ci:8080/computer/agent-1/" spec="1.0+">
  <application-desc>
    <argument>{SECRET}</argument>
    <argument>agent-1</argument>
    <argument>-workDir</argument>
    <argument>/home/jenkins/agent</argument>
    <argument>-url</argument>
    <argument>http://ci:8080/</argument>
  </application-desc>
</jnlp>"#
        )
    }

    #[tokio::test]
    async fn encrypted_jnlp_is_requested_and_decrypted() {
        let server = TestServer::start(|head| {
            let line = head.lines().next().unwrap_or_default();
            let encrypted = jnlp::encrypt_jnlp(SECRET, [9; 16], agent_jnlp().as_bytes()).unwrap();
            match line {
                "GET /computer/agent-1/jenkins-agent.jnlp?encrypt=true HTTP/1.1"
                | "GET /computer/agent-1/jenkins-agent.jnlp?x=1&encrypt=true HTTP/1.1" => answer(
                    "200 OK",
                    &[("Content-Type", "application/octet-stream")],
                    &encrypted,
                ),
                "GET /computer/agent-1/jenkins-agent.jnlp HTTP/1.1" => answer(
                    "200 OK",
                    &[("Content-Type", "application/x-java-jnlp-file")],
                    agent_jnlp().as_bytes(),
                ),
                _ => answer("404 Not Found", &[], b""),
            }
        })
        .await;
        let http = client(config());
        let url = format!("{}computer/agent-1/jenkins-agent.jnlp", server.url);

        let args = http.fetch_jnlp(&url, Some(SECRET), None).await.unwrap();
        assert_eq!(
            (args.secret.as_str(), args.name.as_str()),
            (SECRET, "agent-1")
        );
        assert_eq!(
            args.agent_options().unwrap().urls,
            vec!["http://ci:8080/".to_owned()]
        );

        let with_query = format!("{url}?x=1");
        let args = http
            .fetch_jnlp(&with_query, Some(SECRET), None)
            .await
            .unwrap();
        assert_eq!(args.name, "agent-1");

        let wrong = "0".repeat(64);
        let err = http.fetch_jnlp(&url, Some(&wrong), None).await.unwrap_err();
        assert!(
            matches!(
                err,
                HttpError::Jnlp {
                    source: JnlpError::WrongSecret(_),
                    ..
                }
            ),
            "{err:?}"
        );

        // Without a secret: the plain file, with -jnlpCredentials.
        let jnlp_credentials = creds("jnlp-user", "jnlp-token");
        let args = http
            .fetch_jnlp(&url, None, Some(&jnlp_credentials))
            .await
            .unwrap();
        assert_eq!(args.secret, SECRET);
        let heads = server.heads();
        let last = heads.last().unwrap();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("jnlp-user:jnlp-token")
        );
        assert_eq!(header(last, "authorization"), Some(expected.as_str()));
        assert_eq!(header(&heads[0], "authorization"), None);
    }

    #[tokio::test]
    async fn jnlp_errors() {
        let server = TestServer::start(|head| {
            if head.starts_with("GET /login") {
                answer(
                    "200 OK",
                    &[("Content-Type", "text/html;charset=utf-8")],
                    b"<html>Sign in</html>",
                )
            } else if head.starts_with("GET /denied") {
                answer("403 Forbidden", &[], b"")
            } else {
                answer("404 Not Found", &[], b"")
            }
        })
        .await;
        let http = client(config());
        let err = http
            .fetch_jnlp(&format!("{}login", server.url), Some(SECRET), None)
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::NotJnlp { .. }), "{err:?}");
        assert!(err.to_string().contains("text/html;charset=utf-8"), "{err}");

        let err = http
            .fetch_jnlp(&format!("{}denied", server.url), None, None)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("pass -jnlpCredentials user:apitoken"),
            "{err}"
        );

        let err = http
            .fetch_jnlp(
                &format!("{}computer/nope/jenkins-agent.jnlp", server.url),
                None,
                None,
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("HTTP 404 Not Found; check -jnlpUrl"),
            "{err}"
        );
    }

    #[test]
    fn jnlp_body_kinds() {
        use JnlpBody::*;
        for (content_type, secret, expected) in [
            (Some("application/octet-stream"), true, Encrypted),
            (None, true, Encrypted),
            (Some("application/x-java-jnlp-file"), true, Plain),
            (
                Some("application/x-java-jnlp-file;charset=UTF-8"),
                true,
                Plain,
            ),
            (Some("application/xml"), true, Plain),
            (Some("text/xml"), true, Plain),
            (Some("text/html"), true, Other),
            (Some("text/html"), false, Other),
            (None, false, Plain),
            (Some("application/octet-stream"), false, Plain),
        ] {
            assert_eq!(
                jnlp_body_kind(content_type, secret),
                expected,
                "{content_type:?} {secret}"
            );
        }
    }

    #[test]
    fn encrypt_parameter_and_redaction() {
        assert_eq!(
            with_encrypt_parameter("http://a/x.jnlp"),
            "http://a/x.jnlp?encrypt=true"
        );
        assert_eq!(
            with_encrypt_parameter("http://a/x.jnlp?a=b"),
            "http://a/x.jnlp?a=b&encrypt=true"
        );
        assert_eq!(redact("https://u:p@h:1/p@q"), "https://***@h:1/p@q");
        assert_eq!(redact("https://h/p@q"), "https://h/p@q");
        assert_eq!(redact("u:p@h"), "u:p@h");
    }

    #[tokio::test]
    async fn proxy_credentials_reach_the_proxy() {
        // The fake proxy answers plain-HTTP requests in absolute form.
        let proxy = TestServer::start(|_| jenkins_answer()).await;
        let mut config = config();
        config.proxy_credentials = Some(creds("proxy-user", "proxy-pass"));
        let env: HashMap<&str, String> = [
            ("http_proxy", proxy.url.clone()),
            ("NO_PROXY", "excluded.example".to_owned()),
        ]
        .into();
        let http = ControllerHttp::with_config(config, &|name| env.get(name).cloned()).unwrap();
        let endpoint = http.discover("http://ci.example:8080/").await.unwrap();
        assert_eq!(
            (endpoint.host.as_str(), endpoint.port),
            ("ci.example", 50000)
        );
        let heads = proxy.heads();
        assert!(
            heads[0].starts_with("GET http://ci.example:8080/tcpSlaveAgentListener/ HTTP/1.1\r\n"),
            "{}",
            heads[0]
        );
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("proxy-user:proxy-pass")
        );
        assert_eq!(
            header(&heads[0], "proxy-authorization"),
            Some(expected.as_str())
        );
        assert!(!format!("{http:?}").contains("proxy-pass"));

        // no_proxy still applies: this one goes direct and finds nothing.
        let err = http.discover("http://excluded.example/").await.unwrap_err();
        assert!(
            matches!(err, HttpError::Unreachable { proxied: true, .. }),
            "{err:?}"
        );
        assert_eq!(proxy.heads().len(), 1);
    }

    #[tokio::test]
    async fn proxy_variables_apply_without_credentials() {
        let proxy = TestServer::start(|_| jenkins_answer()).await;
        let env: HashMap<&str, String> = [("HTTP_PROXY", proxy.url.clone())].into();
        let http = ControllerHttp::with_config(config(), &|name| env.get(name).cloned()).unwrap();
        http.discover("http://ci.example/").await.unwrap();
        let heads = proxy.heads();
        assert!(heads[0].starts_with("GET http://ci.example/tcpSlaveAgentListener/ "));
        assert_eq!(header(&heads[0], "proxy-authorization"), None);
    }

    #[tokio::test]
    async fn proxy_407_asks_for_proxy_credentials() {
        let proxy = TestServer::start(|_| {
            answer(
                "407 Proxy Authentication Required",
                &[("Proxy-Authenticate", "Basic")],
                b"",
            )
        })
        .await;
        let env: HashMap<&str, String> = [("http_proxy", proxy.url.clone())].into();
        let http = ControllerHttp::with_config(config(), &|name| env.get(name).cloned()).unwrap();
        let err = http.discover("http://ci.example/").await.unwrap_err();
        assert!(
            err.to_string()
                .ends_with("pass -proxyCredentials user:password"),
            "{err}"
        );
    }

    #[test]
    fn bad_proxy_variable_is_named_not_echoed() {
        let mut config = config();
        config.proxy_credentials = Some(creds("u", "p"));
        let err = ControllerHttp::with_config(config, &|name| {
            (name == "https_proxy").then(|| "http://u:secret@[bad".to_owned())
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("https_proxy"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn unusable_cert_pems_are_refused() {
        for (pem, expected) in [
            ("not a certificate", "no -----BEGIN CERTIFICATE----- block"),
            (LEAF_KEY_PEM, "no -----BEGIN CERTIFICATE----- block"),
            (
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                "not valid PEM",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "certificate 1 of the PEM is not usable",
            ),
        ] {
            let mut config = config();
            config.certs = vec![CertPem(CA_PEM.to_owned()), CertPem(pem.to_owned())];
            let err = ControllerHttp::with_config(config, &no_env).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("-cert #2 is unusable: "), "{text}");
            assert!(text.contains(expected), "{pem}: {text}");
        }
    }

    #[tokio::test]
    async fn tls_web_port_needs_its_ca() {
        let server = TestServer::start_tls(|_| jenkins_answer()).await;

        let err = client(config()).discover(&server.url).await.unwrap_err();
        assert!(matches!(err, HttpError::Tls { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("invalid peer certificate"), "{text}");
        assert!(text.contains("pass it with -cert"), "{text}");

        let mut with_ca = config();
        with_ca.certs = vec![CertPem(CA_PEM.to_owned())];
        let endpoint = client(with_ca).discover(&server.url).await.unwrap();
        assert_eq!(endpoint.port, 50000);

        let mut unchecked = config();
        unchecked.no_certificate_check = true;
        client(unchecked).discover(&server.url).await.unwrap();
    }

    #[tokio::test]
    async fn plain_http_server_on_https_is_a_tls_error() {
        // Answers in plain HTTP as soon as anything arrives (a TLS ClientHello).
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/", listener.local_addr().unwrap());
        let _server = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(&answer("400 Bad Request", &[], b"")).await;
            }
        });
        let err = client(config()).discover(&url).await.unwrap_err();
        assert!(matches!(err, HttpError::Tls { .. }), "{err:?}");
    }
}
