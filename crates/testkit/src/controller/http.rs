//! The controller's web port: the readiness check (`login`), discovery
//! (`tcpSlaveAgentListener/`), JNLP files (plain and `?encrypt=true`), the
//! remoting jar, and the WebSocket agent endpoint (`wsagents/`, in
//! `websocket`). The Jenkins API routes (`jenkins::route`) are tried first.
//! Every response carries `X-Jenkins`, `X-Jenkins-Session` and
//! `X-Instance-Identity`, as Jenkins pages do.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument as _;

use super::{jenkins, websocket, ControllerEvent, Shared, TestIdentity};

pub(super) type Body = Full<Bytes>;

/// Header values fixed at start, validated once (a bad one is a test bug).
#[derive(Debug)]
pub(super) struct StaticHeaders {
    identity: HeaderValue,
    protocols: HeaderValue,
    jnlp_host: Option<HeaderValue>,
    pub(super) remoting_minimum_version: HeaderValue,
}

impl StaticHeaders {
    pub(super) fn new(
        identity: &TestIdentity,
        protocols: &str,
        jnlp_host: Option<&str>,
        remoting_minimum_version: &str,
    ) -> Self {
        let value = |what: &str, text: &str| {
            HeaderValue::from_str(text)
                .unwrap_or_else(|e| panic!("{what} {text:?} is not a header value: {e}"))
        };
        Self {
            identity: value("identity", &identity.identity().to_base64()),
            protocols: value("protocols", protocols),
            jnlp_host: jnlp_host.map(|host| value("jnlp_host", host)),
            remoting_minimum_version: value("remoting_minimum_version", remoting_minimum_version),
        }
    }
}

/// Accepts web connections until shutdown, one task each.
pub(super) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // As Jenkins' web port does: Jetty's ServerConnector sets
                // TCP_NODELAY on every accepted connection by default
                // (`acceptedTcpNoDelay`), so a WebSocket's small frames
                // (remoting's acks) are not held back by Nagle; so does the
                // TCP agent port (`agent_port`).
                let _ = stream.set_nodelay(true);
                let span = tracing::debug_span!("controller-http", %peer);
                shared
                    .tracker
                    .spawn(connection(shared.clone(), stream).instrument(span));
            }
            Err(err) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(%err, "HTTP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn connection(shared: Arc<Shared>, stream: TcpStream) {
    match shared.web_tls.clone() {
        None => serve_http(shared, stream).await,
        Some(config) => {
            let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
            match tokio::time::timeout(std::time::Duration::from_secs(10), accept).await {
                Ok(Ok(tls)) => serve_http(shared, tls).await,
                Ok(Err(err)) => tracing::debug!(%err, "HTTPS handshake failed"),
                Err(_) => tracing::debug!("HTTPS handshake timed out"),
            }
        }
    }
}

async fn serve_http<S>(shared: Arc<Shared>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let token = shared.shutdown.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(respond(&shared, request).await) }
    });
    // With upgrades, so that `wsagents/` can take the connection over.
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        () = token.cancelled() => {}
        result = conn => {
            if let Err(err) = result {
                tracing::debug!(%err, "HTTP connection ended with an error");
            }
        }
    }
}

/// Largest request body read (a node's XML or form is a few KiB).
const MAX_BODY: usize = 1 << 20;

/// Answers one request and records it.
async fn respond(shared: &Arc<Shared>, mut request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if path == "/wsagents/" && request.method() == Method::GET {
        return websocket::upgrade(shared, &mut request, |response| {
            common_headers(shared, response)
        });
    }
    let (parts, body) = request.into_parts();
    let body = if parts.method == Method::POST {
        use http_body_util::BodyExt as _;
        match http_body_util::Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => Some(collected.to_bytes()),
            Err(_) => None,
        }
    } else {
        Some(Bytes::new())
    };
    let mut response = match body {
        None => text(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large\n"),
        Some(body) => match jenkins::route(shared, &parts, &body) {
            Some(response) => response,
            None if parts.method == Method::GET || parts.method == Method::HEAD => {
                let since = parts
                    .headers
                    .get(http::header::IF_MODIFIED_SINCE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| httpdate::parse_http_date(v).ok());
                route(shared, &path, since)
            }
            None => not_found(),
        },
    };
    common_headers(shared, &mut response);
    shared.record(ControllerEvent::Http {
        path,
        status: response.status().as_u16(),
    });
    response
}

/// What every controller page carries.
fn common_headers(shared: &Shared, response: &mut Response<Body>) {
    let version = shared.state().jenkins.version.clone();
    let headers = response.headers_mut();
    if let Ok(version) = HeaderValue::from_str(&version) {
        headers.insert("x-jenkins", version);
    }
    if let Ok(session) = HeaderValue::from_str(&shared.session) {
        headers.insert("x-jenkins-session", session);
    }
    headers.insert("x-instance-identity", shared.http_headers.identity.clone());
}

/// A plain-text answer.
pub(super) fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    with_type(response, "text/plain;charset=utf-8")
}

