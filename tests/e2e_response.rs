//! End-to-end responses in real runc containers: deny, kill, stop and
//! disconnect, each set once by config and once by the annotation
//! `io.keyward.response`.
//!
//! Strategy: each check runs a container whose script archives
//! `/root/.ssh/id_rsa` and then records what happened next (exit status,
//! whether the next command ran, whether it survived a sleep). The test reads
//! the archive back from the rootfs to prove no secret reached it, checks
//! the effect (status 137, container gone within 2 s, a veth down in a
//! network namespace the test created) and the alert's `keyward.response`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const SECRET: &str = "ROOT-RSA-PRIVATE-KEY";

#[derive(Clone, Copy, Debug)]
enum Via {
    Config,
    Annotation,
}

fn daemon_for(action: &str, via: Via) -> Daemon {
    match via {
        Via::Config => Daemon::start(&format!("[response]\naction = \"{action}\"\n")),
        Via::Annotation => Daemon::start(""),
    }
}

fn bundle_for(d: &Daemon, action: &str, via: Via, script: &str) -> Bundle {
    let mut b = Bundle::new(&format!("kw-{action}"), &d.socket, script);
    if let Via::Annotation = via {
        b.annotate("io.keyward.response", action);
    }
    b
}

/// Whether an archive in the rootfs holds the secret (any compression).
fn archive_leaks(b: &Bundle, path: &str) -> bool {
    let Some(bytes) = b.read(path) else {
        return false;
    };
    let host = b.rootfs.join(path.trim_start_matches('/'));
    let listing = Command::new("tar").arg("-xOf").arg(&host).output().unwrap();
    let plain = String::from_utf8_lossy(&bytes).contains(SECRET);
    plain || String::from_utf8_lossy(&listing.stdout).contains(SECRET)
}

fn response_alert(d: &Daemon, b: &Bundle, action: &str) -> Value {
    let a = d.wait_alert(action, |a| {
        a["container"]["id"] == b.id.as_str() && !a["keyward"]["response"].is_null()
    });
    assert_eq!(a["event"]["action"], action, "{a:#}");
    assert_eq!(a["keyward"]["response"]["action"], action, "{a:#}");
    a
}

fn check_deny(via: Via) {
    let d = daemon_for("deny", via);
    let b = bundle_for(
        &d,
        "deny",
        via,
        "/usr/bin/tar czf /tmp/a.tgz /root/.ssh/id_rsa; echo tar=$? > /tmp/tar; echo next > /tmp/next",
    );
    let out = b.run();
    assert!(out.status.success(), "{via:?}: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "EPERM expected: {}",
        text(&out)
    );
    assert!(
        !archive_leaks(&b, "/tmp/a.tgz"),
        "{via:?}: the secret reached the archive"
    );
    assert_eq!(
        b.read("/tmp/next").as_deref(),
        Some(&b"next\n"[..]),
        "the next command must run"
    );
    let a = response_alert(&d, &b, "deny");
    assert_eq!(a["keyward"]["response"]["result"], "ok", "{a:#}");
    assert!(
        a["event"]["type"]
            .as_array()
            .unwrap()
            .contains(&Value::from("denied")),
        "{a:#}"
    );
    assert_eq!(a["keyward"]["files"][0]["denied"], true);
}

fn check_kill(via: Via) {
    let d = daemon_for("kill", via);
    let b = bundle_for(
        &d,
        "kill",
        via,
        "/usr/bin/tar cf /tmp/k.tar /root/.ssh/id_rsa /app; echo status=$? > /tmp/status",
    );
    let out = b.run();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&b.read("/tmp/status").unwrap_or_default()).trim(),
        "status=137",
        "{via:?}: the archiver must die by SIGKILL"
    );
    assert!(
        !archive_leaks(&b, "/tmp/k.tar"),
        "{via:?}: the secret reached the archive"
    );
    let a = response_alert(&d, &b, "kill");
    assert_eq!(a["keyward"]["response"]["result"], "ok", "{a:#}");
    assert_eq!(a["event"]["outcome"], "success");
}

