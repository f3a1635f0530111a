//! Who is an archiver by name: archiver name sets, multi-call binaries,
//! shells, and the evidence of an archiver match ([`ArchiverHit`]).

use std::collections::HashSet;

use serde::Serialize;

use super::RuleError;

/// Shells whose `-c` script is searched for archiver words by the file rule.
pub(crate) const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "zsh", "ksh"];
/// Multi-call binaries whose forked children run applets without exec.
pub(crate) const MULTICALL: &[&str] = &["busybox", "toybox"];

/// Whether a program name is a known multi-call binary (busybox, toybox).
pub fn is_multicall(name: &[u8]) -> bool {
    MULTICALL
        .iter()
        .any(|m| m.as_bytes().eq_ignore_ascii_case(name))
}

/// A case-insensitive set of archiver names.
#[derive(Debug, Clone)]
pub struct Archivers {
    names: HashSet<Vec<u8>>,
    ordered: Vec<String>,
}

impl Archivers {
    /// Build from names; names are compared ASCII-case-insensitively.
    pub fn new(key: &'static str, names: &[String]) -> Result<Self, RuleError> {
        let mut set = HashSet::new();
        for name in names {
            if name.is_empty() || name.contains('/') || name.contains(char::is_whitespace) {
                return Err(RuleError::Archiver {
                    key,
                    name: name.clone(),
                });
            }
            set.insert(name.to_ascii_lowercase().into_bytes());
        }
        Ok(Self {
            names: set,
            ordered: names.to_vec(),
        })
    }

    /// Whether `word` is exactly one of the names (case-insensitive).
    pub fn contains(&self, word: &[u8]) -> bool {
        if word.len() > 64 {
            return false;
        }
        let mut lower = [0u8; 64];
        for (dst, src) in lower.iter_mut().zip(word) {
            *dst = src.to_ascii_lowercase();
        }
        self.names.contains(&lower[..word.len()])
    }

    /// The configured names, in order.
    pub fn names(&self) -> &[String] {
        &self.ordered
    }
}

/// Last path component of a byte string.
pub fn basename(bytes: &[u8]) -> &[u8] {
    match bytes.iter().rposition(|&b| b == b'/') {
        Some(i) => &bytes[i + 1..],
        None => bytes,
    }
}

/// Why the archiver half of a rule held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum ArchiverHit {
    /// `process.name` is an archiver.
    Name { name: String },
    /// `process.args[index]` is exactly an archiver name.
    Arg { index: usize, arg: String },
    /// argv\[0\]'s basename is an archiver (busybox applet, symlink).
    Argv0 { name: String },
    /// A word of a wrapper shell's `-c` script is an archiver.
    Script { index: usize, word: String },
    /// The executable is a known archiver's binary by ELF build-id, under
    /// another name (copied or renamed).
    Identity { name: String, exe: String },
}
