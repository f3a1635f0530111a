//! Rendering as nested ECS JSON: alerts, process start events and health
//! alerts.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};

use super::aggregate::Alert;
use crate::attribute::procfs::ProcessInfo;
use crate::config::{MITRE, Severity};
use crate::response::{ResponseOutcome, ResponseResult};
use crate::rules::RuleMeta;
use crate::watch::index::ContainerRef;

/// Names of the MITRE ATT&CK techniques keyward's default rules use.
fn mitre_name(id: &str) -> &'static str {
    match id {
        "T1560.001" => "Archive via Utility",
        "T1552.001" => "Credentials In Files",
        "T1560" => "Archive Collected Data",
        "T1552" => "Unsecured Credentials",
        "T1005" => "Data from Local System",
        _ => "",
    }
}

impl Alert {
    /// Render as one nested ECS document.
    pub fn to_ecs(&self, hostname: &str) -> Value {
        let (rule_id, rule_name) = self.rule();
        let denied = self.denied();
        let mut categories = vec!["process", "file"];
        if self.files.is_empty() {
            categories.retain(|c| *c == "process");
        }
        let event_type: Vec<&str> = if denied {
            vec!["denied"]
        } else if self.files.is_empty() {
            vec!["start", "allowed"]
        } else {
            vec!["access", "allowed"]
        };
        let meta = self.meta.clone().unwrap_or(RuleMeta {
            severity: Severity::Medium,
            risk_score: 47,
            mitre: MITRE.iter().map(|s| s.to_string()).collect(),
        });
        let sub_ids: Vec<&str> = meta.mitre.iter().map(String::as_str).collect();
        let sub_names: Vec<&str> = sub_ids.iter().map(|id| mitre_name(id)).collect();
        let tech_ids: Vec<&str> = sub_ids
            .iter()
            .map(|id| id.split('.').next().unwrap_or(id))
            .collect();
        let tech_names: Vec<&str> = tech_ids.iter().map(|id| mitre_name(id)).collect();
        let outcome = match &self.response {
            Some(r) if r.result != ResponseResult::Ok => "failure",
            _ => "success",
        };
        // An update is an event of its own: it happened when its newest
        // finding did.
        let at = match &self.run {
            Some(r) if r.seq > 1 => self.last_seen,
            _ => self.first_seen,
        };
        let mut doc = json!({
            "@timestamp": rfc3339(at),
            "message": self.message(),
            "ecs": {"version": "8.11.0"},
            "event": {
                "kind": "alert",
                "module": "keyward",
                "dataset": "keyward.alerts",
                "category": categories,
                "type": event_type,
                "action": self.action.as_str(),
                "outcome": outcome,
                "severity": meta.risk_score,
                "risk_score": meta.risk_score,
                "created": rfc3339(SystemTime::now()),
            },
            "rule": {
                "id": rule_id,
                "name": rule_name,
                "ruleset": "keyward-default",
                "description": "Identifies the use of a compression utility to collect known files containing sensitive information, such as credentials and system configurations inside a container.",
            },
            "threat": {
                "framework": "MITRE ATT&CK",
                "tactic": {"id": ["TA0009", "TA0006"], "name": ["Collection", "Credential Access"]},
                "technique": {"id": tech_ids, "name": tech_names,
                    "subtechnique": {"id": sub_ids, "name": sub_names}},
            },
            "container": container_json(&self.container),
            "process": process_json(&self.process),
            "host": {"hostname": hostname},
            "user": {"id": self.process.uid.map(|u| u.to_string())},
            "keyward": {
                "severity": meta.severity,
                "files": self.files,
                "files_total": self.files_total,
                "exec_match": self.exec_match,
                "archiver": self.archiver,
                "response": self.response.clone().unwrap_or(ResponseOutcome::ok(self.action)),
            },
        });
        if let Some(o) = orchestrator_json(&self.container) {
            doc["orchestrator"] = o;
        }
        if let Some(r) = &self.run {
            doc["keyward"]["run"] = json!(r);
            doc["event"]["id"] = json!(format!("{}-{}", r.id, r.seq));
        }
        if let Some(first) = self.files.first() {
            doc["file"] = json!({
                "path": first.path,
                "name": first.path.rsplit('/').next().unwrap_or(""),
                "target_path": first.opened_as,
            });
        } else if let Some(p) = self.exec_match.as_ref().and_then(|m| m.paths.first()) {
            doc["file"] = json!({"path": p.arg});
        }
        doc
    }
}

