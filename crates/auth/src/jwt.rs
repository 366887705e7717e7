//! Access-token verification.
//!
//! Every key is pinned to its algorithms: one, or several of one family (RS256 and PS256
//! with one RSA key). A token's `kid` is only a lookup into the configured keys; `jku`,
//! `x5u`, `jwk` and `x5c` are never fetched or trusted. A token whose `alg` is not one of
//! its key's is refused, so an RSA public key can never be used as an HMAC secret. The signature is checked by `jsonwebtoken`; every claim rule is
//! checked here against a clock the caller passes in.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, KeyOperations, PublicKeyUse};
pub use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use thiserror::Error;

use crate::claims::UniqueObject;

/// Why a token was refused. Each maps to one public error code in the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JwtError {
    #[error("the token is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the request carries more than one `Authorization` header")]
    RepeatedAuthorization,
    #[error("the token's payload is not one JSON object naming each claim once")]
    BadPayload,
    #[error("the token header is invalid: {0}")]
    BadHeader(&'static str),
    #[error("the token names a critical extension this gateway does not understand")]
    UnsupportedCritical,
    #[error("no configured key matches the token's kid")]
    UnknownKey,
    #[error("the token's algorithm does not match its key")]
    AlgorithmMismatch,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token lacks the required `{0}` claim")]
    MissingClaim(String),
    #[error("the `{0}` claim is malformed")]
    BadClaim(String),
    #[error("the token was issued by an issuer this gateway does not accept")]
    IssuerMismatch,
    #[error("the token is not meant for this audience")]
    AudienceMismatch,
}

/// A verification key pinned to its algorithms: one, or several of one family (an RSA
/// key that an issuer uses for RS256 and PS256), never across families.
pub struct VerifyKey {
    pub kid: Option<String>,
    /// The first is the key's own; the rest were allowed with [`VerifyKey::allow`].
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// Why a key could not be loaded.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("{0:?} needs a shared secret (secret_env or secret_file), not a public key")]
    NeedsSecret(Algorithm),
    #[error("{0:?} needs a PEM public key (public_key_file), not a shared secret")]
    NeedsPublicKey(Algorithm),
    #[error("the shared secret is shorter than 32 bytes")]
    SecretTooShort,
    #[error("the key is not a valid {expected} key: {reason}")]
    Invalid {
        expected: &'static str,
        reason: String,
    },
    #[error("{0:?} is not supported")]
    Unsupported(Algorithm),
    #[error("the JWK has no `alg` and none is configured for it")]
    JwkWithoutAlgorithm,
    #[error("the JWK is not for verifying signatures (its `use` or `key_ops` says so)")]
    NotForSignatures,
    #[error("the RSA key has {0} bits: at least 2048 are needed (a shorter one can be factored and tokens forged)")]
    RsaTooShort(usize),
    #[error(
        "{0:?} and {1:?} cannot share one key: a key verifies algorithms of its own family only"
    )]
    MixedFamilies(Algorithm, Algorithm),
}

/// Refuses an RSA modulus (base64url, as a JWK's `n`) shorter than 2048 bits.
fn check_rsa_modulus(n: &str) -> Result<(), KeyError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(n.trim_end_matches('='))
        .map_err(|e| KeyError::Invalid {
            expected: "RSA",
            reason: e.to_string(),
        })?;
    let significant = bytes.iter().skip_while(|b| **b == 0).count();
    let bits = significant * 8
        - bytes
            .iter()
            .find(|b| **b != 0)
            .map_or(0, |b| b.leading_zeros() as usize);
    if bits < 2048 {
        return Err(KeyError::RsaTooShort(bits));
    }
    Ok(())
}

/// Algorithms that can share one key: the same secret, the same RSA key, the same curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    P256,
    P384,
    Ed25519,
    Other,
}

