//! Shared harness for the privileged end-to-end tests.
//!
//! Strategy: every test starts its own real `keyward daemon` (under
//! `timeout`, killed by pid on drop) with a private socket, runtime dir,
//! alert file and a real syslog datagram socket that the test binds. It
//! then runs real runc containers whose `config.json` wires `keyward hook`
//! into createRuntime. The rootfs is busybox-static plus GNU
//! tar, gzip, zip and 7z copied in with their `ldd` libraries, and a set of
//! fake credential files. Nothing is faked between the kernel and the
//! alert.
//!
//! Under `CI=true` a test that cannot run (not root, no runc) fails instead
//! of skipping.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const KEYWARD: &str = env!("CARGO_BIN_EXE_keyward");
/// Hard cap on any daemon a test starts: it holds permission events, so it
/// must never outlive a hung test.
const DAEMON_TIMEOUT_SECS: u64 = 300;
/// Hard cap on one container run.
const CONTAINER_TIMEOUT_SECS: u64 = 60;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Whether privileged tests can run here. Panics under `CI=true` if not.
pub fn privileged() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let runc = Command::new("runc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let have = |b: &str| Path::new(b).exists();
    let ok = root && runc && (have("/bin/busybox") || have("/usr/bin/busybox"));
    if !ok {
        let why = format!("privileged e2e test needs root ({root}) and runc ({runc}) and busybox");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why}: under CI=true a skipped privileged test fails the run");
        }
        eprintln!("SKIP: {why}");
    }
    ok
}

/// Whether an extra tool a test needs (podman, rsyslogd, a built .deb) is
/// here. Like [`privileged`]: under `CI=true` a missing tool fails the run.
pub fn required(what: &str, ok: bool) -> bool {
    if !ok {
        let why = format!("e2e test needs {what}");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why}: under CI=true a skipped test fails the run (bash .ci/deps installs it)");
        }
        eprintln!("SKIP: {why}");
    }
    ok
}

/// Whether `cmd --version` runs.
pub fn have_command(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh")
}

/// Copy `bin` to `dest` under `root`, with the shared libraries `ldd`
/// lists for it, at their own paths.
pub fn copy_with_libs(bin: &str, root: &Path, dest: &str) {
    let target = root.join(dest.trim_start_matches('/'));
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    fs::copy(bin, &target).unwrap_or_else(|e| panic!("copy {bin}: {e}"));
    let out = Command::new("ldd").arg(bin).output().unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(lib) = line.split_whitespace().find(|w| w.starts_with('/')) else {
            continue;
        };
        let dst = root.join(lib.trim_start_matches('/'));
        if dst.exists() {
            continue;
        }
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(lib, &dst).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
    }
}

/// gzip under `dest` in `root`, its GNU build-id changed: an archiver
/// neither the host nor any image has (rebuilt or patched), so neither its
/// name nor its content says gzip. The note (namesz 4, descsz 20, type 3,
/// "GNU\0") is found in the file and its 20 id bytes inverted; the loader
/// never reads them.
pub fn install_unknown_gzip(root: &Path, dest: &str) {
    copy_with_libs("/usr/bin/gzip", root, dest);
    let path = root.join(dest.trim_start_matches('/'));
    let mut bin = fs::read(&path).unwrap();
    let note: &[u8] = b"\x04\x00\x00\x00\x14\x00\x00\x00\x03\x00\x00\x00GNU\x00";
    let at = bin
        .windows(note.len())
        .position(|w| w == note)
        .expect("gzip has a GNU build-id note")
        + note.len();
    for b in &mut bin[at..at + 20] {
        *b = !*b;
    }
    fs::write(&path, bin).unwrap();
}

