//! Rule decision for one event: attribute the process, find its container
//! and the canonical path, evaluate the rules, and say allow or deny.
//!
//! These functions do procfs reads (attribution) but never write, log or
//! block on anything but the kernel's own `/proc`; the alert work they
//! produce goes to a queue. They return an answer on every path, errors
//! included: an unattributable event is allowed, because a daemon that
//! cannot tell what happened must not break the container.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::alert::{Finding, Trigger};
use crate::attribution::{self, RawProcess};
use crate::config::Action;
use crate::index::{ContainerView, MarkIndex};
use crate::resolve::FileId;
use crate::rules::Rules;
use crate::watch::{FAN_ALLOW, FAN_DENY};

/// How far up the parent chain we look for a container member, for
/// processes that made their own pid namespace inside the container.
const MAX_ANCESTRY: usize = 16;
/// How long an exec event waits for `/proc/<pid>/exe` to become the file the
/// event names before giving up on argv.
const EXEC_SETTLE: Duration = Duration::from_millis(20);

/// The compiled policy, swapped whole on reload.
#[derive(Debug)]
pub struct Policy {
    pub rules: Rules,
    pub default_action: Action,
}

/// Counters the decision threads bump; read by `keyward status`.
#[derive(Debug, Default)]
pub struct Stats {
    pub perm_events: AtomicU64,
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub own_pid: AtomicU64,
    pub host_process: AtomicU64,
    pub exec_events: AtomicU64,
    pub exec_unsettled: AtomicU64,
    pub findings: AtomicU64,
    pub queue_drops: AtomicU64,
    pub attribution_errors: AtomicU64,
    pub respond_errors: AtomicU64,
    pub parse_errors: AtomicU64,
    pub overflows: AtomicU64,
    pub panics: AtomicU64,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub perm_events: u64,
    pub allowed: u64,
    pub denied: u64,
    pub own_pid: u64,
    pub host_process: u64,
    pub exec_events: u64,
    pub exec_unsettled: u64,
    pub findings: u64,
    pub queue_drops: u64,
    pub attribution_errors: u64,
    pub respond_errors: u64,
    pub parse_errors: u64,
    pub overflows: u64,
    pub panics: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            perm_events: g(&self.perm_events),
            allowed: g(&self.allowed),
            denied: g(&self.denied),
            own_pid: g(&self.own_pid),
            host_process: g(&self.host_process),
            exec_events: g(&self.exec_events),
            exec_unsettled: g(&self.exec_unsettled),
            findings: g(&self.findings),
            queue_drops: g(&self.queue_drops),
            attribution_errors: g(&self.attribution_errors),
            respond_errors: g(&self.respond_errors),
            parse_errors: g(&self.parse_errors),
            overflows: g(&self.overflows),
            panics: g(&self.panics),
        }
    }
}

/// Everything a decision reads.
#[derive(Debug)]
pub struct Context {
    pub self_pid: i32,
    pub index: RwLock<MarkIndex>,
    pub policy: RwLock<Arc<Policy>>,
    pub stats: Stats,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Context {
    pub fn new(policy: Policy) -> Self {
        Self {
            self_pid: std::process::id() as i32,
            index: RwLock::new(MarkIndex::default()),
            policy: RwLock::new(Arc::new(policy)),
            stats: Stats::default(),
        }
    }

    /// The current policy (cheap clone of an Arc).
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The container `pid` belongs to: by its pid or mount namespace, or by
    /// an ancestor's (a process that unshared its own namespaces inside the
    /// container still descends from it).
    pub fn container_of(&self, pid: i32) -> Option<Arc<ContainerView>> {
        let idx = self.index.read().unwrap_or_else(|e| e.into_inner());
        let mut cur = pid;
        for _ in 0..MAX_ANCESTRY {
            let pid_ns = attribution::ns_inode(cur, "pid").ok()?;
            let mnt_ns = attribution::ns_inode(cur, "mnt").unwrap_or(0);
            if let Some(v) = idx.container_of(pid_ns, mnt_ns) {
                return Some(v.clone());
            }
            cur = attribution::stat(cur).ok()?.ppid;
            if cur <= 1 {
                return None;
            }
        }
        None
    }
}

/// The canonical container path of an opened credential inode, and the path
/// as the opener reached it.
fn canonical_path(
    ctx: &Context,
    pid: i32,
    fd: BorrowedFd<'_>,
    fid: FileId,
    container: &str,
) -> (PathBuf, PathBuf) {
    let opened_as = crate::watch::fd_path(fd)
        .unwrap_or_else(|| PathBuf::from(format!("fd:{}", fd.as_raw_fd())));
    let idx = ctx.index.read().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = idx.lookup(fid, Some(container)) {
        return (m.path.clone(), opened_as);
    }
    // A child of a marked directory: find the directory by its inode, seen
    // from the opener's own root, and append the file's name.
    if let (Some(parent), Some(name)) = (opened_as.parent(), opened_as.file_name()) {
        let rel = parent.strip_prefix("/").unwrap_or(parent);
        if let Ok(meta) = std::fs::metadata(Path::new(&format!("/proc/{pid}/root")).join(rel)) {
            use std::os::unix::fs::MetadataExt;
            let did = FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            };
            if let Some(m) = idx.lookup(did, Some(container)) {
                return (m.path.join(name), opened_as);
            }
        }
    }
    (opened_as.clone(), opened_as)
}

