//! Where the credential goes, end to end in real runc containers, in the
//! default alert mode.
//!
//! Strategy: each case takes a path the landed tree judged by spelling and
//! shows that keyward judges the credential instead.
//! * A key moved out of its credential directory stays a credential: the
//!   move is followed by a new credential file, which makes the daemon
//!   prune (or rescan) the container's records (the step that used to
//!   forget the inode), and the test checks from the daemon's log that it
//!   ran before it archives the moved key. The alert must name the key's origin and the
//!   path tar used.
//! * The seed rule's own name-service files (`/etc/passwd`, `/etc/group`,
//!   `/etc/hosts`) are not marked in alert mode, so an archiver naming one
//!   without its literal path (relative to its cwd, after `-C`, with doubled
//!   slashes) must be caught from its resolved arguments. The archives also
//!   hold a 20 MB filler, so tar is still alive when its exec is read.
//! * Near misses stay quiet: a file called `passwd` elsewhere, and a
//!   `-C` that leads away from `/etc`.
//! * A copy is a credential: a file written by a process that read a key
//!   (cp, a staging directory filled by `find -exec cp`, `cat` into a
//!   redirect) is marked as "copy of <origin>", so the archiver that packs
//!   it alerts, and in `deny` mode its open is refused. Reads that write no
//!   copy (md5sum, wc, name-service lookups by `ls -l`), a copy of an
//!   ordinary file, ordinary data piped into gzip, and a shell that only
//!   appends to `authorized_keys` before writing another file stay quiet,
//!   and make nothing derived.
//! * A credential directory made and archived 20 ms later alerts: the
//!   marks go in on the create event, for the entry it made; and a copy
//!   made before survives the prune that the directory causes.
//! * The write mark is removed when the last reader is gone, and armed
//!   again by the next reader.
//! * An archiver by behaviour: a rebuilt gzip (its build-id changed)
//!   under another name, run directly and by the loader, has no archiver
//!   name or identity; reading a key and then writing gzip data
//!   makes it one. Compression by a process that read nothing stays quiet.

mod common;

use common::*;

#[test]
fn a_moved_credential_keeps_its_origin_across_rescans() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    // A new key for carol makes the daemon look at the container's marks
    // again: the prune that follows creates (where the filesystem reports
    // creations) or the periodic rescan (where it cannot), each of which
    // used to forget the moved inode. It comes at most 5 s after the
    // creation, and the archive waits 6 s.
    let script = "mv /root/.ssh/id_rsa /tmp/stash \
        && mkdir -p /home/carol/.ssh && echo CAROL > /home/carol/.ssh/id_rsa \
        && sleep 6 && /usr/bin/tar cf /tmp/o.tar /tmp/stash && echo archived";
    let b = Bundle::new("kw-moved", &d.socket, script);
    b.run_saying("archived");
    let log = d.log_text();
    assert!(
        log.contains(&format!("pruned container {}", b.id))
            || log.contains(&format!("rescanned container {}", b.id)),
        "no prune or rescan ran: {log}"
    );
    let a = d.wait_alert("moved key", |a| has_arg(a, "/tmp/o.tar"));
    assert_eq!(a["container"]["id"], b.id.as_str());
    let f = &a["keyward"]["files"][0];
    assert_eq!(f["origin"], "/root/.ssh/id_rsa", "{a:#}");
    assert_eq!(f["path"], "/root/.ssh/id_rsa", "{a:#}");
    assert_eq!(f["opened_as"], "/tmp/stash", "{a:#}");
}

#[test]
fn lookup_files_named_without_their_literal_path_alert() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    let script = "head -c 20000000 /dev/zero > /tmp/big
        (cd /etc && /usr/bin/tar cf /tmp/a.tar passwd /tmp/big)
        /usr/bin/tar -C /etc -cf /tmp/b.tar group /tmp/big
        /usr/bin/tar cf /tmp/c.tar //etc//hosts /tmp/big
        mkdir -p /srv; (cd /srv && /usr/bin/tar --directory=../etc -cf /tmp/d.tar ./passwd /tmp/big)
        echo archived";
    let b = Bundle::new("kw-lookup", &d.socket, script);
    b.run_saying("archived");
    for (archive, file) in [
        ("/tmp/a.tar", "/etc/passwd"),
        ("/tmp/b.tar", "/etc/group"),
        ("/tmp/c.tar", "/etc/hosts"),
        ("/tmp/d.tar", "/etc/passwd"),
    ] {
        let a = d.wait_alert(archive, |a| {
            has_arg(a, archive) && files(a).iter().any(|f| f == file)
        });
        assert_eq!(a["container"]["id"], b.id.as_str(), "{archive}");
        let named = a["keyward"]["files"].as_array().unwrap().iter().any(|f| {
            f["path"] == file
                && f["opened_as"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("argument "))
        });
        assert!(named, "{archive}: the argument is named: {a:#}");
    }
}

