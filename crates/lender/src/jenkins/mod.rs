//! A client of Jenkins' own HTTP API (no plugin), for lending on demand:
//! the queue and its `why` texts, the computer list, node creation and
//! deletion, temporary offline, an inbound node's secret. Written from
//! `JENKINS-REST.md` (facts from Jenkins core's source), section 7 in
//! particular.
//!
//! Every request carries `Authorization: Basic user:apiToken` (an API
//! token needs no CSRF crumb since 2.96) and `Accept-Language: en` (`why`
//! is localized per request). Answers are bounded before they are read;
//! nothing Jenkins sends is trusted to be well formed.
//!
//! # Layout
//!
//! - [`client`]: [`JenkinsClient`] and the typed answers;
//! - [`error`]: [`JenkinsError`], one variant per way a call fails;
//! - [`node`]: [`NodeSpec`], a lent node's definition in both create forms;
//! - [`secret`]: the secret in a `jenkins-agent.jnlp` file;
//! - [`version`]: Jenkins versions and the features they bring;
//! - [`why`]: the queue's `why` texts, parsed.

pub mod client;
pub mod error;
pub mod node;
pub mod secret;
pub mod version;
pub mod why;

pub use client::{Computer, JenkinsClient, QueueItem, Root, RunningBuild};
pub use error::JenkinsError;
pub use node::NodeSpec;
pub use version::Version;
