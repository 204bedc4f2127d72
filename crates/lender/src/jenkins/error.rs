//! Why a call to Jenkins failed. Messages name the cause and what to do;
//! they never carry the API token (it travels only in the `Authorization`
//! header), and whatever Jenkins sent is cut short and made printable.

/// The longest excerpt of an answer kept in an error.
pub const MAX_EXCERPT: usize = 200;

/// A failed call to a Jenkins controller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JenkinsError {
    /// The controller URL or the credentials cannot be used at all.
    #[error("{0}")]
    Setup(String),
    /// 401: the user or API token was refused.
    #[error("Jenkins refused the user {user:?} or its API token (HTTP 401): check the user name and the API token file")]
    Unauthorized {
        /// The user the lender logs in as.
        user: String,
    },
    /// 403: the user lacks a permission (`X-Required-Permission`).
    #[error("the Jenkins user {user:?} lacks the {} permission (HTTP 403 on {path}): grant it to that user", permission.as_deref().unwrap_or("required"))]
    Forbidden {
        /// The user the lender logs in as.
        user: String,
        /// The permission Jenkins names, e.g. `hudson.model.Computer.Create`.
        permission: Option<String>,
        /// What was asked.
        path: String,
    },
    /// No answer: connection refused, DNS, TLS, timeout.
    #[error("cannot reach Jenkins at {url}: {reason}")]
    Unreachable {
        /// The controller's URL.
        url: String,
        /// What broke.
        reason: String,
    },
    /// 404 where the thing must exist.
    #[error("Jenkins has no {path} (HTTP 404)")]
    NotFound {
        /// What was asked.
        path: String,
    },
    /// Any other status Jenkins should not have answered.
    #[error("Jenkins answered HTTP {status} to {path}: {excerpt}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// What was asked.
        path: String,
        /// The start of the answer, printable.
        excerpt: String,
    },
    /// An answer too large to read.
    #[error("Jenkins' answer to {path} is larger than {max} bytes")]
    TooLarge {
        /// What was asked.
        path: String,
        /// The bound.
        max: usize,
    },
    /// An answer that is not the JSON or XML Jenkins documents.
    #[error("Jenkins' answer to {path} is malformed: {reason}")]
    Malformed {
        /// What was asked.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A node name Jenkins would refuse (`checkGoodName`).
    #[error("the node name {name:?} {reason}")]
    BadNodeName {
        /// The name.
        name: String,
        /// The rule broken.
        reason: String,
    },
}

impl JenkinsError {
    /// The HTTP status behind this error, if Jenkins answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            JenkinsError::Unauthorized { .. } => Some(401),
            JenkinsError::Forbidden { .. } => Some(403),
            JenkinsError::NotFound { .. } => Some(404),
            JenkinsError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// At most `max` characters of `text`, control characters as spaces,
/// whitespace runs collapsed; `…` marks a cut.
pub fn excerpt(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut words = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .peekable();
    while let Some(word) = words.next() {
        for c in word.chars() {
            if count == max {
                out.push('…');
                return out;
            }
            out.push(c);
            count += 1;
        }
        if words.peek().is_some() {
            if count == max {
                out.push('…');
                return out;
            }
            out.push(' ');
            count += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_short_and_printable() {
        assert_eq!(excerpt("  a\n\tb\u{7}c  ", 10), "a b c");
        assert_eq!(excerpt("abcdef", 3), "abc…");
        assert_eq!(excerpt("ab cd", 3), "ab …");
        assert_eq!(excerpt("", 3), "");
    }

    #[test]
    fn forbidden_names_the_permission() {
        let err = JenkinsError::Forbidden {
            user: "lender".into(),
            permission: Some("hudson.model.Computer.Create".into()),
            path: "computer/createItem".into(),
        };
        assert!(err.to_string().contains("hudson.model.Computer.Create"));
        assert_eq!(err.status(), Some(403));
    }
}
