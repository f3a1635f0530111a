//! `keyward check`: would this command line alert, and why. No daemon.

use std::ffi::OsString;
use std::fmt;

use crate::rules::{ArchiverHit, ExecMatch, Rules, basename};

/// The verdict on one command line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    pub args: Vec<String>,
    /// The seed rule's match on the command line alone.
    pub exec: Option<ExecMatch>,
    /// Whether the file-access rule sees this process as an archiver: it
    /// would alert as soon as the process opens a credential file.
    pub file_archiver: Option<ArchiverHit>,
    /// The behaviour rule on a file the process would write (`--wrote`):
    /// written after a credential read, within the window, it alerts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behaviour: Option<BehaviourCheck>,
}

/// What the behaviour rule makes of a written file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BehaviourCheck {
    pub rule_id: &'static str,
    /// The file, as given.
    pub wrote: String,
    /// Its archive or compression format by magic number; `None` when it
    /// holds none (or cannot be read: `error` says why).
    pub format: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub window_s: u64,
}

impl BehaviourCheck {
    /// Judge the file at `path` as the behaviour rule judges a reader's
    /// output: by its first 512 bytes.
    pub fn of(rules: &Rules, path: &std::path::Path) -> Self {
        use std::io::Read;
        let mut head = [0u8; 512];
        let read = std::fs::File::open(path).and_then(|mut f| {
            let mut n = 0;
            while n < head.len() {
                let k = f.read(&mut head[n..])?;
                if k == 0 {
                    break;
                }
                n += k;
            }
            Ok(n)
        });
        let (format, error) = match read {
            Ok(n) => (crate::rules::archive_format(&head[..n]), None),
            Err(e) => (None, Some(format!("cannot read {}: {e}", path.display()))),
        };
        Self {
            rule_id: crate::rules::BEHAVIOUR_RULE_ID,
            wrote: path.display().to_string(),
            format,
            error,
            window_s: rules.behaviour_window.as_secs(),
        }
    }
}

impl CheckReport {
    /// Whether the command line alone raises an alert.
    pub fn alerts(&self) -> bool {
        self.exec.is_some()
    }
}

/// Evaluate `argv` as if it were exec'd in a watched container; the process
/// name is argv\[0\]'s basename.
pub fn check(rules: &Rules, argv: &[OsString]) -> CheckReport {
    let name = argv
        .first()
        .map(|a| {
            use std::os::unix::ffi::{OsStrExt, OsStringExt};
            OsString::from_vec(basename(a.as_bytes()).to_vec())
        })
        .unwrap_or_default();
    CheckReport {
        args: argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        exec: rules.match_exec(&name, argv),
        file_archiver: {
            use std::os::unix::ffi::OsStrExt;
            let b = name.as_bytes();
            rules.archiver_of(
                &name,
                std::ffi::OsStr::from_bytes(&b[..b.len().min(15)]),
                argv,
            )
        },
        behaviour: None,
    }
}

