//! `hudson.remoting.Capability`: the 64-bit feature mask both channel ends
//! swap, as base64 text of its Java serialization.
//!
//! The serialized form is fixed apart from the mask: stream header, class
//! descriptor (name, serialVersionUID 1, one `long mask` field), then the
//! mask. So the codec checks that exact prefix and reads the last 8 bytes,
//! instead of carrying a Java deserializer.

use std::fmt;

use base64::Engine as _;

/// The mask every current remoting (controller and agent) sends.
pub const CURRENT_MASK: u64 = 0x1fe;

/// Java serialization of a `Capability`, everything before the mask.
const SERIALIZED_PREFIX: &[u8] = b"\xac\xed\x00\x05\x73\x72\x00\x1ahudson.remoting.Capability\
\x00\x00\x00\x00\x00\x00\x00\x01\x02\x00\x01\x4a\x00\x04mask\x78\x70";

/// Longest base64 capability text accepted (the real one is 84 characters).
pub const MAX_TEXT_LEN: usize = 1024;

/// Why a capability text could not be read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CapabilityError {
    /// The text is not base64.
    #[error("the peer's capability is not base64")]
    NotBase64,
    /// The text is longer than any capability.
    #[error("the peer's capability text is {0} characters long, more than any capability")]
    TooLong(usize),
    /// The bytes are not a serialized `hudson.remoting.Capability`.
    #[error("the peer's capability is not a serialized hudson.remoting.Capability")]
    NotACapability,
}

/// A capability mask.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Capability {
    mask: u64,
}

impl Capability {
    /// What current remoting peers send (mask 0x1fe).
    pub const CURRENT: Capability = Capability { mask: CURRENT_MASK };

    /// A capability with this mask.
    pub const fn from_mask(mask: u64) -> Self {
        Self { mask }
    }

    /// The raw mask.
    pub const fn mask(self) -> u64 {
        self.mask
    }

    /// Whether the peer frames commands as chunks (bit 7); without it the
    /// channel would not carry the chunk format this crate speaks.
    pub const fn supports_chunking(self) -> bool {
        self.mask & (1 << 7) != 0
    }

    /// The base64 text as the remoting library writes it.
    pub fn to_base64(self) -> String {
        let mut raw = Vec::with_capacity(SERIALIZED_PREFIX.len() + 8);
        raw.extend_from_slice(SERIALIZED_PREFIX);
        raw.extend_from_slice(&self.mask.to_be_bytes());
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    /// Reads a base64 capability text; refuses anything but exactly one
    /// serialized capability.
    pub fn from_base64(text: &str) -> Result<Self, CapabilityError> {
        if text.len() > MAX_TEXT_LEN {
            return Err(CapabilityError::TooLong(text.len()));
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| CapabilityError::NotBase64)?;
        let mask = raw
            .strip_prefix(SERIALIZED_PREFIX)
            .and_then(|rest| <[u8; 8]>::try_from(rest).ok())
            .ok_or(CapabilityError::NotACapability)?;
        Ok(Self::from_mask(u64::from_be_bytes(mask)))
    }
}

impl fmt::Debug for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Capability({:#x})", self.mask)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The text in every recording, controller and engine alike.
    const RECORDED: &str =
        "rO0ABXNyABpodWRzb24ucmVtb3RpbmcuQ2FwYWJpbGl0eQAAAAAAAAABAgABSgAEbWFza3hwAAAAAAAAAf4=";

    #[test]
    fn current_capability_matches_the_recording() {
        assert_eq!(Capability::CURRENT.to_base64(), RECORDED);
        let cap = Capability::from_base64(RECORDED).unwrap();
        assert_eq!(cap.mask(), 0x1fe);
        assert!(cap.supports_chunking());
    }

    #[test]
    fn any_mask_round_trips() {
        for mask in [0, 1, u64::MAX, 0x8000_0000_0000_0000] {
            let cap = Capability::from_mask(mask);
            assert_eq!(Capability::from_base64(&cap.to_base64()).unwrap(), cap);
        }
    }

    #[test]
    fn refuses_other_objects_and_trailing_bytes() {
        assert_eq!(
            Capability::from_base64("!!"),
            Err(CapabilityError::NotBase64)
        );
        let other = base64::engine::general_purpose::STANDARD.encode(b"\xac\xed\x00\x05\x73\x72");
        assert_eq!(
            Capability::from_base64(&other),
            Err(CapabilityError::NotACapability)
        );
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(RECORDED)
            .unwrap();
        raw.push(0);
        let trailing = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(
            Capability::from_base64(&trailing),
            Err(CapabilityError::NotACapability)
        );
    }
}
