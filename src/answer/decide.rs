//! Decision for one event: attribute the process, build one candidate
//! (process, file, container), ask the rules once, and say allow or deny.
//!
//! These functions do procfs reads (attribution) but never write, log or
//! block on anything but the kernel's own `/proc`; the alert work they
//! produce goes to a queue. They return an answer on every path, errors
//! included: an unattributable event is allowed, because a daemon that
//! cannot tell what happened must not break the container.

use std::cell::OnceCell;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::policy::{Context, Policy};
use crate::alert::{Finding, Trigger};
use crate::attribute::exe::{self, ExeClass};
use crate::attribute::procfs::{self, ProcessInfo, RawProcess};
use crate::rules::{
    ArchiverHit, Candidate, ContainerFacts, Event, Evidence, Matches, Touch, TouchedFile, Verdict,
};
use crate::watch::fanotify::{FAN_ALLOW, FAN_DENY, fd_path};
use crate::watch::index::ContainerView;
use crate::watch::resolve::FileId;

/// How long an exec event waits for its exec to complete before giving up
/// on argv.
pub const EXEC_SETTLE: Duration = Duration::from_millis(250);

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn facts(c: &ContainerView) -> ContainerFacts<'_> {
    ContainerFacts {
        name: c.reference.name.as_deref(),
        image: c.reference.image.as_deref(),
        annotations: &c.annotations,
    }
}

/// What the rules may ask about a held opener or a settled exec. The
/// container is looked up once, on first use: an exec whose names match
/// no rule never needs it.
struct ProcessEvidence<'a> {
    ctx: &'a Context,
    pid: i32,
    proc: &'a RawProcess,
    container: OnceCell<Option<Arc<ContainerView>>>,
    /// The fd of a permission event; `None` for an exec, whose inherited
    /// fds are the files it touched.
    opened: Option<BorrowedFd<'a>>,
}

impl ProcessEvidence<'_> {
    fn view(&self) -> Option<&Arc<ContainerView>> {
        self.container
            .get_or_init(|| self.ctx.container_of(self.pid))
            .as_ref()
    }
}

impl Evidence for ProcessEvidence<'_> {
    /// By content, as the host and the process's own container know
    /// archivers; for the loader, the program it loads (a link to gzip
    /// under another name is still gzip).
    fn identity(&self) -> Option<ArchiverHit> {
        let container = self.view().map(|v| v.reference.id.clone());
        let ids = &self.ctx.identities;
        use std::os::unix::ffi::OsStrExt;
        if crate::rules::is_loader_name(self.proc.exe_name().as_bytes()) {
            let program =
                crate::rules::loaded_program(&self.proc.args).map(|i| self.proc.args[i].clone())?;
            let file = open_in_process_root(self.pid, Path::new(&program))?;
            return ids
                .archiver_of_file(&file, container.as_deref())
                .map(|name| ArchiverHit::Identity {
                    name,
                    exe: program.to_string_lossy().into_owned(),
                });
        }
        ids.archiver_of(self.pid, container.as_deref())
            .map(|name| ArchiverHit::Identity {
                name,
                exe: self.proc.exe.to_string_lossy().into_owned(),
            })
    }

    fn container(&self) -> Option<ContainerFacts<'_>> {
        self.view().map(|v| facts(v))
    }

    fn files(&self) -> Vec<TouchedFile> {
        let Some(view) = self.view() else {
            return Vec::new();
        };
        match self.opened {
            Some(fd) => opened_file(self.ctx, self.pid, fd, &view.reference.id)
                .into_iter()
                .collect(),
            None => inherited_files(self.ctx, self.pid, &view.reference.id),
        }
    }

    fn cwd(&self) -> PathBuf {
        procfs::cwd(self.pid)
    }

    fn parent_executable(&self) -> Option<String> {
        procfs::exe(self.proc.stat.ppid)
            .ok()
            .map(|e| e.to_string_lossy().into_owned())
    }

    fn executable_sha256(&self) -> Option<[u8; 32]> {
        self.ctx.identities.sha256_of_exe(self.pid)
    }

    fn parent_executable_sha256(&self) -> Option<[u8; 32]> {
        self.ctx.identities.sha256_of_exe(self.proc.stat.ppid)
    }
}

