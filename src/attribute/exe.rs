//! What an exec'd file is, judged once per file from the exec event's fd.
//!
//! The exec loop must read a new image's argv, but the event arrives when
//! the kernel *opens* the executable, before the new argv exists; waiting
//! for the exec to settle means probing `/proc` every few microseconds.
//! Probing every `/bin/true` that way cost a 2,000-exec storm about 25 %
//! of its wall time on two cores. Most executables can never be an
//! archiver, so they are read once, a little later, instead:
//!
//! * [`ExeClass::Interpreter`]: `ld.so` itself (the kernel reports the ELF
//!   interpreter's open with `FAN_OPEN_EXEC` too); nothing to do.
//! * [`ExeClass::Watched`]: anything that may be or run an archiver: its
//!   name is an archiver, a shell or a multi-call binary (busybox), its
//!   build-id is a known archiver's or a multi-call binary's, or it is not
//!   an ELF file we can read (a `#!` script, whose interpreter follows).
//!   These are probed at once and often, as before.
//! * [`ExeClass::MultiCall`]: busybox and its kin, one file for many
//!   programs. Probed early like a watched file, but once the exec has
//!   settled, the kernel's `comm` names the applet, and an applet with a
//!   plain name is let go without reading its argv.
//! * [`ExeClass::Launcher`]: a program that runs a command given in its
//!   arguments (`sudo`, `env`, `timeout`, `xargs`, `ssh`, `kubectl`, ...).
//!   The seed rule matches such a command line by its arguments
//!   (`sudo tar czf - /root/.ssh`), so these are read once after
//!   [`PLAIN_DELAY`]. One that has exec'd its archiver by then has a
//!   watched event of its own; one that stays (`sudo`, `ssh`) is read.
//! * [`ExeClass::Plain`]: every other ELF program. Read once after
//!   [`PLAIN_DELAY`], and then the exec group gets an ignore mark on the
//!   file, so the kernel stops reporting its execs at all: an exec storm
//!   of `/bin/true` then costs the daemon nothing. A plain program cannot
//!   be an archiver, and if it runs one, the archiver's exec is reported.
//!   What is lost is only the seed rule's argument clause for such a
//!   program's own command line (`python3 app.py tar /root/.ssh/id_rsa`).
//!
//! The verdict is per file content: the cache key holds the inode's size
//! and change time, so a file rewritten in place is judged again, and
//! verdicts made under another policy or before new archiver identities
//! were learned are judged again too.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use crate::attribute::identity::Identities;
use crate::rules::Rules;
use crate::watch::resolve::FileId;

/// How long after its exec event a plain program's argv is read.
pub const PLAIN_DELAY: Duration = Duration::from_millis(2);
/// Files remembered before the cache starts over.
const CACHE_MAX: usize = 8192;

/// What an exec'd file is; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExeClass {
    Interpreter,
    Watched,
    MultiCall,
    Launcher,
    Plain,
}

/// The class a program name alone gives: how an applet of a multi-call
/// binary is judged by its `comm`.
pub fn class_of_name(rules: &Rules, name: &[u8]) -> ExeClass {
    if rules.watches_name(name) || name == b"exe" {
        // "exe": busybox re-executing itself through /proc/self/exe.
        ExeClass::Watched
    } else if LAUNCHERS.iter().any(|l| l.as_bytes() == name) {
        ExeClass::Launcher
    } else {
        ExeClass::Plain
    }
}

/// Programs that run a command named in their arguments; see
/// [`ExeClass::Launcher`].
const LAUNCHERS: &[&str] = &[
    "env", "nice", "nohup", "timeout", "ionice", "chrt", "taskset", "stdbuf", "setsid", "chroot",
    "xargs", "find", "flock", "time", "watch", "script", "strace", "ltrace", "sudo", "su", "doas",
    "runuser", "setpriv", "nsenter", "unshare", "ssh", "kubectl", "docker", "podman", "nerdctl",
    "crictl", "ctr", "oc", "parallel", "make",
];

/// One version of one file: inode plus size and change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    fid: FileId,
    size: i64,
    ctime: (i64, i64),
}

/// (policy, identities) generations a verdict was made under.
type Generation = (u64, u64);

/// Verdicts by file, each with the generations it was made under.
#[derive(Debug, Default)]
pub struct ExeClasses {
    map: Mutex<HashMap<Key, (ExeClass, Generation)>>,
}

/// Whether a file name is an ELF interpreter (`ld-linux*.so*`,
/// `ld-musl*`, `ld.so`).
pub fn is_interpreter(path: &Path) -> bool {
    crate::rules::is_loader_name(path.file_name().map(OsStr::as_bytes).unwrap_or_default())
}

impl ExeClasses {
    /// Classify the file an exec event carries. `None` when the fd cannot
    /// even be stat'ed (the caller drops the event, as before).
    pub fn classify(
        &self,
        file: &File,
        rules: &Rules,
        policy_generation: u64,
        identities: &Identities,
    ) -> Option<(FileId, ExeClass)> {
        let st = nix::sys::stat::fstat(file.as_fd()).ok()?;
        let fid = FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        let key = Key {
            fid,
            size: st.st_size,
            ctime: (st.st_ctime, st.st_ctime_nsec),
        };
        let generation = (policy_generation, identities.generation());
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((class, g)) = map.get(&key)
            && *g == generation
        {
            return Some((fid, *class));
        }
        // Judge outside the lock: reading the build-id is file I/O.
        drop(map);
        let class = judge(file, rules, identities);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHE_MAX {
            map.clear();
        }
        map.insert(key, (class, generation));
        Some((fid, class))
    }

