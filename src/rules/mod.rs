//! Rule decision: the compiled archiver and credential-path matchers.
//!
//! Two rules ship by default, both as data from [`crate::config::RulesConfig`]:
//!
//! * `exec` is the Elastic rule "Sensitive Files Compression Inside A
//!   Container" (seed 004), exactly: on a process start, the process name is
//!   an archiver *or any arg is one*, and some arg matches a credential path
//!   pattern. Patterns use EQL wildcard semantics: `*` matches any run of
//!   characters (including `/`), `?` one character, and the `:` operator is
//!   case-insensitive.
//! * `file` fires when a process that *is* an archiver (by executable name,
//!   argv\[0\], a busybox applet name, or an archiver word inside a wrapper's
//!   `sh -c` script) opens a file whose canonical container path matches a
//!   credential pattern, however the opener spelled it.
//!
//! Patterns are compiled once into a [`globset::GlobSet`] and matched many
//! times; arguments are matched as raw bytes so non-UTF-8 argv never fails.

pub mod archivers;
pub mod check;
pub mod exceptions;
pub mod judge;
pub mod patterns;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::Serialize;

use crate::config::{FileRuleConfig, MarkIncidental, RulesConfig, SeedRuleConfig, Severity};

pub use archivers::{
    ArchiverHit, Archivers, archive_format, archive_module, basename, is_interpreter_name,
    is_loader_name, is_multicall, loaded_program,
};
use archivers::{MULTICALL, SHELLS};
pub use judge::{
    Candidate, ContainerFacts, Event, Evidence, FileMatch, Matches, Source, Touch, TouchedFile,
    Verdict,
};
pub use patterns::{PathPatterns, RuleError, normalize};

/// Stable id of the seed rule (Elastic's rule, implemented exactly).
pub const EXEC_RULE_ID: &str = "keyward.seed.sensitive-files-compression";
/// Name of the seed rule, as Elastic publishes it.
pub const EXEC_RULE_NAME: &str = "Sensitive Files Compression Inside A Container";
/// Stable id of the file-access rule.
pub const FILE_RULE_ID: &str = "keyward.file.archiver-opened-credential";
/// Stable id of the behaviour rule: a process read a credential, then
/// wrote archive or compressed data.
pub const BEHAVIOUR_RULE_ID: &str = "keyward.behaviour.credential-archived";
/// Name of the behaviour rule.
pub const BEHAVIOUR_RULE_NAME: &str = "Credential Read Then Archive Written Inside A Container";
/// Name of the file-access rule.
pub const FILE_RULE_NAME: &str = "Archiver Opened A Credential File Inside A Container";

/// One argument that matched a credential pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathHit {
    pub index: usize,
    pub arg: String,
    pub pattern: String,
}

/// The explanation of a seed-rule match on a command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecMatch {
    pub archiver: ArchiverHit,
    pub paths: Vec<PathHit>,
}

/// The compiled rules, built once per config load and shared read-only.
#[derive(Debug, Clone)]
pub struct Rules {
    pub exec_enabled: bool,
    exec_archivers: Archivers,
    exec_paths: PathPatterns,
    pub file_enabled: bool,
    /// See `rules.file.behaviour_window_s`.
    pub behaviour_window: std::time::Duration,
    file_archivers: Archivers,
    file_paths: PathPatterns,
    watch_dirs: Vec<String>,
    incidental: PathPatterns,
    mark_incidental_always: bool,
    exec_meta: RuleMeta,
    file_meta: RuleMeta,
}

/// Severity, risk and MITRE ids of a rule, from the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RuleMeta {
    pub severity: Severity,
    pub risk_score: u8,
    pub mitre: Vec<String>,
}

/// One rule as `keyward rules` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleSummary {
    pub id: &'static str,
    pub name: &'static str,
    pub enabled: bool,
    pub kind: &'static str,
    #[serde(flatten)]
    pub meta: RuleMeta,
    pub archivers: Vec<String>,
    pub paths: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub watch_dirs: Vec<String>,
}

