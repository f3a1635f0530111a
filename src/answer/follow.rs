//! Follow the reader: a process that opened a credential is followed
//! until it exits, and a regular file it writes becomes a derived
//! credential ("copy of <origin>"), marked and indexed so an archiver that
//! packs the copy is judged as packing the credential (and `deny` can
//! refuse it).
//!
//! Cost only where a credential was read. The permission thread notes the
//! reader (a map insert) and, the first time a container has one, arms
//! that container's close-after-write mark in the write group (one
//! `fanotify_mark`, made while the reader is still held in `open(2)`, so
//! its first write cannot come before the mark). A container in which
//! nothing reads a credential never gets the mark and pays nothing. Once
//! armed, a container pays one notification per file closed after a
//! write; the follow thread drops those of processes it does not follow,
//! and removes the mark once the container has no reader and no tainted
//! pipe left.
//!
//! Pipes. A reader's pipe and FIFO write ends carry the credential on:
//! they are *tainted* when it is first described, and a process in the
//! same container that holds a tainted pipe's read end is followed as a
//! reader too (its source named), and judged as an archiver for what it
//! holds. Either may start first: the holders are looked for while the
//! reader is still held in `open(2)` (before any data is in the pipe, so
//! an archiver already waiting on it cannot have finished), a process
//! exec'd later on a tainted pipe is judged at its exec by what it
//! inherits, and the follow thread looks again every second while a
//! container has live taints (a FIFO opened later). Chains
//! (`cat key | base64 | gzip`) are followed up to [`MAX_HOPS`] pipes.
//!
//! A read of a name-service file (`incidental_paths`: `/etc/passwd`,
//! `/etc/group`, `/etc/hosts`) never makes a reader: every user-name
//! lookup reads them.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::stats::Stats;
use crate::alert::{Finding, Trigger};
use crate::attribute::procfs::{self, Stat};
use crate::attribute::procfs::{ProcessInfo, RawProcess};
use crate::rules::Rules;
use crate::rules::exceptions::Subject;
use crate::rules::{ArchiverHit, BEHAVIOUR_RULE_ID, Source, archive_format};
use crate::watch::fanotify::{EventSource, Group, RootEvents, exec_scope, fd_path, parse_events};
use crate::watch::index::ContainerView;
use crate::watch::index::{MarkIndex, MarkedPath};
use crate::watch::marks::MarkRecord;
use crate::watch::resolve::FileId;
use std::sync::RwLock;
use std::sync::mpsc::SyncSender;
use std::time::SystemTime;

/// How long a tainted anonymous pipe that no process of its container
/// seems to read is kept anyway. A scan lists the processes, then reads
/// each one's fds: a shell that forks a pipeline's last member after the
/// list was read and closes its own read end before its fds are read
/// makes the pipe look unread for a moment (seen in one scan in five
/// while twenty pipelines raced). The pipe a container's output goes to
/// (read by the engine, outside) is forgotten a second later instead.
const UNREAD_GRACE: Duration = Duration::from_secs(1);
/// Readers followed at once before the oldest are let go.
const MAX_READERS: usize = 16 * 1024;
/// How long a reader that exited is kept for the writes it queued.
const GONE_GRACE: Duration = Duration::from_secs(10);
/// How often readers that exited are forgotten, and containers with
/// tainted pipes looked at again.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Pipes a credential is followed through (`cat key | base64 | gzip` is
/// two).
pub const MAX_HOPS: u8 = 4;
/// Tainted pipes per container; past this, further ones are counted
/// (`pipes_dropped`) and not followed.
pub const MAX_TAINTED: usize = 1024;
/// Pipe-holder scans per container per second on the permission thread;
/// past this a container's scans wait for the follow thread's next look,
/// so a container that reads credentials in a loop cannot hold the
/// answering thread that every container shares.
pub const SCANS_PER_SEC: u32 = 8;
/// Looks at a reader's pipeline siblings per container per second, when
/// its full scans are over [`SCANS_PER_SEC`]; past this, scans wait for
/// the follow thread as before (`pipe_scans_deferred`).
pub const SIBLING_LOOKS_PER_SEC: u32 = 64;

/// A pipe or FIFO that a reader holds for writing: what it may carry.
#[derive(Debug, Clone)]
pub struct Taint {
    /// The credential, as the index names it, its origin and pattern.
    pub credential: PathBuf,
    pub origin: String,
    pub pattern: String,
    /// The reader that holds it for writing.
    pub source: Source,
    /// Whether that reader's own alert covers what comes out of the pipe:
    /// it matched a rule (an archiver by name), or read from such a pipe.
    pub in_alerted_run: bool,
    /// Pipes between the credential and this one.
    hops: u8,
    at: Instant,
    /// The source's start time: it is named again by what it runs now if
    /// it is still that process (a pipeline member described before its
    /// exec is still its shell).
    source_start: u64,
}

/// A process that read a credential.
#[derive(Debug, Clone)]
struct Reader {
    start: u64,
    container: String,
    /// The credential it read first, as the index names it, where it was
    /// found, and the pattern it matched.
    credential: PathBuf,
    origin: String,
    pattern: String,
    /// For a reader of a tainted pipe: the process it read from.
    via: Option<Source>,
    /// Pipes between the credential and this reader.
    hops: u8,
    /// The program it exec'd since it was followed (a pipeline member
    /// forked before its exec), from the exec event's file: an archiver
    /// that finishes before its exec is probed is still named.
    exec_path: Option<String>,
    /// What it was when it read (argv, executable): it may be gone when
    /// its output is judged.
    seen_as: Option<ProcessInfo>,
    /// When a sweep first found it gone. Its last writes are queued before
    /// its exit and may be read later; it is kept [`GONE_GRACE`] longer.
    gone_at: Option<Instant>,
    /// Whether an open of its already matched a rule (an archiver by name
    /// or identity): its alert is made, and a second one by behaviour
    /// would only split the run.
    matched: bool,
    /// When it read it: archive data written later than
    /// [`BEHAVIOUR_WINDOW`] after that is not tied to the credential.
    read_at: Instant,
    /// The regular files it held when it first read a credential (its
    /// stdout redirected to a file, say): a shell may have opened them and
    /// be the one whose close the kernel reports.
    outputs: Vec<FileId>,
    /// Its and its parent's executables, held open from when it was
    /// described: it is often gone when its archive is judged, and
    /// exceptions still match what it ran (path and content).
    exes: Option<std::sync::Arc<HeldExes>>,
}

