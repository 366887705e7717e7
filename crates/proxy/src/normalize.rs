//! Stage 2 — normalize: the request path is normalized once (see
//! [`tollgate_policy::path`]); the result is what routing sees and what is forwarded.

use http::Uri;

use crate::errors::{GatewayError, RequestError};

/// The normalized path of the request target. Normalizing may encode what came raw
/// (`"` becomes `%22`), so the target is measured again against `max_uri_bytes`: what
/// is forwarded stays within the limit the client was held to.
pub fn path(uri: &Uri, max_uri_bytes: usize) -> Result<String, GatewayError> {
    let path = tollgate_policy::path::normalize(uri.path())?;
    let query = uri.query().map_or(0, |q| q.len() + 1);
    if path.len() > uri.path().len() && path.len() + query > max_uri_bytes {
        return Err(RequestError::UriTooLong {
            limit: max_uri_bytes,
        }
        .into());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_that_grows_past_the_limit_when_encoded_is_refused() {
        let raw: Uri = format!("/pub/{}", "\"".repeat(30)).parse().unwrap();
        assert_eq!(path(&raw, 100).unwrap().len(), 5 + 90);
        assert!(matches!(
            path(&raw, 80),
            Err(GatewayError::Request(RequestError::UriTooLong {
                limit: 80
            }))
        ));
        // Shorter once normalized: judged as it came.
        let dots: Uri = "/a/../b/%61%62".parse().unwrap();
        assert_eq!(path(&dots, 10).unwrap(), "/b/ab");
    }
}
