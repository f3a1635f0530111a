//! Replacing the daemon with the installed binary, keeping what the kernel
//! holds for it.
//!
//! A restart closes the fanotify groups. The kernel then allows every
//! permission event still pending and forgets every mark, and until the
//! new daemon has marked the containers again, nothing is judged: an
//! archiver that opens a key in that window gets it, in `deny` mode too.
//!
//! On `SIGUSR2` the daemon stops its threads in the shutdown order, so every
//! permission event it has read is answered, clears close-on-exec on its
//! fanotify groups and its control socket, and execs the binary at its own
//! path (after a package upgrade, the new version), naming those fds in
//! [`ENV`]. Meanwhile the kernel keeps queueing: a new permission event
//! waits, its opener blocked, for the new daemon to read it; execs and
//! writes queue as notifications; a hook that connects waits in the
//! socket's backlog. The new daemon adopts the fds ([`from_env`]), fills
//! its index from the persisted registry *before* it reads an event, and
//! restores the marks as any start does. The pid stays the same, so
//! systemd, `keyward status` and the reaper's pidfds see one daemon.
//!
//! What does not survive the exec: the follow state (readers of
//! credentials, tainted pipes; their close-after-write marks are dropped
//! and re-armed by the next read), exec probes in flight, ignore marks
//! (flushed, made again on the next exec) and counters. Alert runs are
//! flushed before the exec. A *crash* is different: the kernel closes the
//! groups with the process and allows whatever was pending. That is
//! fanotify's rule, and keyward cannot change it.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use crate::registry::register::OwnedGroups;
use crate::watch::fanotify::Group;

/// Where the old daemon names the fds it hands on: `perm=N,exec=N,
/// write=N,control=N`, and `create=N` when it had that group.
pub const ENV: &str = "KEYWARD_UPGRADE_FDS";

/// Errors handing the daemon's fds on, or taking them.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{ENV}: bad entry {entry:?} (want name=fd)")]
    Entry { entry: String },
    #[error("{ENV}: no {name} fd")]
    Missing { name: &'static str },
    #[error("{ENV}: fd {fd} for {name} is not {want}")]
    Wrong {
        name: String,
        fd: RawFd,
        want: &'static str,
    },
    #[error("cannot find the daemon's own binary: {0}")]
    OwnBinary(#[source] io::Error),
    #[error("cannot keep fd {fd} open across the exec: {source}")]
    Cloexec {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("not upgrading: {path} check --config ... failed ({why}); this daemon carries on")]
    Preflight { path: PathBuf, why: String },
    #[error("cannot re-exec {path}: {source}")]
    Exec {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What one daemon hands the next: its groups and its control socket.
pub struct Carried {
    pub groups: OwnedGroups,
    pub listener: UnixListener,
}

impl Carried {
    /// The fds by name, as [`ENV`] spells them.
    fn fds(&self) -> Vec<(&'static str, RawFd)> {
        let g = &self.groups;
        let mut v = vec![
            ("perm", g.perm.raw_fd()),
            ("exec", g.exec.raw_fd()),
            ("write", g.write.raw_fd()),
            ("control", self.listener.as_raw_fd()),
        ];
        if let Some(c) = &g.create {
            v.push(("create", c.raw_fd()));
        }
        v
    }
}

/// The fds an upgrading daemon handed on, if this process is its exec.
pub fn from_env() -> Result<Option<Carried>, UpgradeError> {
    let Some(spec) = std::env::var_os(ENV) else {
        return Ok(None);
    };
    let spec = spec.to_string_lossy().into_owned();
    let named = parse(&spec)?;
    let fd_of = |name: &'static str| -> Result<RawFd, UpgradeError> {
        named
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, fd)| *fd)
            .ok_or(UpgradeError::Missing { name })
    };
    let group = |name: &'static str| -> Result<Group, UpgradeError> {
        let fd = take(name, fd_of(name)?, "a fanotify group", is_fanotify)?;
        Ok(Group::adopt(name, fd))
    };
    let groups = OwnedGroups {
        perm: group("perm")?.into(),
        exec: group("exec")?.into(),
        write: group("write")?.into(),
        create: match fd_of("create") {
            Ok(_) => Some(group("create")?.into()),
            Err(_) => None,
        },
    };
    let control = take("control", fd_of("control")?, "a socket", is_socket)?;
    Ok(Some(Carried {
        groups,
        listener: UnixListener::from(control),
    }))
}

/// `name=fd` pairs, each name once.
fn parse(spec: &str) -> Result<Vec<(String, RawFd)>, UpgradeError> {
    let mut out: Vec<(String, RawFd)> = Vec::new();
    for entry in spec.split(',') {
        let bad = || UpgradeError::Entry {
            entry: entry.to_string(),
        };
        let (name, fd) = entry.split_once('=').ok_or_else(bad)?;
        let fd: RawFd = fd.parse().map_err(|_| bad())?;
        let known = ["perm", "exec", "write", "create", "control"];
        // Each fd is owned once: a number named twice would be closed
        // twice.
        if fd < 0 || !known.contains(&name) || out.iter().any(|(n, f)| n == name || *f == fd) {
            return Err(bad());
        }
        out.push((name.to_string(), fd));
    }
    Ok(out)
}

