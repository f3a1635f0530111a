//! Docker and containerd end to end: the shipped runtime wrapper wires
//! `keyward hook` into engines that read no hooks.d.
//!
//! Strategy: every test starts its own real engines from Debian's packages
//! in private locations under a temp dir, as DESIGN.md says they run here:
//! `containerd --root/--state/--address`, then (for Docker) `dockerd
//! --containerd ... --data-root ... --exec-root ... --bridge=none
//! --iptables=false` with a `--config-file` that is the shipped
//! `packaging/docker/daemon.json` with only the binary path and the socket
//! changed to the build under test and the test daemon. Containers run with
//! `--network none` and explicit ulimits (this machine's root lacks
//! CAP_SYS_RESOURCE); the image is `docker import` of the harness's rootfs.
//! The real keyward daemon (harness [`common::Daemon`]) is told the Docker
//! data root through `engines.docker_roots`, as a user with a non-default
//! root would. Alerts are read from its JSON file and compared with what
//! Docker itself printed (the 64-hex id from `docker create`) and what the
//! test chose (`--name`, the image tag), so nothing is checked with
//! keyward's own code. containerd is driven with `ctr run --runc-binary`
//! naming a `keyward-runtime` link, its socket given through the shim's
//! environment (`KEYWARD_SOCKET` on containerd), as the shipped
//! containerd snippet documents. Every engine command runs under
//! `timeout`; engines are stopped by pid, their mounts detached and their
//! directory removed on drop.
//! One test needs no engine: a runtime that re-runs the wrapper is
//! refused, under a timeout that would end a loop.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{
    Daemon, KEYWARD, base_rootfs, files, have_command, in_mount_ns_of, privileged,
    remove_engine_dir, required, rootfs_tar, text, unique, wait_until,
};
use serde_json::Value;

/// The shipped Docker runtime entry, the template for the test's config.
const DAEMON_JSON: &str = include_str!("../packaging/docker/daemon.json");
/// Hard cap on one engine client command.
const ENGINE_TIMEOUT_SECS: &str = "120";

/// Debian's docker client, not another one that may be first on PATH.
fn docker_client() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

fn ready() -> bool {
    privileged()
        && required("containerd", have_command("containerd"))
        && required("ctr", have_command("ctr"))
        && required("dockerd", have_command("dockerd"))
        && required("docker client", have_command(docker_client()))
        && required("crun", have_command("crun"))
}

/// A process the test started, stopped by pid (SIGTERM, then SIGKILL).
struct Engine {
    name: &'static str,
    child: Child,
}

impl Engine {
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop within 20 s; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Private engines under one temp dir: containerd always, dockerd on demand.
struct Engines {
    dir: PathBuf,
    containerd: Option<Engine>,
    dockerd: Option<Engine>,
}

impl Engines {
    /// The directory only; `docker_root` is known before any engine runs,
    /// so the keyward daemon can be configured with it.
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("keyward-docker"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self {
            dir,
            containerd: None,
            dockerd: None,
        }
    }

