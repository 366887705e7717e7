//! Tollgate's credentials: what proves who a caller is.
//!
//! - [`jwt`]: verifying access tokens against pinned keys (static or from a JWKS), with
//!   every claim rule checked against an injected clock; [`cache`] remembers verified
//!   tokens until they expire; [`mint`] signs access tokens (login, refresh, operators,
//!   tests); [`random`] makes the unguessable ids they and the sessions carry;
//!   [`refresh`] makes, hashes and seals refresh tokens.
//! - [`bearer`]: the `Bearer` scheme of an `Authorization` value, its name compared
//!   case-insensitively wherever it is read.
//! - [`api_key`]: legacy API keys, stored as SHA-256 hashes, compared in constant time.
//! - [`plivo`]: Plivo's V3 callback signatures; [`secret`]: constant-time comparison
//!   for shared secrets such as Exotel's callback-URL secret.
//!
//! No HTTP server code lives here; the proxy crate decides when to call what.

#![forbid(unsafe_code)]

pub mod api_key;
pub mod bearer;
pub mod cache;
mod claims;
pub mod jwt;
pub mod mint;
pub mod plivo;
pub mod random;
pub mod refresh;
pub mod secret;

pub use jsonwebtoken::Algorithm;
pub use jwt::{Claims, JwtError, Rules, VerifyKey};