/// Fake credential files planted in every rootfs, with their contents.
pub const SECRETS: &[(&str, &str)] = &[
    ("/root/.ssh/id_rsa", "ROOT-RSA-PRIVATE-KEY"),
    ("/root/.ssh/id_rsa.pub", "ssh-rsa AAAA root"),
    ("/root/.ssh/id_ed25519", "ROOT-ED25519-PRIVATE-KEY"),
    ("/root/.ssh/authorized_keys", "ssh-ed25519 AAAA admin"),
    ("/root/.ssh/known_hosts", "github.com ssh-ed25519 AAAA"),
    ("/root/.bash_history", "export AWS_SECRET=x"),
    (
        "/root/.aws/credentials",
        "[default]\naws_secret_access_key=ROOT-AWS-SECRET",
    ),
    ("/root/.aws/config", "[default]\nregion=eu-west-1"),
    (
        "/root/.docker/config.json",
        "{\"auths\":{\"r\":{\"auth\":\"ROOT-DOCKER-AUTH\"}}}",
    ),
    ("/home/alice/.ssh/id_ed25519", "ALICE-ED25519-PRIVATE-KEY"),
    ("/home/alice/.ssh/id_rsa", "ALICE-RSA-PRIVATE-KEY"),
    ("/home/alice/.bash_history", "ssh prod"),
    ("/home/alice/.aws/credentials", "ALICE-AWS-SECRET"),
    ("/root/.SSH/ID_RSA", "ROOT-UPPER-CASE-KEY"),
    ("/etc/shadow", "root:$6$SHADOW-HASH:19000:0:99999:7:::"),
    ("/etc/gshadow", "root:::"),
];

