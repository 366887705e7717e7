//! Plivo V3 signatures: whatever the URL, parameters and nonce, a signature verifies
//! with its token and no other, one changed byte breaks it, and no header panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_auth::plivo;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('\u{1}');
    let url = fields.next().unwrap_or_default();
    let method = if fields.next().is_some_and(|m| m.len() % 2 == 0) {
        "GET"
    } else {
        "POST"
    };
    let nonce = fields.next().unwrap_or_default();
    let header = fields.next().unwrap_or_default();
    let params: Vec<(String, String)> = fields
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let token = b"MAZDQ1MTZIZGY3ZJG0ZTQ2YJQ0N2".to_vec();
    let signature = plivo::signature(&token, url, method, &params, nonce);
    assert!(plivo::verify(&[token.clone()], url, method, &params, nonce, &signature));
    assert!(!plivo::verify(&[b"another".to_vec()], url, method, &params, nonce, &signature));
    let mut altered = signature.clone().into_bytes();
    altered[0] = if altered[0] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).expect("base64 is ASCII");
    assert!(!plivo::verify(&[token.clone()], url, method, &params, nonce, &altered));
    let _ = plivo::verify(&[token], url, method, &params, nonce, header);
});
