//! Alert sinks: the ECS JSON lines file and syslog.
//!
//! Sinks run on the alert thread, never on a thread that answers the
//! kernel. A sink that fails keeps the rendered alert in a bounded backlog
//! and retries it on the next tick; nothing is fatal, and what a full
//! backlog drops is counted.

pub mod json;
pub mod syslog;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::alert::Alert;
use crate::config::AlertsConfig;

/// Alerts a sink holds for retry before it starts dropping the oldest.
pub const BACKLOG: usize = 10_000;

/// Per-sink delivery counters, readable from any thread.
#[derive(Debug, Default)]
pub struct SinkCounters {
    pub delivered: AtomicU64,
    pub failures: AtomicU64,
    pub dropped: AtomicU64,
    pub backlog: AtomicU64,
}

/// A snapshot of [`SinkCounters`].
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SinkStats {
    pub delivered: u64,
    pub failures: u64,
    pub dropped: u64,
    pub backlog: u64,
    pub last_error: Option<String>,
}

impl SinkCounters {
    pub fn snapshot(&self, last_error: Option<String>) -> SinkStats {
        SinkStats {
            delivered: self.delivered.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            backlog: self.backlog.load(Ordering::Relaxed),
            last_error,
        }
    }
}

/// A transport that takes one rendered record at a time.
pub trait Transport {
    /// Deliver one record; on error the caller keeps it for retry.
    fn send(&mut self, record: &[u8]) -> std::io::Result<()>;
}

/// A bounded retry queue in front of a [`Transport`].
#[derive(Debug, Default)]
pub struct Backlog {
    queue: VecDeque<Vec<u8>>,
    pub last_error: Option<String>,
}

impl Backlog {
    /// Queue `record` and flush as much as the transport takes, in order.
    pub fn push_and_flush<T: Transport>(
        &mut self,
        t: &mut T,
        record: Option<Vec<u8>>,
        c: &SinkCounters,
    ) {
        if let Some(r) = record {
            if self.queue.len() >= BACKLOG {
                self.queue.pop_front();
                c.dropped.fetch_add(1, Ordering::Relaxed);
            }
            self.queue.push_back(r);
        }
        while let Some(front) = self.queue.front() {
            match t.send(front) {
                Ok(()) => {
                    self.queue.pop_front();
                    c.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    c.failures.fetch_add(1, Ordering::Relaxed);
                    self.last_error = Some(e.to_string());
                    break;
                }
            }
        }
        c.backlog.store(self.queue.len() as u64, Ordering::Relaxed);
    }
}

/// The one delivery mechanism of every sink: a transport behind a bounded
/// backlog, with its counters. A sink renders records; this sends them,
/// keeps what failed in order, and retries it.
#[derive(Debug)]
pub struct Buffered<T: Transport> {
    transport: T,
    backlog: Backlog,
    counters: SinkCounters,
}

impl<T: Transport> Buffered<T> {
    pub fn new(transport: T) -> Self {
        Self {
            transport,
            backlog: Backlog::default(),
            counters: SinkCounters::default(),
        }
    }

    /// Send `record` after whatever is still waiting.
    pub fn deliver(&mut self, record: Vec<u8>) {
        self.backlog
            .push_and_flush(&mut self.transport, Some(record), &self.counters);
    }

    /// Retry what earlier deliveries could not send.
    pub fn retry(&mut self) {
        self.backlog
            .push_and_flush(&mut self.transport, None, &self.counters);
    }

    pub fn stats(&self) -> SinkStats {
        self.counters.snapshot(self.backlog.last_error.clone())
    }
}

/// All configured sinks.
pub struct Sinks {
    hostname: String,
    profile: crate::config::EcsProfile,
    namespace: String,
    json: Option<json::JsonSink>,
    /// Process start events (`alerts.process_events`), opt-in.
    starts: Option<json::JsonSink>,
    syslog: Option<syslog::SyslogSink>,
}