impl Rules {
    /// Compile the configured rules. Errors quote the offending pattern.
    pub fn compile(cfg: &RulesConfig) -> Result<Self, RuleError> {
        let SeedRuleConfig {
            enabled: exec_enabled,
            archivers: exec_arch,
            paths: exec_paths,
            severity: exec_severity,
            risk_score: exec_risk,
            mitre: exec_mitre,
        } = &cfg.exec;
        let FileRuleConfig {
            enabled: file_enabled,
            archivers: file_arch,
            paths: file_paths,
            watch_dirs,
            incidental_paths,
            mark_incidental,
            extended,
            behaviour_window_s,
            severity: file_severity,
            risk_score: file_risk,
            mitre: file_mitre,
        } = &cfg.file;
        let mut file_paths = file_paths.clone();
        let mut watch_dirs = watch_dirs.clone();
        if *extended {
            file_paths.extend(crate::config::EXTENDED_PATHS.iter().map(|s| s.to_string()));
            watch_dirs.extend(
                crate::config::EXTENDED_WATCH_DIRS
                    .iter()
                    .map(|s| s.to_string()),
            );
        }
        let meta = |severity: &Severity, risk_score: &u8, mitre: &Vec<String>| RuleMeta {
            severity: *severity,
            risk_score: *risk_score,
            mitre: mitre.clone(),
        };
        Ok(Self {
            exec_enabled: *exec_enabled,
            exec_archivers: Archivers::new("rules.exec.archivers", exec_arch)?,
            exec_paths: PathPatterns::new("rules.exec.paths", exec_paths)?,
            file_enabled: *file_enabled,
            behaviour_window: std::time::Duration::from_secs(*behaviour_window_s),
            file_archivers: Archivers::new("rules.file.archivers", file_arch)?,
            file_paths: PathPatterns::new("rules.file.paths", &file_paths)?,
            watch_dirs,
            exec_meta: meta(exec_severity, exec_risk, exec_mitre),
            file_meta: meta(file_severity, file_risk, file_mitre),
            incidental: PathPatterns::new("rules.file.incidental_paths", incidental_paths)?,
            mark_incidental_always: *mark_incidental == MarkIncidental::Always,
        })
    }

    /// Evaluate the seed rule on a process start, exactly as the EQL does:
    /// `process.name` is an archiver or some arg is one, and some arg
    /// matches a credential pattern. `args` includes argv\[0\], as ECS
    /// `process.args` does.
    pub fn match_exec<A: AsRef<OsStr>>(&self, name: &OsStr, args: &[A]) -> Option<ExecMatch> {
        self.match_exec_names(&[name], args)
    }

    /// [`Rules::match_exec`] where the process has more than one name: the
    /// executable's basename and the kernel's `comm` (the basename of the
    /// path given to execve, so `/bin/tar` → busybox is still "tar").
    pub fn match_exec_names<A: AsRef<OsStr>>(
        &self,
        names: &[&OsStr],
        args: &[A],
    ) -> Option<ExecMatch> {
        if !self.exec_enabled {
            return None;
        }
        // Paths first: most command lines name no credential path, and the
        // pattern set rejects them in one pass each.
        let mut paths = Vec::new();
        for (index, arg) in args.iter().enumerate() {
            let arg = arg.as_ref();
            if let Some(pattern) = self.exec_paths.first_match(arg) {
                paths.push(PathHit {
                    index,
                    arg: arg.to_string_lossy().into_owned(),
                    pattern: pattern.to_string(),
                });
            }
        }
        if paths.is_empty() {
            return None;
        }
        let named = names
            .iter()
            .find(|n| self.exec_archivers.contains(n.as_bytes()));
        let archiver = if let Some(name) = named {
            ArchiverHit::Name {
                name: name.to_string_lossy().into_owned(),
            }
        } else {
            let (index, arg) = args
                .iter()
                .enumerate()
                .find(|(_, a)| self.exec_archivers.contains(a.as_ref().as_bytes()))?;
            ArchiverHit::Arg {
                index,
                arg: arg.as_ref().to_string_lossy().into_owned(),
            }
        };
        Some(ExecMatch { archiver, paths })
    }

    /// Whether an executable's name may belong to an archiver or run one:
    /// an archiver of either rule, a shell, or a multi-call binary. The
    /// exec loop probes such executables at once (see `exe`).
    pub fn watches_name(&self, name: &[u8]) -> bool {
        self.exec_archivers.contains(name)
            || self.file_archivers.contains(name)
            || is_multicall(name)
            || SHELLS
                .iter()
                .any(|s| s.as_bytes().eq_ignore_ascii_case(name))
    }

