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
            ),
            None => writeln!(f, "file access: not an archiver; its opens do not alert"),
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
}
