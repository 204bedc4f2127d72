//! Jenkins label expressions (`control::labels::Expr`).
//!
//! Input: byte 0 picks raw text, one token per byte (see [`TOKENS`]) or an
//! expression built by the grammar from the bytes (see [`Grammar`]).
//!
//! Checks: no panic and no stack exhaustion on any input; a refusal points
//! at a column inside the input (or just past it); the canonical form of an
//! expression parses back to the same expression, so that what the store
//! keeps can always be read again; printing is idempotent; evaluation never
//! panics.
#![no_main]

use std::collections::BTreeSet;

use control::labels::{Expr, ParseError};
use libfuzzer_sys::fuzz_target;

/// Tokens for the structured mode, written without spaces (the canonical
/// form adds them), so that short inputs reach deep and long expressions.
const TOKENS: [&str; 12] = [
    "a", "b", "&&", "||", "->", "<->", "!", "(", ")", "x86-64", "\"q r\"", " ",
];

/// Writes a well-formed expression following the grammar, each choice
/// taken from the next byte (the smallest choice once they run out), with
/// only the parentheses the bytes ask for and no spaces.
struct Grammar<'a> {
    bytes: std::slice::Iter<'a, u8>,
    out: String,
    depth: usize,
}

impl Grammar<'_> {
    fn choice(&mut self, n: u8) -> u8 {
        self.bytes.next().map_or(0, |b| b % n)
    }

    /// `rule (op rule)*`, as many as the next byte says.
    fn chain(&mut self, op: &str, rule: fn(&mut Self)) {
        rule(self);
        for _ in 0..self.choice(4) {
            self.out.push_str(op);
            rule(self);
        }
    }

    fn iff(&mut self) {
        self.chain("<->", Self::implies);
    }

    fn implies(&mut self) {
        self.or();
        if self.choice(3) == 1 {
            self.out.push_str("->");
            self.or();
        }
    }

    fn or(&mut self) {
        self.chain("||", Self::and);
    }

    fn and(&mut self) {
        self.chain("&&", Self::unary);
    }

    fn unary(&mut self) {
        if self.choice(4) == 1 {
            self.out.push('!');
        }
        // Past the parser's bound, so that the refusal is reached too.
        if self.choice(2) == 1 && self.depth <= control::labels::MAX_DEPTH {
            self.depth += 1;
            self.out.push('(');
            self.iff();
            self.out.push(')');
            self.depth -= 1;
        } else {
            let label = ["a", "x86-64", "\"q r\""][usize::from(self.choice(3))];
            self.out.push_str(label);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Byte 0 picks the mode: text as is, one token per byte, or an
    // expression built by the grammar. The last two find deep and long
    // well-formed expressions far sooner than raw bytes do.
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let generated: String;
    let input = match mode % 3 {
        0 => match std::str::from_utf8(rest) {
            Ok(text) => text,
            Err(_) => return,
        },
        1 => {
            generated = rest
                .iter()
                .map(|&b| TOKENS[usize::from(b) % TOKENS.len()])
                .collect();
            &generated
        }
        _ => {
            let mut grammar = Grammar {
                bytes: rest.iter(),
                out: String::new(),
                depth: 0,
            };
            grammar.iff();
            generated = grammar.out;
            &generated
        }
    };
    let expr = match Expr::parse(input) {
        Ok(expr) => expr,
        Err(err) => {
            if let Some(column) = err.column() {
                assert!(column >= 1 && column <= input.chars().count() + 1, "{err}");
            }
            if !matches!(
                err,
                ParseError::TooLong { .. } | ParseError::TooComplex { .. }
            ) {
                assert!(err.column().is_some());
            }
            return;
        }
    };
    let canonical = expr.to_string();
    match Expr::parse(&canonical) {
        Ok(back) => assert_eq!(back, expr, "{input:?} printed as {canonical:?}"),
        Err(err) => panic!("{input:?} printed as {canonical:?}, which is refused: {err}"),
    }
    // Printing is idempotent.
    assert_eq!(
        canonical,
        Expr::parse(&canonical)
            .map(|e| e.to_string())
            .unwrap_or_default()
    );

    // Evaluate against every subset of the first few labels it mentions.
    let labels: Vec<&str> = expr.labels().into_iter().take(6).collect();
    for mask in 0u32..(1 << labels.len()) {
        let set: BTreeSet<String> = labels
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, l)| (*l).to_owned())
            .collect();
        let _ = expr.matches(&set);
    }
});
