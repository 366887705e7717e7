//! Stage 8 — rewrite: turn the client's request into the upstream's.
//!
//! Strip, then set: hop-by-hop headers (and every header named in `Connection`) go
//! first, then the gateway sets what it vouches for — forwarding headers, the request
//! id, `Host`, and the upstream target built from the *normalized* path.

use std::net::IpAddr;

use http::header::{HeaderValue, EXPECT, HOST};
use http::request::Parts;
use http::uri::{PathAndQuery, Scheme, Uri};
use tollgate_policy::snapshot::{Server, Upstream};

use crate::problem::GatewayError;
use crate::{forwarded, headers, request_id};

/// Who sent the request, as the rewrite needs it.
pub struct Caller<'a> {
    pub peer: IpAddr,
    pub client: IpAddr,
    pub request_id: &'a str,
}

/// Rewrites the request head in place for the upstream.
pub fn upstream_head(
    parts: &mut Parts,
    path: &str,
    caller: &Caller,
    server: &Server,
    upstream: &Upstream,
) -> Result<(), GatewayError> {
    let h = &mut parts.headers;
    headers::strip_hop_by_hop(h);
    // `Expect: 100-continue` was answered (or not) by this hop; the body is sent as is.
    h.remove(EXPECT);
    forwarded::set_headers(h, caller.peer, caller.client, &server.trusted_proxies);
    if let Ok(id) = HeaderValue::from_str(caller.request_id) {
        h.insert(request_id::HEADER, id);
    }
    if let Ok(host) = HeaderValue::from_str(upstream.authority.as_str()) {
        h.insert(HOST, host);
    }
    parts.uri = upstream_uri(&parts.uri, path, upstream)?;
    Ok(())
}

fn upstream_uri(original: &Uri, path: &str, upstream: &Upstream) -> Result<Uri, GatewayError> {
    let mut target = String::with_capacity(upstream.base_path.len() + path.len() + 64);
    target.push_str(&upstream.base_path);
    target.push_str(path);
    if let Some(query) = original.query() {
        target.push('?');
        target.push_str(query);
    }
    // The path came out of a valid URI and only had unreserved escapes decoded, so it is
    // still a valid one; failure here would be a bug, reported as a bad path, not a panic.
    let path_and_query = PathAndQuery::try_from(target)
        .map_err(|_| GatewayError::Path(tollgate_policy::path::PathError::BadEscape))?;
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(upstream.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| GatewayError::Path(tollgate_policy::path::PathError::BadEscape))
}
