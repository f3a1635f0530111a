//! Evasion families and exceptions, end to end in real runc containers.
//!
//! Strategy: each evasion respells the path or disguises the archiver so
//! that no argument matches the seed rule; the alert must still come, from
//! the inode marks (hard links, symlinks, `/proc/self/root`, bind mounts in
//! a private mount namespace), from the inherited-fd check (stdin
//! redirected from a key), from wrappers, or from the archiver's build-id
//! (a renamed copy). The mount-namespace tricks run in a container given
//! CAP_SYS_ADMIN. Look-alikes that must stay quiet run alongside. An
//! exception suppresses exactly what it names, and the suppression is
//! counted in `keyward status`. The workload cannot lower the host's
//! action with its annotation, nor take a name an exception was written
//! for when the engine named it otherwise, nor pass another program off
//! as the one an exception names by content.

mod common;

use common::*;
use serde_json::Value;

/// (case, command, canonical credential path the alert must list)
const CASES: &[(&str, &str, &str)] = &[
    (
        "symlink",
        "ln -s /root/.ssh/id_rsa /tmp/link && /usr/bin/tar chf /tmp/1.tar /tmp/link",
        "/root/.ssh/id_rsa",
    ),
    (
        "hard-link",
        "ln /root/.ssh/id_ed25519 /tmp/hl && /usr/bin/tar cf /tmp/2.tar /tmp/hl",
        "/root/.ssh/id_ed25519",
    ),
    (
        "proc-self-root",
        "/usr/bin/tar cf /tmp/3.tar /proc/self/root/root/.aws/credentials",
        "/root/.aws/credentials",
    ),
    (
        "file-list-stdin",
        "echo /root/.docker/config.json | /usr/bin/tar cf /tmp/4.tar -T -",
        "/root/.docker/config.json",
    ),
    (
        "stdin-redirect",
        // A 2 MB history keeps gzip alive past the exec probe, which reads
        // its fds after the exec (docs/design.md: inherited fds).
        "head -c 2000000 /dev/urandom >> /home/alice/.bash_history && /usr/bin/gzip -c < /home/alice/.bash_history > /tmp/5.gz",
        "/home/alice/.bash_history",
    ),
    (
        "double-slash",
        "/usr/bin/tar cf /tmp/6.tar //root///.bash_history",
        "/root/.bash_history",
    ),
    (
        "env-wrapper",
        "env /usr/bin/tar cf /tmp/7.tar /etc/shadow",
        "/etc/shadow",
    ),
    (
        "nice-wrapper",
        "/usr/bin/nice -n 5 /usr/bin/gzip -c /home/alice/.ssh/id_ed25519 > /tmp/8b.gz",
        "/home/alice/.ssh/id_ed25519",
    ),
    (
        "timeout-wrapper",
        "timeout 10 /usr/bin/gzip -c /root/.ssh/known_hosts > /tmp/8.gz",
        "/root/.ssh/known_hosts",
    ),
    (
        "xargs-wrapper",
        "echo /root/.ssh/authorized_keys | xargs /usr/bin/tar cf /tmp/9.tar",
        "/root/.ssh/authorized_keys",
    ),
    (
        "7z-wrapper",
        "/usr/bin/7z a /tmp/10.7z /root/.aws/config > /dev/null",
        "/root/.aws/config",
    ),
    (
        "renamed-copy",
        "cp /usr/bin/tar /tmp/backup-tool && /tmp/backup-tool cf /tmp/11.tar /root/.ssh/id_rsa.pub",
        "/root/.ssh/id_rsa.pub",
    ),
    (
        "dir-walk",
        "cd / && /usr/bin/tar cf /tmp/12.tar home",
        "/home/alice/.aws/credentials",
    ),
];

#[test]
fn every_evasion_family_alerts() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    let script: String = CASES
        .iter()
        .map(|(_, cmd, _)| format!("({cmd}) 2>/dev/null; sleep 0.05;"))
        .collect::<Vec<_>>()
        .join(" ")
        + " echo finished";
    let b = Bundle::new("kw-evasion", &d.socket, &script);
    let out = b.run();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("finished"),
        "{}",
        text(&out)
    );
    for (case, cmd, path) in CASES {
        let a = d.wait_alert(case, |a| files(a).iter().any(|f| f == path));
        assert_eq!(a["container"]["id"], b.id.as_str(), "{case}: {cmd}");
    }
    let renamed = d.wait_alert("renamed", |a| has_arg(a, "/tmp/backup-tool"));
    assert_eq!(
        renamed["keyward"]["archiver"]["via"], "identity",
        "{renamed:#}"
    );
    assert_eq!(renamed["keyward"]["archiver"]["name"], "tar");
    let hl = d.wait_alert("hard link", |a| {
        files(a).iter().any(|f| f == "/root/.ssh/id_ed25519")
    });
    assert_eq!(
        hl["keyward"]["files"][0]["opened_as"], "/tmp/hl",
        "both spellings reported: {hl:#}"
    );
    let stdin = d.wait_alert("stdin", |a| {
        files(a).iter().any(|f| f == "/home/alice/.bash_history")
    });
    // The archiver's inherited fd 0 is named (the shell's open of the
    // redirect may be listed too: same process, same run).
    let inherited = stdin["keyward"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| {
            f["opened_as"]
                .as_str()
                .is_some_and(|o| o.starts_with("inherited fd 0"))
        });
    assert!(inherited, "{stdin:#}");
}

