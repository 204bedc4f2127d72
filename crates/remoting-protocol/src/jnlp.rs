//! JNLP files: `computer/NAME/jenkins-agent.jnlp` (older: `slave-agent.jnlp`),
//! plain or in the `?encrypt=true` form (PROTOCOL.md section 1).
//!
//! The only meaningful part of the file is the ordered list of
//! `<application-desc><argument>` texts: the secret, the node name, then agent
//! options. [`parse_jnlp`] extracts them, [`JnlpArguments::agent_options`]
//! interprets the options, and [`decrypt_jnlp`] / [`parse_encrypted_jnlp`]
//! handle the AES/CFB8 form.
//!
//! The parser is deliberately strict about what could make a hostile file
//! expensive or surprising: it refuses any DOCTYPE and any entity reference
//! except the five predefined ones and numeric character references (nothing
//! is ever expanded from a DTD), and it bounds the file size and argument
//! count. None of its errors ever contain the secret.

use std::fmt;
use std::path::PathBuf;

use crate::quote::quote;
use aes::cipher::{AsyncStreamCipher, KeyIvInit};
use quick_xml::events::{BytesRef, Event};
use quick_xml::Reader;

/// Largest JNLP file accepted. Real ones are well under 2 KiB.
pub const MAX_JNLP_BYTES: usize = 1 << 20;

/// Most `<argument>` elements accepted. Real files have about a dozen.
pub const MAX_ARGUMENTS: usize = 256;

/// Deepest element nesting accepted. Real files nest 3 levels.
const MAX_DEPTH: usize = 64;

/// Length of the IV that starts an encrypted JNLP body.
pub const IV_LEN: usize = 16;

/// Number of leading hex characters of the secret that form the AES-128 key.
const KEY_HEX_CHARS: usize = 32;

/// Entity and element names from the file are echoed in errors only up to
/// this many characters.
const MAX_ECHOED_CHARS: usize = 64;

/// Why a JNLP file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JnlpError {
    /// The file is larger than [`MAX_JNLP_BYTES`].
    #[error(
        "the JNLP file is {len} bytes, more than the {max} accepted: is this really a JNLP file?"
    )]
    TooLarge {
        /// Size received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The file is not UTF-8 (Jenkins always serves UTF-8).
    #[error("the JNLP file is not UTF-8 text (invalid byte at offset {valid_up_to})")]
    NotUtf8 {
        /// Offset of the first invalid byte.
        valid_up_to: usize,
    },
    /// The file has a `<!DOCTYPE>`, which Jenkins never sends.
    #[error(
        "the JNLP file has a DOCTYPE, which is refused to prevent entity expansion attacks \
         (Jenkins never sends one)"
    )]
    Doctype,
    /// The file references an entity other than the five predefined ones.
    #[error(
        "the JNLP file references the entity &{name}; which is refused to prevent entity \
         expansion attacks (only &lt; &gt; &amp; &apos; &quot; and &#...; are allowed)"
    )]
    EntityRefused {
        /// The entity's name (shortened if long).
        name: String,
    },
    /// The file is not well-formed XML.
    #[error("the JNLP file is not well-formed XML (at byte {position}): {reason}")]
    Malformed {
        /// Byte offset where the problem was noticed.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// Well-formed XML, but without `<application-desc>`.
    #[error(
        "the file has no <application-desc> element: is it really a JNLP file \
         (computer/NAME/jenkins-agent.jnlp)? A login page or proxy may have answered instead"
    )]
    NoApplicationDesc,
    /// More than [`MAX_ARGUMENTS`] `<argument>` elements.
    #[error("the JNLP file has more than {max} <argument> elements")]
    TooManyArguments {
        /// The limit.
        max: usize,
    },
    /// Fewer than the two mandatory arguments (secret, node name).
    #[error(
        "the JNLP file has {found} <argument> element(s); at least 2 (secret and node name) \
         are expected"
    )]
    TooFewArguments {
        /// How many there were.
        found: usize,
    },
    /// An option that takes a value is the last argument.
    #[error("the JNLP option {option} needs a value but is the last argument")]
    MissingOptionValue {
        /// The option, e.g. `-workDir`.
        option: String,
    },
    /// The secret has fewer than 32 characters, so no AES key can be derived.
    #[error(
        "the secret is too short to decrypt the JNLP file: its first 32 characters \
         must be hexadecimal; check the secret"
    )]
    SecretTooShort,
    /// The secret's first 32 characters are not hexadecimal.
    #[error(
        "the secret cannot decrypt the JNLP file: its first 32 characters must be \
         hexadecimal; check the secret"
    )]
    SecretNotHex,
    /// The encrypted body is shorter than its IV.
    #[error(
        "the encrypted JNLP file is {len} bytes, too short to hold its 16-byte IV: \
         the download was probably cut short"
    )]
    BodyTooShort {
        /// Size received.
        len: usize,
    },
    /// Decryption produced something that is not a JNLP file.
    #[error("could not decrypt the JNLP file: wrong secret?")]
    WrongSecret(#[source] Box<JnlpError>),
}

