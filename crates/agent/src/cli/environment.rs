//! The image's environment variables, through the options they stand for.
//!
//! Each option's declaration in `args` names its variable (`env = ...`),
//! and a variable's value goes through the option's own value parser. clap
//! would read the variables itself, but from this process's environment,
//! and [`parse`](super::parse) takes a lookup (tests pass their own). So
//! the command line is parsed twice:
//!
//! 1. with the variables left out and every value taken raw, to learn which
//!    options the command line gives;
//! 2. with `--option=VALUE` added for each absent option whose variable is
//!    set, its declaration then naming that variable, so that a refusal
//!    names the variable (see [`typed`](super::typed)) and a secret from
//!    `JENKINS_SECRET` is taken literally, never as `@FILE`.
//!
//! A variable is trimmed and counts as unset when empty (the image's script
//! word-splits them); a flag's variable sets it for exactly `true`.

use std::collections::HashMap;
use std::ffi::OsString;

use clap::builder::OsStringValueParser;
use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory as _, FromArgMatches as _};

use super::args::Args;
use super::typed::intern;
use super::values::SecretArg;

/// The image's environment variables, trimmed (the script word-splits them),
/// empty meaning unset.
pub(super) struct Env<'a>(pub(super) &'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    pub(super) fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }
}

/// The legacy positional arguments' id in [`Args`].
const LEGACY: &str = "legacy";

/// An older variable read when the declared one is unset.
const FALLBACKS: &[(&str, &str)] = &[("JENKINS_AGENT_NAME", "JENKINS_NAME")];

/// Options whose empty value counts as not given (agent.jar's own test is
/// `secret == null || secret.isEmpty()`), so that the variable applies.
const EMPTY_IS_ABSENT: &[&str] = &["secret", "name"];

/// Options the legacy positional form `SECRET NAME` stands for: with it,
/// their variables do not apply.
const POSITIONAL: &[&str] = &["secret", "name"];

/// The parsed options and, for each option that a variable gave, that
/// variable's name.
#[derive(Debug)]
pub(super) struct Parsed {
    pub(super) args: Args,
    pub(super) from_env: HashMap<&'static str, &'static str>,
}

/// Parses `argv` (argv\[0\] first, after the spelling pre-pass) with the
/// variables in `env`.
pub(super) fn parse(argv: Vec<OsString>, env: &Env<'_>) -> Result<Parsed, clap::Error> {
    // 1. Which options the command line gives, values unchecked.
    let raw = Args::command()
        .mut_args(|arg| {
            let arg = arg.env(None);
            if arg.get_action().takes_values() {
                arg.value_parser(OsStringValueParser::new())
            } else {
                arg
            }
        })
        .try_get_matches_from(&argv)?;
    let given = |id: &str| raw.value_source(id) == Some(ValueSource::CommandLine);
    let given_empty = |id: &str| {
        EMPTY_IS_ABSENT.contains(&id)
            && raw
                .get_raw(id)
                .and_then(|mut values| values.next_back())
                .is_some_and(|value| value.is_empty())
    };
    let positional = raw.get_raw(LEGACY).is_some_and(|values| values.len() == 2);

    // 2. The variables of the options not given, through their parsers.
    let mut from_env = HashMap::new();
    let mut added = Vec::new();
    let mut late = Vec::new();
    let declared = Args::command();
    for arg in declared.get_arguments() {
        let (Some(var), Some(long)) = (arg.get_env().and_then(|v| v.to_str()), arg.get_long())
        else {
            continue;
        };
        let id = arg.get_id().as_str();
        let empty = given_empty(id);
        if (given(id) && !empty) || (positional && POSITIONAL.contains(&id)) {
            continue;
        }
        let fallback = FALLBACKS.iter().find(|(declared, _)| *declared == var);
        let Some((var, value)) = env
            .get(var)
            .map(|value| (var, value))
            .or_else(|| fallback.and_then(|(_, older)| env.get(older).map(|v| (*older, v))))
        else {
            continue;
        };
        if empty {
            // The command line's empty value would win over an added
            // option; a variable's value for these is taken as it is.
            late.push((id, value));
        } else if matches!(arg.get_action(), ArgAction::SetTrue) {
            if value != "true" {
                continue;
            }
            added.push(OsString::from(format!("--{long}")));
        } else {
            added.push(OsString::from(format!("--{long}={value}")));
        }
        from_env.insert(intern(id.to_owned()), intern(var.to_owned()));
    }
    // Before the command line, whose `--` would make them positional.
    let mut argv = argv;
    argv.splice(1.min(argv.len())..1.min(argv.len()), added);
    let matches = Args::command()
        .mut_args(|arg| match from_env.get(arg.get_id().as_str()) {
            Some(&var) => arg.env(var),
            None => arg.env(None),
        })
        .try_get_matches_from(argv)?;
    let mut args = Args::from_arg_matches(&matches)?;
    for (id, value) in late {
        match id {
            "secret" => args.secret = Some(SecretArg::literal(value)),
            _ => args.name = Some(value),
        }
    }
    Ok(Parsed { args, from_env })
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::super::{parse, CliError, Command};
    use crate::settings::Settings;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Settings, CliError> {
        let argv = std::iter::once("jnlp-agent")
            .chain(args.iter().copied())
            .map(OsString::from);
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        match parse(argv, &lookup)? {
            Command::Run(settings) => Ok(settings),
            other => panic!("expected Run, got {other:?}"),
        }
    }

    /// The added options go before the command line's `--`: a variable
    /// never turns into a positional argument, and the positional form
    /// still beats the secret's variable.
    #[test]
    fn a_variable_never_becomes_positional() {
        let s = run(
            &["-url", "http://c/", "--", "S", "N"],
            &[("JENKINS_TUNNEL", ":5000"), ("JENKINS_SECRET", "from-env")],
        )
        .expect("accepted");
        assert_eq!(s.secret.as_ref().map(|s| s.expose()), Some("S"));
        assert_eq!(s.name.as_deref(), Some("N"));
        assert!(s.tunnel.is_some());
    }

    /// `-secret ""` counts as absent, so the variable applies, literally.
    #[test]
    fn an_empty_option_gives_way_to_its_variable() {
        let s = run(
            &["-url", "http://c/", "-secret", "", "-name", ""],
            &[("JENKINS_SECRET", "@not-a-file"), ("JENKINS_NAME", "older")],
        )
        .expect("accepted");
        assert_eq!(s.secret.as_ref().map(|s| s.expose()), Some("@not-a-file"));
        assert_eq!(s.name.as_deref(), Some("older"));
    }

    /// A conflict names the variable that was actually read, the older
    /// name's too.
    #[test]
    fn a_conflict_names_the_variable_read() {
        let err = run(
            &["-jnlpUrl", "http://c/computer/n/jenkins-agent.jnlp"],
            &[("JENKINS_NAME", "older")],
        )
        .expect_err("refused");
        assert!(
            matches!(
                err,
                CliError::Conflict {
                    option: "-jnlpUrl",
                    other: "JENKINS_NAME"
                }
            ),
            "{err:?}"
        );
    }
}
