//! The queue's `why` texts (English, as asked with `Accept-Language: en`):
//! which label (or node) a waiting item wants.
//!
//! Jenkins does not export an item's label (JENKINS-REST.md 1.1); `why` is
//! the one channel for Pipeline `node('x')` items. The forms, from
//! `CauseOfBlockage` and `Messages.properties` (`‘…’` are U+2018/U+2019):
//!
//! | text | gives |
//! |---|---|
//! | `Waiting for next available executor on ‘X’` | a label, or a node when X is the label's only node |
//! | `Waiting for next available executor on X` (before 2.125) | the same, unquoted |
//! | `There are no nodes with the label ‘L’` | a label |
//! | `All nodes of label ‘L’ are offline` | a label |
//! | `‘N’ is offline` | a node |
//! | `‘N’ doesn’t have label ‘L’` | a label (a composite's part) |
//! | `‘N’ is reserved for jobs with matching label expression`, `‘N’ is not accepting tasks` | nothing |
//! | `Waiting for next available executor` | no label |
//!
//! A composite cause joins its parts with `"; "`. Parsing is total: an
//! unknown text is [`Cause::Other`], never an error or a panic.

/// One part of a `why` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// `Waiting for next available executor on ‘X’`: X is a label, or the
    /// label's only node.
    Busy(String),
    /// `There are no nodes with the label ‘L’`.
    NoNodes(String),
    /// `All nodes of label ‘L’ are offline`.
    AllOffline(String),
    /// `‘N’ is offline`: the label's only node.
    NodeOffline(String),
    /// `‘N’ doesn’t have label ‘L’`.
    LabelMissing {
        /// The node that cannot take the item.
        node: String,
        /// The item's label.
        label: String,
    },
    /// `Waiting for next available executor`: the item has no label.
    NoLabel,
    /// Anything else (reserved nodes, quiet period, blocked, truncated
    /// composites, other languages).
    Other,
}

/// What an item waits for, as far as `why` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// A label expression (Jenkins' normalized printing).
    Label(String),
    /// A node's name: map it back to that node's labels.
    Node(String),
    /// A label expression or a node's name (the busy text names the node
    /// when the label matches exactly one).
    LabelOrNode(String),
}

const BUSY: &str = "Waiting for next available executor on ";
const NO_LABEL: &str = "Waiting for next available executor";
const NO_NODES: &str = "There are no nodes with the label ";
const ALL_OFFLINE_PREFIX: &str = "All nodes of label ";
const ALL_OFFLINE_SUFFIX: &str = " are offline";
const IS_OFFLINE: &str = " is offline";
const MISSING: &str = "’ doesn’t have label ‘";

/// Splits `why` into its parts and reads each one.
pub fn parse(why: &str) -> Vec<Cause> {
    why.split("; ").map(parse_part).collect()
}

/// Reads one part (no `"; "` inside).
pub fn parse_part(part: &str) -> Cause {
    let part = part.trim();
    if let Some(rest) = part.strip_prefix(BUSY) {
        // Quoted since 2.125; before, the bare name.
        let name = quoted(rest).unwrap_or(rest);
        return nonempty(name).map_or(Cause::Other, Cause::Busy);
    }
    if part == NO_LABEL {
        return Cause::NoLabel;
    }
    if let Some(rest) = part.strip_prefix(NO_NODES) {
        return quoted(rest)
            .and_then(nonempty)
            .map_or(Cause::Other, Cause::NoNodes);
    }
    if let Some(rest) = part
        .strip_prefix(ALL_OFFLINE_PREFIX)
        .and_then(|r| r.strip_suffix(ALL_OFFLINE_SUFFIX))
    {
        return quoted(rest)
            .and_then(nonempty)
            .map_or(Cause::Other, Cause::AllOffline);
    }
    if let Some(rest) = part.strip_prefix('‘') {
        if let Some((node, label)) = rest.split_once(MISSING) {
            if let (Some(node), Some(label)) =
                (nonempty(node), label.strip_suffix('’').and_then(nonempty))
            {
                return Cause::LabelMissing { node, label };
            }
            return Cause::Other;
        }
    }
    if let Some(rest) = part.strip_suffix(IS_OFFLINE) {
        return quoted(rest)
            .and_then(nonempty)
            .map_or(Cause::Other, Cause::NodeOffline);
    }
    Cause::Other
}

/// The text between a leading `‘` and a trailing `’` (the name itself may
/// contain either quote: only the outer pair delimits).
fn quoted(text: &str) -> Option<&str> {
    text.strip_prefix('‘')?.strip_suffix('’')
}

