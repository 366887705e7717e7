//! Login sessions: refresh-token families and revocations.
//!
//! A login starts a **family**. Its refresh tokens rotate: each refresh spends the
//! presented token and makes a new one current (RFC 9700 §4.14.2). The store keeps only
//! hashes of the tokens, never the tokens themselves. A spent token presented again
//! means that someone kept a copy, so the whole family is revoked. There is one
//! exception: the token rotated last, presented again within a short grace period while
//! its successor is still unused. That is a client that lost the answer, and it gets
//! the same successor back. The successor is kept only *sealed* with the spent token
//! (see `tollgate_auth::refresh`), so the store alone can never hand out a live token.
//!
//! The decisions are one pure function, [`decide_rotation`], run inside each store's
//! atomic update. [`SessionStore`] has two implementations that pass one test suite:
//!
//! - [`embedded`]: one `redb` file, every change committed durably. This is the
//!   default for one instance; sessions survive a restart.
//! - [`shared`]: Redis. Each family is one JSON value, updated by compare-and-set, so
//!   two instances refreshing the same token at the same moment cannot both win.
//!
//! Revoking a family, or denying one access token (logout), also appends to a
//! **revocation feed** that every instance polls, so that access tokens already issued
//! stop working everywhere, not only where the logout happened.

pub mod embedded;
pub mod shared;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::redis::StoreError;
use crate::BoxFuture;

/// Spent hashes kept per family for reuse detection. A family that rotates more often
/// than this over its lifetime forgets its oldest. A forgotten token is then refused as
/// unknown, but it no longer revokes the family.
pub const MAX_SPENT: usize = 4096;

/// One login session: who it is for and where its refresh tokens stand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Family {
    pub id: String,
    /// The client id, as the legacy API typed it (string or integer).
    pub client_id: Value,
    pub subject: String,
    /// The user record the login returned (allowlisted), returned again on refresh.
    pub user: Map<String, Value>,
    /// Claims copied into every access token of the session.
    pub claims: Map<String, Value>,
    /// Seconds since the epoch.
    pub created: u64,
    /// The absolute end of the session.
    pub ends: u64,
    /// A refresh token unused for this long (seconds) expires.
    pub idle: u64,
    pub last_used: u64,
    /// When the family was revoked (logout, or a reused token).
    pub revoked: Option<u64>,
    /// Hash of the live refresh token.
    pub current: String,
    /// The token rotated last: the only one a grace answer can be given for.
    pub previous: Option<Spent>,
    /// Hashes of every earlier token (at most [`MAX_SPENT`]).
    pub spent: Vec<String>,
    /// Cookie mode: the session's CSRF token, handed to the page again on refresh.
    #[serde(default)]
    pub csrf: Option<String>,
    /// Until when the access tokens issued so far can be valid (their latest `exp` plus
    /// the leeway): a revocation is remembered at least this long. `access_ttl` may
    /// have been longer when they were signed than it is now (a reload that shortens
    /// it must not bring back tokens signed before it). 0 in families from before.
    #[serde(default)]
    pub tokens_until: u64,
}

impl Family {
    /// How long a revocation of this session must be remembered, decided at `when`.
    pub fn revoked_until(&self, when: When) -> u64 {
        when.tokens_until.max(self.tokens_until)
    }
}

/// The token rotated last, and its successor sealed with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spent {
    pub hash: String,
    pub at: u64,
    /// The successor's secret, sealed with the spent token (hex).
    pub sealed_next: String,
    /// The successor's hash: the grace answer holds only while it is still current.
    pub next_hash: String,
}

/// The token a rotation makes current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    pub hash: String,
    pub sealed: String,
}

/// The clock and the windows a decision needs (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct When {
    pub now: u64,
    /// How long after a rotation the spent token still gets the grace answer.
    pub grace: u64,
    /// Until when access tokens issued now could still be valid (`now` + access-token
    /// lifetime + leeway): how long a revocation must be remembered.
    pub tokens_until: u64,
}

/// What presenting a refresh token came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Rotation {
    /// The token was current. It is spent now, and [`Next`] is current.
    Rotated(Box<Family>),
    /// The token was rotated moments ago and its successor is unused. The successor
    /// is sealed with the presented token; the caller unseals it and answers again.
    Grace {
        family: Box<Family>,
        sealed_next: String,
    },
    /// A spent token came back. The family is revoked now.
    Reused { family: String },
    /// The family was already revoked.
    Revoked,
    /// The session's lifetime or idle time is over.
    Expired,
    /// No such family, or the token was never one of its own.
    Unknown,
}

/// What a logout came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoke {
    Revoked,
    AlreadyRevoked,
    /// No such family, or the proof was not one of its tokens.
    Unknown,
}

/// One entry of the revocation feed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Revocation {
    pub kind: Revoked,
    pub id: String,
    /// Until when it matters (seconds): after that every token it covers has expired.
    pub until: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Revoked {
    /// A whole session (`sid`): every access token issued from it.
    Session,
    /// One access token (`jti`).
    Token,
}