#[test]
fn files_that_only_share_a_lookup_name_stay_quiet() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    let script = "set -e
        mkdir -p /srv && echo data > /srv/passwd && echo data > /srv/hosts
        cd /srv && /usr/bin/tar cf /tmp/q1.tar passwd hosts
        /usr/bin/tar -C /srv -cf /tmp/q2.tar passwd
        cd /etc && /usr/bin/tar -C /srv -cf /tmp/q3.tar hosts
        /usr/bin/tar cf /tmp/q4.tar /app
        echo quiet";
    let b = Bundle::new("kw-lookup-quiet", &d.socket, script);
    b.run_saying("quiet");
    let alerts = d.settled_alerts();
    assert!(alerts.is_empty(), "near misses alerted: {alerts:#?}");
    // Nothing read a credential: no write mark, so the kernel reported
    // none of the archives' writes (the follower costs this container
    // nothing).
    let stats = &d.status()["stats"];
    assert_eq!(stats["write_armed"], 0, "{stats:#}");
    assert_eq!(stats["write_events"], 0, "{stats:#}");
}

/// The file-list entries (origin, opened_as) of an alert.
fn origins(a: &serde_json::Value) -> Vec<(String, String)> {
    a["keyward"]["files"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|f| {
                    (
                        f["origin"].as_str().unwrap_or("").to_string(),
                        f["opened_as"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn copies_of_a_credential_are_credentials() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    // A copy, a staging directory filled by `find -exec cp` (the Atomic
    // Red Team procedure for T1552.004), and a shell redirect of `cat`.
    // Each archive comes 0.2 s after its copy was written.
    let script = "cp /root/.ssh/id_rsa /tmp/copy && sleep 0.2 && /usr/bin/tar cf /tmp/c1.tar /tmp/copy
        mkdir /tmp/stage && find /root/.aws /home/alice/.ssh -type f -exec cp {} /tmp/stage/ \\; \
            && sleep 0.2 && /usr/bin/tar czf /tmp/c2.tgz -C /tmp stage
        cat /root/.docker/config.json > /tmp/dcfg && sleep 0.2 && /usr/bin/gzip -c /tmp/dcfg > /tmp/c3.gz
        echo copied";
    let b = Bundle::new("kw-copies", &d.socket, script);
    b.run_saying("copied");
    let c1 = d.wait_alert("single copy", |a| has_arg(a, "/tmp/c1.tar"));
    assert_eq!(c1["container"]["id"], b.id.as_str());
    assert!(
        files(&c1).contains(&"/root/.ssh/id_rsa".to_string()),
        "{c1:#}"
    );
    assert!(
        origins(&c1).contains(&("copy of /root/.ssh/id_rsa".into(), "/tmp/copy".into())),
        "{c1:#}"
    );
    let c2 = d.wait_alert("staging directory", |a| has_arg(a, "/tmp/c2.tgz"));
    for key in ["/root/.aws/credentials", "/home/alice/.ssh/id_ed25519"] {
        let copied = origins(&c2)
            .iter()
            .any(|(o, at)| *o == format!("copy of {key}") && at.starts_with("/tmp/stage/"));
        assert!(copied, "{key} not listed as a staged copy: {c2:#}");
    }
    let c3 = d.wait_alert("redirect", |a| a["process"]["name"] == "gzip");
    assert!(
        origins(&c3).contains(&(
            "copy of /root/.docker/config.json".into(),
            "/tmp/dcfg".into()
        )),
        "{c3:#}"
    );
    assert!(d.status()["stats"]["derived"].as_u64().unwrap_or(0) >= 4);
}

#[test]
fn deny_refuses_the_archivers_open_of_a_copy() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("[response]\naction = \"deny\"\n");
    let script = "cp /root/.ssh/id_ed25519 /tmp/k && sleep 0.2
        if /usr/bin/tar cf /tmp/d.tar /tmp/k 2>/dev/null; then echo LEAKED; else echo DENIED; fi";
    let b = Bundle::new("kw-copy-deny", &d.socket, script);
    let out = b.run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("DENIED"), "{}", text(&out));
    let a = d.wait_alert("denied copy", |a| has_arg(a, "/tmp/d.tar"));
    assert_eq!(a["event"]["type"][0], "denied", "{a:#}");
    assert!(
        origins(&a).contains(&("copy of /root/.ssh/id_ed25519".into(), "/tmp/k".into())),
        "{a:#}"
    );
}

#[test]
fn reads_that_write_no_copy_stay_quiet() {
    if !privileged() {
        return;
    }
    // In deny mode the name-service files are marked, so the lookups of
    // `ls -l` are permission events: they must make nothing derived.
    let d = Daemon::start("[response]\naction = \"deny\"\n");
    let script = "set -e
        cp /app/README /tmp/r && /usr/bin/tar cf /tmp/b1.tar /tmp/r
        md5sum /root/.ssh/id_rsa > /dev/null && wc -c /home/alice/.ssh/id_rsa > /dev/null
        echo ordinary data | /usr/bin/gzip -c > /tmp/b2.gz
        ls -l /app > /tmp/listing && sleep 0.2 && /usr/bin/tar cf /tmp/b3.tar /tmp/listing
        sh -c 'echo ssh-ed25519 AAAA >> /root/.ssh/authorized_keys; echo notes > /tmp/notes' && sleep 0.2
        /usr/bin/tar cf /tmp/b4.tar /tmp/notes
        echo quiet";
    let b = Bundle::new("kw-copy-quiet", &d.socket, script);
    b.run_saying("quiet");
    let alerts = d.settled_alerts();
    assert!(
        alerts.is_empty(),
        "reads without a copy alerted: {alerts:#?}"
    );
    let stats = &d.status()["stats"];
    assert_eq!(stats["derived"], 0, "{stats:#}");
    // The shell that appends to authorized_keys opened a credential to
    // write only: it read none, and what it wrote next is no copy.
    assert!(stats["write_only_opens"].as_u64() >= Some(1), "{stats:#}");
}

#[test]
fn an_archiver_with_no_name_is_caught_by_what_it_writes() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    // A gzip rebuilt (its build-id changed) under another name, run by the
    // loader and directly: neither its name, comm, arguments nor content
    // say archiver. What it does gives it away: it reads a key and writes
    // gzip data. Beside it, a key read by one process and data compressed
    // by another (not a reader) stays quiet.
    let script = "/lib64/ld-linux-x86-64.so.2 /tmp/xx -c /root/.ssh/id_rsa > /tmp/out.bin
        /tmp/xx -c /root/.ssh/id_ed25519 > /tmp/out2.bin
        cat /root/.aws/credentials > /dev/null; echo unrelated | /usr/bin/gzip -c > /tmp/u.gz
        echo done";
    let b = Bundle::new("kw-behaviour", &d.socket, script);
    install_unknown_gzip(&b.rootfs, "/tmp/xx");
    b.run_saying("done");
    let a = d.wait_alert("direct", |a| {
        a["keyward"]["archiver"]["archive"] == "/tmp/out2.bin"
    });
    assert_eq!(
        a["rule"]["id"], "keyward.behaviour.credential-archived",
        "{a:#}"
    );
    assert!(
        files(&a).contains(&"/root/.ssh/id_ed25519".to_string()),
        "{a:#}"
    );
    let a = d.wait_alert("behaviour", |a| {
        a["rule"]["id"] == "keyward.behaviour.credential-archived"
            && a["keyward"]["archiver"]["archive"] == "/tmp/out.bin"
    });
    assert_eq!(a["container"]["id"], b.id.as_str());
    assert!(
        files(&a).contains(&"/root/.ssh/id_rsa".to_string()),
        "{a:#}"
    );
    let hit = &a["keyward"]["archiver"];
    assert_eq!(hit["via"], "behaviour", "{a:#}");
    assert_eq!(hit["format"], "gzip", "{a:#}");
    assert_eq!(hit["archive"], "/tmp/out.bin", "{a:#}");
    assert!(
        has_arg(&a, "/tmp/xx"),
        "the loader's process is named: {a:#}"
    );
    let others: Vec<_> = d
        .settled_alerts()
        .into_iter()
        .filter(|x| !has_arg(x, "/tmp/xx") && x["process"]["name"] != "xx")
        .collect();
    assert!(
        others.is_empty(),
        "unrelated compression alerted: {others:#?}"
    );
}

#[test]
fn a_credential_directory_made_and_archived_at_once_alerts() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    // The key and its directories are made 20 ms before tar starts: only
    // marks placed on the create events themselves can see the open.
    // A copy made before stays a credential across the marking and the
    // prune that the new directory causes.
    let script = "cp /root/.ssh/id_rsa /tmp/early && sleep 0.2
        mkdir -p /home/dave/.ssh && echo DAVE-KEY > /home/dave/.ssh/id_rsa \
        && sleep 0.02 && /usr/bin/tar cf /tmp/late.tar /home/dave/.ssh
        sleep 0.5 && /usr/bin/tar cf /tmp/early.tar /tmp/early && echo archived";
    let b = Bundle::new("kw-late-dir", &d.socket, script);
    b.run_saying("archived");
    let a = d.wait_alert("late directory", |a| has_arg(a, "/tmp/late.tar"));
    assert_eq!(a["container"]["id"], b.id.as_str());
    assert!(
        files(&a).contains(&"/home/dave/.ssh/id_rsa".to_string()),
        "{a:#}"
    );
    let a = d.wait_alert("copy after a rescan", |a| has_arg(a, "/tmp/early.tar"));
    assert!(
        origins(&a).contains(&("copy of /root/.ssh/id_rsa".into(), "/tmp/early".into())),
        "{a:#}"
    );
    let stats = &d.status()["stats"];
    // Marked by the create events' own marking (their directories known
    // by handle), and the prune that follows creates ran.
    assert!(stats["prunes"].as_u64().unwrap_or(0) >= 1, "{stats:#}");
    assert!(
        stats["create_marks"].as_u64().unwrap_or(0) >= 1,
        "{stats:#}"
    );
    assert!(
        stats["creates_incremental"].as_u64().unwrap_or(0) >= 1 && stats["creates_unresolved"] == 0,
        "{stats:#}"
    );
    eprintln!(
        "create-time marks: {} in {} us total, worst {} us",
        stats["create_marks"], stats["create_mark_us_total"], stats["create_mark_us_max"]
    );
}