/// Open `path` as process `pid` would: inside its root, relative to its
/// working directory, following symlinks that stay inside the root.
fn open_in_process_root(pid: i32, path: &Path) -> Option<std::fs::File> {
    use std::os::fd::AsFd;
    let rel = if path.is_absolute() {
        path.to_path_buf()
    } else {
        procfs::cwd(pid).join(path)
    };
    let root = std::fs::File::open(format!("/proc/{pid}/root")).ok()?;
    let fd = crate::watch::resolve::open_in_root(root.as_fd(), &rel, false).ok()?;
    let f = std::fs::File::from(fd);
    f.metadata().ok().filter(|m| m.is_file()).map(|_| f)
}

/// The candidate the rules judge for a read process.
fn candidate<'a>(proc: &'a RawProcess, event: Event, evidence: &'a dyn Evidence) -> Candidate<'a> {
    Candidate {
        exe: proc.exe.as_os_str(),
        exe_name: proc.exe_name(),
        comm: &proc.comm,
        args: &proc.args,
        event,
        evidence,
    }
}

/// The opened file: its canonical container path, and the path as the
/// opener reached it.
fn opened_file(
    ctx: &Context,
    pid: i32,
    fd: BorrowedFd<'_>,
    container: &str,
) -> Option<TouchedFile> {
    let fid = FileId::of(fd).ok()?.0;
    let (path, origin, opened_as) = canonical_path(ctx, pid, fd, fid, container);
    Some(TouchedFile {
        path,
        origin,
        opened_as: opened_as.to_string_lossy().into_owned(),
        touch: Touch::Opened,
        source: None,
    })
}

/// The canonical container path of an opened credential inode, its origin,
/// and the path as the opener reached it.
fn canonical_path(
    ctx: &Context,
    pid: i32,
    fd: BorrowedFd<'_>,
    fid: FileId,
    container: &str,
) -> (PathBuf, String, PathBuf) {
    let opened_as = fd_path(fd).unwrap_or_else(|| PathBuf::from(format!("fd:{}", fd.as_raw_fd())));
    let lookup = |id: FileId| {
        let idx = ctx.index.read().unwrap_or_else(|e| e.into_inner());
        idx.lookup(id, Some(container))
            .map(|m| (m.path.clone(), m.origin()))
    };
    if let Some((path, origin)) = lookup(fid) {
        return (path, origin, opened_as);
    }
    // A child of a marked directory: find the directory by its inode, seen
    // from the opener's own root (not under the index lock: no I/O is),
    // and append the file's name.
    if let (Some(parent), Some(name)) = (opened_as.parent(), opened_as.file_name()) {
        let rel = parent.strip_prefix("/").unwrap_or(parent);
        if let Ok(meta) = std::fs::metadata(Path::new(&format!("/proc/{pid}/root")).join(rel)) {
            use std::os::unix::fs::MetadataExt;
            let did = FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            };
            if let Some((dir, _)) = lookup(did) {
                let path = dir.join(name);
                return (path.clone(), path.to_string_lossy().into_owned(), opened_as);
            }
        }
    }
    let origin = opened_as.to_string_lossy().into_owned();
    (opened_as.clone(), origin, opened_as)
}

/// Marked files among the fds a freshly exec'd process holds, and the
/// tainted pipes it reads.
///
/// An archiver may be handed a credential file it never opens itself:
/// `gzip < ~/.ssh/id_rsa` (the shell opened it), or any fd the parent
/// passed down; or a pipe a process that read the credential writes into
/// (`cat key | gzip`, see `follow`).
fn inherited_files(ctx: &Context, pid: i32, container: &str) -> Vec<TouchedFile> {
    let held = procfs::open_files(pid, 1024);
    let mut out: Vec<TouchedFile> = {
        let idx = ctx.index.read().unwrap_or_else(|e| e.into_inner());
        held.into_iter()
            .filter_map(|f| {
                let m = idx.lookup(f.id, Some(container))?;
                if m.derived.is_some() && !ctx.follow.still_marked(f.id) {
                    return None;
                }
                Some(TouchedFile {
                    path: m.path.clone(),
                    origin: m.origin(),
                    opened_as: format!(
                        "{}{}",
                        crate::alert::aggregate::INHERITED,
                        f.fd.to_string_lossy()
                    ),
                    touch: Touch::Inherited,
                    source: None,
                })
            })
            .collect()
    };
    out.extend(piped_files(ctx, pid, container));
    out
}

