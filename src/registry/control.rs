//! The control socket server: root-only, one request per connection.
//!
//! The socket is created mode 0600 in a 0700 directory, and each peer's
//! SO_PEERCRED uid must be 0. Each connection gets its own thread (bounded
//! by [`MAX_CLIENTS`]) with a read timeout, so a slow or silent client
//! cannot hold up a container registration. Threads are kept for the next
//! connection ([`IDLE_WORKERS`]) rather than spawned for each.

use std::fs;
use std::io::BufReader;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::hook::protocol::{self, Reply, Request};

/// Concurrent client connections served at most.
pub const MAX_CLIENTS: usize = 64;
/// How long a client may take to send its request.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create socket directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another keyward daemon is already serving {path}")]
    InUse { path: PathBuf },
    #[error("cannot bind control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Work a handler leaves for after its reply is written.
pub type Then<'a> = Option<Box<dyn FnOnce() + 'a>>;

/// Something that answers requests.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> Reply;

    /// [`Handler::handle`], with work to run once the reply is written
    /// (on the same connection thread, so the client is not kept waiting
    /// for it). By default there is none.
    fn handle_then(&self, req: Request) -> (Reply, Then<'_>) {
        (self.handle(req), None)
    }

    /// Why the peer `pid` may not talk to the daemon, if it may not
    /// (beyond being root, which the socket checks first).
    fn refuse(&self, pid: i32) -> Option<String> {
        foreign_namespaces(pid)
    }
}

/// Why a root peer is refused for its namespaces, if it is: it must share
/// the daemon's pid namespace and be in the daemon's or the host's mount
/// namespace (a DaemonSet's daemon has its pod's; the hook runs in the
/// engine's, the host's). A container's root is uid 0 too, so uid alone
/// lets a socket bind-mounted into a container by mistake register,
/// deregister and read; its own pid or mount namespace gives it away.
pub fn foreign_namespaces(pid: i32) -> Option<String> {
    use crate::attribute::procfs::{fixed_ns as procfs_fixed, ns_inode};
    let ns = |p: i32, kind| ns_inode(p, kind).ok();
    let Some(pid_ns) = ns(pid, "pid") else {
        return Some(format!("peer pid {pid}: its namespaces cannot be read"));
    };
    if Some(pid_ns) != procfs_fixed(false, "pid") {
        return Some(format!(
            "peer pid {pid} is in another pid namespace than the daemon's (a container's?)"
        ));
    }
    let mnt = ns(pid, "mnt");
    if mnt.is_none() || (mnt != procfs_fixed(false, "mnt") && mnt != procfs_fixed(true, "mnt")) {
        return Some(format!(
            "peer pid {pid} is in another mount namespace than the daemon's or the host's (a container's?)"
        ));
    }
    None
}

/// Tell systemd we are ready, natively, if it is listening.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(s) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let r = if let Some(abs) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abs)
            .and_then(|a| s.send_to_addr(b"READY=1", &a))
    } else {
        s.send_to(b"READY=1", Path::new(&path))
    };
    if let Err(e) = r {
        eprintln!("keyward: cannot notify systemd: {e}");
    }
}

/// Bind the control socket, refusing to steal a live daemon's socket.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| ControlError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse {
                path: path.to_path_buf(),
            });
        }
        let _ = fs::remove_file(path);
    }
    let bind_err = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let l = UnixListener::bind(path).map_err(bind_err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    l.set_nonblocking(true).map_err(bind_err)?;
    Ok(l)
}

fn serve_one<H: Handler>(stream: UnixStream, handler: &H) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let (reply, then) = match getsockopt(&stream, PeerCredentials) {
        Ok(cred) if cred.uid() == 0 => match handler.refuse(cred.pid()) {
            Some(why) => error(format!("refused: {why}")),
            None => match protocol::read_line(&mut BufReader::new(&stream))
                .and_then(|l| protocol::parse_request(&l))
            {
                Ok(req) => handler.handle_then(req),
                Err(e) => error(format!("bad request: {e}")),
            },
        },
        Ok(cred) => error(format!(
            "peer uid {} (pid {}) is not root",
            cred.uid(),
            cred.pid()
        )),
        Err(e) => error(format!("cannot read peer credentials: {e}")),
    };
    let mut w = &stream;
    let _ = protocol::write_message(&mut w, &reply);
    // The client's wait ends here; whatever the handler left runs now,
    // whether or not the client read its reply.
    drop(stream);
    if let Some(then) = then {
        // A panic in it must not take the connection thread (and its
        // slot among MAX_CLIENTS) with it; what it held is dropped.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(then));
    }
}