    /// Whether a process is an archiver for the file-access rule, and why.
    ///
    /// Looks at the executable's name, the kernel's `comm` (busybox applets
    /// run through a symlink, and the NOEXEC applets busybox sh runs in a
    /// forked child, carry the applet's name there), argv\[0\], any exact
    /// arg (`busybox tar`, `nice tar`, `env tar`), and, for a shell itself,
    /// the words of its `-c` script (the shell opens a redirected file for
    /// the archiver: `gzip < key`).
    ///
    /// A busybox child running a NOEXEC applet still shows its shell's
    /// argv; when `comm` disagrees with argv\[0\] on a multi-call binary,
    /// argv is not the process's own and only `comm` counts.
    pub fn archiver_of<A: AsRef<OsStr>>(
        &self,
        exe_name: &OsStr,
        comm: &OsStr,
        args: &[A],
    ) -> Option<ArchiverHit> {
        if !self.file_enabled {
            return None;
        }
        for name in [exe_name, comm] {
            if self.file_archivers.contains(name.as_bytes()) {
                return Some(ArchiverHit::Name {
                    name: name.to_string_lossy().into_owned(),
                });
            }
        }
        let argv0 = args
            .first()
            .map(|a| basename(a.as_ref().as_bytes()))
            .unwrap_or_default();
        let multicall = MULTICALL
            .iter()
            .any(|m| exe_name.as_bytes() == m.as_bytes());
        // comm is the exec'd basename cut to 15 bytes (TASK_COMM_LEN - 1).
        let comm_is_argv0 = comm.as_bytes() == &argv0[..argv0.len().min(15)];
        // busybox re-executes itself through /proc/self/exe for applets run
        // with `exec`; such a process's comm is "exe" and argv is its own.
        let reexec = comm.as_bytes() == b"exe";
        // Exec'd as the binary itself (comm is its own name) with an argv[0]
        // the caller chose (`exec -a tar busybox ...`): busybox runs the
        // applet argv[0] names, so argv is its own and argv[0] counts.
        let exe_comm = &exe_name.as_bytes()[..exe_name.len().min(15)];
        let chosen_argv0 = comm.as_bytes() == exe_comm;
        if multicall && !comm.is_empty() && !comm_is_argv0 && !reexec && !chosen_argv0 {
            return None;
        }
        // The loader runs a program: judge the program's name.
        let loaded = is_loader_name(exe_name.as_bytes())
            .then(|| loaded_program(args))
            .flatten();
        if let Some(index) = loaded.filter(|i| {
            self.file_archivers
                .contains(basename(args[*i].as_ref().as_bytes()))
        }) {
            return Some(ArchiverHit::Loaded {
                index,
                program: args[index].as_ref().to_string_lossy().into_owned(),
            });
        }
        // An interpreter told to archive: known at the open, so `deny` and
        // `kill` act before the data is read.
        let interpreter =
            is_interpreter_name(exe_name.as_bytes()) || is_interpreter_name(comm.as_bytes());
        if let Some((index, word)) = interpreter.then(|| archive_module(args)).flatten() {
            return Some(ArchiverHit::Module { index, word });
        }
        if self.file_archivers.contains(argv0) {
            return Some(ArchiverHit::Argv0 {
                name: String::from_utf8_lossy(argv0).into_owned(),
            });
        }
        for (index, arg) in args.iter().enumerate().skip(1) {
            let bytes = arg.as_ref().as_bytes();
            if self.file_archivers.contains(basename(bytes)) {
                return Some(ArchiverHit::Arg {
                    index,
                    arg: arg.as_ref().to_string_lossy().into_owned(),
                });
            }
        }
        let is_shell = SHELLS
            .iter()
            .any(|s| comm.as_bytes() == s.as_bytes() || argv0 == s.as_bytes());
        if is_shell {
            for (index, arg) in args.iter().enumerate().skip(1) {
                for word in arg
                    .as_ref()
                    .as_bytes()
                    .split(|b| b" \t\n;|&()`$<>'\"".contains(b))
                {
                    if self.file_archivers.contains(basename(word)) {
                        return Some(ArchiverHit::Script {
                            index,
                            word: String::from_utf8_lossy(word).into_owned(),
                        });
                    }
                }
            }
        }
        None
    }

    /// The credential pattern a canonical container path matches, if any.
    pub fn credential_pattern(&self, path: &OsStr) -> Option<&str> {
        self.file_paths.first_match(path)
    }

    /// Whether an archiver's open of `path` is to be ignored because the
    /// file is one archivers read on their own and no argument names it.
    ///
    /// An argument names it when, resolved against the opener's `cwd` (tar
    /// `-C` changes the process's cwd before it opens members) and with `.`,
    /// `..` and repeated slashes folded, it is the file or a directory above
    /// it.
    /// Whether `path` is one of the incidental files at all.
    pub fn is_incidental_path(&self, path: &OsStr) -> bool {
        self.incidental.is_match(path)
    }

