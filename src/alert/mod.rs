//! Alerts: findings from the decision threads, aggregated into one alert per
//! archiver run, rendered as nested ECS JSON.
//!
//! A run is keyed by (container, pid, process start time), so a reused pid
//! starts a new run instead of being blamed for an old one. A run's alert is
//! emitted once it has been quiet for `aggregate_ms`, which gives one alert
//! per `tar czf x /root/.ssh` listing every key it read, instead of one per
//! file.

pub mod sink;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};

use crate::attribute::procfs::ProcessInfo;
use crate::config::Action;
use crate::rules::{ArchiverHit, ExecMatch};

/// How a finding was triggered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// The seed rule matched a process start.
    Exec { matched: ExecMatch },
    /// Any exec in a watched container, for `alerts.process_events`; not an
    /// alert and never aggregated.
    Start,
    /// An archiver opened a credential file.
    Open {
        /// Canonical path inside the container.
        path: String,
        /// The path as the opener reached it (its own spelling).
        opened_as: String,
        pattern: String,
        archiver: ArchiverHit,
        /// Whether the open was refused.
        denied: bool,
    },
}

/// What the container is, as the registry knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContainerRef {
    pub id: String,
    pub name: Option<String>,
    pub image: Option<String>,
    pub runtime: Option<String>,
}

/// The response taken for a finding and its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResponseOutcome {
    pub action: Action,
    /// `ok` or `failed`.
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Interfaces taken down by `disconnect`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
}

/// One detection made by a decision thread, sent to the alert thread.
#[derive(Debug, Clone)]
pub struct Finding {
    pub at: SystemTime,
    pub container: ContainerRef,
    pub process: ProcessInfo,
    pub trigger: Trigger,
    pub action: Action,
    /// A response already carried out on the answering thread (`kill`).
    pub response: Option<ResponseOutcome>,
}

impl Finding {
    /// Whether this finding refused an open.
    pub fn denied(&self) -> bool {
        matches!(self.trigger, Trigger::Open { denied: true, .. })
    }
}

/// A credential file in an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileTouch {
    pub path: String,
    pub opened_as: String,
    pub pattern: String,
    pub denied: bool,
}

/// An aggregated archiver run, ready to render.
#[derive(Debug, Clone)]
pub struct Alert {
    pub first_seen: SystemTime,
    pub container: ContainerRef,
    pub process: ProcessInfo,
    pub exec_match: Option<ExecMatch>,
    pub archiver: Option<ArchiverHit>,
    pub files: Vec<FileTouch>,
    /// Total credential opens, including those past the list bound.
    pub files_total: u64,
    pub action: Action,
    pub response: Option<ResponseOutcome>,
    /// The rule's severity, risk and MITRE ids, set before delivery.
    pub meta: Option<crate::rules::RuleMeta>,
}

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
    fn new(f: &Finding) -> Self {
        Self {
            first_seen: f.at,
            container: f.container.clone(),
            process: f.process.clone(),
            exec_match: None,
            archiver: None,
            files: Vec::new(),
            files_total: 0,
            action: f.action,
            response: None,
            meta: None,
        }
    }

    fn add(&mut self, f: Finding, max_files: usize) {
        match f.trigger {
            Trigger::Start => {}
            Trigger::Exec { matched } => self.exec_match = Some(matched),
            Trigger::Open {
                path,
                opened_as,
                pattern,
                archiver,
                denied,
            } => {
                self.files_total += 1;
                self.archiver.get_or_insert(archiver);
                let seen = self
                    .files
                    .iter()
                    .position(|t| t.path == path && t.opened_as == opened_as);
                match seen {
                    Some(i) => self.files[i].denied |= denied,
                    None if self.files.len() < max_files => self.files.push(FileTouch {
                        path,
                        opened_as,
                        pattern,
                        denied,
                    }),
                    None => {}
                }
            }
        }
        // An open carries fresher attribution than an exec seen earlier.
        if self.process.args.is_empty() && !f.process.args.is_empty() {
            self.process = f.process;
        }
    }

    /// Whether any open in this run was refused.
    pub fn denied(&self) -> bool {
        self.files.iter().any(|t| t.denied)
    }

    /// The rule this alert is filed under: the seed rule when the command
    /// line matched it, else the file-access rule.
    pub fn rule(&self) -> (&'static str, &'static str) {
        if self.exec_match.is_some() {
            (crate::rules::EXEC_RULE_ID, crate::rules::EXEC_RULE_NAME)
        } else {
            (crate::rules::FILE_RULE_ID, crate::rules::FILE_RULE_NAME)
        }
    }

    /// One human line: process, file and container id.
    pub fn message(&self) -> String {
        let file = self
            .files
            .first()
            .map(|t| t.path.clone())
            .or_else(|| {
                self.exec_match
                    .as_ref()
                    .and_then(|m| m.paths.first().map(|p| p.arg.clone()))
            })
            .unwrap_or_default();
        let more = match self.files.len() {
            0 | 1 => String::new(),
            n => format!(" (+{} more)", n - 1),
        };
        format!(
            "archiver {} (pid {}) touched credential file {}{} in container {}",
            self.process.name, self.process.pid, file, more, self.container.id
        )
    }

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
        let meta = self.meta.clone().unwrap_or(crate::rules::RuleMeta {
            severity: "medium".into(),
            risk_score: 47,
            mitre: crate::config::MITRE.iter().map(|s| s.to_string()).collect(),
        });
        let sub_ids: Vec<&str> = meta.mitre.iter().map(String::as_str).collect();
        let sub_names: Vec<&str> = sub_ids.iter().map(|id| mitre_name(id)).collect();
        let tech_ids: Vec<&str> = sub_ids
            .iter()
            .map(|id| id.split('.').next().unwrap_or(id))
            .collect();
        let tech_names: Vec<&str> = tech_ids.iter().map(|id| mitre_name(id)).collect();
        let outcome = match &self.response {
            Some(r) if r.result != "ok" => "failure",
            _ => "success",
        };
        let mut doc = json!({
            "@timestamp": rfc3339(self.first_seen),
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
                "response": self.response.clone().unwrap_or(ResponseOutcome {
                    action: self.action,
                    result: "ok".into(),
                    reason: None,
                    interfaces: vec![],
                }),
            },
        });
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

