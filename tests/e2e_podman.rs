//! podman end to end: the shipped hooks.d file wires `keyward hook` into
//! podman, and alerts name podman's container exactly.
//!
//! Strategy: a real daemon (harness [`common::Daemon`]), a private podman
//! store (`--root`, `--runroot`, `--tmpdir` under a temp dir, overlay
//! driver: the same `<root>/overlay-containers/<id>/userdata` layout as
//! `/var/lib/containers/storage`), an image made by `podman import` of the
//! harness's busybox rootfs tar, and a `--hooks-dir` holding a copy of
//! `hooks/keyward.json` whose only changes are the binary under test and the
//! test daemon's socket. GNU tar then reads a fake key inside a podman
//! container, and the test reads the alert from the daemon's JSON file: the
//! full 64-hex id podman printed, the `--name` and the imported image must
//! be in `container.*` (podman's OCI annotations carry neither name nor
//! image, so this exercises `keyward::registry::enrich`). A second test checks that a
//! podman `--annotation` reaches keyward and selects `deny`. Every podman
//! command runs under `timeout`; containers, images and the store are
//! removed on drop, the daemon is killed by pid.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{
    Daemon, KEYWARD, files, have_command, in_mount_ns_of, privileged, remove_engine_dir, required,
    rootfs_tar, text, unique, yaml_block,
};
use serde_json::Value;

/// The shipped hooks.d file, the template for the test's copy.
const HOOKS_JSON: &str = include_str!("../hooks/keyward.json");
/// The Kubernetes manifest, whose ConfigMap carries the node's hooks.d file.
const DAEMONSET_YAML: &str = include_str!("../packaging/kubernetes/daemonset.yaml");
/// Hard cap on one podman command.
const PODMAN_TIMEOUT_SECS: &str = "120";

fn ready() -> bool {
    privileged() && required("podman", have_command("podman"))
}

/// A private podman store with the keyward hook and one imported image.
struct Podman {
    dir: PathBuf,
    image: String,
    /// The OCI runtime podman runs (`--runtime`).
    runtime: &'static str,
    /// Run podman in this pid's mount namespace (`nsenter --mount`).
    enter: Option<i32>,
}

impl Podman {
    fn new(socket: &Path) -> Self {
        Self::with_hook(&hook_file(socket))
    }

    /// A store whose hooks dir holds `hook_json` as keyward.json.
    fn with_hook(hook_json: &str) -> Self {
        Self::with_hook_and_runtime(hook_json, "runc", None)
    }

    /// Like [`Podman::with_hook`], with `runtime` as podman's OCI runtime,
    /// every podman command run in `enter`'s mount namespace if given.
    fn with_hook_and_runtime(hook_json: &str, runtime: &'static str, enter: Option<i32>) -> Self {
        let dir = std::env::temp_dir().join(unique("keyward-podman"));
        let _ = fs::remove_dir_all(&dir);
        let hooks = dir.join("hooks.d");
        fs::create_dir_all(&hooks).unwrap();
        fs::write(hooks.join("keyward.json"), hook_json).unwrap();
        let image = format!("localhost/{}:e2e", unique("keyward-img"));
        let p = Self {
            dir,
            image,
            runtime,
            enter,
        };
        let tar = p.dir.join("rootfs.tar");
        rootfs_tar(&tar);
        let out = p.podman(&["import".as_ref(), tar.as_os_str(), p.image.as_ref()]);
        assert!(out.status.success(), "podman import: {}", text(&out));
        p
    }

