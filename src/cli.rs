//! What the command line prints for people.
//!
//! Takes the daemon's replies (status, containers), the rule summaries and
//! the alert file's lines, and hands on aligned text. One convention, as
//! `docker ps` and `kubectl get` have it: an upper-case header row, columns
//! left-aligned and two spaces apart, one row per thing, `-` for a value
//! that is absent; long lists are cut with a count of what was left out.
//! `--json` prints the same data as JSON instead, unchanged for scripts.

use std::fmt::Write as _;

use serde_json::Value;

use crate::answer::stats::Scheduling;
use crate::hook::protocol::{ContainerSummary, StatusReport};
use crate::rules::RuleSummary;

/// Rows under a header, columns padded to their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) -> &mut Self {
        self.rows.push(cells);
        self
    }

    /// The table as text, one line per row, no trailing spaces.
    pub fn render(&self) -> String {
        let cols = self.header.len();
        let width = |i: usize| {
            std::iter::once(&self.header)
                .chain(&self.rows)
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..cols).map(width).collect();
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = r.get(i).map(String::as_str).unwrap_or("-");
                let cell = if cell.is_empty() { "-" } else { cell };
                if i + 1 == cols {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<w$}  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn or_dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// A list of words, cut after `max` with a count of the rest.
fn list(items: &[String], max: usize) -> String {
    let mut s = items
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > max {
        let _ = write!(s, " (+{} more)", items.len() - max);
    }
    s
}

/// A two-column table of named counts.
fn counts(title: &str, rows: &[(&str, u64)]) -> String {
    let mut t = Table::new(&[title, "count"]);
    for (name, v) in rows {
        t.row(vec![name.to_string(), v.to_string()]);
    }
    t.render()
}

/// `keyward status`: the daemon, then what it counted, then the sinks and
/// exceptions.
pub fn status(r: &StatusReport) -> String {
    let s = &r.stats;
    let mut out = String::new();
    let mut t = Table::new(&["daemon", "value"]);
    t.row(vec!["version".into(), r.version.clone()])
        .row(vec!["pid".into(), r.pid.to_string()])
        .row(vec![
            "uptime".into(),
            humantime::format_duration(std::time::Duration::from_secs(r.uptime_secs)).to_string(),
        ])
        .row(vec!["default action".into(), r.default_action.clone()])
        .row(vec!["containers".into(), r.containers.to_string()])
        .row(vec!["marked inodes".into(), r.marked_inodes.to_string()])
        .row(vec!["alerts sent".into(), r.alerts_sent.to_string()])
        .row(vec![
            "alerts rate-limited".into(),
            r.alerts_rate_limited.to_string(),
        ])
        .row(vec!["open runs".into(), r.pending_runs.to_string()])
        .row(vec![
            "decision latency".into(),
            format!(
                "p50 <= {} us, p99 <= {} us, {} decisions",
                s.latency.p50_us, s.latency.p99_us, s.latency.count
            ),
        ])
        .row(vec![
            "answering threads".into(),
            match s.answer_scheduling {
                Scheduling::Realtime => "real-time (SCHED_RR)",
                Scheduling::Nice => "nice -10 (real-time refused: CAP_SYS_NICE?)",
                Scheduling::Unchanged => "normal priority (raising it was refused)",
            }
            .into(),
        ]);
    out.push_str(&t.render());
    out.push('\n');
    out.push_str(&counts(
        "events",
        &[
            ("permission events", s.perm_events),
            ("allowed", s.allowed),
            ("denied", s.denied),
            ("exec events", s.exec_events),
            ("findings", s.findings),
            ("followed readers", s.followed),
            ("derived credentials", s.derived),
            ("pipes tainted", s.pipes_tainted),
            ("rescans", s.rescans),
        ],
    ));
    out.push('\n');
    out.push_str(&counts(
        "degraded coverage",
        &[
            ("watchdog releases", s.deadline_releases),
            ("fanotify overflows", s.overflows),
            ("findings dropped", s.queue_drops),
            ("parse errors", s.parse_errors),
            ("decision panics", s.panics),
            ("exec probes too late", s.exec_unsettled),
            ("image learning waits expired", s.learn_timeouts),
        ],
    ));
    if !r.sinks.is_empty() {
        out.push('\n');
        let mut t = Table::new(&[
            "sink",
            "delivered",
            "failures",
            "dropped",
            "backlog",
            "last error",
        ]);
        for (name, st) in &r.sinks {
            t.row(vec![
                name.clone(),
                st.delivered.to_string(),
                st.failures.to_string(),
                st.dropped.to_string(),
                st.backlog.to_string(),
                or_dash(&st.last_error),
            ]);
        }
        out.push_str(&t.render());
    }
    if !r.exceptions.is_empty() {
        out.push('\n');
        let mut t = Table::new(&["exception", "suppressed"]);
        for x in &r.exceptions {
            t.row(vec![x.reason.clone(), x.suppressed.to_string()]);
        }
        out.push_str(&t.render());
    }
    if !r.config_errors.is_empty() {
        out.push('\n');
        let mut t = Table::new(&["config error"]);
        for e in &r.config_errors {
            t.row(vec![e.clone()]);
        }
        out.push_str(&t.render());
    }
    out
}

/// `keyward containers`: one row per watched container.
pub fn containers(watched: &[ContainerSummary]) -> String {
    let mut t = Table::new(&[
        "id", "name", "image", "pid", "action", "marks", "cgroup", "since",
    ]);
    for c in watched {
        t.row(vec![
            c.id.clone(),
            or_dash(&c.name),
            or_dash(&c.image),
            c.pid.to_string(),
            c.action.clone(),
            c.marks.to_string(),
            or_dash(&c.cgroup),
            c.registered_at.clone(),
        ]);
    }
    t.render()
}

/// `keyward rules`: one row per rule, then its archivers and paths.
pub fn rules(summaries: &[RuleSummary]) -> String {
    let mut t = Table::new(&[
        "rule",
        "enabled",
        "severity",
        "risk",
        "mitre",
        "archivers",
        "paths",
    ]);
    for r in summaries {
        t.row(vec![
            r.id.to_string(),
            if r.enabled { "yes" } else { "no" }.into(),
            r.meta.severity.as_str().into(),
            r.meta.risk_score.to_string(),
            r.meta.mitre.join(","),
            list(&r.archivers, 6),
            format!("{} patterns", r.paths.len()),
        ]);
    }
    let mut out = t.render();
    for r in summaries {
        let _ = write!(out, "\n{} ({}):\n", r.id, r.name);
        for p in &r.paths {
            let _ = writeln!(out, "  {p}");
        }
    }
    out
}

/// One alert file line as a table row: time, container, process, files,
/// action and result. Health and rate-limit notices fit the same columns.
pub fn alert_row(doc: &Value) -> Vec<String> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let container = doc["container"]["name"]
        .as_str()
        .or(doc["container"]["id"].as_str())
        .unwrap_or("-")
        .to_string();
    let process = match doc["process"]["pid"].as_i64() {
        Some(pid) => format!("{} ({pid})", s(&doc["process"]["name"])),
        None => "-".into(),
    };
    let files: Vec<String> = doc["keyward"]["files"]
        .as_array()
        .map(|fs| fs.iter().map(|f| s(&f["path"])).collect())
        .unwrap_or_default();
    let what = if files.is_empty() {
        s(&doc["message"])
    } else {
        list(&files, 3)
    };
    let response = &doc["keyward"]["response"];
    let action = match (response["action"].as_str(), response["result"].as_str()) {
        (Some(a), Some(r)) => format!("{a} {r}"),
        _ => s(&doc["event"]["action"]),
    };
    let run = match doc["keyward"]["run"]["seq"].as_u64() {
        Some(seq) if doc["keyward"]["run"]["final"] == true && seq > 1 => format!("#{seq} final"),
        Some(seq) if seq > 1 => format!("#{seq}"),
        _ => String::new(),
    };
    vec![s(&doc["@timestamp"]), container, process, what, action, run]
}

