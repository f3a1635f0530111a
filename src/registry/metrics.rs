//! Prometheus metrics: what `keyward status` reports, as a scrape.
//!
//! Takes a [`StatusReport`] (built fresh per scrape from the same atomics
//! `keyward status` reads, so the two never disagree) and hands on the
//! Prometheus text exposition format, encoded by the `prometheus-client`
//! crate. Served over plain HTTP by [`serve`], one connection at a time,
//! on the `[metrics] listen` address (loopback by default): a scrape is a
//! few kilobytes, and nothing here touches the threads that answer the
//! kernel.
//!
//! Names follow Prometheus conventions: counters end in `_total`, the
//! latency histogram is in seconds, labels name what is counted (`rule`,
//! `verdict`, `sink`, `reason`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::hook::protocol::StatusReport;

/// Errors of the metrics listener.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Bind the metrics listener.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    let l = TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| MetricsError::Bind { addr, source })?;
    Ok(l)
}

/// One scrape's worth of metrics.
#[derive(Debug)]
struct Snapshot(StatusReport);

type Labels = Vec<(&'static str, String)>;

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// A counter family: one series per label set.
fn counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauges(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, i64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn g(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let r = &self.0;
        let s = &r.stats;
        let e = &mut e;
        gauges(
            e,
            "keyward_build_info",
            "keyward's version (always 1)",
            &[(vec![("version", r.version.clone())], 1)],
        )?;
        gauge(
            e,
            "keyward_uptime_seconds",
            "seconds since the daemon started",
            g(r.uptime_secs),
        )?;
        gauge(
            e,
            "keyward_containers",
            "containers watched",
            g(r.containers),
        )?;
        gauge(
            e,
            "keyward_marked_inodes",
            "credential inodes marked",
            g(r.marked_inodes),
        )?;
        gauge(
            e,
            "keyward_open_runs",
            "archiver runs not yet closed",
            g(r.pending_runs),
        )?;
        counter(
            e,
            "keyward_permission_events",
            "fanotify permission events",
            s.perm_events,
        )?;
        counter(
            e,
            "keyward_exec_events",
            "fanotify exec events",
            s.exec_events,
        )?;
        counters(
            e,
            "keyward_decisions",
            "permission events answered, by verdict",
            &[
                (vec![("verdict", "allow".into())], s.allowed),
                (vec![("verdict", "deny".into())], s.denied),
            ],
        )?;
        // keyward's buckets are powers of two in microseconds, each with
        // its own count; the encoder adds them up and ends with +Inf.
        let buckets: Vec<(f64, u64)> = s
            .latency
            .buckets
            .iter()
            .map(|(upper_us, c)| (*upper_us as f64 / 1e6, *c))
            .collect();
        let mut m = e.encode_descriptor(
            "keyward_decision_latency_seconds",
            "time from a permission event to its answer",
            None,
            MetricType::Histogram,
        )?;
        m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            s.latency.sum_us as f64 / 1e6,
            s.latency.count,
            &buckets,
            None,
        )?;
        counter(
            e,
            "keyward_findings_dropped",
            "findings dropped because the alert queue was full",
            s.queue_drops,
        )?;
        counter(
            e,
            "keyward_fanotify_overflows",
            "fanotify queue overflows",
            s.overflows,
        )?;
        counter(
            e,
            "keyward_watchdog_releases",
            "permission events the watchdog allowed because a decision stalled",
            s.deadline_releases,
        )?;
        counter(
            e,
            "keyward_learn_timeouts",
            "decisions that stopped waiting for their container's image to be learned",
            s.learn_timeouts,
        )?;
        counter(
            e,
            "keyward_decision_panics",
            "decisions that panicked",
            s.panics,
        )?;
        counter(
            e,
            "keyward_parse_errors",
            "event batches that could not be parsed",
            s.parse_errors,
        )?;
        counter(e, "keyward_findings", "rule matches found", s.findings)?;
        let by_rule: Vec<(Labels, u64)> = r
            .alerts_by_rule
            .iter()
            .map(|(rule, n)| (vec![("rule", rule.clone())], *n))
            .collect();
        counters(e, "keyward_alerts", "alerts sent, by rule", &by_rule)?;
        counter(
            e,
            "keyward_alerts_rate_limited",
            "alerts the rate limit held back",
            r.alerts_rate_limited,
        )?;
        let excepted: Vec<(Labels, u64)> = r
            .exceptions
            .iter()
            .map(|x| (vec![("reason", x.reason.clone())], x.suppressed))
            .collect();
        counters(
            e,
            "keyward_exception_suppressed",
            "matches an exception suppressed, by its reason",
            &excepted,
        )?;
        let per_sink = |f: &dyn Fn(&crate::alert::sink::SinkStats) -> u64| -> Vec<(Labels, u64)> {
            r.sinks
                .iter()
                .map(|(name, st)| (vec![("sink", name.clone())], f(st)))
                .collect()
        };
        counters(
            e,
            "keyward_sink_delivered",
            "records a sink delivered",
            &per_sink(&|s| s.delivered),
        )?;
        counters(
            e,
            "keyward_sink_failures",
            "deliveries that failed (kept for retry)",
            &per_sink(&|s| s.failures),
        )?;
        counters(
            e,
            "keyward_sink_dropped",
            "records a full backlog dropped",
            &per_sink(&|s| s.dropped),
        )?;
        let backlog: Vec<(Labels, i64)> = per_sink(&|s| s.backlog)
            .into_iter()
            .map(|(l, v)| (l, g(v)))
            .collect();
        gauges(
            e,
            "keyward_sink_backlog",
            "records waiting for retry",
            &backlog,
        )?;
        Ok(())
    }
}

