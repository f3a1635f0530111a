//! The control-socket protocol: one JSON request line, one JSON reply line.
//!
//! Messages are bounded ([`MAX_MESSAGE`]); a longer line, a line that is not
//! JSON, or an unknown request is answered with an error that says which,
//! and the connection is closed.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::alert::sink::SinkStats;
use crate::answer::stats::StatsSnapshot;
use crate::watch::marks::InstallReport;

/// Largest request or reply line.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// Errors reading or writing a message.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("message longer than {MAX_MESSAGE} bytes")]
    TooLong,
    #[error("connection closed before a complete message")]
    Eof,
    #[error("socket i/o failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
}

/// A container registration from the hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub id: String,
    pub pid: i32,
    pub bundle: PathBuf,
    /// Absolute rootfs path in the runtime's mount namespace.
    pub rootfs: PathBuf,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// Requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Register(Registration),
    Deregister { id: String },
    Status,
    Containers,
}

/// One row of `keyward containers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSummary {
    pub id: String,
    pub pid: i32,
    pub name: Option<String>,
    pub image: Option<String>,
    pub action: String,
    pub marks: usize,
    pub exec_scope: Option<String>,
    /// The cgroup its processes are known by (`hierarchy:path`); absent
    /// when the runtime made none and namespaces are all there is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    pub registered_at: String,
}

/// `keyward status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub containers: usize,
    pub marked_inodes: usize,
    pub default_action: String,
    pub stats: StatsSnapshot,
    pub sinks: BTreeMap<String, SinkStats>,
    pub alerts_sent: u64,
    pub alerts_rate_limited: u64,
    /// Alerts sent, by rule id.
    #[serde(default)]
    pub alerts_by_rule: BTreeMap<String, u64>,
    pub pending_runs: u64,
    pub config_errors: Vec<String>,
    /// Matches suppressed by each exception, with its reason.
    pub exceptions: Vec<crate::rules::exceptions::ExceptionCount>,
}

/// Replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Marks are in place; the container may start.
    Watching {
        id: String,
        report: InstallReport,
        /// Something the daemon did not do as asked (a refused
        /// annotation), for the engine's log.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        warning: Option<String>,
    },
    Deregistered {
        id: String,
        marks_removed: usize,
    },
    Status(Box<StatusReport>),
    Containers {
        containers: Vec<ContainerSummary>,
    },
    Error {
        message: String,
    },
}

/// Read one newline-terminated line of at most [`MAX_MESSAGE`] bytes.
pub fn read_line<R: BufRead>(r: &mut R) -> Result<Vec<u8>, ProtocolError> {
    let mut line = Vec::new();
    let n = r
        .take(MAX_MESSAGE as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(ProtocolError::Eof);
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > MAX_MESSAGE {
            ProtocolError::TooLong
        } else {
            ProtocolError::Eof
        });
    }
    line.pop();
    Ok(line)
}

/// Parse a request line.
pub fn parse_request(line: &[u8]) -> Result<Request, ProtocolError> {
    Ok(serde_json::from_slice(line)?)
}

/// Write one message as a line.
pub fn write_message<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), ProtocolError> {
    let mut v = serde_json::to_vec(msg)?;
    if v.len() > MAX_MESSAGE {
        return Err(ProtocolError::TooLong);
    }
    v.push(b'\n');
    w.write_all(&v)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    #[test]
    fn requests_round_trip() {
        let r = Request::Register(Registration {
            id: "c".into(),
            pid: 5,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            annotations: BTreeMap::new(),
        });
        let mut buf = Vec::new();
        write_message(&mut buf, &r).unwrap();
        let line = read_line(&mut BufReader::new(&buf[..])).unwrap();
        assert_eq!(parse_request(&line).unwrap(), r);
        assert_eq!(
            parse_request(br#"{"op":"status"}"#).unwrap(),
            Request::Status
        );
    }

    #[test]
    fn garbage_and_oversize_are_errors_that_say_so() {
        assert!(
            parse_request(b"\x00\xffnot json")
                .unwrap_err()
                .to_string()
                .contains("malformed")
        );
        assert!(parse_request(br#"{"op":"format_disk"}"#).is_err());
        assert!(parse_request(br#"{"op":"deregister","id":"x","extra":1}"#).is_err());
        let big = vec![b'a'; MAX_MESSAGE + 10];
        let e = read_line(&mut BufReader::new(&big[..])).unwrap_err();
        assert!(matches!(e, ProtocolError::TooLong), "{e}");
        let e = read_line(&mut BufReader::new(&b"{\"op\""[..])).unwrap_err();
        assert!(matches!(e, ProtocolError::Eof), "{e}");
        assert!(matches!(
            read_line(&mut BufReader::new(&b""[..])),
            Err(ProtocolError::Eof)
        ));
    }
}