/// The header of [`alert_row`]'s columns.
pub const ALERT_COLUMNS: &[&str] = &["time", "container", "process", "files", "action", "run"];

/// The last `n` alert lines of `text` as a table (lines that are not JSON
/// are shown as such, not skipped).
pub fn alerts(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut t = Table::new(ALERT_COLUMNS);
    for l in &lines[lines.len().saturating_sub(n)..] {
        match serde_json::from_str::<Value>(l) {
            Ok(doc) => t.row(alert_row(&doc)),
            Err(e) => t.row(vec![
                "-".into(),
                "-".into(),
                "-".into(),
                format!("unparsable line: {e}"),
            ]),
        };
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_absent_values_are_dashes() {
        let mut t = Table::new(&["id", "name", "pid"]);
        t.row(vec!["abc".into(), "".into(), "7".into()]);
        t.row(vec![
            "a-much-longer-id".into(),
            "web".into(),
            "12345".into(),
        ]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID                NAME  PID");
        assert_eq!(lines[1], "abc               -     7");
        assert_eq!(lines[2], "a-much-longer-id  web   12345");
        assert!(text.lines().all(|l| l == l.trim_end()));
    }

    #[test]
    fn status_says_how_the_answering_threads_are_scheduled() {
        let mut r = StatusReport {
            version: "0.1.0".into(),
            pid: 1,
            uptime_secs: 1,
            containers: 0,
            marked_inodes: 0,
            default_action: "alert".into(),
            stats: Default::default(),
            sinks: Default::default(),
            alerts_sent: 0,
            alerts_rate_limited: 0,
            alerts_by_rule: Default::default(),
            pending_runs: 0,
            config_errors: Vec::new(),
            exceptions: Vec::new(),
        };
        r.stats.answer_scheduling = Scheduling::Nice;
        let line = |r: &StatusReport| {
            status(r)
                .lines()
                .find(|l| l.starts_with("answering threads"))
                .map(str::to_string)
                .unwrap_or_default()
        };
        assert!(line(&r).contains("nice -10"), "{}", status(&r));
        r.stats.answer_scheduling = Scheduling::Realtime;
        assert!(line(&r).contains("SCHED_RR"), "{}", status(&r));
    }

    #[test]
    fn an_alert_line_becomes_one_row() {
        let doc = serde_json::json!({
            "@timestamp": "2026-12-02T05:00:00.000Z",
            "container": {"id": "abc", "name": "web"},
            "process": {"pid": 42, "name": "tar"},
            "keyward": {"files": [{"path": "/root/.ssh/id_rsa"}, {"path": "/etc/shadow"}],
                        "response": {"action": "deny", "result": "ok"},
                        "run": {"seq": 3, "final": true}},
        });
        assert_eq!(
            alert_row(&doc),
            [
                "2026-12-02T05:00:00.000Z",
                "web",
                "tar (42)",
                "/root/.ssh/id_rsa, /etc/shadow",
                "deny ok",
                "#3 final"
            ]
        );
        let table = alerts("not json\n", 10);
        assert!(table.contains("unparsable line"), "{table}");
    }
}
