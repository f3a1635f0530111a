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
//! Docker (through containerd) hands the runtime a bundle in containerd's
//! task directory, `<containerd state>/io.containerd.runtime.v2.task/moby/<id>`,
//! and its spec has no name or image either. Docker keeps both in its data
//! root, which nothing in the bundle names:
//!
//! ```text
//! <data-root>/containers/<id>/config.v2.json   {"ID", "Name": "/web", "Config": {"Image": "app:1"}, "Image": "sha256:…"}
//! ```
//!
//! [`docker_lookup`] reads that file under each configured data root
//! (`engines.docker_roots`, default `/var/lib/docker`), only for a full
//! 64-hex id (so the id cannot step out of the directory) whose bundle is
//! the id's own directory, and only when the record's `ID` is that id.
//! Docker rewrites the file by rename, so a read sees a whole version.
//!
//! Names and images are enrichment: [`enrich`] keeps whatever the annotations
//! gave and falls back to them on any error.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::EnginesConfig;

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
    #[error("cannot read engine metadata {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("engine metadata {path} is larger than {MAX_STORE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("engine metadata {path} is malformed: {source}")]
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

/// A JSON object read as `T`, and nothing else. serde's derived structs
/// also take an array, fields by position; the engines write objects, and
/// `["<id>", "/name"]` is no record of theirs (cargo-fuzz found `["",""]`
/// taken as a Docker record).
#[derive(Default)]
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
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

/// Read a file, bounded. `Ok(None)` when it does not exist.
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, EngineError> {
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
    Ok(Some(text))
}

