//! Resolving credential paths inside a container's root, safely.
//!
//! At createRuntime/prestart the container has not pivoted yet, so
//! `/proc/<pid>/root` is the root of the container's *copy of the host
//! tree*: `/proc/<pid>/root/root/.ssh` would be the host's keys. The
//! container's files are at `/proc/<pid>/root/<rootfs>/...`, where `<rootfs>`
//! is the bundle's `root.path` made absolute. After the pivot,
//! `/proc/<pid>/root` itself is right. [`container_root`] picks the one that
//! applies.
//!
//! Every lookup under that root uses `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)`, so a symlink the container controls (say
//! `/root/.ssh -> /../../../root/.ssh`) resolves inside the container and can
//! never lead the daemon to mark a host file.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, fstat};

/// Most directory entries we scan when expanding one wildcard component.
const MAX_DIR_ENTRIES: usize = 65_536;
/// Most paths one pattern may expand to.
const MAX_EXPANSION: usize = 16_384;

/// Errors resolving a container's root.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot open root of pid {pid} at {path}: {source}")]
    Root {
        pid: i32,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("rootfs {path:?} is not an absolute path")]
    RelativeRootfs { path: PathBuf },
}

/// Identity of an inode.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// (dev, ino) of an open fd.
    pub fn of(fd: BorrowedFd<'_>) -> Result<(Self, bool), Errno> {
        let st = fstat(fd)?;
        let is_dir = (st.st_mode & libc::S_IFMT) == libc::S_IFDIR;
        Ok((
            Self {
                dev: st.st_dev,
                ino: st.st_ino,
            },
            is_dir,
        ))
    }
}

fn open_dir(path: &Path) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Open the directory that is `/` for the container whose init is `pid`.
///
/// Before the pivot it is `/proc/<pid>/root/<rootfs>`; after, `<rootfs>` no
/// longer exists under `/proc/<pid>/root` (or is something else), and
/// `/proc/<pid>/root` is the container's `/`. Returns the fd and whether the
/// container had pivoted.
pub fn container_root(pid: i32, rootfs: &Path) -> Result<(OwnedFd, bool), ResolveError> {
    if !rootfs.is_absolute() {
        return Err(ResolveError::RelativeRootfs {
            path: rootfs.to_path_buf(),
        });
    }
    let proc_root = PathBuf::from(format!("/proc/{pid}/root"));
    let root_fd = open_dir(&proc_root).map_err(|source| ResolveError::Root {
        pid,
        path: proc_root.clone(),
        source,
    })?;
    let rel = rootfs.strip_prefix("/").unwrap_or(rootfs);
    if rel.as_os_str().is_empty() {
        return Ok((root_fd, true));
    }
    // Resolve the rootfs path inside the pid's mount namespace, never
    // escaping it.
    match open_in_root(root_fd.as_fd(), rel, true) {
        Ok(fd) => {
            let (inner, _) = FileId::of(fd.as_fd()).map_err(|source| ResolveError::Root {
                pid,
                path: rootfs.to_path_buf(),
                source,
            })?;
            let (outer, _) = FileId::of(root_fd.as_fd()).map_err(|source| ResolveError::Root {
                pid,
                path: proc_root.clone(),
                source,
            })?;
            if inner == outer {
                Ok((root_fd, true))
            } else {
                Ok((fd, false))
            }
        }
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => Ok((root_fd, true)),
        Err(source) => Err(ResolveError::Root {
            pid,
            path: proc_root.join(rel),
            source,
        }),
    }
}

/// Open `rel` under `root` without ever leaving it. Symlinks are followed,
/// but `..` and absolute targets are clamped to `root`. The open never
/// blocks (fifos) and never becomes a controlling tty.
pub fn open_in_root(root: BorrowedFd<'_>, rel: &Path, dir: bool) -> Result<OwnedFd, Errno> {
    in_root(
        root,
        rel,
        dir,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
    )
}