impl Reader {
    /// Whether this reader made the exec of its pid read at boot tick
    /// `at`: not if it was seen gone (its pid may be another process's
    /// now), nor if it started after the exec was read.
    fn made_exec_read_at(&self, at: Option<u64>) -> bool {
        self.gone_at.is_none() && at.is_none_or(|at| at >= self.start)
    }
}

/// A reader's executables, as the kernel showed them while it ran.
#[derive(Debug)]
struct HeldExes {
    exe: Option<std::fs::File>,
    parent: Option<std::fs::File>,
    parent_path: Option<String>,
}

impl HeldExes {
    fn of(pid: i32, ppid: i32) -> Self {
        let open = |p: i32| std::fs::File::open(format!("/proc/{p}/exe")).ok();
        Self {
            exe: open(pid),
            parent: open(ppid),
            parent_path: procfs::exe(ppid)
                .ok()
                .map(|e| e.to_string_lossy().into_owned()),
        }
    }
}

/// Recent execs of processes not followed, by pid (busybox applets only
/// while some pipe is tainted): the program a process exec'd, for when it
/// is found to be a pipe reader only
/// after its exec event was read (the exec thread and the holder scans
/// race: a reader noted a moment later would otherwise never learn what it
/// runs, and if it exits at once its alert names nothing).
#[derive(Debug, Default)]
struct RecentExecs {
    /// pid → (when the exec was read, in boot ticks; the program).
    by_pid: HashMap<i32, (u64, String)>,
    /// The same, oldest first, for eviction (an entry whose pid was noted
    /// again since is skipped when it comes up).
    order: std::collections::VecDeque<(i32, u64)>,
}

/// Execs remembered at once; past this, the oldest go. A container would
/// need thousands of execs within the milliseconds a scan follows an exec
/// to push another's out while it matters.
const MAX_RECENT_EXECS: usize = 4096;
/// How long an exec is remembered for a reader noted after it, in boot
/// ticks (two seconds at the usual 100 Hz): holder scans follow a taint by
/// milliseconds.
const RECENT_EXEC_KEEP: u64 = 200;

impl RecentExecs {
    /// `pid` exec'd `path`, read at boot tick `at`.
    fn note(&mut self, pid: i32, at: u64, path: String) {
        while self.by_pid.len() >= MAX_RECENT_EXECS || self.order.len() >= 2 * MAX_RECENT_EXECS {
            let Some((old, t)) = self.order.pop_front() else {
                break;
            };
            if self.by_pid.get(&old).is_some_and(|(a, _)| *a == t) {
                self.by_pid.remove(&old);
            }
        }
        self.by_pid.insert(pid, (at, path));
        self.order.push_back((pid, at));
    }

    /// The program the process `pid` that started at boot tick `start`
    /// exec'd, if its exec was read. An exec read before that start was
    /// another process's (the pid reused); a process alive when an exec of
    /// its pid was read made it, unless the pid was reused between the
    /// exec and its reading (the exec thread's lag, within one tick).
    fn take(&mut self, pid: i32, start: u64, now: u64) -> Option<String> {
        let (at, path) = self.by_pid.remove(&pid)?;
        (at >= start && now.saturating_sub(at) <= RECENT_EXEC_KEEP).then_some(path)
    }
}

/// The digests of a reader's held executables, or, for a reader never
/// described, of what its pid runs now.
struct HeldDigests<'a> {
    identities: &'a crate::attribute::identity::Identities,
    exes: Option<&'a HeldExes>,
    pid: i32,
    ppid: i32,
}

impl crate::rules::exceptions::Digests for HeldDigests<'_> {
    fn executable(&self) -> Option<[u8; 32]> {
        match self.exes {
            Some(e) => self.identities.sha256_of(e.exe.as_ref()?),
            None => self.identities.sha256_of_exe(self.pid),
        }
    }
    fn parent_executable(&self) -> Option<[u8; 32]> {
        match self.exes {
            Some(e) => self.identities.sha256_of(e.parent.as_ref()?),
            None => self.identities.sha256_of_exe(self.ppid),
        }
    }
}

/// How long a tainted pipe is followed. The behaviour window itself
/// (how long after its credential read a reader's archive output counts
/// as an archive of that credential) is `rules.file.behaviour_window_s`,
/// 60 s by default: a long-lived service that read its own credentials at
/// start (cloud SDKs read `~/.aws/credentials`) and writes compressed logs
/// or caches later is not blamed for them.
pub const BEHAVIOUR_WINDOW: Duration = Duration::from_secs(60);

/// Most fds of a process looked at (a new reader's outputs, the pipes
/// of a pipe holder).
pub const MAX_FDS: usize = 256;

/// The credential pattern an opened marked inode makes its opener a
/// reader under: a file, not a directory, and not a name-service file.
fn reader_pattern<'r>(rules: &'r Rules, m: &MarkedPath) -> Option<&'r str> {
    if m.is_dir || rules.is_incidental_path(m.path.as_os_str()) {
        return None;
    }
    rules.credential_pattern(m.path.as_os_str())
}