/// Parse a metadata file's bytes, bounded; `path` names it in errors.
fn parse_json<T: for<'de> Deserialize<'de>>(path: &Path, text: &[u8]) -> Result<T, EngineError> {
    if text.len() as u64 > MAX_STORE_BYTES {
        return Err(EngineError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    serde_json::from_slice(text).map_err(|source| EngineError::Malformed {
        path: path.to_path_buf(),
        source,
    })
}

/// A value fit for an alert: non-empty, no control characters, bounded
/// (cut at a char boundary at most 1024 bytes in).
pub fn clean(s: &str) -> Option<String> {
    if s.is_empty() || s.chars().any(char::is_control) {
        return None;
    }
    let mut end = s.len().min(MAX_VALUE_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(s[..end].to_string())
}

/// What a containers/storage container record says about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreRecord {
    /// The name, and the image libpod's metadata names.
    pub meta: EngineMeta,
    /// The image id to look up in `images.json` when the metadata names
    /// no image; empty when the record has none.
    pub image_id: String,
}

/// Container `id`'s record in the bytes of a container store file
/// (`containers.json`), which `path` names in errors. `Ok(None)` when
/// the file has no record of `id`.
pub fn parse_containers(
    path: &Path,
    text: &[u8],
    id: &str,
) -> Result<Option<StoreRecord>, EngineError> {
    let list: Vec<Obj<StoredContainer>> = parse_json(path, text)?;
    let Some(Obj(c)) = list.into_iter().find(|c| c.0.id == id) else {
        return Ok(None);
    };
    // Only libpod writes this metadata; other users of the store leave it
    // empty or put other keys there.
    let Obj(meta): Obj<LibpodMetadata> = serde_json::from_str(&c.metadata).unwrap_or_default();
    let name = c
        .names
        .first()
        .and_then(|n| clean(n))
        .or_else(|| clean(&meta.name));
    Ok(Some(StoreRecord {
        meta: EngineMeta {
            name,
            image: clean(&meta.image_name),
        },
        image_id: c.image,
    }))
}

/// The first name of image `image_id` in the bytes of an image store
/// file (`images.json`), which `path` names in errors.
pub fn parse_images(
    path: &Path,
    text: &[u8],
    image_id: &str,
) -> Result<Option<String>, EngineError> {
    let list: Vec<Obj<StoredImage>> = parse_json(path, text)?;
    Ok(list
        .into_iter()
        .find(|i| i.0.id == image_id)
        .and_then(|Obj(i)| i.names.first().and_then(|n| clean(n))))
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
        if let Some(text) = read_bounded(&path)? {
            found = parse_containers(&path, &text, id)?;
            if found.is_some() {
                break;
            }
        }
    }
    let Some(StoreRecord { mut meta, image_id }) = found else {
        return Ok(None);
    };
    if meta.image.is_none() && !image_id.is_empty() {
        let path = layout.images_dir.join("images.json");
        if let Some(text) = read_bounded(&path)? {
            meta.image = parse_images(&path, &text, &image_id)?;
        }
    }
    Ok(Some(meta))
}

/// The parts of Docker's `config.v2.json` keyward reads.
#[derive(Deserialize)]
struct DockerContainer {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Config", default)]
    config: Obj<DockerRunConfig>,
    /// The image id (`sha256:…`), when the image's name is unknown.
    #[serde(rename = "Image", default)]
    image: String,
}

#[derive(Deserialize, Default)]
struct DockerRunConfig {
    /// The image as the user named it (`docker run IMAGE`).
    #[serde(rename = "Image", default)]
    image: String,
}

/// Whether `id` is a full Docker container id: 64 lowercase hex digits.
fn docker_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The name and image Docker records for container `id`, from the first of
/// `roots` that has a record of it. `Ok(None)` when `id` is not a Docker
/// id, the bundle is not `id`'s own directory, or no root knows `id`.
pub fn docker_lookup(
    id: &str,
    bundle: &Path,
    roots: &[PathBuf],
) -> Result<Option<EngineMeta>, EngineError> {
    if !docker_id(id) || bundle.file_name().is_none_or(|n| n != id) {
        return Ok(None);
    }
    for root in roots {
        let path = root.join("containers").join(id).join("config.v2.json");
        let Some(text) = read_bounded(&path)? else {
            continue;
        };
        if let Some(meta) = parse_docker(&path, &text, id)? {
            return Ok(Some(meta));
        }
    }
    Ok(None)
}

/// The name and image in the bytes of Docker's `config.v2.json`, which
/// `path` names in errors, when the record is container `id`'s.
pub fn parse_docker(path: &Path, text: &[u8], id: &str) -> Result<Option<EngineMeta>, EngineError> {
    let Obj(c): Obj<DockerContainer> = parse_json(path, text)?;
    if c.id != id {
        return Ok(None);
    }
    let name = clean(c.name.strip_prefix('/').unwrap_or(&c.name));
    let image = clean(&c.config.0.image).or_else(|| clean(&c.image));
    Ok(Some(EngineMeta { name, image }))
}

/// Fill in what the annotations left out (`known`, as
/// [`crate::registry::store::name_and_image`] returns it) from the engine's own
/// metadata. Annotations win; a store that cannot be read changes nothing.
pub fn enrich(
    id: &str,
    bundle: &Path,
    known: (Option<String>, Option<String>),
    engines: &EnginesConfig,
) -> (Option<String>, Option<String>) {
    let (name, image) = known;
    if name.is_some() && image.is_some() {
        return (name, image);
    }
    let found = match lookup(id, bundle) {
        Ok(None) => docker_lookup(id, bundle, &engines.docker_roots),
        other => other,
    };
    match found {
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
            enrich(ID, &bundle, (Some("ann".into()), None), &Default::default()),
            (Some("ann".into()), Some("localhost/app:1".into()))
        );
        fs::write(root.join("overlay-containers/containers.json"), "{not json").unwrap();
        let err = lookup(ID, &bundle).unwrap_err().to_string();
        assert!(
            err.contains("containers.json") && err.contains("malformed"),
            "{err}"
        );
        assert_eq!(
            enrich(ID, &bundle, (None, Some("img".into())), &Default::default()),
            (None, Some("img".into()))
        );
    }

    /// A Docker data root as dockerd 20.10 wrote it on this machine
    /// (trimmed), and containerd's task directory as the bundle.
    fn docker(tag: &str, record: &str) -> (crate::testdir::TempDir, PathBuf, PathBuf) {
        let dir = crate::testdir::TempDir::new(&format!("docker-{tag}"));
        let root = dir.path().join("data");
        fs::create_dir_all(root.join("containers").join(ID)).unwrap();
        fs::write(
            root.join("containers").join(ID).join("config.v2.json"),
            record,
        )
        .unwrap();
        let bundle = dir
            .path()
            .join("ctd-state/io.containerd.runtime.v2.task/moby")
            .join(ID);
        fs::create_dir_all(&bundle).unwrap();
        (dir, root, bundle)
    }

    #[test]
    fn docker_record_gives_name_and_image() {
        let record = format!(
            r#"{{"StreamConfig":{{}},"State":{{"Running":false}},"ID":"{ID}","Path":"/bin/true",
               "Config":{{"Hostname":"3a69c1","Image":"kwtest:1","Labels":{{}}}},
               "Image":"sha256:{IMAGE_ID}","Name":"/web2","Driver":"overlay2"}}"#
        );
        let (_d, root, bundle) = docker("meta", &record);
        let roots = vec![PathBuf::from("/nonexistent/docker"), root.clone()];
        assert_eq!(
            docker_lookup(ID, &bundle, &roots).unwrap(),
            Some(EngineMeta {
                name: Some("web2".into()),
                image: Some("kwtest:1".into()),
            })
        );
        let engines = EnginesConfig {
            docker_roots: roots,
        };
        assert_eq!(
            enrich(ID, &bundle, (None, None), &engines),
            (Some("web2".into()), Some("kwtest:1".into()))
        );
        // Annotations still win.
        assert_eq!(
            enrich(ID, &bundle, (Some("ann".into()), None), &engines).0,
            Some("ann".into())
        );
    }

    #[test]
    fn docker_record_of_another_shape_or_id_is_never_taken() {
        let other = "f".repeat(64);
        let record = format!(r#"{{"ID":"{other}","Name":"/intruder","Config":{{"Image":"x"}}}}"#);
        let (d, root, bundle) = docker("other", &record);
        let roots = [root.clone()];
        assert_eq!(docker_lookup(ID, &bundle, &roots).unwrap(), None);
        // A record of `other` exists, but the bundle is not its directory.
        fs::create_dir_all(root.join("containers").join(&other)).unwrap();
        fs::copy(
            root.join("containers").join(ID).join("config.v2.json"),
            root.join("containers").join(&other).join("config.v2.json"),
        )
        .unwrap();
        assert!(
            docker_lookup(&other, &bundle.with_file_name(&other), &roots)
                .unwrap()
                .is_some()
        );
        assert_eq!(docker_lookup(&other, &bundle, &roots).unwrap(), None);
        // Not the id's own bundle directory, or not a full id.
        assert_eq!(docker_lookup(ID, d.path(), &roots).unwrap(), None);
        assert_eq!(
            docker_lookup("../../etc", &bundle.join("../../etc"), &roots).unwrap(),
            None
        );
        assert_eq!(
            docker_lookup(&ID.to_uppercase(), &bundle, &roots).unwrap(),
            None
        );
        // A broken record is an error that names the file, and changes nothing.
        fs::write(root.join("containers").join(ID).join("config.v2.json"), "{").unwrap();
        let err = docker_lookup(ID, &bundle, &roots).unwrap_err().to_string();
        assert!(
            err.contains("config.v2.json") && err.contains("malformed"),
            "{err}"
        );
        let engines = EnginesConfig {
            docker_roots: roots.to_vec(),
        };
        assert_eq!(enrich(ID, &bundle, (None, None), &engines), (None, None));
    }

    #[test]
    fn values_are_cleaned() {
        assert_eq!(clean(""), None);
        assert_eq!(clean("a\nb"), None);
        assert_eq!(clean(&"é".repeat(600)).unwrap().len(), 1024);
    }
}
