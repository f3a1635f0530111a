//! Exceptions: tune out known-good archiving, as the seed's false-positive
//! analysis advises (backup jobs, configuration management, CI pipelines,
//! security scanners).
//!
//! Each `[[exceptions]]` entry names why it exists (`reason`) and one or
//! more conditions, all of which must hold: container name, image,
//! annotation, process executable, parent executable (their paths, and
//! their content's SHA-256), a glob over the command line, and optionally
//! the rule ids it applies to.
//!
//! A path is what the container laid out: any program can sit at
//! `/usr/bin/tar` in an image the tenant built. The digest is what it
//! cannot fake; it is computed from the file the kernel executes
//! (`/proc/<pid>/exe`), only when every other condition of an entry
//! already holds. Globs use `*`
//! (any characters, `/` included) and `?`. A suppressed match is never lost
//! silently: each exception counts what it suppressed, and `keyward status`
//! shows the counts with the reasons.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use globset::GlobMatcher;
use serde::{Deserialize, Serialize};

use super::patterns::wildcard;
use crate::config::{ConfigError, ExceptionConfig};

/// Errors compiling exceptions.
#[derive(Debug, thiserror::Error)]
pub enum ExceptionError {
    /// An entry the config's own checks refuse (no reason, no condition,
    /// an annotation that is not `key=value`).
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("exceptions[{index}].{key} pattern {pattern:?} is invalid: {source}")]
    Pattern {
        index: usize,
        key: &'static str,
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("exceptions[{index}].{key} pattern is empty")]
    Empty { index: usize, key: &'static str },
}

/// The SHA-256 of a process's and its parent's executables, asked for
/// only when an exception needs them.
pub trait Digests {
    fn executable(&self) -> Option<[u8; 32]>;
    fn parent_executable(&self) -> Option<[u8; 32]>;
}

/// No digest known (a command line judged on its own).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDigests;

impl Digests for NoDigests {
    fn executable(&self) -> Option<[u8; 32]> {
        None
    }
    fn parent_executable(&self) -> Option<[u8; 32]> {
        None
    }
}

/// What an exception is matched against.
#[derive(Clone, Copy)]
pub struct Subject<'a> {
    pub rule_id: &'a str,
    pub container_name: Option<&'a str>,
    pub image: Option<&'a str>,
    pub annotations: &'a BTreeMap<String, String>,
    pub executable: &'a str,
    pub parent_executable: Option<&'a str>,
    pub command_line: &'a str,
    pub digests: &'a dyn Digests,
}

#[derive(Debug)]
struct Compiled {
    reason: String,
    container_name: Option<GlobMatcher>,
    image: Option<GlobMatcher>,
    annotation: Option<(String, GlobMatcher)>,
    executable: Option<GlobMatcher>,
    parent_executable: Option<GlobMatcher>,
    executable_sha256: Vec<[u8; 32]>,
    parent_executable_sha256: Vec<[u8; 32]>,
    args: Option<GlobMatcher>,
    rules: Vec<String>,
    suppressed: AtomicU64,
}

/// Suppression counts for `keyward status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExceptionCount {
    pub reason: String,
    pub suppressed: u64,
}

/// The compiled exceptions.
#[derive(Debug, Default)]
pub struct Exceptions {
    list: Vec<Compiled>,
}

/// Exceptions use the rules' wildcard dialect, case-sensitively: an
/// exception written for `/usr/bin/tar` does not cover `/usr/bin/TAR`.
fn compile_glob(index: usize, key: &'static str, p: &str) -> Result<GlobMatcher, ExceptionError> {
    if p.is_empty() {
        return Err(ExceptionError::Empty { index, key });
    }
    wildcard(p, false)
        .map(|g| g.compile_matcher())
        .map_err(|source| ExceptionError::Pattern {
            index,
            key,
            pattern: p.to_string(),
            source,
        })
}

fn glob(
    index: usize,
    key: &'static str,
    pattern: &Option<String>,
) -> Result<Option<GlobMatcher>, ExceptionError> {
    pattern
        .as_deref()
        .map(|p| compile_glob(index, key, p))
        .transpose()
}

