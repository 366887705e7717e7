//! `[sessions]` and `[login]`: the gateway's own login sessions, and how the legacy
//! login's answer is read.

use std::time::Duration;

use toml::Spanned;

use super::context::{Loader, Zero};
use super::file::{LoginFile, SessionsFile, TokenModeFile};
use crate::diagnostic::SourceFile;
use crate::snapshot::{Login, Sessions, TokenMode};

/// Members never returned to a page or signed into a token unless `secret_fields`
/// replaces the list: the legacy answer's credentials. A member is secret when its name
/// ends with one of these ([`Login::is_secret`]): `token` covers `plivoAuthToken`,
/// `secret` covers `clientSecret`, `hash` covers `passwordHash`.
pub const DEFAULT_SECRET_FIELDS: &[&str] = &[
    "apiKey",
    "secretKey",
    "privateKey",
    "password",
    "passwd",
    "pwd",
    "pass",
    "passcode",
    "secret",
    "token",
    "salt",
    "hash",
    "otp",
    "pin",
    "sessionId",
    "credential",
    "credentials",
];

pub(crate) fn sessions(l: &mut Loader, src: &SourceFile, f: SessionsFile) -> Option<Sessions> {
    let mark = l.mark();
    let refresh_idle = l.duration(
        src,
        &f.refresh_idle,
        Duration::from_secs(7 * 24 * 3600),
        Zero::Refused,
    );
    let lifetime = l.duration(
        src,
        &f.lifetime,
        Duration::from_secs(30 * 24 * 3600),
        Zero::Refused,
    );
    let reuse_grace = l.duration(src, &f.reuse_grace, Duration::from_secs(10), Zero::Allowed);
    if reuse_grace > Duration::from_secs(120) {
        if let Some(v) = &f.reuse_grace {
            l.error(
                src,
                Some(v.span()),
                "[sessions] reuse_grace: at most 2m (it is a window in which a copied refresh token still works)",
            );
        }
    }
    let tokens = match f.tokens.unwrap_or(TokenModeFile::Bearer) {
        TokenModeFile::Bearer => {
            for field in [&f.cookie_access_token, &f.cookie_secure]
                .into_iter()
                .flatten()
            {
                l.error(
                    src,
                    Some(field.span()),
                    "[sessions]: cookie_access_token and cookie_secure are for tokens = \"cookie\"",
                );
            }
            TokenMode::Bearer
        }
        TokenModeFile::Cookie => {
            let secure = f.cookie_secure.as_ref().is_none_or(|s| *s.get_ref());
            if let Some(insecure) = f.cookie_secure.as_ref().filter(|s| !s.get_ref()) {
                l.warning(
                    src,
                    Some(insecure.span()),
                    "[sessions] cookie_secure = false: session cookies travel over plain HTTP; for local development only",
                );
            }
            TokenMode::Cookie {
                access_token: f.cookie_access_token.as_ref().is_none_or(|a| *a.get_ref()),
                secure,
            }
        }
    };
    if l.errors_since(mark) {
        return None;
    }
    Some(Sessions {
        refresh_idle,
        lifetime,
        reuse_grace,
        tokens,
    })
}