/// [`open_in_root`] with `O_PATH`: for what is only marked, stat'ed or
/// used as a directory to open from. Such an open reads nothing, so it
/// reports no open to any fanotify group (a file in a marked directory
/// would otherwise be a permission event of the daemon's own), and on an
/// overlay it opens no backing file.
pub fn path_in_root(root: BorrowedFd<'_>, rel: &Path, dir: bool) -> Result<OwnedFd, Errno> {
    // openat2 takes nothing but these beside O_PATH.
    in_root(root, rel, dir, OFlag::O_PATH | OFlag::O_CLOEXEC)
}

fn in_root(
    root: BorrowedFd<'_>,
    rel: &Path,
    dir: bool,
    mut flags: OFlag,
) -> Result<OwnedFd, Errno> {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    let rel: &Path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    if dir {
        flags |= OFlag::O_DIRECTORY;
    }
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root, rel, how)
}

/// A path inside the container that exists, opened (`O_PATH`: see
/// [`path_in_root`]).
#[derive(Debug)]
pub struct Found {
    /// The canonical container path, as the pattern spelled it with
    /// wildcards filled in from the directory (raw bytes).
    pub path: PathBuf,
    pub fd: OwnedFd,
    pub id: FileId,
    pub is_dir: bool,
}

/// Case-insensitive, `*`/`?` wildcard match of one path component.
fn component_matches(pattern: &[u8], name: &[u8]) -> bool {
    // Iterative wildcard match with backtracking on the last `*`.
    let (mut p, mut n) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p].eq_ignore_ascii_case(&name[n])) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = n;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> Vec<OsString> {
    // A fresh open of "." (the fd may be O_PATH, or shared): its own file
    // position. Read with getdents64 straight into one buffer: four
    // syscalls a directory, where `nix::dir::Dir` spent eight (fstat, two
    // fcntl, a rewind).
    let Ok(fd) = nix::fcntl::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return Vec::new();
    };
    read_dir_fd(fd.as_fd())
}

/// The names in directory `fd`, read from its current position: for a
/// directory opened (not `O_PATH`) by the caller alone and not read yet.
fn read_dir_fd(fd: BorrowedFd<'_>) -> Vec<OsString> {
    let mut out = Vec::new();
    read_dirents(fd, |name, _| out.push(name.to_os_string()));
    out
}

/// [`read_dir_fd`] with each entry's `d_type` (`DT_LNK` is 10): what a
/// caller that skips some kinds needs without a `stat` per name.
pub(crate) fn read_dir_typed(fd: BorrowedFd<'_>) -> Vec<(OsString, u8)> {
    let mut out = Vec::new();
    read_dirents(fd, |name, kind| out.push((name.to_os_string(), kind)));
    out
}

/// Every entry of directory `fd` from its current position, at most
/// [`MAX_DIR_ENTRIES`], with `getdents64` straight into one buffer.
fn read_dirents(fd: BorrowedFd<'_>, mut each: impl FnMut(&OsStr, u8)) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut seen = 0usize;
    while seen < MAX_DIR_ENTRIES {
        // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`,
        // which we own, from the directory `fd`, which the caller owns.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n <= 0 {
            break;
        }
        let n = (n as usize).min(buf.len());
        each_dirent(&buf[..n], |name, kind| {
            if seen < MAX_DIR_ENTRIES {
                seen += 1;
                each(name, kind);
            }
        });
    }
}

/// The names in a buffer of `linux_dirent64` records (`d_ino` u64, `d_off`
/// i64, `d_reclen` u16, `d_type` u8, then the NUL-terminated name),
/// without `.` and `..`. A record whose length does not fit ends the
/// walk.
pub fn parse_dirents(buf: &[u8], out: &mut Vec<OsString>) {
    each_dirent(buf, |name, _| out.push(name.to_os_string()));
}

fn each_dirent(mut buf: &[u8], mut each: impl FnMut(&OsStr, u8)) {
    const HEAD: usize = 19;
    while buf.len() >= HEAD {
        let reclen = u16::from_ne_bytes([buf[16], buf[17]]) as usize;
        if reclen < HEAD || reclen > buf.len() {
            break;
        }
        let raw = &buf[HEAD..reclen];
        let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
        if !name.is_empty() && name != b"." && name != b".." {
            each(OsStr::from_bytes(name), buf[18]);
        }
        buf = &buf[reclen..];
    }
}

