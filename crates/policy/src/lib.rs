//! Tollgate's policy model.
//!
//! This crate owns everything an operator writes: the TOML file structs (`file`), their
//! validation into one immutable [`Snapshot`] (`load`), request-path normalization
//! (`path`), route patterns and matching (`pattern`, `snapshot`), the route descriptions
//! of `tollgate explain` (`explain`) and the policy test cases of `tollgate test`
//! (`cases`). It does no networking: the proxy crate enforces what
//! this crate describes, and a snapshot is only ever built whole or not at all.

#![forbid(unsafe_code)]

pub mod cases;
pub mod cidr;
pub mod diagnostic;
pub mod duration;
pub mod explain;
pub mod fingerprint;
mod load;
pub mod media;
pub mod param;
pub mod path;
pub mod pattern;
pub mod quota;
pub mod snapshot;
pub mod sources;

pub use diagnostic::{Diagnostic, Severity};
pub use load::{client_config, load, load_from, LoadError, DEV_KEYS_DIR};
pub use snapshot::{Route, RouteAction, RouteMatch, Snapshot};
