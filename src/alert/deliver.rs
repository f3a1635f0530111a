//! The alert thread: findings in, alerts and responses out.
//!
//! It adds each finding to its run, carries out the run's response, lets
//! quiet runs go through the rate limit to the sinks, summarises what the
//! limit held, reports degraded coverage, and retries what the sinks could
//! not send. It is the only thread that writes alerts: the decision
//! threads only queue.
//!
//! What it needs from the decision side (the container behind a finding,
//! a rule's metadata, the degradation counters) comes through
//! [`Inputs`], so this stage imports nothing of the answer stage.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::ecs::Degradation;
use super::finding::{Finding, Trigger};
use super::ratelimit::{RateLimiter, rate_limit_doc};
use super::sink::{SinkStats, Sinks};
use super::{Aggregator, Alert};
use crate::config::{Action, Config};
use crate::response::{self, ResponseOutcome};
use crate::rules::RuleMeta;
use crate::watch::index::ContainerView;

/// How often degraded coverage may be reported (with the counters' growth
/// since the last report).
const HEALTH_EVERY: Duration = Duration::from_secs(10);
/// How often the sinks retry their backlog.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// The rate limit's window.
const MINUTE: Duration = Duration::from_secs(60);

/// What the alert thread reads from the decision side.
pub trait Inputs {
    /// The registered container with this id, if it still is.
    fn container(&self, id: &str) -> Option<ContainerView>;
    /// The severity, risk and MITRE ids of a rule under the current policy.
    fn rule_meta(&self, rule_id: &str) -> RuleMeta;
    /// The counters whose growth means degraded coverage.
    fn degradation(&self) -> Degradation;
    /// The per-container bounds reached since the last call: (bound,
    /// container id, times).
    fn bounds_reached(&self) -> Vec<(crate::answer::stats::Bound, String, u64)> {
        Vec::new()
    }
}

/// Counters from the alert thread, read by `keyward status`.
#[derive(Debug, Default)]
pub struct AlertStats {
    pub sent: AtomicU64,
    pub pending: AtomicU64,
    pub rate_limited: AtomicU64,
    pub sinks: Mutex<BTreeMap<String, SinkStats>>,
    /// Alerts sent, by rule id.
    pub by_rule: Mutex<BTreeMap<String, u64>>,
}

/// The alert thread's state between rounds.
struct Delivery<'a> {
    inputs: &'a dyn Inputs,
    stats: &'a AlertStats,
    sinks: Sinks,
    sinks_cfg: crate::config::AlertsConfig,
    agg: Aggregator,
    limiter: RateLimiter,
    reported: Degradation,
    last_health: Instant,
    last_retry: Instant,
    /// Open runs with an alert delivered, whose close is delivered too.
    delivered_runs: HashSet<String>,
}

/// Whether the process of a run is still the one that ran it.
fn alive(pid: i32, start: u64) -> bool {
    crate::attribute::procfs::stat(pid).is_ok_and(|s| s.start_time_ticks == start)
}

/// Run the alert thread until the finding queue closes or `stop` is set.
pub fn alert_loop(
    findings: Receiver<Finding>,
    reconfig: Receiver<Config>,
    inputs: &dyn Inputs,
    cfg: &Config,
    stats: &AlertStats,
    stop: &AtomicBool,
) {
    let mut d = Delivery {
        inputs,
        stats,
        sinks: Sinks::new(&cfg.alerts),
        sinks_cfg: cfg.alerts.clone(),
        agg: Aggregator::new(
            Duration::from_millis(cfg.daemon.aggregate_ms),
            cfg.daemon.max_files_per_alert,
        ),
        limiter: RateLimiter::new(cfg.alerts.rate_limit_per_minute, MINUTE),
        reported: inputs.degradation(),
        last_health: Instant::now() - HEALTH_EVERY,
        last_retry: Instant::now(),
        delivered_runs: HashSet::new(),
    };
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        match findings.recv_timeout(Duration::from_millis(50)) {
            Ok(f) => {
                d.ingest(f);
                // Take whatever else is already queued before delivering.
                while let Ok(f) = findings.try_recv() {
                    d.ingest(f);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                d.flush();
                return;
            }
        }
        if let Ok(new) = reconfig.try_recv() {
            d.reconfigure(&new);
        }
        d.deliver_due(stopping);
        d.summarise_held();
        d.report_health();
        d.retry();
        d.publish_stats();
        if stopping {
            return;
        }
    }
}