fn container_json(c: &ContainerRef) -> Value {
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
        };
        (d != Degradation::default()).then_some(d)
    }

    /// An ECS alert saying coverage was degraded, with the counts.
    pub fn to_ecs(&self, hostname: &str) -> Value {
        json!({
            "@timestamp": rfc3339(SystemTime::now()),
            "message": format!(
                "keyward coverage degraded: {} stalled decisions released, {} queue overflows, {} findings dropped, {} unparsable batches, {} decision panics",
                self.deadline_releases, self.overflows, self.queue_drops, self.parse_errors, self.panics
            ),
            "ecs": {"version": "8.11.0"},
            "event": {
                "kind": "alert",
                "module": "keyward",
                "dataset": "keyward.health",
                "category": ["host"],
                "type": ["info"],
                "action": "coverage-degraded",
                "severity": 73,
            },
            "rule": {"id": "keyward.health.degraded-coverage", "name": "keyward Coverage Degraded"},
            "host": {"hostname": hostname},
            "keyward": {"health": self},
        })
    }
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
        // SAFETY: sysconf has no memory-safety preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (hz > 0).then_some((btime, hz as u64))
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
    json!({
        "@timestamp": rfc3339(at),
        "ecs": {"version": "8.11.0"},
        "event": {"kind": "event", "module": "keyward", "dataset": "keyward.process", "category": ["process"], "type": ["start"], "action": "exec"},
        "container": container_json(container),
        "process": process_json(p),
        "host": {"hostname": hostname},
        "user": {"id": p.uid.map(|u| u.to_string())},
    })
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Per-container alert rate limit, so a container looping over archivers
/// cannot flood the SIEM. What it holds back is counted and summarised in
/// one alert when the container's window closes.
#[derive(Debug)]
pub struct RateLimiter {
    per_window: u32,
    window: Duration,
    containers: HashMap<String, (Instant, u32, u64)>,
}

impl RateLimiter {
    /// `per_window` alerts per container per `window`; 0 means no limit.
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            containers: HashMap::new(),
        }
    }

    /// Change the limit; open windows keep their counts.
    pub fn set_limit(&mut self, per_window: u32) {
        self.per_window = per_window;
    }

    /// Whether an alert for `container` may go out now.
    pub fn admit(&mut self, container: &str, now: Instant) -> bool {
        if self.per_window == 0 {
            return true;
        }
        let e = self
            .containers
            .entry(container.to_string())
            .or_insert((now, 0, 0));
        if e.1 < self.per_window {
            e.1 += 1;
            true
        } else {
            e.2 += 1;
            false
        }
    }

    /// Containers whose window closed with alerts held back: (id, count).
    pub fn closed_windows(&mut self, now: Instant) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        self.containers.retain(|id, (start, _, held)| {
            if now.duration_since(*start) < self.window {
                return true;
            }
            if *held > 0 {
                out.push((id.clone(), *held));
            }
            false
        });
        out
    }
}