/// The tainted pipes `pid` reads, as the credentials they carry.
fn piped_files(ctx: &Context, pid: i32, container: &str) -> Vec<TouchedFile> {
    ctx.follow
        .piped(container, pid)
        .into_iter()
        .filter(|(_, t)| !t.in_alerted_run)
        .map(|(p, t)| TouchedFile {
            path: t.credential,
            origin: t.origin,
            opened_as: format!(
                "fd {} reads {} from pid {} ({})",
                p.fd.to_string_lossy(),
                t.source.via,
                t.source.pid,
                t.source.name
            ),
            touch: Touch::Piped,
            source: Some(t.source),
        })
        .collect()
}

/// Follow credential data through a container's tainted pipes: every
/// process in the container that reads one is followed as a reader (its
/// own pipes tainted in turn, up to `follow::MAX_HOPS`), and judged as an
/// archiver for what it holds. The fd tables are read once.
pub fn follow_pipes(ctx: &Context, view: &Arc<ContainerView>) -> Vec<Finding> {
    bump(&ctx.stats.pipe_scans);
    let id = &view.reference.id;
    let tables: Vec<(i32, Vec<procfs::PipeFd>)> = procfs::members(view.pid_ns, view.mnt_ns)
        .into_iter()
        .filter(|pid| *pid != ctx.self_pid)
        .map(|pid| (pid, read_ends(pid, super::follow::MAX_FDS)))
        .filter(|(_, r)| !r.is_empty())
        .collect();
    // An anonymous pipe whose read end no process of the container holds
    // can never be read in it (its reader is outside: the engine's shim
    // holding the container's stdout): forget it.
    let held: std::collections::HashSet<FileId> = tables
        .iter()
        .flat_map(|(_, r)| r.iter().map(|p| p.id))
        .collect();
    ctx.follow.drop_unread(id, &held);
    follow_holders(ctx, view, &tables)
}

/// The pipe and FIFO read ends among `pid`'s first `max` fds.
fn read_ends(pid: i32, max: usize) -> Vec<procfs::PipeFd> {
    procfs::pipes(pid, max)
        .into_iter()
        .filter(|p| p.end.reads())
        .collect()
}

/// Siblings looked at for a reader whose full scan waits
/// ([`super::follow::SCANS_PER_SEC`]): its parent's children nearest to
/// it by pid, which is where a shell puts a pipeline's other members.
pub const MAX_SIBLINGS: usize = 8;
/// Fds of each sibling looked at: a pipeline's pipe is among a new
/// process's lowest. With [`MAX_SIBLINGS`], at most 256 entries a reader,
/// one full fd table's worth, whatever the container does.
pub const SIBLING_FDS: usize = 32;

/// [`follow_pipes`] for the pipeline of reader `pid` (its parent `ppid`)
/// only, when the container's full scans are over their rate: the
/// siblings that hold a pipe's read end, in its container. Bounded per
/// look whatever the container's size (the children lists of at most
/// eight threads, 4 KiB each; eight siblings; 32 fds each, read twice at
/// most), and [`super::follow::SIBLING_LOOKS_PER_SEC`] per container: a
/// container that makes eight decoy readers a second no longer gets its
/// ninth pipeline past the follower (an archiver fed by it may finish
/// before the follow thread's next look); one that makes more than 72 a
/// second is back to the follow thread's looks.
pub fn follow_siblings(
    ctx: &Context,
    view: &Arc<ContainerView>,
    pid: i32,
    ppid: i32,
) -> Vec<Finding> {
    bump(&ctx.stats.pipe_sibling_scans);
    let mut kids = procfs::children(ppid);
    kids.retain(|k| *k != pid && *k != ctx.self_pid);
    kids.sort_by_key(|k| k.abs_diff(pid));
    kids.truncate(MAX_SIBLINGS);
    // Every fd, not only stdin: a member just forked may not have moved
    // the pipe onto its stdin yet.
    // Membership first: the parent may be outside the container (an
    // engine's shim, whose other children are other containers').
    let tables: Vec<(i32, Vec<procfs::PipeFd>)> = kids
        .into_iter()
        .filter(|k| procfs::is_member(*k, view.pid_ns, view.mnt_ns))
        .map(|k| (k, read_ends(k, SIBLING_FDS)))
        .filter(|(_, r)| !r.is_empty())
        .collect();
    follow_holders(ctx, view, &tables)
}

