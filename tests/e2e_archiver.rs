//! Who is an archiver, end to end in real runc containers: the program
//! that runs and what it does, not what it is called.
//!
//! Strategy: each family of the issue is run as an attacker runs it, with
//! credential files that exist.
//! * The loader runs gzip through a symlink with another name: no name
//!   says gzip, so only the loaded program's content can. In `deny` mode
//!   the open is refused, which proves the match was made at the open.
//! * busybox exec'd as itself with an argv[0] it did not choose
//!   (`exec -a tar busybox ...`): busybox runs the applet argv[0] names.
//! * Python's own tarfile (`python3 -m tarfile`): the interpreter told to
//!   archive is an archiver at the open, so `kill` stops it before the
//!   archive holds the key; the archive is read back from the rootfs.
//! * The expected false positive: a registry client (a stand-in binary,
//!   `examples/kw-regclient.rs`) reads `.docker/config.json` and writes a
//!   gzip layer: it alerts by behaviour, and an `[[exceptions]]` entry on
//!   its executable silences exactly it. The false positive designed
//!   against: the same client as a long-lived service writing its layer
//!   after the behaviour window (2 s here) stays quiet.
//! * Near misses stay quiet: an interpreter reading `/etc/passwd` through
//!   the name service, an interpreter archiving an application directory,
//!   the loader running a non-archiver that runs `cat` on a key, and an
//!   ssh-like client that reads a key and writes a plain file.
//! * One container's image cannot change another's verdicts: a container
//!   that ships gzip's binary under a second archiver name (which would
//!   make it a multi-call binary, were identities shared) is up while
//!   another container's renamed gzip is denied by content.
//! * What an image teaches holds from its first process: the image's own
//!   gzip (a build-id neither the host nor another image has), renamed
//!   outside the binary directories, is the container's entrypoint; the
//!   image is learned after the hook's reply, and its first open of a key
//!   is still denied as gzip's.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// Python 3 from the host, with its standard library (without its tests),
/// in a bundle's rootfs.
fn add_python(b: &Bundle) {
    copy_with_libs("/usr/bin/python3.11", &b.rootfs, "/usr/bin/python3");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "mkdir -p {r}/usr/lib && tar -C /usr/lib --exclude=python3.11/test \
             --exclude=__pycache__ --exclude=python3.11/site-packages -cf - python3.11 \
             | tar -C {r}/usr/lib -xf -",
            r = b.rootfs.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// The test helper built from `examples/kw-regclient.rs` (`cargo test`
/// builds examples with the tests; a filtered run builds it here).
fn regclient() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/kw-regclient");
    if !p.exists() {
        // `cargo test --test e2e_archiver` builds no examples.
        let out = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", "kw-regclient"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    assert!(p.exists(), "{} was not built", p.display());
    p
}

#[test]
fn the_loader_and_a_chosen_argv0_are_judged_by_the_program_that_runs() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("[response]\naction = \"deny\"\n");
    let script = "ln -s /usr/bin/gzip /tmp/zz
        if /lib64/ld-linux-x86-64.so.2 /tmp/zz -c /root/.ssh/id_rsa > /tmp/l1 2>/dev/null; then echo LEAK1; else echo DENY1; fi
        if (exec -a tar /bin/busybox cf /tmp/b.tar /root/.ssh/id_ed25519) 2>/dev/null; then echo LEAK2; else echo DENY2; fi
        echo done";
    let b = Bundle::new("kw-loader", &d.socket, script);
    let out = b.run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("DENY1") && stdout.contains("DENY2"),
        "{}",
        text(&out)
    );
    let a = d.wait_alert("loader", |a| has_arg(a, "/tmp/zz"));
    assert_eq!(a["container"]["id"], b.id.as_str());
    assert_eq!(a["keyward"]["archiver"]["via"], "identity", "{a:#}");
    assert_eq!(a["keyward"]["archiver"]["name"], "gzip", "{a:#}");
    assert_eq!(a["keyward"]["archiver"]["exe"], "/tmp/zz", "{a:#}");
    let denied = a["event"]["type"]
        .as_array()
        .is_some_and(|t| t.iter().any(|x| x == "denied"));
    assert!(denied, "{a:#}");
    let a = d.wait_alert("chosen argv0", |a| has_arg(a, "/tmp/b.tar"));
    assert_eq!(a["keyward"]["archiver"]["via"], "argv0", "{a:#}");
    assert!(
        files(&a).contains(&"/root/.ssh/id_ed25519".to_string()),
        "{a:#}"
    );
}

