//! Quoting peer-supplied text in error messages: lossily decoded and cut
//! short, so that a hostile or broken peer cannot flood a log line.

/// `bytes` as text of at most `max` characters, `…` marking a cut.
pub fn quote(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(max).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn cuts_and_marks() {
        assert_eq!(quote(b"abc", 3), "abc");
        assert_eq!(quote(b"abcd", 3), "abc…");
        assert_eq!(quote(b"\xffz", 5), "\u{fffd}z");
    }
}
