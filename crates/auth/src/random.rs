//! Unguessable identifiers from the operating system's generator: token ids, session
//! ids, refresh tokens, CSRF tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use thiserror::Error;

#[derive(Debug, Error)]
#[error("the operating system's random generator failed: {0}")]
pub struct RandomError(String);

/// `N` random bytes.
pub fn bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).map_err(|e| RandomError(e.to_string()))?;
    Ok(out)
}

/// `len` random bytes, base64url without padding.
pub fn token(len: usize) -> Result<String, RandomError> {
    let mut out = vec![0u8; len];
    getrandom::getrandom(&mut out).map_err(|e| RandomError(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(out))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_differ_and_have_the_asked_length() {
        let a = super::token(32).unwrap();
        let b = super::token(32).unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert_ne!(super::bytes::<16>().unwrap(), [0u8; 16]);
    }
}