impl Sinks {
    /// Build from config. Opening is lazy: a missing syslog socket or log
    /// directory is retried at delivery, not an error at start.
    pub fn new(cfg: &AlertsConfig) -> Self {
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into());
        Self {
            json: cfg.json.as_ref().map(|p| json::JsonSink::new(p.clone())),
            starts: cfg
                .process_events
                .as_ref()
                .map(|p| json::JsonSink::new(p.clone())),
            syslog: cfg
                .syslog
                .enabled
                .then(|| syslog::SyslogSink::new(&cfg.syslog, hostname.clone())),
            hostname,
            profile: cfg.profile,
            namespace: cfg.namespace.clone(),
        }
    }

    /// File a document under the configured profile: `event.module`,
    /// `event.dataset` and `data_stream`, so Filebeat and Elastic Agent
    /// route it without a pipeline. Documents are rendered as
    /// `keyward.<kind>`; the kind is kept.
    fn file(&self, mut doc: serde_json::Value) -> serde_json::Value {
        let kind = doc["event"]["dataset"]
            .as_str()
            .and_then(|d| d.strip_prefix("keyward."))
            .unwrap_or("alerts")
            .to_string();
        let dataset = self.profile.dataset(&kind);
        doc["event"]["module"] = serde_json::json!(self.profile.module());
        doc["event"]["dataset"] = serde_json::json!(dataset);
        doc["data_stream"] = serde_json::json!({
            "type": "logs",
            "dataset": dataset,
            "namespace": self.namespace,
        });
        doc
    }

    /// Render and deliver one alert to every sink.
    pub fn deliver(&mut self, alert: &Alert) {
        let doc = self.file(alert.to_ecs(&self.hostname));
        if let Some(j) = &mut self.json {
            j.deliver(&doc);
        }
        if let Some(s) = &mut self.syslog {
            s.deliver(alert, &doc);
        }
    }

    /// Write a process start event, if they are enabled.
    pub fn deliver_process_start(&mut self, f: &crate::alert::Finding) {
        if self.starts.is_some() {
            let doc = self.file(crate::alert::process_start_doc(
                &self.hostname,
                &f.container,
                &f.process,
                f.at,
            ));
            if let Some(s) = &mut self.starts {
                s.deliver(&doc);
            }
        }
    }

    /// Deliver a rate-limit summary to the JSON and syslog sinks.
    pub fn deliver_summary(&mut self, doc: &serde_json::Value) {
        let doc = self.file(doc.clone());
        self.deliver_notice(&doc);
    }

    fn deliver_notice(&mut self, doc: &serde_json::Value) {
        if let Some(j) = &mut self.json {
            j.deliver(doc);
        }
        if let Some(s) = &mut self.syslog {
            s.deliver_notice(doc);
        }
    }

    /// The hostname alerts carry.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Deliver a health alert (degraded coverage) to the JSON and syslog
    /// sinks.
    pub fn deliver_health(&mut self, d: &crate::alert::Degradation) {
        let doc = self.file(d.to_ecs(&self.hostname));
        self.deliver_notice(&doc);
    }

    /// Deliver a per-container bound alert (see `ecs::bound_doc`) to the
    /// JSON and syslog sinks, filed as health alerts are.
    pub fn deliver_bound(&mut self, doc: serde_json::Value) {
        let doc = self.file(doc);
        self.deliver_notice(&doc);
    }

    /// Retry what earlier deliveries could not send.
    pub fn retry(&mut self) {
        if let Some(j) = &mut self.json {
            j.out.retry();
        }
        if let Some(j) = &mut self.starts {
            j.out.retry();
        }
        if let Some(s) = &mut self.syslog {
            s.out.retry();
        }
    }

    /// Counters per sink.
    pub fn stats(&self) -> Vec<(&'static str, SinkStats)> {
        let mut v = Vec::new();
        if let Some(j) = &self.json {
            v.push(("json", j.out.stats()));
        }
        if let Some(s) = &self.syslog {
            v.push(("syslog", s.out.stats()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Flaky {
        fail: bool,
        got: Vec<Vec<u8>>,
    }
    impl Transport for Flaky {
        fn send(&mut self, r: &[u8]) -> std::io::Result<()> {
            if self.fail {
                return Err(std::io::Error::other("down"));
            }
            self.got.push(r.to_vec());
            Ok(())
        }
    }

    #[test]
    fn backlog_keeps_order_across_an_outage() {
        let c = SinkCounters::default();
        let mut b = Backlog::default();
        let mut t = Flaky {
            fail: true,
            got: vec![],
        };
        b.push_and_flush(&mut t, Some(b"1".to_vec()), &c);
        b.push_and_flush(&mut t, Some(b"2".to_vec()), &c);
        assert_eq!(c.snapshot(None).backlog, 2);
        assert_eq!(b.last_error.as_deref(), Some("down"));
        t.fail = false;
        b.push_and_flush(&mut t, None, &c);
        assert_eq!(t.got, vec![b"1".to_vec(), b"2".to_vec()]);
        let s = c.snapshot(None);
        assert_eq!((s.delivered, s.backlog, s.dropped), (2, 0, 0));
        assert!(s.failures >= 2);
    }

    #[test]
    fn full_backlog_drops_oldest_and_counts() {
        let c = SinkCounters::default();
        let mut b = Backlog::default();
        let mut t = Flaky {
            fail: true,
            got: vec![],
        };
        for i in 0..(BACKLOG + 3) {
            b.push_and_flush(&mut t, Some(i.to_string().into_bytes()), &c);
        }
        assert_eq!(c.snapshot(None).dropped, 3);
        t.fail = false;
        b.push_and_flush(&mut t, None, &c);
        assert_eq!(t.got[0], b"3".to_vec());
    }

    #[test]
    fn documents_are_filed_under_the_profile_and_namespace() {
        use crate::config::EcsProfile;
        let mut cfg = AlertsConfig {
            json: None,
            ..Default::default()
        };
        cfg.syslog.enabled = false;
        cfg.namespace = "prod".into();
        let doc = serde_json::json!({"event": {"kind": "alert", "module": "keyward", "dataset": "keyward.process"}});
        let plain = Sinks::new(&cfg).file(doc.clone());
        assert_eq!(plain["data_stream"]["dataset"], "keyward.process");
        assert_eq!(plain["data_stream"]["type"], "logs");
        assert_eq!(plain["data_stream"]["namespace"], "prod");
        assert_eq!(plain["event"]["module"], "keyward");
        cfg.profile = EcsProfile::CloudDefend;
        let cd = Sinks::new(&cfg);
        let p = cd.file(doc);
        assert_eq!(p["event"]["module"], "cloud_defend");
        assert_eq!(p["event"]["dataset"], "cloud_defend.process");
        let h = cd.file(serde_json::json!({"event": {"dataset": "keyward.health"}}));
        assert_eq!(h["data_stream"]["dataset"], "cloud_defend.alerts");
    }
}
