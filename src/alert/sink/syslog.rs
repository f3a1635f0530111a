//! The syslog sink: RFC 5424 (with structured data) or RFC 3164, over a
//! local datagram socket, UDP, or TCP with RFC 6587 octet counting.
//!
//! The `syslog` crate formats; it never reconnects, so the transport here is
//! our own and is rebuilt after any error. Undelivered records wait in the
//! sink's backlog, so a syslog restart loses nothing that was queued.
//!
//! TCP has no acknowledgement a sender can see: a record the kernel took
//! can still die unread in the buffer of a collector that is stopped. So
//! delivery over TCP is *at least once*: records written in the last
//! [`RESEND_WINDOW`] are written again, first, on the connection that
//! replaces a lost one. A collector restart can then show a few records
//! twice (same run id and sequence number), never none.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::MsgFlags;
use serde_json::Value;
use syslog::{Facility, Formatter3164, Formatter5424, LogFormat, Severity};

/// RFC 5424 structured data as the `syslog` crate takes it.
type StructuredData =
    std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>;

use super::{Buffered, Transport};
use crate::alert::Alert;
use crate::config::{self, SyslogConfig, SyslogFormat, SyslogServer};

/// Private enterprise number used for our SD-ID (the "example" PEN, as
/// RFC 5424 suggests for private use).
const SD_ID: &str = "keyward@32473";
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How far back records are written again after a lost TCP connection.
const RESEND_WINDOW: Duration = Duration::from_secs(2);
/// Most records kept for that.
const RESEND_MAX: usize = 1024;

/// Where records go: the local socket, or the configured server.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Unix(PathBuf),
    Server(SyslogServer),
}

#[derive(Debug)]
enum Conn {
    None,
    Unix(UnixDatagram),
    Udp(UdpSocket),
    Tcp(TcpStream),
}

#[derive(Debug)]
pub(super) struct Socket {
    target: Target,
    conn: Conn,
    /// TCP records written lately, and when (see the module docs).
    recent: VecDeque<(Instant, Vec<u8>)>,
    /// When a TCP connection was found lost, if it was since the last
    /// write that succeeded: what was written in the window before that
    /// goes again, however long the collector stays down.
    lost: Option<Instant>,
}

/// RFC 6587 octet counting: "LEN SP MSG".
fn framed(record: &[u8]) -> Vec<u8> {
    let mut f = format!("{} ", record.len()).into_bytes();
    f.extend_from_slice(record);
    f
}

impl Socket {
    fn connect(&mut self) -> std::io::Result<()> {
        self.conn = match &self.target {
            Target::Unix(_) => {
                let s = UnixDatagram::unbound()?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                Conn::Unix(s)
            }
            Target::Server(SyslogServer::Udp(addr)) => {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.connect(addr)?;
                Conn::Udp(s)
            }
            Target::Server(SyslogServer::Tcp(addr)) => {
                let sa = addr
                    .to_socket_addrs()?
                    .next()
                    .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to nothing")))?;
                let s = TcpStream::connect_timeout(&sa, IO_TIMEOUT)?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                Conn::Tcp(s)
            }
        };
        Ok(())
    }
}

/// Whether a TCP peer has closed (or reset) the connection, without
/// blocking or consuming anything.
///
/// A syslog collector never sends to us, so readable data means a live peer
/// and EOF or an error means a dead one. A write into a connection the peer
/// has already closed still succeeds once (the peer answers it with RST), so
/// without this check the first record after a collector restart would be
/// counted as delivered and lost.
fn peer_closed(s: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match nix::sys::socket::recv(
        s.as_raw_fd(),
        &mut byte,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(0) => true,
        Ok(_) => false,
        Err(Errno::EAGAIN) | Err(Errno::EINTR) => false,
        Err(_) => true,
    }
}

impl Socket {
    fn new(target: Target) -> Self {
        Self {
            target,
            conn: Conn::None,
            recent: VecDeque::new(),
            lost: None,
        }
    }