impl Revocation {
    /// The feed's text form: `s:<id>:<until>` or `t:<id>:<until>`.
    pub fn encode(&self) -> String {
        let kind = match self.kind {
            Revoked::Session => 's',
            Revoked::Token => 't',
        };
        format!("{kind}:{}:{}", self.id, self.until)
    }

    pub fn decode(text: &str) -> Option<Revocation> {
        let (kind, rest) = text.split_once(':')?;
        let (id, until) = rest.rsplit_once(':')?;
        let kind = match kind {
            "s" => Revoked::Session,
            "t" => Revoked::Token,
            _ => return None,
        };
        Some(Revocation {
            kind,
            id: id.to_owned(),
            until: until.parse().ok()?,
        })
    }
}

/// New revocations, and where to continue from next time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Feed {
    pub entries: Vec<Revocation>,
    pub cursor: u64,
}

#[derive(Debug, Error)]
pub enum SessionError {
    #[error(transparent)]
    Redis(#[from] StoreError),
    #[error("the session store: {0}")]
    Embedded(String),
    #[error("a stored session is unreadable: {0}")]
    Corrupt(String),
    #[error("a session family with this id already exists")]
    Exists,
    #[error("the session changed under every attempt to update it")]
    Contended,
}

/// Where sessions live.
pub trait SessionStore: Send + Sync {
    /// Stores a new family.
    fn create<'a>(
        &'a self,
        worker: usize,
        family: &'a Family,
    ) -> BoxFuture<'a, Result<(), SessionError>>;

    /// Presents refresh token `presented` (its hash) of family `family`, atomically.
    fn rotate<'a>(
        &'a self,
        worker: usize,
        family: &'a str,
        presented: &'a str,
        next: &'a Next,
        when: When,
    ) -> BoxFuture<'a, Result<Rotation, SessionError>>;

    /// Revokes family `family`. With `proof` (a refresh token's hash), only if it is one
    /// of the family's; without, the caller has proved it otherwise (a verified access
    /// token of the session).
    fn revoke<'a>(
        &'a self,
        worker: usize,
        family: &'a str,
        proof: Option<&'a str>,
        when: When,
    ) -> BoxFuture<'a, Result<Revoke, SessionError>>;

    /// Denies one access token until it expires.
    fn deny_token<'a>(
        &'a self,
        worker: usize,
        token_id: &'a str,
        until: u64,
    ) -> BoxFuture<'a, Result<(), SessionError>>;

    /// Revocations recorded after `cursor` (0: all that still matter), for the
    /// instance-wide cache.
    fn revocations(&self, worker: usize, cursor: u64) -> BoxFuture<'_, Result<Feed, SessionError>>;

    /// Forgets what no longer matters at `now`: ended families, expired revocations.
    fn prune(&self, worker: usize, now: u64) -> BoxFuture<'_, Result<(), SessionError>>;
}

/// The rotation rules, applied to `family` in place. The store then writes the family
/// back if it changed (`Rotated`, `Reused`).
pub fn decide_rotation(family: &mut Family, presented: &str, next: &Next, when: When) -> Rotation {
    if family.revoked.is_some() {
        return Rotation::Revoked;
    }
    let is_current = family.current == presented;
    let previous = family.previous.as_ref().filter(|p| p.hash == presented);
    let is_spent = previous.is_some() || family.spent.iter().any(|h| h == presented);
    if !is_current && !is_spent {
        // Guessing at a known session id must never revoke it.
        return Rotation::Unknown;
    }
    if when.now >= family.ends || when.now >= family.last_used.saturating_add(family.idle) {
        return Rotation::Expired;
    }
    if is_current {
        let spent = std::mem::replace(&mut family.current, next.hash.clone());
        family.previous = Some(Spent {
            hash: spent.clone(),
            at: when.now,
            sealed_next: next.sealed.clone(),
            next_hash: next.hash.clone(),
        });
        family.spent.push(spent);
        if family.spent.len() > MAX_SPENT {
            let excess = family.spent.len() - MAX_SPENT;
            family.spent.drain(..excess);
        }
        family.last_used = when.now;
        // The access token answered with it is signed under today's lifetime.
        family.tokens_until = family.tokens_until.max(when.tokens_until);
        return Rotation::Rotated(Box::new(family.clone()));
    }
    if let Some(previous) = previous {
        // Whole seconds: a grace of 10 s covers a retry up to 9.x s later.
        let within = when.now < previous.at.saturating_add(when.grace);
        if within && family.current == previous.next_hash {
            let sealed_next = previous.sealed_next.clone();
            return Rotation::Grace {
                family: Box::new(family.clone()),
                sealed_next,
            };
        }
    }
    family.revoked = Some(when.now);
    Rotation::Reused {
        family: family.id.clone(),
    }
}

