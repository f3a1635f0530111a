//! The .deb that `cargo deb` builds installs, works and removes cleanly.
//!
//! Strategy: take the newest `target/debian/keyward_<version>-*.deb` (or
//! `$KEYWARD_DEB`); without one the test skips, and under `CI=true` fails
//! (`.ci/run` builds it first: `packaging/build-release.sh`, then
//! `cargo deb --no-build`). Install it with the real `dpkg` into
//! a throwaway root (`dpkg --root` with an empty dpkg database, and
//! `--force-script-chrootless` so the generated maintainer scripts run with
//! `DPKG_ROOT` set: `deb-systemd-helper` then enables the unit inside that
//! root, and a `policy-rc.d` there that answers 101 keeps
//! `deb-systemd-invoke` from starting anything). Then compare the installed
//! files with the repository's, run the installed `keyward check` (with the
//! installed conffile), and remove and purge the package, checking what
//! dpkg leaves behind at each step. The host's own dpkg database and
//! systemd state are never touched.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{required, text, unique};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The .deb to test: `$KEYWARD_DEB`, else the newest one `cargo deb` left
/// in the target directory for this version.
fn find_deb() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KEYWARD_DEB") {
        return Some(PathBuf::from(p));
    }
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent()?;
    let prefix = format!("keyward_{VERSION}-");
    fs::read_dir(target.join("debian"))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&prefix) && n.ends_with(".deb")
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// A throwaway dpkg root, removed on drop.
struct Root {
    dir: PathBuf,
}

impl Root {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("keyward-deb-root"));
        let _ = fs::remove_dir_all(&dir);
        for d in [
            "var/lib/dpkg/info",
            "var/lib/dpkg/updates",
            "var/lib/dpkg/triggers",
            "var/log",
            "usr/sbin",
        ] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        fs::write(dir.join("var/lib/dpkg/status"), "").unwrap();
        fs::write(dir.join("var/lib/dpkg/available"), "").unwrap();
        // "Do not start services here" (what deb-systemd-invoke asks under
        // DPKG_ROOT).
        let policy = dir.join("usr/sbin/policy-rc.d");
        fs::write(&policy, "#!/bin/sh\nexit 101\n").unwrap();
        fs::set_permissions(&policy, fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p.trim_start_matches('/'))
    }

    /// `dpkg --root` with `args`, under a timeout.
    fn dpkg(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["-s", "KILL", "120", "dpkg"])
            .arg(format!("--root={}", self.dir.display()))
            .arg(format!("--log={}", self.path("var/log/dpkg.log").display()))
            .arg("--force-script-chrootless")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run dpkg")
    }

    fn status(&self) -> String {
        let out = Command::new("dpkg-query")
            .arg(format!("--root={}", self.dir.display()))
            .args(["-W", "-f=${Status}", "keyward"])
            .output()
            .expect("run dpkg-query");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether an ELF64 little-endian file has a `PT_INTERP` program header
/// (a dynamic loader to run it).
fn has_interpreter(elf: &[u8]) -> bool {
    let u16at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16at(0x36), u16at(0x38));
    (0..count).any(|i| {
        let at = phoff + i * size;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3
    })
}

fn same_file(installed: &Path, repo: &str) {
    let want = fs::read(Path::new(REPO).join(repo)).unwrap();
    let got = fs::read(installed).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (a .deb older than the tree? rebuild with `bash packaging/build-release.sh && cargo deb --no-build`)",
            installed.display()
        )
    });
    assert!(
        got == want,
        "{} differs from {repo} (a .deb older than the tree? rebuild with `bash packaging/build-release.sh && cargo deb --no-build`)",
        installed.display()
    );
}

/// The installed unit: /usr/lib/systemd/system, or /lib on older layouts.
fn unit(root: &Root) -> PathBuf {
    let usr = root.path("/usr/lib/systemd/system/keyward.service");
    if usr.exists() {
        usr
    } else {
        root.path("/lib/systemd/system/keyward.service")
    }
}

