//! Where the credential goes, end to end in real runc containers, in the
//! default alert mode.
//!
//! Strategy: each case takes a path the landed tree judged by spelling and
//! shows that keyward judges the credential instead.
//! * A key moved out of its credential directory stays a credential: the
//!   move is followed by a new credential file, which makes the daemon
//!   rescan the container (the step that used to forget the inode), and
//!   the test checks from the daemon's log that the rescan ran before it
//!   archives the moved key. The alert must name the key's origin and the
//!   path tar used.
//! * The seed rule's own name-service files (`/etc/passwd`, `/etc/group`,
//!   `/etc/hosts`) are not marked in alert mode, so an archiver naming one
//!   without its literal path (relative to its cwd, after `-C`, with doubled
//!   slashes) must be caught from its resolved arguments. The archives also
//!   hold a 20 MB filler, so tar is still alive when its exec is read.
//! * Near misses stay quiet: a file called `passwd` elsewhere, and a
//!   `-C` that leads away from `/etc`.

mod common;

use common::*;

#[test]
fn a_moved_credential_keeps_its_origin_across_rescans() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    // A new key for carol changes the container's marks, so the rescan
    // is logged; it comes at most 5 s after the creation (at once where
    // the filesystem reports creations, by the periodic rescan where it
    // cannot), and the archive waits 6 s.
    let script = "mv /root/.ssh/id_rsa /tmp/stash \
        && mkdir -p /home/carol/.ssh && echo CAROL > /home/carol/.ssh/id_rsa \
        && sleep 6 && /usr/bin/tar cf /tmp/o.tar /tmp/stash && echo archived";
    let b = Bundle::new("kw-moved", &d.socket, script);
    let out = b.run();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("archived"),
        "{}",
        text(&out)
    );
    assert!(
        d.log_text()
            .contains(&format!("rescanned container {}", b.id)),
        "no rescan ran: {}",
        d.log_text()
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
    let out = b.run();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("archived"),
        "{}",
        text(&out)
    );
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
    let out = b.run();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("quiet"),
        "{}",
        text(&out)
    );
    let alerts = d.settled_alerts();
    assert!(alerts.is_empty(), "near misses alerted: {alerts:#?}");
}
