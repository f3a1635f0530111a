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
    /// By behaviour: the process read a credential and then wrote a file
    /// whose content is archive or compressed data of this format.
    Behaviour { format: String, archive: String },
}

/// The archive or compression format a file starts with, by its magic
/// number: gzip, zip, 7z, xz, bzip2, zstd, lz4, rar, cpio, and tar (its
/// `ustar` magic at offset 257).
pub fn archive_format(head: &[u8]) -> Option<&'static str> {
    const MAGIC: &[(&[u8], &str)] = &[
        (b"\x1f\x8b", "gzip"),
        (b"PK\x03\x04", "zip"),
        (b"PK\x05\x06", "zip"),
        (b"7z\xbc\xaf\x27\x1c", "7z"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"BZh", "bzip2"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"\x04\x22\x4d\x18", "lz4"),
        (b"Rar!\x1a\x07", "rar"),
        (b"070701", "cpio"),
        (b"070702", "cpio"),
        (b"070707", "cpio"),
        (b"\xc7\x71", "cpio"),
    ];
    if let Some((_, f)) = MAGIC.iter().find(|(m, _)| head.starts_with(m)) {
        return Some(f);
    }
    head.get(257..262).filter(|m| *m == b"ustar").map(|_| "tar")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_formats_are_known_by_their_magic() {
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        for (head, want) in [
            (&b"\x1f\x8b\x08\x00"[..], Some("gzip")),
            (b"PK\x03\x04rest", Some("zip")),
            (b"7z\xbc\xaf\x27\x1c\x00", Some("7z")),
            (b"\xfd7zXZ\x00\x00", Some("xz")),
            (b"BZh91AY", Some("bzip2")),
            (b"\x28\xb5\x2f\xfd\x00", Some("zstd")),
            (b"\x04\x22\x4d\x18", Some("lz4")),
            (b"Rar!\x1a\x07\x00", Some("rar")),
            (b"070701000", Some("cpio")),
            (&tar[..], Some("tar")),
            (b"ssh-rsa AAAA", None),
            (b"\x1f", None),
            (b"", None),
        ] {
            assert_eq!(archive_format(head), want, "{head:?}");
        }
    }
}