/// Remove base rootfs dirs left by test binaries that have exited (13 MB
/// each; a binary cannot remove its own at exit).
fn remove_stale_bases() {
    let Ok(dir) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("keyward-e2e-base-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Build (once per test binary) the base rootfs.
pub fn base_rootfs() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        remove_stale_bases();
        let dir = std::env::temp_dir().join(format!("keyward-e2e-base-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let root = dir.join("rootfs");
        for d in [
            "bin",
            "sbin",
            "usr/bin",
            "tmp",
            "proc",
            "dev",
            "sys",
            "app/src",
            "etc",
            "root",
            "home/alice",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        let busybox = if Path::new("/bin/busybox").exists() {
            "/bin/busybox"
        } else {
            "/usr/bin/busybox"
        };
        fs::copy(busybox, root.join("bin/busybox")).unwrap();
        let list = Command::new(busybox).arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let link = root.join("bin").join(applet);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", link).unwrap();
            }
        }
        // GNU tools in /usr/bin shadow nothing: busybox applets stay in /bin.
        copy_with_libs("/usr/bin/tar", &root, "/usr/bin/tar");
        copy_with_libs("/usr/bin/gzip", &root, "/usr/bin/gzip");
        copy_with_libs("/usr/bin/zip", &root, "/usr/bin/zip");
        // GNU nice: busybox-static has no nice applet, and it is a wrapper
        // attackers use.
        copy_with_libs("/usr/bin/nice", &root, "/usr/bin/nice");
        // A plain (non-archiver) dynamic program, off PATH: the exec path
        // ignores such programs after their first exec.
        copy_with_libs("/usr/bin/true", &root, "/opt/gnu/true");
        // 7z is a shell wrapper around /usr/lib/p7zip/7z (which dlopens 7z.so).
        copy_with_libs("/usr/lib/p7zip/7z", &root, "/usr/lib/p7zip/7z");
        copy_with_libs("/usr/lib/p7zip/7z.so", &root, "/usr/lib/p7zip/7z.so");
        fs::write(
            root.join("usr/bin/7z"),
            "#!/bin/sh\nexec /usr/lib/p7zip/7z \"$@\"\n",
        )
        .unwrap();
        fs::set_permissions(root.join("usr/bin/7z"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\nalice:x:1000:\n").unwrap();
        fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        for (path, content) in SECRETS {
            let p = root.join(path.trim_start_matches('/'));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, content).unwrap();
        }
        fs::write(root.join("app/src/main.py"), "print('hello')\n").unwrap();
        fs::write(root.join("app/README"), "an app\n").unwrap();
        dir
    })
}

/// The pid of the command a `timeout(1)` child runs.
pub fn inner_pid(child: &std::process::Child) -> Option<i32> {
    let t = child.id();
    fs::read_to_string(format!("/proc/{t}/task/{t}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Stop a `timeout(1)`-wrapped child: SIGTERM its command by pid, then
/// SIGKILL the wrapper after 5 s.
/// Poll `cond` every 50 ms until it holds; fail the test with `what()`
/// after `timeout`.
pub fn wait_until(timeout: Duration, what: impl Fn() -> String, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {}", what());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM the process inside a `timeout` wrapper, by pid; SIGKILL it
/// (and the wrapper) if it has not exited after 5 s. Returns whether it
/// stopped on SIGTERM.
pub fn stop_wrapped(child: &mut std::process::Child) -> bool {
    let inner = inner_pid(child);
    if let Some(pid) = inner {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Killing only the wrapper would leave a hung daemon behind, holding
    // its fanotify groups.
    if let Some(pid) = inner {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// A syslog receiver on a real datagram socket.
pub struct Syslog {
    pub path: PathBuf,
    pub messages: Arc<Mutex<Vec<String>>>,
}

impl Syslog {
    fn bind(path: PathBuf) -> Self {
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let m = messages.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => m
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return,
                }
            }
        });
        Self { path, messages }
    }
}

impl Syslog {
    /// Wait up to 5 s for a message that `pred` accepts.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) {
        wait_until(
            Duration::from_secs(5),
            || {
                format!(
                    "no syslog message {what}: {:#?}",
                    self.messages.lock().unwrap()
                )
            },
            || self.messages.lock().unwrap().iter().any(|m| pred(m)),
        );
    }
}

/// A running daemon, killed on drop.
pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub alerts: PathBuf,
    pub config: PathBuf,
    pub syslog: Syslog,
    child: Option<std::process::Child>,
    pub log: PathBuf,
    /// Run the daemon in a mount namespace of its own without the unified
    /// cgroup tree ([`Daemon::start_without_unified_cgroup`]).
    private_mounts: bool,
    /// The daemon's binary, when it runs from a copy of its own
    /// ([`Daemon::start_installed`]).
    binary: Option<PathBuf>,
}

/// Run `argv` in a new mount namespace where `/sys/fs/cgroup/unified` is
/// not mounted. `unshare` and `sh` exec, so the pid is `argv`'s.
const WITHOUT_UNIFIED: &[&str] = &[
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "--",
    "sh",
    "-c",
    "umount -l /sys/fs/cgroup/unified 2>/dev/null; exec \"$@\"",
    "sh",
];

impl Daemon {
    /// Like [`Daemon::start`], in a mount namespace of the daemon's own
    /// where the unified cgroup tree is not mounted, for an engine that
    /// then joins it (`nsenter --mount=/proc/PID/ns/mnt`). crun 1.8 refuses
    /// a hybrid host whose unified tree has controllers (this machine's
    /// has hugetlb); the daemon accepts hooks only from its own or the
    /// host's mount namespace, so the engine's must be the daemon's.
    pub fn start_without_unified_cgroup(extra: &str) -> Self {
        Self::start_inner(extra, None, "", "", true)
    }

    /// Start with extra TOML appended to the test's base config.
    pub fn start(extra: &str) -> Self {
        Self::start_inner(extra, None, "", "", false)
    }

    /// Like [`Daemon::start`], from a copy of the binary in the test's
    /// dir ([`Daemon::installed`]), as a package installs it: a test can
    /// then put a new version at that path.
    pub fn start_installed(extra: &str) -> Self {
        let mut d = Self::unspawned(extra, None, "", "", false);
        let bin = d.dir.join("bin/keyward");
        fs::create_dir_all(bin.parent().unwrap()).unwrap();
        fs::copy(KEYWARD, &bin).unwrap();
        d.binary = Some(bin);
        d.spawn();
        d
    }

    /// Where [`Daemon::start_installed`] put the binary.
    pub fn installed(&self) -> &Path {
        self.binary
            .as_deref()
            .expect("started with start_installed")
    }

    /// Like [`Daemon::start`], with `daemon_keys` (lines of the
    /// `[daemon]` table, e.g. `decision_deadline_ms = 10`) added.
    pub fn start_with_daemon(extra: &str, daemon_keys: &str) -> Self {
        Self::start_inner(extra, None, "", daemon_keys, false)
    }

    /// Like [`Daemon::start`], but the `[alerts.syslog]` table is
    /// `syslog_table` (e.g. `server = "tcp://127.0.0.1:PORT"`) instead of the
    /// harness's datagram socket. The harness socket is still bound, unused.
    pub fn start_with_syslog(extra: &str, syslog_table: &str) -> Self {
        Self::start_inner(extra, Some(syslog_table), "", "", false)
    }

    /// Like [`Daemon::start`], with `alerts_keys` (lines of the `[alerts]`
    /// table, e.g. `rate_limit_per_minute = 5`) added.
    pub fn start_with_alerts(extra: &str, alerts_keys: &str) -> Self {
        Self::start_inner(extra, None, alerts_keys, "", false)
    }

    fn start_inner(
        extra: &str,
        syslog_table: Option<&str>,
        alerts_keys: &str,
        daemon_keys: &str,
        private_mounts: bool,
    ) -> Self {
        let mut d = Self::unspawned(
            extra,
            syslog_table,
            alerts_keys,
            daemon_keys,
            private_mounts,
        );
        d.spawn();
        d
    }

    fn unspawned(
        extra: &str,
        syslog_table: Option<&str>,
        alerts_keys: &str,
        daemon_keys: &str,
        private_mounts: bool,
    ) -> Self {
        let dir = std::env::temp_dir().join(unique("keyward-e2e"));
        fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("keyward.sock");
        let alerts = dir.join("alerts.json");
        let syslog = Syslog::bind(dir.join("log.sock"));
        let config = dir.join("keyward.toml");
        let table = match syslog_table {
            Some(t) => t.to_string(),
            None => format!("socket = {:?}", syslog.path),
        };
        let text = format!(
            "socket = {socket:?}\n{extra}\n[daemon]\nruntime_dir = {:?}\naggregate_ms = 200\n{daemon_keys}\n[alerts]\njson = {alerts:?}\n{alerts_keys}\n[alerts.syslog]\n{table}\n",
            dir.join("run"),
        );
        fs::write(&config, text).unwrap();
        Self {
            dir,
            socket,
            alerts,
            config,
            syslog,
            child: None,
            log: PathBuf::new(),
            private_mounts,
            binary: None,
        }
    }

    /// Wait until the daemon watches exactly `n` containers.
    pub fn wait_registered(&self, n: u64) {
        self.wait_containers(n, Duration::from_secs(15));
    }

    /// Wait up to `within` until the daemon watches exactly `n` containers
    /// (after registrations, or after containers went).
    pub fn wait_containers(&self, n: u64, within: Duration) {
        wait_until(
            within,
            || format!("never {n} containers: {}", self.log_text()),
            || self.status()["containers"].as_u64() == Some(n),
        );
    }

    /// The init flags of each fanotify group the daemon holds, as its
    /// `/proc/<pid>/fdinfo` shows them (`fanotify flags:<hex>`).
    pub fn fanotify_flags(&self) -> Vec<u32> {
        let pid = self.pid();
        fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .unwrap()
            .flatten()
            .filter_map(|fd| {
                let info = fs::read_to_string(fd.path()).ok()?;
                let hex = info
                    .lines()
                    .find_map(|l| l.strip_prefix("fanotify flags:"))?;
                u32::from_str_radix(hex.split_whitespace().next()?, 16).ok()
            })
            .collect()
    }

    /// Inode numbers of every fanotify inode mark the daemon holds, read
    /// from its `/proc/<pid>/fdinfo`.
    pub fn marked_inodes(&self) -> Vec<u64> {
        let pid = self.pid();
        let mut marked = Vec::new();
        for fd in fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .unwrap()
            .flatten()
        {
            let info = fs::read_to_string(fd.path()).unwrap_or_default();
            for line in info.lines().filter(|l| l.starts_with("fanotify ino:")) {
                let ino = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap()
                    .trim_start_matches("ino:");
                marked.push(u64::from_str_radix(ino, 16).unwrap());
            }
        }
        marked
    }

    /// Start (or restart) the daemon process on the same dir and config.
    pub fn spawn(&mut self) {
        let log = self.dir.join(format!(
            "daemon-{}.log",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let prefix: &[&str] = if self.private_mounts {
            WITHOUT_UNIFIED
        } else {
            &[]
        };
        let mut cmd = Command::new(prefix.first().copied().unwrap_or("timeout"));
        if !prefix.is_empty() {
            cmd.args(&prefix[1..]).arg("timeout");
        }
        let binary = self.binary.clone().unwrap_or_else(|| KEYWARD.into());
        let child = cmd
            .args(["-s", "KILL", &DAEMON_TIMEOUT_SECS.to_string()])
            .arg(&binary)
            .args(["daemon", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn keyward daemon");
        self.child = Some(child);
        self.log = log;
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if fs::read_to_string(&self.log)
                .unwrap_or_default()
                .contains("serving")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "daemon did not start: {}",
            fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// The pid of the keyward daemon itself (child of `timeout`).
    pub fn pid(&self) -> i32 {
        inner_pid(self.child.as_ref().expect("running")).expect("daemon pid")
    }

    /// Replace the config file with `text` and send SIGHUP (by pid).
    pub fn reload_with(&self, text: &str) {
        fs::write(&self.config, text).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::SIGHUP,
        )
        .unwrap();
    }

    /// SIGTERM the daemon by pid. A daemon that does not exit on SIGTERM
    /// fails the test (it would hold its permission marks): every test
    /// checks the shutdown path this way, unless it is already failing.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let clean = stop_wrapped(&mut child);
            if !clean && !std::thread::panicking() {
                panic!(
                    "the daemon did not stop within 5 s of SIGTERM: {}",
                    self.log_text()
                );
            }
        }
    }

    /// SIGKILL the daemon itself (a crash).
    pub fn crash(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = inner_pid(&child) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
        let _ = child.wait();
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every alert in the JSON file so far. A last line without its
    /// newline is one the daemon is still writing (a reader can see part
    /// of a write to a regular file): it is left for the next look.
    pub fn alerts(&self) -> Vec<Value> {
        let text = fs::read_to_string(&self.alerts).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        complete
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("alert line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Wait until `pred` holds for some alert; returns it.
    pub fn wait_alert(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(a) = self.alerts().into_iter().find(|a| pred(a)) {
                return a;
            }
            if Instant::now() > deadline {
                let status = Command::new(KEYWARD)
                    .args(["status", "--json", "--socket"])
                    .arg(&self.socket)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let cmds: Vec<String> = self
                    .alerts()
                    .iter()
                    .map(|a| a["process"]["command_line"].to_string())
                    .collect();
                panic!(
                    "no alert for {what} within 10 s; alerts for: {cmds:#?}\nstatus: {status}\ndaemon log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait up to 15 s until the daemon's log contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        wait_until(
            Duration::from_secs(15),
            || format!("daemon log never said {needle:?}:\n{}", self.log_text()),
            || self.log_text().contains(needle),
        );
    }

    /// Let the aggregation window pass, then return the alerts.
    pub fn settled_alerts(&self) -> Vec<Value> {
        std::thread::sleep(Duration::from_millis(1200));
        self.alerts()
    }

    pub fn status(&self) -> Value {
        let out = Command::new(KEYWARD)
            .args(["status", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A runc bundle with the hook wired in.
pub struct Bundle {
    pub id: String,
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub config: Value,
    /// The rootfs is an overlay this bundle mounted ([`Bundle::on_overlay`]).
    overlay: bool,
}

fn runc_spec_template() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("keyward-e2e-spec-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let out = Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "runc spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v =
            serde_json::from_str(&fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let _ = fs::remove_dir_all(&dir);
        v
    })
}

impl Bundle {
    /// A fresh bundle: a copy of the base rootfs, `script` run by `sh -c`,
    /// the hook in createRuntime pointing at `socket`, as the shipped
    /// hooks.d file has it (the daemon drops the container when its init
    /// exits; [`Bundle::poststop`] adds the optional poststop stage).
    pub fn new(prefix: &str, socket: &Path, script: &str) -> Self {
        let id = unique(prefix);
        let dir = std::env::temp_dir().join(&id);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let rootfs = dir.join("rootfs");
        let out = sh(&format!(
            "cp -a {}/rootfs {}",
            base_rootfs().display(),
            rootfs.display()
        ));
        assert!(
            out.status.success(),
            "copy rootfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut config = runc_spec_template().clone();
        config["process"]["terminal"] = Value::Bool(false);
        config["process"]["args"] = serde_json::json!(["/bin/sh", "-c", script]);
        config["process"]["env"] = serde_json::json!(["PATH=/usr/bin:/bin", "HOME=/root"]);
        config["root"]["path"] = Value::String("rootfs".into());
        config["root"]["readonly"] = Value::Bool(false);
        let hook = serde_json::json!({"path": KEYWARD, "args": ["keyward", "hook", "--socket", socket], "timeout": 10});
        config["hooks"] = serde_json::json!({"createRuntime": [hook]});
        Self {
            id,
            dir,
            rootfs,
            config,
            overlay: false,
        }
    }

    /// Run on an overlay of its rootfs copy, as container engines do:
    /// the copy becomes the lower layer, and the bundle gets its own
    /// overlay superblock (unmounted when the bundle is dropped).
    pub fn on_overlay(&mut self) -> &mut Self {
        let lower = self.dir.join("lower");
        fs::rename(&self.rootfs, &lower).unwrap();
        self.overlay_of(&lower)
    }

    /// Run on an overlay whose lower layer is `lower` (another bundle's
    /// rootfs, say), instead of its own copy.
    pub fn on_overlay_of(&mut self, lower: &Path) -> &mut Self {
        fs::remove_dir_all(&self.rootfs).unwrap();
        self.overlay_of(lower)
    }

    fn overlay_of(&mut self, lower: &Path) -> &mut Self {
        for d in ["upper", "work", "rootfs"] {
            fs::create_dir_all(self.dir.join(d)).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            self.dir.join("upper").display(),
            self.dir.join("work").display()
        );
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&self.rootfs)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount overlay: {}", text(&out));
        self.overlay = true;
        self
    }

    pub fn annotate(&mut self, key: &str, value: &str) -> &mut Self {
        if !self.config["annotations"].is_object() {
            self.config["annotations"] = serde_json::json!({});
        }
        self.config["annotations"][key] = Value::String(value.into());
        self
    }

    /// Replace the hook args (e.g. a dead socket, `--fail-open`).
    pub fn hook_args(&mut self, args: &[&str]) -> &mut Self {
        let hook = serde_json::json!({"path": KEYWARD, "args": args, "timeout": 10});
        self.config["hooks"] = serde_json::json!({"createRuntime": [hook]});
        self
    }

    /// Run the hook at poststop too (the stage is optional: the daemon
    /// notices the init's exit by itself).
    pub fn poststop(&mut self) -> &mut Self {
        let hook = self.config["hooks"]["createRuntime"][0].clone();
        self.config["hooks"]["poststop"] = serde_json::json!([hook]);
        self
    }

    /// `runc run` in the background (under a 120 s timeout); stdout is
    /// dropped, stderr piped for `wait_with_output`.
    pub fn spawn(&self) -> std::process::Child {
        fs::write(
            self.dir.join("config.json"),
            serde_json::to_string(&self.config).unwrap(),
        )
        .unwrap();
        Command::new("timeout")
            .args(["-s", "KILL", "120", "runc", "run", "--bundle"])
            .arg(&self.dir)
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runc run")
    }

    /// `runc run` to completion (under a timeout); stdout+stderr and status.
    /// [`Bundle::run`], failing the test unless the container exits 0.
    pub fn run_ok(&self) -> Output {
        let out = self.run();
        assert!(
            out.status.success(),
            "container {} failed: {}",
            self.id,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// [`Bundle::run`], failing the test unless the container printed
    /// `word` (the last line of its script).
    pub fn run_saying(&self, word: &str) -> Output {
        let out = self.run();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(word),
            "container {} did not say {word:?}: {}",
            self.id,
            text(&out)
        );
        out
    }

    pub fn run(&self) -> Output {
        let mut f = fs::File::create(self.dir.join("config.json")).unwrap();
        f.write_all(
            serde_json::to_string_pretty(&self.config)
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        drop(f);
        let out = Command::new("timeout")
            .args([
                "-s",
                "KILL",
                &CONTAINER_TIMEOUT_SECS.to_string(),
                "runc",
                "run",
                "--bundle",
            ])
            .arg(&self.dir)
            .arg(&self.id)
            .stdin(Stdio::null())
            .output()
            .expect("runc run");
        let _ = Command::new("runc")
            .args(["delete", "-f", &self.id])
            .output();
        out
    }

    /// A file in the container's rootfs, read from the host.
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        fs::read(self.rootfs.join(path.trim_start_matches('/'))).ok()
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "-f", &self.id])
            .output();
        if self.overlay {
            let umount = |lazy: bool| {
                let mut c = Command::new("umount");
                if lazy {
                    c.arg("-l");
                }
                c.arg(&self.rootfs).status().is_ok_and(|s| s.success())
            };
            if !umount(false) {
                umount(true);
            }
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The text of the YAML block scalar `key: |` in `yaml` (the first one),
/// its indentation removed. Enough for the ConfigMap in
/// `packaging/kubernetes/daemonset.yaml`, without a YAML parser.
pub fn yaml_block(yaml: &str, key: &str) -> String {
    let head = format!("{key}: |");
    let mut lines = yaml.lines().skip_while(|l| l.trim() != head).skip(1);
    let first = lines
        .clone()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("no block scalar {key:?}"));
    let indent = first.len() - first.trim_start().len();
    let mut out = String::new();
    for l in lines.by_ref() {
        if !l.trim().is_empty() && l.len() - l.trim_start().len() < indent {
            break;
        }
        out.push_str(l.get(indent..).unwrap_or(""));
        out.push('\n');
    }
    out
}

/// `program` run in the mount namespace of `pid` (`nsenter` execs, so the
/// pid is `program`'s).
pub fn in_mount_ns_of(pid: i32, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--mount=/proc/{pid}/ns/mnt"))
        .args(["--", program]);
    c
}

/// Detach every mount under `dir` (deepest first), then remove it: what an
/// engine left behind in a test's private directory.
pub fn remove_engine_dir(dir: &Path) {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    mounts.reverse();
    for m in mounts {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = fs::remove_dir_all(dir);
}

/// The harness rootfs as a tar at `tar`, for an engine's `import`.
pub fn rootfs_tar(tar: &Path) {
    let out = Command::new("tar")
        .arg("-C")
        .arg(base_rootfs().join("rootfs"))
        .arg("-cf")
        .arg(tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success(), "tar rootfs: {}", text(&out));
}

/// Text of an output, both streams.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The alert's `keyward.files[].path` values.
pub fn files(a: &Value) -> Vec<String> {
    a["keyward"]["files"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|f| f["path"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the alert's process args contain `needle` as one arg.
pub fn has_arg(a: &Value, needle: &str) -> bool {
    a["process"]["args"]
        .as_array()
        .is_some_and(|v| v.iter().any(|x| x.as_str() == Some(needle)))
}