pub(crate) fn container_json(c: &ContainerRef) -> Value {
    let mut v = json!({"id": c.id});
    if let Some(n) = &c.name {
        v["name"] = json!(n);
    }
    if let Some(i) = &c.image {
        v["image"] = json!({"name": i});
    }
    if let Some(r) = &c.runtime {
        v["runtime"] = json!(r);
    }
    v
}

/// ECS `orchestrator.*` for a container in a Kubernetes pod.
fn orchestrator_json(c: &ContainerRef) -> Option<Value> {
    let pod = c.pod.as_ref()?;
    let mut v = json!({"type": "kubernetes", "resource": {"type": "pod"}});
    if let Some(ns) = &pod.namespace {
        v["namespace"] = json!(ns);
    }
    if let Some(name) = &pod.name {
        v["resource"]["name"] = json!(name);
    }
    Some(v)
}

fn process_json(p: &ProcessInfo) -> Value {
    let mut v = json!({
        "pid": p.pid,
        "name": p.name,
        "executable": p.exe,
        "args": p.args,
        "args_count": p.args_count,
        "command_line": p.args.join(" "),
        "working_directory": p.cwd,
        "start": start_time(p.start_time_ticks).map(rfc3339),
        "user": {"id": p.uid.map(|u| u.to_string())},
    });
    if let Some(parent) = &p.parent {
        v["parent"] = json!({
            "pid": parent.pid,
            "name": parent.name,
            "executable": parent.exe,
            "args": parent.args,
        });
    }
    v
}

/// Counters whose growth means keyward may have missed something.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Degradation {
    /// Permission events the watchdog answered because a decision stalled.
    pub deadline_releases: u64,
    /// fanotify queue overflows (events the kernel dropped).
    pub overflows: u64,
    /// Findings dropped because the alert queue was full.
    pub queue_drops: u64,
    /// Batches of events that could not be parsed.
    pub parse_errors: u64,
    /// Decisions that panicked (and were allowed).
    pub panics: u64,
    /// Per-container bounds reached (each also gets an alert of its own
    /// naming the container: [`bound_doc`]).
    pub bounds: u64,
    /// Decisions that went on without their container's image archivers,
    /// because learning them took longer than the wait allows.
    pub learn_timeouts: u64,
}

impl Degradation {
    /// Whether any counter grew since `before`, and by how much.
    pub fn since(&self, before: &Degradation) -> Option<Degradation> {
        let d = Degradation {
            deadline_releases: self.deadline_releases
                - before.deadline_releases.min(self.deadline_releases),
            overflows: self.overflows - before.overflows.min(self.overflows),
            queue_drops: self.queue_drops - before.queue_drops.min(self.queue_drops),
            parse_errors: self.parse_errors - before.parse_errors.min(self.parse_errors),
            panics: self.panics - before.panics.min(self.panics),
            bounds: self.bounds - before.bounds.min(self.bounds),
            learn_timeouts: self.learn_timeouts - before.learn_timeouts.min(self.learn_timeouts),
        };
        (d != Degradation::default()).then_some(d)
    }

    /// An ECS alert saying coverage was degraded, with the counts.
    pub fn to_ecs(&self, hostname: &str) -> Value {
        // An overflow means the kernel dropped events: for the permission
        // group, opens it allowed unjudged. That is critical; the rest is
        // high.
        let (severity, risk) = if self.overflows > 0 {
            ("critical", 99)
        } else {
            ("high", 73)
        };
        let message = format!(
            "keyward coverage degraded: {} stalled decisions released, {} queue overflows, {} findings dropped, {} unparsable batches, {} decision panics, {} per-container bounds reached, {} decisions made before their image was learned",
            self.deadline_releases,
            self.overflows,
            self.queue_drops,
            self.parse_errors,
            self.panics,
            self.bounds,
            self.learn_timeouts
        );
        health_doc(
            hostname,
            message,
            (
                "coverage-degraded",
                "keyward.health.degraded-coverage",
                "keyward Coverage Degraded",
            ),
            (severity, risk),
            json!(self),
        )
    }
}

