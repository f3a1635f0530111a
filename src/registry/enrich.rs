//! Container names and images that the engine keeps outside the OCI state.
//!
//! CRI-O and containerd put the container's name and image into the OCI
//! annotations ([`crate::registry::store::name_and_image`] reads them). podman
//! (libpod) does not: its spec carries `io.container.manager=libpod` and a
//! few `io.podman.annotations.*` flags, but no name and no image. podman
//! keeps both in containers/storage, whose layout around the bundle is fixed
//! (the same under the default graph root `/var/lib/containers/storage` and
//! under `podman --root DIR`):
//!
//! ```text
//! <graphroot>/<driver>-containers/containers.json     [{id, names, image, metadata}]
//! <graphroot>/<driver>-containers/<id>/userdata       the OCI bundle (config.json)
//! <graphroot>/<driver>-images/images.json             [{id, names}]
//! ```
//!
//! `metadata` is a JSON string written by libpod:
//! `{"image-name":"localhost/app:1","image-id":"…","name":"web",…}`.
//! [`lookup`] reads those files (bounded, no subprocess: nothing a container
//! controls reaches a shell) and only for a bundle that has exactly this
//! shape and whose `<id>` directory is the container's OCI id, so a record of
//! another container is never taken. containers/storage replaces these files
//! by rename, so reading them without its lock sees a whole version.
//!
//! Names and images are enrichment: [`enrich`] keeps whatever the annotations
//! gave and falls back to them on any error.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Largest store file read (`containers.json` with thousands of containers
/// is a few MiB).
pub const MAX_STORE_BYTES: u64 = 64 * 1024 * 1024;
/// Longest name or image kept; longer values are cut at a char boundary.
const MAX_VALUE_BYTES: usize = 1024;
/// The files of a containers/storage container store: the stable one, and
/// the one a transient store (`--transient-store`) keeps its records in.
const CONTAINER_FILES: &[&str] = &["containers.json", "volatile-containers.json"];

/// Errors reading an engine's metadata.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot read container store {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container store {path} is larger than {MAX_STORE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("container store {path} is malformed: {source}")]
    Malformed {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// What the engine knows about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineMeta {
    pub name: Option<String>,
    pub image: Option<String>,
}

/// Where containers/storage keeps the container a bundle belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLayout {
    /// `<graphroot>/<driver>-containers`
    pub containers_dir: PathBuf,
    /// `<graphroot>/<driver>-images`
    pub images_dir: PathBuf,
}

/// The store layout of `bundle` when it is
/// `<graphroot>/<driver>-containers/<id>/userdata` for this `id`.
pub fn store_layout(id: &str, bundle: &Path) -> Option<StoreLayout> {
    if bundle.file_name()? != "userdata" {
        return None;
    }
    let id_dir = bundle.parent()?;
    if id.is_empty() || id_dir.file_name()? != id {
        return None;
    }
    let containers_dir = id_dir.parent()?;
    let driver = containers_dir
        .file_name()?
        .to_str()?
        .strip_suffix("-containers")
        .filter(|d| !d.is_empty())?;
    let images_dir = containers_dir.parent()?.join(format!("{driver}-images"));
    Some(StoreLayout {
        containers_dir: containers_dir.to_path_buf(),
        images_dir,
    })
}

#[derive(Deserialize)]
struct StoredContainer {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    image: String,
    #[serde(default)]
    metadata: String,
}

