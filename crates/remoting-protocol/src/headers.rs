//! The connection headers of JNLP4-connect: a flat JSON object of strings
//! (values may be `null`), written and read exactly as the controller's
//! `ConnectionHeaders` does.
//!
//! Hand-written rather than serde_json because the format is narrower and
//! stricter than JSON in ways that matter for byte-exact replay: key order is
//! the sender's, `\u` escapes use lowercase hex, only control characters,
//! quote and backslash are escaped, and the reader accepts exactly the
//! controller's grammar (whitespace includes `\f` and `\b`; no numbers,
//! nesting or booleans).

use std::fmt;

/// The header carrying the agent's node name.
pub const NODE_NAME: &str = "Node-Name";
/// The header carrying the agent's secret.
pub const SECRET_KEY: &str = "Secret-Key";
/// The header carrying a channel cookie, both ways.
pub const COOKIE: &str = "JnlpAgentProtocol.cookie";

/// Why a header text could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadersError {
    /// A character other than the grammar allows at this place.
    #[error("malformed connection headers: expected {expected} at offset {offset}")]
    Unexpected {
        /// What the grammar wanted.
        expected: &'static str,
        /// Byte offset of the offending character.
        offset: usize,
    },
    /// The text ended inside the object.
    #[error("malformed connection headers: the text ends before the closing brace")]
    Truncated,
    /// A `\uXXXX` escape that is not four hex digits or is a lone surrogate.
    #[error("malformed connection headers: bad unicode escape at offset {0}")]
    BadEscape(usize),
}

/// An ordered list of headers, as sent or received.
///
/// `Debug` hides the value of [`SECRET_KEY`] so headers can be logged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, Option<String>)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` (replacing an earlier value in place, as a map would).
    pub fn insert(&mut self, key: impl Into<String>, value: Option<String>) {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// Builder form of [`Headers::insert`] for a present value.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(key, Some(value.into()));
        self
    }

    /// The value of `key`; `None` both when absent and when `null`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// Whether `key` is present (even as `null`).
    pub fn contains(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k == key)
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The wire text, byte-identical to the controller's `ConnectionHeaders.toString`.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(
            2 + self
                .entries
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(4, |v| v.len() + 2) + 4)
                .sum::<usize>(),
        );
        out.push('{');
        for (i, (key, value)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            escape_into(&mut out, key);
            out.push_str("\":");
            match value {
                None => out.push_str("null"),
                Some(value) => {
                    out.push('"');
                    escape_into(&mut out, value);
                    out.push('"');
                }
            }
        }
        out.push('}');
        out
    }

    /// Reads a header text with the controller's grammar. A repeated key keeps
    /// its last value, as the controller's map does.
    pub fn decode(text: &str) -> Result<Self, HeadersError> {
        Parser { text, pos: 0 }.object()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in self.iter() {
            match value {
                Some(_) if key == SECRET_KEY => map.entry(&key, &"***"),
                _ => map.entry(&key, &value),
            };
        }
        map.finish()
    }
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) <= 0x1f => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

