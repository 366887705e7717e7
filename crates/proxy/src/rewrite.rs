//! Stage 8 — rewrite: turn the client's request into the upstream's.
//!
//! Strip, then set. First go hop-by-hop headers (and every header named in
//! `Connection`), then the caller's own credentials — the verified bearer token, the API
//! key (unless the route passes it on), a callback's URL secret. Then the gateway sets
//! what it vouches for: forwarding headers, the request id, `Host`, the route's backend
//! credential (replacing any value the client sent), and the upstream target built from
//! the *normalized* path.

use std::net::IpAddr;

use http::header::{HeaderValue, AUTHORIZATION, EXPECT, HOST};
use http::request::Parts;
use http::uri::{PathAndQuery, Scheme, Uri};
use tollgate_policy::snapshot::{Credential, RouteAuth, Upstream, Webhook};
use tollgate_policy::{Route, Snapshot};

use crate::authenticate::{AuthMethod, Outcome};
use crate::body::RequestBody;
use crate::inject::{self, BodyKind};
use crate::problem::GatewayError;
use crate::{authenticate, form, forwarded, headers, request_id};

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
    route: Option<&Route>,
    auth: &Outcome,
    snapshot: &Snapshot,
) -> Result<(), GatewayError> {
    let h = &mut parts.headers;
    headers::strip_hop_by_hop(h);
    // `Expect: 100-continue` was answered (or not) by this hop; the body is sent as is.
    h.remove(EXPECT);

    // The caller's credentials are for the gateway, not the backend.
    let mut drop_params: Vec<&str> = Vec::new();
    // A bearer token (or any other Authorization) is the gateway's business on every
    // route that identifies its caller; a backend credential may set it again below.
    if auth.identity.is_some() || auth.method == AuthMethod::Jwt {
        h.remove(AUTHORIZATION);
    }
    if let Some(route) = route {
        // On every route that identifies its caller, a legacy key the client also sent
        // must not reach the backend as a second, possibly different, identity.
        let uses_keys = matches!(
            route.auth,
            RouteAuth::ApiKey | RouteAuth::JwtOrApiKey | RouteAuth::Jwt
        );
        if let (true, false, Some(keys)) = (uses_keys, route.pass_api_key, &snapshot.auth.api_keys)
        {
            for name in &keys.headers {
                h.remove(name);
            }
            drop_params.extend(keys.query_param.as_deref());
        }
        if let RouteAuth::Webhook(hook) = &route.auth {
            if let Webhook::UrlSecret { param, .. } = &**hook {
                drop_params.push(param);
            }
        }
        if let Some((_, credential)) = &route.upstream_credential {
            set_credential(h, credential, auth)?;
        }
    }

    let client_id = route
        .and_then(|r| r.client_id.as_ref())
        .zip(auth.identity.as_ref().map(|i| i.client_id.as_str()));
    match client_id {
        Some((policy, client)) => inject::headers(h, policy, client)?,
        // No authenticated caller: nobody may claim an identity the backend trusts.
        None => {
            for name in &snapshot.identity_headers {
                h.remove(name);
            }
        }
    }

    forwarded::set_headers(
        h,
        caller.peer,
        caller.client,
        &snapshot.server.trusted_proxies,
    );
    if let Ok(id) = HeaderValue::from_str(caller.request_id) {
        h.insert(request_id::HEADER, id);
    }
    if let Ok(host) = HeaderValue::from_str(snapshot.upstream.authority.as_str()) {
        h.insert(HOST, host);
    }
    let mut query = parts.uri.query().map(|q| {
        if drop_params.is_empty() {
            q.to_owned()
        } else {
            form::without_params(q, &drop_params)
        }
    });
    if let Some((policy, client)) = client_id {
        query = inject::query(query.as_deref(), policy, client)?;
    }
    parts.uri = upstream_uri(query.as_deref(), path, &snapshot.upstream)?;
    Ok(())
}

/// Adds the backend credential; `insert` replaces whatever the client sent under that name.
fn set_credential(
    headers: &mut http::HeaderMap,
    credential: &Credential,
    auth: &Outcome,
) -> Result<(), GatewayError> {
    match credential {
        Credential::Header { name, value } => {
            headers.insert(name.clone(), value.clone());
        }
        Credential::ClientMap { name, values } => {
            headers.remove(name);
            let client = auth.identity.as_ref().ok_or(GatewayError::Forbidden(
                "this route's backend credential needs an authenticated client",
            ))?;
            let value = values
                .get(&client.client_id)
                .ok_or(GatewayError::Forbidden(
                    "no backend credential is configured for this client",
                ))?;
            headers.insert(name.clone(), value.clone());
        }
    }
    Ok(())
}

fn upstream_uri(query: Option<&str>, path: &str, upstream: &Upstream) -> Result<Uri, GatewayError> {
    let mut target = String::with_capacity(upstream.base_path.len() + path.len() + 64);
    target.push_str(&upstream.base_path);
    target.push_str(path);
    if let Some(query) = query.filter(|q| !q.is_empty()) {
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

/// The request body for the upstream: a JSON or form body is read (bounded by the
/// route's `client_id.max_body_bytes`) and rewritten with an exact `Content-Length`;
/// every other body streams untouched, refused at once if its declared length is over
/// the route's upload limit.
pub async fn upstream_body(
    parts: &mut Parts,
    body: RequestBody,
    route: Option<&Route>,
    auth: &Outcome,
) -> Result<RequestBody, GatewayError> {
    let client_id = route
        .and_then(|r| r.client_id.as_ref())
        .zip(auth.identity.as_ref().map(|i| i.client_id.as_str()));
    let kind = inject::body_kind(&parts.headers);
    if let (Some((policy, client)), BodyKind::Json | BodyKind::Form) = (client_id, kind) {
        let bytes = authenticate::read_bounded(parts, body, policy.max_body_bytes).await?;
        let rewritten = match kind {
            BodyKind::Json => inject::json_body(&bytes, policy, client)?.unwrap_or(bytes),
            _ => inject::form_body(&bytes, policy, client)?,
        };
        parts.headers.remove(http::header::TRANSFER_ENCODING);
        parts.headers.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(rewritten.len()),
        );
        return Ok(http_body_util::Either::Right(http_body_util::Full::new(
            rewritten,
        )));
    }
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(limit) = route.and_then(|r| r.max_upload_bytes) {
        if declared.is_some_and(|n| n > limit) {
            return Err(GatewayError::PayloadTooLarge {
                limit: limit as usize,
            });
        }
    }
    Ok(body)
}
