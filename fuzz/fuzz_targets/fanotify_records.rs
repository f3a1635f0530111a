//! fanotify event records as the daemon reads them from its groups.
//!
//! Input: a buffer of records. `parse_events` takes ownership of each
//! record's fd, so before parsing, the fd field of every record the parser
//! can reach is set to -1 (`FAN_NOFD`), stepping exactly as the parser
//! steps: fuzz input must never close a real descriptor of this process.
//!
//! Properties: no panic; never an fd; on success the bytes consumed are
//! within the buffer and what is left is shorter than one header, with at
//! most one event per header's worth of bytes; an error names an offset
//! inside the buffer.
#![no_main]

use keyward::watch::fanotify::{METADATA_LEN, ParseError, parse_events};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let mut off = 0usize;
    while buf.len() - off >= METADATA_LEN {
        buf[off + 16..off + 20].copy_from_slice(&(-1i32).to_ne_bytes());
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        // The parser stops at a record shorter than a header (an error),
        // so stepping by at least a header covers every record it reads.
        off = off.saturating_add(len.max(METADATA_LEN));
        if off > buf.len() {
            break;
        }
    }
    let mut out = Vec::new();
    match parse_events(&buf, &mut out) {
        Ok(used) => {
            assert!(used <= buf.len());
            assert!(buf.len() - used < METADATA_LEN);
            assert!(out.len() <= buf.len() / METADATA_LEN);
        }
        Err(ParseError::Length { offset, .. }) => assert!(offset < buf.len()),
        Err(ParseError::Version { found, expected }) => assert_ne!(found, expected),
    }
    assert!(
        out.iter().all(|e| e.fd.is_none()),
        "a fuzzed record gave an fd"
    );
});