/// Follow and judge the processes in `tables` (each with the pipe read
/// ends it holds) that read a tainted pipe of container `view`, hop by hop.
fn follow_holders(
    ctx: &Context,
    view: &Arc<ContainerView>,
    tables: &[(i32, Vec<procfs::PipeFd>)],
) -> Vec<Finding> {
    let id = &view.reference.id;
    let policy = ctx.policy();
    let mut out = Vec::new();
    let mut done = std::collections::HashSet::new();
    for _ in 0..=super::follow::MAX_HOPS {
        let mut more = false;
        for (pid, reads) in tables {
            if done.contains(pid) {
                continue;
            }
            let Some(taint) = reads.iter().find_map(|p| ctx.follow.taint_of(id, p.id)) else {
                continue;
            };
            done.insert(*pid);
            let Ok(stat) = procfs::stat(*pid) else {
                continue;
            };
            if !ctx.follow.note_piped(&ctx.stats, *pid, &stat, id, &taint) {
                continue;
            }
            let Ok(proc) = RawProcess::read_with(*pid, stat) else {
                continue;
            };
            more |= ctx.follow.describe(&ctx.stats, *pid, &proc);
            // The other end of an alerted archiver's own pipe (GNU tar's
            // gzip child) is part of that run: followed, not alerted again.
            if taint.in_alerted_run {
                continue;
            }
            let Some((proc, m)) = judge_holder(ctx, &policy, view, *pid, proc) else {
                continue;
            };
            ctx.follow.matched(*pid);
            let before = out.len();
            out.extend(findings(view, proc.complete(), m, false));
            ctx.stats
                .findings
                .fetch_add((out.len() - before) as u64, Ordering::Relaxed);
        }
        if !more {
            break;
        }
    }
    out
}

/// Judge `pid`, found holding a tainted pipe of container `view`, as an
/// archiver of what it reads: the process and the match, if it is one.
///
/// A pipeline member forked before the reader's open may exec its
/// archiver while it is judged, and the match would then mix the two
/// images (the shell's argv, the archiver's identity): if its image
/// changed meanwhile, the new one is read and judged instead, once (it
/// still holds the pipe). One that exited since keeps its match: it was
/// made on what it ran.
fn judge_holder(
    ctx: &Context,
    policy: &Policy,
    view: &Arc<ContainerView>,
    pid: i32,
    proc: RawProcess,
) -> Option<(RawProcess, crate::rules::judge::Matches)> {
    let mut proc = proc;
    for attempt in 0..2 {
        let evidence = ProcessEvidence {
            ctx,
            pid,
            proc: &proc,
            container: OnceCell::from(Some(view.clone())),
            opened: None,
        };
        let Verdict::Matched(m) = judge(policy, &proc, Event::Pipe, &evidence) else {
            return None;
        };
        drop(evidence);
        match image_now(pid, &proc) {
            Image::Same | Image::Gone => return Some((proc, m)),
            Image::Changed if attempt == 0 => {
                bump(&ctx.stats.pipe_judged_stale);
                proc = RawProcess::read(pid).ok()?;
            }
            Image::Changed => return None,
        }
    }
    None
}

/// What `pid` runs now, against the image `proc` was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Image {
    /// The same process, argv and environment addresses, and executable.
    Same,
    /// The same process, another image: it exec'd.
    Changed,
    /// Exited (or its pid is another process's now).
    Gone,
}

fn image_now(pid: i32, proc: &RawProcess) -> Image {
    let Ok(s) = procfs::stat(pid) else {
        return Image::Gone;
    };
    if s.start_time_ticks != proc.stat.start_time_ticks || s.exited() {
        return Image::Gone;
    }
    let addrs = |s: &procfs::Stat| (s.arg_start, s.arg_end, s.env_start, s.env_end);
    match procfs::exe(pid) {
        Err(_) => Image::Gone,
        Ok(e) if e == proc.exe && addrs(&s) == addrs(&proc.stat) => Image::Same,
        Ok(_) => Image::Changed,
    }
}

