//! The per-container alert rate limit and the summary of what it held.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::ecs::rfc3339;

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
