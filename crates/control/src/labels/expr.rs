//! Jenkins label expressions: `macos && arm64 && !(xcode15 || "old build")`.
//!
//! The grammar is Jenkins' own (`hudson.model.labels`, `LabelExpressionLexer.g4`
//! and `LabelExpressionParser.g4`), so an expression a Jenkins job accepts is
//! accepted here and means the same thing. By increasing precedence:
//!
//! ```text
//! expr    := iff END
//! iff     := implies ("<->" implies)*      left-associative
//! implies := or ("->" or)?                 does not chain: `a -> b -> c` is refused
//! or      := and ("||" and)*
//! and     := unary ("&&" unary)*
//! unary   := "!" primary | primary         `!` applies to a primary only: `!!a` is refused
//! primary := "(" iff ")" | ATOM | STRING
//! ```
//!
//! - An `ATOM` is a run of characters other than whitespace and
//!   `& | ! < > ( ) " '`; a `-` belongs to it unless a `>` follows, so
//!   `x86-64` is one label and `a->b` is an implication.
//! - A `STRING` is double-quoted with the escapes `\b \t \n \f \r \" \' \\`
//!   and no raw line breaks; `"a b"` is the label `a b`.
//! - Jenkins' lexer skips only spaces and tabs; here every whitespace
//!   character separates tokens (Jenkins splits a node's labels on whitespace,
//!   so no real label contains one).
//!
//! The parser is written by hand, by recursive descent: the grammar has six
//! rules and one token of look-ahead, so a parser generator or a combinator
//! library would add a dependency and hide the error messages this module
//! wants to control (a column and what was expected). Input is bounded
//! ([`MAX_LEN`] bytes, [`MAX_DEPTH`] levels of parentheses) so that no input
//! can exhaust the stack; `&&`, `||` and `<->` chains become one n-ary node
//! ([`Operands`]) rather than a deep binary tree, so the tree's depth is
//! bounded by the parentheses too.
//!
//! [`Expr`]'s `Display` prints a canonical, fully parenthesised form that
//! parses back to the same tree: `(macos && arm64 && !(xcode15 || "old build"))`.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// The longest expression accepted, in bytes.
pub const MAX_LEN: usize = 4 * 1024;

/// The deepest nesting of parentheses accepted.
pub const MAX_DEPTH: usize = 64;

/// A parsed label expression.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    /// A label: true when the agent has it.
    Label(String),
    /// `!e`.
    Not(Box<Expr>),
    /// `a && b && ...`: all of them.
    And(Operands),
    /// `a || b || ...`: any of them.
    Or(Operands),
    /// `a -> b`: `b`, or not `a`.
    Implies(Box<Expr>, Box<Expr>),
    /// `a <-> b <-> ...`: folded from the left, `(a <-> b) <-> c`, as Jenkins
    /// does.
    Iff(Operands),
}

/// The operands of an n-ary operator: always two or more.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Operands(Vec<Expr>);

impl Operands {
    /// The first two operands.
    pub fn new(first: Expr, second: Expr) -> Self {
        Operands(vec![first, second])
    }

    /// Appends one more operand.
    pub fn push(&mut self, operand: Expr) {
        self.0.push(operand);
    }

    /// The operands, in order.
    pub fn as_slice(&self) -> &[Expr] {
        &self.0
    }

    /// The operands, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Expr> {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a Operands {
    type Item = &'a Expr;
    type IntoIter = std::slice::Iter<'a, Expr>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Expr {
    /// Parses `input` (see the module docs for the grammar).
    pub fn parse(input: &str) -> Result<Expr, ParseError> {
        if input.len() > MAX_LEN {
            return Err(ParseError::TooLong { len: input.len() });
        }
        let tokens = lex(input)?;
        let mut parser = Parser {
            tokens,
            pos: 0,
            depth: 0,
        };
        let expr = parser.iff()?;
        let token = parser.peek();
        if token.kind != Kind::End {
            return Err(ParseError::Unexpected {
                column: token.column,
                expected: "an operator or the end of the expression",
                found: token.kind.describe(),
            });
        }
        // The canonical form adds parentheses (`a && b || c` nests two
        // levels) and spaces, so an input within the bounds can print to
        // one beyond them, which the store could then not read back.
        let (len, depth) = (expr.to_string().len(), expr.canonical_depth());
        if len > MAX_LEN || depth > MAX_DEPTH {
            return Err(ParseError::TooComplex { len, depth });
        }
        Ok(expr)
    }

