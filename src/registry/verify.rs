//! Verification of a registration: the container id, the init pid (its
//! start time and namespaces), and the response annotation.
//!
//! A registration names a pid; the daemon checks that the pid exists, is
//! not pid 1 or the daemon itself, and does not run in the host's mount
//! namespace, then records its start time and namespace inodes. On restart
//! each record is re-validated against those, so a reused pid is never
//! taken for the container it replaced.

use std::collections::BTreeMap;

use crate::attribute::procfs::{self, AttributionError};
use crate::config::{Action, UnknownValue};

/// The annotation that overrides the response action per container.
pub const RESPONSE_ANNOTATION: &str = "io.keyward.response";

/// Why a pid cannot be a container's init.
#[derive(Debug, thiserror::Error)]
pub enum PidRefusal {
    #[error("pid 1 and below belong to the host")]
    Host,
    #[error("it is the keyward daemon itself")]
    Daemon,
    #[error(transparent)]
    Unreadable(AttributionError),
    #[error("it runs in the host's mount namespace")]
    HostMountNamespace,
}

/// Errors verifying a registration.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("container id {id:?} is invalid: {reason}")]
    BadId { id: String, reason: &'static str },
    #[error("pid {pid} is not a container init: {reason}")]
    BadPid {
        pid: i32,
        #[source]
        reason: PidRefusal,
    },
    #[error("annotation {RESPONSE_ANNOTATION}={value:?} of container {id} is invalid: {reason}")]
    BadAnnotation {
        id: String,
        value: String,
        #[source]
        reason: UnknownValue,
    },
}

/// Check an OCI container id: non-empty, bounded, no control characters or
/// path separators (ids end up in file names and log lines).
pub fn check_id(id: &str) -> Result<(), VerifyError> {
    let bad = |reason| {
        Err(VerifyError::BadId {
            id: id.chars().take(80).collect(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    if id.chars().any(|c| c.is_control() || c == '/') {
        return bad("contains '/' or a control character");
    }
    Ok(())
}

/// What a container's `io.keyward.response` annotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnotationOutcome {
    /// None was set: the host's action holds.
    Absent,
    /// It set this action (as strong as the host's, or lowering allowed).
    Applied(Action),
    /// It asked for a weaker action than the host's, and was refused.
    Refused { asked: Action },
}

/// The response action for a container: the host's `default`, which its
/// annotation may strengthen; it may lower it only where the host's
/// config allows (`response.annotation_may_lower`). A malformed
/// annotation refuses the registration.
pub fn action_for(
    id: &str,
    annotations: &BTreeMap<String, String>,
    default: Action,
    may_lower: bool,
) -> Result<(Action, AnnotationOutcome), VerifyError> {
    let Some(v) = annotations.get(RESPONSE_ANNOTATION) else {
        return Ok((default, AnnotationOutcome::Absent));
    };
    let asked: Action = v.parse().map_err(|reason| VerifyError::BadAnnotation {
        id: id.to_string(),
        value: v.clone(),
        reason,
    })?;
    if asked.strength() < default.strength() && !may_lower {
        return Ok((default, AnnotationOutcome::Refused { asked }));
    }
    Ok((asked, AnnotationOutcome::Applied(asked)))
}

/// Name and image from the annotations the engines set, before the
/// user's own `io.keyward.name` / `io.keyward.image`.
pub fn name_and_image(a: &BTreeMap<String, String>) -> (Option<String>, Option<String>) {
    // The engine's own keys first: `io.keyward.*` are the user's labels,
    // used only where no engine named the container, so a container that
    // names itself cannot take a name an exception was written for.
    const NAMES: &[&str] = &[
        "io.kubernetes.cri-o.ContainerName",
        "io.kubernetes.cri.container-name",
        "io.kubernetes.container.name",
        "nerdctl/name",
        "io.podman.annotations.name",
        "io.keyward.name",
    ];
    const IMAGES: &[&str] = &[
        "io.kubernetes.cri-o.ImageName",
        "io.kubernetes.cri.image-name",
        "org.opencontainers.image.ref.name",
        "io.podman.annotations.image",
        "io.keyward.image",
    ];
    let first = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| a.get(*k).filter(|v| !v.is_empty()).cloned())
    };
    (first(NAMES), first(IMAGES))
}

/// The pod a container belongs to, from the annotations containerd's CRI
/// plugin (`io.kubernetes.cri.sandbox-*`) or CRI-O (`io.kubernetes.pod.*`)
/// set, one engine's pair, never a mix. `None` when neither names a
/// namespace or a pod. Like names and images, these are what whoever
/// created the container wrote into its spec; the values are cut and
/// cleaned as [`crate::registry::enrich`] does.
pub fn pod_of(a: &BTreeMap<String, String>) -> Option<crate::watch::index::PodRef> {
    const PAIRS: &[(&str, &str)] = &[
        (
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.cri.sandbox-name",
        ),
        ("io.kubernetes.pod.namespace", "io.kubernetes.pod.name"),
    ];
    PAIRS.iter().find_map(|(ns, name)| {
        let get = |k: &str| a.get(k).and_then(|v| super::enrich::clean(v));
        let (namespace, name) = (get(ns), get(name));
        (namespace.is_some() || name.is_some())
            .then_some(crate::watch::index::PodRef { namespace, name })
    })
}

/// Facts about a pid that registration verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidFacts {
    pub start_time_ticks: u64,
    pub pid_ns: u64,
    pub mnt_ns: u64,
    pub net_ns: u64,
    /// The container's own cgroup, if the runtime made one
    /// ([`container_cgroup`]).
    pub cgroup: Option<String>,
}