/// The summary alert for alerts a rate limit held back.
pub fn rate_limit_doc(hostname: &str, container: &str, held: u64, window: Duration) -> Value {
    json!({
        "@timestamp": rfc3339(SystemTime::now()),
        "message": format!("rate limit: {held} more keyward alerts in container {container} were suppressed in the last {}s", window.as_secs()),
        "ecs": {"version": "8.11.0"},
        "event": {"kind": "alert", "module": "keyward", "dataset": "keyward.alerts", "category": ["process"], "type": ["info"], "action": "rate-limited"},
        "rule": {"id": "keyward.rate-limit", "name": "keyward Alerts Rate Limited"},
        "container": {"id": container},
        "host": {"hostname": hostname},
        "keyward": {"suppressed": held, "window_secs": window.as_secs()},
    })
}

type RunKey = (String, i32, u64);

/// Groups findings into runs and releases each once it has gone quiet.
#[derive(Debug)]
pub struct Aggregator {
    quiet: Duration,
    max_files: usize,
    runs: HashMap<RunKey, (Alert, Instant)>,
}

impl Aggregator {
    pub fn new(quiet: Duration, max_files: usize) -> Self {
        Self {
            quiet,
            max_files,
            runs: HashMap::new(),
        }
    }

    /// Add a finding; returns true when it opened a new run.
    pub fn add(&mut self, f: Finding, now: Instant) -> bool {
        let key = (
            f.container.id.clone(),
            f.process.pid,
            f.process.start_time_ticks,
        );
        let mut new = false;
        let entry = self.runs.entry(key).or_insert_with(|| {
            new = true;
            (Alert::new(&f), now)
        });
        entry.0.add(f, self.max_files);
        entry.1 = now;
        new
    }

    /// Change the window and list bound; open runs are kept.
    pub fn reconfigure(&mut self, quiet: Duration, max_files: usize) {
        self.quiet = quiet;
        self.max_files = max_files;
    }

    /// Attach the response outcome to a run. A run's response can be
    /// attempted twice (the exec path and the answering thread may both kill
    /// the same archiver); once one attempt succeeded, a later attempt that
    /// found the process already gone does not turn it into a failure.
    pub fn set_response(&mut self, container: &str, pid: i32, start: u64, r: ResponseOutcome) {
        if let Some((a, _)) = self.runs.get_mut(&(container.to_string(), pid, start)) {
            if a.response.as_ref().is_some_and(|old| old.result == "ok") && r.result != "ok" {
                return;
            }
            a.response = Some(r);
        }
    }

    /// Runs quiet for the window (or all, with `force`), oldest first.
    pub fn drain_due(&mut self, now: Instant, force: bool) -> Vec<Alert> {
        let due: Vec<RunKey> = self
            .runs
            .iter()
            .filter(|(_, (_, last))| force || now.duration_since(*last) >= self.quiet)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out: Vec<Alert> = due
            .into_iter()
            .filter_map(|k| self.runs.remove(&k).map(|(a, _)| a))
            .collect();
        out.sort_by_key(|a| a.first_seen);
        out
    }

