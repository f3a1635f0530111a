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
//! version (dev, ino, ctime) and cached.
//!
//! What a container's image teaches is kept in that container's scope: it
//! decides for that container only, and never outweighs the host's.
//!
//! A container's image is learned after its hook has been answered (the
//! learning is half a millisecond of directory listings that the start
//! need not wait for): the registration [`Identities::expect`]s it first,
//! and until [`Identities::learn_expected`] is done, a decision about that
//! container's processes waits for it (bounded by [`LEARN_WAIT`]), and the
//! exec path probes every ELF (probing more costs a probe, never a
//! verdict). The container's first process runs milliseconds after the
//! hook returns, by then the learning is long done.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::{Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

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
/// How long after its learning began (at the registration, and again as
/// the learning itself starts after the reply) a container's image may
/// keep that container's decisions waiting; at most a quarter of the
/// permission deadline ([`Identities::set_deadline`]). The learning is
/// about 0.5 ms and starts as the hook is answered, milliseconds before
/// the container's first process; the bound only matters for an image
/// made to be slow to list (its decisions then go on with the host's
/// archivers alone, counted in [`Identities::learn_timeouts`]). It is
/// counted per learning, not per decision, so such an image holds the
/// answering thread, which serves every container, for about this long
/// at most (twice, for decisions that began waiting before the learning
/// started).
pub const LEARN_WAIT: Duration = Duration::from_millis(50);
/// `d_type` of a symbolic link in a `getdents64` record.
const DT_LNK: u8 = 10;

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

/// Archiver build-ids learned from one root.
#[derive(Debug, Default)]
struct Scope {
    known: HashMap<Vec<u8>, String>,
    /// Build-ids seen under more than one name: multi-call binaries.
    multi: HashSet<Vec<u8>>,
}

impl Scope {
    /// Add what one learning pass found; true if anything changed.
    fn add(&mut self, busybox: Option<Vec<u8>>, found: Vec<(String, Vec<u8>)>) -> bool {
        // Entries are only ever added, or moved from `known` to `multi`, so
        // the sizes tell whether anything changed.
        let before = (self.known.len(), self.multi.len());
        if let Some(b) = busybox {
            self.known.remove(&b);
            self.multi.insert(b);
        }
        for (name, id) in found {
            if self.multi.contains(&id) {
                continue;
            }
            match self.known.get(&id) {
                Some(other) if *other != name => {
                    self.known.remove(&id);
                    self.multi.insert(id);
                }
                _ => {
                    self.known.insert(id, name);
                }
            }
        }
        (self.known.len(), self.multi.len()) != before
    }
}

/// A file's version: its inode and change time. Any write, truncate,
/// chmod or rename-over changes the ctime, so a binary rewritten in place
/// is hashed again.
type Version = (FileId, i64, i64);

/// What names one file's content for its build-id: inode number, size and
/// change time to the nanosecond, without the device. An overlay gives each
/// container's view of one image layer a device of its own, so with the
/// device every container start read its image's archivers again; the
/// change time is set by the kernel at every change, so no other file has
/// all three by chance or by a container's doing.
type ContentKey = (u64, u64, i64, i64);

