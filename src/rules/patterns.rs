//! Credential path patterns: EQL wildcards compiled into one globset.
//!
//! This is the one glob dialect of keyward, for rules and exceptions alike:
//! `*` matches any run of characters (`/` included, as in EQL), `?` one
//! character, and every other character, glob metacharacters too, stands
//! for itself. Rules match case-insensitively, like EQL's `:` operator;
//! exceptions match case-sensitively, so an exception never covers more
//! than it names.

use std::ffi::OsStr;
use std::path::Path;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// Compile one wildcard in keyward's dialect.
pub fn wildcard(pattern: &str, case_insensitive: bool) -> Result<Glob, globset::Error> {
    GlobBuilder::new(&eql_to_glob(pattern))
        .case_insensitive(case_insensitive)
        // EQL's `*` crosses `/`, unlike a shell glob.
        .literal_separator(false)
        .backslash_escape(true)
        .build()
}

/// Errors building the rule set.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("bad credential path pattern {pattern:?} in {key}: {source}")]
    Pattern {
        key: &'static str,
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("empty pattern in {key}")]
    Empty { key: &'static str },
    #[error("bad archiver name {name:?} in {key}: names are single words without '/'")]
    Archiver { key: &'static str, name: String },
    #[error("credential path set in {key} failed to build: {source}")]
    Build {
        key: &'static str,
        #[source]
        source: globset::Error,
    },
}

/// A set of credential path patterns with EQL wildcard semantics.
#[derive(Debug, Clone)]
pub struct PathPatterns {
    patterns: Vec<String>,
    set: GlobSet,
}

impl PathPatterns {
    /// Compile EQL-style wildcard patterns (`*`, `?`, case-insensitive).
    pub fn new(key: &'static str, patterns: &[String]) -> Result<Self, RuleError> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            if pattern.is_empty() {
                return Err(RuleError::Empty { key });
            }
            let glob = wildcard(pattern, true).map_err(|source| RuleError::Pattern {
                key,
                pattern: pattern.clone(),
                source,
            })?;
            builder.add(glob);
        }
        let set = builder
            .build()
            .map_err(|source| RuleError::Build { key, source })?;
        Ok(Self {
            patterns: patterns.to_vec(),
            set,
        })
    }

    /// The first pattern that matches `candidate`, if any.
    pub fn first_match(&self, candidate: &OsStr) -> Option<&str> {
        let path = Path::new(candidate);
        if !self.set.is_match(path) {
            return None;
        }
        self.set
            .matches(path)
            .first()
            .map(|&i| self.patterns[i].as_str())
    }

    /// Whether any pattern matches.
    pub fn is_match(&self, candidate: &OsStr) -> bool {
        self.set.is_match(Path::new(candidate))
    }

    /// The source patterns, in order.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// Translate an EQL wildcard into a globset glob: only `*` and `?` stay
/// special; every other glob metacharacter is escaped so a pattern such as
/// `/etc/[x]` means exactly those bytes, as it does in EQL.
fn eql_to_glob(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    for c in pattern.chars() {
        match c {
            '*' => out.push('*'),
            '?' => out.push('?'),
            '[' | ']' | '{' | '}' | '\\' | '!' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Fold `.`, `..` and repeated slashes lexically (no filesystem access).
pub fn normalize(p: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}