/// An exec while some container has tainted pipes: if the new program
/// reads one, follow it from here (a pipeline member forked after the
/// reader's scan, which may finish before the next look). Costs one lock
/// per exec while no container has a tainted pipe.
pub fn note_exec(ctx: &Context, pid: i32) {
    if !ctx.follow.any_taint() {
        return;
    }
    let Some(view) = ctx.container_of(pid) else {
        return;
    };
    let id = &view.reference.id;
    let Some((_, taint)) = ctx.follow.piped(id, pid).into_iter().next() else {
        return;
    };
    let Ok(stat) = procfs::stat(pid) else {
        return;
    };
    if ctx.follow.note_piped(&ctx.stats, pid, &stat, id, &taint) {
        // Its own pipes carry the data on (`cat key | base64 | gzip`).
        if let Ok(proc) = RawProcess::read_with(pid, stat) {
            ctx.follow.describe(&ctx.stats, pid, &proc);
        }
    }
}

/// [`follow_pipes`] for container `id`, if it is still watched.
pub fn follow_pipes_of(ctx: &Context, id: &str) -> Vec<Finding> {
    let view = ctx
        .index
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .container(id)
        .cloned();
    view.map(|v| follow_pipes(ctx, &v)).unwrap_or_default()
}

/// What a permission event produced: up to one finding per rule, and
/// those of the archivers found reading its pipes.
pub type OpenFindings = Vec<Finding>;

/// The findings of a verdict's matches for one process in one container.
fn findings(
    container: &ContainerView,
    process: ProcessInfo,
    m: Matches,
    denied: bool,
) -> impl Iterator<Item = Finding> {
    let action = container.action;
    let reference = container.reference.clone();
    let finding = move |trigger| Finding {
        at: SystemTime::now(),
        container: reference.clone(),
        trigger,
        process: process.clone(),
        action,
        response: None,
    };
    let exec = m.exec.map(|matched| Trigger::Exec { matched });
    let files = m.files.into_iter().map(move |f| Trigger::Open {
        path: f.file.path.to_string_lossy().into_owned(),
        origin: f.file.origin,
        opened_as: f.file.opened_as,
        pattern: f.pattern,
        archiver: f.archiver,
        denied: denied && f.file.touch == Touch::Opened,
        source: f.file.source,
    });
    files.chain(exec).map(finding)
}

/// Decide a permission event: `(response, findings)`.
///
/// Two rules are evaluated on the held process, in one call:
/// * the file rule, when an archiver opens a credential path;
/// * the seed rule on its argv. The exec path evaluates the seed rule too,
///   but asynchronously; here the opener is held inside `open(2)`, so its
///   argv cannot be gone. Both findings of one run merge into one alert.
pub fn decide_open(ctx: &Context, pid: i32, fd: BorrowedFd<'_>) -> (u32, OpenFindings) {
    bump(&ctx.stats.perm_events);
    if pid == ctx.self_pid {
        bump(&ctx.stats.own_pid);
        return (FAN_ALLOW, Vec::new());
    }
    // One read identifies the process image; an image already judged
    // benign under the current containers and policy is allowed at once.
    let Ok(stat) = procfs::stat(pid) else {
        bump(&ctx.stats.attribution_errors);
        return (FAN_ALLOW, Vec::new());
    };
    // Without the executable's identity the image is not cached at all.
    let key = procfs::exe_id(pid).ok().map(|exe| stat.image_key(pid, exe));
    let policy = ctx.policy();
    let generation = ctx.generation(&policy);
    if key.is_some_and(|key| ctx.is_benign(key, generation))
        && !ctx
            .follow
            .would_follow(&ctx.index, &policy.rules, pid, &stat, fd)
    {
        bump(&ctx.stats.cache_hits);
        return (FAN_ALLOW, Vec::new());
    }
    let Some(container) = ctx.container_of(pid) else {
        bump(&ctx.stats.host_process);
        if let Some(key) = key {
            ctx.remember_benign(key, generation);
        }
        return (FAN_ALLOW, Vec::new());
    };
    // A process in a container that opens a credential is followed from
    // here until it exits, whatever the rules say of it (see `follow`).
    ctx.follow.note_open(
        &ctx.index,
        &policy.rules,
        &ctx.stats,
        pid,
        &container.reference.id,
        &stat,
        fd,
    );
    let Ok(proc) = RawProcess::read_with(pid, stat) else {
        bump(&ctx.stats.attribution_errors);
        return (FAN_ALLOW, Vec::new());
    };
    let evidence = ProcessEvidence {
        ctx,
        pid,
        proc: &proc,
        container: OnceCell::from(Some(container.clone())),
        opened: Some(fd),
    };
    let verdict = judge(&policy, &proc, Event::Open, &evidence);
    drop(evidence);
    if matches!(verdict, Verdict::Matched(_)) {
        ctx.follow.matched(pid);
    }
    // A new reader's pipes are tainted (as part of its own alerted run
    // when it matched); look for their readers now, while it is held and
    // no data is in them yet.
    let mut found = Vec::new();
    if ctx.follow.describe(&ctx.stats, pid, &proc) {
        let id = &container.reference.id;
        if ctx.follow.may_scan(&ctx.stats, id) {
            found = follow_pipes(ctx, &container);
        } else if ctx.follow.may_look_at_siblings(id) {
            found = follow_siblings(ctx, &container, pid, proc.stat.ppid);
        }
    }
    let m = match verdict {
        Verdict::Matched(m) => m,
        Verdict::Benign => {
            // Neither rule can ever hold for this image, whatever it opens.
            if let Some(key) = key {
                ctx.remember_benign(key, generation);
            }
            return (FAN_ALLOW, found);
        }
        Verdict::Outside | Verdict::Quiet => return (FAN_ALLOW, found),
    };
    let denied = container.action.denies_open();
    found.extend(findings(&container, proc.complete(), m, denied));
    (if denied { FAN_DENY } else { FAN_ALLOW }, found)
}

