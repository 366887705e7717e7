//! Legacy API keys: stored as SHA-256 hashes, each mapped to a client id and a key id.
//!
//! A presented key is hashed and compared with every stored hash in constant time, with
//! no early exit, so neither the comparison nor the position of the match leaks timing.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// One stored key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// A name for the key that is safe to log and to use as a metric label.
    pub key_id: String,
    pub client_id: String,
    hash: [u8; 32],
}

impl ApiKey {
    /// `sha256_hex` is the lower-case hex SHA-256 of the key; `None` if it is not that.
    pub fn new(key_id: String, client_id: String, sha256_hex: &str) -> Option<Self> {
        Some(ApiKey {
            key_id,
            client_id,
            hash: decode_hex32(sha256_hex)?,
        })
    }
}

/// All configured keys.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

impl ApiKeys {
    pub fn new(keys: Vec<ApiKey>) -> Self {
        ApiKeys { keys }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The stored key matching `presented`, if any.
    pub fn find(&self, presented: &str) -> Option<&ApiKey> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.hash.ct_eq(&hash)) {
                found = Some(key);
            }
        }
        found
    }
}

/// The lower-case hex SHA-256 of a key, as the keys file stores it.
pub fn hash_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_by_hash() {
        let keys = ApiKeys::new(vec![
            ApiKey::new("a".into(), "1001".into(), &hash_hex("key-one")).unwrap(),
            ApiKey::new("b".into(), "1002".into(), &hash_hex("key-two")).unwrap(),
        ]);
        assert_eq!(
            keys.find("key-two").map(|k| k.client_id.as_str()),
            Some("1002")
        );
        assert!(keys.find("key-three").is_none());
        assert!(keys.find("").is_none());
    }

    #[test]
    fn refuses_bad_hashes() {
        assert!(ApiKey::new("a".into(), "1".into(), "abc").is_none());
        assert!(ApiKey::new("a".into(), "1".into(), &"zz".repeat(32)).is_none());
    }
}