#[test]
fn python_told_to_archive_is_killed_before_the_archive_holds_the_key() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("[response]\naction = \"kill\"\n");
    let script = "/usr/bin/python3 -m tarfile -c /tmp/p.tar /root/.ssh/id_rsa; echo done";
    let b = Bundle::new("kw-python", &d.socket, script);
    add_python(&b);
    b.run_saying("done");
    let a = d.wait_alert("python tarfile", |a| has_arg(a, "tarfile"));
    assert_eq!(a["container"]["id"], b.id.as_str());
    assert_eq!(a["keyward"]["archiver"]["via"], "module", "{a:#}");
    assert_eq!(a["keyward"]["archiver"]["word"], "tarfile", "{a:#}");
    assert_eq!(a["keyward"]["response"]["result"], "ok", "{a:#}");
    let archive = b.read("/tmp/p.tar").unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&archive).contains("ROOT-RSA-PRIVATE-KEY"),
        "the archive holds the key"
    );
}

#[test]
fn interpreters_and_the_loader_doing_no_archiving_of_keys_stay_quiet() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("");
    let script = "set -e
        /usr/bin/python3 -c 'import pwd; pwd.getpwnam(\"root\")'
        /usr/bin/python3 -m tarfile -c /tmp/app.tar /app
        /lib64/ld-linux-x86-64.so.2 /usr/bin/nice /bin/cat /root/.ssh/id_rsa > /dev/null
        sh -c 'read -r k < /root/.ssh/id_rsa; echo \"github.com ssh-ed25519 AAAA\" >> /tmp/hosts_seen'
        echo quiet";
    let b = Bundle::new("kw-interp-quiet", &d.socket, script);
    add_python(&b);
    b.run_saying("quiet");
    let alerts = d.settled_alerts();
    assert!(alerts.is_empty(), "near misses alerted: {alerts:#?}");
}

#[test]
fn a_registry_client_alerts_by_behaviour_and_its_exception_silences_only_it() {
    if !privileged() {
        return;
    }
    let client = regclient();
    let run = |d: &Daemon, prefix: &str, script: &str| {
        let b = Bundle::new(prefix, &d.socket, script);
        copy_with_libs(
            client.to_str().unwrap(),
            &b.rootfs,
            "/usr/local/bin/regclient",
        );
        b.run_saying("done");
        b
    };
    let window = "[rules.file]\nbehaviour_window_s = 2\n";
    let push = "/usr/local/bin/regclient /root/.docker/config.json /tmp/layer.gz; echo done";
    // Under the default rules it alerts: it read the credential and wrote
    // compressed data.
    let d = Daemon::start(window);
    let b = run(&d, "kw-regclient", push);
    let a = d.wait_alert("registry client", |a| a["process"]["name"] == "regclient");
    assert_eq!(a["container"]["id"], b.id.as_str());
    assert_eq!(
        a["rule"]["id"], "keyward.behaviour.credential-archived",
        "{a:#}"
    );
    assert_eq!(
        a["keyward"]["archiver"]["archive"], "/tmp/layer.gz",
        "{a:#}"
    );
    assert!(
        files(&a).contains(&"/root/.docker/config.json".to_string()),
        "{a:#}"
    );
    drop(d);
    // An exception on its executable silences it, and only it: gzip run
    // on a copy of the login in the same container still alerts.
    let d = Daemon::start(&format!(
        "{window}[[exceptions]]\nreason = \"registry pushes\"\nexecutable = \"/usr/local/bin/regclient\"\n"
    ));
    let script = "/usr/local/bin/regclient /root/.docker/config.json /tmp/layer.gz
        /usr/bin/gzip -c /root/.docker/config.json > /tmp/stolen.gz; echo done";
    run(&d, "kw-regclient-ex", script);
    d.wait_alert("gzip beside the excepted client", |a| {
        a["process"]["name"] == "gzip"
    });
    let mine: Vec<_> = d
        .settled_alerts()
        .into_iter()
        .filter(|a| a["process"]["name"] == "regclient")
        .collect();
    assert!(mine.is_empty(), "the exception did not hold: {mine:#?}");
    drop(d);
    // A long-lived service that read its login at start and writes its
    // layer after the window is not blamed for it.
    let d = Daemon::start(window);
    run(
        &d,
        "kw-regclient-late",
        "/usr/local/bin/regclient /root/.docker/config.json /tmp/layer.gz 3000; echo done",
    );
    let alerts = d.settled_alerts();
    assert!(
        alerts.is_empty(),
        "a write after the window alerted: {alerts:#?}"
    );
}