/// The Prometheus text exposition of `report`.
pub fn render(report: StatusReport) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(report)));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// Longest a scraper may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of a request read at most (a scrape's is a few hundred).
const MAX_REQUEST: usize = 8192;

/// Serve `GET /metrics` until `stop` is set, one connection at a time.
pub fn serve(listener: TcpListener, status: impl Fn() -> StatusReport, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                if let Err(e) = answer(conn, &status) {
                    eprintln!("keyward: metrics: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                eprintln!("keyward: metrics: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The request line of an HTTP request (up to the first CRLF), once the
/// head has arrived.
fn request_line(head: &[u8]) -> Option<&str> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&head[..end]).ok()?;
    head.lines().next()
}

fn answer(mut conn: TcpStream, status: &impl Fn() -> StatusReport) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(READ_TIMEOUT))?;
    conn.set_write_timeout(Some(READ_TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let line = loop {
        if let Some(l) = request_line(&buf) {
            break l.to_string();
        }
        if buf.len() >= MAX_REQUEST {
            return reply(
                &mut conn,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            );
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) if path == "/metrics" || path.starts_with("/metrics?") => reply(
            &mut conn,
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            &render(status()),
        ),
        (Some("GET"), Some(_)) => reply(&mut conn, "404 Not Found", "text/plain", "try /metrics\n"),
        _ => reply(&mut conn, "405 Method Not Allowed", "text/plain", ""),
    }
}

fn reply(conn: &mut TcpStream, status: &str, kind: &str, body: &str) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StatusReport {
        let stats = serde_json::to_value(crate::answer::stats::StatsSnapshot::default()).unwrap();
        let mut r: StatusReport = serde_json::from_value(serde_json::json!({
            "version": "0.1.0", "pid": 1, "uptime_secs": 5, "containers": 2,
            "marked_inodes": 30, "default_action": "alert", "stats": stats,
            "sinks": {"json": {"delivered": 4, "failures": 1, "dropped": 0, "backlog": 2, "last_error": null}},
            "alerts_sent": 4, "alerts_rate_limited": 3, "pending_runs": 1,
            "config_errors": [], "exceptions": [{"reason": "nightly \"backup\"", "suppressed": 7}],
            "alerts_by_rule": {"keyward.file.archiver-opened-credential": 4}
        }))
        .unwrap();
        r.stats.perm_events = 9;
        r.stats.latency.count = 3;
        r.stats.latency.sum_us = 30;
        r.stats.latency.buckets = vec![(8, 2), (16, 1)];
        r
    }

    #[test]
    fn the_text_exposition_names_and_labels_what_status_counts() {
        let text = render(report());
        for line in [
            "keyward_permission_events_total 9",
            "keyward_alerts_total{rule=\"keyward.file.archiver-opened-credential\"} 4",
            "keyward_containers 2",
            "keyward_sink_backlog{sink=\"json\"} 2",
            "keyward_decision_latency_seconds_bucket{le=\"8e-06\"} 2",
            "keyward_decision_latency_seconds_bucket{le=\"1.6e-05\"} 3",
            "keyward_decision_latency_seconds_bucket{le=\"+Inf\"} 3",
            "keyward_decision_latency_seconds_count 3",
            "keyward_exception_suppressed_total{reason=\"nightly \\\"backup\\\"\"} 7",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(
            text.contains("# TYPE keyward_alerts_total counter")
                || text.contains("# TYPE keyward_alerts counter"),
            "{text}"
        );
    }

    #[test]
    fn requests_are_parsed_only_once_whole() {
        assert_eq!(
            request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some("GET /metrics HTTP/1.1")
        );
        assert_eq!(request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(request_line(b"\xff\xfe\r\n\r\n"), None);
    }
}
