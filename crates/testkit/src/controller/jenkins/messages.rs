//! The queue's `why` texts, in English and German, exactly as core's
//! `hudson/model/Messages.properties` and `Messages_de.properties` word
//! them (jenkinsci/jenkins at `ff9430ee1d`), and the causes that produce
//! them (`hudson/model/queue/CauseOfBlockage.java`,
//! `jenkins/model/queue/CompositeCauseOfBlockage.java`).
//!
//! Note the German texts for `Queue.NodeOffline` and
//! `Queue.WaitingForNextAvailableExecutorOn` carry no quotes, unlike the
//! English ones and the other German ones (which use „…“).

use std::collections::BTreeSet;

/// The language a request asked for with `Accept-Language`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// English (also the fallback: the controller's JVM default).
    En,
    /// German.
    De,
}

impl Lang {
    /// The request's preferred language (highest `q`, first on ties), as
    /// `request.getLocale()` picks it. Assumption: any language other than
    /// German falls back to English (the test controller has only these).
    pub fn from_accept_language(header: Option<&str>) -> Lang {
        let Some(header) = header else {
            return Lang::En;
        };
        let mut best: Option<(f32, &str)> = None;
        for part in header.split(',') {
            let mut fields = part.split(';');
            let tag = fields.next().unwrap_or("").trim();
            if tag.is_empty() {
                continue;
            }
            let q = fields
                .filter_map(|f| f.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, tag));
            }
        }
        match best {
            Some((q, tag))
                if q > 0.0
                    && tag
                        .split('-')
                        .next()
                        .is_some_and(|p| p.eq_ignore_ascii_case("de")) =>
            {
                Lang::De
            }
            _ => Lang::En,
        }
    }
}

/// Why a buildable item is not running (a `CauseOfBlockage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// `BecauseLabelIsBusy`: the label's name.
    LabelBusy(String),
    /// `BecauseNodeIsBusy`: the node's display name.
    NodeBusy(String),
    /// `BecauseLabelIsOffline` for a label without nodes (nor clouds).
    LabelHasNoNodes(String),
    /// `BecauseLabelIsOffline` for a label whose nodes are all offline.
    AllNodesOffline(String),
    /// `BecauseNodeIsOffline`: the node's display name.
    NodeOffline(String),
    /// `Node.canTake`: the node lacks the label (node, label).
    LabelMissing(String, String),
    /// `Node.canTake`: an EXCLUSIVE node and an item without a label.
    Reserved(String),
    /// `NeedsMoreExecutorImpl`: no label assigned.
    Waiting,
    /// `CompositeCauseOfBlockage` of the last scheduling round's reasons.
    Composite(Vec<Cause>),
}

/// More reasons than this are cut short (`MAX_REASONS_TO_DISPLAY`).
const MAX_REASONS: usize = 5;

impl Cause {
    /// `getShortDescription()` in `lang`.
    pub fn text(&self, lang: Lang) -> String {
        match (self, lang) {
            (Cause::LabelBusy(x) | Cause::NodeBusy(x), Lang::En) => {
                format!("Waiting for next available executor on ‘{x}’")
            }
            (Cause::LabelBusy(x) | Cause::NodeBusy(x), Lang::De) => {
                format!("Warte auf den nächsten freien Build-Prozessor auf {x}")
            }
            (Cause::LabelHasNoNodes(x), Lang::En) => {
                format!("There are no nodes with the label ‘{x}’")
            }
            (Cause::LabelHasNoNodes(x), Lang::De) => {
                format!("Es gibt keine Knoten mit dem Label „{x}“")
            }
            (Cause::AllNodesOffline(x), Lang::En) => {
                format!("All nodes of label ‘{x}’ are offline")
            }
            (Cause::AllNodesOffline(x), Lang::De) => {
                format!("Alle Knoten des Labels „{x}“ sind offline")
            }
            (Cause::NodeOffline(x), Lang::En) => format!("‘{x}’ is offline"),
            (Cause::NodeOffline(x), Lang::De) => format!("{x} ist offline"),
            (Cause::LabelMissing(n, l), Lang::En) => format!("‘{n}’ doesn’t have label ‘{l}’"),
            (Cause::LabelMissing(n, l), Lang::De) => format!("„{n}“ hat nicht das Label „{l}“"),
            (Cause::Reserved(n), Lang::En) => {
                format!("‘{n}’ is reserved for jobs with matching label expression")
            }
            (Cause::Reserved(n), Lang::De) => {
                format!("„{n}“ ist für Projekte mit passendem Label-Ausdruck reserviert")
            }
            (Cause::Waiting, Lang::En) => "Waiting for next available executor".to_owned(),
            (Cause::Waiting, Lang::De) => {
                "Warte auf den nächsten freien Build-Prozessor".to_owned()
            }
            (Cause::Composite(parts), lang) => {
                // Unique texts in a TreeMap: sorted, then joined.
                let unique: BTreeSet<String> = parts.iter().map(|p| p.text(lang)).collect();
                let shown: Vec<&str> = unique
                    .iter()
                    .take(MAX_REASONS)
                    .map(String::as_str)
                    .collect();
                let mut text = shown.join("; ");
                if unique.len() > MAX_REASONS {
                    text.push_str(&format!("; ... and {} more", unique.len() - MAX_REASONS));
                }
                text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language() {
        assert_eq!(Lang::from_accept_language(None), Lang::En);
        assert_eq!(Lang::from_accept_language(Some("de")), Lang::De);
        assert_eq!(Lang::from_accept_language(Some("de-DE,en;q=0.5")), Lang::De);
        assert_eq!(Lang::from_accept_language(Some("en, de;q=0.9")), Lang::En);
        assert_eq!(
            Lang::from_accept_language(Some("en;q=0.1, de;q=0.9")),
            Lang::De
        );
        assert_eq!(Lang::from_accept_language(Some("fr")), Lang::En);
    }

    #[test]
    fn composite_sorts_dedups_and_truncates() {
        let c = Cause::Composite(vec![
            Cause::NodeOffline("b".into()),
            Cause::NodeOffline("a".into()),
            Cause::NodeOffline("a".into()),
        ]);
        assert_eq!(c.text(Lang::En), "‘a’ is offline; ‘b’ is offline");
        let many = Cause::Composite((0..7).map(|i| Cause::Reserved(format!("n{i}"))).collect());
        assert!(
            many.text(Lang::En).ends_with("; ... and 2 more"),
            "{}",
            many.text(Lang::En)
        );
        assert_eq!(
            Cause::NodeBusy("m1".into()).text(Lang::De),
            "Warte auf den nächsten freien Build-Prozessor auf m1"
        );
    }
}