fn family(alg: Algorithm) -> Family {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Family::Rsa,
        Algorithm::ES256 => Family::P256,
        Algorithm::ES384 => Family::P384,
        Algorithm::EdDSA => Family::Ed25519,
        _ => Family::Other,
    }
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl VerifyKey {
    /// An HMAC key (`HS256`/`HS384`/`HS512`); the secret must be at least 32 bytes.
    pub fn from_secret(
        kid: Option<String>,
        algorithm: Algorithm,
        secret: &[u8],
    ) -> Result<Self, KeyError> {
        if !is_hmac(algorithm) {
            return Err(KeyError::NeedsPublicKey(algorithm));
        }
        if secret.len() < 32 {
            return Err(KeyError::SecretTooShort);
        }
        Ok(VerifyKey {
            kid,
            algorithms: vec![algorithm],
            key: DecodingKey::from_secret(secret),
        })
    }

    /// A public key in PEM for an RSA, ECDSA or EdDSA algorithm.
    pub fn from_pem(
        kid: Option<String>,
        algorithm: Algorithm,
        pem: &[u8],
    ) -> Result<Self, KeyError> {
        let (key, expected) = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                return Err(KeyError::NeedsSecret(algorithm))
            }
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => (DecodingKey::from_rsa_pem(pem), "RSA public"),
            Algorithm::ES256 | Algorithm::ES384 => (DecodingKey::from_ec_pem(pem), "EC public"),
            Algorithm::EdDSA => (DecodingKey::from_ed_pem(pem), "Ed25519 public"),
            _ => return Err(KeyError::Unsupported(algorithm)),
        };
        let key = key.map_err(|e| KeyError::Invalid {
            expected,
            reason: e.to_string(),
        })?;
        let verify_key = VerifyKey {
            kid,
            algorithms: vec![algorithm],
            key,
        };
        verify_key.check_curve(pem)?;
        if family(algorithm) == Family::Rsa {
            let jwk = Jwk::from_decoding_key(&verify_key.key, Some(algorithm)).map_err(|e| {
                KeyError::Invalid {
                    expected,
                    reason: e.to_string(),
                }
            })?;
            if let AlgorithmParameters::RSA(rsa) = &jwk.algorithm {
                check_rsa_modulus(&rsa.n)?;
            }
        }
        Ok(verify_key)
    }

    /// A key from a JWKS entry; `alg` comes from the JWK or else from `default_algorithm`.
    pub fn from_jwk(jwk: &Jwk, default_algorithm: Option<Algorithm>) -> Result<Self, KeyError> {
        let algorithm = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok())
            .or(default_algorithm)
            .ok_or(KeyError::JwkWithoutAlgorithm)?;
        if is_hmac(algorithm) {
            // Symmetric keys are never accepted from a key set fetched over the network.
            return Err(KeyError::NeedsSecret(algorithm));
        }
        // RFC 7517 §4.2, §4.3: a key published for encryption is not a signing key.
        let for_signatures = !matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        ) && jwk
            .common
            .key_operations
            .as_ref()
            .is_none_or(|ops| ops.contains(&KeyOperations::Verify));
        if !for_signatures {
            return Err(KeyError::NotForSignatures);
        }
        if let AlgorithmParameters::RSA(rsa) = &jwk.algorithm {
            check_rsa_modulus(&rsa.n)?;
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| KeyError::Invalid {
            expected: "JWK",
            reason: e.to_string(),
        })?;
        Ok(VerifyKey {
            kid: jwk.common.key_id.clone(),
            algorithms: vec![algorithm],
            key,
        })
    }

    /// The key's public half as a JWK (with its `kid` and algorithm), for publishing in a
    /// key set; `None` for an HMAC secret, which is never published.
    pub fn public_jwk(&self) -> Option<Jwk> {
        if is_hmac(self.algorithm()) {
            return None;
        }
        let mut jwk = Jwk::from_decoding_key(&self.key, Some(self.algorithm())).ok()?;
        jwk.common.key_id = self.kid.clone();
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        Some(jwk)
    }

    /// The key's own algorithm (the one it was loaded for, and signs with).
    pub fn algorithm(&self) -> Algorithm {
        self.algorithms[0]
    }

    /// Every algorithm the key verifies.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// Lets the key verify `more` algorithms too, each of the key's own family: an RSA
    /// key may serve RS256 and PS256, never HS256 (that would make the public key an
    /// HMAC secret).
    pub fn allow(mut self, more: &[Algorithm]) -> Result<Self, KeyError> {
        let own = self.algorithm();
        for alg in more {
            if family(*alg) != family(own) || family(own) == Family::Other {
                return Err(KeyError::MixedFamilies(own, *alg));
            }
            if !self.algorithms.contains(alg) {
                self.algorithms.push(*alg);
            }
        }
        Ok(self)
    }

    /// ES256 needs a P-256 key and ES384 a P-384 key; `jsonwebtoken` would otherwise
    /// only notice at verification time.
    fn check_curve(&self, pem: &[u8]) -> Result<(), KeyError> {
        // P-256 SPKI DER is 91 bytes, P-384 is 120; the PEM text grows with them.
        let text = String::from_utf8_lossy(pem);
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let der_len = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map(|d| d.len())
            .unwrap_or(0);
        let ok = match self.algorithm() {
            Algorithm::ES256 => der_len == 91,
            Algorithm::ES384 => der_len == 120,
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(KeyError::Invalid {
                expected: if self.algorithm() == Algorithm::ES256 {
                    "P-256 public"
                } else {
                    "P-384 public"
                },
                reason: "the key is on another curve".into(),
            })
        }
    }
}

