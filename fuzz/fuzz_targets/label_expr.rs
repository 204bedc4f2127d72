//! Jenkins label expressions (`lender::labels::Expr`).
//!
//! Input: byte 0 picks raw text or one token per byte (see [`TOKENS`]).
//!
//! Checks: no panic and no stack exhaustion on any input; a refusal points
//! at a column inside the input (or just past it); the canonical form of an
//! expression parses back to the same expression, so that what the store
//! keeps can always be read again; printing is idempotent; evaluation never
//! panics.
#![no_main]

use std::collections::BTreeSet;

use lender::labels::{Expr, ParseError};
use libfuzzer_sys::fuzz_target;

/// Tokens for the structured mode, written without spaces (the canonical
/// form adds them), so that short inputs reach deep and long expressions.
const TOKENS: [&str; 12] = [
    "a", "b", "&&", "||", "->", "<->", "!", "(", ")", "x86-64", "\"q r\"", " ",
];

fuzz_target!(|data: &[u8]| {
    // Byte 0 picks the mode: text as is, or one token per byte, which finds
    // well-formed deep and long expressions far sooner than raw bytes.
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let tokens: String;
    let input = if mode % 2 == 0 {
        match std::str::from_utf8(rest) {
            Ok(text) => text,
            Err(_) => return,
        }
    } else {
        tokens = rest
            .iter()
            .map(|&b| TOKENS[usize::from(b) % TOKENS.len()])
            .collect();
        &tokens
    };
    let expr = match Expr::parse(input) {
        Ok(expr) => expr,
        Err(err) => {
            if let Some(column) = err.column() {
                assert!(column >= 1 && column <= input.chars().count() + 1, "{err}");
            }
            if !matches!(err, ParseError::TooLong { .. }) {
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
