//! A controller's instance identity for tests: a fresh RSA key (as Jenkins
//! uses) and a self-signed certificate for it, plus the TLS server
//! configuration the agent port uses with them.

use std::sync::{Arc, OnceLock};

use remoting_protocol::InstanceIdentity;
use rsa::pkcs8::EncodePrivateKey;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, ServerConfig};

/// An identity key and its self-signed certificate.
#[derive(Clone)]
pub struct TestIdentity {
    key_pkcs8: Vec<u8>,
    cert: CertificateDer<'static>,
    identity: InstanceIdentity,
}

impl std::fmt::Debug for TestIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TestIdentity").field(&self.identity).finish()
    }
}

impl TestIdentity {
    /// Generates a new 2048-bit RSA identity (about a second, unoptimised
    /// builds excepted: the workspace compiles `rsa` optimised).
    pub fn generate() -> Self {
        let key =
            rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA key generation");
        let key_pkcs8 = key
            .to_pkcs8_der()
            .expect("PKCS#8 encoding")
            .as_bytes()
            .to_vec();
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(key_pkcs8.clone()),
            &rcgen::PKCS_RSA_SHA256,
        )
        .expect("rcgen accepts the RSA key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("certificate parameters");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test Jenkins instance identity");
        let cert = params
            .self_signed(&key_pair)
            .expect("self-signed certificate");
        let identity =
            InstanceIdentity::from_spki_der(key_pair.public_key_der()).expect("valid SPKI");
        Self {
            key_pkcs8,
            cert: cert.der().clone(),
            identity,
        }
    }

    /// One identity per test process, for tests that do not care which.
    pub fn shared() -> &'static TestIdentity {
        static SHARED: OnceLock<TestIdentity> = OnceLock::new();
        SHARED.get_or_init(TestIdentity::generate)
    }

    /// A second, different identity per test process (for mismatch tests).
    pub fn other() -> &'static TestIdentity {
        static OTHER: OnceLock<TestIdentity> = OnceLock::new();
        OTHER.get_or_init(TestIdentity::generate)
    }

    /// The public identity, as published in `X-Instance-Identity`.
    pub fn identity(&self) -> &InstanceIdentity {
        &self.identity
    }

    /// The self-signed certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// TLS server configuration for the agent port: this certificate, and a
    /// client certificate requested but not required, as the controller does.
    /// The server picks the cipher suite by its own order, as Java 11 and
    /// later do (JDK-8168261), whatever the agent prefers; its order is
    /// rustls's, AES-256-GCM first, which is also the JDK's for TLS 1.3.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(Arc::new(OptionalClientCert { provider }))
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone())),
            )
            .expect("server certificate");
        config.ignore_client_order = true;
        Arc::new(config)
    }
}

/// Asks for a client certificate, requires none (the controller's behaviour).
#[derive(Debug)]
struct OptionalClientCert {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for OptionalClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    remoting_protocol::signatures_checked_by_provider!();
}