    /// How deep the canonical form nests parentheses (see `Display`).
    fn canonical_depth(&self) -> usize {
        match self {
            Expr::Label(_) => 0,
            Expr::Not(inner) => match &**inner {
                Expr::Not(_) => 1 + inner.canonical_depth(),
                _ => inner.canonical_depth(),
            },
            Expr::And(ops) | Expr::Or(ops) | Expr::Iff(ops) => {
                1 + ops.iter().map(Expr::canonical_depth).max().unwrap_or(0)
            }
            Expr::Implies(a, b) => 1 + a.canonical_depth().max(b.canonical_depth()),
        }
    }

    /// Whether an agent with these labels satisfies the expression.
    pub fn matches(&self, labels: &BTreeSet<String>) -> bool {
        self.matches_with(&|label| labels.contains(label))
    }

    /// Whether the expression holds when `has(label)` says which labels are
    /// present.
    pub fn matches_with(&self, has: &dyn Fn(&str) -> bool) -> bool {
        match self {
            Expr::Label(label) => has(label),
            Expr::Not(e) => !e.matches_with(has),
            Expr::And(ops) => ops.iter().all(|e| e.matches_with(has)),
            Expr::Or(ops) => ops.iter().any(|e| e.matches_with(has)),
            Expr::Implies(a, b) => !a.matches_with(has) || b.matches_with(has),
            Expr::Iff(ops) => {
                let mut operands = ops.iter();
                let first = operands.next().is_some_and(|e| e.matches_with(has));
                operands.fold(first, |acc, e| acc == e.matches_with(has))
            }
        }
    }

    /// Every label the expression mentions.
    pub fn labels(&self) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        self.collect_labels(&mut out);
        out
    }

    fn collect_labels<'a>(&'a self, out: &mut BTreeSet<&'a str>) {
        match self {
            Expr::Label(label) => {
                out.insert(label);
            }
            Expr::Not(e) => e.collect_labels(out),
            Expr::Implies(a, b) => {
                a.collect_labels(out);
                b.collect_labels(out);
            }
            Expr::And(ops) | Expr::Or(ops) | Expr::Iff(ops) => {
                ops.iter().for_each(|e| e.collect_labels(out))
            }
        }
    }
}

impl FromStr for Expr {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Expr::parse(s)
    }
}

/// Why an expression was refused. Columns count characters from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The expression is longer than [`MAX_LEN`] bytes.
    #[error("label expression too long: {len} bytes, at most {MAX_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Parentheses nest deeper than [`MAX_DEPTH`].
    #[error("column {column}: parentheses nest deeper than {MAX_DEPTH} levels")]
    TooDeep {
        /// The `(` one level too deep.
        column: usize,
    },
    /// Something other than what the grammar allows there.
    #[error("column {column}: expected {expected}, found {found}")]
    Unexpected {
        /// Where.
        column: usize,
        /// What would have fitted.
        expected: &'static str,
        /// What was there.
        found: String,
    },
    /// A backslash escape the grammar does not know, inside quotes.
    #[error(
        "column {column}: unknown escape `\\{found}` in a quoted label \
         (known: \\b \\t \\n \\f \\r \\\" \\' \\\\)"
    )]
    BadEscape {
        /// Where the backslash is.
        column: usize,
        /// The character after it.
        found: char,
    },
    /// Within the bounds as written, but not in canonical form (which puts
    /// every operator in parentheses and spaces around it): that form is
    /// what the store keeps and the API shows, so it must parse again.
    #[error(
        "label expression too complex: written canonically it is {len} bytes and nests \
         {depth} levels deep, at most {MAX_LEN} bytes and {MAX_DEPTH} levels; \
         simplify it or split the requirement"
    )]
    TooComplex {
        /// The canonical form's length in bytes.
        len: usize,
        /// The canonical form's deepest nesting of parentheses.
        depth: usize,
    },
    /// `a -> b -> c`: Jenkins does not chain `->`, since the two readings
    /// differ.
    #[error(
        "column {column}: `->` does not chain, as `(a -> b) -> c` and \
         `a -> (b -> c)` differ; add parentheses"
    )]
    ChainedImplies {
        /// The second `->`.
        column: usize,
    },
}

