//! Aggregation: findings grouped into one alert per archiver run, and
//! updates for runs that go on.
//!
//! A run is keyed by (container, pid, process start time), so a reused pid
//! starts a new run instead of being blamed for an old one. A run's first
//! alert is emitted once it has been quiet for `aggregate_ms`, which gives
//! one alert per `tar czf x /root/.ssh` listing every key it read, instead
//! of one per file, or [`FIRST_WITHIN`] (half a second) after its first finding, whichever
//! is sooner: an archiver fed a file list slowly would otherwise never go
//! quiet, and alert only when it exits.
//!
//! A run whose process is still alive when its first alert goes stays
//! open. It sends an update (same `keyward.run.id`, the next
//! `keyward.run.seq`, the files added since the last one) when new files
//! came and it went quiet, or at most every [`UPDATE_EVERY`] while they
//! keep coming; and a final one (`keyward.run.final`) once the process is
//! gone, or after [`IDLE_CLOSE`] with nothing new. A run that is over by
//! its first alert is one alert, final at once.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::finding::{Finding, Trigger};
use crate::attribute::procfs::ProcessInfo;
use crate::config::Action;
use crate::response::{ResponseOutcome, ResponseResult};
use crate::rules::{
    ArchiverHit, BEHAVIOUR_RULE_ID, BEHAVIOUR_RULE_NAME, EXEC_RULE_ID, EXEC_RULE_NAME, ExecMatch,
    FILE_RULE_ID, FILE_RULE_NAME, RuleMeta, Source,
};
use crate::watch::index::ContainerRef;

/// The longest a run's first alert waits after its first finding: half
/// the second promised, so the alert thread's tick and a busy machine
/// still fit in it.
pub const FIRST_WITHIN: Duration = Duration::from_millis(500);
/// The shortest gap between two updates of a run that keeps finding files.
pub const UPDATE_EVERY: Duration = Duration::from_secs(1);
/// A run whose process lives on but finds nothing new for this long is
/// closed; a later finding starts a new run.
pub const IDLE_CLOSE: Duration = Duration::from_secs(30);

/// Where an alert stands in its run (ECS `keyward.run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunInfo {
    /// The same for every alert of one run.
    pub id: String,
    /// 1 for the first alert, then one more per update.
    pub seq: u32,
    /// The run is over: no update follows.
    #[serde(rename = "final")]
    pub last: bool,
    /// Paths listed for the first time in this alert.
    pub files_added: Vec<String>,
    /// When the run's first finding was made.
    #[serde(serialize_with = "super::ecs::serialize_time")]
    pub started: SystemTime,
}

/// A credential file in an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileTouch {
    /// The canonical container path the rules judged.
    pub path: String,
    /// Where keyward found the credential: the path its inode was marked
    /// at, which it keeps wherever the file is moved or linked.
    pub origin: String,
    /// The path as the opener reached it (its own spelling), or how it
    /// held it (`inherited fd 0`, `argument 3 (passwd)`).
    pub opened_as: String,
    pub pattern: String,
    pub denied: bool,
    /// For credential data read from a pipe: the process that read the
    /// credential and wrote it into the pipe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// The executable of the process that touched it so (the alert names
    /// one process per run; this tells an exec'd program's own open from
    /// its shell's).
    #[serde(skip)]
    pub by: String,
}

/// How [`FileTouch::opened_as`] begins for a file held across an exec.
pub const INHERITED: &str = "inherited fd ";

/// An aggregated archiver run, ready to render.
#[derive(Debug, Clone)]
pub struct Alert {
    pub first_seen: SystemTime,
    /// When the newest finding of the run was made.
    pub last_seen: SystemTime,
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
    pub meta: Option<RuleMeta>,
    /// Set by the aggregator when the alert is emitted.
    pub run: Option<RunInfo>,
}

impl Alert {
    fn new(f: &Finding) -> Self {
        Self {
            first_seen: f.at,
            last_seen: f.at,
            container: f.container.clone(),
            process: f.process.clone(),
            exec_match: None,
            archiver: None,
            files: Vec::new(),
            files_total: 0,
            action: f.action,
            response: None,
            meta: None,
            run: None,
        }
    }

    fn add(&mut self, f: Finding, max_files: usize) {
        self.last_seen = self.last_seen.max(f.at);
        match f.trigger {
            Trigger::Start => {}
            Trigger::Exec { matched } => self.exec_match = Some(matched),
            Trigger::Open {
                path,
                origin,
                opened_as,
                pattern,
                archiver,
                denied,
                source,
            } => {
                self.files_total += 1;
                self.archiver.get_or_insert(archiver);
                // An exec probe that runs late on a loaded host sees an fd
                // the new program opened itself (reported as that open) as
                // inherited: the same file, listed once. A file the shell
                // opened and its exec'd child inherited (`tar < key`) is
                // listed both ways: two programs touched it.
                let inherited = opened_as.starts_with(INHERITED);
                let seen = self.files.iter().position(|t| {
                    t.path == path
                        && (t.opened_as == opened_as || (inherited && t.by == f.process.exe))
                });
                match seen {
                    Some(i) => self.files[i].denied |= denied,
                    None if self.files.len() < max_files => self.files.push(FileTouch {
                        origin,
                        path,
                        opened_as,
                        pattern,
                        denied,
                        source,
                        by: f.process.exe.clone(),
                    }),
                    None => {}
                }
            }
        }
        // An open carries fresher attribution than an exec seen earlier;
        // and a process that exec'd since it was first described (a
        // pipeline member found while it was still its shell's fork) is
        // named by what it runs now.
        let execd = !f.process.exe.is_empty() && f.process.exe != self.process.exe;
        if !f.process.args.is_empty() && (self.process.args.is_empty() || execd) {
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
            (EXEC_RULE_ID, EXEC_RULE_NAME)
        } else if matches!(self.archiver, Some(ArchiverHit::Behaviour { .. })) {
            (BEHAVIOUR_RULE_ID, BEHAVIOUR_RULE_NAME)
        } else {
            (FILE_RULE_ID, FILE_RULE_NAME)
        }
    }

