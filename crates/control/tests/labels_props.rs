//! Property tests for label expressions, against a reference written
//! differently: expressions are generated as a binary tree of their own,
//! printed with the *fewest* parentheses the precedence rules allow (the
//! canonical form prints the most), and evaluated as 64-bit truth tables
//! over six labels (one bit per label set) instead of one label set at a
//! time.

use std::collections::BTreeSet;

use control::labels::{Expr, Operands};
use proptest::prelude::*;

/// Labels chosen to hit the lexer's corners: a dash inside and at the end,
/// a lone dash, whitespace, quotes and backslashes, the empty label.
const VOCAB: [&str; 6] = ["a", "x86-64", "b-", "-", "has space", "q\"\\'uote"];

#[derive(Debug, Clone)]
enum Ref {
    Atom(usize),
    Paren(Box<Ref>),
    Not(Box<Ref>),
    And(Box<Ref>, Box<Ref>),
    Or(Box<Ref>, Box<Ref>),
    Implies(Box<Ref>, Box<Ref>),
    Iff(Box<Ref>, Box<Ref>),
}

/// How a reference expression is written out.
#[derive(Debug, Clone, Copy)]
struct Style {
    /// Between tokens: "", " ", "\t " or "\n".
    gap: &'static str,
    /// Quote every label, not only those that need it.
    quote_all: bool,
}

fn reference() -> impl Strategy<Value = Ref> {
    let leaf = (0..VOCAB.len()).prop_map(Ref::Atom);
    leaf.prop_recursive(6, 48, 2, |inner| {
        let pair = || (inner.clone(), inner.clone());
        prop_oneof![
            inner.clone().prop_map(|e| Ref::Paren(Box::new(e))),
            inner.clone().prop_map(|e| Ref::Not(Box::new(e))),
            pair().prop_map(|(a, b)| Ref::And(Box::new(a), Box::new(b))),
            pair().prop_map(|(a, b)| Ref::Or(Box::new(a), Box::new(b))),
            pair().prop_map(|(a, b)| Ref::Implies(Box::new(a), Box::new(b))),
            pair().prop_map(|(a, b)| Ref::Iff(Box::new(a), Box::new(b))),
        ]
    })
}

fn style() -> impl Strategy<Value = Style> {
    (
        prop::sample::select(vec!["", " ", "\t ", "\n"]),
        any::<bool>(),
    )
        .prop_map(|(gap, quote_all)| Style { gap, quote_all })
}

/// Binding strength: higher binds tighter.
fn prec(e: &Ref) -> u8 {
    match e {
        Ref::Iff(..) => 1,
        Ref::Implies(..) => 2,
        Ref::Or(..) => 3,
        Ref::And(..) => 4,
        Ref::Not(_) | Ref::Atom(_) | Ref::Paren(_) => 5,
    }
}

fn write_label(label: &str, style: Style, out: &mut String) {
    let needs_quotes = label.is_empty()
        || label
            .chars()
            .any(|c| c.is_whitespace() || "&|!<>()\"'".contains(c));
    if needs_quotes || style.quote_all {
        out.push('"');
        for c in label.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(label);
    }
}

fn write_operand(e: &Ref, parens: bool, style: Style, out: &mut String) {
    if parens {
        out.push('(');
        write_ref(e, style, out);
        out.push(')');
    } else {
        write_ref(e, style, out);
    }
}

fn write_binary(
    a: &Ref,
    b: &Ref,
    op: &str,
    level: u8,
    chains: bool,
    style: Style,
    out: &mut String,
) {
    // Left-associative chains (`&&`, `||`, `<->`) take a left operand of
    // the same level bare; `->` does not chain at all.
    let left_parens = if chains {
        prec(a) < level
    } else {
        prec(a) <= level
    };
    write_operand(a, left_parens, style, out);
    out.push_str(style.gap);
    out.push_str(op);
    out.push_str(style.gap);
    write_operand(b, prec(b) <= level, style, out);
}

