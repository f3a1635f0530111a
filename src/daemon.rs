//! Daemon wiring: threads, signals, reload and shutdown.
//!
//! Threads:
//! * `keyward-perm` answers permission events, and `keyward-watchdog`
//!   answers any it leaves stuck past the deadline
//!   ([`crate::answer::permission`]);
//! * `keyward-exec` judges exec notifications ([`crate::answer::exec`]);
//! * `keyward-follow` marks what processes that read a credential write
//!   ([`crate::answer::follow`]);
//! * `keyward-alert` aggregates findings, responds and delivers
//!   ([`crate::alert::deliver`]);
//! * `keyward-control` serves the control socket (registrations, status)
//!   and runs due rescans; `keyward-client` threads serve one connection
//!   each ([`crate::registry::control`]);
//! * `keyward-reaper` drops a container the moment its init exits, and
//!   `keyward-create` schedules rescans when credential directories appear
//!   ([`crate::registry::register`]);
//! * the main thread waits for SIGTERM/SIGINT (stop), SIGHUP (reload) and
//!   SIGUSR2 (upgrade: stop as for SIGTERM, then re-exec the installed
//!   binary with the groups and socket kept open; see [`crate::upgrade`]).
//!
//! On start the persisted registry is re-validated and every surviving
//! container's marks are re-installed *before* the socket is served.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::alert::Finding;
use crate::alert::deliver::{self, AlertStats};
use crate::answer::permission::Lanes;
use crate::answer::policy::{Context, Policy, PolicyError};
use crate::answer::{exec, follow, permission};
use crate::config::{Config, ConfigError};
use crate::registry::control::{self, ControlError};
use crate::registry::register::{OwnedGroups, Registrar};
use crate::registry::service::Service;
use crate::registry::store::{Registry, RegistryError};
use crate::upgrade::Carried;
use crate::watch::fanotify::{Group, WatchError};

/// Longest sleep of the rescan thread (it wakes earlier when a rescan is
/// scheduled or due): how soon it sees the stop flag.
const RESCAN_TICK: Duration = Duration::from_millis(200);
/// How often exited containers are reaped (a fallback to the reaper).
const REAP_EVERY: Duration = Duration::from_secs(2);

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Metrics(#[from] crate::registry::metrics::MetricsError),
    #[error("cannot create runtime directory {path}: {source}")]
    RuntimeDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Upgrade(#[from] crate::upgrade::UpgradeError),
    #[error("cannot start thread {name}: {source}")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn log(msg: impl AsRef<str>) {
    crate::registry::log_line(msg.as_ref());
}

fn spawn<F: FnOnce() + Send + 'static>(
    name: &'static str,
    f: F,
) -> Result<JoinHandle<()>, DaemonError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| DaemonError::Thread { name, source })
}

/// The decision threads: permission loop, watchdog, exec loop. They start
/// first, because restored marks may fire at once. The exec loop reads
/// `/proc/<pid>/exe` and fds, which may be marked files, so it stops with
/// the intake threads (`stop_intake`), before the permission loop.
fn spawn_decisions(
    groups: &OwnedGroups,
    ctx: &Arc<Context>,
    tx: SyncSender<Finding>,
    cfg: &Config,
    stops: &Stops,
) -> Result<Vec<JoinHandle<()>>, DaemonError> {
    let lanes = Arc::new(Lanes::default());
    let deadline = Duration::from_millis(cfg.daemon.decision_deadline_ms);
    // A decision waiting for its container's image must still answer
    // before the watchdog would release it.
    ctx.identities.set_deadline(deadline);
    let (p, c, t, s, l) = (
        groups.perm.clone(),
        ctx.clone(),
        tx.clone(),
        stops.last.clone(),
        lanes.clone(),
    );
    let perm = spawn("keyward-perm", move || {
        permission::permission_loop(&*p, &c, t, &l.main, &s)
    })?;
    let (p, c, s, t) = (
        groups.perm.clone(),
        ctx.clone(),
        stops.last.clone(),
        tx.clone(),
    );
    let watchdog = spawn("keyward-watchdog", move || {
        permission::watchdog(&*p, &c, t, &lanes, deadline, &s)
    })?;
    let (e, c, s) = (groups.exec.clone(), ctx.clone(), stops.intake.clone());
    let t = tx.clone();
    let exec = spawn("keyward-exec", move || exec::exec_loop(&*e, &c, t, &s))?;
    ctx.follow
        .set_groups(groups.write.clone(), groups.perm.clone());
    let (w, p, c, s, t) = (
        groups.write.clone(),
        groups.perm.clone(),
        ctx.clone(),
        stops.intake.clone(),
        tx,
    );
    let follow = spawn("keyward-follow", move || {
        let excepted =
            |s: &crate::rules::exceptions::Subject<'_>| c.policy().exceptions.suppress(s).is_some();
        let scan_pipes = |id: &str| {
            for f in crate::answer::decide::follow_pipes_of(&c, id) {
                crate::answer::events::send(&t, f, &c.stats.queue_drops);
            }
        };
        let out = follow::Outputs {
            index: &c.index,
            stats: &c.stats,
            perm: &p,
            findings: &t,
            excepted: &excepted,
            identities: &c.identities,
            scan_pipes: &scan_pipes,
            behaviour_window: &|| c.policy().rules.behaviour_window,
            derived_limit: &|| c.policy().limits.derived_per_container,
        };
        follow::follow_loop(&w, &c.follow, out, &s)
    })?;
    Ok(vec![perm, watchdog, exec, follow])
}