#[test]
fn the_write_mark_goes_when_the_last_reader_does_and_comes_back() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    // A reader arms the container's write mark; 10 s after it exits the
    // sweep removes it (the container then pays nothing for its writes);
    // a later reader arms it again, so its copy is still a credential.
    // The reader runs as its own process (busybox sh may run `cat` inside
    // itself, and the shell lives on).
    let script = "sh -c 'cat /root/.ssh/id_rsa > /dev/null'
        sleep 13 && echo idle > /tmp/idle
        sleep 2 && cp /root/.ssh/id_ed25519 /tmp/again && sleep 0.2
        /usr/bin/tar cf /tmp/again.tar /tmp/again && echo archived";
    let b = Bundle::new("kw-disarm", &d.socket, script);
    let child = b.spawn();
    wait_until(
        std::time::Duration::from_secs(20),
        || format!("no disarm: {:#}", d.status()["stats"]),
        || d.status()["stats"]["write_disarmed"].as_u64().unwrap_or(0) >= 1,
    );
    let stats = d.status()["stats"].clone();
    assert_eq!(stats["write_armed"], 1, "{stats:#}");
    assert_eq!(stats["write_disarm_failed"], 0, "{stats:#}");
    let mut child = child;
    assert!(child.wait().unwrap().success());
    let a = d.wait_alert("copy after re-arming", |a| has_arg(a, "/tmp/again.tar"));
    assert_eq!(a["container"]["id"], b.id.as_str());
    assert!(
        origins(&a).contains(&("copy of /root/.ssh/id_ed25519".into(), "/tmp/again".into())),
        "{a:#}"
    );
    assert_eq!(d.status()["stats"]["write_armed"], 2);
}
