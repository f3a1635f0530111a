//! One call per event: a [`Candidate`] in, a [`Verdict`] with its evidence
//! out.
//!
//! The answer stage builds one candidate per event (the process, what it
//! touched, its container) and asks [`Rules::judge`] once. The rules ask
//! the cheap questions first (names and arguments, already read) and only
//! then the ones that cost a procfs read or an index lookup, through the
//! [`Evidence`] the caller supplies: an exec of `ls` never resolves a path
//! or reads a parent's executable.
//!
//! New behaviour and data-flow rules plug in here: they see the same
//! candidate and add to the same verdict.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use super::exceptions::{Digests, Exceptions, Subject};
use super::{ArchiverHit, EXEC_RULE_ID, ExecMatch, FILE_RULE_ID, Rules};

/// A watched container as exceptions see it.
#[derive(Debug, Clone, Copy)]
pub struct ContainerFacts<'a> {
    pub name: Option<&'a str>,
    pub image: Option<&'a str>,
    pub annotations: &'a BTreeMap<String, String>,
}

/// How a file reached the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// The process is opening it now (a permission event).
    Opened,
    /// The process holds it from before its exec (`gzip < key`).
    Inherited,
    /// An argument names it, resolved as the process resolves it; the
    /// file itself may not be marked (the name-service files where
    /// nothing is denied).
    Named,
    /// The process reads a pipe or FIFO that a process which read the
    /// credential holds for writing (`cat key | gzip`).
    Piped,
}

/// The process credential data came from, for a file reached through a
/// pipe: the alert names both processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Source {
    /// What carried it: `pipe:[<inode>]`, or a FIFO's path.
    pub via: String,
    pub pid: i32,
    pub name: String,
    pub executable: String,
    pub args: Vec<String>,
}

/// Which kernel event the candidate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A permission event: the process is held inside `open(2)`.
    Open,
    /// An exec notification, judged once the exec settled.
    Exec,
    /// A process found reading a pipe that carries credential data,
    /// judged for what it holds; its command line was judged at its exec.
    Pipe,
}

/// A marked file the event touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TouchedFile {
    /// Canonical path inside the container: the credential it is judged
    /// as (for a copy, the credential it was copied from).
    pub path: PathBuf,
    /// Where keyward found it: `path`, or `copy of <origin>` for a file
    /// written by a process that read a credential.
    pub origin: String,
    /// The path as the opener reached it (its own spelling), or how it
    /// holds it (`inherited fd 0`).
    pub opened_as: String,
    pub touch: Touch,
    /// For [`Touch::Piped`]: the process that read the credential.
    pub source: Option<Source>,
}

/// What the rules may ask about an event beyond the process's names and
/// arguments. Each answer may cost a read; the rules ask only when the
/// answer can change the verdict.
pub trait Evidence {
    /// The archiver this process's executable is by content, if any.
    fn identity(&self) -> Option<ArchiverHit>;
    /// The container the process belongs to; `None` outside any.
    fn container(&self) -> Option<ContainerFacts<'_>>;
    /// The marked files this event touched.
    fn files(&self) -> Vec<TouchedFile>;
    /// The process's working directory, inside its own root.
    fn cwd(&self) -> PathBuf;
    /// The parent's executable, for exceptions.
    fn parent_executable(&self) -> Option<String>;
    /// The SHA-256 of the executable the kernel runs for this process,
    /// and of its parent's, for exceptions that name content.
    fn executable_sha256(&self) -> Option<[u8; 32]> {
        None
    }
    fn parent_executable_sha256(&self) -> Option<[u8; 32]> {
        None
    }
}

/// An [`Evidence`]'s digests, as exceptions ask for them.
struct EvidenceDigests<'a>(&'a dyn Evidence);

impl Digests for EvidenceDigests<'_> {
    fn executable(&self) -> Option<[u8; 32]> {
        self.0.executable_sha256()
    }
    fn parent_executable(&self) -> Option<[u8; 32]> {
        self.0.parent_executable_sha256()
    }
}

/// One event's process, as the kernel showed it.
#[derive(Clone, Copy)]
pub struct Candidate<'a> {
    /// `/proc/<pid>/exe`.
    pub exe: &'a OsStr,
    /// Its basename.
    pub exe_name: &'a OsStr,
    /// The kernel's `comm`.
    pub comm: &'a OsStr,
    /// argv, argv\[0\] included.
    pub args: &'a [OsString],
    pub event: Event,
    pub evidence: &'a dyn Evidence,
}

/// A credential file match of the file-access rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMatch {
    pub file: TouchedFile,
    pub pattern: String,
    pub archiver: ArchiverHit,
}