    /// Whether incidental files are marked in every container, not only in
    /// those whose action denies (`rules.file.mark_incidental`).
    pub fn mark_incidental_always(&self) -> bool {
        self.mark_incidental_always
    }

    /// The name-service files (`incidental_paths`) an archiver's
    /// arguments name, resolved as the archiver resolves them: against its
    /// working directory, and after tar's `-C DIR`, `-CDIR` or
    /// `--directory[=]DIR` against that directory, with `.`, `..` and
    /// repeated slashes folded. An argument that is a directory above one
    /// of them names it too (`tar czf x -C / etc`). These files are not
    /// marked where nothing is denied, so the arguments are all there is
    /// to go on. Returns (argument index, file).
    pub fn named_lookup_files<A: AsRef<OsStr>>(
        &self,
        args: &[A],
        cwd: &Path,
    ) -> Vec<(usize, std::path::PathBuf)> {
        let concrete: Vec<std::path::PathBuf> = self
            .incidental
            .patterns()
            .iter()
            .filter(|p| !p.contains(['*', '?']))
            .map(|p| normalize(Path::new(p)))
            .collect();
        let mut base = normalize(cwd);
        let mut dir_next = false;
        let mut out = Vec::new();
        for (index, arg) in args.iter().enumerate().skip(1) {
            let bytes = arg.as_ref().as_bytes();
            let resolve = |rel: &[u8]| normalize(&base.join(OsStr::from_bytes(rel)));
            if dir_next {
                base = resolve(bytes);
                dir_next = false;
                continue;
            }
            if bytes == b"-C" || bytes == b"--directory" {
                dir_next = true;
                continue;
            }
            if let Some(dir) = bytes
                .strip_prefix(b"--directory=")
                .or_else(|| bytes.strip_prefix(b"-C").filter(|d| !d.is_empty()))
            {
                base = resolve(dir);
                continue;
            }
            if bytes.is_empty() || bytes.starts_with(b"-") {
                continue;
            }
            let named = resolve(bytes);
            for file in &concrete {
                if file.starts_with(&named) && !out.iter().any(|(_, f)| f == file) {
                    out.push((index, file.clone()));
                }
            }
            if concrete.iter().all(|f| *f != named) && self.incidental.is_match(named.as_os_str()) {
                out.push((index, named));
            }
        }
        out
    }

    pub fn is_incidental<A: AsRef<OsStr>>(&self, path: &OsStr, args: &[A], cwd: &Path) -> bool {
        if !self.incidental.is_match(path) {
            return false;
        }
        let target = normalize(Path::new(path));
        !args.iter().skip(1).any(|a| {
            let a = a.as_ref();
            let bytes = a.as_bytes();
            // `--directory=/etc`, `-C/etc`: look at the value part too.
            let value = bytes
                .iter()
                .position(|&b| b == b'=')
                .map(|i| &bytes[i + 1..])
                .unwrap_or(bytes);
            [bytes, value].iter().any(|cand| {
                if cand.is_empty() || (cand.starts_with(b"-") && cand.len() > 1) {
                    return false;
                }
                let p = normalize(&cwd.join(OsStr::from_bytes(cand)));
                target.starts_with(&p)
            })
        })
    }

    /// Every credential pattern whose files get inode marks: the union of
    /// both rules' path lists, so the exec rule's files are also watched.
    pub fn mark_patterns(&self) -> Vec<String> {
        let mut out: Vec<String> = self.file_paths.patterns().to_vec();
        for p in self.exec_paths.patterns() {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }

    /// Directories that get a directory mark with `FAN_EVENT_ON_CHILD`.
    pub fn watch_dirs(&self) -> &[String] {
        &self.watch_dirs
    }

    /// Severity, risk and MITRE ids of a rule by id.
    pub fn meta(&self, rule_id: &str) -> &RuleMeta {
        if rule_id == EXEC_RULE_ID {
            &self.exec_meta
        } else {
            &self.file_meta
        }
    }

    /// Both rules, for `keyward rules`.
    pub fn summaries(&self) -> Vec<RuleSummary> {
        vec![
            RuleSummary {
                id: EXEC_RULE_ID,
                name: EXEC_RULE_NAME,
                enabled: self.exec_enabled,
                kind: "exec: process name or any arg is an archiver, and an arg matches a path pattern (EQL semantics)",
                meta: self.exec_meta.clone(),
                archivers: self.exec_archivers.names().to_vec(),
                paths: self.exec_paths.patterns().to_vec(),
                watch_dirs: Vec::new(),
            },
            RuleSummary {
                id: FILE_RULE_ID,
                name: FILE_RULE_NAME,
                enabled: self.file_enabled,
                kind: "file access: an archiver opens (or inherits) a file whose container path matches",
                meta: self.file_meta.clone(),
                archivers: self.file_archivers.names().to_vec(),
                paths: self.file_paths.patterns().to_vec(),
                watch_dirs: self.watch_dirs.clone(),
            },
        ]
    }

    /// The exec rule's archiver names.
    pub fn exec_archivers(&self) -> &Archivers {
        &self.exec_archivers
    }

    /// The file rule's archiver names.
    pub fn file_archivers(&self) -> &Archivers {
        &self.file_archivers
    }

    /// The exec rule's path patterns.
    pub fn exec_paths(&self) -> &PathPatterns {
        &self.exec_paths
    }
}

#[cfg(test)]
mod tests {
    //! Table tests of the seed rule: every archiver and every one of the 27
    //! patterns, matching and not, plus wildcard and case cases.
    use super::*;
    use crate::config::RulesConfig;

