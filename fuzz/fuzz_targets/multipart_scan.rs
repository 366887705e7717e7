//! The streaming multipart scanner: in any chunking, it releases exactly the bytes it
//! was given (a prefix of them when it refuses), and the same refusal whatever the
//! chunking. The first two bytes choose the chunk size.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tollgate_proxy::internals::{Refusal, Scanner};

fn scan(body: &[u8], size: usize) -> (Vec<u8>, Option<Refusal>) {
    let names = vec!["clientId".to_owned(), "client_id".to_owned()];
    let mut scanner = Scanner::new("b0undary", &names, "1001", "POST");
    let mut out = Vec::new();
    for chunk in body.chunks(size.max(1)) {
        match scanner.feed(Bytes::copy_from_slice(chunk)) {
            Ok(parts) => parts.iter().for_each(|p| out.extend_from_slice(p)),
            Err(e) => return (out, Some(e)),
        }
    }
    match scanner.finish() {
        Ok(parts) => parts.iter().for_each(|p| out.extend_from_slice(p)),
        Err(e) => return (out, Some(e)),
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let size = usize::from(u16::from_le_bytes([data[0], data[1]])) % 97 + 1;
    let body = &data[2..];
    let (whole, whole_refusal) = scan(body, body.len().max(1));
    let (chunked, chunked_refusal) = scan(body, size);
    assert_eq!(whole_refusal, chunked_refusal, "chunking changed the verdict");
    for (out, refusal) in [(&whole, whole_refusal), (&chunked, chunked_refusal)] {
        assert!(body.starts_with(out), "released bytes are not the body's");
        if refusal.is_none() {
            assert_eq!(out.as_slice(), body, "an accepted body must pass whole");
        }
    }
    if !body.windows(10).any(|w| w == b"--b0undary") {
        assert_eq!(whole_refusal, None, "no part, nothing to refuse");
    }
});
