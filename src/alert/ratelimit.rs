//! The per-container alert rate limit and the summary of what it held.
//!
//! The limit folds *repeats*: an alert whose rule and credential files were
//! all alerted already in the container's window counts against the limit.
//! An alert that names a credential file (under its rule) not yet alerted in
//! the window always goes out, so sixty harmless-looking alerts about
//! `known_hosts` cannot hide the theft of `.aws/credentials` that follows.
//! The files are canonical credential paths (a copy is its origin's), so an
//! attacker cannot mint new ones to flood past the limit.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::ecs::rfc3339;

/// Most (rule, file) pairs remembered per window, and most files and
/// process names a summary lists.
const MAX_SEEN: usize = 4096;
const MAX_LISTED: usize = 64;

/// One container's current window.
#[derive(Debug)]
struct Window {
    start: Instant,
    sent: u32,
    /// (rule id, credential path) pairs alerted in this window.
    seen: HashSet<(String, String)>,
    held: Held,
}

/// What a closed window held back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    pub container: String,
    pub count: u64,
    /// The credential files the held alerts named (at most 64).
    pub files: BTreeSet<String>,
    /// Held alerts by process name (at most 64 names).
    pub processes: BTreeMap<String, u64>,
}

/// What the limiter needs to know of one alert.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub container: &'a str,
    pub rule: &'a str,
    pub files: &'a [&'a str],
    pub process: &'a str,
}

/// Per-container alert rate limit, so a container looping over archivers
/// cannot flood the SIEM. What it holds back is listed and summarised in
/// one alert when the container's window closes.
#[derive(Debug)]
pub struct RateLimiter {
    per_window: u32,
    window: Duration,
    containers: HashMap<String, Window>,
}

impl RateLimiter {
    /// `per_window` repeat alerts per container per `window`; 0 means no
    /// limit.
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

    /// Whether an alert may go out now: always if it names a credential
    /// file not alerted under its rule in this window, else while the
    /// window has room.
    pub fn admit(&mut self, c: &Candidate<'_>, now: Instant) -> bool {
        if self.per_window == 0 {
            return true;
        }
        let w = self
            .containers
            .entry(c.container.to_string())
            .or_insert_with(|| Window {
                start: now,
                sent: 0,
                seen: HashSet::new(),
                held: Held {
                    container: c.container.to_string(),
                    ..Default::default()
                },
            });
        let mut new = false;
        for f in c.files {
            let key = (c.rule.to_string(), f.to_string());
            if !w.seen.contains(&key) && w.seen.len() < MAX_SEEN {
                w.seen.insert(key);
                new = true;
            }
        }
        if new || w.sent < self.per_window {
            w.sent = w.sent.saturating_add(1);
            return true;
        }
        let h = &mut w.held;
        h.count += 1;
        for f in c.files {
            if h.files.len() < MAX_LISTED {
                h.files.insert(f.to_string());
            }
        }
        if h.processes.len() < MAX_LISTED || h.processes.contains_key(c.process) {
            *h.processes.entry(c.process.to_string()).or_default() += 1;
        }
        false
    }

    /// What the containers whose window closed held back.
    pub fn closed_windows(&mut self, now: Instant) -> Vec<Held> {
        let mut out = Vec::new();
        self.containers.retain(|_, w| {
            if now.duration_since(w.start) < self.window {
                return true;
            }
            if w.held.count > 0 {
                out.push(std::mem::take(&mut w.held));
            }
            false
        });
        out
    }
}

/// The summary alert for alerts a rate limit held back: how many, which
/// credential files and which processes.
pub fn rate_limit_doc(hostname: &str, held: &Held, window: Duration) -> Value {
    let files: Vec<&String> = held.files.iter().collect();
    json!({
        "@timestamp": rfc3339(SystemTime::now()),
        "message": format!(
            "rate limit: {} repeat keyward alerts in container {} were held in the last {}s (files: {})",
            held.count,
            held.container,
            window.as_secs(),
            held.files.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
        "ecs": {"version": "8.11.0"},
        "event": {"kind": "alert", "module": "keyward", "dataset": "keyward.alerts", "category": ["process"], "type": ["info"], "action": "rate-limited"},
        "rule": {"id": "keyward.rate-limit", "name": "keyward Alerts Rate Limited"},
        "container": {"id": held.container},
        "host": {"hostname": hostname},
        "keyward": {
            "suppressed": held.count,
            "window_secs": window.as_secs(),
            "files": files,
            "processes": held.processes,
        },
    })
}