    fn docker_root(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn ctd_sock(&self) -> PathBuf {
        self.dir.join("ctd.sock")
    }

    /// Start containerd, with `env` for its shims (and so the runtimes
    /// they run).
    fn start_containerd(&mut self, env: &[(&str, &Path)]) {
        self.start_containerd_in(env, Command::new("containerd"));
    }

    /// Start containerd in the mount namespace of `d`, a daemon started
    /// with [`Daemon::start_without_unified_cgroup`]: crun 1.8 refuses this
    /// machine's hybrid cgroups ("cgroups in hybrid mode not supported":
    /// the unified tree has hugetlb), and sees plain cgroup v1 there, as
    /// runc does.
    fn start_containerd_for_crun(&mut self, env: &[(&str, &Path)], d: &Daemon) {
        self.start_containerd_in(env, in_mount_ns_of(d.pid(), "containerd"));
    }

    fn start_containerd_in(&mut self, env: &[(&str, &Path)], mut cmd: Command) {
        cmd.arg("--root")
            .arg(self.dir.join("ctd-root"))
            .arg("--state")
            .arg(self.dir.join("ctd-state"))
            .arg("--address")
            .arg(self.ctd_sock())
            .envs(env.iter().map(|(k, v)| (k, v.as_os_str())));
        let engine = self.spawn("containerd", cmd, Duration::from_secs(30), |e| {
            e.ctr(&["version"]).status.success()
        });
        self.containerd = Some(engine);
    }

    /// Start `cmd` as engine `name`, its output in `<name>.log`, and wait
    /// until `ready` (the engine answers its clients).
    fn spawn(
        &self,
        name: &'static str,
        mut cmd: Command,
        within: Duration,
        ready: impl Fn(&Self) -> bool,
    ) -> Engine {
        let log_name = format!("{name}.log");
        let log = fs::File::create(self.dir.join(&log_name)).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let mut engine = Engine { name, child };
        let deadline = Instant::now() + within;
        while !ready(self) {
            if Instant::now() > deadline || matches!(engine.child.try_wait(), Ok(Some(_))) {
                engine.stop();
                panic!("{name} never answered:\n{}", self.log(&log_name));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        engine
    }

    /// Start dockerd on our containerd with `config` as its daemon.json.
    fn start_dockerd(&mut self, config: &str) {
        let cfg = self.dir.join("daemon.json");
        fs::write(&cfg, config).unwrap();
        let mut cmd = Command::new("dockerd");
        cmd.arg("--config-file")
            .arg(&cfg)
            .arg("--containerd")
            .arg(self.ctd_sock())
            .arg("--data-root")
            .arg(self.docker_root())
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.dir.join("docker.sock").display()))
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"]);
        let engine = self.spawn("dockerd", cmd, Duration::from_secs(60), |e| {
            e.docker(&["version"]).status.success()
        });
        self.dockerd = Some(engine);
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn docker<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        Command::new("timeout")
            .args(["-s", "KILL", ENGINE_TIMEOUT_SECS, docker_client()])
            .arg("-H")
            .arg(format!("unix://{}", self.dir.join("docker.sock").display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    fn ctr<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        Command::new("timeout")
            .args(["-s", "KILL", ENGINE_TIMEOUT_SECS, "ctr", "--address"])
            .arg(self.ctd_sock())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// `docker import` the harness rootfs as `tag`.
    fn import(&self, tag: &str) {
        let tar = self.dir.join("rootfs.tar");
        rootfs_tar(&tar);
        let out = self.docker(&["import".as_ref(), tar.as_os_str(), tag.as_ref()]);
        assert!(out.status.success(), "docker import: {}", text(&out));
    }

    /// `docker create` with the flags this machine needs; returns the id.
    fn create(&self, name: &str, extra: &[&str], image: &str, argv: &[&str]) -> String {
        let mut args = vec![
            "create",
            "--name",
            name,
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--env",
            "PATH=/usr/bin:/bin",
            "--env",
            "HOME=/root",
        ];
        args.extend_from_slice(extra);
        args.push(image);
        args.extend_from_slice(argv);
        let out = self.docker(&args);
        assert!(out.status.success(), "docker create: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A private copy of the harness rootfs for `ctr run --rootfs`.
    fn rootfs_copy(&self, name: &str) -> PathBuf {
        let dest = self.dir.join(name);
        let out = Command::new("cp")
            .arg("-a")
            .arg(base_rootfs().join("rootfs"))
            .arg(&dest)
            .output()
            .unwrap();
        assert!(out.status.success(), "cp rootfs: {}", text(&out));
        dest
    }
}

impl Drop for Engines {
    fn drop(&mut self) {
        if self.dockerd.is_some() {
            let _ = self.docker(&["rm", "--force", "--volumes"]);
            let ps = self.docker(&["ps", "-aq"]);
            for id in String::from_utf8_lossy(&ps.stdout).split_whitespace() {
                let _ = self.docker(&["rm", "--force", id]);
            }
        }
        if let Some(mut d) = self.dockerd.take() {
            d.stop();
        }
        if let Some(mut c) = self.containerd.take() {
            c.stop();
        }
        remove_engine_dir(&self.dir);
    }
}

/// The shipped daemon.json with the build under test and the test socket,
/// plus `keyward-broken`, whose real runtime does not exist. Checks the
/// shipped file names what the docs promise.
fn daemon_json(socket: &Path) -> String {
    let mut v: Value = serde_json::from_str(DAEMON_JSON).expect("daemon.json is JSON");
    assert_eq!(v["default-runtime"], "keyward", "{v:#}");
    let entry = &mut v["runtimes"]["keyward"];
    assert_eq!(entry["path"], "/usr/bin/keyward", "{entry:#}");
    let args = entry["runtimeArgs"].as_array_mut().expect("runtimeArgs");
    assert_eq!(args[0], "runtime");
    let at = args
        .iter()
        .position(|a| a == "--socket")
        .expect("the entry names --socket");
    assert_eq!(args[at + 1], "/run/keyward/keyward.sock");
    args[at + 1] = Value::String(socket.to_str().unwrap().into());
    assert_eq!(args.last().unwrap(), "--", "keyward's options end with --");
    entry["path"] = Value::String(KEYWARD.into());
    // The same entry with a real runtime that does not exist: the wrapper's
    // own failure, before any runtime runs.
    let mut broken = entry.clone();
    let args = broken["runtimeArgs"].as_array_mut().unwrap();
    let at = args.iter().position(|a| a == "--runtime").unwrap();
    args[at + 1] = Value::String("/nonexistent/runc".into());
    v["runtimes"]["keyward-broken"] = broken;
    serde_json::to_string_pretty(&v).unwrap()
}

/// A start that must have failed because the hook found no daemon: the
/// engine's error quotes the hook, and the container's command never ran.
fn refused_for_daemon_down(out: &Output) {
    let all = text(out);
    assert!(!out.status.success(), "started with the daemon down: {all}");
    assert!(
        all.contains("cannot reach keyward daemon"),
        "error does not name keyward: {all}"
    );
    assert!(!all.contains("started-unwatched"), "{all}");
}

fn full_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Docker, wired by the shipped daemon.json: `--runtime keyward` and the
/// default runtime are both watched before the first process runs, alerts
/// carry Docker's id, name and image, `docker exec` and `docker stop` still
/// work, and with the daemon down no container starts.
#[test]
fn docker_runtime_wrapper_watches_names_and_fails_closed() {
    if !ready() {
        return;
    }
    let mut e = Engines::new();
    let engines = format!("[engines]\ndocker_roots = [{:?}]\n", e.docker_root());
    let mut d = Daemon::start(&engines);
    e.start_containerd(&[]);
    e.start_dockerd(&daemon_json(&d.socket));
    let image = format!("{}:1", unique("keyward-docker-img"));
    e.import(&image);

    // An archiver reading a key, through --runtime keyward.
    let name = unique("kw-docker");
    let id = e.create(
        &name,
        &["--runtime", "keyward"],
        &image,
        &["/usr/bin/tar", "czf", "/tmp/x.tgz", "/root/.ssh/id_rsa"],
    );
    assert!(full_id(&id), "docker create printed {id:?}, not a full id");
    let out = e.docker(&["start", "--attach", &name]);
    assert!(out.status.success(), "docker start: {}", text(&out));
    d.wait_log(&format!("watching container {id} "));
    let a = d.wait_alert("tar in a Docker container", |a| {
        a["container"]["id"] == id.as_str()
    });
    assert_eq!(a["container"]["name"], name.as_str(), "{a:#}");
    assert_eq!(a["container"]["image"]["name"], image.as_str(), "{a:#}");
    assert_eq!(a["process"]["name"], "tar", "{a:#}");
    assert!(
        files(&a).contains(&"/root/.ssh/id_rsa".to_string()),
        "{a:#}"
    );

    // Benign work through the default runtime: watched, and quiet. It keeps
    // running so `docker exec` goes through the wrapper too.
    let quiet = unique("kw-docker-quiet");
    let quiet_id = e.create(
        &quiet,
        &[],
        &image,
        &["/bin/sh", "-c", "ls /app; cat /etc/hostname; sleep 60"],
    );
    let out = e.docker(&["start", &quiet]);
    assert!(out.status.success(), "docker start: {}", text(&out));
    d.wait_log(&format!("watching container {quiet_id} "));
    let out = e.docker(&["exec", &quiet, "/bin/echo", "exec-through-wrapper"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("exec-through-wrapper"),
        "docker exec: {}",
        text(&out)
    );
    // A process `docker exec` starts is the container's: caught too.
    let out = e.docker(&[
        "exec",
        &quiet,
        "/usr/bin/tar",
        "cf",
        "/tmp/y.tar",
        "/root/.aws",
    ]);
    assert!(out.status.success(), "docker exec tar: {}", text(&out));
    let exec_alert = d.wait_alert("tar from docker exec", |a| {
        a["container"]["id"] == quiet_id.as_str() && a["process"]["name"] == "tar"
    });
    assert_eq!(exec_alert["container"]["name"], quiet.as_str());
    let out = e.docker(&["stop", "--time", "1", &quiet]);
    assert!(out.status.success(), "docker stop: {}", text(&out));
    d.wait_log(&format!("stopped watching container {quiet_id}"));
    let noisy: Vec<Value> = d
        .settled_alerts()
        .into_iter()
        .filter(|a| a["container"]["id"] == quiet_id.as_str() && a["process"]["name"] != "tar")
        .collect();
    assert!(noisy.is_empty(), "benign work alerted: {noisy:#?}");

    // When the wrapper itself fails, nothing starts, and Docker shows the
    // reason it wrote to the runtime's JSON log.
    let broken = unique("kw-docker-broken");
    e.create(
        &broken,
        &["--runtime", "keyward-broken"],
        &image,
        &["/bin/sh", "-c", "echo started-unwatched"],
    );
    let out = e.docker(&["start", "--attach", &broken]);
    let all = text(&out);
    assert!(!out.status.success(), "started: {all}");
    assert!(
        all.contains("keyward: the real runtime") && all.contains("/nonexistent/runc"),
        "Docker's error lacks the wrapper's reason: {all}"
    );
    assert!(!all.contains("started-unwatched"), "{all}");

    // With the daemon down, a container does not start, and Docker's error
    // names keyward.
    d.stop();
    let down = unique("kw-docker-down");
    e.create(
        &down,
        &["--runtime", "keyward"],
        &image,
        &["/bin/sh", "-c", "echo started-unwatched"],
    );
    let out = e.docker(&["start", "--attach", &down]);
    refused_for_daemon_down(&out);
    let out = e.docker(&["inspect", "--format", "{{.State.Status}}", &down]);
    let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(status, "running", "{}", text(&out));
    assert_ne!(status, "exited", "the process ran: {}", text(&out));
}

/// `ctr run --rm --rootfs` through the `keyward-runtime` link, with `extra`
/// ctr options.
fn ctr_run(
    e: &Engines,
    link: &Path,
    rootfs: &Path,
    id: &str,
    extra: &[&str],
    argv: &[&str],
) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "run".as_ref(),
        "--rm".as_ref(),
        "--rootfs".as_ref(),
        "--runc-binary".as_ref(),
        link.as_os_str(),
        "--env".as_ref(),
        "PATH=/usr/bin:/bin".as_ref(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    args.push(rootfs.as_os_str());
    args.push(id.as_ref());
    args.extend(argv.iter().map(std::ffi::OsStr::new));
    e.ctr(&args)
}

/// A `keyward-runtime` link to the build under test, in the engines' dir.
fn runtime_link(e: &Engines) -> PathBuf {
    let bin = e.dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let link = bin.join("keyward-runtime");
    std::os::unix::fs::symlink(KEYWARD, &link).unwrap();
    link
}

/// containerd 1.6 without Docker: `ctr run --runc-binary` naming the
/// `keyward-runtime` link. The alert carries the container id ctr was
/// given, and the CRI annotations map to ECS `container.*` and
/// `orchestrator.*`. With the daemon down the container does not start.
#[test]
fn containerd_runc_binary_link_watches_and_fails_closed() {
    if !ready() {
        return;
    }
    let mut d = Daemon::start("");
    let mut e = Engines::new();
    let link = runtime_link(&e);
    e.start_containerd(&[("KEYWARD_SOCKET", d.socket.as_path())]);
    let rootfs = e.rootfs_copy("rootfs-ctr");
    let run =
        |id: &str, extra: &[&str], argv: &[&str]| ctr_run(&e, &link, &rootfs, id, extra, argv);

    let id = unique("kw-ctr");
    let out = run(
        &id,
        &[
            "--annotation",
            "io.kubernetes.cri.container-name=cart",
            "--annotation",
            "io.kubernetes.cri.image-name=registry.local/shop/cart:7",
            "--annotation",
            "io.kubernetes.cri.sandbox-namespace=shop",
            "--annotation",
            "io.kubernetes.cri.sandbox-name=cart-7f9c4",
        ],
        &[
            "/bin/sh",
            "-c",
            "/usr/bin/tar czf /tmp/x.tgz /root/.ssh/id_rsa; echo done",
        ],
    );
    assert!(out.status.success(), "ctr run: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("done"),
        "{}",
        text(&out)
    );
    let a = d.wait_alert("tar in a containerd container", |a| {
        a["container"]["id"] == id.as_str()
    });
    assert_eq!(a["container"]["name"], "cart", "{a:#}");
    assert_eq!(
        a["container"]["image"]["name"], "registry.local/shop/cart:7",
        "{a:#}"
    );
    assert_eq!(a["orchestrator"]["namespace"], "shop", "{a:#}");
    assert_eq!(a["orchestrator"]["resource"]["name"], "cart-7f9c4", "{a:#}");
    assert_eq!(a["orchestrator"]["resource"]["type"], "pod", "{a:#}");

    // Without CRI annotations: only the id, and no orchestrator.
    let plain = unique("kw-ctr-plain");
    let out = run(
        &plain,
        &[],
        &["/usr/bin/zip", "-q", "/tmp/k.zip", "/root/.ssh/id_rsa"],
    );
    assert!(out.status.success(), "ctr run: {}", text(&out));
    let a = d.wait_alert("zip in a plain containerd container", |a| {
        a["container"]["id"] == plain.as_str()
    });
    assert!(a.get("orchestrator").is_none(), "{a:#}");

    d.stop();
    let down = unique("kw-ctr-down");
    let out = run(&down, &[], &["/bin/sh", "-c", "echo started-unwatched"]);
    refused_for_daemon_down(&out);
}

/// crun as the real runtime behind the wrapper: containerd's shims get
/// `KEYWARD_RUNTIME=crun`, as the shipped containerd snippet documents, and
/// an archiver in the container is caught. crun, not runc, ran it: while it
/// runs, its state under the `--root` the shim passes
/// (`/run/containerd/runc/<namespace>`) is crun's (`status`), not runc's
/// (`state.json`).
#[test]
fn wrapper_runs_crun_as_the_real_runtime() {
    if !ready() {
        return;
    }
    let mut d = Daemon::start_without_unified_cgroup("");
    let mut e = Engines::new();
    let link = runtime_link(&e);
    e.start_containerd_for_crun(
        &[
            ("KEYWARD_SOCKET", d.socket.as_path()),
            ("KEYWARD_RUNTIME", Path::new("crun")),
        ],
        &d,
    );
    let rootfs = e.rootfs_copy("rootfs-crun");
    let id = unique("kw-crun");
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "run".as_ref(),
        "--detach".as_ref(),
        "--rootfs".as_ref(),
        "--runc-binary".as_ref(),
        link.as_os_str(),
        "--env".as_ref(),
        "PATH=/usr/bin:/bin".as_ref(),
        rootfs.as_os_str(),
        id.as_ref(),
    ];
    args.extend(
        [
            "/bin/sh",
            "-c",
            "/usr/bin/tar cf /tmp/x.tar /root/.docker/config.json; sleep 60",
        ]
        .map(std::ffi::OsStr::new),
    );
    let out = e.ctr(&args);
    assert!(out.status.success(), "ctr run (crun): {}", text(&out));
    let a = d.wait_alert("tar in a container run by crun", |a| {
        a["container"]["id"] == id.as_str()
    });
    assert_eq!(a["process"]["name"], "tar", "{a:#}");
    let state = Path::new("/run/containerd/runc/default").join(&id);
    let names: Vec<String> = fs::read_dir(&state)
        .map(|d| {
            d.flatten()
                .map(|f| f.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let _ = e.ctr(&["task", "kill", "--signal", "KILL", &id]);
    wait_until(
        Duration::from_secs(20),
        || format!("task {id} never stopped"),
        || {
            let out = e.ctr(&["task", "rm", &id]);
            out.status.success() || String::from_utf8_lossy(&out.stderr).contains("not found")
        },
    );
    let _ = e.ctr(&["container", "rm", &id]);
    assert!(
        names.iter().any(|n| n == "status") && !names.iter().any(|n| n == "state.json"),
        "{} holds {names:?}: not crun's state",
        state.display()
    );

    // With the daemon down crun refuses the container too; its error names
    // the hook (crun does not quote the hook's stderr, runc does).
    d.stop();
    let down = unique("kw-crun-down");
    let out = ctr_run(
        &e,
        &link,
        &rootfs,
        &down,
        &[],
        &["/bin/sh", "-c", "echo started-unwatched"],
    );
    let all = text(&out);
    assert!(!out.status.success(), "started with the daemon down: {all}");
    assert!(
        all.contains("error executing hook") && all.contains(KEYWARD),
        "crun's error does not name keyward's hook: {all}"
    );
    assert!(!all.contains("started-unwatched"), "{all}");
}

/// A real runtime that leads back to the wrapper (here a script that calls
/// `keyward runtime` naming itself) is refused on its second pass instead of
/// exec'ing forever. Needs no engine and no privilege.
#[test]
fn wrapper_refuses_a_runtime_that_runs_it_again() {
    let dir = std::env::temp_dir().join(unique("keyward-loop"));
    fs::create_dir_all(&dir).unwrap();
    let script = dir.join("looping-runtime");
    fs::write(
        &script,
        format!("#!/bin/sh\nexec {KEYWARD} runtime --runtime \"$0\" -- \"$@\"\n"),
    )
    .unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new("timeout")
        .args(["-s", "KILL", "20", KEYWARD, "runtime", "--runtime"])
        .arg(&script)
        .args(["--", "state", "some-id"])
        .env_remove("KEYWARD_RUNTIME_WRAPPED")
        .output()
        .unwrap();
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run again by its own real runtime"),
        "{}",
        text(&out)
    );
}
