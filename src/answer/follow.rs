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
//! write; the follow thread drops those of processes it does not follow.
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
use crate::rules::{ArchiverHit, BEHAVIOUR_RULE_ID, archive_format};
use crate::watch::fanotify::{EventSource, Group, RootEvents, exec_scope, fd_path, parse_events};
use crate::watch::index::ContainerView;
use crate::watch::index::MarkIndex;
use crate::watch::marks::MarkRecord;
use crate::watch::resolve::FileId;
use std::sync::RwLock;
use std::sync::mpsc::SyncSender;
use std::time::SystemTime;

/// Readers followed at once before the oldest are let go.
const MAX_READERS: usize = 16 * 1024;
/// Derived credentials per container; past this, further copies are
/// counted (`derived_dropped`) and not marked.
pub const MAX_DERIVED: usize = 10_000;
/// How long a reader that exited is kept for the writes it queued.
const GONE_GRACE: Duration = Duration::from_secs(10);
/// How often readers that exited are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A process that read a credential.
#[derive(Debug, Clone)]
struct Reader {
    start: u64,
    container: String,
    /// The credential it read first, as the index names it, and the
    /// pattern it matched.
    credential: PathBuf,
    pattern: String,
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
}

/// How long after its credential read a reader's archive output counts
/// as an archive of that credential. A long-lived service that read its
/// own credentials at start (cloud SDKs read `~/.aws/credentials`) and
/// writes compressed logs or caches later is not blamed for them.
pub const BEHAVIOUR_WINDOW: Duration = Duration::from_secs(60);

/// Most fds of a new reader looked at.
const MAX_FDS: usize = 256;

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
}

impl Follow {
    /// Give the follower its write group.
    pub fn set_group(&self, g: Arc<Group>) {
        let _ = self.writes.set(g);
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
        let (container, credential) = {
            let idx = index.read().unwrap_or_else(|e| e.into_inner());
            // Only the opener's own container: a host process never arms
            // anything, and one container's files never make another's
            // readers.
            let Some(m) = idx.lookup(fid, Some(opener_container)) else {
                return;
            };
            if m.is_dir || m.container.reference.id != opener_container {
                return;
            }
            (m.container.reference.id.clone(), m.path.clone())
        };
        if rules.is_incidental_path(credential.as_os_str()) {
            return;
        }
        let Some(pattern) = rules.credential_pattern(credential.as_os_str()) else {
            return;
        };
        let pattern = pattern.to_string();
        let known = self
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .is_some_and(|r| r.start == stat.start_time_ticks);
        if !known {
            let reader = Reader {
                start: stat.start_time_ticks,
                container: container.clone(),
                credential,
                pattern,
                seen_as: None,
                gone_at: None,
                matched: false,
                read_at: Instant::now(),
                outputs: regular_fds(pid).into_iter().filter(|f| *f != fid).collect(),
            };
            let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
            if readers.len() >= MAX_READERS {
                readers.clear();
            }
            readers.insert(pid, reader);
            stats.followed.fetch_add(1, Ordering::Relaxed);
        }
        self.arm(stats, group, pid, &container);
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
        let Ok(root) = nix::fcntl::open(
            format!("/proc/{pid}/root").as_str(),
            // Not O_PATH: fanotify_mark takes no O_PATH descriptor.
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) else {
            return;
        };
        let scope = exec_scope(root.as_fd());
        if group
            .mark_root(root.as_fd(), scope, true, RootEvents::CloseWrite, container)
            .is_ok()
        {
            stats.write_armed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What the reader `pid` is, as the permission thread read it (only
    /// the first time: argv, executable and name, no further reads).
    pub fn describe(&self, pid: i32, proc: &RawProcess) {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = readers.get_mut(&pid) else {
            return;
        };
        if r.seen_as.is_some() || r.start != proc.stat.start_time_ticks {
            return;
        }
        r.seen_as = Some(ProcessInfo {
            pid,
            start_time_ticks: r.start,
            name: proc.comm.to_string_lossy().into_owned(),
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
        });
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

    /// Forget a container (it went): its readers, and the derived
    /// credentials it holds, whose marks the caller removes.
    pub fn forget_container(&self, id: &str) -> Vec<MarkRecord> {
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, r| r.container != id);
        self.armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
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

    /// Drop readers that exited more than [`GONE_GRACE`] ago.
    fn sweep(&self) {
        let now = Instant::now();
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
            let marked = derived.entry(r.container.clone()).or_default();
            if marked.len() >= MAX_DERIVED {
                stats.derived_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // The index learns the inode before the kernel marks it, so the
            // first open of the copy finds what it is a copy of.
            let added = index
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .add_derived(&r.container, fid, r.credential.clone());
            if !added {
                return;
            }
            marked.push(MarkRecord {
                path: fd_path(file).unwrap_or_default(),
                id: fid,
                is_dir: false,
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
}

impl Follow {
    /// Archiver by behaviour: a reader that writes archive or compressed
    /// data (by the file's magic number) within [`BEHAVIOUR_WINDOW`] of
    /// its credential read is an archiver, whatever it is called. The
    /// open it read through was allowed long ago, so `deny` does not apply
    /// (the response stage reports it `not_applicable`); `kill`, `stop`
    /// and `disconnect` act on the finding.
    fn judge_output(&self, out: &Outputs<'_>, pid: i32, r: &Reader, file: BorrowedFd<'_>) {
        if r.matched || r.read_at.elapsed() > BEHAVIOUR_WINDOW {
            return;
        }
        let mut head = [0u8; 512];
        let n = nix::sys::uio::pread(file, &mut head, 0).unwrap_or(0);
        let Some(format) = archive_format(&head[..n]) else {
            return;
        };
        let Some(view) = out
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .container(&r.container)
            .cloned()
        else {
            return;
        };
        let archive = fd_path(file)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The writer may have exited already (its close is what we saw).
        let process = RawProcess::read(pid)
            .ok()
            .filter(|p| p.stat.start_time_ticks == r.start)
            .map(RawProcess::complete)
            .or_else(|| r.seen_as.clone())
            .unwrap_or(ProcessInfo {
                pid,
                start_time_ticks: r.start,
                ..Default::default()
            });
        if self.excepted(out, &view, &process) {
            return;
        }
        let credential = r.credential.to_string_lossy().into_owned();
        let f = Finding {
            at: SystemTime::now(),
            container: view.reference.clone(),
            process,
            trigger: Trigger::Open {
                origin: credential.clone(),
                path: credential,
                opened_as: format!("wrote {format} data to {archive}"),
                pattern: r.pattern.clone(),
                archiver: ArchiverHit::Behaviour {
                    format: format.to_string(),
                    archive,
                },
                denied: false,
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
    fn excepted(&self, out: &Outputs<'_>, view: &ContainerView, p: &ProcessInfo) -> bool {
        let parent = procfs::exe(p.ppid)
            .ok()
            .map(|e| e.to_string_lossy().into_owned());
        let cmdline = p.args.join(" ");
        (out.excepted)(&Subject {
            rule_id: BEHAVIOUR_RULE_ID,
            container_name: view.reference.name.as_deref(),
            image: view.reference.image.as_deref(),
            annotations: &view.annotations,
            executable: &p.exe,
            parent_executable: parent.as_deref(),
            command_line: &cmdline,
        })
    }
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
            follow.sweep();
            last_sweep = Instant::now();
        }
        if !matches!(writes.wait(Duration::from_millis(200)), Ok(true)) {
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
}
