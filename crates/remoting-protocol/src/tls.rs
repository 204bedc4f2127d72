//! TLS to the agent port, trusting exactly one key: the controller's instance
//! identity.
//!
//! The controller presents a self-signed certificate for its identity key,
//! so there is no CA and no hostname to check. Instead the certificate is
//! accepted only if its public key equals the pinned identity; the TLS
//! handshake signature is still verified (with that same key), which proves
//! the peer holds the private key.

use std::io;
use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, OtherError};
use spki::der::{Decode as _, Encode as _};
use x509_cert::Certificate;

use crate::identity::{fingerprint, InstanceIdentity};

/// The controller's certificate carries another key than the pinned identity.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the agent port presented key SHA-256 {presented}, but the controller's instance identity is \
     SHA-256 {expected}: another service or a man in the middle answered, or the identity given \
     with -instanceIdentity is stale"
)]
pub struct IdentityMismatch {
    /// Fingerprint of the pinned identity.
    pub expected: String,
    /// Fingerprint of the key the peer presented.
    pub presented: String,
}

/// The handshake-signature half of a rustls certificate verifier (server or
/// client side), the same for every verifier of the workspace: checked with
/// the algorithms of the implementing type's `provider:
/// Arc<CryptoProvider>` field. Exported for the test controller's
/// client-certificate verifier; the caller depends on `rustls`.
#[doc(hidden)]
#[macro_export]
macro_rules! signatures_checked_by_provider {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            ::rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            ::rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<::rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

/// A rustls verifier that accepts only the pinned identity key.
#[derive(Debug)]
pub struct PinnedIdentityVerifier {
    identity: InstanceIdentity,
    pinned: spki::SubjectPublicKeyInfoOwned,
    provider: Arc<CryptoProvider>,
}

impl PinnedIdentityVerifier {
    /// A verifier for `identity`, verifying signatures with `provider`'s algorithms.
    pub fn new(
        identity: InstanceIdentity,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, spki::der::Error> {
        let pinned = spki::SubjectPublicKeyInfoOwned::from_der(identity.spki_der())?;
        Ok(Self {
            identity,
            pinned,
            provider,
        })
    }
}

impl ServerCertVerifier for PinnedIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = Certificate::from_der(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let presented = &cert.tbs_certificate.subject_public_key_info;
        if *presented == self.pinned {
            return Ok(ServerCertVerified::assertion());
        }
        let presented = presented
            .to_der()
            .map(|der| fingerprint(&der))
            .unwrap_or_else(|_| "(unencodable key)".into());
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(IdentityMismatch {
                expected: self.identity.fingerprint(),
                presented,
            })),
        )))
    }

    signatures_checked_by_provider!();
}

/// A rustls verifier that accepts any certificate, for agent.jar's
/// `-noCertificateCheck` toward the web port. The handshake signatures are
/// still checked against the presented key, so that the session itself stays
/// sound; only who holds the key goes unchecked.
#[derive(Debug)]
pub struct AnyCertificateVerifier {
    provider: Arc<CryptoProvider>,
}

impl AnyCertificateVerifier {
    /// A verifier checking signatures with `provider`'s algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self { provider }
    }
}

impl ServerCertVerifier for AnyCertificateVerifier {
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

    signatures_checked_by_provider!();
}

/// Why a TLS client configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The identity does not parse as a SubjectPublicKeyInfo.
    #[error("instance identity is not a SubjectPublicKeyInfo: {0}")]
    Identity(spki::der::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A client configuration for the agent port: TLS 1.3 or 1.2, no client
/// certificate (the controller asks but does not require one), pinned to
/// `identity`.
pub fn client_config(identity: &InstanceIdentity) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinnedIdentityVerifier::new(identity.clone(), provider.clone())
        .map_err(TlsSetupError::Identity)?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The identity mismatch behind a failed TLS handshake, if that is why it failed.
pub fn identity_mismatch(err: &io::Error) -> Option<&IdentityMismatch> {
    match err.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<IdentityMismatch>()
        }
        _ => None,
    }
}
