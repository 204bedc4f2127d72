//! Our value parsers as clap value parsers: each option's declaration in
//! `args` names the function that checks and converts its value, and a
//! refusal reaches the user as that function's [`CliError`], not as clap's
//! message (which would quote the value, and values may be secrets).
//!
//! [`Checked`] calls the function with the option's name as the user knows
//! it (`-url` for agent.jar's options, `--lender` for ours); a refusal
//! travels inside clap's error as a [`Carried`] source, which
//! [`take_refusal`] takes back out.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};

use clap::builder::TypedValueParser;
use clap::{Arg, Command};

use super::CliError;

/// The help heading of our own options, which are double-dash only.
pub(super) const OURS: &str = "jnlp-agent's own options (double-dash only)";

/// A value parser from one of `values`' functions: `parse(option, text)`.
pub(super) struct Checked<T> {
    parse: fn(&'static str, &str) -> Result<T, CliError>,
    value: PhantomData<fn() -> T>,
}

/// `Checked` for `parse`, for use in `#[arg(value_parser = ...)]`.
pub(super) fn checked<T>(parse: fn(&'static str, &str) -> Result<T, CliError>) -> Checked<T> {
    Checked {
        parse,
        value: PhantomData,
    }
}

impl<T> fmt::Debug for Checked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Checked")
    }
}

// Not derived: `T` itself need not be `Clone` for the parser to be.
impl<T> Clone for Checked<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Checked<T> {}

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Checked<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &Command, arg: Option<&Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let option = option_name(arg);
        let result = match value.to_str() {
            Some(text) => (self.parse)(option, text),
            None => Err(CliError::NotUtf8 { option }),
        };
        result.map_err(|refusal| carry(cmd, arg, value, refusal))
    }
}

/// The name an error gives the option: the variable when the value came
/// from one (the command `environment` parses with declares a variable
/// only then), else agent.jar's single-dash spelling for its options and
/// the double-dash one for ours.
fn option_name(arg: Option<&Arg>) -> &'static str {
    let Some(arg) = arg else {
        return "the value";
    };
    if let Some(var) = arg.get_env().and_then(OsStr::to_str) {
        return intern(var.to_owned());
    }
    let long = arg.get_long().unwrap_or(arg.get_id().as_str());
    let dashes = if arg.get_help_heading() == Some(OURS) {
        "--"
    } else {
        "-"
    };
    intern(format!("{dashes}{long}"))
}

/// One `&'static str` per distinct option name (there are a few dozen), for
/// [`CliError`]'s fields, which name options with literals elsewhere.
pub(super) fn intern(name: String) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(&known) = names.get(name.as_str()) {
        return known;
    }
    let name: &'static str = Box::leak(name.into_boxed_str());
    names.insert(name);
    name
}

/// A refusal on its way through clap: taken once by [`take_refusal`].
#[derive(Debug)]
struct Carried(Mutex<Option<CliError>>);

impl fmt::Display for Carried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.lock().ok().as_deref() {
            Some(Some(refusal)) => refusal.fmt(f),
            _ => f.write_str("refused"),
        }
    }
}

impl std::error::Error for Carried {}

/// clap's value-validation error for `arg`, with `refusal` as its source.
fn carry(cmd: &Command, arg: Option<&Arg>, value: &OsStr, refusal: CliError) -> clap::Error {
    // clap makes an error with a source only from a parser closure's error.
    let refusal = Arc::new(Mutex::new(Some(refusal)));
    let raise = move |_: &str| -> Result<(), Carried> {
        let taken = refusal.lock().map(|mut r| r.take()).unwrap_or(None);
        Err(Carried(Mutex::new(taken)))
    };
    match raise.parse_ref(cmd, arg, value) {
        Err(err) => err,
        Ok(()) => clap::Error::new(clap::error::ErrorKind::ValueValidation),
    }
}

/// The [`CliError`] a [`Checked`] parser refused with, if that is what
/// `err` is.
pub(super) fn take_refusal(err: &clap::Error) -> Option<CliError> {
    let carried = std::error::Error::source(err)?.downcast_ref::<Carried>()?;
    carried.0.lock().ok()?.take()
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt as _;

    use clap::Parser as _;

    use super::super::args::Args;
    use super::*;

    fn refusal(args: Vec<OsString>) -> CliError {
        let argv = std::iter::once(OsString::from("jnlp-agent")).chain(args);
        let err = Args::try_parse_from(argv).expect_err("refused by a value parser");
        take_refusal(&err).expect("the refusal is ours, not clap's")
    }

    /// The declaration alone checks the value: clap's parse refuses it with
    /// our error, naming the option the way the user spells it.
    #[test]
    fn the_declaration_checks_the_value() {
        let err = refusal(vec!["--quiet-period".into(), "soon".into()]);
        assert!(
            matches!(
                err,
                CliError::BadDuration {
                    option: "--quiet-period",
                    ..
                }
            ),
            "{err:?}"
        );
        let err = refusal(vec!["--noReconnectAfter".into(), "-5s".into()]);
        assert!(
            matches!(
                err,
                CliError::BadDuration {
                    option: "-noReconnectAfter",
                    ..
                }
            ),
            "{err:?}"
        );
        // Taken once: a second look finds nothing.
        let argv = ["jnlp-agent", "--log-format", "xml"];
        let err = Args::try_parse_from(argv).expect_err("refused");
        assert!(matches!(take_refusal(&err), Some(CliError::BadLogFormat)));
        assert!(take_refusal(&err).is_none());
    }

    /// A value that is not UTF-8 is refused (by clap, before our parser)
    /// without quoting it.
    #[test]
    fn a_value_that_is_not_utf8_is_refused_unquoted() {
        let bad = OsString::from_vec(b"user:pa\xffss-s3cret".to_vec());
        let argv = [
            OsString::from("jnlp-agent"),
            "--proxyCredentials".into(),
            bad,
        ];
        let err = Args::try_parse_from(argv).expect_err("refused");
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidUtf8);
        assert!(!err.render().to_string().contains("s3cret"), "{err}");
    }
}