impl ParseError {
    /// The column (in characters, from 1) the error points at, if any.
    pub fn column(&self) -> Option<usize> {
        match self {
            ParseError::TooLong { .. } | ParseError::TooComplex { .. } => None,
            ParseError::TooDeep { column }
            | ParseError::Unexpected { column, .. }
            | ParseError::BadEscape { column, .. }
            | ParseError::ChainedImplies { column } => Some(*column),
        }
    }
}

// ---- lexer ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    And,
    Or,
    Not,
    Implies,
    Iff,
    Open,
    Close,
    Atom(String),
    Quoted(String),
    End,
}

impl Kind {
    fn describe(&self) -> String {
        match self {
            Kind::And => "`&&`".into(),
            Kind::Or => "`||`".into(),
            Kind::Not => "`!`".into(),
            Kind::Implies => "`->`".into(),
            Kind::Iff => "`<->`".into(),
            Kind::Open => "`(`".into(),
            Kind::Close => "`)`".into(),
            Kind::Atom(label) => format!("label `{label}`"),
            Kind::Quoted(label) => format!("quoted label {}", Quoted(label)),
            Kind::End => "the end of the expression".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    column: usize,
}

/// Characters that end an unquoted label (besides whitespace, and `-`
/// before `>`).
fn is_special(c: char) -> bool {
    matches!(c, '&' | '|' | '!' | '<' | '>' | '(' | ')' | '"' | '\'')
}

/// Whether the lexer reads `c` as part of an unquoted label (a `-` is,
/// unless a `>` follows it).
pub(super) fn is_atom_char(c: char) -> bool {
    !c.is_whitespace() && !is_special(c)
}

/// Whether `label` can be written without quotes and read back the same.
fn is_bare(label: &str) -> bool {
    // `>` is never an atom character, so a `-` inside a bare label is never
    // followed by one.
    !label.is_empty() && label.chars().all(is_atom_char)
}

fn lex(input: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied();
    while let Some(c) = at(i) {
        let column = i + 1;
        let unexpected = |expected, found: String| ParseError::Unexpected {
            column,
            expected,
            found,
        };
        let (kind, len) = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '&' if at(i + 1) == Some('&') => (Kind::And, 2),
            '&' => return Err(unexpected("`&&`", "a single `&`".into())),
            '|' if at(i + 1) == Some('|') => (Kind::Or, 2),
            '|' => return Err(unexpected("`||`", "a single `|`".into())),
            '!' => (Kind::Not, 1),
            '(' => (Kind::Open, 1),
            ')' => (Kind::Close, 1),
            '-' if at(i + 1) == Some('>') => (Kind::Implies, 2),
            '<' if at(i + 1) == Some('-') && at(i + 2) == Some('>') => (Kind::Iff, 3),
            '<' => return Err(unexpected("`<->`", "`<`".into())),
            '>' => {
                return Err(unexpected(
                    "a label, an operator or `(` (quote a label that holds `>`)",
                    "`>`".into(),
                ))
            }
            '\'' => {
                return Err(unexpected(
                    "a label, an operator or `(` (labels are quoted with `\"`)",
                    "`'`".into(),
                ))
            }
            '"' => {
                let (label, len) = lex_quoted(&chars[i..], column)?;
                (Kind::Quoted(label), len)
            }
            _ => {
                let mut end = i;
                while let Some(c) = at(end) {
                    let dash_before_gt = c == '-' && at(end + 1) == Some('>');
                    if !is_atom_char(c) || dash_before_gt {
                        break;
                    }
                    end += 1;
                }
                (Kind::Atom(chars[i..end].iter().collect()), end - i)
            }
        };
        tokens.push(Token { kind, column });
        i += len;
    }
    tokens.push(Token {
        kind: Kind::End,
        column: chars.len() + 1,
    });
    Ok(tokens)
}

/// Reads a quoted label starting at `chars[0] == '"'`: its text and how many
/// characters it took.
fn lex_quoted(chars: &[char], column: usize) -> Result<(String, usize), ParseError> {
    let mut label = String::new();
    let mut i = 1;
    loop {
        let here = column + i;
        match chars.get(i).copied() {
            None => {
                return Err(ParseError::Unexpected {
                    column: here,
                    expected: "`\"` closing the quoted label",
                    found: "the end of the expression".into(),
                })
            }
            Some('"') => return Ok((label, i + 1)),
            Some('\r' | '\n') => {
                return Err(ParseError::Unexpected {
                    column: here,
                    expected: "`\"` closing the quoted label",
                    found: "a line break".into(),
                })
            }
            Some('\\') => {
                let decoded = match chars.get(i + 1).copied() {
                    Some('b') => '\u{8}',
                    Some('t') => '\t',
                    Some('n') => '\n',
                    Some('f') => '\u{c}',
                    Some('r') => '\r',
                    Some(c @ ('"' | '\'' | '\\')) => c,
                    Some(found) => {
                        return Err(ParseError::BadEscape {
                            column: here,
                            found,
                        })
                    }
                    None => {
                        return Err(ParseError::Unexpected {
                            column: here + 1,
                            expected: "an escaped character after `\\`",
                            found: "the end of the expression".into(),
                        })
                    }
                };
                label.push(decoded);
                i += 2;
            }
            Some(c) => {
                label.push(c);
                i += 1;
            }
        }
    }
}

// ---- parser ----

const OPERAND: &str = "a label, a quoted label, `!` or `(`";
const PRIMARY: &str = "a label, a quoted label or `(` (`!` applies to one of these)";

#[derive(Debug)]
struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// Open parentheses around the current position.
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Token {
        // `lex` always ends the list with `End`, and `next` never moves past
        // it; the fallback keeps this total anyway.
        self.tokens.get(self.pos).cloned().unwrap_or(Token {
            kind: Kind::End,
            column: 0,
        })
    }