/// Whitespace as the controller's reader counts it.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{c}' | '\u{8}')
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn peek_non_space(&mut self) -> Option<char> {
        let rest = &self.text[self.pos..];
        let skipped = rest.len() - rest.trim_start_matches(is_space).len();
        self.pos += skipped;
        self.text[self.pos..].chars().next()
    }

    fn expect(&mut self, want: char, expected: &'static str) -> Result<(), HeadersError> {
        match self.peek_non_space() {
            Some(c) if c == want => {
                self.pos += c.len_utf8();
                Ok(())
            }
            Some(_) => Err(self.unexpected(expected)),
            None => Err(HeadersError::Truncated),
        }
    }

    fn unexpected(&self, expected: &'static str) -> HeadersError {
        HeadersError::Unexpected {
            expected,
            offset: self.pos,
        }
    }

    fn object(mut self) -> Result<Headers, HeadersError> {
        let mut headers = Headers::new();
        self.expect('{', "'{'")?;
        if self.peek_non_space() == Some('}') {
            self.pos += 1;
        } else {
            loop {
                self.expect('"', "'\"' starting a key")?;
                let key = self.string_body()?;
                self.expect(':', "':'")?;
                let value = match self.peek_non_space() {
                    Some('"') => {
                        self.pos += 1;
                        Some(self.string_body()?)
                    }
                    Some('n') if self.text[self.pos..].starts_with("null") => {
                        self.pos += 4;
                        None
                    }
                    Some(_) => return Err(self.unexpected("'\"' or null")),
                    None => return Err(HeadersError::Truncated),
                };
                headers.insert(key, value);
                match self.peek_non_space() {
                    Some(',') => self.pos += 1,
                    Some('}') => {
                        self.pos += 1;
                        break;
                    }
                    Some(_) => return Err(self.unexpected("',' or '}'")),
                    None => return Err(HeadersError::Truncated),
                }
            }
        }
        match self.peek_non_space() {
            None => Ok(headers),
            Some(_) => Err(self.unexpected("nothing after '}'")),
        }
    }

    /// Reads the rest of a string whose opening quote was consumed.
    fn string_body(&mut self) -> Result<String, HeadersError> {
        let mut out = String::new();
        let mut chars = self.text[self.pos..].char_indices();
        let start = self.pos;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos = start + i + 1;
                    return Ok(out);
                }
                '\\' => {
                    let Some((j, e)) = chars.next() else {
                        return Err(HeadersError::Truncated);
                    };
                    match e {
                        '"' | '\\' | '/' => out.push(e),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'n' => out.push('\n'),
                        'r' => out.push('\r'),
                        't' => out.push('\t'),
                        'u' => {
                            let unit =
                                hex4(&mut chars).ok_or(HeadersError::BadEscape(start + j))?;
                            let c = if (0xD800..0xDC00).contains(&unit) {
                                // A high surrogate must be followed by `\u` + low surrogate.
                                let low = match (chars.next(), chars.next()) {
                                    (Some((_, '\\')), Some((_, 'u'))) => hex4(&mut chars),
                                    _ => None,
                                }
                                .filter(|low| (0xDC00..0xE000).contains(low))
                                .ok_or(HeadersError::BadEscape(start + j))?;
                                char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
                            } else {
                                char::from_u32(unit)
                            };
                            out.push(c.ok_or(HeadersError::BadEscape(start + j))?);
                        }
                        _ => {
                            return Err(HeadersError::Unexpected {
                                expected: "a known escape",
                                offset: start + j,
                            })
                        }
                    }
                }
                c => out.push(c),
            }
        }
        Err(HeadersError::Truncated)
    }
}

fn hex4(chars: &mut std::str::CharIndices<'_>) -> Option<u32> {
    let mut value = 0;
    for _ in 0..4 {
        value = value * 16 + chars.next()?.1.to_digit(16)?;
    }
    Some(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_recorded_agent() {
        let headers = Headers::new()
            .with(NODE_NAME, "capture-agent")
            .with(SECRET_KEY, "0000badsecret");
        assert_eq!(
            headers.encode(),
            r#"{"Node-Name":"capture-agent","Secret-Key":"0000badsecret"}"#
        );
    }

    #[test]
    fn escapes_as_the_controller_does() {
        let mut headers = Headers::new().with("k\"\\", "a\u{1}b\n\u{8}\t\u{c}\r/é😀");
        headers.insert("n", None);
        assert_eq!(
            headers.encode(),
            "{\"k\\\"\\\\\":\"a\\u0001b\\n\\b\\t\\f\\r/é😀\",\"n\":null}"
        );
        assert_eq!(Headers::decode(&headers.encode()).unwrap(), headers);
    }

    #[test]
    fn decodes_the_controller_grammar() {
        let h = Headers::decode(" {\u{c}\"a\" : \"x\\/y\\u00e9\\ud83d\\ude00\" ,\"b\":null}\n")
            .unwrap();
        assert_eq!(h.get("a"), Some("x/yé😀"));
        assert!(h.contains("b"));
        assert_eq!(h.get("b"), None);
        assert_eq!(Headers::decode("{}").unwrap(), Headers::new());
        let h = Headers::decode(r#"{"a":"1","a":"2"}"#).unwrap();
        assert_eq!((h.len(), h.get("a")), (1, Some("2")));
    }

    #[test]
    fn refuses_what_the_controller_refuses() {
        for bad in [
            "",
            "[",
            "{",
            "{\"a\"",
            "{\"a\":1}",
            "{\"a\":\"b\"",
            "{\"a\":\"b\"}x",
            "{\"a\":\"\\q\"}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\udc00\"}",
            "{,}",
            "{\"a\":nul}",
        ] {
            assert!(Headers::decode(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let h = Headers::new()
            .with(NODE_NAME, "n")
            .with(SECRET_KEY, "s3cr3t");
        let shown = format!("{h:?}");
        assert!(
            !shown.contains("s3cr3t") && shown.contains("***"),
            "{shown}"
        );
    }
}
