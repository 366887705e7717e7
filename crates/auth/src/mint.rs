//! Signing access tokens: the login and refresh endpoints, `tollgate token mint`, and
//! the tests.
//!
//! Tokens follow RFC 9068 (JWT profile for OAuth 2.0 access tokens): header `typ` is
//! `at+jwt` and names its key (`kid`); claims `iss`, `aud`, `sub`, the client id,
//! `iat`, `exp`, a unique `jti` (so one token can be revoked), and `sid`, the login
//! session it came from (so a whole session can be).

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::random;

/// A signing key pinned to one algorithm.
pub struct SigningKey {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub(crate) key: EncodingKey,
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
    #[error(transparent)]
    Random(#[from] random::RandomError),
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

/// What goes into an access token.
#[derive(Debug, Clone)]
pub struct AccessToken<'a> {
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub subject: &'a str,
    /// The claim that carries the client id (`[jwt] client_id_claim`).
    pub client_id_claim: &'a str,
    /// The client id as a JSON string or integer: the type the legacy API gave it.
    pub client_id: &'a Value,
    pub issued_at: u64,
    pub expires_at: u64,
    /// `jti`: unique to this token.
    pub token_id: &'a str,
    /// `sid`: the login session (refresh-token family) the token was issued from.
    pub session: Option<&'a str>,
    /// `csh`: in cookie mode, the hash of the session's CSRF token, which binds the
    /// `X-CSRF-Token` a request sends to this token's session.
    pub csrf_hash: Option<&'a str>,
    /// More claims copied from the user record; they never replace the ones above.
    pub extra: Option<&'a Map<String, Value>>,
}

/// Signs an access token (RFC 9068: `typ` is `at+jwt`).
pub fn mint_access(token: &AccessToken, key: &SigningKey) -> Result<String, MintError> {
    let mut claims = Map::new();
    if let Some(extra) = token.extra {
        for (name, value) in extra {
            claims.insert(name.clone(), value.clone());
        }
    }
    for (name, value) in [
        ("iss", token.issuer),
        ("aud", token.audience),
        ("sub", Some(token.subject)),
        ("jti", Some(token.token_id)),
        ("sid", token.session),
        ("csh", token.csrf_hash),
    ] {
        match value {
            Some(v) => claims.insert(name.to_owned(), Value::String(v.to_owned())),
            None => claims.remove(name),
        };
    }
    claims.insert(token.client_id_claim.to_owned(), token.client_id.clone());
    claims.insert("iat".into(), Value::from(token.issued_at));
    claims.insert("exp".into(), Value::from(token.expires_at));
    let mut header = Header::new(key.algorithm);
    header.typ = Some("at+jwt".into());
    header.kid = key.kid.clone();
    jsonwebtoken::encode(&header, &Value::Object(claims), &key.key)
        .map_err(|e| MintError::Signing(e.to_string()))
}

/// Signs exactly `claims` (RFC 9068 header): for `tollgate test`, whose cases write the
/// claims they mean to try, an expired or foreign one included.
pub fn mint_claims(claims: &Map<String, Value>, key: &SigningKey) -> Result<String, MintError> {
    let mut header = Header::new(key.algorithm);
    header.typ = Some("at+jwt".into());
    header.kid = key.kid.clone();
    jsonwebtoken::encode(&header, claims, &key.key).map_err(|e| MintError::Signing(e.to_string()))
}

/// What `tollgate token mint` puts in a token.
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

/// A token for an operator or a test: no session, a fresh `jti`, the client id as the
/// subject unless one is given.
pub fn mint(spec: &TokenSpec, key: &SigningKey) -> Result<String, MintError> {
    let token_id = random::token(16)?;
    let client_id = Value::String(spec.client_id.to_owned());
    mint_access(
        &AccessToken {
            issuer: spec.issuer,
            audience: spec.audience,
            subject: spec.subject.unwrap_or(spec.client_id),
            client_id_claim: spec.client_id_claim,
            client_id: &client_id,
            issued_at: spec.issued_at,
            expires_at: spec.issued_at.saturating_add(spec.ttl_secs),
            token_id: &token_id,
            session: None,
            csrf_hash: None,
            extra: None,
        },
        key,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{verify, Rules, VerifyKey};
    use std::sync::Arc;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn rules() -> Rules {
        Rules {
            issuer: Some("gw".into()),
            audience: Some("api".into()),
            leeway_secs: 0,
            max_token_bytes: 8192,
            client_id_claim: "clientId".into(),
        }
    }

    #[test]
    fn access_tokens_follow_rfc_9068_and_verify() {
        let key = SigningKey::from_secret(Some("k1".into()), Algorithm::HS256, SECRET);
        let mut extra = Map::new();
        extra.insert("name".into(), Value::String("Acme".into()));
        // A user field may not stand in for a registered claim.
        extra.insert("sub".into(), Value::String("someone-else".into()));
        extra.insert("clientId".into(), Value::from(9));
        let token = mint_access(
            &AccessToken {
                issuer: Some("gw"),
                audience: Some("api"),
                subject: "demo@acme.test",
                client_id_claim: "clientId",
                client_id: &Value::from(1001),
                issued_at: 1_000,
                expires_at: 2_000,
                token_id: "t1",
                session: Some("s1"),
                csrf_hash: None,
                extra: Some(&extra),
            },
            &key,
        )
        .unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.kid.as_deref(), Some("k1"));
        let verify_key =
            Arc::new(VerifyKey::from_secret(Some("k1".into()), Algorithm::HS256, SECRET).unwrap());
        let claims = verify(&token, [&verify_key].into_iter(), &rules(), 1_500).unwrap();
        assert_eq!(claims.client_id, "1001");
        assert!(claims.client_id_is_integer);
        assert_eq!(claims.subject.as_deref(), Some("demo@acme.test"));
        assert_eq!(claims.session.as_deref(), Some("s1"));
        assert_eq!(claims.token_id.as_deref(), Some("t1"));
        assert_eq!(claims.expires_at, 2_000);
    }

    #[test]
    fn every_minted_token_has_its_own_id() {
        let key = SigningKey::from_secret(None, Algorithm::HS256, SECRET);
        let spec = TokenSpec {
            client_id_claim: "clientId",
            client_id: "1001",
            subject: None,
            issuer: Some("gw"),
            audience: Some("api"),
            issued_at: 1_000,
            ttl_secs: 60,
        };
        let a = mint(&spec, &key).unwrap();
        let b = mint(&spec, &key).unwrap();
        let verify_key = Arc::new(VerifyKey::from_secret(None, Algorithm::HS256, SECRET).unwrap());
        let ca = verify(&a, [&verify_key].into_iter(), &rules(), 1_010).unwrap();
        let cb = verify(&b, [&verify_key].into_iter(), &rules(), 1_010).unwrap();
        assert!(ca.token_id.is_some());
        assert_ne!(ca.token_id, cb.token_id);
        assert_eq!(ca.subject.as_deref(), Some("1001"));
        assert_eq!(ca.session, None);
    }
}