fn write_ref(e: &Ref, style: Style, out: &mut String) {
    match e {
        Ref::Atom(i) => write_label(VOCAB[*i], style, out),
        Ref::Paren(inner) => write_operand(inner, true, style, out),
        Ref::Not(inner) => {
            out.push('!');
            out.push_str(style.gap);
            // `!` applies to a label or a parenthesised expression only.
            let bare = matches!(**inner, Ref::Atom(_) | Ref::Paren(_));
            write_operand(inner, !bare, style, out);
        }
        Ref::And(a, b) => write_binary(a, b, "&&", 4, true, style, out),
        Ref::Or(a, b) => write_binary(a, b, "||", 3, true, style, out),
        Ref::Implies(a, b) => write_binary(a, b, "->", 2, false, style, out),
        Ref::Iff(a, b) => write_binary(a, b, "<->", 1, true, style, out),
    }
}

/// Bit `s` of the result: the expression's value for label set `s` (label
/// `j` present when bit `j` of `s` is set).
fn truth_table(e: &Ref) -> u64 {
    match e {
        Ref::Atom(j) => (0..64u64)
            .filter(|s| s >> j & 1 == 1)
            .fold(0, |m, s| m | 1 << s),
        Ref::Paren(inner) => truth_table(inner),
        Ref::Not(inner) => !truth_table(inner),
        Ref::And(a, b) => truth_table(a) & truth_table(b),
        Ref::Or(a, b) => truth_table(a) | truth_table(b),
        Ref::Implies(a, b) => !truth_table(a) | truth_table(b),
        Ref::Iff(a, b) => !(truth_table(a) ^ truth_table(b)),
    }
}

fn label_set(s: u64) -> BTreeSet<String> {
    (0..VOCAB.len())
        .filter(|j| s >> j & 1 == 1)
        .map(|j| VOCAB[j].to_owned())
        .collect()
}

/// Expressions built directly, with arbitrary labels (control characters,
/// line breaks, quotes, operators, the empty string).
fn expr() -> impl Strategy<Value = Expr> {
    let label = prop::collection::vec(any::<char>(), 0..6).prop_map(String::from_iter);
    let leaf = label.prop_map(Expr::Label);
    leaf.prop_recursive(5, 40, 4, |inner| {
        let operands = (
            inner.clone(),
            inner.clone(),
            prop::collection::vec(inner.clone(), 0..3),
        )
            .prop_map(|(a, b, rest)| {
                let mut ops = Operands::new(a, b);
                rest.into_iter().for_each(|e| ops.push(e));
                ops
            });
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            operands.clone().prop_map(Expr::And),
            operands.clone().prop_map(Expr::Or),
            operands.prop_map(Expr::Iff),
            (inner.clone(), inner).prop_map(|(a, b)| Expr::Implies(Box::new(a), Box::new(b))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The parser's precedence, associativity and evaluation agree with the
    /// reference on all 64 label sets.
    #[test]
    fn evaluation_agrees_with_truth_tables(reference in reference(), style in style()) {
        let mut text = String::new();
        write_ref(&reference, style, &mut text);
        let parsed = Expr::parse(&text);
        prop_assert!(parsed.is_ok(), "{text:?}: {parsed:?}");
        let parsed = parsed.unwrap_or_else(|_| Expr::Label(String::new()));
        let table = truth_table(&reference);
        for s in 0..64u64 {
            let labels = label_set(s);
            prop_assert_eq!(parsed.matches(&labels), table >> s & 1 == 1, "{:?} on {:?}", text, labels);
        }
        // The canonical form means the same.
        let canonical = Expr::parse(&parsed.to_string());
        prop_assert_eq!(canonical.as_ref(), Ok(&parsed));
    }

    /// Print then parse gives the same tree, whatever the labels hold.
    #[test]
    fn canonical_form_round_trips(e in expr()) {
        let text = e.to_string();
        prop_assert_eq!(Expr::parse(&text), Ok(e), "{:?}", text);
    }

    /// Arbitrary text never panics the parser.
    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        let _ = Expr::parse(&text);
    }

    /// Text made of the grammar's own characters: anything accepted prints
    /// to a canonical form that parses back to the same tree.
    #[test]
    fn operator_soup_is_parsed_or_refused_cleanly(text in "[ab()!&|<>\\-\"\\\\' \t]{0,48}") {
        if let Ok(e) = Expr::parse(&text) {
            prop_assert_eq!(Expr::parse(&e.to_string()), Ok(e), "{:?}", text);
        }
    }
}