fn judge(policy: &Policy, proc: &RawProcess, event: Event, evidence: &dyn Evidence) -> Verdict {
    policy
        .rules
        .judge(&policy.exceptions, &candidate(proc, event, evidence))
}

/// Where an exec event stands.
#[derive(Debug)]
pub enum ExecProbe {
    /// Decided: findings, or nothing to report.
    Done(Option<Box<Vec<Finding>>>),
    /// The exec has not completed yet; ask again shortly.
    Wait,
}

/// Probe an exec notification once: evaluate the rules on the new image
/// if the exec has completed.
///
/// The event is not a permission event, so the process runs on: its
/// `/proc/<pid>/cmdline` may still be the old image's. argv is trusted only
/// once [`settled`] says the exec is complete. The caller retries on
/// [`ExecProbe::Wait`] without blocking other events, and gives up after a
/// deadline.
///
/// `stat` holds the process's `/proc/<pid>/stat`, opened on the first
/// probe and read with one `pread` on each later one.
pub fn probe_exec(
    ctx: &Context,
    pid: i32,
    fid: FileId,
    class: ExeClass,
    stat: &mut Option<std::fs::File>,
) -> ExecProbe {
    if pid == ctx.self_pid {
        return ExecProbe::Done(None);
    }
    bump(&ctx.stats.exec_probes);
    let (st, comm) = match procfs::stat_at(pid, stat) {
        Ok((st, comm)) if !st.exited() => (st, comm),
        _ => {
            bump(&ctx.stats.exec_unsettled);
            return ExecProbe::Done(None);
        }
    };
    if !settled(pid, fid, &st) {
        return ExecProbe::Wait;
    }
    let policy = ctx.policy();
    let starts = ctx.process_events.load(Ordering::Relaxed);
    // A busybox applet with a plain name (`true`, `cat`, `sed`) is let go
    // without reading argv: its comm is the applet's, now that the exec
    // has settled (see `exe`).
    if class == ExeClass::MultiCall
        && !starts
        && exe::class_of_name(&policy.rules, comm.as_bytes()) == ExeClass::Plain
    {
        bump(&ctx.stats.exec_applets_skipped);
        return ExecProbe::Done(None);
    }
    let proc = match RawProcess::read_with(pid, st) {
        Ok(p) if !p.args.is_empty() => p,
        Ok(_) => return ExecProbe::Wait,
        Err(_) => {
            bump(&ctx.stats.exec_unsettled);
            return ExecProbe::Done(None);
        }
    };
    let evidence = ProcessEvidence {
        ctx,
        pid,
        proc: &proc,
        container: OnceCell::new(),
        opened: None,
    };
    // Most execs match nothing, and the rules decide that before any
    // container lookup.
    let verdict = judge(&policy, &proc, Event::Exec, &evidence);
    let matched = match verdict {
        Verdict::Matched(m) => Some(m),
        _ if !starts => return ExecProbe::Done(None),
        _ => None,
    };
    let Some(container) = evidence.view().cloned() else {
        return ExecProbe::Done(None);
    };
    drop(evidence);
    // An archiver exec'd on a tainted pipe is followed from here, so what
    // it writes is a derived credential too.
    let piped = matched
        .as_ref()
        .is_some_and(|m| m.files.iter().any(|f| f.file.touch == Touch::Piped));
    if piped {
        let id = &container.reference.id;
        if let Some((_, t)) = ctx.follow.piped(id, pid).into_iter().next() {
            ctx.follow.note_piped(&ctx.stats, pid, &proc.stat, id, &t);
            ctx.follow.matched(pid);
        }
    }
    let process = proc.complete();
    let start = starts.then(|| Finding {
        at: SystemTime::now(),
        container: container.reference.clone(),
        process: process.clone(),
        trigger: Trigger::Start,
        action: container.action,
        response: None,
    });
    let mut out: Vec<Finding> = start.into_iter().collect();
    if let Some(m) = matched {
        let before = out.len();
        out.extend(findings(&container, process, m, false));
        ctx.stats
            .findings
            .fetch_add((out.len() - before) as u64, Ordering::Relaxed);
    }
    ExecProbe::Done(Some(Box::new(out)))
}