/// What matched, with the evidence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matches {
    /// The seed rule on the command line.
    pub exec: Option<ExecMatch>,
    /// The file-access rule, one per credential file touched.
    pub files: Vec<FileMatch>,
}

/// The rules' answer for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No rule can hold for this process image, whatever it touches: the
    /// caller may remember it.
    Benign,
    /// The process is in no watched container.
    Outside,
    /// A rule could hold, but not for this event: the file is no
    /// credential, the read is incidental, or an exception covers it.
    Quiet,
    Matched(Matches),
}

/// The basename of the program the loader runs, when the executable is
/// the loader.
fn loaded_name<'a>(c: &Candidate<'a>) -> Option<&'a OsStr> {
    use std::os::unix::ffi::OsStrExt;
    if !super::is_loader_name(c.exe_name.as_bytes()) {
        return None;
    }
    let i = super::loaded_program(c.args)?;
    Some(OsStr::from_bytes(super::basename(c.args[i].as_bytes())))
}

impl Rules {
    /// Judge one event. Exceptions are applied here, so a verdict is
    /// final: `Matched` is what the caller alerts on.
    pub fn judge(&self, exceptions: &Exceptions, c: &Candidate<'_>) -> Verdict {
        let exec = match c.event {
            Event::Pipe => None,
            Event::Open | Event::Exec => match loaded_name(c) {
                // The loader's process is named by the program it runs.
                Some(p) => self.match_exec_names(&[c.exe_name, c.comm, p], c.args),
                None => self.match_exec_names(&[c.exe_name, c.comm], c.args),
            },
        };
        let archiver = self.file_enabled.then(|| self.archiver_hit(c)).flatten();
        if exec.is_none() && archiver.is_none() {
            return Verdict::Benign;
        }
        let Some(container) = c.evidence.container() else {
            return Verdict::Outside;
        };
        let excepted = |rule_id| excepted(exceptions, rule_id, &container, c);
        let exec = exec.filter(|_| !excepted(EXEC_RULE_ID));
        let files = match archiver {
            Some(a) if !excepted(FILE_RULE_ID) => self.credential_files(c, a),
            _ => Vec::new(),
        };
        if exec.is_none() && files.is_empty() {
            return Verdict::Quiet;
        }
        Verdict::Matched(Matches { exec, files })
    }

    /// The name-service files the arguments name (see
    /// [`Rules::named_lookup_files`]).
    fn named_files(&self, c: &Candidate<'_>) -> Vec<TouchedFile> {
        self.named_lookup_files(c.args, &c.evidence.cwd())
            .into_iter()
            .map(|(index, path)| TouchedFile {
                origin: path.to_string_lossy().into_owned(),
                opened_as: format!("argument {index} ({})", c.args[index].to_string_lossy()),
                path,
                touch: Touch::Named,
                source: None,
            })
            .collect()
    }

    /// Whether the process is an archiver: by name (executable, `comm`,
    /// argv, wrappers), else by the content of its executable.
    ///
    /// A shell found reading a pipe is not an archiver by its `-c` script:
    /// it is a pipeline member forked and not yet exec'd (busybox sh's
    /// children keep its argv until then) or a subshell, and what it runs
    /// is judged at that program's own exec.
    fn archiver_hit(&self, c: &Candidate<'_>) -> Option<ArchiverHit> {
        self.archiver_of(c.exe_name, c.comm, c.args)
            .filter(|h| !(c.event == Event::Pipe && matches!(h, ArchiverHit::Script { .. })))
            .or_else(|| c.evidence.identity())
    }

    /// The touched files that are credentials: by canonical path, else by
    /// the opener's spelling. An open of a name-service file counts only
    /// when an argument names it (GNU tar looks up `/etc/passwd` for every
    /// archive it writes; that alone is not collection).
    fn credential_files(&self, c: &Candidate<'_>, archiver: ArchiverHit) -> Vec<FileMatch> {
        let mut files = c.evidence.files();
        if c.event == Event::Exec {
            files.extend(self.named_files(c));
        }
        let mut out = Vec::new();
        for file in files {
            let pattern = match file.touch {
                Touch::Opened => self
                    .credential_pattern(file.path.as_os_str())
                    .or_else(|| self.credential_pattern(OsStr::new(&file.opened_as))),
                Touch::Inherited | Touch::Named | Touch::Piped => {
                    self.credential_pattern(file.path.as_os_str())
                }
            };
            let Some(pattern) = pattern else { continue };
            if file.touch == Touch::Opened
                && self.is_incidental_path(file.path.as_os_str())
                && self.is_incidental(file.path.as_os_str(), c.args, &c.evidence.cwd())
            {
                continue;
            }
            out.push(FileMatch {
                pattern: pattern.to_string(),
                archiver: archiver.clone(),
                file,
            });
        }
        out
    }
}

