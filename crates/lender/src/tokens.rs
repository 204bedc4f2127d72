//! Bearer tokens: who may speak to the lender.
//!
//! A token is 32 random bytes in hex behind a prefix that says its kind
//! (`jla_` for an agent, `jlc_` for an API client), shown once by
//! `jnlp-lender token create`. The store keeps only its SHA-256
//! ([`hash`]), so a copy of the database lets nobody in.
//!
//! - An **agent** token speaks for one agent: the link's `hello` must name
//!   it.
//! - A **client** token speaks for one API client: it sees and returns only
//!   the leases it asked for.

use std::fmt;

use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// The longest token the lender looks up; longer ones are refused unread.
pub const MAX_TOKEN: usize = 256;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// Open the agent link for one agent.
    Agent,
    /// Use the HTTP API.
    Client,
}

impl TokenKind {
    /// `agent` or `client`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Agent => "agent",
            TokenKind::Client => "client",
        }
    }

    /// The inverse of [`TokenKind::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "agent" => Some(TokenKind::Agent),
            "client" => Some(TokenKind::Client),
            _ => None,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Agent => "jla_",
            TokenKind::Client => "jlc_",
        }
    }
}

/// Whom a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// Agent or client.
    pub kind: TokenKind,
    /// The agent's node name, or the client's name.
    pub name: String,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.kind.as_str(), self.name)
    }
}

/// A token as stored: its hash and whom it speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// [`hash`] of the token.
    pub hash: String,
    /// Whom it speaks for.
    pub principal: Principal,
    /// When it was made (Unix ms).
    pub created_ms: u64,
}

/// A stored token as `jnlp-lender token list` shows it: never the token,
/// nor its whole hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    /// The first 12 hex digits of its hash: tells tokens of one name apart.
    pub id: String,
    /// `agent` or `client`.
    pub kind: &'static str,
    /// The agent's node name, or the client's name.
    pub name: String,
    /// When it was made (Unix ms).
    pub created_ms: u64,
    /// When it was last used, to the minute (Unix ms); `None`: never.
    pub last_used_ms: Option<u64>,
    /// When it was revoked (Unix ms); `None`: it is valid.
    pub revoked_ms: Option<u64>,
}

/// The id [`TokenInfo`] shows for a hash.
pub fn short_id(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// A new random token for `kind`. The caller shows it once and stores only
/// its [`hash`].
pub fn generate(kind: TokenKind) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{}{}", kind.prefix(), hex::encode(bytes))
}

/// The SHA-256 of a token, in lowercase hex: what the store keeps and looks
/// up.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Checks a name given to `token create`: non-empty, printable, no
/// surrounding whitespace, at most 256 bytes.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 256 {
        return Err("a token's name must be 1 to 256 bytes long".into());
    }
    if name.trim() != name || name.chars().any(char::is_control) {
        return Err(format!(
            "a token's name must not have surrounding whitespace or control characters: {name:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hashed() {
        let a = generate(TokenKind::Agent);
        let b = generate(TokenKind::Agent);
        assert_ne!(a, b);
        assert!(a.starts_with("jla_") && a.len() == 68, "{a}");
        assert!(generate(TokenKind::Client).starts_with("jlc_"));
        assert_eq!(hash(&a), hash(&a));
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("mac-01").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(" x").is_err());
        assert!(check_name("a\nb").is_err());
    }
}