/// A pattern's (or a path's) components, empty ones dropped.
pub fn components(pattern: &str) -> Vec<&[u8]> {
    path_names(Path::new(pattern))
}

/// A container path's names, in order (`/home/u5` is `home`, `u5`).
pub fn path_names(path: &Path) -> Vec<&[u8]> {
    path.as_os_str()
        .as_bytes()
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect()
}

/// What is left of `pattern` below a container path whose names are
/// `names` ([`path_names`]): the pattern's components after those that
/// match the names, if they all do (an empty rest when the path matches
/// the whole pattern); `None` when the path is not on the pattern's way,
/// or goes past its end.
pub fn rest_below<'p, C: AsRef<[u8]>>(pattern: &'p [C], names: &[&[u8]]) -> Option<&'p [C]> {
    if names.len() > pattern.len() {
        return None;
    }
    names
        .iter()
        .zip(pattern)
        .all(|(n, p)| component_matches(p.as_ref(), n))
        .then(|| &pattern[names.len()..])
}

/// Expand an EQL-style pattern (`*`, `?`, case-insensitive per component)
/// against the tree under `root`, returning every existing match, opened.
///
/// EQL's `*` can also cross `/`; for marking we expand it within one
/// component, which covers every shipped pattern (`/home/*/.ssh/...`).
pub fn expand(root: BorrowedFd<'_>, pattern: &str) -> Vec<Found> {
    Expander::new(root).expand(pattern)
}

/// Expands many patterns under one root, listing each directory once: the
/// shipped patterns share most of their directories (`/`, `/root`, `/home`,
/// every home), and a registration expands dozens of them.
pub struct Expander<'a> {
    root: BorrowedFd<'a>,
    listings: std::collections::HashMap<PathBuf, std::rc::Rc<Vec<OsString>>>,
    /// Directories opened on the way to a match, shared by the patterns
    /// that pass through them (`/root`, `/home/*/.ssh`): each was opened
    /// again per pattern, 200 of the ~450 `openat2` calls of a start.
    dirs: std::collections::HashMap<PathBuf, Option<std::rc::Rc<OwnedFd>>>,
    /// Whether a bound cut an expansion short ([`MAX_EXPANSION`] paths for
    /// one pattern, [`MAX_DIR_ENTRIES`] entries of one directory).
    truncated: bool,
}

impl<'a> Expander<'a> {
    pub fn new(root: BorrowedFd<'a>) -> Self {
        Self {
            root,
            listings: std::collections::HashMap::new(),
            dirs: std::collections::HashMap::new(),
            truncated: false,
        }
    }

    /// Whether a bound cut any expansion of this expander short.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// A directory on the way, opened for reading (not `O_PATH`): it is
    /// listed through this fd, and marked through it when it is a match.
    /// Opening a directory reports nothing here: no mark asks for
    /// `FAN_ONDIR`, and overlayfs opens no backing file for it.
    fn dir(&mut self, path: &Path) -> Option<std::rc::Rc<OwnedFd>> {
        let root = self.root;
        self.dirs
            .entry(path.to_path_buf())
            .or_insert_with(|| open_in_root(root, path, true).ok().map(std::rc::Rc::new))
            .clone()
    }

    /// The names in the directory `path`: through `own`, a directory fd of
    /// this expander's not read yet ([`Expander::dir`]), or, for the root
    /// (shared by the caller), a fresh open.
    fn listing(
        &mut self,
        path: &Path,
        dir: BorrowedFd<'_>,
        own: bool,
    ) -> std::rc::Rc<Vec<OsString>> {
        let truncated = &mut self.truncated;
        self.listings
            .entry(path.to_path_buf())
            .or_insert_with(|| {
                let names = if own { read_dir_fd(dir) } else { list_dir(dir) };
                if names.len() >= MAX_DIR_ENTRIES {
                    *truncated = true;
                }
                std::rc::Rc::new(names)
            })
            .clone()
    }

    /// Every existing match of `pattern`, opened.
    pub fn expand(&mut self, pattern: &str) -> Vec<Found> {
        self.expand_below(Path::new("/"), &components(pattern))
    }

