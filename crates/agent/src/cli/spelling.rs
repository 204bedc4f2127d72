//! agent.jar's spellings: the pre-pass that turns `-workDir DIR` into what
//! clap parses, the hint for a misspelt option, and help in agent.jar's
//! spelling.
//!
//! The spellings are derived from the clap definition ([`Args`]) by
//! introspection: every long name and alias it declares, whether it takes
//! a value, and whether it is ours (the [`OURS`] help heading: double-dash
//! only) or agent.jar's (single or double dash). Only what clap does not
//! declare is listed here: the options accepted and dropped, or refused,
//! and which values are secrets.

use std::ffi::OsString;
use std::sync::OnceLock;

use clap::CommandFactory as _;

use super::args::Args;
use super::typed::OURS;
use super::CliError;

/// Whether an option takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takes {
    Flag,
    Value,
}

/// What the pre-pass does with an option.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Declared in [`Args`], rewritten to `--canonical`; `ours` are taken
    /// with two dashes only.
    Declared { canonical: &'static str, ours: bool },
    /// Dropped with its value: a no-op in agent.jar too.
    Ignored,
    /// Refused with [`CliError::Unsupported`].
    Unsupported {
        option: &'static str,
        advice: &'static str,
    },
    /// Refused with this error: a spelling that must not work (a secret on
    /// the command line).
    Refused(fn() -> CliError),
}

#[derive(Debug, Clone, Copy)]
struct Spec {
    name: &'static str,
    takes: Takes,
    kind: Kind,
    /// The value is a secret or password: scrub it from clap's messages.
    sensitive: bool,
}

const INBOUND_ONLY: &str = "it selects another launch mode (stdin/stdout, listening, raw TCP); \
     only inbound agents (-url, -jnlpUrl, -direct) are implemented";

use Takes::{Flag, Value};

/// Spellings [`Args`] does not declare.
const UNDECLARED: &[Spec] = &[
    Spec {
        name: "headless",
        takes: Flag,
        kind: Kind::Ignored,
        sensitive: false,
    },
    Spec {
        name: "ping",
        takes: Flag,
        kind: Kind::Ignored,
        sensitive: false,
    },
    Spec {
        name: "auth",
        takes: Value,
        kind: Kind::Ignored,
        sensitive: true,
    },
    Spec {
        name: "text",
        takes: Flag,
        kind: Kind::Unsupported {
            option: "-text",
            advice: INBOUND_ONLY,
        },
        sensitive: false,
    },
    Spec {
        name: "tcp",
        takes: Value,
        kind: Kind::Unsupported {
            option: "-tcp",
            advice: INBOUND_ONLY,
        },
        sensitive: false,
    },
    Spec {
        name: "connectTo",
        takes: Value,
        kind: Kind::Unsupported {
            option: "-connectTo",
            advice: INBOUND_ONLY,
        },
        sensitive: false,
    },
    // The token would show in `ps` and shell histories.
    Spec {
        name: "lender-token",
        takes: Value,
        kind: Kind::Refused(|| CliError::LenderTokenOnCommandLine),
        sensitive: true,
    },
];

/// Declared options whose values are secrets (reverse proxies' auth tokens
/// travel in `-webSocketHeader`), by any of their spellings.
const SENSITIVE: &[&str] = &[
    "secret",
    "credentials",
    "jnlpCredentials",
    "proxyCredentials",
    "webSocketHeader",
];

/// Every option spelling we recognise, without dashes: [`Args`]' long names
/// and aliases, then [`UNDECLARED`].
fn specs() -> &'static [Spec] {
    static SPECS: OnceLock<Vec<Spec>> = OnceLock::new();
    SPECS.get_or_init(|| {
        // Made once per process; the names live as long as it.
        let command: &'static clap::Command = Box::leak(Box::new(Args::command()));
        let mut specs = Vec::new();
        for arg in command.get_arguments() {
            let Some(canonical) = arg.get_long() else {
                continue; // the legacy positionals
            };
            let takes = if arg.get_action().takes_values() {
                Value
            } else {
                Flag
            };
            let ours = arg.get_help_heading() == Some(OURS);
            let aliases = arg.get_all_aliases().unwrap_or_default();
            for name in std::iter::once(canonical).chain(aliases) {
                specs.push(Spec {
                    name,
                    takes,
                    kind: Kind::Declared { canonical, ours },
                    sensitive: SENSITIVE.contains(&name),
                });
            }
        }
        specs.extend_from_slice(UNDECLARED);
        specs
    })
}

fn spec(name: &str) -> Option<&'static Spec> {
    specs().iter().find(|s| s.name == name)
}

/// The command line as clap should see it.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) args: Vec<OsString>,
    /// Secret-bearing values, to scrub from clap's messages.
    pub(super) sensitive: Vec<String>,
}