    fn next(&mut self) -> Token {
        let token = self.peek();
        if token.kind != Kind::End {
            self.pos += 1;
        }
        token
    }

    fn eat(&mut self, kind: &Kind) -> bool {
        let found = self.tokens.get(self.pos).is_some_and(|t| t.kind == *kind);
        if found {
            self.pos += 1;
        }
        found
    }

    /// A chain of operands joined by `op`, as one n-ary node.
    fn chain(
        &mut self,
        op: &Kind,
        operand: fn(&mut Self) -> Result<Expr, ParseError>,
        node: fn(Operands) -> Expr,
    ) -> Result<Expr, ParseError> {
        let first = operand(self)?;
        if !self.eat(op) {
            return Ok(first);
        }
        let mut operands = Operands::new(first, operand(self)?);
        while self.eat(op) {
            operands.push(operand(self)?);
        }
        Ok(node(operands))
    }

    fn iff(&mut self) -> Result<Expr, ParseError> {
        self.chain(&Kind::Iff, Self::implies, Expr::Iff)
    }

    fn implies(&mut self) -> Result<Expr, ParseError> {
        let premise = self.or()?;
        if !self.eat(&Kind::Implies) {
            return Ok(premise);
        }
        let conclusion = self.or()?;
        let after = self.peek();
        if after.kind == Kind::Implies {
            return Err(ParseError::ChainedImplies {
                column: after.column,
            });
        }
        Ok(Expr::Implies(Box::new(premise), Box::new(conclusion)))
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        self.chain(&Kind::Or, Self::and, Expr::Or)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        self.chain(&Kind::And, Self::unary, Expr::And)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.eat(&Kind::Not) {
            Ok(Expr::Not(Box::new(self.primary(PRIMARY)?)))
        } else {
            self.primary(OPERAND)
        }
    }

