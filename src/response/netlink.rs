//! Minimal rtnetlink: list links and set them down, in another process's
//! network namespace, without a subprocess.
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, so the work runs on
//! a short-lived thread that enters `/proc/<pid>/ns/net`, opens a
//! `NETLINK_ROUTE` socket there (a socket belongs to the namespace it was
//! created in), and exits; the daemon's own threads never change namespace.

use std::fs::File;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::sched::{CloneFlags, setns};

/// Errors talking to rtnetlink.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open network namespace of pid {pid}: {source}")]
    Namespace {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace of pid {pid}: {source}")]
    Setns {
        pid: i32,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("netlink {op} failed: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink {op} for interface {name} failed: errno {errno}")]
    Kernel {
        op: &'static str,
        name: String,
        errno: i32,
    },
    #[error("netlink worker thread failed")]
    Thread,
}

/// One link as RTM_GETLINK reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: i32,
    pub name: String,
    pub flags: u32,
}

impl Link {
    pub fn is_loopback(&self) -> bool {
        self.flags & libc::IFF_LOOPBACK as u32 != 0
    }
    pub fn is_up(&self) -> bool {
        self.flags & libc::IFF_UP as u32 != 0
    }
}

const NLMSG_HDR: usize = size_of::<libc::nlmsghdr>();
const IFINFO: usize = size_of::<libc::ifinfomsg>();

fn align(n: usize) -> usize {
    (n + 3) & !3
}

struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    fn open() -> Result<Self, NetlinkError> {
        // SAFETY: plain socket(2) call; the result is checked and owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(NetlinkError::Io {
                op: "socket",
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a valid timeval of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            );
        }
        Ok(Self { fd, seq: 1 })
    }

    fn send(
        &mut self,
        msg_type: u16,
        flags: u16,
        ifi: libc::ifinfomsg,
    ) -> Result<u32, NetlinkError> {
        self.seq += 1;
        let hdr = libc::nlmsghdr {
            nlmsg_len: (NLMSG_HDR + IFINFO) as u32,
            nlmsg_type: msg_type,
            nlmsg_flags: flags | libc::NLM_F_REQUEST as u16,
            nlmsg_seq: self.seq,
            nlmsg_pid: 0,
        };
        let mut buf = vec![0u8; NLMSG_HDR + IFINFO];
        // SAFETY: both structs are plain repr(C) data; we copy their bytes
        // into a buffer of exactly their combined size.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&hdr as *const libc::nlmsghdr).cast::<u8>(),
                buf.as_mut_ptr(),
                NLMSG_HDR,
            );
            std::ptr::copy_nonoverlapping(
                (&ifi as *const libc::ifinfomsg).cast::<u8>(),
                buf.as_mut_ptr().add(NLMSG_HDR),
                IFINFO,
            );
        }
        nix::unistd::write(self.fd.as_fd(), &buf).map_err(|e| NetlinkError::Io {
            op: "send",
            source: e.into(),
        })?;
        Ok(self.seq)
    }

    /// Read replies for `seq` until DONE (dumps) or an ACK/error.
    fn recv(&self, seq: u32, mut on_msg: impl FnMut(u16, &[u8])) -> Result<i32, NetlinkError> {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = nix::unistd::read(self.fd.as_fd(), &mut buf).map_err(|e| NetlinkError::Io {
                op: "recv",
                source: e.into(),
            })?;
            let mut off = 0;
            while off + NLMSG_HDR <= n {
                let len =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
                let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap_or_default());
                let mseq =
                    u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap_or_default());
                if len < NLMSG_HDR || off + len > n {
                    return Err(NetlinkError::Io {
                        op: "parse",
                        source: std::io::Error::other(format!("bad netlink message length {len}")),
                    });
                }
                let payload = &buf[off + NLMSG_HDR..off + len];
                if mseq == seq {
                    match ty as i32 {
                        libc::NLMSG_DONE => return Ok(0),
                        libc::NLMSG_ERROR => {
                            let err = payload
                                .get(0..4)
                                .map(|b| i32::from_ne_bytes(b.try_into().unwrap_or_default()))
                                .unwrap_or(0);
                            return Ok(-err);
                        }
                        _ => on_msg(ty, payload),
                    }
                }
                off += align(len);
            }
        }
    }
}

