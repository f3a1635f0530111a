//! Credential data through pipes, end to end in real runc containers, in
//! the default alert mode.
//!
//! Strategy: the archiver never opens a credential; a process that did
//! (`cat`, `base64`) writes it into a pipe or FIFO the archiver reads.
//! Each case fixes who starts first, because the daemon finds the
//! archiver by different means then:
//! * archiver first: it already waits on the pipe when the reader opens
//!   the key, so it is found while the reader is held in `open(2)` (an
//!   anonymous pipeline, and a FIFO the archiver opened a second earlier
//!   from an unrelated subshell);
//! * reader first: the key is in the pipe (or FIFO) before the archiver
//!   is exec'd, from a script whose text names no archiver, so only its
//!   exec can show what it reads;
//! * a chain (`cat | base64 | gzip`), where the middle process is no
//!   archiver and carries the taint on;
//! * an archiver with no name or identity (a rebuilt gzip under another
//!   name, run by the loader) reading
//!   the pipe, caught by the archive data it writes. It is started first:
//!   a nameless consumer forked after the reader's open that finishes
//!   within milliseconds can outrun the daemon's follow-up looks (see
//!   `docs/design.md`), and a test must not depend on that race.
//!
//! * left to race: twenty pipelines with no pause, so every order above
//!   (and the daemon reading gzip's exec before or after it finds gzip
//!   on the pipe, or after gzip has already exited) comes up; each alert
//!   must name gzip, not the shell it was forked from and not nothing.
//!
//! Every alert must name the credential and both processes (the alert's
//! process, and `keyward.files[].source`). Near misses stay quiet:
//! ordinary data piped into gzip, a key piped into `wc`, and a key read
//! by one process while another compresses ordinary data through its own
//! pipe.

mod common;

use common::*;
use serde_json::Value;

/// The `keyward.files[]` entry of `a` for credential `path`.
fn file<'a>(a: &'a Value, path: &str) -> &'a Value {
    a["keyward"]["files"]
        .as_array()
        .and_then(|v| v.iter().find(|f| f["path"] == path))
        .unwrap_or_else(|| panic!("{path} not in the alert: {a:#}"))
}

/// Assert that `a` is `archiver`'s alert for `key`, carried by a pipe
/// from a process named `writer`.
fn piped_from(a: &Value, archiver: &str, key: &str, writer: &str) {
    assert_eq!(a["process"]["name"], archiver, "{a:#}");
    let f = file(a, key);
    let source = &f["source"];
    // A pipeline stage caught between its shell's fork and its own exec
    // is still the shell (its name, its argv): then the shell's script
    // must be the one that runs the writer. Which of the two is seen is a
    // race the daemon cannot win (docs/design.md, "Pipes and FIFOs").
    let forked = source["name"] == "sh"
        && source["args"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x.as_str().is_some_and(|x| x.contains(writer)))
        });
    assert!(
        source["name"] == writer || forked,
        "the writer is named: {a:#}"
    );
    assert!(source["pid"].as_i64().unwrap_or(0) > 0, "{a:#}");
    let via = source["via"].as_str().unwrap_or("");
    assert!(
        via.starts_with("pipe:[") || via.starts_with("/tmp/"),
        "the pipe is named: {a:#}"
    );
}

#[test]
fn an_archiver_waiting_on_a_pipe_is_found_while_the_reader_is_held() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    // 1. A pipeline whose gzip is exec'd and waiting on the pipe when cat
    //    opens the key (cat starts a moment after it: without the pause,
    //    gzip's exec now and then came after cat's open, which is the
    //    case of the next test, and once it had exited at once the
    //    behaviour alert could no longer name it).
    // 2. A FIFO gzip opened (read-write, so it does not block) a second
    //    before, from a subshell the writer is no sibling of.
    let script = "( sleep 0.3; cat /root/.ssh/id_rsa ) | /usr/bin/gzip -c > /tmp/p1.gz
        mkfifo /tmp/f
        ( /usr/bin/gzip -c 0<>/tmp/f > /tmp/p2.gz & echo $! > /tmp/gz.pid )
        sleep 1
        cat /root/.aws/credentials > /tmp/f
        sleep 0.5; kill $(cat /tmp/gz.pid)
        echo piped";
    let b = Bundle::new("kw-pipe-first", &d.socket, script);
    b.run_saying("piped");
    let a = d.wait_alert("pipeline", |a| {
        a["process"]["name"] == "gzip" && files(a).contains(&"/root/.ssh/id_rsa".to_string())
    });
    assert_eq!(a["container"]["id"], b.id.as_str());
    piped_from(&a, "gzip", "/root/.ssh/id_rsa", "cat");
    let a = d.wait_alert("fifo", |a| {
        files(a).contains(&"/root/.aws/credentials".to_string())
    });
    piped_from(&a, "gzip", "/root/.aws/credentials", "cat");
    assert_eq!(
        file(&a, "/root/.aws/credentials")["source"]["via"],
        "/tmp/f"
    );
}

