//! The formats around the API routes: form parameters, `tree=` and its
//! filter, and a node's `<slave>` XML (read and written), with Jenkins'
//! conventions (Stapler's `NamedPathPruner`, XStream's `DumbSlave`).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::super::http::{percent_decode, xml_escape};
use super::{Mode, NodeConfig};

/// `application/x-www-form-urlencoded` pairs (first value wins).
pub(super) fn params(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| percent_decode(&s.replace('+', " "));
        if let (Some(k), Some(v)) = (decode(k), decode(v)) {
            out.entry(k).or_insert(v);
        }
    }
    out
}

/// `Util.rawEncode`-like: everything but unreserved characters escaped.
pub(super) fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A `tree=` level: field name → sub-fields (empty: the whole value).
pub(super) type Tree = BTreeMap<String, Subtree>;
#[derive(Debug, Default)]
pub(super) struct Subtree(Tree);

pub(super) fn parse_tree(text: &str) -> Result<Tree, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut at = 0;
    let tree = parse_level(&chars, &mut at)?;
    if at != chars.len() {
        return Err(format!("unexpected {:?} at {at}", chars[at]));
    }
    Ok(tree)
}

fn parse_level(chars: &[char], at: &mut usize) -> Result<Tree, String> {
    let mut tree = Tree::new();
    loop {
        let start = *at;
        while *at < chars.len() && !matches!(chars[*at], ',' | '[' | ']' | '{') {
            *at += 1;
        }
        let name: String = chars[start..*at]
            .iter()
            .collect::<String>()
            .trim()
            .to_owned();
        if name.is_empty() {
            return Err(format!("empty field at {start}"));
        }
        let mut sub = Tree::new();
        if chars.get(*at) == Some(&'[') {
            *at += 1;
            sub = parse_level(chars, at)?;
            if chars.get(*at) != Some(&']') {
                return Err("missing ‘]’".to_owned());
            }
            *at += 1;
        }
        // A range (`{m,n}`) is accepted and ignored.
        if chars.get(*at) == Some(&'{') {
            while *at < chars.len() && chars[*at] != '}' {
                *at += 1;
            }
            *at += 1;
        }
        tree.insert(name, Subtree(sub));
        if chars.get(*at) == Some(&',') {
            *at += 1;
            continue;
        }
        return Ok(tree);
    }
}

