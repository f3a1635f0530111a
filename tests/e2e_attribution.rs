//! Attribution a container cannot escape, end to end in real runc
//! containers.
//!
//! Strategy: a process decides how many parents and namespaces it has, so
//! the container it belongs to must come from what the kernel records
//! about it. Each test builds the hardest shape it can from inside a
//! privileged container (CAP_SYS_ADMIN) and checks that the alert names
//! the container's own OCI id:
//!
//! - the archiver runs under a chain of 20 shells inside a new pid and
//!   mount namespace: its cgroup still says which container it is in;
//! - the same, after the process moved itself out of its cgroup into the
//!   root of the unified hierarchy: its pid namespace is still a child of
//!   the container's, which the kernel bounds at 32 levels;
//! - two containers share one pid namespace, the second with a stricter
//!   policy: each archiver is judged under its own container's policy and
//!   named with its own id, not the last one registered.
//!
//! Each was checked to fail on the tree before cgroup attribution (the
//! archiver was treated as a host process, or judged as the other
//! container).

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A script that nests `$1` shells, each waiting for the next (so each is
/// a live parent), then runs the archiver.
const NEST: &str = "#!/bin/sh\nn=$1\nif [ \"$n\" -gt 0 ]; then\n  sh /nest.sh $((n - 1))\n  exit $?\nfi\n/usr/bin/tar czf /tmp/nested.tgz /root/.ssh/id_rsa && echo ARCHIVED\n";

fn privileged_bundle(prefix: &str, d: &Daemon, script: &str) -> Bundle {
    let mut b = Bundle::new(prefix, &d.socket, script);
    for set in ["bounding", "effective", "permitted"] {
        b.config["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(Value::from("CAP_SYS_ADMIN"));
    }
    let nest = b.rootfs.join("nest.sh");
    fs::write(&nest, NEST).unwrap();
    b
}

fn says(out: &std::process::Output, word: &str) {
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(word),
        "no {word}: {}",
        text(out)
    );
}

#[test]
fn an_archiver_under_twenty_shells_in_new_namespaces_is_still_its_containers() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    let b = privileged_bundle(
        "kw-nested",
        &d,
        "unshare -p -m -f sh /nest.sh 20 && echo NESTED",
    );
    let out = b.run();
    says(&out, "ARCHIVED");
    let a = d.wait_alert("nested archiver", |a| {
        files(a).iter().any(|f| f == "/root/.ssh/id_rsa")
    });
    assert_eq!(a["container"]["id"], b.id.as_str(), "{a:#}");
    assert_eq!(a["process"]["name"], "tar", "{a:#}");
}

#[test]
fn an_archiver_that_left_its_cgroup_is_found_by_its_pid_namespace() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("[response]\naction = \"deny\"\n");
    // Mount the unified hierarchy, move into its root cgroup (out of the
    // one the runtime made), then nest as above. The archive must not get
    // the key: the host's deny applies to this container.
    let script = "mkdir -p /mnt/cg && mount -t cgroup2 none /mnt/cg && echo $$ > /mnt/cg/cgroup.procs && \
                  grep -qx '0::/' /proc/self/cgroup && echo LEFT && \
                  unshare -p -m -f sh /nest.sh 20; echo EXITED";
    let b = privileged_bundle("kw-escaped", &d, script);
    let out = b.run();
    says(&out, "LEFT");
    says(&out, "EXITED");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ARCHIVED"),
        "the key was archived: {}",
        text(&out)
    );
    let a = d.wait_alert("escaped archiver", |a| {
        files(a).iter().any(|f| f == "/root/.ssh/id_rsa")
    });
    assert_eq!(a["container"]["id"], b.id.as_str(), "{a:#}");
    assert_eq!(a["keyward"]["response"]["action"], "deny", "{a:#}");
}

