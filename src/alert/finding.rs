//! What a decision thread sends the alert thread: one [`Finding`] per rule
//! that held on one event.

use std::time::SystemTime;

use serde::Serialize;

use crate::attribute::procfs::ProcessInfo;
use crate::config::Action;
use crate::response::ResponseOutcome;
use crate::rules::{ArchiverHit, ExecMatch, Source};
use crate::watch::index::ContainerRef;

/// How a finding was triggered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// The seed rule matched a process start.
    Exec { matched: ExecMatch },
    /// Any exec in a watched container, for `alerts.process_events`; not an
    /// alert and never aggregated.
    Start,
    /// An archiver opened a credential file.
    Open {
        /// Canonical path inside the container.
        path: String,
        /// Where keyward found it (`copy of ...` for a derived one).
        origin: String,
        /// The path as the opener reached it (its own spelling).
        opened_as: String,
        pattern: String,
        archiver: ArchiverHit,
        /// Whether the open was refused.
        denied: bool,
        /// For credential data read from a pipe: the process that wrote
        /// it.
        source: Option<Source>,
    },
}

/// One detection made by a decision thread, sent to the alert thread.
#[derive(Debug, Clone)]
pub struct Finding {
    pub at: SystemTime,
    pub container: ContainerRef,
    pub process: ProcessInfo,
    pub trigger: Trigger,
    pub action: Action,
    /// A response already carried out on the answering thread (`kill`).
    pub response: Option<ResponseOutcome>,
}

impl Finding {
    /// Whether this finding refused an open.
    pub fn denied(&self) -> bool {
        matches!(self.trigger, Trigger::Open { denied: true, .. })
    }
}