/// The arguments a JNLP file carries.
///
/// `Debug` prints the secret as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct JnlpArguments {
    /// The node's secret (first argument).
    pub secret: String,
    /// The node's name (second argument).
    pub name: String,
    /// Everything after the name, in order.
    pub options: Vec<String>,
}

impl fmt::Debug for JnlpArguments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JnlpArguments")
            .field("secret", &"***")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish()
    }
}

/// The agent options of a JNLP file, interpreted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentOptions {
    /// `-webSocket`: connect over `wsagents/` instead of the TCP port.
    pub web_socket: bool,
    /// `-tunnel HOST:PORT` (either side may be empty), as given.
    pub tunnel: Option<String>,
    /// `-workDir DIR`.
    pub work_dir: Option<PathBuf>,
    /// `-internalDir NAME` (relative to the work dir).
    pub internal_dir: Option<String>,
    /// `-failIfWorkDirIsMissing`.
    pub fail_if_work_dir_is_missing: bool,
    /// `-url URL`, in order (the option may repeat).
    pub urls: Vec<String>,
    /// Arguments not recognised, verbatim and in order. Since the values of
    /// unknown options cannot be told apart from flags, they are kept too.
    pub unknown: Vec<String>,
}

impl JnlpArguments {
    /// Splits an argument list into secret, name and options.
    pub fn from_arguments(arguments: Vec<String>) -> Result<Self, JnlpError> {
        let found = arguments.len();
        let mut it = arguments.into_iter();
        match (it.next(), it.next()) {
            (Some(secret), Some(name)) => Ok(Self {
                secret,
                name,
                options: it.collect(),
            }),
            _ => Err(JnlpError::TooFewArguments { found }),
        }
    }

    /// Interprets [`options`](Self::options). Single-valued options given
    /// twice keep the last value, as agent.jar's parser does; unknown ones are
    /// kept in [`AgentOptions::unknown`] rather than refused, so a newer
    /// controller does not break this agent.
    pub fn agent_options(&self) -> Result<AgentOptions, JnlpError> {
        let mut out = AgentOptions::default();
        let mut it = self.options.iter();
        while let Some(option) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| JnlpError::MissingOptionValue {
                        option: option.clone(),
                    })
            };
            match option.as_str() {
                "-webSocket" => out.web_socket = true,
                "-failIfWorkDirIsMissing" => out.fail_if_work_dir_is_missing = true,
                "-tunnel" => out.tunnel = Some(value()?),
                "-workDir" => out.work_dir = Some(PathBuf::from(value()?)),
                "-internalDir" => out.internal_dir = Some(value()?),
                "-url" => out.urls.push(value()?),
                _ => out.unknown.push(option.clone()),
            }
        }
        Ok(out)
    }
}

/// Reads a JNLP file and returns its arguments.
///
/// Only `<argument>` elements inside `<application-desc>` count (agent.jar
/// takes every `<argument>` in the document; in Jenkins' files they are all
/// there, and ignoring strays elsewhere is the safer reading). Argument texts
/// are taken exactly, without trimming, as agent.jar does.
pub fn parse_jnlp(xml: &[u8]) -> Result<JnlpArguments, JnlpError> {
    JnlpArguments::from_arguments(parse_arguments(xml)?)
}

/// The `?encrypt=true` form: decrypts `body` with `secret` and parses it.
///
/// Decrypting with a wrong secret yields noise, which fails to parse; that is
/// reported as [`JnlpError::WrongSecret`].
pub fn parse_encrypted_jnlp(secret: &str, body: &[u8]) -> Result<JnlpArguments, JnlpError> {
    if body.len() > MAX_JNLP_BYTES + IV_LEN {
        return Err(JnlpError::TooLarge {
            len: body.len(),
            max: MAX_JNLP_BYTES + IV_LEN,
        });
    }
    let plain = decrypt_jnlp(secret, body)?;
    parse_jnlp(&plain).map_err(|err| match err {
        JnlpError::NotUtf8 { .. } | JnlpError::Malformed { .. } | JnlpError::NoApplicationDesc => {
            JnlpError::WrongSecret(Box::new(err))
        }
        other => other,
    })
}

