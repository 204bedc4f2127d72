//! Jenkins labels: what a label is, how a label string splits into labels,
//! and label expressions ([`Expr`]). The agent (`--labels`, the labels its
//! link announces) and the lender (the hello it accepts, the requirements
//! it matches) use these rules and no others.
//!
//! # Labels
//!
//! Jenkins splits a node's label string on whitespace (`Label.parse`), so
//! a label holds no whitespace. An expression names a label bare when the
//! lexer reads it as one atom, and quoted (`"a&b"`, `LabelAtom.escape`)
//! otherwise. A label announced here must be writable bare: a label is
//! non-empty, at most [`MAX_LABEL`] bytes, and made of [`is_label_char`]s,
//! the expression lexer's atom characters less control characters (which
//! no one can type in a job's label field). So every announced label can be
//! matched by writing its name, as it was given, in a requirement.
//!
//! # Layout
//!
//! - this module: [`is_label_char`], [`is_label`], [`check_label`],
//!   [`split`];
//! - [`expr`]: the expression grammar, parser, evaluator and canonical form
//!   (re-exported here).

pub mod expr;

pub use expr::{Expr, Operands, ParseError, MAX_DEPTH, MAX_LEN};

/// The longest label, in bytes.
pub const MAX_LABEL: usize = 256;

/// Whether `c` may appear in a label: an atom character of the expression
/// grammar (no whitespace, no `& | ! < > ( ) " '`) that is not a control
/// character.
pub fn is_label_char(c: char) -> bool {
    expr::is_atom_char(c) && !c.is_control()
}

/// Whether `label` is a label: non-empty, at most [`MAX_LABEL`] bytes of
/// [`is_label_char`]s.
pub fn is_label(label: &str) -> bool {
    check_label(label).is_ok()
}

/// Why a word is not a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// The empty word.
    #[error("a label cannot be empty")]
    Empty,
    /// A character no label may hold.
    #[error(
        "{character:?} cannot appear in a label (labels are label-expression atoms: \
         no whitespace, control characters or any of & | ! < > ( ) \" ')"
    )]
    BadCharacter {
        /// The first such character.
        character: char,
    },
    /// Longer than [`MAX_LABEL`] bytes.
    #[error("a label is at most {MAX_LABEL} bytes")]
    TooLong,
}

/// Checks one label against the rules in the module docs.
pub fn check_label(label: &str) -> Result<(), LabelError> {
    if label.is_empty() {
        return Err(LabelError::Empty);
    }
    if let Some(character) = label.chars().find(|&c| !is_label_char(c)) {
        return Err(LabelError::BadCharacter { character });
    }
    if label.len() > MAX_LABEL {
        return Err(LabelError::TooLong);
    }
    Ok(())
}

/// The words of a label string, split on whitespace as Jenkins'
/// `Label.parse` does (each word is then checked with [`check_label`]).
pub fn split(labels: &str) -> impl Iterator<Item = &str> {
    labels.split_whitespace()
}

#[cfg(test)]
mod tests;