/// The logout rule, applied to `family` in place.
pub fn decide_revoke(family: &mut Family, proof: Option<&str>, when: When) -> Revoke {
    if let Some(hash) = proof {
        let ours = family.current == hash
            || family.previous.as_ref().is_some_and(|p| p.hash == hash)
            || family.spent.iter().any(|h| h == hash);
        if !ours {
            return Revoke::Unknown;
        }
    }
    if family.revoked.is_some() {
        return Revoke::AlreadyRevoked;
    }
    family.revoked = Some(when.now);
    Revoke::Revoked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family() -> Family {
        Family {
            id: "f1".into(),
            client_id: Value::from(1001),
            subject: "demo@acme.test".into(),
            user: Map::new(),
            claims: Map::new(),
            created: 100,
            ends: 10_000,
            idle: 1_000,
            last_used: 100,
            revoked: None,
            current: "h0".into(),
            previous: None,
            spent: Vec::new(),
            csrf: None,
            tokens_until: 0,
        }
    }

    fn next(n: u32) -> Next {
        Next {
            hash: format!("h{n}"),
            sealed: format!("sealed{n}"),
        }
    }

    fn at(now: u64) -> When {
        When {
            now,
            grace: 10,
            tokens_until: now + 100,
        }
    }

    #[test]
    fn the_current_token_rotates_and_the_successor_is_current() {
        let mut f = family();
        let Rotation::Rotated(after) = decide_rotation(&mut f, "h0", &next(1), at(200)) else {
            panic!("not rotated");
        };
        assert_eq!(after.current, "h1");
        assert_eq!(after.spent, vec!["h0".to_owned()]);
        assert_eq!(after.last_used, 200);
        assert_eq!(after.tokens_until, 300, "its access token is signed now");
        assert_eq!(f, *after);
        // A later, shorter lifetime never shortens what was recorded.
        let short = When {
            tokens_until: 210,
            ..at(205)
        };
        assert_eq!(after.revoked_until(short), 300);
    }

    #[test]
    fn the_spent_token_within_grace_gets_its_successor_and_later_revokes() {
        let mut f = family();
        decide_rotation(&mut f, "h0", &next(1), at(200));
        match decide_rotation(&mut f, "h0", &next(2), at(205)) {
            Rotation::Grace { sealed_next, .. } => assert_eq!(sealed_next, "sealed1"),
            other => panic!("{other:?}"),
        }
        assert_eq!(f.current, "h1", "a grace answer changes nothing");
        assert_eq!(
            decide_rotation(&mut f, "h0", &next(2), at(211)),
            Rotation::Reused {
                family: "f1".into()
            }
        );
        assert_eq!(f.revoked, Some(211));
        assert_eq!(
            decide_rotation(&mut f, "h1", &next(2), at(212)),
            Rotation::Revoked
        );
    }

    #[test]
    fn no_grace_once_the_successor_was_used() {
        let mut f = family();
        decide_rotation(&mut f, "h0", &next(1), at(200));
        decide_rotation(&mut f, "h1", &next(2), at(201));
        // h0 is no longer the token rotated last: reuse.
        assert!(matches!(
            decide_rotation(&mut f, "h0", &next(3), at(202)),
            Rotation::Reused { .. }
        ));
    }

    #[test]
    fn a_token_that_was_never_issued_changes_nothing() {
        let mut f = family();
        let before = f.clone();
        assert_eq!(
            decide_rotation(&mut f, "guess", &next(1), at(200)),
            Rotation::Unknown
        );
        assert_eq!(
            decide_revoke(&mut f, Some("guess"), at(200)),
            Revoke::Unknown
        );
        assert_eq!(f, before);
    }

    #[test]
    fn idle_and_absolute_lifetimes_end_the_session() {
        let mut f = family();
        assert_eq!(
            decide_rotation(&mut f, "h0", &next(1), at(1_100)),
            Rotation::Expired
        );
        let mut f = family();
        f.idle = 1_000_000;
        assert_eq!(
            decide_rotation(&mut f, "h0", &next(1), at(10_000)),
            Rotation::Expired
        );
        assert!(matches!(
            decide_rotation(&mut f, "h0", &next(1), at(9_999)),
            Rotation::Rotated(_)
        ));
    }

    #[test]
    fn logout_revokes_once_and_proof_must_be_the_familys() {
        let mut f = family();
        assert_eq!(decide_revoke(&mut f, Some("h0"), at(300)), Revoke::Revoked);
        assert_eq!(decide_revoke(&mut f, None, at(301)), Revoke::AlreadyRevoked);
        assert_eq!(f.revoked, Some(300));
    }

    #[test]
    fn spent_hashes_are_bounded() {
        let mut f = family();
        for n in 0..(MAX_SPENT as u32 + 5) {
            let presented = format!("h{n}");
            assert!(matches!(
                decide_rotation(&mut f, &presented, &next(n + 1), at(200)),
                Rotation::Rotated(_)
            ));
        }
        assert_eq!(f.spent.len(), MAX_SPENT);
        assert_eq!(f.spent[0], "h5");
    }

    #[test]
    fn feed_entries_round_trip() {
        for r in [
            Revocation {
                kind: Revoked::Session,
                id: "abc".into(),
                until: 42,
            },
            Revocation {
                kind: Revoked::Token,
                id: "a:b".into(),
                until: 7,
            },
        ] {
            assert_eq!(Revocation::decode(&r.encode()), Some(r));
        }
        assert_eq!(Revocation::decode("x:1:2"), None);
        assert_eq!(Revocation::decode("s:1:x"), None);
    }
}