/// The ECS frame of a health alert: `what` is (event.action, rule.id,
/// rule.name), `level` (keyward.severity, event.risk_score), `health`
/// what `keyward.health` holds.
fn health_doc(
    hostname: &str,
    message: String,
    what: (&str, &str, &str),
    level: (&str, u32),
    health: Value,
) -> Value {
    let (action, rule_id, rule_name) = what;
    let (severity, risk) = level;
    json!({
        "@timestamp": rfc3339(SystemTime::now()),
        "message": message,
        "ecs": {"version": "8.11.0"},
        "event": {
            "kind": "alert",
            "module": "keyward",
            "dataset": "keyward.health",
            "category": ["host"],
            "type": ["info"],
            "action": action,
            "severity": risk,
            "risk_score": risk,
        },
        "rule": {"id": rule_id, "name": rule_name},
        "host": {"hostname": hostname},
        "keyward": {"health": health, "severity": severity},
    })
}

/// A health alert for one container that reached one of its bounds
/// (`[limits]`): which, how many times since the last report, and what it
/// costs. `container` is the registry's view of it, when it is still
/// registered.
pub fn bound_doc(
    hostname: &str,
    bound: crate::answer::stats::Bound,
    id: &str,
    times: u64,
    container: Option<&crate::watch::index::ContainerView>,
) -> Value {
    let mut c = json!({"id": id});
    if let Some(v) = container {
        if let Some(n) = &v.reference.name {
            c["name"] = json!(n);
        }
        if let Some(i) = &v.reference.image {
            c["image"] = json!({"name": i});
        }
    }
    let message = format!(
        "keyward: container {id} reached its bound {} ({times} times since the last report): {}",
        bound.as_str(),
        bound.effect()
    );
    let mut doc = health_doc(
        hostname,
        message,
        (
            "bound-reached",
            "keyward.health.bound-reached",
            "keyward Container Bound Reached",
        ),
        ("high", 73),
        json!({"bound": bound.as_str(), "times": times, "effect": bound.effect()}),
    );
    doc["container"] = c;
    doc
}

/// A process start time in clock ticks since boot, as a wall-clock time
/// (boot time from `/proc/stat` plus ticks / `CLK_TCK`).
pub fn start_time(ticks: u64) -> Option<SystemTime> {
    static BOOT: std::sync::OnceLock<Option<(u64, u64)>> = std::sync::OnceLock::new();
    let (btime, hz) = (*BOOT.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let btime = stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some((btime, crate::attribute::procfs::clk_tck()?))
    }))?;
    let ms = ticks.checked_mul(1000)? / hz;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(btime) + Duration::from_millis(ms))
}

/// An ECS process start event, for `alerts.process_events`: every exec in a
/// watched container, so Elastic can run the seed EQL itself.
pub fn process_start_doc(
    hostname: &str,
    container: &ContainerRef,
    p: &ProcessInfo,
    at: SystemTime,
) -> Value {
    let mut doc = json!({
        "@timestamp": rfc3339(at),
        "ecs": {"version": "8.11.0"},
        "event": {"kind": "event", "module": "keyward", "dataset": "keyward.process", "category": ["process"], "type": ["start"], "action": "exec"},
        "container": container_json(container),
        "process": process_json(p),
        "host": {"hostname": hostname},
        "user": {"id": p.uid.map(|u| u.to_string())},
    });
    if let Some(o) = orchestrator_json(container) {
        doc["orchestrator"] = o;
    }
    doc
}

/// RFC 3339 with milliseconds, UTC.
/// Serialize a time as [`rfc3339`].
pub(crate) fn serialize_time<S: serde::Serializer>(
    t: &SystemTime,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
