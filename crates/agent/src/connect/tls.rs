//! TLS toward the web port for `wss`: ordinary certificate checks, as the
//! JVM's `HttpsURLConnection` does for agent.jar, with no instance-identity
//! pin (PROTOCOL.md 3).
//!
//! One difference on purpose: agent.jar's `-cert` *replaces* the JVM's
//! trust store; here it *adds* to the system roots, so that giving the
//! controller's private CA does not break a proxy or a public certificate.
//! `-noCertificateCheck` accepts any certificate (and is logged loudly).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::web::{parse_cert_pem, HttpSetupError};
use crate::settings::Settings;

/// The client configuration for `wss` to the controller of `settings`.
pub fn client_config(settings: &Settings) -> Result<Arc<ClientConfig>, HttpSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| HttpSetupError::Client {
            reason: err.to_string(),
        })?;
    let config = if settings.no_certificate_check {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        let system = rustls_native_certs::load_native_certs();
        for err in &system.errors {
            tracing::debug!(%err, "a system root certificate could not be loaded");
        }
        roots.add_parsable_certificates(system.certs);
        for (index, pem) in settings.certs.iter().enumerate() {
            let certs = parse_cert_pem(pem).map_err(|reason| HttpSetupError::Cert {
                index: index + 1,
                reason,
            })?;
            roots.add_parsable_certificates(certs);
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// `-noCertificateCheck`: every certificate is accepted; signatures are
/// still checked so that the handshake itself stays sound.
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
