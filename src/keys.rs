//! One rule for the option keys users pass with `-o`, `--ipam-opt` and an endpoint's
//! `driver-opt`.

use crate::error::{Error, Result};

/// The option dockerd names an endpoint's MAC with, in RequestAddress to IPAMs that ask
/// for it (`rustvlan-dhcp`).
pub const ENDPOINT_MAC_OPTION: &str = "com.docker.network.endpoint.macaddress";

/// Checks option keys the way Docker users expect: a bare key (no dot) is rustvlan's to
/// understand, so one it does not know is a typo and is refused with the valid keys and
/// the nearest one; a namespaced key (`com.example.x`) belongs to some other tool, or to
/// dockerd (`com.docker.network.*`), and is accepted and ignored, as Docker's own drivers
/// accept every key.
pub fn check_option_keys<'a>(what: &str, keys: impl IntoIterator<Item = &'a str>, valid: &[&str]) -> Result<()> {
    let unknown: Vec<&str> = keys
        .into_iter()
        .filter(|k| !k.contains('.') && !valid.contains(k))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = unknown
        .iter()
        .map(|key| match nearest(key, valid) {
            Some(near) => format!("{key} (did you mean {near}?)"),
            None => key.to_string(),
        })
        .collect();
    let valid = if valid.is_empty() {
        "none".to_string()
    } else {
        valid.join(", ")
    };
    Err(Error::invalid(format!(
        "unknown {what}{} {}; valid {what}s: {valid} (namespaced keys such as com.example.key are accepted and ignored)",
        if unknown.len() > 1 { "s" } else { "" },
        named.join(", "),
    )))
}

/// The valid key a typo most likely meant, if one is close enough.
fn nearest<'a>(key: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid
        .iter()
        .map(|v| (strsim::jaro_winkler(key, v), *v))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, v)| v)
}
