//! Rule decision for one event: attribute the process, find its container
//! and the canonical path, evaluate the rules, and say allow or deny.
//!
//! These functions do procfs reads (attribution) but never write, log or
//! block on anything but the kernel's own `/proc`; the alert work they
//! produce goes to a queue. They return an answer on every path, errors
//! included: an unattributable event is allowed, because a daemon that
//! cannot tell what happened must not break the container.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::alert::{Finding, Trigger};
use crate::attribute::procfs::{self, RawProcess};
use crate::config::Action;
use crate::rules::Rules;
use crate::watch::fanotify::{FAN_ALLOW, FAN_DENY};
use crate::watch::index::{ContainerView, MarkIndex};
use crate::watch::resolve::FileId;

/// How far up the parent chain we look for a container member, for
/// processes that made their own pid namespace inside the container.
const MAX_ANCESTRY: usize = 16;
/// How long an exec event waits for its exec to complete before giving up
/// on argv.
pub const EXEC_SETTLE: Duration = Duration::from_millis(250);

/// The compiled policy, swapped whole on reload.
#[derive(Debug)]
pub struct Policy {
    pub rules: Rules,
    pub default_action: Action,
    pub exceptions: crate::rules::exceptions::Exceptions,
    /// Unique per compiled policy, for caches made under it.
    pub generation: u64,
}

/// Source of [`Policy::generation`].
static POLICY_GENERATION: AtomicU64 = AtomicU64::new(1);
/// Processes remembered as benign before the cache starts over.
const BENIGN_CACHE_MAX: usize = 16 * 1024;