pub(crate) fn login(l: &mut Loader, src: &SourceFile, f: LoginFile) -> Option<Login> {
    let mark = l.mark();
    let mut pointer = |value: &Option<Spanned<String>>, default: &str, what: &str| match value {
        None => default.to_owned(),
        Some(p) => {
            let text = p.get_ref();
            if !text.is_empty() && !text.starts_with('/') {
                l.error(
                    src,
                    Some(p.span()),
                    format!("[login] {what}: a JSON pointer starts with `/` (e.g. /0/clientId), or is empty for the whole answer"),
                );
            }
            text.clone()
        }
    };
    let client_id = pointer(&f.client_id, "/0/clientId", "client_id");
    let user = pointer(&f.user, "/0", "user");
    let subject = f
        .subject
        .as_ref()
        .map(|s| pointer(&Some(s.clone()), "", "subject"));
    let secret_fields: Vec<String> = match &f.secret_fields {
        None => DEFAULT_SECRET_FIELDS
            .iter()
            .map(|s| Login::fold(s))
            .collect(),
        Some(list) => list
            .iter()
            .filter_map(|s| {
                let folded = Login::fold(s.get_ref());
                if folded.is_empty() {
                    // It would end every name: nothing would be returned.
                    l.error(
                        src,
                        Some(s.span()),
                        "[login] secret_fields: a name needs a letter or digit",
                    );
                    return None;
                }
                Some(folded)
            })
            .collect(),
    };
    let is_secret = |name: &str| Login::is_secret_name(&Login::fold(name), &secret_fields);
    let names = |l: &mut Loader, list: &Option<Vec<Spanned<String>>>, what: &str| -> Vec<String> {
        let mut out = Vec::new();
        for item in list.iter().flatten() {
            let name = item.get_ref();
            if is_secret(name) {
                l.error(
                    src,
                    Some(item.span()),
                    format!("[login] {what}: `{name}` is a secret field: it is never returned or signed"),
                );
            } else if name.is_empty() {
                l.error(
                    src,
                    Some(item.span()),
                    format!("[login] {what}: empty name"),
                );
            } else {
                out.push(name.clone());
            }
        }
        out
    };
    let user_fields = f
        .user_fields
        .is_some()
        .then(|| names(l, &f.user_fields, "user_fields"));
    let token_claims = names(l, &f.token_claims, "token_claims");
    const REGISTERED: &[&str] = &["iss", "aud", "sub", "exp", "iat", "nbf", "jti", "sid"];
    for (item, name) in f.token_claims.iter().flatten().zip(&token_claims) {
        if REGISTERED.contains(&name.as_str()) {
            l.error(
                src,
                Some(item.span()),
                format!("[login] token_claims: `{name}` is set by the gateway itself"),
            );
        }
    }
    if l.errors_since(mark) {
        return None;
    }
    Some(Login {
        client_id,
        user,
        subject,
        user_fields,
        token_claims,
        secret_fields,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load, GATEWAY};

    #[test]
    fn defaults_and_cookie_mode() {
        let s = load(
            &format!("{GATEWAY}\n[sessions]\ntokens = \"cookie\"\nreuse_grace = \"5s\"\n\n[login]\nuser_fields = [\"name\", \"email\"]\ntoken_claims = [\"email\"]\n"),
            &[],
        )
        .unwrap();
        let sessions = s.sessions.unwrap();
        assert_eq!(sessions.reuse_grace.as_secs(), 5);
        assert_eq!(sessions.refresh_idle.as_secs(), 7 * 24 * 3600);
        assert_eq!(
            sessions.tokens,
            crate::snapshot::TokenMode::Cookie {
                access_token: true,
                secure: true
            }
        );
        let login = s.login.unwrap();
        assert_eq!(login.client_id, "/0/clientId");
        assert_eq!(
            login.user_fields.as_deref(),
            Some(&["name".to_owned(), "email".to_owned()][..])
        );
        assert!(login.is_secret("apiKey"));
        assert!(login.is_secret("api_key"));
        assert!(!login.is_secret("email"));
        // Compound names of credentials, as legacy records spell them.
        for secret in [
            "plivoAuthToken",
            "exotel_api_token",
            "clientSecret",
            "client_secret",
            "secretToken",
            "privateKey",
            "passwordHash",
            "salt",
            "pwd",
            "pass",
            "passwd",
            "otp",
            "pin",
            "sessionId",
            "credentials",
            "resetToken",
            // How the secret is written, after its name.
            "privateKeyPem",
            "apiKeyValue",
            "secretBase64",
            "password_plaintext",
        ] {
            assert!(login.is_secret(secret), "{secret}");
        }
        // A balance of token credits, and plain fields, are not secrets.
        for open in [
            "tokens",
            "tokenBalance",
            "clientId",
            "name",
            "email",
            "providers",
            // The name of a key is not the key; nor is an encoding alone.
            "secretKeyId",
            "pem",
            "tokensText",
        ] {
            assert!(!login.is_secret(open), "{open}");
        }
    }

    #[test]
    fn a_secret_field_with_no_letter_is_refused_as_it_would_hide_everything() {
        let e = errors(
            &format!("{GATEWAY}\n[sessions]\n\n[login]\nsecret_fields = [\"token\", \"_\"]\n"),
            &[],
        );
        assert!(
            e.iter()
                .any(|e| e.contains("secret_fields: a name needs a letter or digit")),
            "{e:?}"
        );
    }

    #[test]
    fn secrets_and_registered_claims_cannot_be_returned_or_signed() {
        let e = errors(
            &format!("{GATEWAY}\n[sessions]\nreuse_grace = \"1h\"\ncookie_secure = false\n\n[login]\nclient_id = \"0/clientId\"\nuser_fields = [\"apiKey\"]\ntoken_claims = [\"sub\", \"API_KEY\"]\n"),
            &[],
        );
        for expected in [
            "reuse_grace: at most 2m",
            "gateway.toml:12:17: [sessions]: cookie_access_token and cookie_secure are for tokens = \"cookie\"",
            "a JSON pointer starts with `/`",
            "user_fields: `apiKey` is a secret field",
            "token_claims: `sub` is set by the gateway itself",
            "token_claims: `API_KEY` is a secret field",
        ] {
            assert!(e.iter().any(|m| m.contains(expected)), "{expected}: {e:#?}");
        }
    }

    #[test]
    fn session_routes_say_what_they_miss() {
        let routes = "[[route]]\nname = \"login\"\npath = \"/login\"\naction = \"login\"\nauth = \"none\"\n\n[[route]]\nname = \"refresh\"\npath = \"/gateway/auth/refresh\"\naction = \"serve\"\nendpoint = \"refresh\"\n\n[[route]]\nname = \"logout\"\npath = \"/gateway/auth/logout\"\naction = \"serve\"\nendpoint = \"logout\"\nauth = \"none\"\n";
        let e = errors(GATEWAY, &[("p.toml", routes)]);
        assert!(e.iter().any(|m| m.contains("route `login`: the login route needs a [sessions] section, a [login] section, [jwt] with a signing key")), "{e:#?}");
        assert!(
            e.iter().any(|m| m
                .contains("route `logout`: the logout endpoint needs a [sessions] section, [jwt]")),
            "{e:#?}"
        );
        let complete = format!("{GATEWAY}\n[jwt]\nissuer = \"i\"\naudience = \"a\"\n\n[[jwt.key]]\nalgorithm = \"HS256\"\nsecret_env = \"{}\"\n\n[sessions]\n\n[login]\n", super::super::testing::HS256);
        let e = errors(&complete, &[("p.toml", routes)]);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].contains("route `refresh`: the refresh endpoint reads its own credentials: write auth = \"none\""), "{e:#?}");
        let ok = routes.replace(
            "endpoint = \"refresh\"\n",
            "endpoint = \"refresh\"\nauth = \"none\"\n",
        );
        let s = load(&complete, &[("p.toml", &ok)]).unwrap();
        assert_eq!(s.routes[0].action, crate::snapshot::RouteAction::Login);
    }
}