/// The threads that take work in: the control socket (with reaping and
/// rescans on its tick), the reaper, and the create-event follower.
fn spawn_intake(
    daemon: &Arc<Service>,
    listener: std::os::unix::net::UnixListener,
    create: Option<Arc<Group>>,
    metrics: Option<std::net::TcpListener>,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<JoinHandle<()>>, DaemonError> {
    let (d, s) = (daemon.clone(), stop.clone());
    let control = spawn("keyward-control", move || {
        let ticker = d.clone();
        let mut last_reap = Instant::now();
        control::serve(listener, d, &s, move || {
            if last_reap.elapsed() >= REAP_EVERY {
                ticker.registrar.reap();
                last_reap = Instant::now();
            }
        })
    })?;
    // Rescans run on their own thread, never on the one that accepts
    // registrations: a container churning its credential directories
    // must not delay another's start.
    let (d, s) = (daemon.clone(), stop.clone());
    let rescans = spawn("keyward-rescan", move || {
        let mut last_periodic = Instant::now();
        while !s.load(Ordering::Relaxed) {
            d.registrar.run_rescans(&mut last_periodic);
            d.registrar.wait_for_rescans(last_periodic, RESCAN_TICK);
        }
    })?;
    let (d, s) = (daemon.clone(), stop.clone());
    let mut threads = vec![
        control,
        rescans,
        spawn("keyward-reaper", move || d.registrar.follow_exits(&s))?,
    ];
    if let Some(create) = create {
        let (d, s) = (daemon.clone(), stop.clone());
        threads.push(spawn("keyward-create", move || {
            d.registrar.follow_creates(&create, &s)
        })?);
    }
    if let Some(listener) = metrics {
        let (d, s) = (daemon.clone(), stop.clone());
        threads.push(spawn("keyward-metrics", move || {
            crate::registry::metrics::serve(listener, || d.status(), &s)
        })?);
    }
    Ok(threads)
}

/// Two stop flags, because shutdown has an order: the threads that open
/// files in containers (control, reaper, create, exec: deregistration and
/// rescans reopen marked credential files) stop first, and the decision
/// loops that answer those opens last. The other way round, a
/// deregistration in flight would wait forever on its own permission
/// event, and the daemon would never exit.
#[derive(Default)]
struct Stops {
    intake: Arc<AtomicBool>,
    last: Arc<AtomicBool>,
}

/// How one run of [`serve`] ended.
enum Ended {
    Stopped,
    /// SIGUSR2: what to hand the next binary.
    Upgrade(Carried),
}

/// Run the daemon in the foreground until SIGTERM or SIGINT. On SIGUSR2 it
/// re-execs its binary, keeping its fanotify groups and control socket;
/// if the exec fails, this process carries on with them.
pub fn run(config_path: Option<&Path>) -> Result<(), DaemonError> {
    let mut carried = crate::upgrade::from_env()?;
    loop {
        match serve(config_path, carried.take())? {
            Ended::Stopped => return Ok(()),
            Ended::Upgrade(c) => {
                let e = crate::upgrade::exec_self(&c);
                log(format!("{e}; carrying on in this process"));
                carried = Some(c);
            }
        }
    }
}

fn serve(config_path: Option<&Path>, carried: Option<Carried>) -> Result<Ended, DaemonError> {
    let cfg = Config::load(config_path)?;
    let policy = Policy::from_config(&cfg)?;
    std::fs::create_dir_all(&cfg.daemon.runtime_dir).map_err(|source| DaemonError::RuntimeDir {
        path: cfg.daemon.runtime_dir.clone(),
        source,
    })?;
    let stops = Stops::default();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGUSR2,
    ])
    .map_err(DaemonError::Signals)?;

    let adopted = carried.is_some();
    let (groups, listener) = match carried {
        Some(c) => {
            // Marks this process has no state for: ignore marks (holds
            // included) and the follower's close-after-write arming. Both
            // are made again as execs and reads come.
            if let Err(e) = c.groups.exec.flush_marks() {
                log(format!("cannot drop the exec group's ignore marks: {e}"));
            }
            if let Err(e) = c.groups.write.flush_marks() {
                log(format!("cannot drop the write group's marks: {e}"));
            }
            (c.groups, Some(c.listener))
        }
        None => (OwnedGroups::open()?, None),
    };
    let ctx = Arc::new(Context::new(policy));
    ctx.process_events
        .store(cfg.alerts.process_events.is_some(), Ordering::Relaxed);
    ctx.identities
        .learn_host(ctx.policy().rules.file_archivers().names());
    let (tx, rx) = mpsc::sync_channel::<Finding>(cfg.daemon.queue_capacity);
    let (cfg_tx, cfg_rx) = mpsc::channel::<Config>();
    let alerts = Arc::new(AlertStats::default());

    let (registry, records, errors) = Registry::load(&cfg.daemon.runtime_dir);
    for e in errors {
        log(format!("{e}; that container is not restored"));
    }
    if adopted {
        // Adopted groups still hold the marks, and events may be waiting
        // in them: the index must know every container before the first
        // one is read.
        let n = crate::registry::register::preload(&ctx, &records);
        log(format!(
            "upgraded in place: {n} containers known before the first event"
        ));
    }
    let decisions = spawn_decisions(&groups, &ctx, tx, &cfg, &stops)?;
    let alert_thread = {
        let (a, s, c, x) = (alerts.clone(), stops.last.clone(), cfg.clone(), ctx.clone());
        spawn("keyward-alert", move || {
            deliver::alert_loop(rx, cfg_rx, &*x, &c, &a, &s)
        })?
    };

    let daemon = Arc::new(Service {
        config: RwLock::new(cfg.clone()),
        config_path: config_path.map(Path::to_path_buf),
        registrar: Registrar::new(ctx.clone(), groups.clone(), registry),
        ctx,
        started: Instant::now(),
        alerts,
        config_errors: Mutex::new(Vec::new()),
    });
    daemon.registrar.restore(records);

    let listener = match listener {
        Some(l) => l,
        None => control::bind(&cfg.socket)?,
    };
    // The control thread gets a duplicate: the original outlives it, for
    // the next binary on an upgrade.
    let served = listener.try_clone().map_err(|source| ControlError::Bind {
        path: cfg.socket.clone(),
        source,
    })?;
    let metrics = if cfg.metrics.enabled {
        let l = crate::registry::metrics::bind(cfg.metrics.listen)?;
        log(format!("metrics at http://{}/metrics", cfg.metrics.listen));
        Some(l)
    } else {
        None
    };
    let intake = spawn_intake(
        &daemon,
        served,
        groups.create.clone(),
        metrics,
        &stops.intake,
    )?;
    log(format!(
        "daemon {} serving {} (pid {})",
        env!("CARGO_PKG_VERSION"),
        cfg.socket.display(),
        std::process::id()
    ));
    control::notify_ready();

    let mut upgrade = false;
    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            daemon.reload(&cfg_tx);
            continue;
        }
        upgrade = sig == signal_hook::consts::SIGUSR2;
        if upgrade && let Err(e) = crate::upgrade::preflight(config_path) {
            log(e.to_string());
            upgrade = false;
            continue;
        }
        log(if upgrade {
            "signal SIGUSR2: upgrading; permission events wait in the kernel meanwhile".to_string()
        } else {
            format!("signal {sig}: stopping")
        });
        break;
    }
    stops.intake.store(true, Ordering::Relaxed);
    for t in intake {
        let _ = t.join();
    }
    stops.last.store(true, Ordering::Relaxed);
    for t in decisions {
        let _ = t.join();
    }
    let _ = alert_thread.join();
    drop(signals);
    if upgrade {
        log(format!(
            "threads stopped, every permission event read was answered; exec {}",
            crate::upgrade::own_binary()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|e| e.to_string())
        ));
        return Ok(Ended::Upgrade(Carried { groups, listener }));
    }
    let _ = std::fs::remove_file(&cfg.socket);
    // The registry stays on disk: the containers are still running and a
    // restarted daemon picks them up. Closing the groups releases any
    // pending permission event (the kernel allows it).
    log("stopped");
    Ok(Ended::Stopped)
}
