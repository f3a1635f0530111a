//! The ECS JSON lines sink: one alert object per line, appended.
//!
//! The file is opened in append mode. Before each write the sink checks
//! that the path still names the open file, and reopens it if not, so log
//! rotation (rename + new file) and a deleted file or directory heal on the
//! next alert instead of writing into an unlinked inode. Any write error
//! also forces a reopen.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use serde_json::Value;

use super::{Buffered, Transport};

#[derive(Debug)]
pub(super) struct AppendFile {
    path: PathBuf,
    file: Option<File>,
}

impl Transport for AppendFile {
    fn send(&mut self, record: &[u8]) -> std::io::Result<()> {
        if let Some(f) = &self.file {
            let same = match (f.metadata(), fs::metadata(&self.path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if !same {
                self.file = None;
            }
        }
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .open(&self.path)?,
            );
        }
        let f = self.file.as_mut().expect("opened above");
        let before = f.metadata().map(|m| m.len());
        // One write per line: O_APPEND makes each line land whole.
        let r = f.write_all(record);
        if r.is_err() {
            // A full filesystem can take part of a line before ENOSPC: cut
            // it off again, so the retry lands whole and the file stays one
            // JSON object per line.
            if let Ok(len) = before {
                let _ = f.set_len(len);
            }
            self.file = None;
        }
        r
    }
}

/// The JSON lines sink.
pub struct JsonSink {
    /// Delivery, retry and counters (see [`Buffered`]).
    pub(super) out: Buffered<AppendFile>,
}

impl JsonSink {
    pub fn new(path: PathBuf) -> Self {
        Self {
            out: Buffered::new(AppendFile { path, file: None }),
        }
    }

    pub fn deliver(&mut self, doc: &Value) {
        let mut line = serde_json::to_vec(doc).unwrap_or_default();
        line.push(b'\n');
        self.out.deliver(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn appends_lines_and_recovers_when_the_directory_returns() {
        let tmp = crate::testdir::TempDir::new("json");
        let dir = tmp.path().to_path_buf();
        let path = dir.join("sub/alerts.json");
        let mut s = JsonSink::new(path.clone());
        s.deliver(&json!({"a": 1}));
        s.deliver(&json!({"a": 2}));
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        // Rotation: the file is renamed away; the next alert goes to a new
        // file at the configured path, not into the renamed one.
        fs::rename(&path, dir.join("sub/alerts.json.1")).unwrap();
        s.deliver(&json!({"a": 3}));
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 1);
        // The whole directory vanishes: it is recreated.
        fs::remove_dir_all(&dir).unwrap();
        s.deliver(&json!({"a": 4}));
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"a\":4"), "{text}");
        assert_eq!(s.out.stats().delivered, 4);
    }
}