/// Add (or remove) the close-after-write mark on the root `pid` sees, in
/// the scope its filesystem calls for (as the exec mark). Not `O_PATH`:
/// fanotify_mark takes no `O_PATH` descriptor.
fn mark_writes(group: &Group, pid: i32, add: bool, container: &str) -> bool {
    let Ok(root) = nix::fcntl::open(
        format!("/proc/{pid}/root").as_str(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return false;
    };
    let scope = exec_scope(root.as_fd());
    group
        .mark_root(root.as_fd(), scope, add, RootEvents::CloseWrite, container)
        .is_ok()
}

/// The regular files in `pid`'s fd table. The opener is held inside
/// `open(2)`, so its fd table is its own.
fn regular_fds(pid: i32) -> Vec<FileId> {
    procfs::open_files(pid, MAX_FDS)
        .into_iter()
        .filter(|f| f.is_file)
        .map(|f| f.id)
        .collect()
}

/// The followed readers and the containers whose writes are watched.
#[derive(Debug, Default)]
pub struct Follow {
    readers: Mutex<HashMap<i32, Reader>>,
    armed: Mutex<HashSet<String>>,
    /// The derived credentials marked per container, by the path the
    /// writer gave them, so their marks are removed when it goes.
    derived: Mutex<HashMap<String, Vec<MarkRecord>>>,
    /// The write group, set once at start; without it nothing is followed.
    writes: OnceLock<Arc<Group>>,
    perm: OnceLock<Arc<Group>>,
    /// Tainted pipes per container, by inode.
    tainted: Mutex<HashMap<String, HashMap<FileId, Taint>>>,
    /// Holder scans per container in the current second.
    scans: super::stats::PerSecond<SCANS_PER_SEC>,
    /// Sibling looks per container in the current second.
    sibling_looks: super::stats::PerSecond<SIBLING_LOOKS_PER_SEC>,
    /// Behaviour matches of readers already gone, reported once their
    /// exec events had time to name them.
    late: Mutex<Vec<(Instant, Reader, Behaviour)>>,
    /// Follow-up holder scans due ([`FOLLOW_UP`] after a taint).
    soon: Mutex<Vec<(Instant, String)>>,
    /// Recent execs of processes not followed, for readers noted after
    /// them. Locked inside `readers` only.
    recent_execs: Mutex<RecentExecs>,
    /// Containers forgotten in the last [`GONE_GRACE`], as the index had
    /// them: their readers' last writes are judged after they go.
    gone_views: Mutex<HashMap<String, (Instant, Arc<ContainerView>)>>,
}

/// When, after a pipe is tainted, the follow thread looks for its readers
/// again: a pipeline member forked after the reader's open (a loaded
/// host, a shell slow to fork the last member) is found while it still
/// waits on the data, before the once-a-second look.
/// Dense at first: a consumer forked late may need only milliseconds
/// once the data is in the pipe. Each look is one `/proc` walk.
const FOLLOW_UP: [Duration; 6] = [
    Duration::from_millis(1),
    Duration::from_millis(3),
    Duration::from_millis(8),
    Duration::from_millis(20),
    Duration::from_millis(50),
    Duration::from_millis(150),
];

impl Follow {
    /// Give the follower its write group, and the permission group that
    /// holds the derived credentials' marks.
    pub fn set_groups(&self, writes: Arc<Group>, perm: Arc<Group>) {
        let _ = self.writes.set(writes);
        let _ = self.perm.set(perm);
    }

    /// Whether a derived credential's inode still carries its mark. The
    /// kernel drops a mark when its inode is deleted, and the inode number
    /// may then be reused by any new file: a copy that was removed must
    /// not make an unrelated file a credential. One read of the kernel's
    /// mark list; called only when a lookup outside a permission event
    /// hits a derived entry.
    pub fn still_marked(&self, fid: FileId) -> bool {
        self.perm
            .get()
            .is_none_or(|g| g.marked_inodes().contains(&fid.ino))
    }

    /// Called on the permission thread for every event of a process in a
    /// container: if the opened inode is a credential, follow the opener.
    // The decision context is passed in pieces: this stage piece must not
    // import the context that holds it (no cycle inside `answer`).
    #[allow(clippy::too_many_arguments)]
    pub fn note_open(
        &self,
        index: &RwLock<MarkIndex>,
        rules: &Rules,
        stats: &Stats,
        pid: i32,
        opener_container: &str,
        stat: &Stat,
        fd: BorrowedFd<'_>,
    ) {
        let Some(group) = self.writes.get() else {
            return;
        };
        let Ok((fid, _)) = FileId::of(fd) else {
            return;
        };
        let (container, credential, origin, pattern) = {
            let idx = index.read().unwrap_or_else(|e| e.into_inner());
            // Only the opener's own container: a host process never arms
            // anything, and one container's files never make another's
            // readers.
            let Some(m) = idx.lookup(fid, Some(opener_container)) else {
                return;
            };
            if m.container.reference.id != opener_container {
                return;
            }
            let Some(pattern) = reader_pattern(rules, m) else {
                return;
            };
            (
                m.container.reference.id.clone(),
                m.path.clone(),
                m.origin(),
                pattern.to_string(),
            )
        };
        // An open that only writes reads no credential: the process is
        // not a reader (the shell making `authorized_keys`), and what it
        // writes next is no copy.
        if procfs::open_writes_only(pid) == Some(true) {
            stats.write_only_opens.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !self.is_reader(pid, stat.start_time_ticks) {
            let reader = Reader {
                start: stat.start_time_ticks,
                container: container.clone(),
                credential,
                origin,
                pattern,
                via: None,
                hops: 0,
                exec_path: None,
                seen_as: None,
                gone_at: None,
                matched: false,
                read_at: Instant::now(),
                outputs: regular_fds(pid).into_iter().filter(|f| *f != fid).collect(),
                exes: None,
            };
            self.follow_reader(stats, pid, reader);
        }
        self.arm(stats, group, pid, &container);
    }

    /// Start following `pid`; past [`MAX_READERS`] the oldest are let go
    /// (all of them: a container that floods readers loses only them).
    fn follow_reader(&self, stats: &Stats, pid: i32, mut reader: Reader) {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if readers.len() >= MAX_READERS {
            readers.clear();
        }
        // Its exec may have been read just before it was found: under the
        // same lock as `exec_seen`, so an exec is either here or sets it.
        if let Some(now) = procfs::boot_ticks_now() {
            let mut recent = self.recent_execs.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(path) = recent.take(pid, reader.start, now) {
                reader.exec_path = Some(path);
            }
        }
        readers.insert(pid, reader);
        stats.followed.fetch_add(1, Ordering::Relaxed);
    }

    /// Watch the container's writes, once. The opener is held, so its
    /// root is the container's (its own mount-namespace copy, whose mount
    /// carries its writes).
    fn arm(&self, stats: &Stats, group: &Group, pid: i32, container: &str) {
        if !self
            .armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(container.to_string())
        {
            return;
        }
        if mark_writes(group, pid, true, container) {
            stats.write_armed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What the reader `pid` is, as the permission thread read it (only
    /// the first time: argv, executable and name), and the pipes it holds
    /// for writing, which are tainted. True if it tainted any.
    pub fn describe(&self, stats: &Stats, pid: i32, proc: &RawProcess) -> bool {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = readers.get_mut(&pid) else {
            return false;
        };
        if r.seen_as.is_some() || r.start != proc.stat.start_time_ticks {
            return false;
        }
        let info = ProcessInfo {
            pid,
            start_time_ticks: r.start,
            name: proc.ecs_name(),
            exe: proc.exe.to_string_lossy().into_owned(),
            args: proc
                .args
                .iter()
                .take(64)
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            args_count: proc.args.len(),
            ppid: proc.stat.ppid,
            ..Default::default()
        };
        r.seen_as = Some(info.clone());
        r.exes = Some(std::sync::Arc::new(HeldExes::of(pid, proc.stat.ppid)));
        let r = r.clone();
        drop(readers);
        self.taint_pipes(stats, pid, &r, &info)
    }

    /// Taint the pipes and FIFOs `pid` holds for writing.
    fn taint_pipes(&self, stats: &Stats, pid: i32, r: &Reader, info: &ProcessInfo) -> bool {
        if r.hops >= MAX_HOPS {
            return false;
        }
        let pipes: Vec<_> = procfs::pipes(pid, MAX_FDS)
            .into_iter()
            .filter(|p| p.end.writes())
            .collect();
        if pipes.is_empty() {
            return false;
        }
        let mut tainted = self.tainted.lock().unwrap_or_else(|e| e.into_inner());
        let of = tainted.entry(r.container.clone()).or_default();
        let mut any = false;
        for p in pipes {
            if of.contains_key(&p.id) {
                continue;
            }
            if of.len() >= MAX_TAINTED {
                stats.pipes_dropped.fetch_add(1, Ordering::Relaxed);
                stats
                    .bounds
                    .hit(crate::answer::stats::Bound::Pipes, &r.container);
                continue;
            }
            let via = std::fs::read_link(format!("/proc/{pid}/fd/{}", p.fd.to_string_lossy()))
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_else(|_| format!("pipe:[{}]", p.id.ino));
            of.insert(
                p.id,
                Taint {
                    credential: r.credential.clone(),
                    origin: r.origin.clone(),
                    pattern: r.pattern.clone(),
                    source: Source {
                        via,
                        pid,
                        name: info.name.clone(),
                        executable: info.exe.clone(),
                        args: info.args.clone(),
                    },
                    hops: r.hops,
                    in_alerted_run: r.matched,
                    at: Instant::now(),
                    source_start: r.start,
                },
            );
            stats.pipes_tainted.fetch_add(1, Ordering::Relaxed);
            any = true;
        }
        drop(tainted);
        if any {
            let now = Instant::now();
            let mut soon = self.soon.lock().unwrap_or_else(|e| e.into_inner());
            for d in FOLLOW_UP {
                soon.push((now + d, r.container.clone()));
            }
        }
        any
    }

    /// The containers whose follow-up scans are due, each once; and when
    /// the next one is.
    fn follow_ups(&self) -> (Vec<String>, Option<Instant>) {
        let now = Instant::now();
        let mut soon = self.soon.lock().unwrap_or_else(|e| e.into_inner());
        let mut due: Vec<String> = Vec::new();
        soon.retain(|(at, id)| {
            if *at > now {
                return true;
            }
            if !due.contains(id) {
                due.push(id.clone());
            }
            false
        });
        (due, soon.iter().map(|(at, _)| *at).min())
    }

    /// Forget the tainted anonymous pipes of container `id` whose read end
    /// is not among `held` (the read ends its processes hold now), once
    /// they are [`UNREAD_GRACE`] old. A FIFO is kept: it can be opened
    /// later by its path.
    pub fn drop_unread(&self, id: &str, held: &HashSet<FileId>) {
        let mut tainted = self.tainted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = tainted.get_mut(id) {
            m.retain(|fid, t| {
                held.contains(fid)
                    || !t.source.via.starts_with("pipe:[")
                    || t.at.elapsed() < UNREAD_GRACE
            });
            if m.is_empty() {
                tainted.remove(id);
            }
        }
    }

    /// Whether any container has a tainted pipe (one lock, no reads).
    pub fn any_taint(&self) -> bool {
        !self
            .tainted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Whether container `id` has any tainted pipe (one lock, no reads).
    pub fn has_taint(&self, id: &str) -> bool {
        self.tainted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_some_and(|m| !m.is_empty())
    }

    /// The containers with tainted pipes, for the follow thread's look.
    pub fn tainted_containers(&self) -> Vec<String> {
        let tainted = self.tainted.lock().unwrap_or_else(|e| e.into_inner());
        tainted
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The taint of pipe `fid` in container `id`.
    pub fn taint_of(&self, id: &str, fid: FileId) -> Option<Taint> {
        self.tainted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)?
            .get(&fid)
            .cloned()
    }

    /// The tainted pipes `pid` (in container `id`) holds for reading, with
    /// the fd it reads each through. Nothing is read unless the container
    /// has a taint.
    pub fn piped(&self, id: &str, pid: i32) -> Vec<(procfs::PipeFd, Taint)> {
        if !self.has_taint(id) {
            return Vec::new();
        }
        procfs::pipes(pid, MAX_FDS)
            .into_iter()
            .filter(|p| p.end.reads())
            .filter_map(|p| {
                let t = self.taint_of(id, p.id)?;
                Some((p, self.refreshed(t)))
            })
            .collect()
    }

    /// A taint with its source named as it is now: by what it runs, if it
    /// still runs, else by the program it was seen exec (a pipeline
    /// member described before its exec is still its shell then).
    fn refreshed(&self, mut t: Taint) -> Taint {
        let live = RawProcess::read(t.source.pid)
            .ok()
            .filter(|p| p.stat.start_time_ticks == t.source_start && !p.args.is_empty());
        let p = match live {
            // Named as the reader was described (`RawProcess::ecs_name`):
            // a busybox applet's executable is busybox, and its `comm` is
            // `exe` when busybox sh ran it through /proc/self/exe.
            Some(p) => p.complete(),
            None => {
                let readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
                let Some(r) = readers
                    .get(&t.source.pid)
                    .filter(|r| r.start == t.source_start)
                else {
                    return t;
                };
                if r.seen_as.is_none() && r.exec_path.is_none() {
                    return t;
                }
                exec_since(r.seen_as.clone(), t.source.pid, r)
            }
        };
        t.source.name = p.name;
        t.source.executable = p.exe;
        t.source.args = p.args;
        t
    }

    /// Whether `pid` (with start time `start`) is followed already.
    pub fn is_reader(&self, pid: i32, start: u64) -> bool {
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .is_some_and(|r| r.start == start)
    }

    /// Follow `pid`, which reads the tainted pipe `taint` in container
    /// `id`, as a reader of its credential. True if it is new.
    pub fn note_piped(
        &self,
        stats: &Stats,
        pid: i32,
        stat: &Stat,
        id: &str,
        taint: &Taint,
    ) -> bool {
        if self.writes.get().is_none() || self.is_reader(pid, stat.start_time_ticks) {
            return false;
        }
        let reader = Reader {
            start: stat.start_time_ticks,
            container: id.to_string(),
            credential: taint.credential.clone(),
            origin: taint.origin.clone(),
            pattern: taint.pattern.clone(),
            via: Some(taint.source.clone()),
            hops: taint.hops + 1,
            exec_path: None,
            seen_as: None,
            gone_at: None,
            // Part of an alerted run: no alert by behaviour either.
            matched: taint.in_alerted_run,
            read_at: Instant::now(),
            outputs: regular_fds(pid),
            exes: None,
        };
        self.follow_reader(stats, pid, reader);
        stats.pipe_readers.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Whether the permission thread may look at a reader's siblings in
    /// container `id` now ([`SIBLING_LOOKS_PER_SEC`]).
    pub fn may_look_at_siblings(&self, id: &str) -> bool {
        self.sibling_looks.allow(id)
    }

    /// Whether the permission thread may scan container `id` for pipe
    /// holders now ([`SCANS_PER_SEC`]); if not, the follow thread will.
    pub fn may_scan(&self, stats: &Stats, id: &str) -> bool {
        let allowed = self.scans.allow(id);
        if !allowed {
            stats.pipe_scans_deferred.fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }

    /// Whether a permission event on `fd` by the process `stat` describes
    /// would make a new reader: the image-benign cache must not hide a
    /// credential open from the follower (a process that opened
    /// `/etc/passwd` first, then a key).
    pub fn would_follow(
        &self,
        index: &RwLock<MarkIndex>,
        rules: &Rules,
        pid: i32,
        stat: &Stat,
        fd: BorrowedFd<'_>,
    ) -> bool {
        if self.writes.get().is_none() || self.is_reader(pid, stat.start_time_ticks) {
            return false;
        }
        let Ok((fid, _)) = FileId::of(fd) else {
            return false;
        };
        let idx = index.read().unwrap_or_else(|e| e.into_inner());
        idx.lookup(fid, None)
            .and_then(|m| reader_pattern(rules, m))
            .is_some()
    }

    /// The exec thread read `pid`'s exec of `path` at boot tick `at`: if
    /// it is followed, remember the program.
    ///
    /// With `remember`, the exec of a process not followed yet is kept
    /// too (one `readlink` then): a holder scan or
    /// [`crate::answer::decide::note_exec`] may make it a reader a moment
    /// later, and it is named by it. The exec thread asks for it where a
    /// `readlink` per exec costs nothing that matters (not for every
    /// busybox applet: their pending probes end in [`Follow::exec_settled`]).
    pub fn exec_seen(
        &self,
        pid: i32,
        at: Option<u64>,
        remember: bool,
        path: impl FnOnce() -> Option<PathBuf>,
    ) {
        // The path is read before the lock when it may be remembered: the
        // answering thread takes `readers` too.
        let path = move || path().map(|p| p.to_string_lossy().into_owned());
        let (early, later) = if remember {
            (path(), None)
        } else {
            (None, Some(path))
        };
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        match readers.get_mut(&pid) {
            Some(r) if r.made_exec_read_at(at) => {
                r.exec_path = early.or_else(|| later.and_then(|f| f()));
                self.name_late(pid, r);
            }
            Some(_) => {}
            None => {
                if let (Some(at), Some(path)) = (at, early) {
                    self.recent_execs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .note(pid, at, path);
                }
            }
        }
    }

    /// The exec thread is done with `pid`'s exec of `path`, read at boot
    /// tick `at` (its probe ended). A process found on a tainted pipe while
    /// it exec'd (its `/proc` half-replaced, so it could not be described)
    /// and not named since is named by the program now.
    pub fn exec_settled(&self, pid: i32, at: Option<u64>, path: impl FnOnce() -> Option<PathBuf>) {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = readers.get_mut(&pid)
            && r.exec_path.is_none()
            && at.is_some()
            && r.made_exec_read_at(at)
        {
            r.exec_path = path().map(|p| p.to_string_lossy().into_owned());
            self.name_late(pid, r);
        }
    }

    /// A behaviour match of `pid` waiting to be reported (it was gone when
    /// judged) gets the program `r` now knows it exec'd: the container may
    /// go, and its readers with it, before the report is due.
    fn name_late(&self, pid: i32, r: &Reader) {
        let mut late = self.late.lock().unwrap_or_else(|e| e.into_inner());
        for (_, waiting, found) in late.iter_mut() {
            if found.pid == pid && waiting.start == r.start {
                waiting.exec_path.clone_from(&r.exec_path);
            }
        }
    }

    /// The reader `pid` matched a rule at an open.
    pub fn matched(&self, pid: i32) {
        if let Some(r) = self
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&pid)
        {
            r.matched = true;
        }
    }

    /// Forget the derived credentials of container `id` whose inodes are
    /// gone (not in `alive`, the permission group's marked inodes): a
    /// removed copy's inode number, made again by any new file, must not
    /// make that file a copy of a credential. Returns them.
    pub fn prune_derived(&self, id: &str, alive: &HashSet<u64>) -> Vec<FileId> {
        let mut derived = self.derived.lock().unwrap_or_else(|e| e.into_inner());
        let Some(marked) = derived.get_mut(id) else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        marked.retain(|m| {
            let alive = alive.contains(&m.id.ino);
            if !alive {
                gone.push(m.id);
            }
            alive
        });
        gone
    }

    /// The containers that hold derived credentials.
    pub fn containers_with_derived(&self) -> Vec<String> {
        self.derived
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Container `id` as the index had it when it was forgotten, if that
    /// was less than [`GONE_GRACE`] ago.
    fn gone_view(&self, id: &str) -> Option<Arc<ContainerView>> {
        self.gone_views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .filter(|(at, _)| at.elapsed() < GONE_GRACE)
            .map(|(_, v)| v.clone())
    }

    /// Forget a container (it went): its taints, and the derived
    /// credentials it holds, whose marks the caller removes.
    ///
    /// Its readers stay, and its view (`view`, as the index had it) is
    /// kept [`GONE_GRACE`] too: a container that exits right after its
    /// last pipeline (`cat key | gzip > out; exit`) is often forgotten
    /// before the follow thread reads that gzip's last close, and that
    /// write is still judged and alerted. Readers expire as gone readers
    /// do ([`Follow::sweep`]).
    pub fn forget_container(&self, id: &str, view: Option<Arc<ContainerView>>) -> Vec<MarkRecord> {
        if let Some(view) = view {
            self.gone_views
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.to_string(), (Instant::now(), view));
        }
        self.armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.tainted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.scans.forget(id);
        self.sibling_looks.forget(id);
        self.derived
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
            .unwrap_or_default()
    }

    /// The reader behind a write by `pid`, if it is still the process
    /// that read (a live pid with another start time is not), or exited
    /// since: the write was queued before its exit.
    fn reader(&self, pid: i32, fid: FileId) -> Option<Reader> {
        let readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = readers.get(&pid) {
            match procfs::stat(pid) {
                Ok(s) if s.start_time_ticks != r.start => {}
                _ => return Some(r.clone()),
            }
        }
        // Someone else closed a file a reader held for writing (the shell
        // that opened `> file` for it).
        readers.values().find(|r| r.outputs.contains(&fid)).cloned()
    }

    /// Drop readers that exited more than [`GONE_GRACE`] ago, and taints
    /// older than [`BEHAVIOUR_WINDOW`]; then disarm the containers left
    /// with neither.
    fn sweep(&self, index: &RwLock<MarkIndex>, stats: &Stats) {
        let now = Instant::now();
        self.tainted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, m| {
                m.retain(|_, t| now.duration_since(t.at) < BEHAVIOUR_WINDOW);
                !m.is_empty()
            });
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|pid, r| {
                let alive =
                    procfs::stat(*pid).is_ok_and(|s| s.start_time_ticks == r.start && !s.exited());
                if alive {
                    return true;
                }
                let since = *r.gone_at.get_or_insert(now);
                now.duration_since(since) < GONE_GRACE
            });
        self.gone_views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (at, _)| now.duration_since(*at) < GONE_GRACE);
        self.disarm_idle(index, stats);
    }

    /// Remove the write mark of every armed container that has no reader
    /// and no tainted pipe left: a container pays for close-after-write
    /// events only while something in it read a credential (and
    /// [`GONE_GRACE`] after). The mark is removed through the init's root,
    /// in the scope it was made in; a reader that had made its own mount
    /// namespace armed its own mount copy, which the kernel then refuses
    /// to find here (`write_disarm_failed`; that mark dies with the copy).
    fn disarm_idle(&self, index: &RwLock<MarkIndex>, stats: &Stats) {
        let Some(group) = self.writes.get() else {
            return;
        };
        let busy: HashSet<String> = {
            let readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
            let tainted = self.tainted.lock().unwrap_or_else(|e| e.into_inner());
            readers
                .values()
                .map(|r| r.container.clone())
                .chain(tainted.keys().cloned())
                .collect()
        };
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        let idle: Vec<String> = armed
            .iter()
            .filter(|c| !busy.contains(*c))
            .cloned()
            .collect();
        for id in idle {
            armed.remove(&id);
            let init = index
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .container(&id)
                .map(|v| v.init_pid);
            let removed = init.is_some_and(|pid| mark_writes(group, pid, false, &id));
            let c = if removed {
                &stats.write_disarmed
            } else {
                &stats.write_disarm_failed
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One close-after-write: mark the written file as derived if a
    /// followed reader wrote it.
    fn on_write(&self, out: &Outputs<'_>, pid: i32, file: BorrowedFd<'_>) {
        let Outputs {
            index, stats, perm, ..
        } = *out;
        let Ok(st) = nix::sys::stat::fstat(file) else {
            return;
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return;
        }
        let fid = FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        let Some(r) = self.reader(pid, fid) else {
            return;
        };
        self.judge_output(out, pid, &r, file);
        {
            let mut derived = self.derived.lock().unwrap_or_else(|e| e.into_inner());
            // `limits.derived_per_container`.
            if derived.get(&r.container).map_or(0, Vec::len) >= (out.derived_limit)() {
                stats.derived_dropped.fetch_add(1, Ordering::Relaxed);
                stats
                    .bounds
                    .hit(crate::answer::stats::Bound::Derived, &r.container);
                return;
            }
            // The index learns the inode before the kernel marks it, so the
            // first open of the copy finds what it is a copy of. A
            // forgotten container's last writes are judged (above) but not
            // marked: the index no longer has it, and nothing is recorded.
            let added = crate::watch::index::write(index).add_derived(
                &r.container,
                fid,
                r.credential.clone(),
            );
            if !added {
                return;
            }
            derived
                .entry(r.container.clone())
                .or_default()
                .push(MarkRecord {
                    path: fd_path(file).unwrap_or_default(),
                    id: fid,
                    is_dir: false,
                    handle: None,
                });
        }
        let what = format!(
            "copy of {} in container {}",
            r.credential.display(),
            r.container
        );
        if perm.mark_credential(file, false, true, &what).is_ok() {
            stats.derived.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the follow thread writes into.
#[derive(Clone, Copy)]
pub struct Outputs<'a> {
    pub index: &'a RwLock<MarkIndex>,
    pub stats: &'a Stats,
    /// The permission group, for the derived credentials' marks.
    pub perm: &'a Group,
    /// The alert queue, for matches by behaviour.
    pub findings: &'a SyncSender<Finding>,
    /// Whether the current policy's exceptions suppress a behaviour match
    /// (counted by the exception when they do).
    pub excepted: &'a (dyn Fn(&Subject<'_>) -> bool + Sync),
    /// Archiver identities and executables' digests, for exceptions that
    /// name content.
    pub identities: &'a crate::attribute::identity::Identities,
    /// Look for the readers of a container's tainted pipes (and alert on
    /// the archivers among them).
    pub scan_pipes: &'a (dyn Fn(&str) + Sync),
    /// The current policy's behaviour window (`rules.file.behaviour_window_s`).
    pub behaviour_window: &'a (dyn Fn() -> Duration + Sync),
    /// The current policy's bound on derived credentials per container
    /// (`limits.derived_per_container`).
    pub derived_limit: &'a (dyn Fn() -> usize + Sync),
}

/// A behaviour match waiting to be reported.
#[derive(Debug)]
struct Behaviour {
    pid: i32,
    format: &'static str,
    archive: String,
    view: Arc<ContainerView>,
}

/// How long a behaviour match of a reader that is gone waits for its exec
/// event (see [`Follow::report_late`]).
const LATE_NAMING: Duration = Duration::from_millis(500);
/// Behaviour matches waiting for [`LATE_NAMING`] at once; past this they
/// are reported at once, named by what is known.
const MAX_LATE: usize = 1024;

impl Follow {
    /// Archiver by behaviour: a reader that writes archive or compressed
    /// data (by the file's magic number) within [`BEHAVIOUR_WINDOW`] of
    /// its credential read is an archiver, whatever it is called. The
    /// open it read through was allowed long ago, so `deny` does not apply
    /// (the response stage reports it `not_applicable`); `kill`, `stop`
    /// and `disconnect` act on the finding.
    fn judge_output(&self, out: &Outputs<'_>, pid: i32, r: &Reader, file: BorrowedFd<'_>) {
        if r.matched || r.read_at.elapsed() > (out.behaviour_window)() {
            return;
        }
        let mut head = [0u8; 512];
        let n = nix::sys::uio::pread(file, &mut head, 0).unwrap_or(0);
        let Some(format) = archive_format(&head[..n]) else {
            return;
        };
        let live = out
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .container(&r.container)
            .cloned();
        // A forgotten container's view answers only for alerting: the
        // container is gone, and its id may already name a new one that a
        // response must not reach.
        let Some(view) = live.or_else(|| {
            self.gone_view(&r.container).map(|v| {
                Arc::new(ContainerView {
                    action: crate::config::Action::Alert,
                    ..(*v).clone()
                })
            })
        }) else {
            return;
        };
        let archive = fd_path(file)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let found = Behaviour {
            pid,
            format,
            archive,
            view,
        };
        // The writer may have exited already (its close is what we saw).
        match RawProcess::read(pid)
            .ok()
            .filter(|p| p.stat.start_time_ticks == r.start)
        {
            Some(p) => self.report(out, r, found, p.complete()),
            // A program that finished before the exec thread read its exec
            // event would be named by its image before the exec: wait
            // [`LATE_NAMING`] for that event, then name it.
            // What it is known to have exec'd is taken as it stands now,
            // under the readers' lock: an exec learned since `r` was read
            // is in it, and one learned later renames it ([`Follow::name_late`]).
            None => {
                let readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
                let known = readers
                    .get(&pid)
                    .filter(|x| x.start == r.start)
                    .unwrap_or(r)
                    .clone();
                let mut late = self.late.lock().unwrap_or_else(|e| e.into_inner());
                if late.len() < MAX_LATE {
                    late.push((Instant::now() + LATE_NAMING, known, found));
                    return;
                }
                // Reported now, by what is known, rather than dropped.
                drop(late);
                drop(readers);
                let process = exec_since(known.seen_as.clone(), pid, &known);
                self.report(out, &known, found, process);
            }
        }
    }

    /// Report the behaviour matches of readers that were gone when
    /// judged, once their exec events had time to arrive; all of them
    /// with `all` (at shutdown). True if some are still waiting.
    fn report_late(&self, out: &Outputs<'_>, all: bool) -> bool {
        let now = Instant::now();
        let due: Vec<_> = {
            let mut late = self.late.lock().unwrap_or_else(|e| e.into_inner());
            let (due, wait) = late.drain(..).partition(|(at, _, _)| all || *at <= now);
            *late = wait;
            due
        };
        for (_, r, found) in due {
            let r = self
                .readers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&found.pid)
                .filter(|x| x.start == r.start)
                .cloned()
                .unwrap_or(r);
            let process = exec_since(r.seen_as.clone(), found.pid, &r);
            self.report(out, &r, found, process);
        }
        !self
            .late
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Send a behaviour finding, unless an exception covers it.
    fn report(&self, out: &Outputs<'_>, r: &Reader, found: Behaviour, process: ProcessInfo) {
        let Behaviour {
            format,
            archive,
            view,
            ..
        } = found;
        if self.excepted(out, &view, &process, r.exes.as_deref()) {
            return;
        }
        let credential = r.credential.to_string_lossy().into_owned();
        let wrote = format!("wrote {format} data to {archive}");
        let opened_as = match &r.via {
            Some(s) => format!("read {} from pid {} ({}); {wrote}", s.via, s.pid, s.name),
            None => wrote,
        };
        let f = Finding {
            at: SystemTime::now(),
            container: view.reference.clone(),
            process,
            trigger: Trigger::Open {
                origin: r.origin.clone(),
                path: credential,
                opened_as,
                pattern: r.pattern.clone(),
                archiver: ArchiverHit::Behaviour {
                    format: format.to_string(),
                    archive,
                },
                denied: false,
                source: r.via.clone(),
            },
            action: view.action,
            response: None,
        };
        out.stats.findings.fetch_add(1, Ordering::Relaxed);
        super::events::send(out.findings, f, &out.stats.queue_drops);
    }
}

impl Follow {
    /// Exceptions apply to behaviour matches as to the others: a backup
    /// job excepted at its opens is not alerted for the archive it writes.
    fn excepted(
        &self,
        out: &Outputs<'_>,
        view: &ContainerView,
        p: &ProcessInfo,
        exes: Option<&HeldExes>,
    ) -> bool {
        let parent = exes.and_then(|e| e.parent_path.clone()).or_else(|| {
            procfs::exe(p.ppid)
                .ok()
                .map(|e| e.to_string_lossy().into_owned())
        });
        let cmdline = p.args.join(" ");
        (out.excepted)(&Subject {
            rule_id: BEHAVIOUR_RULE_ID,
            container_name: view.reference.name.as_deref(),
            image: view.reference.image.as_deref(),
            annotations: &view.annotations,
            executable: &p.exe,
            parent_executable: parent.as_deref(),
            command_line: &cmdline,
            digests: &HeldDigests {
                identities: out.identities,
                exes,
                pid: p.pid,
                ppid: p.ppid,
            },
        })
    }
}

/// What a reader that is gone was last seen as: the program it exec'd
/// after it was described, if any (its argv then is unknown, so the old
/// one is kept only when the program did not change).
fn exec_since(p: Option<ProcessInfo>, pid: i32, r: &Reader) -> ProcessInfo {
    let mut p = p.unwrap_or(ProcessInfo {
        pid,
        start_time_ticks: r.start,
        ..Default::default()
    });
    if let Some(exe) = r.exec_path.as_ref().filter(|e| **e != p.exe) {
        p.name = exe.rsplit('/').next().unwrap_or(exe).to_string();
        p.exe = exe.clone();
        p.args = vec![exe.clone()];
        p.args_count = 1;
    }
    p
}

/// The follow thread: read close-after-write events and mark what the
/// followed readers wrote.
pub fn follow_loop(writes: &Group, follow: &Follow, out: Outputs<'_>, stop: &AtomicBool) {
    let stats = out.stats;
    super::events::raise_priority();
    let mut buf = vec![0u8; super::events::READ_BUF];
    let mut events = Vec::new();
    let mut last_sweep = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if last_sweep.elapsed() >= SWEEP_EVERY {
            follow.sweep(out.index, stats);
            for id in follow.tainted_containers() {
                (out.scan_pipes)(&id);
            }
            last_sweep = Instant::now();
        }
        let waiting = follow.report_late(&out, false);
        let (due, next) = follow.follow_ups();
        for id in due {
            (out.scan_pipes)(&id);
        }
        let mut timeout = if waiting {
            LATE_NAMING / 4
        } else {
            Duration::from_millis(200)
        };
        if let Some(next) = next {
            timeout = timeout.min(next.saturating_duration_since(Instant::now()));
        }
        if !matches!(writes.wait(timeout), Ok(true)) {
            continue;
        }
        let Ok(n) = writes.read(&mut buf) else {
            continue;
        };
        events.clear();
        if parse_events(&buf[..n], &mut events).is_err() {
            stats.parse_errors.fetch_add(1, Ordering::Relaxed);
        }
        for ev in events.drain(..) {
            if ev.is_overflow() {
                stats.overflows.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            stats.write_events.fetch_add(1, Ordering::Relaxed);
            if let Some(fd) = &ev.fd {
                follow.on_write(&out, ev.pid, fd.as_fd());
            }
        }
    }
    follow.report_late(&out, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_read_before_its_reader_was_found_names_it_once() {
        let mut r = RecentExecs::default();
        r.note(41, 1_000, "/usr/bin/gzip".into());
        // The process started at tick 990 and was alive when the exec was
        // read at 1,000: the exec is its own.
        assert_eq!(r.take(41, 990, 1_001).as_deref(), Some("/usr/bin/gzip"));
        assert_eq!(r.take(41, 990, 1_001), None, "taken once");
        // Another pid's exec names nothing here.
        r.note(42, 1_000, "/usr/bin/xz".into());
        assert_eq!(r.take(41, 990, 1_001), None);
    }

    #[test]
    fn an_exec_of_a_reused_pid_or_too_old_names_nothing() {
        let mut r = RecentExecs::default();
        r.note(41, 1_000, "/usr/bin/gzip".into());
        // A process that started after the exec was read is a later one
        // with the same pid.
        assert_eq!(r.take(41, 1_001, 1_002), None);
        r.note(41, 1_000, "/usr/bin/gzip".into());
        assert_eq!(r.take(41, 900, 1_000 + RECENT_EXEC_KEEP + 1), None);
        r.note(41, 1_000, "/usr/bin/gzip".into());
        assert!(r.take(41, 900, 1_000 + RECENT_EXEC_KEEP).is_some());
    }

    #[test]
    fn recent_execs_stay_bounded_and_lose_the_oldest_first() {
        let mut r = RecentExecs::default();
        for pid in 0..MAX_RECENT_EXECS as i32 {
            r.note(pid, 10, format!("/old/{pid}"));
        }
        r.note(-1, 11, "/new".into());
        assert_eq!(r.by_pid.len(), MAX_RECENT_EXECS, "one in, one out");
        assert_eq!(r.take(0, 5, 11), None, "the oldest went");
        assert_eq!(r.take(1, 5, 11).as_deref(), Some("/old/1"));
        assert_eq!(r.take(-1, 5, 11).as_deref(), Some("/new"));
        // A pid noted again keeps its newer exec when its older one's turn
        // to go comes.
        let mut r = RecentExecs::default();
        r.note(7, 1, "/first".into());
        for pid in 100..100 + MAX_RECENT_EXECS as i32 - 1 {
            r.note(pid, 2, "/x".into());
        }
        r.note(7, 3, "/again".into());
        r.note(-1, 3, "/pushes-one-out".into());
        assert_eq!(r.take(7, 1, 3).as_deref(), Some("/again"));
        assert!(r.order.len() < 2 * MAX_RECENT_EXECS);
    }
}
