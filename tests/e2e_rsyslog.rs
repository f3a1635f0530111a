//! Syslog delivery to a real rsyslogd: the local unix socket, TCP with
//! RFC 6587 octet counting, and no loss across a collector restart.
//!
//! Strategy: each test starts a private `rsyslogd -n` (its own config, pid
//! file and work directory under a temp dir; `SysSock.Use="off"`, so
//! `/dev/log` and the system's rsyslog are never touched) that listens on a
//! private imuxsock socket and on imtcp at `127.0.0.1:<free port>`, and
//! writes every record it parsed as one JSON object (input, facility,
//! severity, app-name, structured data, msg, raw message) to a file. A real
//! keyward daemon sends the alerts of real runc containers running GNU tar
//! on fake keys. The tests compare what rsyslog parsed with the daemon's
//! JSON alerts: one syslog record per alert, matched by container id and
//! pid. keyward's TCP records end in no newline, so rsyslog separates them
//! only when the octet-counting frame is right. rsyslogd runs under
//! `timeout` and is stopped by pid.

mod common;

use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Bundle, Daemon, privileged, required, stop_wrapped, text, unique};
use serde_json::Value;

/// Hard cap on any rsyslogd a test starts.
const RSYSLOG_TIMEOUT_SECS: &str = "300";

fn ready() -> bool {
    privileged()
        && required(
            "rsyslogd",
            Command::new("rsyslogd")
                .arg("-v")
                .output()
                .is_ok_and(|o| o.status.success()),
        )
}

/// A private rsyslogd.
struct Rsyslog {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Rsyslog {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("keyward-rsyslog"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("work")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = format!(
            r#"global(workDirectory="{work}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{sock}" UseSpecialParser="off" ParseHostname="on" RateLimit.Interval="0")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{port}" SupportOctetCountedFraming="on")
template(name="keyward_test" type="list" option.jsonf="on") {{
  property(outname="input" name="inputname" format="jsonf")
  property(outname="facility" name="syslogfacility-text" format="jsonf")
  property(outname="severity" name="syslogseverity-text" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="raw" name="rawmsg" format="jsonf")
}}
action(type="omfile" file="{out}" template="keyward_test")
"#,
            work = dir.join("work").display(),
            sock = dir.join("log.sock").display(),
            out = dir.join("received.json").display(),
        );
        fs::write(dir.join("rsyslog.conf"), conf).unwrap();
        let mut r = Self {
            dir,
            port,
            child: None,
        };
        r.start();
        r
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("log.sock")
    }

    /// Start rsyslogd (again, on the same port and files) and wait until
    /// both inputs listen.
    fn start(&mut self) {
        let _ = fs::remove_file(self.socket());
        let log =
            fs::File::create(self.dir.join(format!("rsyslogd-{}.log", unique("run")))).unwrap();
        let child = Command::new("timeout")
            .args(["-s", "KILL", RSYSLOG_TIMEOUT_SECS, "rsyslogd", "-n", "-f"])
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn rsyslogd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let tcp = TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if tcp && self.socket().exists() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen on {:?} and port {} (tcp {tcp})",
                self.socket(),
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM rsyslogd by pid and wait for it; SIGKILL after 5 s.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_wrapped(&mut child);
        }
    }

    /// Every record rsyslog wrote so far (a last line without its newline
    /// is still being written: left for the next look).
    fn records(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.dir.join("received.json")).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("rsyslog line {l:?}: {e}")))
            .collect()
    }

    /// Wait until `n` records satisfy `pred`; returns them.
    fn wait_records(&self, what: &str, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got: Vec<Value> = self.records().into_iter().filter(|r| pred(r)).collect();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "rsyslog got {} of {n} records for {what} within 15 s: {:#?}",
                got.len(),
                self.records()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Run `script` in a runc container with the hook; returns its id.
fn run_container(d: &Daemon, prefix: &str, script: &str) -> String {
    let b = Bundle::new(prefix, &d.socket, script);
    let out = b.run();
    assert!(out.status.success(), "container: {}", text(&out));
    b.id.clone()
}

/// Wait for `n` JSON alerts of container `id`.
fn alerts_of(d: &Daemon, id: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<Value> = d
            .alerts()
            .into_iter()
            .filter(|a| a["container"]["id"] == id)
            .collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} alerts for container {id}: {got:#?}\ndaemon log:\n{}",
            got.len(),
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The syslog record of JSON alert `a` among `records`: same container id
/// and pid in the structured data. Checks what rsyslog parsed.
fn record_of<'a>(records: &'a [Value], a: &Value) -> &'a Value {
    let cid = format!(
        "container_id=\"{}\"",
        a["container"]["id"].as_str().unwrap()
    );
    let pid = format!(" pid=\"{}\"", a["process"]["pid"]);
    let matching: Vec<&Value> = records
        .iter()
        .filter(|r| {
            let sd = r["sd"].as_str().unwrap_or("");
            sd.contains(&cid) && sd.contains(&pid)
        })
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "exactly one syslog record per alert (pid {}): {records:#?}",
        a["process"]["pid"]
    );
    let r = matching[0];
    assert_eq!(r["app"], "keyward", "{r:#}");
    assert_eq!(r["facility"], "authpriv", "{r:#}");
    assert_eq!(r["severity"], "warning", "{r:#}");
    assert_eq!(r["msg"], a["message"], "{r:#}");
    assert!(
        r["sd"].as_str().unwrap().starts_with("[keyward@32473 "),
        "{r:#}"
    );
    // The whole record and nothing else: a frame error leaves the length
    // digits at the front or runs two records together.
    let raw = r["raw"].as_str().unwrap();
    assert!(
        raw.starts_with("<84>1 "),
        "PRI authpriv.warning, RFC 5424: {raw}"
    );
    assert_eq!(raw.matches("<84>1 ").count(), 1, "one record: {raw}");
    assert!(raw.ends_with(a["message"].as_str().unwrap()), "{raw}");
    r
}