/// Decide a permission event: `(response, finding)`.
pub fn decide_open(ctx: &Context, pid: i32, fd: BorrowedFd<'_>) -> (u32, Option<Finding>) {
    bump(&ctx.stats.perm_events);
    if pid == ctx.self_pid {
        bump(&ctx.stats.own_pid);
        return (FAN_ALLOW, None);
    }
    let Ok((fid, _)) = FileId::of(fd) else {
        bump(&ctx.stats.attribution_errors);
        return (FAN_ALLOW, None);
    };
    let Some(container) = ctx.container_of(pid) else {
        bump(&ctx.stats.host_process);
        return (FAN_ALLOW, None);
    };
    let policy = ctx.policy();
    let (path, opened_as) = canonical_path(ctx, pid, fd, fid, &container.reference.id);
    let pattern = policy
        .rules
        .credential_pattern(path.as_os_str())
        .or_else(|| policy.rules.credential_pattern(opened_as.as_os_str()));
    let Some(pattern) = pattern else {
        return (FAN_ALLOW, None);
    };
    let proc = match RawProcess::read(pid) {
        Ok(p) => p,
        Err(_) => {
            bump(&ctx.stats.attribution_errors);
            return (FAN_ALLOW, None);
        }
    };
    let Some(archiver) = policy.rules.archiver_of(proc.exe_name(), &proc.args) else {
        return (FAN_ALLOW, None);
    };
    // GNU tar looks up /etc/passwd for every archive it writes; that alone
    // is not collection. The cwd is the opener's, inside its own root.
    if policy
        .rules
        .is_incidental(path.as_os_str(), &proc.args, &attribution::cwd(pid))
    {
        return (FAN_ALLOW, None);
    }
    let action = container.action;
    let denied = action.denies_open();
    let finding = Finding {
        at: SystemTime::now(),
        container: container.reference.clone(),
        trigger: Trigger::Open {
            path: path.to_string_lossy().into_owned(),
            opened_as: opened_as.to_string_lossy().into_owned(),
            pattern: pattern.to_string(),
            archiver,
            denied,
        },
        process: proc.complete(),
        action,
    };
    (if denied { FAN_DENY } else { FAN_ALLOW }, Some(finding))
}

/// Whether an exec event's file is an ELF interpreter (`ld-linux*.so*`,
/// `ld-musl*`): the kernel reports the interpreter's open with
/// `FAN_OPEN_EXEC` too, but the process is running the main binary.
fn is_interpreter(path: &Path) -> bool {
    let name = path.file_name().map(OsStr::as_bytes).unwrap_or_default();
    name.starts_with(b"ld-linux") || name.starts_with(b"ld-musl") || name.starts_with(b"ld.so")
}

/// Decide an exec notification: evaluate the seed rule on the new image.
///
/// The event is not a permission event, so the process runs on: its
/// `/proc/<pid>/cmdline` may still be the old image's. argv is trusted only
/// once `/proc/<pid>/exe` is the very file the event names.
pub fn decide_exec(ctx: &Context, pid: i32, fd: BorrowedFd<'_>) -> Option<Finding> {
    bump(&ctx.stats.exec_events);
    if pid == ctx.self_pid {
        return None;
    }
    let container = ctx.container_of(pid)?;
    let (fid, _) = FileId::of(fd).ok()?;
    if crate::watch::fd_path(fd).is_some_and(|p| is_interpreter(&p)) {
        return None;
    }
    let start = std::time::Instant::now();
    loop {
        match attribution::exe_id(pid) {
            Ok((dev, ino)) if (FileId { dev, ino }) == fid => break,
            Ok(_) if start.elapsed() < EXEC_SETTLE => {
                std::thread::sleep(Duration::from_micros(200))
            }
            _ => {
                bump(&ctx.stats.exec_unsettled);
                return None;
            }
        }
    }
    let proc = RawProcess::read(pid).ok()?;
    let policy = ctx.policy();
    let matched = policy.rules.match_exec(proc.exe_name(), &proc.args)?;
    bump(&ctx.stats.findings);
    Some(Finding {
        at: SystemTime::now(),
        container: container.reference.clone(),
        process: proc.complete(),
        trigger: Trigger::Exec { matched },
        action: container.action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RulesConfig;

    fn ctx() -> Context {
        Context::new(Policy {
            rules: Rules::compile(&RulesConfig::default()).unwrap(),
            default_action: Action::Alert,
        })
    }

    #[test]
    fn own_pid_is_allowed_without_lookups() {
        let c = ctx();
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        let (r, finding) = decide_open(&c, c.self_pid, f.as_fd());
        assert_eq!(r, FAN_ALLOW);
        assert!(finding.is_none());
        assert_eq!(c.stats.snapshot().own_pid, 1);
    }

    #[test]
    fn unregistered_processes_are_allowed_and_counted() {
        let c = ctx();
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        let parent = attribution::stat(c.self_pid).unwrap().ppid;
        let (r, finding) = decide_open(&c, parent, f.as_fd());
        assert_eq!(r, FAN_ALLOW);
        assert!(finding.is_none());
        assert_eq!(c.stats.snapshot().host_process, 1);
        // A vanished pid is not a container member either.
        let (r, _) = decide_open(&c, i32::MAX, f.as_fd());
        assert_eq!(r, FAN_ALLOW);
    }

    #[test]
    fn interpreters_are_recognised() {
        assert!(is_interpreter(Path::new("/lib64/ld-linux-x86-64.so.2")));
        assert!(is_interpreter(Path::new("/lib/ld-musl-x86_64.so.1")));
        assert!(!is_interpreter(Path::new("/usr/bin/tar")));
    }
}
