//! The labels an agent announces automatically (platform, Linux
//! distribution); the label rules are [`control::labels`].

use control::labels::is_label;

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