fn error<'a>(message: String) -> (Reply, Then<'a>) {
    (Reply::Error { message }, None)
}

/// Idle connection threads kept for the next client. A thread spawned per
/// connection (stack mapping, clone, exit) made a request's round trip
/// 60 us at the median here; a kept thread, woken for it, 45 to 53 us.
pub const IDLE_WORKERS: usize = 2;

/// What the connection threads share with the accepting loop.
struct Workers<H> {
    handler: Arc<H>,
    /// Connections being served.
    active: AtomicUsize,
    /// Threads waiting on `queue` for a connection.
    idle: AtomicUsize,
    queue: std::sync::Mutex<std::sync::mpsc::Receiver<UnixStream>>,
}

impl<H: Handler> Workers<H> {
    /// Serve `first`, then wait for more while fewer than
    /// [`IDLE_WORKERS`] others wait. Returns when the accepting loop has
    /// stopped (the queue's sender is gone).
    fn run(&self, first: UnixStream) {
        let mut next = Some(first);
        while let Some(stream) = next.take() {
            serve_one(stream, &*self.handler);
            self.active.fetch_sub(1, Ordering::AcqRel);
            let waits = self
                .idle
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < IDLE_WORKERS).then_some(n + 1)
                })
                .is_ok();
            if waits {
                // The accepting loop took this thread off `idle` before it
                // sent the connection.
                next = self
                    .queue
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .recv()
                    .ok();
            }
        }
    }
}