    /// Every existing match of the pattern components `rest` below the
    /// container path `base` (whose own components are taken as they are,
    /// not as a pattern); an empty `rest` is `base` itself, if it exists.
    /// This is the work a create event makes: what the patterns want
    /// below the one entry that was made.
    pub fn expand_below<C: AsRef<[u8]>>(&mut self, base: &Path, rest: &[C]) -> Vec<Found> {
        self.walk(base, rest, false)
            .into_iter()
            .filter_map(|(path, fd)| {
                // The last component (or `base` itself, for an empty
                // `rest`) was opened for this pattern alone, so the fd is
                // not shared.
                let fd = std::rc::Rc::try_unwrap(fd?).ok()?;
                let (id, is_dir) = FileId::of(fd.as_fd()).ok()?;
                Some(Found {
                    path,
                    fd,
                    id,
                    is_dir,
                })
            })
            .collect()
    }

    /// The directories among the matches of `rest` below `base`, through
    /// this expander's own directory fds: those the expansion of other
    /// patterns opened on its way are not opened again (a registration's
    /// create marks are on the very directories its credential patterns
    /// walk through).
    pub fn expand_dirs_below<C: AsRef<[u8]>>(
        &mut self,
        base: &Path,
        rest: &[C],
    ) -> Vec<(std::rc::Rc<OwnedFd>, FileId, PathBuf)> {
        self.walk(base, rest, true)
            .into_iter()
            .filter_map(|(path, fd)| {
                let fd = fd?;
                match FileId::of(fd.as_fd()) {
                    Ok((id, true)) => Some((fd, id, path)),
                    _ => None,
                }
            })
            .collect()
    }

    /// The matches of `rest` below `base`, each with its fd: the last
    /// component opened `O_PATH` for the caller alone, or, with
    /// `dirs_only`, as (shared) directories of this expander.
    fn walk<C: AsRef<[u8]>>(
        &mut self,
        base: &Path,
        rest: &[C],
        dirs_only: bool,
    ) -> Vec<(PathBuf, Option<std::rc::Rc<OwnedFd>>)> {
        let root = self.root;
        let base_is_root = base
            .components()
            .all(|c| c == std::path::Component::RootDir);
        let start = if base_is_root {
            None
        } else if rest.is_empty() {
            let Some(fd) = path_in_root(root, base, false).ok() else {
                return Vec::new();
            };
            Some(std::rc::Rc::new(fd))
        } else {
            match self.dir(base) {
                Some(fd) => Some(fd),
                None => return Vec::new(),
            }
        };
        if rest.is_empty() && base_is_root {
            return Vec::new();
        }
        // Frontier of (canonical path so far, dir fd).
        let mut frontier: Vec<(PathBuf, Option<std::rc::Rc<OwnedFd>>)> =
            vec![(base.to_path_buf(), start)];
        let comps = rest;
        for (i, comp) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            let mut next = Vec::new();
            for (prefix, dirfd) in frontier {
                let (dir, own) = match &dirfd {
                    Some(fd) => (fd.as_fd(), true),
                    None => (root, false),
                };
                // List the directory so the match is case-insensitive, as
                // EQL's `:` is: `/ROOT/.SSH/ID_RSA` matches `/root/.ssh/id_rsa`.
                for name in self.listing(&prefix, dir, own).iter() {
                    if !component_matches(comp.as_ref(), name.as_bytes()) {
                        continue;
                    }
                    let path = prefix.join(name);
                    // Open from the container's root, not from `dir`, so an
                    // absolute symlink inside the container resolves as the
                    // container sees it (and still never leaves the root).
                    let fd = if last && !dirs_only {
                        path_in_root(root, Path::new(&path), false)
                            .ok()
                            .map(std::rc::Rc::new)
                    } else {
                        self.dir(&path)
                    };
                    let Some(fd) = fd else {
                        continue;
                    };
                    if next.len() < MAX_EXPANSION {
                        next.push((path, Some(fd)));
                    } else {
                        self.truncated = true;
                    }
                }
            }
            frontier = next;
            if frontier.is_empty() {
                break;
            }
        }
        frontier
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn component_wildcards_are_case_insensitive() {
        assert!(component_matches(b"*", b"alice"));
        assert!(component_matches(b".SSH", b".ssh"));
        assert!(component_matches(b"id_*", b"id_rsa"));
        assert!(component_matches(b"a?c", b"abc"));
        assert!(!component_matches(b"a?c", b"ac"));
        assert!(!component_matches(b"id_rsa", b"id_rsa.pub"));
        assert!(component_matches(b"*.pub", b"id_rsa.pub"));
    }

