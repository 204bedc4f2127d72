#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

/// Words on which the agent's `--labels`, the agent link's announced
/// labels and the lender (its hello check and the on-demand node it
/// creates) used to disagree, with what each said before (`true` =
/// accepted) and what the one rule says now.
#[test]
fn where_the_three_rules_disagreed() {
    /// Accepted before by the agent's `--labels`, its link, the lender's
    /// hello check.
    type Before = (bool, bool, bool);
    let bad = |character| LabelError::BadCharacter { character };
    let cases: [(&str, Before, Result<(), LabelError>); 8] = [
        // Jenkins reads `a&b` in an expression as `a & b`, a syntax error:
        // the label could be matched only when quoted.
        ("a&b", (false, false, true), Err(bad('&'))),
        ("it's", (false, false, true), Err(bad('\''))),
        ("x|y", (false, false, true), Err(bad('|'))),
        ("(a)", (false, false, true), Err(bad('('))),
        ("bell\u{7}", (false, false, true), Err(bad('\u{7}'))),
        // A comma is an atom character to Jenkins, so one label; the CLI
        // still takes a comma as a separator before the rule is applied.
        ("a,b", (true, true, true), Ok(())),
        ("x86-64", (true, true, true), Ok(())),
        ("", (false, false, false), Err(LabelError::Empty)),
    ];
    for (word, _before, now) in cases {
        assert_eq!(check_label(word), now, "{word:?}");
        assert_eq!(is_label(word), now.is_ok(), "{word:?}");
    }
    assert_eq!(check_label(&"x".repeat(MAX_LABEL)), Ok(()));
    assert_eq!(
        check_label(&"x".repeat(MAX_LABEL + 1)),
        Err(LabelError::TooLong)
    );
}

/// Jenkins' `Label.parse` splits on whitespace only.
#[test]
fn label_strings_split_on_whitespace() {
    let words: Vec<&str> = split(" linux\tx86-64\n a,b  ").collect();
    assert_eq!(words, ["linux", "x86-64", "a,b"]);
    assert_eq!(split("   ").count(), 0);
}

#[test]
fn messages_name_the_cause() {
    let message = check_label("a&b").unwrap_err().to_string();
    assert!(
        message.starts_with("'&' cannot appear in a label"),
        "{message}"
    );
}

proptest! {
    /// A label is exactly what a requirement can name bare: every label
    /// parses, as an expression, to itself.
    #[test]
    fn every_label_is_a_bare_atom(word in "[a-z0-9&|!<>()\"' ,:.\\-\u{7}é]{1,12}") {
        if is_label(&word) {
            prop_assert_eq!(Expr::parse(&word), Ok(Expr::Label(word.clone())));
        }
    }
}
