//! Reliability and hostile input, end to end.
//!
//! Strategy: a real daemon and real runc containers, attacked the way
//! issue 5 lists: the daemon restarted and SIGKILLed while a container runs
//! (it must be watched again after the restart), a daemon that never
//! answers (the hook must give up before the OCI hook timeout), malformed
//! hook input, bogus registrations and socket clients, non-UTF-8 and very
//! long file names, a 100k-argument argv, 50 containers at once, and a
//! broken config on SIGHUP. After each attack the daemon must still serve
//! and still detect. A flood of repeat alerts cannot hide a new credential,
//! and the rate-limit summary lists what it held, in syslog too (this one
//! waits for the 60 s window to close). An archiver fed a file list slowly
//! alerts within a second while it still runs, then updates that one run
//! (one id, seq 1, 2, ...) until its close.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use keyward::hook::protocol::{Registration, Reply, Request};

fn touch(b: &Bundle, path: &str) {
    std::fs::write(b.rootfs.join(path.trim_start_matches('/')), "go").unwrap();
}

#[test]
fn restart_and_crash_keep_watching_running_containers() {
    if !privileged() {
        return;
    }
    let mut d = Daemon::start("");
    let script = "until [ -e /tmp/go1 ]; do sleep 0.05; done; /usr/bin/tar cf /tmp/1.tar /root/.ssh/id_rsa;
        until [ -e /tmp/go2 ]; do sleep 0.05; done; /usr/bin/tar cf /tmp/2.tar /root/.aws/credentials; sleep 0.5";
    let b = Bundle::new("kw-restart", &d.socket, script);
    let mut child = b.spawn();
    // A second, short-lived container that exits while the daemon is down.
    let short = Bundle::new(
        "kw-short",
        &d.socket,
        "until [ -e /tmp/go ]; do sleep 0.05; done",
    );
    let mut short_child = short.spawn();
    d.wait_registered(2);

    // Graceful restart: the registry on disk brings the container back.
    d.stop();
    d.spawn();
    assert!(
        d.log_text()
            .contains(&format!("restored container {}", b.id)),
        "{}",
        d.log_text()
    );
    touch(&b, "/tmp/go1");
    let a = d.wait_alert("after restart", |a| {
        files(a).contains(&"/root/.ssh/id_rsa".to_string())
    });
    assert_eq!(a["container"]["id"], b.id.as_str());

    // Crash: SIGKILL, then the short container exits while nobody watches.
    d.crash();
    touch(&short, "/tmp/go");
    let _ = short_child.wait();
    d.spawn();
    let log = d.log_text();
    assert!(
        log.contains(&format!("restored container {}", b.id)),
        "{log}"
    );
    assert!(
        log.contains(&format!("container {} (pid", short.id)) && log.contains("is gone"),
        "{log}"
    );
    assert_eq!(d.status()["containers"], 1);
    touch(&b, "/tmp/go2");
    let a = d.wait_alert("after crash", |a| {
        files(a).contains(&"/root/.aws/credentials".to_string())
    });
    assert_eq!(a["container"]["id"], b.id.as_str());
    let _ = child.wait();
}

/// A minimal state JSON for a hook run, with a real bundle dir.
fn state_json(dir: &std::path::Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#,
    )
    .unwrap();
    format!(
        r#"{{"ociVersion":"1.0.2","id":"silent","status":"creating","pid":{},"bundle":"{}"}}"#,
        std::process::id(),
        dir.display()
    )
}

fn run_hook(args: &[&str], stdin: &[u8]) -> (std::process::Output, Duration) {
    let t0 = Instant::now();
    let mut c = Command::new(KEYWARD)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = c.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = c.wait_with_output().unwrap();
    let _ = writer.join();
    (out, t0.elapsed())
}

