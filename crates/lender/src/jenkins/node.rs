//! A lent node's definition: one executor, EXCLUSIVE (only label-matched
//! work), the agent's labels, an inbound launcher (`JNLPLauncher`),
//! retention Always (Jenkins must not disconnect it on its own schedule), in
//! both create forms: `<slave>` XML (since 2.539) and the `doCreateItem`
//! form's JSON (every version). JENKINS-REST.md 2.1-2.3.

use quick_xml::escape::escape;
use serde_json::json;

use super::JenkinsError;

/// The `type` field of the `doCreateItem` form.
pub const DUMB_SLAVE_TYPE: &str = "hudson.slaves.DumbSlave$DescriptorImpl";
/// The remote root directory given to lent nodes (unused by `jnlp-agent`,
/// which keeps its own work directory, but Jenkins requires one).
pub const REMOTE_FS: &str = "/home/jenkins/agent";

/// A node to create at a controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    name: String,
    labels: Vec<String>,
    description: String,
    web_socket: bool,
}

impl NodeSpec {
    /// A node named `name` with `labels` (atoms); both are checked as
    /// Jenkins would (the XML route skips `checkGoodName`, so the lender
    /// checks the name itself).
    pub fn new(
        name: &str,
        labels: impl IntoIterator<Item = impl Into<String>>,
        description: &str,
        web_socket: bool,
    ) -> Result<NodeSpec, JenkinsError> {
        check_name(name)?;
        let labels: Vec<String> = labels.into_iter().map(Into::into).collect();
        if let Some((bad, err)) = labels
            .iter()
            .find_map(|l| control::labels::check_label(l).err().map(|err| (l, err)))
        {
            return Err(JenkinsError::Setup(format!(
                "the label {bad:?} cannot be given to a node: {err}"
            )));
        }
        Ok(NodeSpec {
            name: name.to_owned(),
            labels,
            description: description.chars().filter(|c| !c.is_control()).collect(),
            web_socket,
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `labelString`: the labels separated by spaces.
    pub fn label_string(&self) -> String {
        self.labels.join(" ")
    }

    /// The `<slave>` body of `POST /computer/createItem`.
    pub fn to_xml(&self) -> String {
        format!(
            "<slave><name>{name}</name><description>{description}</description>\
             <remoteFS>{REMOTE_FS}</remoteFS><numExecutors>1</numExecutors><mode>EXCLUSIVE</mode>\
             <retentionStrategy class=\"hudson.slaves.RetentionStrategy$Always\"/>\
             <launcher class=\"hudson.slaves.JNLPLauncher\"><webSocket>{web_socket}</webSocket></launcher>\
             <label>{labels}</label><nodeProperties/></slave>",
            name = escape(self.name.as_str()),
            description = escape(self.description.as_str()),
            web_socket = self.web_socket,
            labels = escape(self.label_string().as_str()),
        )
    }

    /// The `json` field of `POST /computer/doCreateItem`.
    pub fn to_form_json(&self) -> String {
        json!({
            "name": self.name,
            "nodeDescription": self.description,
            "numExecutors": "1",
            "remoteFS": REMOTE_FS,
            "labelString": self.label_string(),
            "mode": "EXCLUSIVE",
            "launcher": {
                "$class": "hudson.slaves.JNLPLauncher",
                "webSocket": self.web_socket,
                "workDirSettings": {
                    "disabled": false,
                    "workDirPath": "",
                    "internalDir": "remoting",
                    "failIfWorkDirIsMissing": false,
                },
            },
            "retentionStrategy": {"$class": "hudson.slaves.RetentionStrategy$Always"},
            "nodeProperties": {"stapler-class-bag": "true"},
        })
        .to_string()
    }
}

/// A node name Jenkins would accept (`checkGoodName`), else why not.
pub fn check_name(name: &str) -> Result<(), JenkinsError> {
    control::check_node_name(name).map_err(|reason| JenkinsError::BadNodeName {
        name: name.chars().take(200).collect(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_carry_the_definition() {
        let spec = NodeSpec::new(
            "lent-mac1",
            ["macos", "arm64"],
            "lent by <jnlp-lender>",
            true,
        )
        .expect("valid");
        let xml = spec.to_xml();
        assert!(xml.contains("<name>lent-mac1</name>"), "{xml}");
        assert!(xml.contains("<label>macos arm64</label>"), "{xml}");
        assert!(xml.contains("<mode>EXCLUSIVE</mode>"), "{xml}");
        assert!(xml.contains("lent by &lt;jnlp-lender&gt;"), "{xml}");
        assert!(xml.contains("<webSocket>true</webSocket>"), "{xml}");
        let form: serde_json::Value = serde_json::from_str(&spec.to_form_json()).expect("JSON");
        assert_eq!(form["labelString"], "macos arm64");
        assert_eq!(form["mode"], "EXCLUSIVE");
        assert_eq!(form["numExecutors"], "1");
        assert_eq!(form["launcher"]["$class"], "hudson.slaves.JNLPLauncher");
        assert_eq!(
            form["retentionStrategy"]["$class"],
            "hudson.slaves.RetentionStrategy$Always"
        );
    }

    #[test]
    fn refuses_names_and_labels_jenkins_would() {
        for bad in ["", "a/b", "a:b", "..", "x.", "a&b"] {
            assert!(
                matches!(
                    NodeSpec::new(bad, ["l"], "", false),
                    Err(JenkinsError::BadNodeName { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(NodeSpec::new("n", ["a b"], "", false).is_err());
        assert!(NodeSpec::new("n", [""], "", false).is_err());
    }
}