/// Own `fd` if it is what `name` must be, close-on-exec again.
fn take(
    name: &str,
    fd: RawFd,
    want: &'static str,
    check: fn(RawFd) -> bool,
) -> Result<OwnedFd, UpgradeError> {
    if !check(fd) {
        return Err(UpgradeError::Wrong {
            name: name.to_string(),
            fd,
            want,
        });
    }
    set_cloexec(fd, true)?;
    // SAFETY: the fd is open (checked just now through /proc or fstat),
    // was handed to this process to own, and nothing else here owns it:
    // `parse` refuses a name or an fd given twice, and each name is taken
    // once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn is_fanotify(fd: RawFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .is_ok_and(|l| l.as_os_str() == "anon_inode:[fanotify]")
}

fn is_socket(fd: RawFd) -> bool {
    // SAFETY: `fd` is only borrowed for the fstat; a closed number fails
    // with EBADF.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}

fn set_cloexec(fd: RawFd, on: bool) -> Result<(), UpgradeError> {
    let err = |source| UpgradeError::Cloexec { fd, source };
    // SAFETY: F_GETFD/F_SETFD only read and set the fd's flags; a closed
    // number fails with EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    let flags = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

/// The binary to exec: the daemon's own path, which after a package
/// upgrade holds the new version (`/proc/self/exe` then names the old,
/// deleted inode, with " (deleted)" after its path).
pub fn own_binary() -> Result<PathBuf, UpgradeError> {
    let exe = std::env::current_exe().map_err(UpgradeError::OwnBinary)?;
    let s = exe.as_os_str().as_encoded_bytes();
    Ok(match s.strip_suffix(b" (deleted)") {
        // SAFETY: the bytes came from an OsStr and were cut at an ASCII
        // suffix, so they are still valid OsStr encoding.
        Some(p) => PathBuf::from(unsafe { OsString::from_encoded_bytes_unchecked(p.to_vec()) }),
        None => exe,
    })
}

/// How long the new binary may take to load the config.
const PREFLIGHT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Before anything stops: the binary at the daemon's path must run, and
/// take the config (`keyward check --config FILE --json -- true` prints
/// JSON only when it does). A new version that cannot start, or a config
/// edited into something it refuses, would otherwise end the daemon after
/// its threads stopped, and the kernel would allow what is pending.
pub fn preflight(config: Option<&std::path::Path>) -> Result<PathBuf, UpgradeError> {
    let path = own_binary()?;
    let fail = |why: String| UpgradeError::Preflight {
        path: path.clone(),
        why,
    };
    let mut cmd = std::process::Command::new(&path);
    cmd.arg("check");
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd
        .args(["--json", "--", "true"])
        .env_remove(ENV)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    let deadline = std::time::Instant::now() + PREFLIGHT_TIMEOUT;
    while child.try_wait().map_err(|e| fail(e.to_string()))?.is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!("no answer in {PREFLIGHT_TIMEOUT:?}")));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
        Ok(v) if v.is_object() => Ok(path),
        _ => Err(fail(
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .chars()
                .take(300)
                .collect(),
        )),
    }
}

/// Exec the installed binary with the same arguments, handing `c` on.
/// Returns only if that fails; the fds are then close-on-exec again and
/// still this process's.
pub fn exec_self(c: &Carried) -> UpgradeError {
    let path = match own_binary() {
        Ok(p) => p,
        Err(e) => return e,
    };
    let fds = c.fds();
    for (_, fd) in &fds {
        if let Err(e) = set_cloexec(*fd, false) {
            restore(&fds);
            return e;
        }
    }
    let spec = fds
        .iter()
        .map(|(n, fd)| format!("{n}={fd}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| path.clone().into_os_string());
    let source = std::process::Command::new(&path)
        .arg0(arg0)
        .args(args)
        .env(ENV, spec)
        .exec();
    restore(&fds);
    UpgradeError::Exec { path, source }
}

fn restore(fds: &[(&'static str, RawFd)]) {
    for (_, fd) in fds {
        let _ = set_cloexec(*fd, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fd_list_is_parsed_strictly() {
        assert_eq!(
            parse("perm=3,exec=4,write=5,control=6").unwrap(),
            vec![
                ("perm".into(), 3),
                ("exec".into(), 4),
                ("write".into(), 5),
                ("control".into(), 6)
            ]
        );
        for bad in [
            "",
            "perm",
            "perm=x",
            "perm=-1",
            "perm=3,perm=4",
            "stdin=0",
            "perm=3,,exec=4",
            "perm=3,exec=3",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(ENV) && e.contains("bad entry"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn only_what_each_name_must_be_is_taken() {
        // A regular file is neither a fanotify group nor a socket.
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let fd = f.as_raw_fd();
        let e = take("perm", fd, "a fanotify group", is_fanotify).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{ENV}: fd {fd} for perm is not a fanotify group")
        );
        assert!(take("control", fd, "a socket", is_socket).is_err());
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(is_socket(a.as_raw_fd()));
        // A number nothing is open at.
        assert!(!is_fanotify(1 << 20) && !is_socket(1 << 20));
    }

    #[test]
    fn cloexec_is_cleared_and_set_again() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let fd = f.as_raw_fd();
        // SAFETY: reads the flags of an fd this test owns.
        let get = || unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC;
        assert_ne!(get(), 0, "std opens with O_CLOEXEC");
        set_cloexec(fd, false).unwrap();
        assert_eq!(get(), 0);
        set_cloexec(fd, true).unwrap();
        assert_ne!(get(), 0);
        assert!(set_cloexec(1 << 20, true).is_err());
    }
}
