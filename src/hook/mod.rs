//! The OCI hook: register a container with the daemon before its first
//! process runs, and deregister it when it stops. [`runtime`] is the
//! wrapper that puts this hook into a bundle for engines that read no
//! hooks.d (Docker, containerd).
//!
//! The hook exits 0 only after the daemon replies `watching`, i.e. after the
//! marks are in place. If the daemon cannot be reached it fails closed
//! (the runtime refuses to start the container) unless `--fail-open` was
//! given. Its timeouts ([`HOOK_TIMEOUT`]) stay below the 10 s timeout in the
//! shipped hooks.d file, so it never hangs a container start.

pub mod client;
pub mod oci;
pub mod protocol;
pub mod runtime;

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use client::ClientError;
use oci::{HookAction, OciError};
use protocol::{Reply, Request};

/// How long the hook waits for the daemon's reply.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(8);

/// Errors from the hook.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Daemon(#[from] ClientError),
    #[error("keyward daemon refused container {id}: {message}")]
    Refused { id: String, message: String },
    #[error("keyward daemon sent an unexpected reply for container {id}")]
    Unexpected { id: String },
}

/// What the hook did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    Watching {
        id: String,
        files: usize,
        dirs: usize,
        warning: Option<String>,
    },
    Deregistered {
        id: String,
    },
    /// The daemon was unreachable and `--fail-open` let the container start.
    FailedOpen {
        warning: String,
    },
}

/// Run the hook on a state read from `stdin`.
pub fn run<R: Read>(stdin: R, socket: &Path, fail_open: bool) -> Result<HookOutcome, HookError> {
    let state = oci::read_state(stdin)?;
    let action = oci::hook_action(&state)?;
    let (req, id) = match action {
        HookAction::Register(r) => {
            let id = r.id.clone();
            (Request::Register(r), id)
        }
        HookAction::Deregister { id } => (Request::Deregister { id: id.clone() }, id),
    };
    let deregister = matches!(req, Request::Deregister { .. });
    let reply = match client::call(socket, &req, HOOK_TIMEOUT) {
        Ok(r) => r,
        // A stopped container has nothing left to protect: never fail its
        // teardown because the daemon is down.
        Err(e) if fail_open || deregister => {
            return Ok(HookOutcome::FailedOpen {
                warning: format!("{e}; container {id} continues without keyward"),
            });
        }
        Err(e) => return Err(e.into()),
    };
    match reply {
        Reply::Watching {
            id,
            report,
            warning,
        } => Ok(HookOutcome::Watching {
            id,
            files: report.files,
            dirs: report.dirs,
            warning,
        }),
        Reply::Deregistered { id, .. } => Ok(HookOutcome::Deregistered { id }),
        Reply::Error { message } if deregister => Ok(HookOutcome::FailedOpen {
            warning: format!("deregistering {id}: {message}"),
        }),
        Reply::Error { message } => Err(HookError::Refused { id, message }),
        _ => Err(HookError::Unexpected { id }),
    }
}