    /// Files currently remembered.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Classify one file by its name (as the event's fd shows it) and content.
fn judge(file: &File, rules: &Rules, identities: &Identities) -> ExeClass {
    let Some(path) = crate::watch::fanotify::fd_path(file.as_fd()) else {
        return ExeClass::Watched;
    };
    if is_interpreter(&path) {
        return ExeClass::Interpreter;
    }
    let name = path.file_name().map(OsStr::as_bytes).unwrap_or_default();
    let name = name.strip_suffix(b" (deleted)").unwrap_or(name);
    if crate::rules::is_multicall(name) {
        return ExeClass::MultiCall;
    }
    let by_name = class_of_name(rules, name);
    if by_name == ExeClass::Watched {
        return ExeClass::Watched;
    }
    // Not an ELF we can read (a script, a truncated file): watched. Its
    // build-id decides the rest: a renamed archiver or busybox is watched.
    let mut f = file;
    match crate::attribute::identity::build_id(&mut f) {
        Some(id) if identities.is_multicall(&id) => ExeClass::MultiCall,
        Some(id) if identities.watches_build_id(&id) => ExeClass::Watched,
        Some(_) => by_name,
        None if crate::attribute::identity::is_elf(&mut f) => by_name,
        None => ExeClass::Watched,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::testdir::TempDir;
    use std::io::Write;

    fn rules() -> Rules {
        Rules::compile(&Config::default().rules).unwrap()
    }

    #[test]
    fn interpreters_are_recognised() {
        assert!(is_interpreter(Path::new("/lib64/ld-linux-x86-64.so.2")));
        assert!(is_interpreter(Path::new("/lib/ld-musl-x86_64.so.1")));
        assert!(!is_interpreter(Path::new("/usr/bin/tar")));
    }

    #[test]
    fn archivers_shells_busybox_and_scripts_are_watched_plain_programs_are_not() {
        let dir = TempDir::new("exe-classes");
        let ids = Identities::default();
        let classes = ExeClasses::default();
        let r = rules();
        let true_bin = std::fs::canonicalize("/bin/true").unwrap();
        let copy = |name: &str| {
            let p = dir.path().join(name);
            std::fs::copy(&true_bin, &p).unwrap();
            File::open(p).unwrap()
        };
        let class = |f: &File| classes.classify(f, &r, 1, &ids).unwrap().1;
        assert_eq!(class(&copy("true")), ExeClass::Plain);
        assert_eq!(class(&copy("sudo")), ExeClass::Launcher);
        assert_eq!(class(&copy("tar")), ExeClass::Watched);
        assert_eq!(class(&copy("GZIP")), ExeClass::Watched);
        assert_eq!(class(&copy("bash")), ExeClass::Watched);
        assert_eq!(class(&copy("busybox")), ExeClass::MultiCall);
        let script = dir.path().join("backup");
        File::create(&script)
            .unwrap()
            .write_all(b"#!/bin/sh\ntar cf - /root/.ssh\n")
            .unwrap();
        assert_eq!(class(&File::open(&script).unwrap()), ExeClass::Watched);
        assert_eq!(classes.len(), 7);
    }

    #[test]
    fn applets_are_judged_by_name() {
        let r = rules();
        assert_eq!(class_of_name(&r, b"true"), ExeClass::Plain);
        assert_eq!(class_of_name(&r, b"tar"), ExeClass::Watched);
        assert_eq!(class_of_name(&r, b"sh"), ExeClass::Watched);
        assert_eq!(class_of_name(&r, b"exe"), ExeClass::Watched);
        assert_eq!(class_of_name(&r, b"busybox"), ExeClass::Watched);
        assert_eq!(class_of_name(&r, b"xargs"), ExeClass::Launcher);
    }

    #[test]
    fn a_renamed_archiver_is_watched_once_its_identity_is_known() {
        let dir = TempDir::new("exe-renamed");
        let bin = dir.path().join("usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let true_bin = std::fs::canonicalize("/bin/true").unwrap();
        // `/bin/true` plays the archiver: learned as "tar" from this root,
        // then seen again under an innocent name.
        std::fs::copy(&true_bin, bin.join("tar")).unwrap();
        std::fs::copy(&true_bin, dir.path().join("innocent")).unwrap();
        let ids = Identities::default();
        let classes = ExeClasses::default();
        let r = rules();
        let f = File::open(dir.path().join("innocent")).unwrap();
        if crate::attribute::identity::build_id(&mut &f).is_none() {
            return; // a host /bin/true without a build-id proves nothing here
        }
        assert_eq!(
            classes.classify(&f, &r, 1, &ids).unwrap().1,
            ExeClass::Plain
        );
        let root = File::open(dir.path()).unwrap();
        ids.learn(root.as_fd(), &["tar".to_string()], None);
        assert_eq!(
            classes.classify(&f, &r, 1, &ids).unwrap().1,
            ExeClass::Watched,
            "learning an identity must invalidate earlier verdicts"
        );
    }

    #[test]
    fn a_file_rewritten_in_place_is_judged_again() {
        let dir = TempDir::new("exe-rewritten");
        let p = dir.path().join("tool");
        std::fs::copy(std::fs::canonicalize("/bin/true").unwrap(), &p).unwrap();
        let ids = Identities::default();
        let classes = ExeClasses::default();
        let r = rules();
        let f = File::open(&p).unwrap();
        assert_eq!(
            classes.classify(&f, &r, 1, &ids).unwrap().1,
            ExeClass::Plain
        );
        std::fs::write(&p, b"#!/bin/sh\nexec tar cf - /root/.ssh\n").unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(
            classes.classify(&f, &r, 1, &ids).unwrap().1,
            ExeClass::Watched
        );
    }
}