/// Known archiver build-ids, the host's and each container's apart, and a
/// cache of executables already hashed.
///
/// Scoped so that nothing a container holds changes another container's
/// decisions, and nothing it holds demotes what the host says: a container
/// that ships gzip's binary under a second archiver name makes that
/// build-id multi-call in its own scope only, and the host's gzip stays
/// gzip everywhere, that container included.
#[derive(Debug, Default)]
pub struct Identities {
    /// Bumped whenever a scope changes, so verdicts made from them
    /// (`exe::ExeClasses`) are made again.
    generation: std::sync::atomic::AtomicU64,
    host: RwLock<Scope>,
    containers: RwLock<HashMap<String, Scope>>,
    cache: Mutex<HashMap<ContentKey, Option<Vec<u8>>>>,
    /// SHA-256 of executables, for exceptions that name content.
    digests: Mutex<HashMap<Version, Option<[u8; 32]>>>,
    /// Containers whose image is still to be learned, each with the token
    /// of the registration that expects it and when it did.
    pending: Mutex<HashMap<String, (u64, Instant)>>,
    /// Signalled whenever a pending learning ends.
    learned: Condvar,
    /// The last token handed out.
    tokens: std::sync::atomic::AtomicU64,
    /// Decisions that stopped waiting for a container's learning.
    learn_timeouts: std::sync::atomic::AtomicU64,
    /// Whether [`Identities::watches_build_id`] said yes for a pending
    /// learning's sake: the verdicts made from it are made again once the
    /// learning is done (a bump), and only then.
    answered_pending: std::sync::atomic::AtomicBool,
    /// The wait bound in microseconds, if the deadline lowered it below
    /// [`LEARN_WAIT`] (0: not lowered).
    learn_wait_us: std::sync::atomic::AtomicU64,
}

/// What a scan of one root found: busybox's build-id, and each
/// archiver's (name, build-id).
type Scanned = (Option<Vec<u8>>, Vec<(String, Vec<u8>)>);

/// A container's learning, expected by its registration: handed to
/// [`Identities::learn_expected`] once the hook has its reply.
#[derive(Debug, PartialEq, Eq)]
pub struct Expected {
    pub container: String,
    token: u64,
}

/// Executables larger than this are not hashed for exceptions (an
/// exception that names a digest then does not match, so the process is
/// judged as if there were none): hashing runs on a decision thread, once
/// per file version, and 16 MiB is 13 ms of it in a release build here
/// (SHA-NI), 680 ms in a debug one.
/// A bigger bound would let a padded impostor stall decisions past the
/// watchdog, which allows what it releases.
const MAX_HASH_BYTES: u64 = 16 * 1024 * 1024;

fn version_of(f: &File) -> Option<Version> {
    use std::os::unix::fs::MetadataExt;
    let meta = f.metadata().ok()?;
    Some((
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        },
        meta.ctime(),
        meta.ctime_nsec(),
    ))
}

fn content_key(f: &File) -> Option<ContentKey> {
    Some(key_of(&f.metadata().ok()?))
}

fn key_of(meta: &std::fs::Metadata) -> ContentKey {
    use std::os::unix::fs::MetadataExt;
    (meta.ino(), meta.size(), meta.ctime(), meta.ctime_nsec())
}

/// A file read at positions (`pread`): a seek is no syscall, so the ELF
/// walk's seek-then-read pairs cost one each.
struct Positional<'a> {
    file: &'a File,
    at: u64,
}

impl Read for Positional<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(self.file, buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl Seek for Positional<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let at = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.at.checked_add_signed(d),
            SeekFrom::End(d) => self.file.metadata()?.len().checked_add_signed(d),
        };
        self.at = at.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        Ok(self.at)
    }
}

/// Look `version` up in `cache`, or compute and keep it (the cache is
/// emptied when full).
fn cached<K: std::hash::Hash + Eq, T: Clone>(
    cache: &Mutex<HashMap<K, T>>,
    version: K,
    make: impl FnOnce() -> T,
) -> T {
    if let Some(v) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&version)
    {
        return v.clone();
    }
    let v = make();
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    if c.len() >= CACHE_MAX {
        c.clear();
    }
    c.insert(version, v.clone());
    v
}

/// A regular file under `root`, with its content key (one `statx` for
/// both).
fn open_regular(root: BorrowedFd<'_>, rel: &Path) -> Option<(File, ContentKey)> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let fd = openat2(root, rel, how).ok()?;
    let f = File::from(fd);
    let meta = f.metadata().ok().filter(|m| m.is_file())?;
    Some((f, key_of(&meta)))
}

