//! Stage 2 — normalize: the request path is normalized once (see
//! [`tollgate_policy::path`]); the result is what routing sees and what is forwarded.

use http::Uri;

use crate::errors::GatewayError;

/// The normalized path of the request target.
pub fn path(uri: &Uri) -> Result<String, GatewayError> {
    Ok(tollgate_policy::path::normalize(uri.path())?)
}
