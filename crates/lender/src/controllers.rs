//! Registered Jenkins controllers: where the lender may lend on demand,
//! with the credentials it uses there and its options (`jnlp-lender
//! controller add`). The API token is kept like a borrower's secret: in
//! the store, wrapped in [`Secret`] (no `Debug`, no `Display`), never in an
//! answer, an event or a log line.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::jenkins::{JenkinsClient, JenkinsError};
use crate::pool::Secret;

/// Default `--node-prefix`.
pub const DEFAULT_NODE_PREFIX: &str = "lent-";
/// Default `--idle-return`.
pub const DEFAULT_IDLE_RETURN: Duration = Duration::from_secs(5 * 60);
/// Default `--demand-after`.
pub const DEFAULT_DEMAND_AFTER: Duration = Duration::from_secs(10);
/// Longest controller name.
pub const MAX_NAME: usize = 64;
/// Longest node prefix.
pub const MAX_PREFIX: usize = 64;

/// How the lender lends at one controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerOptions {
    /// At most this many agents lent there at once (`None`: no limit).
    pub max_agents: Option<u32>,
    /// Lent nodes are named `<prefix><agent>`.
    pub node_prefix: String,
    /// A lent agent idle this long goes home.
    #[serde(with = "humantime_serde")]
    pub idle_return: Duration,
    /// The lease ends when the first build on the node has finished.
    pub one_build: bool,
    /// Items waiting at least this long are demand.
    #[serde(with = "humantime_serde")]
    pub demand_after: Duration,
    /// Read the queue and lend on demand (false: registered for its
    /// credentials only).
    pub demand: bool,
    /// Keep the node when the lease ends (default: delete it).
    pub keep_nodes: bool,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            max_agents: None,
            node_prefix: DEFAULT_NODE_PREFIX.to_owned(),
            idle_return: DEFAULT_IDLE_RETURN,
            one_build: false,
            demand_after: DEFAULT_DEMAND_AFTER,
            demand: true,
            keep_nodes: false,
        }
    }
}

/// A registered controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerConfig {
    /// The lender's name for it.
    pub name: String,
    /// Its root URL.
    pub url: String,
    /// The Jenkins user the lender logs in as.
    pub user: String,
    /// That user's API token.
    pub api_token: Secret,
    /// How to lend there.
    pub options: ControllerOptions,
    /// When it was added (unix ms).
    pub added_ms: u64,
}

impl ControllerConfig {
    /// Checks everything a user gave: the name, the URL and credentials
    /// (as [`JenkinsClient::new`] would use them), the node prefix (a node
    /// name made from it must be one Jenkins accepts), `--max-agents`.
    pub fn check(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self.name.len() > MAX_NAME
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "a controller's name must be 1 to {MAX_NAME} letters, digits, '-', '_' or '.': {:?}",
                self.name
            ));
        }
        self.client().map_err(|e| e.to_string())?;
        let prefix = &self.options.node_prefix;
        if prefix.len() > MAX_PREFIX {
            return Err(format!("--node-prefix is over {MAX_PREFIX} bytes"));
        }
        control::check_node_name(&format!("{prefix}agent"))
            .map_err(|reason| format!("--node-prefix {prefix:?} makes node names that {reason}"))?;
        if self.options.max_agents == Some(0) {
            return Err("--max-agents must be at least 1 (use --no-demand to lend nothing)".into());
        }
        Ok(())
    }

    /// A client of the controller with its credentials.
    pub fn client(&self) -> Result<JenkinsClient, JenkinsError> {
        JenkinsClient::new(&self.url, &self.user, self.api_token.expose())
    }

    /// The node a lent agent gets there.
    pub fn node_name(&self, agent: &str) -> String {
        format!("{}{agent}", self.options.node_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str) -> ControllerConfig {
        ControllerConfig {
            name: name.into(),
            url: "http://127.0.0.1:8080/".into(),
            user: "lender".into(),
            api_token: Secret::new("0123abcd"),
            options: ControllerOptions::default(),
            added_ms: 1,
        }
    }

    #[test]
    fn checks_what_users_give() {
        assert_eq!(config("ci-b").check(), Ok(()));
        assert_eq!(config("ci-b").node_name("mac1"), "lent-mac1");
        let mut bad = config("a b");
        assert!(bad.check().is_err());
        bad = config("b");
        bad.url = "ftp://x/".into();
        assert!(bad.check().is_err());
        bad = config("b");
        bad.options.node_prefix = "lent/".into();
        assert!(bad
            .check()
            .expect_err("a bad prefix")
            .contains("--node-prefix"));
        bad = config("b");
        bad.options.max_agents = Some(0);
        assert!(bad.check().is_err());
        // The token never shows.
        assert!(!format!("{:?}", config("b")).contains("0123abcd"));
    }
}