impl Identities {
    /// Learn the archivers under `root` for the archiver `names`: the
    /// host's (`container` `None`, the host's `/`) or one container's
    /// (its root).
    pub fn learn(&self, root: BorrowedFd<'_>, names: &[String], container: Option<&str>) {
        if self.add(container, self.scan(root, names)) {
            self.bump();
        }
    }

    /// Add what a scan found to the host's scope or one container's; true
    /// if anything changed.
    fn add(&self, container: Option<&str>, (busybox, found): Scanned) -> bool {
        match container {
            None => self
                .host
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .add(busybox, found),
            Some(id) => self
                .containers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(id.to_string())
                .or_default()
                .add(busybox, found),
        }
    }

    /// Note that container `id`'s image will be learned
    /// ([`Identities::learn_expected`]); until then its decisions wait for
    /// it. A second registration of the same id replaces the first's
    /// expectation.
    pub fn expect(&self, id: &str) -> Expected {
        let token = self
            .tokens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        self.pending()
            .insert(id.to_string(), (token, Instant::now()));
        Expected {
            container: id.to_string(),
            token,
        }
    }

    /// Bound the learning wait by the permission `deadline`: a quarter of
    /// it, so a decision that waits is still answered by itself, not
    /// released by the watchdog.
    pub fn set_deadline(&self, deadline: Duration) {
        let us = (deadline / 4).min(LEARN_WAIT).as_micros() as u64;
        self.learn_wait_us
            .store(us.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// How long decisions wait for a learning ([`LEARN_WAIT`], or less).
    pub fn learn_wait(&self) -> Duration {
        match self
            .learn_wait_us
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => LEARN_WAIT,
            us => Duration::from_micros(us),
        }
    }

    /// Learn the image of an expected container, and let its decisions
    /// go on. Nothing is kept if the container was forgotten (or
    /// registered again) meanwhile: its scope must not outlive it.
    pub fn learn_expected(&self, root: BorrowedFd<'_>, names: &[String], expected: Expected) {
        // The wait is counted from now: the marks, the record and the
        // reply before this must not use it up on a busy machine.
        if let Some(p) = self.pending().get_mut(&expected.container)
            && p.0 == expected.token
        {
            p.1 = Instant::now();
        }
        let scanned = self.scan(root, names);
        self.settle(&expected, Some(scanned));
    }

    /// Give up an expectation (the registration failed after it).
    pub fn unexpect(&self, expected: &Expected) {
        self.settle(expected, None);
    }

    /// End an expectation, with what its learning found if it ran, and
    /// let the decisions waiting for it go on. Only the registration's
    /// own (current) expectation keeps what was found.
    fn settle(&self, expected: &Expected, scanned: Option<Scanned>) {
        let mut pending = self.pending();
        if pending
            .get(&expected.container)
            .is_some_and(|p| p.0 == expected.token)
        {
            let changed = scanned.is_some_and(|s| self.add(Some(&expected.container), s));
            pending.remove(&expected.container);
            // Also when the exec path classed an ELF as watched while this
            // was pending: that verdict must be made again.
            let answered = self.take_answered();
            if changed || answered {
                self.bump();
            }
        }
        drop(pending);
        self.learned.notify_all();
    }

    /// Whether [`Identities::watches_build_id`] said yes for a pending
    /// learning's sake since the last time this was asked.
    fn take_answered(&self) -> bool {
        self.answered_pending
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Wait until container `id`'s image is learned, if it is expected,
    /// and at most until [`LEARN_WAIT`] after its learning began.
    fn wait_learned(&self, id: &str) {
        let mut pending = self.pending();
        let Some(&(_, since)) = pending.get(id) else {
            return;
        };
        let until = since + self.learn_wait();
        while pending.contains_key(id) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.learn_timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            pending = self
                .learned
                .wait_timeout(pending, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Decisions that stopped waiting for a container's learning
    /// ([`LEARN_WAIT`]).
    pub fn learn_timeouts(&self) -> u64 {
        self.learn_timeouts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The archivers (and busybox) in the usual binary directories under
    /// `root`.
    fn scan(&self, root: BorrowedFd<'_>, names: &[String]) -> Scanned {
        let mut found: Vec<(String, Vec<u8>)> = Vec::new();
        let mut busybox = None;
        for dir in BIN_DIRS {
            let rel = Path::new(dir.trim_start_matches('/'));
            // List each directory once and open only the names present:
            // probing every archiver name in every directory cost ~160
            // failed opens per container start. The directory is ours and
            // unread, so it is listed from its own fd.
            let Ok(dirfd) = crate::watch::resolve::open_in_root(root, rel, true) else {
                continue;
            };
            for (entry, kind) in crate::watch::resolve::read_dir_typed(dirfd.as_fd()) {
                // A link is never followed (a busybox image's /bin is
                // hundreds of them): skip the open that would refuse it.
                if kind == DT_LNK {
                    continue;
                }
                let entry = entry.to_string_lossy();
                // Read once per file content, whichever container's view.
                let id = || {
                    open_regular(root, &rel.join(&*entry))
                        .and_then(|(f, key)| self.build_id_keyed(&f, key))
                };
                if entry == "busybox" {
                    busybox = id().or(busybox);
                } else if let Some(name) = names.iter().find(|n| n.eq_ignore_ascii_case(&entry)) {
                    found.extend(id().map(|id| (name.to_ascii_lowercase(), id)));
                }
            }
        }
        (busybox, found)
    }

    /// The expected learnings (a poisoned lock still holds them).
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Instant)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Forget what container `id` taught (it went), and any learning
    /// still expected for it.
    pub fn forget(&self, id: &str) {
        let was_pending = self.pending().remove(id).is_some();
        if was_pending {
            self.learned.notify_all();
        }
        let removed = self
            .containers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let answered = was_pending && self.take_answered();
        if removed.is_some() || answered {
            self.bump();
        }
    }

    /// Whether a build-id may be an archiver's or a multi-call binary's in
    /// some scope: the exec path probes such executables (probing more
    /// than needed costs a probe, never a verdict). While any container's
    /// image is still to be learned, every build-id may be.
    pub fn watches_build_id(&self, id: &[u8]) -> bool {
        // Only learnings still within their wait: one stuck past it (an
        // image whose listing hangs) no longer holds decisions, and must
        // not keep every exec on the host probed either.
        let pending = self.pending();
        let wait = self.learn_wait();
        if pending.values().any(|(_, since)| since.elapsed() < wait) {
            // Under the lock, so the learning that ends next sees it.
            self.answered_pending
                .store(true, std::sync::atomic::Ordering::Release);
            return true;
        }
        drop(pending);
        let host = self.host.read().unwrap_or_else(|e| e.into_inner());
        if host.known.contains_key(id) || host.multi.contains(id) {
            return true;
        }
        self.containers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|s| s.known.contains_key(id) || s.multi.contains(id))
    }

    /// Whether a build-id is a multi-call binary's: the host's busybox or
    /// one the host saw under two archiver names; a container's only when
    /// no scope knows it as an archiver, so no container can make another
    /// container's renamed archiver pass for a busybox applet.
    pub fn is_multicall(&self, id: &[u8]) -> bool {
        let host = self.host.read().unwrap_or_else(|e| e.into_inner());
        if host.multi.contains(id) {
            return true;
        }
        if host.known.contains_key(id) {
            return false;
        }
        let containers = self.containers.read().unwrap_or_else(|e| e.into_inner());
        !containers.values().any(|s| s.known.contains_key(id))
            && containers.values().any(|s| s.multi.contains(id))
    }

    /// Changes whenever the known identities change.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Learn the host's archivers.
    pub fn learn_host(&self, names: &[String]) {
        if let Ok(root) = File::open("/") {
            self.learn(root.as_fd(), names, None);
        }
    }

    /// The archiver `pid` is running, by content, if it is one, as the
    /// host and `container` (the process's own) know archivers.
    pub fn archiver_of(&self, pid: i32, container: Option<&str>) -> Option<String> {
        let f = File::open(format!("/proc/{pid}/exe")).ok()?;
        self.archiver_of_file(&f, container)
    }

    /// The archiver the file `f` is, by content, as the host and
    /// `container` know archivers: the host first (a container cannot
    /// demote it), then the container's own image.
    pub fn archiver_of_file(&self, f: &File, container: Option<&str>) -> Option<String> {
        let id = self.build_id_of(f)?;
        let host = self.host.read().unwrap_or_else(|e| e.into_inner());
        if let Some(name) = host.known.get(&id) {
            return Some(name.clone());
        }
        if host.multi.contains(&id) {
            return None;
        }
        drop(host);
        let container = container?;
        self.wait_learned(container);
        let containers = self.containers.read().unwrap_or_else(|e| e.into_inner());
        let scope = containers.get(container)?;
        scope.known.get(&id).cloned()
    }

    /// The build-id of `f`, hashed once per version of the file.
    fn build_id_of(&self, f: &File) -> Option<Vec<u8>> {
        self.build_id_keyed(f, content_key(f)?)
    }

    /// [`Identities::build_id_of`] for a file whose content key is known.
    fn build_id_keyed(&self, f: &File, key: ContentKey) -> Option<Vec<u8>> {
        cached(&self.cache, key, || {
            build_id(&mut Positional { file: f, at: 0 })
        })
    }

    /// The SHA-256 of the whole file `f`, once per version of the file;
    /// `None` past [`MAX_HASH_BYTES`] or on a read error.
    pub fn sha256_of(&self, f: &File) -> Option<[u8; 32]> {
        use sha2::Digest;
        cached(&self.digests, version_of(f)?, || {
            if f.metadata().ok()?.len() > MAX_HASH_BYTES {
                return None;
            }
            let mut h = sha2::Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            // Read from the start whatever the fd's offset: a fresh
            // handle on the same open file description would share it.
            let mut off = 0u64;
            loop {
                let n = std::os::unix::fs::FileExt::read_at(f, &mut buf, off).ok()?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                off += n as u64;
            }
            Some(h.finalize().into())
        })
    }

    /// The SHA-256 of the executable the kernel runs for `pid`.
    pub fn sha256_of_exe(&self, pid: i32) -> Option<[u8; 32]> {
        let f = File::open(format!("/proc/{pid}/exe")).ok()?;
        self.sha256_of(&f)
    }

    /// How many archiver identities the host and the containers know.
    pub fn len(&self) -> usize {
        self.host
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .known
            .len()
            + self
                .containers
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .map(|s| s.known.len())
                .sum::<usize>()
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
        ids.learn(root.as_fd(), &["tar".into(), "gzip".into()], None);
        assert_eq!(ids.len(), 1);
        // Our own process runs the same content: it "is" tar.
        assert_eq!(
            ids.archiver_of(std::process::id() as i32, None).as_deref(),
            Some("tar")
        );
        std::fs::write(dir.join("usr/bin/gzip"), &me).unwrap();
        ids.learn(root.as_fd(), &["tar".into(), "gzip".into()], None);
        assert!(ids.is_empty(), "one build-id under two names is multi-call");
        assert_eq!(ids.archiver_of(std::process::id() as i32, None), None);
    }

    /// A root holding this test binary under `names` in /usr/bin.
    fn root_with(tmp: &crate::testdir::TempDir, sub: &str, names: &[&str]) -> File {
        let dir = tmp.path().join(sub);
        std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
        let me = std::fs::read("/proc/self/exe").unwrap();
        for n in names {
            std::fs::write(dir.join("usr/bin").join(n), &me).unwrap();
        }
        File::open(&dir).unwrap()
    }

    #[test]
    fn what_a_container_teaches_decides_for_it_alone_and_never_demotes_the_host() {
        let tmp = crate::testdir::TempDir::new("ident-scope");
        let names: Vec<String> = ["tar", "gzip", "bzip2"].map(String::from).to_vec();
        let me = File::open("/proc/self/exe").unwrap();
        let ids = Identities::default();
        // Container b's image has this binary as tar; container a ships it
        // under two archiver names (a multi-call binary, in a only).
        ids.learn(root_with(&tmp, "b", &["tar"]).as_fd(), &names, Some("b"));
        ids.learn(
            root_with(&tmp, "a", &["tar", "bzip2"]).as_fd(),
            &names,
            Some("a"),
        );
        assert_eq!(ids.archiver_of_file(&me, Some("b")).as_deref(), Some("tar"));
        assert_eq!(ids.archiver_of_file(&me, Some("a")), None);
        assert_eq!(
            ids.archiver_of_file(&me, Some("c")),
            None,
            "c learned nothing"
        );
        let id = build_id(&mut File::open("/proc/self/exe").unwrap()).unwrap();
        assert!(
            !ids.is_multicall(&id),
            "b knows it: a cannot make it an applet"
        );
        assert!(ids.watches_build_id(&id));
        // The host has it as gzip: every container sees gzip, a included,
        // and nothing a container ships demotes it.
        ids.learn(root_with(&tmp, "host", &["gzip"]).as_fd(), &names, None);
        ids.learn(
            root_with(&tmp, "a2", &["gzip", "tar"]).as_fd(),
            &names,
            Some("a"),
        );
        for c in ["a", "b", "c"] {
            assert_eq!(
                ids.archiver_of_file(&me, Some(c)).as_deref(),
                Some("gzip"),
                "{c}"
            );
        }
        ids.forget("b");
        ids.forget("a");
        assert_eq!(ids.len(), 1);
    }

    #[test]
    fn a_decision_waits_for_its_containers_image_and_no_other() {
        let tmp = crate::testdir::TempDir::new("ident-expect");
        let names: Vec<String> = vec!["tar".into()];
        let ids = Identities::default();
        let root = root_with(&tmp, "c", &["tar"]);
        let expected = ids.expect("c");
        // While c is expected, the exec path probes every ELF, and the
        // verdicts made so are made again once c is learned.
        assert!(ids.watches_build_id(b"not an archiver's build-id"));
        let during = ids.generation();
        std::thread::scope(|s| {
            let decision = s.spawn(|| {
                let me = File::open("/proc/self/exe").unwrap();
                ids.archiver_of_file(&me, Some("c"))
            });
            // Another container's decision does not wait for c.
            let me = File::open("/proc/self/exe").unwrap();
            let other = Instant::now();
            assert_eq!(ids.archiver_of_file(&me, Some("d")), None);
            assert!(other.elapsed() < LEARN_WAIT);
            std::thread::sleep(Duration::from_millis(5));
            ids.learn_expected(root.as_fd(), &names, expected);
            // Asked before c was learned, answered from what c teaches.
            assert_eq!(decision.join().unwrap().as_deref(), Some("tar"));
        });
        assert_eq!(ids.learn_timeouts(), 0);
        assert!(ids.generation() > during);
        assert!(!ids.watches_build_id(b"not an archiver's build-id"));

        // Learned after the decisions had to go on: counted, waited for
        // once per registration (not per decision), and nothing is kept
        // for a container forgotten meanwhile.
        let root = root_with(&tmp, "e", &["tar"]);
        let expected_at = Instant::now();
        let expected = ids.expect("e");
        let me = File::open("/proc/self/exe").unwrap();
        assert_eq!(ids.archiver_of_file(&me, Some("e")), None);
        assert!(expected_at.elapsed() >= LEARN_WAIT);
        assert_eq!(ids.learn_timeouts(), 1);
        let again = Instant::now();
        assert_eq!(ids.archiver_of_file(&me, Some("e")), None);
        assert!(again.elapsed() < LEARN_WAIT / 2, "waited again");
        assert_eq!(ids.learn_timeouts(), 2);
        ids.forget("e");
        ids.learn_expected(root.as_fd(), &names, expected);
        assert_eq!(ids.archiver_of_file(&me, Some("e")), None);

        // A registration again of the same id replaces the expectation:
        // the first's late learning does not count as the second's.
        let first = ids.expect("f");
        let second = ids.expect("f");
        ids.learn_expected(root.as_fd(), &names, first);
        assert!(ids.watches_build_id(b"still expected"));
        ids.learn_expected(root.as_fd(), &names, second);
        assert_eq!(ids.archiver_of_file(&me, Some("f")).as_deref(), Some("tar"));
        assert!(!ids.watches_build_id(b"still expected"));
    }

    #[test]
    fn what_the_exec_path_classed_while_a_learning_was_pending_is_classed_again() {
        let tmp = crate::testdir::TempDir::new("ident-rebump");
        let names: Vec<String> = vec!["tar".into()];
        let ids = Identities::default();
        // An image with no archiver teaches nothing: the generation moves
        // only if the exec path asked while it was pending.
        let empty = root_with(&tmp, "empty", &[]);
        let quiet = ids.expect("q");
        let g = ids.generation();
        ids.learn_expected(empty.as_fd(), &names, quiet);
        assert_eq!(ids.generation(), g, "nothing learned, nothing asked");
        let asked = ids.expect("a");
        assert!(ids.watches_build_id(b"x"));
        let g = ids.generation();
        ids.learn_expected(empty.as_fd(), &names, asked);
        assert!(ids.generation() > g, "asked while pending, learned nothing");
        // The same for an expectation given up, and for a container gone.
        let failed = ids.expect("f");
        assert!(ids.watches_build_id(b"x"));
        let g = ids.generation();
        ids.unexpect(&failed);
        assert!(ids.generation() > g);
        assert!(!ids.watches_build_id(b"x"));
        let _gone = ids.expect("g");
        assert!(ids.watches_build_id(b"x"));
        let g = ids.generation();
        ids.forget("g");
        assert!(ids.generation() > g);
        assert!(!ids.watches_build_id(b"x"));
    }

    #[test]
    fn a_learning_stuck_past_its_wait_holds_nothing() {
        let ids = Identities::default();
        // A 40 ms permission deadline: decisions wait a quarter of it.
        ids.set_deadline(Duration::from_millis(40));
        assert_eq!(ids.learn_wait(), Duration::from_millis(10));
        let _stuck = ids.expect("s");
        assert!(ids.watches_build_id(b"x"));
        std::thread::sleep(Duration::from_millis(12));
        // Its wait is over: the exec path is back to what scopes say, and
        // a decision neither waits nor learns anything.
        assert!(!ids.watches_build_id(b"x"));
        let me = File::open("/proc/self/exe").unwrap();
        let at = Instant::now();
        assert_eq!(ids.archiver_of_file(&me, Some("s")), None);
        assert!(at.elapsed() < Duration::from_millis(10));
        assert_eq!(ids.learn_timeouts(), 1);
        ids.set_deadline(Duration::from_secs(10));
        assert_eq!(ids.learn_wait(), LEARN_WAIT);
    }

    #[test]
    fn a_file_rewritten_in_place_is_hashed_again() {
        let tmp = crate::testdir::TempDir::new("ident-version");
        let names: Vec<String> = vec!["tar".into()];
        let ids = Identities::default();
        ids.learn(root_with(&tmp, "h", &["tar"]).as_fd(), &names, None);
        let path = tmp.path().join("x");
        std::fs::copy("/proc/self/exe", &path).unwrap();
        let f = File::open(&path).unwrap();
        assert_eq!(ids.archiver_of_file(&f, None).as_deref(), Some("tar"));
        drop(f);
        // Same inode, new content: the ctime moves, the cache misses.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"#!/bin/sh\necho not tar\n").unwrap();
        let f = File::open(&path).unwrap();
        assert_eq!(ids.archiver_of_file(&f, None), None);
    }
}