    #[test]
    fn expand_finds_files_and_never_leaves_the_root() {
        let dir = tempdir();
        let tmp = dir.path();
        let root = tmp.join("rootfs");
        fs::create_dir_all(root.join("home/alice/.ssh")).unwrap();
        fs::create_dir_all(root.join("home/bob/.ssh")).unwrap();
        fs::write(root.join("home/alice/.ssh/id_rsa"), "k").unwrap();
        fs::write(tmp.join("outside"), "host secret").unwrap();
        // bob's key is a symlink that tries to escape to the host.
        std::os::unix::fs::symlink("../../../../outside", root.join("home/bob/.ssh/id_rsa"))
            .unwrap();
        std::os::unix::fs::symlink(tmp.join("outside"), root.join("home/bob/.ssh/id_ed25519"))
            .unwrap();
        let fd = open_dir(&root).unwrap();
        let found = expand(fd.as_fd(), "/home/*/.ssh/id_rsa");
        let paths: Vec<&Path> = found.iter().map(|f| f.path.as_path()).collect();
        assert_eq!(paths, [Path::new("/home/alice/.ssh/id_rsa")]);
        assert!(expand(fd.as_fd(), "/home/*/.ssh/id_ed25519").is_empty());
        let dirs = expand(fd.as_fd(), "/home/*/.ssh");
        assert_eq!(dirs.len(), 2);
        assert!(dirs.iter().all(|d| d.is_dir));
    }

    #[test]
    fn container_root_before_pivot_is_the_rootfs() {
        let dir = tempdir();
        let tmp = dir.path();
        fs::create_dir_all(tmp.join("rootfs")).unwrap();
        let me = std::process::id() as i32;
        let (fd, pivoted) = container_root(me, &tmp.join("rootfs")).unwrap();
        assert!(!pivoted);
        let want = fs::metadata(tmp.join("rootfs")).unwrap();
        let (got, _) = FileId::of(fd.as_fd()).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((got.dev, got.ino), (want.dev(), want.ino()));
        let (_, pivoted) = container_root(me, &tmp.join("gone")).unwrap();
        assert!(pivoted);
        assert!(container_root(me, Path::new("rel")).is_err());
    }

    #[test]
    fn dirent_records_give_their_names_and_stop_at_a_broken_one() {
        let rec = |name: &[u8]| {
            let mut r = vec![0u8; 19];
            r.extend_from_slice(name);
            r.push(0);
            while !r.len().is_multiple_of(8) {
                r.push(0);
            }
            let len = r.len() as u16;
            r[16..18].copy_from_slice(&len.to_ne_bytes());
            r
        };
        let mut buf = Vec::new();
        for n in [&b"."[..], b"..", b"id_rsa", b"\xff\xfe"] {
            buf.extend(rec(n));
        }
        let mut broken = rec(b"never");
        broken[16..18].copy_from_slice(&400u16.to_ne_bytes());
        buf.extend(broken);
        let mut out = Vec::new();
        parse_dirents(&buf, &mut out);
        let names: Vec<&[u8]> = out.iter().map(|n| n.as_bytes()).collect();
        assert_eq!(names, [&b"id_rsa"[..], b"\xff\xfe"]);
    }

    #[test]
    fn a_listing_reads_every_entry_once() {
        let dir = tempdir();
        for i in 0..700 {
            fs::write(dir.path().join(format!("f{i}")), "").unwrap();
        }
        let fd = open_dir(dir.path()).unwrap();
        let mut names = list_dir(fd.as_fd());
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 700);
    }

    fn tempdir() -> crate::testdir::TempDir {
        crate::testdir::TempDir::new(&format!("resolve-{:?}", std::thread::current().id()))
    }
}
