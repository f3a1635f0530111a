//! The steps of a registration, and everything else that changes which
//! containers are watched: deregistration, exits, rescans for credential
//! paths created later, and restore after a restart.
//!
//! A registration is verified ([`super::verify`]), enriched from the
//! engine's metadata ([`super::enrich`]), marked ([`crate::watch::marks`],
//! while the image's archivers are learned beside it), and persisted
//! ([`super::store`]), all before the hook is answered: nothing in the
//! container runs unwatched.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::reaper::{Exits, Init};
use super::store::{ContainerRecord, Registry};
use super::verify::{self, VerifyError};
use crate::answer::policy::Context;
use crate::attribute::procfs;
use crate::config::Action;
use crate::hook::protocol::{ContainerSummary, Registration, Reply};
use crate::watch::fanotify::{EventSource, Group, WatchError, parse_events};
use crate::watch::marks::{self, Groups, InstallReport, MarkError, Orphaned, Root};
use crate::watch::resolve;

/// A burst of creations in one container makes one rescan this long after
/// the first.
const RESCAN_DEBOUNCE: Duration = Duration::from_millis(100);
/// Create-time markings per container per second (see
/// [`Registrar::may_mark_now`]).
const CREATE_MARKS_PER_SEC: u32 = 20;
/// Rescan interval for containers whose filesystem cannot report creations.
const PERIODIC_RESCAN: Duration = Duration::from_secs(5);

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