/// Decrypts the `?encrypt=true` form: AES-128/CFB8/NoPadding, key = hex
/// decoding of the secret's first 32 characters, IV = the body's first 16
/// bytes, ciphertext = the rest.
pub fn decrypt_jnlp(secret: &str, body: &[u8]) -> Result<Vec<u8>, JnlpError> {
    let key = key_from_secret(secret)?;
    let (iv, ciphertext) = body
        .split_first_chunk::<IV_LEN>()
        .ok_or(JnlpError::BodyTooShort { len: body.len() })?;
    let mut buf = ciphertext.to_vec();
    cfb8::Decryptor::<aes::Aes128>::new(&key.into(), &(*iv).into()).decrypt(&mut buf);
    Ok(buf)
}

/// Encrypts `plain` the way Jenkins serves `?encrypt=true`: the IV, then the
/// AES-128/CFB8 ciphertext. The inverse of [`decrypt_jnlp`].
pub fn encrypt_jnlp(secret: &str, iv: [u8; IV_LEN], plain: &[u8]) -> Result<Vec<u8>, JnlpError> {
    let key = key_from_secret(secret)?;
    let mut out = Vec::with_capacity(IV_LEN + plain.len());
    out.extend_from_slice(&iv);
    out.extend_from_slice(plain);
    cfb8::Encryptor::<aes::Aes128>::new(&key.into(), &iv.into()).encrypt(&mut out[IV_LEN..]);
    Ok(out)
}

fn key_from_secret(secret: &str) -> Result<[u8; 16], JnlpError> {
    // Bytes, not chars: slicing a str could split a multi-byte character.
    let hex_part = secret
        .as_bytes()
        .get(..KEY_HEX_CHARS)
        .ok_or(JnlpError::SecretTooShort)?;
    let mut key = [0u8; 16];
    // The hex error names the offending character: a piece of the secret.
    hex::decode_to_slice(hex_part, &mut key).map_err(|_| JnlpError::SecretNotHex)?;
    Ok(key)
}

