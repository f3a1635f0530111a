//! Engine metadata read beside the OCI state: podman's containers/storage
//! files (`containers.json`, `images.json`) and Docker's `config.v2.json`,
//! each for one container id, plus the bundle path shape that decides
//! whether the store is read at all, and `clean`, which every value passes
//! through before it reaches an alert.
//!
//! Input: a selector byte (`c` containers.json, `i` images.json, `d`
//! config.v2.json, anything else the bundle path), the id up to a NUL,
//! then the file's bytes (or the bundle path).
//!
//! Properties: no panic; names and images are clean (non-empty, no
//! control characters, at most 1024 bytes); a Docker record is taken only
//! when its `ID` is the id; a store layout is found only for
//! `<root>/<driver>-containers/<id>/userdata`, with the images beside it;
//! `clean` cuts only at a char boundary and only past 1024 bytes.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use keyward::registry::enrich::{self, StoreRecord};
use libfuzzer_sys::fuzz_target;

/// Only the `ID` of a Docker record.
#[derive(serde::Deserialize)]
struct RecordId {
    #[serde(rename = "ID")]
    id: String,
}

fn assert_clean(v: &Option<String>) {
    if let Some(v) = v {
        assert!(!v.is_empty() && v.len() <= 1024, "{v:?}");
        assert!(!v.chars().any(char::is_control), "{v:?}");
        assert_eq!(enrich::clean(v).as_ref(), Some(v), "clean is idempotent");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let (id, body) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let id = String::from_utf8_lossy(id);
    let path = Path::new("/var/lib/engine/file.json");
    match kind {
        b'c' => {
            if let Ok(Some(StoreRecord { meta, .. })) = enrich::parse_containers(path, body, &id) {
                assert_clean(&meta.name);
                assert_clean(&meta.image);
            }
        }
        b'i' => {
            if let Ok(image) = enrich::parse_images(path, body, &id) {
                assert_clean(&image);
            }
        }
        b'd' => match enrich::parse_docker(path, body, &id) {
            Ok(Some(meta)) => {
                // Read as the parser reads it (a generic Value would refuse
                // escapes in fields the parser skips unchecked).
                let record: RecordId = serde_json::from_slice(body).unwrap();
                assert_eq!(record.id, id);
                assert_clean(&meta.name);
                assert_clean(&meta.image);
            }
            Ok(None) => {}
            Err(e) => assert!(e.to_string().contains("file.json"), "{e}"),
        },
        _ => {
            let bundle = Path::new(OsStr::from_bytes(body));
            if let Some(layout) = enrich::store_layout(&id, bundle) {
                assert!(!id.is_empty());
                assert_eq!(layout.containers_dir.join(&*id).join("userdata"), bundle);
                let driver = layout.containers_dir.file_name().unwrap().to_str().unwrap();
                let driver = driver.strip_suffix("-containers").unwrap();
                assert!(!driver.is_empty());
                assert_eq!(
                    layout.images_dir,
                    layout
                        .containers_dir
                        .parent()
                        .unwrap()
                        .join(format!("{driver}-images"))
                );
            }
            let s = String::from_utf8_lossy(body);
            match enrich::clean(&s) {
                None => assert!(s.is_empty() || s.chars().any(char::is_control)),
                Some(v) => {
                    assert!(s.starts_with(&v));
                    assert!(v.len() <= 1024 && v.len() + 4 > s.len().min(1024));
                }
            }
        }
    }
});