/// The cgroup that tells the container's processes from everyone else's,
/// as a `hierarchy:path` key: the init's cgroup in the unified hierarchy
/// if it has one of its own, else in the first v1 hierarchy where it has.
/// A cgroup is "its own" when it is not the root and is not the cgroup of
/// the host's init, the daemon or the runtime that started the container
/// (`runtime`, the init's parent): a runtime that made no cgroup leaves
/// the container in its own, which other processes share.
pub fn container_cgroup(pid: i32, runtime: i32) -> Option<String> {
    let mine = procfs::cgroups(pid).ok()?;
    let mut others = procfs::host_cgroups();
    if runtime > 1 && runtime != pid {
        others.extend(procfs::cgroups(runtime).into_iter().flatten());
    }
    let unified_first = mine
        .iter()
        .filter(|l| l.hierarchy == "0:")
        .chain(mine.iter().filter(|l| l.hierarchy != "0:"));
    unified_first
        .filter(|l| l.path != "/" && !others.contains(l))
        .map(procfs::CgroupLine::key)
        .next()
}

/// Verify that `pid` can be a container's init.
pub fn verify_pid(pid: i32) -> Result<PidFacts, VerifyError> {
    let bad = |reason| Err(VerifyError::BadPid { pid, reason });
    if pid <= 1 {
        return bad(PidRefusal::Host);
    }
    if pid as u32 == std::process::id() {
        return bad(PidRefusal::Daemon);
    }
    let unreadable = |e| VerifyError::BadPid {
        pid,
        reason: PidRefusal::Unreadable(e),
    };
    let stat = procfs::stat(pid).map_err(unreadable)?;
    let ns = |kind| procfs::ns_inode(pid, kind).map_err(unreadable);
    let (pid_ns, mnt_ns, net_ns) = (ns("pid")?, ns("mnt")?, ns("net")?);
    // The host's mount namespace is pid 1's; the daemon's own may differ
    // (systemd's ProtectSystem gives it a private one), so check both.
    let host = [
        procfs::fixed_ns(true, "mnt"),
        procfs::fixed_ns(false, "mnt"),
    ];
    if host.contains(&Some(mnt_ns)) {
        return bad(PidRefusal::HostMountNamespace);
    }
    Ok(PidFacts {
        start_time_ticks: stat.start_time_ticks,
        pid_ns,
        mnt_ns,
        net_ns,
        cgroup: container_cgroup(pid, stat.ppid),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_come_from_containerd_or_cri_o_annotations() {
        let a = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let pod = pod_of(&a(&[
            ("io.kubernetes.cri.sandbox-namespace", "shop"),
            ("io.kubernetes.cri.sandbox-name", "cart-7f9c4"),
            ("io.kubernetes.pod.namespace", "ignored"),
        ]))
        .unwrap();
        assert_eq!(pod.namespace.as_deref(), Some("shop"));
        assert_eq!(pod.name.as_deref(), Some("cart-7f9c4"));
        let pod = pod_of(&a(&[("io.kubernetes.pod.name", "web-0")])).unwrap();
        assert_eq!((pod.namespace, pod.name.as_deref()), (None, Some("web-0")));
        // One engine's pair, never a mix.
        let pod = pod_of(&a(&[
            ("io.kubernetes.cri.sandbox-namespace", "shop"),
            ("io.kubernetes.pod.name", "other"),
        ]))
        .unwrap();
        assert_eq!((pod.namespace.as_deref(), pod.name), (Some("shop"), None));
        assert_eq!(
            pod_of(&a(&[("io.kubernetes.cri.sandbox-name", "a\nb")])),
            None,
            "control characters are dropped"
        );
        assert_eq!(pod_of(&a(&[("io.kubernetes.cri.sandbox-name", "")])), None);
        assert_eq!(pod_of(&a(&[("io.keyward.name", "x")])), None);
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("abc-123_x.y").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("a/b").unwrap_err().to_string().contains("a/b"));
        assert!(check_id("a\nb").is_err());
        assert!(check_id(&"x".repeat(2000)).is_err());
    }

    #[test]
    fn bad_pids_are_refused_with_the_reason() {
        let e = verify_pid(1).unwrap_err().to_string();
        assert!(e.contains("pid 1"), "{e}");
        let me = std::process::id() as i32;
        assert!(
            verify_pid(me)
                .unwrap_err()
                .to_string()
                .contains("daemon itself")
        );
        assert!(verify_pid(i32::MAX).is_err());
        // The test's parent runs in the host's namespaces.
        let parent = procfs::stat(me).unwrap().ppid;
        let e = verify_pid(parent).unwrap_err().to_string();
        assert!(e.contains("host's mount namespace"), "{e}");
    }

    #[test]
    fn annotation_may_strengthen_only_and_is_validated() {
        let mut a = BTreeMap::new();
        assert_eq!(
            action_for("c", &a, Action::Deny, false).unwrap(),
            (Action::Deny, AnnotationOutcome::Absent)
        );
        a.insert(RESPONSE_ANNOTATION.to_string(), "kill".to_string());
        assert_eq!(
            action_for("c", &a, Action::Alert, false).unwrap(),
            (Action::Kill, AnnotationOutcome::Applied(Action::Kill))
        );
        // A tenant's `alert` on a `deny` host is refused, not applied.
        a.insert(RESPONSE_ANNOTATION.to_string(), "alert".to_string());
        assert_eq!(
            action_for("c", &a, Action::Deny, false).unwrap(),
            (
                Action::Deny,
                AnnotationOutcome::Refused {
                    asked: Action::Alert
                }
            )
        );
        // Unless the host allows lowering.
        assert_eq!(
            action_for("c", &a, Action::Deny, true).unwrap(),
            (Action::Alert, AnnotationOutcome::Applied(Action::Alert))
        );
        // disconnect stands beside deny; stop is above kill.
        a.insert(RESPONSE_ANNOTATION.to_string(), "disconnect".to_string());
        assert_eq!(
            action_for("c", &a, Action::Deny, false).unwrap().0,
            Action::Disconnect
        );
        assert_eq!(
            action_for("c", &a, Action::Kill, false).unwrap().0,
            Action::Kill
        );
        a.insert(RESPONSE_ANNOTATION.to_string(), "nuke".to_string());
        let e = action_for("c", &a, Action::Alert, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nuke") && e.contains(RESPONSE_ANNOTATION), "{e}");
    }
}