#[test]
fn hook_gives_up_on_a_silent_daemon_before_the_oci_timeout() {
    let dir = std::env::temp_dir().join(unique("kw-silent"));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("silent.sock");
    let l = UnixListener::bind(&sock).unwrap();
    // Accept and never answer.
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().take(2) {
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(12));
    });
    let state = state_json(&dir.join("bundle"));
    let s = sock.to_str().unwrap();
    let (out, took) = run_hook(&["hook", "--socket", s], state.as_bytes());
    assert!(!out.status.success());
    assert!(
        took < Duration::from_secs(10),
        "hook took {took:?}, the hooks.d timeout is 10 s"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("keyward") && err.contains(s), "{err}");
    let (out, took) = run_hook(&["hook", "--fail-open", "--socket", s], state.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning"));
    drop(holder);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hook_rejects_malformed_truncated_and_oversized_state() {
    let cases: [(&str, Vec<u8>); 4] = [
        ("malformed", b"{not json at all".to_vec()),
        (
            "truncated",
            br#"{"ociVersion":"1.0.2","id":"x","status":"creat"#.to_vec(),
        ),
        ("oversized", vec![b' '; 2 * 1024 * 1024]),
        ("binary", vec![0xff, 0xfe, 0x00, 0x01]),
    ];
    for (name, input) in cases {
        let (out, took) = run_hook(&["hook", "--socket", "/nonexistent/keyward.sock"], &input);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(took < Duration::from_secs(5), "{name}: {took:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("keyward: ") && err.contains("OCI state"),
            "{name}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
    }
}

fn register(d: &Daemon, pid: i32) -> Reply {
    let req = Request::Register(Registration {
        id: format!("bogus-{pid}"),
        pid,
        bundle: "/nonexistent".into(),
        rootfs: "/nonexistent/rootfs".into(),
        annotations: Default::default(),
    });
    keyward::hook::client::call(&d.socket, &req, Duration::from_secs(5)).unwrap()
}

#[test]
fn bogus_registrations_and_clients_are_refused_and_the_daemon_serves_on() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    let me = std::process::id() as i32;
    for (pid, why) in [
        (999_999_999, "vanished"),
        (1, "pid 1"),
        (d.pid(), "daemon itself"),
        (me, "host's mount namespace"),
    ] {
        match register(&d, pid) {
            Reply::Error { message } => assert!(message.contains(why), "pid {pid}: {message}"),
            other => panic!("pid {pid} was accepted: {other:?}"),
        }
    }
    // Garbage, an oversized line, and silent clients.
    let mut g = UnixStream::connect(&d.socket).unwrap();
    g.write_all(b"\x00\xff{{{garbage\n").unwrap();
    let mut reply = String::new();
    g.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("bad request"), "{reply}");
    let mut big = UnixStream::connect(&d.socket).unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..20 {
        if big.write_all(&chunk).is_err() {
            break;
        }
    }
    let mut reply = String::new();
    let _ = big.read_to_string(&mut reply);
    assert!(reply.contains("longer than"), "{reply}");
    let silent: Vec<UnixStream> = (0..10)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    let t0 = Instant::now();
    assert_eq!(d.status()["reply"], "status");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "slow clients held up status: {:?}",
        t0.elapsed()
    );
    drop(silent);
    // A non-root peer is refused by SO_PEERCRED even when the socket mode
    // would let it connect.
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    use std::os::unix::process::CommandExt;
    let out = Command::new(KEYWARD)
        .args(["status", "--socket"])
        .arg(&d.socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("uid 65534") && err.contains("not root"),
        "{err}"
    );
    // Still detecting.
    let b = Bundle::new(
        "kw-after-abuse",
        &d.socket,
        "/usr/bin/tar cf /tmp/x.tar /root/.ssh/id_rsa",
    );
    let out = b.run();
    assert!(out.status.success(), "{}", text(&out));
    d.wait_alert("after abuse", |a| a["container"]["id"] == b.id.as_str());
}

#[test]
fn non_utf8_and_very_long_names_and_huge_argv_are_handled() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    let long = "u".repeat(200);
    let script = "/usr/bin/tar cf /tmp/h.tar /home
         set -- $(seq 1 100000)
         /usr/bin/tar cf /tmp/big.tar \"$@\" /root/.ssh/id_ed25519 2>/dev/null; echo done";
    let b = Bundle::new("kw-names", &d.socket, script);
    // Planted before the container starts, so registration must expand
    // `/home/*` over a non-UTF-8 and a 200-byte directory name.
    use std::os::unix::ffi::OsStrExt;
    let odd = b
        .rootfs
        .join("home")
        .join(std::ffi::OsStr::from_bytes(b"\xff\xfe"));
    for home in [odd, b.rootfs.join("home").join(&long)] {
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::write(home.join(".ssh/id_rsa"), "k").unwrap();
    }
    let out = b.run();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("done"),
        "{}",
        text(&out)
    );
    let a = d.wait_alert("non-UTF-8 home", |a| {
        files(a)
            .iter()
            .any(|f| f.starts_with("/home/\u{fffd}\u{fffd}/.ssh/id_rsa"))
    });
    assert!(
        files(&a)
            .iter()
            .any(|f| f == &format!("/home/{long}/.ssh/id_rsa")),
        "long name missing: {:?}",
        files(&a)
    );
    let big = d.wait_alert("100k argv", |a| {
        files(a).contains(&"/root/.ssh/id_ed25519".to_string())
    });
    assert!(
        big["process"]["args_count"].as_u64().unwrap() > 100_000,
        "{}",
        big["process"]["args_count"]
    );
    assert!(big["process"]["args"].as_array().unwrap().len() <= 1024);
    // The seed rule saw the credential path behind 100k filler arguments.
    let hit = &big["keyward"]["exec_match"]["paths"][0];
    assert_eq!(hit["arg"], "/root/.ssh/id_ed25519", "{big:#}");
    assert!(hit["index"].as_u64().unwrap() > 100_000, "{hit}");
    assert_eq!(d.status()["stats"]["panics"], 0);
}