    /// `podman` with the private store and hooks dir, under a timeout.
    fn podman<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        let mut cmd = match self.enter {
            Some(pid) => in_mount_ns_of(pid, "timeout"),
            None => Command::new("timeout"),
        };
        cmd.args(["-s", "KILL", PODMAN_TIMEOUT_SECS, "podman"])
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .arg("--hooks-dir")
            .arg(self.dir.join("hooks.d"))
            .args([
                "--storage-driver",
                "overlay",
                "--cgroup-manager",
                "cgroupfs",
                "--runtime",
                self.runtime,
                "--events-backend",
                "file",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run podman")
    }

    /// `podman create` a container running `argv`; returns its id.
    fn create(&self, name: &str, extra: &[&str], argv: &[&str]) -> String {
        let mut args = vec![
            "create",
            "--name",
            name,
            "--network",
            "none",
            "--ulimit",
            "nofile=1000:1000",
            "--ulimit",
            "nproc=1000:1000",
            "--env",
            "PATH=/usr/bin:/bin",
            "--env",
            "HOME=/root",
        ];
        args.extend_from_slice(extra);
        args.push(&self.image);
        args.extend_from_slice(argv);
        let out = self.podman(&args);
        assert!(out.status.success(), "podman create: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--all", "--force"]);
        let _ = self.podman(&["rmi", "--all", "--force"]);
        remove_engine_dir(&self.dir);
    }
}

/// `hooks/keyward.json` with the test binary and the test daemon's socket.
fn hook_file(socket: &Path) -> String {
    retarget(HOOKS_JSON, "/usr/bin/keyward", socket)
}

/// A hooks.d file (`text`) whose hook must be `path`, pointed at the test
/// binary and `socket`; nothing else changes.
fn retarget(text: &str, path: &str, socket: &Path) -> String {
    let mut v: Value = serde_json::from_str(text).expect("hooks.d file is JSON");
    assert_eq!(v["version"], "1.0.0", "hooks.d schema version");
    let stages: Vec<&str> = v["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // Registration at createRuntime is all it takes: the daemon drops the
    // container when its init exits, so no second keyward process runs
    // per container at poststop.
    assert_eq!(
        stages,
        ["createRuntime"],
        "shipped hook must register at createRuntime"
    );
    assert_eq!(v["hook"]["path"], path);
    let args = v["hook"]["args"].as_array_mut().expect("hook args");
    let at = args
        .iter()
        .position(|a| a == "--socket")
        .expect("shipped hook names --socket");
    args[at + 1] = Value::String(socket.to_str().unwrap().into());
    v["hook"]["path"] = Value::String(KEYWARD.into());
    serde_json::to_string_pretty(&v).unwrap()
}

#[test]
fn podman_alert_carries_full_id_name_and_image() {
    if !ready() {
        return;
    }
    let d = Daemon::start("");
    let p = Podman::new(&d.socket);
    let name = unique("kw-podman");
    let id = p.create(
        &name,
        &[],
        &["/usr/bin/tar", "czf", "/tmp/x.tgz", "/root/.ssh/id_rsa"],
    );
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "podman create printed {id:?}, not a full id"
    );
    let out = p.podman(&["start", "--attach", &name]);
    assert!(out.status.success(), "podman start: {}", text(&out));
    d.wait_log(&format!("watching container {id} "));

    let a = d.wait_alert("tar in a podman container", |a| {
        a["container"]["id"] == id.as_str()
    });
    assert_eq!(a["container"]["id"], id.as_str(), "{a:#}");
    assert_eq!(a["container"]["name"], name.as_str(), "{a:#}");
    assert_eq!(a["container"]["image"]["name"], p.image.as_str(), "{a:#}");
    assert_eq!(a["event"]["kind"], "alert");
    assert_eq!(a["process"]["name"], "tar");
    assert!(
        files(&a).contains(&"/root/.ssh/id_rsa".to_string()),
        "{a:#}"
    );

    // The container has exited: the daemon drops it without any hook.
    d.wait_log(&format!("stopped watching container {id}"));
    let out = p.podman(&["rm", &name]);
    assert!(out.status.success(), "podman rm: {}", text(&out));
}