    /// Runs still open.
    pub fn pending(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::PathHit;

    fn proc_info(pid: i32, start: u64) -> ProcessInfo {
        ProcessInfo {
            pid,
            start_time_ticks: start,
            name: "tar".into(),
            exe: "/usr/bin/tar".into(),
            args: vec![
                "tar".into(),
                "czf".into(),
                "/tmp/x".into(),
                "/root/.ssh".into(),
            ],
            args_count: 4,
            ..Default::default()
        }
    }

    fn open(pid: i32, start: u64, path: &str) -> Finding {
        Finding {
            at: SystemTime::now(),
            container: ContainerRef {
                id: "c1".into(),
                ..Default::default()
            },
            process: proc_info(pid, start),
            trigger: Trigger::Open {
                path: path.into(),
                opened_as: path.into(),
                pattern: path.into(),
                archiver: ArchiverHit::Name { name: "tar".into() },
                denied: false,
            },
            action: Action::Alert,
            response: None,
        }
    }

    #[test]
    fn one_alert_per_run_lists_every_file() {
        let mut agg = Aggregator::new(Duration::from_millis(100), 64);
        let t0 = Instant::now();
        assert!(agg.add(open(10, 5, "/root/.ssh/id_rsa"), t0));
        assert!(!agg.add(open(10, 5, "/root/.ssh/known_hosts"), t0));
        assert!(!agg.add(open(10, 5, "/root/.ssh/id_rsa"), t0));
        assert!(
            agg.drain_due(t0 + Duration::from_millis(50), false)
                .is_empty()
        );
        let out = agg.drain_due(t0 + Duration::from_millis(150), false);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].files.len(), 2);
        assert_eq!(out[0].files_total, 3);
        assert_eq!(agg.pending(), 0);
    }

    #[test]
    fn start_ticks_become_a_date_near_now_for_this_process() {
        let me = crate::attribute::procfs::stat(std::process::id() as i32).unwrap();
        let t = start_time(me.start_time_ticks).unwrap();
        let age = SystemTime::now().duration_since(t).unwrap_or_default();
        assert!(age < Duration::from_secs(3600), "{age:?}");
        let doc = process_start_doc(
            "h",
            &ContainerRef {
                id: "c".into(),
                ..Default::default()
            },
            &proc_info(1, me.start_time_ticks),
            SystemTime::now(),
        );
        assert_eq!(doc["event"]["type"][0], "start");
        assert_eq!(doc["process"]["args"][0], "tar");
        assert!(doc["process"]["start"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn rate_limit_holds_back_and_summarises_per_container() {
        let mut r = RateLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(r.admit("a", t0) && r.admit("a", t0));
        assert!(!r.admit("a", t0) && !r.admit("a", t0));
        assert!(r.admit("b", t0), "containers are limited separately");
        assert!(r.closed_windows(t0 + Duration::from_secs(1)).is_empty());
        let closed = r.closed_windows(t0 + Duration::from_secs(61));
        assert_eq!(closed, vec![("a".to_string(), 2)]);
        assert!(r.admit("a", t0 + Duration::from_secs(61)), "a new window");
        assert!(RateLimiter::new(0, Duration::ZERO).admit("x", t0));
    }

    #[test]
    fn reused_pid_with_new_start_time_is_a_new_run() {
        let mut agg = Aggregator::new(Duration::ZERO, 64);
        let t0 = Instant::now();
        assert!(agg.add(open(10, 5, "/etc/shadow"), t0));
        assert!(agg.add(open(10, 6, "/etc/shadow"), t0));
        assert_eq!(agg.drain_due(t0, true).len(), 2);
    }

    #[test]
    fn file_list_is_bounded_but_counted() {
        let mut agg = Aggregator::new(Duration::ZERO, 2);
        let t0 = Instant::now();
        for i in 0..5 {
            agg.add(open(1, 1, &format!("/home/u{i}/.ssh/id_rsa")), t0);
        }
        let a = agg.drain_due(t0, true).pop().unwrap();
        assert_eq!(a.files.len(), 2);
        assert_eq!(a.files_total, 5);
    }

    #[test]
    fn ecs_document_has_the_design_fields() {
        let mut agg = Aggregator::new(Duration::ZERO, 8);
        let t0 = Instant::now();
        let mut f = open(42, 7, "/root/.ssh/id_rsa");
        f.container = ContainerRef {
            id: "abc123".into(),
            name: Some("web".into()),
            image: Some("busybox:latest".into()),
            runtime: None,
        };
        agg.add(f, t0);
        let exec = Finding {
            trigger: Trigger::Exec {
                matched: ExecMatch {
                    archiver: ArchiverHit::Name { name: "tar".into() },
                    paths: vec![PathHit {
                        index: 3,
                        arg: "/root/.ssh/id_rsa".into(),
                        pattern: "/root/.ssh/id_rsa".into(),
                    }],
                },
            },
            ..open(42, 7, "/x")
        };
        let mut exec = exec;
        exec.container.id = "abc123".into();
        agg.add(exec, t0);
        let a = agg.drain_due(t0, true).pop().unwrap();
        let doc = a.to_ecs("h1");
        assert_eq!(doc["event"]["kind"], "alert");
        assert_eq!(doc["container"]["id"], "abc123");
        assert_eq!(doc["container"]["name"], "web");
        assert_eq!(doc["container"]["image"]["name"], "busybox:latest");
        assert_eq!(doc["rule"]["id"], crate::rules::EXEC_RULE_ID);
        assert_eq!(doc["process"]["pid"], 42);
        assert_eq!(doc["file"]["path"], "/root/.ssh/id_rsa");
        assert_eq!(doc["host"]["hostname"], "h1");
        assert!(
            doc["threat"]["technique"]["subtechnique"]["id"]
                .as_array()
                .unwrap()
                .contains(&json!("T1560.001"))
        );
        assert!(doc["@timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(doc["keyward"]["response"]["result"], "ok");
        assert!(a.message().contains("abc123") && a.message().contains("/root/.ssh/id_rsa"));
    }
}