#[derive(Deserialize, Default)]
struct LibpodMetadata {
    #[serde(default, rename = "image-name")]
    image_name: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct StoredImage {
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

/// Read a store file, bounded. `Ok(None)` when it does not exist.
fn read_store<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<Vec<T>>, EngineError> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(EngineError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut text = Vec::new();
    file.take(MAX_STORE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|source| EngineError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if text.len() as u64 > MAX_STORE_BYTES {
        return Err(EngineError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| EngineError::Malformed {
            path: path.to_path_buf(),
            source,
        })
}

/// A value fit for an alert: non-empty, no control characters, bounded.
fn clean(s: &str) -> Option<String> {
    if s.is_empty() || s.chars().any(char::is_control) {
        return None;
    }
    let mut end = s.len().min(MAX_VALUE_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(s[..end].to_string())
}

/// The name and image containers/storage records for container `id` whose
/// bundle is `bundle`. `Ok(None)` when the bundle is not in a
/// containers/storage layout or the store has no record of `id`.
pub fn lookup(id: &str, bundle: &Path) -> Result<Option<EngineMeta>, EngineError> {
    let Some(layout) = store_layout(id, bundle) else {
        return Ok(None);
    };
    let mut found = None;
    for file in CONTAINER_FILES {
        let path = layout.containers_dir.join(file);
        if let Some(list) = read_store::<StoredContainer>(&path)? {
            found = list.into_iter().find(|c| c.id == id);
            if found.is_some() {
                break;
            }
        }
    }
    let Some(c) = found else {
        return Ok(None);
    };
    // Only libpod writes this metadata; other users of the store leave it
    // empty or put other keys there.
    let meta: LibpodMetadata = serde_json::from_str(&c.metadata).unwrap_or_default();
    let name = c
        .names
        .first()
        .and_then(|n| clean(n))
        .or_else(|| clean(&meta.name));
    let mut image = clean(&meta.image_name);
    if image.is_none() && !c.image.is_empty() {
        let path = layout.images_dir.join("images.json");
        image = read_store::<StoredImage>(&path)?
            .and_then(|list| list.into_iter().find(|i| i.id == c.image))
            .and_then(|i| i.names.first().and_then(|n| clean(n)));
    }
    Ok(Some(EngineMeta { name, image }))
}

/// Fill in what the annotations left out (`known`, as
/// [`crate::registry::store::name_and_image`] returns it) from the engine's own
/// metadata. Annotations win; a store that cannot be read changes nothing.
pub fn enrich(
    id: &str,
    bundle: &Path,
    known: (Option<String>, Option<String>),
) -> (Option<String>, Option<String>) {
    let (name, image) = known;
    if name.is_some() && image.is_some() {
        return (name, image);
    }
    match lookup(id, bundle) {
        Ok(Some(m)) => (name.or(m.name), image.or(m.image)),
        Ok(None) | Err(_) => (name, image),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "e92f1e5d762d48a5c8dc52546b6e515fa9b544b179532477e03d87b459c52e0c";
    const IMAGE_ID: &str = "1dbf906268646afbb45cc1fde0bd4b7fa438485016b4ce7f3b1a99bdd2457a0e";

    /// A graph root as podman 4.3 wrote it on this machine (trimmed).
    fn store(tag: &str, metadata: &str) -> (crate::testdir::TempDir, PathBuf) {
        let dir = crate::testdir::TempDir::new(&format!("engine-{tag}"));
        let root = dir.path().to_path_buf();
        let bundle = root.join("overlay-containers").join(ID).join("userdata");
        fs::create_dir_all(&bundle).unwrap();
        fs::create_dir_all(root.join("overlay-images")).unwrap();
        let containers = serde_json::json!([
            {"id": "0000", "names": ["other"], "image": IMAGE_ID, "metadata": ""},
            {"id": ID, "names": ["web"], "image": IMAGE_ID, "layer": "cdc2",
             "metadata": metadata, "created": "2026-11-22T05:56:33Z",
             "flags": {"MountLabel": "", "ProcessLabel": ""}}
        ]);
        fs::write(
            root.join("overlay-containers/containers.json"),
            containers.to_string(),
        )
        .unwrap();
        let images = serde_json::json!([
            {"id": IMAGE_ID, "digest": "sha256:0aee", "names": ["localhost/app:1"]}
        ]);
        fs::write(root.join("overlay-images/images.json"), images.to_string()).unwrap();
        (dir, bundle)
    }

    #[test]
    fn podman_store_gives_name_and_image() {
        let md = format!(
            r#"{{"image-name":"localhost/app:2","image-id":"{IMAGE_ID}","name":"web","created-at":1795326993}}"#
        );
        let (_root, bundle) = store("meta", &md);
        let m = lookup(ID, &bundle).unwrap().unwrap();
        assert_eq!(m.name.as_deref(), Some("web"));
        // libpod's image-name (what the user ran) wins over images.json.
        assert_eq!(m.image.as_deref(), Some("localhost/app:2"));
    }

    #[test]
    fn image_falls_back_to_images_json() {
        let (_root, bundle) = store("images", "");
        let m = lookup(ID, &bundle).unwrap().unwrap();
        assert_eq!(m.name.as_deref(), Some("web"));
        assert_eq!(m.image.as_deref(), Some("localhost/app:1"));
    }

    #[test]
    fn another_id_or_shape_is_never_taken() {
        let (dir, bundle) = store("shape", "");
        let root = dir.path();
        assert_eq!(lookup("0000", &bundle).unwrap(), None);
        let other = root
            .join("overlay-containers")
            .join("0000")
            .join("userdata");
        assert_eq!(
            lookup("0000", &other).unwrap(),
            Some(EngineMeta {
                name: Some("other".into()),
                image: Some("localhost/app:1".into()),
            })
        );
        assert_eq!(lookup(ID, &root.join("bundle")).unwrap(), None);
        assert_eq!(
            store_layout(ID, &root.join(ID).join("userdata")),
            None,
            "parent must be <driver>-containers"
        );
        assert_eq!(
            store_layout(ID, &bundle),
            Some(StoreLayout {
                containers_dir: root.join("overlay-containers"),
                images_dir: root.join("overlay-images"),
            })
        );
    }

    #[test]
    fn annotations_win_and_errors_change_nothing() {
        let (dir, bundle) = store("enrich", "");
        let root = dir.path();
        assert_eq!(
            enrich(ID, &bundle, (Some("ann".into()), None)),
            (Some("ann".into()), Some("localhost/app:1".into()))
        );
        fs::write(root.join("overlay-containers/containers.json"), "{not json").unwrap();
        let err = lookup(ID, &bundle).unwrap_err().to_string();
        assert!(
            err.contains("containers.json") && err.contains("malformed"),
            "{err}"
        );
        assert_eq!(
            enrich(ID, &bundle, (None, Some("img".into()))),
            (None, Some("img".into()))
        );
    }

    #[test]
    fn values_are_cleaned() {
        assert_eq!(clean(""), None);
        assert_eq!(clean("a\nb"), None);
        assert_eq!(clean(&"é".repeat(600)).unwrap().len(), 1024);
    }
}
