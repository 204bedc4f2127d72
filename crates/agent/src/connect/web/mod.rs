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

use std::fmt;
use std::sync::Once;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use remoting_protocol::discovery::{self, Endpoint};
use remoting_protocol::jnlp::{self, JnlpArguments};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;

use crate::connect::proxy::{
    first_env, HTTPS_URL_VARIABLES, HTTP_URL_VARIABLES, NO_PROXY_VARIABLES,
};

mod error;
use crate::settings::{CertPem, Credentials, Settings};
use error::{classify, render_chain, shorten};
pub use error::{HttpError, HttpSetupError};

/// Time allowed to establish a connection (TCP and TLS) to the web port.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Time allowed for a whole request, body included, except [`ControllerHttp::fetch`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Time allowed for [`ControllerHttp::fetch`]: binaries of a few MiB over a
/// slow link.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// Requests timed by [`ControllerHttp::round_trip`]; the least counts.
const ROUND_TRIPS: usize = 3;
/// Limit for all of [`ControllerHttp::round_trip`]: an engine start waits
/// for it, and a slower answer says enough (a long link, or a busy
/// controller: either way the largest window).
const ROUND_TRIP_BUDGET: Duration = Duration::from_secs(1);
/// Body bytes read from a round-trip answer (the page is headers only).
const ROUND_TRIP_BODY: usize = 16 * 1024;

/// The `User-Agent` header.
const USER_AGENT: &str = concat!("jnlp-agent/", env!("CARGO_PKG_VERSION"));
/// How long a connection to a controller's web port is kept for the next
/// request: long enough for discovery, the JNLP file and the jar in a row.
/// An idle connection keeps its read buffer (about 500 KiB after a jar),
/// which reqwest's default of 90 s kept in an idle agent.
const POOL_IDLE: Duration = Duration::from_secs(5);

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
            .pool_idle_timeout(POOL_IDLE)
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
        let proxied = HTTP_URL_VARIABLES
            .iter()
            .chain(&HTTPS_URL_VARIABLES)
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

    /// The round trip to the controller, for sizing the engine's window
    /// (`engine::window`): the least of [`ROUND_TRIPS`] requests for
    /// discovery's page (headers only, the cheapest the controller
    /// serves), so that one opening a connection (and its TLS) does not
    /// count once the kept-alive connection answers. An HTTP round trip, so that it crosses whatever the
    /// channel will (a proxy, a userspace relay), and an upper bound: it
    /// includes the controller's time to answer. `None` if a request fails
    /// or all take more than [`ROUND_TRIP_BUDGET`].
    pub async fn round_trip(&self, controller_url: &str) -> Option<Duration> {
        let url = discovery::listener_url(controller_url).ok()?;
        let measure = async {
            let mut least: Option<Duration> = None;
            for _ in 0..ROUND_TRIPS {
                let started = std::time::Instant::now();
                let mut response = self.get(&url, self.credentials.as_ref(), None).await.ok()?;
                // Read to the end, so that the connection serves the next one.
                let mut left = ROUND_TRIP_BODY;
                while let Ok(Some(chunk)) = response.chunk().await {
                    left = left.checked_sub(chunk.len())?;
                }
                let took = started.elapsed();
                least = Some(least.map_or(took, |l| l.min(took)));
            }
            least
        };
        tokio::time::timeout(ROUND_TRIP_BUDGET, measure)
            .await
            .ok()
            .flatten()
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

    /// agent.jar's readiness check before each WebSocket attempt: `GET
    /// {controller_url}login`, where only 200 means ready. Returns the
    /// controller's `X-Instance-Identity` (which Jenkins sends on every
    /// page), if any: it names the controller for its cookies.
    pub async fn login(&self, controller_url: &str) -> Result<Option<String>, HttpError> {
        let url = remoting_protocol::websocket::login_url(controller_url);
        check_url(&url)?;
        let response = self.get(&url, self.credentials.as_ref(), None).await?;
        let status = response.status();
        check_proxy_auth(&url, status)?;
        if status != StatusCode::OK {
            return Err(HttpError::NotReady { url, status });
        }
        Ok(response
            .headers()
            .get("x-instance-identity")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned))
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
    for (variables, https) in [(&HTTP_URL_VARIABLES, false), (&HTTPS_URL_VARIABLES, true)] {
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
pub(crate) fn parse_cert_pem(pem: &CertPem) -> Result<Vec<CertificateDer<'static>>, String> {
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

#[cfg(test)]
mod tests;