fn syslog_stats(d: &Daemon) -> Value {
    let s = d.status();
    let stats = s["sinks"]["syslog"].clone();
    assert!(stats.is_object(), "status has no syslog sink: {s:#}");
    stats
}

#[test]
fn alert_reaches_rsyslog_over_the_local_unix_socket() {
    if !ready() {
        return;
    }
    let rs = Rsyslog::new();
    let d = Daemon::start_with_syslog(
        "",
        &format!("socket = {:?}\nfacility = \"authpriv\"", rs.socket()),
    );
    let id = run_container(
        &d,
        "kw-rsyslog-unix",
        "tar czf /tmp/x.tgz /root/.ssh/id_rsa",
    );
    let alerts = alerts_of(&d, &id, 1);
    let records = rs.wait_records("the unix socket alert", 1, |r| {
        r["sd"].as_str().is_some_and(|sd| sd.contains(&id))
    });
    let r = record_of(&records, &alerts[0]);
    assert_eq!(r["input"], "imuxsock", "{r:#}");
    assert!(
        r["sd"]
            .as_str()
            .unwrap()
            .contains("file=\"/root/.ssh/id_rsa\""),
        "{r:#}"
    );
}

#[test]
fn tcp_octet_counting_and_a_collector_restart_lose_nothing() {
    if !ready() {
        return;
    }
    let mut rs = Rsyslog::new();
    let d = Daemon::start_with_syslog("", &format!("server = \"tcp://127.0.0.1:{}\"", rs.port));
    let of = |id: String| move |r: &Value| r["sd"].as_str().is_some_and(|sd| sd.contains(&id));

    // (b) Two archiver runs, two alerts, two framed records over one TCP
    // connection.
    let id = run_container(
        &d,
        "kw-rsyslog-tcp",
        "tar czf /tmp/a.tgz /root/.ssh/id_rsa; tar czf /tmp/b.tgz /root/.aws/credentials",
    );
    let alerts = alerts_of(&d, &id, 2);
    let records = rs.wait_records("two alerts over tcp", 2, of(id.clone()));
    assert_eq!(records.len(), 2, "{records:#?}");
    for a in &alerts {
        assert_eq!(record_of(&records, a)["input"], "imtcp");
    }
    let before = syslog_stats(&d);
    assert_eq!(before["backlog"], 0, "{before:#}");
    let delivered = before["delivered"].as_u64().unwrap();
    assert!(delivered >= 2, "{before:#}");

    // (c) The collector goes away; three alerts are raised meanwhile.
    rs.stop();
    let down = run_container(
        &d,
        "kw-rsyslog-down",
        "tar czf /tmp/a.tgz /root/.ssh/id_rsa; tar czf /tmp/b.tgz /root/.aws/credentials; tar czf /tmp/c.tgz /root/.docker/config.json",
    );
    let queued = alerts_of(&d, &down, 3);
    // Each one waits in the backlog: none was written into the dead
    // connection and counted as delivered.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stats = syslog_stats(&d);
    while stats["backlog"] != 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        stats = syslog_stats(&d);
    }
    assert_eq!(stats["backlog"], 3, "{stats:#}");
    assert_eq!(stats["delivered"], delivered, "{stats:#}");
    assert!(stats["last_error"].is_string(), "{stats:#}");

    // Back on the same port: keyward reconnects and delivers the backlog.
    rs.start();
    let records = rs.wait_records("three queued alerts", 3, of(down.clone()));
    assert_eq!(records.len(), 3, "{records:#?}");
    for a in &queued {
        assert_eq!(record_of(&records, a)["input"], "imtcp");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stats = syslog_stats(&d);
    while stats["backlog"] != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        stats = syslog_stats(&d);
    }
    assert_eq!(stats["backlog"], 0, "{stats:#}");
    assert_eq!(stats["delivered"], delivered + 3, "{stats:#}");
    assert_eq!(stats["dropped"], 0, "{stats:#}");
    // At least once: the records written in the 2 s before the connection
    // was lost come again on the new one (a stopped collector can take
    // them into its buffer and never write them out), each the same
    // record, so a collector sees each alert once or twice, never not.
    let again: Vec<Value> = rs
        .records()
        .into_iter()
        .filter(|r| of(id.clone())(r))
        .collect();
    assert!((2..=4).contains(&again.len()), "{again:#?}");
    for a in &alerts {
        let pid = format!(" pid=\"{}\"", a["process"]["pid"]);
        let copies: Vec<&Value> = again
            .iter()
            .filter(|r| r["sd"].as_str().is_some_and(|sd| sd.contains(&pid)))
            .collect();
        assert!(
            (1..=2).contains(&copies.len())
                && copies
                    .iter()
                    .all(|r| r["sd"] == copies[0]["sd"] && r["msg"] == copies[0]["msg"]),
            "{copies:#?}"
        );
    }
}