/// Accept connections until `stop`; `tick` runs about every 200 ms (the
/// daemon reaps exited containers there).
pub fn serve<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    stop: &AtomicBool,
    mut tick: impl FnMut(),
) {
    let (tx, rx) = std::sync::mpsc::channel::<UnixStream>();
    let workers = Arc::new(Workers {
        handler,
        active: AtomicUsize::new(0),
        idle: AtomicUsize::new(0),
        queue: std::sync::Mutex::new(rx),
    });
    while !stop.load(Ordering::Relaxed) {
        tick();
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&listener),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)) {
            Ok(n) if n > 0 => {}
            _ => continue,
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        if workers.active.load(Ordering::Acquire) >= MAX_CLIENTS {
            let mut w = &stream;
            let _ = protocol::write_message(
                &mut w,
                &Reply::Error {
                    message: format!("busy: {MAX_CLIENTS} clients already connected"),
                },
            );
            continue;
        }
        workers.active.fetch_add(1, Ordering::AcqRel);
        // An idle thread takes it; else a new thread, so a silent client
        // never holds up the next one.
        let claimed = workers
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        let stream = if claimed {
            match tx.send(stream) {
                Ok(()) => continue,
                Err(e) => e.0,
            }
        } else {
            stream
        };
        let w = workers.clone();
        let spawned = std::thread::Builder::new()
            .name("keyward-client".into())
            .spawn(move || w.run(stream));
        if spawned.is_err() {
            workers.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
    // Dropping the sender ends the idle threads' waits.
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    struct Echo;
    impl Handler for Echo {
        fn handle(&self, req: Request) -> Reply {
            match req {
                Request::Deregister { id } => Reply::Deregistered {
                    id,
                    marks_removed: 0,
                },
                _ => Reply::Error {
                    message: "no".into(),
                },
            }
        }
    }

    #[test]
    fn peers_in_the_daemons_namespaces_pass_and_vanished_ones_do_not() {
        assert_eq!(foreign_namespaces(std::process::id() as i32), None);
        let gone = foreign_namespaces(i32::MAX).unwrap();
        assert!(gone.contains("cannot be read"), "{gone}");
    }

    /// A socket under a fresh temp dir, served by `handler` on a thread
    /// until the returned server is dropped.
    struct Served {
        _dir: crate::testdir::TempDir,
        path: PathBuf,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Served {
        fn new<H: Handler>(name: &str, handler: H) -> Self {
            let dir = crate::testdir::TempDir::new(name);
            let path = dir.path().join("s.sock");
            let l = bind(&path).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let s2 = stop.clone();
            let thread = Some(std::thread::spawn(move || {
                serve(l, Arc::new(handler), &s2, || {})
            }));
            Served {
                _dir: dir,
                path,
                stop,
                thread,
            }
        }
    }

    impl Drop for Served {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    #[test]
    fn serves_requests_and_survives_garbage() {
        let served = Served::new("ctl", Echo);
        let path = &served.path;
        let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(bind(path), Err(ControlError::InUse { .. })));
        // Garbage gets an error reply naming the problem.
        let mut c = UnixStream::connect(path).unwrap();
        c.write_all(b"\x00\x01garbage\n").unwrap();
        let line = protocol::read_line(&mut BufReader::new(&c)).unwrap();
        assert!(String::from_utf8_lossy(&line).contains("bad request"));
        // A silent client does not block the next one.
        let _silent = UnixStream::connect(path).unwrap();
        let r = crate::hook::client::call(
            path,
            &Request::Deregister { id: "x".into() },
            Duration::from_secs(3),
        )
        .unwrap();
        assert_eq!(
            r,
            Reply::Deregistered {
                id: "x".into(),
                marks_removed: 0
            }
        );
    }

    /// Replies with the id of the thread that served the request.
    struct Tid;
    impl Handler for Tid {
        fn handle(&self, _req: Request) -> Reply {
            Reply::Deregistered {
                id: String::new(),
                marks_removed: nix::unistd::gettid().as_raw() as usize,
            }
        }
    }

    #[test]
    fn connection_threads_are_kept_for_the_next_client() {
        let served = Served::new("ctl-pool", Tid);
        let served_by = || match crate::hook::client::call(
            &served.path,
            &Request::Deregister { id: "x".into() },
            Duration::from_secs(3),
        )
        .unwrap()
        {
            Reply::Deregistered { marks_removed, .. } => marks_removed,
            r => panic!("unexpected reply {r:?}"),
        };
        let mut tids: Vec<usize> = (0..20).map(|_| served_by()).collect();
        tids.sort_unstable();
        tids.dedup();
        // One after another, the same kept threads serve (a new thread per
        // connection would give 20 ids).
        assert!(
            tids.len() <= IDLE_WORKERS + 1,
            "{} threads: {tids:?}",
            tids.len()
        );
    }

    /// Leaves work that waits for the test's word, then panics: the reply
    /// must not wait for it, and the connection thread must outlive it.
    struct Later(std::sync::Mutex<std::sync::mpsc::Receiver<()>>);
    impl Handler for Later {
        fn handle(&self, _req: Request) -> Reply {
            Reply::Error {
                message: "handle_then only".into(),
            }
        }
        fn handle_then(&self, _req: Request) -> (Reply, Then<'_>) {
            let reply = Reply::Deregistered {
                id: "later".into(),
                marks_removed: 0,
            };
            let then: Box<dyn FnOnce() + '_> = Box::new(move || {
                let rx = self.0.lock().unwrap_or_else(|e| e.into_inner());
                let _ = rx.recv_timeout(Duration::from_secs(10));
                panic!("work after the reply failed");
            });
            (reply, Some(then))
        }
    }

    #[test]
    fn the_reply_is_written_before_the_work_left_for_after_it() {
        let (tx, rx) = std::sync::mpsc::channel();
        let served = Served::new("ctl-then", Later(std::sync::Mutex::new(rx)));
        let call = || {
            crate::hook::client::call(
                &served.path,
                &Request::Deregister { id: "x".into() },
                Duration::from_secs(3),
            )
        };
        // The work is still blocked on `rx`: the reply came before it.
        let r = call().expect("a reply while the work waits");
        assert!(
            matches!(r, Reply::Deregistered { ref id, .. } if id == "later"),
            "{r:?}"
        );
        tx.send(()).unwrap();
        // The work panicked; the server still serves.
        let r = call().expect("served after a panic in the work");
        assert!(matches!(r, Reply::Deregistered { .. }), "{r:?}");
        tx.send(()).unwrap();
    }
}
