//! Daemon wiring: threads, registration, restore, reload and shutdown.
//!
//! Threads:
//! * `keyward-perm` answers permission events ([`crate::answer::loops`]);
//! * `keyward-exec` evaluates the seed rule on exec notifications;
//! * `keyward-alert` aggregates findings and delivers alerts to the sinks;
//! * `keyward-control` serves the control socket and reaps containers whose
//!   init has exited;
//! * the main thread waits for SIGTERM/SIGINT (stop) and SIGHUP (reload).
//!
//! On start the persisted registry is re-validated and every surviving
//! container's marks are re-installed *before* the socket is served.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::alert::sink::{SinkStats, Sinks};
use crate::alert::{self, Aggregator, Finding};
use crate::answer::decide::{Context, Policy};
use crate::config::{Config, ConfigError};
use crate::hook::protocol::{ContainerSummary, Registration, Reply, Request, StatusReport};
use crate::registry::control::{self, ControlError, Handler};
use crate::registry::store::{self, ContainerRecord, Registry, RegistryError};
use crate::watch::fanotify::{Group, WatchError};
use crate::watch::marks::{self, MarkError};

/// How often exited containers are reaped.
const REAP_EVERY: Duration = Duration::from_secs(2);
/// A burst of creations in one container makes one rescan this long after
/// the first.
const RESCAN_DEBOUNCE: Duration = Duration::from_millis(100);
/// Rescan interval for containers whose filesystem cannot report creations.
const PERIODIC_RESCAN: Duration = Duration::from_secs(5);

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("cannot create runtime directory {path}: {source}")]
    RuntimeDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot start thread {name}: {source}")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Counters from the alert thread.
#[derive(Debug, Default)]
struct AlertStats {
    sent: AtomicU64,
    pending: AtomicU64,
    rate_limited: AtomicU64,
    sinks: Mutex<BTreeMap<String, SinkStats>>,
}

/// The shared daemon state behind the control socket.
pub struct Daemon {
    config: RwLock<Config>,
    config_path: Option<PathBuf>,
    ctx: Arc<Context>,
    perm: Arc<Group>,
    exec: Arc<Group>,
    /// Directory-creation group; `None` where the kernel lacks it.
    create: Option<Arc<Group>>,
    /// Containers due for a rescan (coverage over time), and when.
    rescans: Mutex<BTreeMap<String, Instant>>,
    /// Containers whose filesystem cannot report creations: rescanned
    /// every [`PERIODIC_RESCAN`] instead.
    periodic: Mutex<std::collections::BTreeSet<String>>,
    registry: Mutex<Registry>,
    started: Instant,
    alerts: Arc<AlertStats>,
    config_errors: Mutex<Vec<String>>,
}

fn log(msg: impl AsRef<str>) {
    eprintln!("keyward: {}", msg.as_ref());
}

impl Daemon {
    fn policy(cfg: &Config) -> Result<Policy, ConfigError> {
        Policy::from_config(cfg)
    }

    fn register(&self, r: Registration) -> Result<Reply, String> {
        let started = std::time::Instant::now();
        store::check_id(&r.id).map_err(|e| e.to_string())?;
        let default = self
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .response
            .action;
        let action =
            store::action_for(&r.id, &r.annotations, default).map_err(|e| e.to_string())?;
        if !r.rootfs.is_absolute() {
            return Err(format!(
                "rootfs {:?} of container {} is not absolute",
                r.rootfs, r.id
            ));
        }
        let facts = store::verify_pid(r.pid).map_err(|e| e.to_string())?;
        let (name, image) = crate::registry::enrich::enrich(
            &r.id,
            &r.bundle,
            store::name_and_image(&r.annotations),
        );
        let mut rec = ContainerRecord {
            id: r.id.clone(),
            pid: r.pid,
            start_time_ticks: facts.start_time_ticks,
            pid_ns: facts.pid_ns,
            mnt_ns: facts.mnt_ns,
            net_ns: facts.net_ns,
            bundle: r.bundle,
            rootfs: r.rootfs,
            annotations: r.annotations,
            name,
            image,
            action,
            registered_at: alert::rfc3339(std::time::SystemTime::now()),
            marks: Vec::new(),
            exec_scope: None,
            create_marks: Vec::new(),
        };
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // A second hook stage for the same container re-registers it.
        if reg.get(&rec.id).is_some() {
            self.drop_container(&mut reg, &rec.id);
        }
        let report = self.install(&reg, &mut rec).map_err(|e| e.to_string())?;
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
        Ok(Reply::Watching { id, report })
    }