impl Exceptions {
    /// Compile; errors name the entry and the key.
    pub fn compile(list: &[ExceptionConfig]) -> Result<Self, ExceptionError> {
        let mut out = Vec::new();
        for (index, e) in list.iter().enumerate() {
            e.validate(index)?;
            let annotation = match &e.annotation {
                None => None,
                Some(a) => {
                    // validate() made sure there is a '='.
                    let (k, v) = a.split_once('=').unwrap_or((a, ""));
                    Some((k.to_string(), compile_glob(index, "annotation", v)?))
                }
            };
            let c = Compiled {
                reason: e.reason.clone(),
                container_name: glob(index, "container_name", &e.container_name)?,
                image: glob(index, "image", &e.image)?,
                annotation,
                executable: glob(index, "executable", &e.executable)?,
                parent_executable: glob(index, "parent_executable", &e.parent_executable)?,
                executable_sha256: e.executable_sha256.iter().map(|d| d.0).collect(),
                parent_executable_sha256: e.parent_executable_sha256.iter().map(|d| d.0).collect(),
                args: glob(index, "args", &e.args)?,
                rules: e.rules.clone(),
                suppressed: AtomicU64::new(0),
            };
            out.push(c);
        }
        Ok(Self { list: out })
    }

    /// Whether there are no exceptions at all.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether any exception needs the parent's executable.
    pub fn need_parent(&self) -> bool {
        self.list.iter().any(|c| c.parent_executable.is_some())
    }

    /// The reason of the first exception that matches, counting it.
    pub fn suppress(&self, s: &Subject<'_>) -> Option<&str> {
        let hit = self.list.iter().find(|c| {
            let opt = |m: &Option<GlobMatcher>, v: Option<&str>| {
                m.as_ref().is_none_or(|m| v.is_some_and(|v| m.is_match(v)))
            };
            // Hashing reads the whole file: last, and only when asked.
            let content = |want: &[[u8; 32]], have: &dyn Fn() -> Option<[u8; 32]>| {
                want.is_empty() || have().is_some_and(|d| want.contains(&d))
            };
            (c.rules.is_empty() || c.rules.iter().any(|r| r == s.rule_id))
                && opt(&c.container_name, s.container_name)
                && opt(&c.image, s.image)
                && opt(&c.executable, Some(s.executable))
                && opt(&c.parent_executable, s.parent_executable)
                && opt(&c.args, Some(s.command_line))
                && c.annotation
                    .as_ref()
                    .is_none_or(|(k, v)| s.annotations.get(k).is_some_and(|val| v.is_match(val)))
                && content(&c.executable_sha256, &|| s.digests.executable())
                && content(&c.parent_executable_sha256, &|| {
                    s.digests.parent_executable()
                })
        })?;
        hit.suppressed.fetch_add(1, Ordering::Relaxed);
        Some(&hit.reason)
    }