/// Whether an exception suppresses `rule_id` for this process in this
/// container (counted by the exception when it does).
fn excepted(
    exceptions: &Exceptions,
    rule_id: &str,
    container: &ContainerFacts<'_>,
    c: &Candidate<'_>,
) -> bool {
    if exceptions.is_empty() {
        return false;
    }
    let exe = c.exe.to_string_lossy();
    let parent = exceptions
        .need_parent()
        .then(|| c.evidence.parent_executable())
        .flatten();
    let cmdline: Vec<std::borrow::Cow<'_, str>> =
        c.args.iter().map(|a| a.to_string_lossy()).collect();
    let cmdline = cmdline.join(" ");
    exceptions
        .suppress(&Subject {
            rule_id,
            container_name: container.name,
            image: container.image,
            annotations: container.annotations,
            executable: &exe,
            parent_executable: parent.as_deref(),
            command_line: &cmdline,
            digests: &EvidenceDigests(c.evidence),
        })
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ExceptionConfig, RulesConfig};
    use std::path::Path;

    /// An [`Evidence`] with fixed answers: a command line judged on its own,
    /// in a container with no name.
    #[derive(Debug, Default)]
    struct Fixed {
        files: Vec<TouchedFile>,
        cwd: PathBuf,
        annotations: BTreeMap<String, String>,
    }

    impl Evidence for Fixed {
        fn identity(&self) -> Option<ArchiverHit> {
            None
        }
        fn container(&self) -> Option<ContainerFacts<'_>> {
            Some(ContainerFacts {
                name: None,
                image: None,
                annotations: &self.annotations,
            })
        }
        fn files(&self) -> Vec<TouchedFile> {
            self.files.clone()
        }
        fn cwd(&self) -> PathBuf {
            self.cwd.clone()
        }
        fn parent_executable(&self) -> Option<String> {
            None
        }
    }

    fn rules() -> Rules {
        Rules::compile(&RulesConfig::default()).unwrap()
    }

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    fn opened(path: &str) -> TouchedFile {
        TouchedFile {
            path: path.into(),
            origin: path.into(),
            opened_as: path.into(),
            touch: Touch::Opened,
            source: None,
        }
    }

    fn judge(ex: &Exceptions, argv: &[&str], ev: &Fixed) -> Verdict {
        let a = args(argv);
        let exe = OsString::from(format!("/usr/bin/{}", argv[0]));
        rules().judge(
            ex,
            &Candidate {
                exe: &exe,
                exe_name: OsStr::new(argv[0]),
                comm: OsStr::new(argv[0]),
                args: &a,
                event: Event::Open,
                evidence: ev,
            },
        )
    }

    #[test]
    fn a_pipe_reader_is_judged_by_name_not_by_its_shell_script() {
        let piped = TouchedFile {
            path: "/root/.ssh/id_rsa".into(),
            origin: "/root/.ssh/id_rsa".into(),
            opened_as: "fd 0 reads pipe:[9] from pid 7 (cat)".into(),
            touch: Touch::Piped,
            source: Some(Source {
                via: "pipe:[9]".into(),
                pid: 7,
                name: "cat".into(),
                ..Default::default()
            }),
        };
        let ev = Fixed {
            files: vec![piped],
            ..Default::default()
        };
        let at = |argv: &[&str]| {
            let a = args(argv);
            rules().judge(
                &Exceptions::default(),
                &Candidate {
                    exe: OsStr::new("/usr/bin/x"),
                    exe_name: OsStr::new(argv[0]),
                    comm: OsStr::new(argv[0]),
                    args: &a,
                    event: Event::Pipe,
                    evidence: &ev,
                },
            )
        };
        let Verdict::Matched(m) = at(&["gzip", "-c"]) else {
            panic!("gzip reading a tainted pipe matches");
        };
        assert_eq!(m.files[0].file.touch, Touch::Piped);
        assert_eq!(
            m.files[0].file.path,
            std::path::Path::new("/root/.ssh/id_rsa")
        );
        // The seed rule was judged at the exec, not again here.
        let Verdict::Matched(m) = at(&["tar", "czf", "x", "/etc/shadow"]) else {
            panic!("tar matches");
        };
        assert!(m.exec.is_none());
        // A forked pipeline member still wearing its shell's argv is not an
        // archiver by the script's words.
        assert_eq!(at(&["sh", "-c", "cat k | gzip"]), Verdict::Benign);
    }

    #[test]
    fn one_call_gives_both_rules_their_evidence() {
        let ev = Fixed {
            files: vec![opened("/root/.ssh/id_rsa")],
            cwd: "/".into(),
            ..Default::default()
        };
        let none = Exceptions::default();
        let Verdict::Matched(m) = judge(&none, &["tar", "czf", "/x", "/root/.ssh/id_rsa"], &ev)
        else {
            panic!("no match");
        };
        assert!(m.exec.is_some());
        assert_eq!(m.files.len(), 1);
        assert_eq!(m.files[0].pattern, "/root/.ssh/id_rsa");
        // A non-archiver never asks for its files: benign whatever it opens.
        assert_eq!(
            judge(&none, &["cat", "/root/.ssh/id_rsa"], &ev),
            Verdict::Benign
        );
        // An archiver opening a file that is no credential is quiet.
        let other = Fixed {
            files: vec![opened("/srv/data")],
            ..Default::default()
        };
        assert_eq!(
            judge(&none, &["tar", "czf", "/x", "/srv"], &other),
            Verdict::Quiet
        );
        // GNU tar's own NSS lookup of /etc/passwd is incidental...
        let nss = Fixed {
            files: vec![opened("/etc/passwd")],
            cwd: "/srv".into(),
            ..Default::default()
        };
        assert_eq!(
            judge(&none, &["tar", "czf", "/x", "."], &nss),
            Verdict::Quiet
        );
        // ...unless an argument names it.
        assert!(matches!(
            judge(&none, &["tar", "czf", "/x", "/etc"], &nss),
            Verdict::Matched(_)
        ));
    }

    #[test]
    fn lookup_files_named_by_resolved_arguments() {
        let r = rules();
        let named = |argv: &[&str], cwd: &str| -> Vec<String> {
            r.named_lookup_files(&args(argv), Path::new(cwd))
                .into_iter()
                .map(|(_, p)| p.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            named(&["tar", "czf", "/tmp/x", "passwd"], "/etc"),
            ["/etc/passwd"]
        );
        assert_eq!(
            named(&["tar", "-C", "/etc", "-czf", "/tmp/x", "group"], "/"),
            ["/etc/group"]
        );
        assert_eq!(
            named(
                &["tar", "--directory=/etc", "-cf", "/tmp/x", "./hosts"],
                "/"
            ),
            ["/etc/hosts"]
        );
        assert_eq!(
            named(&["gzip", "-c", "//etc//passwd"], "/"),
            ["/etc/passwd"]
        );
        assert_eq!(
            named(&["tar", "cf", "/tmp/x", "../etc/./passwd"], "/srv"),
            ["/etc/passwd"]
        );
        // A directory above them names all three.
        assert_eq!(named(&["tar", "cf", "/tmp/x", "etc"], "/").len(), 3);
        // Near misses name nothing.
        assert!(named(&["tar", "cf", "/tmp/x", "/app", "passwd.txt"], "/etc").is_empty());
        assert!(named(&["tar", "cf", "/tmp/x", "/etc/passwd.d"], "/").is_empty());
        assert!(named(&["tar", "-C", "/srv", "-cf", "/tmp/x", "passwd"], "/etc").is_empty());
    }

    #[test]
    fn an_archiver_naming_a_lookup_file_matches_at_exec_only() {
        let none = Exceptions::default();
        let ev = Fixed {
            cwd: "/etc".into(),
            ..Default::default()
        };
        let a = args(&["tar", "czf", "/tmp/x", "passwd"]);
        let c = |event| Candidate {
            exe: OsStr::new("/usr/bin/tar"),
            exe_name: OsStr::new("tar"),
            comm: OsStr::new("tar"),
            args: &a,
            event,
            evidence: &ev,
        };
        let Verdict::Matched(m) = rules().judge(&none, &c(Event::Exec)) else {
            panic!("no match at exec");
        };
        assert_eq!(m.files[0].file.path, Path::new("/etc/passwd"));
        assert_eq!(m.files[0].file.touch, Touch::Named);
        // At an open only the opened file counts; the arguments do not add
        // files the process is not opening.
        assert_eq!(rules().judge(&none, &c(Event::Open)), Verdict::Quiet);
    }

    #[test]
    fn exceptions_are_applied_inside_the_verdict() {
        let ex = Exceptions::compile(&[ExceptionConfig {
            reason: "backup".into(),
            executable: Some("/usr/bin/tar".into()),
            ..Default::default()
        }])
        .unwrap();
        let ev = Fixed {
            files: vec![opened("/root/.ssh/id_rsa")],
            ..Default::default()
        };
        assert_eq!(
            judge(&ex, &["tar", "czf", "/x", "/root/.ssh/id_rsa"], &ev),
            Verdict::Quiet
        );
        assert_eq!(ex.counts()[0].suppressed, 2, "both rules were suppressed");
    }
}