#[test]
fn fifty_containers_at_once_are_all_watched() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    let bundles: Vec<Bundle> = (0..50)
        .map(|_| {
            Bundle::new(
                "kw-many",
                &d.socket,
                "/usr/bin/tar cf /tmp/m.tar /root/.ssh/id_rsa",
            )
        })
        .collect();
    let handles: Vec<_> = bundles.iter().map(Bundle::spawn).collect();
    for (b, h) in bundles.iter().zip(handles) {
        let out = h.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            b.id,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The threads that answer permission events run real-time: at nice
    // -10, fifty starts on two loaded cores kept them off the CPU past the
    // decision deadline (src/answer/events.rs, `answer_priority`).
    assert_eq!(
        d.status()["stats"]["answer_scheduling"],
        "realtime",
        "{}",
        d.log_text()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Health alerts (a decision released at its deadline on a loaded
        // host, say) name no container: the archivers' alerts are judged
        // here, and a health alert that hid one would leave it missing.
        let alerts: Vec<serde_json::Value> = d
            .alerts()
            .into_iter()
            .filter(|a| a["event"]["dataset"] != "keyward.health")
            .collect();
        let missing: Vec<&str> = bundles
            .iter()
            .filter(|b| !alerts.iter().any(|a| a["container"]["id"] == b.id.as_str()))
            .map(|b| b.id.as_str())
            .collect();
        if missing.is_empty() {
            // Every alert names the right container (no cross-attribution),
            // one run each: 50 starts at once on two cores can slow a tar
            // between its exec (the seed rule's first alert) and its open,
            // which then comes as an update of the same run.
            let mut runs: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
                Default::default();
            for a in &alerts {
                runs.entry(a["container"]["id"].as_str().unwrap().to_string())
                    .or_default()
                    .insert(a["keyward"]["run"]["id"].to_string());
            }
            assert_eq!(runs.len(), 50, "{alerts:#?}");
            assert!(
                runs.values().all(|r| r.len() == 1),
                "one run per container: {runs:#?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no alert for {} containers: {missing:?}",
            missing.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every container dropped when its init exited.
    d.wait_containers(0, Duration::from_secs(10));
    assert_eq!(d.status()["marked_inodes"], 0, "marks leaked");
}

#[test]
fn sighup_with_a_broken_config_keeps_the_old_one_and_says_why() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    let good = std::fs::read_to_string(&d.config).unwrap();
    d.reload_with(&format!("{good}\n[response]\nacton = \"deny\"\n"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let errors = loop {
        let s = d.status();
        let errs = s["config_errors"].as_array().cloned().unwrap_or_default();
        if !errs.is_empty() {
            break errs;
        }
        assert!(Instant::now() < deadline, "reload error never reported");
        std::thread::sleep(Duration::from_millis(50));
    };
    let msg = errors[0].as_str().unwrap();
    assert!(
        msg.contains("acton") && msg.contains("keeping the previous config"),
        "{msg}"
    );
    assert_eq!(d.status()["default_action"], "alert");
    // The old config still works.
    let b = Bundle::new(
        "kw-hup",
        &d.socket,
        "/usr/bin/tar cf /tmp/x.tar /etc/shadow",
    );
    assert!(b.run().status.success());
    let a = d.wait_alert("after bad reload", |a| {
        a["container"]["id"] == b.id.as_str()
    });
    assert_eq!(a["keyward"]["response"]["action"], "alert");
    // A fixed config reloads and clears the error.
    d.reload_with(&format!("{good}\n[response]\naction = \"deny\"\n"));
    wait_until(
        Duration::from_secs(5),
        || "good reload not applied".into(),
        || d.status()["default_action"] == "deny",
    );
    assert_eq!(d.status()["config_errors"].as_array().unwrap().len(), 0);
}

#[test]
fn container_symlinks_never_lead_the_daemon_to_host_files() {
    if !privileged() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let d = Daemon::start("");
    let b = Bundle::new("kw-symlink", &d.socket, "sleep 2");
    // Symlinks that escape the rootfs if resolved naively from the host:
    // absolute, and climbing with '..'.
    let r = &b.rootfs;
    std::fs::create_dir_all(r.join("home/evil")).unwrap();
    std::os::unix::fs::symlink("/../../../../../../etc", r.join("home/evil/.ssh")).unwrap();
    std::fs::remove_dir_all(r.join("root/.aws")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../../etc", r.join("root/.aws")).unwrap();
    std::fs::remove_file(r.join("etc/gshadow")).unwrap();
    std::os::unix::fs::symlink("/proc/1/root/etc/shadow", r.join("etc/gshadow")).unwrap();
    let mut child = b.spawn();
    d.wait_registered(1);
    let marked = d.marked_inodes();
    let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
    assert!(
        marked.contains(&ino(&r.join("etc/shadow"))),
        "the container's own shadow must be marked"
    );
    for host in ["/etc", "/etc/shadow", "/etc/passwd", "/etc/group"] {
        assert!(
            !marked.contains(&ino(std::path::Path::new(host))),
            "host {host} is marked"
        );
    }
    let _ = child.wait();
}

#[test]
fn an_exited_container_is_dropped_without_poststop_and_poststop_still_works() {
    if !privileged() {
        return;
    }
    // The shipped hooks.d file registers at createRuntime only: the
    // daemon follows each init with a pidfd and drops the container when
    // it exits. Its log line says which path dropped it ("exited (init pid
    // N)" is the pidfd path; the 2 s liveness sweep says "dropping it").
    // A config that still runs the hook at poststop keeps working: the
    // second deregistration finds nothing and the hook exits 0.
    let d = Daemon::start("");
    let b = Bundle::new("kw-noposts", &d.socket, "sleep 0.3");
    b.run_ok();
    let dropped = format!("container {} exited (init pid", b.id);
    wait_until(
        Duration::from_secs(10),
        || format!("no pidfd drop: {}", d.log_text()),
        || d.log_text().contains(&dropped),
    );
    assert_eq!(d.status()["containers"], 0);
    assert_eq!(d.status()["marked_inodes"], 0, "marks leaked");
    // In the kernel too: permission marks, the create group's directory
    // marks and the exec group's ignore marks all went with it.
    assert_eq!(d.marked_inodes(), Vec::<u64>::new(), "kernel marks leaked");

    let mut b = Bundle::new("kw-posts", &d.socket, "sleep 0.3");
    b.poststop();
    b.run_ok();
    d.wait_containers(0, Duration::from_secs(10));
    assert!(
        d.log_text()
            .contains(&format!("stopped watching container {}", b.id)),
        "{}",
        d.log_text()
    );
    assert_eq!(d.status()["marked_inodes"], 0, "marks leaked");
    assert_eq!(d.marked_inodes(), Vec::<u64>::new(), "kernel marks leaked");
}

#[test]
fn sigterm_while_containers_exit_stops_cleanly() {
    if !privileged() {
        return;
    }
    // Shutdown has an order: deregistering a container reopens its marked
    // credential files, so the threads that do that must stop before the
    // permission loop that answers those opens. The other order hung the
    // daemon at exit (found in the bench). Twenty containers end at about
    // the same moment as the SIGTERM; `stop` fails the test unless the
    // daemon exits on SIGTERM alone.
    let mut d = Daemon::start("");
    let bundles: Vec<Bundle> = (0..20)
        .map(|_| Bundle::new("kw-termexit", &d.socket, "sleep 3"))
        .collect();
    let children: Vec<_> = bundles.iter().map(Bundle::spawn).collect();
    d.wait_registered(20);
    // The last one started just now, the first up to a few seconds ago:
    // their exits spread around this moment.
    std::thread::sleep(Duration::from_millis(2900));
    d.stop();
    assert!(
        d.log_text().contains("keyward: stopped"),
        "{}",
        d.log_text()
    );
    for mut c in children {
        let _ = c.wait();
    }
}

#[test]
fn marks_on_a_shared_rootfs_stay_until_its_last_container_goes() {
    if !privileged() {
        return;
    }
    // Two containers on one rootfs directory (plain runc bundles can share
    // one) hold the same inodes' marks: permission marks on the credential
    // files and the create group's directory marks. The first to go must
    // leave the other's marks in the kernel; the last takes them all.
    let d = Daemon::start("");
    let long = Bundle::new("kw-share-a", &d.socket, "sleep 5");
    let mut short = Bundle::new("kw-share-b", &d.socket, "sleep 0.3");
    short.config["root"]["path"] = serde_json::Value::String(long.rootfs.display().to_string());
    let mut child = long.spawn();
    d.wait_registered(1);
    let mut held = d.marked_inodes();
    held.sort_unstable();
    assert!(!held.is_empty());
    short.run_ok();
    d.wait_containers(1, Duration::from_secs(10));
    let mut left = d.marked_inodes();
    left.sort_unstable();
    assert_eq!(left, held, "the remaining container lost marks");
    let _ = child.wait();
    d.wait_containers(0, Duration::from_secs(10));
    assert_eq!(d.marked_inodes(), Vec::<u64>::new(), "kernel marks leaked");
}

#[test]
fn an_overlay_over_another_containers_marked_rootfs_never_holds_the_daemon() {
    if !privileged() {
        return;
    }
    // A plain-directory container's credential files carry permission
    // marks on the real inodes. A second container runs on an overlay
    // whose lower layer is that directory. When the daemon reads the
    // event of an open through the overlay, the kernel opens the overlay
    // file for the event's fd, overlayfs opens the backing file, and that
    // open is reported to the daemon as its own: the permission thread
    // waited on itself, every later opener of a marked file hung, and
    // registrations with them (seen with a churning neighbour: every
    // other container's hook timed out). Now a rescue reader answers the
    // daemon's own event.
    let d = Daemon::start("");
    let plain = Bundle::new(
        "kw-lower",
        &d.socket,
        "until [ -e /tmp/go ]; do sleep 0.05; done",
    );
    let mut plain_child = plain.spawn();
    d.wait_registered(1);
    let mut over = Bundle::new(
        "kw-over",
        &d.socket,
        "timeout 10 cat /root/.ssh/id_rsa >/dev/null && echo read-ok;
         timeout 10 /usr/bin/tar cf /tmp/k.tar /root/.aws/credentials 2>/dev/null; echo tar-done",
    );
    over.on_overlay_of(&plain.rootfs);
    let out = over.run_saying("tar-done");
    assert!(text(&out).contains("read-ok"), "{}", text(&out));
    d.wait_alert("the overlay container's tar", |a| {
        a["container"]["id"] == over.id.as_str()
            && files(a).iter().any(|f| f.contains(".aws/credentials"))
    });
    // The daemon still answers: another container registers and its
    // archiver is caught.
    let third = Bundle::new(
        "kw-after",
        &d.socket,
        "/usr/bin/tar cf /tmp/s.tar /etc/shadow; echo after",
    );
    third.run_saying("after");
    d.wait_alert("the third container's tar", |a| {
        a["container"]["id"] == third.id.as_str()
    });
    let rescues = d.status()["stats"]["rescues"].as_u64().unwrap_or(0);
    assert!(rescues >= 1, "no rescue reader ran: {}", d.status());
    touch(&plain, "/tmp/go");
    let _ = plain_child.wait();
}

/// A neighbour that makes and removes `homes` homes, each with a
/// `.ssh/authorized_keys`, over and over until `/tmp/stop` exists, on an
/// overlay of its own; every tenth turn it also runs `/usr/local/bin/late`,
/// which makes a new user's key and archives it a second later. (A script
/// of its own: the loop's `sh -c` line names no archiver.)
fn churner(d: &Daemon, homes: u32) -> Bundle {
    let script = format!(
        "t=0; while [ ! -e /tmp/stop ]; do t=$((t+1)); i=0
           while [ $i -lt {homes} ]; do mkdir -p /home/u$i/.ssh; echo k >/home/u$i/.ssh/authorized_keys; i=$((i+1)); done
           if [ $((t % 10)) = 1 ]; then /usr/local/bin/late $t; fi
           rm -rf /home/u*; echo $t >/tmp/turns
         done"
    );
    let mut b = Bundle::new("kw-churn", &d.socket, &script);
    let late = b.rootfs.join("usr/local/bin/late");
    std::fs::create_dir_all(late.parent().unwrap()).unwrap();
    std::fs::write(
        &late,
        "#!/bin/sh\nmkdir -p /home/late$1/.ssh && echo LATE >/home/late$1/.ssh/id_rsa && sleep 1 && /usr/bin/tar cf /tmp/late$1.tar /home/late$1/.ssh/id_rsa\n",
    )
    .unwrap();
    std::fs::set_permissions(&late, std::fs::Permissions::from_mode(0o755)).unwrap();
    b.on_overlay();
    b
}

#[test]
fn a_churning_neighbour_neither_blocks_starts_nor_hides_an_archiver() {
    if !privileged() {
        return;
    }
    // One container churns its credential directories (300 homes made
    // and removed in a loop, as issue 16 describes with 1,000) while
    // others start one after another and archive a key. Every start
    // registers (a hook that timed out fails the start), every archiver
    // is caught and named with its own container, and the churner's own
    // fresh keys, archived a second after they exist, are caught too,
    // named by their own paths (not a removed file's whose inode number
    // they took). Its
    // creates are marked for the entries they made (no directory unknown)
    // and pruned after. How long the starts take is the bench's to say
    // (`PHASES=churn bash packaging/bench.sh`), not a timed test's.
    let d = Daemon::start("");
    let churn = churner(&d, 300);
    let mut child = churn.spawn();
    d.wait_registered(1);
    wait_until(
        Duration::from_secs(60),
        || "the churner made no turn".into(),
        || churn.read("/tmp/turns").is_some(),
    );
    for n in 0..6 {
        let b = Bundle::new(
            "kw-beside",
            &d.socket,
            "/usr/bin/tar cf /tmp/k.tar /root/.ssh/id_rsa /root/.aws/credentials; echo archived",
        );
        b.run_saying("archived");
        d.wait_alert(&format!("start {n} beside the churner"), |a| {
            a["container"]["id"] == b.id.as_str()
                && files(a).iter().any(|f| f == "/root/.ssh/id_rsa")
        });
    }
    wait_until(
        Duration::from_secs(90),
        || "the churner did not reach its 11th turn".into(),
        || {
            churn
                .read("/tmp/turns")
                .and_then(|t| String::from_utf8_lossy(&t).trim().parse::<u32>().ok())
                .is_some_and(|t| t >= 11)
        },
    );
    for t in [1, 11] {
        let archive = format!("/tmp/late{t}.tar");
        let key = format!("/home/late{t}/.ssh/id_rsa");
        let a = d.wait_alert(&format!("the churner's fresh key {key}"), |a| {
            has_arg(a, &archive)
        });
        assert_eq!(a["container"]["id"], churn.id.as_str());
        assert!(files(&a).contains(&key), "{a:#}");
    }
    std::fs::write(churn.rootfs.join("tmp/stop"), "").unwrap();
    let _ = child.wait();
    let stats = &d.status()["stats"];
    assert!(
        stats["creates_incremental"].as_u64().unwrap_or(0) >= 600,
        "{stats:#}"
    );
    assert_eq!(stats["creates_unresolved"], 0, "{stats:#}");
    assert!(stats["prunes"].as_u64().unwrap_or(0) >= 1, "{stats:#}");
    assert_eq!(stats["deadline_releases"], 0, "{stats:#}");
}

#[test]
fn a_container_past_its_bounds_is_named_in_a_health_alert_and_others_go_on() {
    if !privileged() {
        return;
    }
    // Low bounds: 64 marks, 50 creates a second. A container that makes
    // 120 homes with keys reaches both; each is counted, and a health
    // alert names the container and the bound, in the JSON file and in
    // syslog. Another container, with its own budget, is still caught.
    let d = Daemon::start("[limits]\nmarks_per_container = 64\ncreates_per_second = 50\n");
    let busy = Bundle::new(
        "kw-bounded",
        &d.socket,
        "i=0; while [ $i -lt 120 ]; do mkdir -p /home/b$i/.ssh; echo k >/home/b$i/.ssh/id_rsa; i=$((i+1)); done; sleep 1; echo made",
    );
    busy.run_saying("made");
    for bound in ["marks_per_container", "creates_per_second"] {
        wait_until(
            Duration::from_secs(25),
            || format!("no health alert for {bound}: {:#?}", d.alerts()),
            || {
                d.alerts().iter().any(|a| {
                    a["rule"]["id"] == "keyward.health.bound-reached"
                        && a["container"]["id"] == busy.id.as_str()
                        && a["keyward"]["health"]["bound"] == bound
                        && a["keyward"]["health"]["times"].as_u64() >= Some(1)
                })
            },
        );
    }
    d.syslog.wait_for("(the bound alert)", |m| {
        m.contains(&busy.id) && m.contains("reached its bound marks_per_container")
    });
    let bounds = &d.status()["stats"]["bounds"];
    assert!(
        bounds["marks_per_container"].as_u64() >= Some(1),
        "{bounds:#}"
    );
    assert!(
        bounds["creates_per_second"].as_u64() >= Some(1),
        "{bounds:#}"
    );
    let other = Bundle::new(
        "kw-unbounded",
        &d.socket,
        "/usr/bin/tar cf /tmp/k.tar /root/.ssh/id_rsa; echo archived",
    );
    other.run_saying("archived");
    d.wait_alert("the other container's tar", |a| {
        a["container"]["id"] == other.id.as_str()
    });
}

#[test]
fn a_flood_of_repeats_cannot_hide_a_new_credential_and_the_summary_reaches_syslog() {
    if !privileged() {
        return;
    }
    // Five alerts a minute. 70 archiver runs over known_hosts fill the
    // window; the theft of another credential right after must still get
    // its own alert, and the summary (at the window's close, 60 s after
    // the first alert) must list what was held, in the JSON file and in
    // syslog.
    let d = Daemon::start_with_alerts("", "rate_limit_per_minute = 5");
    let script = "i=0; while [ $i -lt 70 ]; do /usr/bin/tar cf /tmp/kh.tar /root/.ssh/known_hosts; i=$((i+1)); done
        /usr/bin/zip -q /tmp/x.zip /root/.aws/credentials; echo done";
    let b = Bundle::new("kw-flood", &d.socket, script);
    b.run_saying("done");
    let a = d.wait_alert("the new credential", |a| {
        files(a).contains(&"/root/.aws/credentials".to_string())
    });
    assert_eq!(a["container"]["id"], b.id.as_str());
    assert_eq!(a["process"]["name"], "zip", "{a:#}");
    let summary = || {
        d.alerts()
            .into_iter()
            .find(|x| x["rule"]["id"] == "keyward.rate-limit")
    };
    wait_until(
        std::time::Duration::from_secs(80),
        || format!("no rate-limit summary: {:#?}", d.alerts().len()),
        || summary().is_some(),
    );
    let s = summary().unwrap();
    assert_eq!(s["container"]["id"], b.id.as_str());
    assert!(
        s["keyward"]["suppressed"].as_u64().unwrap_or(0) >= 60,
        "{s:#}"
    );
    let listed = s["keyward"]["files"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "/root/.ssh/known_hosts"));
    assert!(listed, "{s:#}");
    assert!(
        s["keyward"]["processes"]["tar"].as_u64().unwrap_or(0) >= 60,
        "{s:#}"
    );
    d.syslog.wait_for("(the rate-limit summary)", |m| {
        m.contains("keyward.rate-limit") && m.contains(b.id.as_str())
    });
}

#[test]
fn a_slow_file_list_alerts_within_a_second_then_updates_one_run_until_it_closes() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    // Twenty keys, fed to tar one every 150 ms: the run never goes quiet
    // for the 200 ms window, and lasts about 3 s.
    let script = "sleep 0.3; (echo > /tmp/first; for i in $(seq 1 20); do echo /home/u$i/.ssh/id_rsa; sleep 0.15; done) \
                  | /usr/bin/tar cf /tmp/slow.tar -T - && echo > /tmp/tar-done; sleep 1; echo FED";
    let b = Bundle::new("kw-slowrun", &d.socket, script);
    for i in 1..=20 {
        let dir = b.rootfs.join(format!("home/u{i}/.ssh"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("id_rsa"), format!("KEY-{i}")).unwrap();
    }
    let mut child = b.spawn();
    let run_of = |a: &serde_json::Value| {
        a["container"]["id"] == b.id.as_str() && has_arg(a, "/tmp/slow.tar")
    };
    wait_until(
        Duration::from_secs(20),
        || format!("the feeder never started: {}", d.log_text()),
        || b.read("/tmp/first").is_some(),
    );
    let fed = Instant::now();
    let first = loop {
        if let Some(a) = d.alerts().into_iter().find(|a| run_of(a)) {
            break a;
        }
        assert!(
            fed.elapsed() < Duration::from_secs(10),
            "no alert in 10 s: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let after = fed.elapsed();
    assert!(
        b.read("/tmp/tar-done").is_none(),
        "the first alert came only after tar finished ({after:?})"
    );
    // 1 s, plus the feeder's first 150 ms and the alert thread's tick.
    assert!(
        after < Duration::from_millis(1600),
        "first alert after {after:?}"
    );
    assert_eq!(first["keyward"]["run"]["seq"], 1, "{first:#}");
    assert_eq!(first["keyward"]["run"]["final"], false, "{first:#}");
    let id = first["keyward"]["run"]["id"].as_str().unwrap().to_string();
    // The run goes on in updates and closes once tar is gone.
    wait_until(
        Duration::from_secs(20),
        || format!("the run never closed: {:#?}", d.alerts()),
        || {
            d.alerts()
                .iter()
                .any(|a| run_of(a) && a["keyward"]["run"]["final"] == true)
        },
    );
    let run: Vec<serde_json::Value> = d.alerts().into_iter().filter(|a| run_of(a)).collect();
    eprintln!(
        "first alert {after:?} after the first name, {} alerts in the run",
        run.len()
    );
    assert!(
        run.len() >= 3,
        "a first alert, updates and a close: {run:#?}"
    );
    let mut added = std::collections::BTreeSet::new();
    for (i, a) in run.iter().enumerate() {
        assert_eq!(a["keyward"]["run"]["id"], id.as_str(), "one run id: {a:#}");
        assert_eq!(
            a["keyward"]["run"]["seq"],
            i as u64 + 1,
            "in sequence: {run:#?}"
        );
        assert_eq!(a["keyward"]["run"]["final"], i + 1 == run.len(), "{a:#}");
        for f in a["keyward"]["run"]["files_added"].as_array().unwrap() {
            assert!(
                added.insert(f.as_str().unwrap().to_string()),
                "{f} added twice"
            );
        }
    }
    assert_eq!(added.len(), 20, "every key is added once: {added:?}");
    let last = run.last().unwrap();
    assert_eq!(last["keyward"]["files"].as_array().unwrap().len(), 20);
    d.syslog.wait_for("(the run's close)", |m| {
        m.contains(&id) && m.contains("run closed")
    });
    let _ = child.wait();
}

#[test]
fn a_stalled_decision_is_released_and_the_health_alert_reaches_syslog() {
    if !privileged() {
        return;
    }
    // Exceptions pinned to a digest no program has: judging tar's open
    // hashes its executable and its parent's, each padded here to 15 MB
    // (just under the 16 MiB keyward hashes at all), on the decision
    // thread, past a 10 ms deadline. The watchdog must answer the open,
    // and say so to the JSON file and to syslog.
    let zeros = "0".repeat(64);
    let d = Daemon::start_with_daemon(
        &format!(
            "[[exceptions]]\nreason = \"pinned tar\"\nexecutable_sha256 = [\"{zeros}\"]\n\
             [[exceptions]]\nreason = \"pinned shell\"\nparent_executable_sha256 = [\"{zeros}\"]\n"
        ),
        "decision_deadline_ms = 10",
    );
    let script = "echo /root/.ssh/id_rsa | /usr/bin/tar cf /tmp/s.tar -T - && echo ARCHIVED";
    let mut b = Bundle::new("kw-stall", &d.socket, script);
    // The shell that runs tar: busybox, padded, still named sh.
    std::fs::create_dir_all(b.rootfs.join("opt/pad")).unwrap();
    std::fs::copy(b.rootfs.join("bin/busybox"), b.rootfs.join("opt/pad/sh")).unwrap();
    b.config["process"]["args"][0] = serde_json::Value::from("/opt/pad/sh");
    for exe in ["usr/bin/tar", "opt/pad/sh"] {
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(b.rootfs.join(exe))
            .unwrap();
        f.set_len(15 * 1024 * 1024).unwrap();
    }
    let out = b.run();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ARCHIVED"),
        "{}",
        text(&out)
    );
    wait_until(
        Duration::from_secs(20),
        || format!("no health alert in the JSON file: {:#?}", d.alerts()),
        || {
            d.alerts().iter().any(|a| {
                a["event"]["dataset"] == "keyward.health"
                    && a["keyward"]["health"]["deadline_releases"].as_u64() >= Some(1)
            })
        },
    );
    d.syslog.wait_for("(the health alert)", |m| {
        m.contains("coverage degraded") && m.contains("stalled decisions released")
    });
    assert!(d.status()["stats"]["deadline_releases"].as_u64() >= Some(1));
    // Still answering: the next container's archiver alerts.
    let b2 = Bundle::new(
        "kw-after-stall",
        &d.socket,
        "/usr/bin/tar cf /tmp/t.tar /etc/shadow; echo done",
    );
    b2.run_saying("done");
    d.wait_alert("after the stall", |a| {
        a["container"]["id"] == b2.id.as_str()
    });
}

#[test]
fn a_root_process_in_a_container_that_sees_the_control_socket_is_refused() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    // The victim: watched, running.
    let victim = Bundle::new("kw-victim", &d.socket, "sleep 30");
    let mut victim_run = victim.spawn();
    d.wait_registered(1);
    // The attacker: the daemon's directory bind-mounted in by mistake,
    // keyward's own binary inside, root.
    let script = format!(
        "keyward status --json --socket /kw/keyward.sock; echo \"status rc=$?\"
         echo '{{\"ociVersion\":\"1.0.2\",\"id\":\"{}\",\"status\":\"stopped\",\"bundle\":\"/\"}}' | keyward hook --socket /kw/keyward.sock; echo \"deregister rc=$?\"",
        victim.id
    );
    let mut attacker = Bundle::new("kw-attacker", &d.socket, &script);
    copy_with_libs(KEYWARD, &attacker.rootfs, "/usr/bin/keyward");
    attacker.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"destination": "/kw", "type": "bind", "source": d.dir, "options": ["rbind", "rw"]}));
    let out = attacker.run();
    let said = text(&out);
    assert!(said.contains("status rc=1"), "status was answered: {said}");
    // A poststop hook's failure is only a warning (the container is gone
    // anyway); the daemon refused it.
    assert!(
        said.lines()
            .any(|l| l.contains("deregistering") && l.contains("refused")),
        "deregistration was not refused: {said}"
    );
    assert!(
        said.contains("refused: peer pid"),
        "the refusal is not said: {said}"
    );
    // The victim is still watched.
    let listed = Command::new(KEYWARD)
        .args(["containers", "--json", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == victim.id.as_str()),
        "the victim was deregistered: {listed:#}"
    );
    stop_wrapped(&mut victim_run);
}

/// Put a "new version" (a shell script with `body`) at the daemon's
/// installed path, renamed over it as dpkg does, and send SIGUSR2.
fn upgrade_to(d: &Daemon, body: &str) {
    let next = d.dir.join("bin/keyward.new");
    std::fs::write(&next, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&next, d.installed()).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid()),
        nix::sys::signal::SIGUSR2,
    )
    .unwrap();
}