    /// On a new TCP connection after a lost one: the recent records again.
    fn resend(&mut self) -> std::io::Result<()> {
        let Conn::Tcp(s) = &mut self.conn else {
            return Ok(());
        };
        let Some(at) = self.lost else {
            return Ok(());
        };
        self.recent
            .retain(|(t, _)| at.saturating_duration_since(*t) < RESEND_WINDOW);
        for (_, r) in &self.recent {
            s.write_all(&framed(r))?;
        }
        self.lost = None;
        Ok(())
    }
}

impl Transport for Socket {
    fn send(&mut self, record: &[u8]) -> std::io::Result<()> {
        if let Conn::Tcp(s) = &self.conn
            && peer_closed(s)
        {
            self.conn = Conn::None;
            self.lost.get_or_insert_with(Instant::now);
        }
        if matches!(self.conn, Conn::None) {
            self.connect()?;
        }
        let r = self
            .resend()
            .and_then(|()| match (&mut self.conn, &self.target) {
                (Conn::Unix(s), Target::Unix(path)) => s.send_to(record, path).map(|_| ()),
                (Conn::Udp(s), _) => s.send(record).map(|_| ()),
                (Conn::Tcp(s), _) => s.write_all(&framed(record)),
                _ => Err(std::io::Error::other("syslog transport mismatch")),
            });
        match (&r, &self.conn) {
            (Ok(()), Conn::Tcp(_)) => {
                let now = Instant::now();
                while self.recent.len() >= RESEND_MAX
                    || self
                        .recent
                        .front()
                        .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= RESEND_WINDOW)
                {
                    self.recent.pop_front();
                }
                self.recent.push_back((now, record.to_vec()));
            }
            (Err(_), Conn::Tcp(_)) => {
                self.conn = Conn::None;
                self.lost.get_or_insert_with(Instant::now);
            }
            (Err(_), _) => self.conn = Conn::None,
            _ => {}
        }
        r
    }
}

enum Format {
    R5424(Formatter5424),
    R3164(Formatter3164),
}

/// The syslog facility the formatter takes for the configured one.
fn facility(f: config::Facility) -> Facility {
    use config::Facility as F;
    match f {
        F::Authpriv => Facility::LOG_AUTHPRIV,
        F::Auth => Facility::LOG_AUTH,
        F::Kern => Facility::LOG_KERN,
        F::User => Facility::LOG_USER,
        F::Mail => Facility::LOG_MAIL,
        F::Daemon => Facility::LOG_DAEMON,
        F::Syslog => Facility::LOG_SYSLOG,
        F::Lpr => Facility::LOG_LPR,
        F::News => Facility::LOG_NEWS,
        F::Uucp => Facility::LOG_UUCP,
        F::Cron => Facility::LOG_CRON,
        F::Ftp => Facility::LOG_FTP,
        F::Local0 => Facility::LOG_LOCAL0,
        F::Local1 => Facility::LOG_LOCAL1,
        F::Local2 => Facility::LOG_LOCAL2,
        F::Local3 => Facility::LOG_LOCAL3,
        F::Local4 => Facility::LOG_LOCAL4,
        F::Local5 => Facility::LOG_LOCAL5,
        F::Local6 => Facility::LOG_LOCAL6,
        F::Local7 => Facility::LOG_LOCAL7,
    }
}

/// The syslog sink.
pub struct SyslogSink {
    /// Delivery, retry and counters (see [`Buffered`]).
    pub(super) out: Buffered<Socket>,
    format: Format,
}

