//! Archiver identity by content: a copied or renamed archiver
//! (`cp /usr/bin/tar /tmp/x; /tmp/x cf - /root/.ssh`) is recognised by its
//! ELF build-id, not by what it is called.
//!
//! Known archivers are collected from the host at start and from each
//! container's image at registration: regular files (never symlinks) named
//! like an archiver in the usual binary directories. A build-id found under
//! two different archiver names, or equal to busybox's, belongs to a
//! multi-call binary and is not used: otherwise every busybox `cat` would
//! count as tar. Executables seen at decision time are hashed once per
//! (dev, ino) and cached.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::{Mutex, RwLock};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};

use crate::watch::resolve::FileId;

/// Directories searched for archiver binaries.
pub const BIN_DIRS: &[&str] = &[
    "/usr/bin",
    "/bin",
    "/usr/sbin",
    "/sbin",
    "/usr/local/bin",
    "/usr/lib/p7zip",
    "/usr/libexec/p7zip",
];
/// Largest note segment we read.
const MAX_NOTES: u64 = 64 * 1024;
/// Entries the executable cache keeps before it starts over.
const CACHE_MAX: usize = 4096;

/// The GNU build-id of an ELF64 little-endian file, if it has one.
pub fn build_id<R: Read + Seek>(f: &mut R) -> Option<Vec<u8>> {
    let mut h = [0u8; 64];
    f.seek(SeekFrom::Start(0)).ok()?;
    f.read_exact(&mut h).ok()?;
    if &h[0..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return None;
    }
    let u16at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
    let u64at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
    let phoff = u64at(&h, 0x20);
    let phentsize = u16at(&h, 0x36) as u64;
    let phnum = u16at(&h, 0x38) as u64;
    if phentsize < 56 || phnum > 256 {
        return None;
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    f.seek(SeekFrom::Start(phoff)).ok()?;
    f.read_exact(&mut ph).ok()?;
    for i in 0..phnum as usize {
        let p = &ph[i * phentsize as usize..];
        if u32at(p, 0) != 4 {
            continue; // not PT_NOTE
        }
        let (off, size) = (u64at(p, 8), u64at(p, 32).min(MAX_NOTES));
        let mut notes = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(off)).ok()?;
        f.read_exact(&mut notes).ok()?;
        let mut o = 0usize;
        while o + 12 <= notes.len() {
            let (namesz, descsz, ty) = (
                u32at(&notes, o) as usize,
                u32at(&notes, o + 4) as usize,
                u32at(&notes, o + 8),
            );
            let name_end = o + 12 + namesz;
            let desc = name_end.div_ceil(4) * 4;
            let desc_end = desc + descsz;
            if desc_end > notes.len() {
                break;
            }
            if ty == 3 && &notes[o + 12..name_end] == b"GNU\0" {
                return Some(notes[desc..desc_end].to_vec());
            }
            o = desc_end.div_ceil(4) * 4;
        }
    }
    None
}

/// Whether a file starts with the ELF magic.
pub fn is_elf<R: Read + Seek>(f: &mut R) -> bool {
    let mut magic = [0u8; 4];
    f.seek(SeekFrom::Start(0)).is_ok() && f.read_exact(&mut magic).is_ok() && &magic == b"\x7fELF"
}

/// Known archiver build-ids, and a cache of executables already hashed.
#[derive(Debug, Default)]
pub struct Identities {
    /// Bumped whenever `known` or `multi` change, so verdicts made from
    /// them (`exe::ExeClasses`) are made again.
    generation: std::sync::atomic::AtomicU64,
    known: RwLock<HashMap<Vec<u8>, String>>,
    /// Build-ids seen under more than one name: multi-call binaries.
    multi: RwLock<std::collections::HashSet<Vec<u8>>>,
    cache: Mutex<HashMap<FileId, Option<Vec<u8>>>>,
}

fn open_regular(root: BorrowedFd<'_>, rel: &Path) -> Option<File> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let fd = openat2(root, rel, how).ok()?;
    let f = File::from(fd);
    f.metadata().ok().filter(|m| m.is_file()).map(|_| f)
}

