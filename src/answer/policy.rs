//! The compiled policy and the context every decision reads.
//!
//! [`Policy`] is compiled from the config once per load (rules and
//! exceptions, whose pattern errors are reported here) and swapped whole
//! on reload. [`Context`] holds it beside the mark index, the counters and
//! the caches the decision threads share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::stats::Stats;
use crate::attribute::exe::ExeClasses;
use crate::attribute::identity::Identities;
use crate::attribute::procfs::ImageKey;
use crate::config::{Action, Config};
use crate::rules::exceptions::{ExceptionError, Exceptions};
use crate::rules::{RuleError, Rules};
use crate::watch::index::{ContainerView, MarkIndex};

/// Errors compiling a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error(transparent)]
    Exception(#[from] ExceptionError),
}

/// The compiled policy, swapped whole on reload.
#[derive(Debug)]
pub struct Policy {
    pub rules: Rules,
    pub default_action: Action,
    pub exceptions: Exceptions,
    /// What one container may make the daemon do.
    pub limits: crate::config::LimitsConfig,
    /// Unique per compiled policy, for caches made under it.
    pub generation: u64,
}

/// Source of [`Policy::generation`].
static POLICY_GENERATION: AtomicU64 = AtomicU64::new(1);
/// Processes remembered as benign before the cache starts over.
const BENIGN_CACHE_MAX: usize = 16 * 1024;

impl Policy {
    /// Compile a config's rules and exceptions.
    pub fn from_config(cfg: &Config) -> Result<Self, PolicyError> {
        Ok(Self {
            rules: Rules::compile(&cfg.rules)?,
            default_action: cfg.response.action,
            exceptions: Exceptions::compile(&cfg.exceptions)?,
            limits: cfg.limits.clone(),
            generation: POLICY_GENERATION.fetch_add(1, Ordering::Relaxed),
        })
    }
}

/// Everything a decision reads.
#[derive(Debug)]
pub struct Context {
    pub self_pid: i32,
    pub index: RwLock<MarkIndex>,
    pub policy: RwLock<Arc<Policy>>,
    pub stats: Stats,
    /// Archivers known by content, for copied or renamed binaries.
    pub identities: Identities,
    /// What each exec'd file is, so plain programs are not probed early.
    pub exe_classes: ExeClasses,
    /// Process images already found to match neither rule, with the index
    /// and policy generations they were judged under. A shell reading a
    /// credential directory in a loop then costs one `/proc/<pid>/stat`
    /// read per open instead of a full attribution.
    benign: Mutex<HashMap<ImageKey, (u64, u64)>>,
    /// Whether every exec in a watched container is reported as a process
    /// start event (`alerts.process_events`).
    pub process_events: AtomicBool,
    /// Processes that read a credential, and what they write.
    pub follow: super::follow::Follow,
    /// Bumped each time the exec group's ignore marks are flushed outside
    /// the exec loop (a container went), so the loop's count of them
    /// starts over.
    pub ignores_flushed: AtomicU64,
}

impl Context {
    pub fn new(policy: Policy) -> Self {
        Self {
            self_pid: std::process::id() as i32,
            index: RwLock::new(MarkIndex::default()),
            policy: RwLock::new(Arc::new(policy)),
            stats: Stats::default(),
            identities: Identities::default(),
            exe_classes: ExeClasses::default(),
            benign: Mutex::new(HashMap::new()),
            process_events: AtomicBool::new(false),
            follow: Default::default(),
            ignores_flushed: AtomicU64::new(0),
        }
    }

    pub(crate) fn is_benign(&self, key: ImageKey, generation: (u64, u64)) -> bool {
        self.benign
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            == Some(&generation)
    }

    pub(crate) fn remember_benign(&self, key: ImageKey, generation: (u64, u64)) {
        let mut b = self.benign.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= BENIGN_CACHE_MAX {
            b.clear();
        }
        b.insert(key, generation);
    }

    /// A context under the default config, for unit tests.
    #[cfg(test)]
    pub(crate) fn with_defaults() -> Self {
        Self::new(Policy::from_config(&Config::default()).expect("the defaults compile"))
    }

    /// The current policy (cheap clone of an Arc).
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The container `pid` belongs to (see [`crate::attribute::container`]).
    pub fn container_of(&self, pid: i32) -> Option<Arc<ContainerView>> {
        crate::attribute::container::container_of(&self.index, pid)
    }

    /// The index and policy generations a verdict is made under.
    pub(crate) fn generation(&self, policy: &Policy) -> (u64, u64) {
        let index = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .generation();
        (index, policy.generation)
    }
}

/// What the alert thread reads from the decision side.
impl crate::alert::deliver::Inputs for Context {
    fn container(&self, id: &str) -> Option<ContainerView> {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .container(id)
            .map(|v| (**v).clone())
    }

    fn rule_meta(&self, rule_id: &str) -> crate::rules::RuleMeta {
        self.policy().rules.meta(rule_id).clone()
    }

    fn degradation(&self) -> crate::alert::Degradation {
        crate::alert::Degradation {
            learn_timeouts: self.identities.learn_timeouts(),
            ..self.stats.degradation()
        }
    }

    fn bounds_reached(&self) -> Vec<(super::stats::Bound, String, u64)> {
        self.stats.bounds.take_recent()
    }
}