#[test]
fn an_upgrade_in_deny_mode_holds_an_open_in_the_kernel_and_denies_it_after() {
    if !privileged() {
        return;
    }
    // The daemon runs from a copy of its binary, as from /usr/bin. The
    // "new version" renamed over that path, as dpkg does, is a script that
    // waits 1.5 s and then execs the real binary (a shell's exec keeps the
    // handed-on fds), so the window between the old daemon's last answer
    // and the new one's first read is long and certain. Inside it a
    // container's tar opens a key. With a restart the kernel would allow
    // that open when the old groups closed; here it must stay blocked in
    // the kernel, be denied by the new daemon, and alert from it.
    let mut d = Daemon::start_installed("[response]\naction = \"deny\"\n");
    let b = Bundle::new(
        "kw-upgrade",
        &d.socket,
        "until [ -e /tmp/go ]; do usleep 20000; done; \
         /usr/bin/tar cf /tmp/k.tar /root/.ssh/id_rsa 2>/tmp/tar.err; echo $? > /tmp/rc; sleep 30",
    );
    let mut child = b.spawn();
    d.wait_registered(1);
    let pid = d.pid();

    upgrade_to(&d, &format!("sleep 1.5\nexec {KEYWARD} \"$@\""));
    wait_until(
        Duration::from_secs(10),
        || format!("the old daemon never handed over: {}", d.log_text()),
        || {
            d.log_text()
                .contains("every permission event read was answered")
        },
    );
    touch(&b, "/tmp/go");
    // Half a second on, no daemon has read anything yet (the script still
    // sleeps): the tar is held in open(2), not done.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        d.log_text().matches("serving").count(),
        1,
        "{}",
        d.log_text()
    );
    assert!(
        b.read("/tmp/rc").is_none(),
        "tar was not held: {:?}",
        b.read("/tmp/tar.err")
    );

    let a = d.wait_alert("the open judged by the new daemon", |a| {
        a["container"]["id"] == b.id.as_str() && !a["keyward"]["response"].is_null()
    });
    assert_eq!(a["keyward"]["response"]["action"], "deny", "{a:#}");
    assert!(
        files(&a).contains(&"/root/.ssh/id_rsa".to_string()),
        "{a:#}"
    );
    wait_until(
        Duration::from_secs(5),
        || "tar never finished".into(),
        || b.read("/tmp/rc").is_some(),
    );
    let rc = String::from_utf8(b.read("/tmp/rc").unwrap()).unwrap();
    assert_ne!(
        rc.trim(),
        "0",
        "tar read the key: {:?}",
        b.read("/tmp/tar.err")
    );
    let archive = b.read("/tmp/k.tar").unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&archive).contains("ROOT-RSA-PRIVATE-KEY"),
        "the key is in the archive"
    );
    // One daemon throughout: the same pid, its container still watched,
    // serving on the same socket.
    let log = d.log_text();
    assert!(log.contains("upgraded in place: 1 containers"), "{log}");
    assert_eq!(d.pid(), pid);
    let st = d.status();
    assert_eq!(
        (st["pid"].as_i64(), st["containers"].as_u64()),
        (Some(pid as i64), Some(1)),
        "{st:#}"
    );
    let _ = Command::new("runc").args(["kill", &b.id, "KILL"]).output();
    let _ = child.wait();
    d.stop();
}