impl Identities {
    /// Learn the archivers under `root` (a container's root or the host's
    /// `/`), for the archiver `names`.
    pub fn learn(&self, root: BorrowedFd<'_>, names: &[String]) {
        let mut found: Vec<(String, Vec<u8>)> = Vec::new();
        let mut busybox = None;
        for dir in BIN_DIRS {
            let rel = Path::new(dir.trim_start_matches('/'));
            // List each directory once and open only the names present:
            // probing every archiver name in every directory cost ~160
            // failed opens per container start.
            let Ok(dirfd) = crate::watch::resolve::open_in_root(root, rel, true) else {
                continue;
            };
            for entry in crate::watch::resolve::list_dir(dirfd.as_fd()) {
                let entry = entry.to_string_lossy().into_owned();
                let id =
                    || open_regular(root, &rel.join(&entry)).and_then(|mut f| build_id(&mut f));
                if entry == "busybox" {
                    busybox = id().or(busybox);
                } else if let Some(name) = names.iter().find(|n| n.eq_ignore_ascii_case(&entry)) {
                    found.extend(id().map(|id| (name.to_ascii_lowercase(), id)));
                }
            }
        }
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        let mut multi = self.multi.write().unwrap_or_else(|e| e.into_inner());
        // Entries are only ever added, or moved from `known` to `multi`, so
        // the sizes tell whether anything changed.
        let before = (known.len(), multi.len());
        if let Some(b) = busybox {
            known.remove(&b);
            multi.insert(b);
        }
        for (name, id) in found {
            if multi.contains(&id) {
                continue;
            }
            match known.get(&id) {
                Some(other) if *other != name => {
                    known.remove(&id);
                    multi.insert(id);
                }
                _ => {
                    known.insert(id, name);
                }
            }
        }
        if (known.len(), multi.len()) != before {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }

    /// Whether a build-id is a known archiver's or a multi-call binary's.
    pub fn watches_build_id(&self, id: &[u8]) -> bool {
        self.known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
            || self
                .multi
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(id)
    }

    /// Whether a build-id is a multi-call binary's (busybox's, or one seen
    /// under two archiver names).
    pub fn is_multicall(&self, id: &[u8]) -> bool {
        self.multi
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// Changes whenever the known identities change.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Learn the host's archivers.
    pub fn learn_host(&self, names: &[String]) {
        if let Ok(root) = File::open("/") {
            self.learn(root.as_fd(), names);
        }
    }

    /// The archiver `pid` is running, by content, if it is one.
    pub fn archiver_of(&self, pid: i32) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let exe = format!("/proc/{pid}/exe");
        let meta = std::fs::metadata(&exe).ok()?;
        let fid = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fid)
            .cloned();
        let id = match cached {
            Some(id) => id,
            None => {
                let id = File::open(&exe).ok().and_then(|mut f| build_id(&mut f));
                let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if c.len() >= CACHE_MAX {
                    c.clear();
                }
                c.insert(fid, id.clone());
                id
            }
        }?;
        self.known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// How many archiver identities are known.
    pub fn len(&self) -> usize {
        self.known.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none are known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_build_id_of_this_test_binary() {
        let mut f = File::open("/proc/self/exe").unwrap();
        let id = build_id(&mut f).expect("rustc links a GNU build-id");
        assert!(id.len() >= 16);
        assert!(build_id(&mut std::io::Cursor::new(b"#!/bin/sh\necho".to_vec())).is_none());
        assert!(
            build_id(&mut std::io::Cursor::new(vec![
                0x7f, b'E', b'L', b'F', 2, 1
            ]))
            .is_none()
        );
    }

    #[test]
    fn a_copied_binary_is_recognised_and_multi_call_binaries_are_not() {
        let tmp = crate::testdir::TempDir::new("ident");
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
        // This test binary plays "tar"; a second copy under two names
        // plays a multi-call binary.
        let me = std::fs::read("/proc/self/exe").unwrap();
        std::fs::write(dir.join("usr/bin/tar"), &me).unwrap();
        let ids = Identities::default();
        let root = File::open(&dir).unwrap();
        ids.learn(root.as_fd(), &["tar".into(), "gzip".into()]);
        assert_eq!(ids.len(), 1);
        // Our own process runs the same content: it "is" tar.
        assert_eq!(
            ids.archiver_of(std::process::id() as i32).as_deref(),
            Some("tar")
        );
        std::fs::write(dir.join("usr/bin/gzip"), &me).unwrap();
        ids.learn(root.as_fd(), &["tar".into(), "gzip".into()]);
        assert!(ids.is_empty(), "one build-id under two names is multi-call");
        assert_eq!(ids.archiver_of(std::process::id() as i32), None);
    }
}