#[test]
fn one_containers_image_does_not_change_what_another_is_judged_by() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("[response]\naction = \"deny\"\n");
    // Container a ships gzip's binary under a second archiver name, which
    // would make its build-id a multi-call binary's (not an archiver's)
    // if what one image teaches were shared. It stays up while b runs.
    let a = Bundle::new("kw-poison", &d.socket, "sleep 30");
    std::fs::copy(
        a.rootfs.join("usr/bin/gzip"),
        a.rootfs.join("usr/bin/bzip2"),
    )
    .unwrap();
    let mut poison = a.spawn();
    d.wait_registered(1);
    // In b, a renamed copy of gzip: only its content says gzip, and the
    // open is refused at once.
    let script = "cp /usr/bin/gzip /tmp/renamed
        if /tmp/renamed -c /root/.ssh/id_rsa > /tmp/o 2>/dev/null; then echo LEAKED; else echo DENIED; fi";
    let b = Bundle::new("kw-poisoned", &d.socket, script);
    let out = b.run();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DENIED"),
        "{}",
        text(&out)
    );
    let alert = d.wait_alert("renamed gzip", |x| x["process"]["name"] == "renamed");
    assert_eq!(alert["container"]["id"], b.id.as_str());
    assert_eq!(alert["keyward"]["archiver"]["via"], "identity", "{alert:#}");
    assert_eq!(alert["keyward"]["archiver"]["name"], "gzip", "{alert:#}");
    let _ = std::process::Command::new("runc")
        .args(["kill", &a.id, "KILL"])
        .output();
    let _ = poison.wait();
}

#[test]
fn an_archiver_only_its_image_has_is_known_from_the_first_process() {
    if !privileged() {
        return;
    }
    let d = Daemon::start("[response]\naction = \"deny\"\n");
    let mut b = Bundle::new("kw-imageonly", &d.socket, "true");
    install_unknown_gzip(&b.rootfs, "/usr/bin/gzip");
    std::fs::create_dir_all(b.rootfs.join("opt")).unwrap();
    std::fs::copy(b.rootfs.join("usr/bin/gzip"), b.rootfs.join("opt/backup")).unwrap();
    // No shell first: the renamed copy is the container's first exec.
    b.config["process"]["args"] = serde_json::json!(["/opt/backup", "-c", "/root/.ssh/id_rsa"]);
    let out = b.run();
    // gzip writes its output only once it has opened the key.
    assert!(
        out.stdout.is_empty(),
        "gzip wrote the key compressed: {}",
        text(&out)
    );
    assert!(
        !out.status.success(),
        "the open was allowed: {}",
        text(&out)
    );
    let alert = d.wait_alert("the image's own gzip, renamed", |x| {
        x["process"]["name"] == "backup"
    });
    assert_eq!(alert["container"]["id"], b.id.as_str());
    assert_eq!(alert["keyward"]["archiver"]["via"], "identity", "{alert:#}");
    assert_eq!(alert["keyward"]["archiver"]["name"], "gzip", "{alert:#}");
}
