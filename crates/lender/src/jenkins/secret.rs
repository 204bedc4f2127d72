//! The secret in an inbound node's JNLP file (`computer/N/jenkins-agent.jnlp`):
//! the first `<argument>` of `<application-desc>`, 64 lowercase hex
//! characters (`hex(HMAC-SHA256(key, N))`, JENKINS-REST.md 3).

use quick_xml::events::Event;
use quick_xml::Reader;

/// The largest JNLP file read; real ones are well under 2 KiB.
pub const MAX_JNLP: usize = 64 * 1024;
/// The longest secret accepted (Jenkins' are 64 characters).
const MAX_SECRET: usize = 256;
/// Elements nested deeper than this are refused.
const MAX_DEPTH: usize = 16;

/// The secret in `xml`, or why there is none. No DOCTYPE, no entities.
pub fn secret_from_jnlp(xml: &[u8]) -> Result<String, String> {
    if xml.len() > MAX_JNLP {
        return Err(format!("the file is larger than {MAX_JNLP} bytes"));
    }
    let text = std::str::from_utf8(xml).map_err(|_| "the file is not UTF-8".to_owned())?;
    let mut reader = Reader::from_str(text.strip_prefix('\u{feff}').unwrap_or(text));
    let mut depth = 0usize;
    let mut in_desc = false;
    let mut current: Option<String> = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("not XML at byte {}: {e}", reader.buffer_position()))?;
        match event {
            Event::DocType(_) => return Err("a DOCTYPE is not accepted".into()),
            Event::Start(start) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!("elements nested more than {MAX_DEPTH} deep"));
                }
                match start.name().as_ref() {
                    b"application-desc" => in_desc = true,
                    b"argument" if in_desc => current = Some(String::new()),
                    _ => {}
                }
            }
            Event::Empty(start) if in_desc && start.name().as_ref() == b"argument" => {
                return Err("the first <argument> is empty".into());
            }
            Event::Text(t) => {
                if let Some(arg) = current.as_mut() {
                    let content = t.xml10_content().map_err(|e| e.to_string())?;
                    arg.push_str(&content);
                    if arg.len() > MAX_SECRET {
                        return Err(format!("the first <argument> is over {MAX_SECRET} bytes"));
                    }
                }
            }
            Event::GeneralRef(_) if current.is_some() => {
                return Err("the secret holds an entity reference".into());
            }
            Event::End(end) => {
                if let Some(arg) = current
                    .take()
                    .filter(|_| end.name().as_ref() == b"argument")
                {
                    return check(arg.trim());
                }
                if end.name().as_ref() == b"application-desc" {
                    in_desc = false;
                }
                depth = depth.saturating_sub(1);
            }
            Event::Eof => return Err("no <argument> in <application-desc>".into()),
            _ => {}
        }
    }
}

/// A secret is hex: anything else means the file is not what it claims.
fn check(secret: &str) -> Result<String, String> {
    if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("the first <argument> is not a hex secret".into());
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";

    #[test]
    fn first_argument_new_and_old_forms() {
        let new = format!("<jnlp><application-desc>\n  <argument>{SECRET}</argument><argument>n1</argument>\n  <argument>-url</argument><argument>http://j/</argument></application-desc></jnlp>");
        assert_eq!(secret_from_jnlp(new.as_bytes()).as_deref(), Ok(SECRET));
        let old = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><jnlp spec=\"1.0+\" codebase=\"http://j/computer/n1/\"><information><title>Agent for n1</title></information><resources><jar href=\"x\"/></resources><application-desc main-class=\"hudson.remoting.jnlp.Main\"><argument>{SECRET}</argument><argument>n1</argument></application-desc></jnlp>");
        assert_eq!(secret_from_jnlp(old.as_bytes()).as_deref(), Ok(SECRET));
    }

    #[test]
    fn refuses_what_is_not_a_secret() {
        for bad in [
            "",
            "<html><body>Login</body></html>",
            "<jnlp><application-desc><argument/></application-desc></jnlp>",
            "<jnlp><application-desc><argument>-url</argument></application-desc></jnlp>",
            "<jnlp><application-desc><argument>ab&amp;cd</argument></application-desc></jnlp>",
            "<!DOCTYPE x [<!ENTITY a \"b\">]><jnlp/>",
            "<jnlp><application-desc><argument>abc",
        ] {
            assert!(secret_from_jnlp(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let huge = format!(
            "<jnlp><application-desc><argument>{}</argument></application-desc></jnlp>",
            "a".repeat(1000)
        );
        assert!(secret_from_jnlp(huge.as_bytes()).is_err());
        assert!(secret_from_jnlp(&vec![b' '; MAX_JNLP + 1]).is_err());
        assert!(secret_from_jnlp(&[0xff, 0xfe]).is_err());
    }
}