/// The texts of the `<argument>` elements inside `<application-desc>`.
fn parse_arguments(xml: &[u8]) -> Result<Vec<String>, JnlpError> {
    if xml.len() > MAX_JNLP_BYTES {
        return Err(JnlpError::TooLarge {
            len: xml.len(),
            max: MAX_JNLP_BYTES,
        });
    }
    // Checking UTF-8 up front keeps every later decode infallible in practice
    // and gives the decryption path a clear "this is noise" signal.
    let text = std::str::from_utf8(xml).map_err(|e| JnlpError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);

    let mut reader = Reader::from_str(text);
    // For faults quick-xml does not see itself: where the reader stands.
    let malformed = |reader: &Reader<&[u8]>, reason: String| JnlpError::Malformed {
        position: reader.buffer_position(),
        reason,
    };

    let mut depth = 0usize;
    let mut seen_root = false;
    // Depth at which the current <application-desc> was opened.
    let mut app_desc_depth: Option<usize> = None;
    let mut seen_app_desc = false;
    // The argument being read, if inside one.
    let mut current: Option<String> = None;
    let mut arguments = Vec::new();

    loop {
        let event = reader.read_event().map_err(|e| xml_error(&reader, e))?;
        match event {
            Event::DocType(_) => return Err(JnlpError::Doctype),
            Event::Start(_) | Event::Empty(_) if depth == 0 && seen_root => {
                return Err(malformed(&reader, "more than one root element".to_owned()));
            }
            Event::Start(start) => {
                check_attributes(&reader, &start)?;
                seen_root = true;
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(malformed(
                        &reader,
                        format!("elements nested more than {MAX_DEPTH} deep"),
                    ));
                }
                match start.name().as_ref() {
                    b"application-desc" if app_desc_depth.is_none() => {
                        app_desc_depth = Some(depth);
                        seen_app_desc = true;
                    }
                    b"argument" if app_desc_depth.is_some() => {
                        if current.is_some() {
                            return Err(malformed(
                                &reader,
                                "<argument> inside <argument>".to_owned(),
                            ));
                        }
                        current = Some(String::new());
                    }
                    _ => {}
                }
            }
            Event::Empty(start) => {
                check_attributes(&reader, &start)?;
                seen_root = true;
                match start.name().as_ref() {
                    b"application-desc" => seen_app_desc = true,
                    b"argument" if app_desc_depth.is_some() => {
                        if current.is_some() {
                            return Err(malformed(
                                &reader,
                                "<argument> inside <argument>".to_owned(),
                            ));
                        }
                        push_argument(&mut arguments, String::new())?;
                    }
                    _ => {}
                }
            }
            Event::End(end) => {
                // quick-xml has already checked that the name matches.
                if end.name().as_ref() == b"argument" && app_desc_depth.is_some() {
                    if let Some(argument) = current.take() {
                        push_argument(&mut arguments, argument)?;
                    }
                }
                if app_desc_depth == Some(depth) {
                    app_desc_depth = None;
                }
                depth = depth.saturating_sub(1);
            }
            Event::Text(t) => {
                let content = t
                    .xml10_content()
                    .map_err(|e| malformed(&reader, e.to_string()))?;
                if let Some(argument) = current.as_mut() {
                    argument.push_str(&content);
                } else if depth == 0 && !content.trim().is_empty() {
                    return Err(malformed(
                        &reader,
                        "text outside the root element".to_owned(),
                    ));
                }
            }
            Event::CData(c) => {
                if depth == 0 {
                    return Err(malformed(
                        &reader,
                        "CDATA outside the root element".to_owned(),
                    ));
                }
                if let Some(argument) = current.as_mut() {
                    let content = c
                        .xml10_content()
                        .map_err(|e| malformed(&reader, e.to_string()))?;
                    argument.push_str(&content);
                }
            }
            Event::GeneralRef(r) => {
                let ch = resolve_reference(&reader, &r)?;
                if let Some(argument) = current.as_mut() {
                    argument.push(ch);
                } else if depth == 0 {
                    return Err(malformed(
                        &reader,
                        "reference outside the root element".to_owned(),
                    ));
                }
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }

    if depth > 0 {
        return Err(malformed(
            &reader,
            "the file ends before its elements are closed (truncated?)".to_owned(),
        ));
    }
    if !seen_root {
        return Err(malformed(&reader, "no root element".to_owned()));
    }
    if !seen_app_desc {
        return Err(JnlpError::NoApplicationDesc);
    }
    Ok(arguments)
}

fn push_argument(arguments: &mut Vec<String>, argument: String) -> Result<(), JnlpError> {
    if arguments.len() >= MAX_ARGUMENTS {
        return Err(JnlpError::TooManyArguments { max: MAX_ARGUMENTS });
    }
    arguments.push(argument);
    Ok(())
}

/// Resolves `&name;` to its character: the five predefined entities and
/// numeric character references only.
fn resolve_reference(reader: &Reader<&[u8]>, r: &BytesRef<'_>) -> Result<char, JnlpError> {
    if r.is_char_ref() {
        return match r.resolve_char_ref() {
            Ok(Some(ch)) => Ok(ch),
            Ok(None) | Err(_) => Err(JnlpError::Malformed {
                position: reader.buffer_position(),
                reason: format!(
                    "invalid character reference &{};",
                    quote(r, MAX_ECHOED_CHARS)
                ),
            }),
        };
    }
    match r.as_ref() {
        b"lt" => Ok('<'),
        b"gt" => Ok('>'),
        b"amp" => Ok('&'),
        b"apos" => Ok('\''),
        b"quot" => Ok('"'),
        _ => Err(JnlpError::EntityRefused {
            name: quote(r, MAX_ECHOED_CHARS),
        }),
    }
}

/// Refuses malformed attributes and non-predefined entities in attribute
/// values, although no attribute is used: the whole file must be acceptable.
fn check_attributes(
    reader: &Reader<&[u8]>,
    start: &quick_xml::events::BytesStart<'_>,
) -> Result<(), JnlpError> {
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| JnlpError::Malformed {
            position: reader.buffer_position(),
            reason: e.to_string(),
        })?;
        attribute
            .decode_and_unescape_value(reader.decoder())
            .map_err(|e| xml_error(reader, e))?;
    }
    Ok(())
}

