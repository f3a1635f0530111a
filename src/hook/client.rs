//! The client side of the control socket, for the hook and the CLI.
//!
//! Every call is bounded in time: connect, send and the wait for the reply
//! each have a timeout, so a hung daemon can never hang a container start.

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::hook::protocol::{self, ProtocolError, Reply, Request};

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach keyward daemon at {socket}: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("keyward daemon at {socket} did not answer: {source}")]
    Exchange {
        socket: PathBuf,
        #[source]
        source: ProtocolError,
    },
    #[error("keyward daemon at {socket} sent a malformed reply: {source}")]
    BadReply {
        socket: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Send one request and wait up to `timeout` for its reply.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        socket: socket.to_path_buf(),
        source,
    })?;
    let xerr = |source| ClientError::Exchange {
        socket: socket.to_path_buf(),
        source,
    };
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| xerr(e.into()))?;
    let mut w = &stream;
    // A daemon that refuses the peer (not root) replies and closes without
    // reading the request, so our write can fail with EPIPE while its reply
    // already waits in our buffer: read it before reporting the write.
    let sent = protocol::write_message(&mut w, req);
    let line = match protocol::read_line(&mut BufReader::new(&stream)) {
        Ok(line) => line,
        Err(e) => return Err(xerr(sent.err().unwrap_or(e))),
    };
    serde_json::from_slice(&line).map_err(|source| ClientError::BadReply {
        socket: socket.to_path_buf(),
        source,
    })
}