impl SyslogSink {
    pub fn new(cfg: &SyslogConfig, hostname: String) -> Self {
        let target = match &cfg.server {
            Some(s) => Target::Server(s.clone()),
            None => Target::Unix(cfg.socket.clone()),
        };
        let facility = facility(cfg.facility);
        let pid = std::process::id();
        let format = match cfg.format {
            SyslogFormat::Rfc3164 => Format::R3164(Formatter3164 {
                facility,
                hostname: Some(hostname),
                process: "keyward".into(),
                pid,
            }),
            SyslogFormat::Rfc5424 => Format::R5424(Formatter5424 {
                facility,
                hostname: Some(hostname),
                process: "keyward".into(),
                pid,
            }),
        };
        Self {
            out: Buffered::new(Socket::new(target)),
            format,
        }
    }

    /// Render one record: the human message plus structured data (5424) or
    /// the ECS JSON (3164, which has no structured data).
    pub fn render(&self, alert: &Alert, doc: &Value) -> Vec<u8> {
        let severity = if alert.denied() {
            Severity::LOG_ALERT
        } else {
            Severity::LOG_WARNING
        };
        let (rule_id, _) = alert.rule();
        let mut params = std::collections::BTreeMap::new();
        params.insert("container_id".into(), alert.container.id.clone());
        params.insert("pid".into(), alert.process.pid.to_string());
        params.insert("process".into(), alert.process.name.clone());
        params.insert("executable".into(), alert.process.exe.clone());
        if let Some(p) = doc["file"]["path"].as_str() {
            params.insert("file".into(), p.to_string());
        }
        params.insert("rule".into(), rule_id.to_string());
        params.insert("action".into(), alert.action.as_str().to_string());
        params.insert(
            "outcome".into(),
            doc["event"]["outcome"].as_str().unwrap_or("").to_string(),
        );
        self.format(severity, params, alert.message(), doc)
    }

    /// One record in the configured format: `message` with `params` as
    /// structured data (5424), or with the ECS JSON `doc` (3164, which has
    /// no structured data); the bare message if formatting fails.
    fn format(
        &self,
        severity: Severity,
        params: std::collections::BTreeMap<String, String>,
        message: String,
        doc: &Value,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let r = match &self.format {
            Format::R5424(f) => {
                let mut sd = StructuredData::new();
                sd.insert(SD_ID.into(), params);
                f.format(&mut out, severity, (1u32, sd, message.clone()))
            }
            Format::R3164(f) => f.format(
                &mut out,
                severity,
                format!(
                    "{message} {}",
                    serde_json::to_string(doc).unwrap_or_default()
                ),
            ),
        };
        if r.is_err() {
            out = message.into_bytes();
        }
        out
    }

    pub fn deliver(&mut self, alert: &Alert, doc: &Value) {
        let record = self.render(alert, doc);
        self.out.deliver(record);
    }

    /// Render a notice that is no archiver run (a rate-limit summary, a
    /// health alert): its message, and its rule and container as
    /// structured data (5424) or the ECS JSON (3164).
    pub fn render_notice(&self, doc: &Value) -> Vec<u8> {
        let message = doc["message"]
            .as_str()
            .unwrap_or("keyward notice")
            .to_string();
        // Dropped kernel events (a critical health alert) are worth a
        // page; other notices are warnings.
        let level = if doc["keyward"]["severity"] == "critical" {
            Severity::LOG_CRIT
        } else {
            Severity::LOG_WARNING
        };
        let mut params = std::collections::BTreeMap::new();
        for (key, value) in [
            ("rule", &doc["rule"]["id"]),
            ("container_id", &doc["container"]["id"]),
            ("action", &doc["event"]["action"]),
        ] {
            if let Some(v) = value.as_str() {
                params.insert(key.into(), v.to_string());
            }
        }
        self.format(level, params, message, doc)
    }

