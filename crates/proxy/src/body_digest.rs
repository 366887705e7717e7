//! The digest of a request body that streams through unread (part of stage 7, meter):
//! what tells an idempotent request's retry with another upload from the same one.
//! [`crate::body::Outbound`] feeds it as the body passes; a retry's body is fed as it is
//! read and let go.

use sha2::{Digest as _, Sha256};
use tokio::sync::oneshot;

/// Where the digest of a streamed body goes once all of it has passed (lowercase hex);
/// dropped unsent when the body was cut off.
pub type BodyDigest = oneshot::Sender<String>;

/// Where a claim waits for it: a backend may answer before the whole upload has passed.
pub type AwaitedDigest = oneshot::Receiver<String>;

/// The digest of a streamed request body, fed as it passes, in any chunking. With a
/// multipart boundary, the delimiters are left out: what is hashed is the body without
/// them, and apart, where in that they were. So the same form data under two boundaries
/// (a browser picks a new one for each send) hashes the same, while a byte changed,
/// added or moved, or a delimiter moved, hashes otherwise. A delimiter is the boundary
/// after a line break (RFC 2046 §5.1.1), or at the very start: the boundary's text
/// inside a value (`pay x--AAA`) is content, or two different values, each holding its
/// own request's boundary, would hash alike.
pub struct BodyHasher {
    content: Sha256,
    /// Where the boundary occurred, as offsets into what `content` was fed.
    places: Sha256,
    /// `CRLF--boundary`, if the body is multipart.
    needle: Option<Vec<u8>>,
    /// The tail of what came so far that may begin an occurrence (shorter than it).
    carry: Vec<u8>,
    hashed: u64,
}

impl BodyHasher {
    pub fn new(boundary: Option<&str>) -> BodyHasher {
        BodyHasher {
            content: Sha256::new(),
            places: Sha256::new(),
            needle: boundary.map(|b| [b"\r\n--", b.as_bytes()].concat()),
            // A line break before the body, so a delimiter that opens it is found like
            // any other (every body gets it: digests compare alike).
            carry: if boundary.is_some() {
                b"\r\n".to_vec()
            } else {
                Vec::new()
            },
            hashed: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        let Some(needle) = &self.needle else {
            self.content.update(data);
            return;
        };
        self.carry.extend_from_slice(data);
        let mut start = 0;
        while let Some(at) = memchr::memmem::find(&self.carry[start..], needle) {
            self.content.update(&self.carry[start..start + at]);
            self.hashed += at as u64;
            self.places.update(self.hashed.to_le_bytes());
            start += at + needle.len();
        }
        // What could still begin an occurrence waits for the next bytes.
        let keep = self.carry.len().saturating_sub(needle.len() - 1).max(start);
        self.content.update(&self.carry[start..keep]);
        self.hashed += (keep - start) as u64;
        self.carry.drain(..keep);
    }

    /// The digest, lowercase hex.
    pub fn finish(mut self) -> String {
        self.content.update(&self.carry);
        let mut both = Sha256::new();
        both.update(self.content.finalize());
        both.update(self.places.finalize());
        crate::trace_context::hex(&both.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(body: &[u8], boundary: Option<&str>, chunk: usize) -> String {
        let mut hasher = BodyHasher::new(boundary);
        body.chunks(chunk.max(1)).for_each(|c| hasher.update(c));
        hasher.finish()
    }

    fn form(boundary: &str, name: &str) -> Vec<u8> {
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{name}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.csv\"\r\n\r\nname,phone\r\nAda,1\r\n--{boundary}--\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn a_body_digest_is_the_same_in_any_chunking_and_under_any_boundary() {
        let chrome = "----WebKitFormBoundary7MA4YWxkTrZu0gW";
        let body = form(chrome, "Spring");
        let whole = digest(&body, Some(chrome), body.len());
        for chunk in 1..=64 {
            assert_eq!(
                digest(&body, Some(chrome), chunk),
                whole,
                "chunks of {chunk}"
            );
        }
        // The same form data as curl or Firefox would frame it.
        for other in ["------------------------d74496d66958873e", "a"] {
            assert_eq!(digest(&form(other, "Spring"), Some(other), 7), whole);
        }
        // Anything else differs: a byte, a byte moved across a boundary, the boundary
        // left out, or the body hashed as if it were not multipart.
        assert_ne!(digest(&form(chrome, "Sprint"), Some(chrome), 7), whole);
        let moved =
            String::from_utf8(body.clone())
                .unwrap()
                .replacen("Spring\r\n--", "Sprin\r\n--g", 1);
        assert_ne!(digest(moved.as_bytes(), Some(chrome), 7), whole);
        let dropped =
            String::from_utf8(body.clone())
                .unwrap()
                .replacen(&format!("--{chrome}\r\n"), "", 1);
        assert_ne!(digest(dropped.as_bytes(), Some(chrome), 7), whole);
        assert_ne!(digest(&body, None, 7), whole);
        // A value holding its own request's boundary is content, not a delimiter: two
        // different values do not hash alike, the same value under two boundaries does.
        let value = |b: &str, v: &str| {
            format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n{v}\r\n--{b}--\r\n"
            )
            .into_bytes()
        };
        let aaa = digest(&value("AAA", "pay x--AAA"), Some("AAA"), 5);
        assert_ne!(digest(&value("BBB", "pay x--BBB"), Some("BBB"), 5), aaa);
        assert_eq!(digest(&value("CCC", "pay x--AAA"), Some("CCC"), 5), aaa);
        // Without a boundary: any chunking, and a plain SHA-256 of the bytes.
        let csv = b"name,phone\nAda,1\n";
        assert_eq!(digest(csv, None, 1), digest(csv, None, csv.len()));
        assert_eq!(
            digest(csv, None, 3),
            crate::trace_context::hex(&{
                let mut both = Sha256::new();
                both.update(Sha256::digest(csv));
                both.update(Sha256::new().finalize());
                both.finalize()
            })
        );
    }
}
