#![allow(clippy::unwrap_used)]

use super::*;
use remoting_protocol::discovery::DiscoveryError;
use remoting_protocol::jnlp::JnlpError;
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
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(LEAF_KEY_PEM.as_bytes()).unwrap();
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

/// The round trip is an HTTP one, so it crosses what the channel will
/// cross: here a delay line of 10 ms each way in front of the web port
/// (the least of the timed requests, which reuse one connection).
#[tokio::test]
async fn the_round_trip_to_the_controller_is_measured_over_http() {
    let controller = testkit::TestController::builder().start().await;
    let near = client(config())
        .round_trip(&controller.url())
        .await
        .expect("measured");
    assert!(near < Duration::from_millis(20), "{near:?}");
    let line =
        testkit::delay_line::DelayLine::start(controller.http_addr(), Duration::from_millis(10))
            .await;
    let far = client(config())
        .round_trip(&format!("http://{}/", line.addr()))
        .await
        .expect("measured");
    assert!(far >= Duration::from_millis(20), "{far:?}");
    assert!(
        far < Duration::from_millis(20) + near + Duration::from_secs(1),
        "{far:?}"
    );
}

#[tokio::test]
async fn no_round_trip_without_an_answer() {
    assert_eq!(client(config()).round_trip(&closed_url().await).await, None);
    assert_eq!(client(config()).round_trip("not a url").await, None);
    // A controller that accepts and never answers holds an engine start
    // up for the budget only, not the request timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let started = std::time::Instant::now();
    assert_eq!(client(config()).round_trip(&url).await, None);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    held.abort();
}

/// One `no_proxy` decision for every path to a controller: the web port
/// (reqwest, observed by whether the proxy saw the request), the agent
/// port's dial and the WebSocket (`ProxyChoice`). The hand-written rules the
/// dial used before said "direct" for the three rows marked `was`, while
/// the web port went through the proxy.
#[tokio::test]
async fn web_port_and_dial_agree_on_no_proxy() {
    use crate::connect::proxy::{web_proxy_for, ProxyChoice};
    let proxy = TestServer::start(|_| jenkins_answer()).await;
    // Direct connections to loopback find this closed port.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let cases: &[(&str, &str, bool)] = &[
        ("ci.example", "", true),
        ("ci.example", "ci.example", false),
        ("a.ci.example", "ci.example", false),
        ("a.ci.example", ".ci.example", false),
        ("Ci.Example", "ci.example", false),
        ("notci.example", "ci.example", true),
        ("ci.example", "other.example, *", false),
        ("a.ci.example", "*.ci.example", true), // was direct
        ("a.ci.example", "ci.example:8080", true), // was direct
        ("a.ci.example", "ci.example.", true),  // was direct
        ("127.0.0.1", "127.0.0.0/8", false),
        ("127.0.0.1", "127.0.0.2", true),
    ];
    for &(host, no_proxy, proxied) in cases {
        let env: HashMap<&str, String> = [
            ("http_proxy", proxy.url.clone()),
            ("no_proxy", no_proxy.to_owned()),
        ]
        .into();
        let lookup = |name: &str| env.get(name).cloned();
        let before = proxy.heads().len();
        let http = ControllerHttp::with_config(config(), &lookup).unwrap();
        let url = if host.starts_with("127.") {
            format!("http://{host}:{closed_port}/")
        } else {
            format!("http://{host}/")
        };
        let web = match http.discover(&url).await {
            Ok(_) => true,
            Err(HttpError::Unreachable { .. }) => false,
            Err(other) => panic!("{host} / {no_proxy:?}: {other:?}"),
        };
        assert_eq!(proxy.heads().len() - before, usize::from(web), "{host}");
        let dial = matches!(
            ProxyChoice::choose(host, None, &lookup),
            ProxyChoice::Connect { .. }
        );
        let web_socket = web_proxy_for(host, false, &lookup).is_some();
        assert_eq!(
            (web, dial, web_socket),
            (proxied, proxied, proxied),
            "host {host:?}, no_proxy {no_proxy:?}: (web port, dial, WebSocket)"
        );
    }
}
