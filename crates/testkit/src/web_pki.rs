//! A test certificate authority for HTTPS and WSS tests: a CA certificate
//! and a server certificate it signed for `localhost`, `127.0.0.1` and `::1`.
//!
//! Tests hand the CA to the agent (`TestCa::write_ca_pem`, for `-cert`)
//! and serve with `TestCa::server_config`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Names the server certificate is valid for.
pub const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A CA and a server certificate signed by it (ECDSA P-256 keys).
#[derive(Clone)]
pub struct TestCa {
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    server_der: CertificateDer<'static>,
    server_key_pkcs8: Vec<u8>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("server_names", &SERVER_NAMES)
            .finish_non_exhaustive()
    }
}

impl TestCa {
    /// Generates a new CA and server certificate.
    pub fn generate() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Testkit test CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");

        let server_key = rcgen::KeyPair::generate().expect("server key");
        let mut server_params = rcgen::CertificateParams::new(
            SERVER_NAMES
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .expect("server parameters");
        server_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        server_params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        server_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let server = server_params
            .signed_by(&server_key, &ca, &ca_key)
            .expect("server certificate");

        Self {
            ca_der: ca.der().clone(),
            ca_pem: ca.pem(),
            server_der: server.der().clone(),
            server_key_pkcs8: server_key.serialize_der(),
        }
    }

    /// One CA per test process.
    pub fn shared() -> &'static TestCa {
        static SHARED: OnceLock<TestCa> = OnceLock::new();
        SHARED.get_or_init(TestCa::generate)
    }

    /// The CA certificate, PEM-encoded.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// The CA certificate, DER-encoded.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    /// Writes the CA certificate to `dir/test-ca.pem` and returns that path.
    pub fn write_ca_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write test-ca.pem");
        path
    }

    /// TLS server configuration presenting the server certificate (no client
    /// authentication, no ALPN). The cipher suite is the server's choice, as
    /// with Jetty on Java 11+ (see [`crate::TestIdentity::server_config`]).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![self.server_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_pkcs8.clone())),
            )
            .expect("server certificate");
        config.ignore_client_order = true;
        Arc::new(config)
    }

    /// TLS client configuration trusting this CA only.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der()).expect("CA certificate is valid");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    /// Serves one "ping" -> "pong" exchange per accepted TLS connection.
    async fn pong_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(TestCa::shared().server_config());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 4];
                    if tls.read_exact(&mut buf).await.is_ok() && &buf == b"ping" {
                        let _ = tls.write_all(b"pong").await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        (addr, task)
    }

    async fn ping(
        config: Arc<ClientConfig>,
        addr: std::net::SocketAddr,
        name: &str,
    ) -> std::io::Result<()> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
        tls.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");
        Ok(())
    }

    #[tokio::test]
    async fn a_client_trusting_the_ca_connects_by_ip_and_by_name() {
        let (addr, server) = pong_server().await;
        let config = TestCa::shared().client_config();
        ping(config.clone(), addr, "127.0.0.1").await.unwrap();
        ping(config, addr, "localhost").await.unwrap();
        server.abort();
    }

    #[tokio::test]
    async fn a_client_without_the_ca_is_refused() {
        let (addr, server) = pong_server().await;
        // Trusts a different CA.
        let config = TestCa::generate().client_config();
        let err = ping(config, addr, "localhost").await.unwrap_err();
        // Same issuer name, other key: the chain does not verify.
        assert!(
            err.to_string().contains("invalid peer certificate"),
            "{err}"
        );
        server.abort();
    }

    #[test]
    fn the_pem_holds_one_certificate() {
        let pem = TestCa::shared().ca_pem();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 1);
        let dir = std::env::temp_dir().join(format!("testkit-web-pki-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = TestCa::shared().write_ca_pem(&dir);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), pem);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
