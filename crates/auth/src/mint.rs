//! Signing access tokens: for `tollgate token mint`, the tests, and later the login.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use thiserror::Error;

/// A signing key pinned to one algorithm.
pub struct SigningKey {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    key: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Error)]
pub enum MintError {
    #[error("the signing key is not a valid {0} private key: {1}")]
    BadKey(&'static str, String),
    #[error("signing failed: {0}")]
    Signing(String),
}

impl SigningKey {
    pub fn from_secret(kid: Option<String>, algorithm: Algorithm, secret: &[u8]) -> Self {
        SigningKey {
            kid,
            algorithm,
            key: EncodingKey::from_secret(secret),
        }
    }

    /// A private key in PEM (PKCS#8, or PKCS#1 for RSA).
    pub fn from_pem(
        kid: Option<String>,
        algorithm: Algorithm,
        pem: &[u8],
    ) -> Result<Self, MintError> {
        let (key, kind) = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                return Ok(Self::from_secret(kid, algorithm, pem))
            }
            Algorithm::ES256 | Algorithm::ES384 => (EncodingKey::from_ec_pem(pem), "EC"),
            Algorithm::EdDSA => (EncodingKey::from_ed_pem(pem), "Ed25519"),
            _ => (EncodingKey::from_rsa_pem(pem), "RSA"),
        };
        let key = key.map_err(|e| MintError::BadKey(kind, e.to_string()))?;
        Ok(SigningKey {
            kid,
            algorithm,
            key,
        })
    }
}

/// What to put in a token.
#[derive(Debug, Clone)]
pub struct TokenSpec<'a> {
    pub client_id_claim: &'a str,
    pub client_id: &'a str,
    pub subject: Option<&'a str>,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub issued_at: u64,
    pub ttl_secs: u64,
}

pub fn mint(spec: &TokenSpec, key: &SigningKey) -> Result<String, MintError> {
    let mut claims = json!({
        "iat": spec.issued_at,
        "exp": spec.issued_at.saturating_add(spec.ttl_secs),
    });
    if let Value::Object(map) = &mut claims {
        map.insert(
            spec.client_id_claim.to_owned(),
            Value::String(spec.client_id.to_owned()),
        );
        for (name, value) in [
            ("sub", spec.subject),
            ("iss", spec.issuer),
            ("aud", spec.audience),
        ] {
            if let Some(v) = value {
                map.insert(name.to_owned(), Value::String(v.to_owned()));
            }
        }
    }
    let mut header = Header::new(key.algorithm);
    header.kid = key.kid.clone();
    jsonwebtoken::encode(&header, &claims, &key.key).map_err(|e| MintError::Signing(e.to_string()))
}