    fn rules() -> Rules {
        Rules::compile(&RulesConfig::default()).unwrap()
    }

    fn exec(args: &[&str]) -> Option<ExecMatch> {
        let name = basename(args[0].as_bytes());
        rules().match_exec(OsStr::from_bytes(name), args)
    }

    const SEED_ARCHIVERS: [&str; 5] = ["zip", "tar", "gzip", "hdiutil", "7z"];

    /// The 27 patterns with one concrete path each.
    const SEED_PATHS: [(&str, &str); 27] = [
        ("/root/.ssh/id_rsa", "/root/.ssh/id_rsa"),
        ("/root/.ssh/id_rsa.pub", "/root/.ssh/id_rsa.pub"),
        ("/root/.ssh/id_ed25519", "/root/.ssh/id_ed25519"),
        ("/root/.ssh/id_ed25519.pub", "/root/.ssh/id_ed25519.pub"),
        ("/root/.ssh/authorized_keys", "/root/.ssh/authorized_keys"),
        ("/root/.ssh/authorized_keys2", "/root/.ssh/authorized_keys2"),
        ("/root/.ssh/known_hosts", "/root/.ssh/known_hosts"),
        ("/root/.bash_history", "/root/.bash_history"),
        ("/etc/hosts", "/etc/hosts"),
        ("/home/*/.ssh/id_rsa", "/home/alice/.ssh/id_rsa"),
        ("/home/*/.ssh/id_rsa.pub", "/home/alice/.ssh/id_rsa.pub"),
        ("/home/*/.ssh/id_ed25519", "/home/bob/.ssh/id_ed25519"),
        (
            "/home/*/.ssh/id_ed25519.pub",
            "/home/bob/.ssh/id_ed25519.pub",
        ),
        (
            "/home/*/.ssh/authorized_keys",
            "/home/x/.ssh/authorized_keys",
        ),
        (
            "/home/*/.ssh/authorized_keys2",
            "/home/x/.ssh/authorized_keys2",
        ),
        ("/home/*/.ssh/known_hosts", "/home/x/.ssh/known_hosts"),
        ("/home/*/.bash_history", "/home/dev/.bash_history"),
        ("/root/.aws/credentials", "/root/.aws/credentials"),
        ("/root/.aws/config", "/root/.aws/config"),
        ("/home/*/.aws/credentials", "/home/ci/.aws/credentials"),
        ("/home/*/.aws/config", "/home/ci/.aws/config"),
        ("/root/.docker/config.json", "/root/.docker/config.json"),
        ("/home/*/.docker/config.json", "/home/u/.docker/config.json"),
        ("/etc/group", "/etc/group"),
        ("/etc/passwd", "/etc/passwd"),
        ("/etc/shadow", "/etc/shadow"),
        ("/etc/gshadow", "/etc/gshadow"),
    ];

    #[test]
    fn default_exec_rule_is_the_seed_exactly() {
        let r = rules();
        assert_eq!(r.exec_archivers().names(), SEED_ARCHIVERS);
        let pats: Vec<&str> = r
            .exec_paths()
            .patterns()
            .iter()
            .map(|s| s.as_str())
            .collect();
        let mut want: Vec<&str> = SEED_PATHS.iter().map(|(p, _)| *p).collect();
        let mut got = pats.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want);
        assert_eq!(pats.len(), 27);
    }