fn check_stop(via: Via) {
    let d = daemon_for("stop", via);
    let b = bundle_for(
        &d,
        "stop",
        via,
        "/usr/bin/tar cf /tmp/s.tar /root/.ssh/id_rsa; sleep 30; echo survived > /tmp/survived",
    );
    let t0 = Instant::now();
    let _out = b.run();
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "{via:?}: container ran for {took:?}, its script sleeps 30 s"
    );
    assert!(
        b.read("/tmp/survived").is_none(),
        "{via:?}: the script went on"
    );
    assert!(!archive_leaks(&b, "/tmp/s.tar"));
    let a = response_alert(&d, &b, "stop");
    assert_eq!(a["keyward"]["response"]["result"], "ok", "{a:#}");
}

/// A network namespace with an up veth pair, deleted on drop.
struct Netns {
    name: String,
    links: [String; 2],
}

impl Netns {
    fn new() -> Self {
        let n = unique("kwn").replace('-', "");
        let name = n.clone();
        let tail = &n[n.len().saturating_sub(8)..];
        let links = [format!("kva{tail}"), format!("kvb{tail}")];
        let ip = |args: &[&str]| {
            let o = Command::new("ip").args(args).output().unwrap();
            assert!(
                o.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "-n", &name, "link", "add", &links[0], "type", "veth", "peer", "name", &links[1],
        ]);
        ip(&["-n", &name, "link", "set", &links[0], "up"]);
        ip(&["-n", &name, "link", "set", &links[1], "up"]);
        Self { name, links }
    }

    fn is_up(&self, link: &str) -> bool {
        let o = Command::new("ip")
            .args(["-n", &self.name, "-o", "link", "show", link])
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&o.stdout);
        // Flags look like <BROADCAST,MULTICAST,UP,LOWER_UP>.
        let flags = s
            .split('<')
            .nth(1)
            .and_then(|r| r.split('>').next())
            .unwrap_or("");
        flags.split(',').any(|f| f == "UP")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn check_disconnect(via: Via) {
    let d = daemon_for("disconnect", via);
    let ns = Netns::new();
    assert!(ns.is_up(&ns.links[0]) && ns.is_up(&ns.links[1]));
    let mut b = bundle_for(
        &d,
        "disconnect",
        via,
        "/usr/bin/tar cf /tmp/d.tar /root/.ssh/id_rsa; sleep 1; echo alive > /tmp/alive",
    );
    let nss = b.config["linux"]["namespaces"].as_array_mut().unwrap();
    nss.retain(|n| n["type"] != "network");
    nss.push(serde_json::json!({"type": "network", "path": format!("/var/run/netns/{}", ns.name)}));
    let out = b.run();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        b.read("/tmp/alive").as_deref(),
        Some(&b"alive\n"[..]),
        "{via:?}: the container must keep running"
    );
    for l in &ns.links {
        assert!(!ns.is_up(l), "{via:?}: {l} is still up");
    }
    let a = response_alert(&d, &b, "disconnect");
    assert_eq!(a["keyward"]["response"]["result"], "ok", "{a:#}");
    let cut: Vec<&str> = a["keyward"]["response"]["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for l in &ns.links {
        assert!(
            cut.contains(&l.as_str()),
            "{l} not recorded as cut: {cut:?}"
        );
    }
    assert!(!cut.contains(&"lo"));
}

#[test]
fn deny_by_config() {
    if privileged() {
        check_deny(Via::Config);
    }
}

#[test]
fn deny_by_annotation() {
    if privileged() {
        check_deny(Via::Annotation);
    }
}

#[test]
fn kill_by_config() {
    if privileged() {
        check_kill(Via::Config);
    }
}

#[test]
fn kill_by_annotation() {
    if privileged() {
        check_kill(Via::Annotation);
    }
}

#[test]
fn stop_by_config() {
    if privileged() {
        check_stop(Via::Config);
    }
}

#[test]
fn stop_by_annotation() {
    if privileged() {
        check_stop(Via::Annotation);
    }
}

#[test]
fn disconnect_by_config() {
    if privileged() {
        check_disconnect(Via::Config);
    }
}

#[test]
fn disconnect_by_annotation() {
    if privileged() {
        check_disconnect(Via::Annotation);
    }
}

#[test]
fn unknown_annotation_refuses_the_container() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    let mut b = Bundle::new("kw-badpolicy", &d.socket, "echo STARTED > /tmp/started");
    b.annotate("io.keyward.response", "explode");
    let out = b.run();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        b.read("/tmp/started").is_none(),
        "the container ran under an unknown policy"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("explode") && err.contains("io.keyward.response"),
        "{err}"
    );
}