#[test]
fn containers_sharing_a_pid_namespace_keep_their_own_policy_and_id() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    // A archives once told to, then stays up (its init holds the shared
    // namespace: B dies with it).
    let wait_then = |out: &str| {
        format!(
            "while [ ! -e /tmp/go ]; do sleep 0.05; done; \
             if /usr/bin/tar cf /tmp/{out}.tar /root/.ssh/id_rsa 2>/dev/null; then echo LEAKED > /tmp/done; \
             else echo DENIED > /tmp/done; fi; sleep 60"
        )
    };
    let a = Bundle::new("kw-share-a", &d.socket, &wait_then("a"));
    let mut child_a = a.spawn();
    d.wait_registered(1);
    let pid_a = runc_pid(&a.id);
    // B joins A's pid namespace and asks for a stricter policy.
    let mut b = Bundle::new("kw-share-b", &d.socket, &wait_then("b"));
    b.annotate("io.keyward.response", "deny");
    let namespaces = b.config["linux"]["namespaces"].as_array_mut().unwrap();
    for ns in namespaces.iter_mut() {
        if ns["type"] == "pid" {
            ns["path"] = Value::String(format!("/proc/{pid_a}/ns/pid"));
        }
    }
    let mut child_b = b.spawn();
    d.wait_registered(2);
    let pid_b = runc_pid(&b.id);
    assert_eq!(
        fs::read_link(format!("/proc/{pid_a}/ns/pid")).unwrap(),
        fs::read_link(format!("/proc/{pid_b}/ns/pid")).unwrap(),
        "the two containers share one pid namespace"
    );
    // A first: registered before B, it must not be judged as B.
    fs::write(a.rootfs.join("tmp/go"), "").unwrap();
    wait_until(
        Duration::from_secs(20),
        || "A never archived".into(),
        || a.read("/tmp/done").is_some(),
    );
    fs::write(b.rootfs.join("tmp/go"), "").unwrap();
    wait_until(
        Duration::from_secs(20),
        || "B never archived".into(),
        || b.read("/tmp/done").is_some(),
    );
    let done = |x: &Bundle| {
        String::from_utf8_lossy(&x.read("/tmp/done").unwrap())
            .trim()
            .to_string()
    };
    assert_eq!(done(&a), "LEAKED", "A's policy is the host's alert");
    assert_eq!(done(&b), "DENIED", "B asked for deny");
    let alert_a = d.wait_alert("A's archiver", |x| {
        has_arg(x, "/tmp/a.tar") && !files(x).is_empty()
    });
    assert_eq!(alert_a["container"]["id"], a.id.as_str(), "{alert_a:#}");
    assert_eq!(alert_a["keyward"]["response"]["action"], "alert");
    let alert_b = d.wait_alert("B's archiver", |x| {
        has_arg(x, "/tmp/b.tar") && !files(x).is_empty()
    });
    assert_eq!(alert_b["container"]["id"], b.id.as_str(), "{alert_b:#}");
    assert_eq!(alert_b["keyward"]["response"]["action"], "deny");
    stop_wrapped(&mut child_b);
    stop_wrapped(&mut child_a);
}

#[test]
fn a_container_in_the_hosts_pid_namespace_is_not_blamed_for_host_processes() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("[response]\naction = \"deny\"\n");
    let script = "while [ ! -e /tmp/go ]; do sleep 0.05; done; \
                  if /usr/bin/tar cf /tmp/in.tar /root/.ssh/id_rsa 2>/dev/null; then echo LEAKED > /tmp/done; \
                  else echo DENIED > /tmp/done; fi; sleep 60";
    let mut b = Bundle::new("kw-hostpid", &d.socket, script);
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|ns| ns["type"] != "pid");
    let mut child = b.spawn();
    d.wait_registered(1);
    // The host's backup of the container's files is the host's own: it
    // shares the pid namespace the container was given, nothing else.
    let key = b.rootfs.join("root/.ssh/id_rsa");
    let backup = b.dir.join("host-backup.tar");
    let out = std::process::Command::new("timeout")
        .args(["30", "tar", "cf"])
        .arg(&backup)
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the host's tar was refused: {}",
        text(&out)
    );
    // The container's own archiver is still the container's, and denied.
    fs::write(b.rootfs.join("tmp/go"), "").unwrap();
    wait_until(
        Duration::from_secs(20),
        || "the container never archived".into(),
        || b.read("/tmp/done").is_some(),
    );
    assert_eq!(
        String::from_utf8_lossy(&b.read("/tmp/done").unwrap()).trim(),
        "DENIED"
    );
    let a = d.wait_alert("in-container archiver", |x| has_arg(x, "/tmp/in.tar"));
    assert_eq!(a["container"]["id"], b.id.as_str(), "{a:#}");
    assert!(
        !d.alerts()
            .iter()
            .any(|x| has_arg(x, backup.to_str().unwrap())),
        "the host's tar was alerted as the container's: {:#?}",
        d.alerts()
    );
    stop_wrapped(&mut child);
}

/// The host pid of a running container's init, from `runc state`.
fn runc_pid(id: &str) -> i32 {
    let out = std::process::Command::new("runc")
        .args(["state", id])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("runc state {id}: {e}: {}", text(&out)));
    v["pid"].as_i64().unwrap() as i32
}
