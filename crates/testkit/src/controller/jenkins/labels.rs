//! Jenkins label expressions, written from Jenkins' grammar (core
//! `src/main/antlr4/hudson/model/labels/LabelExpressionLexer.g4` and
//! `LabelExpressionParser.g4`) and its printing rules
//! (`hudson/model/labels/LabelExpression.java`, `LabelAtom.java`,
//! `LabelOperatorPrecedence.java`), independently of the lender's parser.
//!
//! - Operators, loosest last: `!`, `&&`, `||`, `->`, `<->`. `&&` and `||`
//!   chain to the left, `<->` chains, `->` does not (`a->b->c` is an error).
//! - Atoms: runs of anything but `& | ! < > ( ) " '`, space and tab, where
//!   `-` belongs to the atom unless a `>` follows; or a double-quoted string
//!   with backslash escapes.
//! - Printing (`Label.getName()` / `getExpression()`): no spaces, the
//!   user's own parentheses kept (Jenkins' `Paren` node), parentheses added
//!   only where precedence needs them, and atoms double-quoted when they
//!   fail `Jenkins.checkGoodName` or hold a space, parenthesis, tab or newline.
//! - A string that does not parse is, as `Jenkins.getLabel` does it, one
//!   atom named by the whole (trimmed) string: see [`Label::for_job`].

use std::collections::BTreeSet;
use std::fmt;

/// A parsed label expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    /// One label (raw name, unquoted).
    Atom(String),
    /// `!e`
    Not(Box<Label>),
    /// `(e)` as the user wrote it.
    Paren(Box<Label>),
    /// `a&&b`
    And(Box<Label>, Box<Label>),
    /// `a||b`
    Or(Box<Label>, Box<Label>),
    /// `a->b`
    Implies(Box<Label>, Box<Label>),
    /// `a<->b`
    Iff(Box<Label>, Box<Label>),
}

/// Why an expression did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label expression {expression:?}: {reason}")]
pub struct LabelError {
    /// The input.
    pub expression: String,
    /// What was wrong, and where.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    And,
    Or,
    Not,
    Implies,
    Iff,
    LParen,
    RParen,
    Atom(String),
}

impl Label {
    /// Parses `text` with Jenkins' grammar.
    pub fn parse(text: &str) -> Result<Label, LabelError> {
        let fail = |reason: String| LabelError {
            expression: text.to_owned(),
            reason,
        };
        let tokens = lex(text).map_err(fail)?;
        let mut parser = Parser { tokens, at: 0 };
        let label = parser.iff().map_err(fail)?;
        if parser.at != parser.tokens.len() {
            return Err(fail(format!("unexpected {:?}", parser.tokens[parser.at])));
        }
        Ok(label)
    }