pub(super) fn filter(value: &Value, tree: &Tree) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.iter().map(|v| filter(v, tree)).collect()),
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, v) in map {
                if key == "_class" {
                    out.insert(key.clone(), v.clone());
                } else if let Some(Subtree(sub)) = tree.get(key) {
                    let v = if sub.is_empty() {
                        v.clone()
                    } else {
                        filter(v, sub)
                    };
                    out.insert(key.clone(), v);
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// Reads a `<slave>` node's XML (the fields this stand-in models). `None`
/// when the root is not `<slave>` or a field is malformed.
pub(super) fn parse_slave_xml(xml: &str) -> Option<NodeConfig> {
    let mut rest = xml.trim_start();
    if rest.starts_with("<?xml") {
        rest = rest[rest.find("?>")? + 2..].trim_start();
    }
    if !(rest.starts_with("<slave>") || rest.starts_with("<slave ")) {
        return None;
    }
    let field = |tag: &str| -> Option<String> {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        let start = rest.find(&open)? + open.len();
        let end = start + rest[start..].find(&close)?;
        Some(xml_unescape(&rest[start..end]))
    };
    let mut config = NodeConfig::new(field("name").unwrap_or_default().trim());
    if let Some(n) = field("numExecutors") {
        config.num_executors = n.trim().parse().ok().filter(|n| *n > 0)?;
    }
    if let Some(mode) = field("mode") {
        config.mode = Mode::parse(&mode)?;
    }
    config.labels = field("label").unwrap_or_default();
    config.description = field("description").unwrap_or_default();
    if let Some(fs) = field("remoteFS") {
        config.remote_fs = fs;
    }
    config.inbound = rest.contains("<launcher class=\"hudson.slaves.JNLPLauncher\"");
    config.web_socket = config.inbound && field("webSocket").is_some_and(|w| w.trim() == "true");
    Some(config)
}

/// A node's configuration as XStream writes a `DumbSlave`.
pub(super) fn slave_xml(config: &NodeConfig) -> String {
    let mode = match config.mode {
        Mode::Normal => "NORMAL",
        Mode::Exclusive => "EXCLUSIVE",
    };
    let launcher = if config.inbound {
        format!("<launcher class=\"hudson.slaves.JNLPLauncher\">\n    <workDirSettings>\n      <disabled>false</disabled>\n      <internalDir>remoting</internalDir>\n      <failIfWorkDirIsMissing>false</failIfWorkDirIsMissing>\n    </workDirSettings>\n    <webSocket>{}</webSocket>\n  </launcher>", config.web_socket)
    } else {
        "<launcher class=\"hudson.slaves.CommandLauncher\"/>".to_owned()
    };
    format!(
        "<?xml version='1.1' encoding='UTF-8'?>\n<slave>\n  <name>{}</name>\n  <description>{}</description>\n  <remoteFS>{}</remoteFS>\n  <numExecutors>{}</numExecutors>\n  <mode>{mode}</mode>\n  <retentionStrategy class=\"hudson.slaves.RetentionStrategy$Always\"/>\n  {launcher}\n  <label>{}</label>\n  <nodeProperties/>\n</slave>",
        xml_escape(&config.name),
        xml_escape(&config.description),
        xml_escape(&config.remote_fs),
        config.num_executors,
        xml_escape(&config.labels),
    )
}

fn xml_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tree_filters_nested_fields() {
        let value = json!({"_class": "Q", "items": [{"_class": "I", "id": 1, "why": "w", "task": {"_class": "T", "name": "n", "url": "u"}}], "other": 1});
        let tree = parse_tree("items[id,task[name]]").unwrap();
        assert_eq!(
            filter(&value, &tree),
            json!({"_class": "Q", "items": [{"_class": "I", "id": 1, "task": {"_class": "T", "name": "n"}}]})
        );
        assert!(parse_tree("items[id").is_err());
        assert!(parse_tree("a,,b").is_err());
        assert!(parse_tree("jobs[name]{0,10}").is_ok());
    }

    #[test]
    fn slave_xml() {
        let xml = r#"<?xml version="1.1" encoding="UTF-8"?>
<slave><name>lent-m1</name><description>a &amp; b</description><remoteFS>/w</remoteFS><numExecutors>1</numExecutors>
<mode>EXCLUSIVE</mode><retentionStrategy class="hudson.slaves.RetentionStrategy$Always"/>
<launcher class="hudson.slaves.JNLPLauncher"><webSocket>true</webSocket></launcher>
<label>macos arm64</label><nodeProperties/></slave>"#;
        let config = parse_slave_xml(xml).unwrap();
        assert_eq!(config.name, "lent-m1");
        assert_eq!(config.description, "a & b");
        assert_eq!(config.mode, Mode::Exclusive);
        assert_eq!(config.labels, "macos arm64");
        assert!(config.inbound);
        assert!(config.web_socket);
        assert!(parse_slave_xml("<project/>").is_none());
        assert_eq!(
            parse_slave_xml(&super::slave_xml(&config)),
            Some(config),
            "round trip"
        );
        assert!(parse_slave_xml("<slave><mode>SOMETIMES</mode></slave>").is_none());
    }

    #[test]
    fn form_params() {
        let p = params("name=a+b&json=%7B%22x%22%3A1%7D&name=ignored");
        assert_eq!(p["name"], "a b");
        assert_eq!(p["json"], "{\"x\":1}");
    }
}