    fn primary(&mut self, expected: &'static str) -> Result<Expr, ParseError> {
        let token = self.next();
        match token.kind {
            Kind::Atom(label) | Kind::Quoted(label) => Ok(Expr::Label(label)),
            Kind::Open => {
                if self.depth == MAX_DEPTH {
                    return Err(ParseError::TooDeep {
                        column: token.column,
                    });
                }
                self.depth += 1;
                let inner = self.iff()?;
                let close = self.next();
                if close.kind != Kind::Close {
                    return Err(ParseError::Unexpected {
                        column: close.column,
                        expected: "`)` or an operator",
                        found: close.kind.describe(),
                    });
                }
                self.depth -= 1;
                Ok(inner)
            }
            other => Err(ParseError::Unexpected {
                column: token.column,
                expected,
                found: other.describe(),
            }),
        }
    }
}

// ---- printing ----

/// A label as the canonical form writes it: bare when it can be, otherwise
/// quoted with escapes.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\u{8}' => f.write_str("\\b")?,
                '\u{c}' => f.write_str("\\f")?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

fn write_label(f: &mut fmt::Formatter<'_>, label: &str) -> fmt::Result {
    if is_bare(label) {
        f.write_str(label)
    } else {
        write!(f, "{}", Quoted(label))
    }
}

fn write_chain(f: &mut fmt::Formatter<'_>, ops: &Operands, op: &str) -> fmt::Result {
    f.write_str("(")?;
    for (i, e) in ops.iter().enumerate() {
        if i > 0 {
            write!(f, " {op} ")?;
        }
        write!(f, "{e}")?;
    }
    f.write_str(")")
}