impl Delivery<'_> {
    /// Add a finding to its run and carry out the run's response: once per
    /// run for the container-wide actions, and whenever a later finding
    /// brings an outcome (the kill done on the answering thread, a denied
    /// open).
    fn ingest(&mut self, f: Finding) {
        if f.trigger == Trigger::Start {
            self.sinks.deliver_process_start(&f);
            return;
        }
        let (id, pid, start) = (
            f.container.id.clone(),
            f.process.pid,
            f.process.start_time_ticks,
        );
        let (action, denied, done) = (f.action, f.denied(), f.response.clone());
        let new = self.agg.add(f, Instant::now());
        let outcome = match done {
            Some(o) => Some(o),
            None if new || (denied && action == Action::Deny) => {
                Some(match self.inputs.container(&id) {
                    Some(v) => response::respond(&v, action, pid, start, denied),
                    None => ResponseOutcome::failed(
                        action,
                        format!("container {id} is no longer registered"),
                    ),
                })
            }
            None => None,
        };
        if let Some(o) = outcome {
            self.agg.set_response(&id, pid, start, o);
        }
    }

    /// Deliver every open run (the queue closed).
    fn flush(&mut self) {
        for a in self.agg.drain_due(Instant::now(), true, &alive) {
            self.sinks.deliver(&a);
            self.stats.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sinks are rebuilt only when their config changed, so a reload does
    /// not throw away alerts waiting in a backlog for retry; runs in
    /// flight keep their findings.
    fn reconfigure(&mut self, new: &Config) {
        if new.alerts != self.sinks_cfg {
            self.sinks = Sinks::new(&new.alerts);
            self.sinks_cfg = new.alerts.clone();
        }
        self.limiter.set_limit(new.alerts.rate_limit_per_minute);
        self.agg.reconfigure(
            Duration::from_millis(new.daemon.aggregate_ms),
            new.daemon.max_files_per_alert,
        );
    }

    /// Runs that went quiet (all of them when stopping), through the rate
    /// limit, to the sinks.
    fn deliver_due(&mut self, stopping: bool) {
        for a in self.agg.drain_due(Instant::now(), stopping, &alive) {
            self.deliver(a);
        }
    }

    fn deliver(&mut self, mut a: Alert) {
        let run = a.run.clone();
        let (seq, last, id) = run
            .as_ref()
            .map_or((1, true, String::new()), |r| (r.seq, r.last, r.id.clone()));
        let admitted = if seq > 1 && run.as_ref().is_some_and(|r| r.files_added.is_empty()) {
            // An update that adds no file (the close) goes wherever the
            // run's earlier alerts went: the limit already counted them.
            self.delivered_runs.contains(&id)
        } else {
            // The credential files the run touched (for an update, the
            // ones it adds), or, for a seed-rule match on the command line
            // alone, the paths its arguments named.
            let mut files: Vec<&str> = match &run {
                Some(r) if r.seq > 1 => r.files_added.iter().map(String::as_str).collect(),
                _ => a.files.iter().map(|f| f.path.as_str()).collect(),
            };
            if let Some(m) = a.exec_match.as_ref().filter(|_| files.is_empty()) {
                files = m.paths.iter().map(|p| p.arg.as_str()).collect();
            }
            let candidate = super::ratelimit::Candidate {
                container: &a.container.id,
                rule: a.rule().0,
                files: &files,
                process: &a.process.name,
            };
            self.limiter.admit(&candidate, Instant::now())
        };
        if last {
            self.delivered_runs.remove(&id);
        } else if admitted {
            self.delivered_runs.insert(id);
        }
        if !admitted {
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            return;
        }
        a.meta = Some(self.inputs.rule_meta(a.rule().0));
        self.sinks.deliver(&a);
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        *self
            .stats
            .by_rule
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(a.rule().0.to_string())
            .or_default() += 1;
    }

    /// One summary per container whose rate-limit window closed with
    /// alerts held back.
    fn summarise_held(&mut self) {
        for held in self.limiter.closed_windows(Instant::now()) {
            let doc = rate_limit_doc(self.sinks.hostname(), &held, MINUTE);
            self.sinks.deliver_summary(&doc);
        }
    }

    /// Degraded coverage, at most every [`HEALTH_EVERY`].
    fn report_health(&mut self) {
        if self.last_health.elapsed() < HEALTH_EVERY {
            return;
        }
        let now = self.inputs.degradation();
        if let Some(delta) = now.since(&self.reported) {
            eprintln!("keyward: coverage degraded: {delta:?}");
            self.sinks.deliver_health(&delta);
            self.reported = now;
            self.last_health = Instant::now();
        }
        for (bound, id, times) in self.inputs.bounds_reached() {
            let view = self.inputs.container(&id);
            let doc =
                super::ecs::bound_doc(self.sinks.hostname(), bound, &id, times, view.as_ref());
            eprintln!("keyward: {}", doc["message"].as_str().unwrap_or_default());
            self.sinks.deliver_bound(doc);
        }
    }

    fn retry(&mut self) {
        if self.last_retry.elapsed() >= RETRY_EVERY {
            self.sinks.retry();
            self.last_retry = Instant::now();
        }
    }

    fn publish_stats(&self) {
        self.stats
            .pending
            .store(self.agg.pending() as u64, Ordering::Relaxed);
        *self.stats.sinks.lock().unwrap_or_else(|e| e.into_inner()) = self
            .sinks
            .stats()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    }
}