fn xml_error(reader: &Reader<&[u8]>, err: quick_xml::Error) -> JnlpError {
    use quick_xml::escape::EscapeError;
    match err {
        quick_xml::Error::Escape(EscapeError::UnrecognizedEntity(_, name)) => {
            JnlpError::EntityRefused {
                name: quote(name.as_bytes(), MAX_ECHOED_CHARS),
            }
        }
        other => JnlpError::Malformed {
            position: reader.error_position(),
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECRET: &str = "8c2f0e5d7a1b4c9e3f60a7d2b5e8c1f4a9d3e6b0c7f2a5d8e1b4c7f0a3d6e9b2";

    /// What Jenkins 2.4xx serves for computer/agent-1/jenkins-agent.jnlp.
    fn jenkins_agent_jnlp(secret: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<jnlp codebase="http://ci:8080/computer/agent-1/" spec="1.0+">
  <information>
    <title>Agent for agent-1</title>
    <vendor>Jenkins project</vendor>
    <homepage href="https://jenkins.io/"/>
  </information>
  <security>
    <all-permissions/>
  </security>
  <resources>
    <j2se version="1.8+"/>
    <jar href="http://ci:8080/jnlpJars/remoting.jar"/>
    <property name="hudson.showWindowsServiceInstallLink" value="true"/>
  </resources>
  <application-desc>
    <argument>{secret}</argument>
    <argument>agent-1</argument>
    <argument>-workDir</argument>
    <argument>/home/jenkins/agent</argument>
    <argument>-internalDir</argument>
    <argument>remoting</argument>
    <argument>-url</argument>
    <argument>http://ci:8080/</argument>
  </application-desc>
</jnlp>"#
        )
    }

    fn wrap(arguments: &str) -> String {
        format!("<jnlp><application-desc>{arguments}</application-desc></jnlp>")
    }

    #[test]
    fn parses_what_jenkins_serves() {
        let args = parse_jnlp(jenkins_agent_jnlp(SECRET).as_bytes()).unwrap();
        assert_eq!(args.secret, SECRET);
        assert_eq!(args.name, "agent-1");
        assert_eq!(
            args.options,
            [
                "-workDir",
                "/home/jenkins/agent",
                "-internalDir",
                "remoting",
                "-url",
                "http://ci:8080/"
            ]
        );
        let options = args.agent_options().unwrap();
        assert_eq!(
            options,
            AgentOptions {
                work_dir: Some(PathBuf::from("/home/jenkins/agent")),
                internal_dir: Some("remoting".to_owned()),
                urls: vec!["http://ci:8080/".to_owned()],
                ..AgentOptions::default()
            }
        );
    }

    #[test]
    fn older_slave_agent_jnlp_without_declaration() {
        let xml = r#"<jnlp spec="1.0+" codebase="http://ci/computer/n/"><information><title>Slave Agent for n</title></information><application-desc main-class="hudson.remoting.jnlp.Main"><argument>s</argument><argument>n</argument></application-desc></jnlp>"#;
        let args = parse_jnlp(xml.as_bytes()).unwrap();
        assert_eq!((args.secret.as_str(), args.name.as_str()), ("s", "n"));
        assert!(args.options.is_empty());
    }

    #[test]
    fn debug_hides_the_secret() {
        let args = parse_jnlp(jenkins_agent_jnlp(SECRET).as_bytes()).unwrap();
        let shown = format!("{args:?}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("***"), "{shown}");
        assert!(shown.contains("agent-1"), "{shown}");
    }

    #[test]
    fn all_known_options() {
        let args = JnlpArguments::from_arguments(
            [
                "s",
                "n",
                "-webSocket",
                "-tunnel",
                "proxy:50000",
                "-workDir",
                "C:\\agent",
                "-failIfWorkDirIsMissing",
                "-url",
                "http://a/",
                "-noReconnect",
                "-url",
                "http://b/",
                "-jar-cache",
                "/cache",
            ]
            .map(str::to_owned)
            .to_vec(),
        )
        .unwrap();
        let options = args.agent_options().unwrap();
        assert_eq!(
            options,
            AgentOptions {
                web_socket: true,
                tunnel: Some("proxy:50000".to_owned()),
                work_dir: Some(PathBuf::from("C:\\agent")),
                internal_dir: None,
                fail_if_work_dir_is_missing: true,
                urls: vec!["http://a/".to_owned(), "http://b/".to_owned()],
                unknown: vec![
                    "-noReconnect".to_owned(),
                    "-jar-cache".to_owned(),
                    "/cache".to_owned()
                ],
            }
        );
    }

    #[test]
    fn repeated_single_valued_option_keeps_the_last() {
        let args = parse_jnlp(
            wrap("<argument>s</argument><argument>n</argument><argument>-tunnel</argument><argument>a:1</argument><argument>-tunnel</argument><argument>:2</argument>")
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(args.agent_options().unwrap().tunnel.as_deref(), Some(":2"));
    }

    #[test]
    fn option_without_its_value_is_an_error() {
        for option in ["-tunnel", "-workDir", "-internalDir", "-url"] {
            let args = JnlpArguments::from_arguments(vec![
                "s".to_owned(),
                "n".to_owned(),
                option.to_owned(),
            ])
            .unwrap();
            match args.agent_options() {
                Err(JnlpError::MissingOptionValue { option: o }) => assert_eq!(o, option),
                other => panic!("{option}: {other:?}"),
            }
        }
    }

    #[test]
    fn too_few_arguments() {
        for (body, found) in [
            ("", 0),
            ("<argument>only-secret</argument>", 1),
            ("<argument/>", 1),
        ] {
            match parse_jnlp(wrap(body).as_bytes()) {
                Err(JnlpError::TooFewArguments { found: f }) => assert_eq!(f, found),
                other => panic!("{body}: {other:?}"),
            }
        }
        let err = parse_jnlp(b"<jnlp><application-desc/></jnlp>").unwrap_err();
        assert!(matches!(err, JnlpError::TooFewArguments { found: 0 }));
    }

    #[test]
    fn empty_argument_element_is_an_empty_argument() {
        let args =
            parse_jnlp(wrap("<argument>s</argument><argument></argument><argument/>").as_bytes())
                .unwrap();
        assert_eq!(args.name, "");
        assert_eq!(args.options, [""]);
    }

    #[test]
    fn arguments_outside_application_desc_are_ignored() {
        let xml = "<jnlp><information><argument>stray</argument></information>\
                   <application-desc><argument>s</argument><argument>n</argument></application-desc>\
                   <argument>late</argument></jnlp>";
        let args = parse_jnlp(xml.as_bytes()).unwrap();
        assert_eq!((args.secret.as_str(), args.name.as_str()), ("s", "n"));
        assert!(args.options.is_empty());
    }

    #[test]
    fn text_is_taken_exactly() {
        let args = parse_jnlp(
            wrap("<argument> s </argument><argument>a<!-- c -->b<![CDATA[<&>]]></argument>")
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(args.secret, " s ");
        assert_eq!(args.name, "ab<&>");
    }

    #[test]
    fn predefined_entities_and_character_references_are_decoded() {
        let args = parse_jnlp(
            wrap(
                "<argument>&lt;&gt;&amp;&apos;&quot;</argument>\
                 <argument>&#65;&#x42;&#x1F600;x&#13;&#10;</argument>",
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(args.secret, "<>&'\"");
        assert_eq!(args.name, "AB\u{1F600}x\r\n");
    }

    #[test]
    fn line_ends_are_normalised_as_xml_requires() {
        let args =
            parse_jnlp(wrap("<argument>a\r\nb\rc</argument><argument>n</argument>").as_bytes())
                .unwrap();
        assert_eq!(args.secret, "a\nb\nc");
    }

    #[test]
    fn invalid_character_references_are_malformed() {
        for bad in ["&#0;", "&#xD800;", "&#x110000;", "&#-1;", "&#xZZ;", "&#;"] {
            let xml = wrap(&format!("<argument>{bad}</argument><argument>n</argument>"));
            assert!(
                matches!(parse_jnlp(xml.as_bytes()), Err(JnlpError::Malformed { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn doctype_is_refused() {
        let xml = "<?xml version=\"1.0\"?><!DOCTYPE jnlp><jnlp><application-desc>\
                   <argument>s</argument><argument>n</argument></application-desc></jnlp>";
        let err = parse_jnlp(xml.as_bytes()).unwrap_err();
        assert!(matches!(err, JnlpError::Doctype));
        assert!(err.to_string().contains("DOCTYPE"));
        assert!(err.to_string().contains("entity expansion"));
    }

    #[test]
    fn billion_laughs_is_refused() {
        let xml = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<jnlp><application-desc><argument>&lol9;</argument><argument>n</argument></application-desc></jnlp>"#;
        assert!(matches!(
            parse_jnlp(xml.as_bytes()),
            Err(JnlpError::Doctype)
        ));
    }

    #[test]
    fn external_entity_is_refused() {
        let xml = r#"<!DOCTYPE jnlp [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><jnlp><application-desc><argument>&xxe;</argument><argument>n</argument></application-desc></jnlp>"#;
        assert!(matches!(
            parse_jnlp(xml.as_bytes()),
            Err(JnlpError::Doctype)
        ));
    }

    #[test]
    fn undeclared_custom_entity_is_refused() {
        // Without a DOCTYPE, in text...
        let xml = wrap("<argument>&xxe;</argument><argument>n</argument>");
        match parse_jnlp(xml.as_bytes()) {
            Err(JnlpError::EntityRefused { name }) => assert_eq!(name, "xxe"),
            other => panic!("{other:?}"),
        }
        // ...outside any argument...
        let xml = "<jnlp><title>&nbsp;</title><application-desc/></jnlp>";
        assert!(matches!(
            parse_jnlp(xml.as_bytes()),
            Err(JnlpError::EntityRefused { .. })
        ));
        // ...and in an attribute value.
        let xml = r#"<jnlp codebase="&xxe;"><application-desc><argument>s</argument><argument>n</argument></application-desc></jnlp>"#;
        match parse_jnlp(xml.as_bytes()) {
            Err(JnlpError::EntityRefused { name }) => assert_eq!(name, "xxe"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_xml() {
        for bad in [
            "",
            "   ",
            "not xml at all",
            "<jnlp><application-desc><argument>s</argument><argument>n</argument></application-desc>",
            "<jnlp><application-desc></jnlp>",
            "<jnlp><application-desc><argument>s</argument><argument>n</argument></application-desc></jnlp><jnlp/>",
            "<jnlp><application-desc><argument>s & n</argument></application-desc></jnlp>",
            "<jnlp><application-desc><argument>s<argument>n</argument></argument></application-desc></jnlp>",
            "<jnlp a='1' a='2'><application-desc/></jnlp>",
            "<jnlp><application-desc/></jnlp>trailing",
        ] {
            assert!(
                matches!(parse_jnlp(bad.as_bytes()), Err(JnlpError::Malformed { .. })),
                "{bad:?}: {:?}",
                parse_jnlp(bad.as_bytes())
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let xml = format!("{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000));
        assert!(matches!(
            parse_jnlp(xml.as_bytes()),
            Err(JnlpError::Malformed { .. })
        ));
    }

    #[test]
    fn not_utf8() {
        let mut xml = wrap("<argument>s</argument><argument>n</argument>").into_bytes();
        xml[30] = 0xff;
        assert!(matches!(
            parse_jnlp(&xml),
            Err(JnlpError::NotUtf8 { valid_up_to: 30 })
        ));
    }

    #[test]
    fn utf8_byte_order_mark_is_accepted() {
        let xml = format!(
            "\u{feff}{}",
            wrap("<argument>s</argument><argument>n</argument>")
        );
        assert_eq!(parse_jnlp(xml.as_bytes()).unwrap().name, "n");
    }

    #[test]
    fn no_application_desc() {
        let html = "<html><head><title>Sign in [Jenkins]</title></head><body><form/></body></html>";
        assert!(matches!(
            parse_jnlp(html.as_bytes()),
            Err(JnlpError::NoApplicationDesc)
        ));
    }

    #[test]
    fn too_large() {
        let xml = vec![b' '; MAX_JNLP_BYTES + 1];
        assert!(matches!(parse_jnlp(&xml), Err(JnlpError::TooLarge { .. })));
    }

    #[test]
    fn too_many_arguments() {
        let xml = wrap(&"<argument>x</argument>".repeat(MAX_ARGUMENTS + 1));
        assert!(matches!(
            parse_jnlp(xml.as_bytes()),
            Err(JnlpError::TooManyArguments { .. })
        ));
        let xml = wrap(&"<argument/>".repeat(MAX_ARGUMENTS + 1));
        assert!(matches!(
            parse_jnlp(xml.as_bytes()),
            Err(JnlpError::TooManyArguments { .. })
        ));
        let xml = wrap(&"<argument>x</argument>".repeat(MAX_ARGUMENTS));
        assert_eq!(
            parse_jnlp(xml.as_bytes()).unwrap().options.len(),
            MAX_ARGUMENTS - 2
        );
    }

    /// NIST SP 800-38A, F.3.7 (CFB8-AES128.Encrypt), also checked with
    /// `openssl enc -aes-128-cfb8 -K 2b7e151628aed2a6abf7158809cf4f3c
    /// -iv 000102030405060708090a0b0c0d0e0f`.
    #[test]
    fn aes_cfb8_known_answer() {
        let secret = "2b7e151628aed2a6abf7158809cf4f3c";
        let iv: [u8; 16] = hex::decode("000102030405060708090a0b0c0d0e0f")
            .unwrap()
            .try_into()
            .unwrap();
        let plain = hex::decode("6bc1bee22e409f96e93d7e117393172aae2d").unwrap();
        let want = hex::decode("3b79424c9c0dd436bace9e0ed4586a4f32b9").unwrap();
        let body = encrypt_jnlp(secret, iv, &plain).unwrap();
        assert_eq!(&body[..16], &iv);
        assert_eq!(&body[16..], &want[..]);
        assert_eq!(decrypt_jnlp(secret, &body).unwrap(), plain);
    }

    /// A JNLP file encrypted with `openssl enc -aes-128-cfb8 -K <first 32 hex
    /// chars of SECRET> -iv 00112233445566778899aabbccddeeff`.
    #[test]
    fn decrypts_an_openssl_encrypted_file() {
        let ciphertext = "03f1a47ccab6a7bd250aa5710f0fcb252360661a861b14a339a87dd64327859dd0cddc4546774b1c971be533c61a0337735cce8cfa680f9d863a7a27a889534fd0b87cd92d5f2573cea52b725b18417bcf57d439bdaed5539cec9587b25699e17ea5b3a017daf19b3f248df11280fa23548246f66eaca67f12fb3011d8794220ef4169a5e6401136c9650faa8126c8bcc02f8ac1b95f299f797de168ffdd491e9d2bea";
        let body = hex::decode(format!("00112233445566778899aabbccddeeff{ciphertext}")).unwrap();
        let args = parse_encrypted_jnlp(SECRET, &body).unwrap();
        assert_eq!(args.secret, SECRET);
        assert_eq!(args.name, "agent-1");
    }

    #[test]
    fn encrypted_round_trip() {
        let plain = jenkins_agent_jnlp(SECRET);
        let body = encrypt_jnlp(SECRET, [7; 16], plain.as_bytes()).unwrap();
        assert_eq!(body.len(), 16 + plain.len());
        assert_ne!(&body[16..], plain.as_bytes());
        assert_eq!(decrypt_jnlp(SECRET, &body).unwrap(), plain.as_bytes());
        let args = parse_encrypted_jnlp(SECRET, &body).unwrap();
        assert_eq!(args, parse_jnlp(plain.as_bytes()).unwrap());
    }

    #[test]
    fn wrong_secret_is_reported_as_such() {
        let body = encrypt_jnlp(SECRET, [7; 16], jenkins_agent_jnlp(SECRET).as_bytes()).unwrap();
        let wrong = "0000000000000000000000000000000000000000000000000000000000000000";
        let err = parse_encrypted_jnlp(wrong, &body).unwrap_err();
        assert!(matches!(err, JnlpError::WrongSecret(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "could not decrypt the JNLP file: wrong secret?"
        );
    }

    #[test]
    fn bad_secrets_and_bodies() {
        assert!(matches!(
            decrypt_jnlp("abc", &[0; 32]),
            Err(JnlpError::SecretTooShort)
        ));
        assert!(matches!(
            encrypt_jnlp("abc", [0; 16], b"x"),
            Err(JnlpError::SecretTooShort)
        ));
        let not_hex = "8c2f0e5d7a1b4c9e3f60a7d2b5e8c1fZ-rest-of-the-secret";
        let err = decrypt_jnlp(not_hex, &[0; 32]).unwrap_err();
        assert!(matches!(err, JnlpError::SecretNotHex));
        assert!(!err.to_string().contains('Z'), "{err}");
        // A multi-byte character across the 32-byte boundary must not panic.
        let split = format!("{}é", "a".repeat(31));
        assert!(matches!(
            decrypt_jnlp(&split, &[0; 32]),
            Err(JnlpError::SecretNotHex)
        ));
        assert!(matches!(
            decrypt_jnlp(SECRET, &[0; 15]),
            Err(JnlpError::BodyTooShort { len: 15 })
        ));
        // An IV and nothing else decrypts to nothing, which is not a JNLP file.
        assert_eq!(decrypt_jnlp(SECRET, &[0; 16]).unwrap(), b"");
        assert!(matches!(
            parse_encrypted_jnlp(SECRET, &[0; 16]),
            Err(JnlpError::WrongSecret(_))
        ));
    }

    #[test]
    fn errors_never_show_the_secret() {
        let xml = jenkins_agent_jnlp(SECRET).replace("</jnlp>", "");
        let err = parse_jnlp(xml.as_bytes()).unwrap_err();
        assert!(!err.to_string().contains(SECRET), "{err}");
        assert!(!format!("{err:?}").contains(SECRET), "{err:?}");
        let body = encrypt_jnlp(SECRET, [1; 16], xml.as_bytes()).unwrap();
        let err = parse_encrypted_jnlp(SECRET, &body).unwrap_err();
        assert!(!format!("{err:?}").contains(SECRET), "{err:?}");
        let err = decrypt_jnlp(&SECRET[..20], &body).unwrap_err();
        assert!(!format!("{err} {err:?}").contains(&SECRET[..20]));
    }
}
