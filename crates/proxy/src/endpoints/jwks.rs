//! `GET /.well-known/jwks.json`: the public halves of the keys the gateway signs with, as
//! a JSON Web Key Set (RFC 7517), so a backend can verify the tokens the gateway issues.
//! Only asymmetric keys with a `private_key_file` are published; a shared secret never is.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Response};

use super::Answer;
use crate::errors::GatewayError;
use crate::exchange::Exchange;

/// Caches may keep the set this long: rotation adds a key well before it signs.
const MAX_AGE: &str = "public, max-age=300";

pub fn serve<B>(exchange: &Exchange<'_>, _request: &Request<B>) -> Result<Answer, GatewayError> {
    let keys = exchange
        .snapshot
        .auth
        .jwt
        .as_ref()
        .map_or(&[][..], |jwt| &jwt.published[..]);
    let set = serde_json::json!({ "keys": keys });
    let mut response = Response::new(crate::body::full(set.to_string()));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(MAX_AGE));
    Ok(response)
}
