//! The controller's instance identity: the public key its agent-port TLS
//! certificate must carry (published base64 in `X-Instance-Identity`, or given
//! with `-instanceIdentity`).

use std::fmt;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use spki::der::Decode as _;
use spki::SubjectPublicKeyInfoRef;

/// Why an instance identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The text is not base64.
    #[error("instance identity is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// The bytes are not a DER SubjectPublicKeyInfo.
    #[error("instance identity is not a DER SubjectPublicKeyInfo: {0}")]
    Der(spki::der::Error),
}

/// A controller's identity key as a DER `SubjectPublicKeyInfo`.
///
/// Two identities are equal when their DER bytes are equal; DER is canonical,
/// so that is equality of the keys.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct InstanceIdentity {
    spki_der: Vec<u8>,
}

impl InstanceIdentity {
    /// Reads the base64 form used by `X-Instance-Identity` and `-instanceIdentity`.
    pub fn from_base64(text: &str) -> Result<Self, IdentityError> {
        let der = base64::engine::general_purpose::STANDARD.decode(text.trim())?;
        Self::from_spki_der(der)
    }

    /// Takes a DER `SubjectPublicKeyInfo`, checking that it parses as one.
    pub fn from_spki_der(der: Vec<u8>) -> Result<Self, IdentityError> {
        SubjectPublicKeyInfoRef::from_der(&der).map_err(IdentityError::Der)?;
        Ok(Self { spki_der: der })
    }

    /// The DER `SubjectPublicKeyInfo`.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The base64 form, as the controller publishes it.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.spki_der)
    }

    /// SHA-256 of the DER key, as colon-separated hex: what to show an
    /// administrator comparing keys.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.spki_der)
    }
}

/// SHA-256 fingerprint of DER bytes as `ab:cd:...`.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, byte) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

impl fmt::Debug for InstanceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("InstanceIdentity")
            .field(&self.fingerprint())
            .finish()
    }
}

impl fmt::Display for InstanceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SHA-256 {}", self.fingerprint())
    }
}