fn route(
    shared: &Shared,
    path: &str,
    if_modified_since: Option<std::time::SystemTime>,
) -> Response<Body> {
    if path == "/tcpSlaveAgentListener/" {
        return discovery(shared);
    }
    if path == "/login" {
        // The page a WebSocket agent checks before each attempt.
        let mut response = with_type(
            Response::new(Full::new(Bytes::from_static(LOGIN_PAGE.as_bytes()))),
            "text/html;charset=utf-8",
        );
        *response.status_mut() = shared.login_status;
        return response;
    }
    if path == "/jnlpJars/remoting.jar" || path == "/jnlpJars/agent.jar" {
        // As Stapler's `serveFile` does for the controller's jars: the
        // resource's time as `Last-Modified`, and 304 to a client that
        // has that version already.
        let Some(jar) = &shared.remoting_jar else {
            return not_found();
        };
        let last_modified = HeaderValue::from_str(&httpdate::fmt_http_date(shared.jar_modified))
            .expect("an HTTP date is a header value");
        let mut response = if if_modified_since.is_some_and(|since| since >= shared.jar_modified) {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            with_type(
                Response::new(Full::new(jar.clone())),
                "application/java-archive",
            )
        };
        response
            .headers_mut()
            .insert(http::header::LAST_MODIFIED, last_modified);
        return response;
    }
    not_found()
}

/// A stand-in for Jenkins' sign-in page.
const LOGIN_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Sign in [Jenkins]</title></head>\n<body><form method=\"post\" action=\"j_spring_security_check\"></form></body></html>\n";

fn discovery(shared: &Shared) -> Response<Body> {
    if shared.tcp_disabled {
        return not_found();
    }
    let mut response = with_type(
        Response::new(Full::new(Bytes::from_static(b"Jenkins"))),
        "text/plain",
    );
    let headers = response.headers_mut();
    headers.insert("x-jenkins-jnlp-port", HeaderValue::from(shared.agent_port));
    if let Some(host) = &shared.http_headers.jnlp_host {
        headers.insert("x-jenkins-jnlp-host", host.clone());
    }
    headers.insert(
        "x-jenkins-agent-protocols",
        shared.http_headers.protocols.clone(),
    );
    headers.insert(
        HeaderName::from_static("x-remoting-minimum-version"),
        shared.http_headers.remoting_minimum_version.clone(),
    );
    response
}

/// A node's JNLP file (the caller checked the node, version and permission).
pub(super) fn jnlp(shared: &Shared, name: &str, encrypt: bool) -> Response<Body> {
    let Some((secret, web_socket)) = ({
        let state = shared.state();
        state
            .jenkins
            .nodes
            .get(name)
            .map(|n| (n.secret.clone(), n.config.web_socket))
    }) else {
        return not_found();
    };
    let xml = jnlp_xml(&shared.url, &secret, name, web_socket, &shared.jnlp_options);
    if !encrypt {
        return with_type(
            Response::new(Full::new(Bytes::from(xml))),
            "application/x-java-jnlp-file",
        );
    }
    let iv: [u8; remoting_protocol::jnlp::IV_LEN] = rand::random();
    match remoting_protocol::jnlp::encrypt_jnlp(&secret, iv, xml.as_bytes()) {
        Ok(body) => with_type(
            Response::new(Full::new(Bytes::from(body))),
            "application/octet-stream",
        ),
        // Only a test's own non-hex secret gets here; say so instead of panicking.
        Err(err) => {
            let mut response =
                Response::new(Full::new(Bytes::from(format!("cannot encrypt: {err}\n"))));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            with_type(response, "text/plain")
        }
    }
}

/// The JNLP file in the shape Jenkins serves it.
/// As `jenkins-agent.jnlp.jelly`: secret, name, `-webSocket` when the
/// node's launcher says so, then `-url`.
fn jnlp_xml(url: &str, secret: &str, name: &str, web_socket: bool, options: &[String]) -> String {
    let mut arguments = String::new();
    let web_socket: &[&str] = if web_socket { &["-webSocket"] } else { &[] };
    for argument in [secret, name]
        .into_iter()
        .chain(web_socket.iter().copied())
        .chain(["-url", url])
        .chain(options.iter().map(String::as_str))
    {
        arguments.push_str("    <argument>");
        arguments.push_str(&xml_escape(argument));
        arguments.push_str("</argument>\n");
    }
    let url = xml_escape(url);
    let name = xml_escape(name);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<jnlp spec="1.0+" codebase="{url}">
  <information>
    <title>Agent for {name}</title>
    <vendor>Jenkins project</vendor>
    <homepage href="https://jenkins.io/"/>
  </information>
  <security>
    <all-permissions/>
  </security>
  <resources>
    <j2se version="1.8+"/>
    <jar href="{url}jnlpJars/remoting.jar"/>
  </resources>
  <application-desc main-class="hudson.remoting.jnlp.Main">
{arguments}  </application-desc>
</jnlp>
"#
    )
}

pub(super) fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// `%XX` decoding of a path segment; `None` if malformed or not UTF-8.
pub(super) fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            // from_str_radix alone would also take a sign ("%+1").
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub(super) fn with_type(
    mut response: Response<Body>,
    content_type: &'static str,
) -> Response<Body> {
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(super) fn not_found() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"Not Found\n")));
    *response.status_mut() = StatusCode::NOT_FOUND;
    with_type(response, "text/plain")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jnlp_xml_parses_back_with_escaped_arguments() {
        let options = vec!["-workDir".to_owned(), "/tmp/a&b <c>".to_owned()];
        let xml = jnlp_xml("http://127.0.0.1:1/", "00ff", "n\"1", false, &options);
        let parsed = remoting_protocol::jnlp::parse_jnlp(xml.as_bytes()).unwrap();
        assert_eq!(parsed.secret, "00ff");
        assert_eq!(parsed.name, "n\"1");
        assert_eq!(
            parsed.options,
            ["-url", "http://127.0.0.1:1/", "-workDir", "/tmp/a&b <c>"]
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%+1"), None);
    }
}