/// Whether `verify` accepts what `signing` signs. A private key configured beside the
/// wrong public key would mint tokens that nobody, the gateway included, accepts.
pub fn signs_for(signing: &crate::mint::SigningKey, verify: &VerifyKey) -> bool {
    if !verify.algorithms.contains(&signing.algorithm) {
        return false;
    }
    let header = jsonwebtoken::Header::new(signing.algorithm);
    let Ok(token) = jsonwebtoken::encode(&header, &serde_json::json!({"probe": 1}), &signing.key)
    else {
        return false;
    };
    let mut validation = Validation::new(signing.algorithm);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(&token, &verify.key, &validation).is_ok()
}

/// The claim rules every token must satisfy.
#[derive(Debug, Clone)]
pub struct Rules {
    /// When set, `iss` is required and must equal it.
    pub issuer: Option<String>,
    /// When set, `aud` is required and must contain it.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_secs: u64,
    pub max_token_bytes: usize,
    /// The claim that carries the caller's client id.
    pub client_id_claim: String,
}

/// What a verified token says about its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub client_id: String,
    /// Whether the claim was a JSON integer (`"clientId": 42`) rather than a string; a
    /// JSON body gets the id in the same type.
    pub client_id_is_integer: bool,
    pub subject: Option<String>,
    /// `exp`, in seconds since the epoch.
    pub expires_at: u64,
    pub key_id: Option<String>,
    /// `sid`: the login session a token the gateway issued belongs to.
    pub session: Option<String>,
    /// `jti`: the token's own id; for a token without one, the SHA-256 of the token
    /// (`sha256:…`), so that it can be revoked alone all the same.
    pub token_id: Option<String>,
    /// `csh`: the hash of its session's CSRF token (cookie mode).
    pub csrf_hash: Option<String>,
}

/// The parts of the header that matter, read strictly.
struct Header {
    alg: Algorithm,
    kid: Option<String>,
}

fn read_header(token: &str) -> Result<Header, JwtError> {
    let encoded = token.split('.').next().ok_or(JwtError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| JwtError::Malformed)?;
    let UniqueObject(header) = serde_json::from_slice(&bytes)
        .map_err(|_| JwtError::BadHeader("not a JSON object with unique members"))?;
    if header.contains_key("crit") {
        return Err(JwtError::UnsupportedCritical);
    }
    if header.get("b64").is_some() {
        return Err(JwtError::UnsupportedCritical);
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::BadHeader("no alg"))?;
    let alg: Algorithm = alg
        .parse()
        .map_err(|_| JwtError::BadHeader("unsupported alg"))?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if k.len() <= 256 => Some(k.clone()),
        Some(_) => return Err(JwtError::BadHeader("kid must be a short string")),
    };
    // The verifier reads these with their registered types (RFC 7515 §4.1): one of
    // another type is the header's fault, and said so, not the payload's.
    let typed = [
        "typ", "cty", "jku", "x5u", "x5t", "x5t#S256", "enc", "zip", "url", "nonce",
    ]
    .iter()
    .all(|name| header.get(*name).is_none_or(Value::is_string))
        && header.get("jwk").is_none_or(Value::is_object)
        && header.get("x5c").is_none_or(|v| {
            v.as_array()
                .is_some_and(|certs| certs.iter().all(Value::is_string))
        });
    if !typed {
        return Err(JwtError::BadHeader(
            "typ, cty, jku, x5u, x5t, x5t#S256, enc, zip, url and nonce must be strings, jwk an object, x5c a list of strings",
        ));
    }
    Ok(Header { alg, kid })
}

/// Which configured keys may have signed a token with this header. With a `kid`, only
/// the key of that id; without, every key pinned to the token's algorithm.
fn candidates<'k>(
    header: &Header,
    keys: impl Iterator<Item = &'k Arc<VerifyKey>>,
) -> Result<Vec<&'k Arc<VerifyKey>>, JwtError> {
    let mut found = Vec::new();
    for key in keys {
        match (&header.kid, &key.kid) {
            (Some(want), Some(have)) if want == have => {
                if !key.algorithms.contains(&header.alg) {
                    return Err(JwtError::AlgorithmMismatch);
                }
                return Ok(vec![key]);
            }
            (None, _) if key.algorithms.contains(&header.alg) => found.push(key),
            _ => {}
        }
    }
    if found.is_empty() {
        return Err(if header.kid.is_some() {
            JwtError::UnknownKey
        } else {
            JwtError::AlgorithmMismatch
        });
    }
    Ok(found)
}