fn log(msg: impl AsRef<str>) {
    eprintln!("keyward: {}", msg.as_ref());
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
    let mut index = ctx.index.write().unwrap_or_else(|e| e.into_inner());
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
    rescans: Mutex<BTreeMap<String, Instant>>,
    /// Wakes the rescan thread when a rescan is scheduled.
    rescan_due: std::sync::Condvar,
    /// Create-time markings per container in the current second.
    create_budget: crate::answer::stats::PerSecond<CREATE_MARKS_PER_SEC>,
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
    ) -> Result<Reply, RegisterError> {
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
        let mut reg = self.registry();
        // A second hook stage for the same container re-registers it.
        if reg.get(&rec.id).is_some() {
            self.drop_container(&mut reg, &rec.id);
        }
        let report = self.install(&reg, &mut rec)?;
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
        reg.insert(rec);
        if let Err(e) = reg.save() {
            log(e.to_string());
        }
        Ok(Reply::Watching {
            id,
            report,
            warning,
        })
    }

    /// Mark `rec`'s files; on failure, take out what this attempt marked
    /// that no other container in `reg` holds.
    fn install(
        &self,
        reg: &Registry,
        rec: &mut ContainerRecord,
    ) -> Result<InstallReport, MarkError> {
        let r = self.place(rec);
        if r.is_err() {
            let orphaned = self.orphaned(reg, rec);
            marks::remove(self.groups.borrow(), &rec.placed, root_of(rec), &orphaned);
            self.unindex(&rec.id);
        }
        r
    }

    /// The marks, and the image's own archivers beside them, so a copy
    /// renamed inside it is still known. Listing the bin directories is a
    /// third of a registration (a busybox /bin holds 400 links), and the
    /// marks do not need it: it runs on a second thread while the marks go
    /// in, and is done before the reply.
    fn place(&self, rec: &mut ContainerRecord) -> Result<InstallReport, MarkError> {
        let policy = self.ctx.policy();
        let (root, pivoted) = resolve::container_root(rec.pid, &rec.rootfs)?;
        let view = rec.view();
        let id = rec.id.clone();
        std::thread::scope(|s| {
            let learner = s.spawn(|| {
                self.ctx.identities.learn(
                    root.as_fd(),
                    policy.rules.file_archivers().names(),
                    Some(&id),
                )
            });
            let marked = marks::place(
                self.groups.borrow(),
                &policy.rules,
                view,
                &self.ctx.index,
                root.as_fd(),
                &mut rec.placed,
            )
            .map(|report| InstallReport { pivoted, ..report });
            if let Err(panic) = learner.join() {
                std::panic::resume_unwind(panic);
            }
            marked
        })
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
        self.ctx
            .index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.ctx.identities.forget(id);
        self.create_budget.forget(id);
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

    /// Ask for a rescan of `id` (or every container) soon.
    pub fn schedule_rescan(&self, id: Option<&str>) {
        let due = Instant::now() + RESCAN_DEBOUNCE;
        let ids: Vec<String> = match id {
            Some(id) => vec![id.to_string()],
            None => self.registry().all().map(|c| c.id.clone()).collect(),
        };
        let mut r = self.rescans.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            r.entry(id).or_insert(due);
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
            .copied()
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

    /// Re-expand a container's patterns and mark what is new.
    fn rescan(&self, id: &str) {
        let lock = self.container_lock(id);
        let _own = lock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mut rec) = self.live_record(id) else {
            return;
        };
        let before = rec.placed.marks.len();
        // The expansion runs without the registry lock: a container whose
        // credential directories churn must not hold up another's
        // registration (the rescan of 1,000 homes took the lock for
        // hundreds of milliseconds at a time).
        match self.place(&mut rec) {
            Ok(report) => {
                if rec.placed.marks.len() != before {
                    log(format!(
                        "rescanned container {id}: {} marks (was {before})",
                        rec.placed.marks.len()
                    ));
                }
                self.ctx.stats.rescans.fetch_add(1, Ordering::Relaxed);
                self.note_coverage(id, &report);
                let mut reg = self.registry();
                if self.keep(&mut reg, rec)
                    && let Err(e) = reg.save()
                {
                    log(e.to_string());
                }
            }
            Err(e) => {
                log(format!("rescan of container {id} failed: {e}"));
                let mut reg = self.registry();
                self.keep(&mut reg, rec);
            }
        }
    }

    /// The lock that lets one rescan or create-time marking of a container
    /// run at a time (two would each put back their own copy of its
    /// record, and one copy's marks would be forgotten).
    fn container_lock(&self, id: &str) -> Arc<Mutex<()>> {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// A copy of `id`'s record, if its init still runs.
    fn live_record(&self, id: &str) -> Option<ContainerRecord> {
        let rec = self.registry().get(id).cloned()?;
        rec.alive().then_some(rec)
    }

    /// Put back a record updated outside the registry lock, if it is still
    /// the registration it was copied from. If the container went (or was
    /// registered anew) meanwhile, what this pass marked is taken out
    /// again, as a deregistration would have; false then.
    fn keep(&self, reg: &mut Registry, rec: ContainerRecord) -> bool {
        let same = reg.get(&rec.id).is_some_and(|cur| {
            cur.start_time_ticks == rec.start_time_ticks && cur.registered_at == rec.registered_at
        });
        if same {
            reg.insert(rec);
            return true;
        }
        if reg.get(&rec.id).is_none() {
            let orphaned = self.orphaned(reg, &rec);
            marks::remove(self.groups.borrow(), &rec.placed, root_of(&rec), &orphaned);
            self.unindex(&rec.id);
        }
        false
    }

    /// Mark at once what a create event in container `id` may have made
    /// a credential: the marks only, without the identity learning and
    /// the save of a full rescan (the debounced one that follows does
    /// those). An archiver that starts right after `mkdir -p ~/.ssh` then
    /// races one expansion, not the 100 ms debounce.
    fn mark_now(&self, id: &str) {
        let lock = self.container_lock(id);
        let _own = lock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mut rec) = self.live_record(id) else {
            return;
        };
        let policy = self.ctx.policy();
        let Ok((root, _)) = resolve::container_root(rec.pid, &rec.rootfs) else {
            return;
        };
        let before = rec.placed.marks.len();
        // A directory made inside a new one before its create mark went
        // in (`mkdir -p ~/.ssh` makes two) reported nothing: when a pass
        // marks new directories, a second pass finds what they hold.
        for _ in 0..2 {
            let dirs_before = rec.placed.create_marks.len();
            let placed = marks::place(
                self.groups.borrow(),
                &policy.rules,
                rec.view(),
                &self.ctx.index,
                root.as_fd(),
                &mut rec.placed,
            );
            if let Err(e) = placed {
                log(format!("marking container {id} on a create failed: {e}"));
                break;
            }
            if rec.placed.create_marks.len() <= dirs_before {
                break;
            }
        }
        if rec.placed.marks.len() != before {
            log(format!(
                "rescanned container {id} on a create: {} marks (was {before})",
                rec.placed.marks.len()
            ));
        }
        let mut reg = self.registry();
        self.keep(&mut reg, rec);
    }

    /// The live containers whose rootfs is on the filesystem `fsid`.
    fn containers_on(&self, fsid: [i32; 2]) -> Vec<String> {
        let reg = self.registry();
        reg.all()
            .filter(|c| c.alive())
            .filter(|c| crate::watch::fanotify::fsid_of(&c.rootfs) == Some(fsid))
            .map(|c| c.id.clone())
            .collect()
    }

    /// Whether container `id` may have a create-time marking now: at most
    /// [`CREATE_MARKS_PER_SEC`] a second, so a container that creates
    /// directories in a loop cannot hold the registry (and other
    /// containers' registrations) with back-to-back expansions; past that
    /// its creates wait for the debounced rescan.
    fn may_mark_now(&self, id: &str) -> bool {
        self.create_budget.allow(id)
    }

    /// Run the rescans that are due, and the periodic ones.
    pub fn run_rescans(&self, last_periodic: &mut Instant) {
        let now = Instant::now();
        let due: Vec<String> = {
            let mut r = self.rescans.lock().unwrap_or_else(|e| e.into_inner());
            let due: Vec<String> = r
                .iter()
                .filter(|(_, t)| **t <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for k in &due {
                r.remove(k);
            }
            due
        };
        for id in due {
            self.rescan(&id);
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
        }
    }

    fn drop_container(&self, reg: &mut Registry, id: &str) -> Option<usize> {
        let mut rec = reg.remove(id)?;
        // The copies its readers wrote are marked too: found again by the
        // path they were written at, like the rest.
        let derived = self.ctx.follow.forget_container(id);
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
        if let Err(e) = reg.save() {
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
        let dead = self.registry().dead();
        for id in dead {
            log(format!("container {id} exited; dropping it"));
            self.deregister(&id);
        }
    }

    /// Re-validate persisted containers and re-install their marks.
    pub fn restore(&self, mut records: Vec<ContainerRecord>) {
        // The same container in an earlier version's registry.json and in
        // its own file: keep one.
        records.sort_by(|a, b| a.id.cmp(&b.id));
        records.dedup_by(|a, b| a.id == b.id);
        let mut reg = self.registry();
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
                reg.forget(&rec.id);
                self.unindex(&rec.id);
                continue;
            }
            match self.install(&reg, &mut rec) {
                Ok(rep) => {
                    self.note_coverage(&rec.id, &rep);
                    log(format!(
                        "restored container {}: {} files, {} dirs",
                        rec.id, rep.files, rep.dirs
                    ));
                    reg.insert(rec);
                }
                Err(e) => {
                    log(format!("cannot restore container {}: {e}", rec.id));
                    reg.forget(&rec.id);
                }
            }
        }
        if let Err(e) = reg.save() {
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

    /// Read directory-creation events and schedule rescans of the
    /// containers they happened in (every container when the creator is
    /// not in one, or the queue overflowed).
    pub fn follow_creates(&self, group: &Group, stop: &AtomicBool) {
        let mut buf = vec![0u8; 16 * 1024];
        let mut events = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if !matches!(group.wait(Duration::from_millis(200)), Ok(true)) {
                continue;
            }
            let Ok(n) = group.read(&mut buf) else {
                continue;
            };
            let read_at = Instant::now();
            events.clear();
            let _ = parse_events(&buf[..n], &mut events);
            // One marking per container per batch: creates that arrive
            // while it runs are read in the next batch.
            let mut now: Vec<String> = Vec::new();
            for ev in events.drain(..) {
                let container = (!ev.is_overflow())
                    .then(|| self.ctx.container_of(ev.pid))
                    .flatten()
                    .map(|c| c.reference.id.clone());
                self.schedule_rescan(container.as_deref());
                // `mkdir` is often gone when its event is read: the
                // containers on the event's filesystem are the candidates.
                let ids = match (container, ev.fsid) {
                    (Some(id), _) => vec![id],
                    (None, Some(fsid)) => self.containers_on(fsid),
                    (None, None) => Vec::new(),
                };
                for id in ids {
                    if !now.contains(&id) && self.may_mark_now(&id) {
                        now.push(id);
                    }
                }
            }
            for id in now {
                self.mark_now(&id);
                let took = read_at.elapsed().as_micros() as u64;
                let s = &self.ctx.stats;
                s.create_marks.fetch_add(1, Ordering::Relaxed);
                s.create_mark_us_total.fetch_add(took, Ordering::Relaxed);
                s.create_mark_us_max.fetch_max(took, Ordering::Relaxed);
            }
        }
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