    #[test]
    fn every_archiver_with_every_pattern_matches() {
        for archiver in SEED_ARCHIVERS {
            for (pattern, path) in SEED_PATHS {
                let m = exec(&[archiver, "-c", "/tmp/out", path])
                    .unwrap_or_else(|| panic!("{archiver} {path} did not match"));
                assert_eq!(m.paths.len(), 1);
                assert_eq!(m.paths[0].pattern, pattern);
                assert_eq!(m.paths[0].index, 3);
                assert_eq!(
                    m.archiver,
                    ArchiverHit::Name {
                        name: archiver.to_string()
                    }
                );
            }
        }
    }

    #[test]
    fn archiver_as_arg_matches_for_wrappers() {
        for archiver in SEED_ARCHIVERS {
            let m = exec(&["busybox", archiver, "czf", "/tmp/x", "/etc/shadow"]).unwrap();
            assert_eq!(
                m.archiver,
                ArchiverHit::Arg {
                    index: 1,
                    arg: archiver.to_string()
                }
            );
        }
        // `sh -c tar ...` as separate args (e.g. a wrapper passing argv).
        assert!(exec(&["nice", "-n5", "tar", "cf", "/tmp/x", "/root/.bash_history"]).is_some());
    }

    #[test]
    fn non_archivers_and_non_credential_paths_do_not_match() {
        for (_, path) in SEED_PATHS {
            assert!(exec(&["cat", path]).is_none(), "cat {path}");
            assert!(exec(&["cp", path, "/tmp/x"]).is_none(), "cp {path}");
        }
        for archiver in SEED_ARCHIVERS {
            assert!(exec(&[archiver, "czf", "/tmp/x.tgz", "/app"]).is_none());
            assert!(exec(&[archiver, "czf", "/tmp/x.tgz", "/root/.ssh"]).is_none());
            assert!(exec(&[archiver, "czf", "/tmp/x.tgz", "/root/.ssh/id_ecdsa"]).is_none());
            assert!(exec(&[archiver, "/etc/hostname"]).is_none());
        }
        // Not an exact name: `tarx`, `gzip2`, `mytar`.
        assert!(exec(&["tarx", "/etc/passwd"]).is_none());
        assert!(exec(&["mytar", "cf", "x", "/etc/passwd"]).is_none());
        // A string that only mentions a path is not that path.
        assert!(exec(&["tar", "cf", "x", "--label=/etc/passwd"]).is_none());
        assert!(exec(&["tar", "cf", "x", "/etc/passwd.bak"]).is_none());
        assert!(exec(&["tar", "cf", "x", "./etc/passwd"]).is_none());
    }

    #[test]
    fn wildcard_spans_any_characters_like_eql() {
        assert!(exec(&["tar", "cf", "x", "/home/a/b/.ssh/id_rsa"]).is_some());
        assert!(exec(&["tar", "cf", "x", "/home//.ssh/id_rsa"]).is_some());
        assert!(exec(&["tar", "cf", "x", "/home/.ssh/id_rsa"]).is_none());
        assert!(exec(&["tar", "cf", "x", "/homes/a/.ssh/id_rsa"]).is_none());
    }

    #[test]
    fn matching_is_case_insensitive_like_eql_colon() {
        assert!(exec(&["TAR", "cf", "x", "/ETC/SHADOW"]).is_some());
        assert!(exec(&["Tar", "cf", "x", "/Root/.SSH/Id_Rsa"]).is_some());
        assert!(exec(&["busybox", "GZIP", "/etc/Passwd"]).is_some());
        assert!(exec(&["7Z", "a", "x", "/HOME/Alice/.AWS/Credentials"]).is_some());
    }

    #[test]
    fn non_utf8_args_are_matched_as_bytes() {
        let bad = OsStr::from_bytes(b"/tmp/\xff\xfe");
        let shadow = OsStr::new("/etc/shadow");
        let args = [OsStr::new("tar"), bad, shadow];
        assert!(rules().match_exec(OsStr::new("tar"), &args).is_some());
        let args = [OsStr::new("tar"), bad];
        assert!(rules().match_exec(OsStr::new("tar"), &args).is_none());
    }

    #[test]
    fn every_credential_path_reports_every_hit() {
        let m = exec(&["zip", "x.zip", "/etc/passwd", "/etc/group", "/app/x"]).unwrap();
        assert_eq!(m.paths.len(), 2);
        assert_eq!(m.paths[1].pattern, "/etc/group");
    }

