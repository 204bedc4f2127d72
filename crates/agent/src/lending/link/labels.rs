//! The labels an agent announces: the label rules the CLI checks and the
//! automatic ones (platform, Linux distribution).

/// The longest label announced, in bytes.
pub const MAX_LABEL: usize = 256;

/// Whether `c` may appear in a label: the atom characters of Jenkins label
/// expressions (no whitespace, no `& | ! < > ( ) " '`), and no control
/// characters.
pub fn is_label_char(c: char) -> bool {
    !c.is_whitespace()
        && !c.is_control()
        && !matches!(c, '&' | '|' | '!' | '<' | '>' | '(' | ')' | '"' | '\'')
}

/// Whether `label` can be announced: non-empty, at most [`MAX_LABEL`]
/// bytes of [`is_label_char`]s.
pub fn is_label(label: &str) -> bool {
    !label.is_empty() && label.len() <= MAX_LABEL && label.chars().all(is_label_char)
}

/// The labels every agent announces about itself: its OS and architecture
/// with their aliases ([`control::link::platform_labels`], which the lender
/// also derives from the hello), then the Linux distribution's `ID` from
/// `os_release` (the text of `/etc/os-release`) when there is one.
pub fn automatic_labels(os: &str, arch: &str, os_release: Option<&str>) -> Vec<String> {
    let mut labels = control::link::platform_labels(os, arch);
    labels.extend(os_release.and_then(distribution));
    labels
}

/// The `ID` of an os-release file (`ID=debian`, `ID="rhel"`), lower case,
/// if it makes a label.
pub(super) fn distribution(os_release: &str) -> Option<String> {
    let value = os_release
        .lines()
        .find_map(|line| line.trim().strip_prefix("ID="))?
        .trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value)
        .to_ascii_lowercase();
    is_label(&value).then_some(value)
}

/// `given` then `automatic`, each label once.
pub fn hello_labels(given: &[String], automatic: Vec<String>) -> Vec<String> {
    let mut labels: Vec<String> = Vec::with_capacity(given.len() + automatic.len());
    for label in given.iter().cloned().chain(automatic) {
        if !labels.contains(&label) {
            labels.push(label);
        }
    }
    labels
}
