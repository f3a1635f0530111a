//! The command line a person reads, end to end.
//!
//! Strategy: a real daemon and a real runc container raise an alert; then
//! the binary's own commands are run as a user would: `status`,
//! `containers` and `rules` print aligned tables (checked for their header
//! and alignment, not against keyward's renderer) and the same data as
//! JSON with `--json`; `alerts` prints the alert as one row; `alerts
//! --follow` prints an alert written after it started, and is stopped by
//! pid.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn run(args: &[&str]) -> String {
    let out = Command::new(KEYWARD).args(args).output().unwrap();
    assert!(out.status.success(), "keyward {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The column starts of a header line (upper-case words two spaces apart).
fn columns(header: &str) -> Vec<usize> {
    let mut starts = vec![0];
    let b = header.as_bytes();
    for i in 2..b.len() {
        if b[i - 2] == b' ' && b[i - 1] == b' ' && b[i] != b' ' {
            starts.push(i);
        }
    }
    starts
}

#[test]
fn status_containers_rules_and_alerts_read_as_tables_and_json() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    let sock = d.socket.to_str().unwrap();
    let mut first = Bundle::new(
        "kw-cli",
        &d.socket,
        "/usr/bin/tar czf /tmp/c.tgz /root/.ssh/id_rsa; touch /tmp/first-done; sleep 30",
    );
    first.annotate("io.kubernetes.cri-o.ContainerName", "cli-web");
    let mut child = first.spawn();
    d.wait_alert("cli case", |a| a["container"]["id"] == first.id.as_str());

    let status = run(&["status", "--socket", sock]);
    let lines: Vec<&str> = status.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["DAEMON", "VALUE"],
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("containers") && l.ends_with(" 1")),
        "{status}"
    );
    assert!(
        status.lines().any(|l| l.starts_with("permission events")),
        "{status}"
    );
    let json: Value = serde_json::from_str(&run(&["status", "--json", "--socket", sock])).unwrap();
    assert_eq!(json["containers"], 1, "--json is the reply, unchanged");

    let table = run(&["containers", "--socket", sock]);
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("ID "), "{table}");
    let cols = columns(rows[0]);
    let name_col = cols[1];
    assert_eq!(&rows[0][name_col..name_col + 4], "NAME", "{table}");
    assert!(rows[1].starts_with(first.id.as_str()), "{table}");
    assert_eq!(
        &rows[1][name_col..name_col + 7],
        "cli-web",
        "aligned under NAME: {table}"
    );
    let json: Value =
        serde_json::from_str(&run(&["containers", "--json", "--socket", sock])).unwrap();
    assert_eq!(json[0]["id"], first.id.as_str());

    let rules = run(&["rules", "--config", d.config.to_str().unwrap()]);
    assert!(rules.starts_with("RULE "), "{rules}");
    assert!(
        rules.contains("keyward.seed.sensitive-files-compression"),
        "{rules}"
    );
    let json: Value = serde_json::from_str(&run(&[
        "rules",
        "--json",
        "--config",
        d.config.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);

    let alerts = run(&["alerts", "--config", d.config.to_str().unwrap(), "-n", "5"]);
    eprintln!("{status}\n{table}\n{alerts}");
    assert!(alerts.starts_with("TIME "), "{alerts}");
    let row = alerts
        .lines()
        .find(|l| l.contains("cli-web"))
        .unwrap_or_else(|| panic!("no row for the container: {alerts}"));
    assert!(
        row.contains("tar (") && row.contains("/root/.ssh/id_rsa"),
        "{row}"
    );

    // --follow prints what is written after it started.
    // Not under timeout(1): killed by its own pid below.
    let mut follow = Command::new(KEYWARD)
        .args(["alerts", "--follow", "-n", "0", "--file"])
        .arg(&d.alerts)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = follow.stdout.take().unwrap();
    let second = Bundle::new(
        "kw-cli-2",
        &d.socket,
        "/usr/bin/tar cf /tmp/d.tar /etc/shadow; echo done",
    );
    second.run_saying("done");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) if l.contains(second.id.as_str()) && l.contains("/etc/shadow") => break true,
            Ok(l) => seen.push(l),
            Err(_) if Instant::now() > deadline => break false,
            Err(_) => {}
        }
    };
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(found, "--follow never printed the second alert: {seen:#?}");
    stop_wrapped(&mut child);
}