impl Policy {
    /// Compile a config's rules and exceptions.
    pub fn from_config(cfg: &crate::config::Config) -> Result<Self, crate::config::ConfigError> {
        Ok(Self {
            rules: Rules::compile(&cfg.rules)?,
            default_action: cfg.response.action,
            exceptions: crate::rules::exceptions::Exceptions::compile(&cfg.exceptions)?,
            generation: POLICY_GENERATION.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Whether an exception suppresses `rule_id` for this process in this
    /// container (counted by the exception when it does).
    pub fn excepted(&self, rule_id: &str, c: &ContainerView, p: &RawProcess) -> bool {
        if self.exceptions.is_empty() {
            return false;
        }
        let exe = p.exe.to_string_lossy();
        let parent = if self.exceptions.need_parent() {
            procfs::exe(p.stat.ppid)
                .ok()
                .map(|e| e.to_string_lossy().into_owned())
        } else {
            None
        };
        let cmdline: Vec<std::borrow::Cow<'_, str>> =
            p.args.iter().map(|a| a.to_string_lossy()).collect();
        let cmdline = cmdline.join(" ");
        self.exceptions
            .suppress(&crate::rules::exceptions::Subject {
                rule_id,
                container_name: c.reference.name.as_deref(),
                image: c.reference.image.as_deref(),
                annotations: &c.annotations,
                executable: &exe,
                parent_executable: parent.as_deref(),
                command_line: &cmdline,
            })
            .is_some()
    }
}

/// Counters the decision threads bump; read by `keyward status`.
#[derive(Debug, Default)]
pub struct Stats {
    pub perm_events: AtomicU64,
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub own_pid: AtomicU64,
    pub host_process: AtomicU64,
    /// Permission events answered from the benign-process cache.
    pub cache_hits: AtomicU64,
    pub exec_events: AtomicU64,
    /// Exec events read once, after `exe::PLAIN_DELAY` (launchers, and
    /// plain programs that could not be ignored).
    pub exec_plain: AtomicU64,
    /// Probes of pending execs (reads of their `/proc/<pid>/stat`).
    pub exec_probes: AtomicU64,
    /// Settled busybox applets let go by their plain `comm`.
    pub exec_applets_skipped: AtomicU64,
    /// Exec storms (see `answer::Storm`) and the multi-call execs read in
    /// one, a tick at a time.
    pub exec_storms: AtomicU64,
    pub exec_batched: AtomicU64,
    /// Ignore marks placed in the exec group (ELF interpreters and plain
    /// programs, whose execs the kernel then stops reporting).
    pub exec_ignored: AtomicU64,
    pub exec_unsettled: AtomicU64,
    /// Execs still not complete after [`EXEC_SETTLE`] (the rest of
    /// `exec_unsettled` exited before they could be read).
    pub exec_timeouts: AtomicU64,
    pub findings: AtomicU64,
    pub queue_drops: AtomicU64,
    pub attribution_errors: AtomicU64,
    pub respond_errors: AtomicU64,
    pub parse_errors: AtomicU64,
    pub overflows: AtomicU64,
    pub panics: AtomicU64,
    pub deadline_releases: AtomicU64,
    /// Rescans of containers for credential paths created after start.
    pub rescans: AtomicU64,
    /// Decision latency histogram: bucket i counts decisions that took
    /// less than 2^i microseconds (the last bucket takes the rest).
    pub latency_us: [AtomicU64; LATENCY_BUCKETS],
}

/// Buckets of the latency histogram (up to ~2^23 us = 8 s).
pub const LATENCY_BUCKETS: usize = 24;

/// Decision latency percentiles, from the histogram (upper bucket bounds).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LatencySnapshot {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_bucket_us: u64,
    /// (upper bound in us, count) for every non-empty bucket.
    pub buckets: Vec<(u64, u64)>,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub perm_events: u64,
    pub allowed: u64,
    pub denied: u64,
    pub own_pid: u64,
    pub host_process: u64,
    pub cache_hits: u64,
    pub exec_events: u64,
    pub exec_plain: u64,
    pub exec_probes: u64,
    pub exec_ignored: u64,
    pub exec_applets_skipped: u64,
    pub exec_storms: u64,
    pub exec_batched: u64,
    pub exec_unsettled: u64,
    pub exec_timeouts: u64,
    pub findings: u64,
    pub queue_drops: u64,
    pub attribution_errors: u64,
    pub respond_errors: u64,
    pub parse_errors: u64,
    pub overflows: u64,
    pub panics: u64,
    pub deadline_releases: u64,
    pub rescans: u64,
    pub latency: LatencySnapshot,
}

impl Stats {
    /// The counters whose growth means degraded coverage.
    pub fn degradation(&self) -> crate::alert::Degradation {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        crate::alert::Degradation {
            deadline_releases: g(&self.deadline_releases),
            overflows: g(&self.overflows),
            queue_drops: g(&self.queue_drops),
            parse_errors: g(&self.parse_errors),
            panics: g(&self.panics),
        }
    }

    /// Count one decision's latency.
    pub fn record_latency(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let bucket = (u64::BITS - us.leading_zeros()) as usize;
        self.latency_us[bucket.min(LATENCY_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    fn latency(&self) -> LatencySnapshot {
        let counts: Vec<u64> = self
            .latency_us
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        let upper = |i: usize| 1u64 << i;
        let pct = |p: u64| {
            let want = (count * p).div_ceil(100).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want {
                    return upper(i);
                }
            }
            0
        };
        LatencySnapshot {
            count,
            p50_us: if count == 0 { 0 } else { pct(50) },
            p99_us: if count == 0 { 0 } else { pct(99) },
            max_bucket_us: counts.iter().rposition(|&c| c > 0).map(upper).unwrap_or(0),
            buckets: counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, &c)| (upper(i), c))
                .collect(),
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            perm_events: g(&self.perm_events),
            allowed: g(&self.allowed),
            denied: g(&self.denied),
            own_pid: g(&self.own_pid),
            host_process: g(&self.host_process),
            cache_hits: g(&self.cache_hits),
            exec_events: g(&self.exec_events),
            exec_plain: g(&self.exec_plain),
            exec_probes: g(&self.exec_probes),
            exec_ignored: g(&self.exec_ignored),
            exec_applets_skipped: g(&self.exec_applets_skipped),
            exec_storms: g(&self.exec_storms),
            exec_batched: g(&self.exec_batched),
            exec_unsettled: g(&self.exec_unsettled),
            exec_timeouts: g(&self.exec_timeouts),
            findings: g(&self.findings),
            queue_drops: g(&self.queue_drops),
            attribution_errors: g(&self.attribution_errors),
            respond_errors: g(&self.respond_errors),
            parse_errors: g(&self.parse_errors),
            overflows: g(&self.overflows),
            panics: g(&self.panics),
            deadline_releases: g(&self.deadline_releases),
            rescans: g(&self.rescans),
            latency: self.latency(),
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
    /// Archivers known by content, for copied or renamed binaries.
    pub identities: crate::attribute::identity::Identities,
    /// What each exec'd file is, so plain programs are not probed early.
    pub exe_classes: crate::attribute::exe::ExeClasses,
    /// Process images already found to match neither rule, with the index
    /// and policy generations they were judged under. A shell reading a
    /// credential directory in a loop then costs one `/proc/<pid>/stat`
    /// read per open instead of a full attribution.
    benign: std::sync::Mutex<HashMap<procfs::ImageKey, (u64, u64)>>,
    /// Whether every exec in a watched container is reported as a process
    /// start event (`alerts.process_events`).
    pub process_events: std::sync::atomic::AtomicBool,
    /// Bumped each time the exec group's ignore marks are flushed outside
    /// the exec loop (a container went), so the loop's count of them
    /// starts over.
    pub ignores_flushed: AtomicU64,
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
            identities: crate::attribute::identity::Identities::default(),
            exe_classes: crate::attribute::exe::ExeClasses::default(),
            benign: std::sync::Mutex::new(HashMap::new()),
            process_events: std::sync::atomic::AtomicBool::new(false),
            ignores_flushed: AtomicU64::new(0),
        }
    }

    fn is_benign(&self, key: procfs::ImageKey, generation: (u64, u64)) -> bool {
        self.benign
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            == Some(&generation)
    }

    fn remember_benign(&self, key: procfs::ImageKey, generation: (u64, u64)) {
        let mut b = self.benign.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= BENIGN_CACHE_MAX {
            b.clear();
        }
        b.insert(key, generation);
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
            // The pid namespace decides almost always; the mount namespace
            // is read only on a miss (containers sharing the host's pids).
            let pid_ns = procfs::ns_inode(cur, "pid").ok()?;
            if let Some(v) = idx.container_of(pid_ns, 0) {
                return Some(v.clone());
            }
            let mnt_ns = procfs::ns_inode(cur, "mnt").unwrap_or(0);
            if let Some(v) = idx.container_of(0, mnt_ns) {
                return Some(v.clone());
            }
            cur = procfs::stat(cur).ok()?.ppid;
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
    let opened_as = crate::watch::fanotify::fd_path(fd)
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

/// What a permission event produced: up to one finding per rule.
pub type OpenFindings = [Option<Finding>; 2];

/// Decide a permission event: `(response, findings)`.
///
/// Two rules are evaluated on the held process:
/// * the file rule, when an archiver opens a credential path;
/// * the seed rule on its argv. The exec path evaluates the seed rule too,
///   but asynchronously; here the opener is held inside `open(2)`, so its
///   argv cannot be gone. Both findings of one run merge into one alert.
pub fn decide_open(ctx: &Context, pid: i32, fd: BorrowedFd<'_>) -> (u32, OpenFindings) {
    bump(&ctx.stats.perm_events);
    if pid == ctx.self_pid {
        bump(&ctx.stats.own_pid);
        return (FAN_ALLOW, [None, None]);
    }
    // One read identifies the process image; an image already judged
    // benign under the current containers and policy is allowed at once.
    let Ok(stat) = procfs::stat(pid) else {
        bump(&ctx.stats.attribution_errors);
        return (FAN_ALLOW, [None, None]);
    };
    let key = stat.image_key(pid);
    let policy = ctx.policy();
    let generation = (
        ctx.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .generation(),
        policy.generation,
    );
    if ctx.is_benign(key, generation) {
        bump(&ctx.stats.cache_hits);
        return (FAN_ALLOW, [None, None]);
    }
    let Some(container) = ctx.container_of(pid) else {
        bump(&ctx.stats.host_process);
        ctx.remember_benign(key, generation);
        return (FAN_ALLOW, [None, None]);
    };
    let proc = match RawProcess::read_with(pid, stat) {
        Ok(p) => p,
        Err(_) => {
            bump(&ctx.stats.attribution_errors);
            return (FAN_ALLOW, [None, None]);
        }
    };
    let exec_match = policy
        .rules
        .match_exec_names(&[proc.exe_name(), &proc.comm], &proc.args);
    let archiver = archiver_of(ctx, &policy, pid, &proc);
    if exec_match.is_none() && archiver.is_none() {
        // Neither rule can ever hold for this image, whatever it opens.
        ctx.remember_benign(key, generation);
        return (FAN_ALLOW, [None, None]);
    }
    let exec_match =
        exec_match.filter(|_| !policy.excepted(crate::rules::EXEC_RULE_ID, &container, &proc));
    let file_hit = archiver
        .and_then(|a| file_rule(ctx, &policy, pid, fd, &container, &proc, a))
        .filter(|_| !policy.excepted(crate::rules::FILE_RULE_ID, &container, &proc));
    if exec_match.is_none() && file_hit.is_none() {
        return (FAN_ALLOW, [None, None]);
    }
    let action = container.action;
    let denied = action.denies_open();
    let process = proc.complete();
    let finding = |trigger| Finding {
        at: SystemTime::now(),
        container: container.reference.clone(),
        trigger,
        process: process.clone(),
        action,
        response: None,
    };
    let exec = exec_match.map(|matched| finding(Trigger::Exec { matched }));
    let file = file_hit.map(|(path, opened_as, pattern, archiver)| {
        finding(Trigger::Open {
            path,
            opened_as,
            pattern,
            archiver,
            denied,
        })
    });
    (if denied { FAN_DENY } else { FAN_ALLOW }, [file, exec])
}

/// Whether the process is an archiver: by name (executable, `comm`,
/// argv, wrappers), else by the content of its executable.
fn archiver_of(
    ctx: &Context,
    policy: &Policy,
    pid: i32,
    proc: &RawProcess,
) -> Option<crate::rules::ArchiverHit> {
    if !policy.rules.file_enabled {
        return None;
    }
    policy
        .rules
        .archiver_of(proc.exe_name(), &proc.comm, &proc.args)
        .or_else(|| {
            ctx.identities
                .archiver_of(pid)
                .map(|name| crate::rules::ArchiverHit::Identity {
                    name,
                    exe: proc.exe.to_string_lossy().into_owned(),
                })
        })
}

/// The file rule: (canonical path, path as opened, pattern, archiver hit).
fn file_rule(
    ctx: &Context,
    policy: &Policy,
    pid: i32,
    fd: BorrowedFd<'_>,
    container: &ContainerView,
    proc: &RawProcess,
    archiver: crate::rules::ArchiverHit,
) -> Option<(String, String, String, crate::rules::ArchiverHit)> {
    let fid = FileId::of(fd).ok()?.0;
    let (path, opened_as) = canonical_path(ctx, pid, fd, fid, &container.reference.id);
    let pattern = policy
        .rules
        .credential_pattern(path.as_os_str())
        .or_else(|| policy.rules.credential_pattern(opened_as.as_os_str()))?;
    // GNU tar looks up /etc/passwd for every archive it writes; that alone
    // is not collection. The cwd is the opener's, inside its own root.
    if policy
        .rules
        .is_incidental(path.as_os_str(), &proc.args, &procfs::cwd(pid))
    {
        return None;
    }
    Some((
        path.to_string_lossy().into_owned(),
        opened_as.to_string_lossy().into_owned(),
        pattern.to_string(),
        archiver,
    ))
}

/// Where an exec event stands.
#[derive(Debug)]
pub enum ExecProbe {
    /// Decided: findings, or nothing to report.
    Done(Option<Box<Vec<Finding>>>),
    /// The exec has not completed yet; ask again shortly.
    Wait,
}

/// Probe an exec notification once: evaluate the seed rule on the new
/// image if the exec has completed.
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
    class: crate::attribute::exe::ExeClass,
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
    if class == crate::attribute::exe::ExeClass::MultiCall
        && !starts
        && crate::attribute::exe::class_of_name(&policy.rules, comm.as_bytes())
            == crate::attribute::exe::ExeClass::Plain
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
    // Most execs match nothing: decide that before any container lookup.
    let matched = policy
        .rules
        .match_exec_names(&[proc.exe_name(), &proc.comm], &proc.args);
    let archiver = archiver_of(ctx, &policy, pid, &proc);
    if matched.is_none() && archiver.is_none() && !starts {
        return ExecProbe::Done(None);
    }
    let Some(container) = ctx.container_of(pid) else {
        return ExecProbe::Done(None);
    };
    let matched =
        matched.filter(|_| !policy.excepted(crate::rules::EXEC_RULE_ID, &container, &proc));
    // An archiver may be handed a credential file it never opens itself:
    // `gzip < ~/.ssh/id_rsa` (the shell opened it), or any fd the parent
    // passed down. Those fds are checked against the marked inodes now.
    let inherited = archiver
        .filter(|_| !policy.excepted(crate::rules::FILE_RULE_ID, &container, &proc))
        .map(|a| inherited_credentials(ctx, &policy, pid, &container, a))
        .unwrap_or_default();
    if matched.is_none() && inherited.is_empty() && !starts {
        return ExecProbe::Done(None);
    }
    let process = proc.complete();
    let finding = |trigger| Finding {
        at: SystemTime::now(),
        container: container.reference.clone(),
        process: process.clone(),
        trigger,
        action: container.action,
        response: None,
    };
    let mut out: Vec<Finding> = starts
        .then(|| finding(Trigger::Start))
        .into_iter()
        .collect();
    out.extend(matched.map(|m| finding(Trigger::Exec { matched: m })));
    out.extend(inherited.into_iter().map(finding));
    let alerts = out.iter().filter(|f| f.trigger != Trigger::Start).count();
    ctx.stats
        .findings
        .fetch_add(alerts as u64, Ordering::Relaxed);
    ExecProbe::Done(Some(Box::new(out)))
}

/// Credential files among the fds a freshly exec'd archiver holds, as
/// `Open` triggers (not denied: the file is already open).
fn inherited_credentials(
    ctx: &Context,
    policy: &Policy,
    pid: i32,
    container: &ContainerView,
    archiver: crate::rules::ArchiverHit,
) -> Vec<Trigger> {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let idx = ctx.index.read().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    for entry in dir.flatten().take(1024) {
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        let fid = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let Some(m) = idx.lookup(fid, Some(&container.reference.id)) else {
            continue;
        };
        let Some(pattern) = policy.rules.credential_pattern(m.path.as_os_str()) else {
            continue;
        };
        out.push(Trigger::Open {
            path: m.path.to_string_lossy().into_owned(),
            opened_as: format!("inherited fd {}", entry.file_name().to_string_lossy()),
            pattern: pattern.to_string(),
            archiver: archiver.clone(),
            denied: false,
        });
    }
    out
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
        Context::new(Policy::from_config(&crate::config::Config::default()).unwrap())
    }

    #[test]
    fn own_pid_is_allowed_without_lookups() {
        let c = ctx();
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        let (r, findings) = decide_open(&c, c.self_pid, f.as_fd());
        assert_eq!(r, FAN_ALLOW);
        assert!(findings.iter().all(Option::is_none));
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
        assert!(findings.iter().all(Option::is_none));
        assert_eq!(c.stats.snapshot().host_process, 1);
        // A vanished pid is not a container member either.
        let (r, _) = decide_open(&c, i32::MAX, f.as_fd());
        assert_eq!(r, FAN_ALLOW);
    }

    #[test]
    fn latency_histogram_percentiles() {
        let s = Stats::default();
        for _ in 0..98 {
            s.record_latency(Duration::from_micros(10));
        }
        s.record_latency(Duration::from_micros(100));
        s.record_latency(Duration::from_millis(5));
        let l = s.snapshot().latency;
        assert_eq!(l.count, 100);
        assert_eq!(l.p50_us, 16);
        assert_eq!(l.p99_us, 128);
        assert_eq!(l.max_bucket_us, 8192);
    }
}