#[test]
fn an_archiver_started_after_the_reader_is_judged_at_its_exec() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    // The consumer script's text names no archiver: it sleeps, then execs
    // gzip on the pipe cat filled and left a second before. Then a FIFO
    // filled by a subshell that holds it open; gzip opens it later.
    let script = "printf '#!/bin/sh\\nsleep 1\\nexec /usr/bin/gzip -c\\n' > /tmp/later
        chmod +x /tmp/later
        cat /root/.ssh/id_ed25519 | /tmp/later > /tmp/r1.gz
        mkfifo /tmp/g
        ( cat /root/.docker/config.json; sleep 2 ) 1<>/tmp/g &
        sleep 0.5
        /usr/bin/gzip -c < /tmp/g > /tmp/r2.gz
        echo piped";
    let b = Bundle::new("kw-pipe-later", &d.socket, script);
    b.run_saying("piped");
    let a = d.wait_alert("reader first", |a| {
        files(a).contains(&"/root/.ssh/id_ed25519".to_string())
    });
    assert_eq!(a["container"]["id"], b.id.as_str());
    piped_from(&a, "gzip", "/root/.ssh/id_ed25519", "cat");
    let a = d.wait_alert("fifo, reader first", |a| {
        files(a).contains(&"/root/.docker/config.json".to_string())
    });
    piped_from(&a, "gzip", "/root/.docker/config.json", "cat");
}

#[test]
fn a_chain_of_pipes_and_a_nameless_archiver_are_followed() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    // cat starts a moment after the chain, as in the pipeline above.
    let script = "( sleep 0.3; cat /root/.ssh/id_rsa ) | base64 | /usr/bin/gzip -c > /tmp/c1.gz
        { sleep 0.3; cat /home/alice/.ssh/id_rsa; } | /lib64/ld-linux-x86-64.so.2 /tmp/xx -c > /tmp/c2.bin
        echo piped";
    let b = Bundle::new("kw-pipe-chain", &d.socket, script);
    install_unknown_gzip(&b.rootfs, "/tmp/xx");
    b.run_saying("piped");
    let a = d.wait_alert("chain", |a| {
        a["process"]["name"] == "gzip" && files(a).contains(&"/root/.ssh/id_rsa".to_string())
    });
    assert_eq!(a["container"]["id"], b.id.as_str());
    // gzip read it from base64, which read it from cat.
    piped_from(&a, "gzip", "/root/.ssh/id_rsa", "base64");
    // (gzip above may be caught by behaviour too, when it finished before
    // its exec was probed: find this one by its archive.)
    let a = d.wait_alert("nameless archiver", |a| {
        a["keyward"]["archiver"]["archive"] == "/tmp/c2.bin"
    });
    assert_eq!(
        a["rule"]["id"], "keyward.behaviour.credential-archived",
        "{a:#}"
    );
    assert!(has_arg(&a, "/tmp/xx"), "{a:#}");
    assert_eq!(
        file(&a, "/home/alice/.ssh/id_rsa")["source"]["name"],
        "cat",
        "{a:#}"
    );
    assert!(d.status()["stats"]["pipes_tainted"].as_u64().unwrap_or(0) >= 3);
}

#[test]
fn pipes_of_ordinary_data_and_keys_into_non_archivers_stay_quiet() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    let script = "set -e
        cat /app/README | /usr/bin/gzip -c > /tmp/q1.gz
        cat /root/.ssh/id_rsa | wc -c > /dev/null
        cat /root/.aws/credentials > /dev/null; echo data | /usr/bin/gzip -c > /tmp/q2.gz
        echo quiet";
    let b = Bundle::new("kw-pipe-quiet", &d.socket, script);
    b.run_saying("quiet");
    let alerts = d.settled_alerts();
    assert!(alerts.is_empty(), "near misses alerted: {alerts:#?}");
}

#[test]
fn pipelines_left_to_race_are_each_caught_and_name_their_archiver() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    // No pause here: whether gzip is exec'd before or after cat's open
    // (and whether the daemon reads gzip's exec before or after it finds
    // gzip on the tainted pipe) is left to the scheduler, twenty times.
    // Twenty readers in about a second is also more than the container's
    // full holder scans allowed a second (eight), so past the eighth the
    // pipeline is found through the reader's siblings. Each gzip must be
    // caught (one run each) and named, even when it has exited before its
    // output is judged.
    let script =
        "for i in $(seq 20); do cat /root/.ssh/id_rsa | /usr/bin/gzip -c > /tmp/race$i.gz; done
        echo raced";
    let b = Bundle::new("kw-pipe-race", &d.socket, script);
    b.run_saying("raced");
    let ours = || -> Vec<Value> {
        d.alerts()
            .into_iter()
            .filter(|a| a["container"]["id"] == b.id.as_str())
            .collect()
    };
    let runs = || -> std::collections::BTreeSet<i64> {
        ours()
            .iter()
            .filter_map(|a| a["process"]["pid"].as_i64())
            .collect()
    };
    wait_until(
        std::time::Duration::from_secs(10),
        || format!("not every pipeline alerted: {:#?}", ours()),
        || runs().len() >= 20,
    );
    let alerts: Vec<Value> = d
        .settled_alerts()
        .into_iter()
        .filter(|a| a["container"]["id"] == b.id.as_str())
        .collect();
    assert_eq!(runs().len(), 20, "one run per pipeline: {alerts:#?}");
    for a in &alerts {
        assert!(files(a).contains(&"/root/.ssh/id_rsa".to_string()), "{a:#}");
        assert_eq!(a["process"]["name"], "gzip", "the archiver is named: {a:#}");
        assert!(
            a["process"]["executable"]
                .as_str()
                .is_some_and(|e| e.ends_with("gzip")),
            "{a:#}"
        );
    }
}
