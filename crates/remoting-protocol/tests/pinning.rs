//! TLS identity pinning against the test controller over real TCP: the
//! handshake goes no further than TLS when the controller's key is not the
//! pinned one, so the secret is never sent to an impostor.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use remoting_protocol::handshake::{connect, HandshakeConfig, HandshakeError};
use remoting_protocol::tls::identity_mismatch;
use testkit::{ControllerEvent, TestController, TestIdentity};
use tokio::net::TcpStream;

#[tokio::test]
async fn wrong_identity_is_refused_before_any_header_is_sent() {
    let controller = TestController::builder()
        .node("agent-1", "s3cret")
        .start()
        .await;
    let impostor_pin = TestIdentity::other().identity();
    assert_ne!(impostor_pin, controller.identity());

    let tcp = TcpStream::connect(controller.agent_addr()).await.unwrap();
    let err = connect(
        tcp,
        "127.0.0.1",
        impostor_pin,
        HandshakeConfig::new("agent-1", "s3cret"),
    )
    .await
    .unwrap_err();
    let HandshakeError::IdentityMismatch(mismatch) = &err else {
        panic!("expected an identity mismatch, got {err:?}");
    };
    assert_eq!(mismatch.expected, impostor_pin.fingerprint());
    assert_eq!(mismatch.presented, controller.identity().fingerprint());
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(
        text.starts_with("SECURITY:") && !text.contains("s3cret"),
        "{text}"
    );

    // The controller saw a TLS failure and no headers at all.
    let log = controller
        .wait_for(
            |log| {
                log.iter()
                    .any(|e| matches!(e, ControllerEvent::HandshakeFailed { .. }))
            },
            Duration::from_secs(10),
        )
        .await;
    assert!(
        !log.iter().any(|e| matches!(
            e,
            ControllerEvent::Accepted { .. }
                | ControllerEvent::Refused { .. }
                | ControllerEvent::ByeReceived { .. }
        )),
        "{log:?}"
    );
    assert!(!controller.is_online("agent-1"));

    // The right pin on the same controller works.
    let tcp = TcpStream::connect(controller.agent_addr()).await.unwrap();
    let connected = connect(
        tcp,
        "127.0.0.1",
        controller.identity(),
        HandshakeConfig::new("agent-1", "s3cret"),
    )
    .await
    .unwrap();
    assert!(connected.cookie.is_some());
    controller.shutdown().await;
}

#[tokio::test]
async fn mismatch_is_recognisable_from_a_plain_io_error() {
    // What the TLS layer hands back is an io::Error; the mismatch survives
    // in it. A bare TLS acceptor with the shared identity, pinned to another.
    let config = remoting_protocol::tls::client_config(TestIdentity::other().identity()).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(TestIdentity::shared().server_config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = acceptor.accept(tcp).await;
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let err = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap_err();
    let mismatch = identity_mismatch(&err).expect("the mismatch is found in the io::Error");
    assert_eq!(
        mismatch.presented,
        TestIdentity::shared().identity().fingerprint()
    );
    server.await.unwrap();
}

/// The controller, not the agent, picks the cipher suite (Java 11+ servers
/// use their own order): an agent that prefers AES-128 still gets the
/// controller's first choice, so no preference of ours can make the test
/// controller cheaper than a real one.
#[tokio::test]
async fn the_controller_picks_the_cipher_suite() {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    let mut provider = default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
    ];
    let provider = std::sync::Arc::new(provider);
    let verifier = remoting_protocol::tls::PinnedIdentityVerifier::new(
        TestIdentity::shared().identity().clone(),
        provider.clone(),
    )
    .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth();
    let acceptor = tokio_rustls::TlsAcceptor::from(TestIdentity::shared().server_config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.map(|_| ())
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
    assert_eq!(suite, rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
    server.await.unwrap().unwrap();
}

/// `-noCertificateCheck`'s verifier completes a handshake with a
/// self-signed certificate for no name at all, which a verifier with the
/// web PKI's roots refuses, and it checks the handshake signature with the
/// presented key (the session is readable).
#[tokio::test]
async fn any_certificate_verifier_accepts_a_self_signed_key() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(
            remoting_protocol::tls::AnyCertificateVerifier::new(provider),
        ))
        .with_no_client_auth();
    let acceptor = tokio_rustls::TlsAcceptor::from(TestIdentity::other().server_config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        tls.write_all(b"hello").await.unwrap();
        tls.shutdown().await.unwrap();
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    let mut got = Vec::new();
    tls.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello");
    server.await.unwrap();

    // The same server with ordinary checks (no roots trust it) is refused.
    let acceptor = tokio_rustls::TlsAcceptor::from(TestIdentity::other().server_config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = acceptor.accept(tcp).await;
    });
    let strict = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert!(tokio_rustls::TlsConnector::from(Arc::new(strict))
        .connect(name, tcp)
        .await
        .is_err());
    server.await.unwrap();
}