    /// Deliver a notice (see [`SyslogSink::render_notice`]).
    pub fn deliver_notice(&mut self, doc: &Value) {
        let record = self.render_notice(doc);
        self.out.deliver(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_made_before_their_image_was_learned_degrade_coverage() {
        let now = crate::alert::Degradation {
            learn_timeouts: 2,
            ..Default::default()
        };
        assert!(now.since(&now).is_none());
        let grew = now
            .since(&crate::alert::Degradation::default())
            .expect("a late learning is degraded coverage");
        let doc = grew.to_ecs("h");
        assert_eq!(doc["keyward"]["health"]["learn_timeouts"], 2);
        assert_eq!(doc["keyward"]["severity"], "high");
        let message = doc["message"].as_str().unwrap();
        assert!(
            message.contains("2 decisions made before their image was learned"),
            "{message}"
        );
    }

    #[test]
    fn dropped_kernel_events_are_a_critical_notice() {
        let sink = SyslogSink::new(&crate::config::SyslogConfig::default(), "h".into());
        let lost = crate::alert::Degradation {
            overflows: 1,
            ..Default::default()
        }
        .to_ecs("h");
        assert_eq!(lost["keyward"]["severity"], "critical");
        assert_eq!(lost["event"]["risk_score"], 99);
        let stalled = crate::alert::Degradation {
            deadline_releases: 1,
            ..Default::default()
        }
        .to_ecs("h");
        assert_eq!(stalled["keyward"]["severity"], "high");
        // authpriv (10): <82> is crit, <84> warning.
        let pri = |doc| {
            String::from_utf8_lossy(&sink.render_notice(doc))
                .split('>')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(pri(&lost), "<82");
        assert_eq!(pri(&stalled), "<84");
    }

    #[test]
    fn tcp_peer_that_closed_is_detected_before_a_record_is_lost() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // accept(), but fail instead of hanging when no connection comes.
        let accept = |what: &str| {
            let deadline = std::time::Instant::now() + IO_TIMEOUT;
            loop {
                match listener.accept() {
                    Ok((c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                        return c;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "no new connection for {what}: the record went into the dead one"
                        );
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        };
        let mut s = Socket::new(Target::Server(SyslogServer::Tcp(addr)));
        s.send(b"one").unwrap();
        let first = accept("one");
        // The collector closes the connection (a restart) but keeps listening.
        let mut got = [0u8; 5];
        (&first).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"3 one");
        drop(first);
        std::thread::sleep(Duration::from_millis(50));
        // Without the EOF check this write would "succeed" into the dead
        // connection and the record would be gone. The new connection
        // starts with what was written lately (at least once: "one" may
        // have died unread in the collector), then the record.
        s.send(b"two").unwrap();
        let mut second = accept("two");
        let mut both = [0u8; 10];
        (&second).read_exact(&mut both).unwrap();
        assert_eq!(&both, b"3 one3 two");
        // A live connection is reused, not reopened, and nothing is resent.
        s.send(b"333").unwrap();
        second.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"3 333");
        drop(second);
        // A collector that dies with records unread (its buffer goes with
        // it, the kernel answers RST): they were "sent", and come again.
        std::thread::sleep(Duration::from_millis(50));
        s.send(b"four").unwrap();
        let third = accept("four");
        s.send(b"five").unwrap();
        drop(third);
        std::thread::sleep(Duration::from_millis(50));
        s.send(b"six").unwrap();
        let fourth = accept("six");
        let mut rest = Vec::new();
        (&fourth).take(64).read_to_end(&mut rest).ok();
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            rest.contains("4 four") && rest.contains("4 five") && rest.ends_with("3 six"),
            "{rest:?}"
        );
    }

    #[test]
    fn unix_datagram_delivery_reconnects_after_the_socket_returns() {
        let tmp = crate::testdir::TempDir::new("syslog");
        let dir = tmp.path().to_path_buf();
        let path = dir.join("log.sock");
        let mut s = Socket::new(Target::Unix(path.clone()));
        assert!(s.send(b"lost").is_err());
        let rx = UnixDatagram::bind(&path).unwrap();
        s.send(b"hello").unwrap();
        let mut buf = [0u8; 16];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
    }
}
