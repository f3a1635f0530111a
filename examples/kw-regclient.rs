//! A stand-in for a registry client or image builder, for the end-to-end
//! tests of the behaviour rule: it reads its login (a credential file),
//! optionally waits, and writes a gzip-compressed "layer" that holds none
//! of it. Real clients (crane, skopeo, buildah) do the same: read
//! `~/.docker/config.json`, then write compressed layers.
//!
//! Usage: `kw-regclient LOGIN_FILE LAYER_OUT [WAIT_MS]`.

use std::io::Write;

/// CRC-32 (IEEE), as gzip's trailer needs.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A gzip member holding `data` in stored (uncompressed) deflate blocks.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(65_535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(c) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: kw-regclient LOGIN_FILE LAYER_OUT [WAIT_MS]");
        std::process::exit(2);
    }
    let login = std::fs::read(&args[1]).unwrap_or_else(|e| {
        eprintln!("kw-regclient: read {}: {e}", args[1]);
        std::process::exit(1)
    });
    if let Some(ms) = args.get(3).and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let layer: Vec<u8> = (0..16_384u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut f = std::fs::File::create(&args[2]).unwrap_or_else(|e| {
        eprintln!("kw-regclient: create {}: {e}", args[2]);
        std::process::exit(1)
    });
    f.write_all(&gzip(&layer)).expect("write the layer");
    println!("pushed a layer ({} login bytes used)", login.len());
}