fn parse_link(payload: &[u8]) -> Option<Link> {
    if payload.len() < IFINFO {
        return None;
    }
    let index = i32::from_ne_bytes(payload[4..8].try_into().ok()?);
    let flags = u32::from_ne_bytes(payload[8..12].try_into().ok()?);
    let mut name = String::new();
    let mut off = align(IFINFO);
    while off + 4 <= payload.len() {
        let len = u16::from_ne_bytes(payload[off..off + 2].try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(payload[off + 2..off + 4].try_into().ok()?);
        if len < 4 || off + len > payload.len() {
            break;
        }
        if ty == libc::IFLA_IFNAME {
            let raw = &payload[off + 4..off + len];
            let raw = raw.split(|&b| b == 0).next().unwrap_or_default();
            name = String::from_utf8_lossy(raw).into_owned();
        }
        off += align(len);
    }
    Some(Link { index, name, flags })
}

fn blank_ifinfo() -> libc::ifinfomsg {
    // SAFETY: ifinfomsg is a plain C struct of integers (and padding) for
    // which all-zero bytes are a valid value.
    let mut ifi: libc::ifinfomsg = unsafe { std::mem::zeroed() };
    ifi.ifi_family = libc::AF_UNSPEC as u8;
    ifi
}

/// List links in the current thread's network namespace.
fn links(sock: &mut Socket) -> Result<Vec<Link>, NetlinkError> {
    let seq = sock.send(libc::RTM_GETLINK, libc::NLM_F_DUMP as u16, blank_ifinfo())?;
    let mut out = Vec::new();
    sock.recv(seq, |ty, payload| {
        if let Some(l) = (ty == libc::RTM_NEWLINK)
            .then(|| parse_link(payload))
            .flatten()
        {
            out.push(l);
        }
    })?;
    Ok(out)
}

/// Take every non-loopback link that is up down; return their names.
fn down_all(sock: &mut Socket) -> Result<Vec<String>, NetlinkError> {
    let mut cut = Vec::new();
    for link in links(sock)?
        .into_iter()
        .filter(|l| !l.is_loopback() && l.is_up())
    {
        let mut ifi = blank_ifinfo();
        ifi.ifi_index = link.index;
        ifi.ifi_flags = 0;
        ifi.ifi_change = libc::IFF_UP as u32;
        let seq = sock.send(libc::RTM_NEWLINK, libc::NLM_F_ACK as u16, ifi)?;
        let errno = sock.recv(seq, |_, _| {})?;
        if errno != 0 {
            return Err(NetlinkError::Kernel {
                op: "set link down",
                name: link.name,
                errno,
            });
        }
        cut.push(link.name);
    }
    Ok(cut)
}

fn in_netns<T: Send + 'static>(
    pid: i32,
    f: impl FnOnce(&mut Socket) -> Result<T, NetlinkError> + Send + 'static,
) -> Result<T, NetlinkError> {
    let ns = File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|source| NetlinkError::Namespace { pid, source })?;
    std::thread::Builder::new()
        .name("keyward-netns".into())
        .spawn(move || {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|source| NetlinkError::Setns { pid, source })?;
            let mut sock = Socket::open()?;
            f(&mut sock)
        })
        .map_err(|_| NetlinkError::Thread)?
        .join()
        .map_err(|_| NetlinkError::Thread)?
}

/// Links in the network namespace of `pid`.
pub fn links_of(pid: i32) -> Result<Vec<Link>, NetlinkError> {
    in_netns(pid, links)
}

/// Take every non-loopback interface in `pid`'s network namespace down.
pub fn disconnect(pid: i32) -> Result<Vec<String>, NetlinkError> {
    in_netns(pid, down_all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_this_namespace_with_loopback() {
        let me = std::process::id() as i32;
        let l = links_of(me).unwrap();
        assert!(l.iter().any(|l| l.is_loopback() && l.name == "lo"), "{l:?}");
    }

    #[test]
    fn parses_a_link_message() {
        let mut p = vec![0u8; IFINFO];
        p[4..8].copy_from_slice(&7i32.to_ne_bytes());
        p[8..12].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        let name = b"veth0\0";
        let len = 4 + name.len();
        p.extend_from_slice(&(len as u16).to_ne_bytes());
        p.extend_from_slice(&libc::IFLA_IFNAME.to_ne_bytes());
        p.extend_from_slice(name);
        let l = parse_link(&p).unwrap();
        assert_eq!((l.index, l.name.as_str(), l.is_up()), (7, "veth0", true));
        assert!(parse_link(&p[..3]).is_none());
    }
}
