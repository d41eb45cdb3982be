//! Small helpers with no better home.

use std::io::Read;

/// Fills `buf` from the kernel's random source. Without randomness rustvlan cannot
/// make MAC addresses or a ULA prefix, and the kernel always has it, so a failure here
/// is a broken host: panic with the reason.
pub fn random_bytes(buf: &mut [u8]) {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("reading /dev/urandom");
}

/// The first `n` characters of `s` (ids are ASCII once checked, but logs and errors
/// name ids before and without checks).
pub fn prefix(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// Twelve characters, like Docker's short ids: for names, logs and errors.
pub fn short_id(id: &str) -> &str {
    prefix(id, 12)
}

/// FNV-1a over `parts`, each followed by a zero byte so that ("ab","c") and ("a","bc")
/// differ: a stable hash for names and starting points that must be the same on every
/// run and every host (the standard library's hasher is seeded per process).
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.iter().copied().chain([0]))
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}
