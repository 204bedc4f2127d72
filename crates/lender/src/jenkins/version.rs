//! Jenkins versions (`X-Jenkins`), compared by their leading dotted
//! numbers, and the versions that changed what the lender must send.

use std::fmt;

/// `POST /computer/createItem` with `<slave>` XML exists since 2.539.
pub const XML_CREATE_SINCE: &[u64] = &[2, 539];
/// `computer/N/jenkins-agent.jnlp` exists since 2.264 (`slave-agent.jnlp`
/// before).
pub const JENKINS_AGENT_JNLP_SINCE: &[u64] = &[2, 264];
/// The busy `why` text quotes its label since 2.125.
pub const QUOTED_BUSY_SINCE: &[u64] = &[2, 125];

/// Longest version text kept (a header is peer-controlled).
const MAX_VERSION: usize = 64;
/// At most this many dotted numbers are compared.
const MAX_PARTS: usize = 8;

/// A Jenkins version as its `X-Jenkins` header gives it, e.g. `2.541.1`,
/// `2.579-SNAPSHOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    text: String,
    numbers: Vec<u64>,
}

impl Version {
    /// Reads a version; `None` if it does not start with a number.
    pub fn parse(text: &str) -> Option<Version> {
        let text = text.trim();
        if text.is_empty() || text.len() > MAX_VERSION {
            return None;
        }
        let head = text
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .next()
            .unwrap_or("");
        let numbers: Vec<u64> = head
            .split('.')
            .take(MAX_PARTS)
            .map_while(|n| n.parse().ok())
            .collect();
        if numbers.is_empty() {
            return None;
        }
        Some(Version {
            text: text.to_owned(),
            numbers,
        })
    }

    /// Whether this version is `min` or later (`2.539` counts as `2.539.0`).
    pub fn at_least(&self, min: &[u64]) -> bool {
        self.numbers.as_slice() >= min
    }

    /// The version as Jenkins wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).expect("a version")
    }

    #[test]
    fn compares_leading_numbers() {
        assert!(v("2.539").at_least(XML_CREATE_SINCE));
        assert!(v("2.541.1").at_least(XML_CREATE_SINCE));
        assert!(v("2.579-SNAPSHOT").at_least(XML_CREATE_SINCE));
        assert!(!v("2.538").at_least(XML_CREATE_SINCE));
        assert!(!v("2.500-test").at_least(XML_CREATE_SINCE));
        assert!(v("2.500-test").at_least(JENKINS_AGENT_JNLP_SINCE));
        assert!(!v("2.263.4").at_least(JENKINS_AGENT_JNLP_SINCE));
        assert!(v("2.264").at_least(JENKINS_AGENT_JNLP_SINCE));
        assert!(v("10").at_least(XML_CREATE_SINCE));
        assert!(!v("2").at_least(QUOTED_BUSY_SINCE));
        assert_eq!(v(" 2.541.1 ").as_str(), "2.541.1");
    }

    #[test]
    fn refuses_what_is_not_a_version() {
        assert_eq!(Version::parse(""), None);
        assert_eq!(Version::parse("weekly"), None);
        assert_eq!(Version::parse(&"9".repeat(100)), None);
        // A number too large for u64 stops the comparison there.
        assert_eq!(Version::parse("99999999999999999999999.1"), None);
    }
}
