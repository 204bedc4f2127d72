//! Agents as the pool sees them: labels, place, busy, lease.

use std::collections::BTreeSet;

use control::{Phase, Placement, Status};

use crate::pool::lease::LeaseId;
use crate::pool::place::Place;

/// What an agent says when it connects to the lender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentHello {
    /// Its node name at home.
    pub name: String,
    /// Its labels (`--labels`, and distro labels it derives itself).
    pub labels: BTreeSet<String>,
    /// `std::env::consts::OS` on the agent, e.g. `linux`, `macos`.
    pub os: Option<String>,
    /// `std::env::consts::ARCH` on the agent, e.g. `x86_64`, `aarch64`.
    pub arch: Option<String>,
    /// Where it is and what it is doing.
    pub report: AgentReport,
}

/// An agent's report of its place and activity: at connection and on every
/// change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentReport {
    /// Where it is (or is connecting to).
    pub place: Place,
    /// Whether its channel there is up.
    pub online: bool,
    /// Whether it is running something (see the design's "What busy
    /// means").
    pub busy: bool,
}

impl AgentReport {
    /// The report in an agent's control-socket [`Status`].
    pub fn from_status(status: &Status) -> Self {
        let place = match (status.placement, &status.controller_url) {
            // Lent but not gone yet (the agent connects to the borrower
            // before it leaves home): still at home's controller.
            (Placement::Borrowed, Some(url)) if status.home_url.as_ref() == Some(url) => {
                Place::Home
            }
            (Placement::Borrowed, Some(url)) => Place::Borrowed { url: url.clone() },
            // A borrowed agent always names its controller; without one the
            // report cannot say where, so it counts as not at home either.
            (Placement::Borrowed, None) => Place::Borrowed { url: String::new() },
            (Placement::Home, _) => Place::Home,
        };
        AgentReport {
            place,
            // A controller shows the node online once its first call is answered.
            online: status.phase == Phase::Online && !status.awaiting_first_call,
            busy: status.busy.busy || status.pending.is_some(),
        }
    }
}

/// An agent in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Its node name at home.
    pub name: String,
    /// Everything an expression can match: its declared labels, its
    /// platform labels ([`control::link::platform_labels`]) and its own name (a Jenkins
    /// node's name is one of its labels).
    pub labels: BTreeSet<String>,
    /// Whether its link to the lender is up.
    pub connected: bool,
    /// Where it last reported itself.
    pub place: Place,
    /// Whether its channel there was up at the last report.
    pub online: bool,
    /// Whether it was busy at the last report.
    pub busy: bool,
    /// Since when it has been idle at its current place (Unix ms).
    pub idle_since_ms: Option<u64>,
    /// The last message from it (Unix ms).
    pub last_seen_ms: u64,
    /// When it was last reserved for a lease (Unix ms): the pool lends the
    /// least recently lent agent first.
    pub last_lent_ms: Option<u64>,
    /// The lease it is tied to (reserved, active or returning), at most
    /// one.
    pub lease: Option<LeaseId>,
}

impl Agent {
    /// Whether the pool may reserve it: connected, at home, idle, and in no
    /// lease.
    pub fn is_free(&self) -> bool {
        self.connected && self.place == Place::Home && !self.busy && self.lease.is_none()
    }

    /// The label set for an agent that said `hello`.
    pub fn labels_for(hello: &AgentHello) -> BTreeSet<String> {
        let mut labels = hello.labels.clone();
        labels.insert(hello.name.clone());
        labels.extend(control::link::platform_labels(
            hello.os.as_deref().unwrap_or(""),
            hello.arch.as_deref().unwrap_or(""),
        ));
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_waits_for_the_controllers_first_call_to_be_answered() {
        let mut status = Status {
            placement: Placement::Borrowed,
            phase: Phase::Online,
            controller_url: Some("https://borrower/".into()),
            home_url: Some("https://home/".into()),
            awaiting_first_call: true,
            ..Status::default()
        };
        assert!(!AgentReport::from_status(&status).online);
        status.awaiting_first_call = false;
        assert!(AgentReport::from_status(&status).online);
    }

    #[test]
    fn a_lent_agent_still_at_home_reports_home() {
        let mut status = Status {
            placement: Placement::Borrowed,
            phase: Phase::Online,
            controller_url: Some("https://home/".into()),
            home_url: Some("https://home/".into()),
            ..Status::default()
        };
        // Connecting to the borrower while home still has it.
        assert_eq!(AgentReport::from_status(&status).place, Place::Home);
        status.controller_url = Some("https://b/".into());
        assert_eq!(
            AgentReport::from_status(&status).place,
            Place::Borrowed {
                url: "https://b/".into()
            }
        );
        // Between two channels: not somewhere else (see `apply_report`).
        status.controller_url = None;
        assert_eq!(
            AgentReport::from_status(&status).place,
            Place::Borrowed { url: String::new() }
        );
    }

    #[test]
    fn the_name_is_a_label() {
        let hello = AgentHello {
            name: "mac-01".into(),
            labels: ["xcode16".to_owned()].into(),
            os: Some("macos".into()),
            arch: Some("aarch64".into()),
            report: AgentReport {
                place: Place::Home,
                online: true,
                busy: false,
            },
        };
        let labels = Agent::labels_for(&hello);
        for label in ["mac-01", "xcode16", "macos", "arm64"] {
            assert!(labels.contains(label), "{label}");
        }
    }

    #[test]
    fn report_from_status() {
        let mut status = Status {
            placement: Placement::Borrowed,
            phase: Phase::Online,
            controller_url: Some("https://b.example/".into()),
            ..Status::default()
        };
        let report = AgentReport::from_status(&status);
        assert_eq!(
            report.place,
            Place::Borrowed {
                url: "https://b.example/".into()
            }
        );
        assert!(report.online && !report.busy);
        status.busy.busy = true;
        assert!(AgentReport::from_status(&status).busy);
        status.placement = Placement::Home;
        status.phase = Phase::Connecting;
        let report = AgentReport::from_status(&status);
        assert_eq!(report.place, Place::Home);
        assert!(!report.online);
    }
}