    /// One human line: process, file and container id, and for an update,
    /// what it adds to the run.
    pub fn message(&self) -> String {
        let first_file = |files: &[String]| {
            files.first().cloned().or_else(|| {
                self.exec_match
                    .as_ref()
                    .and_then(|m| m.paths.first().map(|p| p.arg.clone()))
            })
        };
        let who = format!("archiver {} (pid {})", self.process.name, self.process.pid);
        match &self.run {
            Some(r) if r.seq > 1 => {
                let what = match (r.files_added.len(), r.files_added.first()) {
                    (0, _) | (_, None) => "no more credential files".to_string(),
                    (1, Some(f)) => format!("credential file {f}"),
                    (n, Some(f)) => format!("credential file {f} (+{} more)", n - 1),
                };
                let end = if r.last { ", run closed" } else { "" };
                format!(
                    "{who} touched {what} in container {} (run {} update {}, {} in all{end})",
                    self.container.id,
                    r.id,
                    r.seq,
                    self.files.len()
                )
            }
            _ => {
                let paths: Vec<String> = self.files.iter().map(|t| t.path.clone()).collect();
                let file = first_file(&paths).unwrap_or_default();
                let more = match self.files.len() {
                    0 | 1 => String::new(),
                    n => format!(" (+{} more)", n - 1),
                };
                format!(
                    "{who} touched credential file {file}{more} in container {}",
                    self.container.id
                )
            }
        }
    }
}

type RunKey = (String, i32, u64);

/// What was already sent of an open run.
#[derive(Debug)]
struct Sent {
    seq: u32,
    /// Files listed when it was last sent.
    files: usize,
    /// Opens counted when it was last sent.
    total: u64,
    at: Instant,
}

#[derive(Debug)]
struct Run {
    alert: Alert,
    id: String,
    first: Instant,
    last: Instant,
    sent: Option<Sent>,
}

impl Run {
    fn new(f: &Finding, now: Instant) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&f.container.id, f.process.pid, f.process.start_time_ticks).hash(&mut h);
        f.at.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .hash(&mut h);
        Self {
            alert: Alert::new(f),
            id: format!("{:016x}", h.finish()),
            first: now,
            last: now,
            sent: None,
        }
    }

    /// The alert to send now, with its place in the run.
    fn emit(&mut self, now: Instant, last: bool) -> Alert {
        let (seq, listed) = self.sent.as_ref().map_or((1, 0), |s| (s.seq + 1, s.files));
        let mut a = self.alert.clone();
        a.run = Some(RunInfo {
            id: self.id.clone(),
            seq,
            last,
            files_added: a.files[listed.min(a.files.len())..]
                .iter()
                .map(|t| t.path.clone())
                .collect(),
            started: a.first_seen,
        });
        self.sent = Some(Sent {
            seq,
            files: a.files.len(),
            total: a.files_total,
            at: now,
        });
        a
    }
}

/// Groups findings into runs and releases their alerts: the first once the
/// run went quiet or a second passed, then its updates.
#[derive(Debug)]
pub struct Aggregator {
    quiet: Duration,
    max_files: usize,
    runs: HashMap<RunKey, Run>,
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
        let run = self.runs.entry(key).or_insert_with(|| {
            new = true;
            Run::new(&f, now)
        });
        run.alert.add(f, self.max_files);
        run.last = now;
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
        if let Some(run) = self.runs.get_mut(&(container.to_string(), pid, start)) {
            let a = &mut run.alert;
            if a.response
                .as_ref()
                .is_some_and(|old| old.result == ResponseResult::Ok)
                && r.result != ResponseResult::Ok
            {
                return;
            }
            a.response = Some(r);
        }
    }

    /// The alerts due now, oldest run first: first alerts of runs that
    /// went quiet or are a second old, updates, and final alerts of runs
    /// whose process is gone (`alive(pid, start)` false) or idle. With
    /// `force` (stopping), every run is sent, final.
    pub fn drain_due(
        &mut self,
        now: Instant,
        force: bool,
        alive: &dyn Fn(i32, u64) -> bool,
    ) -> Vec<Alert> {
        let quiet = self.quiet;
        let mut out = Vec::new();
        self.runs.retain(|(_, pid, start), run| {
            let quiet_for = now.duration_since(run.last);
            match &run.sent {
                None => {
                    let due = force
                        || quiet_for >= quiet
                        || now.duration_since(run.first) >= FIRST_WITHIN;
                    if !due {
                        return true;
                    }
                    let last = force || !alive(*pid, *start);
                    out.push(run.emit(now, last));
                    !last
                }
                Some(s) => {
                    let added = run.alert.files.len() > s.files || run.alert.files_total > s.total;
                    let over = force || quiet_for >= IDLE_CLOSE || !alive(*pid, *start);
                    if over {
                        out.push(run.emit(now, true));
                        return false;
                    }
                    if added && (quiet_for >= quiet || now.duration_since(s.at) >= UPDATE_EVERY) {
                        out.push(run.emit(now, false));
                    }
                    true
                }
            }
        });
        out.sort_by_key(|a| (a.first_seen, a.run.as_ref().map_or(0, |r| r.seq)));
        out
    }

    /// Runs still open.
    pub fn pending(&self) -> usize {
        self.runs.len()
    }
}
