//! Refresh tokens: opaque to the client, `<session id>.<256-bit secret>` in base64url.
//!
//! The session id says which family to look in. It is not secret, since access tokens
//! carry it as `sid`. The secret is what proves possession, and the store keeps only
//! [`hash`]es of whole tokens.
//!
//! A rotation's successor is kept **sealed** for the grace answer: its secret XORed
//! with SHA-256 of a label and the token it replaces. Only a caller holding the
//! replaced token can unseal it. The store alone, or a copy of it, holds nothing
//! usable.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::random::{self, RandomError};

const SEAL_LABEL: &[u8] = b"tollgate refresh-token grace seal v1";

/// Session ids are 16 random bytes: 22 base64url characters.
const SESSION_ID_LEN: usize = 22;
/// Secrets are 32 random bytes: 43 base64url characters.
const SECRET_LEN: usize = 43;

/// A new session id.
pub fn new_session_id() -> Result<String, RandomError> {
    random::token(16)
}

/// A new refresh token of session `session`.
pub fn issue(session: &str) -> Result<String, RandomError> {
    Ok(format!("{session}.{}", random::token(32)?))
}

/// The session a well-formed token belongs to; `None` for anything else.
pub fn session_of(token: &str) -> Option<&str> {
    let (session, secret) = token.split_once('.')?;
    let b64 = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (b64(session, SESSION_ID_LEN) && b64(secret, SECRET_LEN)).then_some(session)
}

/// Whether `text` holds something shaped like a refresh token anywhere (whatever is
/// around it: `rt=<token>`, quotes, a JSON wrapper, more base64url on either side), for
/// the logs that must not keep one. A shape only: it says nothing of a session.
pub fn appears_in(text: &str) -> bool {
    // The shortest text that can hold one, and it has a `.`: most hold neither.
    if text.len() < SESSION_ID_LEN + 1 + SECRET_LEN {
        return false;
    }
    text.match_indices('.').any(|(at, _)| {
        at.checked_sub(SESSION_ID_LEN)
            .and_then(|start| text.get(start..at + 1 + SECRET_LEN))
            .is_some_and(|candidate| session_of(candidate).is_some())
    })
}

/// What the store keeps of a token: SHA-256, hex.
pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn pad(replaced: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(SEAL_LABEL);
    h.update(replaced.as_bytes());
    h.finalize().into()
}

/// `next`'s secret sealed with `replaced` (hex). `None` if `next` is malformed.
pub fn seal(next: &str, replaced: &str) -> Option<String> {
    session_of(next)?;
    let (_, secret) = next.split_once('.')?;
    let secret = URL_SAFE_NO_PAD.decode(secret).ok()?;
    let pad = pad(replaced);
    let sealed: Vec<u8> = secret.iter().zip(pad).map(|(a, b)| a ^ b).collect();
    Some(hex(&sealed))
}

/// The token `seal(next, replaced)` sealed, given `replaced`.
pub fn unseal(sealed: &str, replaced: &str) -> Option<String> {
    let session = session_of(replaced)?;
    let bytes = unhex(sealed)?;
    if bytes.len() != 32 {
        return None;
    }
    let secret: Vec<u8> = bytes
        .iter()
        .zip(pad(replaced))
        .map(|(a, b)| a ^ b)
        .collect();
    Some(format!("{session}.{}", URL_SAFE_NO_PAD.encode(secret)))
}

/// Lower-case hex, two digits a byte.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_wherever_they_are_in_a_text() {
        let token = issue(&new_session_id().unwrap()).unwrap();
        for text in [
            token.clone(),
            format!("rt={token}"),
            format!("\"{token}\""),
            format!("{{\"refreshToken\":\"{token}\"}}"),
            format!("xx{token}yy"),
            format!("a.b.{token}.c"),
        ] {
            assert!(appears_in(&text), "{text}");
        }
        let (session, secret) = token.split_once('.').unwrap();
        for text in [
            format!("{}.{secret}", &session[1..]),
            format!("{session}.{}", &secret[1..]),
            format!("{session}:{secret}"),
            format!("{session}.{}+{}", &secret[..20], &secret[21..]),
            "www.example.com/some/ordinary/path.html?with=words.and.dots".to_owned(),
            "é".repeat(40) + "." + &"é".repeat(40),
        ] {
            assert!(!appears_in(&text), "{text}");
        }
    }

    #[test]
    fn tokens_name_their_session_and_nothing_else_parses() {
        let session = new_session_id().unwrap();
        let token = issue(&session).unwrap();
        assert_eq!(session_of(&token), Some(session.as_str()));
        assert_ne!(issue(&session).unwrap(), token);
        for bad in [
            "",
            "abc",
            &format!("{session}."),
            &format!("{session}.{}", "a".repeat(42)),
            &format!("{session}.{}", "+".repeat(43)),
            &format!("x{session}.{}", "a".repeat(43)),
        ] {
            assert_eq!(session_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_the_replaced_token_unseals_its_successor() {
        let session = new_session_id().unwrap();
        let old = issue(&session).unwrap();
        let next = issue(&session).unwrap();
        let sealed = seal(&next, &old).unwrap();
        assert_eq!(sealed.len(), 64);
        assert_eq!(unseal(&sealed, &old).as_deref(), Some(next.as_str()));
        let other = issue(&session).unwrap();
        let wrong = unseal(&sealed, &other).unwrap();
        assert_ne!(wrong, next);
        assert_ne!(hash(&wrong), hash(&next));
        assert_eq!(hash(&next).len(), 64);
    }
}