    /// Mark `rec`'s files; on failure, take out what this attempt marked
    /// that no other container in `reg` holds.
    fn install(
        &self,
        reg: &Registry,
        rec: &mut ContainerRecord,
    ) -> Result<marks::InstallReport, MarkError> {
        let policy = self.ctx.policy();
        let r = marks::install(
            self.groups(),
            &policy.rules,
            rec,
            &self.ctx.index,
            &self.ctx.identities,
        );
        if r.is_err() {
            let orphaned = self.orphaned(reg, rec);
            marks::remove(self.groups(), rec, &orphaned);
        }
        r
    }

    fn groups(&self) -> marks::Groups<'_> {
        marks::Groups {
            perm: &self.perm,
            exec: &self.exec,
            create: self.create.as_deref(),
        }
    }

    /// Take `rec` out of the index; the marks it held alone, among the
    /// containers in `reg` other than itself.
    fn orphaned(&self, reg: &Registry, rec: &ContainerRecord) -> marks::Orphaned {
        let files = self
            .ctx
            .index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&rec.id);
        let shared: std::collections::HashSet<_> = reg
            .all()
            .filter(|c| c.id != rec.id)
            .flat_map(|c| c.create_marks.iter().map(|m| m.id))
            .collect();
        let create_dirs = rec
            .create_marks
            .iter()
            .map(|m| m.id)
            .filter(|id| !shared.contains(id))
            .collect();
        marks::Orphaned { files, create_dirs }
    }

    fn note_coverage(&self, id: &str, report: &marks::InstallReport) {
        let mut periodic = self.periodic.lock().unwrap_or_else(|e| e.into_inner());
        if report.create_watched == 0 {
            periodic.insert(id.to_string());
        } else {
            periodic.remove(id);
        }
    }

    /// Ask for a rescan of `id` (or every container) soon.
    fn schedule_rescan(&self, id: Option<&str>) {
        let due = Instant::now() + RESCAN_DEBOUNCE;
        let mut r = self.rescans.lock().unwrap_or_else(|e| e.into_inner());
        let ids: Vec<String> = match id {
            Some(id) => vec![id.to_string()],
            None => self
                .registry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .all()
                .map(|c| c.id.clone())
                .collect(),
        };
        for id in ids {
            r.entry(id).or_insert(due);
        }
    }

    /// Re-expand a container's patterns and mark what is new.
    fn rescan(&self, id: &str) {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mut rec) = reg.get(id).cloned() else {
            return;
        };
        if !rec.alive() {
            return;
        }
        let before = rec.marks.len();
        match self.install(&reg, &mut rec) {
            Ok(report) => {
                if rec.marks.len() != before {
                    log(format!(
                        "rescanned container {id}: {} marks (was {before})",
                        rec.marks.len()
                    ));
                }
                self.ctx.stats.rescans.fetch_add(1, Ordering::Relaxed);
                self.note_coverage(id, &report);
                reg.insert(rec);
                if let Err(e) = reg.save() {
                    log(e.to_string());
                }
            }
            Err(e) => log(format!("rescan of container {id} failed: {e}")),
        }
    }

    /// Run the rescans that are due, and the periodic ones.
    fn run_rescans(&self, last_periodic: &mut Instant) {
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
        let rec = reg.remove(id)?;
        let orphaned = self.orphaned(reg, &rec);
        let removed = marks::remove(self.groups(), &rec, &orphaned);
        // marks::remove flushed the exec group's ignore marks: the exec loop
        // starts counting them afresh.
        self.ctx.ignores_flushed.fetch_add(1, Ordering::Relaxed);
        Some(removed)
    }

    fn deregister(&self, id: &str) -> Reply {
        self.deregister_if(id, |_| true)
    }

    /// [`Daemon::deregister`] if the record passes `check`, all under one
    /// lock of the registry.
    fn deregister_if(&self, id: &str, check: impl Fn(&ContainerRecord) -> bool) -> Reply {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if !reg.get(id).is_some_and(check) {
            return Reply::Error {
                message: format!("container {id} is not registered"),
            };
        }
        match self.drop_container(&mut reg, id) {
            Some(n) => {
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
            None => Reply::Error {
                message: format!("container {id} is not registered"),
            },
        }
    }

    /// Drop each container the moment its init exits (see `reaper`). A
    /// container registered again under the same id meanwhile has another
    /// init and stays.
    fn follow_exits(&self, stop: &AtomicBool) {
        // Dropping a container is cleanup, never urgent: at a low priority
        // it waits for idle CPU instead of competing with the runtime
        // tearing the container down and starting the next one.
        crate::answer::loops::set_thread_nice(10);
        let mut exits = crate::registry::reaper::Exits::default();
        while !stop.load(Ordering::Relaxed) {
            let live: Vec<crate::registry::reaper::Init> = self
                .registry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .all()
                .map(|c| crate::registry::reaper::Init {
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
    fn reap(&self) {
        let dead = self
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dead();
        for id in dead {
            log(format!("container {id} exited; dropping it"));
            self.deregister(&id);
        }
    }

    /// Re-validate persisted containers and re-install their marks.
    fn restore(&self, records: Vec<ContainerRecord>) {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        for mut rec in records {
            let same = store::verify_pid(rec.pid).is_ok_and(|f| {
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

    fn status(&self) -> StatusReport {
        let idx = self.ctx.index.read().unwrap_or_else(|e| e.into_inner());
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            containers: idx.containers(),
            marked_inodes: idx.marked_inodes(),
            default_action: self.ctx.policy().default_action.as_str().to_string(),
            stats: self.ctx.stats.snapshot(),
            sinks: self
                .alerts
                .sinks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            alerts_sent: self.alerts.sent.load(Ordering::Relaxed),
            alerts_rate_limited: self.alerts.rate_limited.load(Ordering::Relaxed),
            pending_runs: self.alerts.pending.load(Ordering::Relaxed),
            config_errors: self
                .config_errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            exceptions: self.ctx.policy().exceptions.counts(),
        }
    }

    fn containers(&self) -> Vec<ContainerSummary> {
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.all()
            .map(|c| ContainerSummary {
                id: c.id.clone(),
                pid: c.pid,
                name: c.name.clone(),
                image: c.image.clone(),
                action: c.action.as_str().to_string(),
                marks: c.marks.len(),
                exec_scope: c.exec_scope.map(|s| format!("{s:?}").to_lowercase()),
                registered_at: c.registered_at.clone(),
            })
            .collect()
    }

    /// Reload the config file; on error keep the old one and say why.
    fn reload(&self, alert_cfg: &mpsc::Sender<Config>) {
        match Config::load(self.config_path.as_deref()).and_then(|c| Ok((Self::policy(&c)?, c))) {
            Ok((policy, cfg)) => {
                *self.ctx.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
                self.ctx
                    .process_events
                    .store(cfg.alerts.process_events.is_some(), Ordering::Relaxed);
                let _ = alert_cfg.send(cfg.clone());
                *self.config.write().unwrap_or_else(|e| e.into_inner()) = cfg;
                self.config_errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                log("config reloaded");
            }
            Err(e) => {
                let msg = format!("reload failed, keeping the previous config: {e}");
                log(&msg);
                self.config_errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(msg);
            }
        }
    }
}

impl Handler for Daemon {
    fn handle(&self, req: Request) -> Reply {
        match req {
            Request::Register(r) => {
                let id = r.id.clone();
                self.register(r).unwrap_or_else(|message| {
                    log(format!("refused container {id}: {message}"));
                    Reply::Error { message }
                })
            }
            Request::Deregister { id } => self.deregister(&id),
            Request::Status => Reply::Status(Box::new(self.status())),
            Request::Containers => Reply::Containers {
                containers: self.containers(),
            },
        }
    }
}

/// Add a finding to its run and carry out the run's response: once per run
/// for the container-wide actions, and whenever a later finding brings an
/// outcome (the kill done on the answering thread, a denied open).
fn ingest(agg: &mut Aggregator, ctx: &Context, f: Finding, sinks: &mut Sinks) {
    if f.trigger == crate::alert::Trigger::Start {
        sinks.deliver_process_start(&f);
        return;
    }
    let (id, pid, start) = (
        f.container.id.clone(),
        f.process.pid,
        f.process.start_time_ticks,
    );
    let (action, denied, done) = (f.action, f.denied(), f.response.clone());
    let new = agg.add(f, Instant::now());
    let outcome = match done {
        Some(o) => Some(o),
        None if new || (denied && action == crate::config::Action::Deny) => {
            let view = ctx
                .index
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .container(&id)
                .cloned();
            Some(match view {
                Some(v) => crate::response::respond(&v, action, pid, start, denied),
                None => crate::alert::ResponseOutcome {
                    action,
                    result: "failed".into(),
                    reason: Some(format!("container {id} is no longer registered")),
                    interfaces: Vec::new(),
                },
            })
        }
        None => None,
    };
    if let Some(o) = outcome {
        agg.set_response(&id, pid, start, o);
    }
}

fn alert_loop(
    findings: Receiver<Finding>,
    reconfig: Receiver<Config>,
    ctx: &Context,
    cfg: &Config,
    stats: &AlertStats,
    stop: &AtomicBool,
) {
    let mut sinks = Sinks::new(&cfg.alerts);
    let mut sinks_cfg = cfg.alerts.clone();
    let mut agg = Aggregator::new(
        Duration::from_millis(cfg.daemon.aggregate_ms),
        cfg.daemon.max_files_per_alert,
    );
    let mut last_retry = Instant::now();
    let minute = Duration::from_secs(60);
    let mut limiter = crate::alert::RateLimiter::new(cfg.alerts.rate_limit_per_minute, minute);
    // Degraded coverage is reported at most every 10 s, with the growth of
    // the counters since the last report.
    let mut reported = ctx.stats.degradation();
    let mut last_health = Instant::now() - Duration::from_secs(10);
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        match findings.recv_timeout(Duration::from_millis(50)) {
            Ok(f) => {
                ingest(&mut agg, ctx, f, &mut sinks);
                // Take whatever else is already queued before delivering.
                while let Ok(f) = findings.try_recv() {
                    ingest(&mut agg, ctx, f, &mut sinks);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                for a in agg.drain_due(Instant::now(), true) {
                    sinks.deliver(&a);
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        }
        if let Ok(new) = reconfig.try_recv() {
            // Sinks are rebuilt only when their config changed, so a reload
            // does not throw away alerts waiting in a backlog for retry.
            if new.alerts != sinks_cfg {
                sinks = Sinks::new(&new.alerts);
                sinks_cfg = new.alerts.clone();
            }
            limiter.set_limit(new.alerts.rate_limit_per_minute);
            // Runs in flight keep their findings across a reload.
            agg.reconfigure(
                Duration::from_millis(new.daemon.aggregate_ms),
                new.daemon.max_files_per_alert,
            );
        }
        for mut a in agg.drain_due(Instant::now(), stopping) {
            if !limiter.admit(&a.container.id, Instant::now()) {
                stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            a.meta = Some(ctx.policy().rules.meta(a.rule().0).clone());
            sinks.deliver(&a);
            stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        for (id, held) in limiter.closed_windows(Instant::now()) {
            let doc = crate::alert::rate_limit_doc(sinks.hostname(), &id, held, minute);
            sinks.deliver_summary(&doc);
        }
        if last_health.elapsed() >= Duration::from_secs(10) {
            let now = ctx.stats.degradation();
            if let Some(delta) = now.since(&reported) {
                log(format!("coverage degraded: {delta:?}"));
                sinks.deliver_health(&delta);
                reported = now;
                last_health = Instant::now();
            }
        }
        if last_retry.elapsed() >= Duration::from_secs(1) {
            sinks.retry();
            last_retry = Instant::now();
        }
        stats.pending.store(agg.pending() as u64, Ordering::Relaxed);
        *stats.sinks.lock().unwrap_or_else(|e| e.into_inner()) = sinks
            .stats()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        if stopping {
            return;
        }
    }
}

/// Read directory-creation events and schedule rescans of the containers
/// they happened in (every container when the creator is not in one, or the
/// queue overflowed).
fn create_loop(group: &Group, d: &Daemon, stop: &AtomicBool) {
    use crate::watch::fanotify::EventSource;
    let mut buf = vec![0u8; 16 * 1024];
    let mut events = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if !matches!(group.wait(Duration::from_millis(200)), Ok(true)) {
            continue;
        }
        let Ok(n) = group.read(&mut buf) else {
            continue;
        };
        events.clear();
        let _ = crate::watch::fanotify::parse_events(&buf[..n], &mut events);
        for ev in events.drain(..) {
            let container = (!ev.is_overflow())
                .then(|| d.ctx.container_of(ev.pid))
                .flatten()
                .map(|c| c.reference.id.clone());
            d.schedule_rescan(container.as_deref());
        }
    }
}

/// Tell systemd we are ready, natively, if it is listening.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(s) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let r = if let Some(abs) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abs)
            .and_then(|a| s.send_to_addr(b"READY=1", &a))
    } else {
        s.send_to(b"READY=1", Path::new(&path))
    };
    if let Err(e) = r {
        log(format!("cannot notify systemd: {e}"));
    }
}

fn spawn<F: FnOnce() + Send + 'static>(
    name: &'static str,
    f: F,
) -> Result<std::thread::JoinHandle<()>, DaemonError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| DaemonError::Thread { name, source })
}

/// Run the daemon in the foreground until SIGTERM or SIGINT.
pub fn run(config_path: Option<&Path>) -> Result<(), DaemonError> {
    let cfg = Config::load(config_path)?;
    let policy = Daemon::policy(&cfg)?;
    std::fs::create_dir_all(&cfg.daemon.runtime_dir).map_err(|source| DaemonError::RuntimeDir {
        path: cfg.daemon.runtime_dir.clone(),
        source,
    })?;
    // Two stop flags, because shutdown has an order: the threads that
    // open files in containers (control, reaper, create: deregistration
    // and rescans reopen marked credential files) stop first, and the
    // decision loops that answer those opens last. The other way round, a
    // deregistration in flight would wait forever on its own permission
    // event, and the daemon would never exit.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_intake = Arc::new(AtomicBool::new(false));
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(DaemonError::Signals)?;

    let perm = Arc::new(Group::permission()?);
    let exec = Arc::new(Group::exec()?);
    let create = match Group::create() {
        Ok(g) => Some(Arc::new(g)),
        Err(e) => {
            log(format!(
                "{e}; new credential directories are found by periodic rescans"
            ));
            None
        }
    };
    let ctx = Arc::new(Context::new(policy));
    ctx.process_events
        .store(cfg.alerts.process_events.is_some(), Ordering::Relaxed);
    ctx.identities
        .learn_host(ctx.policy().rules.file_archivers().names());
    let (tx, rx) = mpsc::sync_channel::<Finding>(cfg.daemon.queue_capacity);
    let (cfg_tx, cfg_rx) = mpsc::channel::<Config>();
    let alerts = Arc::new(AlertStats::default());

    // Decision threads first: restored marks may fire immediately.
    let mut threads = Vec::new();
    let inflight = Arc::new(crate::answer::loops::Inflight::default());
    {
        let (p, c, t, s, i) = (
            perm.clone(),
            ctx.clone(),
            tx.clone(),
            stop.clone(),
            inflight.clone(),
        );
        threads.push(spawn("keyward-perm", move || {
            crate::answer::loops::permission_loop(&*p, &c, t, &i, &s)
        })?);
    }
    {
        let (p, c, s, i) = (perm.clone(), ctx.clone(), stop.clone(), inflight);
        let deadline = Duration::from_millis(cfg.daemon.decision_deadline_ms);
        threads.push(spawn("keyward-watchdog", move || {
            crate::answer::loops::watchdog(&*p, &c, &i, deadline, &s)
        })?);
    }
    {
        // The exec loop reads /proc/<pid>/exe and fds, which may be marked
        // files: it stops with the intake threads, before the permission
        // loop.
        let (e, c, t, s) = (exec.clone(), ctx.clone(), tx, stop_intake.clone());
        threads.push(spawn("keyward-exec", move || {
            crate::answer::loops::exec_loop(&*e, &c, t, &s)
        })?);
    }
    let alert_thread = {
        let (a, s, c, x) = (alerts.clone(), stop.clone(), cfg.clone(), ctx.clone());
        spawn("keyward-alert", move || {
            alert_loop(rx, cfg_rx, &x, &c, &a, &s)
        })?
    };

    let (registry, mut records, errors) = Registry::load(&cfg.daemon.runtime_dir);
    for e in errors {
        log(format!("{e}; that container is not restored"));
    }
    // The same container in an earlier version's registry.json and in its
    // own file: keep one.
    records.sort_by(|a, b| a.id.cmp(&b.id));
    records.dedup_by(|a, b| a.id == b.id);
    let daemon = Arc::new(Daemon {
        config: RwLock::new(cfg.clone()),
        config_path: config_path.map(Path::to_path_buf),
        ctx,
        perm,
        exec,
        create: create.clone(),
        rescans: Mutex::new(BTreeMap::new()),
        periodic: Mutex::new(Default::default()),
        registry: Mutex::new(registry),
        started: Instant::now(),
        alerts,
        config_errors: Mutex::new(Vec::new()),
    });
    daemon.restore(records);

    let listener = control::bind(&cfg.socket)?;
    let mut intake = Vec::new();
    intake.push({
        let (d, s) = (daemon.clone(), stop_intake.clone());
        let mut last_reap = Instant::now();
        spawn("keyward-control", move || {
            let reaper = d.clone();
            let mut last_periodic = Instant::now();
            control::serve(listener, d, &s, move || {
                if last_reap.elapsed() >= REAP_EVERY {
                    reaper.reap();
                    last_reap = Instant::now();
                }
                reaper.run_rescans(&mut last_periodic);
            })
        })?
    });
    {
        let (d, s) = (daemon.clone(), stop_intake.clone());
        intake.push(spawn("keyward-reaper", move || d.follow_exits(&s))?);
    }
    if let Some(create) = create {
        let (d, s) = (daemon.clone(), stop_intake.clone());
        intake.push(spawn("keyward-create", move || {
            create_loop(&create, &d, &s)
        })?);
    }
    log(format!(
        "daemon {} serving {} (pid {})",
        env!("CARGO_PKG_VERSION"),
        cfg.socket.display(),
        std::process::id()
    ));
    notify_ready();

    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            daemon.reload(&cfg_tx);
            continue;
        }
        log(format!("signal {sig}: stopping"));
        break;
    }
    stop_intake.store(true, Ordering::Relaxed);
    for t in intake {
        let _ = t.join();
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let _ = alert_thread.join();
    let _ = std::fs::remove_file(&cfg.socket);
    // The registry stays on disk: the containers are still running and a
    // restarted daemon picks them up. Closing the groups releases any
    // pending permission event (the kernel allows it).
    log("stopped");
    Ok(())
}