/// Rewrites agent.jar spellings to clap's, refuses unknown and unsupported
/// options, drops ignored ones.
pub(super) fn prepass(tokens: impl IntoIterator<Item = OsString>) -> Result<Prepared, CliError> {
    let mut out = Prepared {
        args: Vec::new(),
        sensitive: Vec::new(),
    };
    let mut tokens = tokens.into_iter();
    // The option whose value the next token is, if any.
    let mut value_of: Option<&'static Spec> = None;
    while let Some(token) = tokens.next() {
        if let Some(spec) = value_of.take() {
            // A value is passed on untouched, even if it starts with '-'.
            if spec.sensitive {
                out.sensitive.extend(token.to_str().map(str::to_owned));
            }
            if !matches!(spec.kind, Kind::Ignored) {
                out.args.push(token);
            }
            continue;
        }
        let Some(text) = token.to_str() else {
            // Not UTF-8, so not one of our options: a positional; clap
            // reports it.
            out.args.push(token);
            continue;
        };
        if text == "--" {
            // Everything after is positional (the legacy SECRET NAME).
            out.args.push(token);
            for rest in tokens.by_ref() {
                out.sensitive.extend(rest.to_str().map(str::to_owned));
                out.args.push(rest);
            }
            break;
        }
        if !text.starts_with('-') || text == "-" || text == "-h" {
            if !text.starts_with('-') {
                // A legacy positional: the secret or the name.
                out.sensitive.push(text.to_owned());
            }
            out.args.push(token);
            continue;
        }
        let double = text.starts_with("--");
        let body = if double { &text[2..] } else { &text[1..] };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let known =
            spec(name).filter(|s| double || !matches!(s.kind, Kind::Declared { ours: true, .. }));
        let Some(spec) = known else {
            return Err(CliError::UnknownOption {
                option: text.split('=').next().unwrap_or(text).to_owned(),
                suggestion: suggest(name),
            });
        };
        // clap quotes a flag's unexpected inline value back; scrub it too.
        if spec.sensitive || spec.takes == Takes::Flag {
            out.sensitive.extend(inline.map(str::to_owned));
        }
        let value_follows = spec.takes == Takes::Value && inline.is_none();
        match spec.kind {
            Kind::Unsupported { option, advice } => {
                return Err(CliError::Unsupported { option, advice });
            }
            Kind::Refused(error) => return Err(error()),
            Kind::Ignored => {}
            Kind::Declared { ours: true, .. } => out.args.push(token),
            Kind::Declared { canonical, .. } => {
                let mut rewritten = OsString::from("--");
                rewritten.push(canonical);
                if let Some(v) = inline {
                    rewritten.push("=");
                    rewritten.push(v);
                }
                out.args.push(rewritten);
            }
        }
        if value_follows {
            value_of = Some(spec);
        }
    }
    Ok(out)
}

/// The closest spelling to an unknown option, as the user should type it.
fn suggest(name: &str) -> Option<String> {
    let wanted = name.to_ascii_lowercase();
    specs()
        .iter()
        .filter(|s| !matches!(s.kind, Kind::Unsupported { .. } | Kind::Refused(_)))
        .map(|s| {
            (
                strsim::levenshtein(&wanted, &s.name.to_ascii_lowercase()),
                s,
            )
        })
        .filter(|(distance, s)| *distance <= 2.max(s.name.len() / 4))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, s)| match s.kind {
            Kind::Declared { ours: true, .. } => format!("--{}", s.name),
            _ => format!("-{}", s.name),
        })
}

/// Replaces every secret-bearing value in clap's message with `***`.
pub(super) fn redact(message: &str, sensitive: &[String]) -> String {
    let mut message = message.to_owned();
    // Longest first, so a password inside a `user:password` goes with it.
    let mut values: Vec<&str> = sensitive
        .iter()
        .flat_map(|v| [v.as_str(), v.split_once(':').map_or("", |(_, p)| p)])
        .filter(|v| !v.is_empty())
        .collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for value in values {
        message = message.replace(value, "***");
    }
    message
}

/// clap writes `--url`; agent.jar users know `-url`. Keeps the column width.
pub(super) fn agent_jar_spelling(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        let rest = &line[indent..];
        let agent_jar = rest.strip_prefix("--").is_some_and(|after| {
            specs().iter().any(|s| {
                matches!(s.kind, Kind::Declared { canonical, ours: false } if canonical == s.name)
                    && after
                        .strip_prefix(s.name)
                        .is_some_and(|t| t.is_empty() || t.starts_with([' ', '=', '<']))
            })
        });
        if agent_jar {
            out.push_str(&line[..indent]);
            out.push(' ');
            out.push_str(&rest[1..]);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out
}
