//! ELF program headers and notes, read for the GNU build-id of every
//! executable a container runs or ships (an image's files are the
//! container author's to write).
//!
//! Input: a file's bytes, through `std::io::Cursor` (the parser takes any
//! `Read + Seek`).
//!
//! Properties: no panic; a build-id comes only from an ELF64
//! little-endian file, is bounded by the note segment limit (64 KiB) and
//! is bytes of the file; `is_elf` agrees; the answer does not depend on
//! where the reader was left.
#![no_main]

use std::io::{Cursor, Seek, SeekFrom};

use keyward::attribute::identity::{build_id, is_elf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut f = Cursor::new(data);
    let id = build_id(&mut f);
    assert_eq!(is_elf(&mut f), data.starts_with(b"\x7fELF"));
    let Some(id) = id else {
        return;
    };
    assert!(data.starts_with(b"\x7fELF\x02\x01"));
    assert!(id.len() <= 64 * 1024);
    assert!(id.is_empty() || data.windows(id.len()).any(|w| w == id));
    // The parser seeks where it reads: a reader left at the end gives the
    // same answer.
    f.seek(SeekFrom::End(0)).unwrap();
    assert_eq!(build_id(&mut f).as_deref(), Some(&id[..]));
});
