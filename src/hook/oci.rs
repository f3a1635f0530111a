//! OCI inputs: the state JSON a runtime gives a hook on stdin, and the
//! bundle's `config.json` (rootfs and annotations).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{ContainerState, State};

use crate::hook::protocol::Registration;

/// Largest state JSON accepted on stdin.
pub const MAX_STATE_BYTES: usize = 1024 * 1024;
/// Largest bundle config.json read.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// Errors reading OCI inputs.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("cannot read OCI state from stdin: {0}")]
    ReadState(#[source] std::io::Error),
    #[error("OCI state on stdin is larger than {MAX_STATE_BYTES} bytes")]
    StateTooLarge,
    #[error("OCI state on stdin is malformed: {0}")]
    BadState(#[source] serde_json::Error),
    #[error("OCI state has no {0}")]
    Missing(&'static str),
    #[error("cannot read bundle config {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bundle config {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    ConfigTooLarge { path: PathBuf },
    #[error("bundle config {path} is malformed: {source}")]
    BadConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// What the hook does for a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookAction {
    Register(Registration),
    Deregister { id: String },
}

/// Read and parse the state JSON, bounded.
pub fn read_state<R: Read>(r: R) -> Result<State, OciError> {
    let mut buf = Vec::new();
    r.take(MAX_STATE_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(OciError::ReadState)?;
    if buf.len() > MAX_STATE_BYTES {
        return Err(OciError::StateTooLarge);
    }
    serde_json::from_slice(&buf).map_err(OciError::BadState)
}

/// A runtime config file (a bundle's config.json, or the file crun's
/// `--config` names), parsed as `T`, bounded; with its metadata.
pub fn read_config<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<(T, std::fs::Metadata), OciError> {
    let path = path.to_path_buf();
    let err = |source| OciError::ReadConfig {
        path: path.clone(),
        source,
    };
    let meta = std::fs::metadata(&path).map_err(err)?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(OciError::ConfigTooLarge { path });
    }
    let bytes = std::fs::read(&path).map_err(err)?;
    parse_config(&path, &bytes).map(|v| (v, meta))
}

/// Parse the bytes of a runtime config file as `T`, bounded; `path` only
/// names the file in errors. No filesystem access, so the fuzz targets
/// reach the same code as [`read_config`].
pub fn parse_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
) -> Result<T, OciError> {
    // The file may have grown between the metadata and the read.
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(OciError::ConfigTooLarge {
            path: path.to_path_buf(),
        });
    }
    serde_json::from_slice(bytes).map_err(|source| OciError::BadConfig {
        path: path.to_path_buf(),
        source,
    })
}

/// What the hook reads of a bundle's `config.json`: where the rootfs is,
/// and the annotations. The rest is the runtime's to check; deserializing
/// the whole OCI spec was a tenth of the hook process's time, on every
/// container start.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct BundleConfig {
    #[serde(default)]
    pub root: Option<BundleRoot>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// `root` of a bundle's `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct BundleRoot {
    pub path: PathBuf,
}

/// Read what the hook needs of a bundle's config.json, bounded.
pub fn read_bundle_config(bundle: &Path) -> Result<BundleConfig, OciError> {
    read_config(&bundle.join("config.json")).map(|(config, _)| config)
}

/// Decide what to do for a state: register at creating/created (and at
/// running, for a hook wired at poststart), deregister at stopped.
pub fn hook_action(state: &State) -> Result<HookAction, OciError> {
    action_with(state, read_bundle_config)
}

/// [`hook_action`] with the bundle's spec from `spec` (given the bundle
/// path, called only when a registration needs it), so the decision can
/// be made from bytes without touching the filesystem.
pub fn action_with(
    state: &State,
    spec: impl FnOnce(&Path) -> Result<BundleConfig, OciError>,
) -> Result<HookAction, OciError> {
    let id = state.id().clone();
    if id.is_empty() {
        return Err(OciError::Missing("id"));
    }
    if *state.status() == ContainerState::Stopped {
        return Ok(HookAction::Deregister { id });
    }
    let pid = state.pid().ok_or(OciError::Missing("pid"))?;
    let bundle = state.bundle().clone();
    if bundle.as_os_str().is_empty() {
        return Err(OciError::Missing("bundle"));
    }
    let spec = spec(&bundle)?;
    let root = spec
        .root
        .map(|r| r.path)
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    // root.path is relative to the bundle unless absolute.
    let rootfs = if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    };
    let mut annotations: BTreeMap<String, String> = spec.annotations.unwrap_or_default();
    if let Some(a) = state.annotations() {
        for (k, v) in a {
            annotations.insert(k.clone(), v.clone());
        }
    }
    Ok(HookAction::Register(Registration {
        id,
        pid,
        bundle,
        rootfs,
        annotations,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_truncated_and_oversized_state_are_clear_errors() {
        let e = read_state(&b"{\"id\": \"x\", "[..])
            .unwrap_err()
            .to_string();
        assert!(e.contains("malformed"), "{e}");
        let e = read_state(&b"\xff\xfe garbage"[..])
            .unwrap_err()
            .to_string();
        assert!(e.contains("malformed"), "{e}");
        let big = vec![b' '; MAX_STATE_BYTES + 5];
        assert!(matches!(read_state(&big[..]), Err(OciError::StateTooLarge)));
    }

    #[test]
    fn stopped_deregisters_without_reading_the_bundle() {
        let s = read_state(
            &br#"{"ociVersion":"1.0.2","id":"c1","status":"stopped","bundle":"/nonexistent"}"#[..],
        )
        .unwrap();
        assert_eq!(
            hook_action(&s).unwrap(),
            HookAction::Deregister { id: "c1".into() }
        );
    }

    #[test]
    fn creating_reads_rootfs_and_merges_annotations() {
        let tmp = crate::testdir::TempDir::new("oci");
        let dir = tmp.path().to_path_buf();
        std::fs::write(
            dir.join("config.json"),
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"annotations":{"a":"1","io.keyward.response":"deny"}}"#,
        )
        .unwrap();
        let state = format!(
            r#"{{"ociVersion":"1.0.2","id":"c2","status":"creating","pid":42,"bundle":"{}","annotations":{{"b":"2"}}}}"#,
            dir.display()
        );
        let s = read_state(state.as_bytes()).unwrap();
        let HookAction::Register(r) = hook_action(&s).unwrap() else {
            panic!("expected register")
        };
        assert_eq!(r.pid, 42);
        assert_eq!(r.rootfs, dir.join("rootfs"));
        assert_eq!(r.annotations.get("a").unwrap(), "1");
        assert_eq!(r.annotations.get("b").unwrap(), "2");
        std::fs::write(dir.join("config.json"), "{bad").unwrap();
        let e = hook_action(&s).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("malformed"), "{e}");
    }

    #[test]
    fn missing_pid_is_named() {
        let s = read_state(
            &br#"{"ociVersion":"1.0.2","id":"c1","status":"creating","bundle":"/b"}"#[..],
        )
        .unwrap();
        assert!(hook_action(&s).unwrap_err().to_string().contains("pid"));
    }
}