/// crun as podman's runtime, the hook from the same hooks.d file. crun 1.8
/// refuses this machine's hybrid cgroups, so podman and the daemon share a
/// mount namespace without the unified tree
/// ([`Daemon::start_without_unified_cgroup`]); the daemon accepts hooks
/// only from its own or the host's mount namespace.
#[test]
fn podman_with_crun_runs_the_hook() {
    if !(ready() && required("crun", have_command("crun"))) {
        return;
    }
    let d = Daemon::start_without_unified_cgroup("");
    let p = Podman::with_hook_and_runtime(&hook_file(&d.socket), "crun", Some(d.pid()));
    let name = unique("kw-podman-crun");
    let id = p.create(
        &name,
        &[],
        &[
            "/bin/sh",
            "-c",
            "/usr/bin/gzip -c /root/.ssh/id_rsa > /tmp/k.gz",
        ],
    );
    let out = p.podman(&["start", "--attach", &name]);
    assert!(out.status.success(), "podman start (crun): {}", text(&out));
    let a = d.wait_alert("gzip in a podman container run by crun", |a| {
        a["container"]["id"] == id.as_str()
    });
    assert_eq!(a["container"]["name"], name.as_str(), "{a:#}");
    assert_eq!(a["process"]["name"], "gzip", "{a:#}");
    // podman recorded crun as the container's runtime.
    let out = p.podman(&["inspect", "--format", "{{.OCIRuntime}}", &name]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "crun",
        "{}",
        text(&out)
    );
}

#[test]
fn podman_annotation_selects_deny() {
    if !ready() {
        return;
    }
    let d = Daemon::start("");
    let p = Podman::new(&d.socket);
    let name = unique("kw-podman-deny");
    let id = p.create(
        &name,
        &["--annotation", "io.keyward.response=deny"],
        &[
            "/bin/sh",
            "-c",
            "/usr/bin/tar cf /tmp/x.tar /root/.ssh/id_rsa; echo tar=$?",
        ],
    );
    let out = p.podman(&["start", "--attach", &name]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains("tar=2"),
        "tar must fail on the denied open: {}",
        text(&out)
    );
    let a = d.wait_alert("denied tar in podman", |a| {
        a["container"]["id"] == id.as_str()
    });
    assert_eq!(a["keyward"]["response"]["action"], "deny", "{a:#}");
    assert_eq!(a["keyward"]["response"]["result"], "ok", "{a:#}");
    assert!(
        a["event"]["type"]
            .as_array()
            .is_some_and(|t| t.iter().any(|x| x == "denied")),
        "{a:#}"
    );
    assert_eq!(a["container"]["name"], name.as_str(), "{a:#}");
}

/// The Kubernetes hooks.d file (from the DaemonSet's ConfigMap) skips pods of
/// the `keyward` namespace and nothing else. podman matches `when` with the
/// same containers/common hooks package as CRI-O and containerd's NRI hook
/// injector, so this checks the real regex semantics.
#[test]
fn kubernetes_hook_skips_only_the_keyward_namespace() {
    if !ready() {
        return;
    }
    let d = Daemon::start("");
    let hook = retarget(
        &yaml_block(DAEMONSET_YAML, "keyward-hook.json"),
        "/opt/keyward/bin/keyward",
        &d.socket,
    );
    let p = Podman::with_hook(&hook);
    let mut ids = Vec::new();
    for (key, ns) in [
        ("io.kubernetes.pod.namespace", "default"),
        ("io.kubernetes.pod.namespace", "keyward"),
        ("io.kubernetes.cri.sandbox-namespace", "keyward-system"),
        ("io.kubernetes.cri.sandbox-namespace", "keyward"),
    ] {
        let name = unique("kw-k8s");
        let annotation = format!("{key}={ns}");
        let id = p.create(&name, &["--annotation", &annotation], &["/bin/true"]);
        let out = p.podman(&["start", "--attach", &name]);
        assert!(out.status.success(), "{annotation}: {}", text(&out));
        ids.push((annotation, ns, id));
    }
    // Registration is logged before the hook returns, so the log is complete.
    let log = d.log_text();
    for (annotation, ns, id) in &ids {
        let hooked = log.contains(&format!("watching container {id} "));
        assert_eq!(
            hooked,
            *ns != "keyward",
            "{annotation}: hook injected = {hooked}\ndaemon log:\n{log}"
        );
    }
}