/// Whether the process's exec of `fid` has completed, judged from its
/// stat `st`. Three checks, because each alone is fooled:
/// * `/proc/<pid>/exe` is the event's file (it still names the old image
///   until the kernel switches the mm);
/// * argv is non-empty (the new mm has no argv until the ELF loader
///   writes it, after the exe switch; the caller checks the argv it reads
///   too);
/// * when the parent runs the same executable (busybox sh forking busybox
///   tar), the child's argv must not be at the parent's address, which a
///   forked child keeps until its own exec.
///
/// Once these hold, `comm` is the new image's too (the kernel sets it
/// before the ELF loader writes argv).
fn settled(pid: i32, fid: FileId, st: &procfs::Stat) -> bool {
    if st.arg_end <= st.arg_start {
        return false;
    }
    let Ok((dev, ino)) = procfs::exe_id(pid) else {
        return false;
    };
    if (FileId { dev, ino }) != fid {
        return false;
    }
    if st.ppid > 1 && procfs::exe_id(st.ppid).ok() == Some((dev, ino)) {
        match procfs::stat(st.ppid) {
            Ok(parent) if parent.arg_start != st.arg_start => {}
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context::with_defaults()
    }

    #[test]
    fn an_image_is_the_same_changed_by_an_exec_or_gone() {
        use std::io::Write;
        let me = std::process::id() as i32;
        let mine = RawProcess::read(me).unwrap();
        assert_eq!(image_now(me, &mine), Image::Same);
        // A shell that execs sleep once told to: read before, then after.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x; exec sleep 5"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // Read once its exec of sh has completed (argv in place, and the
        // same on a second look).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let before = loop {
            assert!(std::time::Instant::now() < deadline, "sh never settled");
            let Ok(p) = RawProcess::read(pid) else {
                continue;
            };
            if p.exe.to_string_lossy().contains("sh")
                && p.args.first().is_some_and(|a| a == "sh")
                && image_now(pid, &p) == Image::Same
            {
                break p;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while image_now(pid, &before) == Image::Same && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(image_now(pid, &before), Image::Changed);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(image_now(pid, &before), Image::Gone);
    }

    #[test]
    fn own_pid_is_allowed_without_lookups() {
        let c = ctx();
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        let (r, findings) = decide_open(&c, c.self_pid, f.as_fd());
        assert_eq!(r, FAN_ALLOW);
        assert!(findings.is_empty());
        assert_eq!(c.stats.snapshot().own_pid, 1);
    }

    #[test]
    fn unregistered_processes_are_allowed_and_counted() {
        let c = ctx();
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        let parent = procfs::stat(c.self_pid).unwrap().ppid;
        let (r, findings) = decide_open(&c, parent, f.as_fd());
        assert_eq!(r, FAN_ALLOW);
        assert!(findings.is_empty());
        assert_eq!(c.stats.snapshot().host_process, 1);
        // A vanished pid is not a container member either.
        let (r, _) = decide_open(&c, i32::MAX, f.as_fd());
        assert_eq!(r, FAN_ALLOW);
    }
}
