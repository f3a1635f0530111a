//! Prometheus metrics, scraped by a real Prometheus.
//!
//! Strategy: a real daemon with `[metrics]` on a loopback port, a real
//! Prometheus (Debian's `prometheus`, started here with a private config
//! and data directory, stopped by pid) scraping it every second, and a real
//! runc container whose archiver reads a key. After the alert, a PromQL
//! query over Prometheus's HTTP API must return the alert counted under
//! its rule, and `promtool check metrics` must find nothing to say about
//! the exposition. The daemon's own figures are never the judge: the
//! numbers come back through Prometheus's parser and query engine.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over HTTP/1.0 on loopback: (status line, body).
fn get(port: u16, path: &str) -> Option<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// Percent-encode a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server, killed by pid on drop.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &std::path::Path, target: u16) -> Self {
        let port = free_port();
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: keyward\n    static_configs:\n      - targets: [\"127.0.0.1:{target}\"]\n"
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus");
        Self { child, port }
    }

    /// The first sample of an instant query, if any.
    fn query(&self, q: &str) -> Option<f64> {
        let (status, body) = get(self.port, &format!("/api/v1/query?query={}", encode(q)))?;
        if !status.contains("200") {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

#[test]
fn a_real_prometheus_scrapes_keyward_and_answers_for_an_alert() {
    if !privileged() {
        return;
    }
    if !required(
        "prometheus and promtool (Debian's prometheus)",
        have_command("prometheus") && have_command("promtool"),
    ) {
        return;
    }
    let metrics = free_port();
    let d = Daemon::start(&format!(
        "[metrics]\nenabled = true\nlisten = \"127.0.0.1:{metrics}\"\n"
    ));
    let prom = Prometheus::start(&d.dir, metrics);
    wait_until(
        Duration::from_secs(60),
        || {
            format!(
                "prometheus never scraped keyward: {:?}",
                std::fs::read_to_string(d.dir.join("prometheus.log"))
            )
        },
        || prom.query("up{job=\"keyward\"}") == Some(1.0),
    );
    // An alert happens.
    let b = Bundle::new(
        "kw-metrics",
        &d.socket,
        "/usr/bin/tar czf /tmp/m.tgz /root/.ssh/id_rsa; echo done",
    );
    b.run_saying("done");
    let alert = d.wait_alert("metrics case", |a| a["container"]["id"] == b.id.as_str());
    let rule = alert["rule"]["id"].as_str().unwrap().to_string();
    let query = format!("keyward_alerts_total{{job=\"keyward\",rule=\"{rule}\"}}");
    wait_until(
        Duration::from_secs(30),
        || {
            format!(
                "prometheus never saw the alert: {query} = {:?}",
                prom.query(&query)
            )
        },
        || prom.query(&query).is_some_and(|v| v >= 1.0),
    );
    assert_eq!(
        prom.query("keyward_containers{job=\"keyward\"}")
            .map(|v| v >= 0.0),
        Some(true)
    );
    assert!(
        prom.query("keyward_permission_events_total{job=\"keyward\"}")
            .is_some_and(|v| v >= 1.0),
        "the archiver's opens were permission events"
    );
    assert!(
        prom.query("keyward_decision_latency_seconds_count{job=\"keyward\"}")
            .is_some_and(|v| v >= 1.0),
        "the latency histogram counts decisions"
    );
    // The exposition itself, through promtool's linter.
    let (status, body) = get(metrics, "/metrics").unwrap();
    assert!(status.contains("200"), "{status}");
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}\n{body}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty()
            && String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "promtool has remarks: {}",
        text(&out)
    );
    // Anything but GET /metrics is refused, and the listener goes on.
    let (status, _) = get(metrics, "/").unwrap();
    assert!(status.contains("404"), "{status}");
    let mut s = TcpStream::connect(("127.0.0.1", metrics)).unwrap();
    s.write_all(&[0xff; 9000]).unwrap();
    drop(s);
    assert!(get(metrics, "/metrics").unwrap().0.contains("200"));
}
