//! The steps of a registration, and everything else that changes which
//! containers are watched: deregistration, exits, rescans for credential
//! paths created later, and restore after a restart.
//!
//! A registration is verified ([`super::verify`]), enriched from the
//! engine's metadata ([`super::enrich`]), marked ([`crate::watch::marks`])
//! and persisted ([`super::store`]), all before the hook is answered:
//! nothing in the container runs unwatched. The image's archivers are
//! learned just after the reply ([`AfterReply`]), while the runtime goes
//! on setting the container up; decisions about the container's processes
//! wait for that learning ([`crate::attribute::identity`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::reaper::{Exits, Init};
use super::store::{ContainerRecord, Registry};
use super::verify::{self, VerifyError};
use crate::answer::policy::Context;
use crate::answer::stats::Bound;
use crate::attribute::procfs;
use crate::config::Action;
use crate::hook::protocol::{ContainerSummary, Registration, Reply};
use crate::watch::fanotify::{DirHandle, EventSource, Group, WatchError, parse_events};
use crate::watch::marks::{self, Groups, InstallReport, MarkError, MarkRecord, Orphaned, Root};
use crate::watch::resolve;

/// A burst of creations that could not be marked at once (an unknown
/// directory, a full queue, a container over its budget) makes one full
/// rescan this long after the first, at the soonest.
const RESCAN_DEBOUNCE: Duration = Duration::from_millis(100);
/// Rescan interval for containers whose filesystem cannot report creations.
const PERIODIC_RESCAN: Duration = Duration::from_secs(5);
/// The create loop's read buffer: a `DFID_NAME` record is about 60 bytes.
const CREATE_BUF: usize = 64 * 1024;
/// How long the create loop gathers events into one marking, and how many
/// at most.
const COALESCE: Duration = Duration::from_millis(2);
const COALESCE_EVENTS: usize = 1024;

/// A live container's root, opened once: (init pid, its start time, the
/// root).
type LiveRoot = (i32, u64, Arc<std::os::fd::OwnedFd>);

/// A pass over one container's marks that the rescan thread owes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pass {
    at: Instant,
    /// A full rescan (re-expand every pattern); else a prune (forget what
    /// was removed, see [`marks::prune`]). A full one does a prune's work
    /// too.
    full: bool,
}

/// What a pass did to a container's create-group directories, for the map
/// by handle.
enum DirsChange {
    /// They are now these (a full rescan marked them all again).
    Set(Vec<MarkRecord>),
    /// These are gone.
    Remove(Vec<MarkRecord>),
    Keep,
}

/// The create group's directories by the handle their events carry, and
/// whose (container id, container path) each is: a create event names its
/// directory by that handle, so the entry it made is known without asking
/// the container anything.
#[derive(Debug, Default)]
struct CreateDirs {
    by_handle: HashMap<DirHandle, Vec<(String, PathBuf)>>,
}

impl CreateDirs {
    /// Container `id`'s directories are now `marks`, all of them.
    fn set(&mut self, id: &str, marks: &[MarkRecord]) {
        self.forget(id);
        self.add(id, marks);
    }

    /// Container `id` has these directories too.
    fn add(&mut self, id: &str, marks: &[MarkRecord]) {
        for m in marks {
            if let Some(h) = &m.handle {
                let owners = self.by_handle.entry(h.clone()).or_default();
                owners.retain(|(i, _)| i != id);
                owners.push((id.to_string(), m.path.clone()));
            }
        }
    }

    /// Container `id` no longer has these directories.
    fn remove(&mut self, id: &str, marks: &[MarkRecord]) {
        for h in marks.iter().filter_map(|m| m.handle.as_ref()) {
            if let Some(owners) = self.by_handle.get_mut(h) {
                owners.retain(|(i, _)| i != id);
                if owners.is_empty() {
                    self.by_handle.remove(h);
                }
            }
        }
    }

    fn forget(&mut self, id: &str) {
        self.by_handle.retain(|_, owners| {
            owners.retain(|(i, _)| i != id);
            !owners.is_empty()
        });
    }

