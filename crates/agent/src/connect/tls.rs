//! TLS toward the web port for `wss`: ordinary certificate checks, as the
//! JVM's `HttpsURLConnection` does for agent.jar, with no instance-identity
//! pin (PROTOCOL.md 3).
//!
//! One difference on purpose: agent.jar's `-cert` *replaces* the JVM's
//! trust store; here it *adds* to the system roots, so that giving the
//! controller's private CA does not break a proxy or a public certificate.
//! `-noCertificateCheck` accepts any certificate (and is logged loudly).

use std::sync::Arc;

use remoting_protocol::tls::AnyCertificateVerifier;
use rustls::{ClientConfig, RootCertStore};

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
            // Signatures are still checked, so the handshake itself stays sound.
            .with_custom_certificate_verifier(Arc::new(AnyCertificateVerifier::new(provider)))
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
