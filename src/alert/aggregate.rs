//! Aggregation: findings grouped into one alert per archiver run.
//!
//! A run is keyed by (container, pid, process start time), so a reused pid
//! starts a new run instead of being blamed for an old one. A run's alert is
//! emitted once it has been quiet for `aggregate_ms`, which gives one alert
//! per `tar czf x /root/.ssh` listing every key it read, instead of one per
//! file.

use std::collections::HashMap;
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
    pub meta: Option<RuleMeta>,
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
                origin,
                opened_as,
                pattern,
                archiver,
                denied,
                source,
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
                        origin,
                        path,
                        opened_as,
                        pattern,
                        denied,
                        source,
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
            (EXEC_RULE_ID, EXEC_RULE_NAME)
        } else if matches!(self.archiver, Some(ArchiverHit::Behaviour { .. })) {
            (BEHAVIOUR_RULE_ID, BEHAVIOUR_RULE_NAME)
        } else {
            (FILE_RULE_ID, FILE_RULE_NAME)
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