#[test]
fn bind_mounts_in_a_private_mount_namespace_alert() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    let script = "mkdir -p /mnt/k && unshare -m sh -c 'mount --bind /root/.ssh /mnt/k && /usr/bin/tar cf /tmp/m.tar /mnt/k/id_rsa && echo mounted'";
    let mut b = Bundle::new("kw-mntns", &d.socket, script);
    // A privileged container: CAP_SYS_ADMIN in every set.
    for set in ["bounding", "effective", "permitted"] {
        b.config["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(Value::from("CAP_SYS_ADMIN"));
    }
    let out = b.run();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mounted"),
        "{}",
        text(&out)
    );
    let a = d.wait_alert("bind mount", |a| {
        files(a).iter().any(|f| f == "/root/.ssh/id_rsa")
    });
    assert_eq!(a["container"]["id"], b.id.as_str());
    assert_eq!(
        a["keyward"]["files"][0]["opened_as"], "/mnt/k/id_rsa",
        "{a:#}"
    );
}

#[test]
fn look_alikes_stay_quiet() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    let script = "set -e
        cat /etc/passwd /etc/group > /dev/null
        head -c 10 /etc/shadow > /dev/null
        cp /root/.ssh/id_rsa /tmp/copy && rm /tmp/copy
        /usr/bin/tar cf /tmp/app.tar /app
        /usr/bin/gzip -c /app/README > /tmp/r.gz
        /usr/bin/tar tf /tmp/app.tar > /dev/null
        /usr/bin/tar xf /tmp/app.tar -C /tmp
        /usr/bin/tar cf /tmp/l.tar /app --label='/root/.ssh/id_rsa'
        sh -c 'echo tar czf /tmp/x /root/.ssh/id_rsa' > /dev/null
        echo quiet";
    let b = Bundle::new("kw-lookalike", &d.socket, script);
    let out = b.run();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("quiet"),
        "{}",
        text(&out)
    );
    let alerts = d.settled_alerts();
    assert!(alerts.is_empty(), "look-alikes alerted: {alerts:#?}");
}

#[test]
fn an_exception_suppresses_exactly_what_it_names_and_counts_it() {
    if !privileged() {
        return;
    }
    let d = Daemon::start(
        "[[exceptions]]\nreason = \"nightly backup with zip\"\nexecutable = \"/usr/bin/zip\"\ncontainer_name = \"backup-*\"\n",
    );
    let script = "/usr/bin/zip -q /tmp/b.zip /root/.ssh/id_rsa; /usr/bin/tar cf /tmp/b.tar /root/.ssh/id_rsa; echo done";
    let mut b = Bundle::new("kw-except", &d.socket, script);
    b.annotate("io.keyward.name", "backup-nightly");
    let out = b.run();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("done"),
        "{}",
        text(&out)
    );
    // tar is not excepted: it alerts.
    let a = d.wait_alert("tar", |a| a["process"]["name"] == "tar");
    assert_eq!(a["container"]["name"], "backup-nightly");
    let alerts = d.settled_alerts();
    assert!(
        !alerts.iter().any(|a| a["process"]["name"] == "zip"),
        "the excepted zip alerted: {alerts:#?}"
    );
    let s = d.status();
    let ex = &s["exceptions"][0];
    assert_eq!(ex["reason"], "nightly backup with zip");
    assert!(ex["suppressed"].as_u64().unwrap() >= 1, "{s:#}");
    // The same zip in a container the exception does not name alerts.
    let other = Bundle::new(
        "kw-noexcept",
        &d.socket,
        "/usr/bin/zip -q /tmp/c.zip /root/.ssh/id_rsa",
    );
    assert!(other.run().status.success());
    d.wait_alert("zip elsewhere", |a| {
        a["container"]["id"] == other.id.as_str() && a["process"]["name"] == "zip"
    });
}

