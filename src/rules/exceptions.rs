//! Exceptions: tune out known-good archiving, as the seed's false-positive
//! analysis advises (backup jobs, configuration management, CI pipelines,
//! security scanners).
//!
//! Each `[[exceptions]]` entry names why it exists (`reason`) and one or
//! more conditions, all of which must hold: container name, image,
//! annotation, process executable, parent executable, a glob over the
//! command line, and optionally the rule ids it applies to. Globs use `*`
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

/// What an exception is matched against.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub rule_id: &'a str,
    pub container_name: Option<&'a str>,
    pub image: Option<&'a str>,
    pub annotations: &'a BTreeMap<String, String>,
    pub executable: &'a str,
    pub parent_executable: Option<&'a str>,
    pub command_line: &'a str,
}

#[derive(Debug)]
struct Compiled {
    reason: String,
    container_name: Option<GlobMatcher>,
    image: Option<GlobMatcher>,
    annotation: Option<(String, GlobMatcher)>,
    executable: Option<GlobMatcher>,
    parent_executable: Option<GlobMatcher>,
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
            (c.rules.is_empty() || c.rules.iter().any(|r| r == s.rule_id))
                && opt(&c.container_name, s.container_name)
                && opt(&c.image, s.image)
                && opt(&c.executable, Some(s.executable))
                && opt(&c.parent_executable, s.parent_executable)
                && opt(&c.args, Some(s.command_line))
                && c.annotation
                    .as_ref()
                    .is_none_or(|(k, v)| s.annotations.get(k).is_some_and(|val| v.is_match(val)))
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
        }
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