    #[test]
    fn file_rule_recognises_archivers_by_name_applet_and_script() {
        let r = rules();
        let a = |exe: &str, args: &[&str]| {
            let comm = basename(args[0].as_bytes());
            r.archiver_of(
                OsStr::new(exe),
                OsStr::from_bytes(&comm[..comm.len().min(15)]),
                args,
            )
        };
        assert!(matches!(
            a("tar", &["tar", "cf", "x"]),
            Some(ArchiverHit::Name { .. })
        ));
        assert!(matches!(
            a("busybox", &["tar", "cf", "x"]),
            Some(ArchiverHit::Name { .. })
        ));
        assert!(matches!(
            a("busybox", &["/bin/gzip"]),
            Some(ArchiverHit::Name { .. })
        ));
        // busybox `exec gzip` re-executes /proc/self/exe: comm is "exe".
        assert!(matches!(
            r.archiver_of(
                OsStr::new("busybox"),
                OsStr::new("exe"),
                &["gzip", "-c", "k"]
            ),
            Some(ArchiverHit::Argv0 { .. })
        ));
        assert!(matches!(
            a("xz", &["xz", "-k", "f"]),
            Some(ArchiverHit::Name { .. })
        ));
        assert!(matches!(
            a("sh", &["sh", "-c", "cd /root && tar czf /tmp/x .ssh"]),
            Some(ArchiverHit::Script { .. })
        ));
        assert!(matches!(
            a("env", &["env", "/usr/bin/tar", "cf", "x"]),
            Some(ArchiverHit::Arg { .. })
        ));
        assert_eq!(a("cat", &["cat", "/etc/passwd"]), None);
        assert_eq!(
            a("sh", &["sh", "-c", "cat /etc/passwd | grep tarball"]),
            None
        );
        assert_eq!(a("ls", &["ls", "-l", "/root/.ssh"]), None);
        // A NOEXEC applet child of busybox sh: comm is the applet, argv the
        // shell's. `head` is not tar, whatever the script says.
        let script = ["sh", "-c", "head /etc/shadow; tar cf x /app"];
        assert_eq!(
            r.archiver_of(OsStr::new("busybox"), OsStr::new("head"), &script),
            None
        );
        assert!(matches!(
            r.archiver_of(OsStr::new("busybox"), OsStr::new("tar"), &script),
            Some(ArchiverHit::Name { .. })
        ));
        // The shell itself (comm sh) is judged by its script's words.
        assert!(matches!(
            r.archiver_of(OsStr::new("busybox"), OsStr::new("sh"), &script),
            Some(ArchiverHit::Script { .. })
        ));
    }

    #[test]
    fn the_program_that_runs_is_judged_not_the_name_it_wears() {
        let r = rules();
        // busybox exec'd as itself with an argv[0] the caller chose runs
        // the applet argv[0] names.
        assert!(matches!(
            r.archiver_of(
                OsStr::new("busybox"),
                OsStr::new("busybox"),
                &["tar", "cf", "/tmp/x", "/root/.ssh"]
            ),
            Some(ArchiverHit::Argv0 { .. })
        ));
        // The loader runs the program after its own options.
        assert_eq!(
            loaded_program(&[
                "ld.so",
                "--library-path",
                "/x",
                "--inhibit-cache",
                "/tmp/gz",
                "-c"
            ]),
            Some(4)
        );
        assert_eq!(loaded_program(&["ld.so", "--argv0=a", "/tmp/gz"]), Some(2));
        assert_eq!(loaded_program(&["ld.so", "--", "/tmp/gz"]), Some(2));
        assert_eq!(loaded_program(&["ld.so", "--list"]), None);
        assert!(matches!(
            r.archiver_of(
                OsStr::new("ld-linux-x86-64.so.2"),
                OsStr::new("ld-linux-x86-64"),
                &[
                    "/lib64/ld-linux-x86-64.so.2",
                    "--argv0",
                    "x",
                    "/usr/bin/gzip",
                    "-c"
                ]
            ),
            Some(ArchiverHit::Loaded { index: 3, .. })
        ));
        // Interpreters told to archive, however the module is spelled.
        let py =
            |args: &[&str]| r.archiver_of(OsStr::new("python3.11"), OsStr::new("python3"), args);
        for args in [
            &["python3", "-m", "tarfile", "-c", "x.tar", "k"][..],
            &["python3", "-mzipfile", "-c", "x.zip", "k"],
            &[
                "python3",
                "-c",
                "import shutil; shutil.make_archive('x', 'gztar', '/root')",
            ],
            &[
                "python3",
                "-c",
                "import gzip,sys; gzip.open('x','wb').write(sys.stdin.buffer.read())",
            ],
        ] {
            assert!(
                matches!(py(args), Some(ArchiverHit::Module { .. })),
                "{args:?}"
            );
        }
        assert!(matches!(
            r.archiver_of(
                OsStr::new("perl"),
                OsStr::new("perl"),
                &["perl", "-MArchive::Tar", "-e", "1"]
            ),
            Some(ArchiverHit::Module { .. })
        ));
        assert!(matches!(
            r.archiver_of(
                OsStr::new("node"),
                OsStr::new("node"),
                &["node", "-e", "require('zlib').gzipSync(x)"]
            ),
            Some(ArchiverHit::Module { .. })
        ));
        // Not archiving: zip() is a Python builtin, and a script's name is
        // no module.
        assert_eq!(py(&["python3", "-c", "print(list(zip(a, b)))"]), None);
        assert_eq!(py(&["python3", "/app/tarfile_report.py"]), None);
        assert_eq!(
            py(&["python3", "-c", "import pwd; pwd.getpwnam('root')"]),
            None
        );
        assert!(!is_interpreter_name(b"pythonic"));
        assert!(is_interpreter_name(b"python3.11"));
    }