#[test]
fn an_upgrade_to_a_binary_that_cannot_start_is_refused_and_the_daemon_goes_on() {
    if !privileged() {
        return;
    }
    // A broken new version (here: one that only fails) must not end the
    // daemon after its threads stopped: the old daemon runs the new one's
    // `check` first, refuses, and keeps watching.
    let d = Daemon::start_installed("");
    let b = Bundle::new(
        "kw-upgrade-refused",
        &d.socket,
        "until [ -e /tmp/go ]; do usleep 20000; done; /usr/bin/tar cf /tmp/k.tar /root/.ssh/id_rsa; echo done",
    );
    let mut child = b.spawn();
    d.wait_registered(1);
    let pid = d.pid();
    upgrade_to(&d, "echo 'broken build' >&2\nexit 1");
    wait_until(
        Duration::from_secs(15),
        || format!("no refusal: {}", d.log_text()),
        || d.log_text().contains("not upgrading"),
    );
    let log = d.log_text();
    assert!(
        log.contains("broken build") && !log.contains("threads stopped"),
        "{log}"
    );
    let st = d.status();
    assert_eq!(
        (st["pid"].as_i64(), st["containers"].as_u64()),
        (Some(pid as i64), Some(1)),
        "{st:#}"
    );
    touch(&b, "/tmp/go");
    d.wait_alert("after the refused upgrade", |a| {
        a["container"]["id"] == b.id.as_str() && files(a).contains(&"/root/.ssh/id_rsa".to_string())
    });
    let _ = child.wait();
}