#[test]
fn credential_paths_created_after_start_are_covered() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    // A new user's .ssh, and /etc/shadow replaced by rename (as passwd(1)
    // does): both are new inodes the registration never saw. Creations
    // (a rename in is one) are reported at once and marked for the entry
    // they made.
    let script = "mkdir -p /home/bob/.ssh && echo BOB-KEY > /home/bob/.ssh/id_rsa
        cp /etc/shadow /tmp/shadow.new && mv /tmp/shadow.new /etc/shadow
        sleep 0.6
        /usr/bin/tar cf /tmp/n.tar -C /home/bob .ssh
        /usr/bin/tar cf /tmp/s.tar -C /etc shadow
        echo done";
    let b = Bundle::new("kw-later", &d.socket, script);
    let out = b.run();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("done"),
        "{}",
        text(&out)
    );
    for path in ["/home/bob/.ssh/id_rsa", "/etc/shadow"] {
        let a = d.wait_alert(path, |a| files(a).iter().any(|f| f == path));
        assert_eq!(a["container"]["id"], b.id.as_str());
    }
    // Both made their marks at the create event, for the entry it made:
    // no directory went unrecognised.
    let stats = &d.status()["stats"];
    assert!(
        stats["creates_incremental"].as_u64().unwrap_or(0) >= 2 && stats["creates_unresolved"] == 0,
        "{stats:#}"
    );
}

#[test]
fn the_workload_cannot_lower_the_hosts_policy_or_take_an_excepted_name() {
    if !privileged() {
        return;
    }
    // The host denies; an exception is written for engine-named backup
    // containers.
    let d = Daemon::start(
        "[response]\naction = \"deny\"\n[[exceptions]]\nreason = \"backups\"\ncontainer_name = \"backup-*\"\n",
    );
    let script = "if /usr/bin/tar cf /tmp/k.tar /root/.ssh/id_rsa 2>/dev/null; then echo LEAKED; else echo DENIED; fi";
    // 1. A tenant's `io.keyward.response=alert` is refused: the key stays in.
    let mut b = Bundle::new("kw-lower", &d.socket, script);
    b.annotate("io.keyward.response", "alert");
    let out = b.run();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DENIED"),
        "{}",
        text(&out)
    );
    let a = d.wait_alert("lowered", |a| a["container"]["id"] == b.id.as_str());
    assert_eq!(a["keyward"]["response"]["action"], "deny", "{a:#}");
    assert_eq!(d.status()["stats"]["annotations_refused"], 1);
    assert!(d.log_text().contains("refused"), "{}", d.log_text());
    // 2. The engine named it `web`; its own `io.keyward.name=backup-x`
    //    does not make the backup exception match it.
    let mut b = Bundle::new("kw-named", &d.socket, script);
    b.annotate("io.kubernetes.cri-o.ContainerName", "web");
    b.annotate("io.keyward.name", "backup-x");
    let out = b.run();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DENIED"),
        "{}",
        text(&out)
    );
    let a = d.wait_alert("self-named", |a| a["container"]["id"] == b.id.as_str());
    assert_eq!(a["container"]["name"], "web", "{a:#}");
}

#[test]
fn an_exception_on_content_does_not_cover_another_program_at_its_path() {
    if !privileged() {
        return;
    }
    // The exception names the path *and* the content of the GNU tar the
    // images ship, digested by coreutils' sha256sum.
    let sum = std::process::Command::new("sha256sum")
        .arg("/usr/bin/tar")
        .output()
        .unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout);
    let digest = sum.split_whitespace().next().unwrap();
    let d = Daemon::start(&format!(
        "[response]\naction = \"deny\"\n[[exceptions]]\nreason = \"the backup image's tar\"\n\
         container_name = \"backup-*\"\nexecutable = \"/usr/bin/tar\"\nexecutable_sha256 = [\"{digest}\"]\n"
    ));
    let script = "if /usr/bin/tar cf /tmp/k.tar /root/.ssh/id_rsa 2>/dev/null; then echo LEAKED; else echo DENIED; fi";
    // The real tar, in a container the engine named backup-a: excepted.
    let mut real = Bundle::new("kw-sha-real", &d.socket, script);
    real.annotate("io.kubernetes.cri-o.ContainerName", "backup-a");
    let out = real.run();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("LEAKED"),
        "the excepted tar was refused: {}",
        text(&out)
    );
    // Another program at /usr/bin/tar (busybox's tar applet), in another
    // backup container: the path matches, the content does not.
    let mut fake = Bundle::new("kw-sha-fake", &d.socket, script);
    fake.annotate("io.kubernetes.cri-o.ContainerName", "backup-b");
    let tar = fake.rootfs.join("usr/bin/tar");
    std::fs::remove_file(&tar).unwrap();
    std::fs::copy(fake.rootfs.join("bin/busybox"), &tar).unwrap();
    let out = fake.run();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DENIED"),
        "the impostor at /usr/bin/tar was excepted: {}",
        text(&out)
    );
    let a = d.wait_alert("impostor", |a| a["container"]["id"] == fake.id.as_str());
    assert_eq!(a["process"]["executable"], "/usr/bin/tar", "{a:#}");
    assert!(
        !d.settled_alerts()
            .iter()
            .any(|a| a["container"]["id"] == real.id.as_str()),
        "the excepted run alerted: {:#?}",
        d.alerts()
    );
    let status = d.status();
    let counts = status["exceptions"].as_array().unwrap();
    // Counted once per judgement it spared (exec, each open, the
    // archive written).
    assert!(counts[0]["suppressed"].as_u64().unwrap() >= 1, "{status:#}");
}