#[test]
fn deb_installs_runs_and_removes_cleanly() {
    let root_user = nix::unistd::Uid::effective().is_root();
    let deb = find_deb();
    if !required("root", root_user)
        || !required(
            "a .deb from `cargo deb` (target/debian/keyward_VERSION-*.deb or $KEYWARD_DEB)",
            deb.is_some(),
        )
    {
        return;
    }
    let deb = deb.unwrap();
    let field = |f: &str| {
        let out = Command::new("dpkg-deb")
            .arg("-f")
            .arg(&deb)
            .arg(f)
            .output()
            .unwrap();
        assert!(out.status.success(), "dpkg-deb -f {f}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(field("Package"), "keyward");
    assert!(
        field("Version").starts_with(&format!("{VERSION}-")),
        "{} is not version {VERSION}",
        deb.display()
    );

    // An upgrade neither stops nor restarts the daemon (either closes the
    // fanotify groups, and the kernel allows what is pending): the prerm
    // stops it on remove only, and the postinst sends SIGUSR2, which
    // re-execs the new binary in place (tests/e2e_reliability.rs tests
    // that re-exec).
    let script = |name: &str| {
        let dir = std::env::temp_dir().join(unique("kw-deb-control"));
        let out = Command::new("dpkg-deb")
            .arg("-e")
            .arg(&deb)
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "dpkg-deb -e: {}", text(&out));
        let s = fs::read_to_string(dir.join(name)).unwrap_or_default();
        let _ = fs::remove_dir_all(&dir);
        s
    };
    let postinst = script("postinst");
    assert!(
        postinst.contains("--signal=USR2 keyward.service")
            && !postinst.contains("deb-systemd-invoke restart"),
        "postinst: {postinst}"
    );
    let prerm = script("prerm");
    assert!(
        !prerm.contains("stop") || prerm.contains("\"$1\" = remove"),
        "prerm stops the daemon on upgrade: {prerm}"
    );
    let host_wants = Path::new("/etc/systemd/system/multi-user.target.wants/keyward.service");
    let host_had_unit = host_wants.symlink_metadata().is_ok();
    let r = Root::new();
    let out = r.dpkg(&["--force-depends", "-i", deb.to_str().unwrap()]);
    assert!(out.status.success(), "dpkg -i: {}", text(&out));
    assert_eq!(r.status(), "install ok installed");

    // The files, byte for byte.
    let bin = r.path("/usr/bin/keyward");
    let mode = fs::metadata(&bin).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755, "{}", bin.display());
    // The shipped binary is linked statically (packaging/build-release.sh):
    // every hook call would otherwise pay the dynamic loader.
    assert!(
        !has_interpreter(&fs::read(&bin).unwrap()),
        "{} asks for a dynamic loader: build it with packaging/build-release.sh",
        bin.display()
    );
    same_file(
        &r.path("/usr/share/containers/oci/hooks.d/keyward.json"),
        "hooks/keyward.json",
    );
    same_file(
        &r.path("/etc/keyward/keyward.toml"),
        "packaging/keyward.toml",
    );
    same_file(&unit(&r), "packaging/keyward.service");
    // The answering threads' real-time policy needs CAP_SYS_NICE and a
    // unit that does not forbid real-time (src/answer/events.rs).
    let unit_text = fs::read_to_string(unit(&r)).unwrap();
    let directive = |key: &str| {
        unit_text
            .lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .next_back()
            .map(str::to_string)
    };
    assert!(
        directive("CapabilityBoundingSet")
            .is_some_and(|caps| caps.split_whitespace().any(|c| c == "CAP_SYS_NICE")),
        "the unit's bounding set lacks CAP_SYS_NICE: {unit_text}"
    );
    assert_ne!(
        directive("RestrictRealtime").as_deref(),
        Some("yes"),
        "the unit forbids the answering threads' SCHED_RR"
    );
    same_file(&r.path("/usr/share/doc/keyward/README.md"), "README.md");
    for doc in fs::read_dir(Path::new(REPO).join("docs")).unwrap() {
        let name = doc.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            same_file(
                &r.path(&format!("/usr/share/doc/keyward/{name}")),
                &format!("docs/{name}"),
            );
        }
    }
    let conffiles = fs::read_to_string(r.path("/var/lib/dpkg/info/keyward.conffiles")).unwrap();
    assert!(
        conffiles
            .lines()
            .any(|l| l.trim() == "/etc/keyward/keyward.toml"),
        "conffiles: {conffiles}"
    );
    // The hooks.d file runs the binary the package installed.
    let hook: serde_json::Value = serde_json::from_slice(
        &fs::read(r.path("/usr/share/containers/oci/hooks.d/keyward.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(hook["hook"]["path"], "/usr/bin/keyward");
    // The runtime wrapper for containerd's BinaryName: a link that resolves
    // to the installed binary inside the root; and Docker's entry runs it.
    let link = r.path("/usr/bin/keyward-runtime");
    assert_eq!(
        fs::read_link(&link).unwrap(),
        Path::new("keyward"),
        "{}",
        link.display()
    );
    same_file(
        &r.path("/usr/share/doc/keyward/docker/daemon.json"),
        "packaging/docker/daemon.json",
    );
    same_file(
        &r.path("/usr/share/doc/keyward/containerd/config.toml"),
        "packaging/containerd/config.toml",
    );
    let docker: serde_json::Value = serde_json::from_slice(
        &fs::read(r.path("/usr/share/doc/keyward/docker/daemon.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(docker["runtimes"]["keyward"]["path"], "/usr/bin/keyward");
    // The link works as the wrapper: it runs the real runtime it is given.
    let out = Command::new(&link)
        .args(["--runtime", "/bin/echo", "--", "state", "some-id"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "state some-id",
        "{}",
        text(&out)
    );
    // The postinst enabled the unit inside the root, not on the host.
    assert!(
        r.path("/etc/systemd/system/multi-user.target.wants/keyward.service")
            .symlink_metadata()
            .is_ok(),
        "postinst did not enable keyward.service"
    );
    assert_eq!(host_wants.symlink_metadata().is_ok(), host_had_unit);

    // The installed binary and the installed config work.
    let check = |args: &[&str]| {
        Command::new(&bin)
            .arg("check")
            .arg("--config")
            .arg(r.path("/etc/keyward/keyward.toml"))
            .arg("--")
            .args(args)
            .output()
            .unwrap()
    };
    let out = check(&["tar", "czf", "x", "/root/.ssh/id_rsa"]);
    assert_eq!(out.status.code(), Some(0), "check: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ALERT"),
        "{}",
        text(&out)
    );
    let out = check(&["tar", "czf", "x", "/app"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a harmless tar must not alert: {}",
        text(&out)
    );
    let out = Command::new(&bin).arg("--version").output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(VERSION),
        "{}",
        text(&out)
    );

    // Remove: program files go, the conffile stays, the unit is masked.
    let out = r.dpkg(&["-r", "keyward"]);
    assert!(out.status.success(), "dpkg -r: {}", text(&out));
    assert!(!bin.exists());
    assert!(
        link.symlink_metadata().is_err(),
        "dpkg -r leaves {}",
        link.display()
    );
    assert!(
        !r.path("/usr/share/containers/oci/hooks.d/keyward.json")
            .exists()
    );
    assert!(!unit(&r).exists());
    assert!(
        r.path("/etc/keyward/keyward.toml").exists(),
        "dpkg -r keeps conffiles"
    );
    assert_eq!(r.status(), "deinstall ok config-files");

    // Purge: nothing of keyward is left.
    let out = r.dpkg(&["-P", "keyward"]);
    assert!(out.status.success(), "dpkg -P: {}", text(&out));
    assert!(!r.path("/etc/keyward/keyward.toml").exists());
    assert!(!r.path("/usr/share/doc/keyward").exists());
    assert_eq!(r.status(), "", "dpkg still knows keyward after purge");
}