/// Verifies `token` against `keys` and `rules` at time `now` (seconds since the epoch).
pub fn verify<'k>(
    token: &str,
    keys: impl Iterator<Item = &'k Arc<VerifyKey>>,
    rules: &Rules,
    now: u64,
) -> Result<Claims, JwtError> {
    if token.len() > rules.max_token_bytes {
        return Err(JwtError::TooLarge(rules.max_token_bytes));
    }
    if token.split('.').count() != 3 {
        return Err(JwtError::Malformed);
    }
    let header = read_header(token)?;
    let mut last = JwtError::BadSignature;
    for key in candidates(&header, keys)? {
        // The header's algorithm, which `candidates` checked is one the key allows.
        let mut validation = Validation::new(header.alg);
        // Claims are checked below, against the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        match jsonwebtoken::decode::<UniqueObject>(token, &key.key, &validation) {
            Ok(data) => {
                let mut claims = check_claims(&data.claims.0, key.kid.clone(), rules, now)?;
                if claims.token_id.is_none() {
                    claims.token_id = Some(stand_in_token_id(token));
                }
                return Ok(claims);
            }
            Err(e) => {
                last = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => JwtError::BadSignature,
                    jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                        JwtError::AlgorithmMismatch
                    }
                    jsonwebtoken::errors::ErrorKind::Json(_) => JwtError::BadPayload,
                    _ => JwtError::Malformed,
                }
            }
        }
    }
    Err(last)
}

fn numeric_date(
    claims: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<u64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| *f >= 0.0 && f.is_finite())
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or_else(|| JwtError::BadClaim(name.into())),
    }
}

fn check_claims(
    claims: &serde_json::Map<String, Value>,
    key_id: Option<String>,
    rules: &Rules,
    now: u64,
) -> Result<Claims, JwtError> {
    let leeway = rules.leeway_secs;
    let exp = numeric_date(claims, "exp")?.ok_or_else(|| JwtError::MissingClaim("exp".into()))?;
    if now >= exp.saturating_add(leeway) {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if now.saturating_add(leeway) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(iat) = numeric_date(claims, "iat")? {
        if iat > now.saturating_add(leeway) {
            return Err(JwtError::IssuedInFuture);
        }
    }
    if let Some(issuer) = &rules.issuer {
        match claims.get("iss") {
            None => return Err(JwtError::MissingClaim("iss".into())),
            Some(Value::String(iss)) if iss == issuer => {}
            Some(_) => return Err(JwtError::IssuerMismatch),
        }
    }
    if let Some(audience) = &rules.audience {
        let matches = match claims.get("aud") {
            None => return Err(JwtError::MissingClaim("aud".into())),
            Some(Value::String(aud)) => aud == audience,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
            Some(_) => return Err(JwtError::BadClaim("aud".into())),
        };
        if !matches {
            return Err(JwtError::AudienceMismatch);
        }
    }
    let (client_id, client_id_is_integer) = match claims.get(&rules.client_id_claim) {
        None => return Err(JwtError::MissingClaim(rules.client_id_claim.clone())),
        Some(Value::String(s)) => (s.clone(), false),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => (n.to_string(), true),
        Some(_) => return Err(JwtError::BadClaim(rules.client_id_claim.clone())),
    };
    if !is_usable_client_id(&client_id) {
        return Err(JwtError::BadClaim(rules.client_id_claim.clone()));
    }
    let subject = match claims.get("sub") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(JwtError::BadClaim("sub".into())),
    };
    let short_string = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) if (1..=256).contains(&s.len()) => Ok(Some(s.clone())),
        Some(_) => Err(JwtError::BadClaim(name.into())),
    };
    Ok(Claims {
        client_id,
        client_id_is_integer,
        subject,
        expires_at: exp,
        key_id,
        session: short_string("sid")?,
        token_id: short_string("jti")?,
        csrf_hash: short_string("csh")?,
    })
}

/// The id a token without `jti` is known by (another issuer's may carry none): the
/// SHA-256 of the whole token, so that logging it out can revoke that token and no
/// other. A real `jti` is at most 256 characters of the issuer's choosing; this one
/// is marked so it cannot be mistaken for one an issuer wrote.
fn stand_in_token_id(token: &str) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "sha256:{}",
        crate::refresh::hex(&Sha256::digest(token.as_bytes()))
    )
}

