//! The control socket's service: registrations go to the
//! [`Registrar`], `status` and `containers` are answered from the shared
//! state, and SIGHUP's reload swaps the policy.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use super::control::{Handler, Then};
use super::register::Registrar;
use crate::alert::deliver::AlertStats;
use crate::answer::policy::{Context, Policy};
use crate::answer::stats::StatsSnapshot;
use crate::config::Config;
use crate::hook::protocol::{Reply, Request, StatusReport};

fn log(msg: impl AsRef<str>) {
    crate::registry::log_line(msg.as_ref());
}

/// The shared daemon state behind the control socket.
pub struct Service {
    pub config: RwLock<Config>,
    pub config_path: Option<PathBuf>,
    pub ctx: Arc<Context>,
    pub registrar: Registrar,
    pub started: Instant,
    pub alerts: Arc<AlertStats>,
    pub config_errors: Mutex<Vec<String>>,
}

impl Service {
    /// What `keyward status` and the metrics report.
    pub fn status(&self) -> StatusReport {
        let idx = self.ctx.index.read().unwrap_or_else(|e| e.into_inner());
        let policy = self.ctx.policy();
        let alerts = &self.alerts;
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            containers: idx.containers(),
            marked_inodes: idx.marked_inodes(),
            default_action: policy.default_action.as_str().to_string(),
            stats: StatsSnapshot {
                learn_timeouts: self.ctx.identities.learn_timeouts(),
                ..self.ctx.stats.snapshot()
            },
            sinks: alerts
                .sinks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            alerts_sent: alerts.sent.load(Ordering::Relaxed),
            alerts_rate_limited: alerts.rate_limited.load(Ordering::Relaxed),
            alerts_by_rule: alerts
                .by_rule
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            pending_runs: alerts.pending.load(Ordering::Relaxed),
            config_errors: self
                .config_errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            exceptions: policy.exceptions.counts(),
        }
    }

    /// Reload the config file; on error keep the old one and say why.
    pub fn reload(&self, alert_cfg: &Sender<Config>) {
        let loaded = Config::load(self.config_path.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|c| Ok((Policy::from_config(&c).map_err(|e| e.to_string())?, c)));
        let mut errors = self.config_errors.lock().unwrap_or_else(|e| e.into_inner());
        match loaded {
            Ok((policy, cfg)) => {
                *self.ctx.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
                self.ctx
                    .process_events
                    .store(cfg.alerts.process_events.is_some(), Ordering::Relaxed);
                let _ = alert_cfg.send(cfg.clone());
                *self.config.write().unwrap_or_else(|e| e.into_inner()) = cfg;
                errors.clear();
                log("config reloaded");
            }
            Err(e) => {
                let msg = format!("reload failed, keeping the previous config: {e}");
                log(&msg);
                errors.push(msg);
            }
        }
    }
}

impl Handler for Service {
    /// A peer in another namespace, or one of a watched container's
    /// processes, is refused whatever its uid.
    fn refuse(&self, pid: i32) -> Option<String> {
        super::control::foreign_namespaces(pid).or_else(|| {
            self.ctx.container_of(pid).map(|v| {
                format!(
                    "peer pid {pid} is a process of watched container {}",
                    v.reference.id
                )
            })
        })
    }

    fn handle(&self, req: Request) -> Reply {
        let (reply, then) = self.handle_then(req);
        if let Some(then) = then {
            then();
        }
        reply
    }

    /// A registration's learning of the image runs after its reply.
    fn handle_then(&self, req: Request) -> (Reply, Then<'_>) {
        match req {
            Request::Register(r) => {
                let id = r.id.clone();
                let (response, engines) = {
                    let cfg = self.config.read().unwrap_or_else(|e| e.into_inner());
                    (cfg.response.clone(), cfg.engines.clone())
                };
                match self.registrar.register(
                    r,
                    response.action,
                    response.annotation_may_lower,
                    &engines,
                ) {
                    Ok((reply, after)) => (reply, Some(Box::new(move || after.run()))),
                    Err(e) => {
                        let message = e.to_string();
                        log(format!("refused container {id}: {message}"));
                        (Reply::Error { message }, None)
                    }
                }
            }
            Request::Deregister { id } => (self.registrar.deregister(&id), None),
            Request::Status => (Reply::Status(Box::new(self.status())), None),
            Request::Containers => (
                Reply::Containers {
                    containers: self.registrar.containers(),
                },
                None,
            ),
        }
    }
}