/// The canonical form: every operator node in parentheses (a negated label
/// needs none), labels bare unless they need quotes.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Label(label) => write_label(f, label),
            // `!` takes a label or a parenthesised expression; every operator
            // node prints its own parentheses except `!` itself.
            Expr::Not(inner) => match &**inner {
                Expr::Not(_) => write!(f, "!({inner})"),
                _ => write!(f, "!{inner}"),
            },
            Expr::And(ops) => write_chain(f, ops, "&&"),
            Expr::Or(ops) => write_chain(f, ops, "||"),
            Expr::Iff(ops) => write_chain(f, ops, "<->"),
            Expr::Implies(a, b) => write!(f, "({a} -> {b})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Expr {
        match Expr::parse(s) {
            Ok(e) => e,
            Err(err) => panic!("{s:?} should parse: {err}"),
        }
    }

    fn err(s: &str) -> ParseError {
        match Expr::parse(s) {
            Ok(e) => panic!("{s:?} should be refused, parsed as {e}"),
            Err(err) => err,
        }
    }

    fn l(s: &str) -> Expr {
        Expr::Label(s.into())
    }

    fn set(labels: &[&str]) -> BTreeSet<String> {
        labels.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn precedence_follows_jenkins() {
        assert_eq!(
            p("a || b && c"),
            Expr::Or(Operands::new(
                l("a"),
                Expr::And(Operands::new(l("b"), l("c")))
            ))
        );
        assert_eq!(
            p("a && b -> c || d"),
            Expr::Implies(
                Box::new(Expr::And(Operands::new(l("a"), l("b")))),
                Box::new(Expr::Or(Operands::new(l("c"), l("d"))))
            )
        );
        assert_eq!(
            p("a -> b <-> c"),
            Expr::Iff(Operands::new(
                Expr::Implies(Box::new(l("a")), Box::new(l("b"))),
                l("c")
            ))
        );
        assert_eq!(
            p("!a && b"),
            Expr::And(Operands::new(Expr::Not(Box::new(l("a"))), l("b")))
        );
    }

    #[test]
    fn chains_are_one_node() {
        let mut ops = Operands::new(l("a"), l("b"));
        ops.push(l("c"));
        assert_eq!(p("a && b && c"), Expr::And(ops));
        assert_eq!(p("a <-> b <-> c").to_string(), "(a <-> b <-> c)");
    }

    #[test]
    fn dashes_belong_to_labels_unless_before_gt() {
        assert_eq!(p("x86-64"), l("x86-64"));
        assert_eq!(p("-"), l("-"));
        assert_eq!(p("a->b"), Expr::Implies(Box::new(l("a")), Box::new(l("b"))));
        assert_eq!(
            p("a-->b"),
            Expr::Implies(Box::new(l("a-")), Box::new(l("b")))
        );
        assert_eq!(p("a=b:c.d/e"), l("a=b:c.d/e"));
    }

    #[test]
    fn operators_need_no_spaces() {
        assert_eq!(p("a&&b||!c"), p("a && b || !c"));
        assert_eq!(p("(a)<->(b)"), p("a <-> b"));
    }

    #[test]
    fn quoted_labels_and_escapes() {
        assert_eq!(p(r#""a b""#), l("a b"));
        assert_eq!(p(r#""q\"\\\t\n'x""#), l("q\"\\\t\n'x"));
        assert_eq!(p(r#""""#), l(""));
        assert_eq!(p(r#""x86-64" && x86-64"#).to_string(), "(x86-64 && x86-64)");
        assert_eq!(
            err(r#""a\zb""#),
            ParseError::BadEscape {
                column: 3,
                found: 'z'
            }
        );
        assert!(matches!(
            err("\"ab"),
            ParseError::Unexpected { column: 4, .. }
        ));
        assert!(matches!(
            err("\"a\nb\""),
            ParseError::Unexpected { column: 3, .. }
        ));
    }

    #[test]
    fn jenkins_refusals() {
        assert_eq!(err("a -> b -> c"), ParseError::ChainedImplies { column: 8 });
        assert!(matches!(
            err("!!a"),
            ParseError::Unexpected {
                column: 2,
                expected: PRIMARY,
                ..
            }
        ));
        assert_eq!(p("!(!a)"), Expr::Not(Box::new(Expr::Not(Box::new(l("a"))))));
        assert!(matches!(
            err("'a'"),
            ParseError::Unexpected { column: 1, .. }
        ));
        assert!(matches!(
            err("a b"),
            ParseError::Unexpected { column: 3, .. }
        ));
    }

    #[test]
    fn errors_name_the_column_and_what_was_expected() {
        assert_eq!(
            err(""),
            ParseError::Unexpected {
                column: 1,
                expected: OPERAND,
                found: "the end of the expression".into()
            }
        );
        assert_eq!(
            err("a && "),
            ParseError::Unexpected {
                column: 6,
                expected: OPERAND,
                found: "the end of the expression".into()
            }
        );
        assert_eq!(
            err("a & b"),
            ParseError::Unexpected {
                column: 3,
                expected: "`&&`",
                found: "a single `&`".into()
            }
        );
        assert!(matches!(
            err("(a"),
            ParseError::Unexpected {
                column: 3,
                expected: "`)` or an operator",
                ..
            }
        ));
        assert!(matches!(
            err("a)"),
            ParseError::Unexpected { column: 2, .. }
        ));
        assert!(matches!(
            err("a < b"),
            ParseError::Unexpected { column: 3, .. }
        ));
        assert!(matches!(
            err("a > b"),
            ParseError::Unexpected { column: 3, .. }
        ));
        let message = err("macos && && arm64").to_string();
        assert_eq!(
            message,
            "column 10: expected a label, a quoted label, `!` or `(`, found `&&`"
        );
    }

    #[test]
    fn columns_count_characters() {
        assert!(matches!(
            err("é && &"),
            ParseError::Unexpected { column: 6, .. }
        ));
    }

    #[test]
    fn input_is_bounded() {
        let deep_ok = format!("{}a{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert_eq!(p(&deep_ok), l("a"));
        let too_deep = format!(
            "{}a{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(
            err(&too_deep),
            ParseError::TooDeep {
                column: MAX_DEPTH + 1
            }
        );
        let negations = "!(".repeat(MAX_DEPTH + 1) + "a" + &")".repeat(MAX_DEPTH + 1);
        assert!(matches!(err(&negations), ParseError::TooDeep { .. }));
        let long = "a&&".repeat(MAX_LEN / 3 + 1) + "a";
        assert_eq!(err(&long), ParseError::TooLong { len: long.len() });
        // The longest chain that fits (printed too) is one node, not a deep
        // tree.
        let chain = "a && ".repeat((MAX_LEN - 3) / 5) + "a";
        assert!(
            matches!(p(&chain), Expr::And(ops) if ops.as_slice().len() == (MAX_LEN - 3) / 5 + 1)
        );
    }

    #[test]
    fn evaluation() {
        let e = p("macos && arm64 && !(xcode15 || \"old build\")");
        assert!(e.matches(&set(&["macos", "arm64", "xcode16"])));
        assert!(!e.matches(&set(&["macos", "arm64", "xcode15"])));
        assert!(!e.matches(&set(&["macos", "arm64", "old build"])));
        assert!(!e.matches(&set(&["linux", "arm64"])));
        let implies = p("gpu -> cuda12");
        assert!(implies.matches(&set(&["linux"])));
        assert!(implies.matches(&set(&["gpu", "cuda12"])));
        assert!(!implies.matches(&set(&["gpu"])));
        // (a <-> b) <-> c with a = b = c = false: (true) <-> false = false.
        assert!(!p("a <-> b <-> c").matches(&set(&[])));
        assert!(p("a <-> b <-> c").matches(&set(&["c"])));
    }

    #[test]
    fn canonical_form() {
        let cases = [
            ("a", "a"),
            ("a&&b||c", "((a && b) || c)"),
            ("!a", "!a"),
            ("!(a || b)", "!(a || b)"),
            ("!(!a)", "!(!a)"),
            ("((a))", "a"),
            ("a -> b", "(a -> b)"),
            (r#""has space" && "q\"""#, r#"("has space" && "q\"")"#),
            (r#""""#, r#""""#),
            (r#""a'b""#, r#""a'b""#),
        ];
        for (input, canonical) in cases {
            let e = p(input);
            assert_eq!(e.to_string(), canonical, "{input}");
            assert_eq!(p(canonical), e, "{canonical}");
        }
    }

    /// Found by the `label_expr` fuzz target: the canonical form puts every
    /// operator in parentheses and spaces around it, so an expression within
    /// the bounds as written printed to one beyond them, which the store
    /// keeps and then could not read back (the lender refused to start).
    #[test]
    fn every_accepted_expression_prints_to_one_that_parses_back() {
        // Three operators per level of parentheses: 64 levels as written,
        // 256 when printed.
        let nested = "(a&&b||c->".repeat(MAX_DEPTH) + "d" + &")".repeat(MAX_DEPTH);
        // `&&` without spaces: 3 bytes per operand as written, 5 printed.
        let compact = "a&&".repeat((MAX_LEN - 1) / 3) + "a";
        // Right at the bounds, printed too.
        let deepest = "(a&&".repeat(MAX_DEPTH) + "a" + &")".repeat(MAX_DEPTH);
        let longest = "a && ".repeat((MAX_LEN - 3) / 5) + "a";
        for input in [&nested, &compact, &deepest, &longest] {
            if let Ok(e) = Expr::parse(input) {
                let canonical = e.to_string();
                assert_eq!(Expr::parse(&canonical), Ok(e), "{canonical}");
            }
        }
        for refused in [&nested, &compact] {
            let message = err(refused).to_string();
            assert!(message.contains("too complex"), "{message}");
            assert!(message.contains("simplify it"), "{message}");
        }
        assert!(Expr::parse(&deepest).is_ok() && Expr::parse(&longest).is_ok());
    }

    #[test]
    fn labels_lists_every_label() {
        let e = p("a && !(b || c) -> a");
        assert_eq!(e.labels().into_iter().collect::<Vec<_>>(), ["a", "b", "c"]);
    }
}
