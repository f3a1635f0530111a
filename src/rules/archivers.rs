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
    /// The executable is the ELF loader, and the program it loads
    /// (`process.args[index]`) is an archiver by name.
    Loaded { index: usize, program: String },
    /// An interpreter whose command line (`process.args[index]`) names an
    /// archive module or function: `python3 -m tarfile`, `make_archive`,
    /// `perl -MArchive::Tar`.
    Module { index: usize, word: String },
}

/// Whether an executable name is an ELF interpreter (the dynamic loader):
/// `ld-linux*.so*`, `ld-musl*`, `ld.so`.
pub fn is_loader_name(name: &[u8]) -> bool {
    name.starts_with(b"ld-linux") || name.starts_with(b"ld-musl") || name.starts_with(b"ld.so")
}

/// The program the loader runs: the first argument after the loader's own
/// options (glibc's `--library-path DIR`, `--preload`, `--audit`,
/// `--argv0 NAME`, `--inhibit-rpath`, `--glibc-hwcaps-*`, and flags such
/// as `--inhibit-cache`; musl's take the same form). Its index in `args`.
pub fn loaded_program<A: AsRef<std::ffi::OsStr>>(args: &[A]) -> Option<usize> {
    use std::os::unix::ffi::OsStrExt;
    const WITH_VALUE: &[&[u8]] = &[
        b"--library-path",
        b"--preload",
        b"--audit",
        b"--argv0",
        b"--inhibit-rpath",
        b"--glibc-hwcaps-prefix",
        b"--glibc-hwcaps-mask",
    ];
    let mut i = 1;
    while i < args.len() {
        let a = args[i].as_ref().as_bytes();
        if a == b"--" {
            return (i + 1 < args.len()).then_some(i + 1);
        }
        if !a.starts_with(b"--") {
            return Some(i);
        }
        // `--opt=value` carries its value; `--opt value` takes the next.
        let takes_next = WITH_VALUE.contains(&a) && !a.contains(&b'=');
        i += if takes_next { 2 } else { 1 };
    }
    None
}

/// Interpreters whose command lines are searched for archive modules.
const INTERPRETERS: &[&str] = &["python", "perl", "ruby", "node", "nodejs", "php"];

/// Archive and compression modules and functions of the interpreters'
/// standard libraries and common packages, as words of a command line.
const ARCHIVE_MODULES: &[&str] = &[
    // Python
    "tarfile",
    "zipfile",
    "gzip",
    "bz2",
    "lzma",
    "zlib",
    "make_archive",
    "shutil.make_archive",
    "py7zr",
    "zstandard",
    // Perl
    "Archive::Tar",
    "Archive::Zip",
    "IO::Compress::Gzip",
    "IO::Compress::Zip",
    "IO::Compress::Bzip2",
    "IO::Compress::Xz",
    "Compress::Zlib",
    // Ruby
    "Zlib",
    "Gem::Package::TarWriter",
    "rubygems/package",
    // Node
    "createGzip",
    "gzipSync",
    "archiver",
    "adm-zip",
    "jszip",
    "tar-stream",
];

/// Whether a program name is one of [`INTERPRETERS`] (`python3.11`,
/// `perl5.36` included).
pub fn is_interpreter_name(name: &[u8]) -> bool {
    INTERPRETERS.iter().any(|i| {
        name.strip_prefix(i.as_bytes())
            .is_some_and(|rest| rest.iter().all(|b| b.is_ascii_digit() || *b == b'.'))
    })
}

/// The first archive module or function an interpreter's arguments name:
/// words split at anything that is not part of an identifier, a `::`
/// path, a dot or a dash (`-mtarfile`, `import tarfile,os`,
/// `require('zlib')`, `-MArchive::Tar`).
pub fn archive_module<A: AsRef<std::ffi::OsStr>>(args: &[A]) -> Option<(usize, String)> {
    use std::os::unix::ffi::OsStrExt;
    for (index, arg) in args.iter().enumerate().skip(1) {
        let text = String::from_utf8_lossy(arg.as_ref().as_bytes());
        // Flags glued to their value: `-mtarfile`, `-MArchive::Tar`, `-rzlib`.
        let text = text
            .strip_prefix("-m")
            .or_else(|| text.strip_prefix("-M"))
            .or_else(|| text.strip_prefix("-r"))
            .unwrap_or(&text)
            .to_string();
        let words = text.split(|c: char| {
            !(c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '.' || c == '-' || c == '/')
        });
        for w in words {
            let w = w.trim_matches(|c: char| c == '.' || c == ':');
            // `import gzip.open` names the module before the dot.
            let hit = ARCHIVE_MODULES.iter().find(|m| {
                **m == w || w.split('.').next() == Some(**m) || w.ends_with(&format!(".{m}"))
            });
            if let Some(m) = hit {
                return Some((index, (*m).to_string()));
            }
        }
    }
    None
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