/// Client ids are injected into headers, query strings and bodies: keep them to 1–128
/// characters that need no escaping anywhere.
pub fn is_usable_client_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/jwt/keys")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn rsa_keys_under_2048_bits_are_refused_wherever_they_come_from() {
        let weak = fixture("weak-rsa1024.pub.pem");
        assert!(matches!(
            VerifyKey::from_pem(None, Algorithm::RS256, &weak),
            Err(KeyError::RsaTooShort(1024))
        ));
        let strong = VerifyKey::from_pem(None, Algorithm::RS256, &fixture("rsa.pub.pem")).unwrap();
        let mut jwk = strong.public_jwk().unwrap();
        assert!(VerifyKey::from_jwk(&jwk, None).is_ok());
        let weak_jwk = Jwk::from_decoding_key(
            &DecodingKey::from_rsa_pem(&weak).unwrap(),
            Some(Algorithm::RS256),
        )
        .unwrap();
        assert!(matches!(
            VerifyKey::from_jwk(&weak_jwk, None),
            Err(KeyError::RsaTooShort(1024))
        ));
        // A key published for encryption is not a signing key (RFC 7517 §4.2, §4.3).
        jwk.common.public_key_use = Some(PublicKeyUse::Encryption);
        assert!(matches!(
            VerifyKey::from_jwk(&jwk, None),
            Err(KeyError::NotForSignatures)
        ));
        jwk.common.public_key_use = None;
        jwk.common.key_operations = Some(vec![KeyOperations::Encrypt]);
        assert!(matches!(
            VerifyKey::from_jwk(&jwk, None),
            Err(KeyError::NotForSignatures)
        ));
        jwk.common.key_operations = Some(vec![KeyOperations::Verify]);
        assert!(VerifyKey::from_jwk(&jwk, None).is_ok());
    }

    /// A registered header member of the wrong type is the header's fault, and said
    /// to be (the verifier's own header reader refused it as a payload error).
    #[test]
    fn header_members_of_the_wrong_type_are_header_errors() {
        let header = |json: &str| read_header(&format!("{}.e30.sig", URL_SAFE_NO_PAD.encode(json)));
        assert!(header(r#"{"alg":"HS256","typ":"JWT","x5c":["a"],"jwk":{}}"#).is_ok());
        for bad in [
            r#"{"alg":"HS256","typ":5}"#,
            r#"{"alg":"HS256","cty":null}"#,
            r#"{"alg":"HS256","jku":["x"]}"#,
            r#"{"alg":"HS256","x5t#S256":1}"#,
            r#"{"alg":"HS256","jwk":"k"}"#,
            r#"{"alg":"HS256","x5c":[1]}"#,
            r#"{"alg":"HS256","url":1}"#,
            r#"{"alg":"HS256","nonce":[1]}"#,
        ] {
            assert!(matches!(header(bad), Err(JwtError::BadHeader(_))), "{bad}");
        }
    }

    #[test]
    fn a_key_may_serve_several_algorithms_of_its_family_only() {
        let key = VerifyKey::from_secret(None, Algorithm::HS256, SECRET).unwrap();
        let key = key.allow(&[Algorithm::HS512]).unwrap();
        assert_eq!(key.algorithms(), &[Algorithm::HS256, Algorithm::HS512]);
        let key = VerifyKey::from_secret(None, Algorithm::HS256, SECRET).unwrap();
        assert!(matches!(
            key.allow(&[Algorithm::RS256]),
            Err(KeyError::MixedFamilies(Algorithm::HS256, Algorithm::RS256))
        ));
        assert_ne!(family(Algorithm::ES256), family(Algorithm::ES384));
        assert_eq!(family(Algorithm::RS256), family(Algorithm::PS512));
        assert_ne!(family(Algorithm::RS256), family(Algorithm::HS256));
    }

    #[test]
    fn the_client_id_claim_keeps_its_type() {
        let rules = Rules {
            issuer: None,
            audience: None,
            leeway_secs: 0,
            max_token_bytes: 8192,
            client_id_claim: "clientId".into(),
        };
        let claims = |v: Value| {
            let mut m = serde_json::Map::new();
            m.insert("exp".into(), Value::from(100u64));
            m.insert("clientId".into(), v);
            check_claims(&m, None, &rules, 10)
        };
        let c = claims(Value::from(42u64)).unwrap();
        assert_eq!((c.client_id.as_str(), c.client_id_is_integer), ("42", true));
        let c = claims(Value::from("42")).unwrap();
        assert_eq!(
            (c.client_id.as_str(), c.client_id_is_integer),
            ("42", false)
        );
        assert!(claims(Value::from(4.5)).is_err());
    }
}