    /// The containers (and their paths) of the entry `name` made in the
    /// directory `dir`.
    fn entry(&self, dir: &DirHandle, name: &std::ffi::OsStr) -> Vec<(String, PathBuf)> {
        // One name of one directory, as the kernel reports it; anything
        // else (a slash, `..`) is not joined to a path.
        let b = name.as_encoded_bytes();
        if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
            return Vec::new();
        }
        self.by_handle
            .get(dir)
            .map(|owners| {
                owners
                    .iter()
                    .map(|(id, path)| (id.clone(), path.join(name)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("rootfs {rootfs:?} of container {id} is not absolute")]
    RelativeRootfs { id: String, rootfs: PathBuf },
    #[error(transparent)]
    Mark(#[from] MarkError),
}

/// What a registration leaves for after its reply: learning the image's
/// archivers from the container's root, opened for the marks.
#[derive(Debug)]
pub struct AfterReply {
    root: std::os::fd::OwnedFd,
    ctx: Arc<Context>,
    /// Taken by [`AfterReply::run`]; still here when dropped means the
    /// learning never ran (a panic on the way), and the expectation is
    /// given up so no decision waits for it.
    expected: Option<crate::attribute::identity::Expected>,
}

impl AfterReply {
    /// Learn the registered container's image archivers: run once the
    /// hook has its reply (the control thread runs it after writing it).
    pub fn run(mut self) {
        let Some(expected) = self.expected.take() else {
            return;
        };
        let policy = self.ctx.policy();
        self.ctx.identities.learn_expected(
            self.root.as_fd(),
            policy.rules.file_archivers().names(),
            expected,
        );
    }
}

impl Drop for AfterReply {
    fn drop(&mut self) {
        if let Some(expected) = self.expected.take() {
            self.ctx.identities.unexpect(&expected);
        }
    }
}

fn log(msg: impl AsRef<str>) {
    crate::registry::log_line(msg.as_ref());
}

/// The daemon's fanotify groups, owned.
#[derive(Debug, Clone)]
pub struct OwnedGroups {
    pub perm: Arc<Group>,
    pub exec: Arc<Group>,
    /// Close-after-write, armed per container by the follower.
    pub write: Arc<Group>,
    /// Directory-creation group; `None` where the kernel lacks it.
    pub create: Option<Arc<Group>>,
}

/// Fill the index from persisted records, without opening anything: what
/// a daemon that adopted its predecessor's groups does before it reads a
/// permission event. Those groups still hold the marks, and events may be
/// waiting; judging one before the index knows its container would let it
/// through. (Restoring, which comes after, reopens marked files, and the
/// permission loop must already be running for that.) Only records whose
/// init is still the process registered are loaded.
pub fn preload(ctx: &Context, records: &[ContainerRecord]) -> usize {
    let mut index = crate::watch::index::write(&ctx.index);
    let mut n = 0;
    for rec in records {
        if !rec.alive() {
            continue;
        }
        let marks: Vec<_> = rec
            .placed
            .marks
            .iter()
            .map(|m| (m.id, m.path.clone(), m.is_dir))
            .collect();
        index.insert(rec.view(), &marks);
        n += 1;
    }
    n
}

impl OwnedGroups {
    /// Open the four groups; without a create group (an old kernel), new
    /// credential directories are found by periodic rescans.
    pub fn open() -> Result<Self, WatchError> {
        let create = match Group::create() {
            Ok(g) => Some(Arc::new(g)),
            Err(e) => {
                log(format!(
                    "{e}; new credential directories are found by periodic rescans"
                ));
                None
            }
        };
        Ok(Self {
            perm: Arc::new(Group::permission()?),
            exec: Arc::new(Group::exec()?),
            write: Arc::new(Group::write()?),
            create,
        })
    }

    fn borrow(&self) -> Groups<'_> {
        Groups {
            perm: &self.perm,
            exec: &self.exec,
            create: self.create.as_deref(),
        }
    }
}

/// The watched containers, and the work that changes them.
pub struct Registrar {
    ctx: Arc<Context>,
    groups: OwnedGroups,
    registry: Mutex<Registry>,
    /// Containers due for a rescan (coverage over time), and when.
    rescans: Mutex<BTreeMap<String, Pass>>,
    /// Wakes the rescan thread when a rescan is scheduled.
    rescan_due: std::sync::Condvar,
    /// Create events marked at once per container in the current second
    /// (`limits.creates_per_second`).
    create_budget: crate::answer::stats::PerSecond<0>,
    /// The create group's directories, by handle.
    create_dirs: Mutex<CreateDirs>,
    /// The current policy's [`marks::Plan`], by policy generation.
    plan: Mutex<(u64, Arc<marks::Plan>)>,
    /// Each live container's root, opened once (see
    /// [`Registrar::root_of_live`]).
    roots: Mutex<HashMap<String, LiveRoot>>,
    /// When each container's last full rescan started
    /// (`limits.rescan_interval_ms` apart at the least).
    last_full: Mutex<HashMap<String, Instant>>,
    /// Containers whose filesystem cannot report creations: rescanned
    /// every [`PERIODIC_RESCAN`] instead.
    periodic: Mutex<BTreeSet<String>>,
    /// Per container: held while it is rescanned or marked on a create,
    /// outside the registry lock.
    busy: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Registrar {
    pub fn new(ctx: Arc<Context>, groups: OwnedGroups, registry: Registry) -> Self {
        Self {
            ctx,
            groups,
            registry: Mutex::new(registry),
            rescans: Mutex::new(BTreeMap::new()),
            rescan_due: std::sync::Condvar::new(),
            create_budget: Default::default(),
            create_dirs: Mutex::new(CreateDirs::default()),
            last_full: Mutex::new(HashMap::new()),
            plan: Mutex::new((0, Arc::default())),
            roots: Mutex::new(HashMap::new()),
            periodic: Mutex::new(BTreeSet::new()),
            busy: Mutex::new(HashMap::new()),
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a container: verify, enrich, mark, persist. `default` is
    /// the host's configured action, which the container's annotation may
    /// only strengthen unless `may_lower`.
    pub fn register(
        &self,
        r: Registration,
        default: Action,
        may_lower: bool,
        engines: &crate::config::EnginesConfig,
    ) -> Result<(Reply, AfterReply), RegisterError> {
        let started = Instant::now();
        verify::check_id(&r.id)?;
        let (action, annotation) = verify::action_for(&r.id, &r.annotations, default, may_lower)?;
        let warning = match annotation {
            verify::AnnotationOutcome::Refused { asked } => {
                self.ctx
                    .stats
                    .annotations_refused
                    .fetch_add(1, Ordering::Relaxed);
                let w = format!(
                    "container {}: annotation {}={} refused: it would lower the host's action {} \
                     (response.annotation_may_lower is off); {} applies",
                    r.id,
                    verify::RESPONSE_ANNOTATION,
                    asked.as_str(),
                    default.as_str(),
                    default.as_str()
                );
                log(&w);
                Some(w)
            }
            verify::AnnotationOutcome::Absent | verify::AnnotationOutcome::Applied(_) => None,
        };
        if !r.rootfs.is_absolute() {
            return Err(RegisterError::RelativeRootfs {
                id: r.id,
                rootfs: r.rootfs,
            });
        }
        let facts = verify::verify_pid(r.pid)?;
        let (name, image) = super::enrich::enrich(
            &r.id,
            &r.bundle,
            verify::name_and_image(&r.annotations),
            engines,
        );
        let mut rec = ContainerRecord {
            id: r.id.clone(),
            pid: r.pid,
            start_time_ticks: facts.start_time_ticks,
            pid_ns: facts.pid_ns,
            mnt_ns: facts.mnt_ns,
            net_ns: facts.net_ns,
            cgroup: facts.cgroup.clone(),
            bundle: r.bundle,
            rootfs: r.rootfs,
            annotations: r.annotations,
            name,
            image,
            action,
            registered_at: crate::alert::rfc3339(std::time::SystemTime::now()),
            placed: Default::default(),
        };
        // One registration (or rescan) of a container at a time; the
        // registry itself is held only to look and to insert, never while
        // marks go in, so no registration waits behind another's marks.
        let lock = self.container_lock(&rec.id);
        let _own = lock.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut reg = self.registry();
            // A second hook stage for the same container re-registers it.
            if reg.get(&rec.id).is_some() {
                self.drop_container(&mut reg, &rec.id);
                if let Err(e) = reg.save_only(&rec.id) {
                    log(e.to_string());
                }
            }
        }
        // Before the marks: from the first event they may report, the
        // container's decisions wait for its image to be learned.
        let expected = self.ctx.identities.expect(&rec.id);
        let (report, root) = match self.install(&mut rec) {
            Ok(placed) => placed,
            Err(e) => {
                self.ctx.identities.unexpect(&expected);
                return Err(e.into());
            }
        };
        self.note_coverage(&rec.id, &report);
        log(format!(
            "watching container {} (pid {}, action {}): {} files, {} dirs, exec mark {:?}, in {} us",
            rec.id,
            rec.pid,
            rec.action.as_str(),
            report.files,
            report.dirs,
            report.exec,
            started.elapsed().as_micros()
        ));
        let id = rec.id.clone();
        self.create_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(&id, &rec.placed.create_marks);
        let mut reg = self.registry();
        reg.insert(rec);
        // This record only: another container's may be large.
        if let Err(e) = reg.save_only(&id) {
            log(e.to_string());
        }
        drop(reg);
        let after = AfterReply {
            root,
            ctx: self.ctx.clone(),
            expected: Some(expected),
        };
        Ok((
            Reply::Watching {
                id,
                report,
                warning,
            },
            after,
        ))
    }

    /// Learn container `id`'s image archivers now (restore, rescans).
    fn learn_now(&self, id: &str, root: BorrowedFd<'_>) {
        let policy = self.ctx.policy();
        self.ctx
            .identities
            .learn(root, policy.rules.file_archivers().names(), Some(id));
    }

    /// Mark `rec`'s files; on failure, take out what this attempt marked
    /// that no other container holds. Hands on the container's root.
    fn install(
        &self,
        rec: &mut ContainerRecord,
    ) -> Result<(InstallReport, std::os::fd::OwnedFd), MarkError> {
        let r = self.place(rec);
        if r.is_err() {
            let orphaned = self.orphaned(&self.registry(), rec);
            marks::remove(self.groups.borrow(), &rec.placed, root_of(rec), &orphaned);
            self.unindex(&rec.id);
        }
        r
    }

    /// The marks, from the container's root (handed on, for the learning
    /// of its image's archivers that follows).
    fn place(
        &self,
        rec: &mut ContainerRecord,
    ) -> Result<(InstallReport, std::os::fd::OwnedFd), MarkError> {
        let policy = self.ctx.policy();
        let (root, pivoted) = resolve::container_root(rec.pid, &rec.rootfs)?;
        let view = rec.view();
        let report = marks::place(
            self.groups.borrow(),
            &policy.rules,
            &self.plan(&policy),
            view,
            &self.ctx.index,
            root.as_fd(),
            &mut rec.placed,
            policy.limits.marks_per_container,
        )
        .map(|report| InstallReport { pivoted, ..report })?;
        self.note_bounds(&rec.id, report.capped, report.truncated);
        Ok((report, root))
    }

    /// The marks plan of `policy`, made once per policy.
    fn plan(&self, policy: &crate::answer::policy::Policy) -> Arc<marks::Plan> {
        let mut cached = self.plan.lock().unwrap_or_else(|e| e.into_inner());
        if cached.0 != policy.generation {
            *cached = (policy.generation, Arc::new(marks::Plan::of(&policy.rules)));
        }
        cached.1.clone()
    }

    /// Whether the root cached for `rec`'s id is its init's (see
    /// [`Registrar::root_of_live`]).
    fn has_root_of(&self, rec: &ContainerRecord) -> bool {
        self.roots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&rec.id)
            .is_some_and(|(pid, start, _)| *pid == rec.pid && *start == rec.start_time_ticks)
    }

    /// The root of live container `rec`, opened once per init: a create's
    /// marking would otherwise open `/proc/<pid>/root` and the rootfs in it
    /// for every event. The caller has checked that the init is still the
    /// one registered, so the pid names it.
    fn root_of_live(
        &self,
        rec: &ContainerRecord,
    ) -> Result<Arc<std::os::fd::OwnedFd>, resolve::ResolveError> {
        let mut roots = self.roots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((pid, start, fd)) = roots.get(&rec.id)
            && *pid == rec.pid
            && *start == rec.start_time_ticks
        {
            return Ok(fd.clone());
        }
        let (fd, _) = resolve::container_root(rec.pid, &rec.rootfs)?;
        let fd = Arc::new(fd);
        roots.insert(rec.id.clone(), (rec.pid, rec.start_time_ticks, fd.clone()));
        Ok(fd)
    }

    /// Count (and report, in the next health alert) the bounds a marking
    /// of container `id` reached.
    fn note_bounds(&self, id: &str, capped: bool, truncated: bool) {
        let bounds = &self.ctx.stats.bounds;
        if capped {
            bounds.hit(Bound::Marks, id);
        }
        if truncated {
            bounds.hit(Bound::Expansion, id);
        }
    }

    /// The marks `rec` holds alone, among the containers in `reg` other
    /// than itself. The index keeps it until [`Registrar::unindex`]: its
    /// marks are removed first, so nothing reports the container gone
    /// while the kernel still holds them.
    fn orphaned(&self, reg: &Registry, rec: &ContainerRecord) -> Orphaned {
        let files = self
            .ctx
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .held_alone(&rec.id);
        let shared: HashSet<_> = reg
            .all()
            .filter(|c| c.id != rec.id)
            .flat_map(|c| c.placed.create_marks.iter().map(|m| m.id))
            .collect();
        let create_dirs = rec
            .placed
            .create_marks
            .iter()
            .map(|m| m.id)
            .filter(|id| !shared.contains(id))
            .collect();
        Orphaned { files, create_dirs }
    }

    /// Take container `id` out of the index.
    fn unindex(&self, id: &str) {
        crate::watch::index::write(&self.ctx.index).remove(id);
        self.ctx.identities.forget(id);
        self.create_budget.forget(id);
        self.create_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget(id);
        self.last_full
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.roots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    fn note_coverage(&self, id: &str, report: &InstallReport) {
        let mut periodic = self.periodic.lock().unwrap_or_else(|e| e.into_inner());
        if report.create_watched == 0 {
            periodic.insert(id.to_string());
        } else {
            periodic.remove(id);
        }
    }

    /// Ask for a full rescan of `id` (or every container) soon: after
    /// [`RESCAN_DEBOUNCE`], and `limits.rescan_interval_ms` after its last
    /// pass at the soonest, so that however often a container asks, its
    /// passes take a bounded share of the rescan thread.
    pub fn schedule_rescan(&self, id: Option<&str>) {
        let ids: Vec<String> = match id {
            Some(id) => vec![id.to_string()],
            None => self.registry().all().map(|c| c.id.clone()).collect(),
        };
        self.schedule(ids, true);
    }

    /// Ask for a prune of `id`'s records (see [`marks::prune`]), as
    /// [`Registrar::schedule_rescan`] times it: what a container's
    /// creates leave behind once it removes what it made.
    fn schedule_prune(&self, id: &str) {
        self.schedule(vec![id.to_string()], false);
    }

    fn schedule(&self, ids: Vec<String>, full: bool) {
        let now = Instant::now();
        let interval = Duration::from_millis(self.ctx.policy().limits.rescan_interval_ms);
        let last = self.last_full.lock().unwrap_or_else(|e| e.into_inner());
        let mut r = self.rescans.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            let at = last
                .get(&id)
                .map_or(now, |t| *t + interval)
                .max(now + RESCAN_DEBOUNCE);
            let pass = r.entry(id).or_insert(Pass { at, full });
            pass.full |= full;
        }
        self.rescan_due.notify_one();
    }

    /// Sleep until a rescan is due (a scheduled one, or the periodic ones
    /// after `last_periodic`), for `most` at the longest. The rescan thread
    /// used to poll every 20 ms: 50 wakeups a second with nothing to do,
    /// each tens of microseconds of CPU on a small VM.
    pub fn wait_for_rescans(&self, last_periodic: Instant, most: Duration) {
        let r = self.rescans.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let periodic = !self
            .periodic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        let next = r
            .values()
            .map(|p| p.at)
            .chain(periodic.then_some(last_periodic + PERIODIC_RESCAN))
            .min();
        let wait = next.map_or(most, |t| t.saturating_duration_since(now).min(most));
        if wait.is_zero() {
            return;
        }
        let _ = self
            .rescan_due
            .wait_timeout(r, wait)
            .unwrap_or_else(|e| e.into_inner());
    }

    /// Re-expand a container's patterns and mark what is new: the full
    /// rescan, rate-limited per container (see
    /// [`Registrar::schedule_rescan`]). It also forgets what the container
    /// removed since the last one (marks die with their inodes) and saves
    /// the record.
    fn rescan(&self, id: &str) {
        self.pass(id, |rec| {
            let before = rec.placed.marks.len();
            // The expansion runs without the registry lock: a container
            // whose credential directories churn must not hold up
            // another's registration (the rescan of 1,000 homes took the
            // lock for hundreds of milliseconds at a time).
            match self.place(rec) {
                Ok((report, root)) => {
                    // As before the reply of a registration: a rescan
                    // learns the image again (an archiver copied in since).
                    self.learn_now(id, root.as_fd());
                    // At most one a `limits.rescan_interval_ms` per container.
                    log(format!(
                        "rescanned container {id}: {} marks (was {before})",
                        rec.placed.marks.len()
                    ));
                    self.ctx.stats.rescans.fetch_add(1, Ordering::Relaxed);
                    self.note_coverage(id, &report);
                    DirsChange::Set(rec.placed.create_marks.clone())
                }
                Err(e) => {
                    log(format!("rescan of container {id} failed: {e}"));
                    DirsChange::Keep
                }
            }
        });
    }

    /// Forget what container `id` removed since its last pass, and save
    /// its record (see [`marks::prune`]).
    fn prune(&self, id: &str) {
        self.pass(id, |rec| {
            let before = (rec.placed.marks.len(), rec.placed.create_marks.len());
            let alive = self.groups.perm.marked_inodes();
            let pruned = marks::prune(self.groups.borrow(), &mut rec.placed, &alive);
            // The copies its readers wrote, too.
            let copies = self.ctx.follow.prune_derived(id, &alive);
            // At most one a `limits.rescan_interval_ms` per container.
            log(format!(
                "pruned container {id}: {} marks (was {}), {} directories watched (was {})",
                rec.placed.marks.len(),
                before.0,
                rec.placed.create_marks.len(),
                before.1
            ));
            let mut index = crate::watch::index::write(&self.ctx.index);
            index.forget_files(id, &pruned.marks, false);
            index.forget_files(id, &copies, true);
            drop(index);
            self.ctx.stats.prunes.fetch_add(1, Ordering::Relaxed);
            DirsChange::Remove(pruned.create_dirs)
        });
    }

    /// One pass of the rescan thread over container `id`: under the
    /// container's lock, noted as its last pass, on its marks taken out of
    /// the registry and put back after `work` (whose change to the create
    /// directories' map then applies); then every record changed since
    /// the last save (this one, and the marks creates added) is written,
    /// after the registry is let go.
    fn pass(&self, id: &str, work: impl FnOnce(&mut ContainerRecord) -> DirsChange) {
        let lock = self.container_lock(id);
        let own = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.last_full
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), Instant::now());
        let Some(mut rec) = self.take_live(id) else {
            return;
        };
        let change = work(&mut rec);
        if self.put_back(rec) {
            let mut dirs = self.create_dirs.lock().unwrap_or_else(|e| e.into_inner());
            match change {
                DirsChange::Set(marks) => dirs.set(id, &marks),
                DirsChange::Remove(marks) => dirs.remove(id, &marks),
                DirsChange::Keep => {}
            }
        }
        drop(own);
        let writes = self.registry().take_writes();
        if let Err(e) = writes.apply() {
            log(e.to_string());
        }
    }

    /// The lock that lets one registration, rescan or create-time marking
    /// of a container run at a time (two would each put back their own
    /// copy of its marks, and one copy would be forgotten).
    fn container_lock(&self, id: &str) -> Arc<Mutex<()>> {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Container `id`'s record with its marks taken out of the registry
    /// (the registry keeps the rest, with no marks, until
    /// [`Registrar::put_back`]), if its init still runs. Taking them
    /// instead of copying them: a churning container holds thousands, and
    /// a copy per create event was most of the create loop's time. Call
    /// with the container's lock held.
    fn take_live(&self, id: &str) -> Option<ContainerRecord> {
        self.take(id, true)
    }

    /// [`Registrar::take_live`], with the check that the init still runs
    /// only if `check` (a pass that has the container's root open already
    /// looks up no pid).
    fn take(&self, id: &str, check: bool) -> Option<ContainerRecord> {
        let (pid, start) = {
            let reg = self.registry();
            let rec = reg.get(id)?;
            (rec.pid, rec.start_time_ticks)
        };
        // Outside the registry: a /proc read.
        if check && !procfs::stat(pid).is_ok_and(|s| s.start_time_ticks == start) {
            return None;
        }
        let mut reg = self.registry();
        let rec = reg.get_mut(id)?;
        let placed = std::mem::take(&mut rec.placed);
        let mut taken = rec.clone();
        taken.placed = placed;
        Some(taken)
    }

    /// Put back what [`Registrar::take_live`] took, if the registration is
    /// still the one it was taken from. If the container went (or was
    /// registered anew) meanwhile, what this pass marked is taken out
    /// again, as a deregistration would have; false then.
    fn put_back(&self, rec: ContainerRecord) -> bool {
        let mut reg = self.registry();
        if let Some(cur) = reg.get_mut(&rec.id)
            && cur.start_time_ticks == rec.start_time_ticks
            && cur.registered_at == rec.registered_at
        {
            cur.placed = rec.placed;
            return true;
        }
        if reg.get(&rec.id).is_none() {
            let orphaned = self.orphaned(&reg, &rec);
            marks::remove(self.groups.borrow(), &rec.placed, root_of(&rec), &orphaned);
            drop(reg);
            self.unindex(&rec.id);
        }
        false
    }

    /// Mark what the rules want below the entries `made` (container paths
    /// a create event reported) in container `id`, and nothing else (see
    /// [`marks::place_under`]). An archiver that starts right after
    /// `mkdir -p ~/.ssh; cp key ~/.ssh/` then races a few `openat2`
    /// calls, not a rescan of every home.
    fn mark_under(&self, id: &str, made: &[PathBuf]) {
        let lock = self.container_lock(id);
        let _own = lock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mut rec) = self.take(id, false) else {
            return;
        };
        // With this init's root open since an earlier marking, no pid is
        // looked up (a reused pid could only mislead a lookup by pid): a
        // container that went meanwhile is noticed when its marks are put
        // back. Otherwise (the first marking, or registered anew since)
        // the init is looked up first.
        if !self.has_root_of(&rec) && !rec.alive() {
            self.put_back(rec);
            return;
        }
        let policy = self.ctx.policy();
        let root = match self.root_of_live(&rec) {
            Ok(root) => root,
            Err(e) => {
                log(format!("marking container {id} on a create failed: {e}"));
                self.put_back(rec);
                return;
            }
        };
        let before = rec.placed.create_marks.len();
        let view = rec.view();
        let placed = marks::place_under(
            self.groups.borrow(),
            &policy.rules,
            &self.plan(&policy),
            &view,
            &self.ctx.index,
            root.as_fd(),
            &mut rec.placed,
            made,
            policy.limits.marks_per_container,
        );
        let new_dirs: Vec<MarkRecord> = rec.placed.create_marks[before..].to_vec();
        match placed {
            Ok(r) => self.note_bounds(id, r.capped, r.truncated),
            Err(e) => log(format!("marking container {id} on a create failed: {e}")),
        }
        if self.put_back(rec) {
            self.create_dirs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(id, &new_dirs);
        }
    }

    /// Run the rescans that are due, and the periodic ones.
    pub fn run_rescans(&self, last_periodic: &mut Instant) {
        let now = Instant::now();
        let due: Vec<(String, bool)> = {
            let mut r = self.rescans.lock().unwrap_or_else(|e| e.into_inner());
            let due: Vec<(String, bool)> = r
                .iter()
                .filter(|(_, p)| p.at <= now)
                .map(|(k, p)| (k.clone(), p.full))
                .collect();
            for (k, _) in &due {
                r.remove(k);
            }
            due
        };
        for (id, full) in due {
            if full {
                self.rescan(&id);
            } else {
                self.prune(&id);
            }
        }
        if last_periodic.elapsed() >= PERIODIC_RESCAN {
            *last_periodic = Instant::now();
            let ids: Vec<String> = self
                .periodic
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect();
            for id in ids {
                self.rescan(&id);
            }
            // Copies its readers wrote may have been removed since.
            for id in self.ctx.follow.containers_with_derived() {
                self.schedule_prune(&id);
            }
        }
    }

    fn drop_container(&self, reg: &mut Registry, id: &str) -> Option<usize> {
        let mut rec = reg.remove(id)?;
        // The copies its readers wrote are marked too: found again by the
        // path they were written at, like the rest.
        let view = self
            .ctx
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .container(id)
            .cloned();
        let derived = self.ctx.follow.forget_container(id, view);
        rec.placed.marks.extend(derived);
        let orphaned = self.orphaned(reg, &rec);
        let removed = marks::remove(self.groups.borrow(), &rec.placed, root_of(&rec), &orphaned);
        self.unindex(id);
        // marks::remove flushed the exec group's ignore marks: the exec loop
        // starts counting them afresh.
        self.ctx.ignores_flushed.fetch_add(1, Ordering::Relaxed);
        Some(removed)
    }

    pub fn deregister(&self, id: &str) -> Reply {
        self.deregister_if(id, |_| true)
    }

    /// [`Registrar::deregister`] if the record passes `check`, all under
    /// one lock of the registry.
    fn deregister_if(&self, id: &str, check: impl Fn(&ContainerRecord) -> bool) -> Reply {
        let mut reg = self.registry();
        let not_registered = || Reply::Error {
            message: format!("container {id} is not registered"),
        };
        if !reg.get(id).is_some_and(check) {
            return not_registered();
        }
        let Some(n) = self.drop_container(&mut reg, id) else {
            return not_registered();
        };
        if let Err(e) = reg.save_only(id) {
            log(e.to_string());
        }
        log(format!(
            "stopped watching container {id} ({n} marks removed)"
        ));
        Reply::Deregistered {
            id: id.to_string(),
            marks_removed: n,
        }
    }

    /// Drop each container the moment its init exits (see `reaper`). A
    /// container registered again under the same id meanwhile has another
    /// init and stays.
    pub fn follow_exits(&self, stop: &AtomicBool) {
        // Dropping a container is cleanup, never urgent: at a low priority
        // it waits for idle CPU instead of competing with the runtime
        // tearing the container down and starting the next one.
        procfs::set_thread_nice(10);
        let mut exits = Exits::default();
        while !stop.load(Ordering::Relaxed) {
            let live: Vec<Init> = self
                .registry()
                .all()
                .map(|c| Init {
                    id: c.id.clone(),
                    pid: c.pid,
                    start_time_ticks: c.start_time_ticks,
                })
                .collect();
            let mut ended = exits.sync(&live);
            // Short waits: a container registered meanwhile is followed
            // from the next round on.
            ended.extend(exits.wait(Duration::from_millis(100)));
            for init in ended {
                let same = |c: &ContainerRecord| {
                    c.pid == init.pid && c.start_time_ticks == init.start_time_ticks
                };
                if let Reply::Deregistered { .. } = self.deregister_if(&init.id, same) {
                    log(format!(
                        "container {} exited (init pid {}); dropped it",
                        init.id, init.pid
                    ));
                }
            }
        }
    }

    /// Deregister containers whose init has exited without a poststop hook.
    pub fn reap(&self) {
        // Listed under the registry, looked at in /proc outside it.
        let inits: Vec<(String, i32, u64)> = self
            .registry()
            .all()
            .map(|c| (c.id.clone(), c.pid, c.start_time_ticks))
            .collect();
        for (id, pid, start) in inits {
            if procfs::stat(pid).is_ok_and(|s| s.start_time_ticks == start) {
                continue;
            }
            // Only the registration whose init this was: the id may have
            // been registered again meanwhile.
            let same = |c: &ContainerRecord| c.pid == pid && c.start_time_ticks == start;
            if let Reply::Deregistered { .. } = self.deregister_if(&id, same) {
                log(format!("container {id} exited; dropped it"));
            }
        }
    }

    /// Re-validate persisted containers and re-install their marks.
    pub fn restore(&self, mut records: Vec<ContainerRecord>) {
        // The same container in an earlier version's registry.json and in
        // its own file: keep one.
        records.sort_by(|a, b| a.id.cmp(&b.id));
        records.dedup_by(|a, b| a.id == b.id);
        for mut rec in records {
            let same = verify::verify_pid(rec.pid).is_ok_and(|f| {
                f.start_time_ticks == rec.start_time_ticks
                    && f.pid_ns == rec.pid_ns
                    && f.net_ns == rec.net_ns
            });
            if !same {
                log(format!(
                    "container {} (pid {}) is gone; not restoring it",
                    rec.id, rec.pid
                ));
                self.registry().forget(&rec.id);
                self.unindex(&rec.id);
                continue;
            }
            // Marks go in without the registry held, as at registration.
            let lock = self.container_lock(&rec.id);
            let _own = lock.lock().unwrap_or_else(|e| e.into_inner());
            match self.install(&mut rec) {
                Ok((rep, root)) => {
                    // No hook waits for a restore: learn at once.
                    self.learn_now(&rec.id, root.as_fd());
                    self.note_coverage(&rec.id, &rep);
                    log(format!(
                        "restored container {}: {} files, {} dirs",
                        rec.id, rep.files, rep.dirs
                    ));
                    self.create_dirs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .set(&rec.id, &rec.placed.create_marks);
                    self.registry().insert(rec);
                }
                Err(e) => {
                    log(format!("cannot restore container {}: {e}", rec.id));
                    self.registry().forget(&rec.id);
                }
            }
        }
        let writes = self.registry().take_writes();
        if let Err(e) = writes.apply() {
            log(e.to_string());
        }
    }

    /// One row per watched container, for `keyward containers`.
    pub fn containers(&self) -> Vec<ContainerSummary> {
        self.registry()
            .all()
            .map(|c| ContainerSummary {
                id: c.id.clone(),
                pid: c.pid,
                name: c.name.clone(),
                image: c.image.clone(),
                action: c.action.as_str().to_string(),
                marks: c.placed.marks.len(),
                exec_scope: c.placed.exec_scope.map(|s| format!("{s:?}").to_lowercase()),
                cgroup: c.cgroup.clone(),
                registered_at: c.registered_at.clone(),
            })
            .collect()
    }

    /// Read the create group's events and mark what each made: the
    /// entry's directory is found by the handle the event carries, and
    /// only the patterns through that entry are expanded, from there.
    /// What cannot be placed that way (a directory with no known handle, a
    /// full queue, a container past `limits.creates_per_second`) waits for
    /// a full rescan of the container(s) it may be in.
    pub fn follow_creates(&self, group: &Group, stop: &AtomicBool) {
        let mut buf = vec![0u8; CREATE_BUF];
        let mut events = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if !matches!(group.wait(Duration::from_millis(200)), Ok(true)) {
                continue;
            }
            let read_at = Instant::now();
            events.clear();
            // A `mkdir -p` and the file written after it come as a few
            // events microseconds apart: gathered for a moment, they are
            // one marking (one look at the registry and the container)
            // instead of one each. The directory marks already report
            // opens inside them meanwhile.
            while events.len() < COALESCE_EVENTS {
                let Ok(n) = group.read(&mut buf) else {
                    break;
                };
                if parse_events(&buf[..n], &mut events).is_err() {
                    self.ctx.stats.parse_errors.fetch_add(1, Ordering::Relaxed);
                }
                let left = COALESCE.saturating_sub(read_at.elapsed());
                if left.is_zero() || !matches!(group.wait(left), Ok(true)) {
                    break;
                }
            }
            let (made, rescan) = self.sort_creates(events.drain(..));
            for id in &rescan {
                self.schedule_rescan(id.as_deref());
            }
            let budget = self.ctx.policy().limits.creates_per_second;
            for (id, paths) in made {
                let mut now = Vec::with_capacity(paths.len());
                let mut over = false;
                for p in paths {
                    if self.create_budget.allow_up_to(&id, budget) {
                        now.push(p);
                    } else {
                        over = true;
                    }
                }
                if over {
                    self.ctx.stats.bounds.hit(Bound::Creates, &id);
                }
                if !now.is_empty() {
                    self.mark_under(&id, &now);
                    let took = read_at.elapsed().as_micros() as u64;
                    let s = &self.ctx.stats;
                    s.create_marks.fetch_add(1, Ordering::Relaxed);
                    s.create_mark_us_total.fetch_add(took, Ordering::Relaxed);
                    s.create_mark_us_max.fetch_max(took, Ordering::Relaxed);
                }
                // What the container makes it may remove: a prune follows
                // (at most one a `limits.rescan_interval_ms`), and saves the
                // record. Creates past the budget wait for a full rescan.
                if over {
                    self.schedule_rescan(Some(&id));
                } else {
                    self.schedule_prune(&id);
                }
            }
        }
    }

    /// Sort one batch of create events: the entries made, per container
    /// (by their directory's handle), and the containers to rescan in
    /// full instead (`None`: every container).
    fn sort_creates(
        &self,
        events: impl Iterator<Item = crate::watch::fanotify::RawEvent>,
    ) -> (BTreeMap<String, Vec<PathBuf>>, BTreeSet<Option<String>>) {
        let mut made: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        let mut rescan = BTreeSet::new();
        let stats = &self.ctx.stats;
        for ev in events {
            if ev.is_overflow() {
                // Lost events could be anyone's.
                rescan.insert(None);
                continue;
            }
            let owners = ev
                .dir_entry
                .as_ref()
                .map(|e| {
                    self.create_dirs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(&e.dir, &e.name)
                })
                .unwrap_or_default();
            if owners.is_empty() {
                stats.creates_unresolved.fetch_add(1, Ordering::Relaxed);
                // The creator's container, or (`mkdir` is often gone when
                // its event is read) the containers on its filesystem.
                let container = self
                    .ctx
                    .container_of(ev.pid)
                    .map(|c| c.reference.id.clone());
                match (container, ev.fsid) {
                    (Some(id), _) => {
                        rescan.insert(Some(id));
                    }
                    (None, Some(fsid)) => {
                        rescan.extend(self.containers_on(fsid).into_iter().map(Some))
                    }
                    (None, None) => {}
                }
                continue;
            }
            stats.creates_incremental.fetch_add(1, Ordering::Relaxed);
            for (id, path) in owners {
                let paths = made.entry(id).or_default();
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
        }
        (made, rescan)
    }

    /// The live containers whose rootfs is on the filesystem `fsid`.
    fn containers_on(&self, fsid: [i32; 2]) -> Vec<String> {
        let reg = self.registry();
        reg.all()
            .filter(|c| crate::watch::fanotify::fsid_of(&c.rootfs) == Some(fsid))
            .map(|c| c.id.clone())
            .collect()
    }
}

/// Where `rec`'s files are found again: through its init while it lives,
/// else through the rootfs as the host sees it.
fn root_of(rec: &ContainerRecord) -> Root<'_> {
    Root {
        live_pid: rec.alive().then_some(rec.pid),
        rootfs: &rec.rootfs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A create event's entry is one name of the directory its handle
    /// names; a name the kernel would never report joins nothing.
    #[test]
    fn a_create_entry_is_one_name_in_a_known_directory() {
        let h = |b: u8| DirHandle {
            fsid: [1, 2],
            kind: 1,
            bytes: vec![b; 8],
        };
        let mut dirs = CreateDirs::default();
        let mark = MarkRecord {
            path: "/home".into(),
            id: crate::watch::resolve::FileId { dev: 1, ino: 2 },
            is_dir: true,
            handle: Some(h(7)),
        };
        dirs.set("c1", std::slice::from_ref(&mark));
        let entry = |name: &str| dirs.entry(&h(7), std::ffi::OsStr::new(name));
        assert_eq!(entry("u5"), [("c1".to_string(), PathBuf::from("/home/u5"))]);
        for bad in ["", ".", "..", "/etc", "a/b"] {
            assert!(entry(bad).is_empty(), "{bad:?}");
        }
        assert!(dirs.entry(&h(8), std::ffi::OsStr::new("u5")).is_empty());
        dirs.remove("c1", &[mark]);
        assert!(dirs.entry(&h(7), std::ffi::OsStr::new("u5")).is_empty());
    }
}