    /// A job's assigned label from its configured string, as
    /// `Jenkins.getLabel` makes it: `None` for a blank string, the parsed
    /// expression, or (when it does not parse) one atom of the whole string.
    pub fn for_job(text: &str) -> Option<Label> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        Some(Label::parse(text).unwrap_or_else(|_| Label::Atom(text.to_owned())))
    }

    /// What Jenkins shows as the label's name (`Label.getName()`, the `{0}`
    /// of the queue's texts): an atom's raw name, else the expression.
    pub fn name(&self) -> String {
        match self {
            Label::Atom(name) => name.clone(),
            _ => self.expression(),
        }
    }

    /// The normalised expression (`Label.getExpression()`).
    pub fn expression(&self) -> String {
        match self {
            Label::Atom(name) => escape(name),
            Label::Not(base) => format!("!{}", paren(1, base)),
            Label::Paren(base) => format!("({})", base.expression()),
            Label::And(l, r) => binary(2, "&&", l, r),
            Label::Or(l, r) => binary(3, "||", l, r),
            Label::Implies(l, r) => binary(4, "->", l, r),
            Label::Iff(l, r) => binary(5, "<->", l, r),
        }
    }

    /// `LabelOperatorPrecedence` ordinal: ATOM 0 (parentheses too), NOT 1,
    /// AND 2, OR 3, IMPLIES 4, IFF 5.
    fn precedence(&self) -> u8 {
        match self {
            Label::Atom(_) | Label::Paren(_) => 0,
            Label::Not(_) => 1,
            Label::And(..) => 2,
            Label::Or(..) => 3,
            Label::Implies(..) => 4,
            Label::Iff(..) => 5,
        }
    }

    /// Whether a node carrying `atoms` satisfies the expression.
    pub fn matches(&self, atoms: &BTreeSet<String>) -> bool {
        match self {
            Label::Atom(name) => atoms.contains(name),
            Label::Not(base) => !base.matches(atoms),
            Label::Paren(base) => base.matches(atoms),
            Label::And(l, r) => l.matches(atoms) && r.matches(atoms),
            Label::Or(l, r) => l.matches(atoms) || r.matches(atoms),
            Label::Implies(l, r) => !l.matches(atoms) || r.matches(atoms),
            Label::Iff(l, r) => l.matches(atoms) == r.matches(atoms),
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

fn paren(op: u8, label: &Label) -> String {
    if op < label.precedence() {
        format!("({})", label.expression())
    } else {
        label.expression()
    }
}

fn binary(op: u8, text: &str, l: &Label, r: &Label) -> String {
    format!("{}{text}{}", paren(op, l), paren(op, r))
}

/// `LabelAtom.escape`: quoted when the name fails `checkGoodName` or holds
/// a character the grammar would split on.
pub fn escape(name: &str) -> String {
    let needs = check_good_name(name).is_err()
        || name
            .chars()
            .any(|c| matches!(c, ' ' | '(' | ')' | '\t' | '\n'));
    if !needs {
        return name.to_owned();
    }
    // QuotedStringTokenizer.quote
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Why `Jenkins.checkGoodName` refuses a name, as its English message
/// (core `Messages.properties`: `Hudson.NoName`, `Jenkins.NotAllowedName`,
/// `Hudson.ControlCodeNotAllowed`, `Hudson.UnsafeChar`, `Hudson.TrailingDot`).
pub fn check_good_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("No name is specified".to_owned());
    }
    let trimmed = name.trim();
    if trimmed == "." || trimmed == ".." {
        return Err(format!("“{trimmed}” is not an allowed name"));
    }
    for c in name.chars() {
        if c.is_control() {
            return Err(format!(
                "No control code is allowed: {}",
                name.escape_default()
            ));
        }
        if "?*/\\%!@#$^&|<>[]:;".contains(c) {
            return Err(format!("‘{c}’ is an unsafe character"));
        }
    }
    if trimmed.ends_with('.') {
        return Err("A name cannot end with ‘.’".to_owned());
    }
    Ok(())
}

fn lex(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let is_atom_char = |c: char| {
        !matches!(
            c,
            '&' | '|' | '!' | '<' | '>' | '(' | ')' | ' ' | '\t' | '"' | '\''
        )
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            ' ' | '\t' => i += 1,
            '&' if next == Some('&') => {
                tokens.push(Token::And);
                i += 2;
            }
            '|' if next == Some('|') => {
                tokens.push(Token::Or);
                i += 2;
            }
            '!' => {
                tokens.push(Token::Not);
                i += 1;
            }
            '-' if next == Some('>') => {
                tokens.push(Token::Implies);
                i += 2;
            }
            '<' if next == Some('-') && chars.get(i + 2) == Some(&'>') => {
                tokens.push(Token::Iff);
                i += 3;
            }
            '(' => {
                tokens.push(Token::LParen);
                i += 1;
            }
            ')' => {
                tokens.push(Token::RParen);
                i += 1;
            }
            '"' => {
                let mut atom = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None | Some('\r') | Some('\n') => {
                            return Err("unterminated quoted label".to_owned())
                        }
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            let escaped = match chars.get(i + 1) {
                                Some('b') => '\u{8}',
                                Some('t') => '\t',
                                Some('n') => '\n',
                                Some('f') => '\u{c}',
                                Some('r') => '\r',
                                Some(c @ ('"' | '\'' | '\\')) => *c,
                                _ => return Err(format!("bad escape at {i}")),
                            };
                            atom.push(escaped);
                            i += 2;
                        }
                        Some(c) => {
                            atom.push(*c);
                            i += 1;
                        }
                    }
                }
                tokens.push(Token::Atom(atom));
            }
            c if is_atom_char(c) => {
                let mut atom = String::new();
                while let Some(&c) = chars.get(i) {
                    let arrow = c == '-' && chars.get(i + 1) == Some(&'>');
                    if !is_atom_char(c) || arrow {
                        break;
                    }
                    atom.push(c);
                    i += 1;
                }
                tokens.push(Token::Atom(atom));
            }
            c => return Err(format!("unexpected {c:?} at {i}")),
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn eat(&mut self, token: &Token) -> bool {
        if self.peek() == Some(token) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// term1: term2 (`<->` term2)*
    fn iff(&mut self) -> Result<Label, String> {
        let mut l = self.implies()?;
        while self.eat(&Token::Iff) {
            let r = self.implies()?;
            l = Label::Iff(Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    /// term2: term3 (`->` term3)?
    fn implies(&mut self) -> Result<Label, String> {
        let l = self.or()?;
        if self.eat(&Token::Implies) {
            let r = self.or()?;
            return Ok(Label::Implies(Box::new(l), Box::new(r)));
        }
        Ok(l)
    }

    fn or(&mut self) -> Result<Label, String> {
        let mut l = self.and()?;
        while self.eat(&Token::Or) {
            let r = self.and()?;
            l = Label::Or(Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Label, String> {
        let mut l = self.not()?;
        while self.eat(&Token::And) {
            let r = self.not()?;
            l = Label::And(Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    /// term5: term6 | `!` term6 (so `!!a` is an error, as in Jenkins).
    fn not(&mut self) -> Result<Label, String> {
        if self.eat(&Token::Not) {
            return Ok(Label::Not(Box::new(self.primary()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Label, String> {
        match self.tokens.get(self.at).cloned() {
            Some(Token::LParen) => {
                self.at += 1;
                let inner = self.iff()?;
                if !self.eat(&Token::RParen) {
                    return Err("missing ‘)’".to_owned());
                }
                Ok(Label::Paren(Box::new(inner)))
            }
            Some(Token::Atom(name)) => {
                self.at += 1;
                Ok(Label::Atom(name))
            }
            Some(other) => Err(format!("unexpected {other:?}")),
            None => Err("unexpected end".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn atoms(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// (input, normalised expression, name) per Jenkins' printing rules.
    #[test]
    fn parse_and_print_table() {
        let table: &[(&str, &str, &str)] = &[
            ("linux", "linux", "linux"),
            ("  linux  ", "linux", "linux"),
            ("macos && arm64", "macos&&arm64", "macos&&arm64"),
            ("a||b&&c", "a||b&&c", "a||b&&c"),
            ("(a||b)&&c", "(a||b)&&c", "(a||b)&&c"),
            ("((a))", "((a))", "((a))"),
            ("!a && b", "!a&&b", "!a&&b"),
            ("!(a||b)", "!(a||b)", "!(a||b)"),
            ("a -> b", "a->b", "a->b"),
            ("a<->b<->c", "a<->b<->c", "a<->b<->c"),
            ("a->b||c", "a->b||c", "a->b||c"),
            ("x-y", "x-y", "x-y"),
            ("x-y->z", "x-y->z", "x-y->z"),
            ("\"my label\"", "\"my label\"", "my label"),
            ("\"my label\" && x", "\"my label\"&&x", "\"my label\"&&x"),
            ("\"a\\\"b\"", "a\"b", "a\"b"),
            ("\"c:d\"", "\"c:d\"", "c:d"),
            ("jdk1.8", "jdk1.8", "jdk1.8"),
        ];
        for (input, expression, name) in table {
            let label = Label::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(&label.expression(), expression, "expression of {input:?}");
            assert_eq!(&label.name(), name, "name of {input:?}");
        }
    }

    #[test]
    fn precedence_and_evaluation_table() {
        // (expression, node atoms, matches)
        let table: &[(&str, &[&str], bool)] = &[
            ("a&&b", &["a", "b"], true),
            ("a&&b", &["a"], false),
            ("a||b&&c", &["a"], true),
            ("(a||b)&&c", &["a"], false),
            ("!a&&b", &["b"], true),
            ("!a&&b", &["a", "b"], false),
            ("!(a&&b)", &["a"], true),
            ("a->b", &[], true),
            ("a->b", &["a"], false),
            ("a->b||c", &["a", "c"], true),
            ("a<->b", &[], true),
            ("a<->b", &["b"], false),
            ("\"my label\"", &["my label"], true),
            ("x-y", &["x-y"], true),
            ("x-y", &["x"], false),
        ];
        for (expression, node, expected) in table {
            let label = Label::parse(expression).unwrap();
            assert_eq!(
                label.matches(&atoms(node)),
                *expected,
                "{expression} on {node:?}"
            );
        }
    }

    #[test]
    fn structure_follows_precedence() {
        let a = || Box::new(Label::Atom("a".into()));
        let b = || Box::new(Label::Atom("b".into()));
        let c = || Box::new(Label::Atom("c".into()));
        assert_eq!(
            Label::parse("a||b&&c").unwrap(),
            Label::Or(a(), Box::new(Label::And(b(), c())))
        );
        assert_eq!(
            Label::parse("a&&b&&c").unwrap(),
            Label::And(Box::new(Label::And(a(), b())), c())
        );
        assert_eq!(
            Label::parse("!a||b").unwrap(),
            Label::Or(Box::new(Label::Not(a())), b())
        );
    }

    #[test]
    fn errors_and_job_fallback() {
        for bad in [
            "a->b->c", "a &", "(a", "a)", "!!a", "a b", "\"open", "&&", "",
        ] {
            assert!(Label::parse(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!(Label::for_job("  "), None);
        assert_eq!(Label::for_job("a b"), Some(Label::Atom("a b".into())));
        assert_eq!(
            Label::for_job("a b").unwrap().expression(),
            "\"a b\"",
            "printed quoted"
        );
    }

    #[test]
    fn good_names() {
        assert!(check_good_name("lent-mac1").is_ok());
        assert_eq!(check_good_name(""), Err("No name is specified".into()));
        assert_eq!(
            check_good_name("a/b"),
            Err("‘/’ is an unsafe character".into())
        );
        assert_eq!(
            check_good_name("a."),
            Err("A name cannot end with ‘.’".into())
        );
        assert!(check_good_name("..").is_err());
        assert!(check_good_name("a\u{1}").is_err());
    }
}