fn describe(hit: &ArchiverHit) -> String {
    match hit {
        ArchiverHit::Name { name } => format!("process.name {name:?} is an archiver"),
        ArchiverHit::Arg { index, arg } => format!("process.args[{index}] {arg:?} is an archiver"),
        ArchiverHit::Argv0 { name } => format!("argv[0] {name:?} is an archiver"),
        ArchiverHit::Script { index, word } => {
            format!("shell script in process.args[{index}] runs archiver {word:?}")
        }
        ArchiverHit::Identity { name, exe } => {
            format!("executable {exe:?} is archiver {name:?} by content (build-id)")
        }
        ArchiverHit::Loaded { index, program } => {
            format!("the loader runs process.args[{index}] {program:?}, an archiver")
        }
        ArchiverHit::Module { index, word } => {
            format!("interpreter told to archive: process.args[{index}] names {word:?}")
        }
        ArchiverHit::Behaviour { format, archive } => format!(
            "it read a credential, then wrote {format} data to {archive:?} (by the data's magic number)"
        ),
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.exec {
            Some(m) => {
                writeln!(
                    f,
                    "ALERT: {} ({})",
                    crate::rules::EXEC_RULE_NAME,
                    crate::rules::EXEC_RULE_ID
                )?;
                writeln!(f, "  archiver: {}", describe(&m.archiver))?;
                for p in &m.paths {
                    writeln!(
                        f,
                        "  path: process.args[{}] {:?} matches pattern {:?}",
                        p.index, p.arg, p.pattern
                    )?;
                }
            }
            None => writeln!(
                f,
                "no alert from the command line: {}",
                crate::rules::EXEC_RULE_ID
            )?,
        }
        match &self.file_archiver {
            Some(hit) => writeln!(
                f,
                "file access: {}; any credential file it opens alerts ({})",
                describe(hit),
                crate::rules::FILE_RULE_ID
            )?,
            None => writeln!(f, "file access: not an archiver; its opens do not alert")?,
        }
        match &self.behaviour {
            Some(BehaviourCheck {
                rule_id,
                wrote,
                format: Some(format),
                window_s,
                ..
            }) => writeln!(
                f,
                "behaviour: {wrote:?} holds {format} data (by its magic number): written within \
                 {window_s} s after this process reads a credential, it alerts ({rule_id}), \
                 whatever the process is called"
            ),
            Some(BehaviourCheck {
                wrote,
                format: None,
                error,
                ..
            }) => writeln!(
                f,
                "behaviour: {wrote:?} holds no archive or compressed data{}; writing it \
                 makes no behaviour match",
                error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
            None => writeln!(
                f,
                "behaviour: if it reads a credential and then writes archive or compressed data \
                 within the window, it alerts ({}); `--wrote FILE` judges a file",
                crate::rules::BEHAVIOUR_RULE_ID
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RulesConfig;

    fn run(args: &[&str]) -> CheckReport {
        let rules = Rules::compile(&RulesConfig::default()).unwrap();
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        check(&rules, &argv)
    }

    #[test]
    fn explains_matches_and_misses() {
        let r = run(&["/usr/bin/tar", "czf", "/tmp/x.tgz", "/root/.ssh/id_rsa"]);
        assert!(r.alerts());
        let text = r.to_string();
        assert!(text.contains("\"tar\" is an archiver"), "{text}");
        assert!(
            text.contains("matches pattern \"/root/.ssh/id_rsa\""),
            "{text}"
        );
        let r = run(&["tar", "czf", "/tmp/x.tgz", "/root/.ssh"]);
        assert!(!r.alerts());
        assert!(
            r.to_string()
                .contains("any credential file it opens alerts")
        );
        let r = run(&["cat", "/etc/passwd"]);
        assert!(!r.alerts() && r.file_archiver.is_none());
    }

    #[test]
    fn explains_a_behaviour_match_by_the_written_files_format() {
        let tmp = crate::testdir::TempDir::new("check-behaviour");
        let rules = Rules::compile(&RulesConfig::default()).unwrap();
        let gz = tmp.path().join("out.bin");
        std::fs::write(&gz, b"\x1f\x8b\x08\x00rest").unwrap();
        let mut r = run(&["/tmp/xx", "-c"]);
        r.behaviour = Some(BehaviourCheck::of(&rules, &gz));
        let text = r.to_string();
        assert!(text.contains("holds gzip data"), "{text}");
        assert!(
            text.contains("keyward.behaviour.credential-archived"),
            "{text}"
        );
        assert!(text.contains("within 60 s"), "{text}");
        let plain = tmp.path().join("notes.txt");
        std::fs::write(&plain, b"hello").unwrap();
        r.behaviour = Some(BehaviourCheck::of(&rules, &plain));
        assert!(r.to_string().contains("no archive or compressed data"));
        r.behaviour = Some(BehaviourCheck::of(&rules, &tmp.path().join("missing")));
        let text = r.to_string();
        assert!(text.contains("cannot read"), "{text}");
    }
}