    #[test]
    fn credential_pattern_matches_canonical_paths() {
        let r = rules();
        assert_eq!(
            r.credential_pattern(OsStr::new("/root/.ssh/id_rsa")),
            Some("/root/.ssh/id_rsa")
        );
        assert_eq!(r.credential_pattern(OsStr::new("/root/.ssh/config")), None);
        assert_eq!(r.credential_pattern(OsStr::new("/app/main.py")), None);
    }

    #[test]
    fn nss_reads_are_incidental_unless_an_argument_names_the_file() {
        let r = rules();
        let inc = |path: &str, args: &[&str], cwd: &str| {
            r.is_incidental(OsStr::new(path), args, Path::new(cwd))
        };
        assert!(inc(
            "/etc/passwd",
            &["tar", "czf", "/tmp/a.tgz", "/app"],
            "/"
        ));
        assert!(inc("/etc/group", &["tar", "xf", "/tmp/a.tgz"], "/tmp"));
        assert!(!inc(
            "/etc/passwd",
            &["tar", "czf", "/tmp/a.tgz", "/etc/passwd"],
            "/"
        ));
        assert!(!inc(
            "/etc/passwd",
            &["tar", "czf", "/tmp/a.tgz", "/etc"],
            "/"
        ));
        assert!(!inc(
            "/etc/passwd",
            &["tar", "czf", "/tmp/a.tgz", "passwd"],
            "/etc"
        ));
        assert!(!inc(
            "/etc/passwd",
            &["tar", "czf", "/tmp/a.tgz", "."],
            "/etc"
        ));
        assert!(!inc(
            "/etc/passwd",
            &["tar", "czf", "/tmp/a.tgz", "../etc//passwd"],
            "/tmp"
        ));
        assert!(!inc(
            "/etc/passwd",
            &["tar", "-czf", "/tmp/a.tgz", "--directory=/etc", "passwd"],
            "/etc"
        ));
        // Not an incidental file at all.
        assert!(!inc(
            "/etc/shadow",
            &["tar", "czf", "/tmp/a.tgz", "/app"],
            "/"
        ));
        assert!(!inc(
            "/root/.ssh/id_rsa",
            &["tar", "czf", "/tmp/a.tgz", "/app"],
            "/"
        ));
    }

    #[test]
    fn bad_patterns_and_names_are_quoted_in_errors() {
        let mut cfg = RulesConfig::default();
        cfg.file.archivers.push("/bin/tar".into());
        let e = Rules::compile(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("\"/bin/tar\"") && e.contains("rules.file.archivers"),
            "{e}"
        );
        let mut cfg = RulesConfig::default();
        cfg.exec.paths.push(String::new());
        let e = Rules::compile(&cfg).unwrap_err().to_string();
        assert!(e.contains("rules.exec.paths"), "{e}");
    }

    #[test]
    fn glob_metacharacters_other_than_star_are_literal() {
        let p = PathPatterns::new("t", &["/etc/[ab]".to_string(), "/x/{a,b}".to_string()]).unwrap();
        assert!(p.is_match(OsStr::new("/etc/[ab]")));
        assert!(!p.is_match(OsStr::new("/etc/a")));
        assert!(p.is_match(OsStr::new("/x/{a,b}")));
        assert!(!p.is_match(OsStr::new("/x/a")));
    }
}