fn nonempty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

impl Cause {
    /// What this part says the item waits for, if anything.
    pub fn wanted(&self) -> Option<Wanted> {
        match self {
            Cause::Busy(x) => Some(Wanted::LabelOrNode(x.clone())),
            Cause::NoNodes(l) | Cause::AllOffline(l) => Some(Wanted::Label(l.clone())),
            Cause::LabelMissing { label, .. } => Some(Wanted::Label(label.clone())),
            Cause::NodeOffline(n) => Some(Wanted::Node(n.clone())),
            Cause::NoLabel | Cause::Other => None,
        }
    }
}

/// What the item behind `why` waits for: the first part that names a label
/// or node (a composite's parts all concern the same item, hence the same
/// label).
pub fn wanted(why: &str) -> Option<Wanted> {
    parse(why).iter().find_map(Cause::wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_form() {
        let cases = [
            (
                "Waiting for next available executor on ‘macos&&arm64’",
                Cause::Busy("macos&&arm64".into()),
            ),
            (
                "Waiting for next available executor on macos",
                Cause::Busy("macos".into()),
            ),
            (
                "There are no nodes with the label ‘linux’",
                Cause::NoNodes("linux".into()),
            ),
            (
                "All nodes of label ‘macos’ are offline",
                Cause::AllOffline("macos".into()),
            ),
            ("‘m1’ is offline", Cause::NodeOffline("m1".into())),
            (
                "‘x1’ doesn’t have label ‘y||z’",
                Cause::LabelMissing {
                    node: "x1".into(),
                    label: "y||z".into(),
                },
            ),
            ("Waiting for next available executor", Cause::NoLabel),
            (
                "‘x1’ is reserved for jobs with matching label expression",
                Cause::Other,
            ),
            ("‘x1’ is not accepting tasks", Cause::Other),
            ("In the quiet period. Expires in 4.9 sec", Cause::Other),
            (
                "Warte auf den nächsten freien Build-Prozessor auf macos",
                Cause::Other,
            ),
            ("", Cause::Other),
            ("‘’ is offline", Cause::Other),
            ("Waiting for next available executor on ‘’", Cause::Other),
        ];
        for (text, cause) in cases {
            assert_eq!(parse_part(text), cause, "{text:?}");
        }
    }

    #[test]
    fn quoted_names_keep_inner_quotes_and_spaces() {
        assert_eq!(
            parse_part("Waiting for next available executor on ‘\"a b\"&&it’s’"),
            Cause::Busy("\"a b\"&&it’s".into())
        );
        assert_eq!(
            parse_part("‘node ‘one’’ is offline"),
            Cause::NodeOffline("node ‘one’".into())
        );
    }

    #[test]
    fn composites_split_on_semicolon_space() {
        let why = "‘x1’ doesn’t have label ‘linux’; ‘y1’ is reserved for jobs with matching label expression; ‘z1’ is offline";
        assert_eq!(
            parse(why),
            [
                Cause::LabelMissing {
                    node: "x1".into(),
                    label: "linux".into()
                },
                Cause::Other,
                Cause::NodeOffline("z1".into()),
            ]
        );
        assert_eq!(wanted(why), Some(Wanted::Label("linux".into())));
        assert_eq!(
            wanted("‘y1’ is reserved for jobs with matching label expression; ‘m1’ is offline"),
            Some(Wanted::Node("m1".into()))
        );
        assert_eq!(
            wanted("Waiting for next available executor on ‘m1’"),
            Some(Wanted::LabelOrNode("m1".into()))
        );
        assert_eq!(wanted("Waiting for next available executor"), None);
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC*") {
            let _ = parse(&text);
            let _ = wanted(&text);
        }

        #[test]
        fn never_panics_near_the_forms(
            prefix in prop::sample::select(vec![
                "Waiting for next available executor on ", "There are no nodes with the label ",
                "All nodes of label ", "‘", "", "Waiting for next available executor",
            ]),
            middle in "[‘’a-z &|;]{0,12}",
            suffix in prop::sample::select(vec![
                "’", " are offline", "’ is offline", "’ doesn’t have label ‘", "", "; ",
            ]),
        ) {
            let text = format!("{prefix}{middle}{suffix}");
            for cause in parse(&text) {
                if let Some(Wanted::Label(l) | Wanted::Node(l) | Wanted::LabelOrNode(l)) = cause.wanted() {
                    prop_assert!(!l.is_empty());
                }
            }
        }
    }
}