    /// Counts per exception, in config order.
    pub fn counts(&self) -> Vec<ExceptionCount> {
        self.list
            .iter()
            .map(|c| ExceptionCount {
                reason: c.reason.clone(),
                suppressed: c.suppressed.load(Ordering::Relaxed),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject<'a>(a: &'a BTreeMap<String, String>, exe: &'a str, args: &'a str) -> Subject<'a> {
        Subject {
            rule_id: "keyward.file.archiver-opened-credential",
            container_name: Some("backup-nightly"),
            image: Some("registry.local/backup:1.2"),
            annotations: a,
            executable: exe,
            parent_executable: Some("/usr/local/bin/backup.sh"),
            command_line: args,
            digests: &NoDigests,
        }
    }

    #[test]
    fn a_digest_condition_matches_content_and_is_asked_for_last() {
        use std::cell::Cell;
        struct Known([u8; 32], Cell<u32>);
        impl Digests for Known {
            fn executable(&self) -> Option<[u8; 32]> {
                self.1.set(self.1.get() + 1);
                Some(self.0)
            }
            fn parent_executable(&self) -> Option<[u8; 32]> {
                None
            }
        }
        let tar = crate::config::Sha256([7; 32]);
        let ex = Exceptions::compile(&[ExceptionConfig {
            reason: "the image's own tar".into(),
            container_name: Some("backup-*".into()),
            executable: Some("/usr/bin/tar".into()),
            executable_sha256: vec![tar],
            ..Default::default()
        }])
        .unwrap();
        let a = BTreeMap::new();
        let real = Known([7; 32], Cell::new(0));
        let fake = Known([8; 32], Cell::new(0));
        let mut s = subject(&a, "/usr/bin/tar", "tar cf /b /root");
        s.digests = &real;
        assert_eq!(ex.suppress(&s), Some("the image's own tar"));
        s.digests = &fake;
        assert_eq!(ex.suppress(&s), None, "another program at the same path");
        s.digests = &NoDigests;
        assert_eq!(
            ex.suppress(&s),
            None,
            "an unreadable executable matches nothing"
        );
        let mut web = subject(&a, "/usr/bin/tar", "tar");
        web.container_name = Some("web");
        web.digests = &real;
        let asked = real.1.get();
        assert_eq!(ex.suppress(&web), None);
        assert_eq!(
            real.1.get(),
            asked,
            "not hashed when another condition fails"
        );
        // A parent digest that is unknown fails its condition.
        let ex = Exceptions::compile(&[ExceptionConfig {
            reason: "from the backup script".into(),
            parent_executable_sha256: vec![tar],
            ..Default::default()
        }])
        .unwrap();
        s.digests = &real;
        assert_eq!(ex.suppress(&s), None);
    }

    #[test]
    fn all_conditions_must_hold_and_suppression_is_counted() {
        let ex = Exceptions::compile(&[ExceptionConfig {
            reason: "nightly backup".into(),
            container_name: Some("backup-*".into()),
            executable: Some("/usr/bin/tar".into()),
            parent_executable: Some("*/backup.sh".into()),
            ..Default::default()
        }])
        .unwrap();
        let a = BTreeMap::new();
        assert_eq!(
            ex.suppress(&subject(&a, "/usr/bin/tar", "tar czf /backup/x /etc")),
            Some("nightly backup")
        );
        assert_eq!(
            ex.suppress(&subject(&a, "/usr/bin/gzip", "gzip /etc/shadow")),
            None
        );
        let mut other = subject(&a, "/usr/bin/tar", "tar");
        other.container_name = Some("web");
        assert_eq!(ex.suppress(&other), None);
        assert_eq!(ex.counts()[0].suppressed, 1);
    }

    #[test]
    fn annotation_args_and_rule_scoping() {
        let ex = Exceptions::compile(&[ExceptionConfig {
            reason: "ci".into(),
            annotation: Some("io.example/role=ci-*".into()),
            args: Some("*--exclude=*.key*".into()),
            rules: vec!["keyward.seed.sensitive-files-compression".into()],
            ..Default::default()
        }])
        .unwrap();
        let mut a = BTreeMap::new();
        a.insert("io.example/role".to_string(), "ci-runner".to_string());
        let mut s = subject(&a, "/usr/bin/tar", "tar czf x --exclude=*.key /etc/passwd");
        assert_eq!(ex.suppress(&s), None, "other rule");
        s.rule_id = "keyward.seed.sensitive-files-compression";
        assert_eq!(ex.suppress(&s), Some("ci"));
        let empty = BTreeMap::new();
        s.annotations = &empty;
        assert_eq!(ex.suppress(&s), None);
    }

    #[test]
    fn bad_entries_are_named() {
        let e = Exceptions::compile(&[ExceptionConfig::default()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("exceptions[0]") && e.contains("reason"), "{e}");
        let e = Exceptions::compile(&[ExceptionConfig {
            reason: "x".into(),
            ..Default::default()
        }])
        .unwrap_err()
        .to_string();
        assert!(e.contains("no condition"), "{e}");
        let e = Exceptions::compile(&[ExceptionConfig {
            reason: "x".into(),
            executable: Some(String::new()),
            ..Default::default()
        }])
        .unwrap_err()
        .to_string();
        // One dialect with the rules: `[` is a literal, so the pattern
        // that cannot compile is the empty one.
        assert!(e.contains("exceptions[0].executable"), "{e}");
        let e = Exceptions::compile(&[ExceptionConfig {
            reason: "x".into(),
            annotation: Some("novalue".into()),
            ..Default::default()
        }])
        .unwrap_err()
        .to_string();
        assert!(e.contains("key=value"), "{e}");
    }
}
